#include "kernels/cpu/matmul.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>

#include "kernels/cpu/simd.h"

namespace agentserve::kernels {
namespace {

inline float weight_at(const void* w, DType w_dtype, size_t i) {
  return w_dtype == DType::kF32 ? static_cast<const float*>(w)[i]
                                : simd::bf16_bits_to_float(static_cast<const uint16_t*>(w)[i]);
}

inline float widen(float v) {
  return v;
}
inline float widen(uint16_t v) {
  return simd::bf16_bits_to_float(v);
}

}  // namespace

// y[t, o] = sum_{i < in_dim} x[t, i] * W[o, i]

void matmul_ref(float* y, const float* x, const void* w, DType w_dtype, int n_tokens, int in_dim,
                int out_dim) {
  for (int t = 0; t < n_tokens; ++t) {
    for (int o = 0; o < out_dim; ++o) {
      double acc = 0;
      for (int i = 0; i < in_dim; ++i) {
        acc += static_cast<double>(x[static_cast<size_t>(t) * in_dim + i]) *
               weight_at(w, w_dtype, static_cast<size_t>(o) * in_dim + i);
      }
      y[static_cast<size_t>(t) * out_dim + o] = static_cast<float>(acc);
    }
  }
}

namespace portable {
namespace {

// A dot product the compiler vectorises: 16 independent lanes (no reassociation needed), summed
// pairwise at the end.
template <typename WT>
float dot(const float* x, const WT* w, int n) {
  constexpr int kLanes = 16;
  float acc[kLanes] = {};
  int i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) acc[l] += x[i + l] * widen(w[i + l]);
  }
  for (int l = 0; i < n; ++i, ++l) acc[l] += x[i] * widen(w[i]);
  for (int width = kLanes / 2; width > 0; width /= 2) {
    for (int l = 0; l < width; ++l) acc[l] += acc[l + width];
  }
  return acc[0];
}

template <typename WT>
void matmul_rows(float* y, const float* x, const WT* w, int n_tokens, int in_dim, int out_dim, int row_begin,
                 int row_end) {
  // Row outer, tokens inner: a weight row is read from memory once and from L1 for the other tokens.
  for (int o = row_begin; o < row_end; ++o) {
    const WT* row = w + static_cast<size_t>(o) * in_dim;
    for (int t = 0; t < n_tokens; ++t) {
      y[static_cast<size_t>(t) * out_dim + o] = dot(x + static_cast<size_t>(t) * in_dim, row, in_dim);
    }
  }
}

}  // namespace

void matmul(float* y, const float* x, const void* w, DType w_dtype, int n_tokens, int in_dim, int out_dim,
            int row_begin, int row_end) {
  if (w_dtype == DType::kF32) {
    matmul_rows(y, x, static_cast<const float*>(w), n_tokens, in_dim, out_dim, row_begin, row_end);
  } else {
    matmul_rows(y, x, static_cast<const uint16_t*>(w), n_tokens, in_dim, out_dim, row_begin, row_end);
  }
}

}  // namespace portable

#if defined(__AVX512F__)
namespace {

// ---- Decode: few tokens, weights streamed from memory once. ----
//
// One weight row at a time, so W is read as a single sequential stream (interleaving several rows
// halves the bandwidth the hardware prefetcher delivers on this machine; so does a second row to share
// the x loads). Each weight vector is widened once and used for every token; U independent accumulator
// sets hide the FMA latency. One horizontal sum per output.
template <int NT, typename WT>
void dot_row(float* y, size_t ldy, const float* x, size_t ldx, const WT* row, int k) {
  constexpr int U = NT == 1 ? 4 : (NT <= 4 ? 2 : 1);
  __m512 acc[U][NT];
  for (int u = 0; u < U; ++u)
    for (int t = 0; t < NT; ++t) acc[u][t] = _mm512_setzero_ps();
  int i = 0;
  for (; i + 16 * U <= k; i += 16 * U) {
    for (int u = 0; u < U; ++u) {
      const __m512 wv = simd::load16(row + i + 16 * u);
      for (int t = 0; t < NT; ++t)
        acc[u][t] = _mm512_fmadd_ps(simd::load16(x + t * ldx + i + 16 * u), wv, acc[u][t]);
    }
  }
  for (; i + 16 <= k; i += 16) {
    const __m512 wv = simd::load16(row + i);
    for (int t = 0; t < NT; ++t) acc[0][t] = _mm512_fmadd_ps(simd::load16(x + t * ldx + i), wv, acc[0][t]);
  }
  if (i < k) {
    const __mmask16 m = simd::first_lanes(k - i);
    const __m512 wv = simd::load16(row + i, m);
    for (int t = 0; t < NT; ++t) acc[0][t] = _mm512_fmadd_ps(simd::load16(x + t * ldx + i, m), wv, acc[0][t]);
  }
  for (int t = 0; t < NT; ++t) {
    __m512 sum = acc[0][t];
    for (int u = 1; u < U; ++u) sum = _mm512_add_ps(sum, acc[u][t]);
    y[t * ldy] = simd::reduce_add(sum);
  }
}

// Below this many tokens the decode path runs, all tokens in one pass over W; from it on, the packed
// weight panel is reused enough to pay for packing it.
constexpr int kPrefillMinTokens = 8;
constexpr int kDecodeTokens = kPrefillMinTokens - 1;

template <typename WT>
using DotRowFn = void (*)(float*, size_t, const float*, size_t, const WT*, int);

template <typename WT, int... NT>
constexpr auto dot_row_table(std::integer_sequence<int, NT...>) {
  return std::array<DotRowFn<WT>, sizeof...(NT)>{&dot_row<NT + 1, WT>...};
}

// n_tokens in [1, kDecodeTokens].
template <typename WT>
void matmul_decode(float* y, const float* x, const WT* w, int n_tokens, int in_dim, int out_dim,
                   int row_begin, int row_end) {
  static constexpr auto table = dot_row_table<WT>(std::make_integer_sequence<int, kDecodeTokens>());
  for (int o = row_begin; o < row_end; ++o) {
    table[n_tokens - 1](y + o, out_dim, x, in_dim, w + static_cast<size_t>(o) * in_dim, in_dim);
  }
}

// ---- Prefill: many tokens, weights reused from cache. ----
//
// Classic packed GEMM: a panel of 32 weight rows x kKc inputs is transposed once into `packed[k][32]`
// (BF16 widened to f32 on the way), then micro tiles of MR tokens x 32 outputs accumulate
// y[t, o..o+32] += x[t, k] * packed[k] with a broadcast and two FMAs per (token, k); no horizontal sums.
// kKc keeps the panel (16 KiB) and the token rows of a tile in L1.
constexpr int kPanel = 32;
constexpr int kKc = 128;
constexpr int kMr = 12;

template <typename WT>
void pack_panel(float* packed, const WT* w, size_t ldw, int rows, int kc) {
  for (int r0 = 0; r0 < kPanel; r0 += 16) {
    for (int k0 = 0; k0 < kc; k0 += 16) {
      const int nk = std::min(16, kc - k0);
      const __mmask16 m = simd::first_lanes(nk);
      __m512 v[16];
      for (int r = 0; r < 16; ++r) {
        v[r] = r0 + r < rows ? simd::load16(w + (r0 + r) * ldw + k0, m) : _mm512_setzero_ps();
      }
      simd::transpose16x16(v);
      for (int j = 0; j < nk; ++j) _mm512_store_ps(packed + (k0 + j) * kPanel + r0, v[j]);
    }
  }
}

// Packing reads 32 rows a few cache lines at a time, too scattered for the hardware prefetcher when
// W streams from DRAM (each expert's weights in a MoE prefill). Requests the lines of a later k-block
// (or of the next panel's first ones) into L2 ahead of time.
constexpr int kPrefetchAhead = 2;

template <typename WT>
void prefetch_panel(const WT* w, int in_dim, int o, int rows, int k, int row_end) {
  if (k >= in_dim) {  // past this panel: the start of the next one
    k -= (in_dim + kKc - 1) / kKc * kKc;
    o += kPanel;
    rows = std::min(kPanel, row_end - o);
  }
  const int bytes = std::min(kKc, in_dim - k) * static_cast<int>(sizeof(WT));
  if (bytes <= 0) return;
  for (int r = 0; r < rows; ++r) {
    const char* p = reinterpret_cast<const char*>(w + static_cast<size_t>(o + r) * in_dim + k);
    for (int b = 0; b < bytes; b += 64) simd::prefetch_l2(p + b);
  }
}

template <int MR>
void gemm_tile(float* y, size_t ldy, const float* x, size_t ldx, const float* packed, int kc, bool accumulate,
               __mmask16 m0, __mmask16 m1) {
  __m512 acc[MR][2];
  for (int t = 0; t < MR; ++t) {
    acc[t][0] = accumulate ? _mm512_maskz_loadu_ps(m0, y + t * ldy) : _mm512_setzero_ps();
    acc[t][1] = accumulate ? _mm512_maskz_loadu_ps(m1, y + t * ldy + 16) : _mm512_setzero_ps();
  }
  for (int k = 0; k < kc; ++k) {
    const __m512 w0 = _mm512_load_ps(packed + k * kPanel);
    const __m512 w1 = _mm512_load_ps(packed + k * kPanel + 16);
    for (int t = 0; t < MR; ++t) {
      const __m512 b = _mm512_set1_ps(x[t * ldx + k]);
      acc[t][0] = _mm512_fmadd_ps(b, w0, acc[t][0]);
      acc[t][1] = _mm512_fmadd_ps(b, w1, acc[t][1]);
    }
  }
  for (int t = 0; t < MR; ++t) {
    _mm512_mask_storeu_ps(y + t * ldy, m0, acc[t][0]);
    _mm512_mask_storeu_ps(y + t * ldy + 16, m1, acc[t][1]);
  }
}

using GemmTileFn = void (*)(float*, size_t, const float*, size_t, const float*, int, bool, __mmask16,
                            __mmask16);

template <int... MR>
constexpr auto gemm_tile_table(std::integer_sequence<int, MR...>) {
  return std::array<GemmTileFn, sizeof...(MR)>{&gemm_tile<MR + 1>...};
}

template <typename WT>
void matmul_prefill(float* y, const float* x, const WT* w, int n_tokens, int in_dim, int out_dim,
                    int row_begin, int row_end) {
  static constexpr auto table = gemm_tile_table(std::make_integer_sequence<int, kMr>());
  alignas(64) float packed[kKc * kPanel];
  // Panel outer, K inner: the panel's 32 rows are read front to back as 32 steady streams, which the
  // hardware prefetcher keeps up with when W comes from DRAM (a K-outer sweep over all panels would
  // restart every stream at each k-block).
  for (int o = row_begin; o < row_end; o += kPanel) {
    const int rows = std::min(kPanel, row_end - o);
    const __mmask16 m0 = simd::first_lanes(std::min(rows, 16));
    const __mmask16 m1 = simd::first_lanes(std::max(rows - 16, 0));
    for (int k0 = 0; k0 < in_dim; k0 += kKc) {
      const int kc = std::min(kKc, in_dim - k0);
      prefetch_panel(w, in_dim, o, rows, k0 + kPrefetchAhead * kKc, row_end);
      pack_panel(packed, w + static_cast<size_t>(o) * in_dim + k0, in_dim, rows, kc);
      for (int t = 0; t < n_tokens; t += kMr) {
        const int mr = std::min(kMr, n_tokens - t);
        table[mr - 1](y + static_cast<size_t>(t) * out_dim + o, out_dim,
                      x + static_cast<size_t>(t) * in_dim + k0, in_dim, packed, kc, k0 > 0, m0, m1);
      }
    }
  }
}

template <typename WT>
void matmul_avx512(float* y, const float* x, const WT* w, int n_tokens, int in_dim, int out_dim,
                   int row_begin, int row_end) {
  if (n_tokens >= kPrefillMinTokens) {
    matmul_prefill(y, x, w, n_tokens, in_dim, out_dim, row_begin, row_end);
  } else {
    matmul_decode(y, x, w, n_tokens, in_dim, out_dim, row_begin, row_end);
  }
}

}  // namespace
#endif  // __AVX512F__

void matmul(float* y, const float* x, const void* w, DType w_dtype, int n_tokens, int in_dim, int out_dim,
            int row_begin, int row_end) {
#if defined(__AVX512F__)
  if (w_dtype == DType::kF32) {
    matmul_avx512(y, x, static_cast<const float*>(w), n_tokens, in_dim, out_dim, row_begin, row_end);
  } else {
    matmul_avx512(y, x, static_cast<const uint16_t*>(w), n_tokens, in_dim, out_dim, row_begin, row_end);
  }
#else
  portable::matmul(y, x, w, w_dtype, n_tokens, in_dim, out_dim, row_begin, row_end);
#endif
}

}  // namespace agentserve::kernels
