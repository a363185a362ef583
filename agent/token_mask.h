// Token mask for grammar-constrained decoding: a byte-level matcher over a Grammar (agent/json_schema_grammar.h)
// that advances incrementally as tokens are accepted, and a mask builder that turns a matcher state into the
// bitmask of tokens allowed next in one walk over the vocabulary index's trie (agent/vocabulary_index.h):
// tokens sharing a prefix share the matcher work for it, and a subtree is cut as soon as its prefix is refused.
// Masks are cached per matcher state, so the states a generation revisits (inside a string, between
// properties) cost a copy. A parse stack inside a JSON string body skips the walk: what a token does there
// does not depend on the schema, so the mask is the index's precomputed bitset for that lexer state plus a
// walk over the few suffixes after a closing quote.
//
// The matcher is a set of parse stacks (anyOf and optional properties fork them; dead ones are dropped), so it
// needs no backtracking and never re-parses. An anyOf forks only into the options whose first byte can be the
// next one (Grammar::first_bytes), and identical stacks are merged. A schema whose anyOf options read alike
// for long (object branches sharing keys whose values recurse) still multiplies its stacks with every level
// of nesting, so the work is capped (the limits below, in one place): a step past them leaves the state
// `exhausted`, the matcher refuses the byte and the mask builder returns ResourceExhausted; the constraint
// then ends the request with that error, never spins on the engine thread. It must never accept bytes the
// grammar does not describe; a tokenizer's added tokens (<tool_call>, <|im_end|>) are left out of the trie and allowed only where a literal
// marked added_tokens spells them (end-of-sequence tokens are the constraint's business, tool_call_constraint.h).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "agent/json_schema_grammar.h"
#include "agent/vocabulary_index.h"

namespace agentserve::agent {

// Budgets of the matcher and the mask walk. A byte step that would keep more live stacks, or push more
// frames while forking into anyOf options, than these is refused as exhausted; a mask whose trie walk
// steps more frames in all (one stack's frames count once per trie node it is stepped at) fails. A deep
// tree value steps about 50,000 frames a mask, the plain walk of the whole trie a few million; the cap is
// tens of milliseconds of one core (docs/benchmarks.md has the measured work). The stack and fork caps
// bound memory and one byte's step; they sit well above what a wide schema needs legitimately (a key of an
// object with many optional properties, or the tool name of a call among many tools, forks once per
// option), so only the walk cap stops an ambiguous schema in practice.
inline constexpr size_t kMaxLiveStacks = 4096;
inline constexpr size_t kMaxForkFramesPerByte = size_t{1} << 16;
inline constexpr size_t kMaxMaskWalkFrames = size_t{1} << 23;

// One level of a parse stack: which node, and where in it (meaning per node kind, token_mask.cpp).
struct MatchFrame {
  int32_t node = -1;  // -1: the root frame under everything
  int32_t phase = 0;
  int32_t a = 0;
  int32_t b = 0;
  bool operator==(const MatchFrame&) const = default;
};

// All live parse stacks, flattened: stack i is frames[ends[i-1] .. ends[i]).
struct MatchState {
  std::vector<MatchFrame> frames;
  std::vector<uint32_t> ends;
  // The step that made this state went over kMaxLiveStacks or kMaxForkFramesPerByte: its stacks are
  // incomplete and it is treated as dead (never cached, never advanced to).
  bool exhausted = false;

  bool dead() const { return ends.empty() || exhausted; }
  void clear() {
    frames.clear();
    ends.clear();
    exhausted = false;
  }
  // Bytes that identify the state (equal states, equal keys): the mask cache's key.
  void key(std::string& out) const;
};

class GrammarMatcher {
 public:
  explicit GrammarMatcher(std::shared_ptr<const Grammar> grammar);

  // Consumes `bytes`; false (and the state unchanged) when the grammar does not allow them here, or when
  // they would take the matcher past its budget (then exhausted() is true).
  bool advance(std::string_view bytes);
  // The last advance() or accepts() was refused for the budget, not by the grammar.
  bool exhausted() const { return exhausted_; }
  // Whether `bytes` would be accepted, without changing the state.
  bool accepts(std::string_view bytes) const;
  // The text so far is a whole document of the grammar.
  bool can_end() const;
  // Whether added token text `content` may come next: some stack is inside a literal marked added_tokens
  // that continues with it.
  bool added_token_allowed(std::string_view content) const;

  const MatchState& state() const { return state_; }
  const Grammar& grammar() const { return *grammar_; }

  // `out` = the stacks of `in` after one more byte (deduplicated); empty when `in` refuses the byte.
  static void step(const Grammar& grammar, const MatchState& in, uint8_t byte, MatchState& out);

 private:
  std::shared_ptr<const Grammar> grammar_;
  MatchState state_;
  mutable MatchState scratch_[2];
  mutable bool exhausted_ = false;
};

// The error a constraint ends its request with when the matcher or the mask walk goes over budget.
Status parse_budget_exhausted();

// Computes masks for one grammar over one vocabulary, with a cache of masks by matcher state. Thread-safe:
// one MaskBuilder can serve the concurrent requests that share a grammar.
class MaskBuilder {
 public:
  MaskBuilder(std::shared_ptr<const VocabularyIndex> index, size_t max_cached_states = 512);

  // Sets exactly the bits of the trie's tokens `matcher` accepts next (added tokens and EOS untouched: 0).
  // ResourceExhausted (mask unspecified, nothing cached) when a step of the walk or the walk as a whole goes
  // over the budgets above.
  Status fill(const GrammarMatcher& matcher, std::span<uint32_t> mask);

  // The reference: every token decoded and tried on the matcher one by one. For tests.
  static void fill_reference(const VocabularyIndex& index, const GrammarMatcher& matcher, std::span<uint32_t> mask);
  // The plain trie walk over every stack, string bodies included, without the cache: the reference that
  // fill()'s string shortcut must equal. For tests and the benchmark.
  Status fill_by_walk(const GrammarMatcher& matcher, std::span<uint32_t> mask);

  const VocabularyIndex& index() const { return *index_; }
  size_t cache_hits() const { return hits_; }
  size_t cache_misses() const { return misses_; }
  // Frames stepped by the last fill()'s trie walks (0 on a cache hit): the work kMaxMaskWalkFrames caps.
  size_t last_walk_frames() const { return walk_frames_; }

 private:
  struct Trie;
  // Sets the bits of the tokens of `trie` below `node` that the state levels_[depth] accepts; a token
  // whose count in `trie.chars` is over `max_chars` is left out.
  void walk(const Grammar& grammar, const Trie& trie, uint32_t node, size_t depth, int max_chars,
            std::span<uint32_t> mask);
  // ORs into `mask` the tokens a single parse stack, frames[begin, end) with a string body on top, accepts.
  void fill_string(const Grammar& grammar, const MatchState& state, uint32_t begin, uint32_t end,
                   std::span<uint32_t> mask);

  std::shared_ptr<const VocabularyIndex> index_;
  size_t max_cached_;
  std::mutex mutex_;
  std::unordered_map<std::string, std::vector<uint32_t>> cache_;
  std::vector<MatchState> levels_;  // one state per trie depth, reused between walks
  MatchState others_;               // the stacks fill_string does not take
  std::vector<uint32_t> scratch_;   // a string body's mask before it is ORed in
  std::string key_;
  size_t hits_ = 0;
  size_t misses_ = 0;
  size_t walk_frames_ = 0;  // this fill's work so far
  bool walk_exhausted_ = false;
};

}  // namespace agentserve::agent
