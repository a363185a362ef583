// Backend: the small set of memory operations and ops that a Qwen3-MoE forward pass needs, so the same
// model code (engine/backend_model.h) runs on the CPU (cpu_backend.h) and on a GPU (cuda/cuda_backend.h), and
// one op-parity test (tests/engine/backend_ops_test.cpp) runs every op on every backend present.
//
// Memory. A backend owns memory in its own address space (host memory for the CPU, device memory for CUDA):
// allocate() hands out a DeviceBuffer (RAII, move-only) and every pointer an op takes points into such
// buffers of the same backend, unless the comment says "host". Host data crosses only through upload /
// download / upload_blocks / download_blocks. The backend never allocates per op: ops that need scratch
// take a workspace the caller sized once with the matching *_workspace_bytes().
//
// Ordering. Ops and copies run in issue order on the backend's one stream; they may return before the work
// is done (CUDA) or after it (CPU). upload() may return before the copy lands but the host source may be
// reused at once; download() and download_blocks() return when the host bytes are there. synchronize()
// waits for everything issued and returns the first failure an asynchronous op met (a launch error, a
// device fault); ops themselves return nothing, so a forward pass reads like the paper. Ops never check
// shapes against buffer sizes: the caller (BackendModel) checks its inputs once per step.
//
// Layouts. Activations are f32, row-major, no padding. Weights are WeightMatrix views ([out][in] like the
// checkpoint, f32 or bf16) whose data lies in this backend. The KV cache is a KvCache made by the backend,
// whose element type and placement are the backend's (f32 blocks on the CPU, bf16 on CUDA); callers only
// name blocks and slots in it. A backend is used by one thread at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "base/status.h"
#include "base/thread_pool.h"
#include "engine/model_weights.h"
#include "kernels/dtype.h"

namespace agentserve::engine {

class Backend;

// Bytes in a backend's address space. Freed through the backend that made it, which must outlive it.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(Backend* backend, void* data, size_t bytes) : backend_(backend), data_(data), bytes_(bytes) {}
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }

 private:
  void release();

  Backend* backend_ = nullptr;
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// The shape of a paged KV cache: num_blocks blocks of block_size token slots, each slot holding K and V of
// every layer and kv head. Slot s of the cache is token s % block_size of block s / block_size.
struct KvCacheShape {
  int n_layers = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int block_size = 16;
  int num_blocks = 0;
};

// A paged KV pool in a backend's memory. Its layout is the backend's own; the base class says only what a
// caller may rely on: the shape, the element type, and how many bytes one block takes in a host buffer of
// download_blocks / upload_blocks (the blocks' K/V in the backend's element type; a block downloaded from a
// backend uploads back into the same kind of backend bit for bit). Slots nobody wrote read as 0.
class KvCache {
 public:
  virtual ~KvCache() = default;
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  const KvCacheShape& shape() const { return shape_; }
  kernels::DType dtype() const { return dtype_; }
  size_t host_block_bytes() const { return host_block_bytes_; }

 protected:
  KvCache(const KvCacheShape& shape, kernels::DType dtype, size_t host_block_bytes)
      : shape_(shape), dtype_(dtype), host_block_bytes_(host_block_bytes) {}

 private:
  KvCacheShape shape_;
  kernels::DType dtype_;
  size_t host_block_bytes_;
};

// A batch of sequence chunks for paged_attention. Chunk c owns query rows [query_start[c],
// query_start[c+1]) of q/out; its queries are the last n_c = query_start[c+1] - query_start[c] tokens of a
// context of context_len[c] tokens (so query i sits at position context_len[c] - n_c + i and sees positions
// 0..that one, causal), whose K/V are all in the cache already (kv_write ran first). Its block table is
// block_tables[block_table_start[c] .. block_table_start[c+1]), covering at least context_len[c] tokens.
// Decode is n_c = 1; prefill is context_len = n_c; chunked prefill over a cached prefix is anything between.
// The arrays lie in the backend's memory; the counts and maxima are host values (a GPU sizes its grid from
// them without a round trip).
struct AttentionBatch {
  int n_chunks = 0;
  int n_tokens = 0;                            // query_start[n_chunks]
  int max_query_len = 0;                       // max over chunks of n_c
  int max_context_len = 0;                     // max over chunks of context_len
  const int32_t* query_start = nullptr;        // [n_chunks + 1]
  const int32_t* context_len = nullptr;        // [n_chunks]
  const int32_t* block_table_start = nullptr;  // [n_chunks + 1]
  const int32_t* block_tables = nullptr;       // [block_table_start[n_chunks]]
};

// The experts of one MoE layer, stacked: expert e's gate rows start at gate + e * inter * hidden elements.
// A dense MLP is one expert (n_experts = 1) that every token visits with weight 1.
struct ExpertWeights {
  kernels::DType dtype = kernels::DType::kF32;
  const void* gate = nullptr;  // [n_experts][inter][hidden]
  const void* up = nullptr;    // [n_experts][inter][hidden]
  const void* down = nullptr;  // [n_experts][hidden][inter]
  int n_experts = 0;
  int hidden = 0;
  int inter = 0;
};

// Per-row parameters of sample_top_p. The row's uniform draw is Rng(seed).uniform() (engine/rng.h: the first
// output of xoshiro256** seeded through splitmix64), so the caller varies seed per step (seed + step).
struct SamplingRow {
  float temperature = 1.0f;  // > 0; rows below 1e-5 are greedy (argmax)
  float top_p = 1.0f;        // (0, 1]
  uint64_t seed = 0;
};

// The largest op a caller will issue, so a backend can size its internal scratch once (a GPU's bf16 copy
// of matmul inputs, split-K attention partials) instead of allocating per op.
struct OpLimits {
  int max_tokens = 1;  // rows of any activation (tokens of one step)
  // Widest matmul input row (w.cols of any matmul: max(hidden, heads * head_dim) for Qwen3-MoE). Output
  // widths need no scratch (the vocab-wide lm_head writes the caller's logits buffer), nor do the expert
  // projections (moe_experts works in its own workspace).
  int max_width = 1;
  int n_heads = 1;  // query heads of paged_attention
  int head_dim = 1;
  int max_context_len = 1;  // longest context a chunk of paged_attention sees
};

struct BackendMemoryInfo {
  size_t free_bytes = 0;
  size_t total_bytes = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;

  // "cpu", "cuda:0 (NVIDIA H200)": for logs, test names and benchmark reports.
  virtual std::string name() const = 0;
  virtual BackendMemoryInfo memory_info() const = 0;

  // ---- Memory ----------------------------------------------------------------------------------------
  // At least 256-byte aligned; contents undefined. ResourceExhausted when the memory is not there.
  virtual Result<DeviceBuffer> allocate(size_t bytes) = 0;
  // Returns a buffer's memory; only DeviceBuffer calls it.
  virtual void deallocate(void* data, size_t bytes) = 0;
  // host src -> dst; src may be reused when the call returns.
  virtual void upload(void* dst, const void* host_src, size_t bytes) = 0;
  // src -> host dst, after every op issued before; returns when the bytes are in host_dst.
  virtual Status download(void* host_dst, const void* src, size_t bytes) = 0;
  // Within this backend; the ranges must not overlap.
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;
  virtual void fill_zero(void* dst, size_t bytes) = 0;
  // Waits for everything issued; the first failure of an asynchronous op since the last call, if any.
  virtual Status synchronize() = 0;

  // Sizes internal scratch for ops within `limits`; call once before the first op (again to grow).
  // Ops beyond the limits reserved are a programming error. ResourceExhausted when the memory is not there.
  virtual Status reserve(const OpLimits& limits) = 0;

  // ---- KV cache ------------------------------------------------------------------------------------
  // A zeroed pool; ResourceExhausted when it does not fit, InvalidArgument for a non-positive field.
  virtual Result<std::unique_ptr<KvCache>> create_kv_cache(const KvCacheShape& shape) = 0;
  // Bytes one block of this shape takes in this backend's memory (num_blocks ignored): what a memory plan
  // divides the free memory by.
  virtual size_t kv_block_bytes(const KvCacheShape& shape) const = 0;
  // K/V of blocks ids[i] (host ids, in range) to/from host_buffer + i * cache.host_block_bytes().
  virtual Status download_blocks(void* host_buffer, const KvCache& cache, std::span<const int32_t> ids) = 0;
  virtual void upload_blocks(KvCache& cache, std::span<const int32_t> ids, const void* host_buffer) = 0;

  // ---- Ops -------------------------------------------------------------------------------------------
  // out[i, :] = float(table[ids[i], :]) for i < n_rows, ids in [0, table.rows); table [rows][cols] f32 or
  // bf16, out [n_rows][cols]. The embedding lookup, and (with an f32 table of activations) a row gather.
  virtual void embedding(float* out, const WeightMatrix& table, const int32_t* ids, int n_rows) = 0;

  // out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight; out may alias x. kernels/cpu/rmsnorm.h.
  virtual void rmsnorm(float* out, const float* x, const float* weight, int n_rows, int dim, float eps) = 0;

  // y[t, :] = x[t, :] W^T: x [n_tokens][w.cols], y [n_tokens][w.rows]; f32 accumulation.
  // kernels/cpu/matmul.h.
  virtual void matmul(float* y, const float* x, const WeightMatrix& w, int n_tokens) = 0;

  // cos, sin [n_tokens][half_dim] for positions[n_tokens] (kernels/cpu/rope.h: f32 angle, times
  // attention_factor). inv_freq [half_dim] lies in this backend (from kernels::rope_inv_freq, with YaRN).
  virtual void rope_tables(float* cos, float* sin, const int32_t* positions, int n_tokens,
                           const float* inv_freq, int half_dim, float attention_factor) = 0;

  // Qwen3's attention prologue, in place: q [n_tokens][n_heads][head_dim] and k [n_tokens][n_kv_heads]
  // [head_dim]; every head vector is RMS-normalised over head_dim with q_norm (k_norm), shared by all heads,
  // then rotated (rotate-half RoPE) by its token's cos/sin row from rope_tables. head_dim even.
  virtual void qk_norm_rope(float* q, float* k, const float* q_norm, const float* k_norm, const float* cos,
                            const float* sin, int n_tokens, int n_heads, int n_kv_heads, int head_dim,
                            float eps) = 0;

  // Stores token t's K and V (k, v [n_tokens][n_kv_heads][head_dim], f32) of `layer` in cache slot
  // slots[t] (block * block_size + offset), converting to the cache's element type. Slots distinct.
  virtual void kv_write(KvCache& cache, int layer, const float* k, const float* v, const int32_t* slots,
                        int n_tokens) = 0;

  // Causal grouped-query attention of every query row of the batch over its chunk's cached context:
  // out_h = sum_j softmax_j(scale * q_h . K[g, j]) V[g, j], g = h / (n_heads / n_kv_heads).
  // q, out [batch.n_tokens][n_heads][head_dim]; kernels/cpu/paged_attention.h is the reference.
  virtual void paged_attention(float* out, const float* q, const KvCache& cache, int layer,
                               const AttentionBatch& batch, int n_heads, float scale) = 0;

  // Softmax over each row of router_logits [n_tokens][n_experts], keep the top_k (largest first, ties to
  // the lower expert id), renormalised to sum 1 when `normalize`: expert_ids, expert_weights [n_tokens]
  // [top_k]. kernels/cpu/moe_router.h.
  virtual void moe_route(int32_t* expert_ids, float* expert_weights, const float* router_logits, int n_tokens,
                         int n_experts, int top_k, bool normalize) = 0;

  // The MoE MLP of n_tokens rows of x [n_tokens][hidden]:
  //   out[t] = sum_i expert_weights[t, i] * down_e(silu(gate_e x[t]) * up_e x[t]),  e = expert_ids[t, i]
  // (tokens grouped by expert, one grouped GEMM per projection). out [n_tokens][hidden] is overwritten.
  // workspace: moe_workspace_bytes(max_tokens >= n_tokens, top_k, experts) bytes of this backend.
  virtual size_t moe_workspace_bytes(int max_tokens, int top_k, const ExpertWeights& experts) const = 0;
  virtual void moe_experts(float* out, const float* x, const int32_t* expert_ids, const float* expert_weights,
                           int n_tokens, int top_k, const ExpertWeights& experts, void* workspace) = 0;

  // a[i] += b[i], i < n (the residual add).
  virtual void add(float* a, const float* b, size_t n) = 0;

  // tokens[r] = the index of the largest logits[r, :] (ties to the lowest index, NaN never chosen), r <
  // n_rows.
  virtual void argmax(int32_t* tokens, const float* logits, int n_rows, int vocab) = 0;

  // One draw per row from softmax(logits[r] / temperature) restricted to the nucleus: the tokens taken by
  // decreasing probability (ties: lower id first) up to and including the first at which the kept mass
  // reaches top_p. With u = Rng(seed).uniform() and kept mass M, the token is the first kept id, in
  // increasing id order, whose running kept probability exceeds u * M (the last kept id if rounding leaves
  // none). rows [n_rows] lie in this backend. workspace: sample_workspace_bytes(n_rows, vocab) bytes.
  virtual size_t sample_workspace_bytes(int n_rows, int vocab) const = 0;
  virtual void sample_top_p(int32_t* tokens, const float* logits, const SamplingRow* rows, int n_rows,
                            int vocab, void* workspace) = 0;
};

// The CPU backend over `pool`, which must outlive it (cpu_backend.h).
std::unique_ptr<Backend> make_cpu_backend(ThreadPool& pool);

// Every backend this build and machine can run: the CPU backend first, then CUDA when the build has it
// and a GPU is visible. Tests run each of their cases over this list.
std::vector<std::unique_ptr<Backend>> make_backends(ThreadPool& cpu_pool);

}  // namespace agentserve::engine
