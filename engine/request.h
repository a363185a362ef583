// The engine's request and event types: what a caller submits (token ids, sampling, cache salt) and what
// streams back (new tokens, released text, the finish with usage). Plain data; the engine never sees JSON,
// and these types never hold engine internals.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "base/status.h"
#include "engine/sampler.h"
#include "engine/sampling_params.h"

namespace agentserve::engine {

using RequestId = uint64_t;

enum class FinishReason : uint8_t {
  kNone,       // still running
  kStop,       // EOS, a stop token or a stop string
  kLength,     // max_tokens or the context limit
  kCancelled,  // cancel() or the engine shut down
  kError,      // see GenerationEvent::error
};

const char* finish_reason_name(FinishReason reason);

struct Usage {
  int prompt_tokens = 0;
  int cached_tokens = 0;  // prompt tokens whose KV came from the prefix cache (no prefill)
  int completion_tokens = 0;
  double time_to_first_token_s = 0.0;
  double total_time_s = 0.0;
};

// One callback per step in which the request advanced, plus exactly one with finished set.
struct GenerationEvent {
  RequestId request_id = 0;
  std::vector<int32_t> tokens;  // tokens sampled in this step (stop tokens included)
  std::string text;             // text released in this step (stop strings and what follows are held back)
  std::vector<TokenLogprob> logprobs;  // one per token when SamplingParams::logprobs is set
  bool finished = false;
  FinishReason finish_reason = FinishReason::kNone;
  Status error;  // set when finish_reason is kError
  Usage usage;   // filled on the finishing event
};

// Called on the engine thread: it must return quickly (post the event elsewhere) and must not call back
// into the engine except submit() and cancel().
using EventCallback = std::function<void(const GenerationEvent&)>;

struct GenerationRequest {
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  // Tenant salt: blocks are only shared between requests with the same salt.
  std::string cache_salt;
  EventCallback on_event;
};

}  // namespace agentserve::engine
