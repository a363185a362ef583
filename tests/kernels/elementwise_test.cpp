#include "kernels/cpu/elementwise.h"

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "base/bf16.h"

namespace agentserve::kernels {
namespace {

const std::vector<size_t> kLengths = {0, 1, 3, 15, 16, 17, 33, 4097};

std::vector<float> random_vector(size_t n, std::mt19937& rng, float lo, float hi) {
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = u(rng);
  return v;
}

using SiluMulFn = void (*)(float*, const float*, const float*, size_t);

void check_silu_mul(SiluMulFn fn) {
  std::mt19937 rng(21);
  for (size_t n : kLengths) {
    CAPTURE(n);
    // Gates far into both tails: silu saturates to x for large x and to -0 for very negative x.
    std::vector<float> gate = random_vector(n, rng, -30.0f, 30.0f);
    std::vector<float> up = random_vector(n, rng, -2.0f, 2.0f);
    std::vector<float> ref(n), out(n);
    silu_mul_ref(ref.data(), gate.data(), up.data(), n);
    fn(out.data(), gate.data(), up.data(), n);
    // exp is within 2 ulp, then a sum, a division and a product each round once: 8 ulp covers it.
    // Tiny results (|silu| < 1e-30 at gate < -70) are compared absolutely.
    for (size_t i = 0; i < n; ++i) {
      CHECK(std::fabs(out[i] - ref[i]) <= 8 * std::ldexp(1.0, -24) * std::fabs(ref[i]) + 1e-30);
    }
    // out may alias gate.
    std::vector<float> aliased = gate;
    fn(aliased.data(), aliased.data(), up.data(), n);
    CHECK(aliased == out);
  }
}

TEST_CASE("silu_mul matches the double reference across the gate range, aliasing allowed") {
  check_silu_mul(&silu_mul);
}

TEST_CASE("portable silu_mul matches the double reference") {
  check_silu_mul(&portable::silu_mul);
}

TEST_CASE("silu_mul saturates cleanly at extreme gates") {
  std::vector<float> gate = {-1000.0f, -90.0f, 0.0f, 90.0f, 1000.0f};
  std::vector<float> up(gate.size(), 1.0f), out(gate.size());
  silu_mul(out.data(), gate.data(), up.data(), gate.size());
  CHECK(std::fabs(out[0]) < 1e-30f);
  CHECK(std::fabs(out[1]) < 1e-30f);
  CHECK(out[2] == 0.0f);
  CHECK(out[3] == 90.0f);
  CHECK(out[4] == 1000.0f);
}

TEST_CASE("add_inplace and axpy accumulate elementwise") {
  std::mt19937 rng(22);
  for (size_t n : kLengths) {
    CAPTURE(n);
    std::vector<float> a = random_vector(n, rng, -1, 1), b = random_vector(n, rng, -1, 1);
    std::vector<float> sum = a;
    add_inplace(sum.data(), b.data(), n);
    for (size_t i = 0; i < n; ++i) CHECK(sum[i] == a[i] + b[i]);
    std::vector<float> ref = a, out = a;
    axpy_ref(ref.data(), 0.37f, b.data(), n);
    axpy(out.data(), 0.37f, b.data(), n);
    // The reference rounds once from double; the fast one rounds once (FMA) or twice: within 1 ulp of
    // the larger operand.
    for (size_t i = 0; i < n; ++i) {
      CHECK(std::fabs(out[i] - ref[i]) <= std::ldexp(1.0, -23) * (std::fabs(a[i]) + std::fabs(0.37f * b[i])));
    }
  }
}

TEST_CASE("convert_to_f32 copies f32 and widens bf16 exactly") {
  std::mt19937 rng(23);
  for (size_t n : kLengths) {
    std::vector<float> src = random_vector(n, rng, -100, 100), out(n);
    convert_to_f32(out.data(), src.data(), DType::kF32, n);
    CHECK(out == src);
    std::vector<bf16> b(n);
    for (size_t i = 0; i < n; ++i) b[i] = float_to_bf16(src[i]);
    convert_to_f32(out.data(), b.data(), DType::kBF16, n);
    for (size_t i = 0; i < n; ++i) CHECK(out[i] == bf16_to_float(b[i]));
  }
}

using ArgmaxFn = size_t (*)(const float*, size_t);

void check_argmax(ArgmaxFn fn) {
  std::mt19937 rng(24);
  for (size_t n : {size_t{1}, size_t{3}, size_t{17}, size_t{4097}, size_t{151936}}) {
    CAPTURE(n);
    std::vector<float> x = random_vector(n, rng, -10, 10);
    CHECK(fn(x.data(), n) == argmax_ref(x.data(), n));
    // Ties go to the lowest index, wherever the tie sits relative to 16-lane boundaries.
    const size_t first = n / 3, second = n - 1;
    x[first] = 50.0f;
    x[second] = 50.0f;
    CHECK(fn(x.data(), n) == first);
    CHECK(argmax_ref(x.data(), n) == first);
  }
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> with_nan = {nan, 1.0f, nan, 3.0f, 2.0f};
  CHECK(fn(with_nan.data(), with_nan.size()) == 3);
  std::vector<float> all_neg_inf(20, -inf);
  all_neg_inf[5] = nan;
  CHECK(fn(all_neg_inf.data(), all_neg_inf.size()) == 0);
  CHECK(argmax_ref(all_neg_inf.data(), all_neg_inf.size()) == 0);
  CHECK(fn(with_nan.data(), 0) == 0);
}

TEST_CASE("argmax picks the largest value, the lowest index on ties, and never a NaN") {
  check_argmax(&argmax);
}

TEST_CASE("portable argmax picks the largest value, the lowest index on ties, and never a NaN") {
  check_argmax(&portable::argmax);
}

}  // namespace
}  // namespace agentserve::kernels
