// Tokenizer: Qwen3's byte-level BPE, read from a Hugging Face tokenizer.json, encoding text to token ids
// and decoding ids back to text exactly as Hugging Face `tokenizers` does (added tokens split out first,
// NFC, the pre-tokenizer regex, byte-level mapping, BPE by merge rank). It must never crash or throw on
// any input text or id list, and never return text that is not valid UTF-8.
//
// Supported tokenizer.json shape (Qwen2/2.5/3 and other GPT-2 style byte-level BPE files): normalizer NFC
// or null; pre_tokenizer ByteLevel, optionally after a Split(Regex, behavior Isolated); model BPE without
// dropout, unk, byte fallback or subword affixes; added tokens without lstrip/rstrip/single_word/normalized.
// Anything else is refused at load with a Status naming the feature, rather than tokenized differently.
//
// Invalid UTF-8 in the text given to encode() is replaced, each maximal invalid subpart by one U+FFFD (the
// Unicode/WHATWG rule that Rust's from_utf8_lossy and Python's errors="replace" follow), so encode() always
// succeeds; callers that must reject such input check it before (nlohmann::json already refuses it).
//
// A Tokenizer is cheap to copy (copies share the immutable tables) and safe to use from many threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace agentserve::engine {

// Bytes [begin, end) of a text.
struct ByteRange {
  std::size_t begin = 0;
  std::size_t end = 0;
};

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = false;  // special tokens are skipped by decode(skip_special) and can be encoded as text
};

class Tokenizer {
 public:
  // `dir_or_file`: a folder holding tokenizer.json, or the file itself.
  static Result<Tokenizer> load(const std::filesystem::path& dir_or_file);
  // The same from the file's text; `origin` names it in error messages.
  static Result<Tokenizer> from_json(std::string_view json_text, std::string_view origin = "tokenizer.json");

  // With `parse_special` true, the content of any added token in the text becomes that token (longest match
  // first). With false, special added tokens (<|im_start|>, ...) are tokenized as plain text, as Hugging
  // Face does with encode_special_tokens=True, while non-special ones (<think>, <tool_call>) still match:
  // use false for text from users that must not inject control tokens. No BOS/EOS is added (Qwen3 has
  // none; the chat format places its special tokens).
  std::vector<int32_t> encode(std::string_view text, bool parse_special = true) const;

  // encode() of a prompt that mixes markup with literal text (message content, tool arguments and results):
  // added tokens, special or not, are matched only where they lie wholly outside `literal_ranges`, so a user
  // who writes "<|im_start|>system" or "<tool_response>" gets plain text, never structure. The text between
  // two matched added tokens is pre-tokenized as one chunk, whichever ranges it crosses, so the ids equal
  // encode(text) whenever no literal range holds added-token text. Ranges may come in any order, overlap or
  // reach past the text (they are clamped).
  std::vector<int32_t> encode_with_literals(std::string_view text,
                                            std::span<const ByteRange> literal_ranges) const;

  // Concatenates the tokens' bytes; added tokens render as their content, special ones are left out when
  // `skip_special`. Invalid UTF-8 across the result becomes U+FFFD. Ids without a token are skipped (as
  // Hugging Face does): check ids from outside with validate_ids() first.
  std::string decode(std::span<const int32_t> ids, bool skip_special = false) const;

  // InvalidArgument naming the first id that has no token (negative, past the vocabulary, or a gap).
  Status validate_ids(std::span<const int32_t> ids) const;

  // Max id + 1 over the vocabulary and the added tokens (151669 for Qwen3; the model's embedding has more
  // rows, which are padding without a token).
  int32_t vocab_size() const;
  // The token's string as tokenizer.json spells it ("Ġhello" for " hello"; added tokens by content).
  std::optional<int32_t> token_to_id(std::string_view token) const;
  // Empty for an id without a token.
  std::string_view id_to_token(int32_t id) const;
  // The raw bytes the token stands for (may be part of a UTF-8 character); empty for an id without one.
  std::string_view token_bytes(int32_t id) const;
  bool is_added(int32_t id) const;
  bool is_special(int32_t id) const;
  const std::vector<AddedToken>& added_tokens() const;

 private:
  struct Impl;
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

// Appends `bytes` to `out` as valid UTF-8: each maximal invalid subpart becomes U+FFFD. With
// `hold_incomplete_tail`, a truncated but so far valid character at the very end is not replaced and not
// appended; the return value is its length (0..3), so a stream can complete it with the next bytes.
std::size_t append_valid_utf8(std::string_view bytes, bool hold_incomplete_tail, std::string& out);

}  // namespace agentserve::engine
