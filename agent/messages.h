// The conversation as the agent layer sees it: plain message and tool-call structs in the OpenAI chat shape
// (system/user/assistant/tool roles, assistant reasoning and tool calls). The chat template renders them, the
// tool-call parser produces ToolCalls from model output, transcripts store them. Data only: these structs
// never validate, render or parse anything themselves.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace agentserve::agent {

// Key order matters (tool schemas and arguments are rendered into the prompt as given), so the agent layer
// uses nlohmann's insertion-ordered json throughout.
using Json = nlohmann::ordered_json;

enum class Role { kSystem, kUser, kAssistant, kTool };

inline std::string_view role_name(Role role) {
  switch (role) {
    case Role::kSystem:
      return "system";
    case Role::kUser:
      return "user";
    case Role::kAssistant:
      return "assistant";
    case Role::kTool:
      return "tool";
  }
  return "unknown";
}

struct ToolCall {
  std::string name;
  // A JSON object, or a string that is rendered verbatim (clients that pass OpenAI's serialised form).
  Json arguments = Json::object();
};

struct Message {
  Role role = Role::kUser;
  std::string content;
  // Absent means "not given": the template then looks for <think>...</think> inside an assistant's content.
  std::optional<std::string> reasoning_content;
  std::vector<ToolCall> tool_calls;  // assistant only
};

}  // namespace agentserve::agent
