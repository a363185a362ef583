// Pseudo-random tensors made on the device: a benchmark fills a 60 GB model in milliseconds instead of
// uploading it, and a test can rebuild any element on the host from (seed, index) alone. A counter-based
// hash, no state: element i of a fill is hash_uniform(seed, i) * scale whatever the launch shape. Not for
// sampling (engine/rng.h is the sampler's generator). This header compiles with g++; the launcher never
// allocates.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "base/status.h"
#include "kernels/dtype.h"

#ifndef AGENTSERVE_HOST_DEVICE
#if defined(__CUDACC__)
#define AGENTSERVE_HOST_DEVICE __host__ __device__
#else
#define AGENTSERVE_HOST_DEVICE
#endif
#endif

namespace agentserve::kernels::cuda {

// Uniform in [-1, 1) on a grid of 2^-23 (24 bits of splitmix64's finaliser of seed and i), the same bits
// on host and device.
AGENTSERVE_HOST_DEVICE inline float hash_uniform(uint64_t seed, uint64_t i) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + (i + 1) * 0xD1B54A32D192ED03ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<float>(z >> 40) * (1.0f / 8388608.0f) - 1.0f;
}

// out[i] = hash_uniform(seed, i) * scale for i < n, stored as `dtype` (BF16 rounded to nearest even).
Status fill_uniform(void* out, DType dtype, size_t n, uint64_t seed, float scale, cudaStream_t stream);

}  // namespace agentserve::kernels::cuda
