#include "memory/session_store.h"

#include <rocksdb/write_batch.h>

#include <memory>

namespace agentserve::memory {
namespace {

constexpr char kTurnTag = 't';
constexpr char kTokensTag = 'k';

Status check_id(std::string_view what, std::string_view id) {
  if (id.empty() || id.size() > kMaxStoreIdBytes) {
    return Status::invalid_argument(std::string(what) + " must be 1.." + std::to_string(kMaxStoreIdBytes) +
                                    " bytes, got " + std::to_string(id.size()));
  }
  return Status::ok_status();
}

// u16be(len id) | id: the prefix of every record of one session or agent.
std::string id_prefix(std::string_view id) {
  std::string k;
  k.reserve(2 + id.size() + 5);
  k.push_back(static_cast<char>(id.size() >> 8));
  k.push_back(static_cast<char>(id.size()));
  k.append(id);
  return k;
}

std::string turn_key(std::string_view id, uint32_t turn) {
  std::string k = id_prefix(id);
  k.push_back(kTurnTag);
  for (int i = 3; i >= 0; --i) k.push_back(static_cast<char>(turn >> (8 * i)));
  return k;
}

std::string tokens_key(std::string_view id) {
  return id_prefix(id) + kTokensTag;
}

std::string pack_tokens(std::span<const int32_t> tokens) {
  std::string v(4 * tokens.size(), '\0');
  for (size_t i = 0; i < tokens.size(); ++i) {
    auto u = static_cast<uint32_t>(tokens[i]);
    for (int b = 0; b < 4; ++b) v[4 * i + b] = static_cast<char>(u >> (8 * b));
  }
  return v;
}

std::vector<int32_t> unpack_tokens(const rocksdb::Slice& v) {
  std::vector<int32_t> tokens(v.size() / 4);
  for (size_t i = 0; i < tokens.size(); ++i) {
    uint32_t u = 0;
    for (int b = 0; b < 4; ++b) u |= static_cast<uint32_t>(static_cast<uint8_t>(v[4 * i + b])) << (8 * b);
    tokens[i] = static_cast<int32_t>(u);
  }
  return tokens;
}

rocksdb::WriteOptions synced() {
  rocksdb::WriteOptions o;
  o.sync = true;
  return o;
}

// Releases a snapshot when a read is done with it.
class SnapshotRead {
 public:
  explicit SnapshotRead(rocksdb::DB* db) : db_(db), snapshot_(db->GetSnapshot()) {
    options.snapshot = snapshot_;
  }
  ~SnapshotRead() { db_->ReleaseSnapshot(snapshot_); }
  SnapshotRead(const SnapshotRead&) = delete;
  SnapshotRead& operator=(const SnapshotRead&) = delete;
  rocksdb::ReadOptions options;

 private:
  rocksdb::DB* db_;
  const rocksdb::Snapshot* snapshot_;
};

}  // namespace

Status SessionStore::commit_turn(std::string_view session_id, uint32_t turn_index, std::string_view turn,
                                 std::span<const int32_t> tokens, std::string_view metadata) {
  AS_RETURN_IF_ERROR(check_id("session id", session_id));
  rocksdb::WriteBatch batch;
  batch.Put(store_.handle(ColumnFamily::kTranscripts), turn_key(session_id, turn_index), turn);
  batch.Put(store_.handle(ColumnFamily::kTranscripts), tokens_key(session_id), pack_tokens(tokens));
  batch.Put(store_.handle(ColumnFamily::kSessions), session_id, metadata);
  return from_rocksdb(store_.db()->Write(synced(), &batch), "commit turn");
}

Status SessionStore::put_metadata(std::string_view session_id, std::string_view metadata) {
  AS_RETURN_IF_ERROR(check_id("session id", session_id));
  return from_rocksdb(
      store_.db()->Put(synced(), store_.handle(ColumnFamily::kSessions), session_id, metadata),
      "put session metadata");
}

Result<SessionRecord> SessionStore::load_session(std::string_view session_id) const {
  AS_RETURN_IF_ERROR(check_id("session id", session_id));
  SnapshotRead read(store_.db());
  SessionRecord record;
  AS_RETURN_IF_ERROR(read_metadata(read.options, session_id, record.metadata));

  const std::string prefix = id_prefix(session_id);
  std::unique_ptr<rocksdb::Iterator> it(
      store_.db()->NewIterator(read.options, store_.handle(ColumnFamily::kTranscripts)));
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    rocksdb::Slice rest(it->key().data() + prefix.size(), it->key().size() - prefix.size());
    if (rest.size() == 1 && rest[0] == kTokensTag) {
      if (it->value().size() % 4 != 0) {
        return Status::corruption("session " + std::string(session_id) + ": token record of " +
                                  std::to_string(it->value().size()) + " bytes");
      }
      record.tokens = unpack_tokens(it->value());
    } else if (rest.size() == 5 && rest[0] == kTurnTag) {
      uint32_t index = 0;
      for (int i = 1; i <= 4; ++i) index = index << 8 | static_cast<uint8_t>(rest[i]);
      record.turns.push_back({index, it->value().ToString()});
    } else {
      return Status::corruption("session " + std::string(session_id) + ": unknown transcript record");
    }
  }
  AS_RETURN_IF_ERROR(from_rocksdb(it->status(), "load session transcript"));
  return record;
}

Result<std::string> SessionStore::load_metadata(std::string_view session_id) const {
  AS_RETURN_IF_ERROR(check_id("session id", session_id));
  std::string metadata;
  AS_RETURN_IF_ERROR(read_metadata(rocksdb::ReadOptions(), session_id, metadata));
  return metadata;
}

Status SessionStore::read_metadata(const rocksdb::ReadOptions& options, std::string_view session_id,
                                   std::string& metadata) const {
  rocksdb::Status s = store_.db()->Get(options, store_.handle(ColumnFamily::kSessions), session_id, &metadata);
  if (s.IsNotFound()) return Status::not_found("session " + std::string(session_id));
  return from_rocksdb(s, "load session metadata");
}

Status SessionStore::delete_session(std::string_view session_id) {
  AS_RETURN_IF_ERROR(check_id("session id", session_id));
  const std::string prefix = id_prefix(session_id);
  rocksdb::WriteBatch batch;
  batch.Delete(store_.handle(ColumnFamily::kSessions), session_id);
  // Every transcript key of the session is prefix + a tag byte below 0xff.
  batch.DeleteRange(store_.handle(ColumnFamily::kTranscripts), prefix, prefix + '\xff');
  return from_rocksdb(store_.db()->Write(synced(), &batch), "delete session");
}

Result<std::vector<SessionSummary>> SessionStore::list_sessions() const {
  std::vector<SessionSummary> out;
  std::unique_ptr<rocksdb::Iterator> it(
      store_.db()->NewIterator(rocksdb::ReadOptions(), store_.handle(ColumnFamily::kSessions)));
  for (it->SeekToFirst(); it->Valid(); it->Next())
    out.push_back({it->key().ToString(), it->value().ToString()});
  AS_RETURN_IF_ERROR(from_rocksdb(it->status(), "list sessions"));
  return out;
}

Result<size_t> SessionStore::sweep_expired(int64_t now, int64_t ttl, const UpdatedAtFn& updated_at) {
  AS_ASSIGN_OR_RETURN(std::vector<SessionSummary> sessions, list_sessions());
  size_t deleted = 0;
  for (const SessionSummary& s : sessions) {
    std::optional<int64_t> updated = updated_at(s.metadata);
    if (!updated || *updated >= now - ttl) continue;
    AS_RETURN_IF_ERROR(delete_session(s.id));
    ++deleted;
  }
  return deleted;
}

Status SessionStore::put_note(std::string_view agent_id, std::string_view key, std::string_view note) {
  AS_RETURN_IF_ERROR(check_id("agent id", agent_id));
  AS_RETURN_IF_ERROR(check_id("note key", key));
  return from_rocksdb(store_.db()->Put(synced(), store_.handle(ColumnFamily::kAgentMemory),
                                       id_prefix(agent_id).append(key), note),
                      "put agent note");
}

Result<std::string> SessionStore::get_note(std::string_view agent_id, std::string_view key) const {
  AS_RETURN_IF_ERROR(check_id("agent id", agent_id));
  AS_RETURN_IF_ERROR(check_id("note key", key));
  std::string note;
  rocksdb::Status s = store_.db()->Get(rocksdb::ReadOptions(), store_.handle(ColumnFamily::kAgentMemory),
                                       id_prefix(agent_id).append(key), &note);
  if (s.IsNotFound()) return Status::not_found("agent note " + std::string(key));
  AS_RETURN_IF_ERROR(from_rocksdb(s, "get agent note"));
  return note;
}

Result<std::vector<AgentNote>> SessionStore::list_notes(std::string_view agent_id) const {
  AS_RETURN_IF_ERROR(check_id("agent id", agent_id));
  const std::string prefix = id_prefix(agent_id);
  std::vector<AgentNote> out;
  std::unique_ptr<rocksdb::Iterator> it(
      store_.db()->NewIterator(rocksdb::ReadOptions(), store_.handle(ColumnFamily::kAgentMemory)));
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    out.push_back({it->key().ToString().substr(prefix.size()), it->value().ToString()});
  }
  AS_RETURN_IF_ERROR(from_rocksdb(it->status(), "list agent notes"));
  return out;
}

Status SessionStore::delete_note(std::string_view agent_id, std::string_view key) {
  AS_RETURN_IF_ERROR(check_id("agent id", agent_id));
  AS_RETURN_IF_ERROR(check_id("note key", key));
  return from_rocksdb(store_.db()->Delete(synced(), store_.handle(ColumnFamily::kAgentMemory),
                                          id_prefix(agent_id).append(key)),
                      "delete agent note");
}

}  // namespace agentserve::memory
