// StopMatcher: finds a request's stop strings in streamed output text. The detokenizer feeds it each
// decoded increment; it says how much text is safe to send now, holding back any tail that could be the
// start of a stop string (or an unfinished UTF-8 character), and when a stop string has appeared, even one
// spread over several increments. The stop string and everything after it are never released (OpenAI
// semantics: the returned text ends just before the stop sequence).
//
// Matching is byte-wise (one KMP automaton per stop string, so a byte costs O(1) amortised per string) and
// stops at the first byte that completes any stop string, which makes the result independent of how the
// text was split into increments. If two stop strings complete on the same byte, the longer one wins (the
// text is cut at the earlier start).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace agentserve::engine {

struct StopUpdate {
  // Text to release now; a view into the matcher, valid until its next call.
  std::string_view emit;
  // A stop string appeared: nothing more will be released.
  bool stopped = false;
  // Index of that stop string in the list given at construction; -1 if none.
  int stop_index = -1;
};

class StopMatcher {
 public:
  // Empty strings are ignored (SamplingParams::validate rejects them).
  explicit StopMatcher(std::vector<std::string> stops);

  // Appends a decoded increment. After a stop, further calls release nothing.
  StopUpdate feed(std::string_view increment);

  // The stream ended (EOS, max_tokens): feeds `last_increment` (e.g. the detokenizer's flushed tail) and,
  // unless that completes a stop string, releases everything still held, as it is. Returns all the text
  // this call released (a view valid until the next call).
  std::string_view finish(std::string_view last_increment = {});

  bool stopped() const { return stop_index_ >= 0; }
  int stop_index() const { return stop_index_; }
  // Everything released so far; after a stop, the final text without the stop string.
  const std::string& text() const { return text_; }
  // Bytes received but not yet released.
  std::string_view held() const { return pending_; }

 private:
  struct Automaton {
    std::string stop;
    std::vector<uint32_t> failure;  // KMP: longest proper border of stop[0..i]
    uint32_t state = 0;             // longest prefix of stop that is a suffix of the text so far
  };

  std::string_view release(size_t n);

  std::vector<Automaton> automata_;
  std::vector<int> stop_ids_;  // automata_[i] is stop string stop_ids_[i] of the constructor's list
  std::string pending_;
  std::string text_;
  int stop_index_ = -1;
};

}  // namespace agentserve::engine
