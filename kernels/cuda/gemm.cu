// y[r][o] = sum_k x[r][k] * W[o][k]  (row-major; W in the checkpoint's [out][in] layout)
//
// cuBLAS is column-major. A row-major [a][b] array is the column-major [b][a] array of its transpose, so
// y^T (out x rows, ld out) = op(W) * x^T with W seen as column-major [in][out] (ld in) and op = transpose,
// and x seen as column-major [in][rows] (ld in) untransposed: one cublasGemmEx with (T, N), m = out_dim,
// n = rows, k = in_dim. The plain reference is kernels/cpu/matmul.h's matmul_ref.
//
// For a few rows (decode) the GEMV kernel is used instead: one warp per output column reads W's row once
// (16-byte loads) and dots it with up to 8 rows of x at a time, straight from f32 (no BF16 copy of x).
#include "kernels/cuda/gemm.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_helpers.cuh"

namespace agentserve::kernels::cuda {
namespace {

constexpr int kConvertThreads = 256;
constexpr int kConvertMaxBlocks = 4096;
constexpr int kGemvWarps = 8;  // output columns per block
constexpr int kGemvRows = 8;   // rows of x a warp accumulates at once

__global__ void convert_f32_to_bf16_kernel(__nv_bfloat16* out, const float* in, size_t n) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    out[i] = __float2bfloat16_rn(in[i]);
  }
}

// kVec: bf16 W with in_dim % 8 == 0 and 16-byte aligned W and x, so a lane reads 8 values at a time.
template <typename TW, bool kVec>
__global__ void __launch_bounds__(kGemvWarps* kWarp)
    gemv_kernel(float* y, const float* x, const TW* w, int rows, int in_dim, int out_dim) {
  const int lane = threadIdx.x % kWarp;
  const int o = blockIdx.x * kGemvWarps + threadIdx.x / kWarp;
  if (o >= out_dim) return;  // warp-uniform; no block-level sync
  const TW* wr = w + static_cast<size_t>(o) * in_dim;
  for (int r0 = 0; r0 < rows; r0 += kGemvRows) {
    const int nr = min(kGemvRows, rows - r0);
    float acc[kGemvRows];
#pragma unroll
    for (int r = 0; r < kGemvRows; ++r) acc[r] = 0.0f;
    if constexpr (kVec) {
      for (int k = lane * 8; k < in_dim; k += kWarp * 8) {
        float wv[8];
        load8(wr + k, wv);
#pragma unroll
        for (int r = 0; r < kGemvRows; ++r) {
          if (r < nr) {
            float xv[8];
            load8(x + static_cast<size_t>(r0 + r) * in_dim + k, xv);
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[r] = fmaf(xv[j], wv[j], acc[r]);
          }
        }
      }
    } else {
      for (int k = lane; k < in_dim; k += kWarp) {
        const float wv = to_float(wr[k]);
#pragma unroll
        for (int r = 0; r < kGemvRows; ++r) {
          if (r < nr) acc[r] = fmaf(x[static_cast<size_t>(r0 + r) * in_dim + k], wv, acc[r]);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kGemvRows; ++r) acc[r] = warp_sum(acc[r]);
    if (lane == 0) {
      for (int r = 0; r < nr; ++r) y[static_cast<size_t>(r0 + r) * out_dim + o] = acc[r];
    }
  }
}

Status cublas_status(cublasStatus_t st, const char* what) {
  if (st == CUBLAS_STATUS_SUCCESS) return Status::ok_status();
  return Status::internal(std::string(what) + ": " + cublasGetStatusString(st));
}

Status check_shape(int rows, int in_dim, int out_dim) {
  if (rows < 0 || in_dim < 1 || out_dim < 1) {
    return Status::invalid_argument("gemm: rows " + std::to_string(rows) + ", in_dim " +
                                    std::to_string(in_dim) + ", out_dim " + std::to_string(out_dim) +
                                    " (need rows >= 0, dims >= 1)");
  }
  return Status::ok_status();
}

// One cublasGemmEx in the (T, N) form of the file comment; a_type/b_type name W's and x's element types.
Status gemm_ex(cublasHandle_t handle, cudaStream_t stream, float* y, const void* x, cudaDataType_t x_type,
               const void* w, cudaDataType_t w_type, int rows, int in_dim, int out_dim) {
  AS_RETURN_IF_ERROR(cublas_status(cublasSetStream(handle, stream), "cublasSetStream"));
  // alpha and beta are host values; a handle left in device pointer mode by someone else would read garbage.
  AS_RETURN_IF_ERROR(
      cublas_status(cublasSetPointerMode(handle, CUBLAS_POINTER_MODE_HOST), "cublasSetPointerMode"));
  const float alpha = 1.0f;
  const float beta = 0.0f;
  return cublas_status(
      cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, out_dim, rows, in_dim, &alpha, w, w_type, in_dim, x,
                   x_type, in_dim, &beta, y, CUDA_R_32F, out_dim, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
      "cublasGemmEx");
}

Status gemv(cudaStream_t stream, float* y, const float* x, const void* w, DType w_dtype, int rows, int in_dim,
            int out_dim) {
  const int blocks = (out_dim + kGemvWarps - 1) / kGemvWarps;
  const int threads = kGemvWarps * kWarp;
  if (w_dtype == DType::kF32) {
    gemv_kernel<float, false>
        <<<blocks, threads, 0, stream>>>(y, x, static_cast<const float*>(w), rows, in_dim, out_dim);
  } else {
    const auto* wb = static_cast<const __nv_bfloat16*>(w);
    if (in_dim % 8 == 0 && aligned16(w) && aligned16(x)) {
      gemv_kernel<__nv_bfloat16, true><<<blocks, threads, 0, stream>>>(y, x, wb, rows, in_dim, out_dim);
    } else {
      gemv_kernel<__nv_bfloat16, false><<<blocks, threads, 0, stream>>>(y, x, wb, rows, in_dim, out_dim);
    }
  }
  return launch_status("gemv launch");
}

}  // namespace

size_t gemm_workspace_bytes(int rows, int in_dim, DType w_dtype) {
  if (w_dtype != DType::kBF16 || rows <= 0 || in_dim <= 0) return 0;
  return static_cast<size_t>(rows) * static_cast<size_t>(in_dim) * sizeof(bf16);
}

Status convert_f32_to_bf16(bf16* out, const float* in, size_t n, cudaStream_t stream) {
  if (n == 0) return Status::ok_status();
  if (out == nullptr || in == nullptr) return Status::invalid_argument("convert_f32_to_bf16: null pointer");
  const size_t blocks_needed = (n + kConvertThreads - 1) / kConvertThreads;
  const int blocks = static_cast<int>(blocks_needed < kConvertMaxBlocks ? blocks_needed : kConvertMaxBlocks);
  convert_f32_to_bf16_kernel<<<blocks, kConvertThreads, 0, stream>>>(reinterpret_cast<__nv_bfloat16*>(out),
                                                                     in, n);
  return launch_status("convert_f32_to_bf16 launch");
}

Status gemm_bf16(cublasHandle_t handle, cudaStream_t stream, float* y, const bf16* x, const bf16* w, int rows,
                 int in_dim, int out_dim) {
  AS_RETURN_IF_ERROR(check_shape(rows, in_dim, out_dim));
  if (rows == 0) return Status::ok_status();
  if (y == nullptr || x == nullptr || w == nullptr)
    return Status::invalid_argument("gemm_bf16: null pointer");
  return gemm_ex(handle, stream, y, x, CUDA_R_16BF, w, CUDA_R_16BF, rows, in_dim, out_dim);
}

Status gemm(cublasHandle_t handle, cudaStream_t stream, float* y, const float* x, const void* w,
            DType w_dtype, int rows, int in_dim, int out_dim, void* workspace, size_t workspace_bytes,
            GemmPath path) {
  AS_RETURN_IF_ERROR(check_shape(rows, in_dim, out_dim));
  if (rows == 0) return Status::ok_status();
  if (y == nullptr || x == nullptr || w == nullptr) return Status::invalid_argument("gemm: null pointer");
  if (path == GemmPath::kGemv ||
      (path == GemmPath::kAuto && w_dtype == DType::kBF16 && rows <= kGemmGemvMaxRows)) {
    return gemv(stream, y, x, w, w_dtype, rows, in_dim, out_dim);
  }
  if (w_dtype == DType::kF32) {
    return gemm_ex(handle, stream, y, x, CUDA_R_32F, w, CUDA_R_32F, rows, in_dim, out_dim);
  }
  const size_t needed = gemm_workspace_bytes(rows, in_dim, w_dtype);
  if (workspace == nullptr || workspace_bytes < needed) {
    return Status::invalid_argument("gemm: workspace of " + std::to_string(workspace_bytes) +
                                    " bytes, need " + std::to_string(needed));
  }
  auto* x_bf16 = static_cast<bf16*>(workspace);
  AS_RETURN_IF_ERROR(
      convert_f32_to_bf16(x_bf16, x, static_cast<size_t>(rows) * static_cast<size_t>(in_dim), stream));
  return gemm_bf16(handle, stream, y, x_bf16, static_cast<const bf16*>(w), rows, in_dim, out_dim);
}

}  // namespace agentserve::kernels::cuda
