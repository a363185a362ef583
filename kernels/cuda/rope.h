// RoPE on the GPU (rotate-half layout, optional YaRN) and Qwen3's per-head q/k RMSNorm fused with it, in one
// pass over the q and k heads of a step. The math is kernels/cpu/rope.h and kernels/cpu/rmsnorm.h (their
// *_ref functions are the oracle): the inv_freq table and attention factor come from kernels::rope_inv_freq
// and kernels::rope_attention_factor, built once at model load and uploaded; rope_cos_sin takes the angle
// as the f32 product float(position) * inv_freq[j] and cos/sin in double, rounded, then times the
// attention factor (bit-identical to the CPU's tables); the rotation rounds each product and sum
// separately as transformers does. Host launchers only; no allocation, no synchronisation.
//
//   cos[t, j] = f32(cos(angle[t, j])) * attention_factor, sin likewise, j < half = head_dim / 2
//   per head vector v (head_dim values): v = v / sqrt(mean(v^2) + eps) * norm_weight
//   v'[j] = v[j] cos[t, j] - v[j + half] sin[t, j],   v'[j + half] = v[j + half] cos[t, j] + v[j] sin[t, j]
//
// Shapes (device memory): positions [n_tokens] int32; inv_freq [half_dim] f32; cos, sin [n_tokens][half_dim]
// f32. q: token t's heads at q + t * q_stride, head h at + h * head_dim (q_stride >= n_heads * head_dim); k
// likewise with k_stride and n_kv_heads; norm weights [head_dim] of weight_dtype. Limits: n_tokens >= 0,
// heads >= 1, head_dim even in [2, 256]. Either norm weight may be null to skip that norm (plain RoPE).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "base/status.h"
#include "kernels/dtype.h"

namespace agentserve::kernels::cuda {

struct QkNormRopeArgs {
  float* q = nullptr;
  float* k = nullptr;
  size_t q_stride = 0;  // floats between tokens of q
  size_t k_stride = 0;
  const void* q_norm_weight = nullptr;
  const void* k_norm_weight = nullptr;
  DType weight_dtype = DType::kF32;
  const float* cos = nullptr;  // [n_tokens][head_dim / 2], from rope_cos_sin
  const float* sin = nullptr;
  int n_tokens = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  float eps = 1e-6f;
};

Status rope_cos_sin(float* cos, float* sin, const int32_t* positions, int n_tokens, const float* inv_freq,
                    int half_dim, float attention_factor, cudaStream_t stream);

Status qk_norm_rope(const QkNormRopeArgs& args, cudaStream_t stream);

}  // namespace agentserve::kernels::cuda
