// The machine's limits that benchmarks compare against, measured in the same run as the benchmark:
// a STREAM-like copy bandwidth (read + written bytes), a plain read bandwidth, and the FMA peak of the
// pool's threads. Buffers are 8x the L3 so every pass comes from DRAM; each figure is the best of a few
// runs, the least disturbed on a shared machine.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <vector>

#include "base/thread_pool.h"
#include "kernels/cpu/simd.h"

namespace agentserve::bench {

template <typename F>
double best_seconds(int reps, F&& f) {
  f();
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

struct MachineLimits {
  double copy_gbs = 0;    // (read + written bytes) / s
  double read_gbs = 0;    // read bytes / s
  double fma_gflops = 0;  // f32 FMA peak, 2 FLOPs per lane per FMA
};

inline volatile float g_machine_limits_sink;

inline MachineLimits measure_machine_limits(ThreadPool& pool, bool quick) {
  MachineLimits r;
  const size_t n = (quick ? 64u : 256u) << 18;  // floats: 64 or 256 MiB per buffer
  std::vector<float> a(n, 1.0f), b(n, 0.0f);
  const double copy_s = best_seconds(5, [&] {
    pool.parallel_for(static_cast<int64_t>(n), [&](int64_t begin, int64_t end, int) {
      std::memcpy(b.data() + begin, a.data() + begin, static_cast<size_t>(end - begin) * sizeof(float));
    });
  });
  r.copy_gbs = 2.0 * static_cast<double>(n) * sizeof(float) / copy_s / 1e9;

  std::vector<float> partial(static_cast<size_t>(pool.size()));
  const double read_s = best_seconds(5, [&] {
    pool.parallel_for(static_cast<int64_t>(n), [&](int64_t begin, int64_t end, int t) {
      float acc[16] = {};
      for (int64_t i = begin; i + 16 <= end; i += 16) {
        for (int l = 0; l < 16; ++l) acc[l] += a[static_cast<size_t>(i + l)];
      }
      float s = 0;
      for (float v : acc) s += v;
      partial[static_cast<size_t>(t)] = s;
    });
  });
  g_machine_limits_sink = partial[0];
  r.read_gbs = static_cast<double>(n) * sizeof(float) / read_s / 1e9;

  // 12 independent accumulator chains hide the FMA latency.
  const int64_t iters = quick ? 2'000'000 : 20'000'000;
  const double fma_s = best_seconds(3, [&] {
    pool.parallel_for(pool.size(), [&](int64_t, int64_t, int t) {
#if defined(__AVX512F__)
      __m512 acc[12];
      for (int k = 0; k < 12; ++k) acc[k] = _mm512_set1_ps(static_cast<float>(k));
      const __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
      for (int64_t i = 0; i < iters; ++i) {
        for (int k = 0; k < 12; ++k) acc[k] = _mm512_fmadd_ps(acc[k], m, c);
      }
      __m512 s = acc[0];
      for (int k = 1; k < 12; ++k) s = _mm512_add_ps(s, acc[k]);
      partial[static_cast<size_t>(t)] = kernels::simd::reduce_add(s);
#else
      float acc[12][16];
      for (int k = 0; k < 12; ++k)
        for (int l = 0; l < 16; ++l) acc[k][l] = static_cast<float>(k + l);
      for (int64_t i = 0; i < iters; ++i) {
        for (int k = 0; k < 12; ++k)
          for (int l = 0; l < 16; ++l) acc[k][l] = acc[k][l] * 0.999999f + 1e-7f;
      }
      partial[static_cast<size_t>(t)] = acc[3][5];
#endif
    });
  });
  g_machine_limits_sink = partial[0];
  r.fma_gflops = 2.0 * 16 * 12 * static_cast<double>(iters) * pool.size() / fma_s / 1e9;
  return r;
}

}  // namespace agentserve::bench
