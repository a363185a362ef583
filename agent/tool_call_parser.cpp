// A three-state machine (content, reasoning, tool call) over a buffer of undecided text. Each drain step
// releases what is decided and keeps only what could still be the start of a tag (or of a UTF-8 character).
#include "agent/tool_call_parser.h"

#include <algorithm>

namespace agentserve::agent {
namespace {

constexpr std::string_view kThinkOpen = "<think>";
constexpr std::string_view kThinkClose = "</think>";
constexpr std::string_view kCallOpen = "<tool_call>";
constexpr std::string_view kCallClose = "</tool_call>";

bool is_proper_prefix(std::string_view text, std::string_view tag) {
  return text.size() < tag.size() && tag.starts_with(text);
}

// Length of the longest suffix of `text` that is a proper prefix of `tag`.
std::size_t partial_tag_suffix(std::string_view text, std::string_view tag) {
  for (std::size_t n = std::min(text.size(), tag.size() - 1); n > 0; --n)
    if (text.substr(text.size() - n) == tag.substr(0, n)) return n;
  return 0;
}

// Bytes at the end of `text` that begin a UTF-8 sequence whose continuation bytes have not arrived yet.
std::size_t incomplete_utf8_tail(std::string_view text) {
  for (std::size_t back = 1; back <= 3 && back <= text.size(); ++back) {
    const auto c = static_cast<unsigned char>(text[text.size() - back]);
    if ((c & 0xC0) == 0x80) continue;
    const std::size_t need = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
    return need > back ? back : 0;
  }
  return 0;
}

std::string_view trim_whitespace(std::string_view s) {
  const auto is_space = [](char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; };
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

// The body of one <tool_call> block -> a call, or an error event that keeps the raw text.
TurnEvent parse_call(std::string_view body) {
  TurnEvent event;
  event.kind = TurnEventKind::kError;
  event.raw = std::string(body);
  const std::string_view text = trim_whitespace(body);
  const Json parsed = Json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) {
    event.text = "tool call is not valid JSON";
    return event;
  }
  if (!parsed.is_object()) {
    event.text = "tool call must be a JSON object with \"name\" and \"arguments\"";
    return event;
  }
  const auto name = parsed.find("name");
  if (name == parsed.end() || !name->is_string() || name->get_ref<const std::string&>().empty()) {
    event.text = "tool call has no function name";
    return event;
  }
  Json arguments = Json::object();
  if (const auto it = parsed.find("arguments"); it != parsed.end() && !it->is_null()) {
    // Some checkpoints double-encode the arguments as a JSON string; accept it when it holds an object.
    arguments = it->is_string() ? Json::parse(it->get_ref<const std::string&>(), nullptr, false) : *it;
  }
  if (!arguments.is_object()) {
    event.text = "arguments of tool call \"" + name->get<std::string>() + "\" must be a JSON object";
    return event;
  }
  event.kind = TurnEventKind::kToolCall;
  event.call = ToolCall{name->get<std::string>(), std::move(arguments)};
  return event;
}

}  // namespace

ToolCallParser::ToolCallParser(ToolCallParserOptions options) : options_(options) {
  reset();
}

void ToolCallParser::reset() {
  state_ = options_.starts_in_reasoning ? State::kReasoning : State::kContent;
  buffer_.clear();
  content_ = Channel{};
  reasoning_ = Channel{.skip_leading = true};
  scan_pos_ = 0;
  in_string_ = false;
  escaped_ = false;
}

void ToolCallParser::feed(std::string_view text, std::vector<TurnEvent>& events) {
  first_new_event_ = events.size();
  buffer_.append(text);
  drain(/*at_end=*/false, events);
}

void ToolCallParser::finish(std::vector<TurnEvent>& events) {
  first_new_event_ = events.size();
  drain(/*at_end=*/true, events);
  if (state_ == State::kToolCall) {
    TurnEvent error;
    error.kind = TurnEventKind::kError;
    error.text = "tool call not terminated: the turn ended before </tool_call>";
    error.raw = buffer_;
    events.push_back(std::move(error));
  } else if (state_ == State::kContent && content_.held_newlines > 0) {
    append_text(TurnEventKind::kContent, std::string(content_.held_newlines, '\n'), events);
  }
  reset();
}

void ToolCallParser::drain(bool at_end, std::vector<TurnEvent>& events) {
  bool state_changed = true;
  while (state_changed) {
    switch (state_) {
      case State::kContent:
        state_changed = drain_content(at_end, events);
        break;
      case State::kReasoning:
        state_changed = drain_reasoning(at_end, events);
        break;
      case State::kToolCall:
        state_changed = drain_tool_call(at_end, events);
        break;
    }
  }
}

bool ToolCallParser::drain_content(bool at_end, std::vector<TurnEvent>& events) {
  for (std::size_t lt = buffer_.find('<'); lt != std::string::npos; lt = buffer_.find('<', lt + 1)) {
    const std::string_view rest = std::string_view(buffer_).substr(lt);
    const bool opens_call = rest.starts_with(kCallOpen);
    if (opens_call || rest.starts_with(kThinkOpen)) {
      push_text(TurnEventKind::kContent, content_, std::string_view(buffer_).substr(0, lt), events);
      content_.held_newlines = 0;  // the template's separator before the tag
      buffer_.erase(0, lt + (opens_call ? kCallOpen : kThinkOpen).size());
      if (opens_call) {
        state_ = State::kToolCall;
        scan_pos_ = 0;
        in_string_ = escaped_ = false;
      } else {
        state_ = State::kReasoning;
        reasoning_ = Channel{.skip_leading = true};
      }
      return true;
    }
    if (!at_end && (is_proper_prefix(rest, kCallOpen) || is_proper_prefix(rest, kThinkOpen))) {
      push_text(TurnEventKind::kContent, content_, std::string_view(buffer_).substr(0, lt), events);
      buffer_.erase(0, lt);
      return false;
    }
  }
  const std::size_t ready = buffer_.size() - (at_end ? 0 : incomplete_utf8_tail(buffer_));
  push_text(TurnEventKind::kContent, content_, std::string_view(buffer_).substr(0, ready), events);
  buffer_.erase(0, ready);
  return false;
}

bool ToolCallParser::drain_reasoning(bool at_end, std::vector<TurnEvent>& events) {
  const std::size_t close = buffer_.find(kThinkClose);
  if (close != std::string::npos) {
    push_text(TurnEventKind::kReasoning, reasoning_, std::string_view(buffer_).substr(0, close), events);
    buffer_.erase(0, close + kThinkClose.size());
    state_ = State::kContent;
    content_ = Channel{.skip_leading = true};
    return true;
  }
  const std::size_t hold =
      at_end ? 0 : std::max(partial_tag_suffix(buffer_, kThinkClose), incomplete_utf8_tail(buffer_));
  const std::size_t ready = buffer_.size() - hold;
  push_text(TurnEventKind::kReasoning, reasoning_, std::string_view(buffer_).substr(0, ready), events);
  buffer_.erase(0, ready);
  return false;
}

bool ToolCallParser::drain_tool_call(bool at_end, std::vector<TurnEvent>& events) {
  for (std::size_t i = scan_pos_; i < buffer_.size(); ++i) {
    const char c = buffer_[i];
    if (in_string_) {
      if (escaped_) {
        escaped_ = false;
      } else if (c == '\\') {
        escaped_ = true;
      } else if (c == '"') {
        in_string_ = false;
      }
      continue;
    }
    if (c == '"') {
      in_string_ = true;
      continue;
    }
    if (c != '<') continue;
    const std::string_view rest = std::string_view(buffer_).substr(i);
    if (rest.starts_with(kCallClose)) {
      events.push_back(parse_call(std::string_view(buffer_).substr(0, i)));
      buffer_.erase(0, i + kCallClose.size());
      state_ = State::kContent;
      content_ = Channel{.skip_leading = true};
      return true;
    }
    if (!at_end && is_proper_prefix(rest, kCallClose)) {
      scan_pos_ = i;
      return false;
    }
  }
  scan_pos_ = buffer_.size();
  return false;
}

void ToolCallParser::push_text(TurnEventKind kind, Channel& channel, std::string_view text,
                               std::vector<TurnEvent>& events) {
  if (channel.skip_leading) {
    while (!text.empty() && text.front() == '\n') text.remove_prefix(1);
    if (text.empty()) return;
    channel.skip_leading = false;
  }
  std::size_t trailing = 0;
  while (trailing < text.size() && text[text.size() - 1 - trailing] == '\n') ++trailing;
  const std::string_view body = text.substr(0, text.size() - trailing);
  if (!body.empty()) {
    if (channel.held_newlines > 0) append_text(kind, std::string(channel.held_newlines, '\n'), events);
    append_text(kind, body, events);
    channel.held_newlines = 0;
  }
  channel.held_newlines += trailing;
}

void ToolCallParser::append_text(TurnEventKind kind, std::string_view text, std::vector<TurnEvent>& events) {
  if (events.size() > first_new_event_ && events.back().kind == kind) {
    events.back().text += text;
    return;
  }
  TurnEvent event;
  event.kind = kind;
  event.text = std::string(text);
  events.push_back(std::move(event));
}

}  // namespace agentserve::agent
