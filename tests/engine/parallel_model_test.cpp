// Tensor and expert parallelism on CPU: an engine whose model is split over 2 or 4 ranks (threads talking
// through the in-process communicator) must compute what the single-rank engine computes. Logits are
// compared through Engine::score with a small step budget (so prefill runs in chunks over cached K/V),
// tokens through concurrent greedy generations (so decode runs batched). Sums over ranks are added in a
// different order than one rank's dot products, so logits agree to rounding (1e-4 of the position's logit
// range, as in the golden tests), not bit for bit.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <future>
#include <set>

#include "engine/engine.h"
#include "engine/model_shard.h"
#include "tests/engine/test_models.h"

namespace agentserve::engine {
namespace {

// The golden tests' "medium" shape: 8 heads over 2 kv heads (TP=4 replicates kv heads), 16 experts top-4
// with unnormalised routing, and a dense MLP layer (split by columns in both modes).
ModelConfig medium_config() {
  auto c = model_preset("tiny");
  REQUIRE(c.ok());
  ModelConfig m = *c;
  m.hidden_size = 128;
  m.num_hidden_layers = 3;
  m.num_attention_heads = 8;
  m.num_key_value_heads = 2;
  m.head_dim = 32;
  m.num_experts = 16;
  m.num_experts_per_tok = 4;
  m.moe_intermediate_size = 64;
  m.intermediate_size = 192;
  m.mlp_only_layers = {1};
  m.norm_topk_prob = false;
  m.torch_dtype = "float32";
  return m;
}

std::unique_ptr<Engine> open_engine(const std::filesystem::path& dir, ParallelLayout layout) {
  EngineOptions options;
  options.model_dir = dir;
  options.n_threads = 2;
  options.kv_cache_bytes = size_t{32} << 20;
  options.max_step_tokens = 24;
  options.tensor_parallel_size = layout.tensor_parallel_size;
  options.expert_parallel = layout.expert_parallel;
  auto engine = Engine::open(options);
  REQUIRE_MESSAGE(engine.ok(), engine.status().to_string());
  return std::move(*engine);
}

struct Reference {
  std::vector<int32_t> prompt;
  std::vector<float> logits;
  std::vector<std::vector<int32_t>> prompts;
  std::vector<std::vector<int32_t>> tokens;
};

std::vector<std::vector<int32_t>> generate_batch(Engine& engine,
                                                 const std::vector<std::vector<int32_t>>& prompts) {
  std::vector<std::future<Result<Generation>>> runs;
  for (const auto& p : prompts) {
    runs.push_back(
        std::async(std::launch::async, [&engine, p] { return engine.generate(p, testing::greedy(12)); }));
  }
  std::vector<std::vector<int32_t>> out;
  for (auto& run : runs) {
    auto g = run.get();
    REQUIRE_MESSAGE(g.ok(), g.status().to_string());
    out.push_back(g->tokens);
  }
  return out;
}

Reference single_rank(const std::filesystem::path& dir) {
  std::mt19937 rng(11);
  Reference ref;
  ref.prompt = testing::random_ids(rng, 70);
  for (int n : {5, 30, 47}) ref.prompts.push_back(testing::random_ids(rng, n));
  auto engine = open_engine(dir, {});
  auto logits = engine->score(ref.prompt);
  REQUIRE_MESSAGE(logits.ok(), logits.status().to_string());
  ref.logits = std::move(*logits);
  ref.tokens = generate_batch(*engine, ref.prompts);
  return ref;
}

void check_layout(const std::filesystem::path& dir, const Reference& ref, ParallelLayout layout) {
  const std::string name = "tensor_parallel_size " + std::to_string(layout.tensor_parallel_size) +
                           (layout.expert_parallel ? ", expert parallel" : "");
  INFO(name);
  auto engine = open_engine(dir, layout);
  auto logits = engine->score(ref.prompt);
  REQUIRE_MESSAGE(logits.ok(), logits.status().to_string());
  REQUIRE(logits->size() == ref.logits.size());
  const size_t vocab = static_cast<size_t>(engine->config().vocab_size);
  double worst = 0.0;
  for (size_t pos = 0; pos < ref.prompt.size(); ++pos) {
    const float* want = ref.logits.data() + pos * vocab;
    const float* got = logits->data() + pos * vocab;
    const auto [lo, hi] = std::minmax_element(want, want + vocab);
    const double range = static_cast<double>(*hi - *lo);
    REQUIRE(range > 0.5);
    for (size_t i = 0; i < vocab; ++i)
      worst = std::max(worst, std::fabs(static_cast<double>(got[i] - want[i])) / range);
  }
  MESSAGE(name << ": worst |logit diff| / logit range = " << worst);
  CHECK(worst < 1e-4);
  CHECK(generate_batch(*engine, ref.prompts) == ref.tokens);
}

TEST_CASE("TP=2, TP=4, EP=2 and EP=4 match the single-rank engine on the tiny model") {
  const auto dir = testing::test_model_dir("tiny", DType::kF32, 5);
  const Reference ref = single_rank(dir);
  for (ParallelLayout layout : {ParallelLayout{2, false}, ParallelLayout{4, false}, ParallelLayout{2, true},
                                ParallelLayout{4, true}}) {
    check_layout(dir, ref, layout);
  }
}

TEST_CASE("TP and EP match the single-rank engine on a model with a dense layer and replicated kv heads") {
  const ModelConfig config = medium_config();
  const auto dir = testing::test_model_dir("medium", DType::kF32, 3, &config);
  const Reference ref = single_rank(dir);
  for (ParallelLayout layout :
       {ParallelLayout{2, false}, ParallelLayout{4, false}, ParallelLayout{4, true}}) {
    check_layout(dir, ref, layout);
  }
}

TEST_CASE("BF16 weights: TP=2 with expert parallel gives the single-rank greedy tokens") {
  const auto dir = testing::test_model_dir("tiny", DType::kBF16, 9);
  const Reference ref = single_rank(dir);
  check_layout(dir, ref, {2, true});
}

TEST_CASE("shard plan: q heads split evenly, kv heads replicated past their count, every expert owned once") {
  const ModelConfig config = medium_config();
  std::vector<int> expert_owner(static_cast<size_t>(config.num_experts), -1);
  for (int r = 0; r < 4; ++r) {
    const ModelShard tp = plan_shard(config, {4, false}, r);
    CHECK(tp.heads_begin == 2 * r);
    CHECK(tp.heads_end == 2 * r + 2);
    // Heads 2r, 2r+1 belong to GQA group (2r) / 4 = r / 2.
    CHECK(tp.kv_heads_begin == r / 2);
    CHECK(tp.kv_heads_end == r / 2 + 1);
    CHECK(tp.experts_begin == 0);
    CHECK(tp.experts_end == config.num_experts);
    const ModelShard ep = plan_shard(config, {4, true}, r);
    for (int e = ep.experts_begin; e < ep.experts_end; ++e) {
      CHECK(expert_owner[static_cast<size_t>(e)] == -1);
      expert_owner[static_cast<size_t>(e)] = r;
    }
    const ModelConfig sc = shard_config(config, tp);
    CHECK(sc.num_attention_heads == 2);
    CHECK(sc.num_key_value_heads == 1);
    CHECK(sc.moe_intermediate_size == 16);
    CHECK(sc.intermediate_size == 48);
  }
  CHECK(std::count(expert_owner.begin(), expert_owner.end(), -1) == 0);
}

TEST_CASE("a layout the model cannot be split into is refused with the reason") {
  const auto config = model_preset("tiny");
  REQUIRE(config.ok());
  const Status three = validate_parallel_layout(*config, {3, false});
  CHECK(three.code() == StatusCode::kInvalidArgument);
  CHECK(three.message().find("num_attention_heads") != std::string::npos);
  CHECK(validate_parallel_layout(*config, {0, false}).code() == StatusCode::kInvalidArgument);
  // 8 experts cannot be spread over 16 ranks (nor 4 heads).
  CHECK(validate_parallel_layout(*config, {16, true}).code() == StatusCode::kInvalidArgument);
  ModelConfig odd = *config;
  odd.num_key_value_heads = 4;
  odd.num_attention_heads = 12;
  CHECK(validate_parallel_layout(odd, {3, false}).message().find("num_key_value_heads") != std::string::npos);

  EngineOptions options;
  options.model_dir = testing::test_model_dir("tiny", DType::kF32, 5);
  options.n_threads = 2;
  options.kv_cache_bytes = size_t{8} << 20;
  options.tensor_parallel_size = 3;
  CHECK(Engine::open(options).status().code() == StatusCode::kInvalidArgument);
  options.tensor_parallel_size = 2;
  options.host_kv_bytes = size_t{8} << 20;
  CHECK(Engine::open(options).status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("prefix keys depend on the parallel layout") {
  const auto dir = testing::test_model_dir("tiny", DType::kF32, 5);
  std::set<std::string> fingerprints;
  for (ParallelLayout layout :
       {ParallelLayout{1, false}, ParallelLayout{2, false}, ParallelLayout{2, true}}) {
    fingerprints.insert(open_engine(dir, layout)->model_fingerprint());
  }
  CHECK(fingerprints.size() == 3);
}

}  // namespace
}  // namespace agentserve::engine
