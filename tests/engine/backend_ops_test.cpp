// Op parity: every op of the Backend interface, on every backend this build and machine have
// (make_backends), against the plain references of kernels/cpu (*_ref, double accumulation) on random and
// odd shapes: rows 1, 3, 17; head_dim 64 and 128; blocks of 16 with contexts that are not a multiple of
// it; top-k with tied router logits. Errors are normalised by the reference's largest magnitude (as
// llama.cpp's test-backend-ops does), with a tolerance per backend: f32 on the CPU, bf16-level for a
// backend that stores KV or computes in bf16. Lookups, copies, argmax and routing choices must be exact.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "base/bf16.h"
#include "engine/backend.h"
#include "engine/rng.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/moe_router.h"
#include "kernels/cpu/paged_attention.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "tests/engine/paged_kv_reference.h"

namespace agentserve::engine {
namespace {

using kernels::DType;

bool is_cpu(const Backend& b) {
  return b.name() == "cpu";
}
// Normalised max error allowed: f32 rounding on the CPU, bf16 rounding (2^-8) with headroom elsewhere.
double tolerance(const Backend& b) {
  return is_cpu(b) ? 2e-5 : 2e-2;
}

std::vector<float> random_floats(std::mt19937& rng, size_t n, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// A host array copied into a backend buffer.
template <typename T>
DeviceBuffer to_backend(Backend& b, const std::vector<T>& host) {
  auto buffer = b.allocate(std::max<size_t>(host.size() * sizeof(T), 1));
  REQUIRE_MESSAGE(buffer.ok(), buffer.status().to_string());
  b.upload(buffer->data(), host.data(), host.size() * sizeof(T));
  return std::move(*buffer);
}

template <typename T>
DeviceBuffer zeros(Backend& b, size_t n) {
  auto buffer = b.allocate(std::max<size_t>(n * sizeof(T), 1));
  REQUIRE(buffer.ok());
  b.fill_zero(buffer->data(), n * sizeof(T));
  return std::move(*buffer);
}

template <typename T>
std::vector<T> from_backend(Backend& b, const DeviceBuffer& buffer, size_t n) {
  std::vector<T> host(n);
  const Status status = b.download(host.data(), buffer.data(), n * sizeof(T));
  REQUIRE_MESSAGE(status.ok(), status.to_string());
  REQUIRE(b.synchronize().ok());
  return host;
}

// max |got - want| / max |want| (or absolute when the reference is all below 1).
double normalised_error(const std::vector<float>& want, const std::vector<float>& got) {
  REQUIRE(want.size() == got.size());
  double scale = 1e-30, worst = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    scale = std::max(scale, std::fabs(static_cast<double>(want[i])));
    const double d = std::fabs(static_cast<double>(got[i]) - static_cast<double>(want[i]));
    worst = std::max(worst, std::isnan(d) ? std::numeric_limits<double>::infinity() : d);
  }
  return worst / std::max(1.0, scale);
}

// Weights stored as `dtype`, and the f32 values they hold (what the reference multiplies by).
struct HostMatrix {
  std::vector<float> values;
  std::vector<bf16> halves;
  DType dtype;
  const void* data() const {
    return dtype == DType::kF32 ? static_cast<const void*>(values.data())
                                : static_cast<const void*>(halves.data());
  }
  size_t bytes() const { return dtype == DType::kF32 ? values.size() * 4 : halves.size() * 2; }
};

HostMatrix random_matrix(std::mt19937& rng, size_t n, DType dtype) {
  HostMatrix m{random_floats(rng, n), {}, dtype};
  if (dtype == DType::kBF16) {
    for (float& v : m.values) {
      m.halves.push_back(float_to_bf16(v));
      v = bf16_to_float(m.halves.back());
    }
  }
  return m;
}

DeviceBuffer to_backend(Backend& b, const HostMatrix& m) {
  auto buffer = b.allocate(m.bytes());
  REQUIRE(buffer.ok());
  b.upload(buffer->data(), m.data(), m.bytes());
  return std::move(*buffer);
}

class OpsTest {
 public:
  // Scratch for the largest op below: 64 rows, a vocabulary-wide argmax, 8 heads of 128 over 2048 positions.
  OpsTest() : backends_(make_backends(pool_)) {
    REQUIRE(!backends_.empty());
    for (auto& b : backends_) {
      const Status status = b->reserve(
          {.max_tokens = 64, .max_width = 151936, .n_heads = 8, .head_dim = 128, .max_context_len = 2048});
      REQUIRE_MESSAGE(status.ok(), status.to_string());
    }
  }
  template <typename F>
  void each(F&& f) {
    for (auto& b : backends_) {
      INFO("backend " << b->name());
      f(*b);
    }
  }

 private:
  ThreadPool pool_{2};
  std::vector<std::unique_ptr<Backend>> backends_;
};

TEST_CASE("memory: upload, copy, fill_zero and download round-trip; buffers move") {
  OpsTest t;
  t.each([](Backend& b) {
    std::mt19937 rng(1);
    const auto host = random_floats(rng, 1027);
    DeviceBuffer a = to_backend(b, host);
    auto c = b.allocate(host.size() * sizeof(float));
    REQUIRE(c.ok());
    b.copy(c->data(), a.data(), host.size() * sizeof(float));
    CHECK(from_backend<float>(b, *c, host.size()) == host);
    b.fill_zero(c->as<float>() + 3, 10 * sizeof(float));
    const auto partly = from_backend<float>(b, *c, host.size());
    CHECK(partly[2] == host[2]);
    CHECK(partly[3] == 0.0f);
    CHECK(partly[12] == 0.0f);
    CHECK(partly[13] == host[13]);
    DeviceBuffer moved = std::move(a);
    CHECK(a.data() == nullptr);
    CHECK(from_backend<float>(b, moved, host.size()) == host);
    CHECK(b.memory_info().total_bytes > 0);
    CHECK(b.synchronize().ok());
  });
}

TEST_CASE("embedding looks up f32 and bf16 rows exactly, and gathers activation rows") {
  OpsTest t;
  t.each([](Backend& b) {
    std::mt19937 rng(2);
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      for (int cols : {64, 17}) {
        const int rows = 50;
        const HostMatrix table = random_matrix(rng, static_cast<size_t>(rows * cols), dtype);
        DeviceBuffer d_table = to_backend(b, table);
        const WeightMatrix w{.dtype = dtype, .data = d_table.data(), .rows = rows, .cols = cols};
        for (int n : {1, 3, 17}) {
          std::vector<int32_t> ids(static_cast<size_t>(n));
          for (int32_t& id : ids) id = static_cast<int32_t>(rng() % rows);
          ids[0] = rows - 1;
          DeviceBuffer d_ids = to_backend(b, ids);
          DeviceBuffer d_out = zeros<float>(b, static_cast<size_t>(n * cols));
          b.embedding(d_out.as<float>(), w, d_ids.as<int32_t>(), n);
          const auto got = from_backend<float>(b, d_out, static_cast<size_t>(n * cols));
          for (int r = 0; r < n; ++r)
            for (int c = 0; c < cols; ++c)
              REQUIRE(got[static_cast<size_t>(r * cols + c)] ==
                      table.values[static_cast<size_t>(ids[r] * cols + c)]);
        }
      }
    }
  });
}

TEST_CASE("rmsnorm matches rmsnorm_ref, in place too") {
  OpsTest t;
  t.each([](Backend& b) {
    std::mt19937 rng(3);
    for (int rows : {1, 3, 17}) {
      for (int dim : {64, 128, 4097}) {
        const auto x = random_floats(rng, static_cast<size_t>(rows * dim), -3.0f, 3.0f);
        const auto w = random_floats(rng, static_cast<size_t>(dim), 0.5f, 1.5f);
        std::vector<float> want(x.size());
        kernels::rmsnorm_ref(want.data(), x.data(), w.data(), rows, dim, 1e-6f);
        DeviceBuffer d_x = to_backend(b, x), d_w = to_backend(b, w);
        DeviceBuffer d_out = zeros<float>(b, x.size());
        b.rmsnorm(d_out.as<float>(), d_x.as<float>(), d_w.as<float>(), rows, dim, 1e-6f);
        CHECK(normalised_error(want, from_backend<float>(b, d_out, x.size())) <= tolerance(b));
        b.rmsnorm(d_x.as<float>(), d_x.as<float>(), d_w.as<float>(), rows, dim, 1e-6f);
        CHECK(normalised_error(want, from_backend<float>(b, d_x, x.size())) <= tolerance(b));
      }
    }
  });
}

TEST_CASE("matmul matches matmul_ref for f32 and bf16 weights on odd shapes") {
  OpsTest t;
  t.each([](Backend& b) {
    std::mt19937 rng(4);
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      for (int n : {1, 3, 17}) {
        for (auto [in_dim, out_dim] :
             {std::pair{64, 1}, std::pair{128, 33}, std::pair{200, 100}, std::pair{17, 64}}) {
          INFO(n << "x" << in_dim << " -> " << out_dim << " " << kernels::dtype_name(dtype));
          const auto x = random_floats(rng, static_cast<size_t>(n * in_dim));
          const HostMatrix w = random_matrix(rng, static_cast<size_t>(out_dim * in_dim), dtype);
          std::vector<float> want(static_cast<size_t>(n * out_dim));
          kernels::matmul_ref(want.data(), x.data(), w.data(), dtype, n, in_dim, out_dim);
          DeviceBuffer d_x = to_backend(b, x), d_w = to_backend(b, w);
          DeviceBuffer d_y = zeros<float>(b, want.size());
          b.matmul(d_y.as<float>(), d_x.as<float>(),
                   {.dtype = dtype, .data = d_w.data(), .rows = out_dim, .cols = in_dim}, n);
          CHECK(normalised_error(want, from_backend<float>(b, d_y, want.size())) <= tolerance(b));
        }
      }
    }
  });
}

TEST_CASE("rope_tables and qk_norm_rope match rope_cos_sin, rmsnorm_ref and apply_rope_ref, with YaRN") {
  OpsTest t;
  t.each([](Backend& b) {
    std::mt19937 rng(5);
    const kernels::YarnScaling yarn{.factor = 4.0, .original_max_position = 32768};
    for (int head_dim : {64, 128}) {
      for (int n : {1, 3, 17}) {
        const int n_heads = 4, n_kv_heads = 2, half = head_dim / 2;
        const auto inv_freq = kernels::rope_inv_freq(head_dim, 1e6, &yarn);
        const float factor = kernels::rope_attention_factor(&yarn);
        std::vector<int32_t> positions(static_cast<size_t>(n));
        for (int i = 0; i < n; ++i)
          positions[static_cast<size_t>(i)] = i == 0 ? 131071 : static_cast<int32_t>(rng() % 5000);
        std::vector<float> cos(static_cast<size_t>(n * half)), sin(cos.size());
        kernels::rope_cos_sin(cos.data(), sin.data(), positions.data(), n, inv_freq.data(), half, factor);

        DeviceBuffer d_inv = to_backend(b, inv_freq), d_pos = to_backend(b, positions);
        DeviceBuffer d_cos = zeros<float>(b, cos.size()), d_sin = zeros<float>(b, cos.size());
        b.rope_tables(d_cos.as<float>(), d_sin.as<float>(), d_pos.as<int32_t>(), n, d_inv.as<float>(), half,
                      factor);
        CHECK(normalised_error(cos, from_backend<float>(b, d_cos, cos.size())) <= tolerance(b) / 4);
        CHECK(normalised_error(sin, from_backend<float>(b, d_sin, sin.size())) <= tolerance(b) / 4);

        auto q = random_floats(rng, static_cast<size_t>(n * n_heads * head_dim), -2.0f, 2.0f);
        auto k = random_floats(rng, static_cast<size_t>(n * n_kv_heads * head_dim), -2.0f, 2.0f);
        const auto qw = random_floats(rng, static_cast<size_t>(head_dim), 0.5f, 1.5f);
        const auto kw = random_floats(rng, static_cast<size_t>(head_dim), 0.5f, 1.5f);
        DeviceBuffer d_q = to_backend(b, q), d_k = to_backend(b, k), d_qw = to_backend(b, qw),
                     d_kw = to_backend(b, kw);
        // The reference runs on the reference tables, so the op is judged on its own error only.
        DeviceBuffer d_cos_ref = to_backend(b, cos), d_sin_ref = to_backend(b, sin);
        b.qk_norm_rope(d_q.as<float>(), d_k.as<float>(), d_qw.as<float>(), d_kw.as<float>(),
                       d_cos_ref.as<float>(), d_sin_ref.as<float>(), n, n_heads, n_kv_heads, head_dim, 1e-6f);
        kernels::rmsnorm_ref(q.data(), q.data(), qw.data(), n * n_heads, head_dim, 1e-6f);
        kernels::rmsnorm_ref(k.data(), k.data(), kw.data(), n * n_kv_heads, head_dim, 1e-6f);
        kernels::apply_rope_ref(q.data(), n, n_heads, head_dim, static_cast<size_t>(n_heads * head_dim),
                                cos.data(), sin.data());
        kernels::apply_rope_ref(k.data(), n, n_kv_heads, head_dim, static_cast<size_t>(n_kv_heads * head_dim),
                                cos.data(), sin.data());
        CHECK(normalised_error(q, from_backend<float>(b, d_q, q.size())) <= tolerance(b));
        CHECK(normalised_error(k, from_backend<float>(b, d_k, k.size())) <= tolerance(b));
      }
    }
  });
}

// Paged attention over a batch mixing decode, prefill and chunked prefill, after kv_write of every
// position in scattered blocks; then the blocks survive a download / upload round trip.
// chunks: (context length, queries at its end) per sequence.
void check_paged_attention(Backend& b, int head_dim, int n_heads,
                           const std::vector<std::pair<int, int>>& chunks, std::mt19937& rng) {
  const int n_kv_heads = 2, block_size = 16, n_layers = 2, layer = 1;
  const KvCacheShape shape{.n_layers = n_layers,
                           .n_kv_heads = n_kv_heads,
                           .head_dim = head_dim,
                           .block_size = block_size,
                           .num_blocks = 80};
  auto cache = b.create_kv_cache(shape);
  REQUIRE_MESSAGE(cache.ok(), cache.status().to_string());
  std::vector<int32_t> free_blocks(static_cast<size_t>(shape.num_blocks));
  std::iota(free_blocks.begin(), free_blocks.end(), 0);
  std::shuffle(free_blocks.begin(), free_blocks.end(), rng);

  const size_t kv_row = static_cast<size_t>(n_kv_heads * head_dim);
  const size_t q_row = static_cast<size_t>(n_heads * head_dim);
  std::vector<int32_t> query_start = {0}, context_len, table_start = {0}, tables;
  std::vector<float> q, want;
  int max_query = 0, max_context = 0, next_block = 0;
  for (auto [ctx, n_q] : chunks) {
    const int n_blocks = (ctx + block_size - 1) / block_size;
    std::vector<int32_t> table(free_blocks.begin() + next_block, free_blocks.begin() + next_block + n_blocks);
    next_block += n_blocks;
    // K/V of every position, written through kv_write (two calls, so slots of one call are not contiguous).
    const auto k = random_floats(rng, static_cast<size_t>(ctx) * kv_row);
    const auto v = random_floats(rng, static_cast<size_t>(ctx) * kv_row);
    std::vector<int32_t> slots(static_cast<size_t>(ctx));
    for (int p = 0; p < ctx; ++p)
      slots[static_cast<size_t>(p)] =
          table[static_cast<size_t>(p / block_size)] * block_size + p % block_size;
    DeviceBuffer d_k = to_backend(b, k), d_v = to_backend(b, v), d_slots = to_backend(b, slots);
    const int first = ctx / 2;
    b.kv_write(**cache, layer, d_k.as<float>() + first * kv_row, d_v.as<float>() + first * kv_row,
               d_slots.as<int32_t>() + first, ctx - first);
    b.kv_write(**cache, layer, d_k.as<float>(), d_v.as<float>(), d_slots.as<int32_t>(), first);

    // Reference: host blocks in the paged_attention_ref layout, query i sees positions < ctx - n_q + i + 1.
    const testing::ReferenceKvBlocks blocks =
        testing::reference_kv_blocks(k, v, ctx, n_kv_heads, head_dim, block_size);
    const auto chunk_q = random_floats(rng, static_cast<size_t>(n_q) * q_row, -2.0f, 2.0f);
    for (int i = 0; i < n_q; ++i) {
      std::vector<float> out(q_row);
      kernels::paged_attention_ref(out.data(), chunk_q.data() + static_cast<size_t>(i) * q_row,
                                   blocks.k_blocks.data(), blocks.v_blocks.data(), ctx - n_q + i + 1, block_size,
                                   n_heads, n_kv_heads, head_dim, 1.0f / std::sqrt(static_cast<float>(head_dim)));
      want.insert(want.end(), out.begin(), out.end());
    }
    q.insert(q.end(), chunk_q.begin(), chunk_q.end());
    query_start.push_back(query_start.back() + n_q);
    context_len.push_back(ctx);
    tables.insert(tables.end(), table.begin(), table.end());
    table_start.push_back(static_cast<int32_t>(tables.size()));
    max_query = std::max(max_query, n_q);
    max_context = std::max(max_context, ctx);
  }
  DeviceBuffer d_qs = to_backend(b, query_start), d_ctx = to_backend(b, context_len),
               d_ts = to_backend(b, table_start), d_tables = to_backend(b, tables);
  const AttentionBatch batch{.n_chunks = static_cast<int>(chunks.size()),
                             .n_tokens = query_start.back(),
                             .max_query_len = max_query,
                             .max_context_len = max_context,
                             .query_start = d_qs.as<int32_t>(),
                             .context_len = d_ctx.as<int32_t>(),
                             .block_table_start = d_ts.as<int32_t>(),
                             .block_tables = d_tables.as<int32_t>()};
  DeviceBuffer d_q = to_backend(b, q), d_out = zeros<float>(b, q.size());
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  b.paged_attention(d_out.as<float>(), d_q.as<float>(), **cache, layer, batch, n_heads, scale);
  const auto got = from_backend<float>(b, d_out, q.size());
  CHECK(normalised_error(want, got) <= tolerance(b));

  // Spill and restore: the used blocks downloaded, uploaded into a fresh cache, give the same attention.
  const std::vector<int32_t> used(free_blocks.begin(), free_blocks.begin() + next_block);
  std::vector<std::byte> spilled(used.size() * (*cache)->host_block_bytes());
  REQUIRE(b.download_blocks(spilled.data(), **cache, used).ok());
  auto restored = b.create_kv_cache(shape);
  REQUIRE(restored.ok());
  b.upload_blocks(**restored, used, spilled.data());
  DeviceBuffer d_out2 = zeros<float>(b, q.size());
  b.paged_attention(d_out2.as<float>(), d_q.as<float>(), **restored, layer, batch, n_heads, scale);
  CHECK(from_backend<float>(b, d_out2, q.size()) == got);
  std::vector<std::byte> again(spilled.size());
  REQUIRE(b.download_blocks(again.data(), **restored, used).ok());
  CHECK(again == spilled);
  // Layer 0 was never written: its slots read as zero, so attention over it averages zeros.
  DeviceBuffer d_out0 = zeros<float>(b, q.size());
  b.paged_attention(d_out0.as<float>(), d_q.as<float>(), **cache, 0, batch, n_heads, scale);
  const auto zero_out = from_backend<float>(b, d_out0, q.size());
  CHECK(std::all_of(zero_out.begin(), zero_out.end(), [](float x) { return x == 0.0f; }));
}

TEST_CASE("kv_write and paged_attention match paged_attention_ref over decode, prefill and chunked prefill") {
  OpsTest t;
  t.each([](Backend& b) {
    std::mt19937 rng(6);
    for (auto [head_dim, n_heads] : {std::pair{64, 4}, std::pair{128, 8}, std::pair{128, 2}}) {
      INFO("head_dim " << head_dim << ", heads " << n_heads);
      // Decode at 1, 17 and 40 with a prefill of 23 and 13 queries over 37 cached: one mixed batch.
      check_paged_attention(b, head_dim, n_heads, {{1, 1}, {17, 1}, {40, 1}, {23, 23}, {50, 13}}, rng);
      // Decodes only (a GPU's split-K path), one over 1000 positions.
      check_paged_attention(b, head_dim, n_heads, {{1, 1}, {63, 1}, {1000, 1}, {16, 1}}, rng);
    }
  });
}

TEST_CASE("moe_route picks the reference's experts exactly, ties to the lower id") {
  OpsTest t;
  t.each([](Backend& b) {
    std::mt19937 rng(7);
    for (int n : {1, 3, 17}) {
      for (auto [n_experts, top_k] : {std::pair{8, 2}, std::pair{128, 8}, std::pair{4, 1}, std::pair{5, 5}}) {
        for (bool normalize : {true, false}) {
          auto logits = random_floats(rng, static_cast<size_t>(n * n_experts), -4.0f, 4.0f);
          // Ties: half the rows repeat one value across several experts, some of them winners.
          for (int r = 0; r < n; r += 2)
            for (int e = 0; e < n_experts; e += 2) logits[static_cast<size_t>(r * n_experts + e)] = 1.5f;
          const size_t pairs = static_cast<size_t>(n * top_k);
          std::vector<int32_t> want_ids(pairs);
          std::vector<float> want_w(pairs);
          kernels::moe_route_ref(want_ids.data(), want_w.data(), logits.data(), n, n_experts, top_k,
                                 normalize);
          DeviceBuffer d_logits = to_backend(b, logits), d_ids = zeros<int32_t>(b, pairs),
                       d_w = zeros<float>(b, pairs);
          b.moe_route(d_ids.as<int32_t>(), d_w.as<float>(), d_logits.as<float>(), n, n_experts, top_k,
                      normalize);
          CHECK(from_backend<int32_t>(b, d_ids, pairs) == want_ids);
          CHECK(normalised_error(want_w, from_backend<float>(b, d_w, pairs)) <= tolerance(b) / 10);
        }
      }
    }
  });
}

TEST_CASE("moe_experts matches the per-token SwiGLU reference, MoE and dense") {
  OpsTest t;
  t.each([](Backend& b) {
    std::mt19937 rng(8);
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      for (int n : {1, 3, 17}) {
        for (auto [n_experts, top_k, hidden, inter] :
             {std::tuple{8, 2, 64, 32}, std::tuple{6, 3, 48, 40}, std::tuple{1, 1, 64, 96}}) {
          INFO(n << " tokens, " << n_experts << " experts top " << top_k << ", " << hidden << "x" << inter
                 << " " << kernels::dtype_name(dtype));
          const size_t per = static_cast<size_t>(inter * hidden);
          const HostMatrix gate = random_matrix(rng, per * static_cast<size_t>(n_experts), dtype);
          const HostMatrix up = random_matrix(rng, per * static_cast<size_t>(n_experts), dtype);
          const HostMatrix down = random_matrix(rng, per * static_cast<size_t>(n_experts), dtype);
          const auto x = random_floats(rng, static_cast<size_t>(n * hidden));
          // Distinct experts per token, drawn from the first n_experts - 1 so one expert stays idle.
          std::vector<int32_t> ids;
          std::vector<float> weights;
          for (int tkn = 0; tkn < n; ++tkn) {
            std::vector<int32_t> all(static_cast<size_t>(n_experts));
            std::iota(all.begin(), all.end(), 0);
            std::shuffle(all.begin(), all.end() - (n_experts > top_k ? 1 : 0), rng);
            for (int i = 0; i < top_k; ++i) {
              ids.push_back(all[static_cast<size_t>(i)]);
              weights.push_back(n_experts == 1 ? 1.0f : random_floats(rng, 1, 0.1f, 1.0f)[0]);
            }
          }
          std::vector<float> want(static_cast<size_t>(n * hidden), 0.0f), g(static_cast<size_t>(inter)),
              u(g.size()), o(static_cast<size_t>(hidden));
          for (int tkn = 0; tkn < n; ++tkn) {
            for (int i = 0; i < top_k; ++i) {
              const size_t e = static_cast<size_t>(ids[static_cast<size_t>(tkn * top_k + i)]);
              const float* xt = x.data() + static_cast<size_t>(tkn * hidden);
              kernels::matmul_ref(g.data(), xt, gate.values.data() + e * per, DType::kF32, 1, hidden, inter);
              kernels::matmul_ref(u.data(), xt, up.values.data() + e * per, DType::kF32, 1, hidden, inter);
              kernels::silu_mul_ref(g.data(), g.data(), u.data(), g.size());
              kernels::matmul_ref(o.data(), g.data(), down.values.data() + e * per, DType::kF32, 1, inter,
                                  hidden);
              kernels::axpy_ref(want.data() + static_cast<size_t>(tkn * hidden),
                                weights[static_cast<size_t>(tkn * top_k + i)], o.data(), o.size());
            }
          }
          DeviceBuffer d_gate = to_backend(b, gate), d_up = to_backend(b, up), d_down = to_backend(b, down);
          const ExpertWeights experts{.dtype = dtype,
                                      .gate = d_gate.data(),
                                      .up = d_up.data(),
                                      .down = d_down.data(),
                                      .n_experts = n_experts,
                                      .hidden = hidden,
                                      .inter = inter};
          auto workspace = b.allocate(b.moe_workspace_bytes(20, top_k, experts));
          REQUIRE(workspace.ok());
          DeviceBuffer d_x = to_backend(b, x), d_ids = to_backend(b, ids), d_w = to_backend(b, weights);
          DeviceBuffer d_out =
              to_backend(b, random_floats(rng, want.size()));  // overwritten, not accumulated
          b.moe_experts(d_out.as<float>(), d_x.as<float>(), d_ids.as<int32_t>(), d_w.as<float>(), n, top_k,
                        experts, workspace->data());
          CHECK(normalised_error(want, from_backend<float>(b, d_out, want.size())) <= tolerance(b));
        }
      }
    }
  });
}

TEST_CASE("add, argmax with ties and NaN") {
  OpsTest t;
  t.each([](Backend& b) {
    std::mt19937 rng(9);
    auto a = random_floats(rng, 1001);
    const auto c = random_floats(rng, 1001);
    DeviceBuffer d_a = to_backend(b, a), d_c = to_backend(b, c);
    b.add(d_a.as<float>(), d_c.as<float>(), a.size());
    for (size_t i = 0; i < a.size(); ++i) a[i] += c[i];
    CHECK(from_backend<float>(b, d_a, a.size()) == a);

    for (int vocab : {1, 17, 151936}) {
      const int rows = 3;
      auto logits = random_floats(rng, static_cast<size_t>(rows * vocab), -5.0f, 5.0f);
      if (vocab > 1) {
        logits[static_cast<size_t>(vocab - 1)] = 9.0f;  // row 0: a tie, the lower index wins
        logits[static_cast<size_t>(vocab / 2)] = 9.0f;
        logits[static_cast<size_t>(vocab)] =
            std::numeric_limits<float>::quiet_NaN();  // row 1 starts with NaN
      }
      std::vector<int32_t> want;
      for (int r = 0; r < rows; ++r)
        want.push_back(static_cast<int32_t>(
            kernels::argmax_ref(logits.data() + static_cast<size_t>(r * vocab), static_cast<size_t>(vocab))));
      DeviceBuffer d_logits = to_backend(b, logits), d_tokens = zeros<int32_t>(b, rows);
      b.argmax(d_tokens.as<int32_t>(), d_logits.as<float>(), rows, vocab);
      CHECK(from_backend<int32_t>(b, d_tokens, rows) == want);
    }
  });
}

// The documented top-p rule, written independently of any backend: sorted nucleus, inverse CDF by id.
// Returns the token, and in *slack how far u * mass is from the nearest boundary of the running sum (a
// draw that close to a boundary may round either way on another backend).
int32_t sample_reference(const std::vector<float>& logits, const SamplingRow& row, double* slack) {
  const size_t vocab = logits.size();
  const double max_logit = *std::max_element(logits.begin(), logits.end());
  std::vector<double> p(vocab);
  double total = 0.0;
  for (size_t i = 0; i < vocab; ++i) total += p[i] = std::exp((logits[i] - max_logit) / row.temperature);
  for (double& x : p) x /= total;
  std::vector<size_t> by_prob(vocab);
  std::iota(by_prob.begin(), by_prob.end(), 0);
  std::stable_sort(by_prob.begin(), by_prob.end(), [&](size_t a, size_t b) { return p[a] > p[b]; });
  std::vector<bool> kept(vocab, false);
  double mass = 0.0;
  for (size_t i : by_prob) {
    kept[i] = true;
    mass += p[i];
    if (mass >= row.top_p) break;
  }
  const double target = Rng(row.seed).uniform() * mass;
  double running = 0.0;
  *slack = 1.0;
  int32_t chosen = -1;
  for (size_t i = 0; i < vocab; ++i) {
    if (!kept[i]) continue;
    running += p[i];
    *slack = std::min(*slack, std::fabs(running - target));
    if (chosen < 0 && running > target) chosen = static_cast<int32_t>(i);
  }
  return chosen;
}

TEST_CASE("sample_top_p draws the documented token per row; temperature 0 is greedy") {
  OpsTest t;
  t.each([](Backend& b) {
    std::mt19937 rng(10);
    for (int vocab : {7, 1000}) {
      const int rows = 17;
      const auto logits = random_floats(rng, static_cast<size_t>(rows * vocab), -3.0f, 3.0f);
      std::vector<SamplingRow> params;
      for (int r = 0; r < rows; ++r) {
        params.push_back({.temperature = r % 3 == 0 ? 0.7f : 1.0f,
                          .top_p = r % 4 == 0 ? 1.0f : (r % 4 == 1 ? 0.5f : 0.9f),
                          .seed = static_cast<uint64_t>(1000 + r)});
      }
      params[5].temperature = 0.0f;
      std::vector<int32_t> want;
      std::vector<double> slack;
      for (int r = 0; r < rows; ++r) {
        const std::vector<float> row(logits.begin() + r * vocab, logits.begin() + (r + 1) * vocab);
        double s = 1.0;
        want.push_back(params[static_cast<size_t>(r)].temperature < 1e-5f
                           ? static_cast<int32_t>(kernels::argmax_ref(row.data(), row.size()))
                           : sample_reference(row, params[static_cast<size_t>(r)], &s));
        slack.push_back(s);
      }
      DeviceBuffer d_logits = to_backend(b, logits), d_params = to_backend(b, params),
                   d_tokens = zeros<int32_t>(b, rows);
      auto workspace = b.allocate(b.sample_workspace_bytes(rows, vocab));
      REQUIRE(workspace.ok());
      b.sample_top_p(d_tokens.as<int32_t>(), d_logits.as<float>(), d_params.as<SamplingRow>(), rows, vocab,
                     workspace->data());
      const auto got = from_backend<int32_t>(b, d_tokens, rows);
      int compared = 0;
      for (int r = 0; r < rows; ++r) {
        if (slack[static_cast<size_t>(r)] < 1e-4 && !is_cpu(b)) continue;
        INFO("row " << r);
        CHECK(got[static_cast<size_t>(r)] == want[static_cast<size_t>(r)]);
        ++compared;
      }
      CHECK(compared >= rows - 2);
    }
  });
}

}  // namespace
}  // namespace agentserve::engine
