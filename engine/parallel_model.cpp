#include "engine/parallel_model.h"

#include <algorithm>

namespace agentserve::engine {

memory::KvLayout ParallelModel::rank_kv_layout(const ModelConfig& config, const ParallelLayout& layout,
                                               int block_size) {
  const int tp = std::max(1, layout.tensor_parallel_size);
  const int kv = config.num_key_value_heads;
  // Replicated kv heads (more ranks than kv heads) leave one per rank.
  return {.n_layers = config.num_hidden_layers,
          .n_kv_heads = kv % tp == 0 ? kv / tp : 1,
          .head_dim = static_cast<int>(config.head_dim),
          .block_size = block_size};
}

Result<std::unique_ptr<ParallelModel>> ParallelModel::create(const ModelConfig& config,
                                                             const ModelWeights& weights, ThreadPool& pool,
                                                             const ParallelModelOptions& options) {
  AS_RETURN_IF_ERROR(validate_parallel_layout(config, options.layout));
  std::unique_ptr<ParallelModel> pm(new ParallelModel());
  pm->layout_ = options.layout;
  pm->kv_blocks_ = options.kv_blocks;
  const int n = options.layout.tensor_parallel_size;
  if (n == 1) {
    auto rank = std::make_unique<Rank>();
    rank->model = std::make_unique<Qwen3MoeModel>(config, weights, pool, options.max_step_tokens,
                                                  options.bf16_activations);
    pm->ranks_.push_back(std::move(rank));
    return pm;
  }
  auto comms = InProcessCommunicator::create_group(n);
  for (int r = 0; r < n; ++r) {
    auto rank = std::make_unique<Rank>();
    ModelShard shard = plan_shard(config, options.layout, r);
    shard.comm = comms[static_cast<size_t>(r)].get();
    rank->comm = std::move(comms[static_cast<size_t>(r)]);
    rank->config = shard_config(config, shard);
    AS_ASSIGN_OR_RETURN(rank->weights, shard_weights(weights, config, shard));
    ThreadPool* rank_pool = &pool;
    if (r > 0) {
      rank->pool = std::make_unique<ThreadPool>(options.threads_per_rank);
      rank_pool = rank->pool.get();
      AS_ASSIGN_OR_RETURN(auto arena, memory::KvArena::create(options.kv_layout, options.kv_blocks));
      rank->arena.emplace(std::move(arena));
    }
    rank->model = std::make_unique<Qwen3MoeModel>(rank->config, rank->weights, *rank_pool,
                                                  options.max_step_tokens, options.bf16_activations, shard);
    pm->ranks_.push_back(std::move(rank));
  }
  for (int r = 1; r < n; ++r) {
    Rank* rank = pm->ranks_[static_cast<size_t>(r)].get();
    rank->thread = std::thread([p = pm.get(), rank] { p->rank_main(*rank); });
  }
  return pm;
}

ParallelModel::~ParallelModel() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  start_.notify_all();
  for (auto& rank : ranks_) {
    if (rank->thread.joinable()) rank->thread.join();
  }
}

void ParallelModel::rank_main(Rank& rank) {
  uint64_t seen = 0;
  while (true) {
    std::span<const ForwardChunk> chunks;
    {
      std::unique_lock lock(mutex_);
      start_.wait(lock, [&] { return stopping_ || generation_ != seen; });
      if (stopping_) return;
      seen = generation_;
      chunks = job_;
    }
    Status status = rank.model->forward(chunks, *rank.arena, rank.logits);
    std::lock_guard lock(mutex_);
    rank.status = std::move(status);
    if (--pending_ == 0) done_.notify_one();
  }
}

Status ParallelModel::forward(std::span<const ForwardChunk> chunks, memory::KvArena& kv,
                              std::vector<float>& logits) {
  Rank& first = *ranks_[0];
  if (ranks_.size() == 1) return first.model->forward(chunks, kv, logits);
  // The other ranks check their chunks against arenas of this shape; a different one here could let rank 0
  // fail where they pass, and they would wait for it in a collective forever.
  if (kv.num_blocks() != kv_blocks_ || kv.layout().n_kv_heads != ranks_[1]->arena->layout().n_kv_heads ||
      kv.layout().block_size != ranks_[1]->arena->layout().block_size) {
    return Status::invalid_argument("KV arena does not match the parallel model's rank layout");
  }
  {
    std::lock_guard lock(mutex_);
    job_ = chunks;
    pending_ = static_cast<int>(ranks_.size()) - 1;
    ++generation_;
  }
  start_.notify_all();
  Status status = first.model->forward(chunks, kv, logits);
  std::unique_lock lock(mutex_);
  done_.wait(lock, [&] { return pending_ == 0; });
  for (size_t r = 1; r < ranks_.size() && status.ok(); ++r) status = ranks_[r]->status;
  return status;
}

void ParallelModel::reset_expert_load() {
  for (auto& rank : ranks_) rank->model->reset_expert_load();
}

}  // namespace agentserve::engine
