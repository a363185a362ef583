// Element-wise ops of the forward pass on the GPU: the residual add, with the same formula as
// kernels/cpu/elementwise.h (its *_ref functions are the oracle). SwiGLU has no kernel of its own here: the
// MoE gate/up GEMM applies silu(gate) * up in its epilogue (moe_expert_gemm.cu), for dense MLPs too.
// f32 device pointers, n >= 0 elements (0 is a no-op). Host launchers only; no allocation, no
// synchronisation.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "base/status.h"

namespace agentserve::kernels::cuda {

// a[i] += b[i]; exactly rounded, so bit-identical to the CPU.
Status add_inplace(float* a, const float* b, size_t n, cudaStream_t stream);

}  // namespace agentserve::kernels::cuda
