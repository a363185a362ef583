// RocksDbStore: the one RocksDB database of a server, opened with its column families
//   sessions      session id -> metadata (SessionStore)
//   transcripts   session id + turn index -> turn; session id -> token ids (SessionStore)
//   kv            spilled KV blocks and their last-use records (KvStore)
//   agent_memory  agent id + key -> note (SessionStore)
// and the default family, unused. It owns the DB handle and the family handles and turns rocksdb::Status
// into agentserve::Status. It never interprets keys or values; the stores above it do.
#pragma once

#include <rocksdb/db.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "base/status.h"

namespace agentserve::memory {

struct StoreOptions {
  std::string path;  // database folder; created when missing
  // KV spill tier's disk budget (encoded block bytes). Writes past it evict least recently used blocks.
  uint64_t kv_quota_bytes = 64ull << 30;
  // KV values at least this large go to blob files, so compaction moves only small index entries.
  uint64_t kv_min_blob_bytes = 4096;
  // KV is write-heavy and arrives in large batches: a bigger memtable means fewer, larger flushes.
  uint64_t kv_write_buffer_bytes = 256ull << 20;
  uint64_t write_buffer_bytes = 16ull << 20;  // the other families: small, mostly metadata and text
  // KV is float data that compresses poorly; leave it raw unless measured otherwise.
  bool kv_compression = false;
  // KV writes skip the WAL by default, so each block is written once (into its blob file at flush)
  // instead of twice; kv_store_bench measured about 1.7x the spill throughput. A crash then loses the
  // unflushed memtable (at most kv_write_buffer_bytes of blocks), which costs only recompute; a clean
  // close flushes it.
  bool kv_write_wal = false;
  int max_background_jobs = 4;
};

enum class ColumnFamily { kSessions = 0, kTranscripts, kKv, kAgentMemory };
inline constexpr int kNumColumnFamilies = 4;
std::string_view column_family_name(ColumnFamily cf);

// rocksdb::Status -> Status, prefixed with `context`. A lock held by another process becomes
// FailedPrecondition; Corruption stays Corruption; other I/O failures are IoError.
Status from_rocksdb(const rocksdb::Status& s, std::string_view context);

class RocksDbStore {
 public:
  // IoError when the folder cannot be created or written, FailedPrecondition when another process holds
  // the database, Corruption when its files are damaged.
  static Result<std::unique_ptr<RocksDbStore>> open(const StoreOptions& options);
  ~RocksDbStore();
  RocksDbStore(const RocksDbStore&) = delete;
  RocksDbStore& operator=(const RocksDbStore&) = delete;

  rocksdb::DB* db() const { return db_.get(); }
  rocksdb::ColumnFamilyHandle* handle(ColumnFamily cf) const { return handles_[static_cast<int>(cf)]; }
  const StoreOptions& options() const { return options_; }

 private:
  RocksDbStore() = default;

  StoreOptions options_;
  std::unique_ptr<rocksdb::DB> db_;
  rocksdb::ColumnFamilyHandle* default_handle_ = nullptr;
  std::array<rocksdb::ColumnFamilyHandle*, kNumColumnFamilies> handles_{};
};

}  // namespace agentserve::memory
