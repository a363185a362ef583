#include "server/ws_session.h"

#include <algorithm>

#include <spdlog/spdlog.h>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include "server/agent_response.h"

namespace agentserve::server {

namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
namespace net = boost::asio;
using nlohmann::json;

namespace {

ProtocolError invalid(std::string code, std::string message, std::string param = "") {
  return {"invalid_request_error", std::move(code), std::move(message), std::move(param), ""};
}

ProtocolError session_not_found(const std::string& id) {
  return invalid("session_not_found", "no session '" + id + "' (or it belongs to another tenant)", "session_id");
}

// The session's tools and tool_choice, checked against the server's registry (a server tool must be a
// registered one; a named choice must be declared). A forced choice (required / named) is compiled into
// its decoding constraint here (the server caches it for the responses): a schema the grammar cannot
// constrain is refused now, with the grammar's reason, not when a response starts.
std::optional<ProtocolError> check_session_tools(const ServerContext& context, const SessionConfig& config,
                                                 const std::string& prefix) {
  auto tools = session_tools(context, config);
  if (!tools.ok()) return invalid("invalid_tools", tools.status().message(), prefix + ".tools");
  auto choice = session_tool_choice(config, *tools);
  if (!choice.ok()) return invalid("invalid_tool_choice", choice.status().message(), prefix + ".tool_choice");
  if (choice->mode != agent::ToolChoiceMode::kRequired && choice->mode != agent::ToolChoiceMode::kNamed)
    return std::nullopt;
  std::vector<const tools::ToolSpec*> allowed;
  for (const tools::ToolSpec& spec : *tools)
    if (choice->mode == agent::ToolChoiceMode::kRequired || spec.name == choice->name) allowed.push_back(&spec);
  if (auto compiled = forced_call_constraint(context, allowed); !compiled.ok()) {
    const bool unsupported = compiled.status().code() == StatusCode::kFailedPrecondition;
    return invalid(unsupported ? "invalid_tool_choice" : "invalid_tools", compiled.status().message(),
                   prefix + (unsupported ? ".tool_choice" : ".tools"));
  }
  return std::nullopt;
}

// While a task posted to a response's executor runs: when it was posted. The turn loop posts each engine
// event from the engine's callback, so a delta emitted by that task left the engine at this time.
thread_local std::optional<std::chrono::steady_clock::time_point> t_posted_at;

}  // namespace

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

void WsSession::run(http::request<http::string_body> upgrade) {
  {
    std::lock_guard lock(context_.connections_mutex);
    context_.connections.emplace(this, weak_from_this());
  }
  // The key is checked before the handshake: a wrong or missing one gets HTTP 401 and no WebSocket.
  const auto header = upgrade[http::field::authorization];
  auto tenant = context_.auth->authenticate(std::string_view(header.data(), header.size()));
  if (!tenant.ok()) {
    auto res = std::make_shared<http::response<http::string_body>>(http::status::unauthorized, upgrade.version());
    res->set(http::field::server, "agentserve");
    res->set(http::field::content_type, "application/json");
    res->set(http::field::www_authenticate, "Bearer");
    json error = json::object();
    error["type"] = "authentication_error";
    error["code"] = "invalid_api_key";
    error["message"] = tenant.status().message();
    error["param"] = nullptr;
    res->body() = json{{"error", error}}.dump();
    res->keep_alive(false);
    res->prepare_payload();
    net::dispatch(ws_.get_executor(), [self = shared_from_this(), res] {
      http::async_write(self->ws_.next_layer(), *res, [self, res](beast::error_code, size_t) {
        beast::error_code ignored;
        beast::get_lowest_layer(self->ws_).socket().shutdown(net::ip::tcp::socket::shutdown_send, ignored);
        self->closed_ = true;
      });
    });
    return;
  }
  tenant_ = std::move(*tenant);
  const auto& o = context_.options;
  beast::get_lowest_layer(ws_).expires_never();  // the websocket timeouts below take over
  websocket::stream_base::timeout timeouts{};
  timeouts.handshake_timeout = o.handshake_timeout;
  timeouts.idle_timeout = o.idle_timeout;
  timeouts.keep_alive_pings = true;
  ws_.set_option(timeouts);
  ws_.set_option(websocket::stream_base::decorator(
      [](websocket::response_type& res) { res.set(http::field::server, "agentserve"); }));
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
    if (ec == websocket::error::message_too_big) {
      spdlog::info("closing a connection: message over the hard limit");
    } else if (ec == websocket::error::bad_frame_payload) {
      // Beast has already failed the connection with 1007 (a text frame that is not UTF-8).
      spdlog::info("closing a connection: invalid frame payload (not UTF-8)");
      context_.metrics->record_error("bad_frame_payload");
    } else if (ec != websocket::error::closed && ec != net::error::operation_aborted) {
      spdlog::debug("websocket read ended: {}", ec.message());
    }
    closed_ = true;
    // The sessions stay (responses keep running, events are kept for resume); they just stop coming here.
    detach_sessions();
    return;
  }
  if (!ws_.got_text()) {
    send_error(invalid("binary_not_supported", "events are JSON text frames"));
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
    case ClientEventType::kSessionResume:
      return on_session_resume(event);
    case ClientEventType::kSessionUpdate:
      return on_session_update(event);
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
    return send_error(invalid("limit_exceeded", "at most " + std::to_string(limit) + " sessions per connection"),
                      event.event_id);
  if (auto error = check_session_tools(context_, event.session, "session")) {
    error->event_id = event.event_id;
    return send_error(std::move(*error));
  }
  auto created = context_.sessions->create(*tenant_, event.session);
  if (!created.ok()) {
    const bool limit_hit = created.status().code() == StatusCode::kResourceExhausted;
    return send_error(error_from_status(created.status(), limit_hit ? "tenant_session_limit" : "store_error"),
                      event.event_id);
  }
  const std::shared_ptr<Session>& session = *created;
  std::lock_guard lock(session->mutex);
  context_.sessions->attach(*session, shared_from_this(), 0);
  sessions_.push_back(session);
  context_.sessions->emit(*session, session_created_event(session->id, session->config));
}

void WsSession::on_session_resume(const ClientEvent& event) {
  auto found = context_.sessions->get(*tenant_, event.session_id);
  if (!found.ok()) {
    if (found.status().code() == StatusCode::kNotFound)
      return send_error(session_not_found(event.session_id), event.event_id);
    return send_error(error_from_status(found.status(), "store_error", "session_id"), event.event_id);
  }
  const std::shared_ptr<Session> session = *found;
  const bool mine = std::find(sessions_.begin(), sessions_.end(), session) != sessions_.end();
  const int limit = context_.options.max_sessions_per_connection;
  if (!mine && static_cast<int>(sessions_.size()) >= limit)
    return send_error(invalid("limit_exceeded", "at most " + std::to_string(limit) + " sessions per connection"),
                      event.event_id);
  std::lock_guard lock(session->mutex);
  if (session->deleted) return send_error(session_not_found(event.session_id), event.event_id);
  ResumeReport report;
  report.replay_complete = context_.sessions->attach(*session, shared_from_this(), event.last_seq);
  std::erase(sessions_, session);
  sessions_.push_back(session);
  if (session->loaded_from_store && !session->running && !session->tokens.empty()) {
    // After a restart: bring the conversation's KV back (from disk where it was spilled) with a prefill-only
    // request; session.resumed follows when it ends, with what was restored and what recomputed.
    if (start_warmup(session, report.replay_complete).ok()) return;
  }
  report.turns = session->turns;
  report.lost_unfinished_turn = context_.sessions->take_lost_unfinished_turn(*session);
  context_.sessions->emit(*session, session_resumed_event(context_.sessions->describe(*session), report));
}

void WsSession::on_session_update(const ClientEvent& event) {
  auto session = find_session(event);
  if (!session) return;
  std::lock_guard lock(session->mutex);
  if (session->deleted) return send_error(session_not_found(session->id), event.event_id);
  SessionConfig config = session->config;
  const int vocab = static_cast<int>(context_.engine->config().vocab_size);
  auto error = apply_session_fields(event.session_update, "session", context_.options, vocab, config);
  if (!error) error = check_session_tools(context_, config, "session");
  if (error) {
    error->event_id = event.event_id;
    return send_error(std::move(*error));
  }
  session->config = std::move(config);
  if (Status saved = context_.sessions->save_metadata(*session); !saved.ok())
    spdlog::warn("session {}: saving metadata: {}", session->id, saved.to_string());
  context_.sessions->emit(*session, session_updated_event(context_.sessions->describe(*session)));
}

std::shared_ptr<Session> WsSession::find_session(const ClientEvent& event) {
  if (event.session_id.empty()) {
    if (!sessions_.empty()) return sessions_.back();
    send_error(invalid("no_session", "send session.create or session.resume first", "session_id"), event.event_id);
    return nullptr;
  }
  for (const auto& s : sessions_)
    if (s->id == event.session_id) {
      if (!s->deleted) return s;
      // Deleted elsewhere (over HTTP, by the TTL sweep): it is gone for this connection too.
      std::erase(sessions_, s);
      send_error(session_not_found(event.session_id), event.event_id);
      return nullptr;
    }
  send_error(invalid("session_not_found",
                     "no session '" + event.session_id + "' on this connection (session.resume attaches one)",
                     "session_id"),
             event.event_id);
  return nullptr;
}

void WsSession::on_session_delete(const ClientEvent& event) {
  auto session = find_session(event);
  if (!session) return;
  std::erase(sessions_, session);
  // The registry's on_erased hook cancels a running response and drops the session's KV.
  if (Status erased = context_.sessions->erase(*tenant_, session->id); !erased.ok()) {
    if (erased.code() == StatusCode::kNotFound) return send_error(session_not_found(session->id), event.event_id);
    return send_error(error_from_status(erased, "store_error", "session_id"), event.event_id);
  }
}

void WsSession::on_item_create(const ClientEvent& event) {
  auto session = find_session(event);
  if (!session) return;
  if (event.tool_output) return on_tool_output(session, *event.tool_output, event.event_id);
  std::lock_guard lock(session->mutex);
  if (session->deleted) return send_error(session_not_found(session->id), event.event_id);
  // The assistant's answer is appended when the response ends; an item in between would land before it.
  if (session->running)
    return send_error(invalid("response_in_progress",
                              "wait for response.done (or send response.cancel) before adding items", "item"),
                      event.event_id);
  const int limit = context_.options.max_items_per_session;
  if (static_cast<int>(session->messages.size()) >= limit)
    return send_error(invalid("limit_exceeded", "at most " + std::to_string(limit) + " items per session", "item"),
                      event.event_id);
  session->messages.push_back(event.item);
  // Recorded so a crash before the turn commits is reported as a lost unfinished turn on resume.
  if (Status saved = context_.sessions->save_metadata(*session); !saved.ok())
    spdlog::warn("session {}: saving metadata: {}", session->id, saved.to_string());
  context_.sessions->emit(*session, item_created_event(session->id, make_id("item_"), event.item));
}

void WsSession::on_tool_output(const std::shared_ptr<Session>& session, const FunctionCallOutput& output,
                               const std::string& event_id) {
  std::shared_ptr<AgentResponse> agent;
  {
    std::lock_guard lock(session->mutex);
    if (session->running) agent = session->running->agent;
  }
  if (!agent)
    return send_error(invalid("unknown_call_id", "no response is waiting for call '" + output.call_id + "'",
                              "item.call_id"),
                      event_id);
  agent->submit_tool_output(output, [self = shared_from_this(), call_id = output.call_id, event_id](Status status) {
    if (status.ok()) return;
    net::post(self->ws_.get_executor(), [self, status, call_id, event_id] {
      self->send_error(invalid("unknown_call_id", status.message(), "item.call_id"), event_id);
    });
  });
}

void WsSession::on_response_create(const ClientEvent& event) {
  if (closing_)
    return send_error({"server_error", "shutting_down", "the server is shutting down", "", ""}, event.event_id);
  auto session = find_session(event);
  if (!session) return;
  std::lock_guard lock(session->mutex);
  if (session->deleted) return send_error(session_not_found(session->id), event.event_id);
  if (session->running)
    return send_error(invalid("response_in_progress",
                              session->running->warmup ? "the session is being resumed: wait for session.resumed"
                                                       : "response '" + session->running->id + "' is still running",
                              "type"),
                      event.event_id);
  engine::SamplingParams sampling = session->config.sampling;
  const int vocab = static_cast<int>(context_.engine->config().vocab_size);
  if (auto error = apply_sampling(event.sampling_override, "response.sampling", context_.options, vocab, sampling)) {
    error->event_id = event.event_id;
    return send_error(std::move(*error));
  }
  switch (context_.auth->try_start_response(session->tenant)) {
    case Auth::Admission::kAdmitted:
      break;
    case Auth::Admission::kConcurrencyLimit:
      return send_error({"rate_limit_error", "tenant_concurrency_limit",
                         "the tenant already runs its maximum of concurrent responses", "", ""},
                        event.event_id);
    case Auth::Admission::kTokenLimit:
      return send_error({"rate_limit_error", "tenant_token_limit",
                         "the tenant has used its tokens for this minute", "", ""},
                        event.event_id);
  }
  if (Status started = start_agent_response(session, std::move(sampling), event.event_id); !started.ok())
    context_.auth->end_response(session->tenant, 0);
}

Scheduler WsSession::scheduler() {
  return [executor = ws_.get_executor()](std::chrono::steady_clock::time_point when, std::function<void()> fn) {
    auto timer = std::make_shared<net::steady_timer>(executor, when);
    timer->async_wait([timer, fn = std::move(fn)](beast::error_code ec) {
      if (!ec) fn();
    });
  };
}

Status WsSession::start_agent_response(const std::shared_ptr<Session>& session, engine::SamplingParams sampling,
                                       const std::string& event_id) {
  const std::string response_id = make_id("r_");
  agent::Executor post = [executor = ws_.get_executor()](std::function<void()> fn) {
    net::post(executor, [posted_at = std::chrono::steady_clock::now(), fn = std::move(fn)] {
      t_posted_at = posted_at;
      fn();
      t_posted_at.reset();
    });
  };
  auto created = AgentResponse::create(context_, session, response_id, std::move(sampling), post, scheduler());
  if (!created.ok()) {
    send_error(error_from_status(created.status(), "invalid_session_tools", "session.tools"), event_id);
    return created.status();
  }
  RunningResponse running;
  running.id = response_id;
  running.agent = *created;
  session->running = std::move(running);
  // Its KV is in use now: the idle pin of the previous wait ends.
  ++session->pin_epoch;
  context_.engine->unpin(session->id);
  if (Status saved = context_.sessions->save_metadata(*session); !saved.ok())
    spdlog::warn("session {}: saving metadata: {}", session->id, saved.to_string());
  context_.sessions->emit(*session, response_created_event(session->id, response_id));
  // The loop's sink takes the session's lock, so the loop starts once the caller has released it.
  net::post(ws_.get_executor(), [self = shared_from_this(), session, agent = *created, event_id] {
    const Status started = agent->start();
    if (started.ok()) return;
    std::lock_guard lock(session->mutex);
    if (session->running && session->running->agent == agent) session->running.reset();
    self->context_.auth->end_response(session->tenant, 0);
    ProtocolError error = error_from_status(started, "response_failed", "response");
    if (!session->deleted)
      self->context_.sessions->emit(*session,
                                    response_done_event(session->id, agent->id(), "failed", {}, error, 0, {}));
  });
  return Status::ok_status();
}

Status WsSession::start_warmup(const std::shared_ptr<Session>& session, bool replay_complete) {
  engine::GenerationRequest request;
  request.prompt = session->tokens;
  request.prefill_only = true;
  request.sampling.temperature = 0;
  request.sampling.max_tokens = 1;
  request.cache_salt = session->tenant.cache_salt;
  // Events hop to this connection's strand (which outlives the connection itself); the session rides along.
  request.on_event = [session, executor = ws_.get_executor(), context = &context_](const engine::GenerationEvent& ev) {
    net::post(executor, [session, context, ev] { deliver(*context, session, ev); });
  };
  auto submitted = context_.engine->submit(std::move(request));
  if (!submitted.ok()) return submitted.status();
  RunningResponse running;
  running.id = make_id("r_");
  running.request_id = *submitted;
  running.warmup = true;
  running.replay_complete = replay_complete;
  session->running = std::move(running);
  return Status::ok_status();
}

void WsSession::on_response_cancel(const ClientEvent& event) {
  auto session = find_session(event);
  if (!session) return;
  std::lock_guard lock(session->mutex);
  const auto& running = session->running;
  if (!running || running->warmup || (!event.response_id.empty() && event.response_id != running->id))
    return send_error(invalid("response_not_found", "no such response is running", "response_id"),
                      event.event_id);
  session->cancel_reason = "client_cancelled";
  running->agent->cancel();  // response.done (cancelled) follows from the loop
}

void WsSession::deliver(ServerContext& context, const std::shared_ptr<Session>& session,
                        const engine::GenerationEvent& event) {
  if (!event.finished) return;
  std::lock_guard lock(session->mutex);
  if (!session->running || !session->running->warmup || session->running->request_id != event.request_id) return;
  ResumeReport report;
  report.replay_complete = session->running->replay_complete;
  report.turns = session->turns;
  report.restored_tokens = event.usage.restored_tokens;
  report.recomputed_tokens = event.usage.prompt_tokens - event.usage.cached_tokens;
  session->running.reset();
  session->loaded_from_store = false;
  if (session->deleted) return;
  report.lost_unfinished_turn = context.sessions->take_lost_unfinished_turn(*session);
  context.sessions->emit(*session, session_resumed_event(context.sessions->describe(*session), report));
}

bool WsSession::any_running() const {
  return std::any_of(sessions_.begin(), sessions_.end(), [](const auto& s) {
    std::lock_guard lock(s->mutex);
    return s->running.has_value();
  });
}

void WsSession::deliver_frame(std::string frame, bool carries_tokens) {
  OutFrame out{std::move(frame), false, std::nullopt};
  if (carries_tokens) out.token_at = t_posted_at;
  // Counted until queued: a close once nothing runs must not overtake a response's last events on their way.
  ++frames_in_flight_;
  net::post(ws_.get_executor(), [self = shared_from_this(), out = std::move(out)]() mutable {
    --self->frames_in_flight_;
    self->queue_frame(std::move(out));
  });
}

void WsSession::deliver_replay(std::vector<std::string> frames) {
  ++frames_in_flight_;
  net::post(ws_.get_executor(), [self = shared_from_this(), frames = std::move(frames)]() mutable {
    --self->frames_in_flight_;
    for (auto& frame : frames) self->queue_frame({std::move(frame), true, std::nullopt});
  });
}

void WsSession::taken_over(const std::string& session_id) {
  net::post(ws_.get_executor(), [self = shared_from_this(), session_id] {
    std::erase_if(self->sessions_, [&](const auto& s) { return s->id == session_id; });
    self->send_error({"invalid_request_error", "session_taken_over",
                      "session '" + session_id + "' was resumed on another connection", "session_id", ""});
  });
}

void WsSession::send_error(ProtocolError error, const std::string& event_id) {
  if (!event_id.empty()) error.event_id = event_id;
  context_.metrics->record_error(error.code);
  send(error_event(error));
}

void WsSession::send(json event) {
  event["event_id"] = make_id("evt_");
  event["seq"] = 0;
  queue_frame({event.dump(-1, ' ', false, json::error_handler_t::replace), false, std::nullopt});
}

size_t WsSession::waiting_bytes(bool replay) const {
  size_t bytes = replay ? replay_bytes_ : live_bytes_;
  if (writing_ && queue_.front().replay == replay) bytes -= queue_.front().bytes.size();
  return bytes;
}

void WsSession::queue_frame(OutFrame frame) {
  if (closed_) return;
  (frame.replay ? replay_bytes_ : live_bytes_) += frame.bytes.size();
  const bool replay = frame.replay;
  queue_.push_back(std::move(frame));
  if (!writing_) return do_write();
  // A resume hands over at most a replay window per session; more than this connection's sessions can hold
  // means a client resuming again and again without reading.
  const size_t limit = replay ? context_.options.replay_max_bytes *
                                    static_cast<size_t>(context_.options.max_sessions_per_connection)
                              : context_.options.max_write_queue_bytes;
  if (waiting_bytes(replay) > limit) disconnect_unread();
}

void WsSession::do_write() {
  writing_ = true;
  ws_.async_write(net::buffer(queue_.front().bytes),
                  beast::bind_front_handler(&WsSession::on_write, shared_from_this()));
}

void WsSession::on_write(beast::error_code ec, size_t) {
  writing_ = false;
  if (ec) {
    if (ec != net::error::operation_aborted) spdlog::debug("websocket write failed: {}", ec.message());
    return drop();
  }
  const OutFrame& written = queue_.front();
  if (written.token_at)
    context_.metrics->observe_token_write_latency(
        std::chrono::duration<double>(Clock::now() - *written.token_at).count());
  (written.replay ? replay_bytes_ : live_bytes_) -= written.bytes.size();
  queue_.pop_front();
  if (close_after_write_) {
    const websocket::close_reason reason = *close_after_write_;
    close_after_write_.reset();
    return start_close(reason);
  }
  if (!queue_.empty()) return do_write();
  close_if_done();
}

void WsSession::close_if_done() {
  if (!closing_ || closed_ || writing_ || !queue_.empty()) return;
  if (!forced_ && (any_running() || frames_in_flight_ > 0)) return;
  start_close({websocket::close_code::going_away, "server shutting down"});
}

void WsSession::start_close(const websocket::close_reason& reason) {
  closed_ = true;
  if (writing_) {
    close_after_write_ = reason;
    return;
  }
  ws_.async_close(reason, [self = shared_from_this()](beast::error_code) {});
}

void WsSession::disconnect_unread() {
  spdlog::warn("closing a connection that does not read ({} bytes waiting, {} of them replayed)",
               waiting_bytes(false) + waiting_bytes(true), waiting_bytes(true));
  context_.metrics->record_error("client_not_reading");
  detach_sessions();
  // Only the frame being written stays (its buffer is in use); the rest is in the sessions' replay windows.
  while (queue_.size() > (writing_ ? 1u : 0u)) {
    (queue_.back().replay ? replay_bytes_ : live_bytes_) -= queue_.back().bytes.size();
    queue_.pop_back();
  }
  start_close({websocket::close_code::policy_error, "client is not reading"});
  close_socket_after(context_.options.handshake_timeout);
}

void WsSession::detach_sessions() {
  for (const auto& session : sessions_) {
    std::lock_guard lock(session->mutex);
    context_.sessions->detach(*session, this);
  }
}

void WsSession::close_socket_after(std::chrono::steady_clock::duration delay) {
  auto timer = std::make_shared<net::steady_timer>(ws_.get_executor(), delay);
  // Weak: a connection that closed in time is not kept alive by its timer.
  timer->async_wait([weak = weak_from_this(), timer](beast::error_code ec) {
    auto self = weak.lock();
    if (ec || !self) return;
    beast::error_code ignored;
    beast::get_lowest_layer(self->ws_).socket().close(ignored);
  });
}

void WsSession::drop() {
  // The queue stays: a write in flight still refers to its front until it completes with an error.
  closed_ = true;
  close_after_write_.reset();
  detach_sessions();
  beast::error_code ignored;
  beast::get_lowest_layer(ws_).socket().close(ignored);
}

void WsSession::begin_shutdown() {
  net::post(ws_.get_executor(), [self = shared_from_this()] {
    self->closing_ = true;
    self->close_if_done();
  });
}

void WsSession::finish_shutdown() {
  net::post(ws_.get_executor(), [self = shared_from_this()] {
    self->closing_ = true;
    self->forced_ = true;
    self->close_if_done();
    self->close_socket_after(std::chrono::seconds(2));
  });
}

}  // namespace agentserve::server
