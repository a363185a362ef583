#include "engine/model_generator.h"
#include "tests/scratch_dir.h"

#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>

#include "base/bf16.h"
#include "base/sha256.h"
#include "engine/weight_manifest.h"

namespace agentserve::engine {
namespace {

namespace fs = std::filesystem;

fs::path fresh_dir(const std::string& name) {
  return testing::scratch_dir("model_generator_test", name, /*create=*/false);
}

ModelConfig tiny() {
  auto c = model_preset("tiny");
  REQUIRE(c.ok());
  return *c;
}

fs::path generate(const std::string& name, uint64_t seed, int shards = 1, DType dtype = DType::kBF16) {
  const fs::path dir = fresh_dir(name);
  GeneratorOptions options;
  options.config = tiny();
  options.seed = seed;
  options.shards = shards;
  options.dtype = dtype;
  options.tokenizer_dir = AGENTSERVE_TOKENIZER_DIR;
  const Status s = generate_model(dir, options);
  INFO(s.to_string());
  REQUIRE(s.ok());
  return dir;
}

std::vector<float> stream_values(uint64_t seed, const ExpectedTensor& t, size_t n) {
  TensorValueStream stream(seed, t);
  std::vector<float> v(n);
  stream.next(v);
  return v;
}

ExpectedTensor find_expected(const ModelConfig& c, const std::string& name) {
  for (const auto& t : qwen3_expected_tensors(c)) {
    if (t.name == name) return t;
  }
  FAIL("no tensor " << name);
  return {};
}

TEST_CASE("presets have the documented sizes and the real model's fixed facts") {
  const ModelConfig t = tiny();
  CHECK(t.hidden_size == 64);
  CHECK(t.num_hidden_layers == 2);
  CHECK(t.num_attention_heads == 4);
  CHECK(t.num_key_value_heads == 2);
  CHECK(t.head_dim == 16);
  CHECK(t.num_experts == 8);
  CHECK(t.num_experts_per_tok == 2);
  CHECK(t.moe_intermediate_size == 32);
  CHECK(t.vocab_size == 151936);
  CHECK(t.max_position_embeddings == 131072);
  REQUIRE(t.rope_scaling.has_value());
  CHECK(t.rope_scaling->factor == 4.0);
  CHECK(t.rope_scaling->original_max_position_embeddings == 32768);
  CHECK(t.rope_theta == 1e6);
  CHECK(t.rms_norm_eps == 1e-6);
  CHECK(t.eos_token_ids == std::vector<int64_t>{151645});
  CHECK(validate_model_config(t).ok());
  auto b = model_preset("bench");
  REQUIRE(b.ok());
  CHECK(b->hidden_size == 1024);
  CHECK(b->num_hidden_layers == 8);
  CHECK(b->num_attention_heads == 16);
  CHECK(b->num_key_value_heads == 4);
  CHECK(b->head_dim == 64);
  CHECK(b->num_experts == 64);
  CHECK(b->num_experts_per_tok == 8);
  CHECK(b->moe_intermediate_size == 256);
  CHECK(validate_model_config(*b).ok());
  CHECK(model_preset("huge").status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("the same seed writes identical bytes; another seed writes other bytes") {
  const fs::path a = generate("seed_a", 42);
  const fs::path b = generate("seed_b", 42);
  const fs::path c = generate("seed_c", 43);
  const std::string ha = *sha256_file(a / "model.safetensors");
  CHECK(ha == *sha256_file(b / "model.safetensors"));
  CHECK(ha != *sha256_file(c / "model.safetensors"));
  CHECK(*model_fingerprint(a) == *model_fingerprint(b));
  CHECK(*model_fingerprint(a) != *model_fingerprint(c));
}

TEST_CASE("the folder has a config.json that parses back to the preset, the tokenizer files and a manifest") {
  const fs::path dir = generate("layout", 1);
  auto config = load_model_config(dir);
  REQUIRE(config.ok());
  ModelConfig expected = tiny();
  expected.torch_dtype = "bfloat16";
  CHECK(*config == expected);
  CHECK(config->architectures == std::vector<std::string>{"Qwen3MoeForCausalLM"});
  for (const char* name : {"tokenizer.json", "tokenizer_config.json"}) {
    CHECK(fs::file_size(dir / name) == fs::file_size(fs::path(AGENTSERVE_TOKENIZER_DIR) / name));
  }
  auto report = verify_weights(dir);
  REQUIRE(report.ok());
  CHECK(report->ok());
  // The tiny model stays small: the embedding and lm_head (151936 x 64 BF16 each) are nearly all of it.
  const auto size = fs::file_size(dir / "model.safetensors");
  CHECK(size > 2 * 151936 * 64 * 2);
  CHECK(size < 2 * 151936 * 64 * 2 + (1u << 20));
}

TEST_CASE("written values are the value stream, rounded to BF16 or exact in F32") {
  const ModelConfig c = tiny();
  const fs::path bf = generate("values_bf16", 5);
  const fs::path f32 = generate("values_f32", 5, 1, DType::kF32);
  auto cb = Checkpoint::open(bf);
  auto cf = Checkpoint::open(f32);
  REQUIRE(cb.ok());
  REQUIRE(cf.ok());
  for (const char* name : {"model.embed_tokens.weight", "model.layers.1.mlp.gate.weight",
                           "model.layers.0.mlp.experts.7.down_proj.weight",
                           "model.layers.0.self_attn.q_norm.weight", "lm_head.weight"}) {
    CAPTURE(std::string(name));
    const ExpectedTensor t = find_expected(c, name);
    const TensorView* vb = cb->find(name);
    const TensorView* vf = cf->find(name);
    REQUIRE(vb != nullptr);
    REQUIRE(vf != nullptr);
    CHECK(vb->dtype == DType::kBF16);
    CHECK(vf->dtype == DType::kF32);
    const size_t n = static_cast<size_t>(std::min<int64_t>(vb->numel(), 5000));
    const auto values = stream_values(5, t, n);
    for (size_t i = 0; i < n; ++i) {
      CHECK(vf->float_at(static_cast<int64_t>(i)) == values[i]);
      CHECK(vb->float_at(static_cast<int64_t>(i)) == bf16_to_float(float_to_bf16(values[i])));
    }
  }
}

TEST_CASE("a sharded checkpoint holds the same tensors as the single file and loads the same weights") {
  const fs::path single = generate("single", 9);
  const fs::path sharded = generate("sharded", 9, 4);
  CHECK_FALSE(fs::exists(sharded / "model.safetensors"));
  CHECK(fs::exists(sharded / "model.safetensors.index.json"));
  auto a = Checkpoint::open(single);
  auto b = Checkpoint::open(sharded);
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  CHECK(b->files().size() == 4);
  REQUIRE(a->tensor_names() == b->tensor_names());
  for (const std::string& name : a->tensor_names()) {
    const TensorView* x = a->find(name);
    const TensorView* y = b->find(name);
    REQUIRE(x->nbytes == y->nbytes);
    CHECK(std::memcmp(x->data, y->data, x->nbytes) == 0);
  }
  auto w = ModelWeights::load(*b, tiny());
  REQUIRE(w.ok());
  CHECK(verify_weights(sharded)->verified.size() == 5);  // 4 shards + config.json
}

TEST_CASE("initial scales: matrices with std 1/sqrt(in), norms near 1, routing peaked and uneven") {
  const ModelConfig c = tiny();
  const uint64_t seed = 11;
  auto stats = [](const std::vector<float>& v) {
    double sum = 0, sq = 0;
    for (float x : v) sum += x, sq += double(x) * x;
    const double mean = sum / v.size();
    return std::pair{mean, std::sqrt(sq / v.size() - mean * mean)};
  };
  const ExpectedTensor down = find_expected(c, "model.layers.0.mlp.experts.0.down_proj.weight");  // in = 32
  auto [dm, ds] = stats(stream_values(seed, down, 64 * 32));
  CHECK(std::abs(dm) < 0.02);
  CHECK(ds == doctest::Approx(1.0 / std::sqrt(32.0)).epsilon(0.05));
  const ExpectedTensor embed = find_expected(c, "model.embed_tokens.weight");
  auto [em, es] = stats(stream_values(seed, embed, 100000));
  CHECK(std::abs(em) < 0.02);
  CHECK(es == doctest::Approx(1.0).epsilon(0.02));
  for (const char* name : {"model.norm.weight", "model.layers.1.self_attn.k_norm.weight"}) {
    for (float v : stream_values(seed, find_expected(c, name), 16)) {
      CHECK(v >= 0.9f);
      CHECK(v <= 1.1f);
    }
  }

  // Route random unit-RMS vectors through layer 0's router: experts' shares must differ clearly, and the
  // chosen top-2 must carry well over the uniform 2/8 of the probability.
  const ExpectedTensor router = find_expected(c, "model.layers.0.mlp.gate.weight");
  const auto w = stream_values(seed, router, 8 * 64);
  TensorValueStream inputs(seed + 1, embed);
  std::vector<int> picks(8, 0);
  double top2_mass = 0;
  const int n_tokens = 2000;
  for (int t = 0; t < n_tokens; ++t) {
    std::vector<float> x(64);
    inputs.next(x);
    std::vector<double> logits(8), p(8);
    for (int e = 0; e < 8; ++e) {
      for (int i = 0; i < 64; ++i) logits[e] += double(w[e * 64 + i]) * x[i];
    }
    const double mx = *std::max_element(logits.begin(), logits.end());
    double z = 0;
    for (int e = 0; e < 8; ++e) z += p[e] = std::exp(logits[e] - mx);
    std::vector<int> order = {0, 1, 2, 3, 4, 5, 6, 7};
    std::partial_sort(order.begin(), order.begin() + 2, order.end(),
                      [&](int a, int b) { return p[a] > p[b]; });
    ++picks[order[0]];
    ++picks[order[1]];
    top2_mass += (p[order[0]] + p[order[1]]) / z;
  }
  const int most = *std::max_element(picks.begin(), picks.end());
  const int least = *std::min_element(picks.begin(), picks.end());
  CHECK(least > 0);
  CHECK(double(most) / (2.0 * n_tokens / 8) > 1.4);  // max / mean load
  CHECK(top2_mass / n_tokens > 0.5);
}

TEST_CASE("the generator takes any config: a dense qwen3 and one with mlp_only_layers load back") {
  ModelConfig dense;
  dense.model_type = "qwen3";
  dense.hidden_size = 32;
  dense.num_hidden_layers = 2;
  dense.num_attention_heads = 4;
  dense.num_key_value_heads = 2;
  dense.head_dim = 8;
  dense.intermediate_size = 48;
  dense.vocab_size = 100;
  dense.tie_word_embeddings = true;
  ModelConfig mixed = tiny();
  mixed.vocab_size = 100;
  mixed.num_hidden_layers = 3;
  mixed.mlp_only_layers = {1};
  mixed.intermediate_size = 40;
  for (const ModelConfig& config : {dense, mixed}) {
    const fs::path dir = fresh_dir("custom_" + config.model_type);
    GeneratorOptions options;
    options.config = config;
    options.dtype = DType::kF32;
    REQUIRE(generate_model(dir, options).ok());
    CHECK_FALSE(fs::exists(dir / "tokenizer.json"));  // no tokenizer_dir given
    auto loaded_config = load_model_config(dir);
    REQUIRE(loaded_config.ok());
    CHECK(loaded_config->torch_dtype == "float32");
    auto w = ModelWeights::open(dir, *loaded_config);
    INFO(w.status().to_string());
    REQUIRE(w.ok());
    for (int l = 0; l < config.num_hidden_layers; ++l)
      CHECK(w->layers[size_t(l)].is_moe == config.is_moe_layer(l));
  }
}

TEST_CASE("a folder that holds a model is replaced only when asked, leaving no stale shards") {
  const fs::path dir = generate("overwrite", 1, 3);
  GeneratorOptions options;
  options.config = tiny();
  const Status refused = generate_model(dir, options);
  CHECK(refused.code() == StatusCode::kFailedPrecondition);
  CHECK(fs::exists(dir / "model-00001-of-00003.safetensors"));
  options.overwrite = true;
  REQUIRE(generate_model(dir, options).ok());
  CHECK_FALSE(fs::exists(dir / "model-00001-of-00003.safetensors"));
  CHECK_FALSE(fs::exists(dir / "model.safetensors.index.json"));
  CHECK(verify_weights(dir)->ok());

  options.shards = 0;
  CHECK(generate_model(fresh_dir("zero_shards"), options).code() == StatusCode::kInvalidArgument);
  options.shards = 1;
  options.dtype = DType::kI32;
  CHECK(generate_model(fresh_dir("int"), options).code() == StatusCode::kInvalidArgument);
  options.dtype = DType::kBF16;
  options.tokenizer_dir = "/nonexistent/tokenizer";
  CHECK(generate_model(fresh_dir("notok"), options).code() == StatusCode::kNotFound);
}

TEST_CASE("progress reaches the total number of weight bytes") {
  GeneratorOptions options;
  options.config = tiny();
  options.config.vocab_size = 1000;
  uint64_t last_done = 0, last_total = 0;
  options.progress = [&](uint64_t done, uint64_t total) {
    CHECK(done >= last_done);
    last_done = done;
    last_total = total;
  };
  const fs::path dir = fresh_dir("progress");
  REQUIRE(generate_model(dir, options).ok());
  uint64_t total = 0;
  for (const auto& t : qwen3_expected_tensors(options.config)) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    total += uint64_t(n) * 2;
  }
  CHECK(last_total == total);
  CHECK(last_done == total);
}

}  // namespace
}  // namespace agentserve::engine
