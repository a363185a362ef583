#include "server/ws_session.h"

#include <algorithm>

#include <spdlog/spdlog.h>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>

namespace agentserve::server {

namespace beast = boost::beast;
namespace websocket = beast::websocket;
namespace net = boost::asio;
using nlohmann::json;

size_t ServerContext::live_connections() {
  std::lock_guard lock(connections_mutex);
  return connections.size();
}

WsSession::WsSession(net::ip::tcp::socket&& socket, ServerContext& context)
    : context_(context), ws_(std::move(socket)) {}

WsSession::~WsSession() {
  std::lock_guard lock(context_.connections_mutex);
  context_.connections.erase(this);
}

void WsSession::run(beast::http::request<beast::http::string_body> upgrade) {
  {
    std::lock_guard lock(context_.connections_mutex);
    context_.connections.emplace(this, weak_from_this());
  }
  const auto& o = context_.options;
  beast::get_lowest_layer(ws_).expires_never();  // the websocket timeouts below take over
  websocket::stream_base::timeout timeouts{};
  timeouts.handshake_timeout = o.handshake_timeout;
  timeouts.idle_timeout = o.idle_timeout;
  timeouts.keep_alive_pings = true;
  ws_.set_option(timeouts);
  ws_.set_option(websocket::stream_base::decorator(
      [](websocket::response_type& res) { res.set(beast::http::field::server, "agentserve"); }));
  ws_.read_message_max(o.max_message_bytes * ServerOptions::kHardMessageFactor);
  ws_.text(true);
  // The handshake reply is written on this connection's strand like everything else.
  net::dispatch(ws_.get_executor(), [self = shared_from_this(), req = std::move(upgrade)]() mutable {
    if (self->context_.stopping) return;  // shutting down: the socket just closes
    self->ws_.async_accept(req, beast::bind_front_handler(&WsSession::on_accept, self));
  });
}

void WsSession::on_accept(beast::error_code ec) {
  if (ec) {
    spdlog::debug("websocket handshake failed: {}", ec.message());
    return;
  }
  do_read();
}

void WsSession::do_read() {
  ws_.async_read(buffer_, beast::bind_front_handler(&WsSession::on_read, shared_from_this()));
}

void WsSession::on_read(beast::error_code ec, size_t) {
  if (ec) {
    if (ec == websocket::error::message_too_big)
      spdlog::info("closing a connection: message over the hard limit");
    else if (ec != websocket::error::closed && ec != net::error::operation_aborted)
      spdlog::debug("websocket read ended: {}", ec.message());
    closed_ = true;
    return;
  }
  if (!ws_.got_text()) {
    send_error({"invalid_request_error", "binary_not_supported", "events are JSON text frames", "", ""});
  } else {
    const auto data = buffer_.cdata();
    handle_text(std::string_view(static_cast<const char*>(data.data()), data.size()));
  }
  buffer_.consume(buffer_.size());
  if (!closed_) do_read();
}

void WsSession::handle_text(std::string_view text) {
  const int vocab = static_cast<int>(context_.engine->config().vocab_size);
  ParseResult parsed = parse_client_event(text, context_.options, vocab);
  if (auto* error = std::get_if<ProtocolError>(&parsed)) return send_error(std::move(*error));
  const ClientEvent& event = std::get<ClientEvent>(parsed);
  switch (event.type) {
    case ClientEventType::kSessionCreate:
      return on_session_create(event);
    case ClientEventType::kSessionDelete:
      return on_session_delete(event);
    case ClientEventType::kConversationItemCreate:
      return on_item_create(event);
    case ClientEventType::kResponseCreate:
      return on_response_create(event);
    case ClientEventType::kResponseCancel:
      return on_response_cancel(event);
    case ClientEventType::kPing:
      return send(pong_event(event.event_id));
  }
}

void WsSession::on_session_create(const ClientEvent& event) {
  const int limit = context_.options.max_sessions_per_connection;
  if (static_cast<int>(sessions_.size()) >= limit)
    return send_error({"invalid_request_error", "limit_exceeded",
                       "at most " + std::to_string(limit) + " sessions per connection", "", ""},
                      event.event_id);
  auto conversation = std::make_shared<Conversation>();
  conversation->id = make_id("s_");
  conversation->config = event.session;
  sessions_.push_back(conversation);
  send(session_created_event(conversation->id, conversation->config));
}

std::shared_ptr<Conversation> WsSession::find_session(const ClientEvent& event) {
  if (event.session_id.empty()) {
    if (!sessions_.empty()) return sessions_.back();
    send_error({"invalid_request_error", "no_session", "send session.create first", "session_id", ""},
               event.event_id);
    return nullptr;
  }
  for (const auto& s : sessions_)
    if (s->id == event.session_id) return s;
  send_error({"invalid_request_error", "session_not_found",
              "no session '" + event.session_id + "' on this connection", "session_id", ""},
             event.event_id);
  return nullptr;
}

void WsSession::on_session_delete(const ClientEvent& event) {
  auto conversation = find_session(event);
  if (!conversation) return;
  // A running response is cancelled; its callback still holds the conversation until it ends.
  if (conversation->running) context_.engine->cancel(conversation->running->request_id);
  std::erase(sessions_, conversation);
  send(session_deleted_event(conversation->id));
}

void WsSession::on_item_create(const ClientEvent& event) {
  auto conversation = find_session(event);
  if (!conversation) return;
  // The assistant's answer is appended when the response ends; an item in between would land before it.
  if (conversation->running)
    return send_error({"invalid_request_error", "response_in_progress",
                       "wait for response.done (or send response.cancel) before adding items", "item", ""},
                      event.event_id);
  const int limit = context_.options.max_items_per_session;
  if (static_cast<int>(conversation->messages.size()) >= limit)
    return send_error({"invalid_request_error", "limit_exceeded",
                       "at most " + std::to_string(limit) + " items per session", "item", ""},
                      event.event_id);
  conversation->messages.push_back(event.item);
  send(item_created_event(conversation->id, make_id("item_"), event.item));
}

std::vector<int32_t> WsSession::render_prompt(const Conversation& conversation) const {
  const auto& tokenizer = context_.engine->tokenizer();
  std::vector<int32_t> ids;
  for (const PromptPiece& piece :
       render_plain_conversation(conversation.config.instructions, conversation.messages)) {
    const std::vector<int32_t> piece_ids = tokenizer.encode(piece.text, /*parse_special=*/piece.markup);
    ids.insert(ids.end(), piece_ids.begin(), piece_ids.end());
  }
  return ids;
}

void WsSession::on_response_create(const ClientEvent& event) {
  if (closing_)
    return send_error({"server_error", "shutting_down", "the server is shutting down", "", ""},
                      event.event_id);
  auto conversation = find_session(event);
  if (!conversation) return;
  if (conversation->running)
    return send_error({"invalid_request_error", "response_in_progress",
                       "response '" + conversation->running->id + "' is still running", "type", ""},
                      event.event_id);
  engine::SamplingParams sampling = conversation->config.sampling;
  const int vocab = static_cast<int>(context_.engine->config().vocab_size);
  if (auto error =
          apply_sampling(event.sampling_override, "response.sampling", context_.options, vocab, sampling)) {
    error->event_id = event.event_id;
    return send_error(std::move(*error));
  }
  const std::string response_id = make_id("r_");
  engine::GenerationRequest request;
  request.prompt = render_prompt(*conversation);
  request.sampling = std::move(sampling);
  // Events hop to this connection's strand; the conversation rides along so the response can finish (and
  // its answer be kept) even when the connection is gone by then.
  request.on_event = [weak = weak_from_this(), conversation, executor = ws_.get_executor(),
                      context = &context_](const engine::GenerationEvent& ev) {
    net::post(executor, [weak, conversation, context, ev] {
      const auto connection = weak.lock();
      deliver(*context, *conversation, ev, connection.get());
    });
  };
  auto submitted = context_.engine->submit(std::move(request));
  if (!submitted.ok())
    return send_error(error_from_status(submitted.status(), "request_rejected", "response"), event.event_id);
  conversation->running = RunningResponse{response_id, *submitted, ""};
  send(response_created_event(conversation->id, response_id));
}

void WsSession::on_response_cancel(const ClientEvent& event) {
  auto conversation = find_session(event);
  if (!conversation) return;
  const auto& running = conversation->running;
  if (!running || (!event.response_id.empty() && event.response_id != running->id))
    return send_error(
        {"invalid_request_error", "response_not_found", "no such response is running", "response_id", ""},
        event.event_id);
  context_.engine->cancel(running->request_id);  // response.done (cancelled) follows from the engine
}

void WsSession::deliver(ServerContext& context, Conversation& conversation,
                        const engine::GenerationEvent& event, WsSession* connection) {
  if (!conversation.running || conversation.running->request_id != event.request_id) return;
  RunningResponse& response = *conversation.running;
  if (connection && connection->closed_) connection = nullptr;
  if (!event.text.empty()) {
    response.text += event.text;
    if (connection) connection->send(text_delta_event(response.id, event.text));
  }
  if (!event.finished) return;
  const std::string_view status = response_status(event.finish_reason);
  if (status == "completed" || status == "incomplete")
    conversation.messages.push_back({"assistant", response.text});
  context.metrics->record_response(status, event.usage);
  if (connection) {
    std::optional<ProtocolError> error;
    if (event.finish_reason == engine::FinishReason::kError)
      error = error_from_status(event.error, "engine_error");
    connection->send(text_done_event(response.id, response.text));
    connection->send(response_done_event(conversation.id, response.id, status, event.usage, error));
  }
  conversation.running.reset();
  if (connection && connection->closing_ && !connection->any_running()) connection->close_when_flushed();
}

bool WsSession::any_running() const {
  return std::any_of(sessions_.begin(), sessions_.end(),
                     [](const auto& s) { return s->running.has_value(); });
}

void WsSession::send_error(ProtocolError error, const std::string& event_id) {
  if (!event_id.empty()) error.event_id = event_id;
  send(error_event(error));
}

void WsSession::send(json event) {
  if (closed_) return;
  event["event_id"] = make_id("evt_");
  event["seq"] = ++seq_;
  std::string frame = event.dump(-1, ' ', false, json::error_handler_t::replace);
  queued_bytes_ += frame.size();
  if (queued_bytes_ > context_.options.max_write_queue_bytes) {
    spdlog::warn("disconnecting a client that does not read ({} bytes queued)", queued_bytes_);
    return drop();
  }
  queue_.push_back(std::move(frame));
  if (!writing_) do_write();
}

void WsSession::do_write() {
  writing_ = true;
  ws_.async_write(net::buffer(queue_.front()),
                  beast::bind_front_handler(&WsSession::on_write, shared_from_this()));
}

void WsSession::on_write(beast::error_code ec, size_t) {
  writing_ = false;
  if (ec) {
    if (ec != net::error::operation_aborted) spdlog::debug("websocket write failed: {}", ec.message());
    return drop();
  }
  queued_bytes_ -= queue_.front().size();
  queue_.pop_front();
  if (!queue_.empty()) return do_write();
  if (closing_ && !closed_ && !any_running()) close_when_flushed();
}

void WsSession::close_when_flushed() {
  if (closed_ || writing_) return;  // on_write comes back here once the queue is empty
  closed_ = true;
  ws_.async_close(websocket::close_code::going_away, [self = shared_from_this()](beast::error_code) {});
}

void WsSession::drop() {
  // The queue stays: a write in flight still refers to its front until it completes with an error.
  closed_ = true;
  beast::error_code ignored;
  beast::get_lowest_layer(ws_).socket().close(ignored);
}

void WsSession::shutdown() {
  net::post(ws_.get_executor(), [self = shared_from_this()] {
    self->closing_ = true;
    for (const auto& s : self->sessions_)
      if (s->running) self->context_.engine->cancel(s->running->request_id);
    if (!self->any_running()) self->close_when_flushed();
  });
}

}  // namespace agentserve::server
