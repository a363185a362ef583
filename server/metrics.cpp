#include "server/metrics.h"

#include <algorithm>
#include <limits>

#include <prometheus/text_serializer.h>

#include "server/server_moderation.h"

namespace agentserve::server {
namespace {

prometheus::Counter& counter(prometheus::Registry& registry, const char* name, const char* help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(registry).Add({});
}

prometheus::Gauge& gauge(prometheus::Registry& registry, const char* name, const char* help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(registry).Add({});
}

prometheus::Histogram& histogram(prometheus::Registry& registry, const char* name, const char* help,
                                 prometheus::Histogram::BucketBoundaries buckets) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(registry).Add({}, std::move(buckets));
}

// vLLM's buckets for the latency histograms, so existing dashboards read ours unchanged.
const prometheus::Histogram::BucketBoundaries kTtftBuckets{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08,
                                                           0.1,   0.25,  0.5,  0.75, 1.0,  2.5,  5.0,
                                                           7.5,   10.0,  20.0, 40.0, 80.0};
const prometheus::Histogram::BucketBoundaries kItlBuckets{0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
                                                          0.4,  0.5,   0.75, 1.0,   2.5, 5.0,  7.5, 10.0};
const prometheus::Histogram::BucketBoundaries kE2eBuckets{0.3,  0.5,   0.8,   1.0,   1.5,  2.0,  2.5,
                                                          5.0,  10.0,  15.0,  20.0,  30.0, 40.0, 50.0,
                                                          60.0, 120.0, 240.0, 480.0, 960.0};
// Token -> written bytes is transport overhead: microseconds to milliseconds.
const prometheus::Histogram::BucketBoundaries kWriteBuckets{
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 1e-1, 2.5e-1, 1.0};

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
    {"spill_dropped", "disk", &engine::KvTierCounters::spills_dropped},
    {"pinned_spill_lost", "disk", &engine::KvTierCounters::pinned_spills_lost},
};

// The moderation client's atomics as Prometheus families (they are cumulative already, so a scrape copies).
std::vector<prometheus::MetricFamily> moderation_families(const ServerModeration& moderation) {
  const agent::ModerationStats& stats = moderation.stats();
  using prometheus::ClientMetric;
  using prometheus::MetricFamily;
  using prometheus::MetricType;
  static constexpr const char* kVerdicts[] = {"allowed", "flagged", "failed_blocked", "failed_passed"};
  MetricFamily checks{
      "agentserve_moderation_checks_total",
      "Moderation checks by kind (output_text, reasoning, tool_arguments, tool_result, input) "
      "and verdict (allowed, flagged, failed_blocked, failed_passed)",
      MetricType::Counter,
      {}};
  for (int kind = 0; kind < agent::kModerationKinds; ++kind) {
    for (int outcome = 0; outcome < agent::ModerationStats::kOutcomes; ++outcome) {
      ClientMetric m;
      m.label = {{"kind", std::string(agent::moderation_kind_name(static_cast<agent::ModerationKind>(kind)))},
                 {"verdict", kVerdicts[outcome]}};
      m.counter.value = static_cast<double>(stats.checks[kind][outcome].load());
      checks.metric.push_back(std::move(m));
    }
  }
  MetricFamily failures{"agentserve_moderation_failures_total",
                        "Moderation checks that got no verdict, by reason (timeout, connection, http_status, "
                        "bad_response)",
                        MetricType::Counter,
                        {}};
  for (int reason = 1; reason < agent::kModerationFailures; ++reason) {
    ClientMetric m;
    m.label = {{"reason",
                std::string(agent::moderation_failure_name(static_cast<agent::ModerationFailure>(reason)))}};
    m.counter.value = static_cast<double>(stats.failures[reason].load());
    failures.metric.push_back(std::move(m));
  }
  MetricFamily latency{"agentserve_moderation_latency_seconds",
                       "Time from starting a moderation check to its verdict, retries included",
                       MetricType::Histogram,
                       {}};
  ClientMetric h;
  uint64_t cumulative = 0;
  for (size_t i = 0; i < stats.latency_buckets.size(); ++i) {
    cumulative += stats.latency_buckets[i].load();
    const double bound = i < agent::ModerationStats::kLatencyBucketsMs.size()
                             ? agent::ModerationStats::kLatencyBucketsMs[i] / 1000.0
                             : std::numeric_limits<double>::infinity();
    h.histogram.bucket.push_back({cumulative, bound});
  }
  h.histogram.sample_count = cumulative;
  h.histogram.sample_sum = static_cast<double>(stats.latency_sum_us.load()) / 1e6;
  latency.metric.push_back(std::move(h));
  MetricFamily blocked{"agentserve_moderation_blocked_responses_total",
                       "Responses (and requests' input) that moderation blocked",
                       MetricType::Counter,
                       {}};
  ClientMetric b;
  b.counter.value = static_cast<double>(moderation.blocked_responses());
  blocked.metric.push_back(std::move(b));
  return {std::move(checks), std::move(failures), std::move(latency), std::move(blocked)};
}

}  // namespace

Metrics::Metrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      requests_(prometheus::BuildCounter()
                    .Name("agentserve_requests_total")
                    .Help("Responses that ended, by status")
                    .Register(*registry_)),
      errors_(prometheus::BuildCounter()
                  .Name("agentserve_errors_total")
                  .Help("Errors sent to clients, by code")
                  .Register(*registry_)),
      http_requests_(prometheus::BuildCounter()
                         .Name("agentserve_http_requests_total")
                         .Help("Plain HTTP requests answered, by route pattern and status")
                         .Register(*registry_)),
      prompt_tokens_(
          counter(*registry_, "agentserve_prompt_tokens_total", "Prompt tokens of submitted requests")),
      generation_tokens_(
          counter(*registry_, "agentserve_generation_tokens_total", "Generated (sampled) tokens")),
      prefix_hit_blocks_(counter(*registry_, "agentserve_prefix_cache_hit_blocks_total",
                                 "KV blocks found in the prefix cache instead of computed")),
      prefix_queries_(counter(*registry_, "agentserve_prefix_cache_queries_total",
                              "Prompt tokens looked up in the prefix cache")),
      prefix_hits_(counter(*registry_, "agentserve_prefix_cache_hits_total",
                           "Prompt tokens whose KV was found instead of computed")),
      cached_tokens_family_(prometheus::BuildCounter()
                                .Name("agentserve_cached_tokens_total")
                                .Help("Prompt tokens served from cached KV, by source (device = T0 pool, "
                                      "host = T1, disk = T2)")
                                .Register(*registry_)),
      cached_tokens_device_(cached_tokens_family_.Add({{"source", "device"}})),
      cached_tokens_host_(cached_tokens_family_.Add({{"source", "host"}})),
      cached_tokens_disk_(cached_tokens_family_.Add({{"source", "disk"}})),
      time_to_first_token_(histogram(*registry_, "agentserve_time_to_first_token_seconds",
                                     "Time from submit to the first generated token", kTtftBuckets)),
      inter_token_latency_(histogram(*registry_, "agentserve_inter_token_latency_seconds",
                                     "Time between generated tokens (a response's mean gap, per token)",
                                     kItlBuckets)),
      e2e_latency_(histogram(*registry_, "agentserve_e2e_request_latency_seconds",
                             "Time from submit to the end of a response", kE2eBuckets)),
      token_write_latency_(histogram(*registry_, "agentserve_token_write_latency_seconds",
                                     "Time from the engine handing out a token to its frame being written",
                                     kWriteBuckets)),
      running_(gauge(*registry_, "agentserve_num_requests_running", "Requests in the decode batch")),
      waiting_(gauge(*registry_, "agentserve_num_requests_waiting", "Requests queued for the engine")),
      kv_blocks_free_(
          gauge(*registry_, "agentserve_kv_blocks_free", "Free KV blocks (cached ones included)")),
      kv_blocks_total_(gauge(*registry_, "agentserve_kv_blocks_total", "KV blocks in the pool")),
      kv_usage_(gauge(*registry_, "agentserve_kv_cache_usage_perc",
                      "Fraction of the T0 KV pool held by running requests (1 = full)")),
      sessions_active_(gauge(*registry_, "agentserve_sessions_active", "Sessions held in memory")),
      sessions_persisted_(
          gauge(*registry_, "agentserve_sessions_persisted", "Sessions stored in the session store")),
      kv_tier_family_(
          prometheus::BuildCounter()
              .Name("agentserve_kv_tier_events_total")
              .Help("KV tier traffic by event (hit, miss, spill_bytes, load_bytes, dropped_corrupt, "
                    "write_error, spill_dropped, pinned_spill_lost) and tier (host = T1, disk = T2)")
              .Register(*registry_)),
      restored_tokens_(counter(*registry_, "agentserve_kv_restored_tokens_total",
                               "Tokens whose KV was loaded from host RAM or disk instead of recomputed")),
      kv_host_bytes_used_(
          gauge(*registry_, "agentserve_kv_host_bytes_used", "T1 (host RAM) bytes holding KV blocks")),
      kv_disk_usage_bytes_(
          gauge(*registry_, "agentserve_kv_disk_usage_bytes", "T2 (disk) live encoded KV bytes")),
      kv_pinned_blocks_(gauge(*registry_, "agentserve_kv_pinned_blocks", "Distinct pinned KV block keys")),
      kv_spill_queue_bytes_(
          gauge(*registry_, "agentserve_kv_spill_queue_bytes", "KV bytes waiting for the storage thread")),
      kv_disk_spill_stalled_(gauge(*registry_, "agentserve_kv_disk_spill_stalled",
                                   "1 while T2 writes are paused after a refusal (quota or I/O)")),
      kv_pinned_retry_blocks_(gauge(*registry_, "agentserve_kv_pinned_retry_blocks",
                                    "Pinned KV blocks waiting for T2 to take writes again")) {
  for (const TierField& field : kTierFields) {
    kv_tier_series_.push_back({&kv_tier_family_.Add({{"event", field.event}, {"tier", field.tier}})});
  }
}

void Metrics::record_response(std::string_view status, const engine::Usage& usage) {
  requests_.Add({{"status", std::string(status)}}).Increment();
  e2e_latency_.Observe(usage.total_time_s);
  if (usage.completion_tokens > 0) time_to_first_token_.Observe(usage.time_to_first_token_s);
  if (usage.completion_tokens > 1) {
    const double gap = std::max(0.0, usage.total_time_s - usage.time_to_first_token_s) /
                       static_cast<double>(usage.completion_tokens - 1);
    for (int i = 1; i < usage.completion_tokens; ++i) inter_token_latency_.Observe(gap);
  }
}

void Metrics::record_error(std::string_view code) {
  errors_.Add({{"code", std::string(code)}}).Increment();
}

void Metrics::record_http_request(std::string_view route, int status) {
  http_requests_.Add({{"route", std::string(route)}, {"status", std::to_string(status)}}).Increment();
}

void Metrics::observe_token_write_latency(double seconds) {
  token_write_latency_.Observe(seconds);
}

void Metrics::set_sessions_active(int64_t n) {
  sessions_active_.Set(static_cast<double>(n));
}

void Metrics::set_sessions_persisted(int64_t n) {
  sessions_persisted_.Set(static_cast<double>(n));
}

void Metrics::advance(prometheus::Counter& counter, int64_t total, int64_t& seen) {
  if (total > seen) counter.Increment(static_cast<double>(total - seen));
  seen = std::max(seen, total);
}

std::string Metrics::scrape(const engine::EngineCounters& c, int block_size,
                            const ServerModeration* moderation) {
  std::lock_guard lock(mutex_);
  advance(prefix_queries_, c.prompt_tokens, seen_prefix_queries_);
  advance(prefix_hits_, c.cached_prompt_tokens, seen_prefix_hits_);
  advance(cached_tokens_device_, c.prefix_hit_blocks * block_size, seen_cached_device_);
  advance(cached_tokens_host_, c.kv_tiers.host_hits * block_size, seen_cached_host_);
  advance(cached_tokens_disk_, c.kv_tiers.disk_hits * block_size, seen_cached_disk_);
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
  kv_usage_.Set(c.kv_blocks_total > 0
                    ? 1.0 - static_cast<double>(c.kv_blocks_free) / static_cast<double>(c.kv_blocks_total)
                    : 0.0);
  kv_host_bytes_used_.Set(static_cast<double>(c.kv_tiers.host_bytes_used));
  kv_disk_usage_bytes_.Set(static_cast<double>(c.kv_tiers.disk_usage_bytes));
  kv_pinned_blocks_.Set(static_cast<double>(c.kv_tiers.pinned_blocks));
  kv_spill_queue_bytes_.Set(static_cast<double>(c.kv_tiers.spill_queue_bytes));
  kv_disk_spill_stalled_.Set(static_cast<double>(c.kv_tiers.disk_spill_stalled));
  kv_pinned_retry_blocks_.Set(static_cast<double>(c.kv_tiers.pinned_retry_blocks));
  std::vector<prometheus::MetricFamily> families = registry_->Collect();
  if (moderation != nullptr)
    for (prometheus::MetricFamily& family : moderation_families(*moderation))
      families.push_back(std::move(family));
  return prometheus::TextSerializer().Serialize(families);
}

}  // namespace agentserve::server
