// MoE routing on the GPU (moe.h says what and why); the plain reference is kernels/cpu/moe_router.h.
// One warp per token: a softmax over the router logits in f32 and a top-k selection on the logits
// themselves, so the chosen ids equal the CPU's exactly.
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <string>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_helpers.cuh"
#include "kernels/cuda/moe.h"

namespace agentserve::kernels::cuda {
namespace {

constexpr int kRouteWarps = 4;  // tokens per routing block

static_assert(kMoeMaxExperts <= kWarp * 32, "routing keeps one 32-bit taken mask per lane");
static_assert(kMoeMaxTopK <= kWarp, "routing keeps one slot per lane");

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
  moe_route_kernel<<<(n_tokens + kRouteWarps - 1) / kRouteWarps, kRouteWarps * kWarp, 0, stream>>>(
      expert_ids, expert_weights, router_logits, n_tokens, n_experts, top_k, normalize);
  return launch_status("moe_route launch");
}

}  // namespace agentserve::kernels::cuda
