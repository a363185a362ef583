// RMSNorm on the GPU, as kernels/cpu/rmsnorm.h defines it (that file's rmsnorm_ref is the oracle): f32
// rows in and out, the weight f32 or bf16, the sum of squares accumulated in f32 as a tree (so the error
// stays near log2(dim) * 2^-24 relative). Host launcher only; it never allocates and never synchronises.
//
//   out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight[:]
//
// Shapes: x, out [n_rows, dim] f32 on the device (out may alias x exactly); weight [dim] on the device.
// Limits: n_rows >= 0 (0 is a no-op), dim >= 1, eps >= 0.
#pragma once

#include <cuda_runtime_api.h>

#include "base/status.h"
#include "kernels/dtype.h"

namespace agentserve::kernels::cuda {

Status rmsnorm(float* out, const float* x, const void* weight, DType weight_dtype, int n_rows, int dim,
               float eps, cudaStream_t stream);

}  // namespace agentserve::kernels::cuda
