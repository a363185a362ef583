// HttpConnection: one plain HTTP/1.1 connection of the server's port, on its own strand. It reads requests
// one after another (keep-alive: up to kMaxRequestsPerConnection, each within handshake_timeout of the
// last reply), authenticates every route but /healthz and /readyz (Authorization: Bearer, via Auth),
// answers the plain routes, and runs /v1/chat/completions against the engine: one JSON reply, or SSE
// over chunked transfer encoding written as the engine produces text. A WebSocket upgrade on /v1/ws is
// handed to a WsSession.
//
// With moderation configured (ServerContext::moderation) a completion's text passes a ModerationGate before
// the builder sees it: a chunk (content, reasoning or a tool call) is made and sent only from text whose
// window passed, the remainder is checked before the last chunk, and a block ends the reply with
// finish_reason "content_filter" and a moderation_blocked error, cancelling the engine request. New user
// messages (and client tool outputs) are checked before generation starts when the config asks for it.
//
// While a completion runs it watches the socket: a client that goes away (or stops reading past
// max_write_queue_bytes) cancels the engine request. It must never block an io thread, never touch the
// socket off its strand, and never let a request end the process.
#pragma once

#include <chrono>
#include <cstddef>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "agent/moderation_gate.h"
#include "engine/request.h"
#include "server/auth.h"
#include "server/openai_api.h"
#include "server/server_context.h"

namespace agentserve::server {

class HttpConnection : public std::enable_shared_from_this<HttpConnection> {
 public:
  static constexpr int kMaxRequestsPerConnection = 1000;

  HttpConnection(boost::asio::ip::tcp::socket&& socket, ServerContext& context);
  void run();

 private:
  using Clock = std::chrono::steady_clock;
  using Request = boost::beast::http::request<boost::beast::http::string_body>;

  // Lists a completion's engine request in ServerContext::running_completions for as long as it lives.
  class RunningCompletion {
   public:
    RunningCompletion(ServerContext& context, engine::RequestId id);
    RunningCompletion(RunningCompletion&& other) noexcept
        : context_(std::exchange(other.context_, nullptr)), id_(other.id_) {}
    RunningCompletion& operator=(RunningCompletion&&) = delete;
    ~RunningCompletion();

   private:
    ServerContext* context_;
    engine::RequestId id_;
  };

  // A chat completion in flight on this connection.
  struct Completion {
    RunningCompletion running;
    engine::RequestId request_id = 0;
    bool stream = false;
    bool include_usage = false;
    Tenant tenant;
    ChatCompletionBuilder builder;
    // Moderation (null gate when off). The reply is finished once the engine is done and the gate has
    // released everything or blocked.
    std::unique_ptr<agent::ModerationGate> gate;
    std::optional<agent::ModerationVerdict> blocked;
    bool engine_done = false;
    engine::FinishReason finish_reason = engine::FinishReason::kStop;
    engine::Usage usage;
    Status engine_error;
    std::optional<Clock::time_point> finished_at;
  };

  // One chunk of bytes to write; token_at is when the engine handed out the text it carries.
  struct Pending {
    std::string bytes;
    std::optional<Clock::time_point> token_at;
  };

  void do_read();
  void on_read(boost::beast::error_code ec, size_t bytes);
  void handle(const Request& req);
  void handle_sessions(const Request& req, const Tenant& tenant, const std::string& id);
  void start_completion(const Request& req, const Tenant& tenant);
  // Checks the request's new user text / tool outputs (as configured), then submits.
  void moderate_input(std::shared_ptr<ChatCompletionRequest> chat, Tenant tenant, int stage);
  void submit_completion(ChatCompletionRequest& chat, const Tenant& tenant);
  void on_engine_event(const engine::GenerationEvent& event, Clock::time_point at);
  void emit_text(std::string_view text, std::optional<Clock::time_point> at);
  void on_moderation_blocked(const agent::ModerationVerdict& verdict);
  // Sends the end of the reply once the engine and the gate are both done.
  void finish_completion();

  // Whole replies (they end the exchange).
  void reply(boost::beast::http::status status, const char* content_type, std::string body);
  void reply_json(boost::beast::http::status status, const nlohmann::json& body);
  void reply_error(const OpenAiError& error);

  void enqueue(std::string bytes, std::optional<Clock::time_point> token_at = std::nullopt);
  void enqueue_chunk(std::string data, std::optional<Clock::time_point> token_at = std::nullopt);
  void do_write();
  void on_write(boost::beast::error_code ec, size_t bytes);
  void end_exchange();
  void next_exchange();
  // Reads from the socket while a completion runs, so a client that leaves is noticed; bytes of a
  // pipelined next request are kept in buffer_.
  void watch();
  void on_watch(boost::beast::error_code ec, size_t bytes);
  void fail();  // the client is gone: cancel what runs, drop the socket

  boost::beast::tcp_stream stream_;
  ServerContext& context_;
  boost::beast::flat_buffer buffer_;
  std::optional<boost::beast::http::request_parser<boost::beast::http::string_body>> parser_;
  std::string route_;  // the route pattern of the current request, for metrics
  int served_ = 0;
  bool keep_alive_ = false;
  std::optional<Completion> completion_;

  std::deque<Pending> queue_;
  size_t queued_bytes_ = 0;
  bool writing_ = false;
  bool exchange_done_ = false;  // the reply's last bytes are queued
  bool watching_ = false;
  bool closed_ = false;
};

}  // namespace agentserve::server
