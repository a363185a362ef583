// TurnLoop: one response of a session, run to its end: render the conversation -> safe prompt tokens ->
// generate (streaming) -> parse reasoning, text and <tool_call>s -> run server tools (in parallel) and ask
// the client for client tools -> append the results -> generate again, until a final answer, max_steps,
// cancel, or an error. Events go out through a TurnSink; the driver (a server session, a test) owns the
// transport, the timers and the transcript store.
//
// Threading: every piece of loop state is touched only on the driver's executor (`post`, e.g. the
// session's strand). Generator events and tool completions hop onto it; the public methods must be called
// on it too. The sink is called on it. Nothing in the loop ever blocks: a client tool that never answers is
// resolved by the driver's own timer through expire_tool_calls(), as an error result, never a deadlock.
//
// Moderation sits between the loop and the sink (a TurnSink decorator holding text back) and in front of
// every tool: with an `approve` callback, no tool runs and no client call goes out until the callback
// approved it; a denial ends the response as blocked, and that step is not committed.
//
// tool_choice: auto renders the tools and runs what the model calls. none renders no tools, and a call the
// model makes anyway is refused like a malformed one (never run, never passed off as text). required and
// {name} constrain the first step's decoding to a call (of that tool) through `constraint_factory`; without
// one, start() refuses them with FailedPrecondition. Later steps run as auto, so the loop can end.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "agent/chat_template.h"
#include "agent/messages.h"
#include "agent/tool_call_parser.h"
#include "agent/turn_generator.h"
#include "base/status.h"
#include "engine/request.h"
#include "tools/tool_registry.h"

namespace agentserve::agent {

enum class ToolChoiceMode { kAuto, kNone, kRequired, kNamed };

struct ToolChoice {
  ToolChoiceMode mode = ToolChoiceMode::kAuto;
  std::string name;  // kNamed only
};

enum class TurnStatus { kCompleted, kCancelled, kFailed, kIncomplete, kBlocked };
const char* turn_status_name(TurnStatus status);

// One call the model made, as the loop handles it.
struct TurnToolCall {
  std::string call_id;
  std::string name;
  Json arguments;  // always an object
  tools::ToolExecution execution = tools::ToolExecution::kServer;
};

struct StepUsage {
  int prompt_tokens = 0;
  int reused_tokens = 0;      // prompt ids kept from the session's previous sequence (not re-tokenized)
  int cached_tokens = 0;      // prompt tokens whose KV the engine found in its prefix cache
  int recomputed_tokens = 0;  // prompt tokens prefilled: prompt - cached
  int completion_tokens = 0;
};

struct TurnOutcome {
  TurnStatus status = TurnStatus::kCompleted;
  Status error;         // why, for failed / incomplete / blocked
  int steps = 0;        // generations run
  engine::Usage usage;  // summed over the steps
  std::vector<StepUsage> step_usage;
  // The session's token ids after this response: the last step's prompt and what it generated.
  std::vector<int32_t> token_ids;
};

// The content of the tool message the model reads for a result: the output, after "Error: " when the call
// failed. One place, so a step answered after a restart renders exactly as a live one (and the prefix
// cache keeps matching).
std::string tool_result_content(const tools::ToolResult& result);

// A fresh call id ("call_" + 24 hex digits) for a call the model wrote without one.
std::string new_call_id();

// Messages to append to the transcript: the assistant message of a step as soon as its calls are
// approved, then the step's tool results once all are in. A driver that stores each commit atomically
// resumes mid-loop after a restart.
struct StepCommit {
  int step = 0;  // 1-based
  std::vector<Message> messages;
};

// The loop's output. Calls arrive on the executor, in order; on_done exactly once and last.
class TurnSink {
 public:
  virtual ~TurnSink() = default;
  virtual void on_text_delta(std::string_view delta) = 0;
  virtual void on_reasoning_delta(std::string_view delta) = 0;
  // An approved call: a server call is about to run, a client call is for the client to run.
  virtual void on_tool_call(const TurnToolCall& call) = 0;
  // The client calls of this step, all emitted; results are expected by `deadline`.
  virtual void on_requires_action(std::span<const std::string> call_ids,
                                  std::chrono::steady_clock::time_point deadline) = 0;
  virtual void on_tool_started(const TurnToolCall& call) = 0;
  virtual void on_tool_completed(const TurnToolCall& call, const tools::ToolResult& result) = 0;
  // A call that could not be parsed or is not allowed (raw: the text between the tags).
  virtual void on_tool_call_error(const Status& error, std::string_view raw) = 0;
  virtual void on_step_committed(const StepCommit& commit) = 0;
  virtual void on_done(const TurnOutcome& outcome) = 0;
};

// Runs a server tool: the server passes its ToolRegistry::execute. `done` exactly once, on any thread.
using ToolRunner = std::function<void(const tools::ToolSpec& spec, const Json& arguments,
                                      const tools::ToolContext& context, tools::ToolDone done)>;
// Moderation of a call before anything runs or goes out: `decide` exactly once, on any thread, with OK to
// go ahead or the reason it is refused.
using ToolApproval = std::function<void(const TurnToolCall& call, std::function<void(Status)> decide)>;
// A decoding constraint for "exactly one call of one of these tools" (agent/tool_call_constraint).
using ToolCallConstraintFactory = std::function<Result<std::shared_ptr<engine::TokenConstraint>>(
    std::span<const tools::ToolSpec* const> allowed)>;
using Executor = std::function<void(std::function<void()>)>;

struct TurnLoopOptions {
  std::vector<tools::ToolSpec> tools;  // the session's tools; rendered in this order
  ToolChoice tool_choice;
  bool enable_thinking = true;
  int max_steps = 8;            // generations per response
  bool retry_malformed = true;  // one retry per response, the error shown to the model as a tool result
  std::chrono::milliseconds client_tool_timeout{60000};
  engine::SamplingParams sampling;
  std::string cache_salt;
  tools::ToolContext context;                    // tenant, agent and session; call_id is filled per call
  ToolRunner run_tool;                           // required when a server tool is called
  ToolApproval approve;                          // optional
  ToolCallConstraintFactory constraint_factory;  // optional; see tool_choice above
};

class TurnLoop : public std::enable_shared_from_this<TurnLoop> {
 public:
  // `messages`: the session's conversation so far, ending with what this response answers. `previous_ids`:
  // the session's token ids (empty for none). The generator and sink must outlive the loop's work.
  static std::shared_ptr<TurnLoop> create(TurnGenerator& generator, TurnSink& sink, Executor post,
                                          TurnLoopOptions options, std::vector<Message> messages,
                                          std::vector<int32_t> previous_ids = {});

  // Starts the first step. InvalidArgument / FailedPrecondition for options it cannot honour (nothing
  // runs, no on_done); later failures end the response through on_done.
  Status start();
  // Delivers a client tool's output. NotFound for a call id this response is not waiting for.
  Status submit_tool_output(std::string_view call_id, std::string output, bool is_error);
  // Resolves every client call still waiting as an error result (the driver's deadline timer); returns
  // how many it resolved.
  int expire_tool_calls();
  // Ends the response as cancelled (a running generation is cancelled in the engine; tools still running
  // finish unseen).
  void cancel();
  bool done() const { return phase_ == Phase::kDone; }

 private:
  enum class Phase { kIdle, kGenerating, kApproving, kRunningTools, kDone };
  struct PendingCall {
    TurnToolCall call;
    std::optional<tools::ToolResult> result;
    bool approved = false;
  };

  TurnLoop(TurnGenerator& generator, TurnSink& sink, Executor post, TurnLoopOptions options,
           std::vector<Message> messages, std::vector<int32_t> previous_ids);

  Status begin_step();
  void on_generation_event(uint64_t step_token, const engine::GenerationEvent& event);
  void handle_parser_events(std::vector<TurnEvent>& events);
  void end_generation(const engine::GenerationEvent& event);
  void reject_step(const Status& error);
  void start_calls();
  void on_approval(std::size_t index, const Status& decision);
  void dispatch_calls();
  void resolve(std::size_t index, tools::ToolResult result);
  void finish_calls();
  void finish(TurnStatus status, Status error = {});
  const tools::ToolSpec* find_tool(std::string_view name) const;
  Json render_tools() const;

  TurnGenerator& generator_;
  TurnSink& sink_;
  Executor post_;
  TurnLoopOptions options_;
  std::vector<Message> messages_;
  std::vector<int32_t> session_ids_;

  Phase phase_ = Phase::kIdle;
  uint64_t step_token_ = 0;  // tells a late event of an abandoned generation from the current one
  engine::RequestId request_id_ = 0;
  ToolCallParser parser_;
  Message assistant_;  // the step being generated
  std::vector<TurnToolCall> calls_;
  std::vector<std::pair<Status, std::string>> call_errors_;
  std::vector<PendingCall> pending_;
  std::chrono::steady_clock::time_point deadline_;
  bool retried_ = false;
  int call_counter_ = 0;
  StepUsage step_usage_;
  TurnOutcome outcome_;
};

}  // namespace agentserve::agent
