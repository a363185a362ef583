#include "net/http_client.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <mutex>
#include <optional>
#include <thread>

#include <doctest/doctest.h>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include "tests/net/loopback_http_server.h"
#include "tests/scratch_dir.h"

using agentserve::Result;
using agentserve::StatusCode;
using agentserve::net::HttpClient;
using agentserve::net::HttpRequest;
using agentserve::net::HttpResponse;
using agentserve::testing::LoopbackHttpServer;

namespace {

// Two io threads, as in the server, so strands and callbacks are exercised concurrently.
struct IoThreads {
  IoThreads() {
    for (int i = 0; i < 2; ++i) threads.emplace_back([this] { io.run(); });
  }
  ~IoThreads() {
    work.reset();
    for (auto& t : threads) t.join();
  }
  boost::asio::io_context io;
  std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> work{
      io.get_executor()};
  std::vector<std::thread> threads;
};

// A plain-HTTP loopback server and a client with its own io threads, for the tests that need nothing else.
struct LoopbackClient {
  LoopbackHttpServer server;
  IoThreads io;
  HttpClient client{io.io};
};

HttpRequest get(const std::string& url, std::chrono::milliseconds timeout = std::chrono::milliseconds(3000)) {
  HttpRequest r;
  r.method = "GET";
  r.url = url;
  r.timeout = timeout;
  return r;
}

std::string header(const HttpResponse& res, const std::string& name) {
  for (const auto& [k, v] : res.headers)
    if (k == name) return v;
  return "";
}

// A scratch folder `name` holding a self-signed certificate (P-256, a day long) for `san`, made with the
// openssl CLI: cert.pem and key.pem.
std::filesystem::path certificate_dir(const std::string& name, const std::string& san) {
  const auto dir = agentserve::testing::scratch_dir("http_client_test", name);
  const std::string command =
      "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1"
      " -subj /CN=agentserve-test -addext subjectAltName=" +
      san + " -keyout " + (dir / "key.pem").string() + " -out " + (dir / "cert.pem").string() +
      " 2>/dev/null";
  REQUIRE_MESSAGE(std::system(command.c_str()) == 0, "openssl could not make a certificate");
  return dir;
}

// Client options that trust the certificate in `dir` besides the system store.
agentserve::net::HttpClientOptions trusting(const std::filesystem::path& dir) {
  agentserve::net::HttpClientOptions options;
  options.extra_ca_file = (dir / "cert.pem").string();
  return options;
}

}  // namespace

TEST_CASE("http client speaks TLS to a server whose certificate it trusts, and checks the host name") {
  const auto dir = certificate_dir("tls", "DNS:localhost,IP:127.0.0.1");
  LoopbackHttpServer server((dir / "cert.pem").string(), (dir / "key.pem").string());
  IoThreads io;
  HttpClient client(io.io, trusting(dir));
  for (const std::string host : {"localhost", "127.0.0.1"}) {
    HttpRequest req;
    req.url = "https://" + host + ":" + std::to_string(server.port()) + "/echo";
    req.body = "over tls";
    auto res = client.request(req);
    REQUIRE(res.ok());
    CHECK(res->body == "over tls");
  }
  // Kept alive over TLS too: a second request to the same host reuses the connection.
  const int accepted = server.accepted();
  REQUIRE(client.request(get(server.url("/echo"))).ok());
  CHECK(server.accepted() == accepted);

  // The system trust store alone does not know the self-signed certificate.
  HttpClient system_only(io.io);
  auto untrusted = system_only.request(get(server.url("/echo")));
  REQUIRE_FALSE(untrusted.ok());
  CHECK(untrusted.status().code() == StatusCode::kIoError);
}

TEST_CASE("http client refuses a trusted certificate issued for another host name") {
  const auto dir = certificate_dir("tls_other", "DNS:other.example");
  LoopbackHttpServer server((dir / "cert.pem").string(), (dir / "key.pem").string());
  IoThreads io;
  HttpClient client(io.io, trusting(dir));
  auto res = client.request(get(server.url("/echo")));
  REQUIRE_FALSE(res.ok());
  CHECK(res.status().code() == StatusCode::kIoError);
}

TEST_CASE("an unreadable extra CA file fails https requests with IoError, not the process") {
  IoThreads io;
  agentserve::net::HttpClientOptions options;
  options.extra_ca_file = "/nonexistent/ca.pem";
  HttpClient client(io.io, options);
  auto res = client.request(get("https://127.0.0.1:1/"));
  CHECK(res.status().code() == StatusCode::kIoError);
}

TEST_CASE_FIXTURE(LoopbackClient, "http client posts a body and reads the response") {
  HttpRequest req;
  req.url = server.url("/echo");
  req.body = "{\"input\":\"hello\"}";
  req.headers = {{"Content-Type", "application/json"}};
  auto res = client.request(req);
  REQUIRE(res.ok());
  CHECK(res->status == 200);
  CHECK(res->body == req.body);
  CHECK(header(*res, "x-method") == "POST");
}

TEST_CASE_FIXTURE(LoopbackClient, "http client reuses one kept-alive connection for sequential requests") {
  for (int i = 0; i < 5; ++i) {
    auto res = client.request(get(server.url("/echo")));
    REQUIRE(res.ok());
    CHECK(res->status == 200);
  }
  CHECK(server.requests() == 5);
  CHECK(server.accepted() == 1);
}

TEST_CASE_FIXTURE(LoopbackClient,
                  "http client opens a new connection after the server said Connection: close") {
  REQUIRE(client.request(get(server.url("/close"))).ok());
  REQUIRE(client.request(get(server.url("/echo"))).ok());
  CHECK(server.accepted() == 2);
}

TEST_CASE_FIXTURE(LoopbackClient,
                  "http client resends once when a pooled connection was closed by the server while idle") {
  auto first = client.request(get(server.url("/drop")));
  REQUIRE(first.ok());
  CHECK(first->body == "dropped");
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // let the FIN arrive
  auto second = client.request(get(server.url("/echo")));
  REQUIRE(second.ok());
  CHECK(second->status == 200);
  CHECK(server.accepted() == 2);
}

TEST_CASE_FIXTURE(LoopbackClient, "http client ends a slow request at its deadline with DeadlineExceeded") {
  const auto start = std::chrono::steady_clock::now();
  auto res = client.request(get(server.url("/slow?ms=800"), std::chrono::milliseconds(150)));
  const auto elapsed = std::chrono::steady_clock::now() - start;
  REQUIRE_FALSE(res.ok());
  CHECK(res.status().code() == StatusCode::kDeadlineExceeded);
  CHECK(elapsed < std::chrono::milliseconds(1000));
  // The timed-out connection is not pooled: a later request works on a fresh one.
  auto next = client.request(get(server.url("/echo")));
  REQUIRE(next.ok());
  CHECK(server.accepted() == 2);
}

TEST_CASE_FIXTURE(LoopbackClient, "http client refuses a response body past max_response_bytes") {
  HttpRequest big = get(server.url("/big?n=100000"));
  big.max_response_bytes = 1000;
  auto res = client.request(big);
  REQUIRE_FALSE(res.ok());
  CHECK(res.status().code() == StatusCode::kResourceExhausted);

  HttpRequest exact = get(server.url("/big?n=1000"));
  exact.max_response_bytes = 1000;
  auto ok = client.request(exact);
  REQUIRE(ok.ok());
  CHECK(ok->body.size() == 1000);
}

TEST_CASE("http client reports connection refused as IoError") {
  uint16_t dead_port = 0;
  {
    LoopbackHttpServer gone;
    dead_port = gone.port();
  }
  IoThreads io;
  HttpClient client(io.io);
  auto res = client.request(get("http://127.0.0.1:" + std::to_string(dead_port) + "/echo"));
  REQUIRE_FALSE(res.ok());
  CHECK(res.status().code() == StatusCode::kIoError);
}

TEST_CASE_FIXTURE(LoopbackClient, "http client returns a 3xx as it is and never follows it") {
  auto res = client.request(get(server.url("/redirect")));
  REQUIRE(res.ok());
  CHECK(res->status == 302);
  CHECK(header(*res, "Location") == "/echo");
  CHECK(server.requests() == 1);
}

TEST_CASE_FIXTURE(LoopbackClient,
                  "http client runs many concurrent requests, each callback exactly once with its own body") {
  constexpr int kRequests = 64;
  std::mutex mutex;
  std::condition_variable cv;
  int done = 0;
  std::vector<int> calls(kRequests, 0);
  std::vector<std::string> bodies(kRequests);
  for (int i = 0; i < kRequests; ++i) {
    HttpRequest req;
    req.url = server.url("/echo");
    req.body = "request " + std::to_string(i);
    client.async_request(req, [&, i](Result<HttpResponse> res) {
      std::lock_guard lock(mutex);
      ++calls[i];
      bodies[i] = res.ok() ? res->body : res.status().to_string();
      ++done;
      cv.notify_all();
    });
  }
  std::unique_lock lock(mutex);
  REQUIRE(cv.wait_for(lock, std::chrono::seconds(20), [&] { return done == kRequests; }));
  for (int i = 0; i < kRequests; ++i) {
    CHECK(calls[i] == 1);
    CHECK(bodies[i] == "request " + std::to_string(i));
  }
  CHECK(server.accepted() <= kRequests);
  lock.unlock();
  // The pool keeps at most max_idle_connections_per_host; a second wave mostly reuses them.
  const int accepted_before = server.accepted();
  for (int i = 0; i < 8; ++i) REQUIRE(client.request(get(server.url("/echo"))).ok());
  CHECK(server.accepted() == accepted_before);
}

TEST_CASE_FIXTURE(LoopbackClient, "http client fails cleanly on an https URL served by a plain HTTP server") {
  auto res = client.request(get("https://127.0.0.1:" + std::to_string(server.port()) + "/echo"));
  REQUIRE_FALSE(res.ok());
  CHECK(res.status().code() == StatusCode::kIoError);
}

TEST_CASE("http client refuses bad URLs, methods and header injection through the callback") {
  IoThreads io;
  HttpClient client(io.io);
  auto bad_url = client.request(get("ftp://example.com/"));
  CHECK(bad_url.status().code() == StatusCode::kInvalidArgument);
  HttpRequest bad_method = get("http://127.0.0.1:1/");
  bad_method.method = "FETCH";
  CHECK(client.request(bad_method).status().code() == StatusCode::kInvalidArgument);
  HttpRequest injected = get("http://127.0.0.1:1/");
  injected.headers = {{"X-A", "1\r\nX-Evil: 2"}};
  CHECK(client.request(injected).status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("destroying the http client ends a pending request with Cancelled, once") {
  LoopbackHttpServer server;
  IoThreads io;
  std::atomic<int> calls{0};
  std::promise<Result<HttpResponse>> result;
  {
    HttpClient client(io.io);
    client.async_request(get(server.url("/slow?ms=800")), [&](Result<HttpResponse> res) {
      if (++calls == 1) result.set_value(std::move(res));
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  auto future = result.get_future();
  REQUIRE(future.wait_for(std::chrono::seconds(1)) == std::future_status::ready);
  CHECK(future.get().status().code() == StatusCode::kCancelled);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK(calls == 1);
}

TEST_CASE("the blocking request helper refuses to run on an io thread instead of deadlocking") {
  IoThreads io;
  HttpClient client(io.io);
  std::promise<Result<HttpResponse>> result;
  boost::asio::post(io.io, [&] { result.set_value(client.request(get("http://127.0.0.1:1/"))); });
  auto future = result.get_future();
  REQUIRE(future.wait_for(std::chrono::seconds(2)) == std::future_status::ready);
  CHECK(future.get().status().code() == StatusCode::kFailedPrecondition);
}
