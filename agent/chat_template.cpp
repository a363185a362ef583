// Qwen3's chat template, statement by statement in the order of the Jinja source, so a reader can hold the
// two side by side. Python string methods the template calls (strip('\n'), split(...)[-1], ...) have
// same-named helpers here.
#include "agent/chat_template.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string_view>

#include "base/sha256.h"

namespace agentserve::agent {
namespace {

constexpr std::string_view kToolsHeader =
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>";
constexpr std::string_view kToolsFooter =
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\n</tool_call><|im_end|>\n";

std::string_view lstrip_newlines(std::string_view s) {
  while (!s.empty() && s.front() == '\n') s.remove_prefix(1);
  return s;
}
std::string_view rstrip_newlines(std::string_view s) {
  while (!s.empty() && s.back() == '\n') s.remove_suffix(1);
  return s;
}
std::string_view strip_newlines(std::string_view s) {
  return rstrip_newlines(lstrip_newlines(s));
}

// s.split(sep)[-1] and s.split(sep)[0] in Python.
std::string_view after_last(std::string_view s, std::string_view sep) {
  const std::size_t at = s.rfind(sep);
  return at == std::string_view::npos ? s : s.substr(at + sep.size());
}
std::string_view before_first(std::string_view s, std::string_view sep) {
  return s.substr(0, s.find(sep));
}

// A user message that only carries a tool result does not count as the user's query (the template's
// multi-step tool detection).
bool is_wrapped_tool_response(std::string_view content) {
  return content.starts_with("<tool_response>") && content.ends_with("</tool_response>");
}

// repr(float) in Python: the shortest digits that round-trip, fixed notation when the decimal exponent is
// in [-4, 16), scientific otherwise ("1e-05", "1e+16"), and always a ".0" on integral fixed values.
void append_python_float(std::string& out, double v) {
  if (std::isnan(v)) {
    out += "NaN";
    return;
  }
  if (std::isinf(v)) {
    out += v > 0 ? "Infinity" : "-Infinity";
    return;
  }
  char buf[64];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
  std::string_view sci(buf, ec == std::errc() ? static_cast<std::size_t>(end - buf) : 0);
  if (!sci.empty() && sci.front() == '-') {
    out += '-';
    sci.remove_prefix(1);
  }
  const std::size_t e_at = sci.find('e');
  std::string digits;
  for (char c : sci.substr(0, e_at))
    if (c != '.') digits += c;
  int exponent = 0;
  const std::string_view exp_text = sci.substr(e_at + 1);
  std::from_chars(exp_text.data() + (exp_text.front() == '+' ? 1 : 0), exp_text.data() + exp_text.size(),
                  exponent);
  const int decpt = exponent + 1;  // digits are 0.d1d2... * 10^decpt
  const int n = static_cast<int>(digits.size());
  if (decpt > -4 && decpt <= 16) {
    if (decpt <= 0) {
      out += "0.";
      out.append(static_cast<std::size_t>(-decpt), '0');
      out += digits;
    } else if (decpt >= n) {
      out += digits;
      out.append(static_cast<std::size_t>(decpt - n), '0');
      out += ".0";
    } else {
      out.append(digits, 0, static_cast<std::size_t>(decpt));
      out += '.';
      out.append(digits, static_cast<std::size_t>(decpt));
    }
    return;
  }
  out += digits[0];
  if (n > 1) {
    out += '.';
    out.append(digits, 1);
  }
  out += exponent < 0 ? "e-" : "e+";
  const int magnitude = std::abs(exponent);  // at most 324 for a double
  if (magnitude < 10) out += '0';
  out += std::to_string(magnitude);
}

void append_python_string(std::string& out, std::string_view s) {
  out += '"';
  for (const char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char esc[8];
          std::snprintf(esc, sizeof esc, "\\u%04x", static_cast<unsigned>(c));
          out += esc;
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

void append_python_json(std::string& out, const Json& value) {
  switch (value.type()) {
    case Json::value_t::null:
    case Json::value_t::discarded:
      out += "null";
      return;
    case Json::value_t::boolean:
      out += value.get<bool>() ? "true" : "false";
      return;
    case Json::value_t::number_integer:
      out += std::to_string(value.get<int64_t>());
      return;
    case Json::value_t::number_unsigned:
      out += std::to_string(value.get<uint64_t>());
      return;
    case Json::value_t::number_float:
      append_python_float(out, value.get<double>());
      return;
    case Json::value_t::string:
      append_python_string(out, value.get_ref<const std::string&>());
      return;
    case Json::value_t::binary: {
      out += '[';
      const auto& bytes = value.get_binary();
      for (std::size_t i = 0; i < bytes.size(); ++i) out += (i ? ", " : "") + std::to_string(bytes[i]);
      out += ']';
      return;
    }
    case Json::value_t::array: {
      out += '[';
      bool first = true;
      for (const Json& item : value) {
        if (!first) out += ", ";
        first = false;
        append_python_json(out, item);
      }
      out += ']';
      return;
    }
    case Json::value_t::object: {
      out += '{';
      bool first = true;
      for (const auto& [key, item] : value.items()) {
        if (!first) out += ", ";
        first = false;
        append_python_string(out, key);
        out += ": ";
        append_python_json(out, item);
      }
      out += '}';
      return;
    }
  }
}

// Text that came from the conversation rather than the template: recorded so the tokenizer never turns
// the tags it may contain into control tokens.
void append_literal(RenderedPrompt& out, std::string_view text) {
  if (text.empty()) return;
  out.literals.push_back({out.text.size(), out.text.size() + text.size()});
  out.text += text;
}

void append_literal_json(RenderedPrompt& out, const Json& value) {
  const std::size_t begin = out.text.size();
  append_python_json(out.text, value);
  out.literals.push_back({begin, out.text.size()});
}

void append_tool_call(RenderedPrompt& out, const ToolCall& call) {
  out.text += "<tool_call>\n{\"name\": \"";
  append_literal(out, call.name);
  out.text += "\", \"arguments\": ";
  if (call.arguments.is_string()) {
    append_literal(out, call.arguments.get_ref<const std::string&>());
  } else {
    append_literal_json(out, call.arguments);
  }
  out.text += "}\n</tool_call>";
}

// Reasoning is shown only for assistant turns after the user's last query (the current agentic step);
// older turns are rendered without it, as the model saw them when it answered.
void append_assistant(RenderedPrompt& out, const Message& message, bool after_last_query, bool is_last) {
  std::string_view content = message.content;
  std::string_view reasoning;
  if (message.reasoning_content) {
    reasoning = *message.reasoning_content;
  } else if (content.find("</think>") != std::string_view::npos) {
    content = lstrip_newlines(after_last(message.content, "</think>"));
    reasoning =
        lstrip_newlines(after_last(rstrip_newlines(before_first(message.content, "</think>")), "<think>"));
  }
  out.text += "<|im_start|>assistant\n";
  if (after_last_query && (is_last || !reasoning.empty())) {
    out.text += "<think>\n";
    append_literal(out, strip_newlines(reasoning));
    out.text += "\n</think>\n\n";
    append_literal(out, lstrip_newlines(content));
  } else {
    append_literal(out, content);
  }
  for (std::size_t i = 0; i < message.tool_calls.size(); ++i) {
    if (i > 0 || !content.empty()) out.text += '\n';
    append_tool_call(out, message.tool_calls[i]);
  }
  out.text += "<|im_end|>\n";
}

Result<std::string> optional_string(const Json& message, const char* key, std::size_t index) {
  const auto it = message.find(key);
  if (it == message.end() || it->is_null()) return std::string();
  if (!it->is_string())
    return Status::invalid_argument("messages[" + std::to_string(index) + "]." + key + " must be a string");
  return it->get<std::string>();
}

Result<ToolCall> parse_tool_call(const Json& entry, std::size_t index, std::size_t call_index) {
  const std::string where =
      "messages[" + std::to_string(index) + "].tool_calls[" + std::to_string(call_index) + "]";
  if (!entry.is_object()) return Status::invalid_argument(where + " must be an object");
  const Json* call = &entry;
  // {%- if tool_call.function %}: a present, non-empty "function" object replaces the entry.
  if (const auto it = entry.find("function"); it != entry.end() && it->is_object() && !it->empty())
    call = &*it;
  const auto name = call->find("name");
  if (name == call->end() || !name->is_string() || name->get_ref<const std::string&>().empty())
    return Status::invalid_argument(where + " needs a function name (a non-empty string)");
  const auto arguments = call->find("arguments");
  if (arguments == call->end())
    return Status::invalid_argument(where + " needs arguments (a JSON object or a JSON string)");
  return ToolCall{name->get<std::string>(), *arguments};
}

}  // namespace

std::string python_json_dumps(const Json& value) {
  std::string out;
  append_python_json(out, value);
  return out;
}

Status check_model_chat_template(const std::filesystem::path& model_dir) {
  const std::filesystem::path path = model_dir / "tokenizer_config.json";
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::not_found("cannot open " + path.string());
  std::ostringstream text;
  text << in.rdbuf();
  const Json config = Json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded()) return Status::corruption(path.string() + " is not valid JSON");
  const auto it = config.find("chat_template");
  if (it == config.end() || !it->is_string())
    return Status::corruption(path.string() + " has no chat_template string");
  if (sha256_hex(it->get_ref<const std::string&>()) != kQwen3ChatTemplateSha256)
    return Status::failed_precondition(path.string() +
                                       " has a chat_template other than the Qwen3 template built in here");
  return Status::ok_status();
}

Result<std::vector<Message>> parse_messages(const Json& messages) {
  if (!messages.is_array()) return Status::invalid_argument("messages must be a JSON array");
  std::vector<Message> parsed;
  parsed.reserve(messages.size());
  for (std::size_t i = 0; i < messages.size(); ++i) {
    const Json& entry = messages[i];
    const std::string where = "messages[" + std::to_string(i) + "]";
    if (!entry.is_object()) return Status::invalid_argument(where + " must be an object");
    const auto role = entry.find("role");
    if (role == entry.end() || !role->is_string())
      return Status::invalid_argument(where + ".role must be a string");
    Message message;
    const std::string& role_text = role->get_ref<const std::string&>();
    if (role_text == "system") {
      message.role = Role::kSystem;
    } else if (role_text == "user") {
      message.role = Role::kUser;
    } else if (role_text == "assistant") {
      message.role = Role::kAssistant;
    } else if (role_text == "tool") {
      message.role = Role::kTool;
    } else {
      return Status::invalid_argument(where + ".role \"" + role_text +
                                      "\" is not one of system, user, assistant, tool");
    }
    const auto content = entry.find("content");
    if (message.role != Role::kAssistant && (content == entry.end() || !content->is_string()))
      return Status::invalid_argument(where + ".content must be a string");
    AS_ASSIGN_OR_RETURN(message.content, optional_string(entry, "content", i));
    if (message.role == Role::kAssistant) {
      if (const auto it = entry.find("reasoning_content"); it != entry.end() && !it->is_null()) {
        AS_ASSIGN_OR_RETURN(message.reasoning_content, optional_string(entry, "reasoning_content", i));
      }
      if (const auto calls = entry.find("tool_calls"); calls != entry.end() && !calls->is_null()) {
        if (!calls->is_array()) return Status::invalid_argument(where + ".tool_calls must be an array");
        for (std::size_t c = 0; c < calls->size(); ++c) {
          AS_ASSIGN_OR_RETURN(ToolCall call, parse_tool_call((*calls)[c], i, c));
          message.tool_calls.push_back(std::move(call));
        }
      }
    }
    parsed.push_back(std::move(message));
  }
  return parsed;
}

Result<std::string> render_chat(std::span<const Message> messages, const Json& tools,
                                const ChatTemplateOptions& options) {
  AS_ASSIGN_OR_RETURN(RenderedPrompt prompt, render_chat_with_literals(messages, tools, options));
  return std::move(prompt.text);
}

Result<RenderedPrompt> render_chat_with_literals(std::span<const Message> messages, const Json& tools,
                                                 const ChatTemplateOptions& options) {
  if (messages.empty()) return Status::invalid_argument("the conversation has no messages");
  if (!tools.is_null() && !tools.is_array())
    return Status::invalid_argument("tools must be a JSON array of tool schemas");
  RenderedPrompt out;
  const bool system_first = messages[0].role == Role::kSystem;
  if (tools.is_array() && !tools.empty()) {
    out.text += "<|im_start|>system\n";
    if (system_first) {
      append_literal(out, messages[0].content);
      out.text += "\n\n";
    }
    out.text += kToolsHeader;
    for (const Json& tool : tools) {
      out.text += '\n';
      append_literal_json(out, tool);
    }
    out.text += kToolsFooter;
  } else if (system_first) {
    out.text += "<|im_start|>system\n";
    append_literal(out, messages[0].content);
    out.text += "<|im_end|>\n";
  }

  std::size_t last_query_index = messages.size() - 1;
  for (std::size_t i = messages.size(); i-- > 0;) {
    if (messages[i].role == Role::kUser && !is_wrapped_tool_response(messages[i].content)) {
      last_query_index = i;
      break;
    }
  }

  for (std::size_t i = 0; i < messages.size(); ++i) {
    const Message& message = messages[i];
    const bool is_last = i + 1 == messages.size();
    switch (message.role) {
      case Role::kSystem:
        if (i == 0) break;  // rendered above
        [[fallthrough]];
      case Role::kUser:
        out.text += "<|im_start|>";
        out.text += role_name(message.role);
        out.text += '\n';
        append_literal(out, message.content);
        out.text += "<|im_end|>\n";
        break;
      case Role::kAssistant:
        append_assistant(out, message, i > last_query_index, is_last);
        break;
      case Role::kTool:
        // Consecutive tool results share one user turn.
        if (i == 0 || messages[i - 1].role != Role::kTool) out.text += "<|im_start|>user";
        out.text += "\n<tool_response>\n";
        append_literal(out, message.content);
        out.text += "\n</tool_response>";
        if (is_last || messages[i + 1].role != Role::kTool) out.text += "<|im_end|>\n";
        break;
    }
  }
  if (options.add_generation_prompt) {
    out.text += "<|im_start|>assistant\n";
    if (!options.enable_thinking) out.text += "<think>\n\n</think>\n\n";
  }
  return out;
}

}  // namespace agentserve::agent
