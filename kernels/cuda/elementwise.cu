#include "kernels/cuda/elementwise.h"

#include "kernels/cuda/elementwise.cuh"

namespace agentserve::kernels::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float silu_times(float g, float u) {
  return g / (1.0f + expf(-g)) * u;
}

__global__ void add_kernel(float* a, const float* b, size_t n) {
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    a[i] += b[i];
  }
}

__global__ void silu_mul_kernel(float* out, const float* gate, const float* up, size_t n) {
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    out[i] = silu_times(gate[i], up[i]);
  }
}

__global__ void silu_mul_rows_kernel(float* out, const float* gate_up, int inter, size_t n) {
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const size_t row = i / inter;
    const size_t col = i % inter;
    const float* g = gate_up + row * 2 * inter;
    out[i] = silu_times(g[col], g[inter + col]);
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

Status silu_mul(float* out, const float* gate, const float* up, size_t n, cudaStream_t stream) {
  if (n == 0) return Status::ok_status();
  if (out == nullptr || gate == nullptr || up == nullptr)
    return Status::invalid_argument("silu_mul: null pointer");
  silu_mul_kernel<<<blocks_for(n), kThreads, 0, stream>>>(out, gate, up, n);
  return launch_status("silu_mul");
}

Status silu_mul_rows(float* out, const float* gate_up, int n_rows, int inter, cudaStream_t stream) {
  if (n_rows < 0 || inter < 1) return Status::invalid_argument("silu_mul_rows: bad shape");
  if (n_rows == 0) return Status::ok_status();
  if (out == nullptr || gate_up == nullptr) return Status::invalid_argument("silu_mul_rows: null pointer");
  const size_t n = static_cast<size_t>(n_rows) * inter;
  silu_mul_rows_kernel<<<blocks_for(n), kThreads, 0, stream>>>(out, gate_up, inter, n);
  return launch_status("silu_mul_rows");
}

}  // namespace agentserve::kernels::cuda
