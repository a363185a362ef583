// Element-wise and small vector ops of the forward pass: the SwiGLU gate (silu_mul), the residual add,
// the weighted expert sum (axpy), embedding-row widening and greedy argmax. Pure math on pointers and
// lengths: no allocation, no state. Lengths n >= 0 unless stated; outputs may alias their first input
// exactly where noted, never partially.
#pragma once

#include <cstddef>

#include "kernels/dtype.h"

namespace agentserve::kernels {

// out[i] = silu(gate[i]) * up[i], silu(x) = x / (1 + exp(-x)); out may alias gate or up.
void silu_mul_ref(float* out, const float* gate, const float* up, size_t n);
// Vector exp (about 2 ulp), so about 4 ulp over the whole expression.
void silu_mul(float* out, const float* gate, const float* up, size_t n);

// a[i] += b[i]. Exactly rounded either way, so there is no separate reference.
void add_inplace(float* a, const float* b, size_t n);

// out[i] += w * x[i] (the MoE combine: out += routing_weight * expert_out).
void axpy_ref(float* out, float w, const float* x, size_t n);
// Fused multiply-add where the CPU has it: one rounding per element instead of two.
void axpy(float* out, float w, const float* x, size_t n);

// out[i] = float(src[i]) for src of the given dtype (an embedding row lookup). BF16 widens exactly.
void convert_to_f32(float* out, const void* src, DType src_dtype, size_t n);

// Index of the largest value; ties and equal maxima go to the lowest index; NaNs are never chosen
// (an all-NaN or empty input gives 0). n >= 0.
size_t argmax_ref(const float* x, size_t n);
size_t argmax(const float* x, size_t n);

// The compiler-vectorised paths used when the build has no AVX-512; always compiled so tests run them.
namespace portable {
void silu_mul(float* out, const float* gate, const float* up, size_t n);
size_t argmax(const float* x, size_t n);
}  // namespace portable

}  // namespace agentserve::kernels
