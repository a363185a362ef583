// Causal attention over a paged KV cache, with grouped-query heads: the decode case (one query token)
// and the prefill case (a run of consecutive query tokens of the same sequence). One pass over the
// context with a running max and sum per query row (online softmax), so nothing n_ctx-sized is ever
// allocated; K/V of each context chunk are read once for all query rows sharing their kv head. Pure
// math on pointers: no allocation, no threads (callers split heads or query runs across a pool).
//
//   s[j] = scale * dot(q_h, K[g, j]),  j < n_ctx,  g = h / (n_heads / n_kv_heads)
//   out_h = sum_j softmax(s)[j] * V[g, j]
//
// Layout. Context token j lives in block j / block_size at offset j % block_size; k_blocks[b] (and
// v_blocks[b]) point to that block's K (V) for this layer: [n_kv_heads][block_size][head_dim] f32.
// q and out are [n_heads][head_dim] per query token (prefill: [n_queries][n_heads][head_dim]).
// Limits: n_ctx >= 1, block_size >= 1, n_kv_heads >= 1 dividing n_heads, head_dim >= 1,
// 0 <= head_begin <= head_end <= n_heads; only heads in [head_begin, head_end) of out are written.
// k_blocks/v_blocks hold at least ceil(n_ctx / block_size) entries (prefill: of the last query's n_ctx).
#pragma once

namespace agentserve::kernels {

// Oracle for one query token: a full score vector, two-pass softmax, double accumulation; all heads.
void paged_attention_ref(float* out, const float* q, const float* const* k_blocks,
                         const float* const* v_blocks, int n_ctx, int block_size, int n_heads, int n_kv_heads,
                         int head_dim, float scale);

// One query token at position n_ctx - 1 (it sees tokens 0..n_ctx-1, its own K/V included).
void paged_attention(float* out, const float* q, const float* const* k_blocks, const float* const* v_blocks,
                     int n_ctx, int block_size, int n_heads, int n_kv_heads, int head_dim, float scale,
                     int head_begin, int head_end);

// n_queries consecutive query tokens; query i sees the first n_ctx_first + i context tokens (so the
// first query sits at position n_ctx_first - 1, and the K/V of all queries are already in the blocks).
// Same result as calling paged_attention once per query, with K/V read once per chunk for a tile of up
// to 128 query rows instead of once per query.
void paged_attention_prefill(float* out, const float* q, int n_queries, int n_ctx_first,
                             const float* const* k_blocks, const float* const* v_blocks, int block_size,
                             int n_heads, int n_kv_heads, int head_dim, float scale, int head_begin,
                             int head_end);

// The compiler-vectorised path used when the build has no AVX-512; always compiled so tests run it.
namespace portable {
void paged_attention_prefill(float* out, const float* q, int n_queries, int n_ctx_first,
                             const float* const* k_blocks, const float* const* v_blocks, int block_size,
                             int n_heads, int n_kv_heads, int head_dim, float scale, int head_begin,
                             int head_end);
}  // namespace portable

}  // namespace agentserve::kernels
