#include "memory/rocksdb_store.h"

#include <rocksdb/options.h>

#include <vector>

namespace agentserve::memory {

std::string_view column_family_name(ColumnFamily cf) {
  switch (cf) {
    case ColumnFamily::kSessions:
      return "sessions";
    case ColumnFamily::kTranscripts:
      return "transcripts";
    case ColumnFamily::kKv:
      return "kv";
    case ColumnFamily::kAgentMemory:
      return "agent_memory";
  }
  return "unknown";
}

Status from_rocksdb(const rocksdb::Status& s, std::string_view context) {
  if (s.ok()) return Status::ok_status();
  std::string m = std::string(context) + ": " + s.ToString();
  if (s.IsCorruption()) return Status::corruption(std::move(m));
  if (s.IsNotFound()) return Status::not_found(std::move(m));
  if (s.IsInvalidArgument()) return Status::invalid_argument(std::move(m));
  if (s.IsIOError()) {
    // RocksDB reports a held LOCK file as an IOError whose text names the lock.
    if (s.ToString().find("lock") != std::string::npos) {
      return Status::failed_precondition(m + " (is another process using this database?)");
    }
    return Status::io_error(std::move(m));
  }
  if (s.IsNoSpace()) return Status::resource_exhausted(std::move(m));
  return Status::internal(std::move(m));
}

Result<std::unique_ptr<RocksDbStore>> RocksDbStore::open(const StoreOptions& options) {
  if (options.path.empty()) return Status::invalid_argument("store path is empty");
  rocksdb::DBOptions db_options;
  db_options.create_if_missing = true;
  db_options.create_missing_column_families = true;
  db_options.max_background_jobs = options.max_background_jobs;

  rocksdb::ColumnFamilyOptions small;
  small.write_buffer_size = options.write_buffer_bytes;
  rocksdb::ColumnFamilyOptions kv;
  kv.write_buffer_size = options.kv_write_buffer_bytes;
  kv.enable_blob_files = true;
  kv.min_blob_size = options.kv_min_blob_bytes;
  // Blobs of evicted blocks are reclaimed as compaction drops their index entries.
  kv.enable_blob_garbage_collection = true;
  kv.compression = options.kv_compression ? rocksdb::kLZ4Compression : rocksdb::kNoCompression;
  kv.blob_compression_type = options.kv_compression ? rocksdb::kLZ4Compression : rocksdb::kNoCompression;

  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
  descriptors.emplace_back(rocksdb::kDefaultColumnFamilyName, small);
  for (int i = 0; i < kNumColumnFamilies; ++i) {
    auto cf = static_cast<ColumnFamily>(i);
    descriptors.emplace_back(std::string(column_family_name(cf)), cf == ColumnFamily::kKv ? kv : small);
  }

  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(db_options, options.path, descriptors, &handles, &raw);
  if (!s.ok()) return from_rocksdb(s, "open " + options.path);

  std::unique_ptr<RocksDbStore> store(new RocksDbStore());
  store->options_ = options;
  store->db_.reset(raw);
  store->default_handle_ = handles[0];
  for (int i = 0; i < kNumColumnFamilies; ++i) store->handles_[i] = handles[i + 1];
  return store;
}

RocksDbStore::~RocksDbStore() {
  if (!db_) return;
  for (auto* h : handles_) (void)db_->DestroyColumnFamilyHandle(h);
  (void)db_->DestroyColumnFamilyHandle(default_handle_);
  (void)db_->Close();
}

}  // namespace agentserve::memory
