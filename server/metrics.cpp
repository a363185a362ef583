#include "server/metrics.h"

#include <prometheus/text_serializer.h>

namespace agentserve::server {
namespace {

prometheus::Counter& counter(prometheus::Registry& registry, const char* name, const char* help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(registry).Add({});
}

prometheus::Gauge& gauge(prometheus::Registry& registry, const char* name, const char* help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(registry).Add({});
}

// The tier counters in a fixed order: (event, tier) labels and the engine value each one mirrors.
struct TierField {
  const char* event;
  const char* tier;
  int64_t engine::KvTierCounters::*value;
};
constexpr TierField kTierFields[] = {
    {"hit", "host", &engine::KvTierCounters::host_hits},
    {"miss", "host", &engine::KvTierCounters::host_misses},
    {"hit", "disk", &engine::KvTierCounters::disk_hits},
    {"miss", "disk", &engine::KvTierCounters::disk_misses},
    {"spill_bytes", "host", &engine::KvTierCounters::host_bytes_spilled},
    {"spill_bytes", "disk", &engine::KvTierCounters::disk_bytes_spilled},
    {"load_bytes", "host", &engine::KvTierCounters::host_bytes_loaded},
    {"load_bytes", "disk", &engine::KvTierCounters::disk_bytes_loaded},
    {"dropped_corrupt", "disk", &engine::KvTierCounters::dropped_corrupt},
    {"write_error", "disk", &engine::KvTierCounters::disk_write_errors},
};

}  // namespace

Metrics::Metrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      requests_(prometheus::BuildCounter()
                    .Name("agentserve_requests_total")
                    .Help("Responses that ended, by status")
                    .Register(*registry_)),
      prompt_tokens_(
          counter(*registry_, "agentserve_prompt_tokens_total", "Prompt tokens of submitted requests")),
      generation_tokens_(
          counter(*registry_, "agentserve_generation_tokens_total", "Generated (sampled) tokens")),
      prefix_hit_blocks_(counter(*registry_, "agentserve_prefix_cache_hit_blocks_total",
                                 "KV blocks found in the prefix cache instead of computed")),
      time_to_first_token_(
          prometheus::BuildHistogram()
              .Name("agentserve_time_to_first_token_seconds")
              .Help("Time from submit to the first generated token")
              .Register(*registry_)
              .Add({}, prometheus::Histogram::BucketBoundaries{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08,
                                                               0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                                                               20.0, 40.0, 80.0})),
      running_(gauge(*registry_, "agentserve_num_requests_running", "Requests in the decode batch")),
      waiting_(gauge(*registry_, "agentserve_num_requests_waiting", "Requests queued for the engine")),
      kv_blocks_free_(
          gauge(*registry_, "agentserve_kv_blocks_free", "Free KV blocks (cached ones included)")),
      kv_blocks_total_(gauge(*registry_, "agentserve_kv_blocks_total", "KV blocks in the pool")),
      kv_tier_family_(
          prometheus::BuildCounter()
              .Name("agentserve_kv_tier_events_total")
              .Help("KV tier traffic by event (hit, miss, spill_bytes, load_bytes, dropped_corrupt, "
                    "write_error) and tier (host = T1, disk = T2)")
              .Register(*registry_)),
      restored_tokens_(counter(*registry_, "agentserve_kv_restored_tokens_total",
                               "Tokens whose KV was loaded from host RAM or disk instead of recomputed")) {
  for (const TierField& field : kTierFields) {
    kv_tier_series_.push_back({&kv_tier_family_.Add({{"event", field.event}, {"tier", field.tier}})});
  }
}

void Metrics::record_response(std::string_view status, const engine::Usage& usage) {
  std::lock_guard lock(mutex_);
  requests_.Add({{"status", std::string(status)}}).Increment();
  if (usage.completion_tokens > 0) time_to_first_token_.Observe(usage.time_to_first_token_s);
}

void Metrics::advance(prometheus::Counter& counter, int64_t total, int64_t& seen) {
  if (total > seen) counter.Increment(static_cast<double>(total - seen));
  seen = std::max(seen, total);
}

std::string Metrics::scrape(const engine::EngineCounters& c) {
  std::lock_guard lock(mutex_);
  advance(prompt_tokens_, c.prompt_tokens, seen_prompt_tokens_);
  advance(generation_tokens_, c.decode_tokens, seen_generation_tokens_);
  advance(prefix_hit_blocks_, c.prefix_hit_blocks, seen_prefix_hit_blocks_);
  advance(restored_tokens_, c.restored_tokens, seen_restored_tokens_);
  for (size_t i = 0; i < kv_tier_series_.size(); ++i) {
    advance(*kv_tier_series_[i].counter, c.kv_tiers.*kTierFields[i].value, kv_tier_series_[i].seen);
  }
  running_.Set(static_cast<double>(c.running));
  waiting_.Set(static_cast<double>(c.waiting));
  kv_blocks_free_.Set(static_cast<double>(c.kv_blocks_free));
  kv_blocks_total_.Set(static_cast<double>(c.kv_blocks_total));
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

}  // namespace agentserve::server
