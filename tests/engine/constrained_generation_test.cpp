#include <doctest/doctest.h>

#include <algorithm>
#include <future>
#include <random>
#include <set>

#include "engine/engine.h"
#include "tests/engine/test_models.h"

namespace agentserve::engine {
namespace {

using testing::greedy;
using testing::random_ids;
using testing::test_model_dir;

std::unique_ptr<Engine> open_tiny() {
  EngineOptions options;
  options.model_dir = test_model_dir("tiny", DType::kF32, 7);
  options.n_threads = 2;
  options.kv_cache_bytes = size_t{32} << 20;
  auto engine = Engine::open(options);
  REQUIRE_MESSAGE(engine.ok(), engine.status().to_string());
  return std::move(*engine);
}

// Allows a fixed set of ids; complete after `length` tokens (0: never), and can refuse a given token.
class SetConstraint : public TokenConstraint {
 public:
  SetConstraint(std::vector<int32_t> ids, int length = 0) : ids_(std::move(ids)), length_(length) {}
  void fill_allowed(std::span<uint32_t> mask) override {
    ++fills;
    std::fill(mask.begin(), mask.end(), 0u);
    for (int32_t id : ids_) mask[static_cast<size_t>(id / 32)] |= 1u << (id % 32);
  }
  Status accept(int32_t token) override {
    accepted.push_back(token);
    if (token == refuse) return Status::invalid_argument("refused");
    return {};
  }
  bool is_complete() const override { return length_ > 0 && static_cast<int>(accepted.size()) >= length_; }

  std::vector<int32_t> accepted;
  int fills = 0;
  int32_t refuse = -1;

 private:
  std::vector<int32_t> ids_;
  int length_;
};

struct Outcome {
  std::vector<int32_t> tokens;
  FinishReason reason = FinishReason::kNone;
  Status error;
};

Outcome run(Engine& engine, std::vector<int32_t> prompt, SamplingParams params,
            std::shared_ptr<TokenConstraint> constraint) {
  auto done = std::make_shared<std::promise<void>>();
  auto out = std::make_shared<Outcome>();
  GenerationRequest request{.prompt = std::move(prompt), .sampling = params};
  request.constraint = std::move(constraint);
  request.on_event = [done, out](const GenerationEvent& event) {
    out->tokens.insert(out->tokens.end(), event.tokens.begin(), event.tokens.end());
    if (event.finished) {
      out->reason = event.finish_reason;
      out->error = event.error;
      done->set_value();
    }
  };
  auto future = done->get_future();
  REQUIRE(engine.submit(std::move(request)).ok());
  future.wait();
  return *out;
}

TEST_CASE("a constraint that allows a few ids yields only those ids, greedy and sampled") {
  auto engine = open_tiny();
  std::mt19937 rng(5);
  const std::vector<int32_t> ids = {17, 1000, 9001, 151000};
  for (int trial = 0; trial < 4; ++trial) {
    SamplingParams params = greedy(12);
    if (trial % 2 == 1) {
      params.temperature = 1.0;
      params.seed = static_cast<uint64_t>(trial);
    }
    auto constraint = std::make_shared<SetConstraint>(ids);
    const Outcome out = run(*engine, random_ids(rng, 9), params, constraint);
    REQUIRE(out.reason == FinishReason::kLength);
    REQUIRE(out.tokens.size() == 12);
    for (int32_t t : out.tokens) CHECK(std::find(ids.begin(), ids.end(), t) != ids.end());
    CHECK(constraint->accepted == out.tokens);
    CHECK(constraint->fills == 12);
  }
}

TEST_CASE("an unconstrained run differs, so the mask really steered the tokens above") {
  auto engine = open_tiny();
  std::mt19937 rng(5);
  const Outcome out = run(*engine, random_ids(rng, 9), greedy(12), nullptr);
  const std::set<int32_t> few = {17, 1000, 9001, 151000};
  CHECK(std::any_of(out.tokens.begin(), out.tokens.end(), [&](int32_t t) { return !few.count(t); }));
}

TEST_CASE("a complete constraint ends the request with stop") {
  auto engine = open_tiny();
  std::mt19937 rng(8);
  auto constraint = std::make_shared<SetConstraint>(std::vector<int32_t>{42, 43}, 3);
  const Outcome out = run(*engine, random_ids(rng, 5), greedy(20), constraint);
  CHECK(out.reason == FinishReason::kStop);
  CHECK(out.tokens.size() == 3);
}

TEST_CASE("a constraint that allows nothing ends the request with an error, not a hang") {
  auto engine = open_tiny();
  std::mt19937 rng(9);
  SUBCASE("empty set") {
    const Outcome out = run(*engine, random_ids(rng, 5), greedy(8), std::make_shared<SetConstraint>(
                                                                          std::vector<int32_t>{}));
    CHECK(out.reason == FinishReason::kError);
    CHECK(out.error.code() == StatusCode::kFailedPrecondition);
    CHECK(out.tokens.empty());
  }
  SUBCASE("only padding ids the tokenizer does not know") {
    const Outcome out = run(*engine, random_ids(rng, 5), greedy(8),
                            std::make_shared<SetConstraint>(std::vector<int32_t>{151900}));
    CHECK(out.reason == FinishReason::kError);
    CHECK(out.tokens.empty());
  }
}

TEST_CASE("a constraint that refuses the accepted token ends the request with its error") {
  auto engine = open_tiny();
  std::mt19937 rng(10);
  auto constraint = std::make_shared<SetConstraint>(std::vector<int32_t>{77});
  constraint->refuse = 77;
  const Outcome out = run(*engine, random_ids(rng, 5), greedy(8), constraint);
  CHECK(out.reason == FinishReason::kError);
  CHECK(out.error.code() == StatusCode::kInvalidArgument);
  CHECK(out.tokens.size() == 1);
}

}  // namespace
}  // namespace agentserve::engine
