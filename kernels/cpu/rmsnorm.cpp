#include "kernels/cpu/rmsnorm.h"

#include <cmath>
#include <cstddef>

#include "kernels/cpu/simd.h"

namespace agentserve::kernels {

// out[r, i] = x[r, i] * weight[i] / sqrt(sum_j x[r, j]^2 / dim + eps)

void rmsnorm_ref(float* out, const float* x, const float* weight, int n_rows, int dim, float eps) {
  for (int r = 0; r < n_rows; ++r) {
    const float* xr = x + static_cast<size_t>(r) * dim;
    float* yr = out + static_cast<size_t>(r) * dim;
    double sum_sq = 0;
    for (int i = 0; i < dim; ++i) sum_sq += static_cast<double>(xr[i]) * xr[i];
    const double scale = 1.0 / std::sqrt(sum_sq / dim + eps);
    for (int i = 0; i < dim; ++i) yr[i] = static_cast<float>(xr[i] * scale * weight[i]);
  }
}

namespace portable {

void rmsnorm(float* out, const float* x, const float* weight, int n_rows, int dim, float eps) {
  constexpr int kLanes = 16;
  for (int r = 0; r < n_rows; ++r) {
    const float* xr = x + static_cast<size_t>(r) * dim;
    float* yr = out + static_cast<size_t>(r) * dim;
    float acc[kLanes] = {};
    int i = 0;
    for (; i + kLanes <= dim; i += kLanes) {
      for (int l = 0; l < kLanes; ++l) acc[l] += xr[i + l] * xr[i + l];
    }
    for (int l = 0; i < dim; ++i, ++l) acc[l] += xr[i] * xr[i];
    for (int width = kLanes / 2; width > 0; width /= 2) {
      for (int l = 0; l < width; ++l) acc[l] += acc[l + width];
    }
    const float scale = 1.0f / std::sqrt(acc[0] / static_cast<float>(dim) + eps);
    for (i = 0; i < dim; ++i) yr[i] = xr[i] * scale * weight[i];
  }
}

}  // namespace portable

void rmsnorm(float* out, const float* x, const float* weight, int n_rows, int dim, float eps) {
#if defined(__AVX512F__)
  for (int r = 0; r < n_rows; ++r) {
    const float* xr = x + static_cast<size_t>(r) * dim;
    float* yr = out + static_cast<size_t>(r) * dim;
    __m512 acc0 = _mm512_setzero_ps();
    __m512 acc1 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 32 <= dim; i += 32) {
      const __m512 a = _mm512_loadu_ps(xr + i);
      const __m512 b = _mm512_loadu_ps(xr + i + 16);
      acc0 = _mm512_fmadd_ps(a, a, acc0);
      acc1 = _mm512_fmadd_ps(b, b, acc1);
    }
    for (; i < dim; i += 16) {
      const __m512 a = simd::load16(xr + i, simd::first_lanes(dim - i < 16 ? dim - i : 16));
      acc0 = _mm512_fmadd_ps(a, a, acc0);
    }
    const float sum_sq = simd::reduce_add(_mm512_add_ps(acc0, acc1));
    const __m512 scale = _mm512_set1_ps(1.0f / std::sqrt(sum_sq / static_cast<float>(dim) + eps));
    for (i = 0; i < dim; i += 16) {
      const __mmask16 m = simd::first_lanes(dim - i < 16 ? dim - i : 16);
      const __m512 v =
          _mm512_mul_ps(_mm512_mul_ps(simd::load16(xr + i, m), scale), simd::load16(weight + i, m));
      _mm512_mask_storeu_ps(yr + i, m, v);
    }
  }
#else
  portable::rmsnorm(out, x, weight, n_rows, dim, eps);
#endif
}

}  // namespace agentserve::kernels
