// ModelWeights: the tensors a Qwen3 forward pass reads, found in a Checkpoint by their exact Hugging Face
// names and checked against the ModelConfig's shapes, so the forward pass never checks a size again.
// Matrices stay views into the memory-mapped files (BF16 or F32); F16/F64 matrices, or ones a foreign
// writer left misaligned, are converted once to F32 in owned buffers. 1-D norm weights are converted to
// F32 vectors. Per-expert projections stay one view per expert (no stacking copy). ModelWeights keeps the
// mapped files and owned buffers alive itself, so it may outlive the Checkpoint and be copied or moved.
// Loading never accepts a missing tensor or a wrong shape: the error names the tensor.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "engine/model_config.h"
#include "engine/safetensors.h"
#include "kernels/dtype.h"

namespace agentserve::engine {

// A row-major [rows, cols] weight as the kernels take it: y = W x, rows = output features.
struct WeightMatrix {
  kernels::DType dtype = kernels::DType::kF32;
  const void* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
};

// One SwiGLU MLP: down(silu(gate(x)) * up(x)). An MoE expert, or a dense layer's MLP.
struct LayerExpert {
  WeightMatrix gate_proj;  // [intermediate, hidden]
  WeightMatrix up_proj;    // [intermediate, hidden]
  WeightMatrix down_proj;  // [hidden, intermediate]
};

struct LayerWeights {
  std::vector<float> input_layernorm;           // [hidden]
  WeightMatrix q_proj;                          // [heads * head_dim, hidden]
  WeightMatrix k_proj;                          // [kv_heads * head_dim, hidden]
  WeightMatrix v_proj;                          // [kv_heads * head_dim, hidden]
  WeightMatrix o_proj;                          // [hidden, heads * head_dim]
  std::vector<float> q_norm;                    // [head_dim], shared by all heads
  std::vector<float> k_norm;                    // [head_dim]
  std::vector<float> post_attention_layernorm;  // [hidden]
  bool is_moe = false;
  WeightMatrix router;               // MoE: mlp.gate.weight [num_experts, hidden]
  std::vector<LayerExpert> experts;  // MoE: [num_experts], moe_intermediate_size wide
  LayerExpert mlp;                   // dense: intermediate_size wide
};

struct ModelWeights {
  WeightMatrix embed_tokens;  // [vocab, hidden]
  std::vector<LayerWeights> layers;
  std::vector<float> norm;  // model.norm.weight [hidden]
  WeightMatrix lm_head;     // [vocab, hidden]; the embedding itself when tie_word_embeddings
  // The mapped files and converted buffers the views above point into.
  std::vector<std::shared_ptr<const void>> storage;
  // Bytes of weights converted into owned buffers (0 for a clean BF16/F32 checkpoint).
  size_t converted_bytes = 0;

  static Result<ModelWeights> load(const Checkpoint& checkpoint, const ModelConfig& config);
  // Opens dir's safetensors files and loads from them.
  static Result<ModelWeights> open(const std::filesystem::path& dir, const ModelConfig& config);
};

// What a weight is for: the generator picks its initialisation from this.
enum class TensorRole : uint8_t { kEmbedding, kLinear, kRouter, kNorm, kHeadNorm, kLmHead };

struct ExpectedTensor {
  std::string name;
  std::vector<int64_t> shape;
  TensorRole role = TensorRole::kLinear;
};

// Every tensor a Hugging Face Qwen3 checkpoint of this config holds, in the order transformers defines
// them (embedding, layers, final norm, lm_head; lm_head absent when tied). ModelWeights::load reads
// exactly these.
std::vector<ExpectedTensor> qwen3_expected_tensors(const ModelConfig& config);

}  // namespace agentserve::engine
