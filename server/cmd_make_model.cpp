// `agentserve make-model`: writes a random-weight Qwen3-MoE checkpoint (config.json, safetensors, tokenizer
// files, weight manifest) from a preset, for tests, demos and benchmarks.
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>

#include "engine/model_generator.h"
#include "engine/weight_manifest.h"
#include "server/commands.h"

namespace agentserve::cli {
namespace {

constexpr uint64_t kProgressFromBytes = 64ull << 20;  // smaller models finish before a bar is worth it

// "writing weights: 42% (280/660 MB)" on stderr: rewritten in place on a terminal, every 25% otherwise.
void print_progress(uint64_t done, uint64_t total, int& last_shown) {
  if (total < kProgressFromBytes) return;
  const bool tty = ::isatty(STDERR_FILENO) != 0;
  const int percent = static_cast<int>(done * 100 / total);
  const int step = tty ? 1 : 25;
  if (percent / step == last_shown / step && done != total) return;
  if (!tty && percent < step) return;  // a log gets 25%, 50%, 75%, 100%
  last_shown = percent;
  std::fprintf(stderr, "%swriting weights: %3d%% (%llu/%llu MB)%s", tty ? "\r" : "", percent,
               static_cast<unsigned long long>(done >> 20), static_cast<unsigned long long>(total >> 20),
               tty && done != total ? "" : "\n");
  std::fflush(stderr);
}

}  // namespace

void add_make_model_command(CLI::App& app, int& exit_code) {
  struct Options {
    std::string preset, config, out, dtype = "bf16", tokenizer_dir = AGENTSERVE_TOKENIZER_DIR;
    uint64_t seed = 0;
    int shards = 1;
    bool no_tokenizer = false, force = false;
  };
  auto options = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("make-model",
                                  "Write a random-weight Qwen3-MoE checkpoint from a preset or a config.json");
  auto* preset_opt = cmd->add_option("--preset", options->preset, "tiny (unit tests) or bench (speed)")
                         ->check(CLI::IsMember(engine::model_preset_names()));
  auto* config_opt = cmd->add_option("--config", options->config,
                                     "A Hugging Face config.json (qwen3_moe or qwen3) giving any other shape");
  preset_opt->excludes(config_opt);
  cmd->add_option("--out", options->out, "Folder to write (created if needed)")->required();
  cmd->add_option("--seed", options->seed, "Seed of the weights: the same seed writes the same bytes");
  cmd->add_option("--dtype", options->dtype, "Weight type: bf16 (default) or f32")
      ->check(CLI::IsMember({"bf16", "f32"}));
  cmd->add_option("--shards", options->shards, "Split the weights into N files with an index.json")
      ->check(CLI::Range(1, 99999));
  cmd->add_option("--tokenizer-dir", options->tokenizer_dir,
                  "Folder with tokenizer.json and tokenizer_config.json to copy (default: the build's)");
  cmd->add_flag("--no-tokenizer", options->no_tokenizer, "Do not copy tokenizer files");
  cmd->add_flag("--force", options->force, "Replace the model files of a folder that already has some");
  cmd->callback([options, &exit_code] {
    if (options->preset.empty() && options->config.empty()) {
      std::fprintf(stderr, "agentserve make-model: give --preset (%s) or --config FILE\n", "tiny, bench");
      exit_code = 2;
      return;
    }
    auto config = options->config.empty() ? engine::model_preset(options->preset)
                                          : engine::load_model_config(options->config);
    if (!config.ok()) {
      std::fprintf(stderr, "agentserve make-model: %s\n", config.status().to_string().c_str());
      exit_code = 2;
      return;
    }
    engine::GeneratorOptions gen;
    gen.config = *config;
    gen.seed = options->seed;
    gen.dtype = options->dtype == "f32" ? engine::DType::kF32 : engine::DType::kBF16;
    gen.shards = options->shards;
    if (!options->no_tokenizer) gen.tokenizer_dir = options->tokenizer_dir;
    gen.overwrite = options->force;
    int last_shown = -100;
    gen.progress = [&last_shown](uint64_t done, uint64_t total) { print_progress(done, total, last_shown); };

    const Status status = engine::generate_model(options->out, gen);
    if (!status.ok()) {
      std::fprintf(stderr, "agentserve make-model: %s\n", status.to_string().c_str());
      exit_code = 1;
      return;
    }
    auto fingerprint = engine::model_fingerprint(options->out);
    std::printf("wrote %s: %s %s, %s, seed %llu, %d weight file(s), fingerprint %s\n", options->out.c_str(),
                options->config.empty() ? "preset" : "config", options->config.empty() ? options->preset.c_str() : options->config.c_str(), options->dtype.c_str(),
                static_cast<unsigned long long>(options->seed), options->shards,
                fingerprint.ok() ? fingerprint->c_str() : "unavailable");
    exit_code = 0;
  });
}

}  // namespace agentserve::cli
