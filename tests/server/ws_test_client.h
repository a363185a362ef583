// Helpers for the server's WebSocket integration tests (the server process and HTTP requests come from
// server_process.h): a WebSocket client over Boost.Beast that checks every event's envelope:
// connection-level events (error, pong) carry seq 0, and each session's events (errors raised inside a
// response included) carry its session_id and increasing seq; and the client events the tests build.
#pragma once

#include <doctest/doctest.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <nlohmann/json.hpp>

#include "tests/server/server_process.h"

namespace agentserve::testing {

namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using nlohmann::json;

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
