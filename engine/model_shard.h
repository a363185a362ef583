// ModelShard: which part of a Qwen3 model one rank of a tensor/expert-parallel group computes, and the
// config and weights of that part. Megatron-style splits, so that each layer needs one all-reduce after
// attention and one after the MLP:
//   attention: q heads [heads_begin, heads_end) and their kv heads (q/k/v rows sliced, o_proj columns
//     sliced); when there are more ranks than kv heads, each kv head is replicated on the ranks whose q
//     heads use it (tp must then be a multiple of kv_heads);
//   MoE, tensor parallel: every expert's intermediate dimension is split (gate/up rows, down columns);
//   MoE, expert parallel: experts [experts_begin, experts_end) whole on this rank, the router replicated,
//     tokens routed elsewhere skipped; the partial outputs are combined by the same all-reduce;
//   dense MLP layers: intermediate dimension split in both modes;
//   embedding replicated; lm_head split by vocabulary rows, logits gathered to rank 0.
// Row slices are views into the checkpoint; column slices (o_proj, down_proj) are copied once into owned
// buffers, since the kernels take dense row-major matrices. This module plans and slices; it never runs
// a forward pass or talks to other ranks.
#pragma once

#include <climits>
#include <cstdint>

#include "base/status.h"
#include "engine/communicator.h"
#include "engine/model_config.h"
#include "engine/model_weights.h"

namespace agentserve::engine {

struct ParallelLayout {
  int tensor_parallel_size = 1;  // ranks in the group
  bool expert_parallel = false;  // MoE experts split across the ranks instead of their intermediate dim
  bool operator==(const ParallelLayout&) const = default;
};

// InvalidArgument, naming the size that does not divide, when the config cannot be split this way.
Status validate_parallel_layout(const ModelConfig& config, const ParallelLayout& layout);

// The defaults describe the whole model on one rank.
struct ModelShard {
  int rank = 0;
  int size = 1;
  bool expert_parallel = false;
  int heads_begin = 0, heads_end = INT_MAX;
  int kv_heads_begin = 0, kv_heads_end = INT_MAX;
  int experts_begin = 0, experts_end = INT_MAX;  // experts whose tokens this rank runs
  int64_t vocab_per_rank = 0;                    // lm_head rows per rank; 0 = the whole vocabulary
  Communicator* comm = nullptr;                  // null on a single rank: no collectives

  bool owns_expert(int e) const { return e >= experts_begin && e < experts_end; }
};

// Rank `rank` of `layout`; the layout must have passed validate_parallel_layout.
ModelShard plan_shard(const ModelConfig& config, const ParallelLayout& layout, int rank);

// The config the shard's forward runs with: its own head counts and intermediate sizes (the rest as
// `config`).
ModelConfig shard_config(const ModelConfig& config, const ModelShard& shard);

// The shard's weights (see the header paragraph). The result keeps `weights`' storage alive.
Result<ModelWeights> shard_weights(const ModelWeights& weights, const ModelConfig& config,
                                   const ModelShard& shard);

}  // namespace agentserve::engine
