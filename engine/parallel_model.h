// ParallelModel: a Qwen3 model split over the ranks of a tensor/expert-parallel group (model_shard.h says
// how), behind the same forward() as a single Qwen3MoeModel. On CPU the ranks are threads of this process
// that talk through an InProcessCommunicator: rank 0 runs on the caller's thread with the caller's pool,
// ranks 1..N-1 each on their own thread with their own pool and their own KV arena holding their kv heads
// at the same block ids as rank 0's (the engine's block tables serve every rank). A GPU backend keeps the
// sharding and swaps the communicator for NCCL and the threads for devices.
//
// With one rank it is the plain model: no thread, no copy, no collective. It never schedules or samples,
// and never lets ranks see different chunks (a rank that failed its checks while another went on into a
// collective would hang the group, so every rank checks the same inputs the same way).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <thread>
#include <vector>

#include "base/status.h"
#include "base/thread_pool.h"
#include "engine/communicator.h"
#include "engine/model_shard.h"
#include "engine/qwen3_moe_model.h"
#include "memory/kv_arena.h"

namespace agentserve::engine {

struct ParallelModelOptions {
  ParallelLayout layout;
  int max_step_tokens = 512;
  bool bf16_activations = false;
  int threads_per_rank = 1;  // pool size of ranks 1..N-1 (rank 0 uses the caller's pool)
  // Every rank's arena: rank_kv_layout() of the model, as many blocks as the caller's (rank 0's) arena.
  memory::KvLayout kv_layout;
  int kv_blocks = 0;
};

class ParallelModel {
 public:
  // `weights` and `pool` must outlive the model. Fails with InvalidArgument for a layout the config cannot
  // be split into, ResourceExhausted when the ranks' arenas do not fit in memory.
  static Result<std::unique_ptr<ParallelModel>> create(const ModelConfig& config, const ModelWeights& weights,
                                                       ThreadPool& pool, const ParallelModelOptions& options);
  ~ParallelModel();
  ParallelModel(const ParallelModel&) = delete;
  ParallelModel& operator=(const ParallelModel&) = delete;

  // The KV layout of one rank: its kv heads only (all of them with one rank).
  static memory::KvLayout rank_kv_layout(const ModelConfig& config, const ParallelLayout& layout,
                                         int block_size);

  // As Qwen3MoeModel::forward; `kv` is rank 0's arena (layout and block count as in the options).
  Status forward(std::span<const ForwardChunk> chunks, memory::KvArena& kv, std::vector<float>& logits);

  const ParallelLayout& layout() const { return layout_; }
  int max_step_tokens() const { return ranks_[0]->model->max_step_tokens(); }
  // Rank 0's counts: the router is replicated, so every rank counts every token.
  const ExpertLoad& expert_load() const { return ranks_[0]->model->expert_load(); }
  void reset_expert_load();

 private:
  struct Rank {
    ModelConfig config;
    ModelWeights weights;
    std::unique_ptr<ThreadPool> pool;  // null for rank 0
    std::unique_ptr<InProcessCommunicator> comm;
    std::unique_ptr<Qwen3MoeModel> model;
    std::optional<memory::KvArena> arena;  // empty for rank 0
    std::vector<float> logits;             // empty after a step on ranks above 0
    Status status;
    std::thread thread;
  };

  ParallelModel() = default;
  void rank_main(Rank& rank);

  ParallelLayout layout_;
  int kv_blocks_ = 0;
  std::vector<std::unique_ptr<Rank>> ranks_;

  // The step handed to ranks 1..N-1: published under mutex_, generation_ bumped per step.
  std::mutex mutex_;
  std::condition_variable start_, done_;
  std::span<const ForwardChunk> job_;
  uint64_t generation_ = 0;
  int pending_ = 0;
  bool stopping_ = false;
};

}  // namespace agentserve::engine
