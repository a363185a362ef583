#include "engine/sampler.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

namespace agentserve::engine {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kPosInf = std::numeric_limits<float>::infinity();
constexpr uint32_t kPromptBit = 1u << 31;
constexpr uint32_t kCountMask = kPromptBit - 1;
// Weights are summed per block of kBlock tokens so a draw walks ~600 block sums, then one block, instead
// of a 151,936-long dependent chain of additions.
constexpr size_t kBlock = 256;
// select_top_k skips blocks of this many logits whose max cannot enter the top k.
constexpr size_t kScanBlock = 128;
// Top-p without top-k first looks at this many of the most likely tokens; peaked LLM distributions hold
// their nucleus there. A wider nucleus is found through kBins log-weight buckets instead.
constexpr int kFirstTopPGuess = 128;
constexpr size_t kBins = 2048;

float nan_to_neg_inf(float v) {
  return v == v ? v : kNegInf;
}

bool better(const SampleCandidate& a, const SampleCandidate& b) {
  return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

// Cephes expf for x <= 0: x = n ln2 + r with |r| <= ln2 / 2, exp(r) by a degree-6 polynomial, 2^n built in
// the exponent bits. Branch-free (selects only) so loops over it vectorise.
inline float exp_nonpositive(float x) {
  const bool underflow = !(x >= -87.0f);  // NaN lands here too
  x = underflow ? 0.0f : x;
  const float fn = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest integer
  float r = x - fn * 0.693359375f;
  r = r + fn * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const float scale = std::bit_cast<float>(static_cast<uint32_t>(static_cast<int32_t>(fn) + 127) << 23);
  return underflow ? 0.0f : y * scale;
}

// The reductions (max, argmax, sums) use GCC/Clang vector extensions (16 floats a step, lowered to the
// target's registers): GCC does not vectorise float reductions on its own without -ffast-math. Vector values
// stay inside these functions; passing them across calls would tie the ABI to the target.
using F32x16 = float __attribute__((vector_size(64)));
using I32x16 = int32_t __attribute__((vector_size(64)));

struct MaxAt {
  float value;
  int32_t index;  // lowest index holding value
};

// Replaces NaN by -inf (NaN counts as masked, and comparisons stay a strict order) and finds the max and
// its lowest index in the same pass.
MaxAt sanitize_and_argmax(std::span<float> x) {
  const size_t n = x.size();
  const F32x16 neg_inf = F32x16{} + kNegInf;
  F32x16 best = neg_inf;
  I32x16 best_at = {}, at;
  for (int j = 0; j < 16; ++j) at[j] = j;
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    F32x16 v;
    std::memcpy(&v, &x[i], sizeof v);
    v = v == v ? v : neg_inf;
    std::memcpy(&x[i], &v, sizeof v);
    const I32x16 greater = v > best;  // strict: each lane keeps its first maximum
    best = greater ? v : best;
    best_at = greater ? at : best_at;
    at += 16;
  }
  MaxAt r{kNegInf, 0};
  for (int j = 0; j < 16; ++j) {
    if (best[j] > r.value || (best[j] == r.value && best_at[j] < r.index)) r = {best[j], best_at[j]};
  }
  for (; i < n; ++i) {
    if (x[i] != x[i]) x[i] = kNegInf;
    if (x[i] > r.value) r = {x[i], static_cast<int32_t>(i)};
  }
  return r;
}

// The largest of x[0, kScanBlock), NaN ignored.
float block_max(const float* x) {
  F32x16 m = F32x16{} + kNegInf, v;
  for (size_t k = 0; k < kScanBlock; k += 16) {
    std::memcpy(&v, x + k, sizeof v);
    m = v > m ? v : m;
  }
  float r = m[0];
  for (int j = 1; j < 16; ++j) r = m[j] > r ? m[j] : r;
  return r;
}

float max_ignoring_nan(std::span<const float> x) {
  F32x16 m = F32x16{} + kNegInf, v;
  size_t i = 0;
  for (; i + 16 <= x.size(); i += 16) {
    std::memcpy(&v, &x[i], sizeof v);
    m = v > m ? v : m;
  }
  float r = kNegInf;
  for (int j = 0; j < 16; ++j) r = m[j] > r ? m[j] : r;
  for (; i < x.size(); ++i) r = x[i] > r ? x[i] : r;
  return r;
}

// w[i] = exp((x[i] - m) * inv_t), or 0 where that is below min_w.
void fill_weights(std::span<const float> x, float m, float inv_t, float min_w, std::span<float> w) {
  for (size_t i = 0; i < x.size(); ++i) {
    const float e = exp_nonpositive((x[i] - m) * inv_t);
    w[i] = e >= min_w ? e : 0.0f;
  }
}

// Sums w per block of kBlock into block_sums; returns the total.
double sum_blocks(std::span<const float> w, std::span<double> block_sums) {
  const size_t n = w.size();
  double total = 0;
  for (size_t b = 0; b * kBlock < n; ++b) {
    const size_t end = std::min(n, (b + 1) * kBlock);
    F32x16 lanes = {}, v;
    size_t i = b * kBlock;
    for (; i + 16 <= end; i += 16) {
      std::memcpy(&v, &w[i], sizeof v);
      lanes += v;
    }
    double s = 0;
    for (int j = 0; j < 16; ++j) s += lanes[j];
    for (; i < end; ++i) s += w[i];
    block_sums[b] = s;
    total += s;
  }
  return total;
}

// Zeroes the weight of every token ranked after `last` (the order is logit descending, then id ascending)
// and of every token below min_w.
void keep_through(std::span<const float> x, const SampleCandidate& last, float min_w, std::span<float> w) {
  for (size_t i = 0; i < x.size(); ++i) {
    const bool ranked_in = x[i] > last.logit || (x[i] == last.logit && static_cast<int32_t>(i) <= last.id);
    w[i] = ranked_in && w[i] >= min_w ? w[i] : 0.0f;
  }
}

// Length of the shortest prefix of `sorted` whose weights reach `needed`; 0 if all of them fall short.
size_t prefix_reaching(std::span<const SampleCandidate> sorted, double needed) {
  double cum = 0;
  for (size_t i = 0; i < sorted.size(); ++i) {
    cum += sorted[i].weight;
    if (cum >= needed) return i + 1;
  }
  return 0;
}

// Sets the logits of tokens whose bit is clear to -inf; allowed holds (logits.size() + 31) / 32 words.
void apply_mask(std::span<float> logits, std::span<const uint32_t> allowed) {
  const size_t n = logits.size();
  for (size_t w = 0; w < allowed.size(); ++w) {
    const uint32_t bits = allowed[w];
    if (bits == ~0u) continue;
    const size_t end = std::min(n, w * 32 + 32);
    if (bits == 0) {
      std::fill(logits.begin() + w * 32, logits.begin() + end, kNegInf);
      continue;
    }
    for (size_t i = w * 32; i < end; ++i) {
      if (!((bits >> (i - w * 32)) & 1u)) logits[i] = kNegInf;
    }
  }
}

// Inverse CDF over w in id order: the first id whose running sum exceeds target. Rounding can leave the
// target past the last sum; then the last token with a non-zero weight is the answer.
int32_t pick_full(std::span<const float> w, std::span<const double> block_sums, double target) {
  double cum = 0;
  size_t last_block = 0;
  for (size_t b = 0; b < block_sums.size(); ++b) {
    if (block_sums[b] <= 0) continue;
    last_block = b;
    if (cum + block_sums[b] <= target) {
      cum += block_sums[b];
      continue;
    }
    break;
  }
  const size_t begin = last_block * kBlock;
  const size_t end = std::min(w.size(), begin + kBlock);
  int32_t last_positive = -1;
  for (size_t i = begin; i < end; ++i) {
    if (w[i] <= 0) continue;
    last_positive = static_cast<int32_t>(i);
    cum += w[i];
    if (cum > target) break;
  }
  return last_positive;
}

}  // namespace

float sampler_exp(float x) {
  return exp_nonpositive(x);
}

void select_top_k(std::span<const float> logits, int k, std::vector<SampleCandidate>& out) {
  const size_t n = logits.size();
  const size_t kk = k <= 0 ? 0 : std::min(static_cast<size_t>(k), n);
  out.clear();
  if (kk == 0) return;
  if (kk * 8 >= n) {
    // A large share of the vocabulary: selection over all of it beats a heap of that size.
    out.resize(n);
    for (size_t i = 0; i < n; ++i) out[i] = {nan_to_neg_inf(logits[i]), 0.0f, static_cast<int32_t>(i)};
    if (kk < n) std::nth_element(out.begin(), out.begin() + kk, out.end(), better);
    out.resize(kk);
    std::sort(out.begin(), out.end(), better);
    return;
  }
  // A heap of the best kk so far, worst on top. Ids arrive in increasing order, so a later logit equal to
  // the worst kept one loses the tie and "strictly greater" is the whole admission test (which NaN fails);
  // most blocks of kScanBlock logits have none above it and cost a few vector compares.
  for (size_t i = 0; i < kk; ++i) out.push_back({nan_to_neg_inf(logits[i]), 0.0f, static_cast<int32_t>(i)});
  std::make_heap(out.begin(), out.end(), better);
  float threshold = out.front().logit;
  auto admit = [&](size_t i) {
    std::pop_heap(out.begin(), out.end(), better);
    out.back() = {logits[i], 0.0f, static_cast<int32_t>(i)};
    std::push_heap(out.begin(), out.end(), better);
    threshold = out.front().logit;
  };
  size_t i = kk;
  for (; i + kScanBlock <= n; i += kScanBlock) {
    if (!(block_max(&logits[i]) > threshold)) continue;
    for (size_t j = i; j < i + kScanBlock; ++j) {
      if (logits[j] > threshold) admit(j);
    }
  }
  for (; i < n; ++i) {
    if (logits[i] > threshold) admit(i);
  }
  std::sort_heap(out.begin(), out.end(), better);
}

Sampler::Sampler(const SamplingParams& params, int vocab_size, uint64_t seed)
    : params_(params), vocab_(vocab_size), seed_(seed), rng_(seed) {}

Result<Sampler> Sampler::create(const SamplingParams& params, int vocab_size,
                                std::span<const int32_t> prompt_tokens) {
  AS_RETURN_IF_ERROR(params.validate(vocab_size));
  for (size_t i = 0; i < prompt_tokens.size(); ++i) {
    if (prompt_tokens[i] < 0 || prompt_tokens[i] >= vocab_size)
      return Status::invalid_argument("prompt token " + std::to_string(prompt_tokens[i]) + " at position " +
                                      std::to_string(i) + " is outside the vocabulary (" +
                                      std::to_string(vocab_size) + ")");
  }
  Sampler s(params, vocab_size, params.seed ? *params.seed : Rng::random_seed());
  const size_t vocab = static_cast<size_t>(vocab_size);
  const bool logprobs = params.logprobs.has_value();
  if (s.penalties_on()) {
    s.counts_.assign(vocab, 0);
    s.seen_.reserve(std::min(vocab, prompt_tokens.size() + static_cast<size_t>(params.max_tokens)));
    if (logprobs) s.seen_raw_.reserve(s.seen_.capacity());
    // Only the repetition penalty looks at the prompt.
    if (params.repetition_penalty != 1.0) {
      for (int32_t t : prompt_tokens) {
        if (s.counts_[t] == 0) s.seen_.push_back(t);
        s.counts_[t] |= kPromptBit;
      }
    }
  }
  if (!params.greedy() || logprobs) {
    s.weights_.resize(vocab);
    s.block_sums_.resize((vocab + kBlock - 1) / kBlock);
  }
  size_t candidates = logprobs ? static_cast<size_t>(*params.logprobs) : 0;
  if (params.top_k > 0) candidates = std::max(candidates, static_cast<size_t>(params.top_k));
  if (params.top_p < 1.0) candidates = std::max(candidates, static_cast<size_t>(kFirstTopPGuess));
  if (params.top_p < 1.0) s.bin_mass_.resize(kBins);
  s.candidates_.reserve(std::min(candidates, vocab));
  return s;
}

bool Sampler::penalties_on() const {
  return params_.repetition_penalty != 1.0 || params_.presence_penalty != 0.0 ||
         params_.frequency_penalty != 0.0;
}

Status Sampler::accept(int32_t token) {
  if (token < 0 || token >= vocab_)
    return Status::invalid_argument("accepted token " + std::to_string(token) +
                                    " is outside the vocabulary (" + std::to_string(vocab_) + ")");
  if (counts_.empty()) return Status::ok_status();
  uint32_t& entry = counts_[token];
  if (entry == 0) seen_.push_back(token);
  if ((entry & kCountMask) != kCountMask) ++entry;
  return Status::ok_status();
}

void Sampler::apply_penalties(std::span<float> logits) {
  const float repetition = static_cast<float>(params_.repetition_penalty);
  const float presence = static_cast<float>(params_.presence_penalty);
  const float frequency = static_cast<float>(params_.frequency_penalty);
  // Logprobs are raw: keep what the penalties overwrite.
  if (params_.logprobs) {
    seen_raw_.resize(seen_.size());
    for (size_t k = 0; k < seen_.size(); ++k) seen_raw_[k] = logits[seen_[k]];
  }
  for (int32_t t : seen_) {
    const uint32_t count = counts_[t] & kCountMask;
    float l = logits[t];
    if (repetition != 1.0f) l = l > 0 ? l / repetition : l * repetition;
    if (count > 0) l -= presence + frequency * static_cast<float>(count);
    logits[t] = l;
  }
}

// log_softmax of raw logits from their max and log-sum-exp. A +inf logit takes all the mass (logprob 0,
// the others -inf); NaN logits never reach it (they are not selected or sampled).
struct Sampler::LogSoftmax {
  float max;
  double lse;
  float operator()(float v) const {
    return std::isfinite(max) ? static_cast<float>(v - lse) : (v == max ? 0.0f : kNegInf);
  }
};

Result<SampleResult> Sampler::sample(std::span<float> logits, std::span<const uint32_t> allowed) {
  if (logits.size() != static_cast<size_t>(vocab_))
    return Status::invalid_argument("sampler got " + std::to_string(logits.size()) +
                                    " logits for a vocabulary of " + std::to_string(vocab_));
  const size_t mask_words = (logits.size() + 31) / 32;
  if (!allowed.empty() && allowed.size() != mask_words)
    return Status::invalid_argument("token mask has " + std::to_string(allowed.size()) +
                                    " words; a vocabulary of " + std::to_string(vocab_) + " needs " +
                                    std::to_string(mask_words));
  SampleResult out;
  LogSoftmax raw{kNegInf, 0.0};
  if (params_.logprobs) raw = raw_logprobs(logits, out);
  if (!seen_.empty()) apply_penalties(logits);
  if (!allowed.empty()) apply_mask(logits, allowed);
  const MaxAt best = sanitize_and_argmax(logits);
  if (best.value == kNegInf)
    return Status::failed_precondition(
        "no token can be sampled: every token is masked or has a -inf or NaN logit");

  // An infinite logit wins outright; softmax over it would be inf / inf.
  if (params_.greedy() || best.value == kPosInf) {
    out.token = best.index;
  } else {
    out.token = draw(logits, best.value);
  }
  if (params_.logprobs) {
    // Only the penalties changed a logit the sampler could pick; the mask and NaN cleanup never do.
    float raw_logit = logits[out.token];
    const auto it = std::find(seen_.begin(), seen_.end(), out.token);
    if (it != seen_.end()) raw_logit = seen_raw_[it - seen_.begin()];
    out.logprob = raw(raw_logit);
  }
  return out;
}

int32_t Sampler::draw(std::span<const float> logits, float max_logit) {
  const float inv_t = static_cast<float>(1.0 / params_.temperature);
  // min-p compares with the most likely token's probability, whose weight is exp(0) = 1.
  const float min_w = static_cast<float>(params_.min_p);
  if (params_.top_k > 0 && params_.top_k < vocab_) return draw_top_k(logits, max_logit, inv_t);
  const bool top_p_on = params_.top_p < 1.0;
  fill_weights(logits, max_logit, inv_t, top_p_on ? 0.0f : min_w, weights_);
  double total = sum_blocks(weights_, block_sums_);
  if (top_p_on) {
    const double needed = params_.top_p * total;
    // Peaked distributions hold the nucleus among their first few tokens: a cheap partial selection.
    select_top_k(logits, kFirstTopPGuess, candidates_);
    for (SampleCandidate& c : candidates_) c.weight = weights_[c.id];
    if (const size_t keep = prefix_reaching(candidates_, needed); keep > 0) return draw_candidates(keep);
    keep_through(logits, nucleus_end(logits, max_logit, inv_t, needed), min_w, weights_);
    total = sum_blocks(weights_, block_sums_);
  }
  return pick_full(weights_, block_sums_, rng_.uniform() * total);
}

// Top-k (then top-p within what it kept): a partial selection of k, sorted.
int32_t Sampler::draw_top_k(std::span<const float> logits, float max_logit, float inv_t) {
  select_top_k(logits, params_.top_k, candidates_);
  double mass = 0;
  for (SampleCandidate& c : candidates_) {
    c.weight = exp_nonpositive((c.logit - max_logit) * inv_t);
    mass += c.weight;
  }
  size_t keep = candidates_.size();
  if (params_.top_p < 1.0) {
    // Rounding can leave the whole prefix a hair short of top_p * mass: then all of it is kept.
    if (const size_t reached = prefix_reaching(candidates_, params_.top_p * mass); reached > 0)
      keep = reached;
  }
  return draw_candidates(keep);
}

// Draws among candidates_[0, keep) (sorted, most likely first) after min-p trims their tail.
int32_t Sampler::draw_candidates(size_t keep) {
  // Weights fall along the sorted prefix and the first is 1, so min-p cuts a tail.
  const float min_w = static_cast<float>(params_.min_p);
  while (keep > 1 && candidates_[keep - 1].weight < min_w) --keep;
  auto kept = std::span(candidates_).first(keep);
  std::sort(kept.begin(), kept.end(),
            [](const SampleCandidate& a, const SampleCandidate& b) { return a.id < b.id; });
  double total = 0;
  for (const SampleCandidate& c : kept) total += c.weight;
  const double target = rng_.uniform() * total;
  double cum = 0;
  int32_t last_positive = kept.front().id;
  for (const SampleCandidate& c : kept) {
    if (c.weight <= 0) continue;
    last_positive = c.id;
    cum += c.weight;
    if (cum > target) break;
  }
  return last_positive;
}

// The last token of the top-p nucleus when it is too wide for the first guess, found without sorting the
// vocabulary: bucket tokens by log-weight, find the bucket where the running mass reaches `needed`, and
// sort that bucket only. weights_ must hold the unfiltered weights.
SampleCandidate Sampler::nucleus_end(std::span<const float> logits, float max_logit, float inv_t,
                                     double needed) {
  std::fill(bin_mass_.begin(), bin_mass_.end(), 0.0);
  // A positive weight means (max - logit) * inv_t <= 87: bins of 88 / kBins in log-weight.
  const float scale = static_cast<float>(kBins) / 88.0f;
  auto bin_of = [&](float l) {
    return std::min(kBins - 1, static_cast<size_t>((max_logit - l) * inv_t * scale));
  };
  for (size_t i = 0; i < logits.size(); ++i) {
    if (weights_[i] > 0) bin_mass_[bin_of(logits[i])] += weights_[i];
  }
  double cum = 0;
  size_t bin = 0;
  for (; bin < kBins && cum + bin_mass_[bin] < needed; ++bin) cum += bin_mass_[bin];
  // Rounding left the total short of top_p: everything is in.
  if (bin == kBins) return {kNegInf, 0.0f, std::numeric_limits<int32_t>::max()};
  candidates_.clear();
  for (size_t i = 0; i < logits.size(); ++i) {
    if (weights_[i] > 0 && bin_of(logits[i]) == bin)
      candidates_.push_back({logits[i], weights_[i], static_cast<int32_t>(i)});
  }
  std::sort(candidates_.begin(), candidates_.end(), better);
  for (const SampleCandidate& c : candidates_) {
    cum += c.weight;
    if (cum >= needed) return c;
  }
  return candidates_.back();
}

// Raw logprobs (vLLM's default): the normaliser and the top tokens of the logits as they came in, taken
// before anything modifies them.
Sampler::LogSoftmax Sampler::raw_logprobs(std::span<const float> logits, SampleResult& out) {
  const float raw_max = max_ignoring_nan(logits);
  double lse = 0;
  if (std::isfinite(raw_max)) {
    fill_weights(logits, raw_max, 1.0f, 0.0f, weights_);
    lse = raw_max + std::log(sum_blocks(weights_, block_sums_));
  }
  const LogSoftmax raw{raw_max, lse};
  select_top_k(logits, *params_.logprobs, candidates_);
  out.n_top = static_cast<int>(candidates_.size());
  for (size_t i = 0; i < candidates_.size(); ++i) out.top[i] = {candidates_[i].id, raw(candidates_[i].logit)};
  return raw;
}

}  // namespace agentserve::engine
