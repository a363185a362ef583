// MoE on the GPU (moe.h says what and why). The plain references are kernels/cpu/moe_router.h (routing) and,
// for the experts, matmul_ref + silu_mul_ref + axpy_ref per (token, slot) as the CPU engine runs them.
//
// The expert pipeline, all on one stream, sizes from the host's n_tokens only:
//   1. permute (one block): counts per expert, exclusive offsets, the list of experts that got rows, the
//      list of 64-row tiles, and pos[t * top_k + i] = the row of (t, i) in expert order (-1: skipped id)
//   2. gather: x_perm[pos] = bf16(x[t])
//   3. gate/up: h[row] = bf16(silu(x_perm[row] . gate_e) * (x_perm[row] . up_e)), GEMV or tiled kernel
//   4. down:    y_perm[row] = h[row] . down_e (f32)
//   5. combine: out[t] = sum_i w[t, i] * y_perm[pos[t * top_k + i]], slots in order i = 0, 1, ...
// A row's value never depends on where it lands in x_perm, so the result is deterministic even though the
// order of rows inside an expert (step 1's atomics) is not.
#include "kernels/cuda/moe.h"

#include "kernels/cuda/device_helpers.cuh"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <climits>
#include <cstdint>
#include <string>

namespace agentserve::kernels::cuda {
namespace {

using bf16_t = __nv_bfloat16;
using device::aligned16;
using device::kWarp;
using device::load8;
using device::to_bf16;
using device::to_float;
using device::warp_max;
using device::warp_sum;

constexpr int kRouteWarps = 4;         // tokens per routing block
constexpr int kPermuteThreads = 1024;  // the single permute block
constexpr int kRowThreads = 256;       // gather and combine: one block per row
constexpr int kGemvWarps = 8;          // output columns per GEMV block
constexpr int kGemvRows = 8;           // expert rows a GEMV warp accumulates at once
constexpr int kTileM = 64;             // tiled kernel: rows x columns x k-step of a block's tile
constexpr int kTileN = 64;
constexpr int kTileK = 32;
constexpr int kTileThreads = 128;     // 4 warps, 2 x 2, each 32 x 32 of the tile
constexpr int kTileLd = kTileK + 8;   // bf16 row pitch in shared memory: 80 bytes keeps 32-byte alignment
constexpr int kTileLdC = kTileN + 4;  // f32 pitch of the staged accumulators

static_assert(kMoeMaxExperts <= kWarp * 32, "routing keeps one 32-bit taken mask per lane");
static_assert(kMoeMaxTopK <= kWarp, "routing keeps one slot per lane");

Status cuda_status(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return Status::ok_status();
  return Status::internal(std::string(what) + ": " + cudaGetErrorString(err));
}

// ---- Workspace -------------------------------------------------------------------------------------------

size_t align256(size_t n) {
  return (n + 255) & ~static_cast<size_t>(255);
}

struct WorkspaceLayout {
  size_t offsets = 0;       // int32 [n_experts + 1]: first row of each expert in x_perm
  size_t tile_offsets = 0;  // int32 [n_experts + 1]: first tile of each expert
  size_t active = 0;        // int32 [n_experts]: the experts with rows, ascending
  size_t n_active = 0;      // int32 [1]
  size_t pos = 0;           // int32 [n_rows]
  size_t x_perm = 0;        // bf16 [n_rows][hidden]
  size_t h = 0;             // bf16 [n_rows][inter]
  size_t y_perm = 0;        // f32 [n_rows][hidden]
  size_t total = 0;
};

WorkspaceLayout make_layout(size_t n_rows, int n_experts, int hidden, int inter) {
  WorkspaceLayout l;
  size_t at = 0;
  auto take = [&at](size_t bytes) {
    const size_t here = at;
    at += align256(bytes);
    return here;
  };
  const size_t experts = static_cast<size_t>(n_experts);
  l.offsets = take((experts + 1) * sizeof(int32_t));
  l.tile_offsets = take((experts + 1) * sizeof(int32_t));
  l.active = take(experts * sizeof(int32_t));
  l.n_active = take(sizeof(int32_t));
  l.pos = take(n_rows * sizeof(int32_t));
  l.x_perm = take(n_rows * static_cast<size_t>(hidden) * sizeof(bf16_t));
  l.h = take(n_rows * static_cast<size_t>(inter) * sizeof(bf16_t));
  l.y_perm = take(n_rows * static_cast<size_t>(hidden) * sizeof(float));
  l.total = at;
  return l;
}

// ---- SwiGLU's gate -------------------------------------------------------------------------------------

__device__ __forceinline__ float silu(float x) {
  return x / (1.0f + __expf(-x));
}

// ---- 0. Routing ------------------------------------------------------------------------------------------

// One warp per token. Lane l owns experts l, l + 32, ...; selection repeats top_k times: each lane offers
// its largest untaken logit (lowest id on ties, by scanning ids upwards and taking only strictly larger),
// the warp keeps the larger offer (lower id on ties), and the owner marks it taken.
__global__ void __launch_bounds__(kRouteWarps* kWarp)
    moe_route_kernel(int32_t* ids, float* weights, const float* logits, int n_tokens, int n_experts,
                     int top_k, bool normalize) {
  const int lane = threadIdx.x % kWarp;
  const int t = blockIdx.x * kRouteWarps + threadIdx.x / kWarp;
  if (t >= n_tokens) return;  // a whole warp leaves together; no block-level sync follows
  const float* l = logits + static_cast<size_t>(t) * n_experts;

  float max_logit = -INFINITY;
  for (int e = lane; e < n_experts; e += kWarp) max_logit = fmaxf(max_logit, l[e]);
  max_logit = warp_max(max_logit);
  float sum = 0.0f;
  for (int e = lane; e < n_experts; e += kWarp) sum += expf(l[e] - max_logit);
  sum = warp_sum(sum);

  uint32_t taken = 0;  // bit j: expert lane + 32 * j
  float kept = 0.0f;
  int my_id = -1;  // lane i holds slot i's result
  float my_p = 0.0f;
  for (int k = 0; k < top_k; ++k) {
    float best_v = -INFINITY;
    int best_e = INT_MAX;
    for (int e = lane, j = 0; e < n_experts; e += kWarp, ++j) {
      if ((taken >> j) & 1u) continue;
      if (best_e == INT_MAX || l[e] > best_v) {
        best_v = l[e];
        best_e = e;
      }
    }
    for (int o = kWarp / 2; o > 0; o /= 2) {
      const float v = __shfl_xor_sync(0xffffffffu, best_v, o);
      const int e = __shfl_xor_sync(0xffffffffu, best_e, o);
      if (e != INT_MAX && (best_e == INT_MAX || v > best_v || (v == best_v && e < best_e))) {
        best_v = v;
        best_e = e;
      }
    }
    // Every lane now holds the same winner. INT_MAX only when nothing is comparable (NaN logits).
    const float p = best_e == INT_MAX ? 0.0f : expf(best_v - max_logit) / sum;
    if (best_e != INT_MAX && best_e % kWarp == lane) taken |= 1u << (best_e / kWarp);
    if (lane == k) {
      my_id = best_e == INT_MAX ? -1 : best_e;
      my_p = p;
    }
    kept += p;
  }
  if (lane < top_k) {
    ids[static_cast<size_t>(t) * top_k + lane] = my_id;
    weights[static_cast<size_t>(t) * top_k + lane] = normalize && kept > 0.0f ? my_p / kept : my_p;
  }
}

// ---- 1. Permutation --------------------------------------------------------------------------------------

struct PermuteArgs {
  const int32_t* ids;  // [n_rows]
  int32_t* offsets;
  int32_t* tile_offsets;
  int32_t* active;
  int32_t* n_active;
  int32_t* pos;
  int n_rows;
  int n_experts;
};

__global__ void __launch_bounds__(kPermuteThreads) moe_permute_kernel(PermuteArgs a) {
  __shared__ int counts[kMoeMaxExperts];
  __shared__ int cursor[kMoeMaxExperts];
  for (int e = threadIdx.x; e < a.n_experts; e += blockDim.x) counts[e] = 0;
  __syncthreads();
  for (int r = threadIdx.x; r < a.n_rows; r += blockDim.x) {
    const int e = a.ids[r];
    if (e >= 0 && e < a.n_experts) atomicAdd(&counts[e], 1);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    // At most 1024 experts: a serial scan costs a few microseconds and has no edge cases.
    int rows = 0, tiles = 0, n_active = 0;
    for (int e = 0; e < a.n_experts; ++e) {
      a.offsets[e] = rows;
      a.tile_offsets[e] = tiles;
      cursor[e] = rows;
      rows += counts[e];
      tiles += (counts[e] + kTileM - 1) / kTileM;
      if (counts[e] > 0) a.active[n_active++] = e;
    }
    a.offsets[a.n_experts] = rows;
    a.tile_offsets[a.n_experts] = tiles;
    *a.n_active = n_active;
  }
  __syncthreads();
  for (int r = threadIdx.x; r < a.n_rows; r += blockDim.x) {
    const int e = a.ids[r];
    a.pos[r] = e >= 0 && e < a.n_experts ? atomicAdd(&cursor[e], 1) : -1;
  }
}

// ---- 2. Gather -------------------------------------------------------------------------------------------

__global__ void __launch_bounds__(kRowThreads)
    moe_gather_kernel(bf16_t* x_perm, const float* x, const int32_t* pos, int top_k, int hidden) {
  const int r = blockIdx.x;
  const int p = pos[r];
  if (p < 0) return;
  const float* src = x + static_cast<size_t>(r / top_k) * hidden;
  bf16_t* dst = x_perm + static_cast<size_t>(p) * hidden;
  for (int d = threadIdx.x; d < hidden; d += blockDim.x) dst[d] = __float2bfloat16_rn(src[d]);
}

// ---- 3/4. Expert GEMMs -----------------------------------------------------------------------------------

// out[row][n] for the rows of each expert e: a[row] . w0_e[n] (down), or silu(a[row] . w0_e[n]) *
// (a[row] . w1_e[n]) rounded to bf16 (gate/up). a [n_rows][K] bf16; w0, w1 stacked [n_experts][N][K].
struct ExpertGemmArgs {
  const bf16_t* a = nullptr;
  const void* w0 = nullptr;
  const void* w1 = nullptr;
  bf16_t* out_bf16 = nullptr;  // gate/up
  float* out_f32 = nullptr;    // down
  const int32_t* offsets = nullptr;
  const int32_t* tile_offsets = nullptr;
  const int32_t* active = nullptr;
  const int32_t* n_active = nullptr;
  int n_experts = 0;
  int K = 0;
  int N = 0;
};

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

// ---- 5. Combine ------------------------------------------------------------------------------------------

__global__ void __launch_bounds__(kRowThreads)
    moe_combine_kernel(float* out, const float* y_perm, const int32_t* pos, const float* weights, int top_k,
                       int hidden) {
  __shared__ int slot_pos[kMoeMaxTopK];
  __shared__ float slot_w[kMoeMaxTopK];
  const int t = blockIdx.x;
  if (threadIdx.x < top_k) {
    slot_pos[threadIdx.x] = pos[static_cast<size_t>(t) * top_k + threadIdx.x];
    slot_w[threadIdx.x] = weights[static_cast<size_t>(t) * top_k + threadIdx.x];
  }
  __syncthreads();
  for (int d = threadIdx.x; d < hidden; d += blockDim.x) {
    float s = 0.0f;
    for (int i = 0; i < top_k; ++i) {
      if (slot_pos[i] >= 0) s = fmaf(slot_w[i], y_perm[static_cast<size_t>(slot_pos[i]) * hidden + d], s);
    }
    out[static_cast<size_t>(t) * hidden + d] = s;
  }
}

// ---- Host side -------------------------------------------------------------------------------------------

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
  return cuda_status(cudaGetLastError(), kGateUp ? "moe gate/up launch" : "moe down launch");
}

Status check_experts(const MoeExperts& x, int top_k) {
  if (x.n_experts < 1 || x.n_experts > kMoeMaxExperts || x.hidden < 1 || x.inter < 1) {
    return Status::invalid_argument("moe: n_experts " + std::to_string(x.n_experts) + " (1.." +
                                    std::to_string(kMoeMaxExperts) + "), hidden " + std::to_string(x.hidden) +
                                    ", inter " + std::to_string(x.inter) + " (>= 1)");
  }
  if (top_k < 1 || top_k > kMoeMaxTopK || top_k > x.n_experts) {
    return Status::invalid_argument("moe: top_k " + std::to_string(top_k) + " outside 1..min(" +
                                    std::to_string(kMoeMaxTopK) + ", n_experts)");
  }
  return Status::ok_status();
}

}  // namespace

Status moe_route(int32_t* expert_ids, float* expert_weights, const float* router_logits, int n_tokens,
                 int n_experts, int top_k, bool normalize, cudaStream_t stream) {
  if (n_tokens < 0 || n_experts < 1 || n_experts > kMoeMaxExperts || top_k < 1 || top_k > kMoeMaxTopK ||
      top_k > n_experts) {
    return Status::invalid_argument("moe_route: n_tokens " + std::to_string(n_tokens) + ", n_experts " +
                                    std::to_string(n_experts) + ", top_k " + std::to_string(top_k));
  }
  if (n_tokens == 0) return Status::ok_status();
  if (expert_ids == nullptr || expert_weights == nullptr || router_logits == nullptr) {
    return Status::invalid_argument("moe_route: null pointer");
  }
  moe_route_kernel<<<ceil_div(n_tokens, kRouteWarps), kRouteWarps * kWarp, 0, stream>>>(
      expert_ids, expert_weights, router_logits, n_tokens, n_experts, top_k, normalize);
  return cuda_status(cudaGetLastError(), "moe_route launch");
}

size_t moe_workspace_bytes(int max_tokens, int top_k, const MoeExperts& experts) {
  const size_t rows =
      static_cast<size_t>(max_tokens > 0 ? max_tokens : 0) * static_cast<size_t>(top_k > 0 ? top_k : 0);
  const int n_experts = experts.n_experts > 0 ? experts.n_experts : 0;
  return make_layout(rows, n_experts, experts.hidden > 0 ? experts.hidden : 0,
                     experts.inter > 0 ? experts.inter : 0)
      .total;
}

Status moe_experts(float* out, const float* x, const int32_t* expert_ids, const float* expert_weights,
                   int n_tokens, int top_k, const MoeExperts& experts, void* workspace,
                   size_t workspace_bytes, cudaStream_t stream, MoeExpertPath path) {
  AS_RETURN_IF_ERROR(check_experts(experts, top_k));
  if (n_tokens < 0) return Status::invalid_argument("moe_experts: negative n_tokens");
  if (n_tokens == 0) return Status::ok_status();
  if (out == nullptr || x == nullptr || expert_ids == nullptr || expert_weights == nullptr ||
      workspace == nullptr || experts.gate == nullptr || experts.up == nullptr || experts.down == nullptr) {
    return Status::invalid_argument("moe_experts: null pointer");
  }
  // The 16-byte loads of x_perm and h rows assume their offsets (multiples of 256) land on 16-byte
  // boundaries, which holds only when the workspace itself is aligned.
  if (!aligned16(workspace)) return Status::invalid_argument("moe_experts: workspace not 16-byte aligned");
  const int n_rows = n_tokens * top_k;
  const WorkspaceLayout l =
      make_layout(static_cast<size_t>(n_rows), experts.n_experts, experts.hidden, experts.inter);
  if (workspace_bytes < l.total) {
    return Status::invalid_argument("moe_experts: workspace of " + std::to_string(workspace_bytes) +
                                    " bytes, need " + std::to_string(l.total));
  }
  auto* base = static_cast<unsigned char*>(workspace);
  auto* offsets = reinterpret_cast<int32_t*>(base + l.offsets);
  auto* tile_offsets = reinterpret_cast<int32_t*>(base + l.tile_offsets);
  auto* active = reinterpret_cast<int32_t*>(base + l.active);
  auto* n_active = reinterpret_cast<int32_t*>(base + l.n_active);
  auto* pos = reinterpret_cast<int32_t*>(base + l.pos);
  auto* x_perm = reinterpret_cast<bf16_t*>(base + l.x_perm);
  auto* h = reinterpret_cast<bf16_t*>(base + l.h);
  auto* y_perm = reinterpret_cast<float*>(base + l.y_perm);

  const PermuteArgs pa{expert_ids, offsets, tile_offsets, active, n_active, pos, n_rows, experts.n_experts};
  moe_permute_kernel<<<1, kPermuteThreads, 0, stream>>>(pa);
  AS_RETURN_IF_ERROR(cuda_status(cudaGetLastError(), "moe permute launch"));
  moe_gather_kernel<<<n_rows, kRowThreads, 0, stream>>>(x_perm, x, pos, top_k, experts.hidden);
  AS_RETURN_IF_ERROR(cuda_status(cudaGetLastError(), "moe gather launch"));

  const bool gemv = path == MoeExpertPath::kGemv ||
                    (path == MoeExpertPath::kAuto && n_rows <= kMoeGemvMaxRowsPerExpert * experts.n_experts);
  ExpertGemmArgs g;
  g.offsets = offsets;
  g.tile_offsets = tile_offsets;
  g.active = active;
  g.n_active = n_active;
  g.n_experts = experts.n_experts;

  g.a = x_perm;
  g.w0 = experts.gate;
  g.w1 = experts.up;
  g.out_bf16 = h;
  g.K = experts.hidden;
  g.N = experts.inter;
  AS_RETURN_IF_ERROR(launch_expert_gemm<true>(g, experts.dtype, gemv, n_rows, stream));

  g.a = h;
  g.w0 = experts.down;
  g.w1 = nullptr;
  g.out_bf16 = nullptr;
  g.out_f32 = y_perm;
  g.K = experts.inter;
  g.N = experts.hidden;
  AS_RETURN_IF_ERROR(launch_expert_gemm<false>(g, experts.dtype, gemv, n_rows, stream));

  moe_combine_kernel<<<n_tokens, kRowThreads, 0, stream>>>(out, y_perm, pos, expert_weights, top_k,
                                                           experts.hidden);
  return cuda_status(cudaGetLastError(), "moe combine launch");
}

}  // namespace agentserve::kernels::cuda
