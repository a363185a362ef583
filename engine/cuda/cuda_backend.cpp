#include "engine/cuda/cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <utility>

#include "kernels/cuda/block_copy.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/embedding.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/kv_cache.h"
#include "kernels/cuda/moe.h"
#include "kernels/cuda/paged_attention.h"
#include "kernels/cuda/rmsnorm.h"
#include "kernels/cuda/rope.h"
#include "kernels/cuda/sampling.h"

namespace agentserve::engine {
namespace kc = kernels::cuda;
using kc::cuda_status;

// The device sampler reads engine::SamplingRow as kernels::cuda::RowSampling.
static_assert(sizeof(SamplingRow) == sizeof(kc::RowSampling));
static_assert(offsetof(SamplingRow, temperature) == offsetof(kc::RowSampling, temperature));
static_assert(offsetof(SamplingRow, top_p) == offsetof(kc::RowSampling, top_p));
static_assert(offsetof(SamplingRow, seed) == offsetof(kc::RowSampling, seed));

namespace {

// Split-K attention partials are reserved for as many decode chunks as fit this budget at the longest
// context (about 60 chunks at 128k for Qwen3-30B-A3B, 240 at 32k; at least one); a bigger decode batch runs
// in passes of that many chunks (paged_attention_decode), shorter contexts fit more chunks per pass.
constexpr size_t kSplitKWorkspaceBudget = size_t{256} << 20;

// Pageable host buffers of download_blocks are filled through a pinned staging buffer of at most this many
// bytes per KV cache (at least one block), so the copies stay asynchronous and one stream sync covers a
// staging-full (42 blocks of 1.5 MiB for Qwen3-30B-A3B, 21 of 2.9 MiB for Qwen3-235B-A22B).
constexpr size_t kBlockStagingBudget = size_t{64} << 20;

// Page-locked host memory is copied truly asynchronously, so a call that promises the source may be reused
// must wait for such copies; pageable memory is staged before cudaMemcpyAsync returns.
bool is_pinned(const void* host) {
  cudaPointerAttributes attributes{};
  if (cudaPointerGetAttributes(&attributes, host) != cudaSuccess) {
    (void)cudaGetLastError();  // an unregistered pointer is not an error worth keeping
    return false;
  }
  return attributes.type == cudaMemoryTypeHost;
}

// Page-locked host memory from cudaHostAlloc, freed with cudaFreeHost.
struct PinnedDeleter {
  void operator()(bf16* p) const { (void)cudaFreeHost(p); }
};
using PinnedBlocks = std::unique_ptr<bf16, PinnedDeleter>;

class CudaKvCache final : public KvCache {
 public:
  CudaKvCache(const KvCacheShape& shape, const kc::KvPoolGeometry& geo, DeviceBuffer pool,
              PinnedBlocks staging, int staging_blocks)
      : KvCache(shape, kernels::DType::kBF16, geo.block_elems() * sizeof(bf16)),
        geo_(geo),
        pool_(std::move(pool)),
        staging_(std::move(staging)),
        staging_blocks_(staging_blocks) {}

  const kc::KvPoolGeometry& geometry() const { return geo_; }
  bf16* pool() const { return pool_.as<bf16>(); }
  // Null (0 blocks) when no pinned memory could be had; downloads then copy into the caller's buffer.
  bf16* staging() const { return staging_.get(); }
  int staging_blocks() const { return staging_blocks_; }

 private:
  kc::KvPoolGeometry geo_;
  DeviceBuffer pool_;
  PinnedBlocks staging_;
  int staging_blocks_ = 0;
};

const CudaKvCache& cuda_cache(const KvCache& cache) {
  return static_cast<const CudaKvCache&>(cache);
}

kc::KvPoolGeometry geometry_of(const KvCacheShape& shape) {
  return kc::KvPoolGeometry::packed(shape.n_layers, shape.n_kv_heads, shape.block_size, shape.head_dim,
                                    shape.num_blocks);
}

}  // namespace

// ---- Device, memory and synchronisation ----------------------------------------------------------------

std::unique_ptr<CudaBackend> CudaBackend::create(std::string* why) {
  auto fail = [&](cudaError_t err, const char* what) -> std::unique_ptr<CudaBackend> {
    if (why != nullptr) *why = std::string(what) + ": " + cudaGetErrorString(err);
    return nullptr;
  };
  int count = 0;
  if (cudaError_t err = cudaGetDeviceCount(&count); err != cudaSuccess)
    return fail(err, "cudaGetDeviceCount");
  if (count == 0) return fail(cudaErrorNoDevice, "cudaGetDeviceCount");
  if (cudaError_t err = cudaSetDevice(0); err != cudaSuccess) return fail(err, "cudaSetDevice");
  cudaDeviceProp prop{};
  if (cudaError_t err = cudaGetDeviceProperties(&prop, 0); err != cudaSuccess) {
    return fail(err, "cudaGetDeviceProperties");
  }
  std::unique_ptr<CudaBackend> backend(new CudaBackend());
  backend->name_ = std::string("cuda:0 (") + prop.name + ")";
  if (cudaError_t err = cudaStreamCreateWithFlags(&backend->compute_, cudaStreamNonBlocking);
      err != cudaSuccess) {
    return fail(err, "cudaStreamCreate");
  }
  if (cudaError_t err = cudaStreamCreateWithFlags(&backend->copy_, cudaStreamNonBlocking);
      err != cudaSuccess) {
    return fail(err, "cudaStreamCreate");
  }
  if (cudaError_t err = cudaEventCreateWithFlags(&backend->compute_done_, cudaEventDisableTiming);
      err != cudaSuccess) {
    return fail(err, "cudaEventCreate");
  }
  if (cudaError_t err = cudaEventCreateWithFlags(&backend->copy_done_, cudaEventDisableTiming);
      err != cudaSuccess) {
    return fail(err, "cudaEventCreate");
  }
  if (cublasCreate(&backend->cublas_) != CUBLAS_STATUS_SUCCESS) {
    if (why != nullptr) *why = "cublasCreate failed";
    return nullptr;
  }
  if (cublasSetStream(backend->cublas_, backend->compute_) != CUBLAS_STATUS_SUCCESS) {
    if (why != nullptr) *why = "cublasSetStream failed";
    return nullptr;
  }
  return backend;
}

CudaBackend::~CudaBackend() {
  if (compute_ != nullptr) (void)cudaStreamSynchronize(compute_);
  if (copy_ != nullptr) (void)cudaStreamSynchronize(copy_);
  attention_workspace_ = DeviceBuffer();
  gemm_workspace_ = DeviceBuffer();
  if (cublas_ != nullptr) cublasDestroy(cublas_);
  if (compute_done_ != nullptr) (void)cudaEventDestroy(compute_done_);
  if (copy_done_ != nullptr) (void)cudaEventDestroy(copy_done_);
  if (copy_ != nullptr) (void)cudaStreamDestroy(copy_);
  if (compute_ != nullptr) (void)cudaStreamDestroy(compute_);
}

std::unique_ptr<Backend> make_cuda_backend() {
  return CudaBackend::create(nullptr);
}

void CudaBackend::record(const Status& status) {
  if (!status.ok() && first_error_.ok()) first_error_ = status;
}

Status CudaBackend::copy_stream_after_compute() {
  AS_RETURN_IF_ERROR(cuda_status(cudaEventRecord(compute_done_, compute_), "cudaEventRecord"));
  return cuda_status(cudaStreamWaitEvent(copy_, compute_done_, 0), "cudaStreamWaitEvent");
}

BackendMemoryInfo CudaBackend::memory_info() const {
  size_t free_bytes = 0;
  size_t total_bytes = 0;
  if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) return {};
  return {.free_bytes = free_bytes, .total_bytes = total_bytes};
}

Result<DeviceBuffer> CudaBackend::allocate(size_t bytes) {
  void* data = nullptr;
  const cudaError_t err = cudaMalloc(&data, std::max<size_t>(bytes, 1));
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // an allocation failure is reported here, not by the next launch
    return Status::resource_exhausted("cannot allocate " + std::to_string(bytes) +
                                      " bytes of device memory: " + cudaGetErrorString(err));
  }
  return DeviceBuffer(this, data, bytes);
}

void CudaBackend::deallocate(void* data, size_t) {
  record(cuda_status(cudaFree(data), "cudaFree"));
}

void CudaBackend::upload(void* dst, const void* host_src, size_t bytes) {
  if (bytes == 0) return;
  record(cuda_status(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, compute_), "upload"));
  if (is_pinned(host_src)) record(cuda_status(cudaStreamSynchronize(compute_), "upload"));
}

Status CudaBackend::download(void* host_dst, const void* src, size_t bytes) {
  if (bytes == 0) return {};
  AS_RETURN_IF_ERROR(
      cuda_status(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, compute_), "download"));
  return cuda_status(cudaStreamSynchronize(compute_), "download");
}

void CudaBackend::copy(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  record(cuda_status(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, compute_), "copy"));
}

void CudaBackend::fill_zero(void* dst, size_t bytes) {
  if (bytes == 0) return;
  record(cuda_status(cudaMemsetAsync(dst, 0, bytes, compute_), "fill_zero"));
}

Status CudaBackend::synchronize() {
  record(cuda_status(cudaStreamSynchronize(copy_), "copy stream"));
  record(cuda_status(cudaStreamSynchronize(compute_), "compute stream"));
  record(cuda_status(cudaGetLastError(), "asynchronous error"));
  return std::exchange(first_error_, Status());
}

Status CudaBackend::reserve(const OpLimits& limits) {
  if (limits.max_tokens < 1 || limits.max_width < 1 || limits.n_heads < 1 || limits.head_dim < 1 ||
      limits.max_context_len < 1) {
    return Status::invalid_argument("reserve: every limit must be >= 1");
  }
  const size_t per_chunk =
      kc::paged_attention_decode_workspace_bytes(1, limits.n_heads, limits.head_dim, limits.max_context_len);
  const size_t chunks = std::clamp<size_t>(kSplitKWorkspaceBudget / std::max<size_t>(per_chunk, 1), 1,
                                           static_cast<size_t>(limits.max_tokens));
  const size_t attention_bytes = per_chunk * chunks;
  if (attention_bytes > attention_workspace_.bytes()) {
    attention_workspace_ = DeviceBuffer();
    AS_ASSIGN_OR_RETURN(attention_workspace_, allocate(attention_bytes));
  }
  // The bf16 copy of the widest matmul input (OpLimits::max_width), not of any output.
  const size_t gemm_bytes =
      kc::gemm_workspace_bytes(limits.max_tokens, limits.max_width, kernels::DType::kBF16);
  if (gemm_bytes > gemm_workspace_.bytes()) {
    gemm_workspace_ = DeviceBuffer();
    AS_ASSIGN_OR_RETURN(gemm_workspace_, allocate(gemm_bytes));
  }
  limits_ = limits;
  return {};
}

// ---- KV cache ----------------------------------------------------------------------------------------

Result<std::unique_ptr<KvCache>> CudaBackend::create_kv_cache(const KvCacheShape& shape) {
  if (shape.num_blocks <= 0) return Status::invalid_argument("kv cache: num_blocks must be positive");
  const kc::KvPoolGeometry geo = geometry_of(shape);
  AS_RETURN_IF_ERROR(geo.validate());
  const size_t bytes = geo.block_elems() * sizeof(bf16) * static_cast<size_t>(shape.num_blocks);
  AS_ASSIGN_OR_RETURN(DeviceBuffer pool, allocate(bytes));
  AS_RETURN_IF_ERROR(cuda_status(cudaMemsetAsync(pool.data(), 0, bytes, compute_), "kv cache zero"));
  const size_t block_bytes = geo.block_elems() * sizeof(bf16);
  int staging_blocks = static_cast<int>(
      std::clamp<size_t>(kBlockStagingBudget / block_bytes, 1, static_cast<size_t>(shape.num_blocks)));
  void* staging = nullptr;
  if (cudaHostAlloc(&staging, block_bytes * static_cast<size_t>(staging_blocks), cudaHostAllocDefault) !=
      cudaSuccess) {
    (void)cudaGetLastError();  // without pinned memory downloads still work, each copy blocking the host
    staging = nullptr;
    staging_blocks = 0;
  }
  return std::unique_ptr<KvCache>(new CudaKvCache(shape, geo, std::move(pool),
                                                  PinnedBlocks(static_cast<bf16*>(staging)), staging_blocks));
}

size_t CudaBackend::kv_block_bytes(const KvCacheShape& shape) const {
  return geometry_of(shape).block_elems() * sizeof(bf16);
}

Status CudaBackend::download_blocks(void* host_buffer, const KvCache& cache, std::span<const int32_t> ids) {
  if (ids.empty()) return {};
  const CudaKvCache& c = cuda_cache(cache);
  AS_RETURN_IF_ERROR(copy_stream_after_compute());
  auto* host = static_cast<bf16*>(host_buffer);
  const int n = static_cast<int>(ids.size());
  // Into pageable memory every cudaMemcpyAsync would block until its bytes land: stage through the cache's
  // pinned buffer instead, so the copies of a staging-full queue up and one sync waits for all of them.
  if (c.staging() != nullptr && !is_pinned(host_buffer)) {
    return kc::download_blocks_staged(host, c.pool(), c.geometry(), ids.data(), n, c.staging(),
                                      c.staging_blocks(), copy_);
  }
  AS_RETURN_IF_ERROR(kc::gather_blocks_to_host(host, c.pool(), c.geometry(), ids.data(), n, copy_));
  return cuda_status(cudaStreamSynchronize(copy_), "download_blocks");
}

void CudaBackend::upload_blocks(KvCache& cache, std::span<const int32_t> ids, const void* host_buffer) {
  if (ids.empty()) return;
  const CudaKvCache& c = cuda_cache(cache);
  record(copy_stream_after_compute());
  record(kc::scatter_blocks_from_host(c.pool(), static_cast<const bf16*>(host_buffer), c.geometry(),
                                      ids.data(), static_cast<int>(ids.size()), copy_));
  // Later compute reads the blocks only after they land; the host buffer is free when this returns.
  record(cuda_status(cudaEventRecord(copy_done_, copy_), "cudaEventRecord"));
  record(cuda_status(cudaStreamWaitEvent(compute_, copy_done_, 0), "cudaStreamWaitEvent"));
  if (is_pinned(host_buffer)) record(cuda_status(cudaStreamSynchronize(copy_), "upload_blocks"));
}

// ---- Attention, norms, element-wise ops and sampling ------------------------------------------------------

void CudaBackend::embedding(float* out, const WeightMatrix& table, const int32_t* ids, int n_rows) {
  record(kc::embedding(out, ids, n_rows, table.data, table.dtype, static_cast<int>(table.rows),
                       static_cast<int>(table.cols), compute_));
}

void CudaBackend::rmsnorm(float* out, const float* x, const float* weight, int n_rows, int dim, float eps) {
  record(kc::rmsnorm(out, x, weight, kernels::DType::kF32, n_rows, dim, eps, compute_));
}

void CudaBackend::rope_tables(float* cos, float* sin, const int32_t* positions, int n_tokens,
                              const float* inv_freq, int half_dim, float attention_factor) {
  record(kc::rope_cos_sin(cos, sin, positions, n_tokens, inv_freq, half_dim, attention_factor, compute_));
}

void CudaBackend::qk_norm_rope(float* q, float* k, const float* q_norm, const float* k_norm, const float* cos,
                               const float* sin, int n_tokens, int n_heads, int n_kv_heads, int head_dim,
                               float eps) {
  kc::QkNormRopeArgs args;
  args.q = q;
  args.k = k;
  args.q_stride = static_cast<size_t>(n_heads) * static_cast<size_t>(head_dim);
  args.k_stride = static_cast<size_t>(n_kv_heads) * static_cast<size_t>(head_dim);
  args.q_norm_weight = q_norm;
  args.k_norm_weight = k_norm;
  args.weight_dtype = kernels::DType::kF32;
  args.cos = cos;
  args.sin = sin;
  args.n_tokens = n_tokens;
  args.n_heads = n_heads;
  args.n_kv_heads = n_kv_heads;
  args.head_dim = head_dim;
  args.eps = eps;
  record(kc::qk_norm_rope(args, compute_));
}

void CudaBackend::kv_write(KvCache& cache, int layer, const float* k, const float* v, const int32_t* slots,
                           int n_tokens) {
  const CudaKvCache& c = cuda_cache(cache);
  const kc::KvPoolGeometry& geo = c.geometry();
  record(kc::kv_write(c.pool(), geo, layer, k, v, static_cast<size_t>(geo.n_kv_heads) * geo.head_dim, slots,
                      n_tokens, compute_));
}

void CudaBackend::paged_attention(float* out, const float* q, const KvCache& cache, int layer,
                                  const AttentionBatch& batch, int n_heads, float scale) {
  const CudaKvCache& c = cuda_cache(cache);
  const kc::PagedBatch paged{batch.n_chunks,    batch.max_query_len, batch.max_context_len,
                             batch.query_start, batch.context_len,   batch.block_table_start,
                             batch.block_tables};
  const kc::AttentionShape shape{n_heads, c.geometry().n_kv_heads, scale};
  // Every decode step takes the split-K kernel, in passes when the batch has more chunks than the reserved
  // partials hold; only a context beyond the reserved limits (one chunk's partials do not fit) falls back.
  const size_t one_chunk =
      kc::paged_attention_decode_workspace_bytes(1, n_heads, c.geometry().head_dim, batch.max_context_len);
  if (batch.max_query_len == 1 && one_chunk <= attention_workspace_.bytes()) {
    record(kc::paged_attention_decode(out, q, c.pool(), c.geometry(), layer, shape, paged,
                                      attention_workspace_.data(), attention_workspace_.bytes(), compute_));
  } else {
    record(kc::paged_attention_prefill(out, q, c.pool(), c.geometry(), layer, shape, paged, compute_));
  }
}

void CudaBackend::add(float* a, const float* b, size_t n) {
  record(kc::add_inplace(a, b, n, compute_));
}

void CudaBackend::argmax(int32_t* tokens, const float* logits, int n_rows, int vocab) {
  record(kc::argmax_rows(tokens, logits, n_rows, vocab, compute_));
}

size_t CudaBackend::sample_workspace_bytes(int, int) const {
  return 0;  // one thread block per row keeps everything in shared memory
}

void CudaBackend::sample_top_p(int32_t* tokens, const float* logits, const SamplingRow* rows, int n_rows,
                               int vocab, void*) {
  record(kc::sample_rows(tokens, logits, reinterpret_cast<const kc::RowSampling*>(rows), n_rows, vocab,
                         compute_));
}

// ---- Dense projections and the MoE MLP: thin calls into kernels/cuda/gemm.h and moe.h --------------------

void CudaBackend::matmul(float* y, const float* x, const WeightMatrix& w, int n_tokens) {
  record(kc::gemm(cublas_, compute_, y, x, w.data, w.dtype, n_tokens, static_cast<int>(w.cols),
                  static_cast<int>(w.rows), gemm_workspace_.data(), gemm_workspace_.bytes()));
}

void CudaBackend::moe_route(int32_t* expert_ids, float* expert_weights, const float* router_logits,
                            int n_tokens, int n_experts, int top_k, bool normalize) {
  record(kc::moe_route(expert_ids, expert_weights, router_logits, n_tokens, n_experts, top_k, normalize,
                       compute_));
}

namespace {
kc::MoeExperts moe_experts_of(const ExpertWeights& e) {
  return {.dtype = e.dtype,
          .gate = e.gate,
          .up = e.up,
          .down = e.down,
          .n_experts = e.n_experts,
          .hidden = e.hidden,
          .inter = e.inter};
}
}  // namespace

size_t CudaBackend::moe_workspace_bytes(int max_tokens, int top_k, const ExpertWeights& experts) const {
  return kc::moe_workspace_bytes(max_tokens, top_k, moe_experts_of(experts));
}

void CudaBackend::moe_experts(float* out, const float* x, const int32_t* expert_ids,
                              const float* expert_weights, int n_tokens, int top_k,
                              const ExpertWeights& experts, void* workspace) {
  // The backend never sees the workspace's size: the caller sized it for a max_tokens >= n_tokens, which
  // reserve() bounds by limits_.max_tokens. A step past that bound would overrun the device memory, and the
  // kernel, told only the size n_tokens needs, could not notice: refuse it here, as synchronize() reports.
  if (n_tokens > limits_.max_tokens) {
    record(Status::invalid_argument("moe_experts: " + std::to_string(n_tokens) +
                                    " tokens, more than the reserved max_tokens " +
                                    std::to_string(limits_.max_tokens)));
    return;
  }
  const kc::MoeExperts e = moe_experts_of(experts);
  record(kc::moe_experts(out, x, expert_ids, expert_weights, n_tokens, top_k, e, workspace,
                         kc::moe_workspace_bytes(n_tokens, top_k, e), compute_));
}

}  // namespace agentserve::engine
