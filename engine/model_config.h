// ModelConfig: the hyperparameters of a Qwen3 checkpoint (Mixture-of-Experts "qwen3_moe" or dense
// "qwen3"), parsed from a Hugging Face config.json and checked once, so the loader and the forward pass
// can trust every size. Keys that fix a tensor shape must be present; the rest take Hugging Face's
// defaults. This module must never accept a config the engine cannot run (attention bias, sliding window,
// an unknown rope type): a missing, mistyped or contradictory key is an InvalidArgument naming the key.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace agentserve::engine {

// YaRN context extension (the only rope scaling Qwen3 ships). Field names follow config.json.
struct RopeScaling {
  double factor = 1.0;
  int64_t original_max_position_embeddings = 0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  // When absent, Hugging Face uses 0.1 * ln(factor) + 1 (yarn_attention_factor() gives the value in use).
  std::optional<double> attention_factor;

  bool operator==(const RopeScaling&) const = default;
};

struct ModelConfig {
  std::string model_type;  // "qwen3_moe" or "qwen3"
  std::vector<std::string> architectures;
  int64_t hidden_size = 0;
  int num_hidden_layers = 0;
  int num_attention_heads = 0;
  int num_key_value_heads = 0;
  int64_t head_dim = 0;  // explicit in Qwen3 configs; hidden_size / heads when absent
  int num_experts = 0;   // 0 for dense models
  int num_experts_per_tok = 0;
  int64_t moe_intermediate_size = 0;
  int64_t intermediate_size = 0;  // dense MLP width; only used by layers that are not MoE
  bool norm_topk_prob = false;
  int decoder_sparse_step = 1;
  std::vector<int> mlp_only_layers;
  double rope_theta = 10000.0;
  std::optional<RopeScaling> rope_scaling;
  double rms_norm_eps = 1e-6;
  int64_t max_position_embeddings = 32768;
  int64_t vocab_size = 0;
  bool tie_word_embeddings = false;
  std::string torch_dtype;  // "bfloat16", "float16", "float32"; empty when absent
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;  // config.json has a number or a list

  // Hugging Face's rule: a layer is MoE unless listed in mlp_only_layers, and only every
  // decoder_sparse_step-th layer (counting from 1) is.
  bool is_moe_layer(int layer) const;
  bool has_dense_layers() const;
  // YaRN's multiplier on cos/sin (1 without rope scaling).
  double yarn_attention_factor() const;

  bool operator==(const ModelConfig&) const = default;
};

// Parses config.json text and validates it (validate_model_config).
Result<ModelConfig> parse_model_config(std::string_view json_text);
// Reads `path`, or path/config.json when path is a folder.
Result<ModelConfig> load_model_config(const std::filesystem::path& path);
// Checks sizes and their relations; the error names the offending key.
Status validate_model_config(const ModelConfig& config);

// config.json text with every key of the published Qwen3-30B-A3B config (plus rope_scaling and the dense
// keys where they apply), so other tools (transformers, llama.cpp converters) read our checkpoints.
std::string model_config_to_json(const ModelConfig& config);

}  // namespace agentserve::engine
