#include "memory/session_store.h"

#include <doctest/doctest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "memory/kv_store.h"
#include "tests/self_child_process.h"

namespace agentserve::memory {
namespace {

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "as-sessions-XXXXXX").string();
    REQUIRE(mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~TempDir() { std::filesystem::remove_all(path); }
};

std::unique_ptr<RocksDbStore> open_store(const std::filesystem::path& dir) {
  auto s = RocksDbStore::open(StoreOptions{.path = (dir / "db").string()});
  REQUIRE_MESSAGE(s.ok(), s.status().to_string());
  return std::move(s).value();
}

TEST_CASE("committed turns, tokens and metadata load back in turn order") {
  TempDir dir;
  auto store = open_store(dir.path);
  SessionStore sessions(*store);
  std::vector<int32_t> tokens{1, -2, 3};
  // Turn 256 sorts after turn 2 only with big-endian indices.
  REQUIRE(sessions.commit_turn("s1", 0, "hello", std::span(tokens).first(1), R"({"n":1})").ok());
  REQUIRE(sessions.commit_turn("s1", 256, std::string("bin\0ary", 7), tokens, R"({"n":3})").ok());
  REQUIRE(sessions.commit_turn("s1", 2, "two", std::span(tokens).first(2), R"({"n":2})").ok());
  REQUIRE(sessions.commit_turn("s1x", 0, "other session", tokens, "{}").ok());

  auto rec = sessions.load_session("s1");
  REQUIRE_MESSAGE(rec.ok(), rec.status().to_string());
  CHECK(rec->metadata == R"({"n":2})");
  REQUIRE(rec->turns.size() == 3);
  CHECK(rec->turns[0].index == 0);
  CHECK(rec->turns[0].messages == "hello");
  CHECK(rec->turns[1].index == 2);
  CHECK(rec->turns[2].index == 256);
  CHECK(rec->turns[2].messages == std::string("bin\0ary", 7));
  CHECK(rec->tokens == std::vector<int32_t>{1, -2});
  CHECK(sessions.load_session("s").status().code() == StatusCode::kNotFound);
  CHECK(sessions.load_session("").status().code() == StatusCode::kInvalidArgument);
  auto metadata = sessions.load_metadata("s1");
  REQUIRE(metadata.ok());
  CHECK(*metadata == R"({"n":2})");
  CHECK(sessions.load_metadata("s").status().code() == StatusCode::kNotFound);
}

TEST_CASE("delete_session removes one session entirely and leaves a session with a longer id alone") {
  TempDir dir;
  auto store = open_store(dir.path);
  SessionStore sessions(*store);
  std::vector<int32_t> tokens{5};
  REQUIRE(sessions.commit_turn("ab", 0, "t0", tokens, "m").ok());
  REQUIRE(sessions.commit_turn("ab", 1, "t1", tokens, "m").ok());
  REQUIRE(sessions.commit_turn("abc", 0, "keep", tokens, "m2").ok());
  REQUIRE(sessions.delete_session("ab").ok());
  CHECK(sessions.load_session("ab").status().code() == StatusCode::kNotFound);
  // Recreating the id starts empty: no old turns survive the delete.
  REQUIRE(sessions.put_metadata("ab", "fresh").ok());
  auto again = sessions.load_session("ab");
  REQUIRE(again.ok());
  CHECK(again->turns.empty());
  CHECK(again->tokens.empty());
  auto kept = sessions.load_session("abc");
  REQUIRE(kept.ok());
  REQUIRE(kept->turns.size() == 1);
  CHECK(kept->turns[0].messages == "keep");
  CHECK(sessions.delete_session("missing").ok());
}

TEST_CASE("list_sessions and the TTL sweep delete only sessions older than now - ttl") {
  TempDir dir;
  auto store = open_store(dir.path);
  SessionStore sessions(*store);
  std::vector<int32_t> tokens{1};
  REQUIRE(sessions.commit_turn("old", 0, "x", tokens, "100").ok());
  REQUIRE(sessions.commit_turn("new", 0, "y", tokens, "950").ok());
  REQUIRE(sessions.put_metadata("unreadable", "?").ok());
  auto listed = sessions.list_sessions();
  REQUIRE(listed.ok());
  CHECK(listed->size() == 3);
  auto updated_at = [](std::string_view m) -> std::optional<int64_t> {
    if (m.empty() || m[0] < '0' || m[0] > '9') return std::nullopt;
    return std::stoll(std::string(m));
  };
  auto swept = sessions.sweep_expired(1000, 500, updated_at);
  REQUIRE(swept.ok());
  CHECK(*swept == 1);
  CHECK(sessions.load_session("old").status().code() == StatusCode::kNotFound);
  CHECK(sessions.load_session("new").ok());
  CHECK(sessions.load_session("unreadable").ok());
}

TEST_CASE("agent notes are stored, listed by agent in key order, and deleted") {
  TempDir dir;
  auto store = open_store(dir.path);
  SessionStore sessions(*store);
  REQUIRE(sessions.put_note("agent", "b", "note b").ok());
  REQUIRE(sessions.put_note("agent", "a", "note a").ok());
  REQUIRE(sessions.put_note("agent2", "a", "other agent").ok());
  auto notes = sessions.list_notes("agent");
  REQUIRE(notes.ok());
  REQUIRE(notes->size() == 2);
  CHECK((*notes)[0].key == "a");
  CHECK((*notes)[0].note == "note a");
  CHECK((*notes)[1].key == "b");
  CHECK(sessions.get_note("agent2", "a").value() == "other agent");
  REQUIRE(sessions.delete_note("agent", "a").ok());
  CHECK(sessions.get_note("agent", "a").status().code() == StatusCode::kNotFound);
  CHECK(sessions.list_notes("agent")->size() == 1);
  CHECK(sessions.put_note("agent", "", "x").code() == StatusCode::kInvalidArgument);
}

// ---- Crash safety: a child process (this binary, re-executed) writes until it is killed with SIGKILL.

constexpr const char* kCrashChildEnv = "AGENTSERVE_STORE_CRASH_CHILD_DB";
constexpr const char* kLockChildEnv = "AGENTSERVE_STORE_LOCK_CHILD_DB";
constexpr const char* kCrashChildWalEnv = "AGENTSERVE_STORE_CRASH_CHILD_KV_WAL";
constexpr const char* kCrashSession = "crash-session";
const KvLayout kCrashLayout{.n_layers = 2, .n_kv_heads = 2, .head_dim = 64, .block_size = 16};  // 16 KiB
constexpr int kBlocksPerTurn = 4;
constexpr uint64_t kCrashKvQuotaBlocks = 64;

// Everything the child writes follows from the turn index, so the parent can check it byte for byte.
std::string turn_text(uint32_t turn) {
  std::string s = "turn " + std::to_string(turn) + ":";
  s.resize(100 + (turn * 997) % 5000, static_cast<char>('a' + turn % 26));
  return s;
}
std::vector<int32_t> tokens_after(uint32_t n_turns) {
  std::vector<int32_t> t(8 * n_turns);
  for (size_t i = 0; i < t.size(); ++i) t[i] = static_cast<int32_t>(3 * i + 1);
  return t;
}
std::string metadata_after(uint32_t n_turns) {
  return R"({"turns":)" + std::to_string(n_turns) + "}";
}
BlockKey crash_block_key(uint32_t turn, int j) {
  return {0xabcdull + turn, static_cast<uint64_t>(j)};
}
std::vector<int32_t> crash_block_tokens(uint32_t turn, int j) {
  return std::vector<int32_t>(kCrashLayout.block_size, static_cast<int32_t>(turn * 16 + j));
}
std::vector<std::byte> crash_block_payload(uint32_t turn, int j) {
  std::vector<std::byte> p(kCrashLayout.block_bytes());
  std::mt19937 rng(turn * 16 + j);
  for (auto& b : p) b = static_cast<std::byte>(rng());
  return p;
}

void write_line(const std::string& line) {
  std::string l = line + "\n";
  if (::write(STDOUT_FILENO, l.data(), l.size()) < 0) _exit(3);
}

// A tiny kv memtable makes the child flush blob files all the time, so kills also land mid-flush.
StoreOptions crash_options(const char* db, bool kv_wal) {
  return StoreOptions{.path = db, .kv_write_buffer_bytes = 256 << 10, .kv_write_wal = kv_wal};
}

[[noreturn]] void run_crash_child(const char* db) {
  auto store = RocksDbStore::open(crash_options(db, std::getenv(kCrashChildWalEnv) != nullptr));
  if (!store.ok()) _exit(10);
  SessionStore sessions(**store);
  KvBlockFormat format = KvBlockFormat::make("crash-model", kCrashLayout);
  auto kv = KvStore::open(**store, format,
                          kCrashKvQuotaBlocks * kv_block_encoded_size(16, kCrashLayout.block_bytes()));
  if (!kv.ok()) _exit(11);
  auto rec = sessions.load_session(kCrashSession);
  uint32_t turn = rec.ok() ? static_cast<uint32_t>(rec->turns.size()) : 0;
  for (;; ++turn) {
    std::vector<std::vector<int32_t>> tokens;
    std::vector<std::vector<std::byte>> payloads;
    std::vector<KvSpillBlock> blocks;
    for (int j = 0; j < kBlocksPerTurn; ++j) {
      tokens.push_back(crash_block_tokens(turn, j));
      payloads.push_back(crash_block_payload(turn, j));
    }
    for (int j = 0; j < kBlocksPerTurn; ++j)
      blocks.push_back({crash_block_key(turn, j), tokens[j], payloads[j]});
    if (!(*kv)->put_batch(blocks).ok()) _exit(12);
    if (!sessions
             .commit_turn(kCrashSession, turn, turn_text(turn), tokens_after(turn + 1),
                          metadata_after(turn + 1))
             .ok()) {
      _exit(13);
    }
    write_line(std::to_string(turn));  // only after commit_turn returned: this turn must survive
  }
}

[[noreturn]] void run_lock_child(const char* db) {
  auto store = RocksDbStore::open(StoreOptions{.path = db});
  if (!store.ok()) _exit(10);
  write_line("open");
  for (;;) pause();
}

// The child modes are test cases that only run when the parent re-executes this binary with --no-skip and
// a filter naming one of them; a plain run skips them.
TEST_CASE("crash child: commits turns until killed" * doctest::skip()) {
  const char* db = std::getenv(kCrashChildEnv);
  REQUIRE(db != nullptr);
  run_crash_child(db);
}

TEST_CASE("lock child: holds the database open until killed" * doctest::skip()) {
  const char* db = std::getenv(kLockChildEnv);
  REQUIRE(db != nullptr);
  run_lock_child(db);
}

using agentserve::testing::kill_and_reap;
using agentserve::testing::read_child_for;
using agentserve::testing::spawn_self;

TEST_CASE("kill -9 at random moments never loses a committed turn nor leaves half of one") {
  TempDir dir;
  const std::string db = (dir.path / "db").string();
  std::mt19937 rng(20261129);
  int64_t last_reported = -1;
  int total_reported = 0;
  int kv_blocks_found = 0;
  for (int round = 0; round < 20; ++round) {
    // Odd rounds write KV through the WAL too, even rounds skip it (the default).
    std::vector<std::string> env{std::string(kCrashChildEnv) + "=" + db};
    if (round % 2 == 1) env.push_back(std::string(kCrashChildWalEnv) + "=1");
    const agentserve::testing::SelfChild child = spawn_self(env, "crash child*");
    std::string printed;
    read_child_for(child.out, 40 + static_cast<int>(rng() % 260), printed);
    int status = kill_and_reap(child);
    read_child_for(child.out, -1, printed);  // lines written before the kill are still in the pipe
    close(child.out);
    REQUIRE_MESSAGE((WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL),
                    "child ended on its own with status ", status);
    for (size_t pos = 0; pos < printed.size();) {
      size_t nl = printed.find('\n', pos);
      if (nl == std::string::npos) break;  // a torn line was not a complete report
      last_reported = std::max<int64_t>(last_reported, std::stoll(printed.substr(pos, nl - pos)));
      ++total_reported;
      pos = nl + 1;
    }

    auto opened = RocksDbStore::open(crash_options(db.c_str(), false));
    REQUIRE_MESSAGE(opened.ok(), opened.status().to_string());
    auto store = std::move(opened).value();
    SessionStore sessions(*store);
    auto rec = sessions.load_session(kCrashSession);
    if (last_reported < 0 && rec.status().code() == StatusCode::kNotFound) continue;
    REQUIRE_MESSAGE(rec.ok(), rec.status().to_string());
    const auto n = static_cast<uint32_t>(rec->turns.size());
    CHECK(static_cast<int64_t>(n) >= last_reported + 1);  // every reported turn is there
    for (uint32_t i = 0; i < n; ++i) {
      REQUIRE(rec->turns[i].index == i);
      CHECK(rec->turns[i].messages == turn_text(i));
    }
    // Turn, tokens and metadata come from one batch: all three agree on the turn count.
    CHECK(rec->metadata == metadata_after(n));
    CHECK(rec->tokens == tokens_after(n));

    KvBlockFormat format = KvBlockFormat::make("crash-model", kCrashLayout);
    auto kv = KvStore::open(*store, format,
                            kCrashKvQuotaBlocks * kv_block_encoded_size(16, kCrashLayout.block_bytes()));
    REQUIRE(kv.ok());
    std::vector<std::byte> out(kCrashLayout.block_bytes());
    for (uint32_t t = 0; t <= n; ++t) {
      for (int j = 0; j < kBlocksPerTurn; ++j) {
        Status s = (*kv)->get(crash_block_key(t, j), crash_block_tokens(t, j), out);
        CHECK_MESSAGE((s.ok() || s.code() == StatusCode::kNotFound), s.to_string());
        if (s.ok()) {
          CHECK(out == crash_block_payload(t, j));
          ++kv_blocks_found;
        }
      }
    }
    CHECK((*kv)->usage_bytes() <= (*kv)->quota_bytes());
  }
  MESSAGE("across 20 kills: turns reported committed ", total_reported, ", kv blocks found intact ",
          kv_blocks_found);
  CHECK(total_reported > 0);
  CHECK(kv_blocks_found > 0);  // the kv check above was not vacuous
}

TEST_CASE("a database held by another process is refused as FailedPrecondition") {
  TempDir dir;
  const std::string db = (dir.path / "db").string();
  const agentserve::testing::SelfChild child =
      spawn_self({std::string(kLockChildEnv) + "=" + db}, "lock child*");
  std::string printed;
  for (int waited = 0; printed.find('\n') == std::string::npos && waited < 10000; waited += 20) {
    read_child_for(child.out, 20, printed);
  }
  REQUIRE(printed == "open\n");
  auto second = RocksDbStore::open(StoreOptions{.path = db});
  CHECK(second.status().code() == StatusCode::kFailedPrecondition);
  kill_and_reap(child);
  close(child.out);
  CHECK(RocksDbStore::open(StoreOptions{.path = db}).ok());
}

}  // namespace
}  // namespace agentserve::memory
