// SamplingParams: how one request wants its tokens chosen and when generation ends. A plain options
// struct with documented defaults (the server parses a request's `sampling` object into it in one place);
// validate() turns every out-of-range value a client can send into an InvalidArgument with the field's
// name, so nothing downstream has to re-check. It must never hold per-sequence state (that is Sampler).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "base/status.h"

namespace agentserve::engine {

struct SamplingParams {
  static constexpr int kMaxLogprobs = 20;  // OpenAI's top_logprobs limit
  static constexpr size_t kMaxStopStrings = 16;
  static constexpr size_t kMaxStopStringBytes = 256;
  static constexpr double kGreedyBelow = 1e-5;  // vLLM's _SAMPLING_EPS: temperatures under it are greedy

  // Softmax temperature; 0 (or anything below kGreedyBelow) is greedy: argmax, ties to the lowest id.
  double temperature = 1.0;
  // Keep only the k most likely tokens (exactly k; equal logits keep the lower ids). 0 = off. A k past
  // the vocabulary is the whole vocabulary.
  int top_k = 0;
  // Keep the smallest set of most likely tokens whose probability mass is >= top_p. 1 = off. In (0, 1].
  double top_p = 1.0;
  // Drop tokens whose probability is below min_p times the most likely token's. 0 = off. In [0, 1].
  double min_p = 0.0;
  // HF/vLLM repetition penalty over prompt and generated tokens: a seen token's logit is divided by it
  // when positive and multiplied by it otherwise. 1 = off; > 0.
  double repetition_penalty = 1.0;
  // OpenAI penalties over generated tokens only: logit -= presence * [count > 0] + frequency * count.
  // 0 = off; each in [-2, 2].
  double presence_penalty = 0.0;
  double frequency_penalty = 0.0;
  // The PRNG seed; without one the sampler draws a random seed (Rng::random_seed).
  std::optional<uint64_t> seed;
  // Most tokens to generate; >= 1. The engine also stops at the context limit.
  int max_tokens = 1024;
  // Token ids that end generation (the token is generated, then generation stops). These apply even
  // with ignore_eos.
  std::vector<int32_t> stop_token_ids;
  // Strings that end generation; the returned text stops before the first one (OpenAI semantics).
  // At most kMaxStopStrings, each 1..kMaxStopStringBytes bytes.
  std::vector<std::string> stop;
  // vLLM semantics: nullopt = no logprobs; 0 = the sampled token's logprob; n = also the n most likely
  // tokens' logprobs. 0..kMaxLogprobs. Logprobs are of the raw model output (see Sampler).
  std::optional<int> logprobs;
  // Keep generating past the model's EOS tokens (for benchmarks); stop_token_ids still apply.
  bool ignore_eos = false;

  bool greedy() const { return temperature < kGreedyBelow; }

  // OK, or InvalidArgument naming the first bad field and its allowed range.
  Status validate(int vocab_size) const;
};

// Whether generating `token` ends the sequence: it is one of params.stop_token_ids, or one of the model's
// EOS ids (Qwen3: 151645 and 151643) while ignore_eos is off.
bool is_stop_token(const SamplingParams& params, int32_t token, std::span<const int32_t> eos_token_ids);

}  // namespace agentserve::engine
