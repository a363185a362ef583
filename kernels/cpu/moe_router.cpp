#include "kernels/cpu/moe_router.h"

#include <cmath>
#include <cstddef>

#include "kernels/cpu/simd.h"

namespace agentserve::kernels {
namespace {

// Keeps ids[0..count) sorted by logit, largest first; equal logits keep the earlier (lower) expert
// first because a newcomer only moves past strictly smaller logits.
void insert_top_k(int32_t* ids, int& count, int top_k, const float* logits, int32_t e) {
  const float v = logits[e];
  if (count == top_k && !(v > logits[ids[top_k - 1]])) return;
  int at = count < top_k ? count++ : top_k - 1;
  while (at > 0 && v > logits[ids[at - 1]]) {
    ids[at] = ids[at - 1];
    --at;
  }
  ids[at] = e;
}

}  // namespace

// p = exp(l - max l) / sum exp(l - max l); keep top_k; renormalise when asked

void moe_route_ref(int32_t* expert_ids, float* expert_weights, const float* router_logits, int n_tokens,
                   int n_experts, int top_k, bool normalize) {
  for (int t = 0; t < n_tokens; ++t) {
    const float* logits = router_logits + static_cast<size_t>(t) * n_experts;
    int32_t* ids = expert_ids + static_cast<size_t>(t) * top_k;
    float* weights = expert_weights + static_cast<size_t>(t) * top_k;
    double max_logit = logits[0];
    for (int e = 1; e < n_experts; ++e) max_logit = std::fmax(max_logit, logits[e]);
    double sum = 0;
    for (int e = 0; e < n_experts; ++e) sum += std::exp(logits[e] - max_logit);
    // Selection by repeated scan: the largest not yet taken, lowest index on ties.
    for (int k = 0; k < top_k; ++k) {
      int best = -1;
      for (int e = 0; e < n_experts; ++e) {
        bool taken = false;
        for (int j = 0; j < k; ++j) taken = taken || ids[j] == e;
        if (!taken && (best < 0 || logits[e] > logits[best])) best = e;
      }
      ids[k] = best;
    }
    double kept = 0;
    for (int k = 0; k < top_k; ++k) kept += std::exp(logits[ids[k]] - max_logit) / sum;
    for (int k = 0; k < top_k; ++k) {
      const double p = std::exp(logits[ids[k]] - max_logit) / sum;
      weights[k] = static_cast<float>(normalize ? p / kept : p);
    }
  }
}

AGENTSERVE_VECTORISE_EXP void moe_route(int32_t* expert_ids, float* expert_weights,
                                        const float* router_logits, int n_tokens, int n_experts, int top_k,
                                        bool normalize) {
  for (int t = 0; t < n_tokens; ++t) {
    const float* logits = router_logits + static_cast<size_t>(t) * n_experts;
    int32_t* ids = expert_ids + static_cast<size_t>(t) * top_k;
    float* weights = expert_weights + static_cast<size_t>(t) * top_k;
    float max_logit = logits[0];
    for (int e = 1; e < n_experts; ++e) max_logit = logits[e] > max_logit ? logits[e] : max_logit;
    float sum = 0;
#if defined(__AVX512F__)
    const __m512 vmax = _mm512_set1_ps(max_logit);
    __m512 vsum = _mm512_setzero_ps();
    for (int e = 0; e < n_experts; e += 16) {
      const __mmask16 m = simd::first_lanes(n_experts - e < 16 ? n_experts - e : 16);
      const __m512 p = simd::exp16(_mm512_sub_ps(simd::load16(logits + e, m), vmax));
      vsum = _mm512_add_ps(vsum, _mm512_maskz_mov_ps(m, p));
    }
    sum = simd::reduce_add(vsum);
#else
    for (int e = 0; e < n_experts; ++e) sum += simd::exp_portable(logits[e] - max_logit);
#endif
    int count = 0;
    for (int32_t e = 0; e < n_experts; ++e) insert_top_k(ids, count, top_k, logits, e);
    float kept = 0;
    for (int k = 0; k < top_k; ++k) {
      weights[k] = simd::exp_portable(logits[ids[k]] - max_logit) / sum;
      kept += weights[k];
    }
    if (normalize) {
      for (int k = 0; k < top_k; ++k) weights[k] /= kept;
    }
  }
}

}  // namespace agentserve::kernels
