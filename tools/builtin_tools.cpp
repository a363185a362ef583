#include "tools/builtin_tools.h"

#include <utility>

#include "tools/calculator_tool.h"

namespace agentserve::tools {

Status register_builtin_tools(ToolRegistry& registry, BuiltinToolDeps deps) {
  if (deps.sessions != nullptr)
    AS_RETURN_IF_ERROR(register_memory_tools(registry, *deps.sessions, deps.memory_limits));
  AS_RETURN_IF_ERROR(register_clock_tool(registry, std::move(deps.clock)));
  AS_RETURN_IF_ERROR(register_calculator_tool(registry));
  if (deps.http_tools.tools.empty()) return Status::ok_status();
  if (deps.http_client == nullptr)
    return Status::invalid_argument("HTTP tools are configured but no HTTP client was given");
  return register_http_tools(registry, deps.http_tools, *deps.http_client);
}

}  // namespace agentserve::tools
