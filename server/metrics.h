// Metrics: the server's prometheus-cpp registry and its metric families (vLLM-like names under the
// `agentserve_` prefix). Engine-side numbers are read from Engine::counters() at scrape time; the transport
// records per-response facts (status, latencies), per-request HTTP outcomes, error codes, session counts
// and the time from a token leaving the engine to its bytes being written. Every record_* / observe_* /
// set_* method is thread-safe and cheap enough for an io thread. It must never block the engine thread or
// hold a lock across a scrape of the engine.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "engine/engine.h"

namespace agentserve::server {

class ServerModeration;

class Metrics {
 public:
  Metrics();

  // One response ended with `status` (completed | incomplete | cancelled | failed); `usage` from the engine.
  // Feeds requests_total, time_to_first_token, e2e_request_latency and inter_token_latency (the response's
  // mean gap between tokens, once per token after the first).
  void record_response(std::string_view status, const engine::Usage& usage);
  // An error a client was sent, by its stable code ("session_not_found", "invalid_json", ...).
  void record_error(std::string_view code);
  // One plain HTTP request answered: `route` is the route's pattern ("/v1/sessions/{id}"), never the raw
  // path, so client-chosen paths cannot grow the series without bound.
  void record_http_request(std::string_view route, int status);
  // Seconds from the engine callback that carried a token to the completed write of its frame or chunk.
  void observe_token_write_latency(double seconds);
  // Sessions held in memory (active) and stored in the session store (persisted).
  void set_sessions_active(int64_t n);
  void set_sessions_persisted(int64_t n);

  // Brings the engine-fed series up to `counters` (`block_size`: tokens per KV block, to report cached
  // tokens by source), then renders the registry in Prometheus text format. `moderation` (null when off)
  // adds agentserve_moderation_latency_seconds, _checks_total{kind, verdict}, _failures_total{reason} and
  // _blocked_responses_total, copied from its atomics at scrape time.
  std::string scrape(const engine::EngineCounters& counters, int block_size,
                     const ServerModeration* moderation = nullptr);

 private:
  // Counters only go up: the engine's cumulative values are added as the difference since the last scrape.
  static void advance(prometheus::Counter& counter, int64_t total, int64_t& seen);

  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Counter>& errors_;
  prometheus::Family<prometheus::Counter>& http_requests_;
  prometheus::Counter& prompt_tokens_;
  prometheus::Counter& generation_tokens_;
  prometheus::Counter& prefix_hit_blocks_;
  prometheus::Counter& prefix_queries_;
  prometheus::Counter& prefix_hits_;
  prometheus::Family<prometheus::Counter>& cached_tokens_family_;
  prometheus::Counter& cached_tokens_device_;
  prometheus::Counter& cached_tokens_host_;
  prometheus::Counter& cached_tokens_disk_;
  prometheus::Histogram& time_to_first_token_;
  prometheus::Histogram& inter_token_latency_;
  prometheus::Histogram& e2e_latency_;
  prometheus::Histogram& token_write_latency_;
  prometheus::Gauge& running_;
  prometheus::Gauge& waiting_;
  prometheus::Gauge& kv_blocks_free_;
  prometheus::Gauge& kv_blocks_total_;
  prometheus::Gauge& kv_usage_;
  prometheus::Gauge& sessions_active_;
  prometheus::Gauge& sessions_persisted_;
  // KV tiers: one series per engine counter, so a scrape is a plain copy of cumulative values.
  struct TierSeries {
    prometheus::Counter* counter;
    int64_t seen = 0;
  };
  prometheus::Family<prometheus::Counter>& kv_tier_family_;
  std::vector<TierSeries> kv_tier_series_;  // in the order of tier_values()
  prometheus::Counter& restored_tokens_;
  // KV tier gauges: bytes and blocks held now, and whether T2 writes are paused.
  prometheus::Gauge& kv_host_bytes_used_;
  prometheus::Gauge& kv_disk_usage_bytes_;
  prometheus::Gauge& kv_pinned_blocks_;
  prometheus::Gauge& kv_spill_queue_bytes_;
  prometheus::Gauge& kv_disk_spill_stalled_;
  prometheus::Gauge& kv_pinned_retry_blocks_;

  std::mutex mutex_;  // scrapes may come from several io threads at once
  int64_t seen_prompt_tokens_ = 0;
  int64_t seen_generation_tokens_ = 0;
  int64_t seen_prefix_hit_blocks_ = 0;
  int64_t seen_restored_tokens_ = 0;
  int64_t seen_prefix_queries_ = 0;
  int64_t seen_prefix_hits_ = 0;
  int64_t seen_cached_device_ = 0;
  int64_t seen_cached_host_ = 0;
  int64_t seen_cached_disk_ = 0;
};

}  // namespace agentserve::server
