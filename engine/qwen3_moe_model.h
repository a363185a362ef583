// Qwen3MoeModel: the forward pass of Hugging Face's Qwen3MoeForCausalLM (and dense Qwen3 layers) on the
// CPU backend, over a batch of sequence chunks whose K/V live in paged blocks.
//
// One call runs every new token of every sequence in the batch through all layers:
//   embed -> per layer: RMSNorm -> q/k/v -> per-head q/k RMSNorm -> RoPE (YaRN) -> write K/V into the
//   sequence's blocks -> causal GQA attention over the blocks (online softmax) -> o_proj -> residual ->
//   RMSNorm -> MoE (route, group tokens by expert, SwiGLU each active expert once, weighted scatter) or a
//   dense MLP -> residual; final RMSNorm and lm_head for the rows that want logits.
// Scratch is sized once for `max_step_tokens`; a step allocates nothing but the logits it returns. The
// model never decides which blocks a sequence owns (the BlockManager does) and never samples.
//
// The same class runs one rank of a tensor/expert-parallel group (model_shard.h, parallel_model.h): given
// a shard's config and weights and a Communicator, it all-reduces after o_proj and after the MLP, runs
// only the experts the shard owns, and gathers the vocabulary-split logits to rank 0. The default shard
// is the whole model, with no collective on the path.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "base/bf16.h"
#include "base/status.h"
#include "base/thread_pool.h"
#include "engine/model_config.h"
#include "engine/model_shard.h"
#include "engine/model_weights.h"
#include "memory/kv_arena.h"

namespace agentserve::engine {

enum class LogitsWanted : uint8_t { kNone, kLast, kAll };

// The tokens of one sequence that this step computes. block_table must cover positions
// [0, start_position + tokens.size()); the KV of positions below start_position is already in the blocks.
struct ForwardChunk {
  std::span<const int32_t> tokens;
  int start_position = 0;
  std::span<const int> block_table;
  LogitsWanted logits = LogitsWanted::kLast;
};

// What a forward pass can take: the checks every model runs on a step's chunks before touching anything.
struct ForwardLimits {
  int block_size = 16;
  int64_t num_kv_blocks = 0;
  int64_t max_context_len = 0;  // positions a sequence may reach
  int64_t vocab_size = 0;
  int64_t max_step_tokens = 0;
};

// InvalidArgument (OutOfRange for a sequence past max_context_len) naming the first problem: an empty
// chunk, a negative start, a block table too short for its positions or holding an id outside the pool, a
// token id outside the vocabulary, or more tokens in all than max_step_tokens.
Status check_forward_chunks(std::span<const ForwardChunk> chunks, const ForwardLimits& limits);

// Tokens routed to each expert, per layer, summed over all steps since the last reset: the source of the
// per-expert load metrics and the MoE imbalance (max / mean).
struct ExpertLoad {
  int n_layers = 0;
  int n_experts = 0;
  std::vector<int64_t> routed_tokens;  // [n_layers][n_experts]

  int64_t at(int layer, int expert) const {
    return routed_tokens[static_cast<size_t>(layer) * n_experts + expert];
  }
  // max / mean over the experts of one layer; 0 when the layer saw no token.
  double imbalance(int layer) const;
};

class Qwen3MoeModel {
 public:
  // `weights` and `pool` must outlive the model. max_step_tokens bounds the tokens of one forward call.
  // bf16_activations: for BF16 weights and at least kBf16ActivationMinTokens rows, round activations to
  // BF16 and use BF16 dot products (about twice the f32 FMA rate on CPUs with AVX512_BF16, at a relative
  // rounding of 2^-8 per activation). Off by default: the golden tests pin f32 arithmetic.
  // For one rank of a parallel group, config and weights are shard_config / shard_weights of `shard`.
  Qwen3MoeModel(const ModelConfig& config, const ModelWeights& weights, ThreadPool& pool, int max_step_tokens,
                bool bf16_activations = false, const ModelShard& shard = {});

  static constexpr int kBf16ActivationMinTokens = 8;

  const ModelConfig& config() const { return config_; }
  int max_step_tokens() const { return max_step_tokens_; }
  int64_t vocab_size() const { return config_.vocab_size; }

  // Computes the chunks, writing their K/V into `kv`, and fills `logits` with one row of vocab_size floats
  // per wanted position, in chunk order (kLast: the chunk's last token; kAll: every token). Fails with
  // InvalidArgument (nothing written) when the chunks exceed max_step_tokens, a token id is out of range or
  // a block table is too short. On a parallel group every rank calls forward with the same chunks; rank 0
  // gets the logits, the other ranks an empty vector.
  Status forward(std::span<const ForwardChunk> chunks, memory::KvArena& kv, std::vector<float>& logits);

  const ExpertLoad& expert_load() const { return expert_load_; }
  void reset_expert_load();

 private:
  void attention_block(int layer, std::span<const ForwardChunk> chunks, memory::KvArena& kv, int n_tokens);
  void write_kv(int layer, std::span<const ForwardChunk> chunks, memory::KvArena& kv);
  void moe_block(int layer, int n_tokens);
  // Parallel final step: final norm, this rank's vocabulary rows of lm_head, gather to rank 0.
  Status gather_logits(int n_rows, std::vector<float>& logits);
  // SwiGLU experts over tokens already grouped by expert (a dense MLP is one expert holding every token).
  void run_experts(std::span<const LayerExpert> experts, std::span<const int> group_offsets,
                   int hidden_in_rows);
  void parallel_matmul(float* y, const float* x, const WeightMatrix& w, int n_tokens);
  bool use_bf16_activations(const WeightMatrix& w, int n_tokens) const {
    return bf16_activations_ && w.dtype == kernels::DType::kBF16 && n_tokens >= kBf16ActivationMinTokens;
  }
  // Rounds n floats of x into x_bf16_ (threaded), for the BF16-activation matmuls that follow.
  void convert_to_bf16_scratch(const float* x, size_t n);

  ModelConfig config_;
  const ModelWeights& weights_;
  ThreadPool& pool_;
  int max_step_tokens_;
  bool bf16_activations_;
  ModelShard shard_;
  std::vector<float> inv_freq_;
  float attention_factor_ = 1.0f;
  ExpertLoad expert_load_;

  // Per-step buffers, sized for max_step_tokens at construction.
  std::vector<float> hidden_, normed_, q_, k_, v_, attn_, proj_, router_logits_, cos_, sin_;
  std::vector<int32_t> positions_;
  std::vector<int32_t> expert_ids_;    // [n_tokens][top_k]
  std::vector<float> expert_weights_;  // [n_tokens][top_k]
  std::vector<int> group_offsets_;     // [n_experts + 1] into the grouped rows
  std::vector<int> group_cursor_;      // [n_experts] next grouped row to fill while sorting
  std::vector<int> group_token_;       // grouped row -> token
  std::vector<float> group_weight_;    // grouped row -> routing weight
  std::vector<float> grouped_x_, grouped_act_, grouped_out_, moe_out_;
  std::vector<const float*> k_block_ptrs_, v_block_ptrs_;  // per chunk: its table's blocks for one layer
  std::vector<int> chunk_ptr_offset_;
  struct AttentionItem {
    int chunk, first_token, n_tokens;
  };
  std::vector<AttentionItem> attention_items_;
  struct ExpertItem {
    int expert, row_begin, row_end;
  };
  std::vector<ExpertItem> expert_items_;
  std::vector<float> lm_part_, lm_gathered_;  // parallel only: this rank's logit columns; rank 0's gather
  std::vector<agentserve::bf16> x_bf16_;      // activations rounded for the BF16 path; empty when it is off
};

}  // namespace agentserve::engine
