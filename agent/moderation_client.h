// ModerationClient: asks the operator's moderation webhook whether a piece of text may leave the server.
// The request is OpenAI's moderation body plus our metadata, signed with the Standard Webhooks headers:
//   {"input": text, "model": model, "metadata": {"tenant", "session_id", "response_id", "kind"}}
// and the answer must be OpenAI's shape, {"results":[{"flagged": bool, "categories": {name: bool},
// "category_scores": {name: number}}]}; anything else is a failure (bad_response). Failures are timeout,
// connection, http_status (non-2xx) and bad_response. A connection error, a 5xx or a timeout is retried
// once at once, with the same webhook-id so the receiver can deduplicate; each attempt has the full timeout.
// Policy: a failure blocks (fail-closed) unless the caller passes fail_open for this check (per tenant).
//
// It must never let text through on a failure unless fail_open was asked for, never call a callback twice
// or not at all, and never block the calling thread (callbacks run on the HTTP client's io threads).
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "agent/webhook_signature.h"
#include "base/status.h"
#include "net/http_client.h"

namespace agentserve::agent {

enum class ModerationKind { kOutputText, kReasoning, kToolArguments, kToolResult, kInput };
inline constexpr int kModerationKinds = 5;
std::string_view moderation_kind_name(ModerationKind kind);  // "output_text", "reasoning", ...

enum class ModerationFailure { kNone, kTimeout, kConnection, kHttpStatus, kBadResponse };
inline constexpr int kModerationFailures = 5;
std::string_view moderation_failure_name(ModerationFailure failure);  // "none", "timeout", "connection", ...

struct ModerationRequest {
  std::string text;
  ModerationKind kind = ModerationKind::kOutputText;
  std::string tenant;
  std::string session_id;
  std::string response_id;
};

struct ModerationVerdict {
  bool allowed = false;                 // the text may be released
  bool flagged = false;                 // the webhook flagged it (allowed is then false)
  std::vector<std::string> categories;  // the categories the webhook set to true, sorted
  ModerationFailure failure = ModerationFailure::kNone;
  std::string failure_detail;            // human-readable, e.g. "HTTP 500" or the parse error
  std::chrono::microseconds latency{0};  // from check() to the verdict, retries included
  int attempts = 0;
};

// Counters the server exports (agentserve_moderation_*). Plain atomics, written by the client from io threads
// and read by the metrics scrape; the latency histogram has fixed bucket bounds in milliseconds.
struct ModerationStats {
  static constexpr std::array<double, 12> kLatencyBucketsMs = {1,   2,   5,   10,   20,   50,
                                                               100, 200, 500, 1000, 2000, 5000};
  enum Outcome { kAllowed = 0, kFlagged = 1, kFailedBlocked = 2, kFailedPassed = 3, kOutcomes = 4 };

  std::array<std::array<std::atomic<uint64_t>, kOutcomes>, kModerationKinds> checks{};  // [kind][outcome]
  std::array<std::atomic<uint64_t>, kModerationFailures> failures{};                    // [failure reason]
  std::array<std::atomic<uint64_t>, kLatencyBucketsMs.size() + 1>
      latency_buckets{};  // non-cumulative; last = +Inf
  std::atomic<uint64_t> latency_sum_us{0};
  std::atomic<uint64_t> retries{0};

  void record(ModerationKind kind, const ModerationVerdict& verdict);
};

struct ModerationOptions {
  std::string url;                               // http:// or https:// endpoint of the webhook
  std::string model = "omni-moderation-latest";  // passed through as "model"
  std::vector<std::string> secrets;              // Standard Webhooks secrets; empty: unsigned requests
  std::chrono::milliseconds timeout{2000};       // per attempt
  size_t max_response_bytes = 64 * 1024;
};

class ModerationClient {
 public:
  using Callback = std::function<void(ModerationVerdict)>;

  // InvalidArgument for a bad URL or secret. `http` and `stats` (may be null) must outlive the client and
  // every check it started.
  static Result<std::unique_ptr<ModerationClient>> create(net::HttpClient& http, ModerationOptions options,
                                                          ModerationStats* stats);

  // Starts one check; `done` runs once, on an io thread of the HTTP client.
  void check(ModerationRequest request, bool fail_open, Callback done);

  // The JSON body sent for `request` (exposed for tests and the docs).
  std::string request_body(const ModerationRequest& request) const;

 private:
  struct State;
  explicit ModerationClient(std::shared_ptr<State> state) : state_(std::move(state)) {}
  std::shared_ptr<State> state_;
};

// Parses the webhook's answer into `verdict` (flagged, categories). bad_response-worthy input gives
// InvalidArgument with the reason.
Status parse_moderation_response(std::string_view body, ModerationVerdict& verdict);

}  // namespace agentserve::agent
