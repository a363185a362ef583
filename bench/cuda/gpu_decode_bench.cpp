// GPU benchmark of the Qwen3-MoE forward on a random-weight model (Qwen3-30B-A3B's shape by default: 48
// layers, 128 experts top-8, hidden 2048, expert width 768, 32 q / 4 kv heads of 128, vocab 151936; about
// 61 GB in BF16). The weights are made on the device by a hash kernel (kernels/cuda/random_fill.h), never
// uploaded, so the model is ready in milliseconds. The layer loop calls the kernels/cuda launchers directly
// (BackendModel uploads host weights, which a 61 GB random model would have to build on the host first);
// the model, its buffers and the forward step are in gpu_bench_model.h, the timing and report here.
//
// It prints, with the machine facts measured in the same run:
//   - decode tokens/s at each batch (every sequence at --context tokens) and the ratio to the HBM roofline:
//     (bytes of the weights the step touches: attention, router, the experts its tokens chose, lm_head;
//     plus the KV it reads) / (device-to-device copy bandwidth, read + written bytes) against the step time;
//   - prefill TFLOP/s of one --prefill-tokens prompt against the measured cuBLAS BF16 GEMM peak;
//   - the MoE experts (GEMV and tiled kernel) and q_proj (GEMV and cuBLAS) alone at each batch: GB/s of
//     weights read;
//   - paged decode attention alone at each --attn-contexts context: HBM GB/s of K/V read.
// Without a visible GPU it says so and exits 0 (nothing to measure is not a failure).
#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#include "bench/cuda/gpu_bench_model.h"
#include "kernels/cuda/device_info.h"

namespace {

using namespace agentserve::bench;
using agentserve::bf16;

std::vector<int> parse_list(const char* s) {
  std::vector<int> out;
  for (const char* p = s; *p;) {
    out.push_back(std::atoi(p));
    while (*p && *p != ',') ++p;
    if (*p == ',') ++p;
  }
  return out;
}

void usage() {
  std::printf(
      "usage: gpu_decode_bench [--preset qwen3-30b-a3b|small] [--layers N] [--batches 1,8,64] [--context N]\n"
      "                        [--prefill-tokens N] [--attn-contexts 32768,131072] [--steps N]\n");
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) die("missing value after " + a);
      return argv[++i];
    };
    if (a == "--preset") {
      const std::string p = next();
      if (p == "small") {  // a smoke run: same code paths, seconds on any GPU
        o.layers = 4, o.experts = 16, o.top_k = 4, o.hidden = 512, o.moe_inter = 256;
        o.heads = 8, o.kv_heads = 2, o.head_dim = 64, o.vocab = 8192;
        o.context = 512, o.prefill_tokens = 512, o.attn_contexts = {4096, 16384}, o.steps = 5;
      } else if (p != "qwen3-30b-a3b") {
        die("unknown preset " + p);
      }
    } else if (a == "--layers") {
      o.layers = std::atoi(next());
    } else if (a == "--batches") {
      o.batches = parse_list(next());
    } else if (a == "--context") {
      o.context = std::atoi(next());
    } else if (a == "--prefill-tokens") {
      o.prefill_tokens = std::atoi(next());
    } else if (a == "--attn-contexts") {
      o.attn_contexts = parse_list(next());
    } else if (a == "--steps") {
      o.steps = std::atoi(next());
    } else if (a == "--help" || a == "-h") {
      usage();
      std::exit(0);
    } else {
      usage();
      die("unknown option " + a);
    }
  }
  if (o.layers < 1 || o.context < 1 || o.prefill_tokens < 1 || o.steps < 1 || o.batches.empty()) {
    die("layers, context, prefill-tokens, steps must be >= 1 and batches non-empty");
  }
  for (int b : o.batches) {
    if (b < 1) die("batch sizes must be >= 1");
  }
  return o;
}

// Elapsed milliseconds of `reps` calls of f on `stream`, after one untimed warm-up call.
template <typename F>
double time_ms(cudaStream_t stream, int reps, F&& f) {
  f();
  cudaEvent_t start, stop;
  ok(cudaEventCreate(&start), "cudaEventCreate");
  ok(cudaEventCreate(&stop), "cudaEventCreate");
  ok(cudaEventRecord(start, stream), "cudaEventRecord");
  for (int r = 0; r < reps; ++r) f();
  ok(cudaEventRecord(stop, stream), "cudaEventRecord");
  ok(cudaEventSynchronize(stop), "the timed work");
  float ms = 0;
  ok(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return ms / reps;
}

// As time_ms, with the calls of f captured once into a CUDA graph and the graph replayed: what a decode step
// costs without the host's launch overhead (about 800 launches per step at 48 layers).
template <typename F>
double time_graph_ms(cudaStream_t stream, int reps, F&& f) {
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  ok(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
  f();
  ok(cudaStreamEndCapture(stream, &graph), "cudaStreamEndCapture");
  ok(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
  const double ms = time_ms(stream, reps, [&] { ok(cudaGraphLaunch(exec, stream), "cudaGraphLaunch"); });
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  return ms;
}

// Distinct experts each layer's last step used, summed over layers.
long long experts_touched(const Model& m, int n) {
  const size_t per_layer = static_cast<size_t>(n) * m.o.top_k;
  std::vector<int32_t> ids(per_layer);
  long long total = 0;
  for (int li = 0; li < m.o.layers; ++li) {
    ok(cudaMemcpy(ids.data(), m.expert_ids + static_cast<size_t>(li) * m.max_tokens * m.o.top_k,
                  per_layer * sizeof(int32_t), cudaMemcpyDeviceToHost),
       "download ids");
    total += static_cast<long long>(std::set<int32_t>(ids.begin(), ids.end()).size());
  }
  return total;
}

// Decode steps at every batch size, eager or replayed from a CUDA graph, against the HBM roofline.
void decode(Model& m, double bandwidth, bool graph) {
  const Options& o = m.o;
  std::printf("\ndecode (%s), every sequence at %d tokens of context:\n",
              graph ? "the step replayed as one CUDA graph" : "eager launches", o.context);
  for (int batch : o.batches) {
    const kc::PagedBatch pb = set_batch(m, batch, true);
    auto step = [&] { forward(m, batch, true, pb); };
    const double ms = graph ? time_graph_ms(m.stream, o.steps, step) : time_ms(m.stream, o.steps, step);
    const long long touched = experts_touched(m, batch);
    const double kv_bytes = static_cast<double>(batch) * o.context * o.layers * m.kv_dim() * sizeof(bf16);
    const double weight_read = static_cast<double>(m.attention_weight_bytes()) * o.layers +
                               static_cast<double>(touched) * m.expert_bytes() +
                               static_cast<double>(o.vocab) * o.hidden * sizeof(bf16);
    const double roofline_ms = (weight_read + kv_bytes) / bandwidth * 1e3;
    std::printf(
        "  batch %3d: %8.3f ms/step %9.1f tokens/s  reads %.2f GB (%lld experts over the layers)"
        "  roofline %.3f ms  ratio %.2f\n",
        batch, ms, batch / (ms * 1e-3), (weight_read + kv_bytes) / 1e9, touched, roofline_ms,
        roofline_ms / ms);
  }
}

double copy_bandwidth(Arena& arena, cudaStream_t s) {
  const size_t bytes = size_t{2} << 30;
  auto* a = arena.alloc<unsigned char>(bytes);
  auto* b = arena.alloc<unsigned char>(bytes);
  ok(cudaMemsetAsync(a, 1, bytes, s), "memset");
  const double ms =
      time_ms(s, 10, [&] { ok(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, s), "copy"); });
  return 2.0 * bytes / (ms * 1e-3);  // read + written, as STREAM counts a copy
}

double gemm_peak(Model& m, Arena& arena) {
  const int n = 8192;
  bf16* a = nullptr;
  bf16* w = nullptr;
  fill(arena, a, static_cast<size_t>(n) * n, 7001, 1.0f, m.stream);
  fill(arena, w, static_cast<size_t>(n) * n, 7002, 1.0f, m.stream);
  auto* y = arena.alloc<float>(static_cast<size_t>(n) * n);
  const double ms =
      time_ms(m.stream, 10, [&] { ok(kc::gemm_bf16(m.cublas, m.stream, y, a, w, n, n, n), "gemm"); });
  return 2.0 * n * n * static_cast<double>(n) / (ms * 1e-3);
}

// The MoE experts and one dense projection (both kernels of each) alone at each decode batch: GB/s of
// weights read and the fraction of the copy bandwidth, so a slow step can be pinned on an op. The routing is
// layer 0's; the calls cycle through the layers' weights so they come from HBM, not from the 50 MB L2.
void bench_ops(Model& m, double bandwidth) {
  const Options& o = m.o;
  const Layer& l = m.layers[0];
  std::printf(
      "\nops alone, cycling through the layers (GB/s of weights read; fraction of the copy bandwidth):\n");
  for (int batch : o.batches) {
    ok(kc::fill_uniform(m.xn, DType::kF32, static_cast<size_t>(batch) * o.hidden, 4242, 1.0f, m.stream),
       "fill");
    ok(kc::gemm(m.cublas, m.stream, m.router_logits, m.xn, l.router, DType::kBF16, batch, o.hidden, o.experts,
                m.gemm_ws, m.gemm_ws_bytes),
       "router");
    ok(kc::moe_route(m.expert_ids, m.route_w, m.router_logits, batch, o.experts, o.top_k, true, m.stream),
       "moe_route");
    std::vector<int32_t> ids(static_cast<size_t>(batch) * o.top_k);
    ok(cudaMemcpy(ids.data(), m.expert_ids, ids.size() * sizeof(int32_t), cudaMemcpyDeviceToHost), "ids");
    const size_t touched = std::set<int32_t>(ids.begin(), ids.end()).size();
    const double moe_bytes = static_cast<double>(touched) * m.expert_bytes();
    for (kc::MoeExpertPath path : {kc::MoeExpertPath::kGemv, kc::MoeExpertPath::kTiled}) {
      int rep = 0;
      const double ms = time_ms(m.stream, 20, [&] {
        const Layer& lw = m.layers[static_cast<size_t>(rep++ % o.layers)];
        ok(kc::moe_experts(m.moe_out, m.xn, m.expert_ids, m.route_w, batch, o.top_k, m.experts(lw), m.moe_ws,
                           m.moe_ws_bytes, m.stream, path),
           "moe_experts");
      });
      std::printf("  batch %3d  moe %-5s %3zu experts: %8.3f ms %7.1f GB/s  %.2f\n", batch,
                  path == kc::MoeExpertPath::kGemv ? "gemv" : "tiled", touched, ms,
                  moe_bytes / (ms * 1e-3) / 1e9, moe_bytes / (ms * 1e-3) / bandwidth);
    }
    const double q_bytes = static_cast<double>(m.q_dim()) * o.hidden * sizeof(bf16);
    for (kc::GemmPath path : {kc::GemmPath::kGemv, kc::GemmPath::kCublas}) {
      int rep = 0;
      const double ms = time_ms(m.stream, 20, [&] {
        const Layer& lw = m.layers[static_cast<size_t>(rep++ % o.layers)];
        ok(kc::gemm(m.cublas, m.stream, m.q, m.xn, lw.wq, DType::kBF16, batch, o.hidden, m.q_dim(), m.gemm_ws,
                    m.gemm_ws_bytes, path),
           "q_proj");
      });
      std::printf("  batch %3d  q_proj %-6s %d x %d: %8.3f ms %7.1f GB/s  %.2f\n", batch,
                  path == kc::GemmPath::kGemv ? "gemv" : "cublas", m.q_dim(), o.hidden, ms,
                  q_bytes / (ms * 1e-3) / 1e9, q_bytes / (ms * 1e-3) / bandwidth);
    }
  }
}

void bench_attention(const Options& o, Arena& arena, cudaStream_t s) {
  std::printf("\npaged decode attention alone (1 layer, %d q / %d kv heads of %d, block 16):\n", o.heads,
              o.kv_heads, o.head_dim);
  for (int ctx : o.attn_contexts) {
    for (int batch : {1, 8}) {
      const int per_seq = (ctx + 15) / 16;
      auto geo = kc::KvPoolGeometry::packed(1, o.kv_heads, 16, o.head_dim, batch * per_seq);
      ok(geo.validate(), "attention geometry");
      const size_t elems = geo.block_stride * static_cast<size_t>(geo.n_blocks);
      bf16* pool = arena.alloc<bf16>(elems);
      ok(kc::fill_uniform(pool, DType::kBF16, elems, 5, 1.0f, s), "fill");
      float* q = arena.alloc<float>(static_cast<size_t>(batch) * o.heads * o.head_dim);
      float* out = arena.alloc<float>(static_cast<size_t>(batch) * o.heads * o.head_dim);
      ok(kc::fill_uniform(q, DType::kF32, static_cast<size_t>(batch) * o.heads * o.head_dim, 6, 1.0f, s),
         "fill");
      std::vector<int32_t> qs(batch + 1), cl(batch, ctx), ts(batch + 1),
          tables(static_cast<size_t>(batch) * per_seq);
      for (int b = 0; b <= batch; ++b) qs[b] = b, ts[b] = b * per_seq;
      for (size_t i = 0; i < tables.size(); ++i) tables[i] = static_cast<int32_t>(i);
      auto* d_qs = arena.alloc<int32_t>(qs.size());
      auto* d_cl = arena.alloc<int32_t>(cl.size());
      auto* d_ts = arena.alloc<int32_t>(ts.size());
      auto* d_tables = arena.alloc<int32_t>(tables.size());
      upload(d_qs, qs);
      upload(d_cl, cl);
      upload(d_ts, ts);
      upload(d_tables, tables);
      const size_t ws_bytes = kc::paged_attention_decode_workspace_bytes(batch, o.heads, o.head_dim, ctx);
      void* ws = arena.alloc<unsigned char>(ws_bytes);
      kc::PagedBatch pb;
      pb.n_chunks = batch;
      pb.max_query_len = 1;
      pb.max_context_len = ctx;
      pb.query_start = d_qs;
      pb.context_len = d_cl;
      pb.block_table_start = d_ts;
      pb.block_tables = d_tables;
      const kc::AttentionShape shape{o.heads, o.kv_heads, 1.0f / std::sqrt(static_cast<float>(o.head_dim))};
      const double ms = time_ms(s, 20, [&] {
        ok(kc::paged_attention_decode(out, q, pool, geo, 0, shape, pb, ws, ws_bytes, s), "attention");
      });
      const double kv_bytes = static_cast<double>(batch) * ctx * 2.0 * o.kv_heads * o.head_dim * sizeof(bf16);
      std::printf("  context %7d  batch %2d: %8.3f ms  %7.1f GB/s of K/V\n", ctx, batch, ms,
                  kv_bytes / (ms * 1e-3) / 1e9);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  const auto info = agentserve::cuda::query_devices();
  if (info.device_count == 0) {
    std::printf("gpu_decode_bench: no usable GPU (%s); nothing measured\n", info.reason.c_str());
    return 0;
  }
  Arena arena;
  Model m;
  m.o = o;
  ok(cudaStreamCreate(&m.stream), "cudaStreamCreate");
  if (cublasCreate(&m.cublas) != CUBLAS_STATUS_SUCCESS) die("cublasCreate failed");
  std::printf("GPU: %s (sm_%d)\n", info.first_device_name.c_str(), info.first_device_sm);
  std::printf(
      "model: %d layers, %d experts top-%d, hidden %d, expert width %d, %d/%d heads of %d, vocab %d\n",
      o.layers, o.experts, o.top_k, o.hidden, o.moe_inter, o.heads, o.kv_heads, o.head_dim, o.vocab);

  const double bandwidth = copy_bandwidth(arena, m.stream);
  const double peak = gemm_peak(m, arena);
  std::printf("device-to-device copy: %.0f GB/s (read + written); cuBLAS BF16 GEMM 8192^3: %.1f TFLOP/s\n",
              bandwidth / 1e9, peak / 1e12);

  const size_t before = arena.bytes();
  build_model(m, arena);
  const size_t weight_bytes = arena.bytes() - before;
  build_buffers(m, arena);
  ok(cudaStreamSynchronize(m.stream), "building the model");
  std::printf(
      "weights %.1f GB made on the device; KV pool %.1f GB; all buffers %.1f GB\n", weight_bytes / 1e9,
      m.geo.block_stride * static_cast<double>(m.geo.n_blocks) * sizeof(bf16) / 1e9, arena.bytes() / 1e9);

  decode(m, bandwidth, false);

  const int p = o.prefill_tokens;
  const kc::PagedBatch pb = set_batch(m, p, false);
  const double ms = time_ms(m.stream, 2, [&] { forward(m, p, false, pb); });
  const double per_token_layer =
      2.0 * (2.0 * o.hidden * m.q_dim() + static_cast<double>(o.hidden) * m.kv_dim() +
             static_cast<double>(o.hidden) * o.experts + 3.0 * o.top_k * o.hidden * o.moe_inter);
  const double attention = 4.0 * o.heads * o.head_dim * (p + 1) / 2.0;  // QK and PV over the causal half
  const double flops =
      static_cast<double>(p) * o.layers * (per_token_layer + attention) + 2.0 * o.hidden * o.vocab;
  std::printf("\nprefill of %d tokens: %.1f ms, %.1f TFLOP/s = %.2f of the GEMM peak\n", p, ms,
              flops / (ms * 1e-3) / 1e12, flops / (ms * 1e-3) / peak);

  bench_ops(m, bandwidth);
  bench_attention(o, arena, m.stream);
  // Last: a runtime that refuses to capture a launcher ends the run here, after every other figure.
  decode(m, bandwidth, true);
  cublasDestroy(m.cublas);
  cudaStreamDestroy(m.stream);
  return 0;
}
