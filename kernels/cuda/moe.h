// The mixture-of-experts MLP on the GPU, as Qwen3-MoE computes it: route (softmax over the router logits,
// top-k, optional renormalisation), group the (token, slot) rows by expert, run each expert's SwiGLU over
// its rows as grouped work, and combine the results back in token order with the routing weights. Pure
// math on device pointers: no allocation (scratch is a caller-sized workspace), no host round trip (the
// per-expert counts never leave the device, so a step can be captured in a CUDA graph), no synchronisation.
// This header compiles with g++.
//
//   route:   p[t, e] = softmax_e(logits[t, :]);  ids[t, :] = top_k e by logit, largest first, ties to the
//            lower expert id (exactly kernels/cpu/moe_router.h's choice);  w[t, i] = p[t, ids[t, i]]
//            (/ sum_i p[t, ids[t, i]] when normalize)
//   experts: out[t] = sum_i w[t, i] * down_e(silu(gate_e x[t]) * up_e x[t]),  e = ids[t, i]
//
// Why our own expert kernels and not cuBLAS's grouped GEMM: the rows per expert are known only on the
// device, and cublasGemmGroupedBatchedEx takes the group sizes from the host, which would cost a
// device-to-host copy and a stream sync per layer (and rule out CUDA graphs for decode). Decode batches
// give an expert a handful of rows, where the work is streaming the expert's weights once: a GEMV-style
// kernel (one warp per output column, all of the expert's rows at once) does that at memory speed. Larger
// batches use a tensor-core tile kernel (BF16 WMMA, FP32 accumulation) over a device-built list of
// (expert, 64-row tile) pairs. Both read only the experts that received rows.
//
// Shapes (row-major, device memory): router_logits [n_tokens][n_experts] f32; expert_ids int32 and
// expert_weights f32 [n_tokens][top_k]; x, out [n_tokens][hidden] f32; experts stacked, expert e's gate and
// up at e * inter * hidden elements ([inter][hidden] each) and down at e * hidden * inter ([hidden][inter]),
// f32 or BF16. An expert id outside [0, n_experts) contributes nothing (an expert-parallel rank passes the
// ids of other ranks' experts as -1).
// Limits: 1 <= n_experts <= 1024; 1 <= top_k <= min(32, n_experts); hidden, inter >= 1; n_tokens >= 0.
// Precision: x and the SwiGLU activations are rounded to BF16 before their GEMMs (as the tensor cores
// take them), and so are f32 weights on the tiled path (the GEMV path reads them whole); every sum is f32.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "base/status.h"
#include "kernels/dtype.h"

namespace agentserve::kernels::cuda {

constexpr int kMoeMaxExperts = 1024;
constexpr int kMoeMaxTopK = 32;

// One warp per token; f32 softmax, selection on the logits themselves, so ids equal the CPU's exactly.
Status moe_route(int32_t* expert_ids, float* expert_weights, const float* router_logits, int n_tokens,
                 int n_experts, int top_k, bool normalize, cudaStream_t stream);

struct MoeExperts {
  DType dtype = DType::kBF16;
  const void* gate = nullptr;  // [n_experts][inter][hidden]
  const void* up = nullptr;    // [n_experts][inter][hidden]
  const void* down = nullptr;  // [n_experts][hidden][inter]
  int n_experts = 0;
  int hidden = 0;
  int inter = 0;
};

// Which expert kernel runs. kAuto takes the GEMV kernel while the experts average at most
// kMoeGemvMaxRowsPerExpert rows (n_tokens * top_k <= 8 * n_experts: every decode batch up to 128 tokens on
// Qwen3-30B-A3B), tiles above; the others force one (tests cover both on the same inputs).
enum class MoeExpertPath { kAuto, kGemv, kTiled };
constexpr int kMoeGemvMaxRowsPerExpert = 8;

// Workspace bytes for up to max_tokens tokens (>= 0) routed to top_k experts each.
size_t moe_workspace_bytes(int max_tokens, int top_k, const MoeExperts& experts);

// out = the MoE MLP of x (file comment); out is overwritten. workspace: device memory of at least
// moe_workspace_bytes(n_tokens, top_k, experts) bytes, 256-byte aligned (one off 16 bytes is refused). BF16
// weights that are 16-byte aligned (cudaMalloc's are) with hidden and inter multiples of 8 are read 16 bytes
// at a time.
Status moe_experts(float* out, const float* x, const int32_t* expert_ids, const float* expert_weights,
                   int n_tokens, int top_k, const MoeExperts& experts, void* workspace,
                   size_t workspace_bytes, cudaStream_t stream, MoeExpertPath path = MoeExpertPath::kAuto);

}  // namespace agentserve::kernels::cuda
