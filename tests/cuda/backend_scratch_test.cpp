// CudaBackend's scratch, sized once in reserve(): BackendModel asks for a matmul workspace as wide as the
// widest matmul input (hidden or heads * head_dim), never the vocab; the workspace serves inputs up to that
// width whatever the output width, and a wider input fails at synchronize(); a decode batch with more
// chunks than the reserved split-K partials hold still runs on the split-K kernel (in passes) and matches
// kernels::paged_attention_ref; moe_experts past the reserved max_tokens is refused at synchronize().
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "base/bf16.h"
#include "engine/backend_model.h"
#include "engine/cuda/cuda_backend.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/paged_attention.h"
#include "tests/engine/paged_kv_reference.h"

namespace agentserve {
namespace {

using engine::Backend;
using engine::DeviceBuffer;

std::unique_ptr<engine::CudaBackend> make_backend() {
  std::string why;
  auto backend = engine::CudaBackend::create(&why);
  REQUIRE_MESSAGE(backend != nullptr, why);
  return backend;
}

template <typename T>
DeviceBuffer to_backend(Backend& b, const std::vector<T>& host) {
  auto buffer = b.allocate(host.size() * sizeof(T));
  REQUIRE(buffer.ok());
  b.upload(buffer->data(), host.data(), host.size() * sizeof(T));
  return std::move(buffer).value();
}

template <typename T>
std::vector<T> from_backend(Backend& b, const DeviceBuffer& buffer, size_t n) {
  std::vector<T> host(n);
  REQUIRE(b.download(host.data(), buffer.data(), n * sizeof(T)).ok());
  return host;
}

// Values exactly representable in bf16, so a bf16 KV pool or weight holds them without rounding.
std::vector<float> bf16_floats(std::mt19937& rng, size_t n, float scale) {
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(n);
  for (float& x : v) x = bf16_to_float(float_to_bf16(dist(rng)));
  return v;
}

TEST_CASE("BackendModel's op limits take the widest matmul input, never the vocab or the expert width") {
  // Qwen3-235B-A22B: hidden 4096, 64 q heads of 128 (o_proj's input is 8192 wide), vocab 151936.
  engine::ModelConfig big;
  big.hidden_size = 4096;
  big.num_attention_heads = 64;
  big.num_key_value_heads = 4;
  big.head_dim = 128;
  big.moe_intermediate_size = 1536;
  big.intermediate_size = 12288;
  big.vocab_size = 151936;
  big.max_position_embeddings = 40960;
  const engine::OpLimits limits = engine::backend_op_limits(big, {.max_step_tokens = 512});
  CHECK(limits.max_width == 8192);
  CHECK(limits.max_tokens == 512);
  CHECK(limits.n_heads == 64);
  CHECK(limits.head_dim == 128);
  CHECK(limits.max_context_len == 40960);
  CHECK(engine::backend_op_limits(big, {.max_context_len = 1000}).max_context_len == 1000);
  CHECK(engine::backend_op_limits(big, {.max_context_len = 100000}).max_context_len == 40960);

  // A model whose hidden state is wider than its attention output: hidden is the widest input.
  engine::ModelConfig narrow_attention = big;
  narrow_attention.hidden_size = 2048;
  narrow_attention.num_attention_heads = 8;
  CHECK(engine::backend_op_limits(narrow_attention, {}).max_width == 2048);
}

TEST_CASE("the matmul workspace serves any output width up to max_width inputs; a wider input fails") {
  auto backend = make_backend();
  const int rows = 16;  // above the GEMV path's 8 rows: cuBLAS over the bf16 copy of x in the workspace
  const int in_dim = 64;
  REQUIRE(
      backend
          ->reserve(
              {.max_tokens = rows, .max_width = in_dim, .n_heads = 1, .head_dim = 64, .max_context_len = 16})
          .ok());
  std::mt19937 rng(11);
  // A vocab-like output, far wider than the workspace's rows.
  const int out_dim = 3001;
  const auto x = bf16_floats(rng, static_cast<size_t>(rows) * in_dim, 1.0f);
  const auto w = bf16_floats(rng, static_cast<size_t>(out_dim) * in_dim, 0.125f);
  std::vector<bf16> w16(w.size());
  for (size_t i = 0; i < w.size(); ++i) w16[i] = float_to_bf16(w[i]);
  DeviceBuffer d_x = to_backend(*backend, x), d_w = to_backend(*backend, w16);
  auto d_y = backend->allocate(static_cast<size_t>(rows) * out_dim * sizeof(float));
  REQUIRE(d_y.ok());
  const engine::WeightMatrix weights{
      .dtype = kernels::DType::kBF16, .data = d_w.data(), .rows = out_dim, .cols = in_dim};
  backend->matmul(d_y->as<float>(), d_x.as<float>(), weights, rows);
  REQUIRE(backend->synchronize().ok());
  std::vector<float> want(static_cast<size_t>(rows) * out_dim);
  kernels::matmul_ref(want.data(), x.data(), w.data(), kernels::DType::kF32, rows, in_dim, out_dim);
  const auto got = from_backend<float>(*backend, *d_y, want.size());
  double worst = 0.0;
  for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::fabs(double{got[i]} - want[i]));
  CHECK(worst < 1e-4);  // x and W are exact in bf16, so only f32 summation order differs

  // One column more than reserved: the bf16 copy of x does not fit, and synchronize says so once.
  const int wide = in_dim + 8;
  DeviceBuffer d_wide_x = to_backend(*backend, bf16_floats(rng, static_cast<size_t>(rows) * wide, 1.0f));
  std::vector<bf16> wide_w(static_cast<size_t>(4) * wide, float_to_bf16(0.5f));
  DeviceBuffer d_wide_w = to_backend(*backend, wide_w);
  const engine::WeightMatrix wide_weights{
      .dtype = kernels::DType::kBF16, .data = d_wide_w.data(), .rows = 4, .cols = wide};
  backend->matmul(d_y->as<float>(), d_wide_x.as<float>(), wide_weights, rows);
  CHECK_FALSE(backend->synchronize().ok());
  CHECK(backend->synchronize().ok());
}

TEST_CASE(
    "a decode batch larger than the reserved split-K partials runs in passes and matches the reference") {
  auto backend = make_backend();
  // 64 heads of 128 at the longest context the decode kernel takes: one chunk's partials (8192 partitions)
  // exceed the backend's split-K budget, so reserve() keeps room for exactly one chunk per pass.
  const int n_heads = 64, n_kv_heads = 4, head_dim = 128, block_size = 16;
  const int longest = 8192 * 512;
  REQUIRE(backend
              ->reserve({.max_tokens = 8,
                         .max_width = 64,
                         .n_heads = n_heads,
                         .head_dim = head_dim,
                         .max_context_len = longest})
              .ok());
  const std::vector<int> contexts = {1, 17, 600, 33, 1030};
  int total_blocks = 0;
  for (int ctx : contexts) total_blocks += (ctx + block_size - 1) / block_size;
  const engine::KvCacheShape shape{.n_layers = 1,
                                   .n_kv_heads = n_kv_heads,
                                   .head_dim = head_dim,
                                   .block_size = block_size,
                                   .num_blocks = total_blocks};
  auto cache = backend->create_kv_cache(shape);
  REQUIRE(cache.ok());

  std::mt19937 rng(5);
  const size_t kv_row = static_cast<size_t>(n_kv_heads) * head_dim;
  const size_t q_row = static_cast<size_t>(n_heads) * head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  std::vector<int32_t> query_start = {0}, context_len, table_start = {0}, tables;
  std::vector<float> q, want;
  int next_block = 0;
  for (size_t c = 0; c < contexts.size(); ++c) {
    const int ctx = contexts[c];
    const int n_blocks = (ctx + block_size - 1) / block_size;
    // Blocks in reverse order, so a chunk's table is not the identity.
    std::vector<int32_t> table;
    for (int i = n_blocks - 1; i >= 0; --i) table.push_back(next_block + i);
    next_block += n_blocks;
    const auto k = bf16_floats(rng, static_cast<size_t>(ctx) * kv_row, 1.0f);
    const auto v = bf16_floats(rng, static_cast<size_t>(ctx) * kv_row, 1.0f);
    std::vector<int32_t> slots(static_cast<size_t>(ctx));
    for (int p = 0; p < ctx; ++p)
      slots[static_cast<size_t>(p)] =
          table[static_cast<size_t>(p / block_size)] * block_size + p % block_size;
    DeviceBuffer d_k = to_backend(*backend, k), d_v = to_backend(*backend, v),
                 d_slots = to_backend(*backend, slots);
    backend->kv_write(**cache, 0, d_k.as<float>(), d_v.as<float>(), d_slots.as<int32_t>(), ctx);
    REQUIRE(backend->synchronize().ok());  // the K/V buffers go out of scope here

    // Reference blocks [kv head][slot][dim], in the chunk's table order.
    const testing::ReferenceKvBlocks blocks =
        testing::reference_kv_blocks(k, v, ctx, n_kv_heads, head_dim, block_size);
    std::uniform_real_distribution<float> dist(-2.0f, 2.0f);
    std::vector<float> chunk_q(q_row);
    for (float& x : chunk_q) x = dist(rng);
    std::vector<float> out(q_row);
    kernels::paged_attention_ref(out.data(), chunk_q.data(), blocks.k_blocks.data(), blocks.v_blocks.data(),
                                 ctx, block_size, n_heads, n_kv_heads, head_dim, scale);
    want.insert(want.end(), out.begin(), out.end());
    q.insert(q.end(), chunk_q.begin(), chunk_q.end());
    query_start.push_back(query_start.back() + 1);
    context_len.push_back(ctx);
    tables.insert(tables.end(), table.begin(), table.end());
    table_start.push_back(static_cast<int32_t>(tables.size()));
  }
  DeviceBuffer d_qs = to_backend(*backend, query_start), d_ctx = to_backend(*backend, context_len),
               d_ts = to_backend(*backend, table_start), d_tables = to_backend(*backend, tables);
  DeviceBuffer d_q = to_backend(*backend, q);
  const int n_chunks = static_cast<int>(contexts.size());
  // max_context_len is what sizes the partials; the reserved maximum (an upper bound of every chunk's
  // context, all the kernels need) makes one chunk fill the workspace, so the 5 chunks take 5 passes. The
  // batch's true maximum fits them all in one pass: both must match the reference.
  for (const int max_context : {longest, 1030}) {
    CAPTURE(max_context);
    const engine::AttentionBatch batch{.n_chunks = n_chunks,
                                       .n_tokens = n_chunks,
                                       .max_query_len = 1,
                                       .max_context_len = max_context,
                                       .query_start = d_qs.as<int32_t>(),
                                       .context_len = d_ctx.as<int32_t>(),
                                       .block_table_start = d_ts.as<int32_t>(),
                                       .block_tables = d_tables.as<int32_t>()};
    DeviceBuffer d_out = to_backend(*backend, std::vector<float>(q.size(), NAN));
    backend->paged_attention(d_out.as<float>(), d_q.as<float>(), **cache, 0, batch, n_heads, scale);
    REQUIRE(backend->synchronize().ok());
    const auto got = from_backend<float>(*backend, d_out, q.size());
    double worst = 0.0;
    for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::fabs(double{got[i]} - want[i]));
    CHECK(worst < 1e-4);
  }
}

TEST_CASE("moe_experts with more tokens than reserved fails at synchronize and writes nothing") {
  auto backend = make_backend();
  const int reserved = 4, hidden = 64, inter = 32, n_experts = 4, top_k = 2;
  REQUIRE(backend
              ->reserve({.max_tokens = reserved,
                         .max_width = hidden,
                         .n_heads = 1,
                         .head_dim = 64,
                         .max_context_len = 16})
              .ok());
  std::mt19937 rng(3);
  const size_t per = static_cast<size_t>(hidden) * inter;
  auto random_bf16_experts = [&] {
    const std::vector<float> v = bf16_floats(rng, static_cast<size_t>(n_experts) * per, 0.125f);
    std::vector<bf16> out(v.size());
    for (size_t i = 0; i < v.size(); ++i) out[i] = float_to_bf16(v[i]);
    return out;
  };
  DeviceBuffer d_gate = to_backend(*backend, random_bf16_experts());
  DeviceBuffer d_up = to_backend(*backend, random_bf16_experts());
  DeviceBuffer d_down = to_backend(*backend, random_bf16_experts());
  const engine::ExpertWeights experts{.dtype = kernels::DType::kBF16,
                                      .gate = d_gate.data(),
                                      .up = d_up.data(),
                                      .down = d_down.data(),
                                      .n_experts = n_experts,
                                      .hidden = hidden,
                                      .inter = inter};
  // The workspace is what a model reserving `reserved` tokens allocates; the activations are sized for
  // twice that, so only the workspace is too small for the oversized call.
  auto workspace = backend->allocate(backend->moe_workspace_bytes(reserved, top_k, experts));
  REQUIRE(workspace.ok());
  const int n_tokens = 2 * reserved;
  std::vector<int32_t> ids;
  std::vector<float> weights;
  for (int t = 0; t < n_tokens; ++t) {
    for (int i = 0; i < top_k; ++i) {
      ids.push_back((t + i) % n_experts);
      weights.push_back(0.5f);
    }
  }
  const size_t out_elems = static_cast<size_t>(n_tokens) * hidden;
  DeviceBuffer d_x = to_backend(*backend, bf16_floats(rng, out_elems, 1.0f));
  DeviceBuffer d_ids = to_backend(*backend, ids), d_w = to_backend(*backend, weights);
  DeviceBuffer d_out = to_backend(*backend, std::vector<float>(out_elems, NAN));
  REQUIRE(backend->synchronize().ok());

  // Within the reserved tokens the call runs and overwrites its rows.
  backend->moe_experts(d_out.as<float>(), d_x.as<float>(), d_ids.as<int32_t>(), d_w.as<float>(), reserved,
                       top_k, experts, workspace->data());
  REQUIRE(backend->synchronize().ok());
  const auto first = from_backend<float>(*backend, d_out, out_elems);
  const size_t reserved_elems = static_cast<size_t>(reserved) * hidden;
  CHECK(std::all_of(first.begin(), first.begin() + static_cast<std::ptrdiff_t>(reserved_elems),
                    [](float v) { return std::isfinite(v); }));

  // Past them it is refused before any launch: synchronize reports it once, and no row changed.
  backend->moe_experts(d_out.as<float>(), d_x.as<float>(), d_ids.as<int32_t>(), d_w.as<float>(), n_tokens,
                       top_k, experts, workspace->data());
  const Status status = backend->synchronize();
  CHECK(status.code() == StatusCode::kInvalidArgument);
  CHECK(backend->synchronize().ok());
  const auto second = from_backend<float>(*backend, d_out, out_elems);
  CHECK(std::equal(first.begin(), first.begin() + static_cast<std::ptrdiff_t>(reserved_elems),
                   second.begin()));
  CHECK(std::all_of(second.begin() + static_cast<std::ptrdiff_t>(reserved_elems), second.end(),
                    [](float v) { return std::isnan(v); }));
}

}  // namespace
}  // namespace agentserve
