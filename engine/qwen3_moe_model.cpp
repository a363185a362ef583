#include "engine/qwen3_moe_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/moe_router.h"
#include "kernels/cpu/paged_attention.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"

namespace agentserve::engine {
namespace {

// Output rows per work item of a threaded matmul: large enough that a dispatch is worth it, small enough
// that two threads get balanced work on the narrow projections of small models.
constexpr int kRowsPerItem = 32;

size_t sz(int64_t v) {
  return static_cast<size_t>(v);
}

}  // namespace

double ExpertLoad::imbalance(int layer) const {
  int64_t max_tokens = 0, total = 0;
  for (int e = 0; e < n_experts; ++e) {
    max_tokens = std::max(max_tokens, at(layer, e));
    total += at(layer, e);
  }
  if (total == 0) return 0.0;
  return static_cast<double>(max_tokens) / (static_cast<double>(total) / n_experts);
}

Qwen3MoeModel::Qwen3MoeModel(const ModelConfig& config, const ModelWeights& weights, ThreadPool& pool,
                             int max_step_tokens, bool bf16_activations, const ModelShard& shard)
    : config_(config),
      weights_(weights),
      pool_(pool),
      max_step_tokens_(std::max(1, max_step_tokens)),
      bf16_activations_(bf16_activations),
      shard_(shard) {
  std::optional<kernels::YarnScaling> yarn;
  if (config.rope_scaling) {
    yarn = kernels::YarnScaling{
        .factor = config.rope_scaling->factor,
        .original_max_position = static_cast<int>(config.rope_scaling->original_max_position_embeddings),
        .beta_fast = config.rope_scaling->beta_fast,
        .beta_slow = config.rope_scaling->beta_slow,
        .attention_factor = config.rope_scaling->attention_factor};
  }
  const int head_dim = static_cast<int>(config.head_dim);
  inv_freq_ = kernels::rope_inv_freq(head_dim, config.rope_theta, yarn ? &*yarn : nullptr);
  attention_factor_ = kernels::rope_attention_factor(yarn ? &*yarn : nullptr);

  const size_t t = sz(max_step_tokens_);
  const size_t hidden = sz(config.hidden_size);
  const size_t q_dim = sz(config.num_attention_heads) * sz(config.head_dim);
  const size_t kv_dim = sz(config.num_key_value_heads) * sz(config.head_dim);
  const int top_k = std::max(1, config.num_experts_per_tok);
  const size_t grouped_rows = t * sz(top_k);
  const size_t widest_mlp = sz(std::max(config.moe_intermediate_size, config.intermediate_size));
  hidden_.resize(t * hidden);
  normed_.resize(t * hidden);
  q_.resize(t * q_dim);
  k_.resize(t * kv_dim);
  v_.resize(t * kv_dim);
  attn_.resize(t * q_dim);
  proj_.resize(t * hidden);
  router_logits_.resize(t * sz(std::max(1, config.num_experts)));
  cos_.resize(t * inv_freq_.size());
  sin_.resize(t * inv_freq_.size());
  positions_.resize(t);
  expert_ids_.resize(grouped_rows);
  expert_weights_.resize(grouped_rows);
  group_offsets_.resize(sz(std::max(1, config.num_experts)) + 1);
  group_cursor_.reserve(sz(std::max(1, config.num_experts)));
  group_token_.resize(grouped_rows);
  group_weight_.resize(grouped_rows);
  grouped_x_.resize(grouped_rows * hidden);
  grouped_act_.resize(grouped_rows * widest_mlp * 2);
  grouped_out_.resize(grouped_rows * hidden);
  moe_out_.resize(t * hidden);
  if (bf16_activations_)
    x_bf16_.resize(std::max({t * hidden, t * q_dim, grouped_rows * hidden, grouped_rows * widest_mlp}));

  expert_load_.n_layers = config.num_hidden_layers;
  expert_load_.n_experts = config.num_experts;
  expert_load_.routed_tokens.assign(sz(config.num_hidden_layers) * sz(config.num_experts), 0);
}

void Qwen3MoeModel::reset_expert_load() {
  std::fill(expert_load_.routed_tokens.begin(), expert_load_.routed_tokens.end(), 0);
}

Status check_forward_chunks(std::span<const ForwardChunk> chunks, const ForwardLimits& limits) {
  int64_t total = 0;
  for (size_t c = 0; c < chunks.size(); ++c) {
    const ForwardChunk& chunk = chunks[c];
    if (chunk.tokens.empty())
      return Status::invalid_argument("chunk " + std::to_string(c) + " has no tokens");
    if (chunk.start_position < 0) return Status::invalid_argument("negative start position");
    total += static_cast<int64_t>(chunk.tokens.size());
    const int64_t end = chunk.start_position + static_cast<int64_t>(chunk.tokens.size());
    if (end > limits.max_context_len) {
      return Status::out_of_range("sequence reaches position " + std::to_string(end) + ", past the model's " +
                                  std::to_string(limits.max_context_len));
    }
    if (static_cast<int64_t>(chunk.block_table.size()) * limits.block_size < end) {
      return Status::invalid_argument("block table of chunk " + std::to_string(c) + " covers fewer than " +
                                      std::to_string(end) + " positions");
    }
    for (int block : chunk.block_table) {
      if (block < 0 || block >= limits.num_kv_blocks) return Status::invalid_argument("block id out of range");
    }
    for (int32_t id : chunk.tokens) {
      if (id < 0 || id >= limits.vocab_size) {
        return Status::invalid_argument("token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                                        std::to_string(limits.vocab_size) + ")");
      }
    }
  }
  if (total > limits.max_step_tokens) {
    return Status::invalid_argument("step has " + std::to_string(total) +
                                    " tokens, more than max_step_tokens " + std::to_string(limits.max_step_tokens));
  }
  return {};
}

void Qwen3MoeModel::convert_to_bf16_scratch(const float* x, size_t n) {
  constexpr int64_t kPerItem = 1 << 14;
  pool_.parallel_for((static_cast<int64_t>(n) + kPerItem - 1) / kPerItem,
                     [&](int64_t begin, int64_t end, int) {
                       const size_t first = sz(begin * kPerItem);
                       const size_t last = std::min(n, sz(end * kPerItem));
                       kernels::convert_activations_bf16(x_bf16_.data() + first, x + first, last - first);
                     });
}

void Qwen3MoeModel::parallel_matmul(float* y, const float* x, const WeightMatrix& w, int n_tokens) {
  const int out_dim = static_cast<int>(w.rows);
  const int in_dim = static_cast<int>(w.cols);
  const int64_t items = (out_dim + kRowsPerItem - 1) / kRowsPerItem;
  const bool bf16_path = use_bf16_activations(w, n_tokens);
  if (bf16_path) convert_to_bf16_scratch(x, sz(n_tokens) * sz(in_dim));
  pool_.parallel_for(items, [&](int64_t begin, int64_t end, int) {
    const int row_begin = static_cast<int>(begin) * kRowsPerItem;
    const int row_end = std::min(out_dim, static_cast<int>(end) * kRowsPerItem);
    if (bf16_path) {
      kernels::matmul_bf16_activations(y, x_bf16_.data(), static_cast<const bf16*>(w.data), n_tokens, in_dim,
                                       out_dim, row_begin, row_end);
    } else {
      kernels::matmul(y, x, w.data, w.dtype, n_tokens, in_dim, out_dim, row_begin, row_end);
    }
  });
}

Status Qwen3MoeModel::forward(std::span<const ForwardChunk> chunks, memory::KvArena& kv,
                              std::vector<float>& logits) {
  AS_RETURN_IF_ERROR(check_forward_chunks(
      chunks, {.block_size = kv.layout().block_size,
               .num_kv_blocks = kv.num_blocks(),
               .max_context_len = config_.max_position_embeddings,
               .vocab_size = config_.vocab_size,
               .max_step_tokens = max_step_tokens_}));
  const int hidden = static_cast<int>(config_.hidden_size);
  const int half_dim = static_cast<int>(inv_freq_.size());

  // Embedding rows and positions of every token of the step, chunk after chunk.
  int n_tokens = 0;
  for (size_t c = 0; c < chunks.size(); ++c) {
    for (size_t i = 0; i < chunks[c].tokens.size(); ++i) {
      const int32_t id = chunks[c].tokens[i];
      const WeightMatrix& embed = weights_.embed_tokens;
      const auto* row =
          static_cast<const std::byte*>(embed.data) + sz(id) * sz(hidden) * kernels::dtype_size(embed.dtype);
      kernels::convert_to_f32(&hidden_[sz(n_tokens) * sz(hidden)], row, embed.dtype, sz(hidden));
      positions_[sz(n_tokens)] = chunks[c].start_position + static_cast<int>(i);
      ++n_tokens;
    }
  }
  kernels::rope_cos_sin(cos_.data(), sin_.data(), positions_.data(), n_tokens, inv_freq_.data(), half_dim,
                        attention_factor_);

  for (int layer = 0; layer < config_.num_hidden_layers; ++layer) {
    const LayerWeights& lw = weights_.layers[sz(layer)];
    kernels::rmsnorm(normed_.data(), hidden_.data(), lw.input_layernorm.data(), n_tokens, hidden,
                     static_cast<float>(config_.rms_norm_eps));
    attention_block(layer, chunks, kv, n_tokens);
    kernels::add_inplace(hidden_.data(), proj_.data(), sz(n_tokens) * sz(hidden));

    kernels::rmsnorm(normed_.data(), hidden_.data(), lw.post_attention_layernorm.data(), n_tokens, hidden,
                     static_cast<float>(config_.rms_norm_eps));
    moe_block(layer, n_tokens);
    kernels::add_inplace(hidden_.data(), moe_out_.data(), sz(n_tokens) * sz(hidden));
  }

  // Final norm and lm_head only for the rows whose logits are wanted.
  int n_rows = 0;
  int token = 0;
  for (const ForwardChunk& chunk : chunks) {
    const int n = static_cast<int>(chunk.tokens.size());
    for (int i = 0; i < n; ++i, ++token) {
      const bool wanted =
          chunk.logits == LogitsWanted::kAll || (chunk.logits == LogitsWanted::kLast && i == n - 1);
      if (!wanted) continue;
      std::memmove(&normed_[sz(n_rows) * sz(hidden)], &hidden_[sz(token) * sz(hidden)],
                   sz(hidden) * sizeof(float));
      ++n_rows;
    }
  }
  if (shard_.comm != nullptr) return gather_logits(n_rows, logits);
  logits.resize(sz(n_rows) * sz(config_.vocab_size));
  if (n_rows == 0) return {};
  kernels::rmsnorm(normed_.data(), normed_.data(), weights_.norm.data(), n_rows, hidden,
                   static_cast<float>(config_.rms_norm_eps));
  parallel_matmul(logits.data(), normed_.data(), weights_.lm_head, n_rows);
  return {};
}

Status Qwen3MoeModel::gather_logits(int n_rows, std::vector<float>& logits) {
  const bool root = shard_.rank == 0;
  const size_t vocab = sz(config_.vocab_size);
  logits.resize(root ? sz(n_rows) * vocab : 0);
  if (n_rows == 0) return {};
  kernels::rmsnorm(normed_.data(), normed_.data(), weights_.norm.data(), n_rows,
                   static_cast<int>(config_.hidden_size), static_cast<float>(config_.rms_norm_eps));
  // Each rank computes its vocabulary rows of lm_head ([n_rows][its rows]); rank 0 gathers the parts
  // (padded to vocab_per_rank rows each) and interleaves them into whole logit rows.
  const size_t slice = sz(shard_.vocab_per_rank);
  const size_t part = sz(n_rows) * slice;
  lm_part_.resize(part);
  parallel_matmul(lm_part_.data(), normed_.data(), weights_.lm_head, n_rows);
  if (root) lm_gathered_.resize(part * sz(shard_.size));
  shard_.comm->gather(std::span<const float>(lm_part_.data(), part),
                      root ? std::span<float>(lm_gathered_) : std::span<float>(), 0);
  if (!root) return {};
  for (int r = 0; r < shard_.size; ++r) {
    const size_t first = sz(r) * slice;
    const size_t cols = std::min(vocab, first + slice) - first;
    for (int row = 0; row < n_rows; ++row) {
      std::memcpy(&logits[sz(row) * vocab + first], &lm_gathered_[sz(r) * part + sz(row) * cols],
                  cols * sizeof(float));
    }
  }
  return {};
}

void Qwen3MoeModel::write_kv(int layer, std::span<const ForwardChunk> chunks, memory::KvArena& kv) {
  const memory::KvLayout& layout = kv.layout();
  const int n_kv_heads = config_.num_key_value_heads;
  const size_t head_dim = sz(config_.head_dim);
  int token = 0;
  for (const ForwardChunk& chunk : chunks) {
    for (size_t i = 0; i < chunk.tokens.size(); ++i, ++token) {
      const int position = chunk.start_position + static_cast<int>(i);
      const int block = chunk.block_table[sz(position / layout.block_size)];
      const int slot = position % layout.block_size;
      float* k_dst = kv.k(block, layer);
      float* v_dst = kv.v(block, layer);
      for (int h = 0; h < n_kv_heads; ++h) {
        const size_t src = (sz(token) * sz(n_kv_heads) + sz(h)) * head_dim;
        std::memcpy(k_dst + layout.row_index(h, slot), &k_[src], head_dim * sizeof(float));
        std::memcpy(v_dst + layout.row_index(h, slot), &v_[src], head_dim * sizeof(float));
      }
    }
  }
}

void Qwen3MoeModel::attention_block(int layer, std::span<const ForwardChunk> chunks, memory::KvArena& kv,
                                    int n_tokens) {
  const LayerWeights& lw = weights_.layers[sz(layer)];
  const int n_heads = config_.num_attention_heads;
  const int n_kv_heads = config_.num_key_value_heads;
  const int head_dim = static_cast<int>(config_.head_dim);
  const float eps = static_cast<float>(config_.rms_norm_eps);

  parallel_matmul(q_.data(), normed_.data(), lw.q_proj, n_tokens);
  parallel_matmul(k_.data(), normed_.data(), lw.k_proj, n_tokens);
  parallel_matmul(v_.data(), normed_.data(), lw.v_proj, n_tokens);
  // Qwen3's per-head norms run over head_dim with one weight shared by all heads, before RoPE.
  kernels::rmsnorm(q_.data(), q_.data(), lw.q_norm.data(), n_tokens * n_heads, head_dim, eps);
  kernels::rmsnorm(k_.data(), k_.data(), lw.k_norm.data(), n_tokens * n_kv_heads, head_dim, eps);
  kernels::apply_rope(q_.data(), n_tokens, n_heads, head_dim, sz(n_heads) * sz(head_dim), cos_.data(),
                      sin_.data());
  kernels::apply_rope(k_.data(), n_tokens, n_kv_heads, head_dim, sz(n_kv_heads) * sz(head_dim), cos_.data(),
                      sin_.data());
  write_kv(layer, chunks, kv);

  // Each chunk's block pointers for this layer, gathered once so attention reads them without lookups.
  chunk_ptr_offset_.assign(chunks.size() + 1, 0);
  for (size_t c = 0; c < chunks.size(); ++c) {
    chunk_ptr_offset_[c + 1] = chunk_ptr_offset_[c] + static_cast<int>(chunks[c].block_table.size());
  }
  k_block_ptrs_.resize(sz(chunk_ptr_offset_.back()));
  v_block_ptrs_.resize(sz(chunk_ptr_offset_.back()));
  for (size_t c = 0; c < chunks.size(); ++c) {
    for (size_t b = 0; b < chunks[c].block_table.size(); ++b) {
      const int block = chunks[c].block_table[b];
      k_block_ptrs_[sz(chunk_ptr_offset_[c]) + b] = kv.k(block, layer);
      v_block_ptrs_[sz(chunk_ptr_offset_[c]) + b] = kv.v(block, layer);
    }
  }

  // Work items are (query tile, kv head): a tile is up to kQueryTile consecutive tokens of one chunk, so a
  // prefill reads each K/V block once per tile and the query heads of a GQA group share the reads.
  constexpr int kQueryTile = 32;
  attention_items_.clear();
  int first_token = 0;
  for (size_t c = 0; c < chunks.size(); ++c) {
    const int n = static_cast<int>(chunks[c].tokens.size());
    for (int t = 0; t < n; t += kQueryTile) {
      attention_items_.push_back({static_cast<int>(c), first_token + t, std::min(kQueryTile, n - t)});
    }
    first_token += n;
  }
  const int group = n_heads / n_kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const int block_size = kv.layout().block_size;
  const int64_t n_items = static_cast<int64_t>(attention_items_.size()) * n_kv_heads;
  pool_.parallel_for(n_items, [&](int64_t begin, int64_t end, int) {
    for (int64_t item = begin; item < end; ++item) {
      const AttentionItem& tile = attention_items_[sz(item / n_kv_heads)];
      const int kv_head = static_cast<int>(item % n_kv_heads);
      const size_t q_offset = sz(tile.first_token) * sz(n_heads) * sz(head_dim);
      const size_t ptrs = sz(chunk_ptr_offset_[sz(tile.chunk)]);
      kernels::paged_attention_prefill(&attn_[q_offset], &q_[q_offset], tile.n_tokens,
                                       positions_[sz(tile.first_token)] + 1, &k_block_ptrs_[ptrs],
                                       &v_block_ptrs_[ptrs], block_size, n_heads, n_kv_heads, head_dim, scale,
                                       kv_head * group, (kv_head + 1) * group);
    }
  });
  parallel_matmul(proj_.data(), attn_.data(), lw.o_proj, n_tokens);
  // Each rank's o_proj saw only its heads' columns: the sum over ranks is the full projection.
  if (shard_.comm != nullptr)
    shard_.comm->all_reduce_sum({proj_.data(), sz(n_tokens) * sz(config_.hidden_size)});
}

void Qwen3MoeModel::moe_block(int layer, int n_tokens) {
  const LayerWeights& lw = weights_.layers[sz(layer)];
  const size_t hidden = sz(config_.hidden_size);

  if (!lw.is_moe) {
    // A dense MLP is a single expert that every token visits with weight 1.
    for (int t = 0; t < n_tokens; ++t) {
      group_token_[sz(t)] = t;
      group_weight_[sz(t)] = 1.0f;
    }
    std::memcpy(grouped_x_.data(), normed_.data(), sz(n_tokens) * hidden * sizeof(float));
    const int offsets[2] = {0, n_tokens};
    const LayerExpert dense[1] = {lw.mlp};
    run_experts(dense, offsets, n_tokens);
  } else {
    const int n_experts = config_.num_experts;
    const int top_k = config_.num_experts_per_tok;
    parallel_matmul(router_logits_.data(), normed_.data(), lw.router, n_tokens);
    kernels::moe_route(expert_ids_.data(), expert_weights_.data(), router_logits_.data(), n_tokens, n_experts,
                       top_k, config_.norm_topk_prob);

    // Counting sort of (token, expert) pairs by expert, so each expert's rows are contiguous.
    std::fill(group_offsets_.begin(), group_offsets_.begin() + n_experts + 1, 0);
    const int n_pairs = n_tokens * top_k;
    for (int p = 0; p < n_pairs; ++p) ++group_offsets_[sz(expert_ids_[sz(p)]) + 1];
    for (int e = 0; e < n_experts; ++e) {
      expert_load_.routed_tokens[sz(layer) * sz(n_experts) + sz(e)] += group_offsets_[sz(e) + 1];
      // Expert parallel: pairs routed to another rank's experts get no rows here.
      if (!shard_.owns_expert(e)) group_offsets_[sz(e) + 1] = 0;
      group_offsets_[sz(e) + 1] += group_offsets_[sz(e)];
    }
    group_cursor_.assign(group_offsets_.begin(), group_offsets_.begin() + n_experts);
    for (int p = 0; p < n_pairs; ++p) {
      if (!shard_.owns_expert(expert_ids_[sz(p)])) continue;
      const int row = group_cursor_[sz(expert_ids_[sz(p)])]++;
      group_token_[sz(row)] = p / top_k;
      group_weight_[sz(row)] = expert_weights_[sz(p)];
      std::memcpy(&grouped_x_[sz(row) * hidden], &normed_[sz(p / top_k) * hidden], hidden * sizeof(float));
    }
    run_experts(lw.experts, std::span<const int>(group_offsets_.data(), sz(n_experts) + 1),
                group_offsets_[sz(n_experts)]);
  }

  // Weighted scatter back to tokens; threads take disjoint column ranges so no two write the same float.
  const int n_rows = lw.is_moe ? group_offsets_[sz(config_.num_experts)] : n_tokens;
  std::fill(moe_out_.begin(), moe_out_.begin() + static_cast<std::ptrdiff_t>(sz(n_tokens) * hidden), 0.0f);
  const int64_t col_items = static_cast<int64_t>((hidden + 63) / 64);
  pool_.parallel_for(col_items, [&](int64_t begin, int64_t end, int) {
    const size_t c0 = sz(begin) * 64;
    const size_t c1 = std::min(hidden, sz(end) * 64);
    for (int row = 0; row < n_rows; ++row) {
      kernels::axpy(&moe_out_[sz(group_token_[sz(row)]) * hidden + c0], group_weight_[sz(row)],
                    &grouped_out_[sz(row) * hidden + c0], c1 - c0);
    }
  });
  // Each rank holds a slice of every expert's intermediate dim (TP) or whole experts (EP): either way its
  // output is a partial sum of the layer's.
  if (shard_.comm != nullptr) shard_.comm->all_reduce_sum({moe_out_.data(), sz(n_tokens) * hidden});
}

void Qwen3MoeModel::run_experts(std::span<const LayerExpert> experts, std::span<const int> group_offsets,
                                int n_rows) {
  const int hidden = static_cast<int>(config_.hidden_size);
  // Phase 1: gate and up rows of every active expert, then SwiGLU on those columns. One flat list of work
  // items over (expert, row range) keeps both threads busy even when one expert has most tokens.
  std::vector<ExpertItem>& items = expert_items_;
  auto build_items = [&](auto rows_of) {
    items.clear();
    for (size_t e = 0; e < experts.size(); ++e) {
      if (group_offsets[e + 1] == group_offsets[e]) continue;
      const int rows = rows_of(experts[e]);
      for (int r = 0; r < rows; r += kRowsPerItem) {
        items.push_back({static_cast<int>(e), r, std::min(rows, r + kRowsPerItem)});
      }
    }
  };
  const int inter = static_cast<int>(experts[0].gate_proj.rows);
  float* gate_out = grouped_act_.data();
  float* up_out = grouped_act_.data() + sz(n_rows) * sz(inter);
  const bool bf16_path = bf16_activations_ && experts[0].gate_proj.dtype == kernels::DType::kBF16;
  if (bf16_path) convert_to_bf16_scratch(grouped_x_.data(), sz(n_rows) * sz(hidden));
  // Experts with few rows stay on the f32 path (memory-bound there, nothing to gain from BF16 math).
  auto expert_matmul = [&](float* y, const float* x, size_t x_offset, const WeightMatrix& w, int n,
                           int in_dim, int out_dim, int row_begin, int row_end) {
    if (bf16_path && n >= kBf16ActivationMinTokens) {
      kernels::matmul_bf16_activations(y, x_bf16_.data() + x_offset, static_cast<const bf16*>(w.data), n,
                                       in_dim, out_dim, row_begin, row_end);
    } else {
      kernels::matmul(y, x, w.data, w.dtype, n, in_dim, out_dim, row_begin, row_end);
    }
  };
  build_items([](const LayerExpert& e) { return static_cast<int>(e.gate_proj.rows); });
  pool_.parallel_for(static_cast<int64_t>(items.size()), [&](int64_t begin, int64_t end, int) {
    for (int64_t i = begin; i < end; ++i) {
      const ExpertItem& it = items[sz(i)];
      const LayerExpert& ex = experts[sz(it.expert)];
      const int first = group_offsets[sz(it.expert)];
      const int n = group_offsets[sz(it.expert) + 1] - first;
      float* g = gate_out + sz(first) * sz(inter);
      float* u = up_out + sz(first) * sz(inter);
      const float* x = &grouped_x_[sz(first) * sz(hidden)];
      const size_t x_offset = sz(first) * sz(hidden);
      expert_matmul(g, x, x_offset, ex.gate_proj, n, hidden, inter, it.row_begin, it.row_end);
      expert_matmul(u, x, x_offset, ex.up_proj, n, hidden, inter, it.row_begin, it.row_end);
      for (int t = 0; t < n; ++t) {
        const size_t off = sz(t) * sz(inter) + sz(it.row_begin);
        kernels::silu_mul(g + off, g + off, u + off, sz(it.row_end - it.row_begin));
      }
    }
  });
  // Phase 2: down projections back to hidden size.
  if (bf16_path) convert_to_bf16_scratch(gate_out, sz(n_rows) * sz(inter));
  build_items([](const LayerExpert& e) { return static_cast<int>(e.down_proj.rows); });
  pool_.parallel_for(static_cast<int64_t>(items.size()), [&](int64_t begin, int64_t end, int) {
    for (int64_t i = begin; i < end; ++i) {
      const ExpertItem& it = items[sz(i)];
      const LayerExpert& ex = experts[sz(it.expert)];
      const int first = group_offsets[sz(it.expert)];
      const int n = group_offsets[sz(it.expert) + 1] - first;
      expert_matmul(&grouped_out_[sz(first) * sz(hidden)], gate_out + sz(first) * sz(inter),
                    sz(first) * sz(inter), ex.down_proj, n, inter, hidden, it.row_begin, it.row_end);
    }
  });
}

}  // namespace agentserve::engine
