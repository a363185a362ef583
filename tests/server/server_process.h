// A real `agentserve serve` process for integration tests: on a free loopback port (read from its
// "listening on HOST:PORT" line), with any arguments, restartable on the same data dir, stopped with SIGTERM
// or killed with SIGKILL (and killed if a test leaves it running). Either started by the caller with its own
// arguments, or on a tiny generated model in a temp folder of its own with an optional config file. Plus
// small blocking HTTP helpers over Boost.Beast (one connection each, or a KeepAliveClient that reuses one).
// It signals only the process it started.
#pragma once

#include <doctest/doctest.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

namespace agentserve::testing {

// A tiny random model (make-model --preset tiny) in dir/tiny; returns its folder.
inline std::filesystem::path make_tiny_model(const std::filesystem::path& dir) {
  const std::filesystem::path out = dir / "tiny";
  const std::string make = std::string("'") + AGENTSERVE_BINARY +
                           "' make-model --preset tiny --seed 3 --out '" + out.string() + "' >/dev/null 2>&1";
  REQUIRE(std::system(make.c_str()) == 0);
  return out;
}

class ServerProcess {
 public:
  // Not running yet: start(args) launches it.
  ServerProcess() = default;

  // Started at once on a tiny model made in dir(), a temp folder removed with this object, with two
  // compute threads, a 64 MiB KV cache and two I/O threads; `config_json` is written to dir()/config.json
  // and passed as --config when not empty, then `extra_args` follow.
  explicit ServerProcess(const std::string& config_json, const std::vector<std::string>& extra_args = {}) {
    char templ[] = "/tmp/agentserve_server_test_XXXXXX";
    REQUIRE(::mkdtemp(templ) != nullptr);
    dir_ = templ;
    const std::string model = make_tiny_model(dir_).string();
    std::vector<std::string> args = {"--model",       model, "--threads",    "2",
                                     "--kv-cache-mb", "64",  "--io-threads", "2"};
    if (!config_json.empty()) {
      const std::filesystem::path path = dir_ / "config.json";
      FILE* f = std::fopen(path.c_str(), "w");
      REQUIRE(f != nullptr);
      std::fputs(config_json.c_str(), f);
      std::fclose(f);
      args.push_back("--config");
      args.push_back(path.string());
    }
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    start(args);
  }

  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  ~ServerProcess() {
    kill9();
    if (!dir_.empty()) {
      std::error_code ignored;
      std::filesystem::remove_all(dir_, ignored);
    }
  }

  // Starts `agentserve serve --port 0 ARGS` and waits for its "listening on HOST:PORT" line.
  void start(const std::vector<std::string>& args) {
    int out[2];
    REQUIRE(::pipe(out) == 0);
    pid_ = ::fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      ::dup2(out[1], STDOUT_FILENO);
      ::close(out[0]);
      ::close(out[1]);
      std::vector<std::string> all = {AGENTSERVE_BINARY, "serve", "--port", "0"};
      all.insert(all.end(), args.begin(), args.end());
      std::vector<char*> argv;
      for (auto& a : all) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(AGENTSERVE_BINARY, argv.data());
      ::_exit(127);
    }
    ::close(out[1]);
    std::string text;
    pollfd pfd{out[0], POLLIN, 0};
    while (text.find('\n') == std::string::npos && ::poll(&pfd, 1, 60000) > 0) {
      char buf[256];
      const ssize_t n = ::read(out[0], buf, sizeof buf);
      if (n <= 0) break;
      text.append(buf, static_cast<size_t>(n));
    }
    stdout_fd_ = out[0];  // kept open: a closed pipe would kill the server with SIGPIPE if it wrote again
    const std::string prefix = "listening on ";
    REQUIRE_MESSAGE(text.starts_with(prefix), "serve printed: " << text);
    port_ = std::stoi(text.substr(text.find(':', prefix.size()) + 1));
  }

  // SIGTERM, then the exit status (or -1 if it did not exit within 30 s, when it is killed).
  int stop() { return signal_and_wait(SIGTERM); }
  // SIGKILL, then the exit status (128 + SIGKILL); -1 when not running.
  int kill9() { return signal_and_wait(SIGKILL); }

  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  // The temp folder of a server made by the config constructor (empty otherwise).
  const std::filesystem::path& dir() const { return dir_; }

 private:
  int signal_and_wait(int signal) {
    if (pid_ <= 0) return -1;
    ::kill(pid_, signal);
    int code = -1;
    for (int i = 0; i < 3000; ++i) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (code == -1) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    pid_ = -1;
    if (stdout_fd_ >= 0) ::close(stdout_fd_);
    stdout_fd_ = -1;
    return code;
  }

  std::filesystem::path dir_;
  pid_t pid_ = -1;
  int port_ = 0;
  int stdout_fd_ = -1;
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

  // `websocket_upgrade` makes it a WebSocket upgrade request (to see a refusal's HTTP status); the
  // connection is then of no further use.
  HttpReply request(boost::beast::http::verb method, const std::string& target, const std::string& body = "",
                    const std::string& api_key = "", bool websocket_upgrade = false) {
    namespace http = boost::beast::http;
    http::request<http::string_body> req{method, target, 11};
    req.set(http::field::host, "127.0.0.1");
    if (!api_key.empty()) req.set(http::field::authorization, "Bearer " + api_key);
    if (websocket_upgrade) {
      req.set(http::field::connection, "Upgrade");
      req.set(http::field::upgrade, "websocket");
      req.set(http::field::sec_websocket_version, "13");
      req.set(http::field::sec_websocket_key, "dGhlIHNhbXBsZSBub25jZQ==");
    }
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

// One request on a connection of its own.
inline HttpReply http_request(int port, boost::beast::http::verb method, const std::string& target,
                              const std::string& body = "", const std::string& api_key = "",
                              bool websocket_upgrade = false) {
  KeepAliveClient client(port);
  return client.request(method, target, body, api_key, websocket_upgrade);
}

}  // namespace agentserve::testing
