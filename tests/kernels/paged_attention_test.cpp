#include "kernels/cpu/paged_attention.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

namespace agentserve::kernels {
namespace {

// A KV cache for one layer whose blocks sit in shuffled physical order, so a kernel that assumed
// contiguous blocks would read the wrong tokens.
struct Cache {
  int block_size, n_kv_heads, head_dim;
  std::vector<std::vector<float>> k_storage, v_storage;
  std::vector<const float*> k_blocks, v_blocks;

  Cache(int n_tokens, int block_size_, int n_kv_heads_, int head_dim_, std::mt19937& rng)
      : block_size(block_size_), n_kv_heads(n_kv_heads_), head_dim(head_dim_) {
    const int n_blocks = (n_tokens + block_size - 1) / block_size;
    const size_t block_floats = static_cast<size_t>(n_kv_heads) * block_size * head_dim;
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    k_storage.assign(n_blocks, std::vector<float>(block_floats));
    v_storage.assign(n_blocks, std::vector<float>(block_floats));
    for (auto& b : k_storage)
      for (auto& x : b) x = u(rng);
    for (auto& b : v_storage)
      for (auto& x : b) x = u(rng);
    std::vector<int> order(n_blocks);
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    for (int b : order) {
      k_blocks.push_back(k_storage[b].data());
      v_blocks.push_back(v_storage[b].data());
    }
  }
  float* k_at(int token, int kv_head) { return row(k_blocks, token, kv_head); }
  float* v_at(int token, int kv_head) { return row(v_blocks, token, kv_head); }
  float* row(std::vector<const float*>& blocks, int token, int kv_head) {
    return const_cast<float*>(blocks[token / block_size]) +
           (static_cast<size_t>(kv_head) * block_size + token % block_size) * head_dim;
  }
};

struct Case {
  int n_ctx, block_size, n_heads, n_kv_heads, head_dim;
};

// Odd shapes: one token, block size 1, context ending mid-block and mid-chunk (16), head_dim tails,
// group sizes 1..8, and the Qwen3-30B geometry (32 heads, 4 kv heads, head_dim 128) at 4097 tokens.
const std::vector<Case> kCases = {{1, 16, 1, 1, 1},     {3, 1, 2, 1, 3},       {17, 16, 4, 2, 17},
                                  {33, 3, 6, 3, 5},     {100, 7, 8, 2, 64},    {16, 16, 4, 4, 16},
                                  {250, 16, 16, 2, 96}, {4097, 16, 32, 4, 128}};

// |out - ref| <= tol * max|V|. The score dot products carry (head_dim + 16) * 2^-24 * sum|q k| * scale
// of absolute error, which moves a softmax weight by that much relatively; the f32 weighted sum over the
// context adds at most (n_ctx + 16) * 2^-24 relative (sequential accumulation bound); exp adds 2 ulp.
double tolerance(const Case& c, double max_qk_abs_sum, float scale) {
  const double u = std::ldexp(1.0, -24);
  return 2 * (c.head_dim + 16) * u * max_qk_abs_sum * scale + (c.n_ctx + 16) * u + 8 * u;
}

std::vector<float> random_vector(size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = u(rng);
  return v;
}

double max_abs_diff(const float* a, const float* b, size_t n) {
  double worst = 0;
  for (size_t i = 0; i < n; ++i) worst = std::max(worst, std::fabs(static_cast<double>(a[i]) - b[i]));
  return worst;
}

TEST_CASE("paged attention for one query matches the two-pass reference on odd shapes") {
  std::mt19937 rng(3);
  for (const Case& c : kCases) {
    CAPTURE(c.n_ctx);
    CAPTURE(c.block_size);
    CAPTURE(c.n_heads);
    CAPTURE(c.n_kv_heads);
    CAPTURE(c.head_dim);
    Cache cache(c.n_ctx, c.block_size, c.n_kv_heads, c.head_dim, rng);
    const size_t q_size = static_cast<size_t>(c.n_heads) * c.head_dim;
    // Larger q makes the softmax peaked, the harder case for the running max.
    std::vector<float> q = random_vector(q_size, rng);
    for (auto& x : q) x *= 4;
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
    std::vector<float> ref(q_size), out(q_size, 7.0f);
    paged_attention_ref(ref.data(), q.data(), cache.k_blocks.data(), cache.v_blocks.data(), c.n_ctx,
                        c.block_size, c.n_heads, c.n_kv_heads, c.head_dim, scale);
    paged_attention(out.data(), q.data(), cache.k_blocks.data(), cache.v_blocks.data(), c.n_ctx, c.block_size,
                    c.n_heads, c.n_kv_heads, c.head_dim, scale, 0, c.n_heads);
    const double qk = 4.0 * c.head_dim;  // |q| <= 4, |k| <= 1
    CHECK(max_abs_diff(out.data(), ref.data(), q_size) <= tolerance(c, qk, scale));
  }
}

TEST_CASE("paged attention writes only the heads in its range") {
  std::mt19937 rng(4);
  const Case c{40, 16, 8, 2, 32};
  Cache cache(c.n_ctx, c.block_size, c.n_kv_heads, c.head_dim, rng);
  const size_t q_size = static_cast<size_t>(c.n_heads) * c.head_dim;
  std::vector<float> q = random_vector(q_size, rng);
  std::vector<float> ref(q_size);
  paged_attention_ref(ref.data(), q.data(), cache.k_blocks.data(), cache.v_blocks.data(), c.n_ctx,
                      c.block_size, c.n_heads, c.n_kv_heads, c.head_dim, 0.3f);
  // Ranges that cut a kv group in the middle on both ends.
  for (auto [begin, end] :
       {std::pair{0, 8}, std::pair{1, 3}, std::pair{3, 6}, std::pair{5, 5}, std::pair{7, 8}}) {
    CAPTURE(begin);
    CAPTURE(end);
    std::vector<float> out(q_size, 7.0f);
    paged_attention(out.data(), q.data(), cache.k_blocks.data(), cache.v_blocks.data(), c.n_ctx, c.block_size,
                    c.n_heads, c.n_kv_heads, c.head_dim, 0.3f, begin, end);
    for (int h = 0; h < c.n_heads; ++h) {
      const float* o = out.data() + static_cast<size_t>(h) * c.head_dim;
      if (h >= begin && h < end) {
        CHECK(max_abs_diff(o, ref.data() + static_cast<size_t>(h) * c.head_dim, c.head_dim) < 1e-5);
      } else {
        CHECK(std::all_of(o, o + c.head_dim, [](float x) { return x == 7.0f; }));
      }
    }
  }
}

using PrefillFn = void (*)(float*, const float*, int, int, const float* const*, const float* const*, int, int,
                           int, int, float, int, int);

void check_prefill_matches_per_query_reference(PrefillFn fn) {
  std::mt19937 rng(5);
  struct PrefillCase {
    int n_queries, n_ctx_first, block_size, n_heads, n_kv_heads, head_dim;
  };
  // 20 queries x 8 heads = 160 rows: more than one row tile, and rows whose contexts end in
  // different chunks of the same tile.
  for (const PrefillCase& c :
       {PrefillCase{1, 1, 16, 2, 1, 8}, PrefillCase{5, 1, 3, 4, 2, 17}, PrefillCase{20, 30, 16, 16, 2, 64},
        PrefillCase{33, 100, 16, 8, 4, 128}, PrefillCase{7, 16, 1, 3, 3, 5}}) {
    CAPTURE(c.n_queries);
    CAPTURE(c.n_ctx_first);
    CAPTURE(c.head_dim);
    const int n_ctx_last = c.n_ctx_first + c.n_queries - 1;
    Cache cache(n_ctx_last, c.block_size, c.n_kv_heads, c.head_dim, rng);
    const size_t per_query = static_cast<size_t>(c.n_heads) * c.head_dim;
    std::vector<float> q = random_vector(per_query * c.n_queries, rng);
    std::vector<float> out(q.size(), 7.0f);
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
    fn(out.data(), q.data(), c.n_queries, c.n_ctx_first, cache.k_blocks.data(), cache.v_blocks.data(),
       c.block_size, c.n_heads, c.n_kv_heads, c.head_dim, scale, 0, c.n_heads);
    std::vector<float> ref(per_query);
    for (int i = 0; i < c.n_queries; ++i) {
      CAPTURE(i);
      paged_attention_ref(ref.data(), q.data() + i * per_query, cache.k_blocks.data(), cache.v_blocks.data(),
                          c.n_ctx_first + i, c.block_size, c.n_heads, c.n_kv_heads, c.head_dim, scale);
      const Case as_decode{c.n_ctx_first + i, c.block_size, c.n_heads, c.n_kv_heads, c.head_dim};
      CHECK(max_abs_diff(out.data() + i * per_query, ref.data(), per_query) <=
            tolerance(as_decode, c.head_dim, scale));
    }
  }
}

TEST_CASE("prefill attention over many queries matches the reference run per query") {
  check_prefill_matches_per_query_reference(&paged_attention_prefill);
}

TEST_CASE("portable prefill attention matches the reference run per query") {
  check_prefill_matches_per_query_reference(&portable::paged_attention_prefill);
}

TEST_CASE("zero queries attend uniformly: the output is the mean of the visible values") {
  // A skipped or repeated token shifts the mean by about (its index - mean index) / n_ctx: far more
  // than rounding.
  for (PrefillFn fn : {&paged_attention_prefill, &portable::paged_attention_prefill}) {
    std::mt19937 rng(6);
    const int n_queries = 3, n_ctx_first = 1000, block_size = 16, head_dim = 20;
    Cache cache(n_ctx_first + n_queries - 1, block_size, 1, head_dim, rng);
    for (int t = 0; t < n_ctx_first + n_queries - 1; ++t) {
      for (int d = 0; d < head_dim; ++d) cache.v_at(t, 0)[d] = static_cast<float>(t) + 0.001f * d;
    }
    std::vector<float> q(static_cast<size_t>(n_queries) * head_dim, 0.0f);
    std::vector<float> out(q.size());
    fn(out.data(), q.data(), n_queries, n_ctx_first, cache.k_blocks.data(), cache.v_blocks.data(), block_size,
       1, 1, head_dim, 1.0f, 0, 1);
    for (int i = 0; i < n_queries; ++i) {
      const double n = n_ctx_first + i;
      for (int d = 0; d < head_dim; ++d) {
        CHECK(out[static_cast<size_t>(i) * head_dim + d] ==
              doctest::Approx((n - 1) / 2 + 0.001 * d).epsilon(1e-5));
      }
    }
  }
}

TEST_CASE("a key aligned with the query selects its value, and each head reads its own kv head") {
  std::mt19937 rng(7);
  const int n_ctx = 300, block_size = 16, n_heads = 6, n_kv_heads = 3, head_dim = 16;
  Cache cache(n_ctx, block_size, n_kv_heads, head_dim, rng);
  std::vector<float> q(static_cast<size_t>(n_heads) * head_dim, 0.0f);
  // kv head g: token 37 + 100 g has a key along axis g and a value of all (g + 1); other keys are 0.
  for (int g = 0; g < n_kv_heads; ++g) {
    for (int t = 0; t < n_ctx; ++t) std::fill(cache.k_at(t, g), cache.k_at(t, g) + head_dim, 0.0f);
    const int hot = 37 + 100 * g;
    cache.k_at(hot, g)[g] = 1.0f;
    std::fill(cache.v_at(hot, g), cache.v_at(hot, g) + head_dim, static_cast<float>(g + 1));
  }
  for (int h = 0; h < n_heads; ++h)
    q[static_cast<size_t>(h) * head_dim + h / 2] = 200.0f;  // e^-200 elsewhere
  std::vector<float> out(q.size());
  paged_attention(out.data(), q.data(), cache.k_blocks.data(), cache.v_blocks.data(), n_ctx, block_size,
                  n_heads, n_kv_heads, head_dim, 1.0f, 0, n_heads);
  for (int h = 0; h < n_heads; ++h) {
    CAPTURE(h);
    for (int d = 0; d < head_dim; ++d)
      CHECK(out[static_cast<size_t>(h) * head_dim + d] == doctest::Approx(h / 2 + 1));
  }
}

}  // namespace
}  // namespace agentserve::kernels
