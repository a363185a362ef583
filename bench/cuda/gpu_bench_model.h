// The random-weight Qwen3-MoE model of the GPU benchmarks, on the device: its shape (Options), the weights
// made by a hash kernel (kernels/cuda/random_fill.h, never uploaded, so even 61 GB is ready in
// milliseconds), every buffer a step needs sized once for the largest step, the paged batch of a decode or
// prefill step, and the forward step itself, which calls the kernels/cuda launchers directly. The timing
// and the report are gpu_decode_bench.cpp's. Any CUDA failure ends the process with a message: this is
// benchmark setup, never library code.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/embedding.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/kv_cache.h"
#include "kernels/cuda/moe.h"
#include "kernels/cuda/paged_attention.h"
#include "kernels/cuda/random_fill.h"
#include "kernels/cuda/rmsnorm.h"
#include "kernels/cuda/rope.h"

namespace agentserve::bench {

namespace kc = kernels::cuda;
using kernels::DType;

inline void die(const std::string& what) {
  std::fprintf(stderr, "gpu_decode_bench: %s\n", what.c_str());
  std::exit(1);
}
inline void ok(const Status& s, const char* what) {
  if (!s.ok()) die(std::string(what) + ": " + s.to_string());
}
inline void ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) die(std::string(what) + ": " + cudaGetErrorString(e));
}

// The model's shape and the run's sizes (gpu_decode_bench.cpp parses them from the command line).
struct Options {
  int layers = 48, experts = 128, top_k = 8, hidden = 2048, moe_inter = 768;
  int heads = 32, kv_heads = 4, head_dim = 128, vocab = 151936;
  std::vector<int> batches{1, 8, 64};
  int context = 2048;
  int prefill_tokens = 4096;
  std::vector<int> attn_contexts{32768, 131072};
  int steps = 20;
};

// Every device allocation of the run, freed at exit.
class Arena {
 public:
  Arena() = default;
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  ~Arena() {
    for (void* p : ptrs_) cudaFree(p);
  }
  template <typename T>
  T* alloc(size_t n) {
    void* p = nullptr;
    ok(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)),
       ("cudaMalloc " + std::to_string(n * sizeof(T) >> 20) + " MiB").c_str());
    ptrs_.push_back(p);
    bytes_ += n * sizeof(T);
    return static_cast<T*>(p);
  }
  size_t bytes() const { return bytes_; }

 private:
  std::vector<void*> ptrs_;
  size_t bytes_ = 0;
};

struct Layer {
  bf16 *wq, *wkv, *wo, *router, *gate, *up, *down;
  float *ln1, *ln2, *q_norm, *k_norm;
};

// The model's weights and every buffer a step needs, sized once for the largest step.
struct Model {
  Options o;
  std::vector<Layer> layers;
  bf16 *embed = nullptr, *lm_head = nullptr;
  float* final_norm = nullptr;
  int max_tokens = 0;
  // activations
  float *x, *xn, *q, *kv, *attn, *o_proj, *router_logits, *route_w, *moe_out, *logits, *cos, *sin, *inv_freq;
  int32_t *token_ids, *positions, *slots, *expert_ids;  // expert_ids: [layers][max_tokens * top_k]
  // paged KV
  bf16* pool = nullptr;
  kc::KvPoolGeometry geo;
  int32_t *query_start, *context_len, *table_start, *tables;
  void *gemm_ws, *moe_ws, *attn_ws;
  size_t gemm_ws_bytes = 0, moe_ws_bytes = 0, attn_ws_bytes = 0;
  cublasHandle_t cublas = nullptr;
  cudaStream_t stream = nullptr;

  int q_dim() const { return o.heads * o.head_dim; }
  int kv_dim() const { return 2 * o.kv_heads * o.head_dim; }
  kc::MoeExperts experts(const Layer& l) const {
    return {DType::kBF16, l.gate, l.up, l.down, o.experts, o.hidden, o.moe_inter};
  }
  size_t attention_weight_bytes() const {
    const size_t h = static_cast<size_t>(o.hidden);
    return (h * q_dim() * 2 + h * kv_dim() + h * o.experts) * sizeof(bf16);
  }
  size_t expert_bytes() const { return 3ull * o.hidden * o.moe_inter * sizeof(bf16); }
};

inline void fill(Arena& arena, bf16*& p, size_t n, uint64_t seed, float scale, cudaStream_t s) {
  p = arena.alloc<bf16>(n);
  ok(kc::fill_uniform(p, DType::kBF16, n, seed, scale, s), "fill_uniform");
}
inline void fill(Arena& arena, float*& p, size_t n, uint64_t seed, float scale, cudaStream_t s) {
  p = arena.alloc<float>(n);
  ok(kc::fill_uniform(p, DType::kF32, n, seed, scale, s), "fill_uniform");
}

inline void build_model(Model& m, Arena& arena) {
  const Options& o = m.o;
  const size_t H = o.hidden;
  uint64_t seed = 1;
  // Scales 1/sqrt(fan-in) keep every activation O(1) through the layers, so routing stays spread and no
  // NaN changes what the kernels do.
  const float sh = 1.0f / std::sqrt(static_cast<float>(H));
  const float sq = 1.0f / std::sqrt(static_cast<float>(m.q_dim()));
  const float si = 1.0f / std::sqrt(static_cast<float>(o.moe_inter));
  fill(arena, m.embed, static_cast<size_t>(o.vocab) * H, seed++, 1.0f, m.stream);
  fill(arena, m.lm_head, static_cast<size_t>(o.vocab) * H, seed++, sh, m.stream);
  fill(arena, m.final_norm, H, seed++, 1.0f, m.stream);
  for (int i = 0; i < o.layers; ++i) {
    Layer l;
    fill(arena, l.wq, static_cast<size_t>(m.q_dim()) * H, seed++, sh, m.stream);
    fill(arena, l.wkv, static_cast<size_t>(m.kv_dim()) * H, seed++, sh, m.stream);
    fill(arena, l.wo, H * m.q_dim(), seed++, sq, m.stream);
    fill(arena, l.router, static_cast<size_t>(o.experts) * H, seed++, sh, m.stream);
    const size_t e = static_cast<size_t>(o.experts) * o.moe_inter * H;
    fill(arena, l.gate, e, seed++, sh, m.stream);
    fill(arena, l.up, e, seed++, sh, m.stream);
    fill(arena, l.down, e, seed++, si, m.stream);
    fill(arena, l.ln1, H, seed++, 1.0f, m.stream);
    fill(arena, l.ln2, H, seed++, 1.0f, m.stream);
    fill(arena, l.q_norm, o.head_dim, seed++, 1.0f, m.stream);
    fill(arena, l.k_norm, o.head_dim, seed++, 1.0f, m.stream);
    m.layers.push_back(l);
  }
}

inline void build_buffers(Model& m, Arena& arena) {
  const Options& o = m.o;
  const int max_batch = *std::max_element(o.batches.begin(), o.batches.end());
  m.max_tokens = std::max(max_batch, o.prefill_tokens);
  const size_t T = m.max_tokens, H = o.hidden;
  m.x = arena.alloc<float>(T * H);
  m.xn = arena.alloc<float>(T * H);
  m.q = arena.alloc<float>(T * m.q_dim());
  m.kv = arena.alloc<float>(T * m.kv_dim());
  m.attn = arena.alloc<float>(T * m.q_dim());
  m.o_proj = arena.alloc<float>(T * H);
  m.router_logits = arena.alloc<float>(T * o.experts);
  m.route_w = arena.alloc<float>(T * o.top_k);
  m.moe_out = arena.alloc<float>(T * H);
  m.logits = arena.alloc<float>(static_cast<size_t>(max_batch) * o.vocab);
  m.cos = arena.alloc<float>(T * (o.head_dim / 2));
  m.sin = arena.alloc<float>(T * (o.head_dim / 2));
  m.inv_freq = arena.alloc<float>(o.head_dim / 2);
  std::vector<float> inv_freq(o.head_dim / 2);
  for (int j = 0; j < o.head_dim / 2; ++j) inv_freq[j] = 1.0f / std::pow(1e6f, 2.0f * j / o.head_dim);
  ok(cudaMemcpy(m.inv_freq, inv_freq.data(), inv_freq.size() * sizeof(float), cudaMemcpyHostToDevice),
     "upload");
  m.token_ids = arena.alloc<int32_t>(T);
  m.positions = arena.alloc<int32_t>(T);
  m.slots = arena.alloc<int32_t>(T);
  m.expert_ids = arena.alloc<int32_t>(static_cast<size_t>(o.layers) * T * o.top_k);

  const int block = 16;
  const int blocks_per_seq = (o.context + block - 1) / block;
  const int n_blocks = std::max(max_batch * blocks_per_seq, (o.prefill_tokens + block - 1) / block);
  m.geo = kc::KvPoolGeometry::packed(o.layers, o.kv_heads, block, o.head_dim, n_blocks);
  ok(m.geo.validate(), "KV geometry");
  const size_t pool_elems = m.geo.block_stride * static_cast<size_t>(n_blocks);
  m.pool = arena.alloc<bf16>(pool_elems);
  ok(kc::fill_uniform(m.pool, DType::kBF16, pool_elems, 99, 1.0f, m.stream), "fill KV");
  m.query_start = arena.alloc<int32_t>(T + 1);
  m.context_len = arena.alloc<int32_t>(T);
  m.table_start = arena.alloc<int32_t>(T + 1);
  m.tables = arena.alloc<int32_t>(n_blocks);

  m.gemm_ws_bytes = kc::gemm_workspace_bytes(m.max_tokens, std::max(o.hidden, m.q_dim()), DType::kBF16);
  m.gemm_ws = arena.alloc<unsigned char>(m.gemm_ws_bytes);
  m.moe_ws_bytes = kc::moe_workspace_bytes(m.max_tokens, o.top_k, m.experts(m.layers[0]));
  m.moe_ws = arena.alloc<unsigned char>(m.moe_ws_bytes);
  m.attn_ws_bytes = kc::paged_attention_decode_workspace_bytes(max_batch, o.heads, o.head_dim, o.context);
  m.attn_ws = arena.alloc<unsigned char>(m.attn_ws_bytes);
}

template <typename T>
inline void upload(T* dst, const std::vector<T>& src) {
  ok(cudaMemcpy(dst, src.data(), src.size() * sizeof(T), cudaMemcpyHostToDevice), "upload");
}

// Decode: `batch` sequences of o.context tokens each, one new token per sequence (its K/V written at its
// last position). Prefill: one sequence of n_tokens. Sequence s owns blocks [s * per_seq, (s + 1) * per_seq).
inline kc::PagedBatch set_batch(Model& m, int n_tokens, bool decode) {
  const int block = m.geo.block_size;
  const int n_seqs = decode ? n_tokens : 1;
  const int ctx = decode ? m.o.context : n_tokens;
  const int per_seq = (ctx + block - 1) / block;
  std::vector<int32_t> qs(n_seqs + 1), cl(n_seqs, ctx), ts(n_seqs + 1),
      tables(static_cast<size_t>(n_seqs) * per_seq);
  std::vector<int32_t> ids(n_tokens), pos(n_tokens), slots(n_tokens);
  for (int s = 0; s <= n_seqs; ++s) {
    qs[s] = decode ? s : (s == 0 ? 0 : n_tokens);
    ts[s] = s * per_seq;
  }
  for (size_t i = 0; i < tables.size(); ++i) tables[i] = static_cast<int32_t>(i);
  for (int t = 0; t < n_tokens; ++t) {
    ids[t] = static_cast<int32_t>((1000003ull * (t + 1)) % static_cast<uint64_t>(m.o.vocab));
    pos[t] = decode ? ctx - 1 : t;
    slots[t] = decode ? t * per_seq * block + ctx - 1 : t;
  }
  upload(m.query_start, qs);
  upload(m.context_len, cl);
  upload(m.table_start, ts);
  upload(m.tables, tables);
  upload(m.token_ids, ids);
  upload(m.positions, pos);
  upload(m.slots, slots);
  kc::PagedBatch b;
  b.n_chunks = n_seqs;
  b.max_query_len = decode ? 1 : n_tokens;
  b.max_context_len = ctx;
  b.query_start = m.query_start;
  b.context_len = m.context_len;
  b.block_table_start = m.table_start;
  b.block_tables = m.tables;
  return b;
}

// One forward step of n tokens; logits for the last row (prefill) or every row (decode).
inline void forward(Model& m, int n, bool decode, const kc::PagedBatch& batch) {
  const Options& o = m.o;
  const size_t H = o.hidden;
  const cudaStream_t s = m.stream;
  const float eps = 1e-6f;
  ok(kc::embedding(m.x, m.token_ids, n, m.embed, DType::kBF16, o.vocab, o.hidden, s), "embedding");
  ok(kc::rope_cos_sin(m.cos, m.sin, m.positions, n, m.inv_freq, o.head_dim / 2, 1.0f, s), "rope_cos_sin");
  const kc::AttentionShape shape{o.heads, o.kv_heads, 1.0f / std::sqrt(static_cast<float>(o.head_dim))};
  for (int li = 0; li < o.layers; ++li) {
    const Layer& l = m.layers[li];
    ok(kc::rmsnorm(m.xn, m.x, l.ln1, DType::kF32, n, o.hidden, eps, s), "rmsnorm");
    ok(kc::gemm(m.cublas, s, m.q, m.xn, l.wq, DType::kBF16, n, o.hidden, m.q_dim(), m.gemm_ws,
                m.gemm_ws_bytes),
       "q_proj");
    ok(kc::gemm(m.cublas, s, m.kv, m.xn, l.wkv, DType::kBF16, n, o.hidden, m.kv_dim(), m.gemm_ws,
                m.gemm_ws_bytes),
       "kv_proj");
    kc::QkNormRopeArgs r;
    r.q = m.q;
    r.k = m.kv;
    r.q_stride = m.q_dim();
    r.k_stride = m.kv_dim();
    r.q_norm_weight = l.q_norm;
    r.k_norm_weight = l.k_norm;
    r.weight_dtype = DType::kF32;
    r.cos = m.cos;
    r.sin = m.sin;
    r.n_tokens = n;
    r.n_heads = o.heads;
    r.n_kv_heads = o.kv_heads;
    r.head_dim = o.head_dim;
    r.eps = eps;
    ok(kc::qk_norm_rope(r, s), "qk_norm_rope");
    const size_t kv_half = static_cast<size_t>(o.kv_heads) * o.head_dim;
    ok(kc::kv_write(m.pool, m.geo, li, m.kv, m.kv + kv_half, m.kv_dim(), m.slots, n, s), "kv_write");
    if (decode) {
      ok(kc::paged_attention_decode(m.attn, m.q, m.pool, m.geo, li, shape, batch, m.attn_ws, m.attn_ws_bytes,
                                    s),
         "paged_attention_decode");
    } else {
      ok(kc::paged_attention_prefill(m.attn, m.q, m.pool, m.geo, li, shape, batch, s),
         "paged_attention_prefill");
    }
    ok(kc::gemm(m.cublas, s, m.o_proj, m.attn, l.wo, DType::kBF16, n, m.q_dim(), o.hidden, m.gemm_ws,
                m.gemm_ws_bytes),
       "o_proj");
    ok(kc::add_inplace(m.x, m.o_proj, n * H, s), "residual");
    ok(kc::rmsnorm(m.xn, m.x, l.ln2, DType::kF32, n, o.hidden, eps, s), "rmsnorm");
    ok(kc::gemm(m.cublas, s, m.router_logits, m.xn, l.router, DType::kBF16, n, o.hidden, o.experts, m.gemm_ws,
                m.gemm_ws_bytes),
       "router");
    int32_t* ids = m.expert_ids + static_cast<size_t>(li) * m.max_tokens * o.top_k;
    ok(kc::moe_route(ids, m.route_w, m.router_logits, n, o.experts, o.top_k, true, s), "moe_route");
    ok(kc::moe_experts(m.moe_out, m.xn, ids, m.route_w, n, o.top_k, m.experts(l), m.moe_ws, m.moe_ws_bytes,
                       s),
       "moe_experts");
    ok(kc::add_inplace(m.x, m.moe_out, n * H, s), "residual");
  }
  const int first = decode ? 0 : n - 1;
  const int rows = decode ? n : 1;
  ok(kc::rmsnorm(m.xn, m.x + first * H, m.final_norm, DType::kF32, rows, o.hidden, eps, s), "final norm");
  ok(kc::gemm(m.cublas, s, m.logits, m.xn, m.lm_head, DType::kBF16, rows, o.hidden, o.vocab, m.gemm_ws,
              m.gemm_ws_bytes),
     "lm_head");
}

}  // namespace agentserve::bench
