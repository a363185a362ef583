// The engine over a Backend: "backend-cpu" runs BackendModel on the CPU backend with the KV pool inside
// the backend, the same engine code a GPU runs. Its greedy output must equal the default "cpu" engine's,
// with batching, prefix-cache hits and the KV tiers (spill, restart, restore) all going through the
// backend's block copies.
#include <doctest/doctest.h>

#include <future>
#include <random>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/forward_model.h"
#include "tests/engine/test_models.h"
#include "tests/scratch_dir.h"

namespace agentserve::engine {
namespace {

using testing::greedy;
using testing::random_ids;
using testing::test_model_dir;

// Bytes of one KV block of the tiny model (2 layers x K,V x 2 heads x 16 slots x 16 dims x f32).
constexpr size_t kTinyBlockBytes = 8192;

struct Setup {
  std::string backend = "cpu";
  size_t kv_blocks = 512;
  size_t host_blocks = 0;
  std::filesystem::path data_dir;
  int tensor_parallel_size = 1;
};

EngineOptions options_for(const Setup& setup) {
  EngineOptions options;
  options.model_dir = test_model_dir("tiny", DType::kF32, 5);
  options.backend = setup.backend;
  options.n_threads = 2;
  options.max_step_tokens = 128;
  options.kv_cache_bytes = setup.kv_blocks * kTinyBlockBytes;
  options.host_kv_bytes = setup.host_blocks * kTinyBlockBytes;
  options.data_dir = setup.data_dir;
  options.tensor_parallel_size = setup.tensor_parallel_size;
  return options;
}

std::unique_ptr<Engine> open_engine(const Setup& setup) {
  auto engine = Engine::open(options_for(setup));
  REQUIRE_MESSAGE(engine.ok(), engine.status().to_string());
  return std::move(*engine);
}

Generation run(Engine& engine, const std::vector<int32_t>& prompt, int max_tokens = 8) {
  auto g = engine.generate(prompt, greedy(max_tokens));
  REQUIRE_MESSAGE(g.ok(), g.status().to_string());
  return std::move(*g);
}

// Prompts submitted together, so the engine batches their prefills and decodes in the same steps: two
// share a 100-token prefix, and the odd lengths leave partial blocks.
std::vector<std::vector<int32_t>> concurrent_prompts() {
  std::mt19937 rng(21);
  const std::vector<int32_t> shared = random_ids(rng, 100);
  std::vector<std::vector<int32_t>> prompts;
  for (int len : {3, 37, 160}) prompts.push_back(random_ids(rng, len));
  for (int tail : {5, 29}) {
    std::vector<int32_t> p = shared;
    const auto extra = random_ids(rng, tail);
    p.insert(p.end(), extra.begin(), extra.end());
    prompts.push_back(std::move(p));
  }
  return prompts;
}

std::vector<std::vector<int32_t>> generate_together(Engine& engine,
                                                    const std::vector<std::vector<int32_t>>& prompts) {
  std::vector<std::future<Result<Generation>>> futures;
  for (const auto& p : prompts)
    futures.push_back(
        std::async(std::launch::async, [&engine, p] { return engine.generate(p, greedy(12)); }));
  std::vector<std::vector<int32_t>> outputs;
  for (auto& f : futures) {
    auto g = f.get();
    REQUIRE_MESSAGE(g.ok(), g.status().to_string());
    REQUIRE(g->tokens.size() == 12);
    outputs.push_back(g->tokens);
  }
  return outputs;
}

TEST_CASE("backend-cpu generates the default engine's greedy tokens for concurrent requests") {
  const auto prompts = concurrent_prompts();
  auto reference = open_engine({.backend = "cpu"});
  const auto want = generate_together(*reference, prompts);
  reference.reset();

  auto engine = open_engine({.backend = "backend-cpu"});
  CHECK(engine->backend_description() == "backend cpu");
  CHECK(engine->counters().kv_blocks_total == 512);
  const auto got = generate_together(*engine, prompts);
  for (size_t i = 0; i < prompts.size(); ++i) {
    INFO("prompt " << i << " of " << prompts[i].size() << " tokens");
    CHECK(got[i] == want[i]);
  }
}

TEST_CASE("backend-cpu reuses cached prefix blocks and still generates the default engine's tokens") {
  std::mt19937 rng(8);
  const auto prompt = random_ids(rng, 200);
  auto longer = prompt;
  const auto extra = random_ids(rng, 23);
  longer.insert(longer.end(), extra.begin(), extra.end());

  auto reference = open_engine({.backend = "cpu"});
  const Generation want_first = run(*reference, prompt);
  const Generation want_longer = run(*reference, longer);
  reference.reset();

  auto engine = open_engine({.backend = "backend-cpu"});
  const Generation first = run(*engine, prompt);
  const Generation again = run(*engine, prompt);
  const Generation extended = run(*engine, longer);
  CHECK(first.usage.cached_tokens == 0);
  CHECK(again.usage.cached_tokens == 192);     // 12 full blocks of 16 below the last token
  CHECK(extended.usage.cached_tokens == 192);  // the prompt's full blocks, then its own prefill
  CHECK(first.tokens == want_first.tokens);
  CHECK(again.tokens == want_first.tokens);
  CHECK(extended.tokens == want_longer.tokens);
}

TEST_CASE("backend-cpu spills KV blocks to disk and a restarted engine restores them with the same output") {
  const auto dir = agentserve::testing::scratch_dir("engine_backend_test", "tiers", false);
  std::mt19937 rng(4);
  const auto prompt = random_ids(rng, 600);
  Generation first;
  int64_t spilled = 0;
  {
    // 60 blocks: the 1,000-token prompts after `prompt` push its blocks out of T0, straight to disk.
    auto engine = open_engine({.backend = "backend-cpu", .kv_blocks = 70, .data_dir = dir});
    first = run(*engine, prompt);
    run(*engine, random_ids(rng, 1000));
    run(*engine, random_ids(rng, 1000));
    engine->sync_kv_tiers();
    spilled = engine->counters().kv_tiers.disk_bytes_spilled;
  }
  CHECK(spilled > 0);
  CHECK(spilled % static_cast<int64_t>(kTinyBlockBytes) == 0);

  auto engine = open_engine({.backend = "backend-cpu", .kv_blocks = 70, .data_dir = dir});
  const Generation again = run(*engine, prompt);
  CHECK(again.usage.cached_tokens == 592);  // 37 full blocks of 16 below the last token
  CHECK(again.usage.restored_tokens == 592);
  CHECK(engine->counters().kv_tiers.disk_hits == 37);
  CHECK(again.tokens == first.tokens);
}

TEST_CASE("backend-cpu persists a chain read from its pool, and evicted blocks come back from host RAM") {
  const auto dir = agentserve::testing::scratch_dir("engine_backend_test", "host", false);
  std::mt19937 rng(9);
  const auto prompt = random_ids(rng, 600);
  auto engine = open_engine({.backend = "backend-cpu", .kv_blocks = 70, .host_blocks = 200, .data_dir = dir});
  const Generation first = run(*engine, prompt);
  auto persisted = engine->persist(prompt, "").get();
  REQUIRE_MESSAGE(persisted.ok(), persisted.status().to_string());
  CHECK(*persisted == 37);  // every full block of the prompt, copied out of the backend's pool

  run(*engine, random_ids(rng, 1000));
  run(*engine, random_ids(rng, 1000));
  const Generation again = run(*engine, prompt);
  CHECK(again.usage.restored_tokens == 592);
  const auto c = engine->counters();
  CHECK(c.kv_tiers.host_hits == 37);
  CHECK(c.kv_tiers.disk_hits == 0);
  CHECK(again.tokens == first.tokens);
}

TEST_CASE(
    "blocks written by backend-cpu restore into the default cpu engine, whose blocks have the same bytes") {
  const auto dir = agentserve::testing::scratch_dir("engine_backend_test", "shared", false);
  std::mt19937 rng(6);
  const auto prompt = random_ids(rng, 300);
  Generation first;
  {
    auto engine = open_engine({.backend = "backend-cpu", .data_dir = dir});
    first = run(*engine, prompt);
  }  // a clean close flushes T0's blocks to disk
  auto engine = open_engine({.backend = "cpu", .data_dir = dir});
  const Generation again = run(*engine, prompt);
  CHECK(again.usage.restored_tokens == 288);
  CHECK(again.tokens == first.tokens);
}

// A KV cache as a bf16 backend would make one, to check the layout the tiers get for it.
class FakeKvCache final : public KvCache {
 public:
  FakeKvCache(const KvCacheShape& shape, kernels::DType dtype, size_t host_block_bytes)
      : KvCache(shape, dtype, host_block_bytes) {}
};

TEST_CASE("the tiers describe a bf16 block by an f32 layout of the same bytes, and refuse odd byte counts") {
  const KvCacheShape shape{.n_layers = 3, .n_kv_heads = 2, .head_dim = 64, .block_size = 16, .num_blocks = 8};
  const size_t bf16_bytes = 3 * 2 * 2 * 16 * 64 * 2;
  auto layout = tier_layout_of(FakeKvCache(shape, kernels::DType::kBF16, bf16_bytes));
  REQUIRE_MESSAGE(layout.ok(), layout.status().to_string());
  CHECK(layout->block_bytes() == bf16_bytes);
  CHECK(layout->block_size == 16);
  CHECK(layout->n_layers == 3);

  auto f32 = tier_layout_of(FakeKvCache(shape, kernels::DType::kF32, 2 * bf16_bytes));
  REQUIRE(f32.ok());
  CHECK(f32->head_dim == 64);

  CHECK(tier_layout_of(FakeKvCache(shape, kernels::DType::kBF16, bf16_bytes + 2)).status().code() ==
        StatusCode::kInvalidArgument);
}

TEST_CASE("a backend path refuses tensor parallelism and unknown backends clearly") {
  auto tp = Engine::open(options_for({.backend = "backend-cpu", .tensor_parallel_size = 2}));
  REQUIRE(!tp.ok());
  CHECK(tp.status().code() == StatusCode::kInvalidArgument);
  CHECK(tp.status().message().find("cpu backend only") != std::string::npos);

  auto unknown = Engine::open(options_for({.backend = "tpu"}));
  REQUIRE(!unknown.ok());
  CHECK(unknown.status().code() == StatusCode::kInvalidArgument);
  CHECK(unknown.status().message().find("unknown backend") != std::string::npos);
}

TEST_CASE("the cuda backend generates on a GPU, or says why it cannot") {
  auto engine = Engine::open(options_for({.backend = "cuda"}));
  if (!engine.ok()) {
    // No CUDA in this build, or no GPU on this machine.
    CHECK(engine.status().code() == StatusCode::kFailedPrecondition);
    CHECK(engine.status().message().find("backend cuda") != std::string::npos);
    return;
  }
  CHECK((*engine)->backend_description().find("cuda") != std::string::npos);
  std::mt19937 rng(2);
  const Generation g = run(**engine, random_ids(rng, 40));
  CHECK(g.tokens.size() == 8);
}

}  // namespace
}  // namespace agentserve::engine
