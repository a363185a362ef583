// The pre-tokenizer regex (internal to engine/): a Hugging Face Split/ByteLevel pattern compiled with PCRE2
// (JIT when available) so that it splits text into the same pieces as Oniguruma does in `tokenizers`.
// Compiling must never abort on a bad pattern from tokenizer.json: it returns a Status instead.
#pragma once

#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>

#include <memory>
#include <string_view>

#include "base/status.h"

namespace agentserve::engine {

struct Pcre2CodeDeleter {
  void operator()(pcre2_code* code) const { pcre2_code_free(code); }
};
struct Pcre2MatchDataDeleter {
  void operator()(pcre2_match_data* data) const { pcre2_match_data_free(data); }
};
using Pcre2Code = std::unique_ptr<pcre2_code, Pcre2CodeDeleter>;

// GPT-2's pattern, which a ByteLevel pre-tokenizer with use_regex applies.
inline constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Compiles a pattern as tokenizer.json spells it, UTF + UCP; InvalidArgument naming the offset if it fails.
Result<Pcre2Code> compile_regex(std::string_view hf_pattern);

}  // namespace agentserve::engine
