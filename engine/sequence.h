// Sequence: the engine's state for one request while it waits or runs: its tokens and KV blocks (the
// BlockManager's SequenceState), its sampler, detokenizer and stop matcher, and its progress. Owned by the
// engine thread; nothing here is thread-safe.
#pragma once

#include <chrono>
#include <optional>

#include "engine/request.h"
#include "engine/sampler.h"
#include "engine/stop_matcher.h"
#include "engine/streaming_detokenizer.h"
#include "memory/block_manager.h"

namespace agentserve::engine {

struct Sequence {
  Sequence(RequestId id_, GenerationRequest request_, Sampler sampler_, StreamingDetokenizer detok_)
      : id(id_),
        request(std::move(request_)),
        sampler(std::move(sampler_)),
        detokenizer(std::move(detok_)),
        stop_matcher(request.sampling.stop) {}

  RequestId id;
  GenerationRequest request;
  memory::SequenceState kv;  // kv.tokens = prompt + generated
  int prompt_tokens = 0;
  int generated = 0;
  int cached_tokens = -1;  // prompt tokens taken from the prefix cache at first admission (-1: not yet)
  int preemptions = 0;
  Sampler sampler;
  StreamingDetokenizer detokenizer;
  StopMatcher stop_matcher;
  std::chrono::steady_clock::time_point submitted_at;
  std::optional<std::chrono::steady_clock::time_point> first_token_at;

  // Tokens whose KV still has to be computed before the next token can be sampled.
  int pending_tokens() const { return static_cast<int>(kv.tokens.size()) - kv.num_computed; }
};

}  // namespace agentserve::engine
