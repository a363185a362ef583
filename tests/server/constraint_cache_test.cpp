#include "server/constraint_cache.h"

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <future>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "tests/agent/qwen3_tokenizer.h"

namespace agentserve::server {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;
using Specs = std::vector<const tools::ToolSpec*>;

// The compiler the server uses, over the real Qwen3 vocabulary (its index is built once per binary).
const ConstraintCache::Compile& qwen3_compiler() {
  static const ConstraintCache::Compile compile =
      tool_call_compiler(agent::testing::qwen3_tokenizer(), 151936, 0);
  return compile;
}

// qwen3_compiler() that counts its runs and first calls `before` with the set's first tool name.
ConstraintCache::Compile counting(std::atomic<int>& runs, std::function<void(const std::string&)> before = {}) {
  return [&runs, before](std::span<const tools::ToolSpec* const> allowed) {
    ++runs;
    if (before) before(allowed.empty() ? std::string() : allowed[0]->name);
    return qwen3_compiler()(allowed);
  };
}

tools::ToolSpec tool(std::string name, std::string property = "city") {
  tools::ToolSpec spec;
  spec.name = std::move(name);
  spec.parameters = {{"type", "object"},
                     {"properties", {{property, {{"type", "string"}}}}},
                     {"required", {property}},
                     {"additionalProperties", false}};
  return spec;
}

// A gate a compile can wait at until the test opens it.
class Gate {
 public:
  void wait() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return open_; });
  }
  void open() {
    {
      std::lock_guard lock(mu_);
      open_ = true;
    }
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
};

TEST_CASE("a hit returns the same compiled object without compiling; another set or order is a miss") {
  std::atomic<int> runs{0};
  ConstraintCache cache(counting(runs));
  const auto weather = tool("get_weather"), time = tool("get_time", "zone");
  auto first = cache.get(Specs{&weather, &time});
  REQUIRE_MESSAGE(first.ok(), first.status().to_string());
  auto again = cache.get(Specs{&weather, &time});
  REQUIRE(again.ok());
  CHECK(again->get() == first->get());
  CHECK(runs.load() == 1);
  CHECK(cache.compiles() == 1);

  auto swapped = cache.get(Specs{&time, &weather});
  REQUIRE(swapped.ok());
  CHECK(swapped->get() != first->get());
  const auto weather_v2 = tool("get_weather", "town");  // same name, other schema
  auto other_schema = cache.get(Specs{&weather_v2});
  REQUIRE(other_schema.ok());
  CHECK(cache.compiles() == 3);
  CHECK(cache.size() == 3);

  // start() hands each request a fresh matcher of the cached grammar, at the start of a call.
  auto a = cache.start(Specs{&weather, &time});
  auto b = cache.start(Specs{&weather, &time});
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  CHECK(a->get() != b->get());
  CHECK_FALSE((*a)->is_complete());
  CHECK(cache.compiles() == 3);
}

TEST_CASE("the cache keeps at most max_entries, dropping the least recently used") {
  std::atomic<int> runs{0};
  ConstraintCache cache(counting(runs), 2);
  CHECK(cache.max_entries() == 2);
  const auto a = tool("a"), b = tool("b"), c = tool("c");
  auto a1 = cache.get(Specs{&a});
  auto b1 = cache.get(Specs{&b});
  REQUIRE(a1.ok());
  REQUIRE(b1.ok());
  REQUIRE(cache.get(Specs{&a}).ok());  // a is now more recent than b
  REQUIRE(cache.get(Specs{&c}).ok());  // over the cap: b goes
  CHECK(cache.size() == 2);
  CHECK(runs.load() == 3);

  auto a2 = cache.get(Specs{&a});
  REQUIRE(a2.ok());
  CHECK(a2->get() == a1->get());
  CHECK(runs.load() == 3);

  // b compiles again; the copy a request still holds stays valid and is a different object.
  auto b2 = cache.get(Specs{&b});
  REQUIRE(b2.ok());
  CHECK(runs.load() == 4);
  CHECK(b2->get() != b1->get());
  CHECK((*b1)->start() != nullptr);
  CHECK(cache.size() == 2);
  // The order is now b, a (c was the least recent): c misses, a hits.
  REQUIRE(cache.get(Specs{&a}).ok());
  CHECK(runs.load() == 4);
  REQUIRE(cache.get(Specs{&c}).ok());
  CHECK(runs.load() == 5);

  ConstraintCache zero(counting(runs), 0);
  CHECK(zero.max_entries() == 1);
  auto z1 = zero.get(Specs{&a});
  auto z2 = zero.get(Specs{&a});
  REQUIRE(z1.ok());
  REQUIRE(z2.ok());
  CHECK(z1->get() == z2->get());
}

TEST_CASE("concurrent lookups of one tool set compile it once and all get the same object") {
  std::atomic<int> runs{0};
  Gate gate;
  ConstraintCache cache(counting(runs, [&](const std::string&) { gate.wait(); }));
  const auto weather = tool("get_weather");
  constexpr int kThreads = 8;
  std::vector<std::future<Result<ConstraintCache::Compiled>>> results;
  for (int i = 0; i < kThreads; ++i)
    results.push_back(std::async(std::launch::async, [&] { return cache.get(Specs{&weather}); }));
  // One compile has started and is held at the gate; the other threads get time to find its slot.
  while (runs.load() == 0) std::this_thread::sleep_for(1ms);
  std::this_thread::sleep_for(50ms);
  gate.open();
  std::vector<ConstraintCache::Compiled> compiled;
  for (auto& f : results) {
    auto r = f.get();
    REQUIRE_MESSAGE(r.ok(), r.status().to_string());
    compiled.push_back(*r);
  }
  CHECK(runs.load() == 1);
  for (const auto& c : compiled) CHECK(c.get() == compiled[0].get());
}

TEST_CASE("a slow compile of one tool set does not hold up hits or compiles of others") {
  std::atomic<int> runs{0};
  Gate gate;
  ConstraintCache cache(counting(runs, [&](const std::string& name) {
    if (name == "slow") gate.wait();
  }));
  const auto fast = tool("fast"), slow = tool("slow"), other = tool("other");
  REQUIRE(cache.get(Specs{&fast}).ok());
  auto pending = std::async(std::launch::async, [&] { return cache.get(Specs{&slow}); });
  while (runs.load() < 2) std::this_thread::sleep_for(1ms);  // the slow compile is at the gate
  // Both would block for good if the cache compiled under its lock.
  auto hit = std::async(std::launch::async, [&] { return cache.get(Specs{&fast}); });
  auto miss = std::async(std::launch::async, [&] { return cache.get(Specs{&other}); });
  const bool hit_ready = hit.wait_for(10s) == std::future_status::ready;
  const bool miss_ready = miss.wait_for(10s) == std::future_status::ready;
  const bool slow_pending = pending.wait_for(0s) == std::future_status::timeout;
  gate.open();  // before any check can leave the test, so no thread stays stuck at the gate
  CHECK(hit_ready);
  CHECK(miss_ready);
  CHECK(slow_pending);
  CHECK(hit.get().ok());
  CHECK(miss.get().ok());
  CHECK(pending.get().ok());
  CHECK(runs.load() == 3);
}

TEST_CASE("a failed compile reaches every waiter, is not cached, and the next request compiles again") {
  std::atomic<int> runs{0};
  std::atomic<bool> fail{true};
  Gate gate;
  ConstraintCache cache([&](std::span<const tools::ToolSpec* const> allowed) -> Result<ConstraintCache::Compiled> {
    ++runs;
    gate.wait();
    if (fail.load()) return Status::invalid_argument("schema the grammar cannot take");
    return qwen3_compiler()(allowed);
  });
  const auto weather = tool("get_weather");
  auto first = std::async(std::launch::async, [&] { return cache.get(Specs{&weather}); });
  while (runs.load() == 0) std::this_thread::sleep_for(1ms);
  auto second = std::async(std::launch::async, [&] { return cache.get(Specs{&weather}); });
  std::this_thread::sleep_for(50ms);  // the second request is waiting for the first one's compile
  gate.open();
  auto r1 = first.get();
  auto r2 = second.get();
  CHECK(r1.status().code() == StatusCode::kInvalidArgument);
  CHECK(r2.status().code() == StatusCode::kInvalidArgument);
  CHECK(runs.load() == 1);
  CHECK(cache.size() == 0);

  fail = false;
  auto r3 = cache.get(Specs{&weather});
  REQUIRE_MESSAGE(r3.ok(), r3.status().to_string());
  CHECK(runs.load() == 2);
  CHECK(cache.size() == 1);
}

TEST_CASE("a compile that throws becomes an error result, not a hang") {
  ConstraintCache cache([](std::span<const tools::ToolSpec* const>) -> Result<ConstraintCache::Compiled> {
    throw std::runtime_error("out of patience");
  });
  const auto weather = tool("get_weather");
  auto r = cache.get(Specs{&weather});
  CHECK(r.status().code() == StatusCode::kInternal);
  CHECK(r.status().message().find("out of patience") != std::string::npos);
  CHECK(cache.size() == 0);
}

}  // namespace
}  // namespace agentserve::server
