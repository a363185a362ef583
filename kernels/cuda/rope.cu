#include "kernels/cuda/rope.h"

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_helpers.cuh"

namespace agentserve::kernels::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;

__device__ __forceinline__ float weight_at(const void* w, DType dtype, int i) {
  if (w == nullptr) return 1.0f;
  return dtype == DType::kF32 ? static_cast<const float*>(w)[i]
                              : bf16_bits_to_float(static_cast<const uint16_t*>(w)[i]);
}

// One warp per head vector: warps [0, n_tokens * n_heads) take q heads, the rest k heads. A lane owns the
// pairs (j, j + half) for j = lane, lane + 32, ...; the norm's sum of squares is a warp reduction.
// __fmul_rn/__fadd_rn keep nvcc from contracting into FMAs, so the rotation rounds like the CPU's.
__global__ void qk_norm_rope_kernel(QkNormRopeArgs a) {
  const long long warp = static_cast<long long>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  const long long n_q = static_cast<long long>(a.n_tokens) * a.n_heads;
  const long long n_all = n_q + static_cast<long long>(a.n_tokens) * a.n_kv_heads;
  if (warp >= n_all) return;  // whole warps leave together, so the shuffles below see full warps
  const bool is_q = warp < n_q;
  const int heads = is_q ? a.n_heads : a.n_kv_heads;
  const long long idx = is_q ? warp : warp - n_q;
  const int token = static_cast<int>(idx / heads);
  const int head = static_cast<int>(idx % heads);
  float* v =
      (is_q ? a.q + token * a.q_stride : a.k + token * a.k_stride) + static_cast<size_t>(head) * a.head_dim;
  const void* w = is_q ? a.q_norm_weight : a.k_norm_weight;
  const int half = a.head_dim / 2;

  float scale = 1.0f;
  if (w != nullptr) {
    float sum_sq = 0.0f;
    for (int i = lane; i < a.head_dim; i += 32) sum_sq += v[i] * v[i];
    sum_sq = warp_sum(sum_sq);
    scale = 1.0f / sqrtf(sum_sq / static_cast<float>(a.head_dim) + a.eps);
  }
  const float* cos_row = a.cos + static_cast<size_t>(token) * half;
  const float* sin_row = a.sin + static_cast<size_t>(token) * half;
  for (int j = lane; j < half; j += 32) {
    const float lo = v[j] * scale * weight_at(w, a.weight_dtype, j);
    const float hi = v[j + half] * scale * weight_at(w, a.weight_dtype, j + half);
    const float c = cos_row[j];
    const float s = sin_row[j];
    v[j] = __fsub_rn(__fmul_rn(lo, c), __fmul_rn(hi, s));
    v[j + half] = __fadd_rn(__fmul_rn(hi, c), __fmul_rn(lo, s));
  }
}

// One thread per (token, j): the f32 angle, cos/sin in double (as the CPU tables), rounded, then scaled.
__global__ void rope_cos_sin_kernel(float* cos_out, float* sin_out, const int32_t* positions, int n_tokens,
                                    const float* inv_freq, int half_dim, float attention_factor) {
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<size_t>(n_tokens) * half_dim) return;
  const int token = static_cast<int>(i / half_dim);
  const int j = static_cast<int>(i % half_dim);
  const float angle = __fmul_rn(static_cast<float>(positions[token]), inv_freq[j]);
  cos_out[i] = __fmul_rn(static_cast<float>(cos(static_cast<double>(angle))), attention_factor);
  sin_out[i] = __fmul_rn(static_cast<float>(sin(static_cast<double>(angle))), attention_factor);
}

}  // namespace

Status rope_cos_sin(float* cos, float* sin, const int32_t* positions, int n_tokens, const float* inv_freq,
                    int half_dim, float attention_factor, cudaStream_t stream) {
  if (n_tokens < 0 || half_dim < 1) return Status::invalid_argument("rope_cos_sin: bad shape");
  if (n_tokens == 0) return Status::ok_status();
  if (cos == nullptr || sin == nullptr || positions == nullptr || inv_freq == nullptr) {
    return Status::invalid_argument("rope_cos_sin: null pointer");
  }
  constexpr int kThreads = 256;
  const size_t blocks = (static_cast<size_t>(n_tokens) * half_dim + kThreads - 1) / kThreads;
  if (blocks > 0x7fffffffu) return Status::invalid_argument("rope_cos_sin: too many tokens for one launch");
  rope_cos_sin_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      cos, sin, positions, n_tokens, inv_freq, half_dim, attention_factor);
  return launch_status("rope_cos_sin");
}

Status qk_norm_rope(const QkNormRopeArgs& a, cudaStream_t stream) {
  if (a.n_tokens < 0 || a.n_heads < 1 || a.n_kv_heads < 1)
    return Status::invalid_argument("qk_norm_rope: bad shape");
  if (a.head_dim < 2 || a.head_dim > 256 || a.head_dim % 2 != 0) {
    return Status::invalid_argument("qk_norm_rope: head_dim must be even in [2, 256]");
  }
  if (a.q_stride < static_cast<size_t>(a.n_heads) * a.head_dim ||
      a.k_stride < static_cast<size_t>(a.n_kv_heads) * a.head_dim) {
    return Status::invalid_argument("qk_norm_rope: token stride below one row of heads");
  }
  if (!(a.eps >= 0.0f)) return Status::invalid_argument("qk_norm_rope: eps must be >= 0");
  if (a.n_tokens == 0) return Status::ok_status();
  if (a.q == nullptr || a.k == nullptr || a.cos == nullptr || a.sin == nullptr) {
    return Status::invalid_argument("qk_norm_rope: null pointer");
  }
  const long long warps = static_cast<long long>(a.n_tokens) * (a.n_heads + a.n_kv_heads);
  const long long blocks = (warps + kWarpsPerBlock - 1) / kWarpsPerBlock;
  if (blocks > 0x7fffffffLL) return Status::invalid_argument("qk_norm_rope: too many heads for one launch");
  qk_norm_rope_kernel<<<static_cast<unsigned>(blocks), kWarpsPerBlock * 32, 0, stream>>>(a);
  return launch_status("qk_norm_rope");
}

}  // namespace agentserve::kernels::cuda
