// ServerContext: what every connection of one server shares: options, the engine, metrics, auth, the
// session registry, the agent turn loop's tools and tool-call constraint, and the table of live connections
// that shutdown walks. Owned by HttpServer; outlives every connection. Plain pointers to things owned by `serve`, which outlive the server.
//
// It must never own the engine or the stores, and holds no Beast types (only the transport .cpp files
// include Beast).
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <unordered_map>
#include <unordered_set>

#include "base/status.h"
#include "engine/request.h"
#include "server/server_options.h"

namespace agentserve::engine {
class Engine;
class TokenConstraint;
}  // namespace agentserve::engine

namespace agentserve::tools {
class ToolRegistry;
struct ToolSpec;
}  // namespace agentserve::tools

namespace agentserve::server {

class Auth;
class Metrics;
class ServerModeration;
class SessionRegistry;
class WsSession;

struct ServerContext {
  ServerOptions options;
  engine::Engine* engine = nullptr;  // set once the model is loaded (/readyz)
  Metrics* metrics = nullptr;
  std::string model_name;
  // Auth and sessions: always set by `serve` before run(); WsSession and the REST routes use them.
  Auth* auth = nullptr;
  SessionRegistry* sessions = nullptr;
  // The agent turn loop. `tools`: the server-side tools (built-ins, config HTTP tools) that sessions may
  // declare; null: client tools only. `tool_call_constraint`: decoding constrained to one call of the given
  // tools (tool_choice required / named); empty: those choices are refused.
  const tools::ToolRegistry* tools = nullptr;
  std::function<Result<std::shared_ptr<engine::TokenConstraint>>(std::span<const tools::ToolSpec* const>)>
      tool_call_constraint;
  // Moderation of everything the model says (server/server_moderation.h); null when not configured.
  ServerModeration* moderation = nullptr;

  std::atomic<bool> stopping{false};
  // Engine requests of the chat completions (/v1/chat/completions) in flight: the graceful stop waits for
  // them as for WebSocket responses and cancels what is left after the grace period (HttpConnection
  // registers each completion for as long as it lives).
  std::mutex completions_mutex;
  std::unordered_set<engine::RequestId> running_completions;
  std::mutex connections_mutex;
  std::unordered_map<WsSession*, std::weak_ptr<WsSession>> connections;

  size_t live_connections();
};

// The decoding constraint of a forced tool_choice (one call of `allowed`), for a WebSocket session and a
// chat completion alike: FailedPrecondition when this server has no constrained decoding, InvalidArgument
// with the grammar's reason when a schema cannot be followed.
inline Result<std::shared_ptr<engine::TokenConstraint>> forced_call_constraint(
    const ServerContext& context, std::span<const tools::ToolSpec* const> allowed) {
  if (!context.tool_call_constraint)
    return Status::failed_precondition("this server has no constrained decoding for tool_choice");
  auto constraint = context.tool_call_constraint(allowed);
  if (!constraint.ok())
    return Status::invalid_argument("tool_choice forces a call, but its parameters cannot be constrained: " +
                                    constraint.status().message());
  return constraint;
}

}  // namespace agentserve::server
