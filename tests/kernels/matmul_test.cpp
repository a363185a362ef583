#include "kernels/cpu/matmul.h"

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace agentserve::kernels {
namespace {

struct Shape {
  int n_tokens, in_dim, out_dim;
};

// Odd shapes on purpose: partial register tiles (rows % 4, tokens % 4 / % 12), k tails (% 16, % 32,
// % 128), one-element dims, and a long 4097 dot product.
const std::vector<Shape> kShapes = {
    {1, 1, 1},     {1, 3, 5},     {1, 17, 3},   {2, 16, 4},     {3, 31, 7},    {4, 128, 9},  {5, 129, 17},
    {7, 33, 33},   {8, 64, 32},   {9, 100, 31}, {12, 256, 64},  {13, 257, 65}, {17, 17, 17}, {25, 300, 40},
    {33, 129, 67}, {1, 4097, 19}, {3, 4097, 6}, {16, 4097, 33}, {64, 96, 50}};

struct Data {
  std::vector<float> x;
  std::vector<float> w_f32;
  std::vector<bf16> w_bf16;
  std::vector<float> w_bf16_as_f32;  // the BF16 weights widened, for error bounds
};

Data random_data(const Shape& s, uint32_t seed, bool small_integers = false) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> real(-1.0f, 1.0f);
  std::uniform_int_distribution<int> integer(-3, 3);
  auto draw = [&] { return small_integers ? static_cast<float>(integer(rng)) : real(rng); };
  Data d;
  d.x.resize(static_cast<size_t>(s.n_tokens) * s.in_dim);
  d.w_f32.resize(static_cast<size_t>(s.out_dim) * s.in_dim);
  for (auto& v : d.x) v = draw();
  for (auto& v : d.w_f32) v = draw();
  for (float v : d.w_f32) {
    d.w_bf16.push_back(float_to_bf16(v));
    d.w_bf16_as_f32.push_back(bf16_to_float(d.w_bf16.back()));
  }
  return d;
}

// Largest |y - ref| / sum_i |x_i w_i| over the outputs in the row range.
double normalised_error(const std::vector<float>& y, const std::vector<float>& ref,
                        const std::vector<float>& x, const std::vector<float>& w, const Shape& s,
                        int row_begin, int row_end) {
  double worst = 0;
  for (int t = 0; t < s.n_tokens; ++t) {
    for (int o = row_begin; o < row_end; ++o) {
      double mag = 0;
      for (int i = 0; i < s.in_dim; ++i) {
        mag += std::fabs(static_cast<double>(x[static_cast<size_t>(t) * s.in_dim + i]) *
                         w[static_cast<size_t>(o) * s.in_dim + i]);
      }
      const size_t at = static_cast<size_t>(t) * s.out_dim + o;
      worst = std::max(worst, std::fabs(static_cast<double>(y[at]) - ref[at]) / std::max(mag, 1e-30));
    }
  }
  return worst;
}

// Rigorous bound for an f32 sum of in_dim products each rounded at most once (FMA) in any order:
// |err| <= gamma_n * sum|x_i w_i| with gamma_n ~ n * 2^-24; +16 covers the final lane reduction.
double f32_dot_tolerance(int in_dim) {
  return (in_dim + 16) * std::ldexp(1.0, -24);
}

using MatmulFn = void (*)(float*, const float*, const void*, DType, int, int, int, int, int);

void check_against_ref(MatmulFn fn, DType dt) {
  uint32_t seed = 1;
  for (const Shape& s : kShapes) {
    CAPTURE(s.n_tokens);
    CAPTURE(s.in_dim);
    CAPTURE(s.out_dim);
    Data d = random_data(s, seed++);
    const void* w = dt == DType::kF32 ? static_cast<const void*>(d.w_f32.data()) : d.w_bf16.data();
    const std::vector<float>& w_values = dt == DType::kF32 ? d.w_f32 : d.w_bf16_as_f32;
    std::vector<float> ref(static_cast<size_t>(s.n_tokens) * s.out_dim);
    matmul_ref(ref.data(), d.x.data(), w, dt, s.n_tokens, s.in_dim, s.out_dim);

    std::vector<float> y(ref.size(), 0.0f);
    fn(y.data(), d.x.data(), w, dt, s.n_tokens, s.in_dim, s.out_dim, 0, s.out_dim);
    CHECK(normalised_error(y, ref, d.x, w_values, s, 0, s.out_dim) <= f32_dot_tolerance(s.in_dim));

    // A sub-range computes exactly its rows and leaves every other column alone.
    const int begin = s.out_dim / 3;
    const int end = std::max(begin, s.out_dim - s.out_dim / 4);
    std::vector<float> part(ref.size(), 12345.0f);
    fn(part.data(), d.x.data(), w, dt, s.n_tokens, s.in_dim, s.out_dim, begin, end);
    CHECK(normalised_error(part, ref, d.x, w_values, s, begin, end) <= f32_dot_tolerance(s.in_dim));
    int touched_outside = 0;
    for (int t = 0; t < s.n_tokens; ++t) {
      for (int o = 0; o < s.out_dim; ++o) {
        if ((o < begin || o >= end) && part[static_cast<size_t>(t) * s.out_dim + o] != 12345.0f)
          ++touched_outside;
      }
    }
    CHECK(touched_outside == 0);
  }
}

// With small integers every product and partial sum is exact in f32, so any indexing slip (a skipped
// or repeated element) shows as an inequality no tolerance can hide.
void check_exact_on_integers(MatmulFn fn, DType dt) {
  uint32_t seed = 100;
  for (const Shape& s : kShapes) {
    CAPTURE(s.n_tokens);
    CAPTURE(s.in_dim);
    CAPTURE(s.out_dim);
    Data d = random_data(s, seed++, /*small_integers=*/true);
    const void* w = dt == DType::kF32 ? static_cast<const void*>(d.w_f32.data()) : d.w_bf16.data();
    std::vector<float> ref(static_cast<size_t>(s.n_tokens) * s.out_dim);
    std::vector<float> y(ref.size());
    matmul_ref(ref.data(), d.x.data(), w, dt, s.n_tokens, s.in_dim, s.out_dim);
    fn(y.data(), d.x.data(), w, dt, s.n_tokens, s.in_dim, s.out_dim, 0, s.out_dim);
    CHECK(y == ref);
  }
}

TEST_CASE("matmul matches the double reference within the f32 dot-product bound (f32 weights)") {
  check_against_ref(&matmul, DType::kF32);
}

TEST_CASE("matmul matches the double reference within the f32 dot-product bound (bf16 weights)") {
  check_against_ref(&matmul, DType::kBF16);
}

TEST_CASE("matmul is exact on small integers for every path and dtype") {
  check_exact_on_integers(&matmul, DType::kF32);
  check_exact_on_integers(&matmul, DType::kBF16);
}

TEST_CASE("portable matmul matches the reference too") {
  check_against_ref(&portable::matmul, DType::kF32);
  check_against_ref(&portable::matmul, DType::kBF16);
  check_exact_on_integers(&portable::matmul, DType::kBF16);
}

using Bf16MatmulFn = void (*)(float*, const bf16*, const bf16*, int, int, int, int, int);

void check_bf16_activations(Bf16MatmulFn fn) {
  uint32_t seed = 7;
  for (const Shape& s : kShapes) {
    CAPTURE(s.n_tokens);
    CAPTURE(s.in_dim);
    CAPTURE(s.out_dim);
    Data d = random_data(s, seed++);
    std::vector<bf16> xb(d.x.size());
    convert_activations_bf16(xb.data(), d.x.data(), d.x.size());
    std::vector<float> x_rounded(d.x.size());
    for (size_t i = 0; i < xb.size(); ++i) {
      // The conversion rounds to nearest even, exactly as base/bf16.h does.
      REQUIRE(xb[i].bits == float_to_bf16(d.x[i]).bits);
      x_rounded[i] = bf16_to_float(xb[i]);
    }
    std::vector<float> ref(static_cast<size_t>(s.n_tokens) * s.out_dim);
    matmul_ref(ref.data(), x_rounded.data(), d.w_bf16.data(), DType::kBF16, s.n_tokens, s.in_dim, s.out_dim);
    std::vector<float> y(ref.size(), 12345.0f);
    const int begin = s.out_dim / 3;
    fn(y.data(), xb.data(), d.w_bf16.data(), s.n_tokens, s.in_dim, s.out_dim, begin, s.out_dim);
    // Against the oracle on the rounded activations the products are exact, so the f32 sum bound holds.
    CHECK(normalised_error(y, ref, x_rounded, d.w_bf16_as_f32, s, begin, s.out_dim) <=
          f32_dot_tolerance(s.in_dim));
    if (begin > 0) CHECK(y[0] == 12345.0f);
    // Against the unrounded activations it is BF16-accurate: each x_i moved by at most 2^-8 |x_i| (BF16 unit
    // roundoff).
    std::vector<float> ref_exact(ref.size());
    matmul_ref(ref_exact.data(), d.x.data(), d.w_bf16.data(), DType::kBF16, s.n_tokens, s.in_dim, s.out_dim);
    CHECK(normalised_error(y, ref_exact, d.x, d.w_bf16_as_f32, s, begin, s.out_dim) <=
          std::ldexp(1.0, -8) + f32_dot_tolerance(s.in_dim));
  }
}

TEST_CASE("bf16-activation matmul matches the reference on rounded activations") {
  check_bf16_activations(&matmul_bf16_activations);
}

TEST_CASE("portable bf16-activation matmul matches the reference on rounded activations") {
  check_bf16_activations(&portable::matmul_bf16_activations);
}

TEST_CASE("bf16 weights multiply exactly as their widened f32 values") {
  const Shape s{5, 77, 9};
  Data d = random_data(s, 42);
  std::vector<float> via_bf16(static_cast<size_t>(s.n_tokens) * s.out_dim);
  std::vector<float> via_f32(via_bf16.size());
  matmul(via_bf16.data(), d.x.data(), d.w_bf16.data(), DType::kBF16, s.n_tokens, s.in_dim, s.out_dim, 0,
         s.out_dim);
  matmul(via_f32.data(), d.x.data(), d.w_bf16_as_f32.data(), DType::kF32, s.n_tokens, s.in_dim, s.out_dim, 0,
         s.out_dim);
  CHECK(via_bf16 == via_f32);
}

}  // namespace
}  // namespace agentserve::kernels
