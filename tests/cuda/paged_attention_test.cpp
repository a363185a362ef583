// Paged attention on the GPU against kernels::paged_attention_ref (fed the bf16 pool widened to f32):
// split-K decode across partition boundaries (contexts 1, 15, 16, 17, 511..513, 1000, 5000), in one pass
// and in passes of 2 and 1 chunks when the workspace holds fewer chunks than the batch, the tiled
// prefill kernel for full prefills, chunked prefills over a cached prefix and mixed decode rows, GQA
// groups 1..16, head_dim 64/80/128/256, scattered block tables, and table entries outside the pool.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "base/bf16.h"
#include "kernels/cpu/paged_attention.h"
#include "kernels/cuda/paged_attention.h"
#include "tests/cuda/device_array.h"

namespace agentserve {
namespace {

using testing::DeviceArray;
namespace kc = kernels::cuda;

struct ChunkSpec {
  int n_queries;
  int context_len;
};

struct Problem {
  int n_heads, n_kv_heads, head_dim;
  std::vector<ChunkSpec> chunks;
  int bad_table_entry = -1;  // when >= 0: this entry of chunk 0's table names a block outside the pool
};

constexpr int kBlockSize = 16;
constexpr int kLayer = 1;

// Builds the pool, q and batch arrays, runs the GPU kernel(s) and checks every query row against the
// reference. decode: also run the split-K kernel (all chunks must have one query).
void check_problem(const Problem& p, bool decode) {
  CAPTURE(p.n_heads);
  CAPTURE(p.n_kv_heads);
  CAPTURE(p.head_dim);
  const int D = p.head_dim;
  std::vector<int32_t> query_start = {0}, context_len, table_start = {0}, tables;
  int n_table_blocks = 0;
  for (const ChunkSpec& c : p.chunks) n_table_blocks += (c.context_len + kBlockSize - 1) / kBlockSize;
  const int n_blocks = n_table_blocks + 3;
  std::vector<int32_t> ids(static_cast<size_t>(n_blocks));
  std::iota(ids.begin(), ids.end(), 0);
  std::mt19937 rng(static_cast<uint32_t>(D * 7 + p.n_heads));
  std::shuffle(ids.begin(), ids.end(), rng);
  size_t next_id = 0;
  int max_q = 0;
  int max_ctx = 0;
  for (const ChunkSpec& c : p.chunks) {
    query_start.push_back(query_start.back() + c.n_queries);
    context_len.push_back(c.context_len);
    const int n = (c.context_len + kBlockSize - 1) / kBlockSize;
    for (int b = 0; b < n; ++b) tables.push_back(ids[next_id++]);
    table_start.push_back(static_cast<int32_t>(tables.size()));
    max_q = std::max(max_q, c.n_queries);
    max_ctx = std::max(max_ctx, c.context_len);
  }
  if (p.bad_table_entry >= 0) tables[static_cast<size_t>(p.bad_table_entry)] = n_blocks + 100;

  const auto geo = kc::KvPoolGeometry::packed(2, p.n_kv_heads, kBlockSize, D, n_blocks);
  std::vector<bf16> pool(geo.block_stride * n_blocks);
  std::vector<float> pool_f32(pool.size());
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  for (size_t i = 0; i < pool.size(); ++i) {
    pool[i] = float_to_bf16(unit(rng));
    pool_f32[i] = bf16_to_float(pool[i]);
  }
  const int n_tokens = query_start.back();
  std::vector<float> q(static_cast<size_t>(n_tokens) * p.n_heads * D);
  for (float& x : q) x = 3.0f * unit(rng);  // peaked enough that the softmax is not flat
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));

  // Reference, query by query; a table entry outside the pool reads as a zero block.
  const std::vector<float> zeros(geo.tensor_elems(), 0.0f);
  std::vector<float> expected(q.size());
  for (size_t c = 0; c < p.chunks.size(); ++c) {
    std::vector<const float*> kp, vp;
    for (int32_t t = table_start[c]; t < table_start[c + 1]; ++t) {
      const int32_t id = tables[static_cast<size_t>(t)];
      const bool inside = id >= 0 && id < n_blocks;
      const float* base = pool_f32.data() + static_cast<size_t>(id) * geo.block_stride;
      kp.push_back(inside ? base + geo.k_offset(kLayer) : zeros.data());
      vp.push_back(inside ? base + geo.v_offset(kLayer) : zeros.data());
    }
    const ChunkSpec& spec = p.chunks[c];
    for (int i = 0; i < spec.n_queries; ++i) {
      const size_t row = static_cast<size_t>(query_start[c] + i) * p.n_heads * D;
      kernels::paged_attention_ref(expected.data() + row, q.data() + row, kp.data(), vp.data(),
                                   spec.context_len - spec.n_queries + i + 1, kBlockSize, p.n_heads,
                                   p.n_kv_heads, D, scale);
    }
  }

  DeviceArray<bf16> d_pool(pool);
  DeviceArray<float> d_q(q), d_out(q.size());
  DeviceArray<int32_t> d_qs(query_start), d_ctx(context_len), d_ts(table_start), d_tables(tables);
  const kc::PagedBatch batch{
      static_cast<int>(p.chunks.size()), max_q, max_ctx, d_qs.get(), d_ctx.get(), d_ts.get(), d_tables.get()};
  const kc::AttentionShape shape{p.n_heads, p.n_kv_heads, scale};

  auto check_out = [&](const char* which) {
    CAPTURE(which);
    const auto got = d_out.download();
    double worst = 0.0;
    for (size_t i = 0; i < got.size(); ++i)
      worst = std::max(worst, std::fabs(static_cast<double>(got[i]) - expected[i]));
    CHECK(worst < 1e-4);
  };
  REQUIRE(
      kc::paged_attention_prefill(d_out.get(), d_q.get(), d_pool.get(), geo, kLayer, shape, batch, nullptr)
          .ok());
  check_out("prefill kernel");
  if (decode) {
    // The whole batch in one pass, then a workspace that holds only 2 chunks' partials and only 1 (plus
    // half a chunk that must go unused): the batch runs in passes and every row still matches.
    const size_t per_chunk = kc::paged_attention_decode_workspace_bytes(1, p.n_heads, D, max_ctx);
    CHECK(kc::paged_attention_decode_workspace_bytes(batch.n_chunks, p.n_heads, D, max_ctx) ==
          per_chunk * p.chunks.size());
    for (const size_t chunks_per_pass : {p.chunks.size(), size_t{2}, size_t{1}}) {
      CAPTURE(chunks_per_pass);
      const size_t bytes = per_chunk * chunks_per_pass + per_chunk / 2;
      DeviceArray<std::byte> workspace(bytes);
      d_out.upload(std::vector<float>(q.size(), NAN));
      REQUIRE(kc::paged_attention_decode(d_out.get(), d_q.get(), d_pool.get(), geo, kLayer, shape, batch,
                                         workspace.get(), bytes, nullptr)
                  .ok());
      check_out("split-K decode");
    }
  }
}

TEST_CASE("split-K decode matches the reference across partition and block boundaries") {
  const std::vector<ChunkSpec> contexts = {{1, 1},   {1, 15},  {1, 16},   {1, 17},  {1, 511},
                                           {1, 512}, {1, 513}, {1, 1000}, {1, 5000}};
  for (int head_dim : {64, 128}) {
    check_problem({8, 2, head_dim, contexts}, true);
    check_problem({4, 4, head_dim, contexts}, true);
  }
  check_problem({16, 1, 128, {{1, 1}, {1, 1025}, {1, 3}}}, true);
  check_problem({4, 2, 80, {{1, 17}, {1, 600}}}, true);
  check_problem({8, 2, 256, {{1, 17}, {1, 1100}}}, true);
}

TEST_CASE(
    "tiled prefill matches the reference for prefills, chunked prefills over a prefix and mixed decodes") {
  const std::vector<ChunkSpec> chunks = {{1, 1},   {17, 17},   {33, 100}, {5, 5000},
                                         {16, 16}, {40, 1030}, {1, 777}};
  for (int head_dim : {64, 128}) {
    check_problem({8, 2, head_dim, chunks}, false);
    check_problem({6, 3, head_dim, chunks}, false);
  }
  check_problem({4, 2, 80, {{3, 3}, {19, 50}}}, false);
  check_problem({8, 4, 256, {{20, 20}, {7, 300}}}, false);
}

TEST_CASE("a table entry outside the pool reads as zeros instead of out of bounds") {
  check_problem({4, 2, 64, {{1, 40}, {1, 5}}, /*bad_table_entry=*/1}, true);
  check_problem({4, 2, 64, {{9, 40}, {1, 5}}, /*bad_table_entry=*/1}, false);
}

TEST_CASE("paged attention rejects shapes it cannot run") {
  const auto geo = kc::KvPoolGeometry::packed(1, 2, 16, 64, 4);
  DeviceArray<bf16> pool(geo.block_stride * 4);
  DeviceArray<float> q(1024), out(1024);
  DeviceArray<int32_t> arrays(8);
  const kc::PagedBatch batch{1, 1, 16, arrays.get(), arrays.get(), arrays.get(), arrays.get()};
  const float scale = 0.125f;
  // n_heads not a multiple of the pool's kv heads; kv heads differing from the pool; group above 16.
  CHECK_FALSE(
      kc::paged_attention_prefill(out.get(), q.get(), pool.get(), geo, 0, {3, 2, scale}, batch, nullptr)
          .ok());
  CHECK_FALSE(
      kc::paged_attention_prefill(out.get(), q.get(), pool.get(), geo, 0, {4, 1, scale}, batch, nullptr)
          .ok());
  CHECK_FALSE(
      kc::paged_attention_prefill(out.get(), q.get(), pool.get(), geo, 0, {34, 2, scale}, batch, nullptr)
          .ok());
  CHECK_FALSE(
      kc::paged_attention_prefill(out.get(), q.get(), pool.get(), geo, 1, {4, 2, scale}, batch, nullptr)
          .ok());
  // Decode needs a workspace for at least one chunk, and one query per chunk.
  const size_t bytes = kc::paged_attention_decode_workspace_bytes(1, 4, 64, 16);
  DeviceArray<std::byte> workspace(bytes);
  CHECK_FALSE(kc::paged_attention_decode(out.get(), q.get(), pool.get(), geo, 0, {4, 2, scale}, batch,
                                         workspace.get(), bytes - 1, nullptr)
                  .ok());
  kc::PagedBatch prefill_batch = batch;
  prefill_batch.max_query_len = 2;
  CHECK_FALSE(kc::paged_attention_decode(out.get(), q.get(), pool.get(), geo, 0, {4, 2, scale}, prefill_batch,
                                         workspace.get(), bytes, nullptr)
                  .ok());
}

}  // namespace
}  // namespace agentserve
