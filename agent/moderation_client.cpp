#include "agent/moderation_client.h"

#include <algorithm>
#include <optional>

#include <nlohmann/json.hpp>

namespace agentserve::agent {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

std::string_view moderation_kind_name(ModerationKind kind) {
  switch (kind) {
    case ModerationKind::kOutputText:
      return "output_text";
    case ModerationKind::kReasoning:
      return "reasoning";
    case ModerationKind::kToolArguments:
      return "tool_arguments";
    case ModerationKind::kToolResult:
      return "tool_result";
    case ModerationKind::kInput:
      return "input";
  }
  return "unknown";
}

std::string_view moderation_failure_name(ModerationFailure failure) {
  switch (failure) {
    case ModerationFailure::kNone:
      return "none";
    case ModerationFailure::kTimeout:
      return "timeout";
    case ModerationFailure::kConnection:
      return "connection";
    case ModerationFailure::kHttpStatus:
      return "http_status";
    case ModerationFailure::kBadResponse:
      return "bad_response";
  }
  return "unknown";
}

void ModerationStats::record(ModerationKind kind, const ModerationVerdict& verdict) {
  Outcome outcome = kAllowed;
  if (verdict.failure != ModerationFailure::kNone)
    outcome = verdict.allowed ? kFailedPassed : kFailedBlocked;
  else if (verdict.flagged)
    outcome = kFlagged;
  checks[static_cast<size_t>(kind)][outcome].fetch_add(1, std::memory_order_relaxed);
  failures[static_cast<size_t>(verdict.failure)].fetch_add(1, std::memory_order_relaxed);
  const double ms = static_cast<double>(verdict.latency.count()) / 1000.0;
  const size_t bucket = static_cast<size_t>(
      std::lower_bound(kLatencyBucketsMs.begin(), kLatencyBucketsMs.end(), ms) - kLatencyBucketsMs.begin());
  latency_buckets[bucket].fetch_add(1, std::memory_order_relaxed);
  latency_sum_us.fetch_add(static_cast<uint64_t>(verdict.latency.count()), std::memory_order_relaxed);
  if (verdict.attempts > 1)
    retries.fetch_add(static_cast<uint64_t>(verdict.attempts - 1), std::memory_order_relaxed);
}

Status parse_moderation_response(std::string_view body, ModerationVerdict& verdict) {
  const json doc = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return Status::invalid_argument("response is not JSON");
  if (!doc.is_object() || !doc.contains("results") || !doc["results"].is_array() || doc["results"].empty())
    return Status::invalid_argument("response has no non-empty \"results\" array");
  bool flagged = false;
  std::vector<std::string> categories;
  for (const json& result : doc["results"]) {
    if (!result.is_object()) return Status::invalid_argument("a result is not an object");
    const auto f = result.find("flagged");
    if (f == result.end() || !f->is_boolean())
      return Status::invalid_argument("a result has no boolean \"flagged\"");
    const auto c = result.find("categories");
    if (c == result.end() || !c->is_object())
      return Status::invalid_argument("a result has no \"categories\" object");
    const auto s = result.find("category_scores");
    if (s == result.end() || !s->is_object())
      return Status::invalid_argument("a result has no \"category_scores\" object");
    for (const auto& [name, value] : c->items()) {
      if (!value.is_boolean()) return Status::invalid_argument("category \"" + name + "\" is not a boolean");
      if (value.get<bool>()) categories.push_back(name);
    }
    for (const auto& [name, value] : s->items())
      if (!value.is_number())
        return Status::invalid_argument("category score \"" + name + "\" is not a number");
    flagged = flagged || f->get<bool>();
  }
  std::sort(categories.begin(), categories.end());
  categories.erase(std::unique(categories.begin(), categories.end()), categories.end());
  verdict.flagged = flagged;
  verdict.categories = std::move(categories);
  return Status::ok_status();
}

struct ModerationClient::State : std::enable_shared_from_this<ModerationClient::State> {
  net::HttpClient& http;
  ModerationOptions options;
  std::optional<WebhookSigner> signer;
  ModerationStats* stats;

  State(net::HttpClient& http, ModerationOptions options, ModerationStats* stats)
      : http(http), options(std::move(options)), stats(stats) {}

  // One attempt; on a retryable failure of the first attempt, a second with the same id.
  void attempt(std::shared_ptr<const std::string> body, std::string id, ModerationKind kind, bool fail_open,
               Clock::time_point started, int attempt_number, Callback done) {
    net::HttpRequest req;
    req.method = "POST";
    req.url = options.url;
    req.body = *body;
    req.timeout = options.timeout;
    req.max_response_bytes = options.max_response_bytes;
    req.headers = {{"Content-Type", "application/json"}};
    const int64_t now_s =
        std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
            .count();
    if (signer) {
      for (auto& header : signer->sign(id, now_s, *body)) req.headers.push_back(std::move(header));
    } else {
      req.headers.emplace_back("webhook-id", id);
      req.headers.emplace_back("webhook-timestamp", std::to_string(now_s));
    }
    http.async_request(
        std::move(req), [self = shared_from_this(), body, id, kind, fail_open, started, attempt_number,
                         done = std::move(done)](Result<net::HttpResponse> res) mutable {
          ModerationVerdict verdict;
          verdict.attempts = attempt_number;
          bool retryable = false;
          if (!res.ok()) {
            const bool timeout = res.status().code() == StatusCode::kDeadlineExceeded;
            verdict.failure = timeout ? ModerationFailure::kTimeout : ModerationFailure::kConnection;
            verdict.failure_detail = res.status().to_string();
            retryable = res.status().code() != StatusCode::kResourceExhausted &&
                        res.status().code() != StatusCode::kCancelled &&
                        res.status().code() != StatusCode::kInvalidArgument;
            if (res.status().code() == StatusCode::kResourceExhausted)
              verdict.failure = ModerationFailure::kBadResponse;
          } else if (res->status < 200 || res->status > 299) {
            verdict.failure = ModerationFailure::kHttpStatus;
            verdict.failure_detail = "HTTP " + std::to_string(res->status);
            retryable = res->status >= 500;
          } else if (Status parsed = parse_moderation_response(res->body, verdict); !parsed.ok()) {
            verdict.failure = ModerationFailure::kBadResponse;
            verdict.failure_detail = parsed.message();
          }
          if (retryable && attempt_number == 1) {
            self->attempt(std::move(body), std::move(id), kind, fail_open, started, 2, std::move(done));
            return;
          }
          verdict.allowed = verdict.failure == ModerationFailure::kNone ? !verdict.flagged : fail_open;
          verdict.latency = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - started);
          if (self->stats != nullptr) self->stats->record(kind, verdict);
          done(std::move(verdict));
        });
  }
};

Result<std::unique_ptr<ModerationClient>> ModerationClient::create(net::HttpClient& http,
                                                                   ModerationOptions options,
                                                                   ModerationStats* stats) {
  AS_RETURN_IF_ERROR(net::Url::parse(options.url).status().with_context("moderation URL"));
  if (options.timeout <= std::chrono::milliseconds(0))
    return Status::invalid_argument("moderation timeout must be positive");
  auto state = std::make_shared<State>(http, std::move(options), stats);
  if (!state->options.secrets.empty()) {
    AS_ASSIGN_OR_RETURN(WebhookSigner signer, WebhookSigner::create(state->options.secrets));
    state->signer.emplace(std::move(signer));
  }
  return std::unique_ptr<ModerationClient>(new ModerationClient(std::move(state)));
}

std::string ModerationClient::request_body(const ModerationRequest& request) const {
  const json body = {{"input", request.text},
                     {"model", state_->options.model},
                     {"metadata",
                      {{"tenant", request.tenant},
                       {"session_id", request.session_id},
                       {"response_id", request.response_id},
                       {"kind", moderation_kind_name(request.kind)}}}};
  // Generated text may hold invalid UTF-8 mid-character; replace rather than throw.
  return body.dump(-1, ' ', false, json::error_handler_t::replace);
}

void ModerationClient::check(ModerationRequest request, bool fail_open, Callback done) {
  auto body = std::make_shared<const std::string>(request_body(request));
  state_->attempt(std::move(body), new_webhook_id(), request.kind, fail_open, Clock::now(), 1,
                  std::move(done));
}

}  // namespace agentserve::agent
