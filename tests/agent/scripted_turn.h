// Test doubles for driving a TurnLoop without a model: a manual strand the test thread runs, and a generator
// that streams scripted text the way the engine would (deltas, the script's token ids, <|im_end|>, usage).
// They must never sleep or spawn threads: every task runs on the thread that calls run_one/run_until, so
// tests decide the interleaving.
#pragma once

#include <doctest/doctest.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "agent/turn_generator.h"
#include "agent/turn_loop.h"
#include "tests/agent/qwen3_tokenizer.h"

namespace agentserve::agent::testing {

// The session's strand: tasks posted from any thread wait until the test thread runs them, one at a time.
class ManualExecutor {
 public:
  Executor executor() {
    return [this](std::function<void()> task) {
      {
        std::lock_guard lock(mutex_);
        tasks_.push_back(std::move(task));
      }
      wake_.notify_one();
    };
  }
  bool empty() {
    std::lock_guard lock(mutex_);
    return tasks_.empty();
  }
  // Runs one task, waiting up to `timeout` for it; false if none came.
  bool run_one(std::chrono::milliseconds timeout = std::chrono::milliseconds(0)) {
    return run_next(std::chrono::steady_clock::now() + timeout);
  }
  // Runs tasks until `done()`; false if no task came before the deadline.
  bool run_until(const std::function<bool()>& done,
                 std::chrono::milliseconds timeout = std::chrono::milliseconds(20000)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!done())
      if (!run_next(deadline)) return false;
    return true;
  }

 private:
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> tasks_;

  bool run_next(std::chrono::steady_clock::time_point deadline) {
    std::function<void()> task;
    {
      std::unique_lock lock(mutex_);
      if (!wake_.wait_until(lock, deadline, [&] { return !tasks_.empty(); })) return false;
      task = std::move(tasks_.front());
      tasks_.pop_front();
    }
    task();
    return true;
  }
};

// "Generates" the next script per request, synchronously inside start(): deltas of `piece` bytes, the first
// carrying the script's token ids, then a finished event with <|im_end|> and the usage. A script made by
// hanging(text) streams `text` and then never finishes: it waits for cancel(), as a long generation would.
class ScriptedGenerator final : public TurnGenerator {
 public:
  static std::string hanging(const std::string& text) { return text + kHang; }

  explicit ScriptedGenerator(std::vector<std::string> scripts, std::size_t piece = 7)
      : scripts_(std::move(scripts)), piece_(piece) {}

  Result<engine::RequestId> start(engine::GenerationRequest request) override {
    if (next_ >= scripts_.size()) return Status::failed_precondition("no script left");
    std::string script = scripts_[next_++];
    const bool hang = script.ends_with(kHang);
    if (hang) script.resize(script.size() - std::string_view(kHang).size());
    prompts.push_back(request.prompt);
    constraints.push_back(request.constraint != nullptr);
    const engine::RequestId id = next_;
    const std::vector<int32_t> ids = qwen3_tokenizer().encode(script);
    for (std::size_t at = 0; at < script.size(); at += piece_) {
      engine::GenerationEvent event;
      event.request_id = id;
      event.text = script.substr(at, piece_);
      if (at == 0) event.tokens = ids;
      request.on_event(event);
    }
    if (hang) {
      hanging_ = std::move(request.on_event);
      return id;
    }
    engine::GenerationEvent last;
    last.request_id = id;
    last.finished = true;
    last.finish_reason = engine::FinishReason::kStop;
    last.tokens = {*qwen3_tokenizer().token_to_id("<|im_end|>")};
    last.usage.prompt_tokens = static_cast<int>(request.prompt.size());
    last.usage.completion_tokens = static_cast<int>(ids.size()) + 1;
    request.on_event(last);
    return id;
  }
  void cancel(engine::RequestId) override {
    cancelled = true;
    if (!hanging_) return;
    engine::GenerationEvent event;
    event.finished = true;
    event.finish_reason = engine::FinishReason::kCancelled;
    hanging_(event);
    hanging_ = nullptr;
  }
  const engine::Tokenizer& tokenizer() const override { return qwen3_tokenizer(); }

  std::string prompt_text(std::size_t step) const { return qwen3_tokenizer().decode(prompts.at(step)); }

  std::vector<std::vector<int32_t>> prompts;  // each request's prompt ids, in order
  std::vector<bool> constraints;              // whether each request carried a token constraint
  bool cancelled = false;

 private:
  // A byte no script holds, so a script can only end with it through hanging().
  static constexpr const char* kHang = "\x01hang";

  std::vector<std::string> scripts_;
  std::size_t piece_;
  std::size_t next_ = 0;
  engine::EventCallback hanging_;
};

}  // namespace agentserve::agent::testing
