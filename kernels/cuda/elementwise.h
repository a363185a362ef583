// Element-wise ops of the forward pass on the GPU: the residual add and the SwiGLU gate, with the same
// formulas as kernels/cpu/elementwise.h (its *_ref functions are the oracle). f32 device pointers, n >= 0
// elements (0 is a no-op). Host launchers only; no allocation, no synchronisation.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "base/status.h"

namespace agentserve::kernels::cuda {

// a[i] += b[i]; exactly rounded, so bit-identical to the CPU.
Status add_inplace(float* a, const float* b, size_t n, cudaStream_t stream);

// out[i] = silu(gate[i]) * up[i], silu(x) = x / (1 + exp(-x)); out may alias gate or up exactly.
Status silu_mul(float* out, const float* gate, const float* up, size_t n, cudaStream_t stream);

// Row-wise SwiGLU over a fused gate/up projection: row r of gate_up is [gate (inter) | up (inter)], out is
// [n_rows][inter]. out must not overlap gate_up.
Status silu_mul_rows(float* out, const float* gate_up, int n_rows, int inter, cudaStream_t stream);

}  // namespace agentserve::kernels::cuda
