// KvTiers: the engine's KV tiers below the block pool. T0 (the engine's KV pool: a host KvArena, or a
// backend's KvCache seen through KvBlockSpace) spills a cached block when
// the pool reuses it; the block goes to T1 (HostKvTier, host RAM) and, when T1 evicts it, to T2 (KvStore
// in RocksDB under data_dir). With T1 off, T0 spills straight to T2. At admission the block manager asks
// this class (as its BlockSource) for the blocks of a prompt's hash chain that T0 misses: T1 first, then
// T2 (one MultiGet for the whole chain), copied into fresh T0 blocks. On a clean close flush() writes what
// T0 and T1 still cache to T2, so an engine opened on the same data_dir restores long prompts instead of
// recomputing.
//
// Threads. T2 writes never run on the engine thread: spilled blocks are copied into a staging batch, which
// submit_spills() (after each engine step, or every kSpillBatchBlocks blocks) hands to a storage thread
// that writes it as one WriteBatch. Blocks waiting there stay readable (contains/load see them). The queue
// is bounded (spill_queue_bytes): when full, the newest batch's unpinned blocks are dropped and counted
// (KV is a cache); pinned ones are queued anyway. prefetch() reads a chain's T2 blocks into T1 on the
// storage thread ahead of admission; discard() removes a chain's blocks from T1 and T2 there too. The
// engine thread reads T2 only for the blocks an admission asks for.
//
// Pinning: pin(id, tokens) keeps a chain's blocks from being thrown away while pinned: T1 evicts unpinned
// blocks first (and a pinned block T1 evicts still goes to T2), and T2's quota LRU never deletes a pinned
// block. When pinned blocks alone exceed a budget: T1 evicts pinned blocks too (counted in
// pinned_evictions; with T2 they are written there, without T2 they are lost), and T2 refuses the writes
// that do not fit (disk_write_errors; spilling stalls as for a full disk) until unpin() frees room.
//
// Full disk or quota: a refused T2 write stops spilling for kRetryAfter with one warning (then at most one
// per kWarnEvery) and sets disk_spill_stalled; serving continues (the blocks are just not kept), and the
// next write after the pause probes again, resuming (and logging so) when it succeeds. Pinned blocks are
// not given up: those refused or arriving during the pause stay queued (readable, pinned_retry_blocks)
// and go first in the next write after it (submit_spills() posts one when nothing else comes; one unpinned
// meanwhile is a cache block again and is dropped). That queue is bounded by pinned_retry_bytes; a pinned
// block past it is lost, counted in pinned_spills_lost and logged as an error (a resumed session then
// recomputes it).
//
// Write-through on commit: persist(tokens) makes the chain's full blocks durable in T2 without waiting for
// eviction: on the engine thread it copies the blocks T2 lacks from T0, T1 or the staging queue, and the
// storage thread writes them through the WAL, then KvStore::make_durable syncs it once (writing again, in
// that synced write, the chain blocks earlier cache writes left outside the WAL). Its callback then says
// how many chain blocks T2 holds durably.
//
// It never hands out a block that failed its checks (checksum, model, layout, tokens): that is a miss, and
// the KV gets recomputed. spill/load/flush belong to the engine thread; prefetch, pin, unpin, discard,
// sync and counters may be called from any thread.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "base/status.h"
#include "engine/storage_thread.h"
#include "memory/block_manager.h"
#include "memory/host_kv_tier.h"
#include "memory/kv_arena.h"
#include "memory/kv_store.h"
#include "memory/rocksdb_store.h"

namespace agentserve::engine {

// T0 as the tiers see it: the pool whose blocks the BlockManager hands out. A block travels between tiers as
// layout().block_bytes() host bytes; layout() says only how many (a backend's bf16 block is described by an
// f32 layout of the same byte count, and the model fingerprint tells such blocks apart). When T0 lies in
// host memory the tiers read and write its blocks in place; otherwise through read_blocks / write_blocks.
class KvBlockSpace {
 public:
  virtual ~KvBlockSpace() = default;
  virtual const memory::KvLayout& layout() const = 0;
  // Whether host_block() may be called: true for a KvArena, false for a device's pool.
  virtual bool in_host_memory() const = 0;
  // The block's bytes in place (in_host_memory() only).
  virtual std::span<std::byte> host_block(int block) = 0;
  // Blocks ids[i] to / from host + i * layout().block_bytes(); ids in range, host sized for all of them.
  // read_blocks returns when the bytes are there (after every forward issued before it).
  virtual Status read_blocks(std::span<const int32_t> ids, std::span<std::byte> host) = 0;
  virtual void write_blocks(std::span<const int32_t> ids, std::span<const std::byte> host) = 0;
};

// A host KvArena as T0 (the CPU engine's pool): blocks are read and written in place.
class ArenaBlockSpace final : public KvBlockSpace {
 public:
  explicit ArenaBlockSpace(memory::KvArena& arena) : arena_(arena) {}
  const memory::KvLayout& layout() const override { return arena_.layout(); }
  bool in_host_memory() const override { return true; }
  std::span<std::byte> host_block(int block) override { return arena_.block_bytes(block); }
  Status read_blocks(std::span<const int32_t> ids, std::span<std::byte> host) override;
  void write_blocks(std::span<const int32_t> ids, std::span<const std::byte> host) override;

 private:
  memory::KvArena& arena_;
};

struct KvTierOptions {
  std::filesystem::path data_dir;  // T2 lives in data_dir/rocksdb; empty = no T2
  // T2 in this already open database instead (the server shares its one DB with the session store); it
  // must outlive the tiers. data_dir is then unused.
  memory::RocksDbStore* store = nullptr;
  size_t host_kv_bytes = 0;                       // T1 budget; 0 = no T1
  size_t disk_kv_quota_bytes = size_t{64} << 30;  // T2 budget in encoded block bytes
  // Spilled bytes waiting for the storage thread; past it new unpinned spills are dropped.
  size_t spill_queue_bytes = size_t{256} << 20;
  // T2 bytes discarded or dropped (not LRU evictions: kv_store.h says why) after which the storage thread
  // compacts them away (reclaim).
  uint64_t reclaim_after_bytes = uint64_t{1} << 30;
  // Pinned blocks kept for a retry while T2 refuses writes; past it they are lost (pinned_spills_lost).
  size_t pinned_retry_bytes = size_t{256} << 20;
  // Test seam: KvStore::set_write_hook for T2 (an injected slow or failing disk). Unset in production.
  memory::KvStore::WriteHook disk_write_hook;
};

// Cumulative since open, except the gauges. Hits and misses count load attempts per tier (a T1 miss then
// tries T2); a block still waiting for its T2 write counts as a T1 hit.
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
  int64_t disk_write_errors = 0;   // blocks T2 refused or skipped while stalled (quota, I/O)
  int64_t spills_dropped = 0;      // blocks not queued for T2 because the storage queue was full
  int64_t prefetched_blocks = 0;   // blocks prefetch() read from T2 into T1
  int64_t discarded_blocks = 0;    // blocks discard() removed from T1 or T2
  int64_t pinned_evictions = 0;    // pinned blocks T1 had to evict for lack of unpinned room
  int64_t disk_reclaims = 0;       // compactions run to give deleted blocks' space back
  int64_t pinned_spills_lost = 0;  // pinned blocks given up while T2 refused writes (retry queue full)
  // Gauges.
  int64_t pinned_blocks = 0;       // distinct pinned block keys
  int64_t host_bytes_used = 0;     // T1 bytes holding blocks
  int64_t disk_usage_bytes = 0;    // T2 live encoded bytes
  int64_t spill_queue_bytes = 0;   // bytes waiting for the storage thread
  int64_t disk_spill_stalled = 0;  // 1 while T2 writes are paused after a refusal
  int64_t pinned_retry_blocks = 0;  // pinned blocks waiting for T2 to take writes again
};

class KvTiers final : public memory::BlockSource {
 public:
  // Blocks staged before the engine thread hands them to the storage thread on its own.
  static constexpr size_t kSpillBatchBlocks = 32;
  // Blocks per WriteBatch (spills, persist, flush) and per MultiGet in prefetch: large enough to amortize a
  // batch, small enough that one refused batch (quota) loses little and the read buffer stays small.
  static constexpr size_t kIoBatchBlocks = 64;
  static constexpr std::chrono::seconds kRetryAfter{1};
  static constexpr std::chrono::seconds kWarnEvery{30};

  // `t0` must outlive this object. InvalidArgument when host_kv_bytes is set but holds no block;
  // IoError / FailedPrecondition / Corruption from opening the database.
  static Result<std::unique_ptr<KvTiers>> open(const KvTierOptions& options,
                                               std::string_view model_fingerprint, KvBlockSpace& t0);
  ~KvTiers() override;  // finishes the storage thread's queue first

  bool has_host() const { return host_ != nullptr; }
  bool has_disk() const { return disk_ != nullptr; }

  // The pool's evict hook (engine thread): T0 block `block` still holds the KV of (key, tokens).
  void spill(int block, const memory::BlockKey& key, std::span<const int32_t> tokens);
  // Hands the staged T2 writes to the storage thread (the engine calls it after each step).
  void submit_spills();

  // BlockSource (engine thread): the staging queue and T1, then T2.
  bool contains(const memory::BlockKey& key) const override;
  bool load(const memory::BlockKey& key, std::span<const int32_t> tokens, int block) override;
  int load_chain(std::span<const memory::BlockLoad> loads) override;

  // Engine thread, between steps. Makes the leading full blocks of the chain of `tokens` under `salt` that
  // any tier holds durable in T2 (see above), then calls `done` on the storage thread with the number of
  // leading chain blocks T2 holds, or the write's error. Without T2, `done` gets 0 at once.
  void persist(std::span<const int32_t> tokens, const memory::BlockKey& salt,
               const memory::BlockManager& blocks, std::function<void(Result<int>)> done);

  // Writes every block T0 and T1 still cache to T2 (those it does not hold yet), after the storage queue.
  // Call on a clean close, when no sequence writes T0 any more. OK when there is no T2.
  Status flush(const memory::BlockManager& blocks);

  // Any thread. The chain of `tokens` under `salt` (make_salt(fingerprint, cache salt)), full blocks only.
  // prefetch: reads the blocks T2 holds and T1 lacks into T1, on the storage thread (up to T1's size); a
  // no-op without T1 or T2.
  void prefetch(std::span<const int32_t> tokens, const memory::BlockKey& salt);
  // pin: replaces what `pin_id` pinned before; unpin of an unknown id does nothing.
  void pin(const std::string& pin_id, std::span<const int32_t> tokens, const memory::BlockKey& salt);
  void unpin(const std::string& pin_id);
  // Removes the chain's blocks from block from_token / block_size on from T1 and T2 (and from the staging
  // queue), on the storage thread. Blocks T0 still caches are not touched: they may spill again later.
  void discard(std::span<const int32_t> tokens, const memory::BlockKey& salt, int from_token);
  // Returns when the staged spills and all storage work queued before the call are done.
  void sync();

  KvTierCounters counters() const;

 private:
  // A spilled block's own copy while it waits for T2.
  struct PendingBlock {
    memory::BlockKey key;
    std::vector<int32_t> tokens;
    std::vector<std::byte> payload;
    bool pinned = false;
  };
  using PendingPtr = std::shared_ptr<const PendingBlock>;

  explicit KvTiers(KvBlockSpace& t0) : t0_(t0) {}
  std::vector<memory::BlockKey> chain_keys(std::span<const int32_t> tokens,
                                           const memory::BlockKey& salt) const;
  bool is_pinned(const memory::BlockKey& key) const;
  // T0 block `block`'s bytes: in place, or read into `scratch`; empty when the read failed.
  std::span<const std::byte> t0_block(int block, std::vector<std::byte>& scratch);
  void on_host_evict(std::span<const memory::KvSpillBlock> evicted);
  void stage(std::span<const memory::KvSpillBlock> blocks);
  void submit_locked();
  // Storage thread jobs.
  // Writes `batch` (and, once the back-off is over, the pinned blocks kept through it).
  void write_job(const std::vector<PendingPtr>& batch);
  bool is_current_locked(const PendingPtr& p) const;  // still the block pending_ holds for its key
  // Takes current `blocks` out of pending_ after their write, except pinned ones it could not write,
  // which go to retry_ (bounded by pinned_retry_bytes).
  void settle_locked(std::span<const PendingPtr> blocks, bool written);
  void prefetch_job(const std::vector<memory::BlockKey>& keys, const std::vector<int32_t>& tokens);
  void discard_job(const std::vector<memory::BlockKey>& keys);
  Result<int> persist_job(const std::vector<memory::BlockKey>& keys, const std::vector<PendingPtr>& copies);
  void maybe_reclaim();
  // Writes the blocks T2 lacks as one batch; counts what it wrote or why it could not.
  Status write_disk(std::span<const memory::KvSpillBlock> blocks);
  void note_disk_write(const Status& status, size_t n_blocks);

  KvBlockSpace& t0_;
  KvTierOptions options_;
  std::vector<std::byte> spill_scratch_;            // one block read from a T0 outside host memory
  std::unique_ptr<memory::RocksDbStore> owned_db_;  // when the tiers opened data_dir themselves
  std::unique_ptr<memory::KvStore> disk_;           // declared after db_: closed before it
  std::unique_ptr<memory::HostKvTier> host_;

  // Guards the staging queue, the counters and the stall state. Never held while calling into T1 (whose
  // evict callback takes it); T2 and the pins are called under it only for queries that take leaf locks.
  mutable std::mutex mu_;
  std::unordered_map<memory::BlockKey, PendingPtr> pending_;  // staged or queued for T2
  std::vector<PendingPtr> staged_;
  KvTierCounters counters_;
  bool stalled_ = false;
  std::chrono::steady_clock::time_point retry_at_;
  std::chrono::steady_clock::time_point last_warn_;
  int64_t refused_since_warn_ = 0;
  std::vector<PendingPtr> retry_;  // pinned blocks T2 refused or the back-off held, oldest first
  size_t retry_bytes_ = 0;
  bool retry_posted_ = false;  // a write job for retry_ is queued
  std::chrono::steady_clock::time_point last_lost_warn_;

  mutable std::mutex pins_mu_;  // leaf lock: T1 and T2 call is_pinned under their own locks
  std::unordered_map<std::string, std::vector<memory::BlockKey>> pins_;
  std::unordered_map<memory::BlockKey, int> pinned_;

  std::unique_ptr<StorageThread> storage_;  // declared last: drained and joined first
};

}  // namespace agentserve::engine
