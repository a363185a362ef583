#include "tools/clock_tool.h"

#include <doctest/doctest.h>

#include <chrono>
#include <filesystem>

#include "tests/tools/tool_waiter.h"

namespace agentserve::tools {
namespace {

using json = nlohmann::json;
using std::chrono::seconds;
using std::chrono::system_clock;

system_clock::time_point at(long long unix_seconds) {
  return system_clock::time_point(seconds(unix_seconds));
}

TEST_CASE("format_iso8601_utc formats known instants, leap days and pre-1970 times") {
  CHECK(format_iso8601_utc(at(0)) == "1970-01-01T00:00:00Z");
  CHECK(format_iso8601_utc(at(951782400)) == "2000-02-29T00:00:00Z");
  CHECK(format_iso8601_utc(at(1796044507)) == "2026-11-30T13:15:07Z");
  CHECK(format_iso8601_utc(at(-1)) == "1969-12-31T23:59:59Z");
  CHECK(format_iso8601_utc(at(0) + std::chrono::milliseconds(999)) == "1970-01-01T00:00:00Z");
}

TEST_CASE("current_time answers UTC from the given clock and refuses unknown zones clearly") {
  ToolRegistry registry;
  REQUIRE(register_clock_tool(registry, [] { return at(951782400 + 3661); }).ok());
  auto out = json::parse(testing::call_tool(registry, "current_time", json::object()).output);
  CHECK(out["utc"] == "2000-02-29T01:01:01Z");
  CHECK(out["unix"] == 951782400 + 3661);
  CHECK(out["timezone"] == "UTC");
  CHECK_FALSE(testing::call_tool(registry, "current_time", {{"timezone", "Etc/UTC"}}).is_error);
  ToolResult mars = testing::call_tool(registry, "current_time", {{"timezone", "Mars/Olympus_Mons"}});
  CHECK(mars.is_error);
  CHECK(mars.code == StatusCode::kNotFound);
  CHECK(mars.output.find("unknown time zone") != std::string::npos);
  CHECK(testing::call_tool(registry, "current_time", {{"timezone", 5}}).code == StatusCode::kInvalidArgument);
}

TEST_CASE("format_iso8601_local writes the offset after the local time") {
  CHECK(format_iso8601_local(at(1784116800), seconds(7200)) == "2026-07-15T14:00:00+02:00");
  CHECK(format_iso8601_local(at(1784116800), seconds(-(3 * 3600 + 1800))) == "2026-07-15T08:30:00-03:30");
  CHECK(format_iso8601_local(at(0), seconds(0)) == "1970-01-01T00:00:00+00:00");
}

TEST_CASE("current_time answers the local time of an IANA zone") {
  if (!std::filesystem::exists(std::filesystem::path(kDefaultZoneinfoDir) / "Asia/Kolkata")) {
    MESSAGE("no tz database; skipped");
    return;
  }
  ToolRegistry registry;
  REQUIRE(register_clock_tool(registry, [] { return at(1768478400); }).ok());
  ToolResult r = testing::call_tool(registry, "current_time", {{"timezone", "Asia/Kolkata"}});
  REQUIRE_MESSAGE(!r.is_error, r.output);
  auto out = json::parse(r.output);
  CHECK(out["utc"] == "2026-01-15T12:00:00Z");
  CHECK(out["local"] == "2026-01-15T17:30:00+05:30");
  CHECK(out["timezone"] == "Asia/Kolkata");
  CHECK(out["abbreviation"] == "IST");
  CHECK(out["dst"] == false);
}

TEST_CASE("current_time on the real clock is close to now") {
  ToolRegistry registry;
  REQUIRE(register_clock_tool(registry).ok());
  auto out = json::parse(testing::call_tool(registry, "current_time", json::object()).output);
  const auto now = std::chrono::duration_cast<seconds>(system_clock::now().time_since_epoch()).count();
  CHECK(std::llabs(out["unix"].get<long long>() - now) <= 2);
}

}  // namespace
}  // namespace agentserve::tools
