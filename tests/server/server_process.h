// A real `agentserve serve` process for integration tests: a tiny generated model in a scratch folder, the
// server on a free loopback port (read from its "listening on" line), stopped with SIGTERM, killed if a
// test leaves it running. Plus small blocking HTTP helpers over Boost.Beast (one connection each, or a
// KeepAliveClient that reuses one).
#pragma once

#include <doctest/doctest.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

namespace agentserve::test {

struct ServerProcess {
  std::filesystem::path dir;
  pid_t pid = -1;
  int port = 0;
  int stdout_fd = -1;

  // `config_json`: written to dir/config.json and passed as --config when not empty.
  explicit ServerProcess(const std::string& config_json = "", std::vector<std::string> extra_args = {}) {
    char templ[] = "/tmp/agentserve_http_test_XXXXXX";
    REQUIRE(::mkdtemp(templ) != nullptr);
    dir = templ;
    const std::string make = std::string("'") + AGENTSERVE_BINARY +
                             "' make-model --preset tiny --seed 3 --out '" + (dir / "tiny").string() +
                             "' >/dev/null 2>&1";
    REQUIRE(std::system(make.c_str()) == 0);
    std::vector<std::string> args = {AGENTSERVE_BINARY, "serve", "--model",      (dir / "tiny").string(),
                                     "--port",          "0",     "--threads",    "2",
                                     "--kv-cache-mb",   "64",    "--io-threads", "2"};
    if (!config_json.empty()) {
      const auto path = dir / "config.json";
      FILE* f = std::fopen(path.c_str(), "w");
      REQUIRE(f != nullptr);
      std::fputs(config_json.c_str(), f);
      std::fclose(f);
      args.push_back("--config");
      args.push_back(path.string());
    }
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    int out[2];
    REQUIRE(::pipe(out) == 0);
    pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::dup2(out[1], STDOUT_FILENO);
      ::close(out[0]);
      ::close(out[1]);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(AGENTSERVE_BINARY, argv.data());
      ::_exit(127);
    }
    ::close(out[1]);
    const std::string prefix = "listening on 127.0.0.1:";
    std::string text;
    pollfd pfd{out[0], POLLIN, 0};
    while (text.find('\n') == std::string::npos && ::poll(&pfd, 1, 60000) > 0) {
      char buf[256];
      const ssize_t n = ::read(out[0], buf, sizeof buf);
      if (n <= 0) break;
      text.append(buf, static_cast<size_t>(n));
    }
    stdout_fd = out[0];  // kept open: a closed pipe would kill the server with SIGPIPE if it wrote again
    REQUIRE_MESSAGE(text.starts_with(prefix), "serve printed: " << text);
    port = std::stoi(text.substr(prefix.size()));
  }

  // SIGTERM, then the exit status (or -1 if it did not exit within 30 s).
  int stop() {
    ::kill(pid, SIGTERM);
    for (int i = 0; i < 3000; ++i) {
      int status = 0;
      if (::waitpid(pid, &status, WNOHANG) == pid) {
        pid = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return -1;
  }

  ~ServerProcess() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
    if (stdout_fd >= 0) ::close(stdout_fd);
    std::error_code ignored;
    std::filesystem::remove_all(dir, ignored);
  }
};

struct HttpReply {
  int status = 0;
  std::string body;
  std::string content_type;
  bool keep_alive = false;
};

// One HTTP/1.1 connection that several requests reuse (keep-alive).
class KeepAliveClient {
 public:
  explicit KeepAliveClient(int port) : socket_(ioc_) {
    socket_.connect({boost::asio::ip::make_address("127.0.0.1"), static_cast<uint16_t>(port)});
  }

  HttpReply request(boost::beast::http::verb method, const std::string& target, const std::string& body = "",
                    const std::string& api_key = "") {
    namespace http = boost::beast::http;
    http::request<http::string_body> req{method, target, 11};
    req.set(http::field::host, "127.0.0.1");
    if (!api_key.empty()) req.set(http::field::authorization, "Bearer " + api_key);
    if (!body.empty()) {
      req.set(http::field::content_type, "application/json");
      req.body() = body;
    }
    req.prepare_payload();
    http::write(socket_, req);
    http::response<http::string_body> res;
    http::read(socket_, buffer_, res);
    return {static_cast<int>(res.result_int()), res.body(), std::string(res[http::field::content_type]),
            res.keep_alive()};
  }

  boost::asio::ip::tcp::socket& socket() { return socket_; }
  boost::beast::flat_buffer& buffer() { return buffer_; }

 private:
  boost::asio::io_context ioc_;
  boost::asio::ip::tcp::socket socket_;
  boost::beast::flat_buffer buffer_;
};

inline HttpReply http_request(int port, boost::beast::http::verb method, const std::string& target,
                              const std::string& body = "", const std::string& api_key = "") {
  KeepAliveClient client(port);
  return client.request(method, target, body, api_key);
}

}  // namespace agentserve::test
