// kernels_bench: how close the CPU kernels come to this machine's limits. Prints the machine facts, a
// STREAM-like copy and a read bandwidth, the FMA peak, then each kernel against its roofline (memory
// bandwidth for decode matmul and attention, FMA rate for prefill matmul) and against its plain
// reference. Usage: kernels_bench [--threads N] [--quick]; without --threads it runs 1 and all threads.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "base/bf16.h"
#include "bench/machine_limits.h"
#include "base/thread_pool.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/moe_router.h"
#include "kernels/cpu/paged_attention.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/simd.h"

namespace agentserve::kernels {
namespace {


using bench::best_seconds;
using Roofline = bench::MachineLimits;

Roofline measure_machine(ThreadPool& pool, bool quick) { return bench::measure_machine_limits(pool, quick); }

// Splits the output rows of one matmul across the pool in 32-row items (the prefill path's panel
// width), as the engine does.
void parallel_matmul(ThreadPool& pool, float* y, const float* x, const void* w, DType dt, int n_tokens,
                     int in_dim, int out_dim) {
  constexpr int kRows = 32;
  pool.parallel_for((out_dim + kRows - 1) / kRows, [&](int64_t begin, int64_t end, int) {
    matmul(y, x, w, dt, n_tokens, in_dim, out_dim, static_cast<int>(begin) * kRows,
           std::min(out_dim, static_cast<int>(end) * kRows));
  });
}

void bench_decode_matmul(ThreadPool& pool, const Roofline& roof, bool quick) {
  struct Shape {
    int out_dim, in_dim;
    const char* what;
  };
  for (const Shape& s : {Shape{2048, 768, "expert down_proj"}, Shape{4096, 1024, "attention-sized"}}) {
    for (DType dt : {DType::kBF16, DType::kF32}) {
      const size_t bytes = static_cast<size_t>(s.out_dim) * s.in_dim * dtype_size(dt);
      // Enough distinct weight copies (512 MiB) that each call streams from DRAM, like the experts of
      // successive MoE layers do.
      const size_t copies = std::max<size_t>(2, ((quick ? 128u : 512u) << 20) / bytes);
      std::vector<uint8_t> w(bytes * copies);
      for (size_t i = 0; i < w.size(); i += 2) w[i + 1] = 0x3c;  // small positive bf16 / f32 bit patterns
      for (int n_tokens : {1, 4}) {
        std::vector<float> x(static_cast<size_t>(n_tokens) * s.in_dim, 0.5f);
        std::vector<float> y(static_cast<size_t>(n_tokens) * s.out_dim);
        // One timed pass runs every copy once, oldest-touched first, so each call streams from DRAM;
        // the best of three passes, divided by the calls.
        const double pass = best_seconds(3, [&] {
          for (size_t c = 0; c < copies; ++c) {
            parallel_matmul(pool, y.data(), x.data(), w.data() + c * bytes, dt, n_tokens, s.in_dim,
                            s.out_dim);
          }
        });
        const double sec = pass / static_cast<double>(copies);
        const double gbs = bytes / sec / 1e9;
        std::printf(
            "  matmul %-4s %5dx%-5d (%s) t=%d: %6.1f us  %5.1f GB/s of weights = %.2f x read bw, %.2f x copy "
            "bw\n",
            std::string(dtype_name(dt)).c_str(), s.out_dim, s.in_dim, s.what, n_tokens, sec * 1e6, gbs,
            gbs / roof.read_gbs, gbs / roof.copy_gbs);
      }
    }
  }
}

void bench_prefill_matmul(ThreadPool& pool, const Roofline& roof) {
  const int out_dim = 4096, in_dim = 1024;
  std::vector<bf16> w(static_cast<size_t>(out_dim) * in_dim);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1, 1);
  for (auto& v : w) v = float_to_bf16(u(rng));
  for (int n_tokens : {64, 256}) {
    std::vector<float> x(static_cast<size_t>(n_tokens) * in_dim);
    for (auto& v : x) v = u(rng);
    std::vector<float> y(static_cast<size_t>(n_tokens) * out_dim);
    const double flops = 2.0 * n_tokens * out_dim * in_dim;
    const double sec = best_seconds(3, [&] {
      parallel_matmul(pool, y.data(), x.data(), w.data(), DType::kBF16, n_tokens, in_dim, out_dim);
    });
    std::printf("  matmul bf16 %dx%d t=%-3d f32 FMA path:       %6.1f GFLOP/s = %.2f of FMA peak\n", out_dim,
                in_dim, n_tokens, flops / sec / 1e9, flops / sec / 1e9 / roof.fma_gflops);
    std::vector<bf16> xb(x.size());
    constexpr int kRows = 32;
    const double sec_bf16 = best_seconds(3, [&] {
      convert_activations_bf16(xb.data(), x.data(), x.size());
      pool.parallel_for((out_dim + kRows - 1) / kRows, [&](int64_t begin, int64_t end, int) {
        matmul_bf16_activations(y.data(), xb.data(), w.data(), n_tokens, in_dim, out_dim,
                                static_cast<int>(begin) * kRows,
                                std::min(out_dim, static_cast<int>(end) * kRows));
      });
    });
    std::printf("  matmul bf16 %dx%d t=%-3d bf16-activation path: %6.1f GFLOP/s = %.2f of f32 FMA peak\n",
                out_dim, in_dim, n_tokens, flops / sec_bf16 / 1e9, flops / sec_bf16 / 1e9 / roof.fma_gflops);
  }
}

// Qwen3-30B-A3B attention geometry: 32 query heads, 4 kv heads, head_dim 128, blocks of 16 tokens.
struct AttentionSetup {
  int n_ctx, block_size = 16, n_heads = 32, n_kv_heads = 4, head_dim = 128;
  std::vector<float> k, v;
  std::vector<const float*> k_blocks, v_blocks;

  explicit AttentionSetup(int n_ctx_) : n_ctx(n_ctx_) {
    const int n_blocks = (n_ctx + block_size - 1) / block_size;
    const size_t block_floats = static_cast<size_t>(n_kv_heads) * block_size * head_dim;
    k.assign(block_floats * n_blocks, 0.01f);
    v.assign(block_floats * n_blocks, 0.02f);
    for (int b = 0; b < n_blocks; ++b) {
      k_blocks.push_back(k.data() + b * block_floats);
      v_blocks.push_back(v.data() + b * block_floats);
    }
  }
  double kv_bytes(int ctx) const { return 2.0 * ctx * n_kv_heads * head_dim * sizeof(float); }
};

void bench_attention(ThreadPool& pool, const Roofline& roof, bool quick) {
  for (int n_ctx : {4096, quick ? 8192 : 32768}) {
    AttentionSetup a(n_ctx);
    std::vector<float> q(static_cast<size_t>(a.n_heads) * a.head_dim, 0.1f), out(q.size());
    const float scale = 1.0f / std::sqrt(static_cast<float>(a.head_dim));
    const int group = a.n_heads / a.n_kv_heads;
    const double sec = best_seconds(5, [&] {
      pool.parallel_for(a.n_kv_heads, [&](int64_t begin, int64_t end, int) {
        paged_attention(out.data(), q.data(), a.k_blocks.data(), a.v_blocks.data(), n_ctx, a.block_size,
                        a.n_heads, a.n_kv_heads, a.head_dim, scale, static_cast<int>(begin) * group,
                        static_cast<int>(end) * group);
      });
    });
    const double gbs = a.kv_bytes(n_ctx) / sec / 1e9;
    std::printf("  paged_attention decode n_ctx=%-5d: %7.1f us  %5.1f GB/s of K/V = %.2f x read bw%s\n",
                n_ctx, sec * 1e6, gbs, gbs / roof.read_gbs,
                a.kv_bytes(n_ctx) < 32e6 ? " (K/V fit in L3)" : "");
  }
  // Prefill: 128 new tokens at the end of a 4096-token context, one call per kv head.
  AttentionSetup a(4096);
  const int n_queries = 128, first = 4096 - n_queries + 1;
  std::vector<float> q(static_cast<size_t>(n_queries) * a.n_heads * a.head_dim, 0.1f), out(q.size());
  const int group = a.n_heads / a.n_kv_heads;
  const double sec = best_seconds(3, [&] {
    pool.parallel_for(a.n_kv_heads, [&](int64_t begin, int64_t end, int) {
      paged_attention_prefill(out.data(), q.data(), n_queries, first, a.k_blocks.data(), a.v_blocks.data(),
                              a.block_size, a.n_heads, a.n_kv_heads, a.head_dim, 0.088f,
                              static_cast<int>(begin) * group, static_cast<int>(end) * group);
    });
  });
  const double flops = 4.0 * n_queries * a.n_heads * a.head_dim * (first + n_queries / 2.0);
  std::printf("  paged_attention prefill 128 queries at 4k: %7.1f us  %6.1f GFLOP/s = %.2f of FMA peak\n",
              sec * 1e6, flops / sec / 1e9, flops / sec / 1e9 / roof.fma_gflops);
}

void report_speedup(const char* what, double ref_s, double fast_s) {
  std::printf("  %-44s ref %9.1f us  fast %8.1f us  speedup %6.1fx\n", what, ref_s * 1e6, fast_s * 1e6,
              ref_s / fast_s);
}

// Single-threaded fast vs reference on engine-sized inputs.
void bench_against_reference() {
  std::mt19937 rng(2);
  std::uniform_real_distribution<float> u(-1, 1);
  auto random = [&](size_t n) {
    std::vector<float> v(n);
    for (auto& x : v) x = u(rng);
    return v;
  };
  {
    const int out_dim = 768, in_dim = 2048;
    std::vector<bf16> w(static_cast<size_t>(out_dim) * in_dim);
    for (auto& x : w) x = float_to_bf16(u(rng));
    for (int n_tokens : {1, 64}) {
      std::vector<float> x = random(static_cast<size_t>(n_tokens) * in_dim),
                         y(static_cast<size_t>(n_tokens) * out_dim);
      const double r = best_seconds(
          1, [&] { matmul_ref(y.data(), x.data(), w.data(), DType::kBF16, n_tokens, in_dim, out_dim); });
      const double f = best_seconds(5, [&] {
        matmul(y.data(), x.data(), w.data(), DType::kBF16, n_tokens, in_dim, out_dim, 0, out_dim);
      });
      report_speedup(n_tokens == 1 ? "matmul bf16 768x2048, 1 token" : "matmul bf16 768x2048, 64 tokens", r,
                     f);
    }
  }
  {
    const int rows = 64, dim = 2048;
    std::vector<float> x = random(static_cast<size_t>(rows) * dim), w = random(dim), y(x.size());
    report_speedup("rmsnorm 64x2048",
                   best_seconds(5, [&] { rmsnorm_ref(y.data(), x.data(), w.data(), rows, dim, 1e-6f); }),
                   best_seconds(20, [&] { rmsnorm(y.data(), x.data(), w.data(), rows, dim, 1e-6f); }));
  }
  {
    const size_t n = 64 * 768;
    std::vector<float> g = random(n), up = random(n), y(n);
    report_speedup("silu_mul 64x768",
                   best_seconds(5, [&] { silu_mul_ref(y.data(), g.data(), up.data(), n); }),
                   best_seconds(20, [&] { silu_mul(y.data(), g.data(), up.data(), n); }));
  }
  {
    const int n_tokens = 64, n_heads = 32, head_dim = 128;
    std::vector<float> x = random(static_cast<size_t>(n_tokens) * n_heads * head_dim);
    std::vector<int32_t> pos(n_tokens);
    for (int t = 0; t < n_tokens; ++t) pos[t] = 1000 + t;
    const std::vector<float> inv = rope_inv_freq(head_dim, 1e6, nullptr);
    std::vector<float> c(static_cast<size_t>(n_tokens) * head_dim / 2), s(c.size());
    rope_cos_sin(c.data(), s.data(), pos.data(), n_tokens, inv.data(), head_dim / 2, 1.0f);
    const size_t stride = static_cast<size_t>(n_heads) * head_dim;
    report_speedup(
        "apply_rope 64 tokens x 32 heads x 128",
        best_seconds(
            5, [&] { apply_rope_ref(x.data(), n_tokens, n_heads, head_dim, stride, c.data(), s.data()); }),
        best_seconds(20,
                     [&] { apply_rope(x.data(), n_tokens, n_heads, head_dim, stride, c.data(), s.data()); }));
  }
  {
    const int n_tokens = 64, n_experts = 128, top_k = 8;
    std::vector<float> logits = random(static_cast<size_t>(n_tokens) * n_experts);
    std::vector<int32_t> ids(static_cast<size_t>(n_tokens) * top_k);
    std::vector<float> w(ids.size());
    report_speedup(
        "moe_route 64 tokens, 128 experts, top 8",
        best_seconds(
            5, [&] { moe_route_ref(ids.data(), w.data(), logits.data(), n_tokens, n_experts, top_k, true); }),
        best_seconds(
            20, [&] { moe_route(ids.data(), w.data(), logits.data(), n_tokens, n_experts, top_k, true); }));
  }
  {
    AttentionSetup a(4096);
    std::vector<float> q = random(static_cast<size_t>(a.n_heads) * a.head_dim), out(q.size());
    report_speedup("paged_attention n_ctx 4096, 32/4 heads x 128",
                   best_seconds(2,
                                [&] {
                                  paged_attention_ref(out.data(), q.data(), a.k_blocks.data(),
                                                      a.v_blocks.data(), a.n_ctx, a.block_size, a.n_heads,
                                                      a.n_kv_heads, a.head_dim, 0.088f);
                                }),
                   best_seconds(5, [&] {
                     paged_attention(out.data(), q.data(), a.k_blocks.data(), a.v_blocks.data(), a.n_ctx,
                                     a.block_size, a.n_heads, a.n_kv_heads, a.head_dim, 0.088f, 0, a.n_heads);
                   }));
  }
  {
    std::vector<float> logits = random(151936);
    size_t r = 0, f = 0;
    report_speedup("argmax over 151936 logits",
                   best_seconds(5, [&] { r = argmax_ref(logits.data(), logits.size()); }),
                   best_seconds(20, [&] { f = argmax(logits.data(), logits.size()); }));
    if (r != f) std::printf("  argmax mismatch: ref %zu fast %zu\n", r, f);
  }
}

void bench_pool_dispatch(ThreadPool& pool) {
  const int calls = 20000;
  std::vector<int64_t> sink(static_cast<size_t>(pool.size()));
  const double sec = best_seconds(3, [&] {
    for (int i = 0; i < calls; ++i) {
      pool.parallel_for(pool.size(), [&](int64_t b, int64_t, int t) { sink[static_cast<size_t>(t)] += b; });
    }
  });
  std::printf("  thread pool: %.2f us per empty parallel_for over %d threads\n", sec / calls * 1e6,
              pool.size());
}

}  // namespace
}  // namespace agentserve::kernels

int main(int argc, char** argv) {
  using namespace agentserve;
  using namespace agentserve::kernels;
  int only_threads = 0;
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--threads" && i + 1 < argc) {
      only_threads = std::atoi(argv[++i]);
    } else if (arg == "--quick") {
      quick = true;
    } else {
      std::fprintf(stderr, "usage: %s [--threads N] [--quick]\n", argv[0]);
      return 2;
    }
  }
  const int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::printf("kernels_bench: %d hardware threads, kernel path %s\n", hw, simd::isa_name());
  std::printf("  (bandwidths: copy counts bytes read + bytes written, as STREAM does; read is a pure sum)\n");
  std::vector<int> thread_counts =
      only_threads > 0 ? std::vector<int>{only_threads} : std::vector<int>{1, hw};
  thread_counts.erase(std::unique(thread_counts.begin(), thread_counts.end()), thread_counts.end());
  for (int threads : thread_counts) {
    ThreadPool pool(threads);
    std::printf("\n== %d thread%s\n", threads, threads == 1 ? "" : "s");
    const Roofline roof = measure_machine(pool, quick);
    std::printf("  copy %.1f GB/s, read %.1f GB/s, FMA peak %.1f GFLOP/s (f32)\n", roof.copy_gbs,
                roof.read_gbs, roof.fma_gflops);
    bench_pool_dispatch(pool);
    bench_decode_matmul(pool, roof, quick);
    bench_prefill_matmul(pool, roof);
    bench_attention(pool, roof, quick);
  }
  std::printf("\n== fast vs reference, 1 thread\n");
  bench_against_reference();
  return 0;
}
