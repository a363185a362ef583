// Embedding lookup on the GPU: token ids -> f32 rows of the embedding table (f32 or bf16, [vocab][hidden],
// the checkpoint's layout), as the CPU forward does with kernels::convert_to_f32 (bf16 widens exactly, so
// the rows are bit-identical). An id outside [0, vocab) gives a row of zeros instead of a read out of
// bounds. Host launcher only; no allocation, no synchronisation.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "base/status.h"
#include "kernels/dtype.h"

namespace agentserve::kernels::cuda {

// out [n_tokens][hidden] f32, ids [n_tokens] int32, table [vocab][hidden]; all device memory. n_tokens >= 0.
Status embedding(float* out, const int32_t* ids, int n_tokens, const void* table, DType table_dtype,
                 int vocab, int hidden, cudaStream_t stream);

}  // namespace agentserve::kernels::cuda
