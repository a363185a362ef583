#include "engine/model_config.h"

#include <climits>
#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

namespace agentserve::engine {
namespace {

using nlohmann::json;

Status key_error(std::string_view key, std::string_view what) {
  std::string m = "config key \"";
  m += key;
  m += "\": ";
  m += what;
  return Status::invalid_argument(std::move(m));
}

// Typed access to one JSON object's keys. Absent and null keys leave the output at its default unless
// the key is required; errors name the key with `prefix` ("rope_scaling.") in front.
class KeyReader {
 public:
  explicit KeyReader(const json& obj, std::string prefix = "") : obj_(obj), prefix_(std::move(prefix)) {}

  const json* find(std::string_view key) const {
    auto it = obj_.find(key);
    return it == obj_.end() || it->is_null() ? nullptr : &*it;
  }

  Status error(std::string_view key, std::string_view what) const {
    return key_error(prefix_ + std::string(key), what);
  }

  template <typename Int>
  Status integer(std::string_view key, Int& out, bool required = false) const {
    const json* v = find(key);
    if (v == nullptr) return required ? error(key, "is missing") : Status();
    int64_t value = 0;
    if (v->is_number_integer()) {
      value = v->get<int64_t>();
    } else if (v->is_number_float() && std::trunc(v->get<double>()) == v->get<double>() &&
               std::abs(v->get<double>()) < 9e15) {
      value = static_cast<int64_t>(v->get<double>());  // 40960.0 from a hand-edited file
    } else {
      return error(key, "must be an integer, got " + (v->is_number() ? v->dump() : v->type_name()));
    }
    if (value < static_cast<int64_t>(std::numeric_limits<Int>::min()) ||
        value > static_cast<int64_t>(std::numeric_limits<Int>::max())) {
      return error(key, "value " + std::to_string(value) + " is out of range");
    }
    out = static_cast<Int>(value);
    return Status();
  }

  Status number(std::string_view key, double& out, bool required = false) const {
    const json* v = find(key);
    if (v == nullptr) return required ? error(key, "is missing") : Status();
    if (!v->is_number()) return error(key, std::string("must be a number, got ") + v->type_name());
    out = v->get<double>();
    if (!std::isfinite(out)) return error(key, "must be finite");
    return Status();
  }

  Status boolean(std::string_view key, bool& out) const {
    const json* v = find(key);
    if (v == nullptr) return Status();
    if (!v->is_boolean()) return error(key, std::string("must be true or false, got ") + v->type_name());
    out = v->get<bool>();
    return Status();
  }

  Status string(std::string_view key, std::string& out, bool required = false) const {
    const json* v = find(key);
    if (v == nullptr) return required ? error(key, "is missing") : Status();
    if (!v->is_string()) return error(key, std::string("must be a string, got ") + v->type_name());
    out = v->get<std::string>();
    return Status();
  }

  Status token_ids(std::string_view key, std::vector<int64_t>& out) const {
    const json* v = find(key);
    if (v == nullptr) return Status();
    if (v->is_number_integer()) {
      out = {v->get<int64_t>()};
      return Status();
    }
    if (!v->is_array()) return error(key, "must be a token id or a list of them");
    for (const json& id : *v) {
      if (!id.is_number_integer()) return error(key, "must hold integer token ids");
      out.push_back(id.get<int64_t>());
    }
    return Status();
  }

 private:
  const json& obj_;
  std::string prefix_;
};

// rope_scaling (transformers 4.x) and rope_parameters (5.x) share their fields; `where` is the key used.
Status read_rope(const json& rope, std::string_view where, ModelConfig& config) {
  if (!rope.is_object()) {
    return key_error(where, std::string("must be an object or null, got ") + rope.type_name());
  }
  const KeyReader keys(rope, std::string(where) + ".");
  std::string type;
  const std::string type_key = rope.contains("rope_type") ? "rope_type" : "type";
  AS_RETURN_IF_ERROR(keys.string(type_key, type));
  if (type.empty() || type == "default") return Status();
  if (type != "yarn") {
    return keys.error(type_key, "rope type \"" + type + "\" is not supported (Qwen3 uses yarn or none)");
  }
  RopeScaling yarn;
  // Hugging Face falls back to max_position_embeddings, which has been read by now.
  yarn.original_max_position_embeddings = config.max_position_embeddings;
  AS_RETURN_IF_ERROR(keys.number("factor", yarn.factor, /*required=*/true));
  AS_RETURN_IF_ERROR(keys.integer("original_max_position_embeddings", yarn.original_max_position_embeddings));
  AS_RETURN_IF_ERROR(keys.number("beta_fast", yarn.beta_fast));
  AS_RETURN_IF_ERROR(keys.number("beta_slow", yarn.beta_slow));
  if (keys.find("attention_factor") != nullptr) {
    double attention_factor = 0;
    AS_RETURN_IF_ERROR(keys.number("attention_factor", attention_factor));
    yarn.attention_factor = attention_factor;
  }
  config.rope_scaling = yarn;
  return Status();
}

Status read_moe_keys(const KeyReader& keys, ModelConfig& c) {
  AS_RETURN_IF_ERROR(keys.integer("num_experts", c.num_experts, true));
  const bool moe = c.num_experts > 0;
  AS_RETURN_IF_ERROR(keys.integer("num_experts_per_tok", c.num_experts_per_tok, moe));
  AS_RETURN_IF_ERROR(keys.integer("moe_intermediate_size", c.moe_intermediate_size, moe));
  AS_RETURN_IF_ERROR(keys.boolean("norm_topk_prob", c.norm_topk_prob));
  AS_RETURN_IF_ERROR(keys.integer("decoder_sparse_step", c.decoder_sparse_step));
  if (const json* layers = keys.find("mlp_only_layers")) {
    if (!layers->is_array()) return keys.error("mlp_only_layers", "must be a list of layer indices");
    for (const json& l : *layers) {
      if (!l.is_number_integer() || l.get<int64_t>() < 0 || l.get<int64_t>() > INT_MAX) {
        return keys.error("mlp_only_layers", "must hold non-negative layer indices, got " +
                                                 (l.is_primitive() ? l.dump() : l.type_name()));
      }
      c.mlp_only_layers.push_back(l.get<int>());
    }
  }
  return Status();
}

// Features the Qwen3 forward pass does not implement: refuse rather than compute something else.
Status refuse_unsupported(const KeyReader& keys) {
  bool flag = false;
  AS_RETURN_IF_ERROR(keys.boolean("attention_bias", flag));
  if (flag) return keys.error("attention_bias", "must be false (Qwen3 has no attention bias)");
  AS_RETURN_IF_ERROR(keys.boolean("use_sliding_window", flag));
  if (flag) return keys.error("use_sliding_window", "sliding-window attention is not supported");
  std::string act = "silu";
  AS_RETURN_IF_ERROR(keys.string("hidden_act", act));
  if (act != "silu") return keys.error("hidden_act", "\"" + act + "\" is not supported (silu)");
  return Status();
}

Status read_model_keys(const json& j, ModelConfig& c) {
  const KeyReader keys(j);
  AS_RETURN_IF_ERROR(keys.string("model_type", c.model_type, /*required=*/true));
  if (c.model_type != "qwen3_moe" && c.model_type != "qwen3") {
    return keys.error("model_type", "\"" + c.model_type + "\" is not supported (qwen3_moe or qwen3)");
  }
  if (const json* a = keys.find("architectures")) {
    if (!a->is_array()) return keys.error("architectures", "must be a list of strings");
    for (const json& name : *a) {
      if (!name.is_string()) return keys.error("architectures", "must be a list of strings");
      c.architectures.push_back(name.get<std::string>());
    }
  }
  AS_RETURN_IF_ERROR(keys.integer("hidden_size", c.hidden_size, true));
  AS_RETURN_IF_ERROR(keys.integer("num_hidden_layers", c.num_hidden_layers, true));
  AS_RETURN_IF_ERROR(keys.integer("num_attention_heads", c.num_attention_heads, true));
  c.num_key_value_heads = c.num_attention_heads;  // Hugging Face: no grouped-query attention unless stated
  AS_RETURN_IF_ERROR(keys.integer("num_key_value_heads", c.num_key_value_heads));
  AS_RETURN_IF_ERROR(keys.integer("head_dim", c.head_dim));
  if (keys.find("head_dim") == nullptr && c.num_attention_heads > 0) {
    if (c.hidden_size % c.num_attention_heads != 0) {
      return keys.error("head_dim", "is absent and hidden_size is not a multiple of num_attention_heads");
    }
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  AS_RETURN_IF_ERROR(keys.integer("vocab_size", c.vocab_size, true));
  AS_RETURN_IF_ERROR(keys.integer("max_position_embeddings", c.max_position_embeddings));
  AS_RETURN_IF_ERROR(keys.integer("intermediate_size", c.intermediate_size));
  AS_RETURN_IF_ERROR(keys.number("rms_norm_eps", c.rms_norm_eps));
  AS_RETURN_IF_ERROR(keys.boolean("tie_word_embeddings", c.tie_word_embeddings));
  AS_RETURN_IF_ERROR(keys.string("torch_dtype", c.torch_dtype));
  if (c.torch_dtype.empty()) AS_RETURN_IF_ERROR(keys.string("dtype", c.torch_dtype));  // transformers 5
  if (keys.find("bos_token_id") != nullptr) {
    int64_t bos = 0;
    AS_RETURN_IF_ERROR(keys.integer("bos_token_id", bos));
    c.bos_token_id = bos;
  }
  AS_RETURN_IF_ERROR(keys.token_ids("eos_token_id", c.eos_token_ids));

  if (c.model_type == "qwen3_moe") AS_RETURN_IF_ERROR(read_moe_keys(keys, c));

  AS_RETURN_IF_ERROR(keys.number("rope_theta", c.rope_theta));
  if (const json* rope = keys.find("rope_scaling")) {
    AS_RETURN_IF_ERROR(read_rope(*rope, "rope_scaling", c));
  } else if (const json* params = keys.find("rope_parameters")) {
    if (params->is_object() && keys.find("rope_theta") == nullptr) {
      AS_RETURN_IF_ERROR(KeyReader(*params, "rope_parameters.").number("rope_theta", c.rope_theta));
    }
    AS_RETURN_IF_ERROR(read_rope(*params, "rope_parameters", c));
  }

  return refuse_unsupported(keys);
}

std::string name_value(std::string_view key, int64_t value) {
  return std::string(key) + " (" + std::to_string(value) + ")";
}

}  // namespace

bool ModelConfig::is_moe_layer(int layer) const {
  if (layer < 0 || layer >= num_hidden_layers || num_experts <= 0 || decoder_sparse_step <= 0) return false;
  for (int l : mlp_only_layers) {
    if (l == layer) return false;
  }
  return (layer + 1) % decoder_sparse_step == 0;
}

bool ModelConfig::has_dense_layers() const {
  for (int layer = 0; layer < num_hidden_layers; ++layer) {
    if (!is_moe_layer(layer)) return true;
  }
  return false;
}

double ModelConfig::yarn_attention_factor() const {
  if (!rope_scaling) return 1.0;
  if (rope_scaling->attention_factor) return *rope_scaling->attention_factor;
  return rope_scaling->factor <= 1.0 ? 1.0 : 0.1 * std::log(rope_scaling->factor) + 1.0;
}

Status validate_model_config(const ModelConfig& c) {
  if (c.model_type != "qwen3_moe" && c.model_type != "qwen3") {
    return key_error("model_type", "\"" + c.model_type + "\" is not supported (qwen3_moe or qwen3)");
  }
  const std::pair<std::string_view, int64_t> positive[] = {
      {"hidden_size", c.hidden_size},
      {"num_hidden_layers", c.num_hidden_layers},
      {"num_attention_heads", c.num_attention_heads},
      {"num_key_value_heads", c.num_key_value_heads},
      {"head_dim", c.head_dim},
      {"vocab_size", c.vocab_size},
      {"max_position_embeddings", c.max_position_embeddings},
      {"decoder_sparse_step", c.decoder_sparse_step},
  };
  for (const auto& [key, value] : positive) {
    if (value <= 0) return key_error(key, "must be positive, got " + std::to_string(value));
  }
  // Caps far above any real model keep a corrupt file from driving huge loops or allocations.
  const std::pair<std::string_view, int64_t> capped[] = {{"num_hidden_layers", c.num_hidden_layers},
                                                         {"num_attention_heads", c.num_attention_heads},
                                                         {"num_experts", c.num_experts},
                                                         {"decoder_sparse_step", c.decoder_sparse_step}};
  for (const auto& [key, value] : capped) {
    if (value > 65536) return key_error(key, "value " + std::to_string(value) + " is implausibly large");
  }
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return key_error("num_key_value_heads", name_value("num_attention_heads", c.num_attention_heads) +
                                                " is not a multiple of " +
                                                name_value("num_key_value_heads", c.num_key_value_heads));
  }
  if (!(c.rms_norm_eps > 0)) return key_error("rms_norm_eps", "must be positive");
  if (!(c.rope_theta > 0)) return key_error("rope_theta", "must be positive");
  if (c.num_experts < 0) return key_error("num_experts", "must not be negative");
  if (c.model_type == "qwen3" && c.num_experts != 0) {
    return key_error("num_experts", "must be 0 for the dense model_type qwen3");
  }
  if (c.num_experts > 0) {
    if (c.num_experts_per_tok <= 0) return key_error("num_experts_per_tok", "must be positive");
    if (c.num_experts_per_tok > c.num_experts) {
      return key_error("num_experts_per_tok", name_value("num_experts_per_tok", c.num_experts_per_tok) +
                                                  " exceeds " + name_value("num_experts", c.num_experts));
    }
    if (c.moe_intermediate_size <= 0) return key_error("moe_intermediate_size", "must be positive");
  }
  for (int layer : c.mlp_only_layers) {
    if (layer < 0 || layer >= c.num_hidden_layers) {
      return key_error("mlp_only_layers", "layer " + std::to_string(layer) + " is outside 0.." +
                                              std::to_string(c.num_hidden_layers - 1));
    }
  }
  if (c.has_dense_layers() && c.intermediate_size <= 0) {
    return key_error("intermediate_size", "must be positive: some layers use the dense MLP");
  }
  if (c.rope_scaling) {
    const RopeScaling& r = *c.rope_scaling;
    if (!(r.factor >= 1.0)) return key_error("rope_scaling.factor", "must be at least 1");
    if (r.original_max_position_embeddings <= 0) {
      return key_error("rope_scaling.original_max_position_embeddings", "must be positive");
    }
    if (!(r.beta_fast > 0) || !(r.beta_slow > 0)) {
      return key_error("rope_scaling.beta_fast", "beta_fast and beta_slow must be positive");
    }
    if (r.attention_factor && !(*r.attention_factor > 0)) {
      return key_error("rope_scaling.attention_factor", "must be positive");
    }
  }
  return Status();
}

Result<ModelConfig> parse_model_config(std::string_view json_text) {
  const json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Status::invalid_argument("config.json is not valid JSON");
  if (!j.is_object()) return Status::invalid_argument("config.json must hold a JSON object");
  ModelConfig config;
  AS_RETURN_IF_ERROR(read_model_keys(j, config));
  AS_RETURN_IF_ERROR(validate_model_config(config));
  return config;
}

Result<ModelConfig> load_model_config(const std::filesystem::path& path) {
  std::filesystem::path file = path;
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) file /= "config.json";
  std::ifstream in(file, std::ios::binary);
  if (!in) return Status::not_found(file.string() + ": cannot open");
  std::ostringstream text;
  text << in.rdbuf();
  auto config = parse_model_config(text.str());
  if (!config.ok()) return config.status().with_context(file.string());
  return config;
}

std::string model_config_to_json(const ModelConfig& c) {
  json j = json::object();  // std::map keys: sorted, as transformers writes them
  const bool moe = c.model_type == "qwen3_moe";
  j["architectures"] = c.architectures.empty()
                           ? std::vector<std::string>{moe ? "Qwen3MoeForCausalLM" : "Qwen3ForCausalLM"}
                           : c.architectures;
  j["attention_bias"] = false;
  j["attention_dropout"] = 0.0;
  j["bos_token_id"] = c.bos_token_id ? json(*c.bos_token_id) : json(nullptr);
  j["eos_token_id"] = c.eos_token_ids.empty()       ? json(nullptr)
                      : c.eos_token_ids.size() == 1 ? json(c.eos_token_ids[0])
                                                    : json(c.eos_token_ids);
  j["head_dim"] = c.head_dim;
  j["hidden_act"] = "silu";
  j["hidden_size"] = c.hidden_size;
  j["initializer_range"] = 0.02;
  j["intermediate_size"] = c.intermediate_size;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["max_window_layers"] = c.num_hidden_layers;
  j["model_type"] = c.model_type;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_theta"] = c.rope_theta;
  j["sliding_window"] = nullptr;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["torch_dtype"] = c.torch_dtype.empty() ? "bfloat16" : c.torch_dtype;
  j["transformers_version"] = "4.51.0";
  j["use_cache"] = true;
  j["use_sliding_window"] = false;
  j["vocab_size"] = c.vocab_size;
  if (moe) {
    j["decoder_sparse_step"] = c.decoder_sparse_step;
    j["mlp_only_layers"] = c.mlp_only_layers;
    j["moe_intermediate_size"] = c.moe_intermediate_size;
    j["norm_topk_prob"] = c.norm_topk_prob;
    j["num_experts"] = c.num_experts;
    j["num_experts_per_tok"] = c.num_experts_per_tok;
    j["output_router_logits"] = false;
    j["router_aux_loss_coef"] = 0.001;
  }
  if (c.rope_scaling) {
    const RopeScaling& r = *c.rope_scaling;
    json rope = {{"rope_type", "yarn"},
                 {"factor", r.factor},
                 {"original_max_position_embeddings", r.original_max_position_embeddings}};
    if (r.beta_fast != 32.0) rope["beta_fast"] = r.beta_fast;
    if (r.beta_slow != 1.0) rope["beta_slow"] = r.beta_slow;
    if (r.attention_factor) rope["attention_factor"] = *r.attention_factor;
    j["rope_scaling"] = std::move(rope);
  } else {
    j["rope_scaling"] = nullptr;
  }
  return j.dump(2) + "\n";
}

}  // namespace agentserve::engine
