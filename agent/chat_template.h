// Qwen3's chat template (the `chat_template` Jinja string of Qwen3's tokenizer_config.json) implemented
// natively: messages + tool schemas -> the exact prompt text the model was trained on, byte for byte what
// transformers' apply_chat_template renders (tests/agent/chat_template_test.cpp checks it against golden
// output of the Jinja template itself). It must never reorder JSON keys, escape non-ASCII, or reformat
// tool arguments given as strings: any byte of difference changes the tokens and invalidates prefix caches.
//
// Where the Jinja template would render nonsense or throw, this implementation returns an error instead
// (unknown roles, non-string content, an empty conversation). One deliberate leniency: an assistant
// message with null or absent content (the OpenAI form for pure tool-call turns) renders as empty content.
#pragma once

#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "agent/messages.h"
#include "base/status.h"
#include "engine/tokenizer.h"

namespace agentserve::agent {

// SHA-256 of the Jinja source this file implements: the "chat_template" of Qwen3's tokenizer_config.json.
inline constexpr std::string_view kQwen3ChatTemplateSha256 =
    "87a2728cb8dc9fe424d624542f6060ec05a1d285ebbec578bb078900e33396b5";

struct ChatTemplateOptions {
  // Append "<|im_start|>assistant\n" so the model continues with the assistant's turn.
  bool add_generation_prompt = true;
  // false appends an empty "<think>\n\n</think>\n\n" after the generation prompt (Qwen3's non-thinking
  // mode); true is the template's default (enable_thinking undefined).
  bool enable_thinking = true;
};

// Renders `messages` (at least one) with `tools`: a JSON array of tool schemas rendered as given (each one
// `tojson`), or null / an empty array for no tools.
Result<std::string> render_chat(std::span<const Message> messages, const Json& tools,
                                const ChatTemplateOptions& options);

// A rendered prompt and the byte ranges of `text` that came from the conversation (message content,
// reasoning, tool names, arguments and schemas) rather than from the template's markup: tokenize it with
// Tokenizer::encode_with_literals so tags inside those ranges stay text.
struct RenderedPrompt {
  std::string text;
  std::vector<engine::ByteRange> literals;  // in order, not overlapping
};

// render_chat with the literal ranges recorded; `text` is byte for byte what render_chat returns.
Result<RenderedPrompt> render_chat_with_literals(std::span<const Message> messages, const Json& tools,
                                                 const ChatTemplateOptions& options);

// OpenAI-style JSON -> Messages: [{"role", "content", "reasoning_content"?, "tool_calls"?: [{"type":
// "function", "function": {"name", "arguments"}}]}]. A tool call without the "function" wrapper ({"name",
// "arguments"}) is accepted too, as the template does. Errors name the offending message index.
Result<std::vector<Message>> parse_messages(const Json& messages);

// Ok when `model_dir`/tokenizer_config.json carries exactly the template implemented here;
// failed_precondition when it carries another one (the prompt would not be what that model expects),
// not_found / corruption when the file is missing or unreadable.
Status check_model_chat_template(const std::filesystem::path& model_dir);

// Python's json.dumps(value) with its defaults except ensure_ascii=False, which is transformers' `tojson`
// filter: ", " and ": " separators, keys in their stored order, non-ASCII kept as UTF-8, control
// characters as \uXXXX (lowercase hex), floats as Python's repr (1.0, 1e-05, 1e+16).
std::string python_json_dumps(const Json& value);

}  // namespace agentserve::agent
