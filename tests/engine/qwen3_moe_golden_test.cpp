// Golden tests: the engine's logits and greedy tokens against an independent NumPy implementation of
// transformers' Qwen3MoeForCausalLM (tests/reference/qwen3_moe_ref.py), run on the same checkpoints
// (same generator, same seed, same bytes). tests/reference/make_engine_golden.sh regenerates the data.
//
// Tolerances. With f32 weights both sides compute in f32 and differ only in summation order (the engine
// uses FMA and blocked sums, NumPy pairwise sums), so per-logit differences are ~1e-6 relative; we allow
// 1e-4 of the position's logit range, far under the 1e-3 the issue asks and far above rounding noise.
// With bf16 weights the reference widens the same bf16 values to f32, so the same bound holds; argmax and
// top-5 are checked as well. Greedy decoding must give the same 32 tokens.
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/engine.h"
#include "tests/engine/test_models.h"

namespace agentserve::engine {
namespace {

nlohmann::json load_golden(const std::string& name) {
  const std::string path = std::string(AGENTSERVE_SOURCE_DIR) + "/tests/engine/data/golden/" + name + ".json";
  std::ifstream in(path);
  REQUIRE_MESSAGE(in.good(), "missing golden file " << path);
  return nlohmann::json::parse(in);
}

std::filesystem::path model_for(const nlohmann::json& golden) {
  const auto& m = golden["model"];
  const DType dtype = m["dtype"] == "f32" ? DType::kF32 : DType::kBF16;
  const uint64_t seed = m["seed"].get<uint64_t>();
  if (m.contains("config")) {
    auto config = parse_model_config(m["config"].dump());
    REQUIRE_MESSAGE(config.ok(), config.status().to_string());
    return testing::test_model_dir(m["name"].get<std::string>(), dtype, seed, &*config);
  }
  return testing::test_model_dir(m["preset"].get<std::string>(), dtype, seed);
}

void check_against_golden(const std::string& name) {
  const auto golden = load_golden(name);
  EngineOptions options;
  options.model_dir = model_for(golden);
  options.n_threads = 2;
  options.kv_cache_bytes = size_t{64} << 20;
  options.max_step_tokens = 64;  // several chunks, so chunked prefill is part of what is checked
  auto engine = Engine::open(options);
  REQUIRE_MESSAGE(engine.ok(), engine.status().to_string());

  const auto ids = golden["ids"].get<std::vector<int32_t>>();
  const auto columns = golden["columns"].get<std::vector<size_t>>();
  const size_t vocab = golden["vocab_size"].get<size_t>();
  auto logits = (*engine)->score(ids);
  REQUIRE_MESSAGE(logits.ok(), logits.status().to_string());
  REQUIRE(logits->size() == ids.size() * vocab);

  double worst_relative = 0.0;
  for (size_t pos = 0; pos < ids.size(); ++pos) {
    const float* row = logits->data() + pos * vocab;
    const auto expected = golden["logits"][pos].get<std::vector<float>>();
    const double range = golden["logit_max"][pos].get<double>() - golden["logit_min"][pos].get<double>();
    REQUIRE(range > 0.5);  // a degenerate model would make the comparison meaningless
    for (size_t c = 0; c < columns.size(); ++c) {
      worst_relative = std::max(worst_relative, std::fabs(row[columns[c]] - expected[c]) / range);
    }
    // Top-5 ids, in order.
    std::vector<int32_t> order(vocab);
    for (size_t i = 0; i < vocab; ++i) order[i] = static_cast<int32_t>(i);
    std::partial_sort(order.begin(), order.begin() + 5, order.end(),
                      [&](int32_t a, int32_t b) { return row[a] > row[b] || (row[a] == row[b] && a < b); });
    const auto top5 = golden["top5"][pos].get<std::vector<int32_t>>();
    CHECK_MESSAGE(std::vector<int32_t>(order.begin(), order.begin() + 5) == top5, "position " << pos);
  }
  MESSAGE(name << ": worst |logit diff| / logit range = " << worst_relative);
  CHECK(worst_relative < 1e-4);

  SamplingParams greedy;
  greedy.temperature = 0.0;
  greedy.ignore_eos = true;
  const auto expected_tokens = golden["greedy"].get<std::vector<int32_t>>();
  greedy.max_tokens = static_cast<int>(expected_tokens.size());
  auto generated = (*engine)->generate(ids, greedy);
  REQUIRE(generated.ok());
  CHECK(generated->tokens == expected_tokens);
}

TEST_CASE("tiny f32 model: logits and 32 greedy tokens match the NumPy reference") {
  check_against_golden("tiny-f32");
}

TEST_CASE("tiny bf16 model: logits, top-5 and 32 greedy tokens match the NumPy reference") {
  check_against_golden("tiny-bf16");
}

TEST_CASE("medium model with a dense layer and unnormalised routing matches the NumPy reference") {
  check_against_golden("medium-f32");
}

}  // namespace
}  // namespace agentserve::engine
