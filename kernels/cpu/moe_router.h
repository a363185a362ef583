// Mixture-of-experts routing as Qwen3-MoE does it: softmax over all experts in f32, keep the top_k
// largest, optionally renormalise the kept weights to sum 1 (norm_topk_prob). Pure math on pointers:
// no allocation, no state.
//
//   p[t, e] = softmax_e(router_logits[t, :]);  ids[t, :] = the top_k e by p, largest first, ties to
//   the lower expert index;  weights[t, i] = p[t, ids[t, i]]  (/ sum_i p[t, ids[t, i]] when normalize)
//
// Shapes: router_logits [n_tokens, n_experts] f32; expert_ids int32 and expert_weights f32, both
// [n_tokens, top_k]. Limits: 1 <= top_k <= n_experts; logits finite.
#pragma once

#include <cstdint>

namespace agentserve::kernels {

// Oracle: double softmax.
void moe_route_ref(int32_t* expert_ids, float* expert_weights, const float* router_logits, int n_tokens,
                   int n_experts, int top_k, bool normalize);

// f32 softmax with the vector exp. The choice is made on the logits (softmax is monotonic), so the ids
// equal the oracle's exactly; weights are within a few ulp.
void moe_route(int32_t* expert_ids, float* expert_weights, const float* router_logits, int n_tokens,
               int n_experts, int top_k, bool normalize);

}  // namespace agentserve::kernels
