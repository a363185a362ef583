#include "kernels/cuda/kv_cache.h"

#include <string>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_helpers.cuh"

namespace agentserve::kernels::cuda {

Status KvPoolGeometry::validate() const {
  if (n_layers <= 0 || n_kv_heads <= 0 || block_size <= 0 || head_dim <= 0 || n_blocks < 0) {
    return Status::invalid_argument("kv pool: sizes must be positive");
  }
  if (head_dim % 2 != 0 || head_dim > 256) {
    return Status::invalid_argument("kv pool: head_dim must be even and at most 256, got " +
                                    std::to_string(head_dim));
  }
  if (block_stride < block_elems()) return Status::invalid_argument("kv pool: block_stride below one block");
  return Status::ok_status();
}

namespace {

// One thread per (token, kv head, element); K and V written by the same thread.
__global__ void kv_write_kernel(uint16_t* pool, KvPoolGeometry geo, int layer, const float* k, const float* v,
                                size_t token_stride, const int32_t* slot_mapping, int n_tokens) {
  const size_t row_elems = static_cast<size_t>(geo.n_kv_heads) * geo.head_dim;
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= row_elems * static_cast<size_t>(n_tokens)) return;
  const int token = static_cast<int>(i / row_elems);
  const size_t within = i % row_elems;  // h * head_dim + d
  const int slot = slot_mapping[token];
  if (slot < 0) return;
  const int block = slot / geo.block_size;
  const int offset = slot % geo.block_size;
  if (block >= geo.n_blocks) return;
  const int h = static_cast<int>(within / geo.head_dim);
  const int d = static_cast<int>(within % geo.head_dim);
  const size_t row = (static_cast<size_t>(h) * geo.block_size + offset) * geo.head_dim + d;
  uint16_t* base = pool + static_cast<size_t>(block) * geo.block_stride;
  const size_t src = static_cast<size_t>(token) * token_stride + within;
  base[geo.k_offset(layer) + row] = float_to_bf16_bits(k[src]);
  base[geo.v_offset(layer) + row] = float_to_bf16_bits(v[src]);
}

}  // namespace

Status kv_write(bf16* pool, const KvPoolGeometry& geo, int layer, const float* k, const float* v,
                size_t token_stride, const int32_t* slot_mapping, int n_tokens, cudaStream_t stream) {
  AS_RETURN_IF_ERROR(geo.validate());
  if (layer < 0 || layer >= geo.n_layers) return Status::invalid_argument("kv_write: layer out of range");
  if (n_tokens < 0) return Status::invalid_argument("kv_write: negative token count");
  if (token_stride < static_cast<size_t>(geo.n_kv_heads) * geo.head_dim) {
    return Status::invalid_argument("kv_write: token_stride below one row of K");
  }
  if (n_tokens == 0) return Status::ok_status();
  if (pool == nullptr || k == nullptr || v == nullptr || slot_mapping == nullptr) {
    return Status::invalid_argument("kv_write: null pointer");
  }
  const size_t total = static_cast<size_t>(n_tokens) * geo.n_kv_heads * geo.head_dim;
  constexpr int kThreads = 256;
  const size_t blocks = (total + kThreads - 1) / kThreads;
  if (blocks > 0x7fffffffu) return Status::invalid_argument("kv_write: too many tokens for one launch");
  kv_write_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      reinterpret_cast<uint16_t*>(pool), geo, layer, k, v, token_stride, slot_mapping, n_tokens);
  return launch_status("kv_write");
}

}  // namespace agentserve::kernels::cuda
