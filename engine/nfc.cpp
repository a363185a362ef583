#include "engine/nfc.h"

#include <utf8proc.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "engine/utf8.h"

namespace agentserve::engine {
namespace {

// A character of combining class 0 that is neither a mark nor a conjoining Hangul jamo, and that NFC maps
// to itself, cannot compose with a neighbour (every second character of a canonical composition is a mark
// or a jamo) and comes back unchanged; text made only of such "inert" characters is already NFC.
class NfcInertTable {
 public:
  static constexpr char32_t kLimit = 0x30000;  // planes 0-2; characters above take the full path

  NfcInertTable() : bits_(kLimit / 64, 0) {
    for (char32_t cp = 0; cp < kLimit; ++cp) {
      const utf8proc_property_t* p = utf8proc_get_property(static_cast<utf8proc_int32_t>(cp));
      // A precomposed letter (é, й) decomposes and composes back to itself; singletons and exclusions do not.
      const bool canonical_decomposition = p->decomp_type == 0 && p->decomp_seqindex != UINT16_MAX;
      const bool changes = canonical_decomposition && (p->comp_exclusion || !maps_to_itself(cp));
      const bool mark = p->category == UTF8PROC_CATEGORY_MN || p->category == UTF8PROC_CATEGORY_MC ||
                        p->category == UTF8PROC_CATEGORY_ME;
      const bool jamo =
          (cp >= 0x1100 && cp <= 0x11FF) || (cp >= 0xA960 && cp <= 0xA97F) || (cp >= 0xD7B0 && cp <= 0xD7FF);
      const bool surrogate = cp >= 0xD800 && cp <= 0xDFFF;
      if (p->combining_class == 0 && !changes && !mark && !jamo && !surrogate) {
        bits_[cp / 64] |= uint64_t{1} << (cp % 64);
      }
    }
  }
  bool inert(char32_t cp) const { return cp < kLimit && (bits_[cp / 64] >> (cp % 64) & 1); }

 private:
  static bool maps_to_itself(char32_t cp) {
    utf8proc_uint8_t in[4];
    const auto n = utf8proc_encode_char(static_cast<utf8proc_int32_t>(cp), in);
    utf8proc_uint8_t* out = nullptr;
    const auto m =
        utf8proc_map(in, n, &out, static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
    const bool same = m == n && std::equal(in, in + n, out);
    std::free(out);
    return same;
  }

  std::vector<uint64_t> bits_;
};

const NfcInertTable& nfc_inert_table() {
  static const NfcInertTable table;
  return table;
}

}  // namespace

void warm_nfc_tables() {
  nfc_inert_table();
}

bool may_change_under_nfc(std::string_view text) {
  const NfcInertTable& table = nfc_inert_table();
  std::size_t i = 0;
  while (i < text.size()) {
    if (static_cast<unsigned char>(text[i]) < 0xCC) {  // below U+0300: all inert, the common case
      i += static_cast<unsigned char>(text[i]) < 0x80 ? 1 : 2;
      continue;
    }
    if (!table.inert(next_code_point(text, i))) return true;
  }
  return false;
}

bool to_nfc(std::string_view text, std::string& out) {
  utf8proc_uint8_t* mapped = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                                          static_cast<utf8proc_ssize_t>(text.size()), &mapped,
                                          static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  if (n < 0) return false;
  out.assign(reinterpret_cast<const char*>(mapped), static_cast<std::size_t>(n));
  std::free(mapped);
  return true;
}

}  // namespace agentserve::engine
