#include "engine/kv_tiers.h"

#include <doctest/doctest.h>

#include <unistd.h>
#include <random>

#include "engine/engine.h"
#include "memory/block_key.h"
#include "memory/rocksdb_store.h"
#include "tests/engine/test_models.h"
#include "tests/scratch_dir.h"

namespace agentserve::engine {
namespace {

using testing::greedy;
using testing::random_ids;
using testing::test_model_dir;

// A folder removed when the test ends, whatever it asserted.
// A folder path under the test's scratch root (not created: the engine creates its data_dir).
struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& name)
      : path(agentserve::testing::scratch_dir("kv_tiers_test", name, false)) {}
};

// Bytes of one KV block of the tiny model (2 layers x K,V x 2 heads x 16 slots x 16 dims x f32).
constexpr size_t kTinyBlockBytes = 8192;

struct TierSetup {
  size_t kv_blocks = 4096;
  size_t host_blocks = 0;
  std::filesystem::path data_dir;
  uint64_t seed = 7;
};

std::unique_ptr<Engine> open_engine(const TierSetup& setup) {
  EngineOptions options;
  options.model_dir = test_model_dir("tiny", DType::kF32, setup.seed);
  options.n_threads = 2;
  options.max_step_tokens = 256;
  options.kv_cache_bytes = setup.kv_blocks * kTinyBlockBytes;
  options.host_kv_bytes = setup.host_blocks * kTinyBlockBytes;
  options.data_dir = setup.data_dir;
  auto engine = Engine::open(options);
  REQUIRE_MESSAGE(engine.ok(), engine.status().to_string());
  REQUIRE((*engine)->kv_layout().block_stride() == kTinyBlockBytes);
  return std::move(*engine);
}

Generation run(Engine& engine, const std::vector<int32_t>& prompt) {
  auto g = engine.generate(prompt, greedy(6));
  REQUIRE_MESSAGE(g.ok(), g.status().to_string());
  return std::move(*g);
}

// Serves `prompt`, then two other 1,000-token prompts that push most of its blocks out of a small T0,
// then `prompt` again; returns the first and the repeated generation.
std::pair<Generation, Generation> serve_with_traffic_between(Engine& engine,
                                                             const std::vector<int32_t>& prompt) {
  std::mt19937 rng(11);
  Generation first = run(engine, prompt);
  run(engine, random_ids(rng, 1000));
  run(engine, random_ids(rng, 1000));
  Generation again = run(engine, prompt);
  return {std::move(first), std::move(again)};
}

TEST_CASE("a prompt evicted from a small T0 comes back from host RAM (T1) with the same output") {
  auto engine = open_engine({.kv_blocks = 80, .host_blocks = 400});
  std::mt19937 rng(3);
  const auto prompt = random_ids(rng, 1000);
  auto [first, again] = serve_with_traffic_between(*engine, prompt);
  CHECK(first.usage.cached_tokens == 0);

  const auto c = engine->counters();
  CHECK(again.usage.cached_tokens == 992);  // every full block below the last token: 62 of 16
  CHECK(c.kv_tiers.host_hits > 0);
  CHECK(c.kv_tiers.host_bytes_spilled > 0);
  CHECK(c.kv_tiers.host_bytes_loaded == c.kv_tiers.host_hits * static_cast<int64_t>(kTinyBlockBytes));
  CHECK(c.kv_tiers.disk_hits == 0);
  CHECK(c.restored_tokens == c.prefix_loaded_blocks * 16);
  CHECK(c.prefix_loaded_blocks == c.kv_tiers.host_hits);
  CHECK(again.tokens == first.tokens);
}

TEST_CASE("with host RAM tiny too, evicted blocks come back from RocksDB (T2) with the same output") {
  TempDir dir("t2");
  auto engine = open_engine({.kv_blocks = 80, .host_blocks = 4, .data_dir = dir.path});
  std::mt19937 rng(4);
  const auto prompt = random_ids(rng, 1000);
  auto [first, again] = serve_with_traffic_between(*engine, prompt);

  const auto c = engine->counters();
  CHECK(again.usage.cached_tokens == 992);
  CHECK(c.kv_tiers.disk_hits > 0);
  CHECK(c.kv_tiers.disk_bytes_spilled > 0);
  CHECK(c.kv_tiers.disk_bytes_loaded == c.kv_tiers.disk_hits * static_cast<int64_t>(kTinyBlockBytes));
  CHECK(c.kv_tiers.dropped_corrupt == 0);
  CHECK(again.tokens == first.tokens);
}

TEST_CASE("without any tier an evicted prompt is recomputed, and gives the same output") {
  auto engine = open_engine({.kv_blocks = 80});
  std::mt19937 rng(3);
  const auto prompt = random_ids(rng, 1000);
  auto [first, again] = serve_with_traffic_between(*engine, prompt);
  CHECK(again.usage.cached_tokens < 992);
  CHECK(engine->counters().restored_tokens == 0);
  CHECK(again.tokens == first.tokens);
}

TEST_CASE("scoring the same ids twice with tiers on reuses nothing and gives the same logits") {
  TempDir dir("score");
  auto engine = open_engine({.kv_blocks = 80, .host_blocks = 8, .data_dir = dir.path});
  std::mt19937 rng(8);
  const auto ids = random_ids(rng, 600);
  auto a = engine->score(ids);
  REQUIRE_MESSAGE(a.ok(), a.status().to_string());
  run(*engine, random_ids(rng, 1000));  // reuses the scored blocks: nothing of them may spill
  auto b = engine->score(ids);
  REQUIRE_MESSAGE(b.ok(), b.status().to_string());
  CHECK(*a == *b);
  CHECK(engine->counters().kv_tiers.host_bytes_spilled == 0);
}

// Engine A serves a 2,000-token prompt on `dir` and closes; returns its generation.
Generation serve_and_close(const std::filesystem::path& dir, const std::vector<int32_t>& prompt) {
  auto a = open_engine({.data_dir = dir});
  return run(*a, prompt);
}

TEST_CASE("an engine restarted on the same data_dir restores a 2,000-token prompt from disk") {
  TempDir dir("restart");
  std::mt19937 rng(5);
  const auto prompt = random_ids(rng, 2000);
  const Generation a = serve_and_close(dir.path, prompt);
  CHECK(a.usage.cached_tokens == 0);

  auto b = open_engine({.data_dir = dir.path});
  const Generation g = run(*b, prompt);
  const auto c = b->counters();
  CHECK(g.usage.cached_tokens == 1984);  // all 124 full blocks within the cap
  CHECK(c.restored_tokens == 1984);
  CHECK(c.kv_tiers.disk_hits == 124);
  CHECK(c.prefill_tokens == 2000 - 1984);
  CHECK(g.tokens == a.tokens);
  MESSAGE("2,000-token prompt + 6 tokens: computed " << a.usage.total_time_s << " s, restored from disk "
                                                     << g.usage.total_time_s << " s");
}

TEST_CASE("a data_dir written by another model restores nothing and the output is still right") {
  TempDir dir("other-model");
  std::mt19937 rng(6);
  const auto prompt = random_ids(rng, 2000);
  (void)serve_and_close(dir.path, prompt);  // model seed 7

  const Generation expected = run(*open_engine({.seed = 8}), prompt);
  auto other = open_engine({.data_dir = dir.path, .seed = 8});
  const Generation g = run(*other, prompt);
  CHECK(g.usage.cached_tokens == 0);
  CHECK(other->counters().restored_tokens == 0);
  CHECK(other->counters().prefill_tokens == 2000);
  CHECK(g.tokens == expected.tokens);
}

TEST_CASE("a corrupted block on disk is dropped and recomputed, and the prefix before it is restored") {
  TempDir dir("corrupt");
  std::mt19937 rng(7);
  const auto prompt = random_ids(rng, 2000);
  std::string fingerprint;
  {
    auto a = open_engine({.data_dir = dir.path});
    fingerprint = a->model_fingerprint();
  }
  const Generation a = serve_and_close(dir.path, prompt);

  // Flip one payload byte of the prompt's block 10, straight through RocksDB (key: 'b' + hi, lo big-endian).
  const memory::BlockKey salt = memory::make_salt(fingerprint, "");
  memory::BlockKey key = memory::kRootBlockKey;
  for (size_t i = 0; i <= 10; ++i) {
    key = memory::chain_block_key(key, std::span<const int32_t>(prompt).subspan(i * 16, 16), salt);
  }
  std::string record(1, 'b');
  for (uint64_t half : {key.hi, key.lo}) {
    for (int shift = 56; shift >= 0; shift -= 8) record.push_back(static_cast<char>((half >> shift) & 0xff));
  }
  {
    memory::StoreOptions options;
    options.path = (dir.path / "rocksdb").string();
    auto store = memory::RocksDbStore::open(options);
    REQUIRE_MESSAGE(store.ok(), store.status().to_string());
    auto* cf = (*store)->handle(memory::ColumnFamily::kKv);
    std::string value;
    REQUIRE((*store)->db()->Get(rocksdb::ReadOptions(), cf, record, &value).ok());
    value[value.size() - 100] ^= 0x01;
    REQUIRE((*store)->db()->Put(rocksdb::WriteOptions(), cf, record, value).ok());
  }

  auto b = open_engine({.data_dir = dir.path});
  const Generation g = run(*b, prompt);
  const auto c = b->counters();
  CHECK(c.kv_tiers.dropped_corrupt == 1);
  CHECK(g.usage.cached_tokens == 160);  // blocks 0..9; the chain stops at the bad block
  CHECK(c.prefill_tokens == 2000 - 160);
  CHECK(g.tokens == a.tokens);
}

}  // namespace
}  // namespace agentserve::engine
