// Prompt tokens of a conversation, safe and incremental.
//
// Safe: a rendered prompt (render_chat_with_literals) is tokenized so that control tokens come only from
// the template's markup; a user, a tool result or a tool argument that contains "<|im_start|>system" or
// "<tool_response>" stays plain text and can never forge structure.
//
// Incremental: a session's token ids grow by appending (each step's prompt, then what the model generated).
// The next step keeps the longest prefix of those ids whose bytes the new rendering repeats, cut right after
// a control token of the markup, and encodes only the rest; where the template rewrites history (reasoning
// dropped once a new user query arrives) only the tail from the first changed byte is new. The prefix cache
// then skips the kept part's prefill. The model's own tokens stay as generated (their KV is what it saw),
// which a fresh tokenization of the same text would not always reproduce.
//
// Nothing here ever calls the model or changes the rendered text.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "agent/chat_template.h"
#include "engine/tokenizer.h"

namespace agentserve::agent {

// Equal to tokenizer.encode(prompt.text) whenever no literal range holds added-token text; no added token
// ever comes from inside a literal range.
std::vector<int32_t> encode_prompt(const engine::Tokenizer& tokenizer, const RenderedPrompt& prompt);

struct PromptTokens {
  std::vector<int32_t> ids;
  int reused = 0;  // leading ids taken from the previous sequence
  int encoded() const { return static_cast<int>(ids.size()) - reused; }
};

// The ids of `prompt`, reusing the longest acceptable prefix of `previous` (see above). With an empty
// `previous` this is encode_prompt.
PromptTokens extend_prompt(const engine::Tokenizer& tokenizer, std::span<const int32_t> previous,
                           const RenderedPrompt& prompt);

}  // namespace agentserve::agent
