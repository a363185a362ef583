// Model generator: writes a random-weight Qwen3 checkpoint in Hugging Face layout (config.json,
// model.safetensors or shards + index, tokenizer files, weights.sha256.json) for tests, demos and
// benchmarks. Weights come from our own PRNG (xoshiro256**, one stream per tensor seeded from the seed and
// the tensor's name), so a seed gives the same bytes on every machine and standard library, and sharded
// and single-file checkpoints hold identical tensors. Scales keep a forward pass lively (all uniform): the
// embedding with std 1, matrices with std 1/sqrt(in_dim), norms 1 +/- 0.1, q/k norms 1 +/- 0.05, router
// rows with std 2/sqrt(hidden) times a per-expert factor from 1/4 to 3, so routing is peaked and expert
// load uneven. The generator never overwrites a folder that already holds a
// model unless asked to.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "engine/model_config.h"
#include "engine/model_weights.h"
#include "engine/safetensors.h"

namespace agentserve::engine {

// "tiny": hidden 64, 2 layers, 4/2 heads of 16, 8 experts top-2 of width 32 (about 40 MB in BF16, nearly
// all embedding and lm_head). "bench": hidden 1024, 8 layers, 16/4 heads of 64, 64 experts top-8 of width
// 256. Both: Qwen3's vocabulary (151936), YaRN factor 4 over 32768 (131072 positions), rope_theta 1e6.
Result<ModelConfig> model_preset(std::string_view name);
std::vector<std::string> model_preset_names();

struct GeneratorOptions {
  ModelConfig config;
  uint64_t seed = 0;
  DType dtype = DType::kBF16;           // kBF16 or kF32
  int shards = 1;                       // > 1: model-0000i-of-0000N.safetensors + index
  std::filesystem::path tokenizer_dir;  // copies tokenizer.json + tokenizer_config.json; empty: none
  bool write_manifest = true;
  bool overwrite = false;  // replace the model files of a folder that has some
  // Bytes of tensor data written so far, and the total.
  std::function<void(uint64_t done, uint64_t total)> progress;
};

Status generate_model(const std::filesystem::path& out_dir, const GeneratorOptions& options);

// The values generate_model writes for one tensor, in row-major order, as float before any BF16 rounding.
// Exposed so tests can check determinism and scales without writing files.
class TensorValueStream {
 public:
  TensorValueStream(uint64_t seed, const ExpectedTensor& tensor);
  // The next out.size() values of the tensor.
  void next(std::span<float> out);

 private:
  uint64_t state_[4];
  uint64_t row_seed_;
  TensorRole role_;
  int64_t cols_;
  int64_t position_ = 0;
  float center_ = 0.0f;  // 1 for norm weights, 0 for matrices
  float half_width_ = 0.0f;
};

}  // namespace agentserve::engine
