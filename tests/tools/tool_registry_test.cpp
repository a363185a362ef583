#include "tools/tool_registry.h"

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>

#include "tests/tools/tool_waiter.h"

namespace agentserve::tools {
namespace {

using json = nlohmann::json;
using testing::ToolWaiter;
using namespace std::chrono_literals;

ToolSpec server_tool(std::string name, ToolFunction run, std::chrono::milliseconds timeout = 2000ms) {
  ToolSpec spec;
  spec.name = std::move(name);
  spec.description = "test tool";
  spec.parameters = {{"type", "object"},
                     {"properties", {{"x", {{"type", "integer"}}}}},
                     {"required", {"x"}},
                     {"additionalProperties", false}};
  spec.execution = ToolExecution::kServer;
  spec.timeout = timeout;
  spec.run = std::move(run);
  return spec;
}

ToolFunction echo_x() {
  return [](const json& args, const ToolContext& ctx) {
    return ToolResult::success(std::to_string(args.at("x").get<int>()) + "/" + ctx.call_id);
  };
}

ToolSpec client_tool(std::string name) {
  ToolSpec spec;
  spec.name = std::move(name);
  spec.parameters = {{"type", "object"}, {"properties", json::object()}};
  return spec;
}

TEST_CASE("add rejects bad names, duplicates, non-object schemas and inconsistent executors") {
  ToolRegistry registry;
  for (std::string bad : {std::string(), std::string(65, 'a'), std::string("has space"),
                          std::string("dot.name"), std::string("ünïcode")}) {
    Status s = registry.add(server_tool(bad, echo_x()));
    CHECK(s.code() == StatusCode::kInvalidArgument);
  }
  CHECK(registry.add(server_tool(std::string(64, 'a'), echo_x())).ok());
  REQUIRE(registry.add(server_tool("tool-1_A", echo_x())).ok());
  Status dup = registry.add(server_tool("tool-1_A", echo_x()));
  CHECK(dup.code() == StatusCode::kInvalidArgument);
  CHECK(dup.message().find("already registered") != std::string::npos);

  ToolSpec string_schema = server_tool("s", echo_x());
  string_schema.parameters = {{"type", "string"}};
  CHECK(registry.add(string_schema).message().find("object schema") != std::string::npos);
  ToolSpec array_params = server_tool("a", echo_x());
  array_params.parameters = json::array();
  CHECK(registry.add(array_params).code() == StatusCode::kInvalidArgument);
  ToolSpec unsupported = server_tool("u", echo_x());
  unsupported.parameters = {{"type", "object"}, {"oneOf", json::array({json::object()})}};
  Status us = registry.add(unsupported);
  CHECK(us.message().find("oneOf") != std::string::npos);

  ToolSpec no_run = server_tool("n", nullptr);
  CHECK(registry.add(no_run).message().find("needs run") != std::string::npos);
  ToolSpec client_with_run = client_tool("c");
  client_with_run.run = echo_x();
  CHECK(registry.add(client_with_run).code() == StatusCode::kInvalidArgument);
  ToolSpec zero_timeout = server_tool("z", echo_x(), 0ms);
  CHECK(registry.add(zero_timeout).code() == StatusCode::kInvalidArgument);

  CHECK(registry.list().size() == 2);
  CHECK(registry.find("s") == nullptr);
}

TEST_CASE("find and list see every tool, list in name order") {
  ToolRegistry registry;
  REQUIRE(registry.add(server_tool("beta", echo_x())).ok());
  REQUIRE(registry.add(server_tool("alpha", echo_x())).ok());
  REQUIRE(registry.add(client_tool("gamma")).ok());
  auto all = registry.list();
  REQUIRE(all.size() == 3);
  CHECK(all[0]->name == "alpha");
  CHECK(all[1]->name == "beta");
  CHECK(all[2]->name == "gamma");
  REQUIRE(registry.find("gamma") != nullptr);
  CHECK(registry.find("gamma")->execution == ToolExecution::kClient);
  CHECK(registry.find("delta") == nullptr);
}

TEST_CASE("a session's client tools go on a copy and may not shadow server tools") {
  ToolRegistry server;
  REQUIRE(server.add(server_tool("memory_read", echo_x())).ok());

  auto session = server.with_client_tools({client_tool("get_weather")});
  REQUIRE_MESSAGE(session.ok(), session.status().to_string());
  CHECK(session->find("get_weather") != nullptr);
  CHECK(session->find("memory_read") != nullptr);
  CHECK(server.find("get_weather") == nullptr);  // the server's registry is untouched

  auto shadow = server.with_client_tools({client_tool("memory_read")});
  REQUIRE_FALSE(shadow.ok());
  CHECK(shadow.status().message().find("shadow") != std::string::npos);

  auto not_client = server.with_client_tools({server_tool("sneaky", echo_x())});
  CHECK(not_client.status().code() == StatusCode::kInvalidArgument);

  // The copy shares the workers: a server tool runs through it.
  ToolWaiter waiter;
  session->execute("memory_read", {{"x", 7}}, {.call_id = "c1"}, waiter.callback());
  REQUIRE(waiter.wait_for(1) == 1);
  CHECK(waiter.results()[0].output == "7/c1");
}

TEST_CASE("declarations parse in the flat and the nested form") {
  ToolRegistry server;
  REQUIRE(server.add(server_tool("calc", echo_x())).ok());
  const json params = {{"type", "object"},
                       {"properties", {{"city", {{"type", "string"}}}}},
                       {"required", {"city"}},
                       {"additionalProperties", false}};

  auto flat = server.parse_declaration({{"type", "function"},
                                        {"name", "weather"},
                                        {"description", "d"},
                                        {"parameters", params},
                                        {"strict", true},
                                        {"execution", "client"}});
  REQUIRE_MESSAGE(flat.ok(), flat.status().to_string());
  CHECK(flat->name == "weather");
  CHECK(flat->description == "d");
  CHECK(flat->strict);
  CHECK(flat->parameters == params);
  CHECK(flat->execution == ToolExecution::kClient);

  auto nested = server.parse_declaration(
      {{"type", "function"},
       {"function", {{"name", "weather"}, {"parameters", params}, {"timeout_ms", 1500}}}});
  REQUIRE_MESSAGE(nested.ok(), nested.status().to_string());
  CHECK(nested->parameters == params);
  CHECK_FALSE(nested->strict);
  CHECK(nested->timeout == 1500ms);

  auto declared_server =
      server.parse_declaration({{"type", "function"}, {"name", "calc"}, {"execution", "server"}});
  REQUIRE(declared_server.ok());
  CHECK(declared_server->execution == ToolExecution::kServer);
  CHECK(static_cast<bool>(declared_server->run));

  CHECK(server.parse_declaration({{"type", "function"}, {"name", "nope"}, {"execution", "server"}})
            .status()
            .message()
            .find("no server tool") != std::string::npos);
  CHECK(server.parse_declaration({{"type", "function"}, {"name", "w"}, {"execution", "remote"}})
            .status()
            .code() == StatusCode::kInvalidArgument);
  CHECK(server.parse_declaration({{"name", "w"}}).status().code() == StatusCode::kInvalidArgument);
  CHECK(server.parse_declaration({{"type", "function"}, {"name", 3}}).status().code() ==
        StatusCode::kInvalidArgument);
  CHECK(server.parse_declaration(json::array()).status().code() == StatusCode::kInvalidArgument);
  CHECK(server.parse_declaration({{"type", "function"}, {"function", "x"}}).status().code() ==
        StatusCode::kInvalidArgument);

  auto session = server.with_declared_tools(
      json::array({{{"type", "function"}, {"name", "weather"}, {"parameters", params}},
                   {{"type", "function"}, {"function", {{"name", "calc"}, {"execution", "server"}}}}}));
  REQUIRE_MESSAGE(session.ok(), session.status().to_string());
  CHECK(session->list().size() == 2);
  auto bad_schema = server.with_declared_tools(
      json::array({{{"type", "function"},
                    {"name", "w"},
                    {"parameters", {{"type", "object"}, {"allOf", json::array()}}}}}));
  CHECK(bad_schema.status().message().find("allOf") != std::string::npos);
}

TEST_CASE("execute reports once, off the caller's thread, with the tool's answer") {
  ToolRegistry registry;
  REQUIRE(registry.add(server_tool("echo", echo_x())).ok());
  ToolWaiter waiter;
  registry.execute("echo", {{"x", 41}}, {.call_id = "call_9"}, waiter.callback());
  REQUIRE(waiter.wait_for(1) == 1);
  auto r = waiter.results()[0];
  CHECK_FALSE(r.is_error);
  CHECK(r.output == "41/call_9");
  CHECK(waiter.threads()[0] != std::this_thread::get_id());
  std::this_thread::sleep_for(20ms);
  CHECK(waiter.results().size() == 1);
}

TEST_CASE("invalid arguments, client tools and unknown names are error results and nothing runs") {
  ToolRegistry registry;
  std::atomic<int> runs{0};
  REQUIRE(registry
              .add(server_tool("count",
                               [&](const json&, const ToolContext&) {
                                 ++runs;
                                 return ToolResult::success("ran");
                               }))
              .ok());
  REQUIRE(registry.add(client_tool("on_client")).ok());

  ToolWaiter waiter;
  registry.execute("count", {{"x", "seven"}}, {}, waiter.callback());
  registry.execute("count", {{"x", 1}, {"y", 2}}, {}, waiter.callback());
  registry.execute("on_client", json::object(), {}, waiter.callback());
  registry.execute("missing", json::object(), {}, waiter.callback());
  REQUIRE(waiter.wait_for(4) == 4);
  std::this_thread::sleep_for(20ms);
  auto results = waiter.results();
  REQUIRE(results.size() == 4);
  int invalid = 0, precondition = 0, not_found = 0;
  for (const auto& r : results) {
    CHECK(r.is_error);
    if (r.code == StatusCode::kInvalidArgument) {
      ++invalid;
      const bool names_path = r.output.find("/x: expected integer, got string") != std::string::npos ||
                              r.output.find("/y: property is not allowed") != std::string::npos;
      CHECK_MESSAGE(names_path, r.output);
    }
    precondition += r.code == StatusCode::kFailedPrecondition;
    not_found += r.code == StatusCode::kNotFound;
  }
  CHECK(invalid == 2);
  CHECK(precondition == 1);
  CHECK(not_found == 1);
  CHECK(runs.load() == 0);
}

TEST_CASE("a tool that sleeps past its timeout yields a timeout error at the deadline, exactly once") {
  ToolRegistry registry;
  std::atomic<bool> finished{false};
  REQUIRE(registry
              .add(server_tool(
                  "sleepy",
                  [&](const json&, const ToolContext&) {
                    std::this_thread::sleep_for(400ms);
                    finished = true;
                    return ToolResult::success("late");
                  },
                  50ms))
              .ok());
  ToolWaiter waiter;
  const auto start = std::chrono::steady_clock::now();
  registry.execute("sleepy", {{"x", 1}}, {}, waiter.callback());
  REQUIRE(waiter.wait_for(1) == 1);
  const auto elapsed = std::chrono::steady_clock::now() - start;
  CHECK(elapsed >= 50ms);
  CHECK(elapsed < 350ms);
  auto r = waiter.results()[0];
  CHECK(r.is_error);
  CHECK(r.code == StatusCode::kDeadlineExceeded);
  CHECK(r.output.find("timed out") != std::string::npos);
  while (!finished) std::this_thread::sleep_for(10ms);
  std::this_thread::sleep_for(30ms);
  CHECK(waiter.results().size() == 1);  // the late answer was dropped
}

TEST_CASE("a tool that throws yields an error result naming the exception, exactly once") {
  ToolRegistry registry;
  REQUIRE(registry
              .add(server_tool("thrower",
                               [](const json&, const ToolContext&) -> ToolResult {
                                 throw std::runtime_error("disk on fire");
                               }))
              .ok());
  REQUIRE(
      registry
          .add(server_tool("thrower_int", [](const json&, const ToolContext&) -> ToolResult { throw 42; }))
          .ok());
  ToolWaiter waiter;
  registry.execute("thrower", {{"x", 1}}, {}, waiter.callback());
  registry.execute("thrower_int", {{"x", 1}}, {}, waiter.callback());
  REQUIRE(waiter.wait_for(2) == 2);
  std::this_thread::sleep_for(20ms);
  auto results = waiter.results();
  REQUIRE(results.size() == 2);
  bool saw_message = false;
  for (const auto& r : results) {
    CHECK(r.is_error);
    CHECK(r.code == StatusCode::kInternal);
    saw_message = saw_message || r.output.find("disk on fire") != std::string::npos;
  }
  CHECK(saw_message);
}

TEST_CASE("a tool that returns 5 MB yields an error result saying so, exactly once") {
  ToolRegistry registry;
  REQUIRE(registry
              .add(server_tool("big",
                               [](const json&, const ToolContext&) {
                                 return ToolResult::success(std::string(5'000'000, 'x'));
                               }))
              .ok());
  ToolSpec small = server_tool("small_cap", [](const json&, const ToolContext&) {
    return ToolResult::success(std::string(101, 'y'));
  });
  small.max_result_bytes = 100;
  REQUIRE(registry.add(small).ok());
  ToolWaiter waiter;
  registry.execute("big", {{"x", 1}}, {}, waiter.callback());
  REQUIRE(waiter.wait_for(1) == 1);
  auto r = waiter.results()[0];
  CHECK(r.is_error);
  CHECK(r.code == StatusCode::kResourceExhausted);
  CHECK(r.output.find("5000000 bytes") != std::string::npos);
  CHECK(r.output.size() < 1000);
  registry.execute("small_cap", {{"x", 1}}, {}, waiter.callback());
  REQUIRE(waiter.wait_for(2) == 2);
  CHECK(waiter.results()[1].code == StatusCode::kResourceExhausted);
  std::this_thread::sleep_for(20ms);
  CHECK(waiter.results().size() == 2);
}

TEST_CASE("a call queued behind stuck tools still gets its timeout on time and never starts") {
  ToolRegistry registry({.worker_threads = 1});
  std::atomic<int> quick_runs{0};
  REQUIRE(registry
              .add(server_tool("stuck",
                               [](const json&, const ToolContext&) {
                                 std::this_thread::sleep_for(300ms);
                                 return ToolResult::success("done");
                               }))
              .ok());
  REQUIRE(registry
              .add(server_tool(
                  "quick",
                  [&](const json&, const ToolContext&) {
                    ++quick_runs;
                    return ToolResult::success("quick");
                  },
                  40ms))
              .ok());
  ToolWaiter stuck_waiter, quick_waiter;
  registry.execute("stuck", {{"x", 1}}, {}, stuck_waiter.callback());
  std::this_thread::sleep_for(10ms);
  const auto start = std::chrono::steady_clock::now();
  registry.execute("quick", {{"x", 1}}, {}, quick_waiter.callback());
  REQUIRE(quick_waiter.wait_for(1) == 1);
  CHECK(std::chrono::steady_clock::now() - start < 250ms);
  CHECK(quick_waiter.results()[0].code == StatusCode::kDeadlineExceeded);
  REQUIRE(stuck_waiter.wait_for(1) == 1);
  CHECK(stuck_waiter.results()[0].output == "done");
  std::this_thread::sleep_for(20ms);
  CHECK(quick_runs.load() == 0);
}

TEST_CASE("destroying the registry cancels pending calls, each reported exactly once") {
  ToolWaiter waiter;
  {
    ToolRegistry registry({.worker_threads = 1});
    REQUIRE(registry
                .add(server_tool(
                    "slow",
                    [](const json&, const ToolContext&) {
                      std::this_thread::sleep_for(50ms);
                      return ToolResult::success("ok");
                    },
                    5000ms))
                .ok());
    for (int i = 0; i < 5; ++i) registry.execute("slow", {{"x", i}}, {}, waiter.callback());
    std::this_thread::sleep_for(10ms);
  }
  auto results = waiter.results();
  REQUIRE(results.size() == 5);
  int cancelled = 0;
  for (const auto& r : results) cancelled += r.code == StatusCode::kCancelled;
  CHECK(cancelled >= 4);
}

TEST_CASE("many concurrent calls with deadlines around their run time each report exactly once") {
  ToolRegistry registry({.worker_threads = 4});
  REQUIRE(registry
              .add(server_tool(
                  "jitter",
                  [](const json& args, const ToolContext&) {
                    std::this_thread::sleep_for(std::chrono::microseconds(args.at("x").get<int>()));
                    return ToolResult::success("ok");
                  },
                  2ms))
              .ok());
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> us(0, 4000);
  constexpr int kCalls = 300;
  std::vector<std::unique_ptr<ToolWaiter>> waiters;
  for (int i = 0; i < kCalls; ++i) {
    waiters.push_back(std::make_unique<ToolWaiter>());
    registry.execute("jitter", {{"x", us(rng)}}, {}, waiters.back()->callback());
  }
  int ok = 0, timed_out = 0;
  for (auto& w : waiters) {
    REQUIRE(w->wait_for(1) == 1);
    auto r = w->results()[0];
    ok += !r.is_error;
    timed_out += r.code == StatusCode::kDeadlineExceeded;
  }
  CHECK(ok + timed_out == kCalls);
  std::this_thread::sleep_for(50ms);
  for (auto& w : waiters) CHECK(w->results().size() == 1);
}

TEST_CASE("calls that finish long before their timeout leave no pending deadline entries") {
  ToolRegistry registry({.worker_threads = 4});
  REQUIRE(registry.add(server_tool("echo", echo_x(), 60000ms)).ok());
  std::mutex gate_mu;
  std::condition_variable gate_cv;
  bool open = false;
  REQUIRE(registry
              .add(server_tool(
                  "gated",
                  [&](const json&, const ToolContext&) {
                    std::unique_lock lock(gate_mu);
                    gate_cv.wait(lock, [&] { return open; });
                    return ToolResult::success("through");
                  },
                  60000ms))
              .ok());
  ToolWaiter gated;
  registry.execute("gated", {{"x", 0}}, {}, gated.callback());
  CHECK(registry.pending_calls() == 1);  // running, not answered: its deadline still counts

  constexpr size_t kCalls = 500;
  ToolWaiter waiter;
  for (size_t i = 0; i < kCalls; ++i)
    registry.execute("echo", {{"x", static_cast<int>(i)}}, {}, waiter.callback());
  registry.execute("missing", json::object(), {}, waiter.callback());  // answered by the deadline thread
  const size_t answered = waiter.wait_for(kCalls + 1);
  // Each entry goes before its `done` runs, so once every answer is in only the gated call is left, 60 s
  // before any of their deadlines.
  const size_t pending = registry.pending_calls();
  {
    std::lock_guard lock(gate_mu);
    open = true;
  }
  gate_cv.notify_all();  // before any check can leave the test, so the registry is not left waiting on it
  CHECK(answered == kCalls + 1);
  CHECK(pending == 1);
  REQUIRE(gated.wait_for(1) == 1);
  CHECK(gated.results()[0].output == "through");
  CHECK(registry.pending_calls() == 0);
}

TEST_CASE("a call that finishes just as its deadline fires reports exactly once, over many tries") {
  ToolRegistry registry({.worker_threads = 4});
  // Busy-waits for x microseconds so that it ends within a few microseconds of a 1 ms deadline.
  REQUIRE(registry
              .add(server_tool(
                  "racer",
                  [](const json& args, const ToolContext&) {
                    const auto until =
                        std::chrono::steady_clock::now() + std::chrono::microseconds(args.at("x").get<int>());
                    while (std::chrono::steady_clock::now() < until) {
                    }
                    return ToolResult::success("ok");
                  },
                  1ms))
              .ok());
  std::mt19937 rng(11);
  std::uniform_int_distribution<int> us(900, 1100);
  constexpr int kRounds = 150;
  constexpr int kPerRound = 4;  // one per worker, so the deadline counts from when each starts
  int ok = 0, timed_out = 0;
  std::vector<std::unique_ptr<ToolWaiter>> waiters;
  for (int round = 0; round < kRounds; ++round) {
    const size_t first = waiters.size();
    for (int i = 0; i < kPerRound; ++i) {
      waiters.push_back(std::make_unique<ToolWaiter>());
      registry.execute("racer", {{"x", us(rng)}}, {}, waiters.back()->callback());
    }
    for (size_t i = first; i < waiters.size(); ++i) {
      REQUIRE(waiters[i]->wait_for(1) == 1);
      auto r = waiters[i]->results()[0];
      ok += !r.is_error;
      timed_out += r.code == StatusCode::kDeadlineExceeded;
    }
  }
  CHECK(ok + timed_out == kRounds * kPerRound);
  std::this_thread::sleep_for(20ms);  // any second answer would have arrived by now
  for (auto& w : waiters) CHECK(w->results().size() == 1);
  CHECK(registry.pending_calls() == 0);
  MESSAGE("answered in time: " << ok << ", timed out: " << timed_out);
}

}  // namespace
}  // namespace agentserve::tools
