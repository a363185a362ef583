// sample() cost per token on Qwen3's 151,936-entry vocabulary, for each path the sampler takes, against a
// plain reference that sorts the whole vocabulary (what a naive top-p does). sample() uses the logits as
// scratch, so each call gets a fresh copy; the copy's own cost is measured and subtracted.
//
//   sampler_bench [iterations] [case name filter]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "engine/rng.h"
#include "engine/sampler.h"

namespace {

using agentserve::engine::Rng;
using agentserve::engine::Sampler;
using agentserve::engine::SamplingParams;
using Clock = std::chrono::steady_clock;

constexpr int kVocab = 151936;

std::vector<float> normal_logits(uint64_t seed, float scale, float boost) {
  Rng rng(seed);
  std::vector<float> x(kVocab);
  for (float& v : x) {
    const double u1 = 1.0 - rng.uniform(), u2 = rng.uniform();
    v = static_cast<float>(scale * std::sqrt(-2.0 * std::log(u1)) * std::cos(2 * M_PI * u2));
  }
  // A model's next-token distribution is peaked: a handful of tokens far above the rest.
  for (int i = 0; i < 8; ++i) x[(i * 7919 + 13) % kVocab] += boost - static_cast<float>(i);
  return x;
}

std::string cpu_name() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown CPU";
}

template <typename F>
double micros_per_call(int iterations, const std::vector<float>& logits, std::vector<float>& scratch,
                       F&& call) {
  for (int i = 0; i < 3; ++i) {
    scratch = logits;
    call();
  }
  const auto t0 = Clock::now();
  for (int i = 0; i < iterations; ++i) {
    std::copy(logits.begin(), logits.end(), scratch.begin());
    call();
  }
  return std::chrono::duration<double, std::micro>(Clock::now() - t0).count() / iterations;
}

// The naive way: softmax, full sort, top-p cut, draw. The yardstick for the partial-selection paths.
int32_t reference_top_p(const std::vector<float>& x, double top_p, Rng& rng, std::vector<int32_t>& order) {
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return x[a] > x[b]; });
  const double m = x[order[0]];
  double z = 0;
  for (float v : x) z += std::exp(v - m);
  double cum = 0;
  size_t keep = 0;
  while (keep < order.size() && cum < top_p * z) cum += std::exp(x[order[keep++]] - m);
  const double target = rng.uniform() * cum;
  double run = 0;
  for (size_t i = 0; i < keep; ++i) {
    run += std::exp(x[order[i]] - m);
    if (run > target) return order[i];
  }
  return order[keep - 1];
}

}  // namespace

int main(int argc, char** argv) {
  const int iterations = argc > 1 ? std::max(1, std::atoi(argv[1])) : 300;
  std::printf("sampler_bench: vocab %d, %d iterations, %s, %u hardware threads (bench uses 1)\n", kVocab,
              iterations, cpu_name().c_str(), std::thread::hardware_concurrency());
  const std::vector<float> peaked = normal_logits(1, 2.0f, 18.0f);
  const std::vector<float> flat = normal_logits(2, 1.0f, 0.0f);
  std::vector<float> scratch(kVocab);

  const double copy_us = micros_per_call(iterations, peaked, scratch, [] {});
  std::printf("  logits copy (subtracted below)       %8.1f us\n", copy_us);

  struct Case {
    const char* name;
    SamplingParams params;
    const std::vector<float>* logits;
  };
  auto params = [](double t, int k, double p, double min_p, std::optional<int> logprobs, double rep) {
    SamplingParams s;
    s.temperature = t;
    s.top_k = k;
    s.top_p = p;
    s.min_p = min_p;
    s.logprobs = logprobs;
    s.repetition_penalty = rep;
    s.seed = 7;
    return s;
  };
  const Case cases[] = {
      {"greedy", params(0, 0, 1, 0, {}, 1), &peaked},
      {"greedy + 1000-token repetition penalty", params(0, 0, 1, 0, {}, 1.1), &peaked},
      {"greedy + logprobs 5", params(0, 0, 1, 0, 5, 1), &peaked},
      {"T=1 full vocabulary", params(1, 0, 1, 0, {}, 1), &peaked},
      {"T=0.7 min_p 0.05", params(0.7, 0, 1, 0.05, {}, 1), &peaked},
      {"T=0.7 top_k 20", params(0.7, 20, 1, 0, {}, 1), &peaked},
      {"T=0.7 top_k 20 top_p 0.8 (Qwen3)", params(0.7, 20, 0.8, 0, {}, 1), &peaked},
      {"T=1 top_p 0.9, peaked", params(1, 0, 0.9, 0, {}, 1), &peaked},
      {"T=1 top_p 0.9, flat (wide nucleus)", params(1, 0, 0.9, 0, {}, 1), &flat},
  };
  std::vector<int32_t> prompt(1000);
  for (int i = 0; i < 1000; ++i) prompt[i] = (i * 151) % kVocab;
  double top_p_peaked_us = 0, top_p_flat_us = 0;
  const std::string filter = argc > 2 ? argv[2] : "";
  for (const Case& c : cases) {
    if (std::string(c.name).find(filter) == std::string::npos) continue;
    auto sampler = Sampler::create(c.params, kVocab, prompt);
    if (!sampler.ok()) {
      std::fprintf(stderr, "%s\n", sampler.status().to_string().c_str());
      return 1;
    }
    int64_t sink = 0;
    const double us =
        micros_per_call(iterations, *c.logits, scratch, [&] { sink += sampler->sample(scratch)->token; });
    const double net = us - copy_us;
    std::printf("  %-38s %8.1f us  (token checksum %lld)\n", c.name, net, static_cast<long long>(sink));
    if (c.params.top_p < 1 && c.params.top_k == 0)
      (c.logits == &peaked ? top_p_peaked_us : top_p_flat_us) = net;
  }

  if (!filter.empty()) return 0;
  std::vector<int32_t> order(kVocab);
  Rng rng(7);
  int64_t sink = 0;
  const int ref_iterations = std::max(1, iterations / 10);
  const double ref_peaked = micros_per_call(ref_iterations, peaked, scratch,
                                            [&] { sink += reference_top_p(peaked, 0.9, rng, order); }) -
                            copy_us;
  const double ref_flat = micros_per_call(ref_iterations, flat, scratch,
                                          [&] { sink += reference_top_p(flat, 0.9, rng, order); }) -
                          copy_us;
  std::printf("  full-sort reference top_p 0.9: peaked %.1f us, flat %.1f us (checksum %lld)\n", ref_peaked,
              ref_flat, static_cast<long long>(sink));
  std::printf("  speedup over the full sort: peaked %.1fx, flat %.1fx\n", ref_peaked / top_p_peaked_us,
              ref_flat / top_p_flat_us);
  return 0;
}
