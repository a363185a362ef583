// BackendModel against Qwen3MoeModel, on every backend this build and machine have (make_backends): the
// same chunks through both, each with its own KV pool, for a prefill, a chunked prefill over a cached
// prefix, and batched decodes of sequences of different lengths. The CPU backend wraps the very kernels
// the engine calls, so its logits agree to 1e-5 of the logit range and its greedy tokens are identical; a
// backend with bf16 weights or KV (CUDA) agrees to 2e-2 of the range, and its greedy token must be the
// reference's argmax or a token whose reference logit is within that noise of the maximum. This file is what
// proves a new backend on its first run.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>

#include "engine/backend_model.h"
#include "engine/qwen3_moe_model.h"
#include "memory/kv_arena.h"
#include "tests/engine/test_models.h"

namespace agentserve::engine {
namespace {

constexpr int kBlockSize = 16;
constexpr int kBlocks = 96;
constexpr int kMaxStepTokens = 64;

struct Fixture {
  ModelConfig config;
  ModelWeights weights;
};

Fixture load(const std::filesystem::path& dir) {
  auto config = load_model_config(dir);
  REQUIRE_MESSAGE(config.ok(), config.status().to_string());
  auto weights = ModelWeights::open(dir, *config);
  REQUIRE_MESSAGE(weights.ok(), weights.status().to_string());
  return {*config, std::move(*weights)};
}

bool is_cpu(const Backend& backend) {
  return backend.name() == "cpu";
}

// Largest |got - want| over a row block, divided by the reference row's logit range.
double worst_relative_error(const std::vector<float>& want, const std::vector<float>& got, size_t vocab) {
  REQUIRE(want.size() == got.size());
  double worst = 0.0;
  for (size_t row = 0; row * vocab < want.size(); ++row) {
    const float* w = want.data() + row * vocab;
    const float* g = got.data() + row * vocab;
    const auto [lo, hi] = std::minmax_element(w, w + vocab);
    const double range = std::max(1.0, static_cast<double>(*hi - *lo));
    for (size_t i = 0; i < vocab; ++i)
      worst = std::max(worst, std::fabs(static_cast<double>(g[i] - w[i])) / range);
  }
  return worst;
}

// The reference engine model and the backend model side by side, fed the same chunks.
struct Pair {
  Pair(const Fixture& f, Backend& backend, ThreadPool& pool)
      : reference(f.config, f.weights, pool, kMaxStepTokens),
        arena(make_arena(f.config)),
        tolerance(is_cpu(backend) ? 1e-5 : 2e-2) {
    BackendModelOptions options;
    options.max_step_tokens = kMaxStepTokens;
    options.num_kv_blocks = kBlocks;
    options.block_size = kBlockSize;
    options.max_context_len = kBlocks * kBlockSize;
    options.logits_rows_per_pass = 16;  // below the prefill length, so lm_head runs in several passes
    auto m = BackendModel::create(backend, f.config, f.weights, options);
    REQUIRE_MESSAGE(m.ok(), m.status().to_string());
    model = std::move(*m);
  }

  static memory::KvArena make_arena(const ModelConfig& c) {
    auto arena = memory::KvArena::create({.n_layers = c.num_hidden_layers,
                                          .n_kv_heads = c.num_key_value_heads,
                                          .head_dim = static_cast<int>(c.head_dim),
                                          .block_size = kBlockSize},
                                         kBlocks);
    REQUIRE(arena.ok());
    return std::move(*arena);
  }

  // Runs the step on both and returns the reference logits after checking the backend's against them.
  std::vector<float> step(std::span<const ForwardChunk> chunks) {
    std::vector<float> want, got;
    const Status ref_status = reference.forward(chunks, arena, want);
    REQUIRE_MESSAGE(ref_status.ok(), ref_status.to_string());
    const Status status = model->forward(chunks, got);
    REQUIRE_MESSAGE(status.ok(), status.to_string());
    const double worst = worst_relative_error(want, got, static_cast<size_t>(model->config().vocab_size));
    INFO(model->backend().name() << ": worst |logit diff| / logit range = " << worst);
    CHECK(worst <= tolerance);
    worst_seen = std::max(worst_seen, worst);
    return want;
  }

  Qwen3MoeModel reference;
  memory::KvArena arena;
  double tolerance;
  double worst_seen = 0.0;
  std::unique_ptr<BackendModel> model;
};

// A sequence with its own run of blocks: sequence s owns blocks [s * 24, s * 24 + 24).
struct Sequence {
  std::vector<int32_t> tokens;
  std::vector<int> table;
  int cached = 0;

  Sequence(std::mt19937& rng, int index, int length) : tokens(testing::random_ids(rng, length)) {
    for (int b = 0; b < 24; ++b) table.push_back(index * 24 + b);
  }
  ForwardChunk chunk(int begin, int end, LogitsWanted logits) const {
    return {.tokens = std::span<const int32_t>(tokens).subspan(static_cast<size_t>(begin),
                                                               static_cast<size_t>(end - begin)),
            .start_position = begin,
            .block_table = table,
            .logits = logits};
  }
};

size_t argmax_row(const float* row, size_t vocab) {
  return static_cast<size_t>(std::max_element(row, row + vocab) - row);
}

// The reference row's logit range (at least 1).
double logit_range(const float* row, size_t vocab) {
  const auto [lo, hi] = std::minmax_element(row, row + vocab);
  return std::max(1.0, static_cast<double>(*hi - *lo));
}

double prefill_whole_prompt(const Fixture& f, Backend* backend, ThreadPool& pool, std::mt19937& rng) {
  Pair pair(f, *backend, pool);
  Sequence s(rng, 0, 37);
  const ForwardChunk chunk = s.chunk(0, 37, LogitsWanted::kAll);
  pair.step({&chunk, 1});
  return pair.worst_seen;
}

double chunked_prefill_over_cached_prefix(const Fixture& f, Backend* backend, ThreadPool& pool,
                                          std::mt19937& rng) {
  Pair pair(f, *backend, pool);
  Sequence s(rng, 0, 61);
  for (auto [begin, end] : {std::pair{0, 21}, std::pair{21, 40}, std::pair{40, 61}}) {
    const ForwardChunk chunk = s.chunk(begin, end, LogitsWanted::kAll);
    pair.step({&chunk, 1});
  }
  return pair.worst_seen;
}

double batched_decodes_and_mixed_step(const Fixture& f, Backend* backend, ThreadPool& pool,
                                      std::mt19937& rng) {
  const size_t vocab = static_cast<size_t>(f.config.vocab_size);
  Pair pair(f, *backend, pool);
  std::vector<Sequence> seqs;
  for (int i = 0; int len : {5, 17, 33}) seqs.emplace_back(rng, i++, len + 6);
  for (Sequence& s : seqs) {
    const int prompt = static_cast<int>(s.tokens.size()) - 6;
    const ForwardChunk chunk = s.chunk(0, prompt, LogitsWanted::kLast);
    pair.step({&chunk, 1});
    s.cached = prompt;
  }
  for (int step = 0; step < 5; ++step) {
    std::vector<ForwardChunk> chunks;
    for (Sequence& s : seqs) chunks.push_back(s.chunk(s.cached, s.cached + 1, LogitsWanted::kLast));
    const std::vector<float> logits = pair.step(chunks);
    CHECK(logits.size() == 3 * vocab);
    for (Sequence& s : seqs) ++s.cached;
  }
  Sequence fresh(rng, 3, 20);
  const std::vector<ForwardChunk> mixed = {
      seqs[2].chunk(seqs[2].cached, seqs[2].cached + 1, LogitsWanted::kLast),
      fresh.chunk(0, 20, LogitsWanted::kAll)};
  CHECK(pair.step(mixed).size() == 21 * vocab);
  return pair.worst_seen;
}

double greedy_tokens_on_backend(const Fixture& f, Backend* backend, ThreadPool& pool, std::mt19937& rng) {
  const size_t vocab = static_cast<size_t>(f.config.vocab_size);
  Pair pair(f, *backend, pool);
  std::vector<Sequence> seqs;
  for (int i = 0; int len : {3, 19, 40}) seqs.emplace_back(rng, i++, len);
  std::vector<ForwardChunk> chunks;
  for (const Sequence& s : seqs)
    chunks.push_back(s.chunk(0, static_cast<int>(s.tokens.size()), LogitsWanted::kLast));
  int identical = 0;
  for (int step = 0; step < 8; ++step) {
    std::vector<float> want;
    std::vector<int32_t> got;
    REQUIRE(pair.reference.forward(chunks, pair.arena, want).ok());
    const Status status = pair.model->forward_greedy(chunks, got);
    REQUIRE_MESSAGE(status.ok(), status.to_string());
    REQUIRE(got.size() == seqs.size());
    for (size_t i = 0; i < seqs.size(); ++i) {
      const float* row = want.data() + i * vocab;
      const auto expected = static_cast<int32_t>(argmax_row(row, vocab));
      REQUIRE(got[i] >= 0);
      REQUIRE(static_cast<size_t>(got[i]) < vocab);
      if (is_cpu(*backend)) {
        CHECK(got[i] == expected);
      } else {
        // Within the logit tolerance, a near-tie may go either way; anything else must be the argmax.
        CHECK(row[got[i]] >= row[expected] - pair.tolerance * logit_range(row, vocab));
      }
      identical += got[i] == expected ? 1 : 0;
      // Both continue with the reference's token, so one near-tie cannot change the later steps.
      seqs[i].tokens.push_back(expected);
    }
    chunks.clear();
    for (const Sequence& s : seqs) {
      const int n = static_cast<int>(s.tokens.size());
      chunks.push_back(s.chunk(n - 1, n, LogitsWanted::kLast));
    }
  }
  return static_cast<double>(identical);
}

// Every scenario on every backend present.
void run_scenarios(const Fixture& f) {
  ThreadPool pool(2);
  auto backends = make_backends(pool);
  REQUIRE(!backends.empty());
  CHECK(is_cpu(*backends[0]));
  using Scenario = double (*)(const Fixture&, Backend*, ThreadPool&, std::mt19937&);
  const std::pair<const char*, Scenario> scenarios[] = {
      {"prefill of a whole prompt, every position's logits: worst |logit diff| / range",
       prefill_whole_prompt},
      {"chunked prefill over a cached prefix not a multiple of the block size: worst |logit diff| / range",
       chunked_prefill_over_cached_prefix},
      {"batched decodes of different lengths, then decode + prefill in one step: worst |logit diff| / range",
       batched_decodes_and_mixed_step},
      {"greedy tokens chosen on the backend: rows identical to the reference (of 24)",
       greedy_tokens_on_backend}};
  for (auto& backend : backends) {
    std::mt19937 rng(7);
    for (const auto& [name, run] : scenarios) {
      double value = 0.0;
      {
        INFO(backend->name() << ": " << std::string(name));
        value = run(f, backend.get(), pool, rng);
      }
      MESSAGE(backend->name() << ": " << std::string(name) << " = " << value);
    }
  }
}

TEST_CASE("BackendModel matches Qwen3MoeModel on the tiny preset (f32 weights)") {
  run_scenarios(load(testing::test_model_dir("tiny", DType::kF32, 3)));
}

TEST_CASE(
    "BackendModel matches Qwen3MoeModel with bf16 weights, a dense layer, YaRN and unnormalised routing") {
  auto config = model_preset("tiny");
  REQUIRE(config.ok());
  ModelConfig c = *config;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 8;
  c.num_key_value_heads = 2;
  c.head_dim = 64;
  c.mlp_only_layers = {1};
  c.norm_topk_prob = false;
  c.rope_scaling = RopeScaling{.factor = 4.0, .original_max_position_embeddings = 32};
  c.torch_dtype = "bfloat16";
  run_scenarios(load(testing::test_model_dir("tiny-variant", DType::kBF16, 4, &c)));
}

TEST_CASE("BackendModel rejects a bad step before touching the cache") {
  const Fixture f = load(testing::test_model_dir("tiny", DType::kF32, 3));
  ThreadPool pool(1);
  auto backend = make_cpu_backend(pool);
  BackendModelOptions options;
  options.max_step_tokens = 8;
  options.num_kv_blocks = 4;
  auto model = BackendModel::create(*backend, f.config, f.weights, options);
  REQUIRE(model.ok());
  std::vector<float> logits;
  const std::vector<int32_t> too_many(9, 1);
  const std::vector<int> table = {0};
  const ForwardChunk long_chunk{.tokens = too_many, .start_position = 0, .block_table = table};
  CHECK((*model)->forward({&long_chunk, 1}, logits).code() == StatusCode::kInvalidArgument);
  const std::vector<int32_t> bad_id = {static_cast<int32_t>(f.config.vocab_size)};
  const ForwardChunk bad{.tokens = bad_id, .start_position = 0, .block_table = table};
  CHECK((*model)->forward({&bad, 1}, logits).code() == StatusCode::kInvalidArgument);
  const std::vector<int> far_block = {4};
  const std::vector<int32_t> one = {1};
  const ForwardChunk outside{.tokens = one, .start_position = 0, .block_table = far_block};
  CHECK((*model)->forward({&outside, 1}, logits).code() == StatusCode::kInvalidArgument);
  const ForwardChunk short_table{.tokens = one, .start_position = 16, .block_table = table};
  CHECK((*model)->forward({&short_table, 1}, logits).code() == StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace agentserve::engine
