#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>

#include "kernels/cpu/matmul.h"
#include "kernels/cpu/simd.h"

// y[t, o] = sum_{i < in_dim} bf16(x[t, i]) * W[o, i], W in BF16: the opt-in reduced-precision matmul.
// Products of two BF16 values are exact in f32; only the rounding of x to BF16 and the f32 sums err.
// The oracle is matmul_ref applied to the rounded activations.

namespace agentserve::kernels {

namespace portable {

void matmul_bf16_activations(float* y, const bf16* x_bf16, const bf16* w, int n_tokens, int in_dim,
                             int out_dim, int row_begin, int row_end) {
  constexpr int kLanes = 16;
  const auto* xb = reinterpret_cast<const uint16_t*>(x_bf16);
  const auto* wb = reinterpret_cast<const uint16_t*>(w);
  for (int o = row_begin; o < row_end; ++o) {
    const uint16_t* row = wb + static_cast<size_t>(o) * in_dim;
    for (int t = 0; t < n_tokens; ++t) {
      const uint16_t* xr = xb + static_cast<size_t>(t) * in_dim;
      float acc[kLanes] = {};
      int i = 0;
      for (; i + kLanes <= in_dim; i += kLanes) {
        for (int l = 0; l < kLanes; ++l) {
          acc[l] += simd::bf16_bits_to_float(xr[i + l]) * simd::bf16_bits_to_float(row[i + l]);
        }
      }
      for (int l = 0; i < in_dim; ++i, ++l)
        acc[l] += simd::bf16_bits_to_float(xr[i]) * simd::bf16_bits_to_float(row[i]);
      for (int width = kLanes / 2; width > 0; width /= 2) {
        for (int l = 0; l < width; ++l) acc[l] += acc[l + width];
      }
      y[static_cast<size_t>(t) * out_dim + o] = acc[0];
    }
  }
}

}  // namespace portable

void convert_activations_bf16(bf16* x_bf16, const float* x, size_t n) {
  size_t i = 0;
#if defined(__AVX512BF16__)
  for (; i + 16 <= n; i += 16) {
    const __m256bh h = _mm512_cvtneps_pbh(_mm512_loadu_ps(x + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(x_bf16 + i), reinterpret_cast<const __m256i&>(h));
  }
#endif
  for (; i < n; ++i) x_bf16[i] = float_to_bf16(x[i]);
}

#if defined(__AVX512BF16__)
namespace {

// A tile of NR weight rows x NT tokens; vdpbf16ps multiplies 32 BF16 pairs and adds them pairwise into
// 16 f32 lanes, so one instruction does twice the work of an f32 FMA.
template <int NR, int NT>
void dp_tile(float* y, size_t ldy, const uint16_t* x, size_t ldx, const uint16_t* w, size_t ldw, int k) {
  __m512 acc[NT][NR];
  for (int t = 0; t < NT; ++t)
    for (int r = 0; r < NR; ++r) acc[t][r] = _mm512_setzero_ps();
  auto step = [&](auto load) {
    __m512bh wv[NR];
    for (int r = 0; r < NR; ++r) wv[r] = (__m512bh)load(w + r * ldw);
    for (int t = 0; t < NT; ++t) {
      const __m512bh xv = (__m512bh)load(x + t * ldx);
      for (int r = 0; r < NR; ++r) acc[t][r] = _mm512_dpbf16_ps(acc[t][r], xv, wv[r]);
    }
  };
  int i = 0;
  for (; i + 32 <= k; i += 32) {
    step([i](const uint16_t* p) { return _mm512_loadu_si512(p + i); });
  }
  if (i < k) {
    const __mmask32 m = static_cast<__mmask32>((uint64_t{1} << (k - i)) - 1);
    step([i, m](const uint16_t* p) { return _mm512_maskz_loadu_epi16(m, p + i); });
  }
  for (int t = 0; t < NT; ++t)
    for (int r = 0; r < NR; ++r) y[t * ldy + r] = simd::reduce_add(acc[t][r]);
}

constexpr int kRows = 4;
constexpr int kTokens = 6;
constexpr int kDecodeTokens = 4;

using DpTileFn = void (*)(float*, size_t, const uint16_t*, size_t, const uint16_t*, size_t, int);

template <int NR, int... NT>
constexpr auto dp_tiles_for_rows(std::integer_sequence<int, NT...>) {
  return std::array<DpTileFn, sizeof...(NT)>{&dp_tile<NR, NT + 1>...};
}

template <int... NR>
constexpr auto dp_tile_table(std::integer_sequence<int, NR...>) {
  return std::array<std::array<DpTileFn, kTokens>, sizeof...(NR)>{
      dp_tiles_for_rows<NR + 1>(std::make_integer_sequence<int, kTokens>())...};
}

}  // namespace
#endif  // __AVX512BF16__

void matmul_bf16_activations(float* y, const bf16* x_bf16, const bf16* w, int n_tokens, int in_dim,
                             int out_dim, int row_begin, int row_end) {
#if defined(__AVX512BF16__)
  static constexpr auto table = dp_tile_table(std::make_integer_sequence<int, kRows>());
  const auto* xb = reinterpret_cast<const uint16_t*>(x_bf16);
  const auto* wb = reinterpret_cast<const uint16_t*>(w);
  // Few tokens make it a memory-bound stream: one row at a time reads W sequentially, which the
  // hardware prefetcher serves at full bandwidth (see matmul's decode path). Many tokens reuse each
  // x tile across kRows rows instead.
  const int rows_per_tile = n_tokens <= kDecodeTokens ? 1 : kRows;
  for (int o = row_begin; o < row_end; o += rows_per_tile) {
    const int nr = std::min(rows_per_tile, row_end - o);
    const uint16_t* rows = wb + static_cast<size_t>(o) * in_dim;
    for (int t = 0; t < n_tokens; t += kTokens) {
      const int nt = std::min(kTokens, n_tokens - t);
      table[nr - 1][nt - 1](y + static_cast<size_t>(t) * out_dim + o, out_dim,
                            xb + static_cast<size_t>(t) * in_dim, in_dim, rows, in_dim, in_dim);
    }
  }
#else
  portable::matmul_bf16_activations(y, x_bf16, w, n_tokens, in_dim, out_dim, row_begin, row_end);
#endif
}

}  // namespace agentserve::kernels
