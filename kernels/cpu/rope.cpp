#include "kernels/cpu/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>

// transformers computes the tables and q * cos + rotate_half(q) * sin as separate torch ops, each
// rounded to f32. A fused multiply-add would round differently (and C++ compilers fuse a * b + c by
// default), so contraction is off for this file.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace agentserve::kernels {
namespace {

// transformers' find_correction_dim, in double as Python's math module computes it: the dimension whose
// wavelength turns n_rotations times over the original context.
double correction_dim(double n_rotations, int dim, double base, int original_max_position) {
  return dim * std::log(original_max_position / (n_rotations * 2 * std::numbers::pi)) / (2 * std::log(base));
}

}  // namespace

// Tables (float32 where torch is float32): pos_freqs[j] = theta ** (f32(2j) / dim), inv = 1 / pos_freqs.
// YaRN: inv_extrap = 1 / pos_freqs, inv_interp = 1 / (factor * pos_freqs),
//       ramp[j] = clamp((j - low) / (high - low), 0, 1), e = 1 - ramp,
//       inv_freq = inv_interp * (1 - e) + inv_extrap * e.

std::vector<float> rope_inv_freq(int head_dim, double theta, const YarnScaling* yarn) {
  const int half = head_dim / 2;
  std::vector<float> pos_freqs(half);
  const float base = static_cast<float>(theta);
  for (int j = 0; j < half; ++j) {
    const float exponent = static_cast<float>(2 * j) / static_cast<float>(head_dim);
    pos_freqs[j] = std::pow(base, exponent);
  }
  std::vector<float> inv_freq(half);
  if (yarn == nullptr) {
    for (int j = 0; j < half; ++j) inv_freq[j] = 1.0f / pos_freqs[j];
    return inv_freq;
  }
  double low = correction_dim(yarn->beta_fast, head_dim, theta, yarn->original_max_position);
  double high = correction_dim(yarn->beta_slow, head_dim, theta, yarn->original_max_position);
  if (yarn->truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(head_dim - 1));
  if (low == high) high += 0.001;  // transformers' guard against a zero-width ramp
  const float low_f = static_cast<float>(low);
  const float width_f = static_cast<float>(high - low);  // Python subtracts first, torch casts after
  const float factor = static_cast<float>(yarn->factor);
  for (int j = 0; j < half; ++j) {
    const float ramp = std::clamp((static_cast<float>(j) - low_f) / width_f, 0.0f, 1.0f);
    const float extrapolation = 1.0f - ramp;
    const float inv_extrapolation = 1.0f / pos_freqs[j];
    const float inv_interpolation = 1.0f / (factor * pos_freqs[j]);
    const float interpolated = inv_interpolation * (1.0f - extrapolation);
    const float extrapolated = inv_extrapolation * extrapolation;
    inv_freq[j] = interpolated + extrapolated;
  }
  return inv_freq;
}

float rope_attention_factor(const YarnScaling* yarn) {
  if (yarn == nullptr) return 1.0f;
  if (yarn->attention_factor) return static_cast<float>(*yarn->attention_factor);
  if (yarn->factor <= 1.0) return 1.0f;
  return static_cast<float>(0.1 * std::log(yarn->factor) + 1.0);
}

void rope_cos_sin(float* cos, float* sin, const int32_t* positions, int n_tokens, const float* inv_freq,
                  int half_dim, float attention_factor) {
  for (int t = 0; t < n_tokens; ++t) {
    const float position = static_cast<float>(positions[t]);
    for (int j = 0; j < half_dim; ++j) {
      const float angle = position * inv_freq[j];
      const size_t at = static_cast<size_t>(t) * half_dim + j;
      cos[at] = static_cast<float>(std::cos(static_cast<double>(angle))) * attention_factor;
      sin[at] = static_cast<float>(std::sin(static_cast<double>(angle))) * attention_factor;
    }
  }
}

// v'[j] = v[j] cos[j] - v[j + half] sin[j];  v'[j + half] = v[j + half] cos[j] + v[j] sin[j]

void apply_rope_ref(float* x, int n_tokens, int n_heads, int head_dim, size_t token_stride, const float* cos,
                    const float* sin) {
  const int half = head_dim / 2;
  for (int t = 0; t < n_tokens; ++t) {
    const float* c = cos + static_cast<size_t>(t) * half;
    const float* s = sin + static_cast<size_t>(t) * half;
    for (int h = 0; h < n_heads; ++h) {
      float* v = x + t * token_stride + static_cast<size_t>(h) * head_dim;
      for (int j = 0; j < half; ++j) {
        const double a = v[j];
        const double b = v[j + half];
        v[j] = static_cast<float>(a * c[j] - b * s[j]);
        v[j + half] = static_cast<float>(b * c[j] + a * s[j]);
      }
    }
  }
}

void apply_rope(float* x, int n_tokens, int n_heads, int head_dim, size_t token_stride, const float* cos,
                const float* sin) {
  const int half = head_dim / 2;
  for (int t = 0; t < n_tokens; ++t) {
    const float* __restrict c = cos + static_cast<size_t>(t) * half;
    const float* __restrict s = sin + static_cast<size_t>(t) * half;
    for (int h = 0; h < n_heads; ++h) {
      float* __restrict lo = x + t * token_stride + static_cast<size_t>(h) * head_dim;
      float* __restrict hi = lo + half;
      for (int j = 0; j < half; ++j) {
        const float a = lo[j];
        const float b = hi[j];
        lo[j] = a * c[j] - b * s[j];
        hi[j] = b * c[j] + a * s[j];
      }
    }
  }
}

}  // namespace agentserve::kernels
