// SessionRegistry: the server-wide table of agent sessions, keyed by id and owned by a tenant. A session
// outlives the connection that created it: its events carry a per-session seq and the last ones are kept
// for replay, so a client that reconnects (session.resume) gets what it missed and then the live stream.
// With a SessionStore, every session's metadata and each finished turn are persisted (the turn's messages
// and the session's token ids in one synced commit), and a session not in memory is loaded from the store on
// first use (after a restart).
//
// It must never return a session to another tenant (that tenant sees NotFound, as for an unknown id), never
// block on the engine, never write a partial turn, and never write a deleted session back. Thread-safe: the table has its own lock; each
// Session's state is guarded by Session::mutex, which callers hold while they touch it.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/status.h"
#include "engine/request.h"
#include "memory/session_store.h"
#include "server/auth.h"
#include "server/protocol.h"

namespace agentserve::server {

// Where a session's events go: the connection attached to it (WsSession). Called with Session::mutex held,
// from any thread: implementations only queue (post to their strand) and return.
class EventSink {
 public:
  virtual ~EventSink() = default;
  // A live event. `carries_tokens`: a text or reasoning delta (the transport times its write).
  virtual void deliver_frame(std::string frame, bool carries_tokens) = 0;
  // The kept events a resume hands over, in seq order. They are bounded by the replay window, not by the
  // connection's limit on unread live output: a client dropped for not reading must be able to catch up.
  virtual void deliver_replay(std::vector<std::string> frames) = 0;
  // Another connection resumed this session; this one no longer receives its events.
  virtual void taken_over(const std::string& session_id) = 0;
};

class AgentResponse;  // server/agent_response.h

// A response that is running: a turn loop (`agent`), or a resume's KV warm-up (a prefill-only engine
// request, never shown, never committed).
struct RunningResponse {
  std::string id;
  engine::RequestId request_id = 0;  // the warm-up's
  bool warmup = false;
  std::shared_ptr<AgentResponse> agent;
  // The warm-up's: whether the resume that started it found every event after its last_seq still kept
  // (session.resumed reports it once the warm-up ends).
  bool replay_complete = true;
};

struct SessionEventRecord {
  uint64_t seq = 0;
  std::string frame;
};

// One agent session. Every field below `mutex` is guarded by it.
struct Session {
  Session(std::string id, Tenant tenant) : id(std::move(id)), tenant(std::move(tenant)) {}

  const std::string id;
  const Tenant tenant;

  std::mutex mutex;
  SessionConfig config;
  std::vector<ConversationMessage> messages;
  size_t committed_messages = 0;  // messages[0, committed_messages) are in committed turns
  uint32_t turns = 0;             // committed turns
  std::vector<int32_t> tokens;    // the token ids of the last committed turn (prompt + completion)
  int64_t created_at = 0;         // unix seconds
  int64_t updated_at = 0;
  std::optional<RunningResponse> running;
  // Set once, under `mutex`, by SessionRegistry::erase. Atomic so that a lookup under the table's lock can
  // refuse a session being deleted without taking the session's lock.
  std::atomic<bool> deleted{false};
  // Why the running response is being cancelled ("client_cancelled", "server_shutdown"); emit() puts it in
  // that response's response.done as status_details and clears it.
  std::string cancel_reason;
  bool loaded_from_store = false;  // reloaded after a restart and not yet resumed (KV not warmed)
  bool lost_unfinished_turn = false;  // items or a response after the last turn were lost in a crash
  // Bumped whenever the session's KV pin changes hands (a response starts, a new pin is taken): an idle
  // pin's expiry timer only unpins the pin it was started for.
  uint64_t pin_epoch = 0;

  uint64_t seq = 0;  // of the last event emitted
  std::deque<SessionEventRecord> replay;
  size_t replay_bytes = 0;
  std::weak_ptr<EventSink> sink;
};

struct RegistryOptions {
  size_t replay_max_events = 1024;          // events kept per session for session.resume
  size_t replay_max_bytes = size_t{4} << 20;
  std::chrono::seconds session_ttl{0};      // idle sessions older than this are deleted; 0 = never
  std::chrono::seconds sweep_interval{60};  // how often the TTL sweep runs
  // For re-validating a stored session's configuration when it is loaded.
  ServerOptions limits;
  int vocab_size = 0;

  static RegistryOptions from(const ServerOptions& options, int vocab_size);
};

class SessionRegistry {
 public:
  // `store` may be null (sessions then live in memory only); it and `auth` must outlive the registry.
  SessionRegistry(RegistryOptions options, memory::SessionStore* store, const Auth& auth);
  ~SessionRegistry();  // stops the sweep thread
  SessionRegistry(const SessionRegistry&) = delete;
  SessionRegistry& operator=(const SessionRegistry&) = delete;

  // A new session of `tenant` (metadata persisted). ResourceExhausted past the tenant's max_sessions.
  Result<std::shared_ptr<Session>> create(const Tenant& tenant, const SessionConfig& config);
  // The tenant's session: in memory, else loaded from the store (loaded_from_store set). NotFound when it
  // does not exist or belongs to another tenant.
  Result<std::shared_ptr<Session>> get(const Tenant& tenant, std::string_view id);
  // Removes the session from memory and the store, emits session.deleted (its last event) to its
  // connection, then hands the session, marked deleted, to the on_erased hook. A session only in the store
  // is deleted without being loaded (its metadata says whose it is; its token ids are read if they can be),
  // so one stored under other limits can still be deleted. NotFound as for get(), and for a session already
  // deleted.
  Status erase(const Tenant& tenant, std::string_view id);
  // What the server does with an erased session's running work and KV (server/session_control.h): the
  // registry never calls the engine itself. Called on the erasing thread with only the registry's erase
  // lock held (so clearing the hook waits for a call in progress); it must not erase. Null: nothing.
  using ErasedHook = std::function<void(const std::shared_ptr<Session>&)>;
  void on_erased(ErasedHook hook);

  // Stamps type-independent envelope fields (event_id, seq, session_id) and, on a cancelled response.done,
  // status_details from session.cancel_reason; keeps the frame for replay and hands it to the attached
  // sink. Caller holds session.mutex.
  void emit(Session& session, nlohmann::json event);
  // Attaches `sink` (the previous sink, if another, is told taken_over) and hands it every kept event with
  // seq > last_seq, in order, as one deliver_replay. Returns false when events after last_seq were already
  // dropped from the replay window. Caller holds session.mutex.
  bool attach(Session& session, const std::shared_ptr<EventSink>& sink, uint64_t last_seq);
  // Detaches `sink` if it is the attached one. Caller holds session.mutex.
  void detach(Session& session, const EventSink* sink);

  // Persists a finished turn: the messages since the last turn (the assistant's answer included) and
  // `tokens`, atomically and synced. NotFound for a deleted session. Caller holds session.mutex.
  Status commit_turn(Session& session, std::vector<int32_t> tokens);
  // Persists the metadata alone (session.update, a new item, a response starting: a crash after them is
  // reported as a lost unfinished turn). NotFound for a deleted session. Caller holds session.mutex.
  Status save_metadata(Session& session);
  // Whether items or a response after the last turn were lost in a crash; true once: the flag is cleared
  // and the metadata saved, so the next resume does not report the same loss. Caller holds session.mutex.
  bool take_lost_unfinished_turn(Session& session);

  // The session as the REST API and session.created/resumed show it. Caller holds session.mutex.
  nlohmann::json describe(const Session& session) const;

  // Deletes sessions idle past the TTL (in memory and in the store) that have no running response.
  // Returns how many. Called by the sweep thread; public for tests.
  size_t sweep_expired(int64_t now_unix_s);
  // erase(), or with `idle_before` (the sweep's) only if the session, checked under its lock, has no
  // response running and was last updated before that time: FailedPrecondition otherwise (it was used
  // between the sweep's look and the erase).
  Status erase_if_idle(const Tenant& tenant, std::string_view id, std::optional<int64_t> idle_before);
  // The tenant's sessions in memory, other than `except` (for the KV blocks they share with it).
  std::vector<std::shared_ptr<Session>> tenant_sessions(const std::string& tenant, const Session* except) const;
  size_t live_sessions() const;
  // The sessions in memory with a response (or a resume's warm-up) running: what a graceful shutdown waits
  // for, then cancels.
  std::vector<std::shared_ptr<Session>> running_sessions() const;

 private:
  // Drops `session` from the table (if it is still the one under its id) and from its tenant's count.
  // Caller holds mutex_.
  void forget(const Session& session);

  // A stand-in for a session only in the store, made from its metadata (and its token ids, when readable)
  // for erase(); NotFound when absent or another tenant's.
  Result<std::shared_ptr<Session>> stored_for_erase(const Tenant& tenant, std::string_view id);
  std::string metadata_json(const Session& session) const;
  Result<std::shared_ptr<Session>> load(const Tenant& tenant, std::string_view id);
  // The stored session as an object, not yet in the table.
  Result<std::shared_ptr<Session>> load_record(const Tenant& tenant, std::string_view id);
  void sweep_loop();

  RegistryOptions options_;
  memory::SessionStore* store_;
  const Auth& auth_;
  mutable std::mutex mutex_;
  std::map<std::string, std::shared_ptr<Session>, std::less<>> sessions_;
  std::map<std::string, int, std::less<>> per_tenant_;  // sessions in memory or in the store
  // Bumped (under mutex_) when an erase has finished: a load that read the store before it must read again,
  // or it would put the deleted session back in the table.
  uint64_t erase_generation_ = 0;
  // One erase at a time: two erases of one session must not both count it off its tenant. Erases are rare
  // (a client's delete, the TTL sweep), so this never holds up lookups, which do not take it.
  std::mutex erase_mutex_;
  ErasedHook on_erased_;  // guarded by erase_mutex_

  std::mutex sweep_mutex_;
  std::condition_variable sweep_cv_;
  bool stopping_ = false;
  std::thread sweeper_;
};

int64_t unix_now_s();

}  // namespace agentserve::server
