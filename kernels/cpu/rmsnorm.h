// RMSNorm, as Qwen3 uses it for the hidden states (rows = tokens, dim = hidden) and for the per-head
// q/k norm (rows = tokens * heads, dim = head_dim, one weight shared by all heads). Pure math on
// pointers: no allocation, no state.
//
//   out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight[:]
//
// Shapes: x, out [n_rows, dim] f32 (out may alias x exactly, not partially); weight [dim] f32.
// Limits: n_rows >= 0, dim >= 1, eps >= 0 (Qwen3 uses 1e-6).
#pragma once

namespace agentserve::kernels {

// Oracle: double accumulation and double scale.
void rmsnorm_ref(float* out, const float* x, const float* weight, int n_rows, int dim, float eps);

// f32 with 16 independent partial sums per row (the sum of squares has no cancellation, so the
// error stays near dim/16 * 2^-24 relative).
void rmsnorm(float* out, const float* x, const float* weight, int n_rows, int dim, float eps);

namespace portable {
void rmsnorm(float* out, const float* x, const float* weight, int n_rows, int dim, float eps);
}  // namespace portable

}  // namespace agentserve::kernels
