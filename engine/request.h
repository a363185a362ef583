// The engine's request and event types: what a caller submits (token ids, sampling, cache salt) and what
// streams back (new tokens, released text, the finish with usage). Plain data; the engine never sees JSON,
// and these types never hold engine internals.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
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
  int restored_tokens = 0;  // of cached_tokens, those loaded from host RAM or disk (T1/T2), not T0
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

// A constraint on what a request may generate (a grammar, a JSON schema, a fixed set of ids), asked once per
// sampled token on the engine thread. The engine calls fill_allowed() before each sample, ANDs the mask with
// the ids the tokenizer knows, samples only from what is left, then calls accept() with the token it
// appended (stop tokens included). A constraint must never block, and must allow a stop token itself when
// it wants the text to end there: the engine ends the request with kStop as soon as is_complete() is true
// after an accept(). A mask with no bit set, or an accept() error, ends the request with kError (never a
// hang). One instance serves one request: it holds that request's state.
class TokenConstraint {
 public:
  virtual ~TokenConstraint() = default;
  // Overwrites every word of `mask` ((vocab_size + 31) / 32 words): bit (id % 32) of word id / 32 set =
  // id allowed next.
  virtual void fill_allowed(std::span<uint32_t> mask) = 0;
  // Advances past `token`. An error (a token fill_allowed() did not allow) ends the request.
  virtual Status accept(int32_t token) = 0;
  // True once the constrained text is whole and nothing more may follow.
  virtual bool is_complete() const = 0;
};

struct GenerationRequest {
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  // Tenant salt: blocks are only shared between requests with the same salt.
  std::string cache_salt;
  EventCallback on_event;
  // Optional; see TokenConstraint.
  std::shared_ptr<TokenConstraint> constraint;
  // Prefill the prompt (reusing what T0/T1/T2 hold), sample nothing, and finish (kStop, no tokens) with
  // usage: warms a resumed session's KV and reports restored vs recomputed tokens.
  bool prefill_only = false;
};

}  // namespace agentserve::engine
