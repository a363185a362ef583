#include "kernels/cuda/paged_attention.h"

#include <cmath>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_helpers.cuh"

namespace agentserve::kernels::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxDecodePartitions = 8192;  // 4M tokens; keeps the merge's shared memory at 32 KiB
constexpr int kQueryTile = 16;              // queries per prefill block: kWarps warps x kRowsPerWarp rows
constexpr int kRowsPerWarp = kQueryTile / kWarps;
constexpr int kKvTile = 32;  // context tokens per shared-memory tile in prefill (one per lane)
constexpr float kNegInf = -INFINITY;

// A chunk of the batch, read from its arrays. Query i of the chunk sees n_ctx_first + i context tokens.
struct AttentionChunk {
  int q_begin;
  int n_queries;
  int n_ctx_first;
  int table_begin;
  int n_table_blocks;
};

__device__ __forceinline__ AttentionChunk load_chunk(const PagedBatch& b, int c) {
  AttentionChunk ch;
  ch.q_begin = b.query_start[c];
  ch.n_queries = b.query_start[c + 1] - ch.q_begin;
  ch.n_ctx_first = b.context_len[c] - ch.n_queries + 1;
  ch.table_begin = b.block_table_start[c];
  ch.n_table_blocks = b.block_table_start[c + 1] - ch.table_begin;
  return ch;
}

// K (or V) row of context token `token` of a chunk for one kv head, or null when the table does not cover
// it or names a block outside the pool (read as zeros: a caller bug never becomes an out-of-bounds read).
__device__ __forceinline__ const uint16_t* kv_row(const uint16_t* pool, const KvPoolGeometry& geo, int layer,
                                                  bool value, const int32_t* tables, const AttentionChunk& ch,
                                                  int token, int kv_head) {
  const int table_index = token / geo.block_size;
  if (table_index >= ch.n_table_blocks) return nullptr;
  const int block = tables[ch.table_begin + table_index];
  if (block < 0 || block >= geo.n_blocks) return nullptr;
  const int offset = token % geo.block_size;
  return pool + static_cast<size_t>(block) * geo.block_stride +
         (value ? geo.v_offset(layer) : geo.k_offset(layer)) +
         (static_cast<size_t>(kv_head) * geo.block_size + offset) * geo.head_dim;
}

struct DecodeWorkspace {
  float* max;  // [n_chunks][n_heads][max_parts]
  float* sum;  // same
  float* acc;  // [n_chunks][n_heads][max_parts][head_dim], unnormalised
};

int partitions_for(int max_context) {
  return (max_context + kDecodePartition - 1) / kDecodePartition;
}

// Block (partition, kv head g, chunk). A lane owns dims d = lane + 32 i (i < kDimsPerLane), so head_dim up to
// 32 * kDimsPerLane. Shared memory: q of the group [group][D], scores [group][kDecodePartition], and one
// accumulator per warp [kWarps][group][D].
template <int kDimsPerLane>
__global__ void __launch_bounds__(kThreads)
    decode_partial_kernel(const float* q, const uint16_t* pool, KvPoolGeometry geo, int layer,
                          AttentionShape shape, PagedBatch batch, int max_parts, DecodeWorkspace ws) {
  extern __shared__ float smem[];
  const int part = blockIdx.x;
  const int g = blockIdx.y;
  const int c = blockIdx.z;
  const AttentionChunk ch = load_chunk(batch, c);
  const int32_t* tables = batch.block_tables;
  const int ctx = min(ch.n_ctx_first, max_parts * kDecodePartition);
  const int begin = part * kDecodePartition;
  // The whole block leaves together: not a decode chunk, or a partition past the chunk's context.
  if (ch.n_queries != 1 || begin >= ctx) return;
  const int n = min(kDecodePartition, ctx - begin);
  const int D = geo.head_dim;
  const int group = shape.n_heads / shape.n_kv_heads;
  float* q_s = smem;
  float* scores = q_s + group * D;
  float* red = scores + group * kDecodePartition;
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;

  for (int i = threadIdx.x; i < group * D; i += kThreads) {
    const int h = i / D;
    q_s[i] = q[(static_cast<size_t>(ch.q_begin) * shape.n_heads + g * group + h) * D + i % D];
  }
  for (int i = threadIdx.x; i < kWarps * group * D; i += kThreads) red[i] = 0.0f;
  __syncthreads();

  // Scores: a warp per token, the K row loaded once for every query head of the group.
  for (int j = warp; j < n; j += kWarps) {
    const uint16_t* k_row = kv_row(pool, geo, layer, false, tables, ch, begin + j, g);
    float k[kDimsPerLane];
#pragma unroll
    for (int i = 0; i < kDimsPerLane; ++i) {
      const int d = lane + 32 * i;
      k[i] = (k_row != nullptr && d < D) ? bf16_bits_to_float(k_row[d]) : 0.0f;
    }
    for (int h = 0; h < group; ++h) {
      float dot = 0.0f;
#pragma unroll
      for (int i = 0; i < kDimsPerLane; ++i) {
        const int d = lane + 32 * i;
        if (d < D) dot += q_s[h * D + d] * k[i];
      }
      dot = warp_sum(dot);
      if (lane == 0) scores[h * kDecodePartition + j] = dot * shape.scale;
    }
  }
  __syncthreads();

  // Partition max and sum per head (a warp per head); the scores become exp(s - max).
  for (int h = warp; h < group; h += kWarps) {
    float* s = scores + h * kDecodePartition;
    float m = kNegInf;
    for (int j = lane; j < n; j += 32) m = fmaxf(m, s[j]);
    m = warp_max(m);
    float l = 0.0f;
    for (int j = lane; j < n; j += 32) {
      const float e = expf(s[j] - m);
      s[j] = e;
      l += e;
    }
    l = warp_sum(l);
    if (lane == 0) {
      const size_t at = (static_cast<size_t>(c) * shape.n_heads + g * group + h) * max_parts + part;
      ws.max[at] = m;
      ws.sum[at] = l;
    }
  }
  __syncthreads();

  // Unnormalised accumulator: warps split the tokens; each V row is loaded once and added, weighted, into
  // the warp's own [group][D] rows of `red` (a lane owns its dims, so no two lanes touch one value).
  float* mine = red + static_cast<size_t>(warp) * group * D;
  for (int j = warp; j < n; j += kWarps) {
    const uint16_t* v_row = kv_row(pool, geo, layer, true, tables, ch, begin + j, g);
    if (v_row == nullptr) continue;
    float v[kDimsPerLane];
#pragma unroll
    for (int i = 0; i < kDimsPerLane; ++i) {
      const int d = lane + 32 * i;
      v[i] = d < D ? bf16_bits_to_float(v_row[d]) : 0.0f;
    }
    for (int h = 0; h < group; ++h) {
      const float p = scores[h * kDecodePartition + j];
#pragma unroll
      for (int i = 0; i < kDimsPerLane; ++i) {
        const int d = lane + 32 * i;
        if (d < D) mine[h * D + d] += p * v[i];
      }
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < group * D; idx += kThreads) {
    float total = 0.0f;
    for (int w = 0; w < kWarps; ++w) total += red[static_cast<size_t>(w) * group * D + idx];
    const int h = idx / D;
    const size_t at = (static_cast<size_t>(c) * shape.n_heads + g * group + h) * max_parts + part;
    ws.acc[at * D + idx % D] = total;
  }
}

// Block (query head, chunk): merges the chunk's partitions. Shared memory: one weight per partition.
__global__ void __launch_bounds__(kThreads)
    decode_merge_kernel(float* out, PagedBatch batch, int n_heads, int D, int max_parts, DecodeWorkspace ws) {
  extern __shared__ float weight_s[];
  const int h = blockIdx.x;
  const int c = blockIdx.y;
  const AttentionChunk ch = load_chunk(batch, c);
  if (ch.n_queries != 1) return;
  float* o = out + (static_cast<size_t>(ch.q_begin) * n_heads + h) * D;
  const int ctx = min(ch.n_ctx_first, max_parts * kDecodePartition);
  if (ctx <= 0) {
    for (int d = threadIdx.x; d < D; d += kThreads) o[d] = 0.0f;
    return;
  }
  const int n_parts = (ctx + kDecodePartition - 1) / kDecodePartition;
  const size_t base = (static_cast<size_t>(c) * n_heads + h) * max_parts;
  float m = kNegInf;
  for (int p = 0; p < n_parts; ++p) m = fmaxf(m, ws.max[base + p]);
  for (int p = threadIdx.x; p < n_parts; p += kThreads) weight_s[p] = expf(ws.max[base + p] - m);
  __syncthreads();
  float total = 0.0f;
  for (int p = 0; p < n_parts; ++p) total += weight_s[p] * ws.sum[base + p];
  const float inv_total = 1.0f / total;
  for (int d = threadIdx.x; d < D; d += kThreads) {
    float a = 0.0f;
    for (int p = 0; p < n_parts; ++p) a += weight_s[p] * ws.acc[(base + p) * D + d];
    o[d] = a * inv_total;
  }
}

// Block (query tile, query head h, chunk). Warp w owns queries tile0 + w * kRowsPerWarp + r; their q, running
// max m, sum l and accumulator stay in registers. Shared memory: K and V tiles [kKvTile][D] as f32.
template <int kDimsPerLane>
__global__ void __launch_bounds__(kThreads)
    prefill_kernel(float* out, const float* q, const uint16_t* pool, KvPoolGeometry geo, int layer,
                   AttentionShape shape, PagedBatch batch) {
  extern __shared__ float smem[];
  const AttentionChunk ch = load_chunk(batch, blockIdx.z);
  const int32_t* tables = batch.block_tables;
  const int h = blockIdx.y;
  const int tile0 = blockIdx.x * kQueryTile;
  if (tile0 >= ch.n_queries) return;  // the whole block leaves
  const int D = geo.head_dim;
  const int g = h / (shape.n_heads / shape.n_kv_heads);
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int last_query = min(min(tile0 + kQueryTile, ch.n_queries), batch.max_query_len) - 1;
  const int max_limit = ch.n_ctx_first + last_query;
  float* k_s = smem;
  float* v_s = smem + kKvTile * D;

  float qr[kRowsPerWarp][kDimsPerLane];
  float acc[kRowsPerWarp][kDimsPerLane];
  float m[kRowsPerWarp];
  float l[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int qi = tile0 + warp * kRowsPerWarp + r;
    m[r] = kNegInf;
    l[r] = 0.0f;
#pragma unroll
    for (int i = 0; i < kDimsPerLane; ++i) {
      const int d = lane + 32 * i;
      acc[r][i] = 0.0f;
      qr[r][i] = (qi <= last_query && d < D)
                     ? q[(static_cast<size_t>(ch.q_begin + qi) * shape.n_heads + h) * D + d]
                     : 0.0f;
    }
  }

  for (int t0 = 0; t0 < max_limit; t0 += kKvTile) {
    __syncthreads();  // the previous tile is no longer read
    for (int idx = threadIdx.x; idx < kKvTile * D; idx += kThreads) {
      const int token = t0 + idx / D;
      const int d = idx % D;
      float kv = 0.0f;
      float vv = 0.0f;
      if (token < max_limit) {
        const uint16_t* k_row = kv_row(pool, geo, layer, false, tables, ch, token, g);
        const uint16_t* v_row = kv_row(pool, geo, layer, true, tables, ch, token, g);
        if (k_row != nullptr) kv = bf16_bits_to_float(k_row[d]);
        if (v_row != nullptr) vv = bf16_bits_to_float(v_row[d]);
      }
      k_s[idx] = kv;
      v_s[idx] = vv;
    }
    __syncthreads();

#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int qi = tile0 + warp * kRowsPerWarp + r;
      const int limit = ch.n_ctx_first + qi;
      if (qi > last_query || t0 >= limit) continue;  // uniform across the warp
      const int n_valid = min(kKvTile, limit - t0);
      float my_score = kNegInf;  // lane j holds token t0 + j's score
      for (int j = 0; j < n_valid; ++j) {
        float dot = 0.0f;
#pragma unroll
        for (int i = 0; i < kDimsPerLane; ++i) {
          const int d = lane + 32 * i;
          if (d < D) dot += qr[r][i] * k_s[j * D + d];
        }
        dot = warp_sum(dot);
        if (lane == j) my_score = dot * shape.scale;
      }
      const float m_new = fmaxf(m[r], warp_max(my_score));  // finite: n_valid >= 1
      const float correction = expf(m[r] - m_new);          // 0 on the first tile (m = -inf)
      const float e = lane < n_valid ? expf(my_score - m_new) : 0.0f;
      l[r] = l[r] * correction + warp_sum(e);
#pragma unroll
      for (int i = 0; i < kDimsPerLane; ++i) acc[r][i] *= correction;
      for (int j = 0; j < n_valid; ++j) {
        const float p = __shfl_sync(0xffffffffu, e, j);
#pragma unroll
        for (int i = 0; i < kDimsPerLane; ++i) {
          const int d = lane + 32 * i;
          if (d < D) acc[r][i] += p * v_s[j * D + d];
        }
      }
      m[r] = m_new;
    }
  }

#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int qi = tile0 + warp * kRowsPerWarp + r;
    if (qi > last_query) continue;
    float* o = out + (static_cast<size_t>(ch.q_begin + qi) * shape.n_heads + h) * D;
    const float inv_l = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;  // a query that saw no context (n_ctx_first 0)
#pragma unroll
    for (int i = 0; i < kDimsPerLane; ++i) {
      const int d = lane + 32 * i;
      if (d < D) o[d] = acc[r][i] * inv_l;
    }
  }
}

// Kernels wanting more than the default 48 KiB of dynamic shared memory must opt in first.
template <typename Kernel>
Status allow_shared_memory(Kernel kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return Status::ok_status();
  const cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // reported here; the next launcher's check must not report it again
    return Status::internal(std::string("paged attention: shared memory: ") + cudaGetErrorString(err));
  }
  return Status::ok_status();
}

Status check_common(float* out, const float* q, const bf16* pool, const KvPoolGeometry& geo, int layer,
                    const AttentionShape& shape, const PagedBatch& batch) {
  AS_RETURN_IF_ERROR(geo.validate());
  if (layer < 0 || layer >= geo.n_layers)
    return Status::invalid_argument("paged attention: layer out of range");
  if (shape.n_kv_heads != geo.n_kv_heads || shape.n_heads < 1 || shape.n_heads % shape.n_kv_heads != 0 ||
      shape.n_heads / shape.n_kv_heads > kMaxGroup) {
    return Status::invalid_argument(
        "paged attention: n_heads must be a multiple (at most 16x) of the pool's kv heads");
  }
  if (!std::isfinite(shape.scale)) return Status::invalid_argument("paged attention: scale must be finite");
  if (batch.n_chunks < 0 || batch.n_chunks > 65535) {
    return Status::invalid_argument("paged attention: n_chunks outside [0, 65535]");
  }
  if (batch.n_chunks > 0 &&
      (out == nullptr || q == nullptr || pool == nullptr || batch.query_start == nullptr ||
       batch.context_len == nullptr || batch.block_table_start == nullptr || batch.block_tables == nullptr)) {
    return Status::invalid_argument("paged attention: null pointer");
  }
  return Status::ok_status();
}

}  // namespace

size_t paged_attention_decode_workspace_bytes(int n_chunks, int n_heads, int head_dim, int max_context) {
  if (n_chunks <= 0 || n_heads <= 0 || head_dim <= 0 || max_context <= 0) return 0;
  return static_cast<size_t>(n_chunks) * n_heads * partitions_for(max_context) *
         (2 + static_cast<size_t>(head_dim)) * sizeof(float);
}

Status paged_attention_decode(float* out, const float* q, const bf16* pool, const KvPoolGeometry& geo,
                              int layer, const AttentionShape& shape, const PagedBatch& batch,
                              void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  AS_RETURN_IF_ERROR(check_common(out, q, pool, geo, layer, shape, batch));
  const int n_chunks = batch.n_chunks;
  const int max_context = batch.max_context_len;
  if (n_chunks == 0) return Status::ok_status();
  if (batch.max_query_len != 1)
    return Status::invalid_argument("paged_attention_decode: max_query_len must be 1");
  if (max_context < 1 || partitions_for(max_context) > kMaxDecodePartitions) {
    return Status::invalid_argument("paged_attention_decode: max_context_len outside [1, 4M]");
  }
  const size_t per_chunk =
      paged_attention_decode_workspace_bytes(1, shape.n_heads, geo.head_dim, max_context);
  if (workspace == nullptr || workspace_bytes < per_chunk) {
    return Status::invalid_argument("paged_attention_decode: workspace smaller than " +
                                    std::to_string(per_chunk) + " bytes (one chunk's partials)");
  }
  const size_t fits = workspace_bytes / per_chunk;
  const int chunks_per_pass = fits < static_cast<size_t>(n_chunks) ? static_cast<int>(fits) : n_chunks;
  const int max_parts = partitions_for(max_context);
  const int group = shape.n_heads / shape.n_kv_heads;
  const int D = geo.head_dim;
  const size_t smem =
      static_cast<size_t>(group) * (static_cast<size_t>(D) * (1 + kWarps) + kDecodePartition) * sizeof(float);
  const auto* pool_bits = reinterpret_cast<const uint16_t*>(pool);
  if (D <= 64) {
    AS_RETURN_IF_ERROR(allow_shared_memory(decode_partial_kernel<2>, smem));
  } else if (D <= 128) {
    AS_RETURN_IF_ERROR(allow_shared_memory(decode_partial_kernel<4>, smem));
  } else {
    AS_RETURN_IF_ERROR(allow_shared_memory(decode_partial_kernel<8>, smem));
  }
  // A pass is the chunks [first, first + count) as a batch of their own: the chunk arrays start at `first`
  // and keep their absolute values (query rows of q/out, entries of block_tables), so only the workspace
  // indices, which the kernels take from the chunk's place in the pass, restart at 0.
  for (int first = 0; first < n_chunks; first += chunks_per_pass) {
    const int count = n_chunks - first < chunks_per_pass ? n_chunks - first : chunks_per_pass;
    PagedBatch pass = batch;
    pass.n_chunks = count;
    pass.query_start = batch.query_start + first;
    pass.context_len = batch.context_len + first;
    pass.block_table_start = batch.block_table_start + first;
    const size_t per_stat = static_cast<size_t>(count) * shape.n_heads * max_parts;
    const DecodeWorkspace ws{static_cast<float*>(workspace), static_cast<float*>(workspace) + per_stat,
                             static_cast<float*>(workspace) + 2 * per_stat};
    const dim3 grid(max_parts, shape.n_kv_heads, count);
    if (D <= 64) {
      decode_partial_kernel<2>
          <<<grid, kThreads, smem, stream>>>(q, pool_bits, geo, layer, shape, pass, max_parts, ws);
    } else if (D <= 128) {
      decode_partial_kernel<4>
          <<<grid, kThreads, smem, stream>>>(q, pool_bits, geo, layer, shape, pass, max_parts, ws);
    } else {
      decode_partial_kernel<8>
          <<<grid, kThreads, smem, stream>>>(q, pool_bits, geo, layer, shape, pass, max_parts, ws);
    }
    AS_RETURN_IF_ERROR(launch_status("paged_attention_decode (partitions)"));
    const dim3 merge_grid(shape.n_heads, count);
    decode_merge_kernel<<<merge_grid, kThreads, max_parts * sizeof(float), stream>>>(out, pass, shape.n_heads,
                                                                                     D, max_parts, ws);
    AS_RETURN_IF_ERROR(launch_status("paged_attention_decode (merge)"));
  }
  return Status::ok_status();
}

Status paged_attention_prefill(float* out, const float* q, const bf16* pool, const KvPoolGeometry& geo,
                               int layer, const AttentionShape& shape, const PagedBatch& batch,
                               cudaStream_t stream) {
  AS_RETURN_IF_ERROR(check_common(out, q, pool, geo, layer, shape, batch));
  const int n_chunks = batch.n_chunks;
  const int max_queries = batch.max_query_len;
  if (n_chunks == 0) return Status::ok_status();
  if (max_queries < 1) return Status::invalid_argument("paged_attention_prefill: max_query_len must be >= 1");
  const int D = geo.head_dim;
  const size_t smem = 2 * static_cast<size_t>(kKvTile) * D * sizeof(float);
  const dim3 grid((max_queries + kQueryTile - 1) / kQueryTile, shape.n_heads, n_chunks);
  const auto* pool_bits = reinterpret_cast<const uint16_t*>(pool);
  if (D <= 64) {
    AS_RETURN_IF_ERROR(allow_shared_memory(prefill_kernel<2>, smem));
    prefill_kernel<2><<<grid, kThreads, smem, stream>>>(out, q, pool_bits, geo, layer, shape, batch);
  } else if (D <= 128) {
    AS_RETURN_IF_ERROR(allow_shared_memory(prefill_kernel<4>, smem));
    prefill_kernel<4><<<grid, kThreads, smem, stream>>>(out, q, pool_bits, geo, layer, shape, batch);
  } else {
    AS_RETURN_IF_ERROR(allow_shared_memory(prefill_kernel<8>, smem));
    prefill_kernel<8><<<grid, kThreads, smem, stream>>>(out, q, pool_bits, geo, layer, shape, batch);
  }
  return launch_status("paged_attention_prefill");
}

}  // namespace agentserve::kernels::cuda
