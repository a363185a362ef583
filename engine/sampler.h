// Sampler: turns one sequence's next-token logits into a token id, once per decode step. It owns the
// sequence's PRNG and the token counts the penalties need, plus scratch buffers sized once at creation, so
// a step allocates nothing (bar a rare wide top-p nucleus) and never sorts the whole vocabulary: top-k and
// top-p use partial selection, a wide nucleus is found through log-weight buckets. It must never sample a
// token the constraint mask forbids, and must never crash on bad logits.
//
// Order of operations (Hugging Face's processor order; vLLM V1 applies min-p before top-k/top-p, which
// differs only in the mass top-p renormalises over):
//   1. logprobs, when asked, are taken from the raw logits as the model produced them (vLLM's default
//      "raw_logprobs": before penalties, mask and temperature);
//   2. penalties: repetition (prompt + generated), then frequency and presence (generated only);
//   3. the constraint mask (bit set = allowed; masked logits become -inf); NaN logits count as masked;
//   4. greedy (temperature < 1e-5): argmax, ties to the lowest id. Otherwise
//   5. temperature, top-k, top-p (mass relative to what top-k kept), min-p, and one draw from what is left.
//
// One uniform draw per non-greedy sample() picks the token by inverse CDF over the kept tokens taken in
// increasing id order: the first id whose running weight exceeds u * total. Greedy calls draw nothing, so
// a seeded sequence is reproducible token for token.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "base/status.h"
#include "engine/rng.h"
#include "engine/sampling_params.h"

namespace agentserve::engine {

struct TokenLogprob {
  int32_t token = -1;
  float logprob = 0.0f;
};

struct SampleResult {
  int32_t token = -1;
  // Raw logprob of `token`; set when params.logprobs is set.
  std::optional<float> logprob;
  // The params.logprobs most likely tokens by raw logit, most likely first (ties: lower id first).
  std::array<TokenLogprob, SamplingParams::kMaxLogprobs> top{};
  int n_top = 0;

  std::span<const TokenLogprob> top_logprobs() const { return {top.data(), static_cast<size_t>(n_top)}; }
};

// A candidate token during selection: its (penalised, masked) logit, its unnormalised probability and id.
struct SampleCandidate {
  float logit;
  float weight;
  int32_t id;
};

class Sampler {
 public:
  // Validates params and the prompt ids (repetition penalty counts the prompt). Memory: 4 bytes per
  // vocabulary entry each for penalty counts (a penalty on) and weights (not greedy, or logprobs): 0.6 MB
  // apiece for Qwen3.
  static Result<Sampler> create(const SamplingParams& params, int vocab_size,
                                std::span<const int32_t> prompt_tokens = {});

  // Picks the next token. `logits` must hold vocab_size values and is used as scratch: on return it holds
  // the penalised, masked logits (NaN replaced by -inf). `allowed` is empty (no constraint) or a bitmask of
  // (vocab_size + 31) / 32 words, bit (id % 32) of word id / 32 set = allowed. Errors: wrong sizes
  // (InvalidArgument), no token with a finite logit left after the mask (FailedPrecondition). sample() does
  // not record the token: call accept() for every token appended to the sequence, sampled or forced.
  Result<SampleResult> sample(std::span<float> logits, std::span<const uint32_t> allowed = {});

  // Records a generated token for the penalties.
  Status accept(int32_t token);

  const SamplingParams& params() const { return params_; }
  int vocab_size() const { return vocab_; }
  // The seed in use: params.seed, or the random one drawn for a request without a seed (log it to replay).
  uint64_t seed() const { return seed_; }

 private:
  Sampler(const SamplingParams& params, int vocab_size, uint64_t seed);

  bool penalties_on() const;
  void apply_penalties(std::span<float> logits);
  int32_t draw(std::span<const float> logits, float max_logit);
  int32_t draw_top_k(std::span<const float> logits, float max_logit, float inv_t);
  int32_t draw_candidates(size_t keep);
  SampleCandidate nucleus_end(std::span<const float> logits, float max_logit, float inv_t, double needed);
  struct LogSoftmax;  // sampler.cpp
  LogSoftmax raw_logprobs(std::span<const float> logits, SampleResult& out);

  SamplingParams params_;
  int vocab_;
  uint64_t seed_;
  Rng rng_;
  // Penalty state: per token, bit 31 = seen in the prompt, low 31 bits = times generated; `seen_` lists
  // the tokens with a non-zero entry so a step touches only those.
  std::vector<uint32_t> counts_;
  std::vector<int32_t> seen_;
  std::vector<float> seen_raw_;  // with logprobs: seen_'s raw logits this step, before the penalties
  // Scratch, sized at creation; candidates_ grows only when top-p's nucleus is wider than its first guess.
  std::vector<float> weights_;
  std::vector<double> block_sums_;
  std::vector<SampleCandidate> candidates_;
  std::vector<double> bin_mass_;
};

// The k largest logits (ties: lower id first), best first, into `out` (weights left 0); NaN counts as
// -inf. Cost O(n) plus O(k log k) for small k; falls back to nth_element when k is a large share of n.
void select_top_k(std::span<const float> logits, int k, std::vector<SampleCandidate>& out);

// exp(x) for x <= 0 to about 2 ulp, vectorisable; 0 for x below -87 and for NaN, exactly 1 at 0.
float sampler_exp(float x);

}  // namespace agentserve::engine
