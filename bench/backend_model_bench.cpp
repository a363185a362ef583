// BackendModel on every backend present against the engine's Qwen3MoeModel on the CPU, same model, same
// chunks: prefill of one prompt, and decode steps at batch 1 and 16. On the CPU backend the ratio says what
// the Backend interface costs (it should be ~1.0: same kernels, same work split); on a GPU it is the
// speedup over the CPU engine of this machine.
//
//   build/bench/backend_model_bench [--model models/bench] [--threads 2] [--prefill 128] [--steps 16]
//   [--rounds 3]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/backend_model.h"
#include "engine/qwen3_moe_model.h"
#include "kernels/cpu/simd.h"
#include "memory/kv_arena.h"

namespace agentserve {
namespace {

using engine::ForwardChunk;
using engine::LogitsWanted;

struct Args {
  std::string model = "models/bench";
  int threads = 2;
  int prefill = 128;
  int steps = 16;
  int rounds = 3;
};

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// One forward call on whichever model; returns false on error (printed).
using Forward = std::function<bool(std::span<const ForwardChunk>)>;

struct Figures {
  double prefill_tok_s = 0, decode1_tok_s = 0, decode16_tok_s = 0;
};

// Sequence s owns blocks [s * per_seq, (s + 1) * per_seq).
Figures measure(const Forward& forward, const Args& args, int per_seq) {
  std::mt19937 rng(1);
  std::uniform_int_distribution<int32_t> id(0, 150000);
  std::vector<std::vector<int>> tables(16);
  for (int s = 0; s < 16; ++s)
    for (int b = 0; b < per_seq; ++b) tables[static_cast<size_t>(s)].push_back(s * per_seq + b);
  std::vector<std::vector<int32_t>> tokens(16);
  for (auto& t : tokens)
    for (int i = 0; i < args.prefill + args.steps + 1; ++i) t.push_back(id(rng));

  Figures f;
  auto prefill = [&](int s) {
    const ForwardChunk chunk{
        .tokens =
            std::span<const int32_t>(tokens[static_cast<size_t>(s)]).first(static_cast<size_t>(args.prefill)),
        .start_position = 0,
        .block_table = tables[static_cast<size_t>(s)],
        .logits = LogitsWanted::kLast};
    return forward({&chunk, 1});
  };
  auto start = std::chrono::steady_clock::now();
  if (!prefill(0)) return f;
  f.prefill_tok_s = args.prefill / seconds_since(start);
  for (int s = 1; s < 16; ++s)
    if (!prefill(s)) return f;

  auto decode = [&](int batch) {
    const auto begin = std::chrono::steady_clock::now();
    for (int step = 0; step < args.steps; ++step) {
      std::vector<ForwardChunk> chunks;
      for (int s = 0; s < batch; ++s) {
        const size_t pos = static_cast<size_t>(args.prefill + step);
        chunks.push_back({.tokens = std::span<const int32_t>(tokens[static_cast<size_t>(s)]).subspan(pos, 1),
                          .start_position = static_cast<int>(pos),
                          .block_table = tables[static_cast<size_t>(s)],
                          .logits = LogitsWanted::kLast});
      }
      if (!forward(chunks)) return 0.0;
    }
    return batch * args.steps / seconds_since(begin);
  };
  f.decode1_tok_s = decode(1);
  f.decode16_tok_s = decode(16);
  return f;
}

int run(const Args& args) {
  auto config = engine::load_model_config(args.model);
  if (!config.ok()) {
    std::fprintf(stderr, "%s (make one: agentserve make-model --preset bench --out models/bench)\n",
                 config.status().to_string().c_str());
    return 1;
  }
  auto weights = engine::ModelWeights::open(args.model, *config);
  if (!weights.ok()) {
    std::fprintf(stderr, "%s\n", weights.status().to_string().c_str());
    return 1;
  }
  const int block_size = 16;
  const int per_seq = (args.prefill + args.steps + block_size) / block_size;
  const int n_blocks = 16 * per_seq;
  const int max_step = std::max(args.prefill, 16);
  ThreadPool pool(args.threads);
  std::printf("model %s, %d threads, cpu kernels %s; prefill %d tokens, %d decode steps\n",
              args.model.c_str(), args.threads, kernels::simd::isa_name(), args.prefill, args.steps);

  engine::Qwen3MoeModel reference(*config, *weights, pool, max_step);
  auto arena = memory::KvArena::create({.n_layers = config->num_hidden_layers,
                                        .n_kv_heads = config->num_key_value_heads,
                                        .head_dim = static_cast<int>(config->head_dim),
                                        .block_size = block_size},
                                       n_blocks);
  if (!arena.ok()) return 1;
  std::vector<float> logits;
  std::vector<std::string> names = {"Qwen3MoeModel (cpu)"};
  std::vector<Forward> forwards = {[&](std::span<const ForwardChunk> chunks) {
    const Status s = reference.forward(chunks, *arena, logits);
    if (!s.ok()) std::fprintf(stderr, "%s\n", s.to_string().c_str());
    return s.ok();
  }};
  auto backends = engine::make_backends(pool);
  std::vector<std::unique_ptr<engine::BackendModel>> models;
  for (auto& backend : backends) {
    engine::BackendModelOptions options;
    options.max_step_tokens = max_step;
    options.num_kv_blocks = n_blocks;
    options.block_size = block_size;
    options.max_context_len = static_cast<int64_t>(per_seq) * block_size;
    options.max_chunks = 16;
    auto model = engine::BackendModel::create(*backend, *config, *weights, options);
    if (!model.ok()) {
      std::fprintf(stderr, "%s: %s\n", backend->name().c_str(), model.status().to_string().c_str());
      continue;
    }
    models.push_back(std::move(*model));
    engine::BackendModel* m = models.back().get();
    names.push_back("BackendModel (" + backend->name() + ")");
    forwards.push_back([&logits, m](std::span<const ForwardChunk> chunks) {
      const Status s = m->forward(chunks, logits);
      if (!s.ok()) std::fprintf(stderr, "%s\n", s.to_string().c_str());
      return s.ok();
    });
  }
  // Interleaved rounds, best of each: the machine is shared, and a slow moment then hits every model alike.
  std::vector<Figures> best(forwards.size());
  for (int round = 0; round < args.rounds; ++round) {
    for (size_t i = 0; i < forwards.size(); ++i) {
      const Figures f = measure(forwards[i], args, per_seq);
      best[i].prefill_tok_s = std::max(best[i].prefill_tok_s, f.prefill_tok_s);
      best[i].decode1_tok_s = std::max(best[i].decode1_tok_s, f.decode1_tok_s);
      best[i].decode16_tok_s = std::max(best[i].decode16_tok_s, f.decode16_tok_s);
    }
  }
  for (size_t i = 0; i < forwards.size(); ++i) {
    std::printf("%-28s prefill %8.1f tok/s   decode b1 %7.1f tok/s   b16 %8.1f tok/s\n", names[i].c_str(),
                best[i].prefill_tok_s, best[i].decode1_tok_s, best[i].decode16_tok_s);
    if (i == 0) continue;
    std::printf("%-28s prefill %8.2fx          decode b1 %7.2fx          b16 %8.2fx   (vs Qwen3MoeModel)\n",
                "", best[i].prefill_tok_s / best[0].prefill_tok_s,
                best[i].decode1_tok_s / best[0].decode1_tok_s,
                best[i].decode16_tok_s / best[0].decode16_tok_s);
  }
  return 0;
}

}  // namespace
}  // namespace agentserve

int main(int argc, char** argv) {
  agentserve::Args args;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--model") {
      args.model = argv[i + 1];
    } else if (flag == "--threads") {
      args.threads = std::atoi(argv[i + 1]);
    } else if (flag == "--prefill") {
      args.prefill = std::max(1, std::atoi(argv[i + 1]));
    } else if (flag == "--rounds") {
      args.rounds = std::max(1, std::atoi(argv[i + 1]));
    } else if (flag == "--steps") {
      args.steps = std::max(1, std::atoi(argv[i + 1]));
    } else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  return agentserve::run(args);
}
