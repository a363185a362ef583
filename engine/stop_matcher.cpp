#include "engine/stop_matcher.h"

#include <algorithm>

namespace agentserve::engine {
namespace {

// Bytes at the end of s that start a UTF-8 character whose remaining bytes have not arrived yet.
size_t unfinished_utf8_tail(std::string_view s) {
  const size_t n = s.size();
  for (size_t back = 1; back <= 4 && back <= n; ++back) {
    const auto b = static_cast<unsigned char>(s[n - back]);
    if ((b & 0xC0) == 0x80) continue;  // a continuation byte: keep looking for the lead byte
    const size_t length = b < 0x80             ? 1
                          : (b & 0xE0) == 0xC0 ? 2
                          : (b & 0xF0) == 0xE0 ? 3
                          : (b & 0xF8) == 0xF0 ? 4
                                               : 1;
    return length > back ? back : 0;
  }
  return 0;  // no lead byte in reach: invalid text, which holding back would not repair
}

std::vector<uint32_t> failure_function(std::string_view s) {
  std::vector<uint32_t> f(s.size(), 0);
  uint32_t k = 0;
  for (size_t i = 1; i < s.size(); ++i) {
    while (k > 0 && s[i] != s[k]) k = f[k - 1];
    if (s[i] == s[k]) ++k;
    f[i] = k;
  }
  return f;
}

}  // namespace

StopMatcher::StopMatcher(std::vector<std::string> stops) {
  for (size_t i = 0; i < stops.size(); ++i) {
    if (stops[i].empty()) continue;
    std::vector<uint32_t> failure = failure_function(stops[i]);
    automata_.push_back({std::move(stops[i]), std::move(failure), 0});
    stop_ids_.push_back(static_cast<int>(i));
  }
}

std::string_view StopMatcher::release(size_t n) {
  text_.append(pending_, 0, n);
  pending_.erase(0, n);
  return std::string_view(text_).substr(text_.size() - n);
}

StopUpdate StopMatcher::feed(std::string_view increment) {
  if (stopped()) return {{}, true, stop_index_};
  const size_t start = pending_.size();
  pending_.append(increment);
  for (size_t pos = start; pos < pending_.size(); ++pos) {
    const char c = pending_[pos];
    size_t matched_length = 0;
    int matched = -1;
    for (size_t i = 0; i < automata_.size(); ++i) {
      Automaton& a = automata_[i];
      uint32_t st = a.state;
      while (st > 0 && a.stop[st] != c) st = a.failure[st - 1];
      if (a.stop[st] == c) ++st;
      if (st == a.stop.size()) {
        if (a.stop.size() > matched_length) {
          matched_length = a.stop.size();
          matched = static_cast<int>(i);
        }
        st = a.failure[st - 1];
      }
      a.state = st;
    }
    if (matched >= 0) {
      // Every byte before pending_ was checked not to start a stop string, so the match lies in pending_.
      stop_index_ = stop_ids_[matched];
      StopUpdate update{release(pos + 1 - matched_length), true, stop_index_};
      pending_.clear();
      return update;
    }
  }
  size_t hold = unfinished_utf8_tail(pending_);
  for (const Automaton& a : automata_) hold = std::max<size_t>(hold, a.state);
  hold = std::min(hold, pending_.size());
  return {release(pending_.size() - hold), false, -1};
}

std::string_view StopMatcher::finish(std::string_view last_increment) {
  const size_t before = text_.size();
  feed(last_increment);
  if (!stopped()) {
    for (Automaton& a : automata_) a.state = 0;
    release(pending_.size());
  }
  return std::string_view(text_).substr(before);
}

}  // namespace agentserve::engine
