// The grouped expert GEMMs of the MoE pipeline (moe.cu's steps 3 and 4), internal to the kernels/cuda MoE
// files: after the permutation the rows of each expert are contiguous, and these kernels multiply every
// expert's rows by its own weights, reading only the experts that received rows. Two forms, picked by the
// caller: a GEMV form (one warp per output column, all of an expert's rows at once: decode, where the work
// is streaming the weights) and a tiled BF16 WMMA form over the (expert, 64-row tile) list the permutation
// built. Only .cu files include this (nvcc). No allocation, no synchronisation.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "base/status.h"
#include "kernels/dtype.h"

namespace agentserve::kernels::cuda {

// Rows per tile of the tiled form; the permutation counts each expert's tiles in these units.
constexpr int kMoeTileRows = 64;

// out[row][n] for the rows of each expert e: a[row] . w0_e[n] (down), or silu(a[row] . w0_e[n]) *
// (a[row] . w1_e[n]) rounded to bf16 (gate/up). a [n_rows][K] bf16; w0, w1 stacked [n_experts][N][K] of
// the experts' dtype. offsets/tile_offsets [n_experts + 1], active [n_experts] and n_active [1] are the
// permutation's device arrays.
struct ExpertGemmArgs {
  const __nv_bfloat16* a = nullptr;
  const void* w0 = nullptr;
  const void* w1 = nullptr;
  __nv_bfloat16* out_bf16 = nullptr;  // gate/up
  float* out_f32 = nullptr;           // down
  const int32_t* offsets = nullptr;
  const int32_t* tile_offsets = nullptr;
  const int32_t* active = nullptr;
  const int32_t* n_active = nullptr;
  int n_experts = 0;
  int K = 0;
  int N = 0;
};

// Launches the gate/up form (w0 = gate, w1 = up, out_bf16) or the down form (w0 = down, out_f32) over
// n_rows permuted rows; gemv picks the GEMV form, otherwise the tiled one. Weights in `dtype` (f32 or bf16).
Status launch_gate_up_gemm(const ExpertGemmArgs& g, DType dtype, bool gemv, int n_rows, cudaStream_t stream);
Status launch_down_gemm(const ExpertGemmArgs& g, DType dtype, bool gemv, int n_rows, cudaStream_t stream);

}  // namespace agentserve::kernels::cuda
