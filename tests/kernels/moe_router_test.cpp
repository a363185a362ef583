#include "kernels/cpu/moe_router.h"

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace agentserve::kernels {
namespace {

TEST_CASE("moe_route picks the same experts as the reference and close weights") {
  std::mt19937 rng(31);
  struct Case {
    int n_tokens, n_experts, top_k;
  };
  // Qwen3-MoE is 128 experts, top 8; odd expert counts exercise the 16-lane tail.
  for (const Case& c :
       {Case{1, 1, 1}, Case{3, 5, 2}, Case{7, 17, 3}, Case{17, 128, 8}, Case{4, 129, 129}, Case{2, 64, 1}}) {
    for (bool normalize : {false, true}) {
      CAPTURE(c.n_experts);
      CAPTURE(c.top_k);
      CAPTURE(normalize);
      std::normal_distribution<float> nd(0.0f, 3.0f);
      std::vector<float> logits(static_cast<size_t>(c.n_tokens) * c.n_experts);
      for (auto& x : logits) x = nd(rng);
      const size_t out = static_cast<size_t>(c.n_tokens) * c.top_k;
      std::vector<int32_t> ids(out), ref_ids(out);
      std::vector<float> w(out), ref_w(out);
      moe_route_ref(ref_ids.data(), ref_w.data(), logits.data(), c.n_tokens, c.n_experts, c.top_k, normalize);
      moe_route(ids.data(), w.data(), logits.data(), c.n_tokens, c.n_experts, c.top_k, normalize);
      CHECK(ids == ref_ids);
      // exp within 2 ulp, the f32 sum over n_experts terms within n_experts * 2^-24 relative (positive
      // terms), a division: relative error below (n_experts + 8) * 2^-24, twice with renormalisation.
      const double tol = 2 * (c.n_experts + 8) * std::ldexp(1.0, -24);
      for (size_t i = 0; i < out; ++i) CHECK(std::fabs(w[i] - ref_w[i]) <= tol * ref_w[i] + 1e-30);
      for (int t = 0; t < c.n_tokens; ++t) {
        double sum = 0;
        for (int k = 0; k < c.top_k; ++k) {
          sum += w[static_cast<size_t>(t) * c.top_k + k];
          if (k > 0)
            CHECK(w[static_cast<size_t>(t) * c.top_k + k] <= w[static_cast<size_t>(t) * c.top_k + k - 1]);
        }
        if (normalize || c.top_k == c.n_experts) CHECK(sum == doctest::Approx(1.0).epsilon(1e-5));
        if (!normalize) CHECK(sum <= 1.0 + 1e-5);
      }
    }
  }
}

TEST_CASE("moe_route breaks ties toward the lower expert index") {
  // Experts 2, 5 and 9 tie for first; 0 and 7 tie below them.
  std::vector<float> logits(12, -1.0f);
  logits[9] = logits[5] = logits[2] = 4.0f;
  logits[7] = logits[0] = 1.0f;
  std::vector<int32_t> ids(4), ref_ids(4);
  std::vector<float> w(4), ref_w(4);
  moe_route(ids.data(), w.data(), logits.data(), 1, 12, 4, true);
  moe_route_ref(ref_ids.data(), ref_w.data(), logits.data(), 1, 12, 4, true);
  CHECK(ids == std::vector<int32_t>{2, 5, 9, 0});
  CHECK(ref_ids == ids);
  CHECK(w[0] == doctest::Approx(w[1]));
  CHECK(w[1] == doctest::Approx(w[2]));
}

TEST_CASE("moe_route softmax is shift invariant and survives large logits") {
  std::vector<float> logits = {1000.0f, 999.0f, 998.0f, -1000.0f};
  std::vector<int32_t> ids(2);
  std::vector<float> w(2);
  moe_route(ids.data(), w.data(), logits.data(), 1, 4, 2, false);
  CHECK(ids == std::vector<int32_t>{0, 1});
  const double z = 1 + std::exp(-1.0) + std::exp(-2.0);
  CHECK(w[0] == doctest::Approx(1 / z).epsilon(1e-6));
  CHECK(w[1] == doctest::Approx(std::exp(-1.0) / z).epsilon(1e-6));
}

}  // namespace
}  // namespace agentserve::kernels
