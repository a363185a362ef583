// The clock tool: current_time {timezone?} answers the current time as UTC ISO-8601 ("2026-11-29T21:05:07Z")
// with the Unix time in seconds and, for an IANA zone ("Europe/Paris"), the local time with its offset
// ("2026-11-29T22:05:07+01:00"), read from the system tz database (time_zone.h). An unknown zone, or one
// the installed data cannot answer for, is an error result, never a guessed offset.
//
// It never reads the process's TZ or locale (both are global state that other threads may change).
#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <string>

#include "base/status.h"
#include "tools/time_zone.h"
#include "tools/tool_registry.h"

namespace agentserve::tools {

using WallClock = std::function<std::chrono::system_clock::time_point()>;

// "YYYY-MM-DDTHH:MM:SSZ" (seconds truncated), for any time from year 0 to 9999.
std::string format_iso8601_utc(std::chrono::system_clock::time_point time);

// "YYYY-MM-DDTHH:MM:SS+HH:MM": the local time at `utc_offset` from UTC.
std::string format_iso8601_local(std::chrono::system_clock::time_point time, std::chrono::seconds utc_offset);

// Registers "current_time"; `now` is the clock to read (tests pass a fixed one), `zoneinfo_dir` the tz
// database.
Status register_clock_tool(
    ToolRegistry& registry, WallClock now = [] { return std::chrono::system_clock::now(); },
    std::filesystem::path zoneinfo_dir = std::filesystem::path(kDefaultZoneinfoDir));

}  // namespace agentserve::tools
