// ModeratedTurnSink: moderation between a TurnLoop and the driver's sink, so a driver (a server session, the
// chat completions handler) gets every moderation check by wrapping its sink and its loop options:
//   - text deltas pass a ModerationGate (kind output_text) and reach the inner sink only once their window
//     passed; reasoning deltas likewise (kind reasoning, same windows) when check_reasoning is set;
//   - every other event (tool calls, tool progress, commits, on_done) is queued behind the text before it, so
//     the inner sink sees the loop's order, and a commit holding a step's text is forwarded only after all of
//     that text passed;
//   - approval_hook(): a call's {"name", "arguments"} is checked (kind tool_arguments) before any tool runs
//   or
//     a client call goes out; flagged (or a failure under fail-closed) denies it and the loop ends blocked;
//   - tool_runner_hook(): a server tool's result is checked (kind tool_result) before it goes back to the
//     model; flagged -> the model gets an error result saying it was withheld, and the response goes on;
//   - a malformed call's raw text (on_tool_call_error) is checked like tool arguments before it is forwarded.
// A flagged window (or flagged malformed-call text) blocks the response: nothing of it or after it is ever
// forwarded, the loop is cancelled through set_cancel's callback, queued commits are dropped (the blocked
// text is never committed as an assistant message), on_blocked reports what was blocked, and on_done follows
// with status blocked, the categories in its error, and no token ids (they would hold the blocked text).
//
// Threading: the sink's methods are called by the loop on the driver's executor; verdicts and tool results
// hop onto that executor before they touch anything, so on_blocked and every inner-sink call run there too.
// It must never forward text, reasoning or a commit before the check covering it passed, and never forward
// anything but on_done after a block.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "agent/moderation_client.h"
#include "agent/moderation_gate.h"
#include "agent/turn_loop.h"

namespace agentserve::agent {

// Starts one check of `text` as `kind` and calls `done` once, from any thread. moderation_checker() binds a
// ModerationClient; tests pass fakes.
using KindChecker =
    std::function<void(ModerationKind kind, std::string text, std::function<void(ModerationVerdict)> done)>;

// A KindChecker on `client` (which must outlive every check): each check is `base` (tenant, session id,
// response id) with the kind and text filled in, fail-open as the tenant's policy says.
KindChecker moderation_checker(ModerationClient& client, ModerationRequest base, bool fail_open);

struct ModeratedTurnOptions {
  ModerationGateOptions gate;        // windows for output text and reasoning
  bool check_reasoning = true;       // false: reasoning is forwarded unchecked (a driver that never sends it)
  bool check_tool_arguments = true;  // false: approval_hook() approves every call
  bool check_tool_results = false;   // false: tool_runner_hook() returns the runner unchanged
};

// What the driver reports as `moderation.blocked`.
struct ModerationBlock {
  ModerationKind kind = ModerationKind::kOutputText;
  std::vector<std::string> categories;  // empty for a failure
  ModerationFailure failure = ModerationFailure::kNone;
  std::string detail;  // the failure's detail
  // "blocked": the response ended with status blocked. "withheld": a tool result was replaced by an error
  // and the response went on.
  std::string action;
};

// The block a verdict that was not allowed makes (drivers that check text themselves, e.g. user input).
ModerationBlock moderation_block(ModerationKind kind, const ModerationVerdict& verdict, std::string action);
// The error a blocked outcome carries: "blocked by moderation (<kind>: <categories or failure>)".
Status moderation_block_status(const ModerationBlock& block);

class ModeratedTurnSink final : public TurnSink, public std::enable_shared_from_this<ModeratedTurnSink> {
 public:
  using BlockedCallback = std::function<void(const ModerationBlock&)>;

  // `inner` must outlive this sink. `post` is the driver's executor (the loop's). `on_blocked` may be empty.
  // InvalidArgument for a zero window, or a missing executor or checker.
  static Result<std::shared_ptr<ModeratedTurnSink>> create(TurnSink& inner, Executor post,
                                                           KindChecker checker, ModeratedTurnOptions options,
                                                           BlockedCallback on_blocked);
  ~ModeratedTurnSink() override;

  // How a block stops generation, usually [weak loop] { if (auto l = weak.lock()) l->cancel(); }: set once
  // the loop exists. Without it a block still forwards nothing more, but the loop runs to its own end.
  void set_cancel(std::function<void()> cancel) { cancel_ = std::move(cancel); }

  // Loop hooks; they hold the sink weakly (a check finishing after the sink is gone still answers the loop).
  // `next` (may be empty) is asked after moderation approved a call.
  ToolApproval approval_hook(ToolApproval next = {});
  ToolRunner tool_runner_hook(ToolRunner inner);
  // Sets options.approve and options.run_tool to the hooks above, wrapping what was there.
  void wrap(TurnLoopOptions& options);

  bool blocked() const { return blocked_.has_value(); }

  void on_text_delta(std::string_view delta) override;
  void on_reasoning_delta(std::string_view delta) override;
  void on_tool_call(const TurnToolCall& call) override;
  void on_requires_action(std::span<const std::string> call_ids,
                          std::chrono::steady_clock::time_point deadline) override;
  void on_tool_started(const TurnToolCall& call) override;
  void on_tool_completed(const TurnToolCall& call, const tools::ToolResult& result) override;
  void on_tool_call_error(const Status& error, std::string_view raw) override;
  void on_step_committed(const StepCommit& commit) override;
  void on_done(const TurnOutcome& outcome) override;

 private:
  // One unit of the inner sink's stream, forwarded strictly in order: a run of held text or reasoning (with
  // its gate), or one event, ready at once or after its own check.
  struct Segment {
    uint64_t id = 0;
    ModerationKind kind = ModerationKind::kOutputText;  // of a gated run
    std::unique_ptr<ModerationGate> gate;               // null for an event
    std::string released;   // passed by the gate, not yet forwarded (an earlier segment is still held)
    bool closed = false;    // no more deltas go into this run's gate
    bool complete = false;  // gate finished, or event ready
    std::function<void(TurnSink&)> event;
  };

  ModeratedTurnSink(TurnSink& inner, Executor post, KindChecker checker, ModeratedTurnOptions options,
                    BlockedCallback on_blocked);

  bool accepting();
  void push_delta(ModerationKind kind, std::string_view delta);
  void close_open_gate();
  void enqueue(std::function<void(TurnSink&)> event, bool ready = true);
  Segment* find(uint64_t id);
  void pump();
  void block(ModerationBlock block);
  void deliver_done(TurnOutcome outcome);
  void forward_blocked_done(TurnOutcome outcome);

  TurnSink& inner_;
  Executor post_;
  KindChecker checker_;
  ModeratedTurnOptions options_;
  BlockedCallback on_blocked_;
  std::function<void()> cancel_;

  std::deque<std::unique_ptr<Segment>> segments_;
  // Segments taken off the queue inside a gate callback: a gate must not be destroyed inside its own
  // callback, so they are freed at the next entry from the loop.
  std::vector<std::unique_ptr<Segment>> retired_;
  uint64_t next_id_ = 0;
  bool pumping_ = false;
  std::optional<ModerationBlock> blocked_;      // this sink blocked the response
  std::optional<ModerationBlock> denied_call_;  // the approval hook refused a call (the loop ends blocked)
  std::optional<TurnOutcome> loop_outcome_;     // on_done arrived, not yet forwarded
  bool done_forwarded_ = false;
};

}  // namespace agentserve::agent
