#include "engine/streaming_detokenizer.h"

#include <utility>

namespace agentserve::engine {

StreamingDetokenizer::StreamingDetokenizer(Tokenizer tokenizer, bool skip_special)
    : tokenizer_(std::move(tokenizer)), skip_special_(skip_special) {}

std::string StreamingDetokenizer::push(int32_t id) {
  if (skip_special_ && tokenizer_.is_special(id)) return {};
  const std::string_view bytes = tokenizer_.token_bytes(id);
  std::string text;
  if (bytes.empty()) return text;
  if (pending_.empty()) {
    const std::size_t held = append_valid_utf8(bytes, /*hold_incomplete_tail=*/true, text);
    pending_.assign(bytes.substr(bytes.size() - held));
    return text;
  }
  // Only here, once per split character, do the held bytes and the new token need joining.
  std::string joined = std::move(pending_);
  joined.append(bytes);
  const std::size_t held = append_valid_utf8(joined, /*hold_incomplete_tail=*/true, text);
  pending_.assign(std::string_view(joined).substr(joined.size() - held));
  return text;
}

std::string StreamingDetokenizer::finish() {
  std::string text;
  append_valid_utf8(pending_, /*hold_incomplete_tail=*/false, text);
  pending_.clear();
  return text;
}

}  // namespace agentserve::engine
