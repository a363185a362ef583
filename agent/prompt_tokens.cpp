#include "agent/prompt_tokens.h"

#include <array>
#include <string_view>

namespace agentserve::agent {

std::vector<int32_t> encode_prompt(const engine::Tokenizer& tokenizer, const RenderedPrompt& prompt) {
  return tokenizer.encode_with_literals(prompt.text, prompt.literals);
}

PromptTokens extend_prompt(const engine::Tokenizer& tokenizer, std::span<const int32_t> previous,
                           const RenderedPrompt& prompt) {
  const std::string_view text = prompt.text;
  const auto& literals = prompt.literals;
  const auto in_literal = [&](std::size_t begin, std::size_t end) {
    for (const engine::ByteRange& r : literals)  // few ranges per prompt; ordered, so stop early
      if (r.begin >= end)
        return false;
      else if (r.end > begin)
        return true;
    return false;
  };
  std::array<bool, 256> starts_added{};
  for (const engine::AddedToken& token : tokenizer.added_tokens())
    if (!token.content.empty()) starts_added[static_cast<unsigned char>(token.content[0])] = true;
  // Whether markup places an added token at text[at] (the safe encoder starts a fresh chunk there).
  const auto markup_token_at = [&](std::size_t at) {
    if (at >= text.size() || !starts_added[static_cast<unsigned char>(text[at])]) return false;
    for (const engine::AddedToken& token : tokenizer.added_tokens())
      if (text.compare(at, token.content.size(), token.content) == 0 &&
          !in_literal(at, at + token.content.size()))
        return true;
    return false;
  };
  // Walk the previous ids while their bytes repeat the new text. A cut is only taken where the safe encoder
  // also splits: right after an added token of the markup, or right before one. The kept ids and the encoded
  // rest then join exactly where a whole encoding would split too.
  std::size_t offset = 0;
  std::size_t keep = 0;
  std::size_t keep_bytes = 0;
  for (std::size_t k = 0; k < previous.size(); ++k) {
    const std::string_view bytes = tokenizer.token_bytes(previous[k]);
    if (bytes.empty() || text.compare(offset, bytes.size(), bytes) != 0) break;
    const std::size_t begin = offset;
    offset += bytes.size();
    const bool after_markup_token = tokenizer.is_added(previous[k]) && !in_literal(begin, offset);
    if (after_markup_token || markup_token_at(offset)) {
      keep = k + 1;
      keep_bytes = offset;
    }
  }
  PromptTokens result;
  result.ids.assign(previous.begin(), previous.begin() + static_cast<std::ptrdiff_t>(keep));
  result.reused = static_cast<int>(keep);
  std::vector<engine::ByteRange> rest_literals;
  for (const engine::ByteRange& r : literals) {
    if (r.end <= keep_bytes) continue;
    rest_literals.push_back({(r.begin > keep_bytes ? r.begin : keep_bytes) - keep_bytes, r.end - keep_bytes});
  }
  const std::vector<int32_t> rest = tokenizer.encode_with_literals(text.substr(keep_bytes), rest_literals);
  result.ids.insert(result.ids.end(), rest.begin(), rest.end());
  return result;
}

}  // namespace agentserve::agent
