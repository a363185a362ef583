// SessionRegistry without sockets: tenants apart, persistence through the SessionStore and reload after a
// "restart" (a new registry on the same database), seq and the replay window, takeover, delete and TTL.
#include <doctest/doctest.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "memory/rocksdb_store.h"
#include "memory/session_store.h"
#include "server/session_registry.h"
#include "tests/scratch_dir.h"

using namespace agentserve;
using namespace agentserve::server;
using nlohmann::json;

namespace {

constexpr int kVocab = 1000;

struct Recorder : EventSink {
  std::vector<json> events;
  std::vector<std::string> taken;
  int replays = 0;  // deliver_replay calls
  void deliver_frame(std::string frame, bool) override { events.push_back(json::parse(frame)); }
  void deliver_replay(std::vector<std::string> frames) override {
    ++replays;
    for (const auto& frame : frames) events.push_back(json::parse(frame));
  }
  void taken_over(const std::string& id) override { taken.push_back(id); }
};

RegistryOptions options(size_t replay_events = 1024) {
  RegistryOptions o = RegistryOptions::from(ServerOptions{}, kVocab);
  o.replay_max_events = replay_events;
  return o;
}

struct Db {
  std::unique_ptr<memory::RocksDbStore> rocks;
  std::unique_ptr<memory::SessionStore> store;
  explicit Db(const std::filesystem::path& dir) {
    memory::StoreOptions o;
    o.path = dir.string();
    auto opened = memory::RocksDbStore::open(o);
    REQUIRE(opened.ok());
    rocks = std::move(*opened);
    store = std::make_unique<memory::SessionStore>(*rocks);
  }
};

}  // namespace

TEST_CASE("another tenant's session is not found, and a tenant's session limit holds") {
  TenantLimits two;
  two.max_sessions = 2;
  Auth auth({}, {{"alpha", two}}, TenantLimits{});
  SessionRegistry registry(options(), nullptr, auth);
  const Tenant alpha = auth.tenant("alpha");
  const Tenant beta = auth.tenant("beta");
  auto a = registry.create(alpha, SessionConfig{});
  REQUIRE(a.ok());
  CHECK(registry.get(alpha, (*a)->id).ok());
  auto other = registry.get(beta, (*a)->id);
  REQUIRE_FALSE(other.ok());
  CHECK(other.status().code() == StatusCode::kNotFound);
  CHECK(registry.erase(beta, (*a)->id).code() == StatusCode::kNotFound);
  REQUIRE(registry.create(alpha, SessionConfig{}).ok());
  auto third = registry.create(alpha, SessionConfig{});
  REQUIRE_FALSE(third.ok());
  CHECK(third.status().code() == StatusCode::kResourceExhausted);
  CHECK(registry.create(beta, SessionConfig{}).ok());
  REQUIRE(registry.erase(alpha, (*a)->id).ok());
  CHECK(registry.create(alpha, SessionConfig{}).ok());
}

TEST_CASE("events get the session's next seq and a resume replays exactly those after last_seq") {
  Auth auth;
  SessionRegistry registry(options(/*replay_events=*/4), nullptr, auth);
  auto session = *registry.create(auth.tenant("default"), SessionConfig{});
  auto first = std::make_shared<Recorder>();
  std::lock_guard lock(session->mutex);
  registry.attach(*session, first, 0);
  for (int i = 0; i < 6; ++i) registry.emit(*session, {{"type", "x"}, {"i", i}});
  REQUIRE(first->events.size() == 6);
  for (int i = 0; i < 6; ++i) {
    CHECK(first->events[i]["seq"] == i + 1);
    CHECK(first->events[i]["session_id"] == session->id);
  }
  auto second = std::make_shared<Recorder>();
  CHECK(registry.attach(*session, second, 4));  // 5 and 6 are still kept (window of 4: 3..6)
  REQUIRE(second->events.size() == 2);
  CHECK(second->replays == 1);  // handed over in one piece, apart from the live stream
  CHECK(second->events[0]["seq"] == 5);
  CHECK(second->events[1]["seq"] == 6);
  CHECK(first->taken == std::vector<std::string>{session->id});
  registry.emit(*session, {{"type", "live"}});
  CHECK(first->events.size() == 6);  // taken over: nothing more goes there
  REQUIRE(second->events.size() == 3);
  CHECK(second->events[2]["seq"] == 7);
  auto third = std::make_shared<Recorder>();
  CHECK_FALSE(registry.attach(*session, third, 1));  // 2 fell out of the window: the replay has a gap
  CHECK(third->events.front()["seq"] == 4);
}

TEST_CASE("a cancelled response.done carries the cancel reason once; running_sessions lists running ones") {
  Auth auth;
  SessionRegistry registry(options(), nullptr, auth);
  auto idle = *registry.create(auth.tenant("default"), SessionConfig{});
  auto busy = *registry.create(auth.tenant("default"), SessionConfig{});
  auto sink = std::make_shared<Recorder>();
  {
    std::lock_guard lock(busy->mutex);
    registry.attach(*busy, sink, 0);
    busy->running = RunningResponse{"r_1", 0, false, nullptr};
  }
  const auto running = registry.running_sessions();
  REQUIRE(running.size() == 1);
  CHECK(running[0] == busy);
  const json done = {{"type", "response.done"}, {"response", {{"id", "r_1"}, {"status", "cancelled"}}}};
  std::lock_guard lock(busy->mutex);
  busy->cancel_reason = "server_shutdown";
  busy->running.reset();
  registry.emit(*busy, done);
  registry.emit(*busy, done);
  REQUIRE(sink->events.size() == 2);
  CHECK(sink->events[0]["response"]["status_details"] ==
        json{{"type", "cancelled"}, {"reason", "server_shutdown"}});
  CHECK_FALSE(sink->events[1]["response"].contains("status_details"));
  CHECK(busy->cancel_reason.empty());
}

TEST_CASE("committed turns, config and seq survive a restart; user items after the last turn are reported lost") {
  const auto dir = testing::scratch_dir("server_session_registry_test", "restart");
  Auth auth;
  const Tenant tenant = auth.tenant("default");
  std::string id;
  {
    Db db(dir);
    SessionRegistry registry(options(), db.store.get(), auth);
    SessionConfig config;
    config.agent_id = "agent-7";
    config.instructions = "be brief";
    config.sampling.temperature = 0;
    config.sampling.max_tokens = 33;
    config.tools = json::array({{{"type", "function"}, {"name", "f"}}});
    auto session = *registry.create(tenant, config);
    id = session->id;
    std::lock_guard lock(session->mutex);
    session->messages.push_back({"user", "one"});
    session->messages.push_back({"assistant", "uno"});
    REQUIRE(registry.commit_turn(*session, {1, 2, 3, 4}).ok());
    session->messages.push_back({"user", "two"});
    session->messages.push_back({"assistant", "dos"});
    REQUIRE(registry.commit_turn(*session, {1, 2, 3, 4, 5, 6}).ok());
    registry.emit(*session, {{"type", "x"}});
    session->messages.push_back({"user", "three, never answered"});
    REQUIRE(registry.save_metadata(*session).ok());
  }
  Db db(dir);
  SessionRegistry registry(options(), db.store.get(), auth);
  CHECK(registry.get(auth.tenant("other"), id).status().code() == StatusCode::kNotFound);
  auto loaded = registry.get(tenant, id);
  REQUIRE_MESSAGE(loaded.ok(), loaded.status().to_string());
  Session& s = **loaded;
  std::lock_guard lock(s.mutex);
  CHECK(s.loaded_from_store);
  CHECK(s.lost_unfinished_turn);
  CHECK(s.turns == 2);
  REQUIRE(s.messages.size() == 4);
  CHECK(s.messages[3].content == "dos");
  CHECK(s.tokens == std::vector<int32_t>{1, 2, 3, 4, 5, 6});
  CHECK(s.config.agent_id == "agent-7");
  CHECK(s.config.instructions == "be brief");
  CHECK(s.config.sampling.max_tokens == 33);
  CHECK(s.config.sampling.greedy());
  CHECK(s.config.tools.size() == 1);
  CHECK(s.seq == 1);  // the metadata was saved after the one event
}

TEST_CASE("delete removes the session and its transcript from the store; the TTL sweep deletes idle ones") {
  const auto dir = testing::scratch_dir("server_session_registry_test", "delete");
  Db db(dir);
  Auth auth;
  const Tenant tenant = auth.tenant("default");
  RegistryOptions o = options();
  o.session_ttl = std::chrono::seconds(100);
  o.sweep_interval = std::chrono::seconds(3600);  // the test calls the sweep itself
  SessionRegistry registry(o, db.store.get(), auth);
  auto kept = *registry.create(tenant, SessionConfig{});
  auto doomed = *registry.create(tenant, SessionConfig{});
  auto sink = std::make_shared<Recorder>();
  {
    std::lock_guard lock(doomed->mutex);
    registry.attach(*doomed, sink, 0);
    doomed->messages.push_back({"user", "hi"});
    REQUIRE(registry.commit_turn(*doomed, {1, 2}).ok());
  }
  REQUIRE(registry.erase(tenant, doomed->id).ok());
  REQUIRE_FALSE(sink->events.empty());
  CHECK(sink->events.back()["type"] == "session.deleted");
  CHECK(db.store->load_session(doomed->id).status().code() == StatusCode::kNotFound);
  CHECK(registry.get(tenant, doomed->id).status().code() == StatusCode::kNotFound);

  const int64_t now = unix_now_s();
  CHECK(registry.sweep_expired(now) == 0);
  // Used after the sweep looked (a response started, an update): the erase leaves it alone.
  {
    std::lock_guard lock(kept->mutex);
    kept->running = RunningResponse{"r_1", 0, false, nullptr};
  }
  CHECK(registry.erase_if_idle(tenant, kept->id, now + 1).code() == StatusCode::kFailedPrecondition);
  {
    std::lock_guard lock(kept->mutex);
    kept->running.reset();
  }
  CHECK(registry.erase_if_idle(tenant, kept->id, kept->updated_at).code() == StatusCode::kFailedPrecondition);
  CHECK(registry.get(tenant, kept->id).ok());
  CHECK(registry.sweep_expired(now + 101) == 1);
  CHECK(registry.get(tenant, kept->id).status().code() == StatusCode::kNotFound);
  CHECK(db.store->load_session(kept->id).status().code() == StatusCode::kNotFound);
}

TEST_CASE("an erase reaches the on_erased hook once, and a deleted session is never written back") {
  const auto dir = testing::scratch_dir("server_session_registry_test", "erase_hook");
  Db db(dir);
  TenantLimits one;
  one.max_sessions = 1;
  Auth auth({}, {{"alpha", one}}, TenantLimits{});
  const Tenant alpha = auth.tenant("alpha");
  SessionRegistry registry(options(), db.store.get(), auth);
  std::vector<std::string> erased;
  registry.on_erased([&](const std::shared_ptr<Session>& session) {
    CHECK(session->deleted);
    erased.push_back(session->id);
  });
  auto session = *registry.create(alpha, SessionConfig{});
  // Two deletes of one session (a client's and the TTL sweep's, say): one succeeds, the other finds nothing,
  // and the tenant's count goes down once.
  std::vector<std::thread> deleters;
  std::atomic<int> succeeded{0};
  for (int i = 0; i < 2; ++i)
    deleters.emplace_back([&] { succeeded += registry.erase(alpha, session->id).ok() ? 1 : 0; });
  for (auto& t : deleters) t.join();
  CHECK(succeeded == 1);
  CHECK(erased == std::vector<std::string>{session->id});
  auto replacement = registry.create(alpha, SessionConfig{});
  REQUIRE(replacement.ok());
  CHECK(registry.create(alpha, SessionConfig{}).status().code() == StatusCode::kResourceExhausted);

  // A response still holding the deleted session must not bring it back into the store.
  std::lock_guard lock(session->mutex);
  session->messages.push_back({"user", "late"});
  CHECK(registry.save_metadata(*session).code() == StatusCode::kNotFound);
  CHECK(registry.commit_turn(*session, {1, 2}).code() == StatusCode::kNotFound);
  CHECK(db.store->load_session(session->id).status().code() == StatusCode::kNotFound);
}

TEST_CASE("a stored session that today's limits refuse to load can still be deleted, by its owner only") {
  const auto dir = testing::scratch_dir("server_session_registry_test", "erase_unloadable");
  Db db(dir);
  Auth auth;
  const Tenant tenant = auth.tenant("default");
  // Stored by a server whose limits allowed a larger max_tokens than this one's.
  json config = {{"sampling", {{"max_tokens", 1 << 30}}}};
  const std::string metadata = json{{"tenant", "default"}, {"config", config}}.dump();
  const std::vector<int32_t> tokens{5, 6, 7};
  REQUIRE(db.store->commit_turn("s_old", 0, "{}", tokens, metadata).ok());
  SessionRegistry registry(options(), db.store.get(), auth);
  std::vector<int32_t> erased_tokens;
  registry.on_erased([&](const std::shared_ptr<Session>& session) { erased_tokens = session->tokens; });
  auto loaded = registry.get(tenant, "s_old");
  REQUIRE_FALSE(loaded.ok());
  CHECK(loaded.status().code() == StatusCode::kCorruption);
  CHECK(registry.erase(auth.tenant("other"), "s_old").code() == StatusCode::kNotFound);
  REQUIRE(registry.erase(tenant, "s_old").ok());
  CHECK(erased_tokens == tokens);  // the hook can drop its KV
  CHECK(db.store->load_metadata("s_old").status().code() == StatusCode::kNotFound);
  CHECK(registry.erase(tenant, "s_old").code() == StatusCode::kNotFound);
}

TEST_CASE("a lost unfinished turn is reported once, also across a restart after the report") {
  const auto dir = testing::scratch_dir("server_session_registry_test", "lost_once");
  Auth auth;
  const Tenant tenant = auth.tenant("default");
  std::string id;
  {
    Db db(dir);
    SessionRegistry registry(options(), db.store.get(), auth);
    auto session = *registry.create(tenant, SessionConfig{});
    id = session->id;
    std::lock_guard lock(session->mutex);
    session->messages.push_back({"user", "never answered"});
    REQUIRE(registry.save_metadata(*session).ok());
  }
  {
    Db db(dir);
    SessionRegistry registry(options(), db.store.get(), auth);
    auto session = *registry.get(tenant, id);
    std::lock_guard lock(session->mutex);
    CHECK(registry.take_lost_unfinished_turn(*session));
    CHECK_FALSE(registry.take_lost_unfinished_turn(*session));
  }
  Db db(dir);
  SessionRegistry registry(options(), db.store.get(), auth);
  auto session = *registry.get(tenant, id);
  std::lock_guard lock(session->mutex);
  CHECK_FALSE(registry.take_lost_unfinished_turn(*session));
}
