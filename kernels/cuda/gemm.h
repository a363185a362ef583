// Dense projection on the GPU, the nn.Linear of every layer: y = x W^T with W in the checkpoint's layout.
// cuBLAS does the work (cublasGemmEx, FP32 accumulation: CUBLAS_COMPUTE_32F, never TF32 or reduced-precision
// reductions) except for decode-sized inputs, where a GEMV kernel streams W once; this module converts the
// f32 activations to BF16 for the tensor cores and maps the row-major shapes onto cuBLAS's column-major view.
// It never allocates (the BF16 copy of x goes into a caller-sized workspace), never synchronises, and never
// reads device memory from the host. This header compiles with g++.
//
// Shapes (row-major, device memory):
//   x [rows][in_dim] f32,  W [out_dim][in_dim] f32 or BF16,  y [rows][out_dim] f32.
// Limits: rows, in_dim, out_dim >= 1 (rows 0 is a no-op); y must not overlap x, W or the workspace.
//
// Precision: on the cuBLAS path with a BF16 W, x is rounded to BF16 (nearest even; relative error <= 2^-9
// per element) and the products are summed in f32, so |y - y_exact| <= 2^-8 * sum_k |x_k W_ok| plus f32
// rounding. The GEMV path (few rows) and an f32 W (SGEMM semantics, no TF32) keep x in f32: f32 dot products.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstddef>

#include "base/bf16.h"
#include "base/status.h"
#include "kernels/dtype.h"

namespace agentserve::kernels::cuda {

// Which kernel gemm runs. kAuto: the GEMV kernel for a BF16 W and at most kGemmGemvMaxRows rows (decode,
// where the work is streaming W once and cuBLAS's small-n kernels plus the BF16 copy of x cost more), cuBLAS
// otherwise. The others force one (tests run both on the same inputs).
enum class GemmPath { kAuto, kCublas, kGemv };
constexpr int kGemmGemvMaxRows = 8;

// Bytes of workspace gemm needs for `rows` x `in_dim` activations (0 for an f32 W).
size_t gemm_workspace_bytes(int rows, int in_dim, DType w_dtype);

// y = x W^T on `stream` (the handle is bound to it for this call). workspace: device memory of at least
// gemm_workspace_bytes(rows, in_dim, w_dtype) bytes, 16-byte aligned; unused for an f32 W and by the GEMV
// path.
Status gemm(cublasHandle_t handle, cudaStream_t stream, float* y, const float* x, const void* w,
            DType w_dtype, int rows, int in_dim, int out_dim, void* workspace, size_t workspace_bytes,
            GemmPath path = GemmPath::kAuto);

// y = x W^T with x already BF16 (an activation kept in BF16 by its producer), W BF16.
Status gemm_bf16(cublasHandle_t handle, cudaStream_t stream, float* y, const bf16* x, const bf16* w, int rows,
                 int in_dim, int out_dim);

// out[i] = bf16(in[i]), round to nearest even (as base/bf16.h's float_to_bf16), i < n.
Status convert_f32_to_bf16(bf16* out, const float* in, size_t n, cudaStream_t stream);

}  // namespace agentserve::kernels::cuda
