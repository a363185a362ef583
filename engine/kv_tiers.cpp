#include "engine/kv_tiers.h"

#include <system_error>

#include "spdlog/spdlog.h"

namespace agentserve::engine {
namespace {

// T0 blocks written to T2 per WriteBatch at flush: large enough to amortize a batch, small enough that
// one refused batch (quota) loses little.
constexpr size_t kFlushBatchBlocks = 64;

}  // namespace

Result<std::unique_ptr<KvTiers>> KvTiers::open(const KvTierOptions& options,
                                               std::string_view model_fingerprint, memory::KvArena& arena) {
  std::unique_ptr<KvTiers> tiers(new KvTiers(arena));
  const memory::KvLayout& layout = arena.layout();
  memory::RocksDbStore* db = options.store;
  if (db == nullptr && !options.data_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(options.data_dir, ec);
    if (ec)
      return Status::io_error("cannot create data_dir " + options.data_dir.string() + ": " + ec.message());
    memory::StoreOptions store_options;
    store_options.path = (options.data_dir / "rocksdb").string();
    store_options.kv_quota_bytes = options.disk_kv_quota_bytes;
    AS_ASSIGN_OR_RETURN(tiers->owned_db_, memory::RocksDbStore::open(store_options));
    db = tiers->owned_db_.get();
  }
  if (db != nullptr) {
    AS_ASSIGN_OR_RETURN(tiers->disk_, memory::KvStore::open(
                                          *db, memory::KvBlockFormat::make(model_fingerprint, layout),
                                          options.disk_kv_quota_bytes));
  }
  if (options.host_kv_bytes > 0) {
    KvTiers* self = tiers.get();
    AS_ASSIGN_OR_RETURN(tiers->host_,
                        memory::HostKvTier::create(layout, options.host_kv_bytes,
                                                   [self](std::span<const memory::KvSpillBlock> evicted) {
                                                     self->on_host_evict(evicted);
                                                   }));
  }
  return tiers;
}

KvTiers::~KvTiers() = default;

void KvTiers::spill(int block, const memory::BlockKey& key, std::span<const int32_t> tokens) {
  const memory::KvSpillBlock spilled{.key = key, .tokens = tokens, .payload = arena_.block_bytes(block)};
  if (host_) {
    // T1's evictions reach T2 through on_host_evict, inside this call.
    if (host_->put_batch(std::span(&spilled, 1)).ok()) {
      counters_.host_bytes_spilled += static_cast<int64_t>(spilled.payload.size());
      host_tokens_[key].assign(tokens.begin(), tokens.end());
      return;
    }
  }
  if (disk_) (void)write_disk(std::span(&spilled, 1));
}

void KvTiers::on_host_evict(std::span<const memory::KvSpillBlock> evicted) {
  if (disk_) (void)write_disk(evicted);
  for (const memory::KvSpillBlock& b : evicted) host_tokens_.erase(b.key);
}

Status KvTiers::write_disk(std::span<const memory::KvSpillBlock> blocks) {
  // A block loaded from T2 and evicted again is still there: writing it again would only cost I/O.
  std::vector<memory::KvSpillBlock> missing;
  missing.reserve(blocks.size());
  for (const memory::KvSpillBlock& b : blocks) {
    if (!disk_->contains(b.key)) missing.push_back(b);
  }
  if (missing.empty()) return Status::ok_status();
  int64_t bytes = 0;
  for (const memory::KvSpillBlock& b : missing) bytes += static_cast<int64_t>(b.payload.size());
  Status status = disk_->put_batch(missing);
  if (status.ok()) {
    counters_.disk_bytes_spilled += bytes;
  } else {
    // KV is a cache: a refused spill costs recompute later, never correctness.
    counters_.disk_write_errors += static_cast<int64_t>(missing.size());
    spdlog::warn("kv tiers: {} blocks not written to disk: {}", missing.size(), status.to_string());
  }
  return status;
}

bool KvTiers::contains(const memory::BlockKey& key) const {
  return (host_ && host_->contains(key)) || (disk_ && disk_->contains(key));
}

bool KvTiers::load(const memory::BlockKey& key, std::span<const int32_t> tokens, int block) {
  const std::span<std::byte> out = arena_.block_bytes(block);
  if (host_) {
    if (host_->get(key, tokens, out).ok()) {
      ++counters_.host_hits;
      counters_.host_bytes_loaded += static_cast<int64_t>(out.size());
      // The block lives in T0 now and comes back to T1 if T0 evicts it: keeping both copies would only
      // halve what T1 holds.
      host_->erase(key);
      host_tokens_.erase(key);
      return true;
    }
    ++counters_.host_misses;
  }
  if (disk_) {
    const int64_t corrupt_before = disk_->counters().dropped_corrupt;
    const Status status = disk_->get(key, tokens, out);
    counters_.dropped_corrupt += disk_->counters().dropped_corrupt - corrupt_before;
    if (status.ok()) {
      ++counters_.disk_hits;
      counters_.disk_bytes_loaded += static_cast<int64_t>(out.size());
      return true;
    }
    ++counters_.disk_misses;
    if (status.code() != StatusCode::kNotFound) {
      spdlog::warn("kv tiers: block {} rejected, recomputing: {}", key.to_hex(), status.to_string());
    }
  }
  return false;
}

Status KvTiers::flush(const memory::BlockManager& blocks) {
  if (!disk_) return Status::ok_status();
  Status first_error;
  auto keep_error = [&first_error](Status s) {
    if (first_error.ok() && !s.ok()) first_error = std::move(s);
  };
  // T1 first, then T0: T2's LRU then ranks the blocks T0 still held (the most recent) newest.
  if (host_) {
    buffer_.resize(arena_.layout().block_bytes());
    for (const auto& [key, tokens] : host_tokens_) {
      if (disk_->contains(key) || !host_->get(key, tokens, buffer_).ok()) continue;
      const memory::KvSpillBlock b{.key = key, .tokens = tokens, .payload = buffer_};
      keep_error(write_disk(std::span(&b, 1)));
    }
  }
  std::vector<memory::KvSpillBlock> batch;
  batch.reserve(kFlushBatchBlocks);
  for (int b = 0; b < blocks.pool().num_blocks(); ++b) {
    const std::optional<memory::BlockKey> key = blocks.pool().key(b);
    if (!key) continue;
    batch.push_back({.key = *key, .tokens = blocks.block_tokens(b), .payload = arena_.block_bytes(b)});
    if (batch.size() == kFlushBatchBlocks) {
      keep_error(write_disk(batch));
      batch.clear();
    }
  }
  if (!batch.empty()) keep_error(write_disk(batch));
  return first_error;
}

}  // namespace agentserve::engine
