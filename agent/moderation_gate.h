// ModerationGate: holds streamed text back until the moderation webhook passed it. Text arrives one token
// at a time; every `window_tokens` tokens a check starts on that window plus the last `overlap_tokens` tokens
// before it (so a phrase split across two windows is seen whole by the second check). Checks run while the
// next window accumulates, several may be in flight, and verdicts may return in any order: text is released
// strictly in order, a window only after its own check and every earlier one passed. finish() checks the
// remainder (a shorter last window) and reports finished once everything is released. A window that is not
// allowed (flagged, or a failure under fail-closed) stops the gate: nothing of it or after it is ever
// released, and on_blocked reports the verdict once.
//
// The gate is pure logic: no sockets, no clock. Verdicts come back through the caller's executor (the
// session's strand), so every method and callback runs there, one at a time; the gate itself takes no locks.
// It must never release text whose window has not passed, and never release anything after a block.
#pragma once

#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "agent/moderation_client.h"
#include "base/status.h"

namespace agentserve::agent {

// Runs `task` later on the caller's strand (e.g. asio::post(strand, task)).
using GateExecutor = std::function<void(std::function<void()> task)>;
// Starts a check of `text` (the caller binds kind, tenant and fail-open policy, usually to a
// ModerationClient) and calls `done` once, from any thread.
using ModerationChecker = std::function<void(std::string text, std::function<void(ModerationVerdict)> done)>;

struct ModerationGateOptions {
  size_t window_tokens = 64;   // >= 1
  size_t overlap_tokens = 16;  // tokens of the previous window repeated in the next check
};

struct ModerationGateCallbacks {
  std::function<void(std::string_view text)> on_release;             // in order, only passed text
  std::function<void(const ModerationVerdict& verdict)> on_blocked;  // at most once; ends the gate
  std::function<void()> on_finished;  // after finish(), once all text is released; never after a block
};

class ModerationGate {
 public:
  // InvalidArgument for window_tokens 0 or a missing checker/executor.
  static Result<std::unique_ptr<ModerationGate>> create(ModerationGateOptions options,
                                                        ModerationChecker checker, GateExecutor executor,
                                                        ModerationGateCallbacks callbacks);
  // Verdicts arriving after destruction are dropped: a cancelled response releases nothing more.
  ~ModerationGate();
  ModerationGate(const ModerationGate&) = delete;
  ModerationGate& operator=(const ModerationGate&) = delete;

  // One generated token's text. Ignored after finish() or a block.
  void push(std::string_view token_text);
  // No more tokens: the remainder is checked, and on_finished follows the last release.
  void finish();

  bool blocked() const;
  size_t released_tokens() const;
  size_t checks_in_flight() const;

 private:
  struct State;
  explicit ModerationGate(std::shared_ptr<State> state) : state_(std::move(state)) {}
  std::shared_ptr<State> state_;
};

// One whole text checked before it is used (reasoning sent at once, tool arguments before a tool runs, a tool
// result before it goes back to the model, user input): `done` runs once through `executor`.
void moderate_once(const ModerationChecker& checker, std::string text, const GateExecutor& executor,
                   std::function<void(const ModerationVerdict&)> done);

}  // namespace agentserve::agent
