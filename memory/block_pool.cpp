#include "memory/block_pool.h"

#include <algorithm>
#include <cassert>
#include <string>

namespace agentserve::memory {

BlockPool::BlockPool(int num_blocks, int block_size, EvictCallback on_evict)
    : block_size_(block_size),
      blocks_(static_cast<size_t>(std::max(num_blocks, 0))),
      tokens_(blocks_.size() * static_cast<size_t>(std::max(block_size, 0))),
      on_evict_(std::move(on_evict)) {
  assert(num_blocks >= 0 && block_size > 0);
  head_.prev = head_.next = sentinel();
  for (int b = 0; b < this->num_blocks(); ++b) link_before(b, sentinel());
  num_free_ = this->num_blocks();
  // Sized up front so inserting a key never rehashes on the engine thread.
  index_.reserve(blocks_.size());
}

std::span<const int32_t> BlockPool::tokens_of(int block) const {
  return {tokens_.data() + static_cast<size_t>(block) * block_size_, static_cast<size_t>(block_size_)};
}

void BlockPool::link_before(int block, int next) {
  int prev = prev_of(next);
  blocks_[block].prev = prev;
  blocks_[block].next = next;
  next_of(prev) = block;
  prev_of(next) = block;
}

void BlockPool::unlink(int block) {
  Block& b = blocks_[block];
  next_of(b.prev) = b.next;
  prev_of(b.next) = b.prev;
  b.prev = b.next = -1;
}

int BlockPool::lookup(const BlockKey& key, std::span<const int32_t> tokens) const {
  auto it = index_.find(key);
  if (it == index_.end()) return -1;
  std::span<const int32_t> stored = tokens_of(it->second);
  if (!std::equal(stored.begin(), stored.end(), tokens.begin(), tokens.end())) return -1;
  return it->second;
}

int BlockPool::allocate() {
  if (num_free_ == 0) return -1;
  int block = head_.next;
  unlink(block);
  --num_free_;
  Block& b = blocks_[block];
  if (b.has_key) {
    index_.erase(b.key);
    b.has_key = false;
    ++evictions_;
    if (on_evict_) on_evict_(block, b.key);
  }
  b.ref_count = 1;
  return block;
}

void BlockPool::acquire(int block) {
  Block& b = blocks_[block];
  if (b.ref_count == 0) {
    unlink(block);
    --num_free_;
  }
  ++b.ref_count;
}

void BlockPool::release(int block) {
  Block& b = blocks_[block];
  assert(b.ref_count > 0);
  if (--b.ref_count > 0) return;
  link_before(block, b.has_key ? sentinel() : head_.next);
  ++num_free_;
}

bool BlockPool::commit(int block, const BlockKey& key, std::span<const int32_t> tokens) {
  Block& b = blocks_[block];
  assert(b.ref_count > 0 && !b.has_key && tokens.size() == static_cast<size_t>(block_size_));
  if (b.ref_count == 0 || b.has_key || tokens.size() != static_cast<size_t>(block_size_)) return false;
  if (!index_.try_emplace(key, block).second) return false;
  b.has_key = true;
  b.key = key;
  std::copy(tokens.begin(), tokens.end(), tokens_.begin() + static_cast<ptrdiff_t>(block) * block_size_);
  return true;
}

std::optional<BlockKey> BlockPool::key(int block) const {
  const Block& b = blocks_[block];
  return b.has_key ? std::optional<BlockKey>(b.key) : std::nullopt;
}

Status BlockPool::check_integrity() const {
  auto fail = [](std::string what) { return Status::internal("block pool: " + what); };
  int on_list = 0;
  bool seen_keyed = false;
  int prev = sentinel();
  for (int node = head_.next; node != sentinel(); prev = node, node = blocks_[node].next) {
    if (node < 0 || node >= num_blocks()) return fail("free list holds bad id " + std::to_string(node));
    if (++on_list > num_blocks()) return fail("free list has a cycle");
    const Block& b = blocks_[node];
    if (b.prev != prev) return fail("block " + std::to_string(node) + " has a wrong prev link");
    if (b.ref_count != 0) return fail("block " + std::to_string(node) + " is on the free list with a ref");
    if (seen_keyed && !b.has_key) return fail("keyless block " + std::to_string(node) + " after a keyed one");
    seen_keyed = seen_keyed || b.has_key;
  }
  if (head_.prev != prev) return fail("free list back link is wrong");
  if (on_list != num_free_)
    return fail("num_free " + std::to_string(num_free_) + " but list holds " + std::to_string(on_list));
  int zero_refs = 0;
  int keyed = 0;
  for (int id = 0; id < num_blocks(); ++id) {
    const Block& b = blocks_[id];
    if (b.ref_count < 0) return fail("block " + std::to_string(id) + " has a negative ref count");
    zero_refs += b.ref_count == 0;
    if (b.has_key) {
      ++keyed;
      auto it = index_.find(b.key);
      if (it == index_.end() || it->second != id) {
        return fail("block " + std::to_string(id) + " has a key the index does not map to it");
      }
    }
  }
  if (zero_refs != num_free_) return fail("blocks with ref 0 and the free list differ");
  if (keyed != num_cached()) return fail("index holds keys of blocks that lost them");
  return Status::ok_status();
}

}  // namespace agentserve::memory
