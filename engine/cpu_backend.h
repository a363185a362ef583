// CpuBackend: the Backend interface (backend.h) on host memory, by calling the kernels in kernels/cpu with
// the same threading as Qwen3MoeModel, so a BackendModel on it computes exactly the engine's arithmetic. It
// adds no math of its own except top-p sampling, whose only other implementation is the Sampler's. Its KV
// cache is a memory::KvArena (f32 blocks, the KvLayout), so a downloaded block is a KvArena block's bytes.
// Like every backend it is used by one thread at a time; the pool must outlive it.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "base/thread_pool.h"
#include "engine/backend.h"

namespace agentserve::engine {

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(ThreadPool& pool) : pool_(pool) {}

  std::string name() const override { return "cpu"; }
  BackendMemoryInfo memory_info() const override;

  Result<DeviceBuffer> allocate(size_t bytes) override;
  void deallocate(void* data, size_t bytes) override;
  void upload(void* dst, const void* host_src, size_t bytes) override;
  Status download(void* host_dst, const void* src, size_t bytes) override;
  void copy(void* dst, const void* src, size_t bytes) override;
  void fill_zero(void* dst, size_t bytes) override;
  Status synchronize() override { return {}; }
  Status reserve(const OpLimits& limits) override;

  Result<std::unique_ptr<KvCache>> create_kv_cache(const KvCacheShape& shape) override;
  size_t kv_block_bytes(const KvCacheShape& shape) const override;
  Status download_blocks(void* host_buffer, const KvCache& cache, std::span<const int32_t> ids) override;
  void upload_blocks(KvCache& cache, std::span<const int32_t> ids, const void* host_buffer) override;

  void embedding(float* out, const WeightMatrix& table, const int32_t* ids, int n_rows) override;
  void rmsnorm(float* out, const float* x, const float* weight, int n_rows, int dim, float eps) override;
  void matmul(float* y, const float* x, const WeightMatrix& w, int n_tokens) override;
  void rope_tables(float* cos, float* sin, const int32_t* positions, int n_tokens, const float* inv_freq,
                   int half_dim, float attention_factor) override;
  void qk_norm_rope(float* q, float* k, const float* q_norm, const float* k_norm, const float* cos,
                    const float* sin, int n_tokens, int n_heads, int n_kv_heads, int head_dim,
                    float eps) override;
  void kv_write(KvCache& cache, int layer, const float* k, const float* v, const int32_t* slots,
                int n_tokens) override;
  void paged_attention(float* out, const float* q, const KvCache& cache, int layer,
                       const AttentionBatch& batch, int n_heads, float scale) override;
  void moe_route(int32_t* expert_ids, float* expert_weights, const float* router_logits, int n_tokens,
                 int n_experts, int top_k, bool normalize) override;
  size_t moe_workspace_bytes(int max_tokens, int top_k, const ExpertWeights& experts) const override;
  void moe_experts(float* out, const float* x, const int32_t* expert_ids, const float* expert_weights,
                   int n_tokens, int top_k, const ExpertWeights& experts, void* workspace) override;
  void add(float* a, const float* b, size_t n) override;
  void argmax(int32_t* tokens, const float* logits, int n_rows, int vocab) override;
  size_t sample_workspace_bytes(int n_rows, int vocab) const override;
  void sample_top_p(int32_t* tokens, const float* logits, const SamplingRow* rows, int n_rows, int vocab,
                    void* workspace) override;

 private:
  // Runs the SwiGLU of the experts over rows already grouped by expert (group_offsets [n_experts + 1]).
  void run_grouped_experts(const ExpertWeights& experts, const int* group_offsets, const float* grouped_x,
                           float* act, float* grouped_out, int n_rows);

  ThreadPool& pool_;
  // Scratch that grows to the largest batch seen and is then reused (the hot path allocates nothing).
  std::vector<const float*> k_block_ptrs_, v_block_ptrs_;
  struct AttentionItem {
    int chunk, first_token, n_tokens;
  };
  std::vector<AttentionItem> attention_items_;
  struct ExpertItem {
    int expert, row_begin, row_end;
  };
  std::vector<ExpertItem> expert_items_;
};

}  // namespace agentserve::engine
