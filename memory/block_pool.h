// BlockPool: ownership and prefix-cache bookkeeping for KV block ids 0..n-1 (the bytes live elsewhere, in a
// KvArena or on a GPU). Each block has a ref count and, once it is full and computed, a key and its token
// ids. A block whose ref count drops to 0 keeps key and bytes: it stays findable by lookup() until it is
// reused. That is the prefix cache.
//
// Free blocks (ref 0) sit in one intrusive doubly linked list, reused from the front:
//   [keyless blocks ... | keyed blocks, least recently freed first ... most recently freed]
// Keyless blocks (never filled, or a duplicate, see commit()) hold nothing worth keeping and go to the
// front; keyed blocks go to the back. acquire() of a cached free block unlinks it in O(1). allocate() takes
// the front block; if it still has a key, the key leaves the index and the evict callback sees it first.
//
// Contracts: queries (lookup, can_allocate, counters) never change anything; the pool never reads or writes
// KV bytes; it is not thread-safe (the engine thread owns it). Calls that break a documented precondition
// are programming errors (asserted), not input errors.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

#include "base/status.h"
#include "memory/block_key.h"

namespace agentserve::memory {

class BlockPool {
 public:
  // Called when allocate() reuses a cached block, before the new owner can write it, so the block's bytes
  // are still intact: the spill tier copies them out here. Must not call back into the pool.
  using EvictCallback = std::function<void(int block_id, const BlockKey& key)>;

  BlockPool(int num_blocks, int block_size, EvictCallback on_evict = {});

  int num_blocks() const { return static_cast<int>(blocks_.size()); }
  int block_size() const { return block_size_; }
  int num_free() const { return num_free_; }                          // ref 0, keyed or not
  int num_cached() const { return static_cast<int>(index_.size()); }  // keyed, in use or free
  int64_t evictions() const { return evictions_; }

  // The block holding `key` whose token ids equal `tokens`, or -1. A key match alone is not a hit, so a
  // 128-bit collision between two blocks' contents can never hand out the wrong KV.
  int lookup(const BlockKey& key, std::span<const int32_t> tokens) const;

  bool can_allocate(int n) const { return n <= num_free_; }
  // Takes the front free block (evicting its key if it has one) and returns it with ref 1; -1 when none is
  // free (callers check can_allocate first).
  int allocate();
  // ref++ on a block found by lookup(); a free one leaves the free list.
  void acquire(int block);
  // ref--; at 0 the block joins the free list (keyed: back, keyless: front).
  void release(int block);

  // Publishes a full, computed, in-use block under `key` with its block_size() token ids. Returns false and
  // leaves the block keyless when `key` is already indexed: that happens when two sequences computed the
  // same block at once. The first block stays in the index (others may share it already); the second
  // stays valid for the sequences holding it and, once freed, is reused first like any keyless block.
  bool commit(int block, const BlockKey& key, std::span<const int32_t> tokens);

  int ref_count(int block) const { return blocks_[block].ref_count; }
  bool is_free(int block) const { return blocks_[block].ref_count == 0; }
  std::optional<BlockKey> key(int block) const;

  // Free list well formed (links, count, ref 0 exactly on the list, keyless before keyed), index and block
  // keys agree. Returns the first violation found. O(n).
  Status check_integrity() const;

 private:
  struct Block {
    int ref_count = 0;
    int prev = -1;  // free-list links; the sentinel is index num_blocks()
    int next = -1;
    bool has_key = false;
    BlockKey key;
  };

  std::span<const int32_t> tokens_of(int block) const;
  void link_before(int block, int next);
  void unlink(int block);
  int& prev_of(int node) { return node == sentinel() ? head_.prev : blocks_[node].prev; }
  int& next_of(int node) { return node == sentinel() ? head_.next : blocks_[node].next; }
  int sentinel() const { return num_blocks(); }

  int block_size_;
  std::vector<Block> blocks_;
  std::vector<int32_t> tokens_;  // block_size_ ids per block, meaningful while the block has a key
  Block head_;                   // sentinel links: next = front of the free list, prev = back
  int num_free_ = 0;
  std::unordered_map<BlockKey, int> index_;
  int64_t evictions_ = 0;
  EvictCallback on_evict_;
};

}  // namespace agentserve::memory
