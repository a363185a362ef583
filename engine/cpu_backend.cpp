#include "engine/cpu_backend.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <string>

#include "engine/rng.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/moe_router.h"
#include "kernels/cpu/paged_attention.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "memory/kv_arena.h"

namespace agentserve::engine {
namespace {

// The same work split as Qwen3MoeModel, so the two compute identical floats.
constexpr int kRowsPerItem = 32;
constexpr int kQueryTile = 32;
constexpr size_t kAlign = 256;

size_t sz(int64_t v) {
  return static_cast<size_t>(v);
}

memory::KvLayout layout_of(const KvCacheShape& shape) {
  return {.n_layers = shape.n_layers,
          .n_kv_heads = shape.n_kv_heads,
          .head_dim = shape.head_dim,
          .block_size = shape.block_size,
          .dtype = memory::KvDtype::kF32};
}

class CpuKvCache final : public KvCache {
 public:
  CpuKvCache(const KvCacheShape& shape, memory::KvArena arena)
      : KvCache(shape, kernels::DType::kF32, arena.layout().block_bytes()), arena_(std::move(arena)) {}

  memory::KvArena& arena() { return arena_; }
  const memory::KvArena& arena() const { return arena_; }

 private:
  memory::KvArena arena_;
};

memory::KvArena& arena_of(KvCache& cache) {
  return static_cast<CpuKvCache&>(cache).arena();
}
const memory::KvArena& arena_of(const KvCache& cache) {
  return static_cast<const CpuKvCache&>(cache).arena();
}

// Where each region of the MoE workspace starts, for max_tokens * top_k grouped rows.
struct MoeWorkspace {
  int* group_offsets;   // [n_experts + 1]
  int* group_cursor;    // [n_experts]
  int* group_token;     // [rows]
  float* group_weight;  // [rows]
  float* grouped_x;     // [rows][hidden]
  float* act;           // [2][rows][inter]
  float* grouped_out;   // [rows][hidden]
};

size_t round_up(size_t bytes) {
  return (bytes + kAlign - 1) / kAlign * kAlign;
}

// Returns the regions when `base` is non-null, and in every case the bytes they take.
size_t moe_layout(void* base, int max_tokens, int top_k, const ExpertWeights& experts, MoeWorkspace* ws) {
  const size_t rows = sz(std::max(1, max_tokens)) * sz(std::max(1, top_k));
  const size_t n_experts = sz(std::max(1, experts.n_experts));
  const size_t sizes[] = {(n_experts + 1) * sizeof(int),
                          n_experts * sizeof(int),
                          rows * sizeof(int),
                          rows * sizeof(float),
                          rows * sz(experts.hidden) * sizeof(float),
                          2 * rows * sz(experts.inter) * sizeof(float),
                          rows * sz(experts.hidden) * sizeof(float)};
  size_t offsets[7];
  size_t total = 0;
  for (int i = 0; i < 7; ++i) {
    offsets[i] = total;
    total += round_up(sizes[i]);
  }
  if (base != nullptr && ws != nullptr) {
    auto* b = static_cast<std::byte*>(base);
    ws->group_offsets = reinterpret_cast<int*>(b + offsets[0]);
    ws->group_cursor = reinterpret_cast<int*>(b + offsets[1]);
    ws->group_token = reinterpret_cast<int*>(b + offsets[2]);
    ws->group_weight = reinterpret_cast<float*>(b + offsets[3]);
    ws->grouped_x = reinterpret_cast<float*>(b + offsets[4]);
    ws->act = reinterpret_cast<float*>(b + offsets[5]);
    ws->grouped_out = reinterpret_cast<float*>(b + offsets[6]);
  }
  return total;
}

WeightMatrix expert_matrix(const void* base, kernels::DType dtype, int expert, int rows, int cols) {
  const size_t offset = sz(expert) * sz(rows) * sz(cols) * kernels::dtype_size(dtype);
  return {.dtype = dtype, .data = static_cast<const std::byte*>(base) + offset, .rows = rows, .cols = cols};
}

}  // namespace

BackendMemoryInfo CpuBackend::memory_info() const {
  const long page = ::sysconf(_SC_PAGESIZE);
  const long avail = ::sysconf(_SC_AVPHYS_PAGES);
  const long total = ::sysconf(_SC_PHYS_PAGES);
  if (page <= 0 || avail < 0 || total < 0) return {};
  return {.free_bytes = sz(avail) * sz(page), .total_bytes = sz(total) * sz(page)};
}

Result<DeviceBuffer> CpuBackend::allocate(size_t bytes) {
  void* data = std::aligned_alloc(kAlign, round_up(std::max<size_t>(bytes, 1)));
  if (data == nullptr) {
    return Status::resource_exhausted("cannot allocate " + std::to_string(bytes) + " bytes of host memory");
  }
  return DeviceBuffer(this, data, bytes);
}

void CpuBackend::deallocate(void* data, size_t) {
  std::free(data);
}

void CpuBackend::upload(void* dst, const void* host_src, size_t bytes) {
  if (bytes > 0) std::memcpy(dst, host_src, bytes);
}

Status CpuBackend::download(void* host_dst, const void* src, size_t bytes) {
  if (bytes > 0) std::memcpy(host_dst, src, bytes);
  return {};
}

void CpuBackend::copy(void* dst, const void* src, size_t bytes) {
  if (bytes > 0) std::memcpy(dst, src, bytes);
}

void CpuBackend::fill_zero(void* dst, size_t bytes) {
  if (bytes > 0) std::memset(dst, 0, bytes);
}

Status CpuBackend::reserve(const OpLimits& limits) {
  attention_items_.reserve(sz(limits.max_tokens));
  return {};
}

Result<std::unique_ptr<KvCache>> CpuBackend::create_kv_cache(const KvCacheShape& shape) {
  if (shape.num_blocks <= 0) return Status::invalid_argument("a KV cache needs at least one block");
  AS_ASSIGN_OR_RETURN(memory::KvArena arena, memory::KvArena::create(layout_of(shape), shape.num_blocks));
  return std::unique_ptr<KvCache>(std::make_unique<CpuKvCache>(shape, std::move(arena)));
}

size_t CpuBackend::kv_block_bytes(const KvCacheShape& shape) const {
  return layout_of(shape).block_stride();
}

Status CpuBackend::download_blocks(void* host_buffer, const KvCache& cache, std::span<const int32_t> ids) {
  const memory::KvArena& arena = arena_of(cache);
  auto* dst = static_cast<std::byte*>(host_buffer);
  for (size_t i = 0; i < ids.size(); ++i) {
    const auto bytes = arena.block_bytes(ids[i]);
    std::memcpy(dst + i * bytes.size(), bytes.data(), bytes.size());
  }
  return {};
}

void CpuBackend::upload_blocks(KvCache& cache, std::span<const int32_t> ids, const void* host_buffer) {
  memory::KvArena& arena = arena_of(cache);
  const auto* src = static_cast<const std::byte*>(host_buffer);
  for (size_t i = 0; i < ids.size(); ++i) {
    const auto bytes = arena.block_bytes(ids[i]);
    std::memcpy(bytes.data(), src + i * bytes.size(), bytes.size());
  }
}

void CpuBackend::embedding(float* out, const WeightMatrix& table, const int32_t* ids, int n_rows) {
  const size_t cols = sz(table.cols);
  const size_t row_bytes = cols * kernels::dtype_size(table.dtype);
  for (int r = 0; r < n_rows; ++r) {
    const auto* row = static_cast<const std::byte*>(table.data) + sz(ids[r]) * row_bytes;
    // memmove semantics: a gather of activation rows may read the row it is about to replace.
    if (table.dtype == kernels::DType::kF32) {
      std::memmove(out + sz(r) * cols, row, row_bytes);
    } else {
      kernels::convert_to_f32(out + sz(r) * cols, row, table.dtype, cols);
    }
  }
}

void CpuBackend::rmsnorm(float* out, const float* x, const float* weight, int n_rows, int dim, float eps) {
  kernels::rmsnorm(out, x, weight, n_rows, dim, eps);
}

void CpuBackend::matmul(float* y, const float* x, const WeightMatrix& w, int n_tokens) {
  const int out_dim = static_cast<int>(w.rows);
  const int in_dim = static_cast<int>(w.cols);
  const int64_t items = (out_dim + kRowsPerItem - 1) / kRowsPerItem;
  pool_.parallel_for(items, [&](int64_t begin, int64_t end, int) {
    const int row_begin = static_cast<int>(begin) * kRowsPerItem;
    const int row_end = std::min(out_dim, static_cast<int>(end) * kRowsPerItem);
    kernels::matmul(y, x, w.data, w.dtype, n_tokens, in_dim, out_dim, row_begin, row_end);
  });
}

void CpuBackend::rope_tables(float* cos, float* sin, const int32_t* positions, int n_tokens,
                             const float* inv_freq, int half_dim, float attention_factor) {
  kernels::rope_cos_sin(cos, sin, positions, n_tokens, inv_freq, half_dim, attention_factor);
}

void CpuBackend::qk_norm_rope(float* q, float* k, const float* q_norm, const float* k_norm, const float* cos,
                              const float* sin, int n_tokens, int n_heads, int n_kv_heads, int head_dim,
                              float eps) {
  kernels::rmsnorm(q, q, q_norm, n_tokens * n_heads, head_dim, eps);
  kernels::rmsnorm(k, k, k_norm, n_tokens * n_kv_heads, head_dim, eps);
  kernels::apply_rope(q, n_tokens, n_heads, head_dim, sz(n_heads) * sz(head_dim), cos, sin);
  kernels::apply_rope(k, n_tokens, n_kv_heads, head_dim, sz(n_kv_heads) * sz(head_dim), cos, sin);
}

void CpuBackend::kv_write(KvCache& cache, int layer, const float* k, const float* v, const int32_t* slots,
                          int n_tokens) {
  memory::KvArena& arena = arena_of(cache);
  const memory::KvLayout& layout = arena.layout();
  const size_t head_dim = sz(layout.head_dim);
  for (int t = 0; t < n_tokens; ++t) {
    const int block = slots[t] / layout.block_size;
    const int slot = slots[t] % layout.block_size;
    float* k_dst = arena.k(block, layer);
    float* v_dst = arena.v(block, layer);
    for (int h = 0; h < layout.n_kv_heads; ++h) {
      const size_t src = (sz(t) * sz(layout.n_kv_heads) + sz(h)) * head_dim;
      std::memcpy(k_dst + layout.row_index(h, slot), k + src, head_dim * sizeof(float));
      std::memcpy(v_dst + layout.row_index(h, slot), v + src, head_dim * sizeof(float));
    }
  }
}

void CpuBackend::paged_attention(float* out, const float* q, const KvCache& cache, int layer,
                                 const AttentionBatch& batch, int n_heads, float scale) {
  const memory::KvArena& arena = arena_of(cache);
  const int n_kv_heads = cache.shape().n_kv_heads;
  const int head_dim = cache.shape().head_dim;
  const int block_size = cache.shape().block_size;

  // Block pointers of every chunk's table for this layer, gathered once so the kernel reads no table.
  const size_t n_ptrs = sz(batch.block_table_start[batch.n_chunks]);
  k_block_ptrs_.resize(n_ptrs);
  v_block_ptrs_.resize(n_ptrs);
  for (size_t i = 0; i < n_ptrs; ++i) {
    k_block_ptrs_[i] = arena.k(batch.block_tables[i], layer);
    v_block_ptrs_[i] = arena.v(batch.block_tables[i], layer);
  }
  // Work items are (query tile, kv head), as in Qwen3MoeModel: the query heads of a GQA group share reads.
  attention_items_.clear();
  for (int c = 0; c < batch.n_chunks; ++c) {
    const int first = batch.query_start[c];
    const int n = batch.query_start[c + 1] - first;
    for (int t = 0; t < n; t += kQueryTile)
      attention_items_.push_back({c, first + t, std::min(kQueryTile, n - t)});
  }
  const int group = n_heads / n_kv_heads;
  const int64_t n_items = static_cast<int64_t>(attention_items_.size()) * n_kv_heads;
  pool_.parallel_for(n_items, [&](int64_t begin, int64_t end, int) {
    for (int64_t item = begin; item < end; ++item) {
      const AttentionItem& tile = attention_items_[sz(item / n_kv_heads)];
      const int kv_head = static_cast<int>(item % n_kv_heads);
      const int c = tile.chunk;
      const int chunk_queries = batch.query_start[c + 1] - batch.query_start[c];
      // The tile's first query sits at position context_len - chunk_queries + (its index in the chunk).
      const int n_ctx_first =
          batch.context_len[c] - chunk_queries + (tile.first_token - batch.query_start[c]) + 1;
      const size_t offset = sz(tile.first_token) * sz(n_heads) * sz(head_dim);
      const size_t ptrs = sz(batch.block_table_start[c]);
      kernels::paged_attention_prefill(out + offset, q + offset, tile.n_tokens, n_ctx_first,
                                       &k_block_ptrs_[ptrs], &v_block_ptrs_[ptrs], block_size, n_heads,
                                       n_kv_heads, head_dim, scale, kv_head * group, (kv_head + 1) * group);
    }
  });
}

void CpuBackend::moe_route(int32_t* expert_ids, float* expert_weights, const float* router_logits,
                           int n_tokens, int n_experts, int top_k, bool normalize) {
  kernels::moe_route(expert_ids, expert_weights, router_logits, n_tokens, n_experts, top_k, normalize);
}

size_t CpuBackend::moe_workspace_bytes(int max_tokens, int top_k, const ExpertWeights& experts) const {
  return moe_layout(nullptr, max_tokens, top_k, experts, nullptr);
}

void CpuBackend::moe_experts(float* out, const float* x, const int32_t* expert_ids,
                             const float* expert_weights, int n_tokens, int top_k,
                             const ExpertWeights& experts, void* workspace) {
  MoeWorkspace ws{};
  moe_layout(workspace, n_tokens, top_k, experts, &ws);
  const int n_experts = experts.n_experts;
  const size_t hidden = sz(experts.hidden);

  // Counting sort of (token, expert) pairs by expert, so each expert's rows are contiguous.
  std::fill(ws.group_offsets, ws.group_offsets + n_experts + 1, 0);
  const int n_pairs = n_tokens * top_k;
  for (int p = 0; p < n_pairs; ++p) ++ws.group_offsets[expert_ids[p] + 1];
  for (int e = 0; e < n_experts; ++e) ws.group_offsets[e + 1] += ws.group_offsets[e];
  std::copy(ws.group_offsets, ws.group_offsets + n_experts, ws.group_cursor);
  for (int p = 0; p < n_pairs; ++p) {
    const int row = ws.group_cursor[expert_ids[p]]++;
    ws.group_token[row] = p / top_k;
    ws.group_weight[row] = expert_weights[p];
    std::memcpy(ws.grouped_x + sz(row) * hidden, x + sz(p / top_k) * hidden, hidden * sizeof(float));
  }
  run_grouped_experts(experts, ws.group_offsets, ws.grouped_x, ws.act, ws.grouped_out, n_pairs);

  // Weighted scatter back to tokens; threads take disjoint column ranges so no two write the same float.
  std::fill(out, out + sz(n_tokens) * hidden, 0.0f);
  const int64_t col_items = static_cast<int64_t>((hidden + 63) / 64);
  pool_.parallel_for(col_items, [&](int64_t begin, int64_t end, int) {
    const size_t c0 = sz(begin) * 64;
    const size_t c1 = std::min(hidden, sz(end) * 64);
    for (int row = 0; row < n_pairs; ++row) {
      kernels::axpy(out + sz(ws.group_token[row]) * hidden + c0, ws.group_weight[row],
                    ws.grouped_out + sz(row) * hidden + c0, c1 - c0);
    }
  });
}

void CpuBackend::run_grouped_experts(const ExpertWeights& experts, const int* group_offsets,
                                     const float* grouped_x, float* act, float* grouped_out, int n_rows) {
  const int hidden = experts.hidden;
  const int inter = experts.inter;
  // One flat list of (expert, output-row range) items keeps every thread busy even when one expert has
  // most tokens.
  auto build_items = [&](int rows) {
    expert_items_.clear();
    for (int e = 0; e < experts.n_experts; ++e) {
      if (group_offsets[e + 1] == group_offsets[e]) continue;
      for (int r = 0; r < rows; r += kRowsPerItem)
        expert_items_.push_back({e, r, std::min(rows, r + kRowsPerItem)});
    }
  };
  float* gate_out = act;
  float* up_out = act + sz(n_rows) * sz(inter);
  build_items(inter);
  pool_.parallel_for(static_cast<int64_t>(expert_items_.size()), [&](int64_t begin, int64_t end, int) {
    for (int64_t i = begin; i < end; ++i) {
      const ExpertItem& it = expert_items_[sz(i)];
      const int first = group_offsets[it.expert];
      const int n = group_offsets[it.expert + 1] - first;
      const WeightMatrix gate = expert_matrix(experts.gate, experts.dtype, it.expert, inter, hidden);
      const WeightMatrix up = expert_matrix(experts.up, experts.dtype, it.expert, inter, hidden);
      float* g = gate_out + sz(first) * sz(inter);
      float* u = up_out + sz(first) * sz(inter);
      const float* xs = grouped_x + sz(first) * sz(hidden);
      kernels::matmul(g, xs, gate.data, gate.dtype, n, hidden, inter, it.row_begin, it.row_end);
      kernels::matmul(u, xs, up.data, up.dtype, n, hidden, inter, it.row_begin, it.row_end);
      for (int t = 0; t < n; ++t) {
        const size_t off = sz(t) * sz(inter) + sz(it.row_begin);
        kernels::silu_mul(g + off, g + off, u + off, sz(it.row_end - it.row_begin));
      }
    }
  });
  build_items(hidden);
  pool_.parallel_for(static_cast<int64_t>(expert_items_.size()), [&](int64_t begin, int64_t end, int) {
    for (int64_t i = begin; i < end; ++i) {
      const ExpertItem& it = expert_items_[sz(i)];
      const int first = group_offsets[it.expert];
      const int n = group_offsets[it.expert + 1] - first;
      const WeightMatrix down = expert_matrix(experts.down, experts.dtype, it.expert, hidden, inter);
      kernels::matmul(grouped_out + sz(first) * sz(hidden), gate_out + sz(first) * sz(inter), down.data,
                      down.dtype, n, inter, hidden, it.row_begin, it.row_end);
    }
  });
}

void CpuBackend::add(float* a, const float* b, size_t n) {
  kernels::add_inplace(a, b, n);
}

void CpuBackend::argmax(int32_t* tokens, const float* logits, int n_rows, int vocab) {
  for (int r = 0; r < n_rows; ++r) {
    tokens[r] = static_cast<int32_t>(kernels::argmax(logits + sz(r) * sz(vocab), sz(vocab)));
  }
}

size_t CpuBackend::sample_workspace_bytes(int, int vocab) const {
  return round_up(sz(vocab) * sizeof(double)) + round_up(sz(vocab) * sizeof(int32_t));
}

void CpuBackend::sample_top_p(int32_t* tokens, const float* logits, const SamplingRow* rows, int n_rows,
                              int vocab, void* workspace) {
  auto* prob = static_cast<double*>(workspace);
  auto* order =
      reinterpret_cast<int32_t*>(static_cast<std::byte*>(workspace) + round_up(sz(vocab) * sizeof(double)));
  for (int r = 0; r < n_rows; ++r) {
    const float* row = logits + sz(r) * sz(vocab);
    const SamplingRow& params = rows[r];
    if (!(params.temperature >= 1e-5f)) {
      tokens[r] = static_cast<int32_t>(kernels::argmax(row, sz(vocab)));
      continue;
    }
    // Softmax in double; NaN logits get probability 0.
    double max_logit = -std::numeric_limits<double>::infinity();
    for (int i = 0; i < vocab; ++i)
      if (row[i] == row[i]) max_logit = std::max(max_logit, static_cast<double>(row[i]));
    // No finite maximum (all NaN, -inf, or an inf): the softmax is undefined; greedy is the safe answer.
    if (!std::isfinite(max_logit)) {
      tokens[r] = static_cast<int32_t>(kernels::argmax(row, sz(vocab)));
      continue;
    }
    double total = 0.0;
    for (int i = 0; i < vocab; ++i) {
      prob[i] = row[i] == row[i] ? std::exp((row[i] - max_logit) / params.temperature) : 0.0;
      total += prob[i];
    }
    for (int i = 0; i < vocab; ++i) prob[i] /= total;
    // Nucleus: most probable first (ties: lower id), up to the first token where the mass reaches top_p.
    for (int i = 0; i < vocab; ++i) order[i] = i;
    std::sort(order, order + vocab,
              [&](int32_t a, int32_t b) { return prob[a] > prob[b] || (prob[a] == prob[b] && a < b); });
    int kept = 0;
    double mass = 0.0;
    while (kept < vocab) {
      mass += prob[order[kept++]];
      if (mass >= static_cast<double>(params.top_p)) break;
    }
    // Inverse CDF over the kept ids in increasing id order.
    std::sort(order, order + kept);
    Rng rng(params.seed);
    const double target = rng.uniform() * mass;
    double running = 0.0;
    int32_t chosen = order[kept - 1];
    for (int i = 0; i < kept; ++i) {
      running += prob[order[i]];
      if (running > target) {
        chosen = order[i];
        break;
      }
    }
    tokens[r] = chosen;
  }
}

std::unique_ptr<Backend> make_cpu_backend(ThreadPool& pool) {
  return std::make_unique<CpuBackend>(pool);
}

}  // namespace agentserve::engine
