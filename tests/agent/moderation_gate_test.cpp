#include "agent/moderation_gate.h"

#include <algorithm>
#include <optional>
#include <random>

#include <doctest/doctest.h>

using agentserve::agent::GateExecutor;
using agentserve::agent::moderate_once;
using agentserve::agent::ModerationChecker;
using agentserve::agent::ModerationGate;
using agentserve::agent::ModerationGateCallbacks;
using agentserve::agent::ModerationGateOptions;
using agentserve::agent::ModerationVerdict;

namespace {

ModerationVerdict pass() {
  return {.allowed = true};
}
ModerationVerdict flag(std::vector<std::string> categories) {
  return {.allowed = false, .flagged = true, .categories = std::move(categories)};
}

// A checker whose verdicts the test hands out in any order, and an executor queue the test drains, so every
// interleaving the real io threads could produce is reproducible.
struct Harness {
  struct Pending {
    std::string text;
    std::function<void(ModerationVerdict)> done;
  };
  std::vector<Pending> checks;
  std::vector<std::function<void()>> queue;
  std::string released;
  std::vector<std::string> releases;
  std::optional<ModerationVerdict> blocked;
  int blocked_calls = 0;
  int finished = 0;
  std::unique_ptr<ModerationGate> gate;

  explicit Harness(size_t window, size_t overlap) {
    ModerationChecker checker = [this](std::string text, std::function<void(ModerationVerdict)> done) {
      checks.push_back({std::move(text), std::move(done)});
    };
    GateExecutor executor = [this](std::function<void()> task) { queue.push_back(std::move(task)); };
    ModerationGateCallbacks callbacks;
    callbacks.on_release = [this](std::string_view text) {
      released += text;
      releases.emplace_back(text);
    };
    callbacks.on_blocked = [this](const ModerationVerdict& v) {
      blocked = v;
      ++blocked_calls;
    };
    callbacks.on_finished = [this] { ++finished; };
    auto created = ModerationGate::create({window, overlap}, checker, executor, callbacks);
    REQUIRE(created.ok());
    gate = std::move(created).value();
  }

  void push_all(const std::vector<std::string>& tokens) {
    for (const auto& t : tokens) gate->push(t);
  }
  // Answers check i, then runs what the executor queued (the strand running the verdict).
  void answer(size_t i, ModerationVerdict v) {
    REQUIRE(i < checks.size());
    checks[i].done(std::move(v));
    drain();
  }
  void drain() {
    auto tasks = std::move(queue);
    queue.clear();
    for (auto& t : tasks) t();
  }
};

std::vector<std::string> numbered(size_t n) {
  std::vector<std::string> out;
  for (size_t i = 0; i < n; ++i) {
    // Appended piece by piece: GCC 12 at -O3 warns falsely (-Wrestrict) on "t" + to_string(i) + " ".
    std::string token = "t";
    token += std::to_string(i);
    token += ' ';
    out.push_back(std::move(token));
  }
  return out;
}

std::string join(const std::vector<std::string>& v, size_t from, size_t to) {
  std::string s;
  for (size_t i = from; i < to; ++i) s += v[i];
  return s;
}

}  // namespace

TEST_CASE("gate releases nothing until the window containing the text passed") {
  Harness h(4, 0);
  const auto tokens = numbered(6);
  h.push_all(tokens);
  REQUIRE(h.checks.size() == 1);  // one full window; two tokens still accumulating
  CHECK(h.checks[0].text == join(tokens, 0, 4));
  CHECK(h.released.empty());
  h.checks[0].done(pass());
  CHECK(h.released.empty());  // the verdict waits for the strand
  h.drain();
  CHECK(h.released == join(tokens, 0, 4));
  CHECK(h.gate->released_tokens() == 4);
  CHECK(h.finished == 0);
}

TEST_CASE("gate checks each window with the overlap of the previous one, so a split phrase is seen whole") {
  Harness h(3, 2);
  const std::vector<std::string> tokens = {"we ", "will ", "bu", "ild ", "a ", "b", "omb", "!"};
  h.push_all(tokens);
  REQUIRE(h.checks.size() == 2);
  CHECK(h.checks[0].text == "we will bu");
  CHECK(h.checks[1].text == "will build a b");  // 2 overlap tokens + 3 new
  h.gate->finish();
  REQUIRE(h.checks.size() == 3);
  CHECK(h.checks[2].text == "a bomb!");  // the phrase split across windows is whole here
}

TEST_CASE("gate keeps order when verdicts return out of order, with checks running concurrently") {
  Harness h(2, 1);
  const auto tokens = numbered(7);
  h.push_all(tokens);
  h.gate->finish();
  REQUIRE(h.checks.size() == 4);
  CHECK(h.gate->checks_in_flight() == 4);
  h.answer(2, pass());
  h.answer(1, pass());
  CHECK(h.released.empty());
  h.answer(0, pass());
  CHECK(h.released == join(tokens, 0, 6));
  CHECK(h.releases.size() == 3);
  CHECK(h.finished == 0);
  h.answer(3, pass());
  CHECK(h.released == join(tokens, 0, 7));
  CHECK(h.finished == 1);
}

TEST_CASE(
    "a flagged window stops the gate: nothing of it or after it is released, even if later windows passed") {
  Harness h(3, 1);
  const auto tokens = numbered(12);
  h.push_all(tokens);
  h.gate->finish();
  REQUIRE(h.checks.size() == 4);
  h.answer(0, pass());
  h.answer(3, pass());
  h.answer(2, pass());
  h.answer(1, flag({"violence"}));
  CHECK(h.released == join(tokens, 0, 3));
  CHECK(h.blocked_calls == 1);
  REQUIRE(h.blocked);
  CHECK(h.blocked->categories == std::vector<std::string>{"violence"});
  CHECK(h.gate->blocked());
  CHECK(h.finished == 0);
  // Later tokens and a second finish change nothing.
  h.gate->push("more");
  h.gate->finish();
  CHECK(h.checks.size() == 4);
  CHECK(h.released == join(tokens, 0, 3));
}

TEST_CASE("a failed check that is not allowed blocks like a flag; one allowed under fail-open releases") {
  Harness closed(2, 0);
  closed.push_all(numbered(2));
  closed.answer(0, {.allowed = false, .failure = agentserve::agent::ModerationFailure::kTimeout});
  CHECK(closed.released.empty());
  REQUIRE(closed.blocked);
  CHECK(closed.blocked->failure == agentserve::agent::ModerationFailure::kTimeout);

  Harness open(2, 0);
  open.push_all(numbered(2));
  open.answer(0, {.allowed = true, .failure = agentserve::agent::ModerationFailure::kTimeout});
  CHECK(open.released == join(numbered(2), 0, 2));
}

TEST_CASE("finish checks the remainder before reporting finished; with no remainder it finishes at once") {
  Harness h(4, 2);
  const auto tokens = numbered(5);
  h.push_all(tokens);
  h.answer(0, pass());
  h.gate->finish();
  REQUIRE(h.checks.size() == 2);
  CHECK(h.checks[1].text == join(tokens, 2, 5));
  CHECK(h.finished == 0);
  CHECK(h.released == join(tokens, 0, 4));
  h.answer(1, pass());
  CHECK(h.released == join(tokens, 0, 5));
  CHECK(h.finished == 1);

  Harness exact(2, 0);
  exact.push_all(numbered(2));
  exact.answer(0, pass());
  exact.gate->finish();
  CHECK(exact.checks.size() == 1);
  CHECK(exact.finished == 1);

  Harness empty(2, 0);
  empty.gate->finish();
  CHECK(empty.checks.empty());
  CHECK(empty.finished == 1);
}

TEST_CASE("a verdict arriving after the gate is destroyed is dropped") {
  Harness h(2, 0);
  h.push_all(numbered(2));
  auto done = h.checks[0].done;
  h.gate.reset();
  done(pass());
  h.drain();
  CHECK(h.released.empty());
}

TEST_CASE("gate on random windows, overlaps and verdict orders releases exactly the passed prefix") {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 300; ++trial) {
    const size_t window = 1 + rng() % 9;
    const size_t overlap = rng() % 5;
    const size_t n = rng() % 40;
    const auto tokens = numbered(n);
    Harness h(window, overlap);
    h.push_all(tokens);
    h.gate->finish();
    const size_t windows = (n + window - 1) / window;
    REQUIRE(h.checks.size() == windows);
    // Each check covers its window plus up to `overlap` tokens before it.
    for (size_t w = 0; w < windows; ++w) {
      const size_t first = w * window;
      const size_t from = first >= overlap ? first - overlap : 0;
      CHECK(h.checks[w].text == join(tokens, from, std::min(n, first + window)));
    }
    const long flagged = windows > 0 && rng() % 2 ? static_cast<long>(rng() % windows) : -1;
    std::vector<size_t> order(windows);
    for (size_t i = 0; i < windows; ++i) order[i] = i;
    std::shuffle(order.begin(), order.end(), rng);
    for (size_t i : order) h.answer(i, static_cast<long>(i) == flagged ? flag({"x"}) : pass());
    if (flagged >= 0) {
      CHECK(h.released == join(tokens, 0, static_cast<size_t>(flagged) * window));
      CHECK(h.blocked_calls == 1);
      CHECK(h.finished == 0);
    } else {
      CHECK(h.released == join(tokens, 0, n));
      CHECK(h.blocked_calls == 0);
      CHECK(h.finished == 1);
    }
  }
}

TEST_CASE("moderate_once delivers the verdict through the executor") {
  std::vector<std::function<void()>> queue;
  std::string seen;
  std::optional<ModerationVerdict> verdict;
  moderate_once(
      [&](std::string text, std::function<void(ModerationVerdict)> done) {
        seen = text;
        done(flag({"a"}));
      },
      "{\"cmd\":\"rm -rf /\"}", [&](std::function<void()> t) { queue.push_back(std::move(t)); },
      [&](const ModerationVerdict& v) { verdict = v; });
  CHECK(seen == "{\"cmd\":\"rm -rf /\"}");
  CHECK_FALSE(verdict);
  REQUIRE(queue.size() == 1);
  queue[0]();
  REQUIRE(verdict);
  CHECK(verdict->flagged);
}

TEST_CASE("gate refuses a zero window") {
  auto gate = ModerationGate::create(
      {0, 0}, [](std::string, std::function<void(ModerationVerdict)>) {}, [](std::function<void()>) {}, {});
  CHECK(gate.status().code() == agentserve::StatusCode::kInvalidArgument);
}
