#include "engine/device_memory_plan.h"

#include <algorithm>
#include <climits>
#include <cstdio>
#include <string>

namespace agentserve::engine {
namespace {

size_t sz(int64_t v) {
  return static_cast<size_t>(std::max<int64_t>(v, 0));
}

std::string gib(size_t bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.2f GiB",
                static_cast<double>(bytes) / static_cast<double>(size_t{1} << 30));
  return text;
}

}  // namespace

Result<DeviceMemoryPlan> plan_device_memory(const DeviceMemoryInputs& in) {
  if (in.kv_block_bytes == 0) return Status::invalid_argument("a KV block of 0 bytes");
  if (!(in.safety_fraction >= 0.0 && in.safety_fraction < 1.0))
    return Status::invalid_argument("safety_fraction must be in [0, 1)");
  DeviceMemoryPlan plan;
  plan.safety_bytes = std::max(in.safety_min_bytes,
                               static_cast<size_t>(static_cast<double>(in.free_bytes) * in.safety_fraction));
  const size_t fixed = in.weight_bytes + in.activation_bytes + plan.safety_bytes;
  if (fixed > in.free_bytes) {
    return Status::resource_exhausted("the model does not fit: weights " + gib(in.weight_bytes) +
                                      " + activations " + gib(in.activation_bytes) + " + safety margin " +
                                      gib(plan.safety_bytes) + " = " + gib(fixed) + ", but only " +
                                      gib(in.free_bytes) + " are free");
  }
  const size_t budget = in.free_bytes - fixed;
  const size_t blocks = std::min<size_t>(budget / in.kv_block_bytes, INT_MAX);
  if (blocks < static_cast<size_t>(std::max(0, in.min_kv_blocks))) {
    return Status::resource_exhausted("only " + std::to_string(blocks) + " KV blocks fit in the " +
                                      gib(budget) + " left after weights, activations and margin; " +
                                      std::to_string(in.min_kv_blocks) + " are needed");
  }
  plan.kv_blocks = static_cast<int>(blocks);
  plan.kv_bytes = blocks * in.kv_block_bytes;
  plan.unused_bytes = budget - plan.kv_bytes;
  return plan;
}

size_t model_weight_bytes(const ModelConfig& c, kernels::DType dtype) {
  const size_t hidden = sz(c.hidden_size);
  const size_t q_dim = sz(c.num_attention_heads) * sz(c.head_dim);
  const size_t kv_dim = sz(c.num_key_value_heads) * sz(c.head_dim);
  size_t elems = sz(c.vocab_size) * hidden * (c.tie_word_embeddings ? 1 : 2);
  size_t norm_floats = hidden;
  for (int layer = 0; layer < c.num_hidden_layers; ++layer) {
    elems += 2 * q_dim * hidden + 2 * kv_dim * hidden;
    if (c.is_moe_layer(layer)) {
      elems += sz(c.num_experts) * hidden + sz(c.num_experts) * 3 * sz(c.moe_intermediate_size) * hidden;
    } else {
      elems += 3 * sz(c.intermediate_size) * hidden;
    }
    norm_floats += 2 * hidden + 2 * sz(c.head_dim);
  }
  return elems * kernels::dtype_size(dtype) + norm_floats * sizeof(float);
}

size_t kv_block_bytes(const ModelConfig& c, int block_size, kernels::DType kv_dtype) {
  return sz(c.num_hidden_layers) * sz(c.num_key_value_heads) * sz(c.head_dim) * 2 * sz(block_size) *
         kernels::dtype_size(kv_dtype);
}

size_t activation_bytes(const ModelConfig& c, int max_step_tokens, int logits_rows) {
  const size_t t = sz(max_step_tokens);
  const size_t hidden = sz(c.hidden_size);
  const size_t q_dim = sz(c.num_attention_heads) * sz(c.head_dim);
  const size_t kv_dim = sz(c.num_key_value_heads) * sz(c.head_dim);
  const size_t top_k = sz(std::max(1, c.num_experts_per_tok));
  // hidden, normed, proj, mlp_out; q and attn; k and v; router logits; cos and sin; routing ids/weights.
  size_t floats = t * (4 * hidden + 2 * q_dim + 2 * kv_dim + sz(std::max(1, c.num_experts)) + sz(c.head_dim) +
                       2 * top_k + 8);
  // The MLP workspace, for the widest layer kind present: every routed (token, expert) row gathered, its
  // gate and up outputs and its output (a dense MLP is one expert that every token visits).
  size_t mlp_rows_floats = 0;
  if (c.num_experts > 0) mlp_rows_floats = top_k * (2 * hidden + 2 * sz(c.moe_intermediate_size) + 2);
  if (c.has_dense_layers())
    mlp_rows_floats = std::max(mlp_rows_floats, 2 * hidden + 2 * sz(c.intermediate_size) + 2);
  floats += t * mlp_rows_floats;
  floats += sz(logits_rows) * sz(c.vocab_size);
  const size_t bytes = floats * sizeof(float);
  return bytes + bytes / 10;
}

}  // namespace agentserve::engine
