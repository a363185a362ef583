// ForwardModel: the model an Engine steps, together with the paged KV pool (T0) that the engine's block ids
// index. Three kinds behind one interface, chosen by name:
//   "cpu"          ParallelModel over a host KvArena: the CPU engine as it always was (tensor and expert
//                  parallelism included).
//   "backend-cpu"  BackendModel over the CPU backend: the code path a GPU runs, runnable anywhere (CI).
//   "cuda"         BackendModel over the CUDA backend on GPU 0, its KV pool sized by the device memory plan.
// The pool has one block_size and num_kv_blocks() blocks, the same as the BlockManager's. KvTiers reach its
// blocks through kv_blocks(): in place for a host arena, through download_blocks / upload_blocks for a
// backend.
//
// It never decides which blocks a sequence owns, never samples (logits come back to the host), and never
// runs tensor or expert parallelism on a backend (create() refuses it). Engine thread only.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "base/thread_pool.h"
#include "engine/backend.h"
#include "engine/kv_tiers.h"
#include "engine/model_config.h"
#include "engine/model_weights.h"
#include "engine/parallel_model.h"
#include "engine/qwen3_moe_model.h"

namespace agentserve::engine {

struct ForwardModelOptions {
  std::string backend = "cpu";  // "cpu" | "backend-cpu" | "cuda"
  ParallelLayout layout;        // tensor_parallel_size > 1 only with "cpu"
  int max_step_tokens = 512;
  bool bf16_activations = false;  // "cpu" only (Qwen3MoeModel)
  int threads_per_rank = 1;
  int block_size = 16;
  // T0 budget of the host pools ("cpu": for all ranks together; "backend-cpu"). "cuda" ignores it and
  // takes what the device memory plan leaves after weights and activations.
  size_t kv_cache_bytes = size_t{1} << 30;
  // "cuda": at most this many blocks (0 = all the plan allows). The engine passes what max_running
  // sequences of max_context tokens can use: a small model on a large GPU would otherwise get tens of
  // millions of blocks, each with host bookkeeping in the BlockManager.
  int64_t max_kv_blocks = 0;
  int max_context = 0;  // longest sequence; bounds a backend's attention scratch
};

class ForwardModel {
 public:
  // `weights` and `pool` must outlive the model. InvalidArgument for an unknown backend, a parallel
  // layout with a backend, or a pool of fewer than 2 blocks; FailedPrecondition for "cuda" in a build
  // without CUDA or on a machine without a GPU; ResourceExhausted when the weights or the pool do not fit.
  static Result<std::unique_ptr<ForwardModel>> create(const ModelConfig& config, const ModelWeights& weights,
                                                      ThreadPool& pool, const ForwardModelOptions& options);
  virtual ~ForwardModel() = default;

  // As Qwen3MoeModel::forward, over this model's pool.
  virtual Status forward(std::span<const ForwardChunk> chunks, std::vector<float>& logits) = 0;

  virtual KvBlockSpace& kv_blocks() = 0;
  virtual int num_kv_blocks() const = 0;
  // Bytes the pool takes where it lives (host or device).
  virtual size_t kv_bytes() const = 0;
  virtual int max_step_tokens() const = 0;
  virtual int n_ranks() const = 0;
  // Tokens routed per expert; a backend does not count them (n_layers 0).
  virtual ExpertLoad expert_load() const = 0;
  // What runs the forward, for logs: "cpu", "backend cpu", "backend cuda:0 (NVIDIA H200)".
  virtual std::string description() const = 0;
  // Element type of the pool's K/V (f32 on the host, bf16 on CUDA): part of the prefix-cache identity.
  virtual kernels::DType kv_dtype() const = 0;
};

// The layout KvTiers use for blocks of `cache`: the model's shape, f32, with head_dim scaled so that
// block_bytes() equals cache.host_block_bytes() (the memory layer's KvLayout knows f32 only). InvalidArgument
// when the host bytes are not a whole number of such f32 rows.
Result<memory::KvLayout> tier_layout_of(const KvCache& cache);

}  // namespace agentserve::engine
