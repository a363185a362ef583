// KvLayout: where each layer's K and V sit inside one KV block. A block is one contiguous region so that it
// can be copied or spilled as a single value; for each layer l in order it holds
//   K[l] as [n_kv_heads][block_size][head_dim], then V[l] with the same shape,
// so K of layer l starts at l * layer_bytes() and V of layer l right after it. Blocks are placed at a
// stride rounded up to 64 bytes, so every block (and, for the usual shapes, every K and V) is 64-byte
// aligned. This module knows shapes and bytes only: no model types, no allocation.
#pragma once

#include <cstddef>
#include <cstdint>

#include "base/status.h"

namespace agentserve::memory {

// Element type of the stored K and V. Only f32 is implemented; the field exists so a block header and the
// size arithmetic already carry it when bf16 KV arrives.
enum class KvDtype : uint8_t { kF32 = 0 };

size_t kv_dtype_size(KvDtype dtype);

inline constexpr size_t kKvBlockAlign = 64;

struct KvLayout {
  int n_layers = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int block_size = 16;  // tokens per block
  KvDtype dtype = KvDtype::kF32;

  // All fields positive, and one block no larger than 1 TiB (which also keeps every size below in range).
  Status validate() const;

  size_t element_size() const { return kv_dtype_size(dtype); }
  // Elements of one K (or one V) of one layer in one block.
  size_t tensor_elems() const {
    return static_cast<size_t>(n_kv_heads) * static_cast<size_t>(block_size) * static_cast<size_t>(head_dim);
  }
  size_t tensor_bytes() const { return tensor_elems() * element_size(); }
  size_t layer_bytes() const { return 2 * tensor_bytes(); }
  // Bytes of KV in one block (what a spilled block stores).
  size_t block_bytes() const { return static_cast<size_t>(n_layers) * layer_bytes(); }
  // Distance between consecutive blocks in an arena: block_bytes() rounded up to kKvBlockAlign.
  size_t block_stride() const { return (block_bytes() + kKvBlockAlign - 1) / kKvBlockAlign * kKvBlockAlign; }

  size_t k_offset(int layer) const { return static_cast<size_t>(layer) * layer_bytes(); }
  size_t v_offset(int layer) const { return k_offset(layer) + tensor_bytes(); }
  // Element index of (kv_head, slot, 0) inside one K or V tensor.
  size_t row_index(int kv_head, int slot) const {
    return (static_cast<size_t>(kv_head) * static_cast<size_t>(block_size) + static_cast<size_t>(slot)) *
           static_cast<size_t>(head_dim);
  }

  // How many blocks fit in `budget_bytes` at block_stride(); capped at INT32_MAX because block ids are int.
  // An invalid layout fits none.
  int blocks_that_fit(size_t budget_bytes) const;
};

}  // namespace agentserve::memory
