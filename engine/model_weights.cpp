#include "engine/model_weights.h"

namespace agentserve::engine {
namespace {

std::string layer_name(int layer, const std::string& suffix) {
  return "model.layers." + std::to_string(layer) + "." + suffix;
}

std::string expert_name(int layer, int expert, const char* proj) {
  return layer_name(layer, "mlp.experts." + std::to_string(expert) + "." + proj + ".weight");
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Turns checked views into what the forward pass reads. Every name it is asked for has been checked
// against qwen3_expected_tensors, so lookups here cannot fail.
class Assembler {
 public:
  Assembler(const Checkpoint& checkpoint, ModelWeights& out) : checkpoint_(checkpoint), out_(out) {}

  WeightMatrix matrix(const std::string& name) {
    const TensorView& v = *checkpoint_.find(name);
    WeightMatrix m;
    m.rows = v.shape[0];
    m.cols = v.shape[1];
    const auto address = reinterpret_cast<uintptr_t>(v.data);
    if (v.dtype == DType::kBF16 && address % alignof(uint16_t) == 0) {
      m.dtype = kernels::DType::kBF16;
      m.data = v.data;
    } else if (v.dtype == DType::kF32 && address % alignof(float) == 0) {
      m.dtype = kernels::DType::kF32;
      m.data = v.data;
    } else {
      // F16/F64 have no kernels; a misaligned view cannot be read as float*. Convert once.
      auto converted = std::make_shared<std::vector<float>>(static_cast<size_t>(v.numel()));
      (void)copy_to_float(v, *converted);  // floating dtype and size were checked
      m.dtype = kernels::DType::kF32;
      m.data = converted->data();
      out_.converted_bytes += converted->size() * sizeof(float);
      out_.storage.push_back(std::move(converted));
    }
    return m;
  }

  std::vector<float> vector(const std::string& name) {
    std::vector<float> values(static_cast<size_t>(checkpoint_.find(name)->numel()));
    (void)copy_to_float(*checkpoint_.find(name), values);
    return values;
  }

  LayerExpert mlp(const std::string& prefix) {
    return {matrix(prefix + "gate_proj.weight"), matrix(prefix + "up_proj.weight"),
            matrix(prefix + "down_proj.weight")};
  }

 private:
  const Checkpoint& checkpoint_;
  ModelWeights& out_;
};

Status check_tensors(const Checkpoint& checkpoint, const std::vector<ExpectedTensor>& expected) {
  for (const ExpectedTensor& e : expected) {
    const TensorView* v = checkpoint.find(e.name);
    if (v == nullptr) {
      return Status::not_found("tensor \"" + e.name + "\" is missing from the checkpoint at " +
                               checkpoint.dir().string());
    }
    if (v->shape != e.shape) {
      return Status::invalid_argument("tensor \"" + e.name + "\" has shape " + shape_string(v->shape) +
                                      ", config.json implies " + shape_string(e.shape));
    }
    if (!is_floating(v->dtype)) {
      return Status::invalid_argument("tensor \"" + e.name + "\" has dtype " +
                                      std::string(dtype_name(v->dtype)) +
                                      "; weights must be BF16, F16, F32 or F64");
    }
  }
  return Status();
}

}  // namespace

std::vector<ExpectedTensor> qwen3_expected_tensors(const ModelConfig& c) {
  const int64_t hidden = c.hidden_size;
  const int64_t q_dim = c.num_attention_heads * c.head_dim;
  const int64_t kv_dim = c.num_key_value_heads * c.head_dim;
  std::vector<ExpectedTensor> out;
  out.push_back({"model.embed_tokens.weight", {c.vocab_size, hidden}, TensorRole::kEmbedding});
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    out.push_back({layer_name(l, "input_layernorm.weight"), {hidden}, TensorRole::kNorm});
    out.push_back({layer_name(l, "self_attn.q_proj.weight"), {q_dim, hidden}, TensorRole::kLinear});
    out.push_back({layer_name(l, "self_attn.k_proj.weight"), {kv_dim, hidden}, TensorRole::kLinear});
    out.push_back({layer_name(l, "self_attn.v_proj.weight"), {kv_dim, hidden}, TensorRole::kLinear});
    out.push_back({layer_name(l, "self_attn.o_proj.weight"), {hidden, q_dim}, TensorRole::kLinear});
    out.push_back({layer_name(l, "self_attn.q_norm.weight"), {c.head_dim}, TensorRole::kHeadNorm});
    out.push_back({layer_name(l, "self_attn.k_norm.weight"), {c.head_dim}, TensorRole::kHeadNorm});
    if (c.is_moe_layer(l)) {
      out.push_back({layer_name(l, "mlp.gate.weight"), {c.num_experts, hidden}, TensorRole::kRouter});
      for (int e = 0; e < c.num_experts; ++e) {
        const int64_t inter = c.moe_intermediate_size;
        out.push_back({expert_name(l, e, "gate_proj"), {inter, hidden}, TensorRole::kLinear});
        out.push_back({expert_name(l, e, "up_proj"), {inter, hidden}, TensorRole::kLinear});
        out.push_back({expert_name(l, e, "down_proj"), {hidden, inter}, TensorRole::kLinear});
      }
    } else {
      const int64_t inter = c.intermediate_size;
      out.push_back({layer_name(l, "mlp.gate_proj.weight"), {inter, hidden}, TensorRole::kLinear});
      out.push_back({layer_name(l, "mlp.up_proj.weight"), {inter, hidden}, TensorRole::kLinear});
      out.push_back({layer_name(l, "mlp.down_proj.weight"), {hidden, inter}, TensorRole::kLinear});
    }
    out.push_back({layer_name(l, "post_attention_layernorm.weight"), {hidden}, TensorRole::kNorm});
  }
  out.push_back({"model.norm.weight", {hidden}, TensorRole::kNorm});
  if (!c.tie_word_embeddings) out.push_back({"lm_head.weight", {c.vocab_size, hidden}, TensorRole::kLmHead});
  return out;
}

Result<ModelWeights> ModelWeights::load(const Checkpoint& checkpoint, const ModelConfig& config) {
  AS_RETURN_IF_ERROR(validate_model_config(config));
  AS_RETURN_IF_ERROR(check_tensors(checkpoint, qwen3_expected_tensors(config)));

  ModelWeights w;
  for (const SafetensorsFile& file : checkpoint.files()) w.storage.push_back(file.keep_alive());
  Assembler a(checkpoint, w);
  w.embed_tokens = a.matrix("model.embed_tokens.weight");
  w.layers.resize(static_cast<size_t>(config.num_hidden_layers));
  for (int l = 0; l < config.num_hidden_layers; ++l) {
    LayerWeights& lw = w.layers[static_cast<size_t>(l)];
    lw.input_layernorm = a.vector(layer_name(l, "input_layernorm.weight"));
    lw.q_proj = a.matrix(layer_name(l, "self_attn.q_proj.weight"));
    lw.k_proj = a.matrix(layer_name(l, "self_attn.k_proj.weight"));
    lw.v_proj = a.matrix(layer_name(l, "self_attn.v_proj.weight"));
    lw.o_proj = a.matrix(layer_name(l, "self_attn.o_proj.weight"));
    lw.q_norm = a.vector(layer_name(l, "self_attn.q_norm.weight"));
    lw.k_norm = a.vector(layer_name(l, "self_attn.k_norm.weight"));
    lw.post_attention_layernorm = a.vector(layer_name(l, "post_attention_layernorm.weight"));
    lw.is_moe = config.is_moe_layer(l);
    if (lw.is_moe) {
      lw.router = a.matrix(layer_name(l, "mlp.gate.weight"));
      lw.experts.reserve(static_cast<size_t>(config.num_experts));
      for (int e = 0; e < config.num_experts; ++e) {
        lw.experts.push_back(a.mlp(layer_name(l, "mlp.experts." + std::to_string(e) + ".")));
      }
    } else {
      lw.mlp = a.mlp(layer_name(l, "mlp."));
    }
  }
  w.norm = a.vector("model.norm.weight");
  w.lm_head = config.tie_word_embeddings ? w.embed_tokens : a.matrix("lm_head.weight");
  return w;
}

Result<ModelWeights> ModelWeights::open(const std::filesystem::path& dir, const ModelConfig& config) {
  AS_ASSIGN_OR_RETURN(Checkpoint checkpoint, Checkpoint::open(dir));
  return load(checkpoint, config);
}

}  // namespace agentserve::engine
