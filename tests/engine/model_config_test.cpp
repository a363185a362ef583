#include "engine/model_config.h"

#include <doctest/doctest.h>
#include <unistd.h>

#include <cmath>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>

namespace agentserve::engine {
namespace {

using nlohmann::json;

const std::filesystem::path kData = std::filesystem::path(AGENTSERVE_SOURCE_DIR) / "tests/engine/data";

json read_json(const std::string& name) {
  std::ifstream in(kData / name);
  REQUIRE(in);
  return json::parse(in);
}

ModelConfig parse_ok(const json& j) {
  auto config = parse_model_config(j.dump());
  INFO(config.status().to_string());
  REQUIRE(config.ok());
  return *config;
}

TEST_CASE("the published Qwen3-30B-A3B config parses with every size it states") {
  const ModelConfig c = parse_ok(read_json("qwen3-30b-a3b.config.json"));
  CHECK(c.model_type == "qwen3_moe");
  CHECK(c.architectures == std::vector<std::string>{"Qwen3MoeForCausalLM"});
  CHECK(c.hidden_size == 2048);
  CHECK(c.num_hidden_layers == 48);
  CHECK(c.num_attention_heads == 32);
  CHECK(c.num_key_value_heads == 4);
  CHECK(c.head_dim == 128);  // explicit, and heads x head_dim != hidden
  CHECK(c.num_experts == 128);
  CHECK(c.num_experts_per_tok == 8);
  CHECK(c.moe_intermediate_size == 768);
  CHECK(c.intermediate_size == 6144);
  CHECK(c.norm_topk_prob);
  CHECK(c.decoder_sparse_step == 1);
  CHECK(c.mlp_only_layers.empty());
  CHECK(c.rope_theta == 1000000.0);
  CHECK_FALSE(c.rope_scaling.has_value());
  CHECK(c.rms_norm_eps == 1e-6);
  CHECK(c.max_position_embeddings == 40960);
  CHECK(c.vocab_size == 151936);
  CHECK_FALSE(c.tie_word_embeddings);
  CHECK(c.torch_dtype == "bfloat16");
  CHECK(c.bos_token_id == 151643);
  CHECK(c.eos_token_ids == std::vector<int64_t>{151645});
  for (int layer = 0; layer < 48; ++layer) CHECK(c.is_moe_layer(layer));
  CHECK_FALSE(c.has_dense_layers());
  CHECK(c.yarn_attention_factor() == 1.0);
}

TEST_CASE("the published Qwen3-235B-A22B config parses") {
  const ModelConfig c = parse_ok(read_json("qwen3-235b-a22b.config.json"));
  CHECK(c.hidden_size == 4096);
  CHECK(c.num_hidden_layers == 94);
  CHECK(c.num_attention_heads == 64);
  CHECK(c.num_key_value_heads == 4);
  CHECK(c.moe_intermediate_size == 1536);
  CHECK(c.is_moe_layer(93));
  CHECK_FALSE(c.is_moe_layer(94));
}

TEST_CASE("YaRN rope scaling reads factor and original length, defaults the betas and the attention factor") {
  json j = read_json("qwen3-30b-a3b.config.json");
  j["max_position_embeddings"] = 131072;
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 32768}};
  const ModelConfig c = parse_ok(j);
  REQUIRE(c.rope_scaling.has_value());
  CHECK(c.rope_scaling->factor == 4.0);
  CHECK(c.rope_scaling->original_max_position_embeddings == 32768);
  CHECK(c.rope_scaling->beta_fast == 32.0);
  CHECK(c.rope_scaling->beta_slow == 1.0);
  CHECK_FALSE(c.rope_scaling->attention_factor.has_value());
  CHECK(c.yarn_attention_factor() == doctest::Approx(0.1 * std::log(4.0) + 1.0));

  // The legacy "type" spelling, explicit betas and attention factor, and the fallback to
  // max_position_embeddings when original_max_position_embeddings is absent.
  j["rope_scaling"] = {
      {"type", "yarn"}, {"factor", 2}, {"beta_fast", 16}, {"beta_slow", 2}, {"attention_factor", 1.5}};
  const ModelConfig legacy = parse_ok(j);
  REQUIRE(legacy.rope_scaling.has_value());
  CHECK(legacy.rope_scaling->factor == 2.0);
  CHECK(legacy.rope_scaling->original_max_position_embeddings == 131072);
  CHECK(legacy.rope_scaling->beta_fast == 16.0);
  CHECK(legacy.rope_scaling->beta_slow == 2.0);
  CHECK(legacy.yarn_attention_factor() == 1.5);

  j["rope_scaling"] = {{"rope_type", "default"}};
  CHECK_FALSE(parse_ok(j).rope_scaling.has_value());
}

TEST_CASE("transformers 5 rope_parameters carry rope_theta and the yarn fields") {
  json j = read_json("qwen3-30b-a3b.config.json");
  j.erase("rope_theta");
  j.erase("rope_scaling");
  j["rope_parameters"] = {{"rope_type", "yarn"},
                          {"rope_theta", 5e5},
                          {"factor", 4.0},
                          {"original_max_position_embeddings", 32768}};
  const ModelConfig c = parse_ok(j);
  CHECK(c.rope_theta == 5e5);
  REQUIRE(c.rope_scaling.has_value());
  CHECK(c.rope_scaling->factor == 4.0);
}

TEST_CASE("is_moe_layer follows Hugging Face: mlp_only_layers and decoder_sparse_step") {
  json j = read_json("qwen3-30b-a3b.config.json");
  j["num_hidden_layers"] = 6;
  j["decoder_sparse_step"] = 2;
  j["mlp_only_layers"] = {3};
  const ModelConfig c = parse_ok(j);
  std::vector<int> moe_layers;
  for (int layer = 0; layer < 6; ++layer) {
    if (c.is_moe_layer(layer)) moe_layers.push_back(layer);
  }
  CHECK(moe_layers == std::vector<int>{1, 5});
  CHECK(c.has_dense_layers());
  CHECK_FALSE(c.is_moe_layer(-1));

  j["decoder_sparse_step"] = 1;
  j["num_experts"] = 0;  // a qwen3_moe config without experts is dense everywhere
  const ModelConfig no_experts = parse_ok(j);
  for (int layer = 0; layer < 6; ++layer) CHECK_FALSE(no_experts.is_moe_layer(layer));
}

TEST_CASE("a dense qwen3 config parses, ignores MoE keys and defaults head_dim to hidden / heads") {
  const json j = {{"architectures", {"Qwen3ForCausalLM"}},
                  {"model_type", "qwen3"},
                  {"hidden_size", 1024},
                  {"num_hidden_layers", 28},
                  {"num_attention_heads", 16},
                  {"num_key_value_heads", 8},
                  {"intermediate_size", 3072},
                  {"vocab_size", 151936},
                  {"max_position_embeddings", 40960},
                  {"tie_word_embeddings", true},
                  {"rope_theta", 1000000},
                  {"eos_token_id", {151645, 151643}},
                  {"bos_token_id", nullptr}};
  const ModelConfig c = parse_ok(j);
  CHECK(c.head_dim == 64);
  CHECK(c.num_experts == 0);
  CHECK(c.tie_word_embeddings);
  CHECK(c.rope_theta == 1e6);
  CHECK_FALSE(c.bos_token_id.has_value());
  CHECK(c.eos_token_ids == std::vector<int64_t>{151645, 151643});
  for (int layer = 0; layer < 28; ++layer) CHECK_FALSE(c.is_moe_layer(layer));

  json no_kv = j;
  no_kv.erase("num_key_value_heads");
  CHECK(parse_ok(no_kv).num_key_value_heads == 16);  // Hugging Face: kv heads default to heads
}

TEST_CASE("missing, mistyped and contradictory keys are InvalidArgument errors naming the key") {
  const json base = read_json("qwen3-30b-a3b.config.json");
  struct Case {
    const char* what;
    std::function<void(json&)> mutate;
    const char* key;
  };
  const Case cases[] = {
      {"missing hidden_size", [](json& j) { j.erase("hidden_size"); }, "hidden_size"},
      {"missing num_experts", [](json& j) { j.erase("num_experts"); }, "num_experts"},
      {"missing model_type", [](json& j) { j.erase("model_type"); }, "model_type"},
      {"missing vocab_size", [](json& j) { j.erase("vocab_size"); }, "vocab_size"},
      {"heads not a multiple of kv heads", [](json& j) { j["num_key_value_heads"] = 5; },
       "num_key_value_heads"},
      {"top-k above experts", [](json& j) { j["num_experts_per_tok"] = 129; }, "num_experts_per_tok"},
      {"zero top-k", [](json& j) { j["num_experts_per_tok"] = 0; }, "num_experts_per_tok"},
      {"zero hidden size", [](json& j) { j["hidden_size"] = 0; }, "hidden_size"},
      {"negative head_dim", [](json& j) { j["head_dim"] = -128; }, "head_dim"},
      {"zero moe width", [](json& j) { j["moe_intermediate_size"] = 0; }, "moe_intermediate_size"},
      {"string size", [](json& j) { j["hidden_size"] = "2048"; }, "hidden_size"},
      {"fractional size", [](json& j) { j["hidden_size"] = 2048.5; }, "hidden_size"},
      {"size past int", [](json& j) { j["num_hidden_layers"] = 1LL << 40; }, "num_hidden_layers"},
      {"absurd layer count", [](json& j) { j["num_hidden_layers"] = 1 << 30; }, "num_hidden_layers"},
      {"bool as string", [](json& j) { j["norm_topk_prob"] = "yes"; }, "norm_topk_prob"},
      {"unknown model type", [](json& j) { j["model_type"] = "llama"; }, "model_type"},
      {"unsupported rope type",
       [](json& j) {
         j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 2.0}};
       },
       "rope_scaling.rope_type"},
      {"yarn without factor",
       [](json& j) {
         j["rope_scaling"] = {{"rope_type", "yarn"}};
       },
       "rope_scaling.factor"},
      {"yarn factor below 1",
       [](json& j) {
         j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 0.5}};
       },
       "rope_scaling.factor"},
      {"rope_scaling not an object", [](json& j) { j["rope_scaling"] = 4; }, "rope_scaling"},
      {"attention bias", [](json& j) { j["attention_bias"] = true; }, "attention_bias"},
      {"sliding window", [](json& j) { j["use_sliding_window"] = true; }, "use_sliding_window"},
      {"other activation", [](json& j) { j["hidden_act"] = "gelu"; }, "hidden_act"},
      {"mlp_only_layers past the end", [](json& j) { j["mlp_only_layers"] = {48}; }, "mlp_only_layers"},
      {"negative mlp_only layer", [](json& j) { j["mlp_only_layers"] = {-1}; }, "mlp_only_layers"},
      {"zero sparse step", [](json& j) { j["decoder_sparse_step"] = 0; }, "decoder_sparse_step"},
      {"dense layers without intermediate_size",
       [](json& j) {
         j.erase("intermediate_size");
         j["mlp_only_layers"] = {0};
       },
       "intermediate_size"},
      {"zero rms eps", [](json& j) { j["rms_norm_eps"] = 0; }, "rms_norm_eps"},
      {"eos as string", [](json& j) { j["eos_token_id"] = "x"; }, "eos_token_id"},
  };
  for (const Case& c : cases) {
    INFO(std::string(c.what));
    json j = base;
    c.mutate(j);
    auto config = parse_model_config(j.dump());
    REQUIRE_FALSE(config.ok());
    CHECK(config.status().code() == StatusCode::kInvalidArgument);
    CHECK(config.status().message().find(std::string("\"") + c.key + "\"") != std::string::npos);
  }
}

TEST_CASE("a hostile config nested a million deep is an error, not a stack overflow") {
  std::string text = read_json("qwen3-30b-a3b.config.json").dump();
  const std::string empty = "\"mlp_only_layers\":[]";
  const auto pos = text.find(empty);
  REQUIRE(pos != std::string::npos);
  text.replace(pos, empty.size(),
               "\"mlp_only_layers\":" + std::string(1000000, '[') + std::string(1000000, ']'));
  auto config = parse_model_config(text);
  REQUIRE_FALSE(config.ok());
  CHECK(config.status().message().find("\"mlp_only_layers\"") != std::string::npos);
}

TEST_CASE("text that is not a JSON object is rejected, never thrown") {
  for (const char* text : {"", "{", "[1,2]", "null", "{\"model_type\": \"qwen3_moe\",}", "\xff\xfe"}) {
    INFO(std::string(text));
    auto config = parse_model_config(text);
    REQUIRE_FALSE(config.ok());
    CHECK(config.status().code() == StatusCode::kInvalidArgument);
  }
}

TEST_CASE("model_config_to_json writes every key of the published config and parses back equal") {
  const json published = read_json("qwen3-30b-a3b.config.json");
  const ModelConfig c = parse_ok(published);
  const json written = json::parse(model_config_to_json(c));
  for (const auto& [key, value] : published.items()) {
    CAPTURE(key);
    REQUIRE(written.contains(key));
    CHECK(written[key] == value);
  }
  CHECK(parse_ok(written) == c);

  json yarn = published;
  yarn["mlp_only_layers"] = {0, 3};
  yarn["rope_scaling"] = {{"rope_type", "yarn"},
                          {"factor", 4.0},
                          {"original_max_position_embeddings", 32768},
                          {"beta_fast", 24.0},
                          {"attention_factor", 1.25}};
  const ModelConfig y = parse_ok(yarn);
  CHECK(parse_ok(json::parse(model_config_to_json(y))) == y);
}

TEST_CASE("load_model_config reads a folder's config.json or a file, and names a missing file") {
  auto from_file = load_model_config(kData / "qwen3-30b-a3b.config.json");
  REQUIRE(from_file.ok());
  CHECK(from_file->hidden_size == 2048);

  const auto dir =
      std::filesystem::temp_directory_path() / ("agentserve_model_config_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "config.json") << model_config_to_json(*from_file);
  auto from_dir = load_model_config(dir);
  REQUIRE(from_dir.ok());
  CHECK(*from_dir == *from_file);

  std::ofstream(dir / "config.json") << "{\"model_type\": \"qwen3_moe\"}";
  auto broken = load_model_config(dir);
  REQUIRE_FALSE(broken.ok());
  CHECK(broken.status().message().find("config.json") != std::string::npos);
  std::filesystem::remove_all(dir);

  auto missing = load_model_config(dir);
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.status().code() == StatusCode::kNotFound);
}

}  // namespace
}  // namespace agentserve::engine
