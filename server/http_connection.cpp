#include "server/http_connection.h"

#include <cstdio>
#include <ctime>
#include <sstream>

#include <spdlog/spdlog.h>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/websocket.hpp>

#include "engine/engine.h"
#include "server/metrics.h"
#include "server/protocol.h"
#include "server/server_moderation.h"
#include "server/session_registry.h"
#include "server/ws_session.h"

namespace agentserve::server {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using nlohmann::json;

namespace {

std::string dump(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string path_of(beast::string_view target) {
  const std::string t(target);
  return t.substr(0, t.find('?'));
}

constexpr std::string_view kSessionsPrefix = "/v1/sessions/";

// The route pattern a path belongs to: metrics label by pattern, so client-chosen paths add no series.
std::string route_of(const std::string& path) {
  for (const char* fixed :
       {"/healthz", "/readyz", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/ws"})
    if (path == fixed) return path;
  if (path.starts_with(kSessionsPrefix)) return "/v1/sessions/{id}";
  return "other";
}

OpenAiError not_found(std::string message) {
  return {404, "invalid_request_error", "not_found", std::move(message), ""};
}

OpenAiError method_not_allowed(const std::string& route, const char* allowed) {
  return {405, "invalid_request_error", "method_not_allowed", route + " takes " + allowed, ""};
}

}  // namespace

HttpConnection::HttpConnection(net::ip::tcp::socket&& socket, ServerContext& context)
    : stream_(std::move(socket)), context_(context) {}

void HttpConnection::run() {
  net::dispatch(stream_.get_executor(),
                beast::bind_front_handler(&HttpConnection::do_read, shared_from_this()));
}

void HttpConnection::do_read() {
  parser_.emplace();
  parser_->body_limit(context_.options.max_http_request_bytes);
  parser_->header_limit(
      static_cast<std::uint32_t>(std::min<size_t>(context_.options.max_http_request_bytes, 1 << 20)));
  // Also the keep-alive idle timeout: a connection with no next request within it is closed.
  stream_.expires_after(context_.options.handshake_timeout);
  http::async_read(stream_, buffer_, *parser_,
                   beast::bind_front_handler(&HttpConnection::on_read, shared_from_this()));
}

void HttpConnection::on_read(beast::error_code ec, size_t) {
  if (ec == http::error::body_limit || ec == http::error::header_limit) {
    keep_alive_ = false;  // the rest of the oversized request is still unread
    route_ = "other";
    return reply_error(
        OpenAiError{413, "invalid_request_error", "request_too_large", "the request is too large", ""});
  }
  if (ec) return fail();  // closed, idle past the timeout, or not HTTP: nothing useful to answer
  Request req = parser_->release();
  keep_alive_ = req.keep_alive() && ++served_ < kMaxRequestsPerConnection && !context_.stopping;
  if (beast::websocket::is_upgrade(req)) {
    if (path_of(req.target()) != "/v1/ws") {
      keep_alive_ = false;
      route_ = "other";
      return reply_error(not_found("the WebSocket endpoint is /v1/ws"));
    }
    stream_.expires_never();
    std::make_shared<WsSession>(stream_.release_socket(), context_)->run(std::move(req));
    return;
  }
  handle(req);
}

void HttpConnection::handle(const Request& req) {
  const std::string path = path_of(req.target());
  route_ = route_of(path);
  const http::verb method = req.method();
  if (route_ == "/healthz") {
    if (method != http::verb::get) return reply_error(method_not_allowed(route_, "GET"));
    return reply(http::status::ok, "text/plain", "ok\n");
  }
  if (route_ == "/readyz") {
    if (method != http::verb::get) return reply_error(method_not_allowed(route_, "GET"));
    if (context_.engine == nullptr || context_.stopping)
      return reply(http::status::service_unavailable, "text/plain", "not ready\n");
    return reply(http::status::ok, "text/plain", "ready\n");
  }
  if (route_ == "other") return reply_error(not_found("no route for " + path));

  Tenant tenant{std::string(kDefaultTenant), std::string(kDefaultTenant), {}};
  if (context_.auth != nullptr) {
    const beast::string_view header = req[http::field::authorization];
    auto authenticated = context_.auth->authenticate(std::string_view(header.data(), header.size()));
    if (!authenticated.ok())
      return reply_error(
          OpenAiError{401, "invalid_request_error", "invalid_api_key", authenticated.status().message(), ""});
    tenant = std::move(*authenticated);
  }
  if (route_ == "/metrics") {
    if (method != http::verb::get) return reply_error(method_not_allowed(route_, "GET"));
    if (context_.sessions != nullptr)
      context_.metrics->set_sessions_active(static_cast<int64_t>(context_.sessions->live_sessions()));
    return reply(http::status::ok, "text/plain; version=0.0.4",
                 context_.metrics->scrape(context_.engine->counters(),
                                          context_.engine->kv_layout().block_size, context_.moderation));
  }
  if (route_ == "/v1/models") {
    if (method != http::verb::get) return reply_error(method_not_allowed(route_, "GET"));
    return reply_json(http::status::ok, {{"object", "list"},
                                         {"data", json::array({{{"id", context_.model_name},
                                                                {"object", "model"},
                                                                {"created", 0},
                                                                {"owned_by", "agentserve"}}})}});
  }
  if (route_ == "/v1/chat/completions") {
    if (method != http::verb::post) return reply_error(method_not_allowed(route_, "POST"));
    return start_completion(req, tenant);
  }
  if (route_ == "/v1/ws")  // a plain request on the WebSocket endpoint
    return reply_error(OpenAiError{426, "invalid_request_error", "upgrade_required",
                                   "/v1/ws takes a WebSocket upgrade", ""});
  handle_sessions(req, tenant, path.substr(kSessionsPrefix.size()));
}

void HttpConnection::handle_sessions(const Request& req, const Tenant& tenant, const std::string& id) {
  const http::verb method = req.method();
  if (method != http::verb::get && method != http::verb::delete_)
    return reply_error(method_not_allowed(route_, "GET or DELETE"));
  if (context_.sessions == nullptr) return reply_error(not_found("no session '" + id + "'"));
  // Another tenant's session is "not found" exactly like a missing one (the registry sees to it).
  if (method == http::verb::get) {
    auto session = context_.sessions->get(tenant, id);
    if (!session.ok()) {
      if (session.status().code() == StatusCode::kNotFound) return reply_error(not_found("no session '" + id + "'"));
      return reply_error(openai_error_from_status(session.status(), "session_store_error"));
    }
    json body;
    {
      std::lock_guard lock((*session)->mutex);
      body = context_.sessions->describe(**session);
    }
    return reply_json(http::status::ok, body);
  }
  // The registry's on_erased hook cancels a running response and drops the session's KV.
  const Status erased = context_.sessions->erase(tenant, id);
  if (!erased.ok()) {
    if (erased.code() == StatusCode::kNotFound) return reply_error(not_found("no session '" + id + "'"));
    return reply_error(openai_error_from_status(erased, "session_store_error"));
  }
  reply_json(http::status::ok, {{"id", id}, {"object", "session.deleted"}, {"deleted", true}});
}

HttpConnection::RunningCompletion::RunningCompletion(ServerContext& context, engine::RequestId id)
    : context_(&context), id_(id) {
  std::lock_guard lock(context.completions_mutex);
  context.running_completions.insert(id);
}

HttpConnection::RunningCompletion::~RunningCompletion() {
  if (context_ == nullptr) return;
  std::lock_guard lock(context_->completions_mutex);
  context_->running_completions.erase(id_);
}

void HttpConnection::start_completion(const Request& req, const Tenant& tenant) {
  if (context_.stopping)
    return reply_error(OpenAiError{503, "server_error", "shutting_down", "the server is shutting down", ""});
  engine::Engine& engine = *context_.engine;
  ChatApiContext api{&context_.options, &engine.tokenizer(), static_cast<int>(engine.config().vocab_size),
                     context_.model_name};
  auto parsed = parse_chat_completion(req.body(), api);
  if (auto* error = std::get_if<OpenAiError>(&parsed)) return reply_error(*error);
  ChatCompletionRequest& chat = std::get<ChatCompletionRequest>(parsed);
  if (!chat.forced_tools.empty()) {
    // Compiled before admission: a schema the grammar cannot follow costs no slot and no moderation call.
    std::vector<const tools::ToolSpec*> allowed;
    for (const tools::ToolSpec& spec : chat.forced_tools) allowed.push_back(&spec);
    auto constraint = forced_call_constraint(context_, allowed);
    if (!constraint.ok()) {
      const bool unsupported = constraint.status().code() == StatusCode::kFailedPrecondition;
      return reply_error(OpenAiError{400, "invalid_request_error",
                                     unsupported ? "unsupported_value" : "invalid_value",
                                     constraint.status().message(), unsupported ? "tool_choice" : "tools"});
    }
    chat.constraint = std::move(*constraint);
  }
  if (context_.auth != nullptr) {
    switch (context_.auth->try_start_response(tenant)) {
      case Auth::Admission::kAdmitted:
        break;
      case Auth::Admission::kConcurrencyLimit:
        return reply_error(OpenAiError{429, "rate_limit_error", "rate_limit_exceeded",
                                       "too many concurrent responses for this tenant", ""});
      case Auth::Admission::kTokenLimit:
        return reply_error(OpenAiError{429, "rate_limit_error", "rate_limit_exceeded",
                                       "this tenant's tokens per minute are spent", ""});
    }
  }
  if (context_.moderation == nullptr) return submit_completion(chat, tenant);
  moderate_input(std::make_shared<ChatCompletionRequest>(std::move(chat)), tenant, 0);
}

void HttpConnection::moderate_input(std::shared_ptr<ChatCompletionRequest> chat, Tenant tenant, int stage) {
  if (stage > 1) return submit_completion(*chat, tenant);
  ServerModeration& moderation = *context_.moderation;
  // Stage 0: the new user messages (check_input); stage 1: the client's tool outputs (check_tool_results).
  const bool wanted = stage == 0 ? moderation.checks_input() && !chat->new_user_text.empty()
                                 : moderation.checks_tool_results() && !chat->new_tool_text.empty();
  if (!wanted) return moderate_input(std::move(chat), std::move(tenant), stage + 1);
  const agent::ModerationKind kind =
      stage == 0 ? agent::ModerationKind::kInput : agent::ModerationKind::kToolResult;
  std::string text = stage == 0 ? chat->new_user_text : chat->new_tool_text;
  ModerationScope scope{&tenant, "", ""};
  auto post = [self = shared_from_this()](std::function<void()> task) {
    net::post(self->stream_.get_executor(), std::move(task));
  };
  moderation.check(
      scope, kind, std::move(text), post,
      [self = shared_from_this(), chat, tenant, stage](const agent::ModerationVerdict& verdict) mutable {
        if (verdict.allowed) return self->moderate_input(std::move(chat), std::move(tenant), stage + 1);
        if (self->context_.auth != nullptr) self->context_.auth->end_response(tenant, 0);
        self->context_.moderation->count_blocked();
        self->context_.metrics->record_error("moderation_blocked");
        if (self->closed_) return;
        self->reply_json(http::status::bad_request,
                         moderation_error_body(verdict.categories, moderation_block_reason(verdict),
                                               /*input=*/true));
      });
}

void HttpConnection::submit_completion(ChatCompletionRequest& chat, const Tenant& tenant) {
  if (closed_) {
    if (context_.auth != nullptr) context_.auth->end_response(tenant, 0);
    return;
  }
  engine::Engine& engine = *context_.engine;
  engine::GenerationRequest request;
  request.prompt = std::move(chat.prompt);
  request.sampling = std::move(chat.sampling);
  request.cache_salt = tenant.cache_salt;
  request.constraint = std::move(chat.constraint);
  // The engine thread only stamps the time and hops to this connection's strand.
  request.on_event = [self = shared_from_this(),
                      executor = stream_.get_executor()](const engine::GenerationEvent& ev) {
    net::post(executor, [self, ev, at = Clock::now()] { self->on_engine_event(ev, at); });
  };
  auto submitted = engine.submit(std::move(request));
  if (!submitted.ok()) {
    if (context_.auth != nullptr) context_.auth->end_response(tenant, 0);
    return reply_error(openai_error_from_status(submitted.status(), "request_rejected"));
  }
  const std::string id = make_id("chatcmpl-");
  completion_.emplace(
      Completion{RunningCompletion(context_, *submitted), *submitted, chat.stream, chat.include_usage, tenant,
                 ChatCompletionBuilder(id, context_.model_name, static_cast<int64_t>(std::time(nullptr)))});
  if (context_.moderation != nullptr) {
    // Gate callbacks run on this strand (the executor below); `this` lives as long as the posted task.
    agent::ModerationGateCallbacks callbacks;
    const engine::RequestId request_id = *submitted;
    callbacks.on_release = [this, request_id](std::string_view text) {
      if (completion_ && completion_->request_id == request_id) emit_text(text, std::nullopt);
    };
    callbacks.on_blocked = [this, request_id](const agent::ModerationVerdict& verdict) {
      if (completion_ && completion_->request_id == request_id) on_moderation_blocked(verdict);
    };
    callbacks.on_finished = [this, request_id] {
      if (completion_ && completion_->request_id == request_id) finish_completion();
    };
    auto post = [self = shared_from_this()](std::function<void()> task) {
      net::post(self->stream_.get_executor(), std::move(task));
    };
    auto gate =
        context_.moderation->gate(ModerationScope{&completion_->tenant, "", id}, post, std::move(callbacks));
    if (!gate.ok()) {
      // The config was validated at start, so this is a bug; refuse rather than answer unmoderated.
      engine.cancel(*submitted);
      completion_->blocked = agent::ModerationVerdict{};
      spdlog::error("moderation gate: {}", gate.status().message());
    } else {
      completion_->gate = std::move(*gate);
    }
  }
  stream_.expires_never();  // generation takes as long as it takes; watch() notices a client that leaves
  if (chat.stream) {
    context_.metrics->record_http_request(route_, 200);
    std::string head =
        "HTTP/1.1 200 OK\r\nServer: agentserve\r\nContent-Type: text/event-stream\r\nCache-Control: "
        "no-cache\r\nTransfer-Encoding: chunked\r\nConnection: ";
    head += keep_alive_ ? "keep-alive\r\n\r\n" : "close\r\n\r\n";
    enqueue(std::move(head));
    enqueue_chunk(sse_event(completion_->builder.start_chunk()));
  }
  watch();
}

void HttpConnection::emit_text(std::string_view text, std::optional<Clock::time_point> at) {
  Completion& c = *completion_;
  for (const json& chunk : c.builder.feed(text))
    if (c.stream && !closed_) enqueue_chunk(sse_event(chunk), at);
}

void HttpConnection::on_engine_event(const engine::GenerationEvent& event, Clock::time_point at) {
  if (!completion_ || completion_->request_id != event.request_id) return;
  Completion& c = *completion_;
  if (!event.text.empty() && !c.blocked) {
    if (c.gate)
      c.gate->push(event.text);
    else
      emit_text(event.text, at);
  }
  if (!event.finished) return;
  c.engine_done = true;
  c.finish_reason = event.finish_reason;
  c.usage = event.usage;
  c.engine_error = event.error;
  c.finished_at = at;
  // A client that left waits for no verdict; a gate still holding text checks the remainder first.
  if (c.gate && !c.blocked && !closed_) return c.gate->finish();
  finish_completion();
}

void HttpConnection::on_moderation_blocked(const agent::ModerationVerdict& verdict) {
  Completion& c = *completion_;
  if (c.blocked) return;
  c.blocked = verdict;
  if (!c.engine_done) {
    context_.engine->cancel(c.request_id);  // its finished event completes the reply
    return;
  }
  finish_completion();
}

void HttpConnection::finish_completion() {
  Completion& c = *completion_;
  if (!c.engine_done) return;
  // The gate may be the caller (on_finished / on_blocked): it is freed after this handler, never inside.
  if (c.gate)
    net::post(stream_.get_executor(), [self = shared_from_this(),
                                       gate = std::shared_ptr<agent::ModerationGate>(std::move(c.gate))] {});
  const bool blocked = c.blocked.has_value();
  context_.metrics->record_response(blocked ? "blocked" : response_status(c.finish_reason), c.usage);
  if (blocked) context_.moderation->count_blocked();
  if (context_.auth != nullptr)
    context_.auth->end_response(c.tenant, c.usage.prompt_tokens + c.usage.completion_tokens);
  if (closed_) {
    completion_.reset();
    return;
  }
  std::vector<json> last;
  std::optional<json> error_body;
  std::optional<OpenAiError> error;
  if (blocked) {
    last = c.builder.finish_filtered(c.usage, c.include_usage);
    error_body = moderation_error_body(c.blocked->categories, moderation_block_reason(*c.blocked), false);
    context_.metrics->record_error("moderation_blocked");
  } else {
    last = c.builder.finish(c.finish_reason, c.usage, c.include_usage, c.engine_error);
    error = c.builder.error();
    if (error) error_body = openai_error_body(*error);
  }
  if (c.stream) {
    if (error) context_.metrics->record_error(error->code);  // reply_error counts the non-streaming one
    for (const json& chunk : last) enqueue_chunk(sse_event(chunk), c.finished_at);
    if (error_body) enqueue_chunk(sse_event(*error_body));
    enqueue_chunk(std::string(kSseDone));
    enqueue("0\r\n\r\n");
    completion_.reset();
    return end_exchange();
  }
  json body = c.builder.completion();
  if (blocked)
    body["choices"][0]["content_filter_results"] = {{"blocked", true},
                                                    {"categories", c.blocked->categories},
                                                    {"reason", moderation_block_reason(*c.blocked)}};
  completion_.reset();
  if (error) return reply_error(*error);
  reply_json(http::status::ok, body);
}

void HttpConnection::reply(http::status status, const char* content_type, std::string body) {
  http::response<http::string_body> res{status, 11};
  res.set(http::field::server, "agentserve");
  res.set(http::field::content_type, content_type);
  if (status == http::status::unauthorized) res.set(http::field::www_authenticate, "Bearer");
  res.body() = std::move(body);
  res.keep_alive(keep_alive_);
  res.prepare_payload();
  context_.metrics->record_http_request(route_, static_cast<int>(status));
  std::ostringstream out;
  out << res;
  enqueue(std::move(out).str());
  end_exchange();
}

void HttpConnection::reply_json(http::status status, const json& body) {
  reply(status, "application/json", dump(body));
}

void HttpConnection::reply_error(const OpenAiError& error) {
  context_.metrics->record_error(error.code);
  reply(static_cast<http::status>(error.http_status), "application/json", dump(openai_error_body(error)));
}

void HttpConnection::enqueue(std::string bytes, std::optional<Clock::time_point> token_at) {
  if (closed_) return;
  queued_bytes_ += bytes.size();
  if (queued_bytes_ > context_.options.max_write_queue_bytes) {
    spdlog::warn("disconnecting an HTTP client that does not read ({} bytes queued)", queued_bytes_);
    return fail();
  }
  queue_.push_back({std::move(bytes), token_at});
  if (!writing_) do_write();
}

void HttpConnection::enqueue_chunk(std::string data, std::optional<Clock::time_point> token_at) {
  char size[24];
  std::snprintf(size, sizeof size, "%zx\r\n", data.size());
  enqueue(size + std::move(data) + "\r\n", token_at);
}

void HttpConnection::do_write() {
  writing_ = true;
  net::async_write(stream_, net::buffer(queue_.front().bytes),
                   beast::bind_front_handler(&HttpConnection::on_write, shared_from_this()));
}

void HttpConnection::on_write(beast::error_code ec, size_t) {
  writing_ = false;
  if (ec) return fail();
  if (queue_.front().token_at)
    context_.metrics->observe_token_write_latency(
        std::chrono::duration<double>(Clock::now() - *queue_.front().token_at).count());
  queued_bytes_ -= queue_.front().bytes.size();
  queue_.pop_front();
  if (!queue_.empty()) return do_write();
  if (exchange_done_) next_exchange();
}

void HttpConnection::end_exchange() {
  exchange_done_ = true;
  if (!writing_ && queue_.empty()) next_exchange();
}

void HttpConnection::next_exchange() {
  if (closed_) return;
  exchange_done_ = false;
  if (!keep_alive_) {
    closed_ = true;
    beast::error_code ignored;
    stream_.socket().shutdown(net::ip::tcp::socket::shutdown_send, ignored);
    return;
  }
  // The watch read is still pending: cancelling it (no write is in flight now) makes on_watch read on.
  if (watching_) {
    beast::error_code ignored;
    stream_.socket().cancel(ignored);
    return;
  }
  do_read();
}

void HttpConnection::watch() {
  watching_ = true;
  stream_.async_read_some(buffer_.prepare(4096),
                          beast::bind_front_handler(&HttpConnection::on_watch, shared_from_this()));
}

void HttpConnection::on_watch(beast::error_code ec, size_t bytes) {
  watching_ = false;
  if (!ec) {
    buffer_.commit(bytes);
    // A pipelined request past the size limit is not worth buffering further: just stop watching.
    if (completion_ && buffer_.size() < context_.options.max_http_request_bytes) return watch();
    if (!completion_ && !exchange_done_ && queue_.empty() && !writing_) return do_read();
    return;
  }
  if (ec == net::error::operation_aborted && !closed_) return do_read();  // next_exchange cancelled it
  fail();
}

void HttpConnection::fail() {
  if (completion_) context_.engine->cancel(completion_->request_id);  // its last event still arrives
  if (closed_) return;
  closed_ = true;
  beast::error_code ignored;
  stream_.socket().close(ignored);
}

}  // namespace agentserve::server
