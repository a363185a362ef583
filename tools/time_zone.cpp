#include "tools/time_zone.h"

#include <cstdint>
#include <fstream>
#include <iterator>
#include <vector>

namespace agentserve::tools {
namespace {

constexpr size_t kMaxZoneFileBytes = 1 << 20;

bool is_valid_zone_name(std::string_view zone) {
  if (zone.empty() || zone.size() > 64 || zone.front() == '/') return false;
  size_t component_start = 0;
  for (size_t i = 0; i <= zone.size(); ++i) {
    if (i == zone.size() || zone[i] == '/') {
      if (i == component_start || zone[component_start] == '.') return false;  // "a//b", ".", "..", ".hidden"
      component_start = i + 1;
      continue;
    }
    const char c = zone[i];
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
                    c == '-' || c == '+' || c == '.';
    if (!ok) return false;
  }
  return true;
}

// A bounds-checked big-endian reader over the file's bytes.
class Reader {
 public:
  explicit Reader(const std::string& data) : data_(data) {}
  bool has(size_t n) const { return pos_ <= data_.size() && data_.size() - pos_ >= n; }
  size_t pos() const { return pos_; }
  void skip(size_t n) { pos_ += n; }
  int64_t be(size_t bytes) {
    uint64_t v = 0;
    for (size_t i = 0; i < bytes; ++i) v = (v << 8) | static_cast<unsigned char>(data_[pos_ + i]);
    pos_ += bytes;
    if (bytes == 4) return static_cast<int32_t>(static_cast<uint32_t>(v));  // sign-extend
    return static_cast<int64_t>(v);
  }
  unsigned char byte() { return static_cast<unsigned char>(data_[pos_++]); }

 private:
  const std::string& data_;
  size_t pos_ = 0;
};

struct Counts {
  int64_t isut, isstd, leap, time, type, chars;
};

Result<Counts> read_header(Reader& r) {
  if (!r.has(44)) return Status::corruption("TZif header truncated");
  r.skip(20);  // "TZif", version, 15 reserved bytes (checked by the caller)
  Counts c{r.be(4), r.be(4), r.be(4), r.be(4), r.be(4), r.be(4)};
  if (c.isut < 0 || c.isstd < 0 || c.leap < 0 || c.time < 0 || c.type < 1 || c.chars < 0 || c.type > 256 ||
      c.time > 100000 || c.chars > 10000 || c.leap > 10000 || c.isut > 256 || c.isstd > 256) {
    return Status::corruption("TZif header has implausible counts");
  }
  return c;
}

size_t block_bytes(const Counts& c, size_t time_bytes) {
  return static_cast<size_t>(c.time) * (time_bytes + 1) + static_cast<size_t>(c.type) * 6 +
         static_cast<size_t>(c.chars) + static_cast<size_t>(c.leap) * (time_bytes + 4) +
         static_cast<size_t>(c.isstd + c.isut);
}

}  // namespace

Result<ZoneOffset> zone_offset_at(std::string_view zone, std::chrono::system_clock::time_point time,
                                  const std::filesystem::path& zoneinfo_dir) {
  std::string name = "\"";  // built with += : GCC 12 warns falsely on "literal" + std::string temporaries
  name += zone;
  name += '"';
  if (!is_valid_zone_name(zone))
    return Status::invalid_argument(std::string("malformed time zone name ") + name);
  std::ifstream in(zoneinfo_dir / std::string(zone), std::ios::binary);
  if (!in) return Status::not_found(std::string("unknown time zone ") + name);
  std::string data;
  data.resize(kMaxZoneFileBytes + 1);
  in.read(data.data(), static_cast<std::streamsize>(data.size()));
  data.resize(static_cast<size_t>(in.gcount()));
  if (data.size() > kMaxZoneFileBytes) return Status::corruption("zone file too large");
  if (data.size() < 44 || data.compare(0, 4, "TZif") != 0)
    return Status::not_found(name + " is not a time zone");

  Reader r(data);
  const char version = data[4];
  AS_ASSIGN_OR_RETURN(Counts counts, read_header(r));
  size_t time_bytes = 4;
  if (version >= '2') {
    // Version 2+ repeats the data with 64-bit times after the version 1 block; use that one.
    if (!r.has(block_bytes(counts, 4))) return Status::corruption("TZif data truncated");
    r.skip(block_bytes(counts, 4));
    AS_ASSIGN_OR_RETURN(counts, read_header(r));
    time_bytes = 8;
  }
  if (!r.has(block_bytes(counts, time_bytes))) return Status::corruption("TZif data truncated");

  const int64_t t = std::chrono::floor<std::chrono::seconds>(time.time_since_epoch()).count();
  std::vector<int64_t> transitions(static_cast<size_t>(counts.time));
  for (auto& when : transitions) when = r.be(time_bytes);
  std::vector<unsigned char> indices(static_cast<size_t>(counts.time));
  for (auto& index : indices) index = r.byte();
  struct TypeInfo {
    int64_t utoff;
    bool isdst;
    unsigned char desig;
  };
  std::vector<TypeInfo> types(static_cast<size_t>(counts.type));
  for (auto& type : types) {
    type.utoff = r.be(4);
    type.isdst = r.byte() != 0;
    type.desig = r.byte();
    if (type.desig >= counts.chars || type.utoff <= -25 * 3600 || type.utoff >= 26 * 3600) {
      return Status::corruption("TZif local time type out of range");
    }
  }
  const std::string chars = data.substr(r.pos(), static_cast<size_t>(counts.chars));
  r.skip(block_bytes(counts, time_bytes) - static_cast<size_t>(counts.time) * (time_bytes + 1) -
         static_cast<size_t>(counts.type) * 6);

  // RFC 8536: type 0 applies before the first transition; after that, the type of the latest one.
  size_t type_index = 0;
  for (size_t i = 0; i < transitions.size() && transitions[i] <= t; ++i) type_index = indices[i];
  if (type_index >= types.size()) return Status::corruption("TZif transition names a missing type");
  if (version >= '2' && (transitions.empty() || t > transitions.back())) {
    const std::string footer = data.substr(std::min(r.pos(), data.size()));
    if (footer.find(',') != std::string::npos) {
      return Status::failed_precondition(std::string("the zone data for ") + name +
                                         " does not list transitions up to this date");
    }
  }
  const TypeInfo& type = types[type_index];
  const size_t end = chars.find('\0', type.desig);
  return ZoneOffset{
      std::chrono::seconds(type.utoff), type.isdst,
      chars.substr(type.desig, end == std::string::npos ? std::string::npos : end - type.desig)};
}

}  // namespace agentserve::tools
