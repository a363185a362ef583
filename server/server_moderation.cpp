#include "server/server_moderation.h"

#include <utility>

namespace agentserve::server {

Result<std::unique_ptr<ServerModeration>> ServerModeration::create(agent::ModerationConfig config) {
  if (!config.enabled()) return Status::invalid_argument("moderation: no url configured");
  std::unique_ptr<ServerModeration> moderation(new ServerModeration(std::move(config)));
  moderation->http_ = std::make_unique<net::HttpClient>(moderation->io_);
  AS_ASSIGN_OR_RETURN(moderation->client_,
                      agent::ModerationClient::create(
                          *moderation->http_, moderation->config_.client_options(), &moderation->stats_));
  moderation->thread_ = std::thread([io = &moderation->io_] { io->run(); });
  return moderation;
}

ServerModeration::ServerModeration(agent::ModerationConfig config)
    : config_(std::move(config)), work_(boost::asio::make_work_guard(io_)) {}

ServerModeration::~ServerModeration() {
  // The client goes first so its pending checks end (with a failure verdict) while the thread still runs.
  client_.reset();
  http_.reset();
  work_.reset();
  io_.stop();
  if (thread_.joinable()) thread_.join();
}

bool ServerModeration::fail_open(const Tenant* tenant) const {
  return config_.fail_open || (tenant != nullptr && tenant->limits.moderation_fail_open);
}

agent::KindChecker ServerModeration::checker(const ModerationScope& scope) {
  agent::ModerationRequest base;
  base.tenant = scope.tenant != nullptr ? scope.tenant->name : std::string(kDefaultTenant);
  base.session_id = scope.session_id;
  base.response_id = scope.response_id;
  return agent::moderation_checker(*client_, std::move(base), fail_open(scope.tenant));
}

Result<std::shared_ptr<agent::ModeratedTurnSink>> ServerModeration::wrap_turn(
    agent::TurnSink& inner, agent::Executor post, const ModerationScope& scope,
    agent::TurnLoopOptions& options, agent::ModeratedTurnSink::BlockedCallback on_blocked) {
  auto counted = [this, on_blocked = std::move(on_blocked)](const agent::ModerationBlock& block) {
    if (block.action == "blocked") count_blocked();
    if (on_blocked) on_blocked(block);
  };
  AS_ASSIGN_OR_RETURN(auto sink,
                      agent::ModeratedTurnSink::create(inner, std::move(post), checker(scope),
                                                       config_.turn_options(), std::move(counted)));
  sink->wrap(options);
  return sink;
}

Result<std::unique_ptr<agent::ModerationGate>> ServerModeration::gate(
    const ModerationScope& scope, agent::GateExecutor post, agent::ModerationGateCallbacks callbacks) {
  agent::KindChecker kind_checker = checker(scope);
  agent::ModerationChecker text_checker = [kind_checker](std::string text,
                                                         std::function<void(agent::ModerationVerdict)> done) {
    kind_checker(agent::ModerationKind::kOutputText, std::move(text), std::move(done));
  };
  return agent::ModerationGate::create(config_.turn_options().gate, std::move(text_checker), std::move(post),
                                       std::move(callbacks));
}

void ServerModeration::check(const ModerationScope& scope, agent::ModerationKind kind, std::string text,
                             agent::GateExecutor post,
                             std::function<void(const agent::ModerationVerdict&)> done) {
  agent::KindChecker kind_checker = checker(scope);
  agent::ModerationChecker text_checker =
      [kind_checker, kind](std::string t, std::function<void(agent::ModerationVerdict)> d) {
        kind_checker(kind, std::move(t), std::move(d));
      };
  agent::moderate_once(text_checker, std::move(text), post, std::move(done));
}

std::string moderation_block_reason(const agent::ModerationVerdict& verdict) {
  if (verdict.flagged) return "flagged";
  return std::string(agent::moderation_failure_name(verdict.failure));
}

std::string moderation_block_reason(const agent::ModerationBlock& block) {
  if (block.failure == agent::ModerationFailure::kNone) return "flagged";
  return std::string(agent::moderation_failure_name(block.failure));
}

}  // namespace agentserve::server
