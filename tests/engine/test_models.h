// Engine test helpers: random-weight checkpoints written once per test binary into a temporary folder, with
// the real Qwen3 tokenizer, through the same generator `agentserve make-model` uses; random prompts; greedy
// sampling that ignores EOS, so every run generates exactly the tokens asked for.
#pragma once

#include <doctest/doctest.h>

#include <unistd.h>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "engine/model_generator.h"
#include "engine/sampling_params.h"

namespace agentserve::engine::testing {

inline std::filesystem::path test_model_dir(const std::string& preset, DType dtype, uint64_t seed,
                                            const ModelConfig* config = nullptr) {
  static std::map<std::string, std::filesystem::path> made;
  const std::string key = preset + (dtype == DType::kF32 ? "-f32-" : "-bf16-") + std::to_string(seed);
  if (auto it = made.find(key); it != made.end()) return it->second;
  const auto dir =
      std::filesystem::temp_directory_path() / ("agentserve-test-" + std::to_string(::getpid()) + "-" + key);
  std::filesystem::remove_all(dir);
  GeneratorOptions options;
  if (config) {
    options.config = *config;
  } else {
    auto preset_config = model_preset(preset);
    REQUIRE_MESSAGE(preset_config.ok(), preset_config.status().to_string());
    options.config = *preset_config;
  }
  options.seed = seed;
  options.dtype = dtype;
  options.tokenizer_dir = AGENTSERVE_TOKENIZER_DIR;
  const Status status = generate_model(dir, options);
  REQUIRE_MESSAGE(status.ok(), status.to_string());
  made[key] = dir;
  return dir;
}

// Removes the folders at exit so /tmp does not fill up with checkpoints.
struct TestModelCleanup {
  ~TestModelCleanup() {
    std::error_code ec;
    for (const auto& entry :
         std::filesystem::directory_iterator(std::filesystem::temp_directory_path(), ec)) {
      const std::string name = entry.path().filename().string();
      if (name.rfind("agentserve-test-" + std::to_string(::getpid()) + "-", 0) == 0) {
        std::filesystem::remove_all(entry.path(), ec);
      }
    }
  }
};
inline TestModelCleanup test_model_cleanup;

inline std::vector<int32_t> random_ids(std::mt19937& rng, int n) {
  std::uniform_int_distribution<int32_t> dist(0, 151000);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& id : ids) id = dist(rng);
  return ids;
}

inline SamplingParams greedy(int max_tokens) {
  SamplingParams p;
  p.temperature = 0.0;
  p.max_tokens = max_tokens;
  p.ignore_eos = true;
  return p;
}

}  // namespace agentserve::engine::testing
