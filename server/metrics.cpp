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
      kv_blocks_total_(gauge(*registry_, "agentserve_kv_blocks_total", "KV blocks in the pool")) {}

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
  running_.Set(static_cast<double>(c.running));
  waiting_.Set(static_cast<double>(c.waiting));
  kv_blocks_free_.Set(static_cast<double>(c.kv_blocks_free));
  kv_blocks_total_.Set(static_cast<double>(c.kv_blocks_total));
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

}  // namespace agentserve::server
