#include "tools/time_zone.h"

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "tests/scratch_dir.h"

namespace agentserve::tools {
namespace {

using std::chrono::seconds;
using std::chrono::system_clock;

system_clock::time_point at(long long unix_seconds) {
  return system_clock::time_point(seconds(unix_seconds));
}

bool have_tzdata() {
  return std::filesystem::exists(std::filesystem::path(kDefaultZoneinfoDir) / "Europe/Paris");
}

TEST_CASE("offsets of real zones in winter, in summer and across a DST switch") {
  if (!have_tzdata()) {
    MESSAGE("no tz database under /usr/share/zoneinfo; skipped");
    return;
  }
  auto winter = zone_offset_at("Europe/Paris", at(1768478400));  // 2026-01-15T12:00:00Z
  REQUIRE_MESSAGE(winter.ok(), winter.status().to_string());
  CHECK(winter->utc_offset == seconds(3600));
  CHECK_FALSE(winter->is_dst);
  CHECK(winter->abbreviation == "CET");
  auto summer = zone_offset_at("Europe/Paris", at(1784116800));  // 2026-07-15T12:00:00Z
  REQUIRE(summer.ok());
  CHECK(summer->utc_offset == seconds(7200));
  CHECK(summer->is_dst);
  CHECK(summer->abbreviation == "CEST");
  // The EU switch on 2026-03-29 at 01:00 UTC, one second either side.
  CHECK(zone_offset_at("Europe/Paris", at(1774745999))->utc_offset == seconds(3600));
  CHECK(zone_offset_at("Europe/Paris", at(1774746000))->utc_offset == seconds(7200));
  CHECK(zone_offset_at("Asia/Kolkata", at(1768478400))->utc_offset == seconds(5 * 3600 + 1800));
  CHECK(zone_offset_at("America/New_York", at(1768478400))->utc_offset == seconds(-5 * 3600));
}

TEST_CASE("malformed names are refused before any file is opened; unknown zones are NotFound") {
  for (const char* bad : {"", "/etc/passwd", "../etc/passwd", "Europe/../../etc/passwd", "Europe//Paris",
                          ".hidden", "Europe/Paris\n", "Europe/Par is"}) {
    CHECK_MESSAGE(zone_offset_at(bad, at(0)).status().code() == StatusCode::kInvalidArgument, bad);
  }
  CHECK(zone_offset_at("Mars/Olympus_Mons", at(0)).status().code() == StatusCode::kNotFound);
}

TEST_CASE("truncated and corrupted zone files are errors, never crashes") {
  if (!have_tzdata()) {
    MESSAGE("no tz database under /usr/share/zoneinfo; skipped");
    return;
  }
  std::ifstream in(std::filesystem::path(kDefaultZoneinfoDir) / "Europe/Paris", std::ios::binary);
  const std::string original((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  REQUIRE(original.size() > 100);
  const auto dir = agentserve::testing::scratch_dir("tools_time_zone", "corrupt");
  std::filesystem::create_directories(dir / "Test");
  auto write = [&](const std::string& bytes) {
    std::ofstream out(dir / "Test/Zone", std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  };
  write(original);
  auto whole = zone_offset_at("Test/Zone", at(1784116800), dir);
  REQUIRE(whole.ok());
  CHECK(whole->utc_offset == seconds(7200));

  std::mt19937 rng(99);
  int errors = 0;
  for (size_t len = 0; len < original.size(); len += 7) {
    write(original.substr(0, len));
    errors += !zone_offset_at("Test/Zone", at(1784116800), dir).ok();
  }
  CHECK(errors > 0);
  for (int i = 0; i < 300; ++i) {
    std::string damaged = original;
    for (int k = 0; k < 4; ++k) damaged[rng() % damaged.size()] = static_cast<char>(rng());
    write(damaged);
    auto r = zone_offset_at("Test/Zone", at(1784116800), dir);
    if (r.ok()) CHECK(std::llabs(r->utc_offset.count()) < 26 * 3600);
  }
  write("not a zone file at all, but long enough to have a header of forty-four bytes");
  CHECK(zone_offset_at("Test/Zone", at(0), dir).status().code() == StatusCode::kNotFound);
}

}  // namespace
}  // namespace agentserve::tools
