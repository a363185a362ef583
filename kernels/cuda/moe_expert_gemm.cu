// The expert GEMMs of the MoE pipeline (moe_expert_gemm.cuh). The plain reference is matmul_ref +
// silu_mul_ref per (token, slot), as tests/cuda/moe_test.cpp checks through moe_experts.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_helpers.cuh"
#include "kernels/cuda/moe_expert_gemm.cuh"

namespace agentserve::kernels::cuda {
namespace {

using bf16_t = __nv_bfloat16;

constexpr int kGemvWarps = 8;         // output columns per GEMV block
constexpr int kGemvRows = 8;          // expert rows a GEMV warp accumulates at once
constexpr int kTileM = kMoeTileRows;  // tiled kernel: rows x columns x k-step of a block's tile
constexpr int kTileN = 64;
constexpr int kTileK = 32;
constexpr int kTileThreads = 128;     // 4 warps, 2 x 2, each 32 x 32 of the tile
constexpr int kTileLd = kTileK + 8;   // bf16 row pitch in shared memory: 80 bytes keeps 32-byte alignment
constexpr int kTileLdC = kTileN + 4;  // f32 pitch of the staged accumulators

// SwiGLU's gate.
__device__ __forceinline__ float silu(float x) {
  return x / (1.0f + __expf(-x));
}

template <bool kGateUp>
__device__ __forceinline__ void store_result(const ExpertGemmArgs& g, int row, int n, float v0, float v1) {
  const size_t at = static_cast<size_t>(row) * g.N + n;
  if constexpr (kGateUp) {
    g.out_bf16[at] = __float2bfloat16_rn(silu(v0) * v1);
  } else {
    g.out_f32[at] = v0;
  }
}

// GEMV form: block (x, y) = output columns [8x, 8x + 8) of the y-th expert that has rows; one warp per
// column reads the weight row(s) once per 8 expert rows and keeps 8 (x2) dot products in registers.
// kVec: bf16 weights and K % 8 == 0, so every lane reads 16 bytes at a time.
template <typename TW, bool kGateUp, bool kVec>
__global__ void __launch_bounds__(kGemvWarps* kWarp) moe_gemv_kernel(ExpertGemmArgs g) {
  if (static_cast<int>(blockIdx.y) >= *g.n_active) return;
  const int e = g.active[blockIdx.y];
  const int lane = threadIdx.x % kWarp;
  const int n = blockIdx.x * kGemvWarps + threadIdx.x / kWarp;
  if (n >= g.N) return;  // warp-uniform
  const int K = g.K;
  const size_t w_off = (static_cast<size_t>(e) * g.N + n) * K;
  const TW* w0 = static_cast<const TW*>(g.w0) + w_off;
  const TW* w1 = kGateUp ? static_cast<const TW*>(g.w1) + w_off : nullptr;
  const int row_end = g.offsets[e + 1];
  for (int r0 = g.offsets[e]; r0 < row_end; r0 += kGemvRows) {
    const int nr = min(kGemvRows, row_end - r0);
    float acc0[kGemvRows];
    float acc1[kGemvRows];
#pragma unroll
    for (int r = 0; r < kGemvRows; ++r) acc0[r] = acc1[r] = 0.0f;
    if constexpr (kVec) {
      static_assert(sizeof(TW) == 2, "the vector path reads bf16 weights");
      for (int k = lane * 8; k < K; k += kWarp * 8) {
        float wv0[8], wv1[8];
        load8(w0 + k, wv0);
        if constexpr (kGateUp) load8(w1 + k, wv1);
#pragma unroll
        for (int r = 0; r < kGemvRows; ++r) {
          if (r < nr) {
            float av[8];
            load8(g.a + static_cast<size_t>(r0 + r) * K + k, av);
#pragma unroll
            for (int j = 0; j < 8; ++j) {
              acc0[r] = fmaf(av[j], wv0[j], acc0[r]);
              if constexpr (kGateUp) acc1[r] = fmaf(av[j], wv1[j], acc1[r]);
            }
          }
        }
      }
    } else {
      for (int k = lane; k < K; k += kWarp) {
        const float wv0 = to_float(w0[k]);
        const float wv1 = kGateUp ? to_float(w1[k]) : 0.0f;
#pragma unroll
        for (int r = 0; r < kGemvRows; ++r) {
          if (r < nr) {
            const float av = __bfloat162float(g.a[static_cast<size_t>(r0 + r) * K + k]);
            acc0[r] = fmaf(av, wv0, acc0[r]);
            if constexpr (kGateUp) acc1[r] = fmaf(av, wv1, acc1[r]);
          }
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kGemvRows; ++r) {
      acc0[r] = warp_sum(acc0[r]);
      if constexpr (kGateUp) acc1[r] = warp_sum(acc1[r]);
    }
    if (lane == 0) {
      for (int r = 0; r < nr; ++r) store_result<kGateUp>(g, r0 + r, n, acc0[r], acc1[r]);
    }
  }
}

// Loads rows [row0, row0 + rows) x columns [k0, k0 + kTileK) of a [*][K] matrix into a shared tile of pitch
// kTileLd as bf16; entries past row_end or K are 0.
template <typename T, bool kVec>
__device__ __forceinline__ void load_tile(bf16_t* tile, const T* src, int rows, int row0, int row_end, int k0,
                                          int K) {
  if constexpr (kVec) {
    static_assert(sizeof(T) == 2, "the vector path reads bf16");
    constexpr int kChunksPerRow = kTileK / 8;
    for (int c = threadIdx.x; c < rows * kChunksPerRow; c += blockDim.x) {
      const int r = c / kChunksPerRow;
      const int col = (c % kChunksPerRow) * 8;
      const int gr = row0 + r;
      const int gk = k0 + col;
      uint4 v = make_uint4(0, 0, 0, 0);
      // K % 8 == 0 and gk % 8 == 0, so gk < K means all 8 are inside the row.
      if (gr < row_end && gk < K) v = *reinterpret_cast<const uint4*>(src + static_cast<size_t>(gr) * K + gk);
      *reinterpret_cast<uint4*>(tile + r * kTileLd + col) = v;
    }
  } else {
    for (int i = threadIdx.x; i < rows * kTileK; i += blockDim.x) {
      const int r = i / kTileK;
      const int col = i % kTileK;
      const int gr = row0 + r;
      const int gk = k0 + col;
      tile[r * kTileLd + col] =
          gr < row_end && gk < K ? to_bf16(src[static_cast<size_t>(gr) * K + gk]) : __float2bfloat16_rn(0.0f);
    }
  }
}

constexpr size_t kTileSmemBytes = static_cast<size_t>(kTileM + 2 * kTileN) * kTileLd * sizeof(bf16_t);
constexpr size_t kStageSmemBytes = 2 * static_cast<size_t>(kTileM) * kTileLdC * sizeof(float);
constexpr size_t kTiledSmemBytes = kTileSmemBytes > kStageSmemBytes ? kTileSmemBytes : kStageSmemBytes;
static_assert(kTiledSmemBytes <= 48 * 1024, "static shared memory limit");

// Tiled form: block (x, y) = the x-th (expert, 64-row tile) of the list permute built, output columns
// [64y, 64y + 64). BF16 WMMA 16x16x16 with f32 accumulators; the accumulators are staged through shared
// memory (reusing the operand tiles) so the epilogue can apply SwiGLU and bounds per element.
template <typename TW, bool kGateUp, bool kVec>
__global__ void __launch_bounds__(kTileThreads) moe_tiled_kernel(ExpertGemmArgs g) {
  using namespace nvcuda;
  const int tile = blockIdx.x;
  if (tile >= g.tile_offsets[g.n_experts]) return;  // block-uniform, before any barrier
  // The expert whose tiles hold this one: tile_offsets[e] <= tile < tile_offsets[e + 1].
  int lo = 0, hi = g.n_experts;
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (g.tile_offsets[mid] <= tile) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  const int e = lo;
  const int m0 = g.offsets[e] + (tile - g.tile_offsets[e]) * kTileM;
  const int m_end = g.offsets[e + 1];
  const int n0 = blockIdx.y * kTileN;
  const int K = g.K;
  const size_t w_off = static_cast<size_t>(e) * g.N * K;
  const TW* w0 = static_cast<const TW*>(g.w0) + w_off;
  const TW* w1 = kGateUp ? static_cast<const TW*>(g.w1) + w_off : nullptr;

  __shared__ __align__(128) unsigned char smem[kTiledSmemBytes];
  bf16_t* a_tile = reinterpret_cast<bf16_t*>(smem);
  bf16_t* b0_tile = a_tile + kTileM * kTileLd;
  bf16_t* b1_tile = b0_tile + kTileN * kTileLd;

  const int warp = threadIdx.x / kWarp;
  const int wm = warp / 2;
  const int wn = warp % 2;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> c0[2][2];
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> c1[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      wmma::fill_fragment(c0[i][j], 0.0f);
      wmma::fill_fragment(c1[i][j], 0.0f);
    }
  }

  for (int k0 = 0; k0 < K; k0 += kTileK) {
    load_tile<bf16_t, kVec>(a_tile, g.a, kTileM, m0, m_end, k0, K);
    load_tile<TW, kVec>(b0_tile, w0, kTileN, n0, g.N, k0, K);
    if constexpr (kGateUp) load_tile<TW, kVec>(b1_tile, w1, kTileN, n0, g.N, k0, K);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16_t, wmma::row_major> a[2];
#pragma unroll
      for (int i = 0; i < 2; ++i)
        wmma::load_matrix_sync(a[i], a_tile + (wm * 32 + i * 16) * kTileLd + kk, kTileLd);
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        // W's rows are the output columns: tile [n][k] is B = W^T in column-major order.
        wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16_t, wmma::col_major> b;
        wmma::load_matrix_sync(b, b0_tile + (wn * 32 + j * 16) * kTileLd + kk, kTileLd);
#pragma unroll
        for (int i = 0; i < 2; ++i) wmma::mma_sync(c0[i][j], a[i], b, c0[i][j]);
        if constexpr (kGateUp) {
          wmma::load_matrix_sync(b, b1_tile + (wn * 32 + j * 16) * kTileLd + kk, kTileLd);
#pragma unroll
          for (int i = 0; i < 2; ++i) wmma::mma_sync(c1[i][j], a[i], b, c1[i][j]);
        }
      }
    }
    __syncthreads();  // the tiles are overwritten next (by the next k-step or by the staging below)
  }

  float* c0_stage = reinterpret_cast<float*>(smem);
  float* c1_stage = c0_stage + kTileM * kTileLdC;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int at = (wm * 32 + i * 16) * kTileLdC + wn * 32 + j * 16;
      wmma::store_matrix_sync(c0_stage + at, c0[i][j], kTileLdC, wmma::mem_row_major);
      if constexpr (kGateUp) wmma::store_matrix_sync(c1_stage + at, c1[i][j], kTileLdC, wmma::mem_row_major);
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < kTileM * kTileN; idx += blockDim.x) {
    const int r = idx / kTileN;
    const int col = idx % kTileN;
    if (m0 + r < m_end && n0 + col < g.N) {
      const float v1 = kGateUp ? c1_stage[r * kTileLdC + col] : 0.0f;
      store_result<kGateUp>(g, m0 + r, n0 + col, c0_stage[r * kTileLdC + col], v1);
    }
  }
}

int ceil_div(int a, int b) {
  return (a + b - 1) / b;
}

template <bool kGateUp>
Status launch_expert_gemm(const ExpertGemmArgs& g, DType dtype, bool gemv, int n_rows, cudaStream_t stream) {
  // 16-byte loads need every row to start on 16 bytes: K % 8 == 0 and 16-byte aligned weights (the
  // workspace rows are by construction). Anything else takes the element-wise loads.
  const bool vec = dtype == DType::kBF16 && g.K % 8 == 0 && aligned16(g.w0) && (!kGateUp || aligned16(g.w1));
  const int max_active = n_rows < g.n_experts ? n_rows : g.n_experts;
  if (gemv) {
    const dim3 grid(ceil_div(g.N, kGemvWarps), max_active);
    const int threads = kGemvWarps * kWarp;
    if (dtype == DType::kF32) {
      moe_gemv_kernel<float, kGateUp, false><<<grid, threads, 0, stream>>>(g);
    } else if (vec) {
      moe_gemv_kernel<bf16_t, kGateUp, true><<<grid, threads, 0, stream>>>(g);
    } else {
      moe_gemv_kernel<bf16_t, kGateUp, false><<<grid, threads, 0, stream>>>(g);
    }
  } else {
    // sum_e ceil(c_e / 64) <= n_rows / 64 + (experts with rows), and the latter <= min(n_experts, n_rows).
    const dim3 grid(ceil_div(n_rows, kTileM) + max_active, ceil_div(g.N, kTileN));
    if (dtype == DType::kF32) {
      moe_tiled_kernel<float, kGateUp, false><<<grid, kTileThreads, 0, stream>>>(g);
    } else if (vec) {
      moe_tiled_kernel<bf16_t, kGateUp, true><<<grid, kTileThreads, 0, stream>>>(g);
    } else {
      moe_tiled_kernel<bf16_t, kGateUp, false><<<grid, kTileThreads, 0, stream>>>(g);
    }
  }
  return launch_status(kGateUp ? "moe gate/up launch" : "moe down launch");
}

}  // namespace

Status launch_gate_up_gemm(const ExpertGemmArgs& g, DType dtype, bool gemv, int n_rows, cudaStream_t stream) {
  return launch_expert_gemm<true>(g, dtype, gemv, n_rows, stream);
}

Status launch_down_gemm(const ExpertGemmArgs& g, DType dtype, bool gemv, int n_rows, cudaStream_t stream) {
  return launch_expert_gemm<false>(g, dtype, gemv, n_rows, stream);
}

}  // namespace agentserve::kernels::cuda
