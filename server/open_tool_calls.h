// OpenToolCalls: the calls of a session's last step that no tool result follows. A step's assistant message
// is committed with its calls' ids (attach_call_id), so when the server restarted, or a response was
// cancelled, while it waited for a client, the next response finds those calls here with the same ids,
// announces them again and waits for their outputs before its loop runs. A server call of that step is
// answered with an error result: it may or may not have run, so it is never run again.
//
// It holds the calls and their results and reports them to a TurnSink; it never touches the session, its
// lock or the engine (AgentResponse commits the results), and is used on the response's executor only.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/turn_loop.h"
#include "server/protocol.h"
#include "tools/tool_registry.h"

namespace agentserve::server {

// Gives the first call entry of `step` (an assistant message's tool_calls) that matches `call` by name and
// arguments and has no id yet the call's id. True once every entry of the step has an id.
bool attach_call_id(ConversationMessage& step, const agent::TurnToolCall& call);

class OpenToolCalls {
 public:
  OpenToolCalls() = default;
  // The calls of `messages`' last message when it is an assistant step (none otherwise). A call whose tool
  // `tools` no longer declares counts as a server call; one recorded without an id gets a fresh one.
  static OpenToolCalls of_last_step(const std::vector<ConversationMessage>& messages,
                                    const std::vector<tools::ToolSpec>& tools);

  bool empty() const { return calls_.empty(); }
  // Announces the calls to `sink` in order: a client call through on_tool_call, a server call answered
  // with an "interrupted" error through on_tool_completed. Returns the client calls' ids (to wait for).
  std::vector<std::string> announce(agent::TurnSink& sink);
  // Answers the waiting client call `call_id` and reports it through on_tool_completed; false when no
  // client call of that id is waiting.
  bool resolve_client(std::string_view call_id, tools::ToolResult result, agent::TurnSink& sink);
  // Answers every waiting call with a deadline error, each reported through on_tool_completed.
  void expire(agent::TurnSink& sink);
  bool all_answered() const;
  // The results as the session's tool messages, in the calls' order (the loop's own form); empties this.
  // Only once all_answered().
  std::vector<ConversationMessage> take_result_messages();

 private:
  struct OpenCall {
    agent::TurnToolCall call;
    std::optional<tools::ToolResult> result;
  };
  std::vector<OpenCall> calls_;
};

}  // namespace agentserve::server
