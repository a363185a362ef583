// Metrics: the server's prometheus-cpp registry and its metric families (vLLM-like names under the
// `agentserve_` prefix). Engine-side numbers are read from Engine::counters() at scrape time; the server
// records per-response facts (status, time to first token) as responses end. It must never block the
// engine thread or hold a lock across a scrape of the engine.
#pragma once

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

class Metrics {
 public:
  Metrics();

  // One response ended with `status` (completed | incomplete | cancelled | failed); `usage` from the engine.
  void record_response(std::string_view status, const engine::Usage& usage);
  // Brings the engine-fed series up to `counters`, then renders the registry in Prometheus text format.
  std::string scrape(const engine::EngineCounters& counters);

 private:
  // Counters only go up: the engine's cumulative values are added as the difference since the last scrape.
  static void advance(prometheus::Counter& counter, int64_t total, int64_t& seen);

  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Counter& prompt_tokens_;
  prometheus::Counter& generation_tokens_;
  prometheus::Counter& prefix_hit_blocks_;
  prometheus::Histogram& time_to_first_token_;
  prometheus::Gauge& running_;
  prometheus::Gauge& waiting_;
  prometheus::Gauge& kv_blocks_free_;
  prometheus::Gauge& kv_blocks_total_;
  // KV tiers: one series per engine counter, so a scrape is a plain copy of cumulative values.
  struct TierSeries {
    prometheus::Counter* counter;
    int64_t seen = 0;
  };
  prometheus::Family<prometheus::Counter>& kv_tier_family_;
  std::vector<TierSeries> kv_tier_series_;  // in the order of tier_values()
  prometheus::Counter& restored_tokens_;

  std::mutex mutex_;  // scrapes may come from several io threads at once
  int64_t seen_prompt_tokens_ = 0;
  int64_t seen_generation_tokens_ = 0;
  int64_t seen_prefix_hit_blocks_ = 0;
  int64_t seen_restored_tokens_ = 0;
};

}  // namespace agentserve::server
