#include "engine/backend_model.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>

#include "kernels/cpu/rope.h"

namespace agentserve::engine {
namespace {

size_t sz(int64_t v) {
  return static_cast<size_t>(v);
}

size_t matrix_bytes(const WeightMatrix& w) {
  return sz(w.rows) * sz(w.cols) * kernels::dtype_size(w.dtype);
}

// The longest context the model serves: the option, or the model's own limit when 0 or beyond it.
int64_t resolved_max_context(const ModelConfig& config, int64_t max_context_len) {
  return max_context_len == 0 || max_context_len > config.max_position_embeddings ? config.max_position_embeddings
                                                                                   : max_context_len;
}

}  // namespace

OpLimits backend_op_limits(const ModelConfig& config, const BackendModelOptions& options) {
  const int64_t max_context = resolved_max_context(config, options.max_context_len);
  // Every matmul input is the normed hidden state (q/k/v, router, lm_head) or the attention output
  // (o_proj). The lm_head's vocab-wide rows land in the logits buffer, and the experts' inter-wide rows
  // stay inside moe_experts' workspace, so neither widens the matmul scratch.
  const int64_t q_dim = int64_t{config.num_attention_heads} * config.head_dim;
  return {.max_tokens = options.max_step_tokens,
          .max_width = static_cast<int>(std::max(config.hidden_size, q_dim)),
          .n_heads = config.num_attention_heads,
          .head_dim = static_cast<int>(config.head_dim),
          .max_context_len = static_cast<int>(max_context)};
}

Result<std::unique_ptr<BackendModel>> BackendModel::create(Backend& backend, const ModelConfig& config,
                                                           const ModelWeights& weights,
                                                           const BackendModelOptions& options) {
  if (options.max_step_tokens < 1 || options.num_kv_blocks < 1 || options.block_size < 1 ||
      options.logits_rows_per_pass < 1 || options.max_context_len < 0 || options.max_chunks < 0) {
    return Status::invalid_argument("backend model options must be positive");
  }
  if (weights.layers.size() != sz(config.num_hidden_layers)) {
    return Status::invalid_argument("weights have " + std::to_string(weights.layers.size()) +
                                    " layers, the config " + std::to_string(config.num_hidden_layers));
  }
  BackendModelOptions resolved = options;
  resolved.max_context_len = resolved_max_context(config, options.max_context_len);
  if (resolved.max_chunks == 0 || resolved.max_chunks > resolved.max_step_tokens)
    resolved.max_chunks = resolved.max_step_tokens;
  resolved.logits_rows_per_pass = std::min(resolved.logits_rows_per_pass, resolved.max_step_tokens);

  auto model = std::make_unique<BackendModel>(PrivateTag{}, backend, config, resolved);
  AS_RETURN_IF_ERROR(model->upload_weights(weights));
  AS_RETURN_IF_ERROR(model->allocate_scratch());
  const KvCacheShape shape{.n_layers = config.num_hidden_layers,
                           .n_kv_heads = config.num_key_value_heads,
                           .head_dim = static_cast<int>(config.head_dim),
                           .block_size = resolved.block_size,
                           .num_blocks = resolved.num_kv_blocks};
  AS_ASSIGN_OR_RETURN(model->kv_, backend.create_kv_cache(shape));
  AS_RETURN_IF_ERROR(backend.synchronize());
  return model;
}

Result<WeightMatrix> BackendModel::upload_matrix(const WeightMatrix& w) {
  const size_t bytes = matrix_bytes(w);
  AS_ASSIGN_OR_RETURN(DeviceBuffer buffer, backend_.allocate(bytes));
  backend_.upload(buffer.data(), w.data, bytes);
  WeightMatrix out = w;
  out.data = buffer.data();
  weight_bytes_ += bytes;
  storage_.push_back(std::move(buffer));
  return out;
}

Result<const float*> BackendModel::upload_vector(std::span<const float> v) {
  AS_ASSIGN_OR_RETURN(DeviceBuffer buffer, backend_.allocate(v.size_bytes()));
  backend_.upload(buffer.data(), v.data(), v.size_bytes());
  const float* data = buffer.as<const float>();
  weight_bytes_ += v.size_bytes();
  storage_.push_back(std::move(buffer));
  return data;
}

Result<ExpertWeights> BackendModel::upload_experts(std::span<const LayerExpert> experts) {
  const LayerExpert& first = experts[0];
  ExpertWeights out{.dtype = first.gate_proj.dtype,
                    .n_experts = static_cast<int>(experts.size()),
                    .hidden = static_cast<int>(first.gate_proj.cols),
                    .inter = static_cast<int>(first.gate_proj.rows)};
  for (const LayerExpert& e : experts) {
    for (const WeightMatrix* w : {&e.gate_proj, &e.up_proj, &e.down_proj}) {
      if (w->dtype != out.dtype) return Status::invalid_argument("experts of one layer mix weight dtypes");
    }
  }
  // Each projection of all experts in one buffer: expert e at e * (inter * hidden) elements.
  auto stack = [&](auto member) -> Result<const void*> {
    const size_t each = matrix_bytes(first.*member);
    AS_ASSIGN_OR_RETURN(DeviceBuffer buffer, backend_.allocate(each * experts.size()));
    for (size_t e = 0; e < experts.size(); ++e)
      backend_.upload(buffer.as<std::byte>() + e * each, (experts[e].*member).data, each);
    const void* data = buffer.data();
    weight_bytes_ += each * experts.size();
    storage_.push_back(std::move(buffer));
    return data;
  };
  AS_ASSIGN_OR_RETURN(out.gate, stack(&LayerExpert::gate_proj));
  AS_ASSIGN_OR_RETURN(out.up, stack(&LayerExpert::up_proj));
  AS_ASSIGN_OR_RETURN(out.down, stack(&LayerExpert::down_proj));
  return out;
}

Status BackendModel::upload_weights(const ModelWeights& weights) {
  AS_ASSIGN_OR_RETURN(embed_tokens_, upload_matrix(weights.embed_tokens));
  // Tied embeddings share one copy in the backend too.
  if (weights.lm_head.data == weights.embed_tokens.data) {
    lm_head_ = embed_tokens_;
  } else {
    AS_ASSIGN_OR_RETURN(lm_head_, upload_matrix(weights.lm_head));
  }
  AS_ASSIGN_OR_RETURN(norm_, upload_vector(weights.norm));
  layers_.resize(weights.layers.size());
  for (size_t i = 0; i < weights.layers.size(); ++i) {
    const LayerWeights& src = weights.layers[i];
    Layer& dst = layers_[i];
    AS_ASSIGN_OR_RETURN(dst.input_layernorm, upload_vector(src.input_layernorm));
    AS_ASSIGN_OR_RETURN(dst.post_attention_layernorm, upload_vector(src.post_attention_layernorm));
    AS_ASSIGN_OR_RETURN(dst.q_norm, upload_vector(src.q_norm));
    AS_ASSIGN_OR_RETURN(dst.k_norm, upload_vector(src.k_norm));
    AS_ASSIGN_OR_RETURN(dst.q_proj, upload_matrix(src.q_proj));
    AS_ASSIGN_OR_RETURN(dst.k_proj, upload_matrix(src.k_proj));
    AS_ASSIGN_OR_RETURN(dst.v_proj, upload_matrix(src.v_proj));
    AS_ASSIGN_OR_RETURN(dst.o_proj, upload_matrix(src.o_proj));
    dst.is_moe = src.is_moe;
    if (src.is_moe) {
      AS_ASSIGN_OR_RETURN(dst.router, upload_matrix(src.router));
      AS_ASSIGN_OR_RETURN(dst.experts, upload_experts(src.experts));
    } else {
      AS_ASSIGN_OR_RETURN(dst.experts, upload_experts(std::span<const LayerExpert>(&src.mlp, 1)));
    }
  }

  std::optional<kernels::YarnScaling> yarn;
  if (config_.rope_scaling) {
    yarn = kernels::YarnScaling{
        .factor = config_.rope_scaling->factor,
        .original_max_position = static_cast<int>(config_.rope_scaling->original_max_position_embeddings),
        .beta_fast = config_.rope_scaling->beta_fast,
        .beta_slow = config_.rope_scaling->beta_slow,
        .attention_factor = config_.rope_scaling->attention_factor};
  }
  const std::vector<float> inv_freq =
      kernels::rope_inv_freq(static_cast<int>(config_.head_dim), config_.rope_theta, yarn ? &*yarn : nullptr);
  half_dim_ = static_cast<int>(inv_freq.size());
  attention_factor_ = kernels::rope_attention_factor(yarn ? &*yarn : nullptr);
  AS_ASSIGN_OR_RETURN(inv_freq_, upload_vector(inv_freq));
  return {};
}

Result<float*> BackendModel::allocate_floats(size_t n) {
  AS_ASSIGN_OR_RETURN(DeviceBuffer buffer, backend_.allocate(std::max<size_t>(n, 1) * sizeof(float)));
  float* data = buffer.as<float>();
  storage_.push_back(std::move(buffer));
  return data;
}

Status BackendModel::allocate_scratch() {
  const int max_tokens = options_.max_step_tokens;
  const size_t t = sz(max_tokens);
  const size_t hidden = sz(config_.hidden_size);
  const size_t q_dim = sz(config_.num_attention_heads) * sz(config_.head_dim);
  const size_t kv_dim = sz(config_.num_key_value_heads) * sz(config_.head_dim);
  const size_t n_experts = sz(std::max(1, config_.num_experts));
  const size_t top_k = sz(std::max(1, config_.num_experts_per_tok));
  const size_t vocab = sz(config_.vocab_size);
  static_assert(sizeof(int32_t) == sizeof(float), "int32 scratch shares the float allocator");

  AS_ASSIGN_OR_RETURN(hidden_, allocate_floats(t * hidden));
  AS_ASSIGN_OR_RETURN(normed_, allocate_floats(t * hidden));
  AS_ASSIGN_OR_RETURN(q_, allocate_floats(t * q_dim));
  AS_ASSIGN_OR_RETURN(k_, allocate_floats(t * kv_dim));
  AS_ASSIGN_OR_RETURN(v_, allocate_floats(t * kv_dim));
  AS_ASSIGN_OR_RETURN(attn_, allocate_floats(t * q_dim));
  AS_ASSIGN_OR_RETURN(proj_, allocate_floats(t * hidden));
  AS_ASSIGN_OR_RETURN(mlp_out_, allocate_floats(t * hidden));
  AS_ASSIGN_OR_RETURN(router_logits_, allocate_floats(t * n_experts));
  AS_ASSIGN_OR_RETURN(expert_weights_, allocate_floats(t * top_k));
  AS_ASSIGN_OR_RETURN(cos_, allocate_floats(t * sz(half_dim_)));
  AS_ASSIGN_OR_RETURN(sin_, allocate_floats(t * sz(half_dim_)));
  AS_ASSIGN_OR_RETURN(logits_, allocate_floats(sz(options_.logits_rows_per_pass) * vocab));
  AS_ASSIGN_OR_RETURN(dense_weights_, allocate_floats(t));
  AS_ASSIGN_OR_RETURN(float* ids, allocate_floats(t * top_k));
  expert_ids_ = reinterpret_cast<int32_t*>(ids);
  AS_ASSIGN_OR_RETURN(float* dense_ids, allocate_floats(t));
  dense_ids_ = reinterpret_cast<int32_t*>(dense_ids);
  AS_ASSIGN_OR_RETURN(float* greedy, allocate_floats(t));
  greedy_tokens_ = reinterpret_cast<int32_t*>(greedy);

  // A dense MLP runs as the one expert 0 with routing weight 1 for every token.
  backend_.fill_zero(dense_ids_, t * sizeof(int32_t));
  const std::vector<float> ones(t, 1.0f);
  backend_.upload(dense_weights_, ones.data(), t * sizeof(float));

  max_blocks_per_chunk_ =
      static_cast<int>((options_.max_context_len + options_.block_size - 1) / options_.block_size);
  const size_t chunks = sz(options_.max_chunks);
  const size_t step_ints = 4 * t + 3 * chunks + 2 + chunks * sz(max_blocks_per_chunk_);
  AS_ASSIGN_OR_RETURN(float* step, allocate_floats(step_ints));
  step_ints_ = reinterpret_cast<int32_t*>(step);
  host_ints_.reserve(step_ints);

  size_t moe_bytes = 1;
  for (const Layer& layer : layers_) {
    const int k = layer.is_moe ? config_.num_experts_per_tok : 1;
    moe_bytes = std::max(moe_bytes, backend_.moe_workspace_bytes(max_tokens, k, layer.experts));
  }
  AS_ASSIGN_OR_RETURN(DeviceBuffer workspace, backend_.allocate(moe_bytes));
  moe_workspace_ = workspace.data();
  storage_.push_back(std::move(workspace));

  return backend_.reserve(backend_op_limits(config_, options_));
}

Status BackendModel::check_chunks(std::span<const ForwardChunk> chunks) const {
  if (chunks.empty()) return Status::invalid_argument("a step needs at least one chunk");
  if (static_cast<int64_t>(chunks.size()) > options_.max_chunks) {
    return Status::invalid_argument("step has " + std::to_string(chunks.size()) + " chunks, more than " +
                                    std::to_string(options_.max_chunks));
  }
  return check_forward_chunks(chunks, {.block_size = options_.block_size,
                                       .num_kv_blocks = options_.num_kv_blocks,
                                       .max_context_len = options_.max_context_len,
                                       .vocab_size = config_.vocab_size,
                                       .max_step_tokens = options_.max_step_tokens});
}

int BackendModel::pack_step(std::span<const ForwardChunk> chunks) {
  const int block_size = options_.block_size;

  // Pack the step's int arrays region after region; each region's offset goes to offsets_.
  host_ints_.clear();
  auto region = [&](size_t& offset) { offset = host_ints_.size(); };
  region(offsets_.ids);
  for (const ForwardChunk& chunk : chunks)
    host_ints_.insert(host_ints_.end(), chunk.tokens.begin(), chunk.tokens.end());
  const int n_tokens = static_cast<int>(host_ints_.size());
  region(offsets_.positions);
  for (const ForwardChunk& chunk : chunks)
    for (size_t i = 0; i < chunk.tokens.size(); ++i)
      host_ints_.push_back(chunk.start_position + static_cast<int>(i));
  region(offsets_.slots);
  for (const ForwardChunk& chunk : chunks) {
    for (size_t i = 0; i < chunk.tokens.size(); ++i) {
      const int position = chunk.start_position + static_cast<int>(i);
      host_ints_.push_back(chunk.block_table[sz(position / block_size)] * block_size + position % block_size);
    }
  }
  region(offsets_.query_start);
  int first = 0, max_query = 0, max_context = 0;
  for (const ForwardChunk& chunk : chunks) {
    host_ints_.push_back(first);
    first += static_cast<int>(chunk.tokens.size());
    max_query = std::max(max_query, static_cast<int>(chunk.tokens.size()));
    max_context = std::max(max_context, chunk.start_position + static_cast<int>(chunk.tokens.size()));
  }
  host_ints_.push_back(first);
  region(offsets_.context_len);
  for (const ForwardChunk& chunk : chunks)
    host_ints_.push_back(chunk.start_position + static_cast<int>(chunk.tokens.size()));
  region(offsets_.table_start);
  int tables = 0;
  for (const ForwardChunk& chunk : chunks) {
    host_ints_.push_back(tables);
    const int end = chunk.start_position + static_cast<int>(chunk.tokens.size());
    tables += (end + block_size - 1) / block_size;
  }
  host_ints_.push_back(tables);
  region(offsets_.tables);
  for (const ForwardChunk& chunk : chunks) {
    const int end = chunk.start_position + static_cast<int>(chunk.tokens.size());
    const auto needed = static_cast<std::ptrdiff_t>((end + block_size - 1) / block_size);
    host_ints_.insert(host_ints_.end(), chunk.block_table.begin(), chunk.block_table.begin() + needed);
  }
  region(offsets_.wanted_rows);
  int token = 0;
  for (const ForwardChunk& chunk : chunks) {
    const int n = static_cast<int>(chunk.tokens.size());
    for (int i = 0; i < n; ++i, ++token) {
      if (chunk.logits == LogitsWanted::kAll || (chunk.logits == LogitsWanted::kLast && i == n - 1))
        host_ints_.push_back(token);
    }
  }
  const int n_rows = static_cast<int>(host_ints_.size() - offsets_.wanted_rows);
  backend_.upload(step_ints_, host_ints_.data(), host_ints_.size() * sizeof(int32_t));
  batch_ = AttentionBatch{.n_chunks = static_cast<int>(chunks.size()),
                          .n_tokens = n_tokens,
                          .max_query_len = max_query,
                          .max_context_len = max_context,
                          .query_start = step_ints_ + offsets_.query_start,
                          .context_len = step_ints_ + offsets_.context_len,
                          .block_table_start = step_ints_ + offsets_.table_start,
                          .block_tables = step_ints_ + offsets_.tables};
  return n_rows;
}

Result<int> BackendModel::run_layers(std::span<const ForwardChunk> chunks) {
  AS_RETURN_IF_ERROR(check_chunks(chunks));
  const int n_rows = pack_step(chunks);
  const int n_tokens = batch_.n_tokens;
  const int hidden = static_cast<int>(config_.hidden_size);
  const float eps = static_cast<float>(config_.rms_norm_eps);
  backend_.embedding(hidden_, embed_tokens_, step_ints_ + offsets_.ids, n_tokens);
  backend_.rope_tables(cos_, sin_, step_ints_ + offsets_.positions, n_tokens, inv_freq_, half_dim_,
                       attention_factor_);
  for (size_t i = 0; i < layers_.size(); ++i) {
    const Layer& layer = layers_[i];
    backend_.rmsnorm(normed_, hidden_, layer.input_layernorm, n_tokens, hidden, eps);
    attention(layer, static_cast<int>(i), n_tokens);
    backend_.add(hidden_, proj_, sz(n_tokens) * sz(hidden));
    backend_.rmsnorm(normed_, hidden_, layer.post_attention_layernorm, n_tokens, hidden, eps);
    mlp(layer, n_tokens);
    backend_.add(hidden_, mlp_out_, sz(n_tokens) * sz(hidden));
  }
  // The wanted rows, gathered and final-normed, for lm_head.
  const WeightMatrix hidden_rows{
      .dtype = kernels::DType::kF32, .data = hidden_, .rows = n_tokens, .cols = hidden};
  backend_.embedding(normed_, hidden_rows, step_ints_ + offsets_.wanted_rows, n_rows);
  backend_.rmsnorm(normed_, normed_, norm_, n_rows, hidden, eps);
  return n_rows;
}

void BackendModel::attention(const Layer& layer, int index, int n_tokens) {
  const int head_dim = static_cast<int>(config_.head_dim);
  backend_.matmul(q_, normed_, layer.q_proj, n_tokens);
  backend_.matmul(k_, normed_, layer.k_proj, n_tokens);
  backend_.matmul(v_, normed_, layer.v_proj, n_tokens);
  backend_.qk_norm_rope(q_, k_, layer.q_norm, layer.k_norm, cos_, sin_, n_tokens, config_.num_attention_heads,
                        config_.num_key_value_heads, head_dim, static_cast<float>(config_.rms_norm_eps));
  backend_.kv_write(*kv_, index, k_, v_, step_ints_ + offsets_.slots, n_tokens);
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  backend_.paged_attention(attn_, q_, *kv_, index, batch_, config_.num_attention_heads, scale);
  backend_.matmul(proj_, attn_, layer.o_proj, n_tokens);
}

void BackendModel::mlp(const Layer& layer, int n_tokens) {
  if (!layer.is_moe) {
    backend_.moe_experts(mlp_out_, normed_, dense_ids_, dense_weights_, n_tokens, 1, layer.experts,
                         moe_workspace_);
    return;
  }
  const int top_k = config_.num_experts_per_tok;
  backend_.matmul(router_logits_, normed_, layer.router, n_tokens);
  backend_.moe_route(expert_ids_, expert_weights_, router_logits_, n_tokens, config_.num_experts, top_k,
                     config_.norm_topk_prob);
  backend_.moe_experts(mlp_out_, normed_, expert_ids_, expert_weights_, n_tokens, top_k, layer.experts,
                       moe_workspace_);
}

Status BackendModel::forward(std::span<const ForwardChunk> chunks, std::vector<float>& logits) {
  AS_ASSIGN_OR_RETURN(const int n_rows, run_layers(chunks));
  const size_t vocab = sz(config_.vocab_size);
  const size_t hidden = sz(config_.hidden_size);
  logits.resize(sz(n_rows) * vocab);
  for (int first = 0; first < n_rows; first += options_.logits_rows_per_pass) {
    const int rows = std::min(options_.logits_rows_per_pass, n_rows - first);
    backend_.matmul(logits_, normed_ + sz(first) * hidden, lm_head_, rows);
    AS_RETURN_IF_ERROR(
        backend_.download(logits.data() + sz(first) * vocab, logits_, sz(rows) * vocab * sizeof(float)));
  }
  return backend_.synchronize();
}

Status BackendModel::forward_greedy(std::span<const ForwardChunk> chunks, std::vector<int32_t>& tokens) {
  AS_ASSIGN_OR_RETURN(const int n_rows, run_layers(chunks));
  const int vocab = static_cast<int>(config_.vocab_size);
  const size_t hidden = sz(config_.hidden_size);
  for (int first = 0; first < n_rows; first += options_.logits_rows_per_pass) {
    const int rows = std::min(options_.logits_rows_per_pass, n_rows - first);
    backend_.matmul(logits_, normed_ + sz(first) * hidden, lm_head_, rows);
    backend_.argmax(greedy_tokens_ + first, logits_, rows, vocab);
  }
  tokens.resize(sz(n_rows));
  AS_RETURN_IF_ERROR(backend_.download(tokens.data(), greedy_tokens_, sz(n_rows) * sizeof(int32_t)));
  return backend_.synchronize();
}

}  // namespace agentserve::engine
