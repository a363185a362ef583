// ToolWaiter: collects the results a ToolRegistry reports, so a test can wait for them and check that each
// call reported exactly once and on which thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "tools/tool_registry.h"

namespace agentserve::tools::testing {

class ToolWaiter {
 public:
  ToolDone callback() {
    return [this](ToolResult result) {
      std::lock_guard lock(mu_);
      results_.push_back(std::move(result));
      threads_.push_back(std::this_thread::get_id());
      cv_.notify_all();
    };
  }

  // Waits until at least n results arrived or `timeout` passed; returns how many arrived.
  size_t wait_for(size_t n, std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return results_.size() >= n; });
    return results_.size();
  }

  std::vector<ToolResult> results() {
    std::lock_guard lock(mu_);
    return results_;
  }
  std::vector<std::thread::id> threads() {
    std::lock_guard lock(mu_);
    return threads_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<ToolResult> results_;
  std::vector<std::thread::id> threads_;
};

// Runs one call and waits for its result.
inline ToolResult call_tool(const ToolRegistry& registry, std::string_view name, nlohmann::json arguments,
                            ToolContext context = {}) {
  ToolWaiter waiter;
  registry.execute(name, std::move(arguments), std::move(context), waiter.callback());
  waiter.wait_for(1);
  auto results = waiter.results();
  return results.empty() ? ToolResult::error(StatusCode::kInternal, "no result") : results[0];
}

}  // namespace agentserve::tools::testing
