// The device KV pool as the CUDA kernels see it, and the write of a step's K/V into it. The pool is one
// array of bf16 blocks laid out like memory::KvLayout (so a block spills and restores as one value): block
// b starts at b * block_stride elements and holds, for each layer in order, K as
// [n_kv_heads][block_size][head_dim] and then V with the same shape. This header must compile with g++
// (host launchers only); it never allocates and never reads device memory from the host.
//
//   kv_write: for token t with slot s = slot_mapping[t] (block id * block_size + offset; s < 0 skips the
//   token, e.g. padding), K[layer][h][offset][:] = bf16(k[t, h, :]) and likewise V, rounded to nearest even.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "base/bf16.h"
#include "base/status.h"

// Lets nvcc call the small inline helpers below from device code; g++ sees plain inline functions.
#ifndef AGENTSERVE_HOST_DEVICE
#if defined(__CUDACC__)
#define AGENTSERVE_HOST_DEVICE __host__ __device__
#else
#define AGENTSERVE_HOST_DEVICE
#endif
#endif

namespace agentserve::kernels::cuda {

struct KvPoolGeometry {
  int n_layers = 0;
  int n_kv_heads = 0;
  int block_size = 16;  // tokens per block
  int head_dim = 0;
  int n_blocks = 0;         // blocks in the pool; ids outside [0, n_blocks) are never read or written
  size_t block_stride = 0;  // elements between consecutive blocks; >= block_elems()

  AGENTSERVE_HOST_DEVICE size_t tensor_elems() const {
    return static_cast<size_t>(n_kv_heads) * static_cast<size_t>(block_size) * static_cast<size_t>(head_dim);
  }
  AGENTSERVE_HOST_DEVICE size_t block_elems() const {
    return static_cast<size_t>(n_layers) * 2 * tensor_elems();
  }
  // Element offsets inside a block of layer l's K and V.
  AGENTSERVE_HOST_DEVICE size_t k_offset(int layer) const {
    return static_cast<size_t>(layer) * 2 * tensor_elems();
  }
  AGENTSERVE_HOST_DEVICE size_t v_offset(int layer) const { return k_offset(layer) + tensor_elems(); }

  // A packed pool (block_stride = block_elems()).
  static KvPoolGeometry packed(int n_layers, int n_kv_heads, int block_size, int head_dim, int n_blocks) {
    KvPoolGeometry g{n_layers, n_kv_heads, block_size, head_dim, n_blocks, 0};
    g.block_stride = g.block_elems();
    return g;
  }

  // All sizes positive, head_dim even and <= 256 (what the attention kernels support), stride large enough.
  Status validate() const;
};

// k, v: [n_tokens][n_kv_heads][head_dim] f32 on the device, rows token_stride floats apart (>= n_kv_heads *
// head_dim, so K and V may sit inside a fused qkv row). slot_mapping: n_tokens int32 on the device; slots
// whose block is outside the pool are skipped. 0 <= layer < n_layers. n_tokens 0 is a no-op.
Status kv_write(bf16* pool, const KvPoolGeometry& geo, int layer, const float* k, const float* v,
                size_t token_stride, const int32_t* slot_mapping, int n_tokens, cudaStream_t stream);

}  // namespace agentserve::kernels::cuda
