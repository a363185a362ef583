// Causal attention over the bf16 paged KV pool (kv_cache.h) for a batch of sequence chunks, with grouped-
// query heads, on the GPU. The math is kernels/cpu/paged_attention.h (paged_attention_ref is the oracle,
// fed the pool's K/V widened to f32): f32 queries and outputs, f32 accumulation, online softmax.
//
//   s[j] = scale * dot(q_h, K[g, j]),  j < limit,  g = h / (n_heads / n_kv_heads)
//   out_h = sum_j softmax(s)[j] * V[g, j]
//
// Two launchers; the caller (which built the batch on the host) picks one per batch:
// - decode: every chunk has one query (max_query_len 1). Split-K: the context is cut into partitions of
//   kDecodePartition tokens, one thread block per (partition, kv head, chunk) writes a partial (max, sum,
//   unnormalised accumulator) for every query head of its group into the workspace, and a second kernel
//   merges the partials. So a 128k context keeps the whole GPU busy even at batch 1; a batch larger than
//   the workspace runs in passes over groups of chunks.
// - prefill: chunks of any number of queries (prefill and chunked prefill over a cached prefix), tiled:
//   one thread block per (tile of 16 queries, query head, chunk) streams K/V in tiles of 32 tokens through
//   shared memory with a running max and sum per query.
// Every query's own K/V must already be in the pool (kv_write first).
// Host launchers only (g++ compiles this header); no allocation, no synchronisation.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "base/bf16.h"
#include "base/status.h"
#include "kernels/cuda/kv_cache.h"

namespace agentserve::kernels::cuda {

// A batch of sequence chunks, as engine::AttentionBatch describes it: chunk c owns query rows
// [query_start[c], query_start[c+1]) of q/out ([rows][n_heads][head_dim]); its n_c queries are the last
// tokens of a context of context_len[c] tokens (query i sees context_len[c] - n_c + i + 1 tokens), and its
// block table is block_tables[block_table_start[c], block_table_start[c+1]). Arrays in device memory; the
// counts and maxima are host values that size the grid (a chunk beyond them is cut, never read past).
struct PagedBatch {
  int n_chunks = 0;
  int max_query_len = 0;
  int max_context_len = 0;
  const int32_t* query_start = nullptr;        // [n_chunks + 1]
  const int32_t* context_len = nullptr;        // [n_chunks]
  const int32_t* block_table_start = nullptr;  // [n_chunks + 1]
  const int32_t* block_tables = nullptr;
};

struct AttentionShape {
  int n_heads = 0;
  int n_kv_heads = 0;  // divides n_heads; n_heads / n_kv_heads <= kMaxGroup
  float scale = 0.0f;  // usually 1 / sqrt(head_dim)
};

inline constexpr int kDecodePartition = 512;
inline constexpr int kMaxGroup = 16;

// Workspace bytes the decode launcher needs for n_chunks chunks whose contexts are at most max_context.
size_t paged_attention_decode_workspace_bytes(int n_chunks, int n_heads, int head_dim, int max_context);

// Decode: batch.max_query_len must be 1 (chunks with another query count are left unwritten). workspace:
// device memory of at least paged_attention_decode_workspace_bytes(1, n_heads, head_dim,
// batch.max_context_len), one chunk's partials; a batch with more chunks than the workspace holds runs in
// passes of as many chunks as it does (one partials launch and one merge per pass, in stream order, so
// the passes reuse the workspace), with the same result as one pass. Table entries outside the pool, or a
// context longer than its table covers, read as zero K/V rather than out of bounds.
Status paged_attention_decode(float* out, const float* q, const bf16* pool, const KvPoolGeometry& geo,
                              int layer, const AttentionShape& shape, const PagedBatch& batch,
                              void* workspace, size_t workspace_bytes, cudaStream_t stream);

// Any batch (decode chunks included, without the split over the context).
Status paged_attention_prefill(float* out, const float* q, const bf16* pool, const KvPoolGeometry& geo,
                               int layer, const AttentionShape& shape, const PagedBatch& batch,
                               cudaStream_t stream);

}  // namespace agentserve::kernels::cuda
