// engine_bench: the engine's speed against this machine's limits, measured in one run.
//   decode      batch-1 decode tokens/s and its ratio to the memory roofline: (weight + KV bytes touched
//               per token) / (bandwidth of a STREAM-like copy and of a plain read, same run)
//   batch       aggregate decode tokens/s with 1, 4, 16, 64 concurrent sequences (continuous batching)
//   prefill     prefill tokens/s on a 2,048-token prompt and the fraction of the measured FMA peak
//   kv          resident memory per 1k tokens of KV against the layout's theoretical size
//   restart     (only when asked) TTFT after a restart at 4k/16k/32k tokens: restored from RocksDB vs
//               prefetched into host RAM vs recomputed vs a warm prefix-cache hit
//   long        (only when asked) one sequence to --context tokens (default 131072, YaRN), e.g. on tiny
// Usage: engine_bench --model DIR [--threads N] [--only decode|batch|prefill|kv|long|restart] [--context N]
// (--only restart --context N: only that prompt size)
// [--bf16-activations] [--quick] Make the model with: agentserve make-model --preset bench --out models/bench
#include <unistd.h>
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench/machine_limits.h"
#include "engine/engine.h"

namespace agentserve::bench {
namespace {

using Clock = std::chrono::steady_clock;
using engine::Engine;

struct Args {
  std::string model;
  int threads = 2;
  std::string only;
  bool quick = false;
  int context = 131072;  // --only long: the sequence length to reach
  bool bf16_activations = false;
};

size_t matrix_bytes(const engine::WeightMatrix& w) {
  return static_cast<size_t>(w.rows) * static_cast<size_t>(w.cols) * kernels::dtype_size(w.dtype);
}

// Weight bytes one decode token reads: attention projections, router, the top-k experts of each MoE
// layer (the average expert size, since routing picks different ones), dense MLPs, norms, one embedding
// row and the whole lm_head.
double weight_bytes_per_token(const engine::ModelConfig& c, const engine::ModelWeights& w) {
  double bytes = 0;
  for (const auto& layer : w.layers) {
    bytes += matrix_bytes(layer.q_proj) + matrix_bytes(layer.k_proj) + matrix_bytes(layer.v_proj) +
             matrix_bytes(layer.o_proj);
    bytes += 4.0 * (layer.input_layernorm.size() + layer.post_attention_layernorm.size() +
                    layer.q_norm.size() + layer.k_norm.size());
    if (layer.is_moe) {
      bytes += matrix_bytes(layer.router);
      const auto& e = layer.experts[0];
      bytes += static_cast<double>(c.num_experts_per_tok) *
               (matrix_bytes(e.gate_proj) + matrix_bytes(e.up_proj) + matrix_bytes(e.down_proj));
    } else {
      bytes += matrix_bytes(layer.mlp.gate_proj) + matrix_bytes(layer.mlp.up_proj) +
               matrix_bytes(layer.mlp.down_proj);
    }
  }
  bytes += matrix_bytes(w.lm_head) + 4.0 * w.norm.size();
  bytes += static_cast<double>(w.embed_tokens.cols) * kernels::dtype_size(w.embed_tokens.dtype);
  return bytes;
}

// Multiply-adds of one token, as FLOPs (2 per multiply-add): the weights it touches plus attention over
// n_ctx positions (q.k and p.v per head).
double flops_per_token(const engine::ModelConfig& c, double weight_elems, int n_ctx) {
  const double attention = 4.0 * n_ctx * c.num_attention_heads * static_cast<double>(c.head_dim);
  return 2.0 * weight_elems + c.num_hidden_layers * attention;
}

std::vector<int32_t> random_prompt(std::mt19937& rng, int n) {
  std::uniform_int_distribution<int32_t> dist(0, 151000);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& id : ids) id = dist(rng);
  return ids;
}

engine::SamplingParams greedy(int max_tokens) {
  engine::SamplingParams p;
  p.temperature = 0.0;
  p.max_tokens = max_tokens;
  p.ignore_eos = true;
  return p;
}

// Anonymous resident memory (RssAnon): the KV arena and buffers, without the memory-mapped weights, whose
// pages come in as experts are first used.
size_t resident_anon_bytes() {
  std::ifstream status("/proc/self/status");
  std::string key;
  while (status >> key) {
    if (key == "RssAnon:") {
      size_t kib = 0;
      status >> kib;
      return kib * 1024;
    }
    status.ignore(1 << 12, '\n');
  }
  return 0;
}

// Runs n sequences together; returns decode tokens/s over the window in which all of them were decoding
// (after the last one's first token), so prefill does not dilute the figure.
double aggregate_decode(Engine& eng, int n, int prompt_len, int gen_len, std::mt19937& rng) {
  std::mutex mutex;
  std::condition_variable cv;
  int finished = 0;
  std::vector<std::vector<Clock::time_point>> stamps(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    engine::GenerationRequest request{.prompt = random_prompt(rng, prompt_len), .sampling = greedy(gen_len)};
    request.on_event = [&, i](const engine::GenerationEvent& e) {
      std::lock_guard lock(mutex);
      for (size_t k = 0; k < e.tokens.size(); ++k) stamps[static_cast<size_t>(i)].push_back(Clock::now());
      if (e.finished) {
        ++finished;
        cv.notify_all();
      }
    };
    if (!eng.submit(std::move(request)).ok()) return 0.0;
  }
  std::unique_lock lock(mutex);
  cv.wait(lock, [&] { return finished == n; });
  Clock::time_point window_start = Clock::time_point::min(), window_end = Clock::time_point::min();
  for (const auto& s : stamps) {
    window_start = std::max(window_start, s.front());
    window_end = std::max(window_end, s.back());
  }
  int64_t tokens = 0;
  for (const auto& s : stamps) {
    tokens += std::count_if(s.begin(), s.end(), [&](Clock::time_point t) { return t > window_start; });
  }
  const double seconds = std::chrono::duration<double>(window_end - window_start).count();
  return seconds > 0 ? static_cast<double>(tokens) / seconds : 0.0;
}

int run(const Args& args) {
  engine::EngineOptions options;
  options.model_dir = args.model;
  options.n_threads = args.threads;
  options.kv_cache_bytes = size_t{2} << 30;
  options.max_step_tokens = 512;
  options.bf16_activations = args.bf16_activations;
  auto opened = Engine::open(options);
  if (!opened.ok()) {
    std::fprintf(stderr, "engine_bench: %s\n", opened.status().to_string().c_str());
    return 1;
  }
  Engine& eng = **opened;
  auto weights = engine::ModelWeights::open(args.model, eng.config());
  if (!weights.ok()) return 1;
  const auto& cfg = eng.config();
  const double weight_bytes = weight_bytes_per_token(cfg, *weights);
  const size_t weight_elem_size = kernels::dtype_size(weights->lm_head.dtype);
  std::mt19937 rng(1);
  const auto want = [&](const char* part) { return args.only.empty() || args.only == part; };

  ThreadPool pool(args.threads);
  const MachineLimits limits = measure_machine_limits(pool, args.quick);
  std::printf(
      "machine: %u hardware threads, using %d; copy %.1f GB/s (read+write), read %.1f GB/s, "
      "FMA peak %.1f GFLOP/s\n",
      std::thread::hardware_concurrency(), args.threads, limits.copy_gbs, limits.read_gbs, limits.fma_gflops);
  std::printf("arithmetic: %s\n", args.bf16_activations ? "BF16 activations for batched rows (8+)" : "f32");
  std::printf(
      "model: %s | %d layers, hidden %lld, %d experts top-%d, weights %s | %.1f MB touched per token\n",
      args.model.c_str(), cfg.num_hidden_layers, static_cast<long long>(cfg.hidden_size), cfg.num_experts,
      cfg.num_experts_per_tok, weight_elem_size == 2 ? "bf16" : "f32", weight_bytes / 1e6);

  if (want("decode")) {
    const int prompt_len = 32, gen_len = args.quick ? 16 : 64;
    auto g = eng.generate(random_prompt(rng, prompt_len), greedy(gen_len));
    if (!g.ok()) return 1;
    const double decode_s = g->usage.total_time_s - g->usage.time_to_first_token_s;
    const double tps = (g->usage.completion_tokens - 1) / decode_s;
    const double kv_bytes = 2.0 * cfg.num_hidden_layers * cfg.num_key_value_heads *
                            static_cast<double>(cfg.head_dim) * 4.0 * (prompt_len + gen_len / 2.0);
    const double bytes = weight_bytes + kv_bytes;
    std::printf(
        "decode batch 1: %.2f tok/s (%.1f ms/token); %.2f GB/s of weights+KV = %.2f of the copy "
        "bandwidth, %.2f of the read bandwidth\n",
        tps, 1e3 / tps, tps * bytes / 1e9, tps * bytes / 1e9 / limits.copy_gbs,
        tps * bytes / 1e9 / limits.read_gbs);
  }
  if (want("batch")) {
    // With many sequences a step is compute-bound: every token multiplies through the weights it touches.
    const double elems = weight_bytes / static_cast<double>(weight_elem_size);
    const double ceiling = limits.fma_gflops * 1e9 / flops_per_token(cfg, elems, 32);
    std::printf("compute ceiling for batched decode at the FMA peak: %.0f tok/s (%.0f MFLOP per token)\n",
                ceiling, flops_per_token(cfg, elems, 32) / 1e6);
    double single = 0;
    for (int n : {1, 4, 16, 64}) {
      if (args.quick && n > 16) break;
      const double tps = aggregate_decode(eng, n, 16, args.quick ? 16 : 32, rng);
      if (n == 1) single = tps;
      std::printf("aggregate decode, %2d sequences: %8.2f tok/s (%.2fx single)\n", n, tps,
                  single > 0 ? tps / single : 0.0);
    }
  }
  if (want("prefill")) {
    const int prompt_len = args.quick ? 512 : 2048;
    auto g = eng.generate(random_prompt(rng, prompt_len), greedy(1));
    if (!g.ok()) return 1;
    const double tps = prompt_len / g->usage.time_to_first_token_s;
    // Prefill touches every expert's rows once per token routed there: count active weights per token.
    const double weight_elems =
        (weight_bytes - matrix_bytes(weights->lm_head)) / static_cast<double>(weight_elem_size);
    const double gflops = tps * flops_per_token(cfg, weight_elems, prompt_len / 2) / 1e9;
    std::printf(
        "prefill %d tokens: %.1f tok/s, %.1f GFLOP/s = %.3f of the FMA peak (lm_head on the last token "
        "only)\n",
        prompt_len, tps, gflops, gflops / limits.fma_gflops);
  }
  if (args.only == "long") {
    // One sequence to the full context (YaRN positions past the original 32k): prefill of context - 8
    // tokens, then 8 decode steps at the end of the window.
    const int prompt_len = std::min(args.context, eng.max_context()) - 8;
    auto g = eng.generate(random_prompt(rng, prompt_len), greedy(8));
    if (!g.ok()) {
      std::fprintf(stderr, "long: %s\n", g.status().to_string().c_str());
      return 1;
    }
    const double decode_s = g->usage.total_time_s - g->usage.time_to_first_token_s;
    std::printf(
        "long context: %d-token prompt prefilled in %.1f s (%.0f tok/s); %d tokens decoded at position "
        "%d at %.2f tok/s; finish %s\n",
        prompt_len, g->usage.time_to_first_token_s, prompt_len / g->usage.time_to_first_token_s,
        g->usage.completion_tokens, prompt_len + 8, (g->usage.completion_tokens - 1) / decode_s,
        engine::finish_reason_name(g->finish_reason));
  }
  if (args.only == "restart") {
    // Time to first token of a prompt of N tokens in four states of the same machine:
    //   recompute   an engine on an empty data_dir prefills everything;
    //   warm        the same engine asked again (T0 prefix-cache hit); it then closes, flushing T0 to disk;
    //   restored    an engine reopened on that data_dir (T2, after a restart): admission loads the chain
    //               from RocksDB (one MultiGet) on the engine thread;
    //   prefetched  the same, but prefetch() moved the chain into host RAM (T1) before the request came
    //               (what the server does on session.resume); TTFT counts from the request, as a resumed
    //               session's next message would.
    // One prefill per size: at 32k it is minutes on 2 cores.
    const int only_n = args.context != 131072 ? args.context : 0;  // --context N: that size alone
    for (int n : {4096, 16384, 32768}) {
      if (only_n > 0 && n != only_n) continue;
      if (args.quick && n > 4096) break;
      const auto prompt = random_prompt(rng, n);
      const std::filesystem::path dir =
          std::filesystem::temp_directory_path() / ("agentserve-bench-restart-" + std::to_string(::getpid()));
      std::filesystem::remove_all(dir);
      engine::EngineOptions o = options;
      const size_t chain_bytes =
          (static_cast<size_t>(n) + 64) * eng.kv_layout().block_bytes() / eng.kv_layout().block_size;
      o.kv_cache_bytes = std::max<size_t>(size_t{1} << 30, chain_bytes * 2);
      o.data_dir = dir;
      auto ttft = [&](const engine::EngineOptions& eo, bool twice,
                      bool prefetch) -> std::pair<double, double> {
        auto e = Engine::open(eo);
        if (!e.ok()) return {-1, -1};
        if (prefetch) {
          (*e)->prefetch(prompt, "");
          (*e)->sync_kv_tiers();
        }
        auto first = (*e)->generate(prompt, greedy(1));
        if (!first.ok()) return {-1, -1};
        double second = -1;
        if (twice) {
          auto again = (*e)->generate(prompt, greedy(1));
          if (again.ok()) second = again->usage.time_to_first_token_s;
        }
        return {first->usage.time_to_first_token_s, second};
      };
      const auto [recompute, warm] = ttft(o, true, false);  // its destructor flushes T0 to disk
      const auto [restored, unused] = ttft(o, false, false);
      engine::EngineOptions with_host = o;
      with_host.host_kv_bytes = chain_bytes * 5 / 4;
      const auto [prefetched, unused2] = ttft(with_host, false, true);
      std::filesystem::remove_all(dir);
      std::printf(
          "restart, %5d-token prompt: TTFT recompute %.3f s, restored from disk %.3f s (%.1fx faster), "
          "prefetched to RAM %.3f s, warm T0 hit %.3f s (restored/warm %.2fx, prefetched/warm %.2fx)\n",
          n, recompute, restored, recompute / restored, prefetched, warm, restored / warm, prefetched / warm);
      std::fflush(stdout);
    }
  }
  if (want("kv")) {
    // Two engines whose KV pools differ by 1 GiB, each after serving a 4k-token sequence: the difference
    // in anonymous resident memory per token of pool capacity is what 1k tokens of KV really cost,
    // arena padding and block bookkeeping included.
    auto resident_with_pool = [&](size_t kv_bytes, int64_t& capacity_tokens) -> double {
      engine::EngineOptions o = options;
      o.kv_cache_bytes = kv_bytes;
      auto e = Engine::open(o);
      if (!e.ok()) return -1;
      if (!(*e)->generate(random_prompt(rng, 4095), greedy(1)).ok()) return -1;
      capacity_tokens = (*e)->counters().kv_blocks_total * (*e)->kv_layout().block_size;
      return static_cast<double>(resident_anon_bytes());
    };
    int64_t small_tokens = 0, large_tokens = 0;
    const double small = resident_with_pool(size_t{256} << 20, small_tokens);
    const double large = resident_with_pool(size_t{1280} << 20, large_tokens);
    const auto& layout = eng.kv_layout();
    const double theory = static_cast<double>(layout.block_bytes()) / layout.block_size * 1000.0;
    const double measured = (large - small) / static_cast<double>(large_tokens - small_tokens) * 1000.0;
    std::printf(
        "KV per 1k tokens: theoretical %.1f KiB (f32: %d layers x %d kv heads x %d dims x K,V x 4 B); "
        "measured %.1f KiB resident (%.3fx)\n",
        theory / 1024, layout.n_layers, layout.n_kv_heads, layout.head_dim, measured / 1024,
        measured / theory);
  }
  return 0;
}

}  // namespace
}  // namespace agentserve::bench

int main(int argc, char** argv) {
  agentserve::bench::Args args;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--model" && i + 1 < argc)
      args.model = argv[++i];
    else if (a == "--threads" && i + 1 < argc)
      args.threads = std::stoi(argv[++i]);
    else if (a == "--only" && i + 1 < argc)
      args.only = argv[++i];
    else if (a == "--quick")
      args.quick = true;
    else if (a == "--context" && i + 1 < argc)
      args.context = std::stoi(argv[++i]);
    else if (a == "--bf16-activations")
      args.bf16_activations = true;
    else {
      std::fprintf(stderr,
                   "usage: engine_bench --model DIR [--threads N] [--only decode|batch|prefill|kv|long|restart] "
                   "[--context N] [--bf16-activations] [--quick]\n");
      return 2;
    }
  }
  if (args.model.empty()) {
    std::fprintf(stderr,
                 "engine_bench: --model DIR is required (agentserve make-model --preset bench --out DIR)\n");
    return 2;
  }
  return agentserve::bench::run(args);
}
