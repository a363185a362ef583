#include "server/protocol.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <limits>
#include <mutex>
#include <random>

namespace agentserve::server {
namespace {

using nlohmann::json;

ProtocolError bad(std::string code, std::string message, std::string param) {
  return ProtocolError{"invalid_request_error", std::move(code), std::move(message), std::move(param), ""};
}

ProtocolError wrong_type(const std::string& param, const char* expected) {
  return bad("invalid_type", "'" + param + "' must be " + expected, param);
}

// Reads an optional string field; a present field of another type or past max_bytes is an error.
std::optional<ProtocolError> read_string(const json& object, const char* key, const std::string& param,
                                         size_t max_bytes, std::string& out) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return std::nullopt;
  if (!it->is_string()) return wrong_type(param, "a string");
  const auto& value = it->get_ref<const std::string&>();
  if (value.size() > max_bytes)
    return bad("string_too_long", "'" + param + "' is longer than " + std::to_string(max_bytes) + " bytes",
               param);
  out = value;
  return std::nullopt;
}

std::optional<ProtocolError> read_number(const json& object, const char* key, const std::string& prefix,
                                         double& out) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return std::nullopt;
  if (!it->is_number()) return wrong_type(prefix + "." + key, "a number");
  out = it->get<double>();
  return std::nullopt;
}

std::optional<ProtocolError> read_int(const json& object, const char* key, const std::string& prefix,
                                      int64_t lo, int64_t hi, int64_t& out) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return std::nullopt;
  const std::string param = prefix + "." + key;
  if (!it->is_number_integer()) return wrong_type(param, "an integer");
  // Unsigned values past int64 are out of range whatever the bounds.
  if (it->is_number_unsigned() &&
      it->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    return bad("invalid_value", "'" + param + "' is out of range", param);
  const int64_t value = it->get<int64_t>();
  if (value < lo || value > hi)
    return bad("invalid_value",
               "'" + param + "' must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " +
                   std::to_string(value),
               param);
  out = value;
  return std::nullopt;
}

std::optional<ProtocolError> read_stop(const json& sampling, const std::string& prefix,
                                       std::vector<std::string>& out) {
  const auto it = sampling.find("stop");
  if (it == sampling.end() || it->is_null()) return std::nullopt;
  const std::string param = prefix + ".stop";
  if (it->is_string()) {
    out = {it->get<std::string>()};
    return std::nullopt;
  }
  if (!it->is_array()) return wrong_type(param, "a string or an array of strings");
  // validate() checks count and lengths; cap what we copy before that so a huge array costs nothing.
  if (it->size() > engine::SamplingParams::kMaxStopStrings)
    return bad("invalid_value",
               "'" + param + "' has more than " + std::to_string(engine::SamplingParams::kMaxStopStrings) +
                   " strings",
               param);
  std::vector<std::string> stops;
  for (const auto& s : *it) {
    if (!s.is_string()) return wrong_type(param, "a string or an array of strings");
    stops.push_back(s.get<std::string>());
  }
  out = std::move(stops);
  return std::nullopt;
}

std::optional<ProtocolError> parse_session_create(const json& event, const ServerOptions& options,
                                                  int vocab_size, SessionConfig& config) {
  config.sampling.max_tokens = options.default_max_tokens;
  const auto it = event.find("session");
  if (it == event.end() || it->is_null()) return std::nullopt;
  return apply_session_fields(*it, "session", options, vocab_size, config);
}

std::optional<ProtocolError> parse_session_update(const json& event, const ServerOptions& options,
                                                  int vocab_size, ClientEvent& out) {
  const auto it = event.find("session");
  if (it == event.end() || it->is_null()) return bad("missing_field", "'session' is required", "session");
  // Checked here against defaults so a bad value is reported now; applied later over the session's.
  SessionConfig probe;
  if (auto e = apply_session_fields(*it, "session", options, vocab_size, probe)) return e;
  out.session_update = *it;
  return std::nullopt;
}

std::optional<ProtocolError> parse_session_resume(const json& event, ClientEvent& out) {
  const auto id = event.find("session_id");
  if (id == event.end() || id->is_null() || out.session_id.empty())
    return bad("missing_field", "'session_id' is required", "session_id");
  int64_t last_seq = 0;
  if (auto e = read_int(event, "last_seq", "", 0, std::numeric_limits<int64_t>::max(), last_seq)) {
    e->param = "last_seq";
    e->message = "'last_seq' must be a non-negative integer";
    return e;
  }
  out.last_seq = static_cast<uint64_t>(last_seq);
  return std::nullopt;
}

std::optional<ProtocolError> check_tools(const json& tools, const std::string& param) {
  if (!tools.is_array()) return wrong_type(param, "an array");
  if (tools.size() > kMaxTools)
    return bad("invalid_value", "'" + param + "' has more than " + std::to_string(kMaxTools) + " tools",
               param);
  for (size_t i = 0; i < tools.size(); ++i) {
    const std::string p = param + "[" + std::to_string(i) + "]";
    const json& tool = tools[i];
    if (!tool.is_object()) return wrong_type(p, "an object");
    // The flat Responses form names the function at the top, the Chat Completions form under "function".
    const json& fn = tool.contains("function") ? tool["function"] : tool;
    if (!fn.is_object() || !fn.contains("name") || !fn["name"].is_string() ||
        fn["name"].get_ref<const std::string&>().empty())
      return bad("missing_field", "'" + p + ".name' is required", p + ".name");
  }
  return std::nullopt;
}

std::optional<ProtocolError> check_tool_choice(const json& choice, const std::string& param) {
  if (choice.is_string()) {
    const auto& c = choice.get_ref<const std::string&>();
    if (c == "auto" || c == "none" || c == "required") return std::nullopt;
    return bad("invalid_value", "'" + param + "' must be auto, none, required or {\"name\": ...}", param);
  }
  if (!choice.is_object()) return wrong_type(param, "a string or an object");
  // {"type": "function", "name"} or the Chat Completions form {"type": "function", "function": {"name"}}.
  const json& fn = choice.contains("function") ? choice["function"] : choice;
  if (!fn.is_object() || !fn.contains("name") || !fn["name"].is_string() ||
      fn["name"].get_ref<const std::string&>().empty())
    return bad("missing_field", "'" + param + ".name' is required", param + ".name");
  return std::nullopt;
}

std::optional<ProtocolError> parse_function_call_output(const json& item, const ServerOptions& options,
                                                        FunctionCallOutput& out) {
  if (!item.contains("call_id") || item["call_id"].is_null())
    return bad("missing_field", "'item.call_id' is required", "item.call_id");
  if (auto e = read_string(item, "call_id", "item.call_id", 128, out.call_id)) return e;
  if (!item.contains("output") || item["output"].is_null())
    return bad("missing_field", "'item.output' is required", "item.output");
  if (auto e = read_string(item, "output", "item.output", options.max_content_bytes, out.output)) return e;
  const auto is_error = item.find("is_error");
  if (is_error != item.end() && !is_error->is_null()) {
    if (!is_error->is_boolean()) return wrong_type("item.is_error", "a boolean");
    out.is_error = is_error->get<bool>();
  }
  return std::nullopt;
}

std::optional<ProtocolError> parse_item(const json& event, const ServerOptions& options, ClientEvent& out) {
  const auto it = event.find("item");
  if (it == event.end() || it->is_null()) return bad("missing_field", "'item' is required", "item");
  if (!it->is_object()) return wrong_type("item", "an object");
  std::string type = "message";
  if (auto e = read_string(*it, "type", "item.type", 64, type)) return e;
  if (type == "function_call_output") {
    out.tool_output.emplace();
    return parse_function_call_output(*it, options, *out.tool_output);
  }
  if (type != "message")
    return bad("invalid_value", "'item.type' must be \"message\" or \"function_call_output\"", "item.type");
  ConversationMessage& item = out.item;
  if (!it->contains("role")) return bad("missing_field", "'item.role' is required", "item.role");
  if (auto e = read_string(*it, "role", "item.role", 64, item.role)) return e;
  if (item.role != "user" && item.role != "assistant" && item.role != "system")
    return bad("invalid_value", "'item.role' must be user, assistant or system", "item.role");
  if (!it->contains("content") || (*it)["content"].is_null())
    return bad("missing_field", "'item.content' is required", "item.content");
  return read_string(*it, "content", "item.content", options.max_content_bytes, item.content);
}

std::optional<ProtocolError> parse_response_create(const json& event, const ServerOptions& options,
                                                   int vocab_size, ClientEvent& out) {
  const auto it = event.find("response");
  if (it == event.end() || it->is_null()) return std::nullopt;
  if (!it->is_object()) return wrong_type("response", "an object");
  const auto sampling = it->find("sampling");
  if (sampling == it->end() || sampling->is_null()) return std::nullopt;
  if (!sampling->is_object()) return wrong_type("response.sampling", "an object");
  // Checked here against defaults so a bad value is reported now; applied later over the session's.
  engine::SamplingParams probe;
  if (auto e = apply_sampling(*sampling, "response.sampling", options, vocab_size, probe)) return e;
  out.sampling_override = *sampling;
  return std::nullopt;
}

std::optional<ProtocolError> parse_by_type(const std::string& type, const json& event,
                                           const ServerOptions& options, int vocab_size, ClientEvent& out) {
  if (type == "session.create") {
    out.type = ClientEventType::kSessionCreate;
    return parse_session_create(event, options, vocab_size, out.session);
  }
  if (type == "session.resume") {
    out.type = ClientEventType::kSessionResume;
    return parse_session_resume(event, out);
  }
  if (type == "session.update") {
    out.type = ClientEventType::kSessionUpdate;
    return parse_session_update(event, options, vocab_size, out);
  }
  if (type == "session.delete") {
    out.type = ClientEventType::kSessionDelete;
    return std::nullopt;
  }
  if (type == "conversation.item.create") {
    out.type = ClientEventType::kConversationItemCreate;
    return parse_item(event, options, out);
  }
  if (type == "response.create") {
    out.type = ClientEventType::kResponseCreate;
    return parse_response_create(event, options, vocab_size, out);
  }
  if (type == "response.cancel") {
    out.type = ClientEventType::kResponseCancel;
    return read_string(event, "response_id", "response_id", 128, out.response_id);
  }
  if (type == "ping") {
    out.type = ClientEventType::kPing;
    return std::nullopt;
  }
  return bad("unknown_event", "unknown event type '" + type + "'", "type");
}

}  // namespace

std::optional<ProtocolError> apply_session_fields(const json& session, const std::string& param_prefix,
                                                  const ServerOptions& options, int vocab_size,
                                                  SessionConfig& config) {
  const std::string& p = param_prefix;
  if (!session.is_object()) return wrong_type(p, "an object");
  static constexpr std::array<std::string_view, 9> kKnown = {
      "id",          "agent_id",        "instructions", "sampling",
      "tools",       "tool_choice",     "enable_thinking", "max_steps",
      "client_tool_timeout_ms"};
  for (const auto& [key, value] : session.items())
    if (std::find(kKnown.begin(), kKnown.end(), key) == kKnown.end())
      return bad("unknown_field", "unknown field '" + p + "." + key + "'", p + "." + key);
  if (auto e = read_string(session, "agent_id", p + ".agent_id", 256, config.agent_id)) return e;
  if (auto e = read_string(session, "instructions", p + ".instructions", options.max_content_bytes,
                           config.instructions))
    return e;
  if (const auto tools = session.find("tools"); tools != session.end() && !tools->is_null()) {
    if (auto e = check_tools(*tools, p + ".tools")) return e;
    config.tools = *tools;
  }
  if (const auto choice = session.find("tool_choice"); choice != session.end() && !choice->is_null()) {
    if (auto e = check_tool_choice(*choice, p + ".tool_choice")) return e;
    config.tool_choice = *choice;
  }
  if (const auto thinking = session.find("enable_thinking"); thinking != session.end() && !thinking->is_null()) {
    if (!thinking->is_boolean()) return wrong_type(p + ".enable_thinking", "a boolean");
    config.enable_thinking = thinking->get<bool>();
  }
  int64_t max_steps = config.max_steps;
  if (auto e = read_int(session, "max_steps", p, 1, kMaxSteps, max_steps)) return e;
  config.max_steps = static_cast<int>(max_steps);
  int64_t tool_timeout = config.client_tool_timeout_ms;
  if (auto e = read_int(session, "client_tool_timeout_ms", p, 1, kMaxClientToolTimeoutMs, tool_timeout)) return e;
  config.client_tool_timeout_ms = static_cast<int>(tool_timeout);
  const auto sampling = session.find("sampling");
  if (sampling == session.end() || sampling->is_null()) return std::nullopt;
  return apply_sampling(*sampling, p + ".sampling", options, vocab_size, config.sampling);
}

json sampling_json(const engine::SamplingParams& s) {
  json out = {{"temperature", s.temperature},
              {"top_p", s.top_p},
              {"top_k", s.top_k},
              {"min_p", s.min_p},
              {"max_tokens", s.max_tokens},
              {"presence_penalty", s.presence_penalty},
              {"frequency_penalty", s.frequency_penalty},
              {"repetition_penalty", s.repetition_penalty},
              {"stop", s.stop}};
  out["seed"] = s.seed ? json(*s.seed) : json(nullptr);
  return out;
}

json session_config_json(const SessionConfig& config) {
  return {{"agent_id", config.agent_id},         {"instructions", config.instructions},
          {"sampling", sampling_json(config.sampling)}, {"tools", config.tools},
          {"tool_choice", config.tool_choice},   {"enable_thinking", config.enable_thinking},
          {"max_steps", config.max_steps},       {"client_tool_timeout_ms", config.client_tool_timeout_ms}};
}

std::optional<ProtocolError> apply_sampling(const json& sampling, const std::string& param_prefix,
                                            const ServerOptions& options, int vocab_size,
                                            engine::SamplingParams& params) {
  if (!sampling.is_object()) return wrong_type(param_prefix, "an object");
  const std::string& p = param_prefix;
  if (auto e = read_number(sampling, "temperature", p, params.temperature)) return e;
  if (auto e = read_number(sampling, "top_p", p, params.top_p)) return e;
  if (auto e = read_number(sampling, "min_p", p, params.min_p)) return e;
  if (auto e = read_number(sampling, "presence_penalty", p, params.presence_penalty)) return e;
  if (auto e = read_number(sampling, "frequency_penalty", p, params.frequency_penalty)) return e;
  if (auto e = read_number(sampling, "repetition_penalty", p, params.repetition_penalty)) return e;
  int64_t top_k = params.top_k;
  if (auto e = read_int(sampling, "top_k", p, 0, std::numeric_limits<int32_t>::max(), top_k)) return e;
  params.top_k = static_cast<int>(top_k);
  int64_t max_tokens = params.max_tokens;
  if (auto e = read_int(sampling, "max_tokens", p, 1, options.max_tokens_limit, max_tokens)) return e;
  params.max_tokens = static_cast<int>(max_tokens);
  if (sampling.contains("seed") && !sampling["seed"].is_null()) {
    int64_t seed = 0;
    if (auto e = read_int(sampling, "seed", p, 0, std::numeric_limits<int64_t>::max(), seed)) return e;
    params.seed = static_cast<uint64_t>(seed);
  }
  if (auto e = read_stop(sampling, p, params.stop)) return e;
  const Status valid = params.validate(vocab_size);
  if (!valid.ok()) {
    // validate() names the field first ("sampling.top_p must be ..."); point param at the client's field.
    const std::string& message = valid.message();
    std::string param = p;
    if (message.starts_with("sampling.")) param += message.substr(8, message.find(' ') - 8);
    return bad("invalid_value", message, param);
  }
  return std::nullopt;
}

bool json_nesting_exceeds(std::string_view text, int max_depth) {
  int depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (const char c : text) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) return true;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return false;
}

ParseResult parse_client_event(std::string_view text, const ServerOptions& options, int vocab_size) {
  if (text.size() > options.max_message_bytes)
    return bad("message_too_large",
               "message of " + std::to_string(text.size()) + " bytes is over the limit of " +
                   std::to_string(options.max_message_bytes),
               "");
  if (json_nesting_exceeds(text, options.max_json_depth))
    return bad("json_too_deep",
               "arrays and objects nest deeper than " + std::to_string(options.max_json_depth) + " levels",
               "");
  const json event = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (event.is_discarded()) return bad("invalid_json", "the message is not valid JSON", "");
  if (!event.is_object()) return bad("invalid_json", "the message must be a JSON object", "");
  ClientEvent out;
  if (auto e = read_string(event, "event_id", "event_id", 128, out.event_id)) return *e;
  const auto with_id = [&](ProtocolError error) {
    error.event_id = out.event_id;
    return error;
  };
  const auto type = event.find("type");
  if (type == event.end()) return with_id(bad("missing_field", "'type' is required", "type"));
  if (!type->is_string()) return with_id(wrong_type("type", "a string"));
  if (auto e = read_string(event, "session_id", "session_id", 128, out.session_id)) return with_id(*e);
  if (auto e = parse_by_type(type->get<std::string>(), event, options, vocab_size, out)) return with_id(*e);
  return out;
}

std::string make_id(std::string_view prefix) {
  static std::mutex mutex;
  static std::mt19937_64 rng{std::random_device{}()};
  uint64_t a, b;
  {
    std::lock_guard lock(mutex);
    a = rng();
    b = rng();
  }
  std::array<char, 32> hex{};
  std::snprintf(hex.data(), hex.size(), "%016llx%08llx", static_cast<unsigned long long>(a),
                static_cast<unsigned long long>(b & 0xffffffffu));
  return std::string(prefix) + hex.data();
}

json error_event(const ProtocolError& error) {
  return {{"type", "error"},
          {"error",
           {{"type", error.type},
            {"code", error.code},
            {"message", error.message},
            {"param", error.param.empty() ? json(nullptr) : json(error.param)},
            {"event_id", error.event_id.empty() ? json(nullptr) : json(error.event_id)}}}};
}

json session_created_event(const std::string& session_id, const SessionConfig& config) {
  json session = session_config_json(config);
  session["id"] = session_id;
  session["object"] = "session";
  return {{"type", "session.created"}, {"session", std::move(session)}};
}

json session_updated_event(const json& session) {
  return {{"type", "session.updated"}, {"session", session}};
}

json session_resumed_event(const json& session, const ResumeReport& report) {
  return {{"type", "session.resumed"},
          {"session", session},
          {"turns", report.turns},
          {"restored_tokens", report.restored_tokens},
          {"recomputed_tokens", report.recomputed_tokens},
          {"lost_unfinished_turn", report.lost_unfinished_turn},
          {"replay_complete", report.replay_complete}};
}

json session_deleted_event(const std::string& session_id) {
  return {{"type", "session.deleted"}, {"session_id", session_id}};
}

json item_created_event(const std::string& session_id, const std::string& item_id,
                        const ConversationMessage& item) {
  return {{"type", "conversation.item.created"},
          {"session_id", session_id},
          {"item", {{"id", item_id}, {"type", "message"}, {"role", item.role}, {"content", item.content}}}};
}

json response_created_event(const std::string& session_id, const std::string& response_id) {
  return {{"type", "response.created"},
          {"session_id", session_id},
          {"response_id", response_id},
          {"response", {{"id", response_id}, {"status", "in_progress"}}}};
}

json text_delta_event(const std::string& response_id, const std::string& delta) {
  return {{"type", "response.output_text.delta"}, {"response_id", response_id}, {"delta", delta}};
}

json text_done_event(const std::string& response_id, const std::string& text) {
  return {{"type", "response.output_text.done"}, {"response_id", response_id}, {"text", text}};
}

json response_done_event(const std::string& session_id, const std::string& response_id,
                         std::string_view status, const engine::Usage& usage,
                         const std::optional<ProtocolError>& error, int steps,
                         const std::vector<StepUsageReport>& step_usage) {
  json response = {
      {"id", response_id},
      {"status", status},
      {"usage",
       {{"prompt_tokens", usage.prompt_tokens},
        {"cached_tokens", usage.cached_tokens},
        {"completion_tokens", usage.completion_tokens}}},
      {"timings",
       {{"time_to_first_token_s", usage.time_to_first_token_s}, {"total_time_s", usage.total_time_s}}}};
  if (error) response["error"] = error_event(*error)["error"];
  response["steps"] = steps;
  json per_step = json::array();
  int recomputed = 0;
  for (const StepUsageReport& u : step_usage) {
    recomputed += u.recomputed_tokens;
    per_step.push_back({{"prompt_tokens", u.prompt_tokens},
                        {"reused_tokens", u.reused_tokens},
                        {"cached_tokens", u.cached_tokens},
                        {"recomputed_tokens", u.recomputed_tokens},
                        {"completion_tokens", u.completion_tokens}});
  }
  response["usage"]["recomputed_tokens"] = recomputed;
  response["usage"]["steps"] = std::move(per_step);
  return {{"type", "response.done"},
          {"session_id", session_id},
          {"response_id", response_id},
          {"response", response}};
}

json reasoning_delta_event(const std::string& response_id, const std::string& delta) {
  return {{"type", "response.reasoning.delta"}, {"response_id", response_id}, {"delta", delta}};
}

json function_call_arguments_done_event(const std::string& response_id, const std::string& call_id,
                                        const std::string& name, const std::string& arguments) {
  return {{"type", "response.function_call_arguments.done"},
          {"response_id", response_id},
          {"call_id", call_id},
          {"name", name},
          {"arguments", arguments}};
}

json requires_action_event(const std::string& response_id, const std::vector<std::string>& call_ids,
                           int64_t deadline_unix_ms) {
  return {{"type", "response.requires_action"},
          {"response_id", response_id},
          {"call_ids", call_ids},
          {"deadline", deadline_unix_ms}};
}

json tool_execution_started_event(const std::string& response_id, const std::string& call_id,
                                  const std::string& name, const std::string& arguments) {
  return {{"type", "tool.execution.started"},
          {"response_id", response_id},
          {"call_id", call_id},
          {"name", name},
          {"arguments", arguments}};
}

json tool_execution_completed_event(const std::string& response_id, const std::string& call_id,
                                    const std::string& name, const std::string& output, bool is_error,
                                    std::string_view error_code) {
  json event = {{"type", "tool.execution.completed"},
                {"response_id", response_id},
                {"call_id", call_id},
                {"name", name},
                {"output", output},
                {"is_error", is_error}};
  event["error_code"] = is_error ? json(std::string(error_code)) : json(nullptr);
  return event;
}

json pong_event(const std::string& client_event_id) {
  json pong = {{"type", "pong"}};
  if (!client_event_id.empty()) pong["reply_to"] = client_event_id;
  return pong;
}

std::string_view response_status(engine::FinishReason reason) {
  switch (reason) {
    case engine::FinishReason::kStop:
      return "completed";
    case engine::FinishReason::kLength:
      return "incomplete";
    case engine::FinishReason::kCancelled:
      return "cancelled";
    case engine::FinishReason::kError:
    case engine::FinishReason::kNone:
      break;
  }
  return "failed";
}

ProtocolError error_from_status(const Status& status, std::string code, std::string param) {
  ProtocolError error;
  error.code = std::move(code);
  error.message = status.message();
  error.param = std::move(param);
  switch (status.code()) {
    case StatusCode::kInvalidArgument:
    case StatusCode::kOutOfRange:
      error.type = "invalid_request_error";
      break;
    case StatusCode::kResourceExhausted:
      error.type = "server_busy_error";
      break;
    default:
      error.type = "server_error";
  }
  return error;
}

}  // namespace agentserve::server
