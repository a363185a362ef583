#include "agent/token_mask.h"

#include <algorithm>
#include <climits>

#include "agent/json_string_lexer.h"

namespace agentserve::agent {
namespace {

// Frame meanings by node kind (phase, a, b):
//   root (node -1): phase 0 = value not started, 2 = value running, 1 = value done.
//   kLiteral: a = bytes matched.
//   kString: a = lexer state (kStr*, agent/json_string_lexer.h), b = characters so far.
//   kNumber/kInteger: a = lexer state (kNum* below), b = digits in the current part.
//   kObject: phase (kObj* below), a = property index (last one begun), b = bytes of its key matched.
//   kArray: phase (kArr* below), a = items done.
//   kSequence: a = child running or about to start.
//   kRepeat: phase 0 = item about to start, 1 = item running, 2 = after an item, 3 = separator running;
//            a = items done.
enum NumState : int32_t { kNumStart, kNumMinus, kNumZero, kNumInt, kNumDot, kNumFrac, kNumE, kNumESign, kNumExp };
enum ObjPhase : int32_t {
  kObjOpen, kObjFirstKey, kObjKey, kObjColon, kObjAfterColon, kObjValue, kObjAfterValue, kObjAfterComma,
  kObjKeyStart, kObjValueStart,
};
enum ArrPhase : int32_t { kArrOpen, kArrFirst, kArrValue, kArrAfterValue, kArrAfterComma, kArrItemStart };

constexpr size_t kMaxStackDepth = 64;
constexpr int kMaxAnyOfNesting = 32;

using Stack = std::vector<MatchFrame>;

bool is_digit(uint8_t c) {
  return c >= '0' && c <= '9';
}
bool number_final(int32_t s) {
  return s == kNumZero || s == kNumInt || s == kNumFrac || s == kNumExp;
}


class Stepper {
 public:
  Stepper(const Grammar& g, MatchState& out) : g_(g), out_(out) {}

  // Went over kMaxLiveStacks or kMaxForkFramesPerByte: what was emitted is incomplete.
  bool exhausted() const { return exhausted_; }

  void step(Stack& s, uint8_t c) {
    if (exhausted_) return;
    MatchFrame& f = s.back();
    if (f.node < 0) {
      if (f.phase != 0) return;
      f.phase = 2;
      start_value(s, g_.root, c, 0);
      return;
    }
    const GrammarNode& n = g_.nodes[static_cast<size_t>(f.node)];
    switch (n.kind) {
      case GrammarNodeKind::kLiteral:
        if (static_cast<uint8_t>(n.literal[static_cast<size_t>(f.a)]) != c) return;
        if (++f.a == static_cast<int32_t>(n.literal.size())) pop_complete(s);
        return emit(s);
      case GrammarNodeKind::kString:
        // Characters are counted only under a limit, so unlimited strings keep one state (and one cached mask) throughout.
        if (n.max_length != INT_MAX && starts_char(f.a, c) && f.b++ >= n.max_length) return;
        if (string_step(f.a, c)) {
          if (f.a < 0) pop_complete(s);
          emit(s);
        }
        return;
      case GrammarNodeKind::kNumber:
      case GrammarNodeKind::kInteger:
        return number_step(s, n.kind == GrammarNodeKind::kInteger, c);
      case GrammarNodeKind::kObject:
        return object_step(s, n, c);
      case GrammarNodeKind::kArray:
        return array_step(s, n, c);
      case GrammarNodeKind::kSequence:
        return start_value(s, n.children[static_cast<size_t>(f.a)], c, 0);
      case GrammarNodeKind::kRepeat:
        return repeat_step(s, n, c);
      case GrammarNodeKind::kAnyOf:
        return;  // never on a stack: start_value forks over the options
    }
  }

  // The child on top of `s` is done: pop it and move its parent on (parents that end with it pop too).
  void pop_complete(Stack& s) const {
    s.pop_back();
    MatchFrame& p = s.back();
    if (p.node < 0) {
      p.phase = 1;
      return;
    }
    const GrammarNode& n = g_.nodes[static_cast<size_t>(p.node)];
    switch (n.kind) {
      case GrammarNodeKind::kObject:
        p.phase = kObjAfterValue;
        return;
      case GrammarNodeKind::kArray:
        p.phase = kArrAfterValue;
        ++p.a;
        return;
      case GrammarNodeKind::kSequence:
        if (++p.a == static_cast<int32_t>(n.children.size())) pop_complete(s);
        return;
      case GrammarNodeKind::kRepeat:
        if (p.phase == 1) {
          p.phase = 2;
          ++p.a;
        } else {
          p.phase = 0;
        }
        return;
      default:
        return;
    }
  }

 private:
  void emit(const Stack& s) {
    if (exhausted_ || out_.ends.size() >= kMaxLiveStacks) {
      exhausted_ = true;
      return;
    }
    out_.frames.insert(out_.frames.end(), s.begin(), s.end());
    out_.ends.push_back(static_cast<uint32_t>(out_.frames.size()));
  }

  // Pushes `node` and feeds it `c`, its first byte; `s` is used up. An anyOf forks: each option that may
  // start with `c` gets its own copy of the stack, the last one `s` itself (a $ref is a one-option anyOf, so
  // most forks copy nothing; options that would die on this byte are never copied).
  void start_value(Stack& s, int node, uint8_t c, int nesting) {
    if (!g_.may_start_with(node, c)) return;
    const GrammarNode& n = g_.nodes[static_cast<size_t>(node)];
    if (n.kind == GrammarNodeKind::kAnyOf) {
      if (nesting >= kMaxAnyOfNesting) return;
      size_t last = n.children.size();
      for (size_t i = 0; i < n.children.size(); ++i)
        if (g_.may_start_with(n.children[i], c)) last = i;
      for (size_t i = 0; i < n.children.size(); ++i) {
        if (exhausted_) return;
        const int option = n.children[i];
        if (!g_.may_start_with(option, c)) continue;
        fork_frames_ += s.size();
        if (fork_frames_ > kMaxForkFramesPerByte) {
          exhausted_ = true;
          return;
        }
        if (i == last) return start_value(s, option, c, nesting + 1);
        Stack copy = s;
        start_value(copy, option, c, nesting + 1);
      }
      return;
    }
    if (s.size() >= kMaxStackDepth) return;
    s.push_back({.node = node, .phase = 0, .a = 0, .b = 0});
    step(s, c);
  }

  void number_step(Stack& s, bool integer, uint8_t c) {
    MatchFrame& f = s.back();
    if (number_final(f.a)) {  // the number may also have ended before `c`
      Stack ended = s;
      pop_complete(ended);
      step(ended, c);
    }
    MatchFrame& g = s.back();
    const bool digit = is_digit(c);
    const bool exp = !integer && (c == 'e' || c == 'E');
    switch (g.a) {
      case kNumStart:
      case kNumMinus:
        if (c == '-' && g.a == kNumStart) g.a = kNumMinus;
        else if (c == '0') g.a = kNumZero;
        else if (digit) g = {g.node, 0, kNumInt, 1};
        else return;
        break;
      case kNumZero:
      case kNumInt:
        if (digit && g.a == kNumInt && g.b < kMaxIntegerDigits) ++g.b;
        else if (c == '.' && !integer) g = {g.node, 0, kNumDot, 0};
        else if (exp) g = {g.node, 0, kNumE, 0};
        else return;
        break;
      case kNumDot:
      case kNumFrac:
        if (digit && g.b < kMaxFractionDigits) g = {g.node, 0, kNumFrac, g.b + 1};
        else if (exp && g.a == kNumFrac) g = {g.node, 0, kNumE, 0};
        else return;
        break;
      case kNumE:
      case kNumESign:
        if ((c == '+' || c == '-') && g.a == kNumE) g.a = kNumESign;
        else if (digit) g = {g.node, 0, kNumExp, 1};
        else return;
        break;
      case kNumExp:
        if (digit && g.b < kMaxExponentDigits) ++g.b;
        else return;
        break;
      default:
        return;
    }
    emit(s);
  }

  // The first property index > `after` a key may name, up to and including the first required one.
  static bool all_optional_from(const GrammarNode& n, int from) {
    for (size_t j = static_cast<size_t>(std::max(from, 0)); j < n.properties.size(); ++j)
      if (n.properties[j].required) return false;
    return true;
  }

  void object_step(Stack& s, const GrammarNode& n, uint8_t c) {
    MatchFrame& f = s.back();
    switch (f.phase) {
      case kObjOpen:
        if (c != '{') return;
        f.phase = kObjFirstKey;
        f.a = -1;
        return emit(s);
      case kObjFirstKey:
      case kObjKeyStart:
        if (c == '}' && f.phase == kObjFirstKey && all_optional_from(n, 0)) {
          pop_complete(s);
          return emit(s);
        }
        if (c != '"') return;
        for (size_t j = static_cast<size_t>(f.a + 1); j < n.properties.size(); ++j) {
          Stack copy = s;
          copy.back() = {.node = f.node, .phase = kObjKey, .a = static_cast<int32_t>(j), .b = 1};
          emit(copy);
          if (n.properties[j].required) break;
        }
        return;
      case kObjKey: {
        const std::string& key = n.properties[static_cast<size_t>(f.a)].key;
        if (static_cast<uint8_t>(key[static_cast<size_t>(f.b)]) != c) return;
        if (++f.b == static_cast<int32_t>(key.size())) f.phase = kObjColon;
        return emit(s);
      }
      case kObjColon:
        if (c != ':') return;
        f.phase = kObjAfterColon;
        return emit(s);
      case kObjAfterColon:
      case kObjValueStart:
        if (c == ' ' && f.phase == kObjAfterColon) {
          f.phase = kObjValueStart;
          return emit(s);
        }
        f.phase = kObjValue;
        return start_value(s, n.properties[static_cast<size_t>(f.a)].value, c, 0);
      case kObjAfterValue:
        if (c == ',' && f.a + 1 < static_cast<int32_t>(n.properties.size())) {
          f.phase = kObjAfterComma;
          return emit(s);
        }
        if (c == '}' && all_optional_from(n, f.a + 1)) {
          pop_complete(s);
          return emit(s);
        }
        return;
      case kObjAfterComma:
        f.phase = kObjKeyStart;
        if (c == ' ') return emit(s);
        return object_step(s, n, c);
      default:
        return;
    }
  }

  void array_step(Stack& s, const GrammarNode& n, uint8_t c) {
    MatchFrame& f = s.back();
    switch (f.phase) {
      case kArrOpen:
        if (c != '[') return;
        f.phase = kArrFirst;
        return emit(s);
      case kArrFirst:
        if (c == ']') {
          if (n.min_items > 0) return;
          pop_complete(s);
          return emit(s);
        }
        if (n.max_items == 0) return;
        f.phase = kArrValue;
        return start_value(s, n.children[0], c, 0);
      case kArrAfterValue:
        if (c == ',' && f.a < n.max_items) {
          f.phase = kArrAfterComma;
          return emit(s);
        }
        if (c == ']' && f.a >= n.min_items) {
          pop_complete(s);
          return emit(s);
        }
        return;
      case kArrAfterComma:
      case kArrItemStart:
        if (c == ' ' && f.phase == kArrAfterComma) {
          f.phase = kArrItemStart;
          return emit(s);
        }
        f.phase = kArrValue;
        return start_value(s, n.children[0], c, 0);
      default:
        return;
    }
  }

  void repeat_step(Stack& s, const GrammarNode& n, uint8_t c) {
    MatchFrame& f = s.back();
    if (f.phase == 0) {
      f.phase = 1;
      return start_value(s, n.children[0], c, 0);
    }
    if (f.phase != 2) return;
    if (f.a >= n.min_items) {
      Stack ended = s;
      pop_complete(ended);
      step(ended, c);
    }
    if (f.a < n.max_items) {
      s.back().phase = 3;
      start_value(s, n.children[1], c, 0);
    }
  }

  const Grammar& g_;
  MatchState& out_;
  size_t fork_frames_ = 0;
  bool exhausted_ = false;
};

// Whether stack `s` can end here without another byte: a number in a final state or a repeat with enough
// items may end, and so may everything under them that they complete.
bool stack_can_end(const Grammar& g, Stack s) {
  MatchState unused;
  Stepper stepper(g, unused);
  while (true) {
    const MatchFrame& f = s.back();
    if (f.node < 0) return f.phase == 1;
    const GrammarNode& n = g.nodes[static_cast<size_t>(f.node)];
    const bool may_end =
        ((n.kind == GrammarNodeKind::kNumber || n.kind == GrammarNodeKind::kInteger) && number_final(f.a)) ||
        (n.kind == GrammarNodeKind::kRepeat && f.phase == 2 && f.a >= n.min_items);
    if (!may_end) return false;
    stepper.pop_complete(s);
  }
}

// Drops repeated stacks in place, keeping the first of each in order (anyOf options that read alike leave
// twins): stacks are sorted by a hash of their frames and only equal hashes are compared, so many stacks cost
// n log n, not n^2 comparisons of whole stacks. Allocates nothing once its scratch has grown.
void dedupe(MatchState& st) {
  const size_t n = st.ends.size();
  if (n < 2) return;
  thread_local std::vector<std::pair<uint64_t, uint32_t>> order;  // (hash, stack index)
  thread_local std::vector<uint8_t> drop;
  const auto begin_of = [&](size_t i) { return i == 0 ? uint32_t{0} : st.ends[i - 1]; };
  order.resize(n);
  for (size_t i = 0; i < n; ++i) {
    uint64_t h = 1469598103934665603ull;
    for (uint32_t f = begin_of(i); f < st.ends[i]; ++f) {
      const MatchFrame& m = st.frames[f];
      for (int32_t v : {m.node, m.phase, m.a, m.b}) h = (h ^ static_cast<uint32_t>(v)) * 1099511628211ull;
    }
    order[i] = {h, static_cast<uint32_t>(i)};
  }
  std::sort(order.begin(), order.end());
  drop.assign(n, 0);
  bool any = false;
  for (size_t r = 0; r < n;) {
    size_t run_end = r + 1;
    while (run_end < n && order[run_end].first == order[r].first) ++run_end;
    for (size_t j = r + 1; j < run_end; ++j) {
      const uint32_t b = order[j].second;
      for (size_t k = r; k < j; ++k) {
        const uint32_t a = order[k].second;  // a < b: the run is sorted by index too
        if (drop[a] || st.ends[a] - begin_of(a) != st.ends[b] - begin_of(b)) continue;
        if (std::equal(st.frames.begin() + begin_of(a), st.frames.begin() + st.ends[a],
                       st.frames.begin() + begin_of(b))) {
          drop[b] = 1;
          any = true;
          break;
        }
      }
    }
    r = run_end;
  }
  if (!any) return;
  size_t kept = 0;          // stacks kept so far, compacted to the front
  uint32_t write_end = 0;   // end of the kept frames
  uint32_t begin = 0;
  for (size_t i = 0; i < n; ++i) {
    const uint32_t end = st.ends[i];
    if (!drop[i]) {
      std::copy(st.frames.begin() + begin, st.frames.begin() + end, st.frames.begin() + write_end);
      write_end += end - begin;
      st.ends[kept++] = write_end;
    }
    begin = end;
  }
  st.frames.resize(write_end);
  st.ends.resize(kept);
}

}  // namespace

void MatchState::key(std::string& out) const {
  out.assign(reinterpret_cast<const char*>(ends.data()), ends.size() * sizeof(uint32_t));
  out.append(reinterpret_cast<const char*>(frames.data()), frames.size() * sizeof(MatchFrame));
}

GrammarMatcher::GrammarMatcher(std::shared_ptr<const Grammar> grammar) : grammar_(std::move(grammar)) {
  state_.frames.push_back({.node = -1, .phase = 0, .a = 0, .b = 0});
  state_.ends.push_back(1);
}

void GrammarMatcher::step(const Grammar& grammar, const MatchState& in, uint8_t byte, MatchState& out) {
  out.clear();
  Stepper stepper(grammar, out);
  uint32_t begin = 0;
  thread_local Stack s;  // reused: the trie walk calls this once per node
  for (uint32_t end : in.ends) {
    s.assign(in.frames.begin() + begin, in.frames.begin() + end);
    stepper.step(s, byte);
    if (stepper.exhausted()) break;
    begin = end;
  }
  out.exhausted = stepper.exhausted();
  if (!out.exhausted) dedupe(out);
}

Status parse_budget_exhausted() {
  return Status::resource_exhausted(
      "the JSON schema is too ambiguous to constrain here: its anyOf options read alike for too long "
      "(more than " + std::to_string(kMaxLiveStacks) + " parse stacks, " + std::to_string(kMaxForkFramesPerByte) +
      " frames forked for one byte, or " + std::to_string(kMaxMaskWalkFrames) +
      " frames stepped for one token's mask); make the options start differently");
}

bool GrammarMatcher::accepts(std::string_view bytes) const {
  exhausted_ = false;
  const MatchState* cur = &state_;
  int which = 0;
  for (char ch : bytes) {
    step(*grammar_, *cur, static_cast<uint8_t>(ch), scratch_[which]);
    cur = &scratch_[which];
    which ^= 1;
    if (cur->dead()) {
      exhausted_ = cur->exhausted;
      return false;
    }
  }
  return true;
}

bool GrammarMatcher::advance(std::string_view bytes) {
  if (bytes.empty()) return true;
  if (!accepts(bytes)) return false;
  state_ = scratch_[(bytes.size() - 1) % 2];
  return true;
}

bool GrammarMatcher::can_end() const {
  uint32_t begin = 0;
  for (uint32_t end : state_.ends) {
    if (stack_can_end(*grammar_, Stack(state_.frames.begin() + begin, state_.frames.begin() + end))) return true;
    begin = end;
  }
  return false;
}

bool GrammarMatcher::added_token_allowed(std::string_view content) const {
  if (content.empty() || !accepts(content.substr(0, 1))) return false;
  const MatchState& first = scratch_[0];
  bool in_literal = false;
  for (uint32_t end : first.ends) {
    const MatchFrame& top = first.frames[end - 1];
    if (top.node >= 0) {
      const GrammarNode& n = grammar_->nodes[static_cast<size_t>(top.node)];
      const size_t start = static_cast<size_t>(top.a) - 1;
      in_literal |= n.kind == GrammarNodeKind::kLiteral && n.added_tokens &&
                    n.literal.compare(start, content.size(), content) == 0;
    }
  }
  return in_literal && accepts(content);
}

struct MaskBuilder::Trie {
  const VocabularyIndex::Node* nodes;
  const int32_t* ids;
  const uint16_t* chars;  // null: no limit applies
};

MaskBuilder::MaskBuilder(std::shared_ptr<const VocabularyIndex> index, size_t max_cached_states)
    : index_(std::move(index)),
      max_cached_(max_cached_states),
      levels_(index_->max_token_bytes() + 1),
      scratch_(index_->mask_words()) {}

Status MaskBuilder::fill(const GrammarMatcher& matcher, std::span<uint32_t> mask) {
  std::lock_guard lock(mutex_);
  walk_frames_ = 0;
  walk_exhausted_ = false;
  matcher.state().key(key_);
  if (auto it = cache_.find(key_); it != cache_.end()) {
    ++hits_;
    std::copy(it->second.begin(), it->second.end(), mask.begin());
    return Status::ok_status();
  }
  ++misses_;
  std::fill(mask.begin(), mask.end(), 0u);
  // A state's tokens are the union of each stack's: stacks step independently. Stacks in a string body take
  // the precomputed shortcut; the rest share one walk.
  const Grammar& grammar = matcher.grammar();
  const MatchState& state = matcher.state();
  others_.clear();
  uint32_t begin = 0;
  for (uint32_t end : state.ends) {
    const MatchFrame& top = state.frames[end - 1];
    if (top.node >= 0 && grammar.nodes[static_cast<size_t>(top.node)].kind == GrammarNodeKind::kString &&
        top.a >= kFirstBodyState && top.a <= kLastBodyState) {
      fill_string(grammar, state, begin, end, mask);
    } else {
      others_.frames.insert(others_.frames.end(), state.frames.begin() + begin, state.frames.begin() + end);
      others_.ends.push_back(static_cast<uint32_t>(others_.frames.size()));
    }
    begin = end;
  }
  if (!others_.dead()) {
    levels_[0] = others_;
    walk(grammar, Trie{index_->nodes().data(), index_->trie_token_ids().data(), nullptr}, 0, 0, INT_MAX, mask);
  }
  if (walk_exhausted_) return parse_budget_exhausted();
  // A bounded cache: a grammar that keeps making new states (deep nesting) starts over rather than grow.
  if (cache_.size() >= max_cached_) cache_.clear();
  cache_.emplace(key_, std::vector<uint32_t>(mask.begin(), mask.end()));
  return Status::ok_status();
}

Status MaskBuilder::fill_by_walk(const GrammarMatcher& matcher, std::span<uint32_t> mask) {
  std::lock_guard lock(mutex_);
  walk_frames_ = 0;
  walk_exhausted_ = false;
  std::fill(mask.begin(), mask.end(), 0u);
  levels_[0] = matcher.state();
  walk(matcher.grammar(), Trie{index_->nodes().data(), index_->trie_token_ids().data(), nullptr}, 0, 0, INT_MAX,
       mask);
  return walk_exhausted_ ? parse_budget_exhausted() : Status::ok_status();
}

void MaskBuilder::fill_string(const Grammar& grammar, const MatchState& state, uint32_t begin, uint32_t end,
                              std::span<uint32_t> mask) {
  const MatchFrame& top = state.frames[end - 1];
  const GrammarNode& n = grammar.nodes[static_cast<size_t>(top.node)];
  const VocabularyIndex::StringScan& scan = index_->string_scan(top.a);
  const int max_chars = n.max_length == INT_MAX ? INT_MAX : std::max(0, n.max_length - top.b);
  const auto set = [&](int32_t id) { mask[static_cast<size_t>(id) / 32] |= 1u << (id % 32); };

  // Tokens that stay inside: all of them, or those short enough (whichever side of the cut is smaller is
  // the one visited one token at a time).
  const size_t n_inside = scan.inside_ids.size();
  const size_t fit = static_cast<size_t>(
      std::upper_bound(scan.inside_chars.begin(), scan.inside_chars.end(), max_chars,
                       [](int limit, uint16_t chars) { return limit < static_cast<int>(chars); }) -
      scan.inside_chars.begin());
  if (fit == n_inside) {
    for (size_t w = 0; w < mask.size(); ++w) mask[w] |= scan.inside_bits[w];
  } else if (fit * 2 > n_inside) {
    std::copy(scan.inside_bits.begin(), scan.inside_bits.end(), scratch_.begin());
    for (size_t i = fit; i < n_inside; ++i) {
      const int32_t id = scan.inside_ids[i];
      scratch_[static_cast<size_t>(id) / 32] &= ~(1u << (id % 32));
    }
    for (size_t w = 0; w < mask.size(); ++w) mask[w] |= scratch_[w];
  } else {
    for (size_t i = 0; i < fit; ++i) set(scan.inside_ids[i]);
  }

  // Tokens that close the string: the stack with the string popped must take the bytes after the quote.
  const VocabularyIndex::OwnedTrie& closing = scan.closing;
  const VocabularyIndex::Node& root = closing.nodes[0];
  for (uint32_t i = root.first_token; i < root.first_token + root.n_tokens; ++i)
    if (closing.chars[i] <= max_chars) set(closing.ids[i]);
  if (root.n_children == 0) return;
  Stack popped(state.frames.begin() + begin, state.frames.begin() + end);
  MatchState unused;
  Stepper(grammar, unused).pop_complete(popped);
  levels_[0].clear();
  levels_[0].frames = std::move(popped);
  levels_[0].ends.push_back(static_cast<uint32_t>(levels_[0].frames.size()));
  walk(grammar, Trie{closing.nodes.data(), closing.ids.data(), closing.chars.data()}, 0, 0, max_chars, mask);
}

void MaskBuilder::walk(const Grammar& grammar, const Trie& trie, uint32_t node, size_t depth, int max_chars,
                       std::span<uint32_t> mask) {
  const VocabularyIndex::Node& n = trie.nodes[node];
  for (uint32_t c = n.first_child; c < n.first_child + n.n_children; ++c) {
    const VocabularyIndex::Node& child = trie.nodes[c];
    MatchState& next = levels_[depth + 1];
    // The walk's work is the frames it steps: one step per trie node, each over every stack of the level.
    const size_t frames = levels_[depth].frames.size();
    if (walk_exhausted_ || walk_frames_ + frames > kMaxMaskWalkFrames) {
      walk_exhausted_ = true;
      return;
    }
    walk_frames_ += frames;
    GrammarMatcher::step(grammar, levels_[depth], child.byte, next);
    if (next.exhausted) {
      walk_exhausted_ = true;
      return;
    }
    if (next.dead()) continue;
    for (uint32_t i = child.first_token; i < child.first_token + child.n_tokens; ++i) {
      if (trie.chars != nullptr && trie.chars[i] > max_chars) continue;
      const int32_t id = trie.ids[i];
      mask[static_cast<size_t>(id) / 32] |= 1u << (id % 32);
    }
    if (child.n_children > 0) walk(grammar, trie, c, depth + 1, max_chars, mask);
  }
}

void MaskBuilder::fill_reference(const VocabularyIndex& index, const GrammarMatcher& matcher,
                                 std::span<uint32_t> mask) {
  std::fill(mask.begin(), mask.end(), 0u);
  std::vector<bool> added(static_cast<size_t>(index.vocab_size()), false);
  for (const auto& a : index.added()) added[static_cast<size_t>(a.id)] = true;
  for (int32_t id = 0; id < index.vocab_size(); ++id) {
    const std::string_view bytes = index.bytes_of(id);
    if (bytes.empty() || added[static_cast<size_t>(id)]) continue;
    if (matcher.accepts(bytes)) mask[static_cast<size_t>(id) / 32] |= 1u << (id % 32);
  }
}

}  // namespace agentserve::agent
