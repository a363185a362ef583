// KvArena: the host memory that holds num_blocks KV blocks laid out by a KvLayout (the CPU backend's T0
// tier). It owns one 64-byte aligned allocation, zeroed so that a slot nobody wrote reads as 0.0f and never
// as a NaN that a masked attention weight of 0 would still spread. It hands out pointers by (block, layer);
// which block belongs to whom is the BlockPool's business, never the arena's. Not thread-safe; move-only.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <memory>
#include <span>

#include "base/status.h"
#include "memory/kv_layout.h"

namespace agentserve::memory {

class KvArena {
 public:
  // Fails with InvalidArgument for a bad layout or a negative count, ResourceExhausted when the memory is
  // not there.
  static Result<KvArena> create(const KvLayout& layout, int num_blocks);

  const KvLayout& layout() const { return layout_; }
  int num_blocks() const { return num_blocks_; }
  size_t total_bytes() const { return static_cast<size_t>(num_blocks_) * layout_.block_stride(); }

  // K or V of `layer` in `block`: [n_kv_heads][block_size][head_dim] floats. Ids must be in range.
  float* k(int block, int layer) { return as_floats(block, layout_.k_offset(layer)); }
  float* v(int block, int layer) { return as_floats(block, layout_.v_offset(layer)); }
  const float* k(int block, int layer) const { return as_floats(block, layout_.k_offset(layer)); }
  const float* v(int block, int layer) const { return as_floats(block, layout_.v_offset(layer)); }

  // The block's layout_.block_bytes() bytes (without the alignment padding), e.g. to spill it.
  std::span<std::byte> block_bytes(int block) { return {block_base(block), layout_.block_bytes()}; }
  std::span<const std::byte> block_bytes(int block) const {
    return {block_base(block), layout_.block_bytes()};
  }

 private:
  struct FreeDeleter {
    void operator()(std::byte* p) const { std::free(p); }
  };

  KvArena(const KvLayout& layout, int num_blocks, std::byte* data)
      : layout_(layout), num_blocks_(num_blocks), data_(data) {}

  std::byte* block_base(int block) const;
  float* as_floats(int block, size_t offset) const {
    return reinterpret_cast<float*>(block_base(block) + offset);
  }

  KvLayout layout_;
  int num_blocks_ = 0;
  std::unique_ptr<std::byte[], FreeDeleter> data_;
};

}  // namespace agentserve::memory
