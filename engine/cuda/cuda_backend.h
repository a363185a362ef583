// CudaBackend: the Backend interface (engine/backend.h) on one NVIDIA GPU, by calling the kernels in
// kernels/cuda. Device 0; ops run in issue order on one compute stream and return at once, a launch error
// is kept and returned by the next synchronize(); KV block copies to and from the host run on a second
// (copy) stream ordered after the compute work issued before them, so a spill never reads a block a
// pending kv_write still changes. The KV cache is a pool of bf16 blocks in the KvLayout order
// (kernels/cuda/kv_cache.h), so a downloaded block is exactly those bytes. Scratch (split-K attention
// partials, the bf16 copy of matmul inputs) is sized once in reserve(), and each KV cache gets a pinned
// staging buffer for block downloads into pageable memory when it is made; no op allocates. It must never
// be built or used without a visible GPU: make_cuda_backend() returns null then. One thread at a time.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <memory>
#include <string>

#include "engine/backend.h"

namespace agentserve::engine {

class CudaBackend final : public Backend {
 public:
  // Device 0 with its streams and cuBLAS handle; null with the reason in *why when there is no usable GPU.
  static std::unique_ptr<CudaBackend> create(std::string* why);
  ~CudaBackend() override;

  std::string name() const override { return name_; }
  BackendMemoryInfo memory_info() const override;

  Result<DeviceBuffer> allocate(size_t bytes) override;
  void deallocate(void* data, size_t bytes) override;
  void upload(void* dst, const void* host_src, size_t bytes) override;
  Status download(void* host_dst, const void* src, size_t bytes) override;
  void copy(void* dst, const void* src, size_t bytes) override;
  void fill_zero(void* dst, size_t bytes) override;
  Status synchronize() override;
  Status reserve(const OpLimits& limits) override;

  Result<std::unique_ptr<KvCache>> create_kv_cache(const KvCacheShape& shape) override;
  size_t kv_block_bytes(const KvCacheShape& shape) const override;
  Status download_blocks(void* host_buffer, const KvCache& cache, std::span<const int32_t> ids) override;
  void upload_blocks(KvCache& cache, std::span<const int32_t> ids, const void* host_buffer) override;

  // ---- Attention, norms, element-wise ops and sampling (kernels/cuda: rmsnorm, rope, kv_cache,
  // paged_attention, embedding, elementwise, sampling) ----
  void embedding(float* out, const WeightMatrix& table, const int32_t* ids, int n_rows) override;
  void rmsnorm(float* out, const float* x, const float* weight, int n_rows, int dim, float eps) override;
  void rope_tables(float* cos, float* sin, const int32_t* positions, int n_tokens, const float* inv_freq,
                   int half_dim, float attention_factor) override;
  void qk_norm_rope(float* q, float* k, const float* q_norm, const float* k_norm, const float* cos,
                    const float* sin, int n_tokens, int n_heads, int n_kv_heads, int head_dim,
                    float eps) override;
  void kv_write(KvCache& cache, int layer, const float* k, const float* v, const int32_t* slots,
                int n_tokens) override;
  void paged_attention(float* out, const float* q, const KvCache& cache, int layer,
                       const AttentionBatch& batch, int n_heads, float scale) override;
  void add(float* a, const float* b, size_t n) override;
  void argmax(int32_t* tokens, const float* logits, int n_rows, int vocab) override;
  size_t sample_workspace_bytes(int n_rows, int vocab) const override;
  void sample_top_p(int32_t* tokens, const float* logits, const SamplingRow* rows, int n_rows, int vocab,
                    void* workspace) override;

  // ---- Dense projections and the MoE MLP (kernels/cuda: gemm, moe) ----
  void matmul(float* y, const float* x, const WeightMatrix& w, int n_tokens) override;
  void moe_route(int32_t* expert_ids, float* expert_weights, const float* router_logits, int n_tokens,
                 int n_experts, int top_k, bool normalize) override;
  size_t moe_workspace_bytes(int max_tokens, int top_k, const ExpertWeights& experts) const override;
  void moe_experts(float* out, const float* x, const int32_t* expert_ids, const float* expert_weights,
                   int n_tokens, int top_k, const ExpertWeights& experts, void* workspace) override;

  cudaStream_t compute_stream() const { return compute_; }
  cublasHandle_t cublas() const { return cublas_; }

 private:
  CudaBackend() = default;

  // Keeps the first failure for synchronize().
  void record(const Status& status);
  // The copy stream waits for the compute work issued so far.
  Status copy_stream_after_compute();

  std::string name_;
  cudaStream_t compute_ = nullptr;
  cudaStream_t copy_ = nullptr;
  cudaEvent_t compute_done_ = nullptr;
  cudaEvent_t copy_done_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  Status first_error_;

  // Scratch sized by reserve().
  OpLimits limits_;
  DeviceBuffer attention_workspace_;  // split-K partials of as many decode chunks as one pass takes
  DeviceBuffer gemm_workspace_;       // bf16 copy of max_tokens rows of the widest matmul input
};

// The CUDA backend on device 0, or null when no GPU is usable.
std::unique_ptr<Backend> make_cuda_backend();

}  // namespace agentserve::engine
