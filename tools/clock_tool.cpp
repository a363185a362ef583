#include "tools/clock_tool.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string_view>

namespace agentserve::tools {

using json = nlohmann::json;

std::string format_iso8601_utc(std::chrono::system_clock::time_point time) {
  using namespace std::chrono;
  const auto seconds = floor<std::chrono::seconds>(time);
  const auto day = floor<days>(seconds);
  const year_month_day ymd(day);
  const hh_mm_ss hms(seconds - day);
  char buf[40];
  std::snprintf(buf, sizeof buf, "%04d-%02u-%02uT%02d:%02d:%02dZ", static_cast<int>(ymd.year()),
                static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()),
                static_cast<int>(hms.hours().count()), static_cast<int>(hms.minutes().count()),
                static_cast<int>(hms.seconds().count()));
  return buf;
}

std::string format_iso8601_local(std::chrono::system_clock::time_point time,
                                 std::chrono::seconds utc_offset) {
  std::string out = format_iso8601_utc(time + utc_offset);
  out.pop_back();  // the 'Z'
  // Real offsets stay within +-26 h; the clamp keeps the field two digits wide whatever the caller passes.
  const int minutes = static_cast<int>(
      std::min<long long>(std::llabs(static_cast<long long>(utc_offset.count())) / 60, 99 * 60 + 59));
  char buf[32];
  std::snprintf(buf, sizeof buf, "%c%02d:%02d", utc_offset.count() < 0 ? '-' : '+', minutes / 60,
                minutes % 60);
  return out + buf;
}

namespace {

bool is_utc_name(std::string_view zone) {
  return zone == "UTC" || zone == "Etc/UTC" || zone == "GMT" || zone == "Z";
}

}  // namespace

Status register_clock_tool(ToolRegistry& registry, WallClock now, std::filesystem::path zoneinfo_dir) {
  ToolSpec spec;
  spec.name = "current_time";
  spec.description = "Get the current date and time (ISO-8601), in UTC or in an IANA time zone.";
  spec.parameters = {
      {"type", "object"},
      {"properties",
       {{"timezone",
         {{"type", "string"}, {"description", "IANA time zone, e.g. \"Europe/Paris\"; default UTC"}}}}},
      {"additionalProperties", false}};
  spec.execution = ToolExecution::kServer;
  spec.timeout = std::chrono::milliseconds(1000);
  spec.run = [now = std::move(now), zoneinfo_dir = std::move(zoneinfo_dir)](const json& args,
                                                                            const ToolContext&) {
    std::string zone = "UTC";
    if (auto it = args.find("timezone"); it != args.end()) zone = it->get<std::string>();
    const auto time = now();
    const auto unix_seconds = std::chrono::floor<std::chrono::seconds>(time.time_since_epoch()).count();
    json out = {{"utc", format_iso8601_utc(time)}, {"unix", unix_seconds}, {"timezone", "UTC"}};
    if (is_utc_name(zone)) return ToolResult::success(out.dump());
    auto offset = zone_offset_at(zone, time, zoneinfo_dir);
    if (!offset.ok()) return ToolResult::error(offset.status().code(), offset.status().message());
    out["timezone"] = zone;
    out["local"] = format_iso8601_local(time, offset->utc_offset);
    out["abbreviation"] = offset->abbreviation;
    out["dst"] = offset->is_dst;
    return ToolResult::success(out.dump());
  };
  return registry.add(std::move(spec));
}

}  // namespace agentserve::tools
