// Next-token choice on the GPU: argmax against kernels::argmax_ref (ties, NaN, all-NaN, -inf rows, vocab
// up to Qwen3's), and top-p sampling against a plain reference of engine::Backend's rule (sort, nucleus,
// inverse CDF in id order with u = the first uniform of engine::Rng(seed)) on random rows, exact ties,
// greedy and degenerate rows, and a frequency check over many seeds.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "engine/rng.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cuda/sampling.h"
#include "tests/cuda/device_array.h"

namespace agentserve {
namespace {

using testing::DeviceArray;
namespace kc = kernels::cuda;

constexpr float kInf = std::numeric_limits<float>::infinity();

// engine::Backend::sample_top_p's rule in plain loops, with u and top_p given.
int32_t reference_sample(const float* logits, int vocab, float temperature, float top_p, double u) {
  if (!(temperature >= kc::kGreedyTemperature))
    return static_cast<int32_t>(kernels::argmax_ref(logits, vocab));
  float m = -kInf;
  for (int i = 0; i < vocab; ++i) {
    if (logits[i] > m) m = logits[i];
  }
  if (!(m > -kInf) || m == kInf) return static_cast<int32_t>(kernels::argmax_ref(logits, vocab));
  const float inv_t = 1.0f / temperature;
  std::vector<float> w(static_cast<size_t>(vocab));
  double total = 0.0;
  for (int i = 0; i < vocab; ++i) {
    w[static_cast<size_t>(i)] = logits[i] > -kInf ? std::exp((logits[i] - m) * inv_t) : 0.0f;
    total += w[static_cast<size_t>(i)];
  }
  std::vector<char> kept(static_cast<size_t>(vocab), top_p < 1.0f ? 0 : 1);
  if (top_p < 1.0f) {
    std::vector<int> order(static_cast<size_t>(vocab));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int a, int b) { return w[static_cast<size_t>(a)] > w[static_cast<size_t>(b)]; });
    double running = 0.0;
    for (int id : order) {
      kept[static_cast<size_t>(id)] = 1;
      running += w[static_cast<size_t>(id)];
      if (running >= static_cast<double>(top_p) * total) break;
    }
  }
  double kept_total = 0.0;
  for (int i = 0; i < vocab; ++i)
    kept_total += kept[static_cast<size_t>(i)] ? w[static_cast<size_t>(i)] : 0.0;
  const double target = u * kept_total;
  double running = 0.0;
  int32_t last = -1;
  for (int i = 0; i < vocab; ++i) {
    if (!kept[static_cast<size_t>(i)] || w[static_cast<size_t>(i)] == 0.0f) continue;
    last = i;
    running += w[static_cast<size_t>(i)];
    if (running > target) return i;
  }
  return last;
}

// True when `token` is what the reference gives for (u, top_p) moved by at most `slack`: the GPU's exp and
// summation order differ from the reference's in the last bits, which can only matter at a boundary.
bool near_reference(int32_t token, const float* logits, int vocab, const kc::RowSampling& p, double slack) {
  const double u = engine::Rng(p.seed).uniform();
  for (double du : {0.0, -slack, slack}) {
    for (double dp : {0.0, -slack, slack}) {
      const float top_p = static_cast<float>(p.top_p + dp);
      if (reference_sample(logits, vocab, p.temperature, top_p, std::clamp(u + du, 0.0, 0.999999)) == token)
        return true;
    }
  }
  return false;
}

std::vector<int32_t> run_sampler(const std::vector<float>& logits, const std::vector<kc::RowSampling>& params,
                                 int vocab) {
  DeviceArray<float> d_logits(logits);
  DeviceArray<kc::RowSampling> d_params(params);
  DeviceArray<int32_t> d_out(params.size());
  REQUIRE(kc::sample_rows(d_out.get(), d_logits.get(), d_params.get(), static_cast<int>(params.size()), vocab,
                          nullptr)
              .ok());
  return d_out.download();
}

TEST_CASE("sampling_uniform is the first uniform of engine::Rng for the same seed") {
  for (uint64_t seed = 0; seed < 2000; ++seed) {
    const uint64_t s = seed * 0x9E3779B97F4A7C15ull + (seed << 3);
    REQUIRE(kc::sampling_uniform(s) == engine::Rng(s).uniform());
  }
}

TEST_CASE("argmax rows match argmax_ref with ties, NaN, all-NaN and all -inf rows") {
  for (int vocab : {1, 3, 17, 1000, 151936}) {
    CAPTURE(vocab);
    const int rows = 6;
    std::mt19937 rng(static_cast<uint32_t>(vocab));
    std::normal_distribution<float> normal(0.0f, 4.0f);
    std::vector<float> logits(static_cast<size_t>(rows) * vocab);
    for (float& x : logits) x = normal(rng);
    auto row = [&](int r) { return logits.data() + static_cast<size_t>(r) * vocab; };
    if (vocab >= 3) {  // row 1: the max twice, the lower index must win; row 2: NaNs around the max
      row(1)[vocab - 1] = 100.0f;
      row(1)[vocab / 2] = 100.0f;
      row(2)[0] = NAN;
      row(2)[vocab - 1] = NAN;
    }
    std::fill(row(3), row(3) + vocab, NAN);
    std::fill(row(4), row(4) + vocab, -kInf);
    row(5)[vocab - 1] = kInf;
    DeviceArray<float> d_logits(logits);
    DeviceArray<int32_t> d_out(static_cast<size_t>(rows));
    REQUIRE(kc::argmax_rows(d_out.get(), d_logits.get(), rows, vocab, nullptr).ok());
    const auto got = d_out.download();
    for (int r = 0; r < rows; ++r) {
      CAPTURE(r);
      CHECK(got[static_cast<size_t>(r)] == static_cast<int32_t>(kernels::argmax_ref(row(r), vocab)));
    }
  }
}

TEST_CASE("top-p sampling follows the reference on random rows of small and Qwen3-sized vocabularies") {
  for (int vocab : {1000, 151936}) {
    CAPTURE(vocab);
    const int rows = 40;
    std::mt19937 rng(static_cast<uint32_t>(vocab + 1));
    std::normal_distribution<float> normal(0.0f, 3.0f);
    std::vector<float> logits(static_cast<size_t>(rows) * vocab);
    for (float& x : logits) x = normal(rng);
    const float temperatures[] = {0.3f, 0.7f, 1.0f, 1.5f};
    const float top_ps[] = {0.05f, 0.5f, 0.9f, 0.99f, 1.0f};
    std::vector<kc::RowSampling> params(static_cast<size_t>(rows));
    for (int r = 0; r < rows; ++r) {
      params[static_cast<size_t>(r)] = {temperatures[r % 4], top_ps[r % 5], 7919ull * r + 1};
    }
    const auto got = run_sampler(logits, params, vocab);
    int exact = 0;
    for (int r = 0; r < rows; ++r) {
      CAPTURE(r);
      const float* row = logits.data() + static_cast<size_t>(r) * vocab;
      const kc::RowSampling& p = params[static_cast<size_t>(r)];
      const int32_t token = got[static_cast<size_t>(r)];
      exact += token == reference_sample(row, vocab, p.temperature, p.top_p, engine::Rng(p.seed).uniform())
                   ? 1
                   : 0;
      CHECK(near_reference(token, row, vocab, p, 1e-5));
    }
    CHECK(exact >= rows - 2);
  }
}

TEST_CASE("top-p keeps tied tokens lowest id first, up to the mass it needs") {
  // 100 equal logits, top_p 0.5: exactly ids 0..49 are kept.
  const int vocab = 100;
  std::vector<float> logits;
  std::vector<kc::RowSampling> params;
  for (int r = 0; r < 64; ++r) {
    logits.insert(logits.end(), vocab, 0.25f);
    params.push_back({1.0f, 0.5f, 1000ull + r});
  }
  auto got = run_sampler(logits, params, vocab);
  for (int r = 0; r < 64; ++r) {
    const int32_t token = got[static_cast<size_t>(r)];
    CHECK(token < 50);
    CHECK(token == reference_sample(logits.data(), vocab, 1.0f, 0.5f,
                                    engine::Rng(params[static_cast<size_t>(r)].seed).uniform()));
  }
  // Two tied maxima far above the rest; each holds about half the mass, so top_p 0.3 keeps only the lower id.
  logits.assign(static_cast<size_t>(64) * vocab, -30.0f);
  for (int r = 0; r < 64; ++r) {
    logits[static_cast<size_t>(r) * vocab + 70] = 5.0f;
    logits[static_cast<size_t>(r) * vocab + 20] = 5.0f;
    params[static_cast<size_t>(r)].top_p = 0.3f;
  }
  got = run_sampler(logits, params, vocab);
  for (int32_t token : got) CHECK(token == 20);
}

TEST_CASE("greedy, NaN temperature, NaN logits, rows without a finite logit and an infinite logit") {
  const int vocab = 17;
  std::vector<float> logits(static_cast<size_t>(5) * vocab, 0.0f);
  for (int i = 0; i < vocab; ++i)
    logits[static_cast<size_t>(i)] = static_cast<float>(i % 5);  // max 4 at ids 4, 9, 14
  for (int i = 0; i < vocab; ++i) logits[static_cast<size_t>(vocab + i)] = static_cast<float>(i % 5);
  std::fill(logits.begin() + 2 * vocab, logits.begin() + 3 * vocab, -kInf);
  for (int i = 0; i < vocab; ++i) logits[static_cast<size_t>(3 * vocab + i)] = i == 6 ? 1.0f : NAN;
  logits[static_cast<size_t>(4 * vocab + 11)] = kInf;
  const std::vector<kc::RowSampling> params = {
      {0.0f, 1.0f, 1}, {NAN, 0.5f, 2}, {1.0f, 1.0f, 3}, {1.0f, 1.0f, 4}, {0.8f, 0.9f, 5}};
  const auto got = run_sampler(logits, params, vocab);
  CHECK(got[0] == 4);
  CHECK(got[1] == 4);
  CHECK(got[2] == 0);   // no finite logit: greedy, and all -inf tie at id 0
  CHECK(got[3] == 6);   // the only finite logit
  CHECK(got[4] == 11);  // an infinite logit takes all the mass
}

TEST_CASE("sampled frequencies over many seeds follow the kept probabilities") {
  const int vocab = 4;
  const int rows = 4000;
  const float probs[] = {0.1f, 0.2f, 0.3f, 0.4f};
  for (const float top_p : {1.0f, 0.65f}) {
    CAPTURE(top_p);
    std::vector<float> logits;
    std::vector<kc::RowSampling> params;
    for (int r = 0; r < rows; ++r) {
      for (float p : probs) logits.push_back(std::log(p));
      params.push_back({1.0f, top_p, static_cast<uint64_t>(r) * 31 + 5});
    }
    const auto got = run_sampler(logits, params, vocab);
    int counts[4] = {};
    for (int32_t t : got) {
      REQUIRE(t >= 0);
      REQUIRE(t < vocab);
      ++counts[t];
    }
    // top_p 0.65 keeps 0.4 and 0.3 (0.7 >= 0.65): renormalised 4/7 and 3/7.
    const double want[] = {top_p < 1 ? 0.0 : 0.1, top_p < 1 ? 0.0 : 0.2, top_p < 1 ? 3.0 / 7 : 0.3,
                           top_p < 1 ? 4.0 / 7 : 0.4};
    for (int i = 0; i < vocab; ++i) {
      CAPTURE(i);
      CHECK(std::fabs(counts[i] / static_cast<double>(rows) - want[i]) < 0.03);
    }
  }
}

}  // namespace
}  // namespace agentserve
