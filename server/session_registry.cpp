#include "server/session_registry.h"

#include <spdlog/spdlog.h>

namespace agentserve::server {

using nlohmann::json;

int64_t unix_now_s() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

RegistryOptions RegistryOptions::from(const ServerOptions& options, int vocab_size) {
  RegistryOptions out;
  out.replay_max_events = options.replay_max_events;
  out.replay_max_bytes = options.replay_max_bytes;
  out.session_ttl = options.session_ttl;
  out.sweep_interval = options.session_sweep_interval;
  out.limits = options;
  out.vocab_size = vocab_size;
  return out;
}

namespace {

// Tool calls are kept as their JSON text: the arguments' key order is part of the prompt, and this json
// type (unlike the agent's ordered one) would sort it.
json messages_json(const std::vector<ConversationMessage>& messages, size_t from) {
  json out = json::array();
  for (size_t i = from; i < messages.size(); ++i) {
    const ConversationMessage& m = messages[i];
    json item = {{"role", m.role}, {"content", m.content}};
    if (m.reasoning_content) item["reasoning_content"] = *m.reasoning_content;
    if (!m.tool_calls.empty()) item["tool_calls"] = m.tool_calls.dump();
    out.push_back(std::move(item));
  }
  return out;
}

ConversationMessage message_from_json(const json& m) {
  ConversationMessage message{m.value("role", ""), m.value("content", "")};
  if (m.contains("reasoning_content") && m["reasoning_content"].is_string())
    message.reasoning_content = m["reasoning_content"].get<std::string>();
  if (m.contains("tool_calls") && m["tool_calls"].is_string()) {
    auto calls = nlohmann::ordered_json::parse(m["tool_calls"].get<std::string>(), nullptr, false);
    if (calls.is_array()) message.tool_calls = std::move(calls);
  }
  return message;
}

// The tenant a stored metadata record names; empty when it cannot be read.
std::string stored_tenant(std::string_view metadata) {
  const json meta = json::parse(metadata, nullptr, false);
  if (!meta.is_object() || !meta.contains("tenant") || !meta["tenant"].is_string()) return "";
  return meta["tenant"].get<std::string>();
}

}  // namespace

SessionRegistry::SessionRegistry(RegistryOptions options, memory::SessionStore* store, const Auth& auth)
    : options_(std::move(options)), store_(store), auth_(auth) {
  if (store_ != nullptr) {
    // Sessions persisted by earlier runs count against their tenants' limits too.
    if (auto listed = store_->list_sessions(); listed.ok()) {
      for (const auto& summary : *listed) ++per_tenant_[stored_tenant(summary.metadata)];
    } else {
      spdlog::warn("listing stored sessions: {}", listed.status().to_string());
    }
  }
  if (options_.session_ttl.count() > 0) sweeper_ = std::thread([this] { sweep_loop(); });
}

SessionRegistry::~SessionRegistry() {
  {
    std::lock_guard lock(sweep_mutex_);
    stopping_ = true;
  }
  sweep_cv_.notify_all();
  if (sweeper_.joinable()) sweeper_.join();
}

Result<std::shared_ptr<Session>> SessionRegistry::create(const Tenant& tenant, const SessionConfig& config) {
  auto session = std::make_shared<Session>(make_id("s_"), tenant);
  {
    std::lock_guard lock(mutex_);
    int& count = per_tenant_[tenant.name];
    if (count >= tenant.limits.max_sessions)
      return Status::resource_exhausted("tenant '" + tenant.name + "' has " + std::to_string(count) +
                                        " sessions (its limit); delete one first");
    ++count;
    sessions_.emplace(session->id, session);
  }
  std::lock_guard lock(session->mutex);
  session->config = config;
  session->created_at = session->updated_at = unix_now_s();
  if (Status saved = save_metadata(*session); !saved.ok()) {
    std::lock_guard table(mutex_);
    forget(*session);
    return saved;
  }
  return session;
}

Result<std::shared_ptr<Session>> SessionRegistry::get(const Tenant& tenant, std::string_view id) {
  {
    std::lock_guard lock(mutex_);
    const auto it = sessions_.find(id);
    if (it != sessions_.end()) {
      if (it->second->tenant.name != tenant.name || it->second->deleted)
        return Status::not_found("no session '" + std::string(id) + "'");
      return it->second;
    }
  }
  return load(tenant, id);
}

Result<std::shared_ptr<Session>> SessionRegistry::load(const Tenant& tenant, std::string_view id) {
  const Status not_found = Status::not_found("no session '" + std::string(id) + "'");
  if (store_ == nullptr || id.empty() || id.size() > memory::kMaxStoreIdBytes) return not_found;
  // An erase that finishes between the store read and the insert below would be undone by the insert: read
  // again then. Erases are rare, so a few tries always suffice in practice.
  for (int attempt = 0; attempt < 4; ++attempt) {
    uint64_t generation = 0;
    {
      std::lock_guard lock(mutex_);
      generation = erase_generation_;
    }
    auto loaded = load_record(tenant, id);
    if (!loaded.ok()) return loaded.status();
    std::lock_guard lock(mutex_);
    if (erase_generation_ != generation) continue;
    // Another thread may have loaded it meanwhile: one object per session.
    const auto [it, inserted] = sessions_.emplace((*loaded)->id, *loaded);
    if (it->second->deleted) return not_found;
    return it->second;
  }
  return Status::internal("session '" + std::string(id) + "' kept changing while it was loaded; retry");
}

Result<std::shared_ptr<Session>> SessionRegistry::load_record(const Tenant& tenant, std::string_view id) {
  const Status not_found = Status::not_found("no session '" + std::string(id) + "'");
  auto record = store_->load_session(id);
  if (!record.ok()) {
    if (record.status().code() == StatusCode::kNotFound) return not_found;
    return record.status();
  }
  const json meta = json::parse(record->metadata, nullptr, false);
  if (!meta.is_object() || meta.value("tenant", "") != tenant.name) return not_found;
  auto session = std::make_shared<Session>(std::string(id), tenant);
  SessionConfig config;
  config.sampling.max_tokens = options_.limits.default_max_tokens;
  if (auto error = apply_session_fields(meta.value("config", json::object()), "session", options_.limits,
                                        options_.vocab_size, config))
    return Status::corruption("session '" + std::string(id) + "': stored config: " + error->message);
  session->config = std::move(config);
  for (const auto& turn : record->turns) {
    const json parsed = json::parse(turn.messages, nullptr, false);
    if (!parsed.is_object() || !parsed.contains("messages") || !parsed["messages"].is_array())
      return Status::corruption("session '" + std::string(id) + "': turn " + std::to_string(turn.index));
    for (const auto& m : parsed["messages"]) session->messages.push_back(message_from_json(m));
  }
  session->committed_messages = session->messages.size();
  session->turns = static_cast<uint32_t>(record->turns.size());
  session->tokens = std::move(record->tokens);
  session->created_at = meta.value("created_at", int64_t{0});
  session->updated_at = meta.value("updated_at", int64_t{0});
  session->seq = meta.value("seq", uint64_t{0});
  session->lost_unfinished_turn = meta.value("pending_items", 0) > 0 || meta.value("response_running", false);
  session->loaded_from_store = true;
  return session;
}

void SessionRegistry::on_erased(ErasedHook hook) {
  std::lock_guard lock(erase_mutex_);
  on_erased_ = std::move(hook);
}

Status SessionRegistry::erase(const Tenant& tenant, std::string_view id) {
  return erase_if_idle(tenant, id, std::nullopt);
}

Status SessionRegistry::erase_if_idle(const Tenant& tenant, std::string_view id,
                                      std::optional<int64_t> idle_before) {
  const Status not_found = Status::not_found("no session '" + std::string(id) + "'");
  std::lock_guard erasing(erase_mutex_);
  std::shared_ptr<Session> session;
  {
    std::lock_guard lock(mutex_);
    if (const auto it = sessions_.find(id); it != sessions_.end()) {
      if (it->second->tenant.name != tenant.name) return not_found;
      session = it->second;
    }
  }
  if (!session) {
    AS_ASSIGN_OR_RETURN(session, stored_for_erase(tenant, id));
  }
  Status deleted_from_store;
  {
    std::lock_guard lock(session->mutex);
    if (session->deleted) return not_found;
    // The sweep judged it idle without this lock held: a response or update since then keeps it.
    if (idle_before && (session->running || session->updated_at >= *idle_before))
      return Status::failed_precondition("session '" + session->id + "' is in use again");
    session->deleted = true;
    emit(*session, session_deleted_event(session->id));
    session->sink.reset();
    if (store_ != nullptr) deleted_from_store = store_->delete_session(id);
  }
  {
    std::lock_guard lock(mutex_);
    forget(*session);
    ++erase_generation_;
  }
  if (on_erased_) on_erased_(session);
  return deleted_from_store;
}

Result<std::shared_ptr<Session>> SessionRegistry::stored_for_erase(const Tenant& tenant, std::string_view id) {
  const Status not_found = Status::not_found("no session '" + std::string(id) + "'");
  if (store_ == nullptr || id.empty() || id.size() > memory::kMaxStoreIdBytes) return not_found;
  auto metadata = store_->load_metadata(id);
  if (!metadata.ok()) return metadata.status().code() == StatusCode::kNotFound ? not_found : metadata.status();
  if (stored_tenant(*metadata) != tenant.name) return not_found;
  auto stand_in = std::make_shared<Session>(std::string(id), tenant);
  // Its token ids, so that the on_erased hook drops its KV too; a transcript that cannot be read does not
  // stop the delete (its blocks then age out of the caches instead).
  if (auto record = store_->load_session(id); record.ok()) stand_in->tokens = std::move(record->tokens);
  std::lock_guard lock(mutex_);
  // A lookup may have loaded the whole session meanwhile: delete that one.
  return sessions_.emplace(stand_in->id, stand_in).first->second;
}

void SessionRegistry::forget(const Session& session) {
  const auto it = sessions_.find(session.id);
  if (it != sessions_.end() && it->second.get() == &session) sessions_.erase(it);
  int& count = per_tenant_[session.tenant.name];
  if (count > 0) --count;
}

void SessionRegistry::emit(Session& session, json event) {
  event["event_id"] = make_id("evt_");
  event["seq"] = ++session.seq;
  event["session_id"] = session.id;
  const std::string& type = event["type"].get_ref<const std::string&>();
  if (type == "response.done" && !session.cancel_reason.empty()) {
    if (event["response"].value("status", "") == "cancelled")
      event["response"]["status_details"] = {{"type", "cancelled"}, {"reason", session.cancel_reason}};
    session.cancel_reason.clear();
  }
  const bool carries_tokens = type == "response.output_text.delta" || type == "response.reasoning.delta";
  std::string frame = event.dump(-1, ' ', false, json::error_handler_t::replace);
  session.replay_bytes += frame.size();
  session.replay.push_back({session.seq, frame});
  while (session.replay.size() > 1 && (session.replay.size() > options_.replay_max_events ||
                                       session.replay_bytes > options_.replay_max_bytes)) {
    session.replay_bytes -= session.replay.front().frame.size();
    session.replay.pop_front();
  }
  if (auto sink = session.sink.lock()) sink->deliver_frame(std::move(frame), carries_tokens);
}

bool SessionRegistry::attach(Session& session, const std::shared_ptr<EventSink>& sink, uint64_t last_seq) {
  if (auto previous = session.sink.lock(); previous && previous != sink) previous->taken_over(session.id);
  session.sink = sink;
  // After a restart the client may have seen events the store never heard of: go on after them.
  if (last_seq > session.seq) session.seq = last_seq;
  const bool complete =
      session.seq == last_seq || (!session.replay.empty() && session.replay.front().seq <= last_seq + 1);
  std::vector<std::string> missed;
  for (const auto& record : session.replay)
    if (record.seq > last_seq) missed.push_back(record.frame);
  if (!missed.empty()) sink->deliver_replay(std::move(missed));
  return complete;
}

void SessionRegistry::detach(Session& session, const EventSink* sink) {
  if (session.sink.lock().get() == sink) session.sink.reset();
}

std::string SessionRegistry::metadata_json(const Session& session) const {
  const json meta = {{"tenant", session.tenant.name},
                     {"config", session_config_json(session.config)},
                     {"created_at", session.created_at},
                     {"updated_at", session.updated_at},
                     {"turns", session.turns},
                     {"token_count", session.tokens.size()},
                     {"seq", session.seq},
                     {"pending_items", session.messages.size() - session.committed_messages},
                     {"response_running", session.running.has_value() && !session.running->warmup}};
  return meta.dump(-1, ' ', false, json::error_handler_t::replace);
}

Status SessionRegistry::commit_turn(Session& session, std::vector<int32_t> tokens) {
  if (session.deleted) return Status::not_found("session '" + session.id + "' was deleted");
  const json turn = {{"messages", messages_json(session.messages, session.committed_messages)}};
  const uint32_t index = session.turns;
  session.tokens = std::move(tokens);
  session.committed_messages = session.messages.size();
  session.turns = index + 1;
  session.updated_at = unix_now_s();
  if (store_ == nullptr) return Status::ok_status();
  return store_->commit_turn(session.id, index, turn.dump(-1, ' ', false, json::error_handler_t::replace),
                             session.tokens, metadata_json(session));
}

Status SessionRegistry::save_metadata(Session& session) {
  if (session.deleted) return Status::not_found("session '" + session.id + "' was deleted");
  session.updated_at = unix_now_s();
  if (store_ == nullptr) return Status::ok_status();
  return store_->put_metadata(session.id, metadata_json(session));
}

bool SessionRegistry::take_lost_unfinished_turn(Session& session) {
  if (!session.lost_unfinished_turn) return false;
  session.lost_unfinished_turn = false;
  // The stored metadata still says an unfinished turn was running; saved now, it no longer does.
  if (Status saved = save_metadata(session); !saved.ok())
    spdlog::warn("session {}: saving metadata: {}", session.id, saved.to_string());
  return true;
}

json SessionRegistry::describe(const Session& session) const {
  json out = session_config_json(session.config);
  out["id"] = session.id;
  out["object"] = "session";
  out["created_at"] = session.created_at;
  out["updated_at"] = session.updated_at;
  out["turns"] = session.turns;
  out["token_count"] = session.tokens.size();
  out["items"] = session.messages.size();
  out["response_running"] = session.running.has_value() && !session.running->warmup;
  return out;
}

std::vector<std::shared_ptr<Session>> SessionRegistry::tenant_sessions(const std::string& tenant,
                                                                       const Session* except) const {
  std::lock_guard lock(mutex_);
  std::vector<std::shared_ptr<Session>> out;
  for (const auto& [id, session] : sessions_)
    if (session.get() != except && session->tenant.name == tenant) out.push_back(session);
  return out;
}

size_t SessionRegistry::live_sessions() const {
  std::lock_guard lock(mutex_);
  return sessions_.size();
}

std::vector<std::shared_ptr<Session>> SessionRegistry::running_sessions() const {
  std::vector<std::shared_ptr<Session>> in_memory;
  {
    std::lock_guard lock(mutex_);
    for (const auto& [id, session] : sessions_) in_memory.push_back(session);
  }
  std::vector<std::shared_ptr<Session>> out;
  for (auto& session : in_memory) {
    std::lock_guard lock(session->mutex);
    if (session->running) out.push_back(std::move(session));
  }
  return out;
}

size_t SessionRegistry::sweep_expired(int64_t now) {
  const int64_t ttl = options_.session_ttl.count();
  if (ttl <= 0) return 0;
  std::vector<std::pair<std::string, std::string>> expired;  // tenant, id
  std::vector<std::shared_ptr<Session>> in_memory;
  {
    std::lock_guard lock(mutex_);
    for (const auto& [id, session] : sessions_) in_memory.push_back(session);
  }
  for (const auto& session : in_memory) {
    std::lock_guard lock(session->mutex);
    if (!session->running && !session->deleted && session->updated_at < now - ttl)
      expired.emplace_back(session->tenant.name, session->id);
  }
  if (store_ != nullptr) {
    if (auto listed = store_->list_sessions(); listed.ok()) {
      for (const auto& summary : *listed) {
        {
          std::lock_guard lock(mutex_);
          if (sessions_.contains(summary.id)) continue;  // judged above by its live state
        }
        const json meta = json::parse(summary.metadata, nullptr, false);
        if (meta.is_object() && meta.value("updated_at", now) < now - ttl)
          expired.emplace_back(meta.value("tenant", ""), summary.id);
      }
    }
  }
  size_t deleted = 0;
  for (const auto& [tenant, id] : expired) {
    Status erased = erase_if_idle(auth_.tenant(tenant), id, now - ttl);
    if (erased.ok()) ++deleted;
    else if (erased.code() != StatusCode::kFailedPrecondition)
      spdlog::warn("session TTL sweep: {}: {}", id, erased.to_string());
  }
  if (deleted > 0) spdlog::info("session TTL sweep deleted {} sessions", deleted);
  return deleted;
}

void SessionRegistry::sweep_loop() {
  std::unique_lock lock(sweep_mutex_);
  while (!stopping_) {
    if (sweep_cv_.wait_for(lock, options_.sweep_interval, [this] { return stopping_; })) break;
    lock.unlock();
    sweep_expired(unix_now_s());
    lock.lock();
  }
}

}  // namespace agentserve::server
