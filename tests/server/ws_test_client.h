// Helpers for the server's integration tests: a real `agentserve serve` process on a loopback port (any
// arguments, restartable on the same data dir, stopped with SIGTERM or killed with SIGKILL), a plain HTTP
// GET, and a WebSocket client over Boost.Beast that checks every event's envelope: connection-level events
// (error, pong) carry seq 0, and each session's events (errors raised inside a response included) carry
// its session_id and increasing seq.
#pragma once

#include <doctest/doctest.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <nlohmann/json.hpp>

namespace agentserve::testing {

namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using nlohmann::json;

// A tiny random model (make-model --preset tiny) in dir/tiny; returns its folder.
inline std::filesystem::path make_tiny_model(const std::filesystem::path& dir) {
  const std::filesystem::path out = dir / "tiny";
  const std::string make = std::string("'") + AGENTSERVE_BINARY + "' make-model --preset tiny --seed 3 --out '" +
                           out.string() + "' >/dev/null 2>&1";
  REQUIRE(std::system(make.c_str()) == 0);
  return out;
}

class ServerProcess {
 public:
  ServerProcess() = default;
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;
  ~ServerProcess() { kill9(); }

  // Starts `agentserve serve ARGS --port 0` and waits for its "listening on HOST:PORT" line.
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

  // SIGTERM, then the exit status (or -1 if it did not exit within 30 s).
  int stop() { return signal_and_wait(SIGTERM); }
  int kill9() { return signal_and_wait(SIGKILL); }

  int port() const { return port_; }
  pid_t pid() const { return pid_; }

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

  pid_t pid_ = -1;
  int port_ = 0;
  int stdout_fd_ = -1;
};

struct HttpReply {
  int status;
  std::string body;
};

// One request; `upgrade` makes it a WebSocket upgrade on /v1/ws (to see a refusal's HTTP status).
inline HttpReply http_get(int port, const std::string& target, const std::string& bearer = "",
                          bool upgrade = false) {
  net::io_context ioc;
  tcp::socket socket(ioc);
  socket.connect({net::ip::make_address("127.0.0.1"), static_cast<uint16_t>(port)});
  http::request<http::empty_body> req{http::verb::get, target, 11};
  req.set(http::field::host, "127.0.0.1");
  if (!bearer.empty()) req.set(http::field::authorization, "Bearer " + bearer);
  if (upgrade) {
    req.set(http::field::connection, "Upgrade");
    req.set(http::field::upgrade, "websocket");
    req.set(http::field::sec_websocket_version, "13");
    req.set(http::field::sec_websocket_key, "dGhlIHNhbXBsZSBub25jZQ==");
  }
  http::write(socket, req);
  beast::flat_buffer buffer;
  http::response<http::string_body> res;
  http::read(socket, buffer, res);
  return {static_cast<int>(res.result_int()), res.body()};
}

// A WebSocket client that checks the envelope of every event it reads.
class Client {
 public:
  explicit Client(int port, const std::string& bearer = "", int receive_buffer_bytes = 0) : ws_(ioc_) {
    auto& socket = ws_.next_layer();
    if (receive_buffer_bytes > 0) {
      socket.open(tcp::v4());
      socket.set_option(net::socket_base::receive_buffer_size(receive_buffer_bytes));
    }
    socket.connect({net::ip::make_address("127.0.0.1"), static_cast<uint16_t>(port)});
    if (!bearer.empty())
      ws_.set_option(websocket::stream_base::decorator(
          [bearer](websocket::request_type& req) { req.set(http::field::authorization, "Bearer " + bearer); }));
    ws_.handshake("127.0.0.1", "/v1/ws");
    ws_.text(true);
  }

  void send(const std::string& text) { ws_.write(net::buffer(text)); }
  void send(const json& event) { send(event.dump()); }

  json read() {
    beast::flat_buffer buffer;
    ws_.read(buffer);
    json event = json::parse(beast::buffers_to_string(buffer.data()));
    REQUIRE(event.contains("type"));
    REQUIRE(event["event_id"].is_string());
    REQUIRE(event["seq"].is_number_unsigned());
    const uint64_t seq = event["seq"].get<uint64_t>();
    // An error raised inside a response (malformed_tool_call) is a session event with the session's seq.
    const bool connection_level = (event["type"] == "error" && seq == 0) || event["type"] == "pong";
    if (event.contains("session_id") && !connection_level) {
      uint64_t& last = last_seq_[event["session_id"].get<std::string>()];
      CHECK_MESSAGE(seq > last, "seq " << seq << " after " << last);
      last = seq;
    } else {
      CHECK_MESSAGE(seq == 0, event.dump());
    }
    return event;
  }

  // Reads until an event of `type`; the ones before it are returned in `before` when given.
  json read_until(const std::string& type, std::vector<json>* before = nullptr) {
    for (;;) {
      json event = read();
      if (event["type"] == type) return event;
      if (before) before->push_back(event);
    }
  }

  // Set what this client counts as already seen (after a resume with last_seq).
  void set_last_seq(const std::string& session_id, uint64_t seq) { last_seq_[session_id] = seq; }
  uint64_t last_seq(const std::string& session_id) { return last_seq_[session_id]; }

  websocket::stream<tcp::socket>& ws() { return ws_; }

 private:
  net::io_context ioc_;
  websocket::stream<tcp::socket> ws_;
  std::map<std::string, uint64_t> last_seq_;
};

inline json user_message(const std::string& text) {
  return {{"type", "conversation.item.create"}, {"item", {{"type", "message"}, {"role", "user"}, {"content", text}}}};
}

// A server tool declared with its own, narrower parameter schema (docs/protocol.md, session tools): every
// property required, nothing else allowed.
inline json narrowed_server_tool(const std::string& name, const json& properties) {
  json required = json::array();
  for (const auto& [key, value] : properties.items()) required.push_back(key);
  return {{"type", "function"},
          {"name", name},
          {"execution", "server"},
          {"parameters",
           {{"type", "object"}, {"properties", properties}, {"required", required}, {"additionalProperties", false}}}};
}

// tool_choice naming one function.
inline json named_tool_choice(const std::string& name) {
  return {{"type", "function"}, {"name", name}};
}

inline json greedy_session(int max_tokens) {
  return {{"type", "session.create"},
          {"session", {{"agent_id", "test"}, {"sampling", {{"temperature", 0}, {"max_tokens", max_tokens}}}}}};
}

}  // namespace agentserve::testing
