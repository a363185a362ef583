// Streaming parser for one Qwen3 model turn: fed the decoded text as it is generated, it splits it into
// reasoning (inside <think>...</think>), content, and tool calls (<tool_call>\n{"name": ..., "arguments":
// {...}}\n</tool_call>), so the turn loop can stream text to the client and run the calls.
//
// Contract:
// - Content is released as soon as it cannot be the start of a <think> or <tool_call> tag; a cut-off UTF-8
//   sequence is held until it completes, so every text event is whole characters.
// - It never passes a malformed call off as content: a call that is not JSON, has no name, has non-object
//   arguments, or is still open when the turn ends is an error event carrying the raw call text.
// - "</tool_call>" inside a JSON string of a call does not end it; a <tool_call> inside <think> is part of
//   the reasoning (a draft), not a call. A stray "</think>" in content is content.
// - Newlines the chat template itself puts around reasoning, between calls and after </think> are not
//   reported (template: reasoning.strip('\n'), content.lstrip('\n'), "\n" before each <tool_call>), so
//   the events re-render through render_chat to the text the model produced. Newlines are therefore held
//   until the next non-newline character shows they belong to the text.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "agent/messages.h"

namespace agentserve::agent {

struct ToolCallParserOptions {
  // The generation prompt already opened <think> (templates whose prompt ends in "<think>\n"), so the
  // turn starts inside the reasoning.
  bool starts_in_reasoning = false;
};

enum class TurnEventKind { kReasoning, kContent, kToolCall, kError };

struct TurnEvent {
  TurnEventKind kind = TurnEventKind::kContent;
  std::string text;  // kReasoning / kContent: the new text; kError: what is wrong with the call
  ToolCall call;     // kToolCall: name and arguments (always a JSON object)
  std::string raw;   // kToolCall / kError: the text between <tool_call> and </tool_call>, as generated
};

class ToolCallParser {
 public:
  explicit ToolCallParser(ToolCallParserOptions options = {});

  // Appends the events `text` completes to `events` (text deltas of one kind within a call are merged).
  void feed(std::string_view text, std::vector<TurnEvent>& events);

  // The turn has ended: releases held text, reports an unterminated call, and resets for a new turn.
  void finish(std::vector<TurnEvent>& events);

 private:
  enum class State { kContent, kReasoning, kToolCall };

  // Newline handling for one text channel (content or reasoning): leading newlines dropped while
  // `skip_leading`, trailing ones held until more text shows they are not a separator.
  struct Channel {
    bool skip_leading = false;
    std::size_t held_newlines = 0;
  };

  void drain(bool at_end, std::vector<TurnEvent>& events);
  bool drain_content(bool at_end, std::vector<TurnEvent>& events);
  bool drain_reasoning(bool at_end, std::vector<TurnEvent>& events);
  bool drain_tool_call(bool at_end, std::vector<TurnEvent>& events);
  void push_text(TurnEventKind kind, Channel& channel, std::string_view text, std::vector<TurnEvent>& events);
  void append_text(TurnEventKind kind, std::string_view text, std::vector<TurnEvent>& events);
  void reset();

  ToolCallParserOptions options_;
  State state_ = State::kContent;
  std::string buffer_;  // text received but not yet decided
  Channel content_, reasoning_;
  // Tool-call body scan: buffer_[0, scan_pos_) is known to hold no terminator outside a JSON string.
  std::size_t scan_pos_ = 0;
  bool in_string_ = false;
  bool escaped_ = false;
  std::size_t first_new_event_ = 0;  // events before this index belong to earlier feed calls
};

}  // namespace agentserve::agent
