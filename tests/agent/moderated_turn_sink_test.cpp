#include "agent/moderated_turn_sink.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <random>

#include "tests/agent/moderation_client_harness.h"
#include "tests/agent/scripted_turn.h"

namespace agentserve::agent {
namespace {

using namespace std::chrono_literals;

using testing::ManualExecutor;
using testing::ScriptedGenerator;

class RecordingSink final : public TurnSink {
 public:
  void on_text_delta(std::string_view delta) override {
    text += delta;
    log.push_back("text");
  }
  void on_reasoning_delta(std::string_view delta) override {
    reasoning += delta;
    log.push_back("reasoning");
  }
  void on_tool_call(const TurnToolCall& call) override { log.push_back("call " + call.name); }
  void on_requires_action(std::span<const std::string>, std::chrono::steady_clock::time_point) override {
    log.push_back("requires_action");
  }
  void on_tool_started(const TurnToolCall& call) override { log.push_back("started " + call.name); }
  void on_tool_completed(const TurnToolCall& call, const tools::ToolResult& result) override {
    log.push_back("completed " + call.name + (result.is_error ? " error" : " ok"));
    results.push_back(result.output);
  }
  void on_tool_call_error(const Status&, std::string_view raw) override {
    log.push_back("call_error");
    raw_errors.emplace_back(raw);
  }
  void on_step_committed(const StepCommit& commit) override {
    log.push_back("commit");
    for (const Message& m : commit.messages) committed.push_back(m);
  }
  void on_done(const TurnOutcome& done) override {
    CHECK_FALSE(outcome.has_value());  // exactly once
    log.push_back("done");
    outcome = done;
  }

  std::string text, reasoning;
  std::vector<std::string> log, results, raw_errors;
  std::vector<Message> committed;
  std::optional<TurnOutcome> outcome;
};

// A webhook stand-in: checks wait until the test answers them (in any order), and flag any text holding
// one of `flagged_words`. The default is one byte, so any window holding it is flagged, whatever the window
// and delta sizes.
struct FakeChecker {
  struct Check {
    ModerationKind kind;
    std::string text;
    std::function<void(ModerationVerdict)> done;
  };
  std::vector<std::string> flagged_words{"#"};
  std::vector<Check> all;    // every check started, in order
  std::vector<size_t> open;  // indices into `all` not yet answered

  KindChecker checker() {
    return [this](ModerationKind kind, std::string text, std::function<void(ModerationVerdict)> done) {
      all.push_back({kind, std::move(text), std::move(done)});
      open.push_back(all.size() - 1);
    };
  }
  ModerationVerdict verdict_for(const std::string& text) const {
    for (const std::string& word : flagged_words)
      if (text.find(word) != std::string::npos)
        return {.allowed = false, .flagged = true, .categories = {"hate"}};
    return {.allowed = true};
  }
  void answer(size_t slot) {
    const size_t index = open[slot];
    open.erase(open.begin() + static_cast<std::ptrdiff_t>(slot));
    all[index].done(verdict_for(all[index].text));
  }
};

tools::ToolSpec add_tool(std::shared_ptr<int> runs) {
  tools::ToolSpec spec;
  spec.name = "add";
  spec.description = "Adds two integers.";
  spec.parameters = nlohmann::json::parse(
      R"({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}, "note": {"type": "string"}}, "required": ["a", "b"]})");
  spec.execution = tools::ToolExecution::kServer;
  spec.run = [runs](const nlohmann::json& args, const tools::ToolContext&) {
    ++*runs;
    return tools::ToolResult{"sum " + std::to_string(args.at("a").get<int>() + args.at("b").get<int>()) +
                                 " " + args.value("note", ""),
                             false};
  };
  return spec;
}

std::string call_text(const std::string& arguments) {
  return "<tool_call>\n{\"name\": \"add\", \"arguments\": " + arguments + "}\n</tool_call>";
}

// "w00 w01 ..." with `word` spliced in after `at` words: every window's text is unique in the content.
std::string words(int n, int at = -1, const std::string& word = "#") {
  std::string out;
  for (int i = 0; i < n; ++i) {
    if (i == at) out += word + " ";
    out += 'w';
    out += static_cast<char>('0' + i / 10);
    out += static_cast<char>('0' + i % 10);
    out += ' ';
  }
  return out;
}

// With `hang`, the last script never finishes: the loop is still generating when verdicts come.
std::vector<std::string> hang_last(std::vector<std::string> scripts, bool hang) {
  if (hang) scripts.back() = ScriptedGenerator::hanging(scripts.back());
  return scripts;
}

struct Harness {
  Harness(std::vector<std::string> scripts, ModeratedTurnOptions moderation, std::size_t piece = 3,
          bool hang = false, KindChecker checker = {})
      : generator(hang_last(std::move(scripts), hang), piece) {
    auto created =
        ModeratedTurnSink::create(sink, executor.executor(), checker ? checker : fake.checker(), moderation,
                                  [this](const ModerationBlock& block) { blocks.push_back(block); });
    REQUIRE(created.ok());
    moderated = std::move(created).value();
    TurnLoopOptions options;
    options.tools = {add_tool(tool_runs)};
    options.enable_thinking = true;
    // Runs the tool at once on the calling thread; the loop hops back onto the executor by itself.
    options.run_tool = [](const tools::ToolSpec& spec, const Json& arguments,
                          const tools::ToolContext& context,
                          tools::ToolDone done) { done(spec.run(nlohmann::json(arguments), context)); };
    moderated->wrap(options);
    loop = TurnLoop::create(generator, *moderated, executor.executor(), std::move(options),
                            {Message{Role::kUser, "Say something.", std::nullopt, {}}});
    std::weak_ptr<TurnLoop> weak = loop;
    moderated->set_cancel([weak] {
      if (auto l = weak.lock()) l->cancel();
    });
  }

  // Runs strand tasks and answers open checks, interleaved at random, until on_done.
  bool run(uint64_t seed) {
    std::mt19937_64 rng(seed);
    REQUIRE(loop->start().ok());
    for (int guard = 0; guard < 100000 && !sink.outcome; ++guard) {
      const bool can_run = !executor.empty();
      if (can_run && (fake.open.empty() || rng() % 2 == 0)) {
        executor.run_one();
      } else if (!fake.open.empty()) {
        fake.answer(rng() % fake.open.size());
      } else if (!executor.run_one(10000ms)) {
        return false;  // neither a task nor a check: stuck
      }
    }
    return sink.outcome.has_value();
  }

  // The content the model produced before the first flagged output_text window: what may be forwarded.
  // Windows follow each other, so the flagged one starts where the previous check's text ended.
  size_t allowed_prefix(const std::string& content) const {
    size_t end = 0;
    for (const FakeChecker::Check& check : fake.all) {
      if (check.kind != ModerationKind::kOutputText) continue;
      if (!fake.verdict_for(check.text).allowed) return end;
      const size_t at = content.find(check.text);
      REQUIRE(at != std::string::npos);
      end = at + check.text.size();
    }
    return content.size();
  }

  ManualExecutor executor;
  FakeChecker fake;
  ScriptedGenerator generator;
  RecordingSink sink;
  std::shared_ptr<int> tool_runs = std::make_shared<int>(0);
  std::vector<ModerationBlock> blocks;
  std::shared_ptr<ModeratedTurnSink> moderated;
  std::shared_ptr<TurnLoop> loop;
};

ModeratedTurnOptions windows(size_t window, size_t overlap) {
  ModeratedTurnOptions options;
  options.gate = {window, overlap};
  return options;
}

bool has_kind(const FakeChecker& fake, ModerationKind kind) {
  for (const auto& check : fake.all)
    if (check.kind == kind) return true;
  return false;
}

TEST_CASE("clean output passes whole and in order, reasoning checked, commit and done after the last text") {
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    CAPTURE(seed);
    const std::string content = words(40);
    Harness h({"<think>\nplan " + words(9) + "\n</think>\n\n" + content}, windows(1 + seed % 7, seed % 3),
              1 + seed % 5);
    REQUIRE(h.run(seed));
    CHECK(h.sink.outcome->status == TurnStatus::kCompleted);
    CHECK(h.sink.text == content);
    CHECK(h.sink.reasoning == "plan " + words(9));
    CHECK(h.blocks.empty());
    CHECK(has_kind(h.fake, ModerationKind::kReasoning));
    // Every delta of the loop was checked: the checks' texts cover the content.
    REQUIRE(h.sink.log.size() >= 3);
    CHECK(h.sink.log.front() == "reasoning");
    CHECK(h.sink.log[h.sink.log.size() - 2] == "commit");
    CHECK(h.sink.log.back() == "done");
    REQUIRE(h.sink.committed.size() == 1);
    CHECK(h.sink.committed[0].content == content);
    CHECK_FALSE(h.sink.outcome->token_ids.empty());
  }
}

TEST_CASE("no checks are left when the response ends: nothing was forwarded unchecked") {
  const std::string content = words(25);
  Harness h({content}, windows(4, 1));
  REQUIRE(h.loop->start().ok());
  // Drain the strand without answering: the loop ends, but nothing reaches the inner sink.
  while (h.executor.run_one()) {
  }
  CHECK(h.sink.log.empty());
  CHECK_FALSE(h.fake.open.empty());
  while (!h.fake.open.empty()) {
    h.fake.answer(0);
    while (h.executor.run_one()) {
    }
  }
  REQUIRE(h.sink.outcome.has_value());
  CHECK(h.sink.text == content);
}

TEST_CASE("a flagged word in the middle blocks: no byte of its window or later is forwarded") {
  for (uint64_t seed = 1; seed <= 30; ++seed) {
    CAPTURE(seed);
    const bool hang = seed % 2 == 0;  // the loop is still generating when the verdict comes, or already done
    const std::string content = words(60, 17 + static_cast<int>(seed % 20));
    Harness h({content}, windows(1 + seed % 9, seed % 4), 1 + seed % 6, hang);
    REQUIRE(h.run(seed));
    CHECK(h.sink.outcome->status == TurnStatus::kBlocked);
    CHECK(h.sink.outcome->error.message().find("hate") != std::string::npos);
    CHECK(h.sink.outcome->token_ids.empty());
    // Everything forwarded is the content before the flagged window, exactly (the earlier windows passed).
    CHECK(h.sink.text == content.substr(0, h.allowed_prefix(content)));
    CHECK(h.sink.text.find('#') == std::string::npos);
    CHECK(h.sink.committed.empty());  // the blocked text is never committed
    REQUIRE(h.blocks.size() == 1);
    CHECK(h.blocks[0].kind == ModerationKind::kOutputText);
    CHECK(h.blocks[0].categories == std::vector<std::string>{"hate"});
    CHECK(h.blocks[0].action == "blocked");
    CHECK(h.sink.log.back() == "done");
    if (hang) CHECK(h.generator.cancelled);
  }
}

TEST_CASE("a flagged reasoning window blocks before any of it is forwarded") {
  Harness h({"<think>\n" + words(30, 12) + "\n</think>\n\nfine answer"}, windows(4, 1), 2);
  REQUIRE(h.run(7));
  CHECK(h.sink.outcome->status == TurnStatus::kBlocked);
  CHECK(h.sink.reasoning.find('#') == std::string::npos);
  CHECK(h.sink.text.empty());
  REQUIRE(h.blocks.size() == 1);
  CHECK(h.blocks[0].kind == ModerationKind::kReasoning);
}

TEST_CASE("flagged tool arguments: the tool never runs and the response ends blocked") {
  Harness h({"Let me add. " + call_text(R"({"a": 2, "b": 3, "note": "#"})"), "never reached"}, windows(4, 1));
  REQUIRE(h.run(3));
  CHECK(*h.tool_runs == 0);
  CHECK(h.sink.outcome->status == TurnStatus::kBlocked);
  CHECK(h.sink.text == "Let me add. ");  // the text before the call passed on its own
  for (const std::string& entry : h.sink.log) CHECK(entry.rfind("call", 0) != 0);
  REQUIRE(h.blocks.size() == 1);
  CHECK(h.blocks[0].kind == ModerationKind::kToolArguments);
  CHECK(h.sink.committed.empty());
}

TEST_CASE("clean tool arguments run the tool; its events follow the step's text") {
  Harness h({"Adding. " + call_text(R"({"a": 2, "b": 3})"), "The sum is 5."}, windows(3, 1));
  REQUIRE(h.run(5));
  CHECK(*h.tool_runs == 1);
  CHECK(h.sink.outcome->status == TurnStatus::kCompleted);
  CHECK(h.sink.text == "Adding. The sum is 5.");
  CHECK(has_kind(h.fake, ModerationKind::kToolArguments));
  const auto& log = h.sink.log;
  const auto call = std::find(log.begin(), log.end(), "call add");
  REQUIRE(call != log.end());
  CHECK(std::find(log.begin(), call, "text") != call);  // step 1's text came first
  CHECK(std::find(call, log.end(), "completed add ok") != log.end());
}

TEST_CASE("a flagged tool result is withheld from the model and the response goes on") {
  ModeratedTurnOptions options = windows(8, 2);
  options.check_tool_results = true;
  Harness h({call_text(R"({"a": 2, "b": 3, "note": "secret"})"), "I could not see it."}, options);
  h.fake.flagged_words.push_back("sum 5 secret");
  REQUIRE(h.run(11));
  CHECK(*h.tool_runs == 1);
  CHECK(h.sink.outcome->status == TurnStatus::kCompleted);
  REQUIRE(h.sink.results.size() == 1);
  CHECK(h.sink.results[0].find("withheld") != std::string::npos);
  REQUIRE(h.generator.prompts.size() == 2);
  CHECK(h.generator.prompt_text(1).find("sum 5 secret") == std::string::npos);
  CHECK(h.generator.prompt_text(1).find("withheld") != std::string::npos);
  REQUIRE(h.blocks.size() == 1);
  CHECK(h.blocks[0].kind == ModerationKind::kToolResult);
  CHECK(h.blocks[0].action == "withheld");
}

TEST_CASE("the raw text of a malformed call is checked before it is forwarded") {
  Harness h({"<tool_call>\nnot json #\n</tool_call>", "x"}, windows(4, 0));
  REQUIRE(h.run(13));
  CHECK(h.sink.outcome->status == TurnStatus::kBlocked);
  CHECK(h.sink.raw_errors.empty());
}

TEST_CASE("a cancel by the driver ends at once and forwards nothing still held") {
  Harness h({words(30)}, windows(4, 1), 3, /*hang=*/true);
  REQUIRE(h.loop->start().ok());
  while (h.executor.run_one()) {
  }
  h.loop->cancel();
  REQUIRE(h.sink.outcome.has_value());
  CHECK(h.sink.outcome->status == TurnStatus::kCancelled);
  CHECK(h.sink.text.empty());
  while (!h.fake.open.empty()) h.fake.answer(0);
  while (h.executor.run_one()) {
  }
  CHECK(h.sink.text.empty());
  CHECK(h.sink.log == std::vector<std::string>{"done"});
}

TEST_CASE("create refuses a zero window and a missing checker") {
  RecordingSink sink;
  ManualExecutor executor;
  CHECK(ModeratedTurnSink::create(sink, executor.executor(), [](auto, auto, auto) {}, windows(0, 0), {})
            .status()
            .code() == StatusCode::kInvalidArgument);
  CHECK_FALSE(ModeratedTurnSink::create(sink, executor.executor(), {}, windows(4, 0), {}).ok());
}

// The real client against a port nobody listens on: the failure blocks under fail-closed, passes under
// fail-open.
struct DeadWebhook : testing::ModerationClientHarness {
  DeadWebhook() {
    ModerationOptions options;
    options.url = "http://127.0.0.1:1/v1/moderations";
    options.timeout = 1000ms;
    connect(options);
  }
};

TEST_CASE("an unreachable webhook blocks under fail-closed and passes under fail-open") {
  DeadWebhook webhook;
  const std::string content = words(12);
  for (const bool fail_open : {false, true}) {
    CAPTURE(fail_open);
    ModerationRequest base{"", ModerationKind::kOutputText, "t1", "s_1", "r_1"};
    Harness h({content}, windows(8, 2), 4, false, moderation_checker(*webhook.client, base, fail_open));
    REQUIRE(h.run(1));
    if (fail_open) {
      CHECK(h.sink.outcome->status == TurnStatus::kCompleted);
      CHECK(h.sink.text == content);
      CHECK(h.blocks.empty());
    } else {
      CHECK(h.sink.outcome->status == TurnStatus::kBlocked);
      CHECK(h.sink.text.empty());
      REQUIRE(h.blocks.size() == 1);
      CHECK(h.blocks[0].failure == ModerationFailure::kConnection);
      CHECK(h.sink.outcome->error.message().find("connection") != std::string::npos);
    }
  }
}

TEST_CASE("a block built from a verdict keeps what the driver reports, and its status names the cause") {
  ModerationVerdict flagged;
  flagged.flagged = true;
  flagged.categories = {"hate", "violence"};
  const ModerationBlock by_webhook = moderation_block(ModerationKind::kInput, flagged, "blocked");
  CHECK(by_webhook.kind == ModerationKind::kInput);
  CHECK(by_webhook.categories == flagged.categories);
  CHECK(by_webhook.failure == ModerationFailure::kNone);
  CHECK(by_webhook.action == "blocked");
  CHECK(moderation_block_status(by_webhook).message() == "blocked by moderation (input: hate, violence)");

  ModerationVerdict failed;
  failed.failure = ModerationFailure::kTimeout;
  failed.failure_detail = "no answer within 300 ms";
  const ModerationBlock by_failure = moderation_block(ModerationKind::kToolResult, failed, "withheld");
  CHECK(by_failure.failure == ModerationFailure::kTimeout);
  CHECK(by_failure.detail == failed.failure_detail);
  CHECK(by_failure.categories.empty());
  CHECK(moderation_block_status(by_failure).message() ==
        "blocked by moderation (tool_result: check failed, timeout - no answer within 300 ms)");
  CHECK(moderation_block_status(by_failure).code() == StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace agentserve::agent
