#include "engine/engine.h"

#include <algorithm>
#include <future>

#include <pthread.h>

#include "engine/weight_manifest.h"
#include "spdlog/spdlog.h"

namespace agentserve::engine {
namespace {

size_t sz_t(int v) {
  return static_cast<size_t>(v);
}

double seconds_between(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// The constraint's mask for the next token, restricted to `known` (empty: every id). False when no id is
// left, which would otherwise surface as a puzzling "no finite logit" from the sampler.
bool constrained_mask(TokenConstraint& constraint, std::span<const uint32_t> known, size_t vocab,
                      std::vector<uint32_t>& mask) {
  mask.resize((vocab + 31) / 32);
  constraint.fill_allowed(mask);
  if (vocab % 32 != 0) mask.back() &= (1u << (vocab % 32)) - 1u;
  uint32_t any = 0;
  for (size_t w = 0; w < mask.size(); ++w) {
    if (!known.empty()) mask[w] &= known[w];
    any |= mask[w];
  }
  return any != 0;
}

}  // namespace

const char* finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::kNone:
      return "none";
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kCancelled:
      return "cancelled";
    case FinishReason::kError:
      return "error";
  }
  return "unknown";
}

Result<std::unique_ptr<Engine>> Engine::open(const EngineOptions& options) {
  std::unique_ptr<Engine> engine(new Engine());
  AS_RETURN_IF_ERROR(engine->init(options));
  engine->thread_ = std::thread([e = engine.get()] { e->run(); });
  return engine;
}

Status Engine::init(const EngineOptions& options) {
  options_ = options;
  if (options.block_size < 1 || options.block_size > 1024) {
    return Status::invalid_argument("block_size must be in [1, 1024]");
  }
  if (options.max_step_tokens < 1) return Status::invalid_argument("max_step_tokens must be at least 1");
  if (options.max_running < 1) return Status::invalid_argument("max_running must be at least 1");
  AS_ASSIGN_OR_RETURN(config_, load_model_config(options.model_dir));
  AS_ASSIGN_OR_RETURN(auto weights, ModelWeights::open(options.model_dir, config_));
  weights_ = std::make_unique<ModelWeights>(std::move(weights));
  AS_ASSIGN_OR_RETURN(auto tokenizer, Tokenizer::load(options.model_dir));
  tokenizer_.emplace(std::move(tokenizer));
  if (!options.model_fingerprint.empty()) {
    fingerprint_ = options.model_fingerprint;
  } else {
    AS_ASSIGN_OR_RETURN(fingerprint_, engine::model_fingerprint(options.model_dir));
  }
  for (int64_t id : config_.eos_token_ids) eos_ids_.push_back(static_cast<int32_t>(id));
  if (eos_ids_.empty()) {
    for (const char* name : {"<|im_end|>", "<|endoftext|>"}) {
      if (auto id = tokenizer_->token_to_id(name)) eos_ids_.push_back(*id);
    }
  }

  // The embedding has padding rows past the tokenizer's last id (151669 of 151936 for Qwen3): a random
  // or undertrained model could pick one, and it would decode to nothing. The sampler never sees them.
  const int64_t tokenizer_vocab = tokenizer_->vocab_size();
  if (tokenizer_vocab < config_.vocab_size) {
    sample_mask_.assign(static_cast<size_t>((config_.vocab_size + 31) / 32), 0u);
    for (int64_t id = 0; id < tokenizer_vocab; ++id)
      sample_mask_[static_cast<size_t>(id / 32)] |= 1u << (id % 32);
  }

  max_context_ = static_cast<int>(std::min<int64_t>(config_.max_position_embeddings, INT32_MAX));
  if (options.max_context > 0) max_context_ = std::min(max_context_, options.max_context);

  const int n_threads = options.n_threads > 0
                            ? options.n_threads
                            : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const ParallelLayout parallel{.tensor_parallel_size = options.tensor_parallel_size,
                                .expert_parallel = options.expert_parallel};
  AS_RETURN_IF_ERROR(validate_parallel_layout(config_, parallel));
  const int tp = parallel.tensor_parallel_size;
  if (tp > 1 && (!options.data_dir.empty() || options.store != nullptr || options.host_kv_bytes > 0))
    return Status::invalid_argument("KV tiers (data dir, host KV) need tensor_parallel_size 1");
  // Prefix keys include the parallel layout: a block holds one rank's kv heads.
  if (tp > 1) fingerprint_ += "/tp" + std::to_string(tp) + (options.expert_parallel ? "-ep" : "");
  const int rank_threads = std::max(1, n_threads / tp);
  pool_ = std::make_unique<ThreadPool>(rank_threads);

  AS_ASSIGN_OR_RETURN(
      model_,
      ForwardModel::create(config_, *weights_, *pool_,
                           {.backend = options.backend,
                            .layout = parallel,
                            .max_step_tokens = options.max_step_tokens,
                            .bf16_activations = options.bf16_activations,
                            .threads_per_rank = rank_threads,
                            .block_size = options.block_size,
                            .kv_cache_bytes = options.kv_cache_bytes,
                            .max_kv_blocks = int64_t{options.max_running} *
                                             ((max_context_ + options.block_size - 1) / options.block_size),
                            .max_context = max_context_}));
  // Prefix keys include the KV element type: an f32 block must never load into a bf16 pool, or back.
  if (model_->kv_dtype() != kernels::DType::kF32)
    fingerprint_ += std::string("/kv-") + std::string(kernels::dtype_name(model_->kv_dtype()));
  const int n_blocks = model_->num_kv_blocks();
  if (!options.data_dir.empty() || options.store != nullptr || options.host_kv_bytes > 0) {
    AS_ASSIGN_OR_RETURN(tiers_, KvTiers::open({.data_dir = options.data_dir,
                                               .store = options.store,
                                               .host_kv_bytes = options.host_kv_bytes,
                                               .disk_kv_quota_bytes = options.disk_kv_quota_bytes},
                                              fingerprint_, model_->kv_blocks()));
    // The pool calls this before the evicted block can be rewritten, so its bytes and tokens are intact.
    blocks_ = std::make_unique<memory::BlockManager>(
        n_blocks, options.block_size, [this](int block, const memory::BlockKey& key) {
          tiers_->spill(block, key, blocks_->block_tokens(block));
        });
    blocks_->set_block_source(tiers_.get());
  } else {
    blocks_ = std::make_unique<memory::BlockManager>(n_blocks, options.block_size);
  }
  scheduler_ = std::make_unique<Scheduler>(
      SchedulerOptions{.max_step_tokens = options.max_step_tokens, .max_running = options.max_running},
      *blocks_);
  counters_.kv_blocks_total = n_blocks;
  counters_.kv_blocks_free = n_blocks;
  spdlog::info(
      "engine: {} layers, {} experts (top-{}), {} threads, forward on {}, {} KV blocks of {} tokens "
      "({:.1f} MiB)",
      config_.num_hidden_layers, config_.num_experts, config_.num_experts_per_tok, n_threads,
      model_->description(), n_blocks, options.block_size,
      static_cast<double>(model_->kv_bytes()) / (1 << 20));
  if (tp > 1) {
    spdlog::info("engine: {} ranks ({} parallel MoE), {} threads each, KV blocks hold {} kv heads per rank",
                 tp, options.expert_parallel ? "expert" : "tensor", rank_threads, kv_layout().n_kv_heads);
  }
  return {};
}

Engine::~Engine() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  // The engine thread has released every sequence: what T0 and T1 still cache goes to disk for the next
  // engine on this data_dir.
  if (tiers_ && blocks_) {
    Status status = tiers_->flush(*blocks_);
    if (!status.ok()) spdlog::warn("engine: KV flush on close incomplete: {}", status.to_string());
  }
}

Result<RequestId> Engine::submit(GenerationRequest request) {
  if (request.prompt.empty()) return Status::invalid_argument("prompt is empty: give at least one token");
  for (size_t i = 0; i < request.prompt.size(); ++i) {
    const int32_t id = request.prompt[i];
    if (id < 0 || id >= config_.vocab_size) {
      return Status::invalid_argument("prompt token " + std::to_string(i) + " has id " + std::to_string(id) +
                                      ", outside the vocabulary [0, " + std::to_string(config_.vocab_size) +
                                      ")");
    }
  }
  const int prompt_len = static_cast<int>(request.prompt.size());
  if (prompt_len >= max_context_) {
    return Status::out_of_range("prompt has " + std::to_string(prompt_len) +
                                " tokens; the context limit is " + std::to_string(max_context_) +
                                " and at least one token must be generated");
  }
  AS_RETURN_IF_ERROR(request.sampling.validate(static_cast<int>(config_.vocab_size)));
  const int64_t final_len =
      std::min<int64_t>(static_cast<int64_t>(prompt_len) + request.sampling.max_tokens, max_context_);
  const int64_t blocks_needed = (final_len + options_.block_size - 1) / options_.block_size;
  if (blocks_needed > counters_.kv_blocks_total) {
    return Status::resource_exhausted(
        "request needs up to " + std::to_string(blocks_needed) + " KV blocks; the pool has " +
        std::to_string(counters_.kv_blocks_total) + " (raise the KV cache size or lower max_tokens)");
  }
  AS_ASSIGN_OR_RETURN(
      auto sampler, Sampler::create(request.sampling, static_cast<int>(config_.vocab_size), request.prompt));

  int64_t waiting = 0;
  {
    std::lock_guard lock(counters_mutex_);
    waiting = counters_.waiting;
  }
  std::lock_guard lock(mutex_);
  if (stopping_) return Status::failed_precondition("engine is shutting down");
  if (static_cast<int64_t>(inbox_.size()) + waiting >= options_.max_waiting) {
    return Status::resource_exhausted("engine queue is full (" + std::to_string(options_.max_waiting) + ")");
  }
  const RequestId id = next_id_++;
  auto seq = std::make_unique<Sequence>(id, std::move(request), std::move(sampler),
                                        StreamingDetokenizer(*tokenizer_));
  seq->prompt_tokens = prompt_len;
  seq->kv.tokens = seq->request.prompt;
  seq->kv.salt = memory::make_salt(fingerprint_, seq->request.cache_salt);
  seq->submitted_at = std::chrono::steady_clock::now();
  inbox_.push_back(std::move(seq));
  wake_.notify_one();
  return id;
}

void Engine::cancel(RequestId id) {
  {
    std::lock_guard lock(mutex_);
    cancels_.push_back(id);
  }
  wake_.notify_one();
}

void Engine::run() {
  // Named so per-thread CPU (top -H, /proc/PID/task) tells the engine from io and storage threads.
  ::pthread_setname_np(::pthread_self(), "as-engine");
  while (true) {
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] {
        return stopping_ || !inbox_.empty() || !cancels_.empty() || !persists_.empty() || !scheduler_->idle();
      });
      if (stopping_) break;
    }
    drain_inbox();
    step();
  }
  // Shutdown: everything still queued or running ends as cancelled.
  drain_inbox();
  std::lock_guard model_lock(model_mutex_);
  std::vector<Sequence*> remaining;
  for (auto& [id, seq] : live_) remaining.push_back(seq.get());
  for (Sequence* seq : remaining) finish(seq, FinishReason::kCancelled);
}

void Engine::drain_inbox() {
  std::vector<std::unique_ptr<Sequence>> arrived;
  std::vector<RequestId> cancels;
  std::vector<PersistJob> persists;
  {
    std::lock_guard lock(mutex_);
    arrived.swap(inbox_);
    cancels.swap(cancels_);
    persists.swap(persists_);
  }
  std::lock_guard model_lock(model_mutex_);
  // Between steps T0 holds every committed block intact, so the copies persist takes are consistent.
  for (PersistJob& job : persists) {
    tiers_->persist(job.tokens, job.salt, *blocks_,
                    [done = std::move(job.done)](Result<int> stored) { done->set_value(std::move(stored)); });
  }
  for (auto& seq : arrived) {
    Sequence* raw = seq.get();
    live_.emplace(raw->id, std::move(seq));
    scheduler_->add(raw);
  }
  for (RequestId id : cancels) {
    auto it = live_.find(id);
    if (it != live_.end()) finish(it->second.get(), FinishReason::kCancelled);
  }
}

void Engine::finish(Sequence* seq, FinishReason reason, Status error) {
  scheduler_->remove(seq);
  GenerationEvent event;
  event.request_id = seq->id;
  event.finished = true;
  event.finish_reason = reason;
  event.error = std::move(error);
  if (reason != FinishReason::kError && reason != FinishReason::kCancelled) {
    if (!seq->stop_matcher.stopped()) {
      event.text = std::string(seq->stop_matcher.finish(seq->detokenizer.finish()));
    }
  }
  const auto now = std::chrono::steady_clock::now();
  event.usage.prompt_tokens = seq->prompt_tokens;
  event.usage.cached_tokens = std::max(0, seq->cached_tokens);
  event.usage.restored_tokens = std::min(seq->kv.restored_tokens, event.usage.cached_tokens);
  event.usage.completion_tokens = seq->generated;
  event.usage.total_time_s = seconds_between(seq->submitted_at, now);
  if (seq->first_token_at)
    event.usage.time_to_first_token_s = seconds_between(seq->submitted_at, *seq->first_token_at);
  {
    std::lock_guard lock(counters_mutex_);
    counters_.requests_finished++;
    counters_.prompt_tokens += seq->prompt_tokens;
    counters_.cached_prompt_tokens += std::max(0, seq->cached_tokens);
  }
  if (seq->request.on_event) seq->request.on_event(event);
  live_.erase(seq->id);
}

FinishReason Engine::accept_token(Sequence* seq, const SampleResult& sample, GenerationEvent& event) {
  const int32_t token = sample.token;
  (void)seq->sampler.accept(
      token);  // fails only for an id outside the vocabulary, which sample() never returns
  seq->kv.tokens.push_back(token);
  seq->generated++;
  if (!seq->first_token_at) seq->first_token_at = std::chrono::steady_clock::now();
  event.tokens.push_back(token);
  if (sample.logprob) event.logprobs.push_back({token, *sample.logprob});

  // A stop token ends the text before it; its own text is never released.
  if (is_stop_token(seq->request.sampling, token, eos_ids_)) return FinishReason::kStop;
  const StopUpdate update = seq->stop_matcher.feed(seq->detokenizer.push(token));
  event.text += update.emit;
  if (update.stopped) return FinishReason::kStop;
  if (seq->generated >= seq->request.sampling.max_tokens ||
      static_cast<int>(seq->kv.tokens.size()) >= max_context_) {
    return FinishReason::kLength;
  }
  return FinishReason::kNone;
}

void Engine::step() {
  std::lock_guard model_lock(model_mutex_);
  ScheduledStep plan = scheduler_->schedule();
  for (Sequence* seq : plan.rejected) {
    finish(seq, FinishReason::kError,
           Status::resource_exhausted("the KV cache cannot hold this sequence even alone"));
  }
  if (plan.chunks.empty()) return;

  forward_chunks_.clear();
  for (const ScheduledChunk& c : plan.chunks) {
    const auto& tokens = c.sequence->kv.tokens;
    forward_chunks_.push_back(
        {.tokens = std::span<const int32_t>(tokens).subspan(sz_t(c.start), sz_t(c.n_tokens)),
         .start_position = c.start,
         .block_table = c.sequence->kv.block_table,
         .logits = c.samples && !c.sequence->request.prefill_only ? LogitsWanted::kLast
                                                                   : LogitsWanted::kNone});
  }
  Status status = model_->forward(forward_chunks_, logits_);
  if (!status.ok()) {
    for (const ScheduledChunk& c : plan.chunks) finish(c.sequence, FinishReason::kError, status);
    return;
  }

  int64_t prefill = 0, decoded = 0;
  size_t row = 0;
  const size_t vocab = static_cast<size_t>(config_.vocab_size);
  for (const ScheduledChunk& c : plan.chunks) {
    Sequence* seq = c.sequence;
    const bool in_prompt = c.start < seq->prompt_tokens;
    if (in_prompt) prefill += std::min(c.start + c.n_tokens, seq->prompt_tokens) - c.start;
    // Fails only if the scheduler handed out a chunk past the sequence's blocks, which it never does.
    (void)blocks_->commit_computed(seq->kv, c.start + c.n_tokens);
    if (!c.samples) continue;
    if (seq->request.prefill_only) {
      // The prompt's KV is in place: that was the whole request (its TTFT is the prefill time).
      seq->first_token_at = std::chrono::steady_clock::now();
      finish(seq, FinishReason::kStop);
      continue;
    }
    std::span<float> row_logits(logits_.data() + row * vocab, vocab);
    ++row;
    TokenConstraint* constraint = seq->request.constraint.get();
    std::span<const uint32_t> allowed = sample_mask_;
    if (constraint) {
      if (!constrained_mask(*constraint, sample_mask_, vocab, constraint_mask_)) {
        finish(seq, FinishReason::kError,
               Status::failed_precondition("the request's token constraint allows no token at position " +
                                           std::to_string(seq->generated)));
        continue;
      }
      allowed = constraint_mask_;
    }
    auto sample = seq->sampler.sample(row_logits, allowed);
    if (!sample.ok()) {
      finish(seq, FinishReason::kError, sample.status());
      continue;
    }
    GenerationEvent event;
    event.request_id = seq->id;
    FinishReason reason = accept_token(seq, *sample, event);
    Status constrained;
    if (constraint) {
      constrained = constraint->accept(sample->token);
      if (constrained.ok() && reason == FinishReason::kNone && constraint->is_complete())
        reason = FinishReason::kStop;
    }
    ++decoded;
    if (seq->request.on_event) seq->request.on_event(event);
    if (!constrained.ok()) {
      finish(seq, FinishReason::kError, constrained);
    } else if (reason != FinishReason::kNone) {
      finish(seq, reason);
    }
  }

  if (tiers_) tiers_->submit_spills();
  std::lock_guard lock(counters_mutex_);
  counters_.steps++;
  counters_.prefill_tokens += prefill;
  counters_.decode_tokens += decoded;
  counters_.preemptions += static_cast<int64_t>(plan.preempted.size());
  counters_.running = static_cast<int64_t>(scheduler_->num_running());
  counters_.waiting = static_cast<int64_t>(scheduler_->num_waiting());
  const auto stats = blocks_->stats();
  counters_.kv_blocks_free = stats.num_free;
  counters_.prefix_hit_blocks = stats.hit_blocks;
  counters_.prefix_miss_blocks = stats.miss_blocks;
  counters_.prefix_loaded_blocks = stats.loaded_blocks;
  counters_.restored_tokens = stats.loaded_blocks * options_.block_size;
}

EngineCounters Engine::counters() const {
  EngineCounters c;
  {
    std::lock_guard lock(counters_mutex_);
    c = counters_;
  }
  // Live: the storage thread moves these between steps.
  if (tiers_) c.kv_tiers = tiers_->counters();
  return c;
}

void Engine::prefetch(std::vector<int32_t> tokens, std::string cache_salt) {
  if (tiers_) tiers_->prefetch(tokens, memory::make_salt(fingerprint_, cache_salt));
}

void Engine::pin(const std::string& pin_id, std::vector<int32_t> tokens, std::string cache_salt) {
  if (tiers_) tiers_->pin(pin_id, tokens, memory::make_salt(fingerprint_, cache_salt));
}

void Engine::unpin(const std::string& pin_id) {
  if (tiers_) tiers_->unpin(pin_id);
}

void Engine::discard(std::vector<int32_t> tokens, std::string cache_salt, int from_token) {
  if (tiers_) tiers_->discard(tokens, memory::make_salt(fingerprint_, cache_salt), from_token);
}

std::future<Result<int>> Engine::persist(std::vector<int32_t> tokens, std::string cache_salt) {
  auto done = std::make_shared<std::promise<Result<int>>>();
  std::future<Result<int>> result = done->get_future();
  if (!tiers_) {
    done->set_value(0);
    return result;
  }
  {
    std::lock_guard lock(mutex_);
    if (stopping_) {
      done->set_value(Status::failed_precondition("engine is shutting down"));
      return result;
    }
    persists_.push_back({std::move(tokens), memory::make_salt(fingerprint_, cache_salt), std::move(done)});
  }
  wake_.notify_one();
  return result;
}

void Engine::sync_kv_tiers() {
  if (tiers_) tiers_->sync();
}

ExpertLoad Engine::expert_load() const {
  std::lock_guard lock(const_cast<std::mutex&>(model_mutex_));
  return model_->expert_load();
}

Result<Generation> Engine::generate(std::vector<int32_t> prompt, const SamplingParams& sampling,
                                    const std::string& cache_salt) {
  auto done = std::make_shared<std::promise<void>>();
  auto result = std::make_shared<Generation>();
  auto error = std::make_shared<Status>();
  GenerationRequest request{.prompt = std::move(prompt), .sampling = sampling, .cache_salt = cache_salt};
  request.on_event = [done, result, error](const GenerationEvent& event) {
    result->tokens.insert(result->tokens.end(), event.tokens.begin(), event.tokens.end());
    result->text += event.text;
    result->logprobs.insert(result->logprobs.end(), event.logprobs.begin(), event.logprobs.end());
    if (event.finished) {
      result->finish_reason = event.finish_reason;
      result->usage = event.usage;
      if (event.finish_reason == FinishReason::kError) *error = event.error;
      done->set_value();
    }
  };
  auto future = done->get_future();
  AS_RETURN_IF_ERROR(submit(std::move(request)).status());
  future.wait();
  if (result->finish_reason == FinishReason::kError) return *error;
  return std::move(*result);
}

Result<std::vector<float>> Engine::score(std::span<const int32_t> ids) {
  if (ids.empty()) return Status::invalid_argument("nothing to score: ids are empty");
  if (static_cast<int>(ids.size()) > max_context_) {
    return Status::out_of_range("ids have " + std::to_string(ids.size()) +
                                " tokens, past the context limit " + std::to_string(max_context_));
  }
  std::lock_guard model_lock(model_mutex_);
  memory::SequenceState seq;
  seq.tokens.assign(ids.begin(), ids.end());
  // Scoring needs the logits of every position, so it reuses no cached block, and publishes none (they
  // would only crowd out requests' blocks in T0 and the spill tiers).
  seq.salt = memory::make_salt(fingerprint_, "\x01score");
  seq.cacheable = false;
  const int n = static_cast<int>(ids.size());
  const int chunk = model_->max_step_tokens();
  std::vector<float> all;
  all.reserve(static_cast<size_t>(n) * static_cast<size_t>(config_.vocab_size));
  std::vector<float> rows;
  Status status;
  for (int start = 0; start < n && status.ok(); start += chunk) {
    const int len = std::min(chunk, n - start);
    if (start == 0) {
      if (!blocks_->can_allocate(seq, len))
        status = Status::resource_exhausted("KV cache is busy or too small");
      if (status.ok()) status = blocks_->allocate(seq, len).status();
      if (status.ok() && seq.num_computed != 0)
        status = Status::internal("score sequence reused cached blocks");
    } else if (!blocks_->can_append(seq, len)) {
      status = Status::resource_exhausted("KV cache is busy or too small to score " + std::to_string(n) +
                                          " tokens");
    } else {
      status = blocks_->append(seq, len);
    }
    if (!status.ok()) break;
    const ForwardChunk fc{.tokens = std::span<const int32_t>(seq.tokens)
                                        .subspan(static_cast<size_t>(start), static_cast<size_t>(len)),
                          .start_position = start,
                          .block_table = seq.block_table,
                          .logits = LogitsWanted::kAll};
    status = model_->forward(std::span<const ForwardChunk>(&fc, 1), rows);
    if (status.ok()) {
      all.insert(all.end(), rows.begin(), rows.end());
      status = blocks_->commit_computed(seq, start + len);
    }
  }
  blocks_->release(seq);
  if (!status.ok()) return status;
  return all;
}

}  // namespace agentserve::engine
