#include "kernels/cuda/embedding.h"

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_helpers.cuh"

namespace agentserve::kernels::cuda {
namespace {

// One block per token; threads stride over the row.
template <typename T>
__global__ void embedding_kernel(float* out, const int32_t* ids, const T* table, int vocab, int hidden) {
  const int id = ids[blockIdx.x];
  float* row = out + static_cast<size_t>(blockIdx.x) * hidden;
  const bool valid = id >= 0 && id < vocab;
  const T* src = table + static_cast<size_t>(valid ? id : 0) * hidden;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    if (!valid) {
      row[i] = 0.0f;
    } else if constexpr (sizeof(T) == 2) {
      row[i] = bf16_bits_to_float(src[i]);
    } else {
      row[i] = src[i];
    }
  }
}

}  // namespace

Status embedding(float* out, const int32_t* ids, int n_tokens, const void* table, DType table_dtype,
                 int vocab, int hidden, cudaStream_t stream) {
  if (n_tokens < 0 || vocab < 1 || hidden < 1) return Status::invalid_argument("embedding: bad shape");
  if (n_tokens == 0) return Status::ok_status();
  if (out == nullptr || ids == nullptr || table == nullptr)
    return Status::invalid_argument("embedding: null pointer");
  constexpr int kThreads = 256;
  if (table_dtype == DType::kF32) {
    embedding_kernel<<<n_tokens, kThreads, 0, stream>>>(out, ids, static_cast<const float*>(table), vocab,
                                                        hidden);
  } else {
    embedding_kernel<<<n_tokens, kThreads, 0, stream>>>(out, ids, static_cast<const uint16_t*>(table), vocab,
                                                        hidden);
  }
  return launch_status("embedding");
}

}  // namespace agentserve::kernels::cuda
