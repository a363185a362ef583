// Engine: the model behind a request queue. Callers on any thread submit requests (token ids, sampling,
// cache salt) and get events back through their callback; one engine thread runs continuous batching:
// each step it takes new requests and cancels, schedules (chunked prefill + decode under a token budget),
// runs one batched forward, samples, and streams tokens out. Prefix-cache hits skip their prefill; when KV
// blocks run out, the scheduler preempts instead of failing.
//
// The engine never sees JSON or sockets (the server layer does), and never blocks a caller's thread on the
// model except through the synchronous helpers meant for tools and tests (generate, score).
//
// KV tiers (kv_tiers.h): blocks the pool evicts spill to host RAM (T1) and then to RocksDB under data_dir
// (T2); admission loads a prompt's missing chain blocks from them instead of recomputing. T2 writes run on
// a storage thread; the engine thread reads disk only for the blocks an admission needs, and prefetch()
// moves a chain's blocks from disk to RAM before its request arrives.
//
// Backends (forward_model.h): the forward runs on the host CPU engine ("cpu", the default) or on a Backend
// ("backend-cpu", "cuda") with the KV pool in the backend's memory; scheduling, prefix caching, tiers and
// sampling are the same code on every one (sampling stays on the host).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "base/status.h"
#include "base/thread_pool.h"
#include "engine/forward_model.h"
#include "engine/kv_tiers.h"
#include "engine/model_config.h"
#include "engine/model_weights.h"
#include "engine/qwen3_moe_model.h"
#include "engine/request.h"
#include "engine/scheduler.h"
#include "engine/tokenizer.h"
#include "memory/block_manager.h"

namespace agentserve::engine {

struct EngineOptions {
  std::filesystem::path model_dir;
  // What runs the forward (forward_model.h): "cpu" (ParallelModel over a host arena), "backend-cpu"
  // (BackendModel over the CPU backend, the GPU's code path) or "cuda" (BackendModel on GPU 0, the KV pool
  // sized from the device's free memory instead of kv_cache_bytes). Backends need tensor_parallel_size 1.
  std::string backend = "cpu";
  int n_threads = 0;                        // compute threads; 0 = the machine's hardware threads
  int block_size = 16;                      // tokens per KV block
  size_t kv_cache_bytes = size_t{1} << 30;  // T0 budget for KV blocks
  int max_step_tokens = 512;                // forward tokens per step (chunked prefill budget)
  int max_running = 64;                     // sequences decoded together
  int max_context = 0;                      // 0 = the model's max_position_embeddings
  int max_waiting = 4096;                   // queued requests beyond which submit() refuses
  // BF16 dot products for batched rows of BF16 weights (Qwen3MoeModel): about 2x prefill and batched
  // decode throughput on AVX512_BF16 CPUs, at a 2^-8 relative rounding of activations.
  bool bf16_activations = false;
  // Ranks the model is split over (parallel_model.h; threads of this process on CPU, n_threads shared out
  // between them) and whether MoE experts are split across them instead of their intermediate dimension.
  // The KV budget is for all ranks together; KV tiers need tensor_parallel_size 1.
  int tensor_parallel_size = 1;
  bool expert_parallel = false;
  // Identifies the weights in prefix-cache keys. Empty: derived from the checkpoint (weight manifest).
  std::string model_fingerprint;
  // KV spill tiers. data_dir: T2 (RocksDB in data_dir/rocksdb; empty = no persistence), kept across
  // restarts for the same model fingerprint and flushed on a clean close. host_kv_bytes: T1 budget in host
  // RAM (0 = no T1). disk_kv_quota_bytes: T2 budget in encoded block bytes.
  std::filesystem::path data_dir;
  // T2 in this open database instead of data_dir/rocksdb (the server shares one DB between the session
  // store and the KV tier). Must outlive the engine.
  memory::RocksDbStore* store = nullptr;
  size_t host_kv_bytes = 0;
  size_t disk_kv_quota_bytes = size_t{64} << 30;
};

// Cumulative counters since start (read from any thread).
struct EngineCounters {
  int64_t steps = 0;
  int64_t prompt_tokens = 0;   // prompt tokens of finished and running requests
  int64_t prefill_tokens = 0;  // prompt tokens actually computed (prefix hits skip theirs)
  int64_t cached_prompt_tokens = 0;
  int64_t decode_tokens = 0;  // sampled tokens
  int64_t preemptions = 0;
  int64_t requests_finished = 0;
  int64_t running = 0;
  int64_t waiting = 0;
  int64_t kv_blocks_total = 0;
  int64_t kv_blocks_free = 0;
  int64_t prefix_hit_blocks = 0;
  int64_t prefix_miss_blocks = 0;
  int64_t prefix_loaded_blocks = 0;  // blocks loaded from T1/T2 at admission (not in the hit count)
  int64_t restored_tokens = 0;       // tokens whose KV came from T1/T2 instead of prefill
  KvTierCounters kv_tiers;           // all zero without tiers
};

// The result of the synchronous generate().
struct Generation {
  std::vector<int32_t> tokens;
  std::string text;
  std::vector<TokenLogprob> logprobs;
  FinishReason finish_reason = FinishReason::kNone;
  Usage usage;
};

class Engine {
 public:
  // Loads config, weights (memory-mapped), tokenizer; sizes the KV pool; starts the engine thread.
  static Result<std::unique_ptr<Engine>> open(const EngineOptions& options);
  ~Engine();  // cancels what runs (callbacks see kCancelled) and joins the thread
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Validates and queues a request. Errors (nothing queued, no callback): empty prompt, a token id outside
  // the vocabulary, a prompt that leaves no room in the context, bad sampling values, a request that cannot
  // fit the KV pool even alone, a full queue, an engine shutting down.
  Result<RequestId> submit(GenerationRequest request);
  // Ends a request at the next step boundary (its callback gets finish_reason kCancelled). Unknown or
  // finished ids are ignored.
  void cancel(RequestId id);

  // Synchronous helpers built on submit(): run one request to its end.
  Result<Generation> generate(std::vector<int32_t> prompt, const SamplingParams& sampling,
                              const std::string& cache_salt = "");
  // Logits of every position of `ids` ([n, vocab] floats), computed with the engine's model outside the
  // batch loop (it waits for the engine to be idle between steps). For scoring tools and golden tests.
  Result<std::vector<float>> score(std::span<const int32_t> ids);

  // KV tier controls (any thread; no-ops without tiers). `cache_salt` is the tenant salt of the requests.
  // prefetch: reads the chain's blocks from T2 into T1 on the storage thread, so the next admission of
  // these tokens loads from RAM (call it on session resume, or when a session's next request is queued).
  void prefetch(std::vector<int32_t> tokens, std::string cache_salt);
  // pin: while pinned (by pin_id; pinning again replaces), the chain's blocks may move down the tiers but
  // are not thrown away (kv_tiers.h says what happens when pinned blocks alone exceed a budget).
  void pin(const std::string& pin_id, std::vector<int32_t> tokens, std::string cache_salt);
  void unpin(const std::string& pin_id);
  // discard: removes the chain's blocks from block from_token / block_size on from T1 and T2 (pass the end
  // of the prefix other sessions share, so shared blocks stay). Blocks T0 still caches stay there.
  void discard(std::vector<int32_t> tokens, std::string cache_salt, int from_token);
  // persist: write-through on commit. Makes the chain's full blocks that T0 or T1 hold durable in T2 (a
  // synced write; see KvTiers::persist), so a crash of the process loses none of them. Returns at once;
  // the future gives the number of leading chain blocks T2 then holds (0 without T2), or the write's
  // error, or FailedPrecondition when the engine is shutting down. Never wait on it on the engine thread
  // (an on_event callback).
  std::future<Result<int>> persist(std::vector<int32_t> tokens, std::string cache_salt);
  // Waits until the tiers' queued work (spills, prefetches, discards) is done. For tests and benchmarks.
  void sync_kv_tiers();

  EngineCounters counters() const;
  ExpertLoad expert_load() const;
  const ModelConfig& config() const { return config_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const std::string& model_fingerprint() const { return fingerprint_; }
  int max_context() const { return max_context_; }
  int n_threads() const { return pool_->size() * model_->n_ranks(); }
  // The layout of a KV block as the tiers store it (see KvBlockSpace for a backend's blocks).
  const memory::KvLayout& kv_layout() const { return model_->kv_blocks().layout(); }
  // What runs the forward: "cpu", "backend cpu", "backend cuda:0 (...)".
  std::string backend_description() const { return model_->description(); }

 private:
  Engine() = default;
  Status init(const EngineOptions& options);
  void run();
  void drain_inbox();
  void step();
  void finish(Sequence* seq, FinishReason reason, Status error = {});
  // Appends a sampled token to the sequence and its event; returns why the sequence ends, or kNone.
  FinishReason accept_token(Sequence* seq, const SampleResult& sample, GenerationEvent& event);

  EngineOptions options_;
  ModelConfig config_;
  std::unique_ptr<ModelWeights> weights_;
  std::optional<Tokenizer> tokenizer_;  // set by init(); Tokenizer has no empty state
  std::string fingerprint_;
  std::vector<int32_t> eos_ids_;
  std::vector<uint32_t> sample_mask_;  // ids the tokenizer knows; empty when that is all of the vocabulary
  int max_context_ = 0;
  std::unique_ptr<ThreadPool> pool_;
  std::unique_ptr<ForwardModel> model_;
  std::unique_ptr<KvTiers> tiers_;  // null without T1 and T2; declared before blocks_, which calls it
  std::unique_ptr<memory::BlockManager> blocks_;
  std::unique_ptr<Scheduler> scheduler_;

  // Inbox: filled by submit()/cancel() on any thread, drained by the engine thread.
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::vector<std::unique_ptr<Sequence>> inbox_;
  std::vector<RequestId> cancels_;
  struct PersistJob {
    std::vector<int32_t> tokens;
    memory::BlockKey salt;
    std::shared_ptr<std::promise<Result<int>>> done;
  };
  std::vector<PersistJob> persists_;
  bool stopping_ = false;
  RequestId next_id_ = 1;
  // Owned by the engine thread (model_mutex_ lets score() borrow the model between steps).
  std::mutex model_mutex_;
  std::unordered_map<RequestId, std::unique_ptr<Sequence>> live_;
  std::vector<float> logits_;
  std::vector<ForwardChunk> forward_chunks_;
  std::vector<uint32_t> constraint_mask_;  // scratch for a request's TokenConstraint, one word per 32 ids

  mutable std::mutex counters_mutex_;
  EngineCounters counters_;
  std::thread thread_;
};

}  // namespace agentserve::engine
