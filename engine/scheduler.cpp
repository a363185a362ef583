#include "engine/scheduler.h"

#include <algorithm>

namespace agentserve::engine {

Scheduler::Scheduler(SchedulerOptions options, memory::BlockManager& blocks)
    : options_(options), blocks_(blocks) {}

void Scheduler::remove(Sequence* sequence) {
  std::erase(running_, sequence);
  std::erase(waiting_, sequence);
  blocks_.release(sequence->kv);
}

void Scheduler::preempt(Sequence* seq, ScheduledStep& step) {
  blocks_.release(seq->kv);
  seq->preemptions++;
  std::erase(running_, seq);
  waiting_.push_front(seq);
  step.preempted.push_back(seq);
}

// Makes room for n more tokens of a running sequence, preempting from the newest admitted ones. Returns
// false when seq itself had to go.
bool Scheduler::reserve_running(Sequence* seq, int n, ScheduledStep& step) {
  while (!blocks_.can_append(seq->kv, n)) {
    Sequence* victim = running_.back();
    if (victim == seq && running_.size() == 1) {
      // Alone and still short of blocks: waiting cannot help, so it fails instead of looping.
      std::erase(running_, seq);
      blocks_.release(seq->kv);
      step.rejected.push_back(seq);
      return false;
    }
    preempt(victim, step);
    if (victim == seq) return false;
  }
  return blocks_.append(seq->kv, n).ok();
}

ScheduledStep Scheduler::schedule() {
  ScheduledStep step;
  int budget = options_.max_step_tokens;

  // Running sequences first, oldest first: decodes cost one token each and keep latency steady.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Sequence* seq = running_[i];
    const int n = std::min(seq->pending_tokens(), budget);
    if (!reserve_running(seq, n, step)) continue;  // seq was preempted; running_ shrank past it
    step.chunks.push_back({seq, seq->kv.num_computed, n, n == seq->pending_tokens()});
    budget -= n;
    ++i;
  }

  // Then admissions, in arrival order (preempted sequences are back at the front).
  while (!waiting_.empty() && budget > 0 && static_cast<int>(running_.size()) < options_.max_running) {
    Sequence* seq = waiting_.front();
    const auto match = blocks_.match_prefix(seq->kv.tokens, seq->kv.salt);
    const int n = std::min(static_cast<int>(seq->kv.tokens.size()) - match.num_tokens, budget);
    if (!blocks_.can_allocate(seq->kv, n)) {
      // Alone with the whole pool free it still does not fit: it never will.
      if (running_.empty() && step.chunks.empty()) {
        waiting_.pop_front();
        step.rejected.push_back(seq);
        continue;
      }
      break;
    }
    auto cached = blocks_.allocate(seq->kv, n);
    if (!cached.ok()) break;
    if (seq->cached_tokens < 0) seq->cached_tokens = std::min(*cached, seq->prompt_tokens);
    waiting_.pop_front();
    running_.push_back(seq);
    step.chunks.push_back({seq, seq->kv.num_computed, n, n == seq->pending_tokens()});
    budget -= n;
  }
  return step;
}

}  // namespace agentserve::engine
