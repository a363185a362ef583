#include "agent/moderation_gate.h"

#include <algorithm>
#include <optional>

namespace agentserve::agent {

// The text is kept once, with the byte offset where each token starts, so a window is a substring and
// pushing a token costs no allocation beyond amortised growth.
struct ModerationGate::State : std::enable_shared_from_this<ModerationGate::State> {
  struct Window {
    size_t first_token;  // first token this window releases
    size_t end_token;    // one past its last token
    std::optional<ModerationVerdict> verdict;
  };

  ModerationGateOptions options;
  ModerationChecker checker;
  GateExecutor executor;
  ModerationGateCallbacks callbacks;

  std::string text;
  std::vector<size_t> token_start;  // byte offset of each token in `text`
  size_t next_window_start = 0;     // first token not yet in a started window
  size_t released = 0;              // tokens released so far
  std::deque<Window> windows;       // started and not yet released, in order
  size_t in_flight = 0;
  bool finishing = false;
  bool done = false;  // blocked, finished, or destroyed: nothing more happens
  bool is_blocked = false;

  size_t byte_at(size_t token) const { return token < token_start.size() ? token_start[token] : text.size(); }
  std::string_view tokens(size_t first, size_t end) const {
    return std::string_view(text).substr(byte_at(first), byte_at(end) - byte_at(first));
  }

  void start_window(size_t end_token) {
    const size_t first = next_window_start;
    const size_t check_from = first >= options.overlap_tokens ? first - options.overlap_tokens : 0;
    windows.push_back({first, end_token, std::nullopt});
    next_window_start = end_token;
    ++in_flight;
    std::weak_ptr<State> weak = weak_from_this();
    GateExecutor post = executor;
    checker(std::string(tokens(check_from, end_token)), [weak, post, first](ModerationVerdict verdict) {
      post([weak, first, verdict = std::move(verdict)]() mutable {
        if (auto self = weak.lock()) self->on_verdict(first, std::move(verdict));
      });
    });
  }

  void on_verdict(size_t first_token, ModerationVerdict verdict) {
    --in_flight;
    if (done) return;
    for (auto& w : windows)
      if (w.first_token == first_token) w.verdict = std::move(verdict);
    release_ready();
  }

  void release_ready() {
    while (!done && !windows.empty() && windows.front().verdict) {
      Window w = std::move(windows.front());
      windows.pop_front();
      if (!w.verdict->allowed) {
        done = true;
        is_blocked = true;
        if (callbacks.on_blocked) callbacks.on_blocked(*w.verdict);
        return;
      }
      released = w.end_token;
      if (callbacks.on_release && w.end_token > w.first_token)
        callbacks.on_release(tokens(w.first_token, w.end_token));
    }
    maybe_finished();
  }

  void maybe_finished() {
    if (done || !finishing || !windows.empty() || next_window_start != token_start.size()) return;
    done = true;
    if (callbacks.on_finished) callbacks.on_finished();
  }
};

Result<std::unique_ptr<ModerationGate>> ModerationGate::create(ModerationGateOptions options,
                                                               ModerationChecker checker,
                                                               GateExecutor executor,
                                                               ModerationGateCallbacks callbacks) {
  if (options.window_tokens == 0)
    return Status::invalid_argument("moderation window must be at least one token");
  if (!checker || !executor)
    return Status::invalid_argument("moderation gate needs a checker and an executor");
  auto state = std::make_shared<State>();
  state->options = options;
  state->checker = std::move(checker);
  state->executor = std::move(executor);
  state->callbacks = std::move(callbacks);
  return std::unique_ptr<ModerationGate>(new ModerationGate(std::move(state)));
}

ModerationGate::~ModerationGate() {
  state_->done = true;
}

void ModerationGate::push(std::string_view token_text) {
  State& s = *state_;
  if (s.done || s.finishing) return;
  s.token_start.push_back(s.text.size());
  s.text.append(token_text);
  if (s.token_start.size() - s.next_window_start >= s.options.window_tokens)
    s.start_window(s.token_start.size());
}

void ModerationGate::finish() {
  State& s = *state_;
  if (s.done || s.finishing) return;
  s.finishing = true;
  if (s.next_window_start < s.token_start.size()) s.start_window(s.token_start.size());
  s.maybe_finished();
}

bool ModerationGate::blocked() const {
  return state_->is_blocked;
}
size_t ModerationGate::released_tokens() const {
  return state_->released;
}
size_t ModerationGate::checks_in_flight() const {
  return state_->in_flight;
}

void moderate_once(const ModerationChecker& checker, std::string text, const GateExecutor& executor,
                   std::function<void(const ModerationVerdict&)> done) {
  checker(std::move(text), [executor, done = std::move(done)](ModerationVerdict verdict) mutable {
    executor([done = std::move(done), verdict = std::move(verdict)] { done(verdict); });
  });
}

}  // namespace agentserve::agent
