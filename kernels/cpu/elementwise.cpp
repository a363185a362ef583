#include "kernels/cpu/elementwise.h"

#include <cmath>
#include <cstdint>
#include <limits>

#include "kernels/cpu/simd.h"

namespace agentserve::kernels {

// out[i] = gate[i] / (1 + exp(-gate[i])) * up[i]

void silu_mul_ref(float* out, const float* gate, const float* up, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const double g = gate[i];
    out[i] = static_cast<float>(g / (1.0 + std::exp(-g)) * up[i]);
  }
}

namespace portable {

AGENTSERVE_VECTORISE_EXP void silu_mul(float* out, const float* gate, const float* up, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + simd::exp_portable(-g)) * up[i];
  }
}

}  // namespace portable

void silu_mul(float* out, const float* gate, const float* up, size_t n) {
#if defined(__AVX512F__)
  const __m512 one = _mm512_set1_ps(1.0f);
  for (size_t i = 0; i < n; i += 16) {
    const __mmask16 m = simd::first_lanes(n - i < 16 ? static_cast<int>(n - i) : 16);
    const __m512 g = simd::load16(gate + i, m);
    const __m512 e = simd::exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
    const __m512 s = _mm512_div_ps(g, _mm512_add_ps(one, e));
    _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(s, simd::load16(up + i, m)));
  }
#else
  portable::silu_mul(out, gate, up, n);
#endif
}

// a[i] = a[i] + b[i]

void add_inplace(float* a, const float* b, size_t n) {
  for (size_t i = 0; i < n; ++i) a[i] += b[i];
}

// out[i] = out[i] + w * x[i]

void axpy_ref(float* out, float w, const float* x, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(out[i] + static_cast<double>(w) * x[i]);
}

void axpy(float* out, float w, const float* x, size_t n) {
#if defined(__FMA__) || defined(__AVX512F__)
  for (size_t i = 0; i < n; ++i) out[i] = std::fma(w, x[i], out[i]);
#else
  // Without an FMA unit std::fma is a slow library call; two roundings are the lesser evil.
  for (size_t i = 0; i < n; ++i) out[i] += w * x[i];
#endif
}

// out[i] = float(src[i])

void convert_to_f32(float* out, const void* src, DType src_dtype, size_t n) {
  if (src_dtype == DType::kF32) {
    const auto* s = static_cast<const float*>(src);
    for (size_t i = 0; i < n; ++i) out[i] = s[i];
    return;
  }
  const auto* s = static_cast<const uint16_t*>(src);
  for (size_t i = 0; i < n; ++i) out[i] = simd::bf16_bits_to_float(s[i]);
}

// argmax_i x[i], lowest i among equals, NaN never

size_t argmax_ref(const float* x, size_t n) {
  size_t best = 0;
  float best_value = -std::numeric_limits<float>::infinity();
  bool found = false;
  for (size_t i = 0; i < n; ++i) {
    if (std::isnan(x[i])) continue;
    if (!found || x[i] > best_value) {
      best = i;
      best_value = x[i];
      found = true;
    }
  }
  return best;
}

namespace portable {

// Two passes in 16-lane blocks the compiler vectorises: the per-lane maximum (a NaN compares false
// and drops out), then the first block holding it, scanned element by element.
size_t argmax(const float* x, size_t n) {
  constexpr size_t kLanes = 16;
  float lane_best[kLanes];
  for (size_t l = 0; l < kLanes; ++l) lane_best[l] = -std::numeric_limits<float>::infinity();
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (size_t l = 0; l < kLanes; ++l) lane_best[l] = x[i + l] > lane_best[l] ? x[i + l] : lane_best[l];
  }
  for (size_t l = 0; i < n; ++i, ++l) lane_best[l] = x[i] > lane_best[l] ? x[i] : lane_best[l];
  float best = lane_best[0];
  for (size_t l = 1; l < kLanes; ++l) best = lane_best[l] > best ? lane_best[l] : best;
  for (i = 0; i < n; i += kLanes) {
    const size_t end = i + kLanes < n ? i + kLanes : n;
    bool hit = false;
    for (size_t k = i; k < end; ++k) hit |= x[k] == best;
    if (!hit) continue;
    for (size_t k = i; k < end; ++k) {
      if (x[k] == best) return k;
    }
  }
  return 0;  // empty, or only NaNs
}

}  // namespace portable

size_t argmax(const float* x, size_t n) {
#if defined(__AVX512F__)
  __m512 best = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (size_t i = 0; i < n; i += 16) {
    const __mmask16 m = simd::first_lanes(n - i < 16 ? static_cast<int>(n - i) : 16);
    // max(v, best) returns best when v is NaN: NaNs never win. Masked-off lanes keep best.
    best = _mm512_mask_max_ps(best, m, _mm512_maskz_loadu_ps(m, x + i), best);
  }
  const __m512 top = _mm512_set1_ps(simd::reduce_max(best));
  for (size_t i = 0; i < n; i += 16) {
    const __mmask16 m = simd::first_lanes(n - i < 16 ? static_cast<int>(n - i) : 16);
    const __mmask16 hit = _mm512_mask_cmp_ps_mask(m, _mm512_maskz_loadu_ps(m, x + i), top, _CMP_EQ_OQ);
    if (hit != 0) return i + static_cast<size_t>(__builtin_ctz(hit));
  }
  return 0;
#else
  return portable::argmax(x, n);
#endif
}

}  // namespace agentserve::kernels
