#include "kernels/cuda/elementwise.h"

#include "kernels/cuda/cuda_status.h"

namespace agentserve::kernels::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void add_kernel(float* a, const float* b, size_t n) {
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    a[i] += b[i];
  }
}

// Grid-stride loops: enough blocks to fill the GPU, never more than the work needs.
unsigned blocks_for(size_t n) {
  const size_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 65536 ? blocks : 65536);
}

}  // namespace

Status add_inplace(float* a, const float* b, size_t n, cudaStream_t stream) {
  if (n == 0) return Status::ok_status();
  if (a == nullptr || b == nullptr) return Status::invalid_argument("add_inplace: null pointer");
  add_kernel<<<blocks_for(n), kThreads, 0, stream>>>(a, b, n);
  return launch_status("add_inplace");
}

}  // namespace agentserve::kernels::cuda
