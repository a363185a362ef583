// Token-mask cost per decode step for JSON-schema constrained tool calls over Qwen3's 151,936-id vocabulary,
// single thread: for each of the 10 typical tool schemas (tests/agent/schema_instances.h), the time to compile
// the schema into a tool-call constraint, and the time of fill_allowed() (trie walk or cached mask, added
// tokens and EOS) at every token of json.dumps-style calls, tokenized by the real tokenizer and accepted one
// by one. The first call of a schema runs with an empty mask cache ("cold"); the next ones share the
// compiled constraint the way concurrent requests of one agent do ("warm"). Prints median and p99 in
// microseconds against the 50 us goal, plus the plain reference (every token tried on the matcher) once.
// At each cache miss of a first call (a state's first visit) the old path, the plain trie walk over every
// stack (MaskBuilder::fill_by_walk), is timed on the same state too, so the string-body shortcut is
// compared with what it replaced in the same run. Last, deep values of two recursive schemas
// (tests/agent/recursive_schemas.h) go through a fresh constraint: time per step, live parse stacks and the
// frames a mask's walk steps, or the step where the parse budget (agent/token_mask.h) ends it.
//
//   token_mask_bench [--tokenizer DIR] [--calls N]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "agent/tool_call_constraint.h"
#include "tests/agent/recursive_schemas.h"
#include "tests/agent/schema_instances.h"

namespace {

using namespace agentserve;
using Clock = std::chrono::steady_clock;

double us_since(Clock::time_point t) {
  return std::chrono::duration<double, std::micro>(Clock::now() - t).count();
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}

}  // namespace

int main(int argc, char** argv) {
  const char* home = std::getenv("HOME");
  std::string dir = std::string(home ? home : ".") + "/.cache/agentserve/tokenizer-qwen3-3.7.2";
  int calls = 20;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--tokenizer") == 0) dir = argv[i + 1];
    else if (std::strcmp(argv[i], "--calls") == 0) calls = std::max(2, std::atoi(argv[i + 1]));
  }
  auto tokenizer = engine::Tokenizer::load(dir);
  if (!tokenizer.ok()) {
    std::fprintf(stderr, "tokenizer: %s\n", tokenizer.status().to_string().c_str());
    return 1;
  }
  std::printf("machine: %u hardware threads; tokenizer %s\n", std::thread::hardware_concurrency(), dir.c_str());
  auto t0 = Clock::now();
  auto index = std::make_shared<const agent::VocabularyIndex>(*tokenizer, 151936);
  std::printf("vocabulary index: %zu trie nodes, built in %.1f ms\n", index->nodes().size(), us_since(t0) / 1000);
  const int32_t im_end = *tokenizer->token_to_id("<|im_end|>");

  const auto schemas = agent::testing::typical_tool_schemas();
  std::vector<double> cold, warm, compile_us, miss_fast, miss_walk, cold_walk;
  std::vector<uint32_t> mask(index->mask_words());
  std::mt19937 rng(1);
  double reference_us = 0;
  for (size_t s = 0; s < schemas.size(); ++s) {
    const std::vector<agent::ToolSchema> tools = {{"tool_" + std::to_string(s), schemas[s]}};
    t0 = Clock::now();
    auto compiled = agent::CompiledConstraint::for_tool_calls(index, tools, {}, {im_end});
    compile_us.push_back(us_since(t0));
    if (!compiled.ok()) {
      std::fprintf(stderr, "schema %zu: %s\n", s, compiled.status().to_string().c_str());
      return 1;
    }
    for (int c = 0; c < calls; ++c) {
      // Arguments that spell "</tool_call>" tokenize to the added token, which the constraint refuses inside a
      // string (a model must write it in pieces there): draw again.
      std::string args;
      do {
        args = agent::testing::dumps(agent::testing::random_instance(schemas[s], schemas[s], rng), schemas[s],
                                     schemas[s]);
      } while (args.find("</tool_call>") != std::string::npos);
      const std::string text =
          "<tool_call>\n{\"name\": \"" + tools[0].name + "\", \"arguments\": " + args + "}\n</tool_call>";
      auto constraint = (*compiled)->start();
      // A second builder over the same index sees the same states first: its misses time the shortcut and
      // the plain walk on one state, apart from fill_allowed's added-token checks.
      agent::MaskBuilder probe(index);
      const auto& matcher = static_cast<agent::GrammarConstraint*>(constraint.get())->matcher();
      for (int32_t id : tokenizer->encode(text)) {
        double fast_us = 0, walk_us = 0;
        if (c == 0) {
          t0 = Clock::now();
          if (!probe.fill_by_walk(matcher, mask).ok()) return 1;
          walk_us = us_since(t0);
          const size_t misses = probe.cache_misses();
          t0 = Clock::now();
          if (!probe.fill(matcher, mask).ok()) return 1;
          fast_us = us_since(t0);
          if (probe.cache_misses() > misses) {
            miss_fast.push_back(fast_us);
            miss_walk.push_back(walk_us);
          } else {
            walk_us = 0;
          }
        }
        t0 = Clock::now();
        constraint->fill_allowed(mask);
        (c == 0 ? cold : warm).push_back(us_since(t0));
        if (c == 0) cold_walk.push_back(walk_us > 0 ? cold.back() - fast_us + walk_us : cold.back());
        if (!constraint->accept(id).ok()) {
          std::fprintf(stderr, "schema %zu: token %d refused in %s\n", s, id, text.c_str());
          return 1;
        }
      }
      if (s == 0 && c == 0) {
        auto* grammar_constraint = static_cast<agent::GrammarConstraint*>(constraint.get());
        t0 = Clock::now();
        agent::MaskBuilder::fill_reference(*index, grammar_constraint->matcher(), mask);
        reference_us = us_since(t0);
      }
    }
  }
  std::vector<double> all = cold;
  all.insert(all.end(), warm.begin(), warm.end());
  std::printf("schema -> tool-call constraint compile, 10 schemas: total %.1f us, median %.1f us, max %.1f us\n",
              [&] { double t = 0; for (double x : compile_us) t += x; return t; }(), percentile(compile_us, 0.5),
              percentile(compile_us, 1.0));
  std::printf("mask per step, cold (first call of each schema, %zu steps): median %.1f us, p99 %.1f us, max %.1f us\n",
              cold.size(), percentile(cold, 0.5), percentile(cold, 0.99), percentile(cold, 1.0));
  std::printf("  same steps, old path (plain trie walk at the misses): median %.1f us, p99 %.1f us, max %.1f us\n",
              percentile(cold_walk, 0.5), percentile(cold_walk, 0.99), percentile(cold_walk, 1.0));
  std::printf("  MaskBuilder::fill at its %zu cache misses (first visits of a state): shortcut median %.1f us, p99 %.1f us, max %.1f us; "
              "plain walk median %.1f us, p99 %.1f us, max %.1f us\n",
              miss_fast.size(), percentile(miss_fast, 0.5), percentile(miss_fast, 0.99), percentile(miss_fast, 1.0),
              percentile(miss_walk, 0.5), percentile(miss_walk, 0.99), percentile(miss_walk, 1.0));
  std::printf("mask per step, warm (%d more calls each, %zu steps): median %.1f us, p99 %.1f us\n", calls - 1,
              warm.size(), percentile(warm, 0.5), percentile(warm, 0.99));
  std::printf("mask per step, all: median %.1f us (goal 50 us: %.2fx), p99 %.1f us\n", percentile(all, 0.5),
              percentile(all, 0.5) / 50.0, percentile(all, 0.99));
  std::printf("plain reference (every token tried on the matcher), one step: %.0f us\n", reference_us);

  // Recursive schemas: a deep valid value, accepted token by token, timing fill_allowed at each step (a fresh
  // constraint, so every state is a cache miss the first time).
  struct Recursive {
    std::string name;
    nlohmann::ordered_json schema;
    std::string text;
  };
  std::vector<Recursive> recursive;
  for (int depth : {24, 40})
    recursive.push_back({"tree (string | array | {kids}), depth " + std::to_string(depth),
                         agent::testing::tree_schema(), agent::testing::deep_tree_text(depth)});
  for (int depth : {6, 9, 12, 15})
    recursive.push_back({"3-way (two object branches share keys), depth " + std::to_string(depth),
                         agent::testing::three_way_schema(), agent::testing::deep_three_way_text(depth)});
  for (const Recursive& r : recursive) {
    auto compiled = agent::CompiledConstraint::for_json_schema(index, r.schema, {im_end});
    if (!compiled.ok()) {
      std::printf("%s: refused at compile: %s\n", r.name.c_str(), compiled.status().to_string().c_str());
      continue;
    }
    auto constraint = (*compiled)->start();
    const auto& matcher = static_cast<agent::GrammarConstraint*>(constraint.get())->matcher();
    std::vector<double> steps;
    size_t max_stacks = 0, max_walk = 0;
    std::string outcome = "whole value accepted";
    const auto ids = tokenizer->encode(r.text);
    const auto start = Clock::now();
    for (int32_t id : ids) {
      t0 = Clock::now();
      constraint->fill_allowed(mask);
      steps.push_back(us_since(t0));
      max_stacks = std::max(max_stacks, matcher.state().ends.size());
      max_walk = std::max(max_walk, (*compiled)->masks().last_walk_frames());
      if (Status accepted = constraint->accept(id); !accepted.ok()) {
        outcome = "stopped: " + accepted.to_string();
        break;
      }
      if (us_since(start) > 60e6) {
        outcome = "stopped after 60 s";
        break;
      }
    }
    std::printf("%s: %zu of %zu tokens, mask per step median %.1f us, p99 %.1f us, max %.1f us; "
                "at most %zu live stacks, %zu frames stepped by one mask's walk; %s\n",
                r.name.c_str(), steps.size(), ids.size(), percentile(steps, 0.5), percentile(steps, 0.99),
                percentile(steps, 1.0), max_stacks, max_walk, outcome.c_str());
  }
  return 0;
}
