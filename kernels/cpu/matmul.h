// Dense projection y = x W^T in the Hugging Face nn.Linear layout, the op that dominates a forward pass:
// decode (1-8 tokens) streams each weight row once from memory and uses it for all tokens; prefill
// (many tokens) reuses weights from cache in register tiles. Pure math on pointers and shapes: no
// allocation (the prefill path packs weights into a fixed-size stack buffer), no threads (callers split
// the output rows across a pool), never reads outside the given shapes.
//
// Shapes (row-major, no padding):
//   x [n_tokens, in_dim] f32,  W [out_dim, in_dim] f32 or BF16,  y [n_tokens, out_dim] f32.
// Limits: n_tokens, in_dim, out_dim >= 1; 0 <= row_begin <= row_end <= out_dim. y, x and W must not
// overlap.
//
// Precision: matmul accumulates in f32 with fused multiply-add (each BF16 weight is widened exactly, so
// a product is rounded once, inside the FMA); the error is that of an f32 dot product. The opt-in
// matmul_bf16_activations also rounds x to BF16 (relative error up to 2^-8 per element), which is about twice
// as fast in prefill on CPUs with AVX512_BF16; only a caller that accepts that precision uses it.
#pragma once

#include <cstddef>

#include "base/bf16.h"
#include "kernels/dtype.h"

namespace agentserve::kernels {

// Oracle: double accumulation over all rows.
void matmul_ref(float* y, const float* x, const void* w, DType w_dtype, int n_tokens, int in_dim,
                int out_dim);

// Computes y[t, o] for every token and o in [row_begin, row_end) only; other columns of y are untouched,
// so threads can each take a row range of the same call. From 8 tokens on it works in panels of 32 rows:
// row ranges in multiples of 32 waste no lanes.
void matmul(float* y, const float* x, const void* w, DType w_dtype, int n_tokens, int in_dim, int out_dim,
            int row_begin, int row_end);

// Opt-in reduced-precision path (see above). The caller converts the activations once per step with
// convert_activations_bf16 (x_bf16 has the shape of x) and shares them across threads. W must be BF16.
void convert_activations_bf16(bf16* x_bf16, const float* x, size_t n);
void matmul_bf16_activations(float* y, const bf16* x_bf16, const bf16* w, int n_tokens, int in_dim,
                             int out_dim, int row_begin, int row_end);

// The compiler-vectorised paths used when the build has no AVX-512; always compiled so tests run them.
namespace portable {
void matmul(float* y, const float* x, const void* w, DType w_dtype, int n_tokens, int in_dim, int out_dim,
            int row_begin, int row_end);
void matmul_bf16_activations(float* y, const bf16* x_bf16, const bf16* w, int n_tokens, int in_dim,
                             int out_dim, int row_begin, int row_end);
}  // namespace portable

}  // namespace agentserve::kernels
