#include "engine/stop_matcher.h"

#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "engine/rng.h"

namespace agentserve::engine {
namespace {

struct Run {
  std::string emitted;  // concatenation of every release, finish() included
  bool stopped = false;
  int stop_index = -1;
};

Run feed_all(StopMatcher& m, const std::vector<std::string>& increments) {
  Run run;
  for (const std::string& inc : increments) {
    const StopUpdate u = m.feed(inc);
    run.emitted += u.emit;
    if (u.stopped) {
      run.stopped = true;
      run.stop_index = u.stop_index;
    }
  }
  if (!run.stopped) run.emitted += m.finish();
  return run;
}

// The plain reference: the stop that completes at the earliest byte (ties: the longer one), and the text
// before it.
Run reference(const std::string& text, const std::vector<std::string>& stops) {
  Run best{text, false, -1};
  size_t best_end = std::string::npos;
  for (size_t i = 0; i < stops.size(); ++i) {
    const size_t at = text.find(stops[i]);
    if (at == std::string::npos) continue;
    const size_t end = at + stops[i].size();
    if (end < best_end || (end == best_end && stops[i].size() > stops[best.stop_index].size())) {
      best_end = end;
      best = {text.substr(0, at), true, static_cast<int>(i)};
    }
  }
  return best;
}

TEST_CASE("without stop strings text passes straight through") {
  StopMatcher m({});
  CHECK(m.feed("Hello").emit == "Hello");
  CHECK(m.feed(", world").emit == ", world");
  CHECK(m.finish().empty());
  CHECK(m.text() == "Hello, world");
  CHECK_FALSE(m.stopped());
}

TEST_CASE("a stop inside one increment cuts the text before it") {
  StopMatcher m({"STOP"});
  const StopUpdate u = m.feed("Hello STOP world");
  CHECK(u.stopped);
  CHECK(u.stop_index == 0);
  CHECK(u.emit == "Hello ");
  CHECK(m.text() == "Hello ");
  // After a stop nothing more comes out.
  const StopUpdate after = m.feed("more");
  CHECK(after.emit.empty());
  CHECK(after.stopped);
  CHECK(m.finish().empty());
  CHECK(m.text() == "Hello ");
}

TEST_CASE("a stop split across increments is held back, then dropped") {
  StopMatcher m({"STOP"});
  CHECK(m.feed("Hel").emit == "Hel");
  StopUpdate u = m.feed("lo ST");
  CHECK(u.emit == "lo ");
  CHECK(m.held() == "ST");
  u = m.feed("O");
  CHECK(u.emit.empty());
  CHECK_FALSE(u.stopped);
  u = m.feed("P and more");
  CHECK(u.stopped);
  CHECK(u.emit.empty());
  CHECK(m.text() == "Hello ");
}

TEST_CASE("held text that turns out not to be a stop is released") {
  StopMatcher m({"STOP"});
  CHECK(m.feed("a ST").emit == "a ");
  CHECK(m.feed("OX").emit == "STOX");
  CHECK(m.feed("ST").emit.empty());
  CHECK(m.finish() == "ST");
  CHECK(m.text() == "a STOXST");
  CHECK_FALSE(m.stopped());
}

TEST_CASE("overlapping prefixes of a stop string are tracked") {
  StopMatcher m({"abac"});
  CHECK(m.feed("xab").emit == "x");
  CHECK(m.feed("ab").emit == "ab");  // "abab": only the last "ab" can still start "abac"
  CHECK(m.held() == "ab");
  const StopUpdate u = m.feed("ac!");
  CHECK(u.stopped);
  CHECK(u.emit.empty());
  CHECK(m.text() == "xab");

  StopMatcher n({"aab"});
  CHECK(n.feed("aa").emit.empty());
  CHECK(n.feed("a").emit == "a");
  CHECK(n.feed("b").stopped);
  CHECK(n.text() == "a");
}

TEST_CASE("with several stops the first to complete wins, and the index says which") {
  StopMatcher m({"</answer>", "\n\n", "END"});
  const StopUpdate u = m.feed("one\ntwo\n\nthree END");
  CHECK(u.stopped);
  CHECK(u.stop_index == 1);
  CHECK(m.text() == "one\ntwo");
  // "bc" completes before "abcd" does, even though "abcd" starts earlier.
  StopMatcher early({"abcd", "bc"});
  CHECK(early.feed("xabcd").stop_index == 1);
  CHECK(early.text() == "xa");
  // Completing on the same byte, the longer stop wins and cuts earlier.
  StopMatcher same({"c", "abc"});
  CHECK(same.feed("xabc").stop_index == 1);
  CHECK(same.text() == "x");
}

TEST_CASE("unicode stops match across increments that split characters") {
  // "。" is E3 80 82 in UTF-8; feed it one byte at a time.
  StopMatcher m({"。"});
  CHECK(m.feed("你好").emit == "你好");
  CHECK(m.feed("\xE3").emit.empty());
  CHECK(m.feed("\x80").emit.empty());
  const StopUpdate u = m.feed("\x82再见");
  CHECK(u.stopped);
  CHECK(m.text() == "你好");
  // An unfinished character is held back until its last byte arrives, stop strings or not.
  StopMatcher plain({"zzz"});
  CHECK(plain.feed("ok \xF0\x9F").emit == "ok ");
  CHECK(plain.feed("\x98").emit.empty());
  CHECK(plain.feed("\x80!").emit == "\xF0\x9F\x98\x80!");
  CHECK(plain.text() == "ok 😀!");
  // A stop sharing a lead byte with other text does not fire on it.
  StopMatcher e({"é"});
  CHECK(e.feed("café").stopped);
  CHECK(e.text() == "caf");
  StopMatcher not_e({"é"});
  CHECK(not_e.feed("caf\xC3").emit == "caf");
  CHECK(not_e.feed("\xA8").emit == "è");
}

TEST_CASE("the result does not depend on how the text is split into increments") {
  const std::vector<std::string> stops = {"ab", "bba", "abab", "ca", "é!"};
  const std::string alphabet[] = {"a", "b", "c", "é", "!", " "};
  Rng rng(2024);
  int stopped_runs = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    std::string text;
    const int len = 1 + static_cast<int>(rng.uniform() * 12);
    for (int i = 0; i < len; ++i) text += alphabet[static_cast<size_t>(rng.uniform() * 6)];
    std::vector<std::string> pieces;
    for (size_t at = 0; at < text.size();) {
      const size_t n = std::min(text.size() - at, 1 + static_cast<size_t>(rng.uniform() * 4));
      pieces.push_back(text.substr(at, n));
      at += n;
    }
    StopMatcher m(stops);
    const Run got = feed_all(m, pieces);
    const Run want = reference(text, stops);
    REQUIRE_MESSAGE(got.emitted == want.emitted, "text=" << text);
    REQUIRE(got.stopped == want.stopped);
    REQUIRE(got.stop_index == want.stop_index);
    REQUIRE(m.text() == want.emitted);
    stopped_runs += got.stopped;
  }
  CHECK(stopped_runs > 500);
  CHECK(stopped_runs < 2000);
}

TEST_CASE("finish feeds the last increment and releases everything held") {
  StopMatcher m({"STOP"});
  CHECK(m.feed("a ST").emit == "a ");
  CHECK(m.finish("xyz S") == "STxyz S");
  CHECK(m.text() == "a STxyz S");
  CHECK_FALSE(m.stopped());
  // A stop completed by the last increment still cuts the text.
  StopMatcher n({"STOP"});
  CHECK(n.feed("b ST").emit == "b ");
  CHECK(n.finish("OP tail") == "");
  CHECK(n.stopped());
  CHECK(n.text() == "b ");
  // An unfinished UTF-8 character at the very end is released as it is.
  StopMatcher u({});
  CHECK(u.feed("x\xE4").emit == "x");
  CHECK(u.finish() == "\xE4");
}

TEST_CASE("empty stop strings are ignored") {
  StopMatcher m({"", "x"});
  const StopUpdate u = m.feed("abxc");
  CHECK(u.stopped);
  CHECK(u.stop_index == 1);
  CHECK(m.text() == "ab");
}

}  // namespace
}  // namespace agentserve::engine
