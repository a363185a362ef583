// The MoE expert pipeline on the GPU (moe.h says what and why): workspace, permutation, gather, combine and
// the host side of moe_experts. Routing is in moe_route.cu, the grouped expert GEMMs (steps 3 and 4) in
// moe_expert_gemm.cu. The plain reference for the experts is matmul_ref + silu_mul_ref + axpy_ref per
// (token, slot) as the CPU engine runs them.
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

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_helpers.cuh"
#include "kernels/cuda/moe_expert_gemm.cuh"

namespace agentserve::kernels::cuda {
namespace {

using bf16_t = __nv_bfloat16;

constexpr int kPermuteThreads = 1024;  // the single permute block
constexpr int kRowThreads = 256;       // gather and combine: one block per row
constexpr int kTileM = kMoeTileRows;   // rows per tile of the tiled expert GEMM

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
  AS_RETURN_IF_ERROR(launch_status("moe permute launch"));
  moe_gather_kernel<<<n_rows, kRowThreads, 0, stream>>>(x_perm, x, pos, top_k, experts.hidden);
  AS_RETURN_IF_ERROR(launch_status("moe gather launch"));

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
  AS_RETURN_IF_ERROR(launch_gate_up_gemm(g, experts.dtype, gemv, n_rows, stream));

  g.a = h;
  g.w0 = experts.down;
  g.w1 = nullptr;
  g.out_bf16 = nullptr;
  g.out_f32 = y_perm;
  g.K = experts.inter;
  g.N = experts.hidden;
  AS_RETURN_IF_ERROR(launch_down_gemm(g, experts.dtype, gemv, n_rows, stream));

  moe_combine_kernel<<<n_tokens, kRowThreads, 0, stream>>>(out, y_perm, pos, expert_weights, top_k,
                                                           experts.hidden);
  return launch_status("moe combine launch");
}

}  // namespace agentserve::kernels::cuda
