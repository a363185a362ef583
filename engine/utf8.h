// UTF-8 scanning for the tokenizer (internal to engine/): the Unicode "maximal subpart" decoder step that
// both validation and repair (append_valid_utf8, declared in tokenizer.h) are built on, so that encode(),
// decode() and streaming agree on where an invalid sequence ends. It must never read past the bytes it is
// given; next_code_point() is only for text already known to be valid.
#pragma once

#include <cstddef>
#include <string_view>

namespace agentserve::engine {

enum class Utf8Kind { kValid, kInvalid, kTruncated };
struct Utf8Step {
  Utf8Kind kind;
  std::size_t length;  // valid: the character; invalid: the maximal subpart; truncated: the bytes present
};

// One step of the Unicode "maximal subpart" decoder (Unicode 15, section 3.9, table 3-7) over s[0, n),
// n >= 1. Inline because the validation, repair and NFC loops call it per character.
inline Utf8Step utf8_step(const unsigned char* s, std::size_t n) {
  const unsigned char b = s[0];
  if (b < 0x80) return {Utf8Kind::kValid, 1};
  std::size_t need = 0;
  unsigned char lo = 0x80, hi = 0xBF;
  if (b >= 0xC2 && b <= 0xDF) {
    need = 1;
  } else if (b >= 0xE0 && b <= 0xEF) {
    need = 2;
    if (b == 0xE0) lo = 0xA0;
    if (b == 0xED) hi = 0x9F;  // no encoded surrogates
  } else if (b >= 0xF0 && b <= 0xF4) {
    need = 3;
    if (b == 0xF0) lo = 0x90;  // no overlong forms
    if (b == 0xF4) hi = 0x8F;  // nothing past U+10FFFF
  } else {
    return {Utf8Kind::kInvalid, 1};
  }
  for (std::size_t k = 1; k <= need; ++k) {
    if (k >= n) return {Utf8Kind::kTruncated, k};
    if (s[k] < lo || s[k] > hi) return {Utf8Kind::kInvalid, k};
    lo = 0x80;
    hi = 0xBF;
  }
  return {Utf8Kind::kValid, need + 1};
}

bool is_valid_utf8(std::string_view text);

// Code point of the UTF-8 character at s[i], advancing i; only for text known to be valid.
inline char32_t next_code_point(std::string_view s, std::size_t& i) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data()) + i;
  const std::size_t len = utf8_step(p, s.size() - i).length;
  char32_t cp = len == 1 ? p[0] : p[0] & (0x7F >> len);
  for (std::size_t k = 1; k < len; ++k) cp = (cp << 6) | (p[k] & 0x3F);
  i += len;
  return cp;
}

}  // namespace agentserve::engine
