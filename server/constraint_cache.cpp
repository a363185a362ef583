#include "server/constraint_cache.h"

#include <algorithm>
#include <exception>
#include <utility>
#include <vector>

#include "agent/vocabulary_index.h"

namespace agentserve::server {

ConstraintCache::ConstraintCache(Compile compile, size_t max_entries)
    : compile_(std::move(compile)), max_entries_(std::max<size_t>(1, max_entries)) {}

std::string ConstraintCache::key_of(std::span<const tools::ToolSpec* const> allowed) {
  std::string key;
  for (const tools::ToolSpec* spec : allowed) key += spec->name + '\n' + spec->parameters.dump() + '\n';
  return key;
}

Result<ConstraintCache::Compiled> ConstraintCache::get(std::span<const tools::ToolSpec* const> allowed) {
  std::string key = key_of(allowed);
  std::shared_ptr<Slot> slot;
  {
    std::unique_lock lock(mutex_);
    if (auto it = by_key_.find(key); it != by_key_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second);
      slot = it->second->slot;
      // Another request is compiling this set: waiting costs less than compiling it a second time.
      compiled_cv_.wait(lock, [&] { return slot->ready; });
      if (!slot->status.ok()) return slot->status;
      return slot->compiled;
    }
    slot = std::make_shared<Slot>();
    lru_.push_front({key, slot});
    by_key_.emplace(key, lru_.begin());
    ++compiles_;
    evict_over_cap();
  }

  Result<Compiled> compiled = Status::internal("compiling the tool-call constraint threw");
  try {
    compiled = compile_(allowed);
  } catch (const std::exception& e) {
    // Caught so the requests waiting on this slot get an error instead of waiting forever.
    compiled = Status::internal(std::string("compiling the tool-call constraint failed: ") + e.what());
  }
  {
    std::lock_guard lock(mutex_);
    slot->ready = true;
    if (compiled.ok()) {
      slot->compiled = *compiled;
    } else {
      slot->status = compiled.status();
      // Not cached, unless the entry was evicted meanwhile and the key belongs to a newer compile now.
      if (auto it = by_key_.find(key); it != by_key_.end() && it->second->slot == slot) {
        lru_.erase(it->second);
        by_key_.erase(it);
      }
    }
  }
  compiled_cv_.notify_all();
  return compiled;
}

Result<std::shared_ptr<engine::TokenConstraint>> ConstraintCache::start(
    std::span<const tools::ToolSpec* const> allowed) {
  AS_ASSIGN_OR_RETURN(Compiled compiled, get(allowed));
  return compiled->start();
}

size_t ConstraintCache::size() const {
  std::lock_guard lock(mutex_);
  return lru_.size();
}

size_t ConstraintCache::compiles() const {
  std::lock_guard lock(mutex_);
  return compiles_;
}

void ConstraintCache::evict_over_cap() {
  // An evicted slot still compiling finishes for the requests that wait on it; it is just not kept.
  while (lru_.size() > max_entries_) {
    by_key_.erase(lru_.back().key);
    lru_.pop_back();
  }
}

ConstraintCache::Compile tool_call_compiler(const engine::Tokenizer& tokenizer, int vocab_size,
                                            int max_string_length) {
  auto index = std::make_shared<const agent::VocabularyIndex>(tokenizer, vocab_size);
  std::vector<int32_t> eos_ids;
  if (auto im_end = tokenizer.token_to_id("<|im_end|>")) eos_ids.push_back(*im_end);
  return [index, eos_ids, max_string_length](
             std::span<const tools::ToolSpec* const> allowed) -> Result<ConstraintCache::Compiled> {
    std::vector<agent::ToolSchema> schemas;
    schemas.reserve(allowed.size());
    for (const tools::ToolSpec* spec : allowed) schemas.push_back({spec->name, spec->parameters});
    agent::ToolCallConstraintOptions options;
    options.max_string_length = max_string_length;
    // Bounds the grammar cannot express are left to the registry, which validates every call in full.
    options.schema.skip_unenforced_keywords = true;
    return agent::CompiledConstraint::for_tool_calls(index, schemas, options, eos_ids);
  };
}

}  // namespace agentserve::server
