// Agent turns benchmark: a 20-turn agent conversation through the real engine and the turn loop, each turn a
// new user message (and, when the model calls one, server tool steps). Per step it prints the prompt tokens,
// the ids kept from the session's previous sequence, the tokens the prefix cache served and the tokens
// prefilled, then the fraction of prompt tokens reused over the conversation. Issue 4's goal: each turn
// prefills only its new tokens. With a random-weight model the answers are gibberish; the token accounting
// is what is measured.
//
// Usage: agent_turns_bench [--model DIR] [--turns 20] [--max-tokens 24] [--threads N] [--no-thinking]
// DIR defaults to models/demo-tiny or models/tiny (agentserve make-model --preset tiny --out models/tiny).
#include <cstdio>
#include <string>
#include <thread>

#include "agent/turn_loop.h"
#include "bench/bench_engine.h"
#include "engine/engine.h"

namespace {

using namespace agentserve;
using agent::Message;
using agent::Role;

// Keeps what the transcript would: the committed messages and the outcome.
class CollectingSink final : public agent::TurnSink {
 public:
  void on_text_delta(std::string_view) override {}
  void on_reasoning_delta(std::string_view) override {}
  void on_tool_call(const agent::TurnToolCall&) override {}
  void on_requires_action(std::span<const std::string>, std::chrono::steady_clock::time_point) override {}
  void on_tool_started(const agent::TurnToolCall&) override {}
  void on_tool_completed(const agent::TurnToolCall&, const tools::ToolResult&) override {}
  void on_tool_call_error(const Status&, std::string_view) override {}
  void on_step_committed(const agent::StepCommit& commit) override {
    committed.insert(committed.end(), commit.messages.begin(), commit.messages.end());
  }
  void on_done(const agent::TurnOutcome& done) override { outcome = done; }

  std::vector<Message> committed;
  std::optional<agent::TurnOutcome> outcome;
};

tools::ToolSpec clock_tool() {
  tools::ToolSpec spec;
  spec.name = "current_time";
  spec.description = "The current UTC time.";
  spec.parameters = nlohmann::json::parse(R"({"type": "object", "properties": {}})");
  spec.execution = tools::ToolExecution::kServer;
  spec.run = [](const nlohmann::json&, const tools::ToolContext&) {
    return tools::ToolResult{"2026-11-29T12:00:00Z", false};
  };
  return spec;
}

struct Args {
  std::string model;
  int turns = 20;
  int max_tokens = 24;
  int threads = 0;
  bool thinking = true;
};

}  // namespace

int main(int argc, char** argv) {
  Args args;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--model" && i + 1 < argc) {
      args.model = argv[++i];
    } else if (a == "--turns" && i + 1 < argc) {
      args.turns = std::stoi(argv[++i]);
    } else if (a == "--max-tokens" && i + 1 < argc) {
      args.max_tokens = std::stoi(argv[++i]);
    } else if (a == "--threads" && i + 1 < argc) {
      args.threads = std::stoi(argv[++i]);
    } else if (a == "--no-thinking") {
      args.thinking = false;
    } else {
      std::fprintf(stderr,
                   "usage: agent_turns_bench [--model DIR] [--turns 20] [--max-tokens 24] [--threads N] "
                   "[--no-thinking]\n");
      return 2;
    }
  }
  args.model = bench::find_model_dir("agent_turns_bench", args.model);
  if (args.model.empty()) return 2;
  const std::unique_ptr<engine::Engine> opened =
      bench::open_engine("agent_turns_bench", args.model, args.threads);
  if (!opened) return 1;
  engine::Engine& engine = *opened;
  agent::EngineTurnGenerator generator(engine);
  bench::MainThreadStrand executor;
  std::vector<std::thread> tool_threads;

  agent::TurnLoopOptions options;
  options.tools = {clock_tool()};
  options.enable_thinking = args.thinking;
  options.max_steps = 4;
  options.sampling.temperature = 0.0;
  options.sampling.max_tokens = args.max_tokens;
  options.run_tool = [&tool_threads](const tools::ToolSpec& spec, const agent::Json& arguments,
                                     const tools::ToolContext& context, tools::ToolDone done) {
    tool_threads.emplace_back([spec, arguments = nlohmann::json(arguments), context, done = std::move(done)] {
      done(spec.run(arguments, context));
    });
  };

  std::printf("agent_turns_bench: %s, %d turns, max_tokens %d, thinking %s, %d engine threads, block %d\n",
              args.model.c_str(), args.turns, args.max_tokens, args.thinking ? "on" : "off",
              engine.n_threads(), 16);
  std::printf("%5s %4s %7s %7s %7s %7s %7s %7s\n", "turn", "step", "prompt", "reused", "new", "cached",
              "prefill", "output");
  std::vector<Message> messages = {
      {Role::kSystem, "You are a helpful agent. Use tools when they help.", std::nullopt, {}}};
  std::vector<int32_t> session_ids;
  long total_prompt = 0, total_cached = 0, total_prefill = 0, total_new = 0;
  long turns_after_first_prompt = 0, turns_after_first_prefill = 0, turns_after_first_new = 0;
  for (int turn = 1; turn <= args.turns; ++turn) {
    messages.push_back({Role::kUser,
                        "Turn " + std::to_string(turn) + ": what time is it, and what should I do next?",
                        std::nullopt,
                        {}});
    CollectingSink sink;
    auto loop = agent::TurnLoop::create(generator, sink, executor.executor(), options, messages, session_ids);
    if (Status status = loop->start(); !status.ok()) {
      std::fprintf(stderr, "turn %d: %s\n", turn, status.to_string().c_str());
      return 1;
    }
    executor.run_until([&] { return sink.outcome.has_value(); });
    const agent::TurnOutcome& outcome = *sink.outcome;
    for (std::size_t s = 0; s < outcome.step_usage.size(); ++s) {
      const agent::StepUsage& u = outcome.step_usage[s];
      const int fresh = u.prompt_tokens - u.reused_tokens;
      std::printf("%5d %4zu %7d %7d %7d %7d %7d %7d\n", turn, s + 1, u.prompt_tokens, u.reused_tokens, fresh,
                  u.cached_tokens, u.recomputed_tokens, u.completion_tokens);
      total_prompt += u.prompt_tokens;
      total_cached += u.cached_tokens;
      total_prefill += u.recomputed_tokens;
      total_new += fresh;
      if (turn > 1) {
        turns_after_first_prompt += u.prompt_tokens;
        turns_after_first_prefill += u.recomputed_tokens;
        turns_after_first_new += fresh;
      }
    }
    messages.insert(messages.end(), sink.committed.begin(), sink.committed.end());
    session_ids = outcome.token_ids;
  }
  for (std::thread& t : tool_threads) t.join();
  std::printf("total: prompt %ld, cached %ld, prefilled %ld, new (not in the previous sequence) %ld\n",
              total_prompt, total_cached, total_prefill, total_new);
  std::printf(
      "prompt tokens served from the prefix cache: %.1f%%\n",
      total_prompt ? 100.0 * static_cast<double>(total_cached) / static_cast<double>(total_prompt) : 0.0);
  std::printf(
      "turns 2..%d: prefilled %ld of %ld prompt tokens (%.1f%%); new tokens %ld; prefilled / new = %.2f "
      "(1.00 = only the new tokens; above it, partial blocks and rewritten history)\n",
      args.turns, turns_after_first_prefill, turns_after_first_prompt,
      turns_after_first_prompt ? 100.0 * static_cast<double>(turns_after_first_prefill) /
                                     static_cast<double>(turns_after_first_prompt)
                               : 0.0,
      turns_after_first_new,
      turns_after_first_new
          ? static_cast<double>(turns_after_first_prefill) / static_cast<double>(turns_after_first_new)
          : 0.0);
  return 0;
}
