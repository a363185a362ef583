#include "tools/memory_tools.h"

#include <doctest/doctest.h>

#include <memory>
#include <string>

#include "tests/scratch_dir.h"
#include "tests/tools/tool_waiter.h"

namespace agentserve::tools {
namespace {

using json = nlohmann::json;
using testing::call_tool;

struct Fixture {
  std::unique_ptr<memory::RocksDbStore> db;
  std::unique_ptr<memory::SessionStore> sessions;
  ToolRegistry registry;

  explicit Fixture(const std::filesystem::path& dir, MemoryToolLimits limits = {}) {
    auto opened = memory::RocksDbStore::open(memory::StoreOptions{.path = (dir / "db").string()});
    REQUIRE_MESSAGE(opened.ok(), opened.status().to_string());
    db = std::move(opened).value();
    sessions = std::make_unique<memory::SessionStore>(*db);
    REQUIRE(register_memory_tools(registry, *sessions, limits).ok());
  }

  ToolResult call(std::string_view name, json args, std::string agent = "agent-1") {
    return call_tool(registry, name, std::move(args), ToolContext{.agent_id = std::move(agent)});
  }
};

json output_json(const ToolResult& r) {
  REQUIRE_MESSAGE(!r.is_error, r.output);
  return json::parse(r.output);
}

TEST_CASE("memory_write then memory_read returns the note, and a rewrite replaces it") {
  Fixture f(agentserve::testing::scratch_dir("tools_memory", "write_read"));
  auto w = output_json(f.call("memory_write", {{"key", "user_name"}, {"note", "Ada Lovelace"}}));
  CHECK(w["replaced"] == false);
  CHECK(output_json(f.call("memory_read", {{"key", "user_name"}}))["note"] == "Ada Lovelace");
  CHECK(output_json(f.call("memory_write", {{"key", "user_name"}, {"note", "Ada"}}))["replaced"] == true);
  CHECK(output_json(f.call("memory_read", {{"key", "user_name"}}))["note"] == "Ada");

  ToolResult missing = f.call("memory_read", {{"key", "nope"}});
  CHECK(missing.is_error);
  CHECK(missing.code == StatusCode::kNotFound);
  CHECK(missing.output.find("nope") != std::string::npos);
}

TEST_CASE("notes belong to one agent: another agent neither reads nor finds them") {
  Fixture f(agentserve::testing::scratch_dir("tools_memory", "isolation"));
  REQUIRE_FALSE(f.call("memory_write", {{"key", "secret"}, {"note", "blue"}}, "a1").is_error);
  CHECK(f.call("memory_read", {{"key", "secret"}}, "a2").code == StatusCode::kNotFound);
  CHECK(output_json(f.call("memory_search", {{"query", "blue"}}, "a2"))["results"].empty());
  CHECK(output_json(f.call("memory_search", {{"query", "blue"}}, "a1"))["results"].size() == 1);
  ToolResult no_agent = f.call("memory_read", {{"key", "secret"}}, "");
  CHECK(no_agent.is_error);
  CHECK(no_agent.code == StatusCode::kFailedPrecondition);
}

TEST_CASE("memory_search ranks key hits and phrase matches first and honours limit") {
  Fixture f(agentserve::testing::scratch_dir("tools_memory", "search"));
  const std::pair<const char*, const char*> notes[] = {
      {"coffee", "likes it black, no sugar"},
      {"breakfast", "coffee and toast every morning"},
      {"lunch", "salad; sometimes coffee after"},
      {"dinner", "pasta"},
      {"drinks", "Coffee Black is the favourite order"},
  };
  for (const auto& [key, note] : notes)
    REQUIRE_FALSE(f.call("memory_write", {{"key", key}, {"note", note}}).is_error);

  auto results = output_json(f.call("memory_search", {{"query", "coffee black"}}))["results"];
  REQUIRE(results.size() == 4);
  CHECK(results[0]["key"] == "drinks");     // both words, and the phrase itself (case-insensitive)
  CHECK(results[1]["key"] == "coffee");     // key hit
  CHECK(results[2]["key"] == "breakfast");  // ties keep key order
  CHECK(results[3]["key"] == "lunch");
  CHECK(results[0]["score"].get<int>() > results[1]["score"].get<int>());

  CHECK(output_json(f.call("memory_search", {{"query", "coffee"}, {"limit", 2}}))["results"].size() == 2);
  CHECK(output_json(f.call("memory_search", {{"query", "tea"}}))["results"].empty());
  CHECK(f.call("memory_search", {{"query", " ,;"}}).code == StatusCode::kInvalidArgument);
  CHECK(f.call("memory_search", {{"query", "x"}, {"limit", 0}}).code == StatusCode::kInvalidArgument);
}

TEST_CASE("memory_delete removes a note and is idempotent") {
  Fixture f(agentserve::testing::scratch_dir("tools_memory", "delete"));
  REQUIRE_FALSE(f.call("memory_write", {{"key", "k"}, {"note", "v"}}).is_error);
  CHECK(output_json(f.call("memory_delete", {{"key", "k"}}))["deleted"] == true);
  CHECK(f.call("memory_read", {{"key", "k"}}).code == StatusCode::kNotFound);
  CHECK(output_json(f.call("memory_delete", {{"key", "k"}}))["deleted"] == false);
}

TEST_CASE("limits on key length, note size and notes per agent are error results and write nothing") {
  MemoryToolLimits limits;
  limits.max_key_bytes = 8;
  limits.max_note_bytes = 10;
  limits.max_notes_per_agent = 2;
  Fixture f(agentserve::testing::scratch_dir("tools_memory", "limits"), limits);
  CHECK(f.call("memory_write", {{"key", "123456789"}, {"note", "x"}}).code == StatusCode::kInvalidArgument);
  CHECK(f.call("memory_write", {{"key", ""}, {"note", "x"}}).code == StatusCode::kInvalidArgument);
  ToolResult big = f.call("memory_write", {{"key", "k"}, {"note", "01234567890"}});
  CHECK(big.code == StatusCode::kInvalidArgument);
  CHECK(big.output.find("11 bytes") != std::string::npos);
  CHECK(f.call("memory_read", {{"key", "k"}}).code == StatusCode::kNotFound);

  REQUIRE_FALSE(f.call("memory_write", {{"key", "a"}, {"note", "1"}}).is_error);
  REQUIRE_FALSE(f.call("memory_write", {{"key", "b"}, {"note", "2"}}).is_error);
  ToolResult third = f.call("memory_write", {{"key", "c"}, {"note", "3"}});
  CHECK(third.code == StatusCode::kResourceExhausted);
  CHECK(f.call("memory_read", {{"key", "c"}}).code == StatusCode::kNotFound);
  CHECK_FALSE(f.call("memory_write", {{"key", "a"}, {"note", "1b"}}).is_error);  // replacing is not adding
  CHECK_FALSE(f.call("memory_write", {{"key", "c"}, {"note", "3"}}, "other-agent").is_error);
}

TEST_CASE("notes persist when the database is closed and reopened") {
  const auto dir = agentserve::testing::scratch_dir("tools_memory", "persist");
  {
    Fixture f(dir);
    REQUIRE_FALSE(f.call("memory_write", {{"key", "fav_color"}, {"note", "vermilion ✓"}}).is_error);
  }
  Fixture reopened(dir);
  CHECK(output_json(reopened.call("memory_read", {{"key", "fav_color"}}))["note"] == "vermilion ✓");
  CHECK(output_json(reopened.call("memory_search", {{"query", "vermilion"}}))["results"].size() == 1);
}

TEST_CASE("the memory tools declare strict schemas only where every property is required") {
  Fixture f(agentserve::testing::scratch_dir("tools_memory", "specs"));
  REQUIRE(f.registry.find("memory_write") != nullptr);
  CHECK(f.registry.find("memory_write")->strict);
  CHECK(f.registry.find("memory_read")->strict);
  CHECK_FALSE(f.registry.find("memory_search")->strict);
  CHECK(f.registry.find("memory_delete")->execution == ToolExecution::kServer);
}

}  // namespace
}  // namespace agentserve::tools
