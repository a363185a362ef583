// WsSession: one WebSocket connection on /v1/ws, on its own strand. It reads client events one text frame at
// a time, runs them against the sessions it owns (conversation state in memory), submits responses to the
// engine, and writes server events through a bounded queue with one write in flight. Engine callbacks come
// on the engine thread and are posted to this connection's strand: the socket and the sessions are only
// touched there. A session outlives its connection, so a response whose client went away still finishes.
//
// It must never block an io thread, never touch the socket off its strand, and never let client input
// end the process or the connection (only transport errors, limits on unread output and shutdown do).
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <nlohmann/json.hpp>

#include "engine/engine.h"
#include "server/metrics.h"
#include "server/protocol.h"
#include "server/server_options.h"

namespace agentserve::server {

class WsSession;

// What every connection shares: options, the engine, metrics, and the registry of live connections that
// shutdown walks. Owned by HttpServer; outlives every connection.
struct ServerContext {
  ServerOptions options;
  engine::Engine* engine = nullptr;  // set once the model is loaded (/readyz)
  Metrics* metrics = nullptr;
  std::string model_name;

  std::atomic<bool> stopping{false};
  std::mutex connections_mutex;
  std::unordered_map<WsSession*, std::weak_ptr<WsSession>> connections;

  size_t live_connections();
};

// A response that is running: the engine request and the text streamed so far.
struct RunningResponse {
  std::string id;
  engine::RequestId request_id = 0;
  std::string text;
};

// One agent session (session.create): its configuration and conversation. Touched only on the strand of the
// connection that created it.
struct Conversation {
  std::string id;
  SessionConfig config;
  std::vector<ConversationMessage> messages;
  std::optional<RunningResponse> running;
};

class WsSession : public std::enable_shared_from_this<WsSession> {
 public:
  WsSession(boost::asio::ip::tcp::socket&& socket, ServerContext& context);
  ~WsSession();
  WsSession(const WsSession&) = delete;
  WsSession& operator=(const WsSession&) = delete;

  // Completes the WebSocket handshake of `upgrade` (already read by the HTTP side) and starts reading.
  void run(boost::beast::http::request<boost::beast::http::string_body> upgrade);
  // From any thread: cancel running responses, let their response.done go out, then close (going away).
  void shutdown();

 private:
  void on_accept(boost::beast::error_code ec);
  void do_read();
  void on_read(boost::beast::error_code ec, size_t bytes);
  void handle_text(std::string_view text);

  void on_session_create(const ClientEvent& event);
  void on_session_delete(const ClientEvent& event);
  void on_item_create(const ClientEvent& event);
  void on_response_create(const ClientEvent& event);
  void on_response_cancel(const ClientEvent& event);
  // The session an event names (session_id) or the newest one; sends the error and returns null if none.
  std::shared_ptr<Conversation> find_session(const ClientEvent& event);
  std::vector<int32_t> render_prompt(const Conversation& conversation) const;

  // Runs on the strand of the connection that created `conversation`; `connection` is null once it is gone.
  static void deliver(ServerContext& context, Conversation& conversation,
                      const engine::GenerationEvent& event, WsSession* connection);

  // Stamps event_id and seq and queues the frame; a queue past the limit disconnects the client.
  void send(nlohmann::json event);
  void send_error(ProtocolError error, const std::string& event_id = "");
  void do_write();
  void on_write(boost::beast::error_code ec, size_t bytes);
  void close_when_flushed();
  void drop();  // ends the connection now (transport error, unread output)
  bool any_running() const;

  ServerContext& context_;
  boost::beast::websocket::stream<boost::beast::tcp_stream> ws_;
  boost::beast::flat_buffer buffer_;
  std::deque<std::string> queue_;
  size_t queued_bytes_ = 0;
  bool writing_ = false;
  bool closing_ = false;  // shutdown: no new responses; close once nothing runs and the queue is flushed
  bool closed_ = false;   // close started or connection dropped: nothing more is written
  uint64_t seq_ = 0;
  std::vector<std::shared_ptr<Conversation>> sessions_;  // in creation order
};

}  // namespace agentserve::server
