// SessionStore: the durable record of agent sessions, in three column families of the RocksDbStore:
//   sessions      id -> metadata (the caller's JSON, stored as given)
//   transcripts   u16be(len id) | id | 't' | u32be(turn index) -> that turn's messages (opaque bytes)
//                 u16be(len id) | id | 'k'                      -> the session's token ids, packed i32 LE
//   agent_memory  u16be(len agent) | agent | note key           -> note
// The length prefix keeps one id from being a key prefix of another ("ab" vs "abc"); big-endian turn
// indices make key order turn order.
//
// Durability contract: commit_turn() writes the turn, the session's token ids and its metadata in ONE
// WriteBatch with the WAL synced. Once it returns OK, a kill -9 or power loss keeps all of it; a crash
// before that loses the whole turn, never part of it. Reads use one snapshot, so a load never sees half a
// commit. This module stores bytes; it never parses messages or metadata (the TTL sweep asks the caller).
// Thread-safe (RocksDB is); concurrent commits to one session are the caller's to order.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "memory/rocksdb_store.h"

namespace agentserve::memory {

// Session, agent and note ids: 1..kMaxStoreIdBytes bytes, any content.
inline constexpr size_t kMaxStoreIdBytes = 1024;

struct SessionTurn {
  uint32_t index = 0;
  std::string messages;
};

struct SessionRecord {
  std::string metadata;
  std::vector<SessionTurn> turns;  // ascending index
  std::vector<int32_t> tokens;
};

struct SessionSummary {
  std::string id;
  std::string metadata;
};

struct AgentNote {
  std::string key;
  std::string note;
};

class SessionStore {
 public:
  // `store` must outlive the SessionStore.
  explicit SessionStore(RocksDbStore& store) : store_(store) {}

  // Atomically and durably: turn `turn_index` := turn, the session's token ids := tokens (all of them, not
  // a delta), its metadata := metadata.
  Status commit_turn(std::string_view session_id, uint32_t turn_index, std::string_view turn,
                     std::span<const int32_t> tokens, std::string_view metadata);
  // Creates or updates a session's metadata alone (synced), e.g. before its first turn.
  Status put_metadata(std::string_view session_id, std::string_view metadata);

  // NotFound when the session has no metadata; Corruption when its token record is malformed.
  Result<SessionRecord> load_session(std::string_view session_id) const;
  // The metadata alone (the transcript is not read). NotFound when the session does not exist.
  Result<std::string> load_metadata(std::string_view session_id) const;
  // Removes metadata, turns and tokens in one synced batch. OK when the session does not exist.
  Status delete_session(std::string_view session_id);
  Result<std::vector<SessionSummary>> list_sessions() const;

  // Deletes every session whose updated time, as `updated_at(metadata)` reads it, is older than
  // now - ttl (same unit as the caller's clock). A session whose time cannot be read is kept. Returns the
  // number deleted.
  using UpdatedAtFn = std::function<std::optional<int64_t>(std::string_view metadata)>;
  Result<size_t> sweep_expired(int64_t now, int64_t ttl, const UpdatedAtFn& updated_at);

  // Agent memory: notes are written synced (the memory tools promise persistence).
  Status put_note(std::string_view agent_id, std::string_view key, std::string_view note);
  Result<std::string> get_note(std::string_view agent_id, std::string_view key) const;
  Result<std::vector<AgentNote>> list_notes(std::string_view agent_id) const;  // ascending key order
  Status delete_note(std::string_view agent_id, std::string_view key);

 private:
  // The session's metadata record; NotFound when it has none.
  Status read_metadata(const rocksdb::ReadOptions& options, std::string_view session_id,
                       std::string& metadata) const;

  RocksDbStore& store_;
};

}  // namespace agentserve::memory
