// Next-token choice on the GPU for a batch of logit rows: greedy argmax and temperature + top-p sampling,
// each row with its own parameters, one thread block per row, so logits never leave the device. The rules
// are engine::Backend's argmax and sample_top_p (engine/backend.h). Host launchers only; no allocation,
// no synchronisation.
//
// Greedy (temperature < 1e-5 or NaN, and argmax_rows): the largest logit; ties go to the lowest id; NaN is
// never chosen; a row of only NaN gives 0 (kernels::argmax_ref's rule).
// Sampling: m = max finite logit; w[i] = exp((logit[i] - m) / temperature) (NaN and -inf weigh 0). With
//   top_p < 1 the nucleus is the tokens taken by decreasing weight (ties: lower id first) up to and
//   including the first at which the kept weight reaches top_p * sum(w): found on the device as the
//   largest weight tau whose tokens >= tau carry that mass, plus as many of the tokens tied at tau, lowest
//   ids first, as the mass needs. u = the first uniform of engine::Rng(seed) (xoshiro256** seeded through
//   splitmix64); over the kept tokens in increasing id order, the token is the first whose running weight
//   exceeds u * kept weight (sums in double; the last kept id if rounding leaves none). A row without a
//   finite maximum (all NaN, all -inf, or an inf logit) takes the greedy answer, as the CPU backend does.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "base/status.h"

#ifndef AGENTSERVE_HOST_DEVICE
#if defined(__CUDACC__)
#define AGENTSERVE_HOST_DEVICE __host__ __device__
#else
#define AGENTSERVE_HOST_DEVICE
#endif
#endif

namespace agentserve::kernels::cuda {

// Per-row parameters in device memory; the layout of engine::SamplingRow.
struct RowSampling {
  float temperature = 1.0f;  // < 1e-5 (or NaN): greedy
  float top_p = 1.0f;        // >= 1 keeps every token; <= 0 only the most likely
  uint64_t seed = 0;
};
static_assert(sizeof(RowSampling) == 16);

inline constexpr float kGreedyTemperature = 1e-5f;

// engine::Rng(seed).uniform(): xoshiro256**'s first output needs only the second splitmix64 word of the
// seeded state. Host and device compute it the same way.
AGENTSERVE_HOST_DEVICE inline double sampling_uniform(uint64_t seed) {
  uint64_t state = seed;
  uint64_t s1 = 0;
  for (int word = 0; word < 2; ++word) {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    s1 = z ^ (z >> 31);
  }
  const uint64_t x = s1 * 5;
  const uint64_t result = ((x << 7) | (x >> 57)) * 9;
  return static_cast<double>(result >> 11) * 0x1.0p-53;
}

// out [n_rows] int32; logits [n_rows][vocab] f32; all device memory. n_rows >= 0, vocab >= 1.
Status argmax_rows(int32_t* out, const float* logits, int n_rows, int vocab, cudaStream_t stream);

// params [n_rows] in device memory. Rows with temperature < kGreedyTemperature take the argmax.
Status sample_rows(int32_t* out, const float* logits, const RowSampling* params, int n_rows, int vocab,
                   cudaStream_t stream);

}  // namespace agentserve::kernels::cuda
