// StreamingDetokenizer: turns generated token ids into text one token at a time, for streaming to a
// client. A token may end inside a UTF-8 character (byte-level BPE splits emoji and CJK across tokens), so
// push() holds those bytes back until the character completes; what push() and finish() return, joined,
// equals Tokenizer::decode over all the ids. It must never emit a broken UTF-8 sequence.
#pragma once

#include <cstdint>
#include <string>

#include "engine/tokenizer.h"

namespace agentserve::engine {

class StreamingDetokenizer {
 public:
  // Keeps a copy of the tokenizer (copies share its tables). `skip_special` as in Tokenizer::decode.
  explicit StreamingDetokenizer(Tokenizer tokenizer, bool skip_special = false);

  // The text completed by this token (often empty or a few bytes, which fit std::string's inline buffer).
  // Bytes that can no longer become a valid character come out as U+FFFD; an id without a token adds
  // nothing, as in decode().
  std::string push(int32_t id);

  // The rest: a held-back incomplete character becomes U+FFFD. Leaves the detokenizer ready for a new
  // stream.
  std::string finish();

  // True while bytes of an unfinished character are held back.
  bool has_pending() const { return !pending_.empty(); }

 private:
  Tokenizer tokenizer_;
  bool skip_special_;
  std::string pending_;  // at most 3 bytes: the start of a character that may still complete
};

}  // namespace agentserve::engine
