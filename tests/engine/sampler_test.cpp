#include "engine/sampler.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "engine/rng.h"
#include "engine/sampling_params.h"

namespace agentserve::engine {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int kQwenVocab = 151936;

// Logits like a model's: roughly normal with a scale, from a fixed seed.
std::vector<float> random_logits(int n, uint64_t seed, float scale = 3.0f) {
  Rng rng(seed);
  std::vector<float> x(n);
  for (float& v : x) {
    const double u1 = 1.0 - rng.uniform(), u2 = rng.uniform();
    v = static_cast<float>(scale * std::sqrt(-2.0 * std::log(u1)) * std::cos(2 * M_PI * u2));
  }
  return x;
}

Sampler make_sampler(const SamplingParams& p, int vocab, std::span<const int32_t> prompt = {}) {
  auto s = Sampler::create(p, vocab, prompt);
  REQUIRE_MESSAGE(s.ok(), s.status().to_string());
  return std::move(s).value();
}

int32_t sample_token(Sampler& s, std::vector<float> logits, std::span<const uint32_t> mask = {}) {
  auto r = s.sample(logits, mask);
  REQUIRE_MESSAGE(r.ok(), r.status().to_string());
  return r->token;
}

std::vector<uint32_t> mask_allowing(int vocab, std::initializer_list<int> ids) {
  std::vector<uint32_t> mask((vocab + 31) / 32, 0);
  for (int id : ids) mask[id / 32] |= 1u << (id % 32);
  return mask;
}

// The plain reference: full sort, double precision, the documented rules read literally. Takes the uniform
// the sampler would draw.
int32_t reference_sample(std::vector<float> logits, const SamplingParams& p, std::span<const uint32_t> mask,
                         double u) {
  const int n = static_cast<int>(logits.size());
  for (int i = 0; i < n; ++i) {
    if (std::isnan(logits[i])) logits[i] = -kInf;
    if (!mask.empty() && !((mask[i / 32] >> (i % 32)) & 1u)) logits[i] = -kInf;
  }
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
  const double m = logits[order[0]];
  if (p.greedy()) return order[0];
  std::vector<double> w(n);
  for (int i = 0; i < n; ++i) w[i] = std::exp((logits[i] - m) / p.temperature);
  size_t keep = (p.top_k > 0 && p.top_k < n) ? p.top_k : n;
  double mass = 0;
  for (size_t i = 0; i < keep; ++i) mass += w[order[i]];
  if (p.top_p < 1.0) {
    double cum = 0;
    for (size_t i = 0; i < keep; ++i) {
      cum += w[order[i]];
      if (cum >= p.top_p * mass) {
        keep = i + 1;
        break;
      }
    }
  }
  std::vector<int32_t> kept;
  for (size_t i = 0; i < keep; ++i) {
    if (w[order[i]] >= p.min_p) kept.push_back(order[i]);
  }
  std::sort(kept.begin(), kept.end());
  double total = 0;
  for (int32_t t : kept) total += w[t];
  double cum = 0;
  for (int32_t t : kept) {
    cum += w[t];
    if (cum > u * total) return t;
  }
  return kept.back();
}

TEST_CASE("rng follows the published xoshiro256** and splitmix64 sequences") {
  uint64_t sm = 0;
  CHECK(splitmix64(sm) == 0xE220A8397B1DCDAFull);
  CHECK(splitmix64(sm) == 0x6E789E6AA1B965F4ull);
  Rng r = Rng::from_state(1, 2, 3, 4);
  CHECK(r.next() == 11520u);
  CHECK(r.next() == 0u);
  CHECK(r.next() == 1509978240u);
  CHECK(r.next() == 1215971899390074240ull);
  Rng a(42), b(42), c(43);
  double sum = 0;
  bool differs = false;
  for (int i = 0; i < 10000; ++i) {
    const double ua = a.uniform();
    CHECK(ua == b.uniform());
    differs |= ua != c.uniform();
    REQUIRE(ua >= 0.0);
    REQUIRE(ua < 1.0);
    sum += ua;
  }
  CHECK(differs);
  CHECK(sum / 10000 == doctest::Approx(0.5).epsilon(0.02));
}

TEST_CASE("sampler_exp matches std::exp over the range it serves") {
  CHECK(sampler_exp(0.0f) == 1.0f);
  CHECK(sampler_exp(-88.0f) == 0.0f);
  CHECK(sampler_exp(-kInf) == 0.0f);
  CHECK(sampler_exp(std::numeric_limits<float>::quiet_NaN()) == 0.0f);
  double worst = 0;
  for (int i = 0; i <= 200000; ++i) {
    const float x = -87.0f * static_cast<float>(i) / 200000.0f;
    const double want = std::exp(static_cast<double>(x));
    worst = std::max(worst, std::abs(sampler_exp(x) - want) / want);
  }
  CHECK(worst < 5e-7);
}

TEST_CASE("select_top_k matches a full sort on random, tied and odd shapes") {
  std::vector<SampleCandidate> out;
  for (int n : {1, 3, 17, 4097, kQwenVocab}) {
    for (bool ties : {false, true}) {
      std::vector<float> x = random_logits(n, 7 + n);
      // Few distinct values force ties, which must go to the lower id.
      if (ties)
        for (float& v : x) v = std::round(v);
      if (n > 3) x[n / 2] = -kInf;
      std::vector<int32_t> order(n);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return x[a] > x[b]; });
      for (int k : {1, 3, 17, 100, n / 7 + 1, n / 2, n, n + 5}) {
        select_top_k(x, k, out);
        const size_t want = std::min(k, n);
        REQUIRE(out.size() == want);
        for (size_t i = 0; i < want; ++i) {
          REQUIRE(out[i].id == order[i]);
          REQUIRE(out[i].logit == x[order[i]]);
        }
      }
    }
  }
  select_top_k(std::vector<float>{1.0f, 2.0f}, 0, out);
  CHECK(out.empty());
}

TEST_CASE("greedy picks the argmax and breaks ties toward the lowest id") {
  SamplingParams p;
  p.temperature = 0;
  for (int n : {1, 3, 17, 4097, kQwenVocab}) {
    std::vector<float> x = random_logits(n, 100 + n);
    Sampler s = make_sampler(p, n);
    const auto want = std::max_element(x.begin(), x.end()) - x.begin();
    CHECK(sample_token(s, x) == want);
  }
  Sampler s = make_sampler(p, 6);
  CHECK(sample_token(s, {1, 5, 2, 5, -3, 5}) == 1);
  // Below vLLM's 1e-5 epsilon a temperature is greedy too.
  p.temperature = 1e-6;
  Sampler near_zero = make_sampler(p, 4);
  for (int i = 0; i < 50; ++i) CHECK(sample_token(near_zero, {0.0f, 1.0f, 0.999f, 0.5f}) == 1);
  // An infinite logit wins outright, even when sampling.
  p.temperature = 1.0;
  Sampler hot = make_sampler(p, 4);
  CHECK(sample_token(hot, {0.0f, kInf, 3.0f, kInf}) == 1);
}

TEST_CASE("the same seed gives the same tokens, another seed other tokens") {
  SamplingParams p;
  p.temperature = 1.0;
  p.top_p = 0.95;
  p.seed = 1234;
  const std::vector<float> x = random_logits(kQwenVocab, 5, 1.0f);
  Sampler a = make_sampler(p, kQwenVocab), b = make_sampler(p, kQwenVocab);
  p.seed = 4321;
  Sampler c = make_sampler(p, kQwenVocab);
  CHECK(a.seed() == 1234);
  int differ = 0;
  for (int i = 0; i < 50; ++i) {
    const int32_t ta = sample_token(a, x);
    CHECK(ta == sample_token(b, x));
    differ += ta != sample_token(c, x);
  }
  CHECK(differ > 25);
  // Without a seed the sampler draws one and reports it, so the run can be replayed.
  p.seed.reset();
  Sampler unseeded = make_sampler(p, kQwenVocab);
  p.seed = unseeded.seed();
  Sampler replay = make_sampler(p, kQwenVocab);
  for (int i = 0; i < 20; ++i) CHECK(sample_token(unseeded, x) == sample_token(replay, x));
}

TEST_CASE("temperature sampling follows softmax(logits / T) over many draws") {
  const std::vector<float> x = {1.0f, 0.2f, -0.5f, 2.0f, 0.0f, -1.5f, 1.2f, 0.7f};
  for (double t : {0.5, 1.0, 2.0}) {
    SamplingParams p;
    p.temperature = t;
    p.seed = 99;
    Sampler s = make_sampler(p, static_cast<int>(x.size()));
    std::vector<double> want(x.size());
    double z = 0;
    for (size_t i = 0; i < x.size(); ++i) z += want[i] = std::exp(x[i] / t);
    const int draws = 100000;
    std::vector<int> seen(x.size(), 0);
    for (int i = 0; i < draws; ++i) ++seen[sample_token(s, x)];
    double chi2 = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      const double expected = draws * want[i] / z;
      chi2 += (seen[i] - expected) * (seen[i] - expected) / expected;
    }
    // 7 degrees of freedom: P(chi2 > 24.3) = 0.001 for a correct sampler.
    CHECK_MESSAGE(chi2 < 24.3, "T=" << t << " chi2=" << chi2);
  }
}

TEST_CASE("sample matches the full-sort reference on random shapes, filters and masks") {
  struct Case {
    double temperature, top_p, min_p;
    int top_k;
    bool masked;
  };
  const Case cases[] = {
      {1.0, 1.0, 0.0, 0, false},   {0.7, 1.0, 0.0, 40, false}, {1.0, 0.9, 0.0, 0, false},
      {1.3, 0.95, 0.0, 50, true},  {0.8, 1.0, 0.1, 0, false},  {1.0, 0.8, 0.05, 20, false},
      {2.5, 0.99, 0.0, 0, true},   {0.3, 1.0, 0.0, 0, true},   {5.0, 0.5, 0.0, 0, false},
      {1.0, 1.0, 0.3, 100, false}, {2.0, 0.99, 0.2, 0, true},
  };
  int checked = 0;
  for (int n : {1, 3, 17, 4097, kQwenVocab}) {
    for (const Case& c : cases) {
      SamplingParams p;
      p.temperature = c.temperature;
      p.top_p = c.top_p;
      p.min_p = c.min_p;
      p.top_k = c.top_k;
      p.seed = 1000 + n;
      Sampler s = make_sampler(p, n);
      Rng mirror(*p.seed);
      const int trials = n == kQwenVocab ? 4 : 40;
      for (int trial = 0; trial < trials; ++trial) {
        // Scale 1 keeps the distribution wide, so top-p has to look past its first guess at 4097+.
        std::vector<float> x = random_logits(n, trial * 31 + n, trial % 2 ? 1.0f : 4.0f);
        // Ties must go to the lower id at every cut (top-k, top-p, the bucketed nucleus).
        if (trial % 4 == 1)
          for (float& v : x) v = std::round(v * 10.0f) / 10.0f;
        // NaN logits count as masked; a few of them must not upset selection.
        if (trial % 3 == 0)
          for (int i = 3; i < n - 1; i += 7) x[i] = std::numeric_limits<float>::quiet_NaN();
        std::vector<uint32_t> mask;
        if (c.masked) {
          mask.assign((n + 31) / 32, 0);
          Rng pick(trial);
          for (int i = 0; i < n; ++i)
            if (pick.uniform() < 0.3) mask[i / 32] |= 1u << (i % 32);
          mask[(n - 1) / 32] |= 1u << ((n - 1) % 32);
        }
        const int32_t want = reference_sample(x, p, mask, mirror.uniform());
        REQUIRE_MESSAGE(sample_token(s, x, mask) == want,
                        "n=" << n << " trial=" << trial << " T=" << c.temperature << " top_k=" << c.top_k
                             << " top_p=" << c.top_p);
        ++checked;
      }
    }
  }
  CHECK(checked > 1000);
}

TEST_CASE("top-k never returns a token outside the k most likely") {
  const int n = 1000;
  const std::vector<float> x = random_logits(n, 3);
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return x[a] > x[b]; });
  SamplingParams p;
  p.temperature = 10.0;  // hot, so every kept token turns up
  p.top_k = 5;
  p.seed = 11;
  Sampler s = make_sampler(p, n);
  std::vector<int> seen(n, 0);
  for (int i = 0; i < 5000; ++i) ++seen[sample_token(s, x)];
  for (int i = 0; i < n; ++i) {
    const bool in_top = std::find(order.begin(), order.begin() + 5, i) != order.begin() + 5;
    if (in_top)
      CHECK(seen[i] > 0);
    else
      CHECK(seen[i] == 0);
  }
}

std::vector<float> log_probs(std::initializer_list<double> probs) {
  std::vector<float> x;
  for (double q : probs) x.push_back(static_cast<float>(std::log(q)));
  return x;
}

TEST_CASE("top-p keeps the smallest set whose mass reaches p, renormalised") {
  const std::vector<float> x = log_probs({0.05, 0.5, 0.15, 0.3});
  for (auto [top_p, kept] : {std::pair{0.45, 1}, {0.75, 2}, {0.85, 3}, {0.99, 4}}) {
    SamplingParams p;
    p.top_p = top_p;
    p.seed = 5;
    Sampler s = make_sampler(p, 4);
    std::vector<int> seen(4, 0);
    const int draws = 20000;
    for (int i = 0; i < draws; ++i) ++seen[sample_token(s, x)];
    const int by_rank[] = {1, 3, 2, 0};
    const double prob[] = {0.5, 0.3, 0.15, 0.05};
    double kept_mass = 0;
    for (int r = 0; r < kept; ++r) kept_mass += prob[r];
    for (int r = 0; r < 4; ++r) {
      if (r >= kept) {
        CHECK(seen[by_rank[r]] == 0);
      } else {
        CHECK(seen[by_rank[r]] / double(draws) == doctest::Approx(prob[r] / kept_mass).epsilon(0.05));
      }
    }
  }
}

TEST_CASE("min-p drops tokens below min_p times the top probability") {
  const std::vector<float> x = log_probs({0.05, 0.5, 0.15, 0.3});
  for (auto [min_p, allowed] : {std::pair{0.35, std::vector<int>{1, 3}}, {0.2, {1, 2, 3}}, {0.9, {1}}}) {
    SamplingParams p;
    p.min_p = min_p;
    p.seed = 8;
    Sampler s = make_sampler(p, 4);
    std::vector<int> seen(4, 0);
    for (int i = 0; i < 5000; ++i) ++seen[sample_token(s, x)];
    for (int t = 0; t < 4; ++t) {
      const bool ok = std::find(allowed.begin(), allowed.end(), t) != allowed.end();
      CHECK_MESSAGE((seen[t] > 0) == ok, "min_p=" << min_p << " token " << t);
    }
  }
}

TEST_CASE("repetition penalty divides positive and multiplies negative logits of prompt and output tokens") {
  SamplingParams p;
  p.temperature = 0;
  p.repetition_penalty = 2.0;
  const std::vector<int32_t> prompt = {0, 1, 1};
  Sampler s = make_sampler(p, 6, prompt);
  REQUIRE(s.accept(4).ok());
  std::vector<float> x = {3.0f, -1.0f, 5.0f, -2.0f, 0.5f, 0.0f};
  auto r = s.sample(x);
  REQUIRE(r.ok());
  CHECK(x == std::vector<float>{1.5f, -2.0f, 5.0f, -2.0f, 0.25f, 0.0f});
  CHECK(r->token == 2);
}

TEST_CASE("presence and frequency penalties subtract per generated token and ignore the prompt") {
  SamplingParams p;
  p.temperature = 0;
  p.presence_penalty = 0.5;
  p.frequency_penalty = 0.25;
  const std::vector<int32_t> prompt = {0};
  Sampler s = make_sampler(p, 4, prompt);
  for (int32_t t : {1, 2, 2, 2}) REQUIRE(s.accept(t).ok());
  std::vector<float> x = {1.0f, 1.0f, 1.0f, 1.0f};
  REQUIRE(s.sample(x).ok());
  CHECK(x == std::vector<float>{1.0f, 0.25f, -0.25f, 1.0f});
  // The penalty moves the argmax away from the repeated token.
  std::vector<float> y = {0.0f, 0.0f, 1.5f, 0.8f};
  CHECK(sample_token(s, y) == 3);
  CHECK(s.accept(4).code() == StatusCode::kInvalidArgument);
  CHECK(s.accept(-1).code() == StatusCode::kInvalidArgument);
}

TEST_CASE("a masked token is never sampled, even with the highest logit") {
  const int n = 100;
  std::vector<float> x = random_logits(n, 17);
  x[42] = 50.0f;
  const auto mask = mask_allowing(n, {3, 7, 99});
  SamplingParams greedy;
  greedy.temperature = 0;
  Sampler g = make_sampler(greedy, n);
  const int32_t best_allowed = x[3] >= x[7] && x[3] >= x[99] ? 3 : (x[7] >= x[99] ? 7 : 99);
  CHECK(sample_token(g, x, mask) == best_allowed);
  SamplingParams hot;
  hot.temperature = 50.0;
  hot.seed = 1;
  Sampler h = make_sampler(hot, n);
  std::vector<int> seen(n, 0);
  for (int i = 0; i < 3000; ++i) ++seen[sample_token(h, x, mask)];
  CHECK(seen[3] + seen[7] + seen[99] == 3000);
  CHECK(seen[3] > 0);
  CHECK(seen[7] > 0);
  CHECK(seen[99] > 0);
}

TEST_CASE("no samplable token, or wrongly sized input, is an error, not a crash") {
  SamplingParams p;
  p.seed = 3;
  Sampler s = make_sampler(p, 40);
  std::vector<float> x = random_logits(40, 2);
  const std::vector<uint32_t> none(2, 0);
  auto all_masked = s.sample(x, none);
  REQUIRE_FALSE(all_masked.ok());
  CHECK(all_masked.status().code() == StatusCode::kFailedPrecondition);
  // Only masked-out tokens are finite: still nothing to sample.
  std::vector<float> y(40, -kInf);
  y[5] = 1.0f;
  CHECK(s.sample(y, mask_allowing(40, {6})).status().code() == StatusCode::kFailedPrecondition);
  std::vector<float> nan(40, std::numeric_limits<float>::quiet_NaN());
  CHECK(s.sample(nan).status().code() == StatusCode::kFailedPrecondition);
  // NaN logits count as masked; the finite one is chosen.
  nan[9] = -3.0f;
  CHECK(sample_token(s, nan) == 9);
  const std::vector<uint32_t> short_mask(1, ~0u);
  CHECK(s.sample(x, short_mask).status().code() == StatusCode::kInvalidArgument);
  std::vector<float> wrong(39, 0.0f);
  CHECK(s.sample(wrong).status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("logprobs are the raw log-softmax, before penalties and temperature") {
  const int n = 10;
  const std::vector<float> x = random_logits(n, 21);
  double z = 0;
  for (float v : x) z += std::exp(static_cast<double>(v));
  SamplingParams p;
  p.temperature = 0.5;
  p.repetition_penalty = 3.0;
  p.logprobs = n;
  p.seed = 4;
  const std::vector<int32_t> prompt = {0, 1, 2};
  Sampler s = make_sampler(p, n, prompt);
  for (int i = 0; i < 20; ++i) {
    std::vector<float> scratch = x;
    auto r = s.sample(scratch);
    REQUIRE(r.ok());
    REQUIRE(r->logprob.has_value());
    CHECK(*r->logprob == doctest::Approx(x[r->token] - std::log(z)).epsilon(1e-5));
    REQUIRE(r->n_top == n);
    double mass = 0;
    for (int k = 0; k < n; ++k) {
      const TokenLogprob& e = r->top_logprobs()[k];
      CHECK(e.logprob == doctest::Approx(x[e.token] - std::log(z)).epsilon(1e-5));
      if (k > 0) CHECK(e.logprob <= r->top_logprobs()[k - 1].logprob);
      mass += std::exp(e.logprob);
    }
    CHECK(mass == doctest::Approx(1.0).epsilon(1e-5));
  }
  // A penalised token that still wins reports its raw logprob, not the penalised one.
  SamplingParams penalised;
  penalised.temperature = 0;
  penalised.repetition_penalty = 1.5;
  penalised.logprobs = 2;
  const std::vector<int32_t> seen = {4, 0};
  Sampler pen = make_sampler(penalised, 5, seen);
  std::vector<float> y = {10.0f, 2.0f, std::numeric_limits<float>::quiet_NaN(), 1.0f, 9.0f};
  const double zy = std::exp(10.0) + std::exp(2.0) + std::exp(1.0) + std::exp(9.0);
  auto py = pen.sample(y);
  REQUIRE(py.ok());
  CHECK(py->token == 0);
  CHECK(*py->logprob == doctest::Approx(10.0 - std::log(zy)).epsilon(1e-5));
  REQUIRE(py->n_top == 2);
  CHECK(py->top[1].token == 4);
  CHECK(py->top[1].logprob == doctest::Approx(9.0 - std::log(zy)).epsilon(1e-5));
  SamplingParams few;
  few.temperature = 0;
  few.logprobs = 3;
  Sampler g = make_sampler(few, kQwenVocab);
  std::vector<float> big = random_logits(kQwenVocab, 8);
  auto r = g.sample(big);
  REQUIRE(r.ok());
  REQUIRE(r->n_top == 3);
  CHECK(r->top[0].token == r->token);
  CHECK(r->top[0].logprob == *r->logprob);
  CHECK(*r->logprob < 0.0f);
  SamplingParams none;
  Sampler plain = make_sampler(none, n);
  std::vector<float> scratch = x;
  auto q = plain.sample(scratch);
  REQUIRE(q.ok());
  CHECK_FALSE(q->logprob.has_value());
  CHECK(q->n_top == 0);
}

TEST_CASE("validate names the bad field and its range") {
  auto error_of = [](auto change) {
    SamplingParams p;
    change(p);
    const Status st = p.validate(kQwenVocab);
    CHECK(st.code() == StatusCode::kInvalidArgument);
    return st.message();
  };
  CHECK(SamplingParams{}.validate(kQwenVocab).ok());
  CHECK(error_of([](SamplingParams& p) { p.temperature = -0.1; }).find("temperature") != std::string::npos);
  CHECK(error_of([](SamplingParams& p) { p.temperature = NAN; }).find("temperature") != std::string::npos);
  CHECK(error_of([](SamplingParams& p) { p.top_p = 0; }).find("top_p must be in (0, 1]") !=
        std::string::npos);
  CHECK(error_of([](SamplingParams& p) { p.top_p = 1.5; }).find("got 1.5") != std::string::npos);
  CHECK(error_of([](SamplingParams& p) { p.top_k = -1; }).find("top_k") != std::string::npos);
  CHECK(error_of([](SamplingParams& p) { p.min_p = 1.01; }).find("min_p") != std::string::npos);
  CHECK(error_of([](SamplingParams& p) { p.repetition_penalty = 0; }).find("repetition_penalty") !=
        std::string::npos);
  CHECK(error_of([](SamplingParams& p) { p.presence_penalty = 2.5; }).find("presence_penalty") !=
        std::string::npos);
  CHECK(error_of([](SamplingParams& p) { p.frequency_penalty = -3; }).find("frequency_penalty") !=
        std::string::npos);
  CHECK(error_of([](SamplingParams& p) { p.max_tokens = 0; }).find("max_tokens") != std::string::npos);
  CHECK(error_of([](SamplingParams& p) { p.logprobs = 21; }).find("logprobs must be in [0, 20]") !=
        std::string::npos);
  CHECK(error_of([](SamplingParams& p) { p.stop_token_ids = {kQwenVocab}; }).find("stop_token_ids") !=
        std::string::npos);
  CHECK(error_of([](SamplingParams& p) { p.stop = {"ok", ""}; }).find("stop[1]") != std::string::npos);
  CHECK(error_of([](SamplingParams& p) { p.stop.assign(17, "x"); }).find("at most 16") != std::string::npos);
  CHECK(error_of([](SamplingParams& p) { p.stop = {std::string(257, 'x')}; }).find("257 bytes") !=
        std::string::npos);
  SamplingParams edge;
  edge.temperature = 0;
  edge.top_p = 1;
  edge.min_p = 1;
  edge.top_k = 1000000;  // past the vocabulary: the whole vocabulary
  edge.logprobs = 20;
  edge.stop.assign(16, std::string(256, 'x'));
  CHECK(edge.validate(kQwenVocab).ok());
  SamplingParams ok;
  const std::vector<int32_t> bad_prompt = {1, kQwenVocab};
  auto s = Sampler::create(ok, kQwenVocab, bad_prompt);
  REQUIRE_FALSE(s.ok());
  CHECK(s.status().message().find("position 1") != std::string::npos);
}

TEST_CASE("stop tokens end generation, and ignore_eos skips only the EOS ids") {
  const std::vector<int32_t> eos = {151645, 151643};
  SamplingParams p;
  p.stop_token_ids = {7};
  CHECK(is_stop_token(p, 151645, eos));
  CHECK(is_stop_token(p, 7, eos));
  CHECK_FALSE(is_stop_token(p, 8, eos));
  p.ignore_eos = true;
  CHECK_FALSE(is_stop_token(p, 151643, eos));
  CHECK(is_stop_token(p, 7, eos));
}

}  // namespace
}  // namespace agentserve::engine
