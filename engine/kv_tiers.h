// KvTiers: the engine's KV tiers below the block pool. T0 (the engine's KvArena) spills a cached block when
// the pool reuses it; the block goes to T1 (HostKvTier, host RAM) and, when T1 evicts it, to T2 (KvStore
// in RocksDB under data_dir). With T1 off, T0 spills straight to T2. At admission the block manager asks
// this class (as its BlockSource) for the blocks of a prompt's hash chain that T0 misses: T1 first, then
// T2, copied into fresh T0 blocks. On a clean close flush() writes what T0 and T1 still cache to T2, so an
// engine opened on the same data_dir (same model fingerprint) restores long prompts instead of recomputing.
//
// First cut: all T1/T2 I/O runs synchronously on the engine thread, so a spill or a load from disk blocks
// that step (prefetching on storage threads is the follow-up). Not thread-safe: the engine thread owns it.
// It never hands out a block that failed its checks (checksum, model, layout, tokens): that is a miss, and
// the KV gets recomputed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "base/status.h"
#include "memory/block_manager.h"
#include "memory/host_kv_tier.h"
#include "memory/kv_arena.h"
#include "memory/kv_store.h"
#include "memory/rocksdb_store.h"

namespace agentserve::engine {

struct KvTierOptions {
  std::filesystem::path data_dir;                 // T2 lives in data_dir/rocksdb; empty = no T2
  // T2 in this already open database instead (the server shares its one DB with the session store); it
  // must outlive the tiers. data_dir is then unused.
  memory::RocksDbStore* store = nullptr;
  size_t host_kv_bytes = 0;                       // T1 budget; 0 = no T1
  size_t disk_kv_quota_bytes = size_t{64} << 30;  // T2 budget in encoded block bytes
};

// Cumulative since open. Hits and misses count load attempts per tier (a T1 miss then tries T2).
struct KvTierCounters {
  int64_t host_hits = 0;
  int64_t host_misses = 0;
  int64_t disk_hits = 0;
  int64_t disk_misses = 0;
  int64_t host_bytes_spilled = 0;  // block bytes copied T0 -> T1
  int64_t disk_bytes_spilled = 0;  // block bytes written to T2 (T1 evictions, direct spills, flush)
  int64_t host_bytes_loaded = 0;   // block bytes copied T1 -> T0
  int64_t disk_bytes_loaded = 0;   // block bytes copied T2 -> T0
  int64_t dropped_corrupt = 0;     // T2 blocks deleted for a bad checksum or a damaged header
  int64_t disk_write_errors = 0;   // spills T2 refused (quota, I/O): those blocks are just not kept
};

class KvTiers final : public memory::BlockSource {
 public:
  // `arena` is T0 and must outlive this object. InvalidArgument when host_kv_bytes is set but holds no
  // block; IoError / FailedPrecondition / Corruption from opening the database.
  static Result<std::unique_ptr<KvTiers>> open(const KvTierOptions& options,
                                               std::string_view model_fingerprint, memory::KvArena& arena);
  ~KvTiers() override;

  bool has_host() const { return host_ != nullptr; }
  bool has_disk() const { return disk_ != nullptr; }

  // The pool's evict hook: T0 block `block` still holds the KV of (key, tokens).
  void spill(int block, const memory::BlockKey& key, std::span<const int32_t> tokens);

  // BlockSource: T1, then T2.
  bool contains(const memory::BlockKey& key) const override;
  bool load(const memory::BlockKey& key, std::span<const int32_t> tokens, int block) override;

  // Writes every block T0 and T1 still cache to T2 (those it does not hold yet). Call on a clean close,
  // when no sequence writes T0 any more. OK when there is no T2.
  Status flush(const memory::BlockManager& blocks);

  KvTierCounters counters() const { return counters_; }

 private:
  explicit KvTiers(memory::KvArena& arena) : arena_(arena) {}
  void on_host_evict(std::span<const memory::KvSpillBlock> evicted);
  // Writes the blocks T2 lacks as one batch; counts what it wrote or why it could not.
  Status write_disk(std::span<const memory::KvSpillBlock> blocks);

  memory::KvArena& arena_;
  std::unique_ptr<memory::RocksDbStore> owned_db_;  // when the tiers opened data_dir themselves
  std::unique_ptr<memory::KvStore> disk_;  // declared after db_: closed before it
  std::unique_ptr<memory::HostKvTier> host_;
  // Token ids of the blocks T1 holds (T1 cannot list them), so flush() can write T1 out.
  std::unordered_map<memory::BlockKey, std::vector<int32_t>> host_tokens_;
  std::vector<std::byte> buffer_;  // one block, for T1 -> T2 at flush
  KvTierCounters counters_;
};

}  // namespace agentserve::engine
