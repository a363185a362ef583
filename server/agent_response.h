// AgentResponse: one response.create of a session, run as an agent::TurnLoop on the engine, and the loop's
// TurnSink turned into protocol events (docs/protocol.md): text and reasoning deltas, client calls with
// response.requires_action and a deadline timer, server tool executions, malformed-call errors, and
// response.done with per-step usage. Each step the loop commits is appended to the session and persisted
// with the session's token ids at that point, so a restart resumes mid-loop. When the response waits for a
// client (a tool result, the next message) the session's tokens are pinned in the engine for the config's
// idle pin window.
//
// Input: with check_input, the session's new user items are checked (kind input) before the loop starts;
// flagged (or failed under fail-closed), they are removed from the session unseen by the model and the
// response ends blocked. With check_tool_results, a client tool's output is checked (kind tool_result)
// before the loop gets it; flagged, the model gets an error result saying it was withheld.
//
// Open calls: a step's assistant message is committed with its calls' ids. When a response starts on a
// session whose last message is such a step with no results (the server restarted, or the response was
// cancelled, while it waited for the client), it first announces those calls again with the same ids and
// waits for their outputs (server/open_tool_calls.h), then commits them and runs the loop from there.
//
// Threading: the loop and every sink call run on one executor (the strand of the connection that started
// the response); the session's state is touched under Session::mutex, which is never held while the loop
// runs. It never blocks that executor, and never writes to a socket itself (events go through the
// SessionRegistry to whichever connection is attached).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "agent/moderated_turn_sink.h"
#include "agent/turn_generator.h"
#include "agent/turn_loop.h"
#include "base/status.h"
#include "engine/sampling_params.h"
#include "server/open_tool_calls.h"
#include "server/protocol.h"
#include "server/server_context.h"
#include "server/session_registry.h"

namespace agentserve::server {

// Runs `fn` on the response's executor at `when` (the transport's timer); fn must still check whether it
// is relevant then.
using Scheduler = std::function<void(std::chrono::steady_clock::time_point when, std::function<void()> fn)>;

// The session's tool set, checked against the server's registry: declarations (flat or nested form, server
// ones registered), and tool_choice naming one of them. A server tool's declaration may carry `parameters`:
// a narrower schema the model is shown and constrained to (e.g. a fixed memory key); the arguments must
// still pass the registered schema before the tool runs, so narrowing never widens what the tool accepts.
Result<std::vector<tools::ToolSpec>> session_tools(const ServerContext& context, const SessionConfig& config);
Result<agent::ToolChoice> session_tool_choice(const SessionConfig& config,
                                              const std::vector<tools::ToolSpec>& tools);

// The session's conversation as the agent layer renders it: instructions first as the system message.
std::vector<agent::Message> agent_messages(const SessionConfig& config,
                                           const std::vector<ConversationMessage>& messages);

class AgentResponse final : public agent::TurnSink, public std::enable_shared_from_this<AgentResponse> {
 public:
  // Builds the loop for `session` (caller holds session.mutex); nothing runs until start().
  static Result<std::shared_ptr<AgentResponse>> create(ServerContext& context,
                                                       std::shared_ptr<Session> session,
                                                       std::string response_id,
                                                       engine::SamplingParams sampling, agent::Executor post,
                                                       Scheduler schedule);
  // Starts the first step. Must be called on the executor, without session.mutex held. An error means
  // nothing ran and no event went out (the caller reports it and clears session.running).
  Status start();
  // From any thread: deliver a client tool's output / cancel. `on_result` (on the executor) gets NotFound
  // for a call id the response is not waiting for.
  void submit_tool_output(FunctionCallOutput output, std::function<void(Status)> on_result);
  void cancel();

  const std::string& id() const { return response_id_; }

  // agent::TurnSink (on the executor).
  void on_text_delta(std::string_view delta) override;
  void on_reasoning_delta(std::string_view delta) override;
  void on_tool_call(const agent::TurnToolCall& call) override;
  void on_requires_action(std::span<const std::string> call_ids,
                          std::chrono::steady_clock::time_point deadline) override;
  void on_tool_started(const agent::TurnToolCall& call) override;
  void on_tool_completed(const agent::TurnToolCall& call, const tools::ToolResult& result) override;
  void on_tool_call_error(const Status& error, std::string_view raw) override;
  void on_step_committed(const agent::StepCommit& commit) override;
  void on_done(const agent::TurnOutcome& outcome) override;

  AgentResponse(ServerContext& context, std::shared_ptr<Session> session, std::string response_id,
                agent::Executor post, Scheduler schedule);

 private:
  // The engine, with the last step's prompt and sampled tokens recorded: the session's token ids when a
  // step is committed.
  class RecordingGenerator final : public agent::TurnGenerator {
   public:
    explicit RecordingGenerator(engine::Engine& engine) : engine_(engine) {}
    Result<engine::RequestId> start(engine::GenerationRequest request) override;
    void cancel(engine::RequestId id) override { engine_.cancel(id); }
    const engine::Tokenizer& tokenizer() const override { return engine_.tokenizer(); }
    // Prompt + completion of the last step. Only between steps (the sink's calls) is it whole.
    std::vector<int32_t> tokens() const;

   private:
    struct Recorded {
      std::mutex mutex;  // the engine's thread appends while the executor reads
      std::vector<int32_t> tokens;
    };
    engine::Engine& engine_;
    // Shared with the request's callback: a cancelled request's last event may come after the response
    // (and this generator) is gone.
    std::shared_ptr<Recorded> recorded_ = std::make_shared<Recorded>();
  };

  enum class Phase { kCreated, kCheckingInput, kAnsweringOpenCalls, kLooping, kDone };

  Status moderate(agent::TurnLoopOptions& options);
  void make_loop(std::vector<agent::Message> messages, std::vector<int32_t> previous_ids);
  agent::TurnSink& loop_sink() { return moderated_ ? static_cast<agent::TurnSink&>(*moderated_) : *this; }
  // After the input check: answers open calls first, else starts the loop.
  Status begin();
  void block_input(const agent::ModerationVerdict& verdict, const std::vector<size_t>& checked);
  // Ends a response whose loop never ran (input blocked, cancelled or failed before it).
  void finish_without_loop(agent::TurnStatus status, Status error = {});
  Status deliver_tool_output(FunctionCallOutput output);
  void announce_open_calls();
  void expire_open_calls();
  void answer_open_calls();
  // Persists the session's uncommitted messages with `tokens`; caller holds the lock.
  void commit_locked(int step, std::vector<int32_t> tokens);
  // Commits an assistant step held back until its calls' ids were attached; caller holds the lock.
  void flush_pending_calls_locked();
  void on_blocked(const agent::ModerationBlock& block);
  // Pins the session's current tokens for the idle window (waiting for a client); caller holds the lock.
  void pin_while_idle(Session& session, std::vector<int32_t> tokens);
  void emit(nlohmann::json event);

  ServerContext& context_;
  std::shared_ptr<Session> session_;
  std::string response_id_;
  agent::Executor post_;
  Scheduler schedule_;
  RecordingGenerator generator_;
  std::shared_ptr<agent::ModeratedTurnSink> moderated_;  // in front of this sink when moderation is on
  std::shared_ptr<agent::TurnLoop> loop_;
  std::optional<agent::TurnLoopOptions> options_;  // until the loop is made
  Phase phase_ = Phase::kCreated;
  OpenToolCalls open_calls_;  // the last step's calls without results (see "Open calls" above)
  std::set<std::string> awaited_ids_;  // client calls announced and not completed
  // Index in session.messages of the assistant step whose calls still get their ids, and that step.
  std::optional<size_t> pending_calls_message_;
  int pending_calls_step_ = 0;
  std::string text_;
  uint64_t deadline_epoch_ = 0;  // a requires_action timer only expires the wait it was started for
};

}  // namespace agentserve::server
