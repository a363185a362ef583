#include "engine/engine.h"

#include <doctest/doctest.h>

#include <unistd.h>
#include <cmath>
#include <future>
#include <random>

#include "tests/engine/test_models.h"

namespace agentserve::engine {
namespace {

using testing::greedy;
using testing::random_ids;
using testing::test_model_dir;

std::unique_ptr<Engine> open_tiny(int max_step_tokens = 256, size_t kv_bytes = size_t{64} << 20,
                                  int max_context = 0) {
  EngineOptions options;
  options.model_dir = test_model_dir("tiny", DType::kF32, 7);
  options.n_threads = 2;
  options.max_step_tokens = max_step_tokens;
  options.kv_cache_bytes = kv_bytes;
  options.max_context = max_context;
  auto engine = Engine::open(options);
  REQUIRE_MESSAGE(engine.ok(), engine.status().to_string());
  return std::move(*engine);
}

// Submits all prompts at once and waits for every one: the engine batches them.
std::vector<std::vector<int32_t>> generate_together(Engine& engine,
                                                    const std::vector<std::vector<int32_t>>& prompts,
                                                    const SamplingParams& params) {
  std::vector<std::vector<int32_t>> outputs(prompts.size());
  std::vector<std::promise<void>> done(prompts.size());
  std::mutex mutex;
  for (size_t i = 0; i < prompts.size(); ++i) {
    GenerationRequest request{.prompt = prompts[i], .sampling = params};
    request.on_event = [&, i](const GenerationEvent& event) {
      std::lock_guard lock(mutex);
      outputs[i].insert(outputs[i].end(), event.tokens.begin(), event.tokens.end());
      if (event.finished) done[i].set_value();
    };
    REQUIRE(engine.submit(std::move(request)).ok());
  }
  for (auto& d : done) d.get_future().wait();
  return outputs;
}

TEST_CASE("batched decoding of 8 sequences of different lengths matches decoding each alone") {
  auto engine = open_tiny();
  std::mt19937 rng(11);
  std::vector<std::vector<int32_t>> prompts;
  for (int len : {1, 5, 9, 16, 17, 31, 48, 70}) prompts.push_back(random_ids(rng, len));
  const auto params = greedy(16);
  std::vector<std::vector<int32_t>> alone;
  for (const auto& p : prompts) {
    auto g = engine->generate(p, params);
    REQUIRE(g.ok());
    CHECK(g->tokens.size() == 16);
    alone.push_back(g->tokens);
  }
  // A different engine, so no prefix cache is shared with the runs above.
  auto fresh = open_tiny();
  const auto together = generate_together(*fresh, prompts, params);
  for (size_t i = 0; i < prompts.size(); ++i) CHECK(together[i] == alone[i]);
  CHECK(fresh->counters().steps < 8 * 17);  // they really ran in shared steps
}

TEST_CASE("chunked prefill gives the same logits as one pass") {
  std::mt19937 rng(3);
  const auto ids = random_ids(rng, 90);
  auto whole = open_tiny(256);
  auto chunked = open_tiny(7);
  auto a = whole->score(ids);
  auto b = chunked->score(ids);
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  REQUIRE(a->size() == b->size());
  float max_diff = 0.0f;
  for (size_t i = 0; i < a->size(); ++i) max_diff = std::max(max_diff, std::fabs((*a)[i] - (*b)[i]));
  CHECK(max_diff < 1e-3f);
}

TEST_CASE("a second request sharing a 1,000-token prefix prefills only the new tokens") {
  auto engine = open_tiny();
  std::mt19937 rng(5);
  const auto prefix = random_ids(rng, 1000);
  auto first = prefix;
  const auto tail_a = random_ids(rng, 10);
  first.insert(first.end(), tail_a.begin(), tail_a.end());
  auto second = prefix;
  const auto tail_b = random_ids(rng, 20);
  second.insert(second.end(), tail_b.begin(), tail_b.end());

  REQUIRE(engine->generate(first, greedy(2)).ok());
  const auto before = engine->counters();
  auto g = engine->generate(second, greedy(2));
  REQUIRE(g.ok());
  const auto after = engine->counters();
  CHECK(g->usage.cached_tokens == 992);  // 62 full blocks of 16
  CHECK(after.prefill_tokens - before.prefill_tokens == 1020 - 992);
  CHECK(after.prefix_hit_blocks - before.prefix_hit_blocks == 62);

  SUBCASE("another tenant's salt shares nothing") {
    auto other = engine->generate(second, greedy(2), "tenant-b");
    REQUIRE(other.ok());
    CHECK(other->usage.cached_tokens == 0);
    CHECK(other->tokens == g->tokens);  // and computes the same answer from scratch
  }
}

TEST_CASE("running out of KV blocks preempts and still gives every sequence its own answer") {
  std::mt19937 rng(9);
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 4; ++i) prompts.push_back(random_ids(rng, 40));
  const auto params = greedy(24);
  auto roomy = open_tiny();
  std::vector<std::vector<int32_t>> alone;
  for (const auto& p : prompts) alone.push_back(roomy->generate(p, params)->tokens);

  // 4 blocks per sequence at the end (64 tokens), 16 needed together; 10 fit.
  const size_t block_bytes = roomy->kv_layout().block_stride();
  auto tight = open_tiny(256, block_bytes * 10);
  const auto together = generate_together(*tight, prompts, params);
  for (size_t i = 0; i < prompts.size(); ++i) CHECK(together[i] == alone[i]);
  CHECK(tight->counters().preemptions > 0);
}

TEST_CASE("BF16 activations keep logits within their rounding of the f32 path") {
  std::mt19937 rng(21);
  const auto ids = random_ids(rng, 40);  // one 40-row step: the BF16 path takes every projection
  EngineOptions options;
  options.model_dir = test_model_dir("tiny", DType::kBF16, 7);
  options.n_threads = 2;
  options.kv_cache_bytes = size_t{16} << 20;
  auto exact = Engine::open(options);
  options.bf16_activations = true;
  auto rounded = Engine::open(options);
  REQUIRE(exact.ok());
  REQUIRE(rounded.ok());
  auto a = (*exact)->score(ids);
  auto b = (*rounded)->score(ids);
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  const size_t vocab = static_cast<size_t>((*exact)->config().vocab_size);
  double sum_relative = 0.0, any_diff = 0.0;
  int same_argmax = 0;
  for (size_t pos = 0; pos < ids.size(); ++pos) {
    const float* ra = a->data() + pos * vocab;
    const float* rb = b->data() + pos * vocab;
    const auto [lo, hi] = std::minmax_element(ra, ra + vocab);
    double row_sum = 0.0;
    for (size_t i = 0; i < vocab; ++i) {
      row_sum += std::fabs(ra[i] - rb[i]);
      any_diff = std::max(any_diff, static_cast<double>(std::fabs(ra[i] - rb[i])));
    }
    sum_relative += row_sum / static_cast<double>(vocab) / (*hi - *lo);
    same_argmax += std::max_element(ra, ra + vocab) - ra == std::max_element(rb, rb + vocab) - rb;
  }
  CHECK(any_diff > 0.0);  // the path really ran
  // Rounding moves logits by ~2^-9 relative per activation; a rare routing flip (a different expert wins a
  // near tie) moves one position further, so the bound is on the mean and on argmax agreement.
  CHECK(sum_relative / static_cast<double>(ids.size()) < 5e-3);
  CHECK(same_argmax >= static_cast<int>(ids.size()) * 9 / 10);
}

TEST_CASE("bad requests get clear errors and the engine keeps serving") {
  auto engine = open_tiny(256, size_t{64} << 20, 64);
  auto out_of_range = engine->submit({.prompt = {1, 2, 151936}, .sampling = greedy(1)});
  REQUIRE_FALSE(out_of_range.ok());
  CHECK(out_of_range.status().code() == StatusCode::kInvalidArgument);
  CHECK(out_of_range.status().message().find("151936") != std::string::npos);

  auto negative = engine->submit({.prompt = {-1}, .sampling = greedy(1)});
  CHECK(negative.status().code() == StatusCode::kInvalidArgument);

  auto empty = engine->submit({.prompt = {}, .sampling = greedy(1)});
  CHECK(empty.status().code() == StatusCode::kInvalidArgument);

  auto too_long = engine->submit({.prompt = std::vector<int32_t>(64, 5), .sampling = greedy(1)});
  CHECK(too_long.status().code() == StatusCode::kOutOfRange);

  auto zero_tokens = engine->submit({.prompt = {1, 2}, .sampling = greedy(0)});
  CHECK(zero_tokens.status().code() == StatusCode::kInvalidArgument);

  auto ok = engine->generate({1, 2, 3}, greedy(100));
  REQUIRE(ok.ok());
  CHECK(ok->finish_reason == FinishReason::kLength);
  CHECK(ok->tokens.size() == 64 - 3);  // stopped at the context limit, not at max_tokens
}

TEST_CASE("cancel ends a running request with finish reason cancelled") {
  auto engine = open_tiny();
  std::promise<FinishReason> finished;
  std::atomic<int> tokens{0};
  GenerationRequest request{.prompt = {1, 2, 3}, .sampling = greedy(100000 - 10)};
  request.sampling.max_tokens = 50000;
  request.on_event = [&](const GenerationEvent& e) {
    tokens += static_cast<int>(e.tokens.size());
    if (e.finished) finished.set_value(e.finish_reason);
  };
  auto id = engine->submit(std::move(request));
  REQUIRE(id.ok());
  while (tokens.load() < 3) std::this_thread::yield();
  engine->cancel(*id);
  CHECK(finished.get_future().get() == FinishReason::kCancelled);
  CHECK(tokens.load() < 50000);
}

}  // namespace
}  // namespace agentserve::engine
