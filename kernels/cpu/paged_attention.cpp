#include "kernels/cpu/paged_attention.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <limits>
#include <utility>
#include <vector>

#include "kernels/cpu/simd.h"

namespace agentserve::kernels {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

inline const float* token_row(const float* const* blocks, int token, int kv_head, int block_size,
                              int head_dim) {
  const int b = token / block_size;
  const int off = token % block_size;
  return blocks[b] + (static_cast<size_t>(kv_head) * block_size + off) * head_dim;
}

}  // namespace

// s[j] = scale * q_h . K[g, j];  out_h = sum_j exp(s[j] - max s) V[g, j] / sum_j exp(s[j] - max s)

void paged_attention_ref(float* out, const float* q, const float* const* k_blocks,
                         const float* const* v_blocks, int n_ctx, int block_size, int n_heads, int n_kv_heads,
                         int head_dim, float scale) {
  const int group = n_heads / n_kv_heads;
  std::vector<double> s(static_cast<size_t>(n_ctx));
  std::vector<double> acc(static_cast<size_t>(head_dim));
  for (int h = 0; h < n_heads; ++h) {
    const int g = h / group;
    const float* qh = q + static_cast<size_t>(h) * head_dim;
    double max_s = -std::numeric_limits<double>::infinity();
    for (int j = 0; j < n_ctx; ++j) {
      const float* k = token_row(k_blocks, j, g, block_size, head_dim);
      double dot = 0;
      for (int d = 0; d < head_dim; ++d) dot += static_cast<double>(qh[d]) * k[d];
      s[j] = dot * scale;
      max_s = std::max(max_s, s[j]);
    }
    double sum = 0;
    std::fill(acc.begin(), acc.end(), 0.0);
    for (int j = 0; j < n_ctx; ++j) {
      const double p = std::exp(s[j] - max_s);
      sum += p;
      const float* v = token_row(v_blocks, j, g, block_size, head_dim);
      for (int d = 0; d < head_dim; ++d) acc[d] += p * v[d];
    }
    for (int d = 0; d < head_dim; ++d)
      out[static_cast<size_t>(h) * head_dim + d] = static_cast<float>(acc[d] / sum);
  }
}

namespace {

// The fast versions: context in chunks of kChunk tokens; for each chunk every query row of a tile (all
// rows share one kv head) gets its kChunk scores, updates its running max m and sum l, rescales its
// accumulator (kept in `out`) by exp(m_old - m_new) and adds p[j] * V[j]. The chunk's K/V (16 KiB at
// head_dim 128) stay in L1 while all rows of the tile use them.
constexpr int kChunk = 16;
constexpr int kRowTile = 128;

struct RowTile {
  std::array<const float*, kRowTile> q;
  std::array<float*, kRowTile> out;
  std::array<int, kRowTile> limit;  // context tokens the row sees
  int count = 0;
  int max_limit = 0;
};

struct Geometry {
  const float* const* k_blocks;
  const float* const* v_blocks;
  int block_size;
  int head_dim;
  float scale;
};

// Builds the tiles: for each kv head overlapping [head_begin, head_end), rows (query i, head h) in
// query-major order, so a tile's rows have close causal limits.
template <typename Attend>
void for_each_tile(float* out, const float* q, int n_queries, int n_ctx_first, int n_heads, int n_kv_heads,
                   int head_dim, int head_begin, int head_end, Attend&& attend) {
  const int group = n_heads / n_kv_heads;
  for (int g = head_begin / group; g < n_kv_heads && g * group < head_end; ++g) {
    const int h0 = std::max(head_begin, g * group);
    const int h1 = std::min(head_end, (g + 1) * group);
    RowTile tile;
    for (int i = 0; i < n_queries; ++i) {
      for (int h = h0; h < h1; ++h) {
        const size_t at = (static_cast<size_t>(i) * n_heads + h) * head_dim;
        tile.q[tile.count] = q + at;
        tile.out[tile.count] = out + at;
        tile.limit[tile.count] = n_ctx_first + i;
        tile.max_limit = std::max(tile.max_limit, n_ctx_first + i);
        if (++tile.count == kRowTile) {
          attend(tile, g);
          tile.count = 0;
          tile.max_limit = 0;
        }
      }
    }
    if (tile.count > 0) attend(tile, g);
  }
}

// Pointers to the K and V rows of context tokens [c0, c0 + n); the unused tail repeats the first row so
// fixed-width loops can read it (its scores are masked out).
// Walks the blocks with one division per chunk rather than one per token.
void chunk_rows(const float** kp, const float** vp, const Geometry& geo, int kv_head, int c0, int n) {
  int block = c0 / geo.block_size;
  int off = c0 - block * geo.block_size;
  const size_t head_offset = static_cast<size_t>(kv_head) * geo.block_size;
  for (int j = 0; j < n; ++j) {
    const size_t at = (head_offset + off) * geo.head_dim;
    kp[j] = geo.k_blocks[block] + at;
    vp[j] = geo.v_blocks[block] + at;
    if (++off == geo.block_size) {
      off = 0;
      ++block;
    }
  }
  for (int j = n; j < kChunk; ++j) {
    kp[j] = kp[0];
    vp[j] = vp[0];
  }
}

}  // namespace

namespace portable {
namespace {

float dot(const float* a, const float* b, int n) {
  constexpr int kLanes = 16;
  float acc[kLanes] = {};
  int i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) acc[l] += a[i + l] * b[i + l];
  }
  for (int l = 0; i < n; ++i, ++l) acc[l] += a[i] * b[i];
  for (int width = kLanes / 2; width > 0; width /= 2) {
    for (int l = 0; l < width; ++l) acc[l] += acc[l + width];
  }
  return acc[0];
}

AGENTSERVE_VECTORISE_EXP void attend(const RowTile& tile, int kv_head, const Geometry& geo) {
  const int hd = geo.head_dim;
  float m[kRowTile];
  float l[kRowTile];
  for (int r = 0; r < tile.count; ++r) {
    m[r] = kNegInf;
    l[r] = 0;
    std::fill(tile.out[r], tile.out[r] + hd, 0.0f);
  }
  const float* kp[kChunk];
  const float* vp[kChunk];
  for (int c0 = 0; c0 < tile.max_limit; c0 += kChunk) {
    chunk_rows(kp, vp, geo, kv_head, c0, std::min(kChunk, tile.max_limit - c0));
    for (int r = 0; r < tile.count; ++r) {
      const int valid = std::min(kChunk, tile.limit[r] - c0);
      if (valid <= 0) continue;
      float s[kChunk];
      float chunk_max = kNegInf;
      for (int j = 0; j < valid; ++j) {
        s[j] = dot(tile.q[r], kp[j], hd) * geo.scale;
        chunk_max = std::max(chunk_max, s[j]);
      }
      const float m_new = std::max(m[r], chunk_max);
      const float alpha = m[r] == kNegInf ? 0.0f : simd::exp_portable(m[r] - m_new);
      float p_sum = 0;
      for (int j = 0; j < valid; ++j) {
        s[j] = simd::exp_portable(s[j] - m_new);
        p_sum += s[j];
      }
      l[r] = l[r] * alpha + p_sum;
      m[r] = m_new;
      float* o = tile.out[r];
      for (int d = 0; d < hd; ++d) o[d] *= alpha;
      for (int j = 0; j < valid; ++j) {
        const float p = s[j];
        const float* v = vp[j];
        for (int d = 0; d < hd; ++d) o[d] += p * v[d];
      }
    }
  }
  for (int r = 0; r < tile.count; ++r) {
    const float inv = 1.0f / l[r];
    for (int d = 0; d < hd; ++d) tile.out[r][d] *= inv;
  }
}

}  // namespace

void paged_attention_prefill(float* out, const float* q, int n_queries, int n_ctx_first,
                             const float* const* k_blocks, const float* const* v_blocks, int block_size,
                             int n_heads, int n_kv_heads, int head_dim, float scale, int head_begin,
                             int head_end) {
  const Geometry geo{k_blocks, v_blocks, block_size, head_dim, scale};
  for_each_tile(out, q, n_queries, n_ctx_first, n_heads, n_kv_heads, head_dim, head_begin, head_end,
                [&](const RowTile& tile, int g) { attend(tile, g, geo); });
}

}  // namespace portable

#if defined(__AVX512F__)
namespace {

// 16 scores of one query row against the chunk's keys: 16 accumulators along head_dim, folded into one
// vector (lane j = q . k_j) without a horizontal sum per key.
__m512 chunk_scores(const float* q, const float* const* kp, int head_dim) {
  __m512 acc[kChunk];
  for (int j = 0; j < kChunk; ++j) acc[j] = _mm512_setzero_ps();
  for (int d = 0; d < head_dim; d += 16) {
    const __mmask16 m = simd::first_lanes(std::min(16, head_dim - d));
    const __m512 qv = simd::load16(q + d, m);
    for (int j = 0; j < kChunk; ++j) acc[j] = _mm512_fmadd_ps(qv, simd::load16(kp[j] + d, m), acc[j]);
  }
  return simd::transpose_sum16(acc);
}

// The same for two rows at once, 8 keys at a time: each key vector loaded feeds two FMAs, which halves
// the loads per FMA (loads, not FMAs, bound the single-row version).
void chunk_scores2(const float* qa, const float* qb, const float* const* kp, int head_dim, __m512& sa,
                   __m512& sb) {
  __m512 half[2];
  for (int h = 0; h < 2; ++h) {
    __m512 acc[16];  // acc[j]: row a, key 8h + j; acc[8 + j]: row b, key 8h + j
    for (int j = 0; j < 16; ++j) acc[j] = _mm512_setzero_ps();
    for (int d = 0; d < head_dim; d += 16) {
      const __mmask16 m = simd::first_lanes(std::min(16, head_dim - d));
      const __m512 va = simd::load16(qa + d, m);
      const __m512 vb = simd::load16(qb + d, m);
      for (int j = 0; j < 8; ++j) {
        const __m512 k = simd::load16(kp[8 * h + j] + d, m);
        acc[j] = _mm512_fmadd_ps(va, k, acc[j]);
        acc[8 + j] = _mm512_fmadd_ps(vb, k, acc[8 + j]);
      }
    }
    half[h] = simd::transpose_sum16(acc);  // lanes 0-7: row a's keys, lanes 8-15: row b's
  }
  sa = _mm512_shuffle_f32x4(half[0], half[1], 0x44);
  sb = _mm512_shuffle_f32x4(half[0], half[1], 0xEE);
}

// out_r = out_r * alpha[r] + sum_{j < n} p[r][j] * V[j] for RN rows whose accumulators stay in
// registers for a 32-wide slice of head_dim while the chunk's V rows stream past.
template <int RN>
void accumulate_v(float* const* out, const float* p, const float* alpha, const float* const* vp, int n,
                  int head_dim) {
  for (int d = 0; d < head_dim; d += 32) {
    const __mmask16 m0 = simd::first_lanes(std::min(16, head_dim - d));
    const __mmask16 m1 = simd::first_lanes(std::clamp(head_dim - d - 16, 0, 16));
    __m512 acc0[RN], acc1[RN];
    for (int r = 0; r < RN; ++r) {
      const __m512 a = _mm512_set1_ps(alpha[r]);
      acc0[r] = _mm512_mul_ps(simd::load16(out[r] + d, m0), a);
      acc1[r] = _mm512_mul_ps(simd::load16(out[r] + d + 16, m1), a);
    }
    for (int j = 0; j < n; ++j) {
      const __m512 v0 = simd::load16(vp[j] + d, m0);
      const __m512 v1 = simd::load16(vp[j] + d + 16, m1);
      for (int r = 0; r < RN; ++r) {
        const __m512 pj = _mm512_set1_ps(p[r * kChunk + j]);
        acc0[r] = _mm512_fmadd_ps(pj, v0, acc0[r]);
        acc1[r] = _mm512_fmadd_ps(pj, v1, acc1[r]);
      }
    }
    for (int r = 0; r < RN; ++r) {
      _mm512_mask_storeu_ps(out[r] + d, m0, acc0[r]);
      _mm512_mask_storeu_ps(out[r] + d + 16, m1, acc1[r]);
    }
  }
}

constexpr int kRowBatch = 8;
using AccumulateFn = void (*)(float* const*, const float*, const float*, const float* const*, int, int);

template <int... RN>
constexpr auto accumulate_table(std::integer_sequence<int, RN...>) {
  return std::array<AccumulateFn, sizeof...(RN)>{&accumulate_v<RN + 1>...};
}

// Online-softmax state of a tile's rows: running max m and running sum l of exp(s - m).
struct SoftmaxState {
  float m[kRowTile];
  float l[kRowTile];
};

// Turns the raw scores of rows [r0, r0 + rn) for the chunk at c0 into weights p (zero past each row's
// causal limit) and rescale factors alpha for the rows' accumulators, updating m and l.
void softmax_update(const __m512* raw, int r0, int rn, int c0, const RowTile& tile, float scale,
                    SoftmaxState& st, float* p, float* alpha) {
  const __m512 lane = _mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  for (int b = 0; b < rn; ++b) {
    const int r = r0 + b;
    const int valid = std::min(kChunk, tile.limit[r] - c0);
    if (valid <= 0) {  // this row's context ended in an earlier chunk: leave it unchanged
      _mm512_store_ps(p + b * kChunk, _mm512_setzero_ps());
      alpha[b] = 1.0f;
      continue;
    }
    const __mmask16 live = _mm512_cmp_ps_mask(lane, _mm512_set1_ps(static_cast<float>(valid)), _CMP_LT_OQ);
    const __m512 s =
        _mm512_mask_mov_ps(_mm512_set1_ps(kNegInf), live, _mm512_mul_ps(raw[b], _mm512_set1_ps(scale)));
    const float m_new = std::max(st.m[r], simd::reduce_max(s));
    // Masked lanes would come out as e^-104 rather than 0: zero them so no future token leaks in.
    const __m512 e = _mm512_maskz_mov_ps(live, simd::exp16(_mm512_sub_ps(s, _mm512_set1_ps(m_new))));
    alpha[b] = st.m[r] == kNegInf ? 0.0f : _mm512_cvtss_f32(simd::exp16(_mm512_set1_ps(st.m[r] - m_new)));
    st.l[r] = st.l[r] * alpha[b] + simd::reduce_add(e);
    st.m[r] = m_new;
    _mm512_store_ps(p + b * kChunk, e);
  }
}

// The rows of a chunk are scattered over blocks the hardware prefetcher has not seen: while chunk c
// computes, chunk c + kAhead is requested into L2 (K before the scores, V after them).
constexpr int kAhead = 2;

void prefetch_chunk(const Geometry& geo, int kv_head, int c0, int max_limit, const float* const* blocks) {
  const int n = std::min(kChunk, max_limit - c0);
  int block = c0 / geo.block_size;
  int off = c0 - block * geo.block_size;
  const size_t head_offset = static_cast<size_t>(kv_head) * geo.block_size;
  const int row_bytes = geo.head_dim * static_cast<int>(sizeof(float));
  for (int j = 0; j < n; ++j) {
    const char* row = reinterpret_cast<const char*>(blocks[block] + (head_offset + off) * geo.head_dim);
    for (int b = 0; b < row_bytes; b += 64) simd::prefetch_l2(row + b);
    if (++off == geo.block_size) {
      off = 0;
      ++block;
    }
  }
}

void attend(const RowTile& tile, int kv_head, const Geometry& geo) {
  static constexpr auto accumulate = accumulate_table(std::make_integer_sequence<int, kRowBatch>());
  const int hd = geo.head_dim;
  SoftmaxState st;
  for (int r = 0; r < tile.count; ++r) {
    st.m[r] = kNegInf;
    st.l[r] = 0;
    std::fill(tile.out[r], tile.out[r] + hd, 0.0f);
  }
  for (int a = 0; a < kAhead; ++a) {
    prefetch_chunk(geo, kv_head, a * kChunk, tile.max_limit, geo.k_blocks);
    prefetch_chunk(geo, kv_head, a * kChunk, tile.max_limit, geo.v_blocks);
  }
  const float* kp[kChunk];
  const float* vp[kChunk];
  alignas(64) float p[kRowBatch * kChunk];
  float alpha[kRowBatch];
  for (int c0 = 0; c0 < tile.max_limit; c0 += kChunk) {
    const int n = std::min(kChunk, tile.max_limit - c0);
    chunk_rows(kp, vp, geo, kv_head, c0, n);
    prefetch_chunk(geo, kv_head, c0 + kAhead * kChunk, tile.max_limit, geo.k_blocks);
    for (int r0 = 0; r0 < tile.count; r0 += kRowBatch) {
      const int rn = std::min(kRowBatch, tile.count - r0);
      __m512 raw[kRowBatch];
      int b = 0;
      for (; b + 2 <= rn; b += 2)
        chunk_scores2(tile.q[r0 + b], tile.q[r0 + b + 1], kp, hd, raw[b], raw[b + 1]);
      if (b < rn) raw[b] = chunk_scores(tile.q[r0 + b], kp, hd);
      softmax_update(raw, r0, rn, c0, tile, geo.scale, st, p, alpha);
      accumulate[rn - 1](tile.out.data() + r0, p, alpha, vp, n, hd);
    }
    prefetch_chunk(geo, kv_head, c0 + kAhead * kChunk, tile.max_limit, geo.v_blocks);
  }
  for (int r = 0; r < tile.count; ++r) {
    const __m512 inv = _mm512_set1_ps(1.0f / st.l[r]);
    for (int d = 0; d < hd; d += 16) {
      const __mmask16 m16 = simd::first_lanes(std::min(16, hd - d));
      _mm512_mask_storeu_ps(tile.out[r] + d, m16, _mm512_mul_ps(simd::load16(tile.out[r] + d, m16), inv));
    }
  }
}

}  // namespace
#endif  // __AVX512F__

void paged_attention_prefill(float* out, const float* q, int n_queries, int n_ctx_first,
                             const float* const* k_blocks, const float* const* v_blocks, int block_size,
                             int n_heads, int n_kv_heads, int head_dim, float scale, int head_begin,
                             int head_end) {
#if defined(__AVX512F__)
  const Geometry geo{k_blocks, v_blocks, block_size, head_dim, scale};
  for_each_tile(out, q, n_queries, n_ctx_first, n_heads, n_kv_heads, head_dim, head_begin, head_end,
                [&](const RowTile& tile, int g) { attend(tile, g, geo); });
#else
  portable::paged_attention_prefill(out, q, n_queries, n_ctx_first, k_blocks, v_blocks, block_size, n_heads,
                                    n_kv_heads, head_dim, scale, head_begin, head_end);
#endif
}

void paged_attention(float* out, const float* q, const float* const* k_blocks, const float* const* v_blocks,
                     int n_ctx, int block_size, int n_heads, int n_kv_heads, int head_dim, float scale,
                     int head_begin, int head_end) {
  paged_attention_prefill(out, q, 1, n_ctx, k_blocks, v_blocks, block_size, n_heads, n_kv_heads, head_dim,
                          scale, head_begin, head_end);
}

}  // namespace agentserve::kernels
