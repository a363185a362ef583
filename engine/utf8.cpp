#include "engine/utf8.h"

#include <cstdint>
#include <cstring>
#include <string>

#include "engine/tokenizer.h"  // append_valid_utf8 is part of the tokenizer's public API

namespace agentserve::engine {

bool is_valid_utf8(std::string_view text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  std::size_t i = 0;
  while (i < text.size()) {
    uint64_t word;  // eight ASCII bytes at a time
    if (i + 8 <= text.size() && (std::memcpy(&word, s + i, 8), (word & 0x8080808080808080ull) == 0)) {
      i += 8;
      continue;
    }
    if (s[i] < 0x80) {
      ++i;
      continue;
    }
    const Utf8Step step = utf8_step(s + i, text.size() - i);
    if (step.kind != Utf8Kind::kValid) return false;
    i += step.length;
  }
  return true;
}

std::size_t append_valid_utf8(std::string_view bytes, bool hold_incomplete_tail, std::string& out) {
  static constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD
  const auto* s = reinterpret_cast<const unsigned char*>(bytes.data());
  std::size_t i = 0;
  while (i < bytes.size()) {
    const std::size_t run_start = i;  // copy runs of valid characters in one append
    Utf8Step step{Utf8Kind::kValid, 0};
    while (i < bytes.size()) {
      step = utf8_step(s + i, bytes.size() - i);
      if (step.kind != Utf8Kind::kValid) break;
      i += step.length;
    }
    out.append(bytes.substr(run_start, i - run_start));
    if (i == bytes.size()) break;
    if (step.kind == Utf8Kind::kTruncated && hold_incomplete_tail) return step.length;
    out.append(kReplacement);
    i += step.length;
  }
  return 0;
}

}  // namespace agentserve::engine
