#include "engine/forward_model.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "engine/backend.h"
#include "engine/backend_model.h"
#include "engine/device_memory_plan.h"
#include "memory/kv_arena.h"

#if defined(AGENTSERVE_HAVE_CUDA) && __has_include("engine/cuda/cuda_backend.h")
#include "engine/cuda/cuda_backend.h"
#define AGENTSERVE_FORWARD_HAVE_CUDA 1
#endif

namespace agentserve::engine {
namespace {

Status too_few_blocks(size_t budget, size_t block_bytes) {
  return Status::invalid_argument("kv_cache_bytes " + std::to_string(budget) +
                                  " holds fewer than 2 KV blocks of " + std::to_string(block_bytes) +
                                  " bytes");
}

// "cpu": ParallelModel over rank 0's host arena, exactly the engine's original path.
class HostForwardModel final : public ForwardModel {
 public:
  static Result<std::unique_ptr<ForwardModel>> create(const ModelConfig& config, const ModelWeights& weights,
                                                      ThreadPool& pool, const ForwardModelOptions& options) {
    const int tp = options.layout.tensor_parallel_size;
    const memory::KvLayout layout = ParallelModel::rank_kv_layout(config, options.layout, options.block_size);
    AS_RETURN_IF_ERROR(layout.validate());
    const int n_blocks = layout.blocks_that_fit(options.kv_cache_bytes / static_cast<size_t>(tp));
    if (n_blocks < 2) return too_few_blocks(options.kv_cache_bytes, layout.block_stride());
    auto model = std::unique_ptr<HostForwardModel>(new HostForwardModel());
    AS_ASSIGN_OR_RETURN(auto arena, memory::KvArena::create(layout, n_blocks));
    model->arena_.emplace(std::move(arena));
    model->space_.emplace(*model->arena_);
    AS_ASSIGN_OR_RETURN(model->model_, ParallelModel::create(config, weights, pool,
                                                             {.layout = options.layout,
                                                              .max_step_tokens = options.max_step_tokens,
                                                              .bf16_activations = options.bf16_activations,
                                                              .threads_per_rank = options.threads_per_rank,
                                                              .kv_layout = layout,
                                                              .kv_blocks = n_blocks}));
    return std::unique_ptr<ForwardModel>(std::move(model));
  }

  Status forward(std::span<const ForwardChunk> chunks, std::vector<float>& logits) override {
    return model_->forward(chunks, *arena_, logits);
  }
  KvBlockSpace& kv_blocks() override { return *space_; }
  int num_kv_blocks() const override { return arena_->num_blocks(); }
  size_t kv_bytes() const override { return arena_->total_bytes(); }
  int max_step_tokens() const override { return model_->max_step_tokens(); }
  int n_ranks() const override { return model_->layout().tensor_parallel_size; }
  ExpertLoad expert_load() const override { return model_->expert_load(); }
  std::string description() const override { return "cpu"; }
  kernels::DType kv_dtype() const override { return kernels::DType::kF32; }

 private:
  HostForwardModel() = default;

  std::optional<memory::KvArena> arena_;
  std::optional<ArenaBlockSpace> space_;
  std::unique_ptr<ParallelModel> model_;
};

// A backend's KvCache as T0: blocks cross through download_blocks / upload_blocks.
class BackendBlockSpace final : public KvBlockSpace {
 public:
  BackendBlockSpace(Backend& backend, KvCache& cache, const memory::KvLayout& layout)
      : backend_(backend), cache_(cache), layout_(layout) {}
  const memory::KvLayout& layout() const override { return layout_; }
  bool in_host_memory() const override { return false; }
  std::span<std::byte> host_block(int) override { return {}; }
  Status read_blocks(std::span<const int32_t> ids, std::span<std::byte> host) override {
    return backend_.download_blocks(host.data(), cache_, ids);
  }
  void write_blocks(std::span<const int32_t> ids, std::span<const std::byte> host) override {
    backend_.upload_blocks(cache_, ids, host.data());
  }

 private:
  Backend& backend_;
  KvCache& cache_;
  memory::KvLayout layout_;
};

Result<std::unique_ptr<Backend>> make_named_backend(const std::string& name, ThreadPool& pool) {
  if (name == "backend-cpu") return make_cpu_backend(pool);
#if defined(AGENTSERVE_FORWARD_HAVE_CUDA)
  std::string why;
  std::unique_ptr<Backend> cuda = CudaBackend::create(&why);
  if (!cuda) return Status::failed_precondition("backend cuda: no usable GPU (" + why + ")");
  return cuda;
#else
  return Status::failed_precondition("backend cuda: this build has no CUDA support (nvcc was not found)");
#endif
}

// Blocks for a backend's pool: the host budget on the CPU backend, the device memory plan on a GPU.
Result<int> backend_kv_blocks(Backend& backend, const ModelConfig& config, const ModelWeights& weights,
                              const ForwardModelOptions& options, const BackendModelOptions& model_options) {
  const KvCacheShape shape{.n_layers = config.num_hidden_layers,
                           .n_kv_heads = config.num_key_value_heads,
                           .head_dim = static_cast<int>(config.head_dim),
                           .block_size = options.block_size};
  const size_t block_bytes = backend.kv_block_bytes(shape);
  if (block_bytes == 0) return Status::invalid_argument("the model's KV block has no bytes");
  if (options.backend == "backend-cpu") {
    const size_t blocks = std::min<size_t>(options.kv_cache_bytes / block_bytes, INT32_MAX);
    if (blocks < 2) return too_few_blocks(options.kv_cache_bytes, block_bytes);
    return static_cast<int>(blocks);
  }
  AS_ASSIGN_OR_RETURN(
      DeviceMemoryPlan plan,
      plan_device_memory({.free_bytes = backend.memory_info().free_bytes,
                          .weight_bytes = model_weight_bytes(config, weights.embed_tokens.dtype),
                          .activation_bytes = activation_bytes(config, model_options.max_step_tokens,
                                                               model_options.logits_rows_per_pass),
                          .kv_block_bytes = block_bytes,
                          .min_kv_blocks = 2}));
  if (options.max_kv_blocks > 0 && plan.kv_blocks > options.max_kv_blocks)
    return static_cast<int>(options.max_kv_blocks);
  return plan.kv_blocks;
}

// "backend-cpu" and "cuda": BackendModel over a Backend this object owns.
class BackendForwardModel final : public ForwardModel {
 public:
  static Result<std::unique_ptr<ForwardModel>> create(const ModelConfig& config, const ModelWeights& weights,
                                                      ThreadPool& pool, const ForwardModelOptions& options) {
    if (options.layout.tensor_parallel_size != 1 || options.layout.expert_parallel) {
      return Status::invalid_argument("backend " + options.backend +
                                      ": tensor and expert parallelism run on the cpu backend only; use "
                                      "tensor_parallel_size 1 or --backend cpu");
    }
    auto model = std::unique_ptr<BackendForwardModel>(new BackendForwardModel());
    AS_ASSIGN_OR_RETURN(model->backend_, make_named_backend(options.backend, pool));
    BackendModelOptions model_options{.max_step_tokens = options.max_step_tokens,
                                      .block_size = options.block_size,
                                      .max_context_len = options.max_context};
    AS_ASSIGN_OR_RETURN(model_options.num_kv_blocks,
                        backend_kv_blocks(*model->backend_, config, weights, options, model_options));
    AS_ASSIGN_OR_RETURN(model->model_,
                        BackendModel::create(*model->backend_, config, weights, model_options));
    KvCache& cache = model->model_->kv_cache();
    AS_ASSIGN_OR_RETURN(const memory::KvLayout layout, tier_layout_of(cache));
    model->space_.emplace(*model->backend_, cache, layout);
    model->kv_bytes_ =
        model->backend_->kv_block_bytes(cache.shape()) * static_cast<size_t>(cache.shape().num_blocks);
    return std::unique_ptr<ForwardModel>(std::move(model));
  }

  Status forward(std::span<const ForwardChunk> chunks, std::vector<float>& logits) override {
    return model_->forward(chunks, logits);
  }
  KvBlockSpace& kv_blocks() override { return *space_; }
  int num_kv_blocks() const override { return model_->kv_cache().shape().num_blocks; }
  size_t kv_bytes() const override { return kv_bytes_; }
  int max_step_tokens() const override { return model_->max_step_tokens(); }
  int n_ranks() const override { return 1; }
  ExpertLoad expert_load() const override { return {}; }
  std::string description() const override { return "backend " + backend_->name(); }
  kernels::DType kv_dtype() const override { return model_->kv_cache().dtype(); }

 private:
  BackendForwardModel() = default;

  std::unique_ptr<Backend> backend_;  // declared first: outlives the model's buffers and the block space
  std::unique_ptr<BackendModel> model_;
  std::optional<BackendBlockSpace> space_;
  size_t kv_bytes_ = 0;
};

}  // namespace

Result<memory::KvLayout> tier_layout_of(const KvCache& cache) {
  const KvCacheShape& shape = cache.shape();
  memory::KvLayout layout{.n_layers = shape.n_layers,
                          .n_kv_heads = shape.n_kv_heads,
                          .head_dim = 1,
                          .block_size = shape.block_size,
                          .dtype = memory::KvDtype::kF32};
  const size_t row_bytes = layout.block_bytes();  // one f32 per (layer, K/V, head, slot)
  if (row_bytes == 0 || cache.host_block_bytes() % row_bytes != 0) {
    return Status::invalid_argument("a KV block's " + std::to_string(cache.host_block_bytes()) +
                                    " host bytes are not whole f32 rows of the model's shape");
  }
  layout.head_dim = static_cast<int>(cache.host_block_bytes() / row_bytes);
  AS_RETURN_IF_ERROR(layout.validate());
  return layout;
}

Result<std::unique_ptr<ForwardModel>> ForwardModel::create(const ModelConfig& config,
                                                           const ModelWeights& weights, ThreadPool& pool,
                                                           const ForwardModelOptions& options) {
  if (options.backend == "cpu") return HostForwardModel::create(config, weights, pool, options);
  if (options.backend == "backend-cpu" || options.backend == "cuda")
    return BackendForwardModel::create(config, weights, pool, options);
  return Status::invalid_argument("unknown backend '" + options.backend + "' (cpu, backend-cpu or cuda)");
}

}  // namespace agentserve::engine
