#include "engine/model_shard.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>

namespace agentserve::engine {
namespace {

size_t sz(int64_t v) {
  return static_cast<size_t>(v);
}

WeightMatrix row_slice(const WeightMatrix& w, int64_t r0, int64_t r1) {
  WeightMatrix out = w;
  out.data = static_cast<const std::byte*>(w.data) + sz(r0) * sz(w.cols) * kernels::dtype_size(w.dtype);
  out.rows = r1 - r0;
  return out;
}

// Columns [c0, c1) of every row, copied into a buffer that `storage` keeps alive.
WeightMatrix column_slice(const WeightMatrix& w, int64_t c0, int64_t c1, ModelWeights& out) {
  const size_t elem = kernels::dtype_size(w.dtype);
  const size_t row_bytes = sz(c1 - c0) * elem;
  auto buffer = std::make_shared<std::vector<std::byte>>(sz(w.rows) * row_bytes);
  const auto* src = static_cast<const std::byte*>(w.data);
  for (int64_t r = 0; r < w.rows; ++r) {
    std::memcpy(buffer->data() + sz(r) * row_bytes, src + (sz(r) * sz(w.cols) + sz(c0)) * elem, row_bytes);
  }
  WeightMatrix slice = w;
  slice.data = buffer->data();
  slice.cols = c1 - c0;
  out.converted_bytes += buffer->size();
  out.storage.push_back(std::move(buffer));
  return slice;
}

// An MLP split along its intermediate dimension: gate/up rows and down columns [i0, i1).
LayerExpert split_mlp(const LayerExpert& mlp, int64_t i0, int64_t i1, ModelWeights& out) {
  return {.gate_proj = row_slice(mlp.gate_proj, i0, i1),
          .up_proj = row_slice(mlp.up_proj, i0, i1),
          .down_proj = column_slice(mlp.down_proj, i0, i1, out)};
}

}  // namespace

Status validate_parallel_layout(const ModelConfig& config, const ParallelLayout& layout) {
  const int tp = layout.tensor_parallel_size;
  if (tp < 1) return Status::invalid_argument("tensor_parallel_size must be at least 1");
  if (tp == 1) return {};
  auto refuse = [&](const std::string& what, int64_t value) {
    return Status::invalid_argument("tensor_parallel_size " + std::to_string(tp) + " does not divide " +
                                    what + " (" + std::to_string(value) + ")");
  };
  if (config.num_attention_heads % tp != 0) return refuse("num_attention_heads", config.num_attention_heads);
  const int kv = config.num_key_value_heads;
  if (kv % tp != 0 && tp % kv != 0) {
    return Status::invalid_argument("tensor_parallel_size " + std::to_string(tp) +
                                    " must divide num_key_value_heads (" + std::to_string(kv) +
                                    ") or be a multiple of it");
  }
  if (config.has_dense_layers() && config.intermediate_size % tp != 0)
    return refuse("intermediate_size", config.intermediate_size);
  if (config.num_experts > 0) {
    if (layout.expert_parallel) {
      if (config.num_experts < tp) {
        return Status::invalid_argument("expert parallel over " + std::to_string(tp) +
                                        " ranks needs at least " + std::to_string(tp) +
                                        " experts; the model has " + std::to_string(config.num_experts));
      }
    } else if (config.moe_intermediate_size % tp != 0) {
      return refuse("moe_intermediate_size", config.moe_intermediate_size);
    }
  }
  return {};
}

ModelShard plan_shard(const ModelConfig& config, const ParallelLayout& layout, int rank) {
  ModelShard s;
  const int tp = layout.tensor_parallel_size;
  s.rank = rank;
  s.size = tp;
  s.expert_parallel = layout.expert_parallel;
  const int heads = config.num_attention_heads / tp;
  s.heads_begin = rank * heads;
  s.heads_end = s.heads_begin + heads;
  const int kv = config.num_key_value_heads;
  if (kv % tp == 0) {
    s.kv_heads_begin = rank * (kv / tp);
    s.kv_heads_end = s.kv_heads_begin + kv / tp;
  } else {
    // More ranks than kv heads: tp / kv consecutive ranks share (replicate) one kv head, and their q heads
    // are exactly that head's GQA group split tp / kv ways.
    s.kv_heads_begin = rank / (tp / kv);
    s.kv_heads_end = s.kv_heads_begin + 1;
  }
  if (layout.expert_parallel && config.num_experts > 0) {
    s.experts_begin = static_cast<int>(static_cast<int64_t>(config.num_experts) * rank / tp);
    s.experts_end = static_cast<int>(static_cast<int64_t>(config.num_experts) * (rank + 1) / tp);
  } else {
    s.experts_begin = 0;
    s.experts_end = config.num_experts;
  }
  s.vocab_per_rank = (config.vocab_size + tp - 1) / tp;
  return s;
}

ModelConfig shard_config(const ModelConfig& config, const ModelShard& shard) {
  ModelConfig c = config;
  if (shard.size == 1) return c;
  c.num_attention_heads = shard.heads_end - shard.heads_begin;
  c.num_key_value_heads = shard.kv_heads_end - shard.kv_heads_begin;
  if (!shard.expert_parallel) c.moe_intermediate_size = config.moe_intermediate_size / shard.size;
  c.intermediate_size = config.intermediate_size / shard.size;
  return c;
}

Result<ModelWeights> shard_weights(const ModelWeights& weights, const ModelConfig& config,
                                   const ModelShard& shard) {
  ModelWeights out;
  out.storage = weights.storage;
  out.converted_bytes = 0;
  out.embed_tokens = weights.embed_tokens;
  out.norm = weights.norm;
  const int64_t v0 = std::min<int64_t>(config.vocab_size, shard.vocab_per_rank * shard.rank);
  const int64_t v1 = std::min<int64_t>(config.vocab_size, v0 + shard.vocab_per_rank);
  if (v1 <= v0) return Status::invalid_argument("vocabulary too small to split over the ranks");
  out.lm_head = row_slice(weights.lm_head, v0, v1);

  const int64_t head_dim = config.head_dim;
  const int64_t q0 = shard.heads_begin * head_dim, q1 = shard.heads_end * head_dim;
  const int64_t kv0 = shard.kv_heads_begin * head_dim, kv1 = shard.kv_heads_end * head_dim;
  const int64_t dense_width = config.intermediate_size / shard.size;
  const int64_t moe_width = config.moe_intermediate_size / shard.size;
  out.layers.reserve(weights.layers.size());
  for (const LayerWeights& lw : weights.layers) {
    LayerWeights s;
    s.input_layernorm = lw.input_layernorm;
    s.post_attention_layernorm = lw.post_attention_layernorm;
    s.q_norm = lw.q_norm;
    s.k_norm = lw.k_norm;
    s.q_proj = row_slice(lw.q_proj, q0, q1);
    s.k_proj = row_slice(lw.k_proj, kv0, kv1);
    s.v_proj = row_slice(lw.v_proj, kv0, kv1);
    s.o_proj = column_slice(lw.o_proj, q0, q1, out);
    s.is_moe = lw.is_moe;
    if (lw.is_moe) {
      s.router = lw.router;
      if (shard.expert_parallel) {
        // Experts of other ranks stay views the forward never reads: no copy, no extra memory.
        s.experts = lw.experts;
      } else {
        s.experts.reserve(lw.experts.size());
        const int64_t i0 = moe_width * shard.rank;
        for (const LayerExpert& e : lw.experts) s.experts.push_back(split_mlp(e, i0, i0 + moe_width, out));
      }
    } else {
      const int64_t i0 = dense_width * shard.rank;
      s.mlp = split_mlp(lw.mlp, i0, i0 + dense_width, out);
    }
    out.layers.push_back(std::move(s));
  }
  return out;
}

}  // namespace agentserve::engine
