// Scheduler: continuous batching with chunked prefill under a per-step token budget (nano-vllm's
// scheduler, with vLLM's chunked prefill). Each step it first gives every running sequence the tokens it
// needs (1 for decode, the next chunk for a prefill in progress), preempting the most recently admitted
// sequence when KV blocks run out, then admits waiting sequences while budget and blocks remain. A
// preempted sequence releases its blocks and goes back to the front of the queue; its full blocks stay in
// the prefix cache, so readmission recomputes only what was evicted meanwhile.
//
// It decides and reserves blocks; it never runs the model, samples or talks to callers.
#pragma once

#include <deque>
#include <vector>

#include "engine/sequence.h"
#include "memory/block_manager.h"

namespace agentserve::engine {

struct SchedulerOptions {
  int max_step_tokens = 512;  // tokens computed per forward step (decode tokens + prefill chunks)
  int max_running = 64;       // sequences batched together
};

struct ScheduledChunk {
  Sequence* sequence = nullptr;
  int start = 0;  // first token index computed this step (== sequence->kv.num_computed)
  int n_tokens = 0;
  bool samples = false;  // the chunk reaches the end of the sequence's tokens, so a token is sampled after it
};

struct ScheduledStep {
  std::vector<ScheduledChunk> chunks;
  std::vector<Sequence*> preempted;  // released this step, back in the queue
  std::vector<Sequence*> rejected;   // can never fit the KV pool alone; the engine fails them
};

class Scheduler {
 public:
  Scheduler(SchedulerOptions options, memory::BlockManager& blocks);

  void add(Sequence* sequence) { waiting_.push_back(sequence); }
  // Forgets a sequence wherever it is and releases its blocks.
  void remove(Sequence* sequence);
  bool idle() const { return waiting_.empty() && running_.empty(); }
  size_t num_waiting() const { return waiting_.size(); }
  size_t num_running() const { return running_.size(); }

  ScheduledStep schedule();

 private:
  bool reserve_running(Sequence* seq, int n, ScheduledStep& step);
  void preempt(Sequence* seq, ScheduledStep& step);

  SchedulerOptions options_;
  memory::BlockManager& blocks_;
  std::deque<Sequence*> waiting_;
  std::vector<Sequence*> running_;  // in admission order; the last is preempted first
};

}  // namespace agentserve::engine
