#include "kernels/cpu/rmsnorm.h"

#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <vector>

namespace agentserve::kernels {
namespace {

std::vector<float> random_vector(size_t n, std::mt19937& rng, float lo, float hi) {
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = u(rng);
  return v;
}

// Relative to |x_i * weight_i| * scale: the f32 sum of squares of `dim` positive terms errs by at most
// (dim + 16) * 2^-24 relative (no cancellation), the square root halves that, and the two products and
// the reciprocal add about 4 ulp.
double tolerance(int dim) {
  return (dim + 16) * std::ldexp(1.0, -24) + 4 * std::ldexp(1.0, -24);
}

using RmsnormFn = void (*)(float*, const float*, const float*, int, int, float);

void check_against_ref(RmsnormFn fn) {
  std::mt19937 rng(11);
  for (int dim : {1, 3, 16, 17, 31, 32, 33, 128, 4097}) {
    for (int rows : {1, 3, 17}) {
      CAPTURE(dim);
      CAPTURE(rows);
      std::vector<float> x = random_vector(static_cast<size_t>(rows) * dim, rng, -3.0f, 3.0f);
      std::vector<float> w = random_vector(static_cast<size_t>(dim), rng, 0.5f, 1.5f);
      std::vector<float> ref(x.size()), out(x.size());
      rmsnorm_ref(ref.data(), x.data(), w.data(), rows, dim, 1e-6f);
      fn(out.data(), x.data(), w.data(), rows, dim, 1e-6f);
      double worst = 0;
      for (size_t i = 0; i < x.size(); ++i) {
        const double magnitude = std::fabs(static_cast<double>(ref[i])) + 1e-30;
        worst = std::max(worst, std::fabs(static_cast<double>(out[i]) - ref[i]) / magnitude);
      }
      CHECK(worst <= tolerance(dim));
      // In place (out aliasing x) gives the same bits.
      std::vector<float> in_place = x;
      fn(in_place.data(), in_place.data(), w.data(), rows, dim, 1e-6f);
      CHECK(in_place == out);
    }
  }
}

TEST_CASE("rmsnorm matches the double reference on odd shapes and works in place") {
  check_against_ref(&rmsnorm);
}

TEST_CASE("portable rmsnorm matches the double reference on odd shapes and works in place") {
  check_against_ref(&portable::rmsnorm);
}

TEST_CASE("rmsnorm of a constant row is the weight, and eps keeps a zero row at zero") {
  const int dim = 37;
  std::vector<float> x(dim, -2.5f), w(dim), out(dim);
  for (int i = 0; i < dim; ++i) w[i] = 0.1f * i;
  rmsnorm(out.data(), x.data(), w.data(), 1, dim, 0.0f);
  for (int i = 0; i < dim; ++i) CHECK(out[i] == doctest::Approx(-w[i]).epsilon(1e-6));
  std::vector<float> zeros(dim, 0.0f);
  rmsnorm(out.data(), zeros.data(), w.data(), 1, dim, 1e-6f);
  for (float v : out) CHECK(v == 0.0f);
}

TEST_CASE("rmsnorm treats each row on its own (per-head q/k norm layout)") {
  // Two heads of head_dim 4 with very different scales: each normalises to unit RMS independently.
  std::vector<float> x = {1, 2, 3, 4, 100, 200, 300, 400};
  std::vector<float> w(4, 1.0f), out(8);
  rmsnorm(out.data(), x.data(), w.data(), 2, 4, 0.0f);
  for (int i = 0; i < 4; ++i) CHECK(out[i] == doctest::Approx(out[i + 4]).epsilon(1e-6));
  double sum_sq = 0;
  for (int i = 0; i < 4; ++i) sum_sq += out[i] * out[i];
  CHECK(sum_sq / 4 == doctest::Approx(1.0).epsilon(1e-6));
}

}  // namespace
}  // namespace agentserve::kernels
