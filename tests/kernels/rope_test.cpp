#include "kernels/cpu/rope.h"

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace agentserve::kernels {
namespace {

constexpr double kUlp = 1.0 / (1 << 23);  // relative spacing of f32 near 1, an upper bound on one ulp

TEST_CASE("plain rope inverse frequencies follow 1 / theta^(2j/d) in f32") {
  for (int head_dim : {2, 6, 64, 96, 128}) {
    for (double theta : {10000.0, 1000000.0}) {
      CAPTURE(head_dim);
      CAPTURE(theta);
      const std::vector<float> inv = rope_inv_freq(head_dim, theta, nullptr);
      REQUIRE(inv.size() == static_cast<size_t>(head_dim / 2));
      CHECK(inv[0] == 1.0f);
      for (int j = 0; j < head_dim / 2; ++j) {
        const double exact = 1.0 / std::pow(theta, 2.0 * j / head_dim);
        // The f32 exponent 2j/d is off by up to half an ulp, which pow magnifies by ln(theta); pow and
        // the reciprocal add about an ulp each.
        CHECK(std::fabs(inv[j] - exact) <= (2 + std::log(theta)) * kUlp * exact);
      }
    }
  }
}

TEST_CASE(
    "yarn with Qwen3's settings keeps high frequencies, divides low ones by the factor, ramps between") {
  const int head_dim = 128;
  const double theta = 1000000.0;
  YarnScaling yarn;
  yarn.factor = 4.0;
  yarn.original_max_position = 32768;
  const std::vector<float> plain = rope_inv_freq(head_dim, theta, nullptr);
  const std::vector<float> scaled = rope_inv_freq(head_dim, theta, &yarn);
  // find_correction_dim(32) = 23.6 -> floor 23, find_correction_dim(1) = 39.65 -> ceil 40.
  const int low = 23, high = 40;
  for (int j = 0; j < head_dim / 2; ++j) {
    CAPTURE(j);
    if (j <= low) {
      CHECK(scaled[j] == plain[j]);  // extrapolation: weight exactly 1
    } else if (j >= high) {
      CHECK(scaled[j] == plain[j] * 0.25f);  // interpolation: 1 / (4 p) rounds like (1 / p) / 4
    } else {
      const double ramp = static_cast<double>(j - low) / (high - low);
      const double expected = plain[j] * (0.25 * ramp + (1 - ramp));
      CHECK(std::fabs(scaled[j] - expected) <= 4 * kUlp * expected);
    }
  }
  CHECK(rope_attention_factor(&yarn) == doctest::Approx(0.1 * std::log(4.0) + 1.0).epsilon(1e-7));
}

TEST_CASE("yarn options: explicit attention factor, no truncation, and factor 1") {
  YarnScaling yarn;
  yarn.factor = 4.0;
  yarn.original_max_position = 32768;
  yarn.attention_factor = 1.5;
  CHECK(rope_attention_factor(&yarn) == 1.5f);
  CHECK(rope_attention_factor(nullptr) == 1.0f);
  YarnScaling unit;
  unit.factor = 1.0;
  unit.original_max_position = 4096;
  CHECK(rope_attention_factor(&unit) == 1.0f);

  // Without truncation the ramp starts at 23.6, so dim 23 is still pure extrapolation but dim 24 is
  // already blended a little less than with the truncated range [23, 40].
  YarnScaling exact = yarn;
  exact.truncate = false;
  const std::vector<float> truncated = rope_inv_freq(128, 1e6, &yarn);
  const std::vector<float> untruncated = rope_inv_freq(128, 1e6, &exact);
  CHECK(untruncated[23] == truncated[23]);
  CHECK(untruncated[24] > truncated[24]);
  CHECK(untruncated[63] == truncated[63]);
}

TEST_CASE("rope angles are the f32 product of position and frequency, as in transformers") {
  const std::vector<float> inv = rope_inv_freq(128, 1e6, nullptr);
  const int32_t positions[] = {0, 1, 7, 100000, 131071};
  const int half = 64;
  std::vector<float> c(5 * half), s(5 * half);
  rope_cos_sin(c.data(), s.data(), positions, 5, inv.data(), half, 1.0f);
  for (int j = 0; j < half; ++j) {
    CHECK(c[j] == 1.0f);
    CHECK(s[j] == 0.0f);
  }
  bool f32_angle_matters = false;
  for (int t = 0; t < 5; ++t) {
    for (int j = 0; j < half; ++j) {
      const float angle = static_cast<float>(positions[t]) * inv[j];
      CHECK(c[t * half + j] == static_cast<float>(std::cos(static_cast<double>(angle))));
      CHECK(s[t * half + j] == static_cast<float>(std::sin(static_cast<double>(angle))));
      const double exact_angle = static_cast<double>(positions[t]) * inv[j];
      if (std::fabs(std::cos(exact_angle) - c[t * half + j]) > 1e-4) f32_angle_matters = true;
    }
  }
  // At 100k tokens the f32 rounding of the angle moves cos by more than 1e-4: the rounding is part of
  // the model's behaviour and must match.
  CHECK(f32_angle_matters);

  std::vector<float> scaled_c(half), scaled_s(half);
  rope_cos_sin(scaled_c.data(), scaled_s.data(), positions + 3, 1, inv.data(), half, 1.25f);
  for (int j = 0; j < half; ++j) {
    CHECK(scaled_c[j] == c[3 * half + j] * 1.25f);
    CHECK(scaled_s[j] == s[3 * half + j] * 1.25f);
  }
}

struct RopeInput {
  int n_tokens, n_heads, head_dim;
  size_t stride;
  std::vector<float> x, cos, sin;
};

RopeInput random_input(int n_tokens, int n_heads, int head_dim, size_t extra_stride, std::mt19937& rng) {
  RopeInput in{n_tokens, n_heads, head_dim, static_cast<size_t>(n_heads) * head_dim + extra_stride,
               {},       {},      {}};
  std::uniform_real_distribution<float> u(-2.0f, 2.0f);
  in.x.resize(in.stride * n_tokens);
  for (auto& v : in.x) v = u(rng);
  std::vector<int32_t> positions(n_tokens);
  for (auto& p : positions) p = static_cast<int32_t>(rng() % 200000);
  const std::vector<float> inv = rope_inv_freq(head_dim, 1e6, nullptr);
  in.cos.resize(static_cast<size_t>(n_tokens) * head_dim / 2);
  in.sin.resize(in.cos.size());
  rope_cos_sin(in.cos.data(), in.sin.data(), positions.data(), n_tokens, inv.data(), head_dim / 2, 1.1f);
  return in;
}

TEST_CASE("apply_rope matches the reference and leaves the stride padding alone") {
  std::mt19937 rng(41);
  for (int n_tokens : {1, 3, 17}) {
    for (int n_heads : {1, 3, 4}) {
      for (int head_dim : {2, 6, 34, 128}) {
        for (size_t extra : {size_t{0}, size_t{5}}) {
          CAPTURE(n_tokens);
          CAPTURE(n_heads);
          CAPTURE(head_dim);
          CAPTURE(extra);
          RopeInput in = random_input(n_tokens, n_heads, head_dim, extra, rng);
          std::vector<float> ref = in.x, out = in.x;
          apply_rope_ref(ref.data(), n_tokens, n_heads, head_dim, in.stride, in.cos.data(), in.sin.data());
          apply_rope(out.data(), n_tokens, n_heads, head_dim, in.stride, in.cos.data(), in.sin.data());
          // Two products and a sum rounded in f32: within 2 ulp of |a c| + |b s|.
          for (size_t i = 0; i < out.size(); ++i) CHECK(std::fabs(out[i] - ref[i]) <= 2 * kUlp * 2 * 2.2);
          for (int t = 0; t < n_tokens; ++t) {
            for (size_t i = static_cast<size_t>(n_heads) * head_dim; i < in.stride; ++i) {
              CHECK(out[t * in.stride + i] == in.x[t * in.stride + i]);
            }
          }
        }
      }
    }
  }
}

TEST_CASE("apply_rope rounds each product and the sum separately, like q * cos + rotate_half(q) * sin") {
  std::mt19937 rng(42);
  RopeInput in = random_input(5, 2, 64, 0, rng);
  std::vector<float> out = in.x;
  apply_rope(out.data(), 5, 2, 64, in.stride, in.cos.data(), in.sin.data());
  for (int t = 0; t < 5; ++t) {
    for (int h = 0; h < 2; ++h) {
      for (int j = 0; j < 32; ++j) {
        const size_t lo = t * in.stride + h * 64 + j;
        const float c = in.cos[t * 32 + j], s = in.sin[t * 32 + j];
        // volatile forces the rounding after each product, as two separate torch ops do.
        volatile float a_c = in.x[lo] * c, b_s = in.x[lo + 32] * s, b_c = in.x[lo + 32] * c,
                       a_s = in.x[lo] * s;
        CHECK(out[lo] == a_c - b_s);
        CHECK(out[lo + 32] == b_c + a_s);
      }
    }
  }
}

TEST_CASE("after rope, q . k depends only on the distance between their positions") {
  std::mt19937 rng(43);
  const int head_dim = 128;
  const std::vector<float> inv = rope_inv_freq(head_dim, 1e6, nullptr);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> q(head_dim), k(head_dim);
  for (auto& v : q) v = u(rng);
  for (auto& v : k) v = u(rng);
  auto rotated_dot = [&](int32_t pq, int32_t pk) {
    std::vector<float> a = q, b = k, c(head_dim / 2), s(head_dim / 2);
    rope_cos_sin(c.data(), s.data(), &pq, 1, inv.data(), head_dim / 2, 1.0f);
    apply_rope(a.data(), 1, 1, head_dim, head_dim, c.data(), s.data());
    rope_cos_sin(c.data(), s.data(), &pk, 1, inv.data(), head_dim / 2, 1.0f);
    apply_rope(b.data(), 1, 1, head_dim, head_dim, c.data(), s.data());
    double dot = 0;
    for (int i = 0; i < head_dim; ++i) dot += static_cast<double>(a[i]) * b[i];
    return dot;
  };
  // The f32 angles at position ~1000 are rounded to 2^-14, which moves the dot by up to ~1e-3.
  const double base = rotated_dot(10, 3);
  CHECK(std::fabs(rotated_dot(110, 103) - base) < 5e-3);
  CHECK(std::fabs(rotated_dot(1010, 1003) - base) < 5e-3);
  CHECK(std::fabs(rotated_dot(10, 4) - base) > 0.1);
}

}  // namespace
}  // namespace agentserve::kernels
