// ToolRegistry: every tool a session may call, by name: its description, JSON Schema parameters, where it
// runs (server: an executor in this process; client: the agent client runs it and sends the output back),
// whether decoding is constrained to its schema (strict), and its time limit. The server fills it with the
// built-ins (agent memory, clock, calculator) and the HTTP tools of the config; a session adds its own
// client-side tools to a copy.
//
// Arguments are validated against the schema before anything runs. A server tool never blocks the caller:
// execute() runs it on the registry's worker threads and reports exactly once, a timeout, an exception or
// an oversized output becoming an error result (never a crash, never a missing answer).
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/status.h"

namespace agentserve::tools {

enum class ToolExecution { kServer, kClient };

// Who is calling: the memory tools key notes by agent id; the HTTP tools may forward the tenant.
struct ToolContext {
  std::string tenant;
  std::string agent_id;
  std::string session_id;
  std::string call_id;
};

// What goes back to the model as the tool's <tool_response>.
struct ToolResult {
  std::string output;
  bool is_error = false;
};

// A server tool's body. It may throw; it runs on a worker thread and must respect no deadline itself (the
// registry abandons it after its timeout).
using ToolFunction = std::function<ToolResult(const nlohmann::json& arguments, const ToolContext& context)>;

struct ToolSpec {
  std::string name;
  std::string description;
  nlohmann::json parameters = nlohmann::json::object();  // JSON Schema of the arguments object
  bool strict = false;
  ToolExecution execution = ToolExecution::kClient;
  std::chrono::milliseconds timeout{10000};
  ToolFunction run;  // set iff execution is kServer
};

}  // namespace agentserve::tools
