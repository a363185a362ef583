// register_builtin_tools: the one place the server fills its ToolRegistry with the built-in server-side
// tools: the agent memory tools (when a session store is given), current_time, calculator, and the HTTP
// tools of the config (when any are declared, which needs an HTTP client). It owns nothing and starts
// nothing; what it is given must outlive the registry.
#pragma once

#include "base/status.h"
#include "memory/session_store.h"
#include "net/http_client.h"
#include "tools/clock_tool.h"
#include "tools/http_tool.h"
#include "tools/memory_tools.h"
#include "tools/tool_registry.h"

namespace agentserve::tools {

struct BuiltinToolDeps {
  memory::SessionStore* sessions = nullptr;  // null: no memory tools (a server without persistence)
  MemoryToolLimits memory_limits;
  HttpToolsConfig http_tools;
  net::HttpClient* http_client = nullptr;  // required when http_tools.tools is not empty
  WallClock clock = [] { return std::chrono::system_clock::now(); };
};

// InvalidArgument when HTTP tools are declared without a client, or when a tool fails to register (a name
// clash between an HTTP tool and a built-in, for one).
Status register_builtin_tools(ToolRegistry& registry, BuiltinToolDeps deps);

}  // namespace agentserve::tools
