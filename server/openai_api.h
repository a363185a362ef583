// The OpenAI-compatible chat completions API (POST /v1/chat/completions) minus the transport: a request
// body -> the engine request it asks for (Qwen3 prompt with the tools, sampling), and the engine's text ->
// the answer, either one chat.completion object or chat.completion.chunk objects for SSE. Reasoning becomes
// `reasoning_content`, <tool_call> blocks become `tool_calls` (agent::ToolCallParser), and every rejection is
// OpenAI's {"error": {message, type, param, code}} with its HTTP status.
//
// It must never tokenize client text with special-token parsing: a message, tool schema or argument that
// contains "<|im_start|>" is text, never a turn boundary. It never touches sockets or the engine; the
// transport (http_server.cpp) submits and streams.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/tool_call_parser.h"
#include "engine/request.h"
#include "engine/sampling_params.h"
#include "engine/tokenizer.h"
#include "server/server_options.h"
#include "tools/tool_registry.h"

namespace agentserve::server {

// An error as OpenAI sends it, with the HTTP status that carries it.
struct OpenAiError {
  int http_status = 400;
  std::string type = "invalid_request_error";  // or "server_error", "authentication_error", ...
  std::string code;
  std::string message;
  std::string param;  // the offending field, empty when none applies
};

// {"error": {"message", "type", "param", "code"}} (param null when empty).
nlohmann::json openai_error_body(const OpenAiError& error);
// A Status from the engine (submit) as the error a client sees: InvalidArgument/OutOfRange -> 400,
// ResourceExhausted -> 503, others 500.
OpenAiError openai_error_from_status(const Status& status, std::string code);

// What the request asks the engine for, and how to answer.
struct ChatCompletionRequest {
  std::vector<int32_t> prompt;
  engine::SamplingParams sampling;
  bool stream = false;
  bool include_usage = false;   // stream_options.include_usage: a last chunk with usage
  bool enable_thinking = true;  // chat_template_kwargs.enable_thinking (vLLM's extension)
  // tool_choice required (every tool) or named (that one): decoding is constrained to one call of these
  // (HttpConnection compiles them through the server's constraint cache). Empty otherwise.
  std::vector<tools::ToolSpec> forced_tools;
  std::shared_ptr<engine::TokenConstraint> constraint;  // theirs, set by HttpConnection before admission
  // What moderation checks before generation starts (when configured): the user messages and the tool
  // outputs after the last assistant message, i.e. what is new in this request; each joined by "\n".
  std::string new_user_text;
  std::string new_tool_text;
};

struct ChatApiContext {
  const ServerOptions* options = nullptr;
  const engine::Tokenizer* tokenizer = nullptr;
  int vocab_size = 0;
  std::string model_name;  // the one model served; a request naming another gets 404 model_not_found
};

// Parses and validates a request body, renders its messages and tools with Qwen3's chat template and
// tokenizes the prompt. Accepted: model, messages, tools, tool_choice (none | auto | required | named),
// temperature, top_p,
// max_tokens, max_completion_tokens, seed, stop, n (1), stream, stream_options, presence_penalty,
// frequency_penalty, user, parallel_tool_calls, and vLLM's top_k, min_p, repetition_penalty and
// chat_template_kwargs.enable_thinking. Anything else is a 400 naming the parameter.
std::variant<ChatCompletionRequest, OpenAiError> parse_chat_completion(std::string_view body,
                                                                       const ChatApiContext& context);

// Turns the engine's released text of one completion into OpenAI objects. Streaming: feed() and finish()
// return the chat.completion.chunk objects to send, in order. Not streaming: call them the same way and
// ignore the chunks, then completion() is the chat.completion object.
class ChatCompletionBuilder {
 public:
  ChatCompletionBuilder(std::string id, std::string model, int64_t created);

  // The first chunk: delta {"role": "assistant", "content": ""}.
  nlohmann::json start_chunk() const;
  std::vector<nlohmann::json> feed(std::string_view text);
  // The completion ended. A malformed tool call or an engine error leaves error() set (and returns no
  // finish chunk: the transport sends the error instead).
  std::vector<nlohmann::json> finish(engine::FinishReason reason, const engine::Usage& usage,
                                     bool include_usage, const Status& engine_error = {});
  nlohmann::json completion() const;
  const std::optional<OpenAiError>& error() const { return error_; }

  // Moderation blocked the rest of the output: the closing chunks (finish_reason "content_filter", then the
  // usage chunk when asked). completion() then has finish_reason "content_filter", empty content and no
  // reasoning or tool calls: a non-streaming client gets none of the text, not even the passed part.
  std::vector<nlohmann::json> finish_filtered(const engine::Usage& usage, bool include_usage);

 private:
  nlohmann::json chunk(nlohmann::json delta, const nlohmann::json& finish_reason) const;
  nlohmann::json usage_json() const;
  // The chunk carrying finish_reason_, then the usage chunk when asked for.
  std::vector<nlohmann::json> closing_chunks(bool include_usage) const;
  void apply(std::vector<agent::TurnEvent>& events, std::vector<nlohmann::json>& chunks);

  std::string id_, model_;
  int64_t created_;
  agent::ToolCallParser parser_;
  std::string content_, reasoning_;
  nlohmann::json tool_calls_ = nlohmann::json::array();
  std::string finish_reason_;
  engine::Usage usage_;
  std::optional<OpenAiError> error_;
};

// The error a client gets when moderation blocked its output (code "moderation_blocked"): OpenAI's error
// object plus "categories" (what the webhook flagged; empty for a failure) and "reason" ("flagged" or the
// failure: timeout, connection, http_status, bad_response). Streaming sends it as the last data event
// before [DONE]. `input`: the request's own messages were blocked (a 400 before any generation).
nlohmann::json moderation_error_body(const std::vector<std::string>& categories, std::string_view reason,
                                     bool input);

// "data: <json>\n\n" and the closing "data: [DONE]\n\n".
std::string sse_event(const nlohmann::json& data);
inline constexpr std::string_view kSseDone = "data: [DONE]\n\n";

}  // namespace agentserve::server
