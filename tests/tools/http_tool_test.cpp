#include "tools/http_tool.h"

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include "tests/tools/tool_waiter.h"

namespace agentserve::tools {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;

// A tiny HTTP/1.1 server on 127.0.0.1:<ephemeral>, one thread per connection, one request per connection
// (it answers with Connection: close). Routes by path: /echo returns the body, /query returns the target,
// /missing is a 404, /redirect a 302, /slow answers after 1.5 s, /big sends 100 kB.
class LoopbackServer {
 public:
  LoopbackServer() {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(listen_fd_ >= 0);
    int one = 1;
    ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    REQUIRE(::listen(listen_fd_, 16) == 0);
    socklen_t len = sizeof addr;
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    acceptor_ = std::thread([this] { accept_loop(); });
  }

  ~LoopbackServer() {
    stop_ = true;
    acceptor_.join();
    for (auto& t : handlers_) t.join();
    ::close(listen_fd_);
  }

  int port() const { return port_; }
  std::string last_request() {
    std::lock_guard lock(mu_);
    return last_request_;
  }

 private:
  void accept_loop() {
    while (!stop_) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      const int fd = ::accept(listen_fd_, nullptr, nullptr);
      if (fd >= 0) handlers_.emplace_back([this, fd] { handle(fd); });
    }
  }

  void handle(int fd) {
    std::string request;
    char buf[4096];
    size_t header_end = std::string::npos;
    size_t content_length = 0;
    while (!stop_) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      const ssize_t n = ::read(fd, buf, sizeof buf);
      if (n <= 0) break;
      request.append(buf, static_cast<size_t>(n));
      if (header_end == std::string::npos && (header_end = request.find("\r\n\r\n")) != std::string::npos) {
        const std::string head = request.substr(0, header_end);
        std::string lower = head;
        for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        if (auto cl = lower.find("content-length:"); cl != std::string::npos)
          content_length = std::stoul(head.substr(cl + 15));
      }
      if (header_end != std::string::npos && request.size() >= header_end + 4 + content_length) break;
    }
    if (header_end == std::string::npos) {
      ::close(fd);
      return;
    }
    {
      std::lock_guard lock(mu_);
      last_request_ = request;
    }
    const std::string target = request.substr(
        request.find(' ') + 1, request.find(' ', request.find(' ') + 1) - request.find(' ') - 1);
    const std::string body = request.substr(header_end + 4);
    int status = 200;
    std::string out_body, extra;
    if (target.rfind("/echo", 0) == 0) {
      out_body = body;
    } else if (target.rfind("/query", 0) == 0) {
      out_body = target;
    } else if (target.rfind("/missing", 0) == 0) {
      status = 404;
      out_body = "not here";
    } else if (target.rfind("/redirect", 0) == 0) {
      status = 302;
      extra = "Location: http://elsewhere.example/\r\n";
    } else if (target.rfind("/slow", 0) == 0) {
      for (int i = 0; i < 150 && !stop_; ++i) std::this_thread::sleep_for(10ms);
      out_body = "finally";
    } else if (target.rfind("/big", 0) == 0) {
      out_body = std::string(100000, 'b');
    }
    const std::string response = "HTTP/1.1 " + std::to_string(status) +
                                 " X\r\nContent-Length: " + std::to_string(out_body.size()) +
                                 "\r\nConnection: close\r\n" + extra + "\r\n" + out_body;
    size_t sent = 0;
    while (sent < response.size()) {
      const ssize_t n = ::send(fd, response.data() + sent, response.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) break;
      sent += static_cast<size_t>(n);
    }
    ::close(fd);
  }

  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread acceptor_;
  std::vector<std::thread> handlers_;  // only the acceptor thread adds; joined after it stops
  std::mutex mu_;
  std::string last_request_;
};

// An io_context with a thread running it, for the HttpClient.
struct IoThread {
  boost::asio::io_context io;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> guard =
      boost::asio::make_work_guard(io);
  std::thread thread{[this] { io.run(); }};
  ~IoThread() {
    guard.reset();
    io.stop();
    thread.join();
  }
};

json tool_json(const std::string& name, const std::string& url, const std::string& method = "POST") {
  return {{"name", name},
          {"description", "test"},
          {"url", url},
          {"method", method},
          {"parameters",
           {{"type", "object"}, {"properties", {{"q", {{"type", "string"}}}, {"n", {{"type", "integer"}}}}}}},
          {"timeout_ms", 300},
          {"max_response_bytes", 1000},
          {"headers", {{"X-Api-Key", "k1"}}}};
}

TEST_CASE("http_tools_from_json reads a valid config and refuses bad ones by tool and field") {
  auto ok =
      http_tools_from_json({{"allowed_hosts", {"API.example.com"}},
                            {"tools", {tool_json("lookup", "https://api.example.com/v1/lookup", "get")}}});
  REQUIRE_MESSAGE(ok.ok(), ok.status().to_string());
  REQUIRE(ok->tools.size() == 1);
  CHECK(ok->tools[0].method == "GET");
  CHECK(ok->tools[0].timeout == 300ms);
  CHECK(ok->tools[0].max_response_bytes == 1000);
  REQUIRE(ok->tools[0].headers.size() == 1);
  CHECK(ok->tools[0].headers[0].first == "X-Api-Key");

  auto with = [](json tool) { return json{{"allowed_hosts", {"api.example.com"}}, {"tools", {tool}}}; };
  auto error_of = [&](json tool) { return http_tools_from_json(with(std::move(tool))).status().message(); };
  json t = tool_json("t", "https://api.example.com/x");
  CHECK(error_of(tool_json("t", "https://evil.example.com/x")).find("not in allowed_hosts") !=
        std::string::npos);
  CHECK(error_of(tool_json("t", "https://api.example.com.evil.io/x")).find("not in allowed_hosts") !=
        std::string::npos);
  CHECK(error_of(tool_json("t", "ftp://api.example.com/x")).find("http tool t: url") != std::string::npos);
  CHECK(error_of(tool_json("t", "https://api.example.com/x", "DELETE")).find("GET or POST") !=
        std::string::npos);
  CHECK(error_of(tool_json("bad name", "https://api.example.com/x")).find("name must match") !=
        std::string::npos);
  json t2 = t;
  t2["timeout_ms"] = 0;
  CHECK(error_of(t2).find("timeout_ms") != std::string::npos);
  t2 = t;
  t2["max_response_bytes"] = int64_t{1} << 40;
  CHECK(error_of(t2).find("max_response_bytes") != std::string::npos);
  t2 = t;
  t2["headers"] = {{"Host", "other"}};
  CHECK(error_of(t2).find("set by the client") != std::string::npos);
  t2 = t;
  t2["headers"] = {{"X-Evil", "a\r\nInjected: 1"}};
  CHECK(error_of(t2).find("control characters") != std::string::npos);
  t2 = t;
  t2["parameters"] = {{"type", "object"}, {"allOf", json::array()}};
  CHECK(error_of(t2).find("allOf") != std::string::npos);
  t2 = t;
  t2["retries"] = 3;
  CHECK(error_of(t2).find("unknown field \"retries\"") != std::string::npos);
  CHECK(http_tools_from_json({{"allowed", json::array()}}).status().code() == StatusCode::kInvalidArgument);
  CHECK(http_tools_from_json(json::array()).status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("GET puts the arguments in the query string, POST in a JSON body, with the caller's ids") {
  HttpToolConfig get;
  get.name = "g";
  get.url = "http://h.example/search?v=1";
  get.method = "GET";
  ToolContext ctx{.tenant = "acme", .agent_id = "a1", .session_id = "s\r\nX: y", .call_id = "c7"};
  auto r = make_http_tool_request(get, {{"q", "a b&c=ü"}, {"n", 3}}, ctx);
  REQUIRE(r.ok());
  CHECK(r->url == "http://h.example/search?v=1&n=3&q=a%20b%26c%3D%C3%BC");
  CHECK(r->body.empty());
  auto has_header = [&](const std::string& name, const std::string& value) {
    for (const auto& [n, v] : r->headers) {
      if (n == name && v == value) return true;
    }
    return false;
  };
  CHECK(has_header("X-Agentserve-Tenant", "acme"));
  CHECK(has_header("X-Agentserve-Agent", "a1"));
  CHECK(has_header("X-Agentserve-Call-Id", "c7"));
  for (const auto& [n, v] : r->headers) CHECK(n != "X-Agentserve-Session");  // the injected value is dropped

  HttpToolConfig post = get;
  post.method = "POST";
  post.url = "http://h.example/do";
  auto p = make_http_tool_request(post, {{"q", "x"}}, {});
  REQUIRE(p.ok());
  CHECK(p->url == "http://h.example/do");
  CHECK(p->body == R"({"q":"x"})");
  CHECK(p->method == "POST");
}

TEST_CASE(
    "HTTP tools against a loopback server: 2xx is the output; 404, 302, timeout and oversize are errors") {
  LoopbackServer server;
  IoThread io;
  net::HttpClient client(io.io);
  const std::string base = "http://127.0.0.1:" + std::to_string(server.port());
  auto config = http_tools_from_json(
      {{"allowed_hosts", {"127.0.0.1"}},
       {"tools",
        {tool_json("echo", base + "/echo"), tool_json("query", base + "/query", "GET"),
         tool_json("missing", base + "/missing"), tool_json("redirect", base + "/redirect"),
         tool_json("slow", base + "/slow"), tool_json("big", base + "/big")}}});
  REQUIRE_MESSAGE(config.ok(), config.status().to_string());
  ToolRegistry registry;
  REQUIRE(register_http_tools(registry, *config, client).ok());
  const ToolContext ctx{.tenant = "t1", .agent_id = "a1", .call_id = "c1"};

  ToolResult echo = testing::call_tool(registry, "echo", {{"q", "héllo"}, {"n", 2}}, ctx);
  REQUIRE_MESSAGE(!echo.is_error, echo.output);
  CHECK(json::parse(echo.output) == json{{"q", "héllo"}, {"n", 2}});
  const std::string seen = server.last_request();
  CHECK(seen.rfind("POST /echo HTTP/1.1", 0) == 0);
  CHECK(seen.find("X-Api-Key: k1") != std::string::npos);
  CHECK(seen.find("X-Agentserve-Tenant: t1") != std::string::npos);
  CHECK(seen.find("application/json") != std::string::npos);

  ToolResult query = testing::call_tool(registry, "query", {{"q", "a b"}}, ctx);
  REQUIRE_MESSAGE(!query.is_error, query.output);
  CHECK(query.output == "/query?q=a%20b");

  ToolResult missing = testing::call_tool(registry, "missing", json::object(), ctx);
  CHECK(missing.is_error);
  CHECK(missing.output.find("status 404") != std::string::npos);
  CHECK(missing.output.find("not here") != std::string::npos);

  ToolResult redirect = testing::call_tool(registry, "redirect", json::object(), ctx);
  CHECK(redirect.is_error);
  CHECK(redirect.output.find("status 302 (redirects are not followed)") != std::string::npos);

  const auto start = std::chrono::steady_clock::now();
  ToolResult slow = testing::call_tool(registry, "slow", json::object(), ctx);
  CHECK(std::chrono::steady_clock::now() - start < 1200ms);
  CHECK(slow.is_error);
  CHECK(slow.code == StatusCode::kDeadlineExceeded);

  ToolResult big = testing::call_tool(registry, "big", json::object(), ctx);
  CHECK(big.is_error);
  CHECK(big.code == StatusCode::kResourceExhausted);

  ToolResult invalid = testing::call_tool(registry, "echo", {{"n", "two"}}, ctx);
  CHECK(invalid.code == StatusCode::kInvalidArgument);
}

TEST_CASE("register_http_tools checks the allowlist again") {
  IoThread io;
  net::HttpClient client(io.io);
  HttpToolsConfig config;
  config.allowed_hosts = {"a.example"};
  HttpToolConfig tool;
  tool.name = "t";
  tool.url = "http://b.example/";
  config.tools.push_back(tool);
  ToolRegistry registry;
  CHECK(register_http_tools(registry, config, client).message().find("not in allowed_hosts") !=
        std::string::npos);
  CHECK(registry.find("t") == nullptr);
}

}  // namespace
}  // namespace agentserve::tools
