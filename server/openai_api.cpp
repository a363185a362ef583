#include "server/openai_api.h"

#include <array>

#include "agent/chat_template.h"
#include "agent/prompt_tokens.h"
#include "server/protocol.h"

namespace agentserve::server {

using agent::Json;  // insertion-ordered: tool schemas and arguments render in the client's key order
using nlohmann::json;

namespace {

OpenAiError bad_request(std::string code, std::string message, std::string param) {
  return {400, "invalid_request_error", std::move(code), std::move(message), std::move(param)};
}

// Parameters taken as given or checked below; the rest of OpenAI's (logprobs, logit_bias,
// response_format, ...) are refused by name rather than silently ignored.
constexpr std::array<std::string_view, 20> kKnownParams = {"model",
                                                           "messages",
                                                           "tools",
                                                           "tool_choice",
                                                           "temperature",
                                                           "top_p",
                                                           "max_tokens",
                                                           "max_completion_tokens",
                                                           "seed",
                                                           "stop",
                                                           "n",
                                                           "stream",
                                                           "stream_options",
                                                           "presence_penalty",
                                                           "frequency_penalty",
                                                           "user",
                                                           "parallel_tool_calls",
                                                           "top_k",
                                                           "min_p",
                                                           "repetition_penalty"};

std::optional<OpenAiError> check_params(const Json& body) {
  for (const auto& [key, value] : body.items()) {
    if (key == "chat_template_kwargs") continue;
    bool known = false;
    for (std::string_view k : kKnownParams) known = known || k == key;
    if (!known) return bad_request("unsupported_parameter", "'" + key + "' is not supported", key);
  }
  return std::nullopt;
}

std::optional<OpenAiError> read_flags(const Json& body, ChatCompletionRequest& out) {
  if (auto it = body.find("stream"); it != body.end() && !it->is_null()) {
    if (!it->is_boolean()) return bad_request("invalid_type", "'stream' must be a boolean", "stream");
    out.stream = it->get<bool>();
  }
  if (auto it = body.find("stream_options"); it != body.end() && !it->is_null()) {
    if (!it->is_object())
      return bad_request("invalid_type", "'stream_options' must be an object", "stream_options");
    if (auto u = it->find("include_usage"); u != it->end() && !u->is_null()) {
      if (!u->is_boolean())
        return bad_request("invalid_type", "must be a boolean", "stream_options.include_usage");
      out.include_usage = u->get<bool>();
    }
  }
  if (auto it = body.find("n"); it != body.end() && !it->is_null() && *it != 1)
    return bad_request("unsupported_value", "only n=1 is supported", "n");
  if (auto it = body.find("parallel_tool_calls"); it != body.end() && !it->is_null() && !it->is_boolean())
    return bad_request("invalid_type", "'parallel_tool_calls' must be a boolean", "parallel_tool_calls");
  if (auto it = body.find("user"); it != body.end() && !it->is_null() && !it->is_string())
    return bad_request("invalid_type", "'user' must be a string", "user");
  if (auto it = body.find("chat_template_kwargs"); it != body.end() && !it->is_null()) {
    if (!it->is_object())
      return bad_request("invalid_type", "'chat_template_kwargs' must be an object", "chat_template_kwargs");
    for (const auto& [key, value] : it->items()) {
      if (key != "enable_thinking" || !value.is_boolean())
        return bad_request("unsupported_parameter", "only a boolean enable_thinking is supported",
                           "chat_template_kwargs." + key);
      out.enable_thinking = value.get<bool>();
    }
  }
  return std::nullopt;
}

std::optional<OpenAiError> read_sampling(const Json& body, const ChatApiContext& context,
                                         engine::SamplingParams& params) {
  json sampling = json::object();
  for (const char* key : {"temperature", "top_p", "top_k", "min_p", "seed", "stop", "presence_penalty",
                          "frequency_penalty", "repetition_penalty", "max_tokens"}) {
    if (auto it = body.find(key); it != body.end() && !it->is_null()) sampling[key] = json::parse(it->dump());
  }
  // max_completion_tokens is the newer name of max_tokens; it wins when both are given.
  if (auto it = body.find("max_completion_tokens"); it != body.end() && !it->is_null())
    sampling["max_tokens"] = json::parse(it->dump());
  params.max_tokens = context.options->default_max_tokens;
  if (auto e = apply_sampling(sampling, "", *context.options, context.vocab_size, params)) {
    std::string param = e->param.starts_with('.') ? e->param.substr(1) : e->param;
    if (param == "max_tokens" && body.contains("max_completion_tokens")) param = "max_completion_tokens";
    return bad_request(e->code, e->message, param);
  }
  return std::nullopt;
}

// The tool a declaration describes, for constrained decoding: a missing `parameters` means no arguments.
tools::ToolSpec tool_spec(const Json& function) {
  tools::ToolSpec spec;
  spec.name = function["name"].get<std::string>();
  if (auto it = function.find("description"); it != function.end() && it->is_string())
    spec.description = it->get<std::string>();
  if (auto it = function.find("parameters"); it != function.end() && !it->is_null())
    spec.parameters = json::parse(it->dump());
  else
    spec.parameters = {{"type", "object"}, {"properties", json::object()}};
  return spec;
}

// The tools rendered into the prompt (`rendered`, null for none) and, for tool_choice required or named,
// the tools the first call is constrained to (`forced`). tool_choice none leaves them out of the prompt, so
// the model does not call them.
std::optional<OpenAiError> read_tools(const Json& body, Json& rendered,
                                      std::vector<tools::ToolSpec>& forced) {
  rendered = nullptr;
  if (auto it = body.find("tools"); it != body.end() && !it->is_null()) {
    if (!it->is_array()) return bad_request("invalid_type", "'tools' must be an array", "tools");
    for (size_t i = 0; i < it->size(); ++i) {
      const Json& tool = (*it)[i];
      const std::string param = "tools[" + std::to_string(i) + "]";
      if (!tool.is_object() || tool.value("type", "") != "function")
        return bad_request("invalid_value", "a tool must be an object with type \"function\"",
                           param + ".type");
      const auto fn = tool.find("function");
      if (fn == tool.end() || !fn->is_object() || !fn->contains("name") || !(*fn)["name"].is_string())
        return bad_request("missing_field", "a tool needs function.name", param + ".function.name");
      if (auto p = fn->find("parameters"); p != fn->end() && !p->is_null() && !p->is_object())
        return bad_request("invalid_type", "function.parameters must be a JSON Schema object",
                           param + ".function.parameters");
    }
    if (!it->empty()) rendered = *it;
  }
  const auto choice = body.find("tool_choice");
  if (choice == body.end() || choice->is_null() || (choice->is_string() && *choice == "auto"))
    return std::nullopt;
  if (choice->is_string() && *choice == "none") {
    rendered = nullptr;
    return std::nullopt;
  }
  std::string named;
  if (choice->is_object()) {
    const auto fn = choice->find("function");
    if (choice->value("type", "") != "function" || fn == choice->end() || !fn->is_object() ||
        !fn->contains("name") || !(*fn)["name"].is_string())
      return bad_request("invalid_value",
                         "a named tool_choice is {\"type\":\"function\",\"function\":{\"name\":...}}",
                         "tool_choice");
    named = (*fn)["name"].get<std::string>();
  } else if (!choice->is_string() || *choice != "required") {
    return bad_request("invalid_value", "tool_choice must be 'none', 'auto', 'required' or an object",
                       "tool_choice");
  }
  if (rendered.is_null())
    return bad_request("invalid_value", "tool_choice forces a tool call, but there are no tools",
                       "tool_choice");
  for (const Json& tool : rendered)
    if (named.empty() || tool["function"]["name"] == named) forced.push_back(tool_spec(tool["function"]));
  if (forced.empty())
    return bad_request("invalid_value", "tool_choice names '" + named + "', which is not in 'tools'",
                       "tool_choice");
  return std::nullopt;
}

}  // namespace

json openai_error_body(const OpenAiError& error) {
  return {{"error",
           {{"message", error.message},
            {"type", error.type},
            {"param", error.param.empty() ? json(nullptr) : json(error.param)},
            {"code", error.code.empty() ? json(nullptr) : json(error.code)}}}};
}

OpenAiError openai_error_from_status(const Status& status, std::string code) {
  switch (status.code()) {
    case StatusCode::kInvalidArgument:
    case StatusCode::kOutOfRange:
      return {400, "invalid_request_error", std::move(code), status.message(), ""};
    case StatusCode::kResourceExhausted:
      return {503, "server_error", "server_busy", status.message(), ""};
    default:
      return {500, "server_error", std::move(code), status.message(), ""};
  }
}

std::variant<ChatCompletionRequest, OpenAiError> parse_chat_completion(std::string_view body_text,
                                                                       const ChatApiContext& context) {
  // Checked before parsing, as for WebSocket events: schemas and messages are walked recursively later.
  if (json_nesting_exceeds(body_text, context.options->max_json_depth))
    return bad_request(
        "json_too_deep",
        "the body nests deeper than " + std::to_string(context.options->max_json_depth) + " levels", "");
  Json body = Json::parse(body_text, nullptr, false);
  if (body.is_discarded()) return bad_request("invalid_json", "the body is not valid JSON", "");
  if (!body.is_object()) return bad_request("invalid_type", "the body must be a JSON object", "");
  if (auto e = check_params(body)) return *e;
  if (auto it = body.find("model"); it != body.end() && !it->is_null()) {
    if (!it->is_string()) return bad_request("invalid_type", "'model' must be a string", "model");
    if (*it != context.model_name)
      return OpenAiError{404, "invalid_request_error", "model_not_found",
                         "the model '" + it->get<std::string>() + "' does not exist; this server serves '" +
                             context.model_name + "'",
                         "model"};
  }
  ChatCompletionRequest out;
  if (auto e = read_flags(body, out)) return *e;
  if (auto e = read_sampling(body, context, out.sampling)) return *e;
  Json tools;
  if (auto e = read_tools(body, tools, out.forced_tools)) return *e;
  const auto messages_it = body.find("messages");
  if (messages_it == body.end() || !messages_it->is_array() || messages_it->empty())
    return bad_request("missing_field", "'messages' must be a non-empty array", "messages");
  auto messages = agent::parse_messages(*messages_it);
  if (!messages.ok()) return bad_request("invalid_value", messages.status().message(), "messages");
  agent::ChatTemplateOptions template_options;
  template_options.enable_thinking = out.enable_thinking;
  auto rendered = agent::render_chat_with_literals(*messages, tools, template_options);
  if (!rendered.ok()) return bad_request("invalid_value", rendered.status().message(), "messages");
  // Client text is literal: a "<|im_start|>" typed in a message or schema stays text (agent/prompt_tokens).
  out.prompt = agent::encode_prompt(*context.tokenizer, *rendered);
  size_t first_new = 0;
  for (size_t i = 0; i < messages->size(); ++i)
    if ((*messages)[i].role == agent::Role::kAssistant) first_new = i + 1;
  for (size_t i = first_new; i < messages->size(); ++i) {
    const agent::Message& m = (*messages)[i];
    std::string* into = m.role == agent::Role::kUser   ? &out.new_user_text
                        : m.role == agent::Role::kTool ? &out.new_tool_text
                                                       : nullptr;
    if (into == nullptr || m.content.empty()) continue;
    if (!into->empty()) *into += "\n";
    *into += m.content;
  }
  return out;
}

ChatCompletionBuilder::ChatCompletionBuilder(std::string id, std::string model, int64_t created)
    : id_(std::move(id)), model_(std::move(model)), created_(created) {}

json ChatCompletionBuilder::chunk(json delta, const json& finish_reason) const {
  return {{"id", id_},
          {"object", "chat.completion.chunk"},
          {"created", created_},
          {"model", model_},
          {"choices",
           json::array({{{"index", 0}, {"delta", std::move(delta)}, {"finish_reason", finish_reason}}})}};
}

json ChatCompletionBuilder::start_chunk() const {
  return chunk({{"role", "assistant"}, {"content", ""}}, nullptr);
}

void ChatCompletionBuilder::apply(std::vector<agent::TurnEvent>& events, std::vector<json>& chunks) {
  for (agent::TurnEvent& event : events) {
    switch (event.kind) {
      case agent::TurnEventKind::kContent:
        content_ += event.text;
        chunks.push_back(chunk({{"content", event.text}}, nullptr));
        break;
      case agent::TurnEventKind::kReasoning:
        reasoning_ += event.text;
        chunks.push_back(chunk({{"reasoning_content", event.text}}, nullptr));
        break;
      case agent::TurnEventKind::kToolCall: {
        json call = {
            {"id", make_id("call_")},
            {"type", "function"},
            {"function",
             {{"name", event.call.name}, {"arguments", agent::python_json_dumps(event.call.arguments)}}}};
        json delta_call = call;
        delta_call["index"] = tool_calls_.size();
        tool_calls_.push_back(std::move(call));
        chunks.push_back(chunk({{"tool_calls", json::array({std::move(delta_call)})}}, nullptr));
        break;
      }
      case agent::TurnEventKind::kError:
        if (!error_)
          // The parser's reason can quote the call's text: it stays out, so no model text reaches the
          // client by this path without passing the output windows.
          error_ = OpenAiError{500, "server_error", "invalid_tool_call",
                               "the model produced a malformed tool call", ""};
        break;
    }
  }
}

std::vector<json> ChatCompletionBuilder::feed(std::string_view text) {
  std::vector<agent::TurnEvent> events;
  parser_.feed(text, events);
  std::vector<json> chunks;
  apply(events, chunks);
  return chunks;
}

std::vector<json> ChatCompletionBuilder::finish(engine::FinishReason reason, const engine::Usage& usage,
                                                bool include_usage, const Status& engine_error) {
  std::vector<agent::TurnEvent> events;
  parser_.finish(events);
  std::vector<json> chunks;
  apply(events, chunks);
  usage_ = usage;
  if (reason == engine::FinishReason::kError && !error_)
    error_ = openai_error_from_status(engine_error, "engine_error");
  // A client that is still there when its request is cancelled sees why (the server is shutting down).
  if (reason == engine::FinishReason::kCancelled && !error_)
    error_ = OpenAiError{503, "server_error", "cancelled", "the request was cancelled", ""};
  if (error_) return chunks;
  finish_reason_ = !tool_calls_.empty()                      ? "tool_calls"
                   : reason == engine::FinishReason::kLength ? "length"
                                                             : "stop";
  for (json& c : closing_chunks(include_usage)) chunks.push_back(std::move(c));
  return chunks;
}

json ChatCompletionBuilder::completion() const {
  json message = {{"role", "assistant"},
                  {"content", content_.empty() && !tool_calls_.empty() ? json(nullptr) : json(content_)}};
  if (!reasoning_.empty()) message["reasoning_content"] = reasoning_;
  if (!tool_calls_.empty()) message["tool_calls"] = tool_calls_;
  return {{"id", id_},
          {"object", "chat.completion"},
          {"created", created_},
          {"model", model_},
          {"choices",
           json::array({{{"index", 0}, {"message", std::move(message)}, {"finish_reason", finish_reason_}}})},
          {"usage", usage_json()}};
}

std::vector<json> ChatCompletionBuilder::finish_filtered(const engine::Usage& usage, bool include_usage) {
  usage_ = usage;
  content_.clear();
  reasoning_.clear();
  tool_calls_ = json::array();
  finish_reason_ = "content_filter";
  return closing_chunks(include_usage);
}

std::vector<json> ChatCompletionBuilder::closing_chunks(bool include_usage) const {
  std::vector<json> chunks;
  chunks.push_back(chunk(json::object(), finish_reason_));
  if (include_usage) {
    json last = chunk(json::object(), nullptr);
    last["choices"] = json::array();
    last["usage"] = usage_json();
    chunks.push_back(std::move(last));
  }
  return chunks;
}

json ChatCompletionBuilder::usage_json() const {
  return {{"prompt_tokens", usage_.prompt_tokens},
          {"completion_tokens", usage_.completion_tokens},
          {"total_tokens", usage_.prompt_tokens + usage_.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", usage_.cached_tokens}}}};
}

json moderation_error_body(const std::vector<std::string>& categories, std::string_view reason, bool input) {
  std::string message =
      input ? "the request's input was blocked by moderation" : "the response was blocked by moderation";
  if (reason != "flagged") message += " (the moderation check failed: " + std::string(reason) + ")";
  json body = openai_error_body(
      OpenAiError{400, "invalid_request_error", "moderation_blocked", std::move(message), ""});
  body["error"]["categories"] = categories;
  body["error"]["reason"] = reason;
  return body;
}

std::string sse_event(const json& data) {
  return "data: " + data.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

}  // namespace agentserve::server
