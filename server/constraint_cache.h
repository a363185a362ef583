// ConstraintCache: the server's compiled tool-call constraints (tool_choice required / named), one per
// distinct tool set (names and parameter schemas), shared by every request that uses that set. Each entry
// can grow to ~10 MB on Qwen3's vocabulary (its mask cache: 512 states x 151,936 bits), and a client can send
// endless distinct tool sets, so the cache keeps at most `max_entries`, dropping the least recently used.
// A dropped entry stays alive for the requests that hold it; a later request for its set compiles it again.
//
// Thread-safe: io threads ask concurrently. Compiling is slow (a grammar from the schemas) and never runs
// under the cache's lock, so a hit never waits for another set's compile; concurrent requests for one set
// share a single compile, the later ones waiting for the first. A failed compile is not cached: its waiters
// get its error and the next request tries again. The cache never validates tool calls (the registry does).
#pragma once

#include <condition_variable>
#include <cstddef>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <unordered_map>

#include "agent/tool_call_constraint.h"
#include "base/status.h"
#include "engine/request.h"
#include "engine/tokenizer.h"
#include "tools/tool_registry.h"

namespace agentserve::server {

// ~160 MB at worst on Qwen3's vocabulary, far more sets than an agent deployment usually declares.
inline constexpr size_t kDefaultConstraintCacheEntries = 16;

class ConstraintCache {
 public:
  using Compiled = std::shared_ptr<agent::CompiledConstraint>;
  using Compile = std::function<Result<Compiled>(std::span<const tools::ToolSpec* const> allowed)>;

  // max_entries below 1 counts as 1 (the entry being used is always kept).
  explicit ConstraintCache(Compile compile, size_t max_entries = kDefaultConstraintCacheEntries);

  // The compiled constraint of `allowed` (in that order), compiled on a miss. Marks it most recently used.
  Result<Compiled> get(std::span<const tools::ToolSpec* const> allowed);
  // A fresh constraint for one request: get(allowed), then start().
  Result<std::shared_ptr<engine::TokenConstraint>> start(std::span<const tools::ToolSpec* const> allowed);

  size_t size() const;      // entries held, compiles in flight included
  size_t compiles() const;  // compiles started since construction (misses), failed ones included
  size_t max_entries() const { return max_entries_; }

  // What identifies a tool set: each tool's name and its parameters, in order.
  static std::string key_of(std::span<const tools::ToolSpec* const> allowed);

 private:
  // One tool set's compile, shared by the requests that wait for it; `ready` and the rest under mutex_.
  struct Slot {
    bool ready = false;
    Status status;
    Compiled compiled;
  };
  struct Entry {
    std::string key;
    std::shared_ptr<Slot> slot;
  };

  void evict_over_cap();  // mutex_ held

  Compile compile_;
  size_t max_entries_;
  mutable std::mutex mutex_;
  std::condition_variable compiled_cv_;  // a slot became ready
  std::list<Entry> lru_;                 // most recently used first
  std::unordered_map<std::string, std::list<Entry>::iterator> by_key_;
  size_t compiles_ = 0;
};

// How the server compiles a tool set: calls in Qwen3's form over one vocabulary index of `tokenizer`
// (built here, once: it takes a while), then <|im_end|>. max_string_length > 0 caps every string of the
// arguments; schema bounds the grammar cannot express are left to the registry's validation.
ConstraintCache::Compile tool_call_compiler(const engine::Tokenizer& tokenizer, int vocab_size,
                                            int max_string_length);

}  // namespace agentserve::server
