#include "server/open_tool_calls.h"

namespace agentserve::server {

bool attach_call_id(ConversationMessage& step, const agent::TurnToolCall& call) {
  bool all = true;
  bool attached = false;
  for (auto& entry : step.tool_calls) {
    if (!attached && !entry.contains("id") && entry.value("name", "") == call.name &&
        entry.contains("arguments") && entry["arguments"] == call.arguments) {
      entry["id"] = call.call_id;
      attached = true;
    }
    all = all && entry.contains("id");
  }
  return all;
}

OpenToolCalls OpenToolCalls::of_last_step(const std::vector<ConversationMessage>& messages,
                                          const std::vector<tools::ToolSpec>& tools) {
  OpenToolCalls open;
  if (messages.empty() || messages.back().role != "assistant") return open;
  for (const auto& entry : messages.back().tool_calls) {
    agent::TurnToolCall call;
    call.call_id =
        entry.contains("id") && entry["id"].is_string() ? entry["id"].get<std::string>()
                                                         : agent::new_call_id();
    call.name = entry.value("name", "");
    call.arguments = entry.contains("arguments") && entry["arguments"].is_object() ? entry["arguments"]
                                                                                   : agent::Json::object();
    // A tool the session no longer declares is answered like a server call: with an error result.
    call.execution = tools::ToolExecution::kServer;
    for (const tools::ToolSpec& spec : tools)
      if (spec.name == call.name) call.execution = spec.execution;
    open.calls_.push_back({std::move(call), std::nullopt});
  }
  return open;
}

std::vector<std::string> OpenToolCalls::announce(agent::TurnSink& sink) {
  std::vector<std::string> client_ids;
  for (OpenCall& open : calls_) {
    if (open.call.execution == tools::ToolExecution::kClient) {
      sink.on_tool_call(open.call);
      client_ids.push_back(open.call.call_id);
      continue;
    }
    // Whether it ran before the interruption is unknown, so it is not run again.
    open.result = tools::ToolResult::error(
        StatusCode::kCancelled,
        "the call of \"" + open.call.name + "\" was interrupted before it returned a result");
    sink.on_tool_completed(open.call, *open.result);
  }
  return client_ids;
}

bool OpenToolCalls::resolve_client(std::string_view call_id, tools::ToolResult result, agent::TurnSink& sink) {
  for (OpenCall& open : calls_) {
    if (open.call.call_id != call_id || open.call.execution != tools::ToolExecution::kClient || open.result)
      continue;
    open.result = std::move(result);
    sink.on_tool_completed(open.call, *open.result);
    return true;
  }
  return false;
}

void OpenToolCalls::expire(agent::TurnSink& sink) {
  for (OpenCall& open : calls_) {
    if (open.result) continue;
    open.result = tools::ToolResult::error(
        StatusCode::kDeadlineExceeded,
        "the client did not return the output of \"" + open.call.name + "\" before its deadline");
    sink.on_tool_completed(open.call, *open.result);
  }
}

bool OpenToolCalls::all_answered() const {
  for (const OpenCall& open : calls_)
    if (!open.result) return false;
  return true;
}

std::vector<ConversationMessage> OpenToolCalls::take_result_messages() {
  std::vector<ConversationMessage> messages;
  for (const OpenCall& open : calls_)
    messages.push_back({"tool", agent::tool_result_content(*open.result)});
  calls_.clear();
  return messages;
}

}  // namespace agentserve::server
