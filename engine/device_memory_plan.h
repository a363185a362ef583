// Device memory plan: how many KV blocks a backend's pool gets, from the memory that is free before the
// model is loaded. Weights and per-step activations are fixed costs; a safety margin is kept back for what
// no one here allocates (the CUDA context growing, cuBLAS and NCCL workspaces, allocator fragmentation);
// everything left becomes KV blocks, allocated once at startup so no step ever allocates. Pure arithmetic
// on byte counts: it never queries a device and never allocates.
#pragma once

#include <cstddef>

#include "base/status.h"
#include "engine/model_config.h"
#include "kernels/dtype.h"

namespace agentserve::engine {

struct DeviceMemoryInputs {
  size_t free_bytes = 0;        // free on the device before weights are loaded (cudaMemGetInfo)
  size_t weight_bytes = 0;      // every weight as uploaded
  size_t activation_bytes = 0;  // per-step scratch for max_step_tokens
  size_t kv_block_bytes = 0;    // one KV block (all layers, K and V)
  // Kept back: the larger of this share of free_bytes and safety_min_bytes.
  double safety_fraction = 0.05;
  size_t safety_min_bytes = size_t{1} << 30;
  // Fewer blocks than this is an error (one max-length sequence needs max_context / block_size).
  int min_kv_blocks = 1;
};

struct DeviceMemoryPlan {
  int kv_blocks = 0;
  size_t kv_bytes = 0;      // kv_blocks * kv_block_bytes
  size_t safety_bytes = 0;  // kept back
  size_t unused_bytes = 0;  // less than one block: what the division leaves
};

// ResourceExhausted, with the numbers in GiB, when weights + activations + the margin exceed the free memory
// or leave fewer than min_kv_blocks blocks; InvalidArgument for a zero block size or a bad fraction.
Result<DeviceMemoryPlan> plan_device_memory(const DeviceMemoryInputs& inputs);

// Bytes of every weight of a Qwen3 checkpoint of this config stored as `dtype` (norm vectors are f32, as
// the backends keep them); a tied lm_head counts once.
size_t model_weight_bytes(const ModelConfig& config, kernels::DType dtype);

// Bytes of one KV block of block_size tokens with K and V of `kv_dtype` elements.
size_t kv_block_bytes(const ModelConfig& config, int block_size, kernels::DType kv_dtype);

// BackendModel's per-step scratch for max_step_tokens (f32 activations, the grouped MoE rows of every
// routed token, logits_rows vocab-wide logit rows), rounded up by 10% for a backend's own op scratch.
size_t activation_bytes(const ModelConfig& config, int max_step_tokens, int logits_rows);

}  // namespace agentserve::engine
