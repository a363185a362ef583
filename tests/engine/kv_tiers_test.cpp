#include "engine/kv_tiers.h"

#include <doctest/doctest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <future>
#include <random>
#include <thread>

#include "engine/engine.h"
#include "memory/block_key.h"
#include "memory/kv_arena.h"
#include "memory/kv_block_codec.h"
#include "memory/rocksdb_store.h"
#include "tests/engine/test_models.h"
#include "tests/scratch_dir.h"
#include "tests/self_child_process.h"

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
  size_t disk_quota_bytes = size_t{64} << 30;
  int block_size = 16;  // kTinyBlockBytes is for 16; other sizes scale it
};

std::unique_ptr<Engine> open_engine(const TierSetup& setup) {
  EngineOptions options;
  options.model_dir = test_model_dir("tiny", DType::kF32, setup.seed);
  options.n_threads = 2;
  options.max_step_tokens = 256;
  options.block_size = setup.block_size;
  const size_t block_bytes = kTinyBlockBytes * static_cast<size_t>(setup.block_size) / 16;
  options.kv_cache_bytes = setup.kv_blocks * block_bytes;
  options.host_kv_bytes = setup.host_blocks * block_bytes;
  options.data_dir = setup.data_dir;
  options.disk_kv_quota_bytes = setup.disk_quota_bytes;
  auto engine = Engine::open(options);
  REQUIRE_MESSAGE(engine.ok(), engine.status().to_string());
  REQUIRE((*engine)->kv_layout().block_stride() == block_bytes);
  return std::move(*engine);
}

Generation run(Engine& engine, const std::vector<int32_t>& prompt) {
  auto g = engine.generate(prompt, greedy(6));
  REQUIRE_MESSAGE(g.ok(), g.status().to_string());
  return std::move(*g);
}

// The engine's counters once the step that finished the last request is over: a request's callback runs
// inside the step, before the step adds its tokens to the counters, and expert_load() waits for the step.
EngineCounters settled_counters(Engine& engine) {
  (void)engine.expert_load();
  return engine.counters();
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
  CHECK(engine->counters().kv_tiers.host_bytes_spilled == 0);
  auto b = engine->score(ids);  // may push the request's blocks down the tiers, which is fine
  REQUIRE_MESSAGE(b.ok(), b.status().to_string());
  CHECK(*a == *b);
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
  const auto c = settled_counters(*b);
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
  CHECK(settled_counters(*other).prefill_tokens == 2000);
  CHECK(g.tokens == expected.tokens);
}

TEST_CASE("a data_dir written with another block size restores nothing and the output is still right") {
  TempDir dir("other-block-size");
  std::mt19937 rng(16);
  const auto prompt = random_ids(rng, 2000);
  (void)serve_and_close(dir.path, prompt);  // 16-token blocks

  const Generation expected = run(*open_engine({.block_size = 32}), prompt);
  auto other = open_engine({.kv_blocks = 2048, .data_dir = dir.path, .block_size = 32});
  const Generation g = run(*other, prompt);
  CHECK(g.usage.cached_tokens == 0);
  CHECK(other->counters().restored_tokens == 0);
  CHECK(settled_counters(*other).prefill_tokens == 2000);
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
  const auto c = settled_counters(*b);
  CHECK(c.kv_tiers.dropped_corrupt == 1);
  CHECK(g.usage.cached_tokens == 160);  // blocks 0..9; the chain stops at the bad block
  CHECK(c.prefill_tokens == 2000 - 160);
  CHECK(g.tokens == a.tokens);
}

// Runs a prefill-only request for `prompt` to its end; returns its finishing event.
GenerationEvent prefill_only(Engine& engine, const std::vector<int32_t>& prompt) {
  std::promise<GenerationEvent> done;
  GenerationRequest request{.prompt = prompt, .sampling = greedy(6)};
  request.prefill_only = true;
  int events = 0;
  request.on_event = [&](const GenerationEvent& e) {
    ++events;
    if (e.finished) done.set_value(e);
  };
  auto id = engine.submit(std::move(request));
  REQUIRE_MESSAGE(id.ok(), id.status().to_string());
  GenerationEvent e = done.get_future().get();
  CHECK(events == 1);
  return e;
}

// Three 1,000-token prompts: with an 80-block T0 they push every earlier prompt out of T0.
void traffic(Engine& engine, uint32_t seed, int n = 3) {
  std::mt19937 rng(seed);
  for (int i = 0; i < n; ++i) run(engine, random_ids(rng, 1000));
}

TEST_CASE("blocks evicted from T0 reach disk on the storage thread and a reopened engine restores them") {
  TempDir dir("storage-thread");
  std::mt19937 rng(21);
  const auto prompt = random_ids(rng, 1000);
  Generation first;
  {
    auto a = open_engine({.kv_blocks = 80, .data_dir = dir.path});
    first = run(*a, prompt);
    traffic(*a, 22);
    a->sync_kv_tiers();
    const auto c = a->counters().kv_tiers;
    // The prompt's 62 full blocks at least, written while the engine served the traffic.
    CHECK(c.disk_bytes_spilled >= 62 * static_cast<int64_t>(kTinyBlockBytes));
    CHECK(c.spill_queue_bytes == 0);
    CHECK(c.disk_write_errors == 0);
    CHECK(c.disk_usage_bytes > 62 * static_cast<int64_t>(kTinyBlockBytes));
    // Still in the same engine: the prompt's blocks come back from disk.
    const Generation again = run(*a, prompt);
    CHECK(again.usage.cached_tokens == 992);
    CHECK(again.usage.restored_tokens == 992);
    CHECK(again.tokens == first.tokens);
  }
  auto b = open_engine({.kv_blocks = 80, .data_dir = dir.path});
  const Generation g = run(*b, prompt);
  CHECK(g.usage.restored_tokens == 992);
  CHECK(b->counters().kv_tiers.disk_hits == 62);
  CHECK(g.tokens == first.tokens);
}

TEST_CASE("prefetch moves a chain from disk to host RAM, so admission hits T1 instead of T2") {
  TempDir dir("prefetch");
  std::mt19937 rng(23);
  const auto prompt = random_ids(rng, 1000);
  const Generation a = serve_and_close(dir.path, prompt);

  auto b = open_engine({.kv_blocks = 200, .host_blocks = 100, .data_dir = dir.path});
  b->prefetch(prompt, "");
  b->prefetch(prompt, "other tenant");  // another salt names other blocks: nothing to fetch
  b->sync_kv_tiers();
  auto c = b->counters().kv_tiers;
  CHECK(c.prefetched_blocks == 62);
  CHECK(c.host_bytes_used == 62 * static_cast<int64_t>(kTinyBlockBytes));
  const Generation g = run(*b, prompt);
  c = b->counters().kv_tiers;
  CHECK(g.usage.cached_tokens == 992);
  CHECK(g.usage.restored_tokens == 992);
  CHECK(c.host_hits == 62);
  CHECK(c.disk_hits == 0);
  CHECK(g.tokens == a.tokens);
}

TEST_CASE("a prefill-only request warms the KV, samples nothing and reports restored tokens") {
  TempDir dir("prefill-only");
  std::mt19937 rng(24);
  const auto prompt = random_ids(rng, 2000);
  const Generation a = serve_and_close(dir.path, prompt);

  auto b = open_engine({.data_dir = dir.path});
  const GenerationEvent warm = prefill_only(*b, prompt);
  CHECK(warm.finish_reason == FinishReason::kStop);
  CHECK(warm.tokens.empty());
  CHECK(warm.usage.completion_tokens == 0);
  CHECK(warm.usage.prompt_tokens == 2000);
  CHECK(warm.usage.cached_tokens == 1984);
  CHECK(warm.usage.restored_tokens == 1984);
  CHECK(settled_counters(*b).prefill_tokens == 16);
  CHECK(settled_counters(*b).decode_tokens == 0);

  // The session then continues from T0, without touching the disk again.
  const Generation g = run(*b, prompt);
  CHECK(g.usage.cached_tokens == 1984);
  CHECK(g.usage.restored_tokens == 0);
  CHECK(b->counters().kv_tiers.disk_hits == 124);
  CHECK(g.tokens == a.tokens);

  auto cold = open_engine({});
  const GenerationEvent computed = prefill_only(*cold, prompt);
  CHECK(computed.usage.cached_tokens == 0);
  CHECK(computed.usage.restored_tokens == 0);
  CHECK(settled_counters(*cold).prefill_tokens == 2000);
}

TEST_CASE("a pinned chain survives a T1 + T2 squeeze that evicts an unpinned one") {
  TempDir dir("pin");
  // T0 80 blocks, T1 70, T2 about 100: together far less than the 6 prompts of 62 blocks served.
  auto engine = open_engine(
      {.kv_blocks = 80, .host_blocks = 70, .data_dir = dir.path, .disk_quota_bytes = 100 * kTinyBlockBytes});
  std::mt19937 rng(25);
  const auto pinned = random_ids(rng, 1000);
  const auto unpinned = random_ids(rng, 1000);
  engine->pin("session-a", pinned, "");
  const Generation p1 = run(*engine, pinned);
  const Generation u1 = run(*engine, unpinned);
  traffic(*engine, 26, 4);
  engine->sync_kv_tiers();
  auto c = engine->counters().kv_tiers;
  CHECK(c.pinned_blocks == 62);
  CHECK(c.disk_usage_bytes <= static_cast<int64_t>(100 * kTinyBlockBytes));

  const Generation u2 = run(*engine, unpinned);
  const Generation p2 = run(*engine, pinned);
  CHECK(p2.usage.cached_tokens == 992);
  CHECK(u2.usage.cached_tokens < 992);
  CHECK(p2.tokens == p1.tokens);
  CHECK(u2.tokens == u1.tokens);

  // Unpinned, the same chain is just another LRU entry.
  engine->unpin("session-a");
  CHECK(engine->counters().kv_tiers.pinned_blocks == 0);
}

TEST_CASE("without disk, host RAM keeps a pinned chain over unpinned blocks") {
  auto engine = open_engine({.kv_blocks = 80, .host_blocks = 70});
  std::mt19937 rng(27);
  const auto pinned = random_ids(rng, 1000);
  engine->pin("s", pinned, "");
  const Generation first = run(*engine, pinned);
  traffic(*engine, 28, 4);
  const Generation again = run(*engine, pinned);
  CHECK(again.usage.cached_tokens == 992);
  CHECK(again.usage.restored_tokens >= 62 * 16 - 80 * 16);
  CHECK(engine->counters().kv_tiers.pinned_evictions == 0);
  CHECK(again.tokens == first.tokens);
}

TEST_CASE("discard removes exactly the unshared blocks of a chain from the tiers") {
  TempDir dir("discard");
  auto engine = open_engine({.kv_blocks = 80, .data_dir = dir.path});
  std::mt19937 rng(29);
  const auto shared = random_ids(rng, 320);  // 20 blocks both prompts start with
  auto mine = shared, theirs = shared;
  const auto tail_a = random_ids(rng, 680), tail_b = random_ids(rng, 680);
  mine.insert(mine.end(), tail_a.begin(), tail_a.end());
  theirs.insert(theirs.end(), tail_b.begin(), tail_b.end());
  const Generation m1 = run(*engine, mine);
  const Generation t1 = run(*engine, theirs);
  traffic(*engine, 30);
  engine->sync_kv_tiers();
  const int64_t usage_before = engine->counters().kv_tiers.disk_usage_bytes;

  engine->discard(mine, "", 320);
  engine->sync_kv_tiers();
  const auto c = engine->counters().kv_tiers;
  CHECK(c.discarded_blocks == 62 - 20);
  CHECK(c.disk_usage_bytes < usage_before);

  const Generation t2 = run(*engine, theirs);
  CHECK(t2.usage.cached_tokens == 992);  // the shared blocks and theirs are all still there
  const Generation m2 = run(*engine, mine);
  CHECK(m2.usage.cached_tokens == 320);  // only the shared prefix
  CHECK(m2.tokens == m1.tokens);
  CHECK(t2.tokens == t1.tokens);
}

TEST_CASE("a full disk quota stops spilling with a counter, serving continues, and spilling resumes") {
  TempDir dir("quota");
  // 40 blocks of quota and a pinned 62-block chain: the quota LRU may not delete pinned blocks, so the
  // chain cannot all fit and T2 refuses writes.
  auto engine =
      open_engine({.kv_blocks = 80, .data_dir = dir.path, .disk_quota_bytes = 40 * kTinyBlockBytes});
  std::mt19937 rng(31);
  const auto prompt = random_ids(rng, 1000);
  engine->pin("s", prompt, "");
  const Generation first = run(*engine, prompt);
  traffic(*engine, 32);
  engine->sync_kv_tiers();
  auto c = engine->counters().kv_tiers;
  // (The stalled gauge may already read 0 here: a small unpinned batch after the pause can still fit.)
  CHECK(c.disk_write_errors > 0);
  CHECK(c.disk_usage_bytes <= static_cast<int64_t>(40 * kTinyBlockBytes));
  const Generation again = run(*engine, prompt);  // served, part restored and part recomputed
  CHECK(again.tokens == first.tokens);
  CHECK(again.finish_reason == FinishReason::kLength);

  // Room again: unpinned, the old blocks may go, and after the pause writes go through.
  engine->unpin("s");
  std::this_thread::sleep_for(KvTiers::kRetryAfter + std::chrono::milliseconds(100));
  const int64_t spilled_before = engine->counters().kv_tiers.disk_bytes_spilled;
  traffic(*engine, 33);
  engine->sync_kv_tiers();
  c = engine->counters().kv_tiers;
  CHECK(c.disk_bytes_spilled > spilled_before);
  CHECK(c.disk_spill_stalled == 0);
  CHECK(c.disk_usage_bytes <= static_cast<int64_t>(40 * kTinyBlockBytes));
}

// ---- Write-through on commit, checked across kill -9: a child process (this binary, re-executed) serves
// a prompt, persists its chain (or not), says so on stdout and waits to be killed with SIGKILL; the
// parent then opens an engine on the same data_dir without the child's clean close ever running.

constexpr const char* kPersistChildDir = "AGENTSERVE_KV_PERSIST_CHILD_DIR";
constexpr const char* kPersistChildMode = "AGENTSERVE_KV_PERSIST_CHILD_MODE";

std::vector<int32_t> persist_prompt() {
  std::mt19937 rng(41);
  return random_ids(rng, 1000);
}

// Modes: "t0" persists blocks T0 holds; "t1" first pushes them from a small T0 into host RAM (T1) with
// traffic, so persist copies them from T1; "t2" pushes them from a small T0 straight to T2, where the
// spill wrote them without the WAL, so persist must flush them; "none" persists nothing (the control).
TEST_CASE("persist child: serves, persists, waits for SIGKILL" * doctest::skip()) {
  const char* dir = std::getenv(kPersistChildDir);
  const char* mode_env = std::getenv(kPersistChildMode);
  REQUIRE(dir != nullptr);
  REQUIRE(mode_env != nullptr);
  const std::string mode = mode_env;
  const bool via_host = mode == "t1";
  const bool small_t0 = via_host || mode == "t2";
  auto engine = open_engine({.kv_blocks = small_t0 ? 80u : 4096u, .host_blocks = via_host ? 2000u : 0u,
                             .data_dir = dir});
  const std::vector<int32_t> prompt = persist_prompt();
  Generation g = run(*engine, prompt);
  if (small_t0) {
    traffic(*engine, 42, 2);
    engine->sync_kv_tiers();  // "t2": the spills are in T2 now, in the memtable only
  }
  int stored = -1;
  if (mode != "none") {
    std::vector<int32_t> turn = prompt;
    turn.insert(turn.end(), g.tokens.begin(), g.tokens.end());
    Result<int> r = engine->persist(turn, "").get();
    REQUIRE_MESSAGE(r.ok(), r.status().to_string());
    stored = *r;
  }
  const std::string line = "stored " + std::to_string(stored) + "\n";
  REQUIRE(::write(STDOUT_FILENO, line.data(), line.size()) == static_cast<ssize_t>(line.size()));
  for (;;) ::pause();  // killed here, with the engine open: no clean close, no flush
}

struct PersistChild {
  pid_t pid = -1;
  std::string printed;
};

// Runs the child in `mode` until it prints its line, then kills it with SIGKILL.
PersistChild run_persist_child(const std::filesystem::path& dir, const std::string& mode) {
  const agentserve::testing::SelfChild self = agentserve::testing::spawn_self(
      {std::string(kPersistChildDir) + "=" + dir.string(), std::string(kPersistChildMode) + "=" + mode},
      "persist child*");
  PersistChild child;
  child.pid = self.pid;
  // The child's stdout also carries doctest's banner and the engine's log: wait for the line that counts.
  auto reported = [](const std::string& s) {
    const size_t at = s.find("stored ");
    return at != std::string::npos && s.find('\n', at) != std::string::npos;
  };
  agentserve::testing::read_child_until(self.out, 120000, child.printed, reported);
  ::close(self.out);
  if (reported(child.printed)) {
    const size_t at = child.printed.find("stored ");
    child.printed = child.printed.substr(at, child.printed.find('\n', at) + 1 - at);
  }
  const int status = agentserve::testing::kill_and_reap(self);
  CHECK_MESSAGE((WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL), "child ended with status ", status);
  return child;
}

TEST_CASE("persisted blocks survive kill -9: the next engine restores every full block of the chain") {
  const std::vector<int32_t> prompt = persist_prompt();
  // The reference: an engine without tiers, never killed.
  std::vector<int32_t> turn = prompt;
  std::vector<int32_t> reference_next;
  {
    auto plain = open_engine({});
    const Generation g = run(*plain, prompt);
    turn.insert(turn.end(), g.tokens.begin(), g.tokens.end());
    reference_next = run(*plain, turn).tokens;
  }
  // 1,000 prompt tokens + 6 sampled: the KV of the first 1,005 exists, 62 full blocks of 16.
  const int full_blocks = static_cast<int>(turn.size() - 1) / 16;
  REQUIRE(full_blocks == 62);
  for (const std::string mode : {"t0", "t1", "t2", "none"}) {
    CAPTURE(mode);
    TempDir dir("persist-kill9-" + mode);
    const PersistChild child = run_persist_child(dir.path, mode);
    const int expected_stored = mode == "none" ? -1 : full_blocks;
    CHECK(child.printed == "stored " + std::to_string(expected_stored) + "\n");
    auto engine = open_engine({.data_dir = dir.path});
    const Generation next = run(*engine, turn);
    CHECK(next.tokens == reference_next);
    if (mode == "none") {
      // Without persist the child's spills never left the memtable: kill -9 lost them all.
      CHECK(next.usage.restored_tokens == 0);
    } else {
      CHECK(next.usage.restored_tokens == full_blocks * 16);
      CHECK(next.usage.prompt_tokens - next.usage.cached_tokens < 16);
    }
  }
}

// ---- The tiers alone over a small host arena (no engine), so a test can inject a failing disk and spill
// blocks of known bytes under chain keys it pins.

const memory::KvLayout kSmallLayout{.n_layers = 1, .n_kv_heads = 1, .head_dim = 8, .block_size = 4};

struct SmallTiers {
  std::unique_ptr<memory::KvArena> arena;
  std::unique_ptr<ArenaBlockSpace> space;
  std::unique_ptr<KvTiers> tiers;
  const memory::BlockKey salt = memory::make_salt("fp", "");
  const size_t block_bytes = kSmallLayout.block_bytes();

  explicit SmallTiers(const KvTierOptions& options) {
    auto a = memory::KvArena::create(kSmallLayout, 16);
    REQUIRE(a.ok());
    arena = std::make_unique<memory::KvArena>(std::move(*a));
    space = std::make_unique<ArenaBlockSpace>(*arena);
    auto t = KvTiers::open(options, "fp", *space);
    REQUIRE_MESSAGE(t.ok(), t.status().to_string());
    tiers = std::move(*t);
  }

  // The keys of the chain of `tokens` (full blocks of 4).
  std::vector<memory::BlockKey> keys(const std::vector<int32_t>& tokens) const {
    std::vector<memory::BlockKey> out;
    memory::BlockKey parent = memory::kRootBlockKey;
    for (size_t i = 0; i + 4 <= tokens.size(); i += 4) {
      parent = memory::chain_block_key(parent, std::span(tokens).subspan(i, 4), salt);
      out.push_back(parent);
    }
    return out;
  }
  static std::vector<std::byte> bytes_of(int32_t first_token) {
    std::vector<std::byte> b(kSmallLayout.block_bytes());
    for (size_t i = 0; i < b.size(); ++i)
      b[i] = static_cast<std::byte>(first_token * 31 + static_cast<int>(i));
    return b;
  }
  // Puts each block of the chain of `tokens` in arena block 0, spills it, and hands the batch over.
  void spill_chain(const std::vector<int32_t>& tokens) {
    const std::vector<memory::BlockKey> ks = keys(tokens);
    for (size_t i = 0; i < ks.size(); ++i) {
      const std::vector<std::byte> b = bytes_of(tokens[i * 4]);
      std::copy(b.begin(), b.end(), arena->block_bytes(0).begin());
      tiers->spill(0, ks[i], std::span(tokens).subspan(i * 4, 4));
    }
    tiers->submit_spills();
    tiers->sync();
  }
  // Whether every block of the chain loads (into arena block 1) with the bytes it was spilled with.
  bool loads(const std::vector<int32_t>& tokens) {
    const std::vector<memory::BlockKey> ks = keys(tokens);
    for (size_t i = 0; i < ks.size(); ++i) {
      if (!tiers->load(ks[i], std::span(tokens).subspan(i * 4, 4), 1)) return false;
      const std::vector<std::byte> want = bytes_of(tokens[i * 4]);
      if (!std::ranges::equal(arena->block_bytes(1), want)) return false;
    }
    return true;
  }
};

std::vector<int32_t> chain_tokens(int32_t first, int n_blocks) {
  std::vector<int32_t> t(static_cast<size_t>(n_blocks) * 4);
  for (size_t i = 0; i < t.size(); ++i) t[i] = first + static_cast<int32_t>(i);
  return t;
}

TEST_CASE("pinned blocks refused by a failing disk are kept through the back-off and written after it") {
  TempDir dir("pinned-retry");
  auto failing = std::make_shared<std::atomic<bool>>(true);
  KvTierOptions options;
  options.data_dir = dir.path;
  options.disk_write_hook = [failing]() -> Status {
    return failing->load() ? Status::io_error("injected: the disk refuses writes") : Status::ok_status();
  };
  const std::vector<int32_t> unpinned = chain_tokens(1000, 2);
  const std::vector<int32_t> pinned = chain_tokens(2000, 4);
  {
    SmallTiers t(options);
    t.spill_chain(unpinned);  // refused: the back-off starts
    auto c = t.tiers->counters();
    CHECK(c.disk_spill_stalled == 1);
    CHECK(c.disk_write_errors == 2);
    CHECK(c.pinned_retry_blocks == 0);  // a cache block is just not kept

    t.tiers->pin("session", pinned, t.salt);
    t.spill_chain(pinned);  // arrives during the back-off
    c = t.tiers->counters();
    CHECK(c.pinned_retry_blocks == 4);
    CHECK(c.pinned_spills_lost == 0);
    CHECK(t.loads(pinned));  // still readable while it waits

    failing->store(false);
    std::this_thread::sleep_for(KvTiers::kRetryAfter + std::chrono::milliseconds(100));
    t.tiers->submit_spills();  // nothing staged: the engine's call after a step posts the retry
    t.tiers->sync();
    c = t.tiers->counters();
    CHECK(c.pinned_retry_blocks == 0);
    CHECK(c.disk_spill_stalled == 0);
    CHECK(c.disk_bytes_spilled == static_cast<int64_t>(4 * t.block_bytes));
  }
  // On disk: tiers opened again on the folder, with a healthy disk, load the pinned chain from T2.
  options.disk_write_hook = nullptr;
  SmallTiers again(options);
  CHECK(again.loads(pinned));
  CHECK(again.tiers->counters().disk_hits == 4);
  CHECK_FALSE(again.loads(unpinned));
}

TEST_CASE("pinned blocks past the retry bound are lost with a counter, never silently") {
  TempDir dir("pinned-retry-bound");
  KvTierOptions options;
  options.data_dir = dir.path;
  options.pinned_retry_bytes = 2 * kSmallLayout.block_bytes();
  options.disk_write_hook = []() -> Status { return Status::io_error("injected: the disk refuses writes"); };
  SmallTiers t(options);
  const std::vector<int32_t> pinned = chain_tokens(3000, 4);
  t.tiers->pin("session", pinned, t.salt);
  t.spill_chain(pinned);
  const auto c = t.tiers->counters();
  CHECK(c.pinned_retry_blocks == 2);
  CHECK(c.pinned_spills_lost == 2);
  CHECK(c.disk_write_errors == 4);
}

TEST_CASE("LRU churn past reclaim_after_bytes compacts nothing; discarding that much reclaims once") {
  TempDir dir("reclaim-trigger");
  const uint64_t encoded = memory::kv_block_encoded_size(kSmallLayout.block_size, kSmallLayout.block_bytes());
  KvTierOptions options;
  options.data_dir = dir.path;
  options.disk_kv_quota_bytes = 8 * encoded;
  options.reclaim_after_bytes = 3 * encoded;
  SmallTiers t(options);
  for (int32_t chain = 0; chain < 10; ++chain) t.spill_chain(chain_tokens(10000 + chain * 100, 4));
  auto c = t.tiers->counters();
  CHECK(c.disk_bytes_spilled == static_cast<int64_t>(40 * t.block_bytes));
  CHECK(c.disk_usage_bytes == static_cast<int64_t>(8 * encoded));  // 32 blocks evicted by the LRU
  CHECK(c.disk_reclaims == 0);

  const std::vector<int32_t> session = chain_tokens(50000, 4);
  t.spill_chain(session);
  t.tiers->discard(session, t.salt, 0);
  t.tiers->sync();
  c = t.tiers->counters();
  CHECK(c.discarded_blocks == 4);
  CHECK(c.disk_reclaims == 1);
}

}  // namespace
}  // namespace agentserve::engine
