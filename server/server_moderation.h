// ServerModeration: the server's one moderation setup, built at `serve` start from agent::ModerationConfig
// (the config file's "moderation" object under the --moderation-* flags). It owns the outbound HTTP client
// (on a single thread of its own: HttpServer keeps its io_context private, and a slow webhook then never
// delays a socket), the ModerationClient and the ModerationStats that /metrics exports. Drivers use it per
// response: a WebSocket session wraps its TurnLoop's sink and options, the chat completions handler gates
// the engine's text, and either asks check() for one whole text (user input, a client tool's output).
//
// Fail-open is decided per tenant: the config's default, overridden to true by a tenant whose limits carry
// moderation_fail_open. It must never hand out a path that skips a configured check, and never block the
// caller: every verdict arrives through the caller's executor.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include "agent/moderated_turn_sink.h"
#include "agent/moderation_client.h"
#include "agent/moderation_config.h"
#include "agent/moderation_gate.h"
#include "agent/turn_loop.h"
#include "base/status.h"
#include "net/http_client.h"
#include "server/auth.h"

namespace agentserve::server {

// Who a check is for: the tenant (its policy) and the ids the webhook sees in "metadata".
struct ModerationScope {
  const Tenant* tenant = nullptr;  // null: the default tenant with the config's policy
  std::string session_id;
  std::string response_id;
};

class ServerModeration {
 public:
  // InvalidArgument when `config` is not enabled (no url) or the client refuses its url or a secret.
  static Result<std::unique_ptr<ServerModeration>> create(agent::ModerationConfig config);
  ~ServerModeration();  // stops the moderation thread; pending checks end with Cancelled -> failure
  ServerModeration(const ServerModeration&) = delete;
  ServerModeration& operator=(const ServerModeration&) = delete;

  const agent::ModerationConfig& config() const { return config_; }
  const agent::ModerationStats& stats() const { return stats_; }

  // The tenant's policy: true when a failure lets text through.
  bool fail_open(const Tenant* tenant) const;
  // A checker bound to the scope (tenant policy, ids); it stays valid as long as this object.
  agent::KindChecker checker(const ModerationScope& scope);

  // Wraps one response of a TurnLoop: returns the sink to give the loop in place of `inner` and rewrites
  // `options` (approve, run_tool) so tool arguments and results are checked as configured. `on_blocked` is
  // what the driver turns into a `moderation.blocked` event. The caller sets the cancel hook on the result
  // once the loop exists.
  Result<std::shared_ptr<agent::ModeratedTurnSink>> wrap_turn(
      agent::TurnSink& inner, agent::Executor post, const ModerationScope& scope,
      agent::TurnLoopOptions& options, agent::ModeratedTurnSink::BlockedCallback on_blocked);

  // A streaming gate for raw output text (the chat completions handler), windows as configured.
  Result<std::unique_ptr<agent::ModerationGate>> gate(const ModerationScope& scope, agent::GateExecutor post,
                                                      agent::ModerationGateCallbacks callbacks);

  // A response (or a request's input) ended blocked: counted here so every driver's blocks reach /metrics
  // (wrap_turn counts the TurnLoop's by itself).
  void count_blocked() { blocked_responses_.fetch_add(1, std::memory_order_relaxed); }
  uint64_t blocked_responses() const { return blocked_responses_.load(std::memory_order_relaxed); }

  // Whether the config asks for user input / tool results to be checked before use.
  bool checks_input() const { return config_.check_input; }
  bool checks_tool_results() const { return config_.check_tool_results; }
  // One whole text of `kind`; `done` runs once through `post`.
  void check(const ModerationScope& scope, agent::ModerationKind kind, std::string text,
             agent::GateExecutor post, std::function<void(const agent::ModerationVerdict&)> done);

 private:
  explicit ServerModeration(agent::ModerationConfig config);

  agent::ModerationConfig config_;
  agent::ModerationStats stats_;
  std::atomic<uint64_t> blocked_responses_{0};
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
  std::unique_ptr<net::HttpClient> http_;
  std::unique_ptr<agent::ModerationClient> client_;
  std::thread thread_;
};

// Why a verdict blocks, as clients and metrics see it: "flagged", or the failure's name ("timeout", ...).
std::string moderation_block_reason(const agent::ModerationVerdict& verdict);
std::string moderation_block_reason(const agent::ModerationBlock& block);

}  // namespace agentserve::server
