// `agentserve generate` and `agentserve score`: run the engine from the command line.
#include <cstdio>

#include <nlohmann/json.hpp>

#include "base/npy.h"
#include "engine/engine.h"
#include "server/cli_args.h"
#include "server/commands.h"

namespace agentserve::cli {
namespace {

struct EngineArgs {
  std::string model_dir;
  int threads = 0;
  int kv_cache_mb = 1024;
  int max_step_tokens = 512;
  std::string data_dir;
  bool bf16_activations = false;
  int tensor_parallel_size = 1;
  bool expert_parallel = false;
  std::string backend = "cpu";
};

void add_engine_options(CLI::App* cmd, EngineArgs& args) {
  cmd->add_option("--model", args.model_dir, "Hugging Face checkpoint folder")->required();
  cmd->add_option("--threads", args.threads, "Compute threads (0 = all hardware threads)");
  cmd->add_option("--kv-cache-mb", args.kv_cache_mb, "KV cache size in MiB")->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--max-step-tokens", args.max_step_tokens, "Tokens per forward step (prefill chunk)")
      ->check(CLI::Range(1, 1 << 16));
  cmd->add_option("--data-dir", args.data_dir, "RocksDB folder for the KV tiers (prefixes survive restarts)");
  cmd->add_flag("--bf16-activations", args.bf16_activations, "BF16 dot products for batched rows");
  cmd->add_option("--tensor-parallel-size", args.tensor_parallel_size,
                  "Ranks the model is split over (threads on CPU, sharing --threads)")
      ->check(CLI::Range(1, 64));
  cmd->add_flag("--expert-parallel", args.expert_parallel, "Split MoE experts across the ranks");
  cmd->add_option("--backend", args.backend,
                  "What runs the forward: cpu, backend-cpu (the GPU's code path on the CPU) or cuda")
      ->check(CLI::IsMember({"cpu", "backend-cpu", "cuda"}));
}

Result<std::unique_ptr<engine::Engine>> open_engine(const EngineArgs& args) {
  engine::EngineOptions options;
  options.model_dir = args.model_dir;
  options.n_threads = args.threads;
  options.kv_cache_bytes = static_cast<size_t>(args.kv_cache_mb) << 20;
  options.max_step_tokens = args.max_step_tokens;
  options.data_dir = args.data_dir;
  options.bf16_activations = args.bf16_activations;
  options.tensor_parallel_size = args.tensor_parallel_size;
  options.expert_parallel = args.expert_parallel;
  options.backend = args.backend;
  return engine::Engine::open(options);
}

}  // namespace

void add_generate_commands(CLI::App& app, int& exit_code) {
  auto args = std::make_shared<EngineArgs>();
  auto prompt = std::make_shared<std::string>();
  auto ids_text = std::make_shared<std::string>();
  auto sampling = std::make_shared<engine::SamplingParams>();
  auto seed = std::make_shared<int64_t>(-1);
  auto as_json = std::make_shared<bool>(false);
  sampling->temperature = 0.0;
  sampling->max_tokens = 64;

  auto* gen = app.add_subcommand("generate", "Generate tokens from a prompt and report prefill/decode speed");
  add_engine_options(gen, *args);
  auto* prompt_opt =
      gen->add_option("--prompt", *prompt, "Prompt text (tokenized with the model's tokenizer)");
  auto* ids_opt = gen->add_option("--ids", *ids_text, "Prompt token ids, comma separated");
  prompt_opt->excludes(ids_opt);
  gen->add_option("--max-tokens", sampling->max_tokens, "Tokens to generate")->check(CLI::Range(1, 1 << 20));
  gen->add_option("--temperature", sampling->temperature, "0 = greedy");
  gen->add_option("--top-p", sampling->top_p, "Nucleus sampling mass");
  gen->add_option("--top-k", sampling->top_k, "Keep the k most likely tokens (0 = off)");
  gen->add_option("--seed", *seed, "Sampling seed (default: random)");
  gen->add_flag("--ignore-eos", sampling->ignore_eos, "Keep generating past EOS (benchmarks)");
  gen->add_flag("--json", *as_json, "Print one JSON object instead of text");
  gen->callback([=, &exit_code] {
    if (prompt->empty() && ids_text->empty()) {
      exit_code = report_error(Status::invalid_argument("give --prompt or --ids"));
      return;
    }
    auto engine = open_engine(*args);
    if (!engine.ok()) return void(exit_code = report_error(engine.status()));
    std::vector<int32_t> ids;
    if (!ids_text->empty()) {
      auto parsed = parse_id_list(*ids_text);
      if (!parsed.ok()) return void(exit_code = report_error(parsed.status()));
      ids = std::move(*parsed);
    } else {
      ids = (*engine)->tokenizer().encode(*prompt);
    }
    engine::SamplingParams params = *sampling;
    if (*seed >= 0) params.seed = static_cast<uint64_t>(*seed);
    auto result = (*engine)->generate(ids, params);
    if (!result.ok()) return void(exit_code = report_error(result.status()));
    const engine::Usage& u = result->usage;
    const double prefill_tps = u.time_to_first_token_s > 0 ? u.prompt_tokens / u.time_to_first_token_s : 0.0;
    const double decode_s = u.total_time_s - u.time_to_first_token_s;
    const double decode_tps =
        u.completion_tokens > 1 && decode_s > 0 ? (u.completion_tokens - 1) / decode_s : 0.0;
    if (*as_json) {
      nlohmann::json out = {{"ids", result->tokens},
                            {"text", result->text},
                            {"finish_reason", engine::finish_reason_name(result->finish_reason)},
                            {"prompt_tokens", u.prompt_tokens},
                            {"cached_tokens", u.cached_tokens},
                            {"completion_tokens", u.completion_tokens},
                            {"time_to_first_token_s", u.time_to_first_token_s},
                            {"prefill_tokens_per_s", prefill_tps},
                            {"decode_tokens_per_s", decode_tps}};
      std::printf("%s\n", out.dump().c_str());
    } else {
      std::printf("%s\n", result->text.c_str());
      std::fprintf(stderr,
                   "[%d prompt tokens (%d cached), prefill %.1f tok/s | %d generated, decode %.1f tok/s | "
                   "finish: %s]\n",
                   u.prompt_tokens, u.cached_tokens, prefill_tps, u.completion_tokens, decode_tps,
                   engine::finish_reason_name(result->finish_reason));
    }
    exit_code = 0;
  });

  auto score_args = std::make_shared<EngineArgs>();
  auto score_ids = std::make_shared<std::string>();
  auto logits_out = std::make_shared<std::string>();
  auto* score =
      app.add_subcommand("score", "Write the float32 logits of every position as a NumPy .npy file");
  add_engine_options(score, *score_args);
  score->add_option("--ids", *score_ids, "Token ids, comma separated")->required();
  score->add_option("--logits-out", *logits_out, "Output .npy file, shape [n, vocab]")->required();
  score->callback([=, &exit_code] {
    auto ids = parse_id_list(*score_ids);
    if (!ids.ok()) return void(exit_code = report_error(ids.status()));
    auto engine = open_engine(*score_args);
    if (!engine.ok()) return void(exit_code = report_error(engine.status()));
    auto logits = (*engine)->score(*ids);
    if (!logits.ok()) return void(exit_code = report_error(logits.status()));
    const int64_t shape[2] = {static_cast<int64_t>(ids->size()), (*engine)->config().vocab_size};
    Status written = write_npy_f32(*logits_out, *logits, shape);
    if (!written.ok()) return void(exit_code = report_error(written));
    std::fprintf(stderr, "wrote %s [%lld, %lld]\n", logits_out->c_str(), static_cast<long long>(shape[0]),
                 static_cast<long long>(shape[1]));
    exit_code = 0;
  });
}

}  // namespace agentserve::cli
