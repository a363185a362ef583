// BackendModel: the Qwen3-MoE forward pass (the same one as qwen3_moe_model.h) written only against the
// Backend interface, so it runs unchanged on the CPU backend and on a GPU. At creation it uploads the
// weights into the backend once (MoE experts stacked per layer, so a GPU can run them as grouped GEMMs),
// creates its own paged KV cache there, and sizes every per-step buffer for max_step_tokens; a step then
// allocates nothing, uploads one packed array of ids and tables, and downloads only what the caller asks
// for (logits rows, or greedy tokens chosen on the backend).
//
// Contract: ForwardChunk and the logits layout are those of Qwen3MoeModel::forward; block ids name blocks
// of this model's kv_cache(). It never decides which blocks a sequence owns and never keeps per-sequence
// state. Single rank only (no Communicator). Not thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "base/status.h"
#include "engine/backend.h"
#include "engine/model_config.h"
#include "engine/model_weights.h"
#include "engine/qwen3_moe_model.h"

namespace agentserve::engine {

struct BackendModelOptions {
  int max_step_tokens = 256;
  int num_kv_blocks = 256;
  int block_size = 16;
  // Longest sequence a chunk may reach; 0 means the config's max_position_embeddings.
  int64_t max_context_len = 0;
  // Most chunks in one step; 0 means max_step_tokens. Bounds the block-table upload buffer.
  int max_chunks = 0;
  // Logit rows computed per lm_head pass: the logits scratch holds this many vocab-wide rows.
  int logits_rows_per_pass = 64;
};

// The largest ops BackendModel issues for `config` with `options` (0 fields resolved as create() does):
// what it reserves in its backend. The matmul width is the widest matmul input, never the vocab.
OpLimits backend_op_limits(const ModelConfig& config, const BackendModelOptions& options);

class BackendModel {
  struct PrivateTag {
    explicit PrivateTag() = default;
  };

 public:
  // Uploads `weights` (which may be released afterwards) into `backend`, which must outlive the model.
  // Fails with InvalidArgument for bad options or mixed-dtype experts, ResourceExhausted when the backend
  // has no room.
  static Result<std::unique_ptr<BackendModel>> create(Backend& backend, const ModelConfig& config,
                                                      const ModelWeights& weights,
                                                      const BackendModelOptions& options);

  // For create() only (PrivateTag keeps it so); a model is usable only after create() has uploaded weights.
  BackendModel(PrivateTag, Backend& backend, const ModelConfig& config, const BackendModelOptions& options)
      : backend_(backend), config_(config), options_(options) {}

  const ModelConfig& config() const { return config_; }
  Backend& backend() { return backend_; }
  KvCache& kv_cache() { return *kv_; }
  int max_step_tokens() const { return options_.max_step_tokens; }
  // Bytes of weights uploaded into the backend.
  size_t weight_bytes() const { return weight_bytes_; }

  // As Qwen3MoeModel::forward: writes the chunks' K/V into kv_cache() and fills `logits` with one
  // vocab-wide row per wanted position, in chunk order. InvalidArgument / OutOfRange (nothing written) for
  // bad chunks; a backend failure comes back as its status.
  Status forward(std::span<const ForwardChunk> chunks, std::vector<float>& logits);

  // The same step, but each wanted row's argmax is taken on the backend and only the token ids come back.
  Status forward_greedy(std::span<const ForwardChunk> chunks, std::vector<int32_t>& tokens);

 private:
  struct Layer {
    const float* input_layernorm = nullptr;
    const float* post_attention_layernorm = nullptr;
    const float* q_norm = nullptr;
    const float* k_norm = nullptr;
    WeightMatrix q_proj, k_proj, v_proj, o_proj, router;
    bool is_moe = false;
    ExpertWeights experts;  // the dense MLP as one expert when !is_moe
  };

  Status upload_weights(const ModelWeights& weights);
  Result<WeightMatrix> upload_matrix(const WeightMatrix& w);
  Result<const float*> upload_vector(std::span<const float> v);
  Result<ExpertWeights> upload_experts(std::span<const LayerExpert> experts);
  Status allocate_scratch();
  Result<float*> allocate_floats(size_t n);

  Status check_chunks(std::span<const ForwardChunk> chunks) const;
  // Packs the step's ids, positions, slots, chunk offsets, block tables and wanted rows into one upload
  // and points batch_ at them; returns the number of wanted rows.
  int pack_step(std::span<const ForwardChunk> chunks);
  // Runs every layer over the chunks and leaves the final-normed wanted rows in normed_; returns their count.
  Result<int> run_layers(std::span<const ForwardChunk> chunks);
  void attention(const Layer& layer, int index, int n_tokens);
  void mlp(const Layer& layer, int n_tokens);

  Backend& backend_;
  ModelConfig config_;
  BackendModelOptions options_;
  std::vector<DeviceBuffer> storage_;  // every weight and scratch buffer
  size_t weight_bytes_ = 0;
  std::unique_ptr<KvCache> kv_;

  WeightMatrix embed_tokens_, lm_head_;
  const float* norm_ = nullptr;
  std::vector<Layer> layers_;
  const float* inv_freq_ = nullptr;
  int half_dim_ = 0;
  float attention_factor_ = 1.0f;
  int max_blocks_per_chunk_ = 0;

  // Per-step buffers in the backend, sized at creation.
  float *hidden_ = nullptr, *normed_ = nullptr, *q_ = nullptr, *k_ = nullptr, *v_ = nullptr, *attn_ = nullptr,
        *proj_ = nullptr, *router_logits_ = nullptr, *expert_weights_ = nullptr, *mlp_out_ = nullptr,
        *cos_ = nullptr, *sin_ = nullptr, *logits_ = nullptr, *dense_weights_ = nullptr;
  int32_t *expert_ids_ = nullptr, *dense_ids_ = nullptr, *step_ints_ = nullptr, *greedy_tokens_ = nullptr;
  void* moe_workspace_ = nullptr;

  // The step's int32 arrays, packed on the host and uploaded in one copy into step_ints_.
  struct StepArrays {
    size_t ids, positions, slots, query_start, context_len, table_start, tables, wanted_rows;
  };
  std::vector<int32_t> host_ints_;
  StepArrays offsets_{};
  AttentionBatch batch_{};
  std::vector<float> host_logits_;
};

}  // namespace agentserve::engine
