// HostKvTier: the T1 tier, KV blocks kept in host RAM between the device tier (T0) and the disk (T2).
// It holds a fixed number of block slots in one KvArena sized from a byte budget at startup, so a put
// allocates no KV memory. Blocks are found by key; a hit also compares the token ids, so a key collision
// can never hand out another block's KV. When a put needs slots, the least recently used blocks leave:
// the evict callback sees all of them at once, with their bytes still intact, so it can write them to T2
// as one batch. This module copies bytes; it never talks to disk or to a device itself.
//
// Pinning: with a keep predicate, eviction takes unpinned blocks first (LRU among them) and pinned ones
// only when the unpinned ones cannot make room; those are counted as pinned_evictions.
//
// Contracts: the callback (and the keep predicate) runs under the tier's lock and must not call back into the
// tier; its views are valid only during the call. Thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <span>
#include <unordered_map>
#include <vector>

#include "base/status.h"
#include "memory/block_key.h"
#include "memory/kv_arena.h"
#include "memory/kv_store.h"

namespace agentserve::memory {

struct HostKvTierCounters {
  int64_t hits = 0;
  int64_t misses = 0;
  int64_t evictions = 0;
  int64_t pinned_evictions = 0;  // evicted although the keep predicate held them (no unpinned room left)
};

class HostKvTier {
 public:
  using EvictCallback = std::function<void(std::span<const KvSpillBlock> evicted)>;
  using KeepPredicate = std::function<bool(const BlockKey&)>;

  // As many slots as fit in budget_bytes at the layout's block stride; InvalidArgument when none fits.
  static Result<std::unique_ptr<HostKvTier>> create(const KvLayout& layout, size_t budget_bytes,
                                                    EvictCallback on_evict = {}, KeepPredicate keep = {});

  // Copies the blocks in (a key already held is overwritten), evicting LRU blocks not in the batch first.
  // ResourceExhausted (nothing changed) when the batch has more distinct keys than the tier has slots;
  // InvalidArgument for a payload that is not one block or a token count outside 1..block_size.
  Status put_batch(std::span<const KvSpillBlock> blocks);

  // Copies the block into `out` and marks it used. NotFound on a miss; FailedPrecondition when the key is
  // held for other token ids (a collision); InvalidArgument when `out` is not one block.
  Status get(const BlockKey& key, std::span<const int32_t> tokens, std::span<std::byte> out);

  bool contains(const BlockKey& key) const;
  void erase(const BlockKey& key);

  // Calls fn for every block held, least recently used first, under the tier's lock (fn must not call
  // back into the tier; its views are valid only during the call).
  void for_each(const std::function<void(const KvSpillBlock&)>& fn) const;

  int capacity_blocks() const { return arena_.num_blocks(); }
  int num_blocks() const;
  size_t bytes_used() const { return static_cast<size_t>(num_blocks()) * arena_.layout().block_stride(); }
  HostKvTierCounters counters() const;

 private:
  struct Slot {
    BlockKey key;
    int n_tokens = 0;
    std::list<int>::iterator lru_pos;  // lru_ front = least recently used
  };

  HostKvTier(KvArena arena, EvictCallback on_evict, KeepPredicate keep);
  std::span<int32_t> tokens_of(int slot);
  std::span<const int32_t> tokens_of(int slot) const;
  void release_locked(int slot);

  KvArena arena_;
  EvictCallback on_evict_;
  KeepPredicate keep_;
  mutable std::mutex mu_;
  std::vector<Slot> slots_;
  std::vector<int32_t> tokens_;  // block_size ids per slot
  std::vector<int> free_;
  std::list<int> lru_;
  std::unordered_map<BlockKey, int> index_;
  HostKvTierCounters counters_;
};

}  // namespace agentserve::memory
