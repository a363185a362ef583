// Time zones for the clock tool: the UTC offset of an IANA zone ("Europe/Paris") at an instant, read from
// the system's compiled tz database (TZif files, RFC 8536, under /usr/share/zoneinfo). GCC 12's libstdc++
// has no std::chrono::locate_zone, and the process's TZ/localtime_r are global state, so this reads the
// file itself.
//
// It never reads outside the zoneinfo folder (names are checked: no "..", no absolute paths), never trusts
// a count in the file without checking it against the file's size, and never guesses: an instant past the
// file's last transition in a zone that still observes DST (a "slim" file whose rules live only in its
// POSIX footer) is an error, not a possibly wrong offset.
#pragma once

#include <chrono>
#include <filesystem>
#include <string>
#include <string_view>

#include "base/status.h"

namespace agentserve::tools {

struct ZoneOffset {
  std::chrono::seconds utc_offset{0};
  bool is_dst = false;
  std::string abbreviation;  // "CEST"
};

inline constexpr std::string_view kDefaultZoneinfoDir = "/usr/share/zoneinfo";

// InvalidArgument for a malformed zone name, NotFound for an unknown zone, Corruption for a damaged file,
// FailedPrecondition for an instant the file does not cover (see above).
Result<ZoneOffset> zone_offset_at(
    std::string_view zone, std::chrono::system_clock::time_point time,
    const std::filesystem::path& zoneinfo_dir = std::filesystem::path(kDefaultZoneinfoDir));

}  // namespace agentserve::tools
