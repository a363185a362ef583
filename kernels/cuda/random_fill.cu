// out[i] = hash_uniform(seed, i) * scale (random_fill.h); one grid-stride loop, so any launch shape gives the
// same tensor.
#include "kernels/cuda/random_fill.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_status.h"

namespace agentserve::kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr size_t kMaxBlocks = 65536;

template <typename T>
__global__ void fill_uniform_kernel(T* out, size_t n, uint64_t seed, float scale) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float v = hash_uniform(seed, i) * scale;
    if constexpr (sizeof(T) == 2) {
      out[i] = __float2bfloat16_rn(v);
    } else {
      out[i] = v;
    }
  }
}

}  // namespace

Status fill_uniform(void* out, DType dtype, size_t n, uint64_t seed, float scale, cudaStream_t stream) {
  if (n == 0) return Status::ok_status();
  if (out == nullptr) return Status::invalid_argument("fill_uniform: null output");
  const size_t needed = (n + kThreads - 1) / kThreads;
  const unsigned blocks = static_cast<unsigned>(needed < kMaxBlocks ? needed : kMaxBlocks);
  if (dtype == DType::kBF16) {
    fill_uniform_kernel<<<blocks, kThreads, 0, stream>>>(static_cast<__nv_bfloat16*>(out), n, seed, scale);
  } else {
    fill_uniform_kernel<<<blocks, kThreads, 0, stream>>>(static_cast<float*>(out), n, seed, scale);
  }
  return launch_status("fill_uniform launch");
}

}  // namespace agentserve::kernels::cuda
