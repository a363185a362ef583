// The attention prologue and element-wise kernels on the GPU against the CPU references: RMSNorm (f32 and
// bf16 weights, in place), RoPE tables with YaRN, fused q/k RMSNorm + RoPE (strided rows, GQA, no norm),
// embedding lookup and residual add, on odd shapes (SwiGLU is fused into the MoE kernel: moe_test.cpp).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "base/bf16.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/embedding.h"
#include "kernels/cuda/rmsnorm.h"
#include "kernels/cuda/rope.h"
#include "tests/cuda/device_array.h"

namespace agentserve {
namespace {

using testing::DeviceArray;
namespace kc = kernels::cuda;

std::vector<float> random_floats(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

std::vector<bf16> to_bf16(const std::vector<float>& v) {
  std::vector<bf16> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = float_to_bf16(v[i]);
  return out;
}

std::vector<float> widen(const std::vector<bf16>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = bf16_to_float(v[i]);
  return out;
}

// Largest |a - b| relative to max(1, max |b|).
double max_rel_error(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double scale = 1.0;
  double err = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    scale = std::max(scale, std::fabs(static_cast<double>(b[i])));
    err = std::max(err, std::fabs(static_cast<double>(a[i]) - b[i]));
  }
  return err / scale;
}

TEST_CASE("rmsnorm matches the reference for f32 and bf16 weights, out of place and in place") {
  for (int rows : {1, 3, 17}) {
    for (int dim : {1, 7, 64, 128, 2048, 4097}) {
      CAPTURE(rows);
      CAPTURE(dim);
      const auto x = random_floats(static_cast<size_t>(rows) * dim, 1 + rows * 31 + dim, -3.0f, 3.0f);
      const auto weight = widen(to_bf16(random_floats(static_cast<size_t>(dim), 7 + dim, 0.5f, 1.5f)));
      std::vector<float> expected(x.size());
      kernels::rmsnorm_ref(expected.data(), x.data(), weight.data(), rows, dim, 1e-6f);

      DeviceArray<float> d_x(x), d_out(x.size()), d_w(weight);
      DeviceArray<bf16> d_w16(to_bf16(weight));
      REQUIRE(kc::rmsnorm(d_out.get(), d_x.get(), d_w.get(), kernels::DType::kF32, rows, dim, 1e-6f, nullptr)
                  .ok());
      CHECK(max_rel_error(d_out.download(), expected) < 2e-6);
      REQUIRE(kc::rmsnorm(d_x.get(), d_x.get(), d_w16.get(), kernels::DType::kBF16, rows, dim, 1e-6f, nullptr)
                  .ok());
      CHECK(max_rel_error(d_x.download(), expected) < 2e-6);
    }
  }
}

TEST_CASE("rmsnorm rejects a zero dim and accepts zero rows") {
  DeviceArray<float> d(4);
  CHECK_FALSE(kc::rmsnorm(d.get(), d.get(), d.get(), kernels::DType::kF32, 1, 0, 1e-6f, nullptr).ok());
  CHECK(kc::rmsnorm(d.get(), d.get(), d.get(), kernels::DType::kF32, 0, 4, 1e-6f, nullptr).ok());
}

TEST_CASE("rope tables equal the CPU tables with YaRN at long positions") {
  kernels::YarnScaling yarn{.factor = 4.0, .original_max_position = 32768};
  for (int head_dim : {64, 128}) {
    const auto inv_freq = kernels::rope_inv_freq(head_dim, 1e6, &yarn);
    const float factor = kernels::rope_attention_factor(&yarn);
    const int half = head_dim / 2;
    const std::vector<int32_t> positions = {0, 1, 2, 15, 16, 17, 4095, 32767, 100000, 131071, -5};
    const int n = static_cast<int>(positions.size());
    std::vector<float> cos(static_cast<size_t>(n) * half), sin(cos.size());
    kernels::rope_cos_sin(cos.data(), sin.data(), positions.data(), n, inv_freq.data(), half, factor);

    DeviceArray<int32_t> d_pos(positions);
    DeviceArray<float> d_inv(inv_freq), d_cos(cos.size()), d_sin(sin.size());
    REQUIRE(
        kc::rope_cos_sin(d_cos.get(), d_sin.get(), d_pos.get(), n, d_inv.get(), half, factor, nullptr).ok());
    const auto gcos = d_cos.download();
    const auto gsin = d_sin.download();
    // Both round cos/sin of the same f32 angle from double; CUDA's double cos is within 2 ulp of double,
    // so the f32 results agree to within one f32 ulp (2.4e-7 for values in [1, 2)).
    for (size_t i = 0; i < cos.size(); ++i) {
      CHECK(std::fabs(gcos[i] - cos[i]) <= 3e-7f);
      CHECK(std::fabs(gsin[i] - sin[i]) <= 3e-7f);
    }
  }
}

struct QkCase {
  int n_tokens, n_heads, n_kv_heads, head_dim;
  size_t q_pad, k_pad;  // extra floats per token row (q and k inside a fused qkv row)
  bool norm;
};

TEST_CASE("fused q/k norm + rope matches rmsnorm_ref then apply_rope_ref; without norms it is bit-exact") {
  const QkCase cases[] = {{1, 4, 2, 64, 0, 0, true},   {3, 8, 2, 128, 0, 0, true},
                          {17, 4, 4, 64, 16, 8, true}, {17, 32, 4, 128, 0, 0, true},
                          {3, 6, 2, 80, 4, 4, true},   {17, 4, 2, 128, 0, 0, false},
                          {5, 2, 1, 256, 2, 2, true}};
  kernels::YarnScaling yarn{.factor = 4.0, .original_max_position = 32768};
  for (const QkCase& c : cases) {
    CAPTURE(c.n_tokens);
    CAPTURE(c.n_heads);
    CAPTURE(c.head_dim);
    CAPTURE(c.norm);
    const int half = c.head_dim / 2;
    const size_t q_stride = static_cast<size_t>(c.n_heads) * c.head_dim + c.q_pad;
    const size_t k_stride = static_cast<size_t>(c.n_kv_heads) * c.head_dim + c.k_pad;
    auto q = random_floats(q_stride * c.n_tokens, 11 + c.head_dim, -2.0f, 2.0f);
    auto k = random_floats(k_stride * c.n_tokens, 13 + c.n_tokens, -2.0f, 2.0f);
    const auto q_w = random_floats(static_cast<size_t>(c.head_dim), 17, 0.5f, 1.5f);
    const auto k_w = random_floats(static_cast<size_t>(c.head_dim), 19, 0.5f, 1.5f);
    std::vector<int32_t> positions(static_cast<size_t>(c.n_tokens));
    for (int t = 0; t < c.n_tokens; ++t) positions[static_cast<size_t>(t)] = 1000 * t + 37;
    const auto inv_freq = kernels::rope_inv_freq(c.head_dim, 1e6, &yarn);
    std::vector<float> cos(static_cast<size_t>(c.n_tokens) * half), sin(cos.size());
    kernels::rope_cos_sin(cos.data(), sin.data(), positions.data(), c.n_tokens, inv_freq.data(), half,
                          kernels::rope_attention_factor(&yarn));

    DeviceArray<float> d_q(q), d_k(k), d_qw(q_w), d_kw(k_w), d_cos(cos), d_sin(sin);
    kc::QkNormRopeArgs args;
    args.q = d_q.get();
    args.k = d_k.get();
    args.q_stride = q_stride;
    args.k_stride = k_stride;
    args.q_norm_weight = c.norm ? d_qw.get() : nullptr;
    args.k_norm_weight = c.norm ? d_kw.get() : nullptr;
    args.cos = d_cos.get();
    args.sin = d_sin.get();
    args.n_tokens = c.n_tokens;
    args.n_heads = c.n_heads;
    args.n_kv_heads = c.n_kv_heads;
    args.head_dim = c.head_dim;
    args.eps = 1e-6f;
    REQUIRE(kc::qk_norm_rope(args, nullptr).ok());

    // Reference: per token, norm each head (in place) then rotate; the padding must stay untouched.
    auto expect = [&](std::vector<float> x, size_t stride, int heads, const std::vector<float>& w) {
      for (int t = 0; t < c.n_tokens; ++t) {
        float* row = x.data() + stride * t;
        if (c.norm) kernels::rmsnorm_ref(row, row, w.data(), heads, c.head_dim, 1e-6f);
        kernels::apply_rope(row, 1, heads, c.head_dim, stride, cos.data() + static_cast<size_t>(t) * half,
                            sin.data() + static_cast<size_t>(t) * half);
      }
      return x;
    };
    const auto q_expected = expect(q, q_stride, c.n_heads, q_w);
    const auto k_expected = expect(k, k_stride, c.n_kv_heads, k_w);
    const auto q_got = d_q.download();
    const auto k_got = d_k.download();
    if (c.norm) {
      CHECK(max_rel_error(q_got, q_expected) < 3e-6);
      CHECK(max_rel_error(k_got, k_expected) < 3e-6);
    } else {
      CHECK(q_got == q_expected);
      CHECK(k_got == k_expected);
    }
  }
}

TEST_CASE("embedding gathers f32 and bf16 rows exactly and zeroes ids outside the vocabulary") {
  const int vocab = 37;
  const int hidden = 131;
  const auto table = random_floats(static_cast<size_t>(vocab) * hidden, 23);
  const auto table16 = to_bf16(table);
  const std::vector<int32_t> ids = {0, 36, 5, -1, 37, 5, 12};
  DeviceArray<float> d_table(table), d_out(ids.size() * hidden);
  DeviceArray<bf16> d_table16(table16);
  DeviceArray<int32_t> d_ids(ids);
  for (const bool half : {false, true}) {
    CAPTURE(half);
    const void* t = half ? static_cast<const void*>(d_table16.get()) : d_table.get();
    REQUIRE(kc::embedding(d_out.get(), d_ids.get(), static_cast<int>(ids.size()), t,
                          half ? kernels::DType::kBF16 : kernels::DType::kF32, vocab, hidden, nullptr)
                .ok());
    const auto out = d_out.download();
    for (size_t r = 0; r < ids.size(); ++r) {
      for (int i = 0; i < hidden; ++i) {
        const int id = ids[r];
        float want = 0.0f;
        if (id >= 0 && id < vocab) {
          const size_t at = static_cast<size_t>(id) * hidden + i;
          want = half ? bf16_to_float(table16[at]) : table[at];
        }
        REQUIRE(out[r * hidden + i] == want);
      }
    }
  }
}

TEST_CASE("residual add is exact") {
  for (size_t n : {size_t{1}, size_t{3}, size_t{17}, size_t{4097}, size_t{1} << 20}) {
    CAPTURE(n);
    const auto a = random_floats(n, 29, -8.0f, 8.0f);
    const auto b = random_floats(n, 31, -8.0f, 8.0f);
    DeviceArray<float> d_a(a), d_b(b);
    REQUIRE(kc::add_inplace(d_a.get(), d_b.get(), n, nullptr).ok());
    std::vector<float> sum = a;
    kernels::add_inplace(sum.data(), b.data(), n);
    CHECK(d_a.download() == sum);
  }
}

}  // namespace
}  // namespace agentserve
