// The device memory plan with the real Qwen3-MoE shapes (shared/models/*.config.json, copied in below so
// the test needs no file outside the repository): Qwen3-30B-A3B in BF16 on a 141 GB H200 and an 80 GB A100
// gets a KV pool of the expected size, and what cannot fit (30B on a 40 GB A100, 235B on one H200) fails
// with a message that says which part does not fit.
#include <doctest/doctest.h>

#include <string>

#include "engine/device_memory_plan.h"
#include "engine/model_generator.h"

namespace agentserve::engine {
namespace {

constexpr size_t kGiB = size_t{1} << 30;

// Qwen/Qwen3-30B-A3B config.json, the fields that size tensors.
ModelConfig qwen3_30b_a3b() {
  auto base = model_preset("tiny");
  REQUIRE(base.ok());
  ModelConfig c = *base;
  c.hidden_size = 2048;
  c.num_hidden_layers = 48;
  c.num_attention_heads = 32;
  c.num_key_value_heads = 4;
  c.head_dim = 128;
  c.num_experts = 128;
  c.num_experts_per_tok = 8;
  c.moe_intermediate_size = 768;
  c.intermediate_size = 6144;
  c.mlp_only_layers = {};
  c.decoder_sparse_step = 1;
  c.vocab_size = 151936;
  c.tie_word_embeddings = false;
  return c;
}

// Qwen/Qwen3-235B-A22B.
ModelConfig qwen3_235b_a22b() {
  ModelConfig c = qwen3_30b_a3b();
  c.hidden_size = 4096;
  c.num_hidden_layers = 94;
  c.num_attention_heads = 64;
  c.moe_intermediate_size = 1536;
  c.intermediate_size = 12288;
  return c;
}

DeviceMemoryInputs inputs_for(const ModelConfig& c, size_t free_bytes) {
  return {.free_bytes = free_bytes,
          .weight_bytes = model_weight_bytes(c, kernels::DType::kBF16),
          .activation_bytes = activation_bytes(c, 8192, 64),
          .kv_block_bytes = kv_block_bytes(c, 16, kernels::DType::kBF16)};
}

TEST_CASE("Qwen3-30B-A3B sizes: about 61 GB of BF16 weights and 96 KiB of BF16 KV per token") {
  const ModelConfig c = qwen3_30b_a3b();
  const size_t weights = model_weight_bytes(c, kernels::DType::kBF16);
  CHECK(weights > size_t{60'500'000'000});
  CHECK(weights < size_t{61'500'000'000});
  CHECK(model_weight_bytes(c, kernels::DType::kF32) > 2 * weights - size_t{1'000'000});
  CHECK(kv_block_bytes(c, 1, kernels::DType::kBF16) == 96 * 1024);
  CHECK(kv_block_bytes(c, 16, kernels::DType::kF32) == 2 * 16 * 96 * 1024);
  // 8192-token steps: the grouped MoE rows dominate; a few GB, not tens.
  const size_t act = activation_bytes(c, 8192, 64);
  CHECK(act > 1 * kGiB);
  CHECK(act < 4 * kGiB);
  CHECK(activation_bytes(c, 1, 1) < act / 1000);
}

TEST_CASE("Qwen3-30B-A3B on a 141 GB H200 gets a KV pool for over 700k tokens, everything accounted for") {
  // A 141 GB H200 reports about 139.8 GiB total; about 139 GiB are free once a CUDA context exists.
  const DeviceMemoryInputs in = inputs_for(qwen3_30b_a3b(), 139 * kGiB);
  auto plan = plan_device_memory(in);
  REQUIRE_MESSAGE(plan.ok(), plan.status().to_string());
  MESSAGE("H200: " << plan->kv_blocks << " blocks = " << plan->kv_blocks * 16 << " tokens, KV "
                   << static_cast<double>(plan->kv_bytes) / kGiB << " GiB, margin "
                   << static_cast<double>(plan->safety_bytes) / kGiB << " GiB");
  CHECK(plan->safety_bytes == static_cast<size_t>(0.05 * static_cast<double>(in.free_bytes)));
  CHECK(in.weight_bytes + in.activation_bytes + plan->safety_bytes + plan->kv_bytes + plan->unused_bytes ==
        in.free_bytes);
  CHECK(plan->unused_bytes < in.kv_block_bytes);
  CHECK(plan->kv_bytes == static_cast<size_t>(plan->kv_blocks) * in.kv_block_bytes);
  CHECK(plan->kv_blocks * 16 > 700'000);
  CHECK(plan->kv_blocks * 16 < 900'000);
}

TEST_CASE("Qwen3-30B-A3B on an 80 GB A100 still holds a 128k-token context") {
  const DeviceMemoryInputs in = inputs_for(qwen3_30b_a3b(), 79 * kGiB);
  auto plan = plan_device_memory(in);
  REQUIRE_MESSAGE(plan.ok(), plan.status().to_string());
  MESSAGE("A100 80GB: " << plan->kv_blocks << " blocks = " << plan->kv_blocks * 16 << " tokens");
  CHECK(plan->kv_blocks * 16 >= 131072);
  CHECK(plan->kv_blocks * 16 < 250'000);
  // Asking for more than fits (two 128k sequences) is an error, not a smaller pool.
  DeviceMemoryInputs two_sequences = in;
  two_sequences.min_kv_blocks = 2 * 131072 / 16;
  auto refused = plan_device_memory(two_sequences);
  REQUIRE(!refused.ok());
  CHECK(refused.status().code() == StatusCode::kResourceExhausted);
  CHECK(refused.status().message().find("KV blocks fit") != std::string::npos);
}

TEST_CASE("models that do not fit fail with the sizes that do not fit") {
  auto a100_40 = plan_device_memory(inputs_for(qwen3_30b_a3b(), 39 * kGiB));
  REQUIRE(!a100_40.ok());
  CHECK(a100_40.status().code() == StatusCode::kResourceExhausted);
  CHECK(a100_40.status().message().find("weights") != std::string::npos);
  CHECK(a100_40.status().message().find("39.00 GiB are free") != std::string::npos);

  const ModelConfig big = qwen3_235b_a22b();
  CHECK(model_weight_bytes(big, kernels::DType::kBF16) > size_t{460'000'000'000});
  CHECK(!plan_device_memory(inputs_for(big, 139 * kGiB)).ok());
}

TEST_CASE("the safety margin has a floor, and bad inputs are refused") {
  DeviceMemoryInputs small{
      .free_bytes = 4 * kGiB, .weight_bytes = kGiB, .activation_bytes = 0, .kv_block_bytes = 1 << 20};
  auto plan = plan_device_memory(small);
  REQUIRE(plan.ok());
  CHECK(plan->safety_bytes == kGiB);  // 5% of 4 GiB is below the 1 GiB floor
  CHECK(plan->kv_blocks == 2048);

  small.kv_block_bytes = 0;
  CHECK(plan_device_memory(small).status().code() == StatusCode::kInvalidArgument);
  small.kv_block_bytes = 1 << 20;
  small.safety_fraction = 1.5;
  CHECK(plan_device_memory(small).status().code() == StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace agentserve::engine
