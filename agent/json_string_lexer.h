// The byte-level lexer of a JSON string, one byte per step: the opening quote, the body (escapes, \uXXXX
// without lone surrogates, well-formed UTF-8 only), the closing quote. The grammar matcher runs it for a
// string node (token_mask.cpp), and the vocabulary index runs it over every token once to precompute what
// each token does inside a string body (vocabulary_index.cpp); both must agree byte for byte, hence one copy.
// It knows nothing of schemas or tokens, and must never accept a byte a strict JSON parser would refuse.
#pragma once

#include <cstdint>
#include <cstring>

namespace agentserve::agent {

// Lexer states. Every state from kStrBody on is inside the body; kStrOpen waits for the opening quote.
enum StrState : int32_t {
  kStrOpen, kStrBody, kStrEscape, kStrHex4, kStrHex3, kStrHex2, kStrHex1, kStrCont1, kStrCont2, kStrCont3,
  kStrE0, kStrED, kStrF0, kStrF4, kStrHexLowSurrogateFree,
};

constexpr int32_t kFirstBodyState = kStrBody;
constexpr int32_t kLastBodyState = kStrHexLowSurrogateFree;

inline bool is_hex(uint8_t c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

// A character of a string starts at a byte in the body that is not the closing quote or a continuation.
inline bool starts_char(int32_t lexer_state, uint8_t c) {
  return lexer_state == kStrBody && c != '"' && (c < 0x80 || c >= 0xC0);
}

// Moves `state` on by `c`; false (and `state` unchanged) when `c` is refused; state = -1 when the closing
// quote came.
inline bool string_step(int32_t& state, uint8_t c) {
  switch (state) {
    case kStrOpen:
      if (c != '"') return false;
      state = kStrBody;
      return true;
    case kStrBody:
      if (c == '"') state = -1;
      else if (c == '\\') state = kStrEscape;
      else if (c < 0x20) return false;
      else if (c < 0x80) state = kStrBody;
      else if (c >= 0xC2 && c <= 0xDF) state = kStrCont1;
      else if (c == 0xE0) state = kStrE0;
      else if (c == 0xED) state = kStrED;
      else if (c >= 0xE1 && c <= 0xEF) state = kStrCont2;
      else if (c == 0xF0) state = kStrF0;
      else if (c >= 0xF1 && c <= 0xF3) state = kStrCont3;
      else if (c == 0xF4) state = kStrF4;
      else return false;
      return true;
    case kStrEscape:
      if (c == 'u') state = kStrHex4;
      else if (std::strchr("\"\\/bfnrt", c) != nullptr && c != 0) state = kStrBody;
      else return false;
      return true;
    case kStrHex4:
      // \uD800-\uDFFF alone is a lone surrogate, which JSON parsers refuse: keep the first hex digit from
      // starting one.
      if (c == 'd' || c == 'D') state = kStrHexLowSurrogateFree;
      else if (is_hex(c)) state = kStrHex3;
      else return false;
      return true;
    case kStrHexLowSurrogateFree:
      if (c < '0' || c > '7') return false;
      state = kStrHex2;
      return true;
    case kStrHex3:
    case kStrHex2:
    case kStrHex1:
      if (!is_hex(c)) return false;
      state = state == kStrHex1 ? kStrBody : state + 1;
      return true;
    case kStrCont1:
    case kStrCont2:
    case kStrCont3:
      if (c < 0x80 || c > 0xBF) return false;
      state = state == kStrCont1 ? kStrBody : state - 1;
      return true;
    case kStrE0:
    case kStrED:
      if (state == kStrE0 ? (c < 0xA0 || c > 0xBF) : (c < 0x80 || c > 0x9F)) return false;
      state = kStrCont1;
      return true;
    case kStrF0:
    case kStrF4:
      if (state == kStrF0 ? (c < 0x90 || c > 0xBF) : (c < 0x80 || c > 0x8F)) return false;
      state = kStrCont2;
      return true;
    default:
      return false;
  }
}

}  // namespace agentserve::agent
