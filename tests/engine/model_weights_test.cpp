#include "engine/model_weights.h"
#include "tests/scratch_dir.h"

#include <doctest/doctest.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "base/bf16.h"
#include "engine/model_generator.h"

namespace agentserve::engine {
namespace {

namespace fs = std::filesystem;

fs::path fresh_dir(const std::string& name) {
  return testing::scratch_dir("model_weights_test", name);
}

// A very small model with one MoE and one dense layer, so both paths load.
ModelConfig small_config() {
  ModelConfig c;
  c.model_type = "qwen3_moe";
  c.hidden_size = 8;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = 6;  // heads x head_dim != hidden, as in the real models
  c.num_experts = 4;
  c.num_experts_per_tok = 2;
  c.moe_intermediate_size = 5;
  c.intermediate_size = 12;
  c.mlp_only_layers = {1};
  c.vocab_size = 32;
  return c;
}

// Element i of tensor number `t` in the list: distinct across tensors, exact in BF16.
float pattern(size_t t, int64_t i) {
  return static_cast<float>((static_cast<int64_t>(t) * 7 + i) % 61 - 30) / 8;
}

struct Built {
  std::vector<TensorData> data;
  std::vector<std::vector<std::byte>> storage;
};

// Tensors for `config` with pattern() values in `dtype`; `edit` may change a spec before bytes are made.
Built build_tensors(
    const ModelConfig& config, DType dtype,
    const std::function<void(TensorSpec&)>& edit = [](TensorSpec&) {}) {
  Built b;
  const auto expected = qwen3_expected_tensors(config);
  b.storage.reserve(expected.size());
  for (size_t t = 0; t < expected.size(); ++t) {
    TensorSpec spec{expected[t].name, dtype, expected[t].shape};
    edit(spec);
    std::vector<std::byte> bytes(spec.nbytes());
    for (int64_t i = 0; i < spec.numel(); ++i) {
      const float v = pattern(t, i);
      if (spec.dtype == DType::kBF16) {
        const bf16 h = float_to_bf16(v);
        std::memcpy(&bytes[static_cast<size_t>(i) * 2], &h, 2);
      } else if (spec.dtype == DType::kF16) {
        const uint16_t h = float_to_f16(v);
        std::memcpy(&bytes[static_cast<size_t>(i) * 2], &h, 2);
      } else if (spec.dtype == DType::kF32) {
        std::memcpy(&bytes[static_cast<size_t>(i) * 4], &v, 4);
      }
    }
    b.storage.push_back(std::move(bytes));
    b.data.push_back({spec, b.storage.back()});
  }
  return b;
}

float matrix_at(const WeightMatrix& m, int64_t i) {
  if (m.dtype == kernels::DType::kF32) return static_cast<const float*>(m.data)[i];
  return bf16_to_float(static_cast<const bf16*>(m.data)[i]);
}

TEST_CASE("the expected tensor list follows Hugging Face names and shapes, MoE and dense layers alike") {
  const auto tensors = qwen3_expected_tensors(small_config());
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& t : tensors) shapes[t.name] = t.shape;
  CHECK(tensors.front().name == "model.embed_tokens.weight");
  CHECK(tensors.back().name == "lm_head.weight");
  CHECK(shapes.at("model.embed_tokens.weight") == std::vector<int64_t>{32, 8});
  CHECK(shapes.at("model.layers.0.self_attn.q_proj.weight") == std::vector<int64_t>{12, 8});
  CHECK(shapes.at("model.layers.0.self_attn.k_proj.weight") == std::vector<int64_t>{6, 8});
  CHECK(shapes.at("model.layers.0.self_attn.v_proj.weight") == std::vector<int64_t>{6, 8});
  CHECK(shapes.at("model.layers.0.self_attn.o_proj.weight") == std::vector<int64_t>{8, 12});
  CHECK(shapes.at("model.layers.0.self_attn.q_norm.weight") == std::vector<int64_t>{6});
  CHECK(shapes.at("model.layers.0.mlp.gate.weight") == std::vector<int64_t>{4, 8});
  CHECK(shapes.at("model.layers.0.mlp.experts.3.gate_proj.weight") == std::vector<int64_t>{5, 8});
  CHECK(shapes.at("model.layers.0.mlp.experts.3.up_proj.weight") == std::vector<int64_t>{5, 8});
  CHECK(shapes.at("model.layers.0.mlp.experts.3.down_proj.weight") == std::vector<int64_t>{8, 5});
  CHECK(shapes.at("model.layers.1.mlp.gate_proj.weight") == std::vector<int64_t>{12, 8});
  CHECK(shapes.at("model.layers.1.mlp.down_proj.weight") == std::vector<int64_t>{8, 12});
  CHECK_FALSE(shapes.contains("model.layers.1.mlp.gate.weight"));
  CHECK(shapes.at("model.norm.weight") == std::vector<int64_t>{8});
  // 1 embedding + per layer 2 norms, 4 projections, 2 head norms + MLP (router + 4 x 3 / 3) + norm + lm_head
  CHECK(tensors.size() == 1 + (8 + 1 + 12) + (8 + 3) + 1 + 1);

  ModelConfig tied = small_config();
  tied.tie_word_embeddings = true;
  CHECK(qwen3_expected_tensors(tied).back().name == "model.norm.weight");
}

TEST_CASE("BF16 weights load as views into the mapped file with the right shapes and values") {
  const ModelConfig config = small_config();
  const fs::path dir = fresh_dir("bf16");
  const Built built = build_tensors(config, DType::kBF16);
  REQUIRE(write_checkpoint(dir, built.data).ok());
  auto checkpoint = Checkpoint::open(dir);
  REQUIRE(checkpoint.ok());
  auto loaded = ModelWeights::load(*checkpoint, config);
  INFO(loaded.status().to_string());
  REQUIRE(loaded.ok());
  const ModelWeights& w = *loaded;

  CHECK(w.converted_bytes == 0);
  CHECK(w.embed_tokens.dtype == kernels::DType::kBF16);
  CHECK(w.embed_tokens.rows == 32);
  CHECK(w.embed_tokens.cols == 8);
  CHECK(w.embed_tokens.data == checkpoint->find("model.embed_tokens.weight")->data);
  REQUIRE(w.layers.size() == 2);
  const LayerWeights& moe = w.layers[0];
  CHECK(moe.is_moe);
  CHECK(moe.q_proj.rows == 12);
  CHECK(moe.k_proj.rows == 6);
  CHECK(moe.o_proj.cols == 12);
  CHECK(moe.q_norm.size() == 6);
  CHECK(moe.router.rows == 4);
  REQUIRE(moe.experts.size() == 4);
  CHECK(moe.experts[3].gate_proj.rows == 5);
  CHECK(moe.experts[3].down_proj.rows == 8);
  CHECK(moe.experts[3].down_proj.cols == 5);
  CHECK(moe.experts[2].up_proj.data == checkpoint->find("model.layers.0.mlp.experts.2.up_proj.weight")->data);
  const LayerWeights& dense = w.layers[1];
  CHECK_FALSE(dense.is_moe);
  CHECK(dense.experts.empty());
  CHECK(dense.mlp.gate_proj.rows == 12);
  CHECK(dense.mlp.down_proj.cols == 12);
  CHECK(w.norm.size() == 8);
  CHECK(w.lm_head.rows == 32);

  // Values: tensor t of the expected list holds pattern(t, i).
  const auto expected = qwen3_expected_tensors(config);
  auto index_of = [&](const std::string& name) {
    for (size_t t = 0; t < expected.size(); ++t) {
      if (expected[t].name == name) return t;
    }
    FAIL("no tensor " << name);
    return size_t{0};
  };
  const size_t down = index_of("model.layers.0.mlp.experts.1.down_proj.weight");
  for (int64_t i = 0; i < 40; ++i) CHECK(matrix_at(moe.experts[1].down_proj, i) == pattern(down, i));
  const size_t k_norm = index_of("model.layers.0.self_attn.k_norm.weight");
  for (int64_t i = 0; i < 6; ++i) CHECK(moe.k_norm[static_cast<size_t>(i)] == pattern(k_norm, i));
  const size_t final_norm = index_of("model.norm.weight");
  for (int64_t i = 0; i < 8; ++i) CHECK(w.norm[static_cast<size_t>(i)] == pattern(final_norm, i));
}

TEST_CASE("weights stay readable after the checkpoint that loaded them is gone") {
  const ModelConfig config = small_config();
  const fs::path dir = fresh_dir("lifetime");
  const Built built = build_tensors(config, DType::kF32);
  REQUIRE(write_checkpoint(dir, built.data, 2).ok());
  std::optional<ModelWeights> weights;
  {
    auto checkpoint = Checkpoint::open(dir);
    REQUIRE(checkpoint.ok());
    auto loaded = ModelWeights::load(*checkpoint, config);
    REQUIRE(loaded.ok());
    weights = std::move(loaded).value();
  }
  const ModelWeights copy = *weights;
  weights.reset();
  CHECK(copy.lm_head.dtype == kernels::DType::kF32);
  const size_t lm_head = qwen3_expected_tensors(config).size() - 1;
  for (int64_t i = 0; i < 32 * 8; ++i) CHECK(matrix_at(copy.lm_head, i) == pattern(lm_head, i));
}

TEST_CASE("F16 matrices are converted once to owned F32; norms of any float type become F32 vectors") {
  const ModelConfig config = small_config();
  const fs::path dir = fresh_dir("f16");
  const Built built = build_tensors(config, DType::kF16);
  REQUIRE(write_checkpoint(dir, built.data).ok());
  auto w = ModelWeights::open(dir, config);
  REQUIRE(w.ok());
  CHECK(w->converted_bytes > 0);
  CHECK(w->layers[0].v_proj.dtype == kernels::DType::kF32);
  const auto expected = qwen3_expected_tensors(config);
  for (size_t t = 0; t < expected.size(); ++t) {
    if (expected[t].name == "model.layers.0.self_attn.v_proj.weight") {
      for (int64_t i = 0; i < 48; ++i) CHECK(matrix_at(w->layers[0].v_proj, i) == pattern(t, i));
    }
  }
}

TEST_CASE("matrices a foreign writer left misaligned are copied to aligned F32") {
  // An odd header length (legal: nothing requires padding) puts every tensor at an odd address.
  const ModelConfig config = small_config();
  const Built built = build_tensors(config, DType::kBF16);
  nlohmann::ordered_json header;
  uint64_t offset = 0;
  for (const TensorData& t : built.data) {
    header[t.spec.name] = {
        {"dtype", "BF16"}, {"shape", t.spec.shape}, {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string text = header.dump();
  if (text.size() % 2 == 0) text += ' ';
  const fs::path dir = fresh_dir("misaligned");
  {
    std::ofstream out(dir / "model.safetensors", std::ios::binary);
    const uint64_t n = text.size();
    out.write(reinterpret_cast<const char*>(&n), 8);
    out << text;
    for (const TensorData& t : built.data) {
      out.write(reinterpret_cast<const char*>(t.bytes.data()), static_cast<std::streamsize>(t.bytes.size()));
    }
  }
  auto w = ModelWeights::open(dir, config);
  INFO(w.status().to_string());
  REQUIRE(w.ok());
  CHECK(w->embed_tokens.dtype == kernels::DType::kF32);
  CHECK(reinterpret_cast<uintptr_t>(w->embed_tokens.data) % alignof(float) == 0);
  for (int64_t i = 0; i < 32 * 8; ++i) CHECK(matrix_at(w->embed_tokens, i) == pattern(0, i));
}

TEST_CASE("tied embeddings make lm_head the embedding; dense qwen3 configs load their MLPs") {
  ModelConfig config = small_config();
  config.tie_word_embeddings = true;
  const fs::path dir = fresh_dir("tied");
  REQUIRE(write_checkpoint(dir, build_tensors(config, DType::kBF16).data).ok());
  auto w = ModelWeights::open(dir, config);
  REQUIRE(w.ok());
  CHECK(w->lm_head.data == w->embed_tokens.data);
  CHECK(w->lm_head.rows == 32);

  ModelConfig dense = small_config();
  dense.model_type = "qwen3";
  dense.num_experts = 0;
  dense.num_experts_per_tok = 0;
  dense.moe_intermediate_size = 0;
  dense.mlp_only_layers = {};
  const fs::path dense_dir = fresh_dir("dense");
  REQUIRE(write_checkpoint(dense_dir, build_tensors(dense, DType::kF32).data).ok());
  auto dw = ModelWeights::open(dense_dir, dense);
  REQUIRE(dw.ok());
  for (const LayerWeights& lw : dw->layers) {
    CHECK_FALSE(lw.is_moe);
    CHECK(lw.mlp.up_proj.rows == 12);
  }
}

TEST_CASE("a missing tensor, a wrong shape or an integer weight is an error naming the tensor") {
  const ModelConfig config = small_config();
  SUBCASE("missing") {
    Built built = build_tensors(config, DType::kBF16);
    const std::string gone = "model.layers.0.mlp.experts.2.up_proj.weight";
    std::erase_if(built.data, [&](const TensorData& t) { return t.spec.name == gone; });
    const fs::path dir = fresh_dir("missing");
    REQUIRE(write_checkpoint(dir, built.data).ok());
    const Status s = ModelWeights::open(dir, config).status();
    CHECK(s.code() == StatusCode::kNotFound);
    CHECK(s.message().find(gone) != std::string::npos);
  }
  SUBCASE("wrong shape") {
    const std::string bent = "model.layers.1.self_attn.k_norm.weight";
    const Built built = build_tensors(config, DType::kBF16, [&](TensorSpec& s) {
      if (s.name == bent) s.shape = {8};
    });
    const fs::path dir = fresh_dir("shape");
    REQUIRE(write_checkpoint(dir, built.data).ok());
    const Status s = ModelWeights::open(dir, config).status();
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK(s.message().find(bent) != std::string::npos);
    CHECK(s.message().find("[8]") != std::string::npos);
    CHECK(s.message().find("[6]") != std::string::npos);
  }
  SUBCASE("transposed matrix") {
    const std::string bent = "model.layers.0.self_attn.o_proj.weight";
    const Built built = build_tensors(config, DType::kBF16, [&](TensorSpec& s) {
      if (s.name == bent) s.shape = {12, 8};
    });
    const fs::path dir = fresh_dir("transposed");
    REQUIRE(write_checkpoint(dir, built.data).ok());
    const Status s = ModelWeights::open(dir, config).status();
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK(s.message().find(bent) != std::string::npos);
  }
  SUBCASE("integer dtype") {
    const Built built = build_tensors(config, DType::kBF16, [](TensorSpec& s) {
      if (s.name == "model.norm.weight") s.dtype = DType::kI32;
    });
    const fs::path dir = fresh_dir("int");
    REQUIRE(write_checkpoint(dir, built.data).ok());
    const Status s = ModelWeights::open(dir, config).status();
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK(s.message().find("model.norm.weight") != std::string::npos);
  }
  SUBCASE("config that does not validate") {
    ModelConfig bad = config;
    bad.num_key_value_heads = 3;
    const fs::path dir = fresh_dir("badconfig");
    REQUIRE(write_checkpoint(dir, build_tensors(config, DType::kBF16).data).ok());
    CHECK(ModelWeights::open(dir, bad).status().code() == StatusCode::kInvalidArgument);
  }
}

TEST_CASE("the tiny preset written by the generator loads, one expert view per expert") {
  auto preset = model_preset("tiny");
  REQUIRE(preset.ok());
  GeneratorOptions options;
  options.config = *preset;
  options.seed = 3;
  const fs::path dir = fresh_dir("tiny");
  REQUIRE(generate_model(dir, options).ok());
  auto checkpoint = Checkpoint::open(dir);
  REQUIRE(checkpoint.ok());
  CHECK(checkpoint->tensor_count() == qwen3_expected_tensors(*preset).size());
  auto w = ModelWeights::load(*checkpoint, *preset);
  REQUIRE(w.ok());
  CHECK(w->embed_tokens.rows == 151936);
  CHECK(w->embed_tokens.cols == 64);
  CHECK(w->layers.size() == 2);
  CHECK(w->layers[1].experts.size() == 8);
  CHECK(w->layers[1].q_proj.rows == 64);
  CHECK(w->layers[1].k_proj.rows == 32);
  CHECK(w->converted_bytes == 0);
}

}  // namespace
}  // namespace agentserve::engine
