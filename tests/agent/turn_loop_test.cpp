#include "agent/turn_loop.h"

#include <doctest/doctest.h>

#include <atomic>
#include <mutex>
#include <thread>

#include "tests/agent/scripted_turn.h"
#include "tests/agent/tiny_engine.h"
#include "tests/engine/test_models.h"

namespace agentserve::agent {
namespace {

using namespace std::chrono_literals;

using testing::ManualExecutor;
using testing::qwen3_tokenizer;
using testing::ScriptedGenerator;

class RecordingSink final : public TurnSink {
 public:
  void on_text_delta(std::string_view delta) override { text += delta; }
  void on_reasoning_delta(std::string_view delta) override { reasoning += delta; }
  void on_tool_call(const TurnToolCall& call) override {
    log.push_back(std::string(call.execution == tools::ToolExecution::kServer ? "server" : "client") +
                  " call " + call.name + " " + call.arguments.dump());
    calls.push_back(call);
  }
  void on_requires_action(std::span<const std::string> call_ids,
                          std::chrono::steady_clock::time_point) override {
    log.push_back("requires_action " + std::to_string(call_ids.size()));
    waiting.assign(call_ids.begin(), call_ids.end());
  }
  void on_tool_started(const TurnToolCall& call) override { log.push_back("started " + call.name); }
  void on_tool_completed(const TurnToolCall& call, const tools::ToolResult& result) override {
    log.push_back("completed " + call.name + (result.is_error ? " error" : " ok"));
  }
  void on_tool_call_error(const Status& error, std::string_view) override {
    log.push_back("call_error " + std::string(status_code_name(error.code())));
  }
  void on_step_committed(const StepCommit& commit) override { commits.push_back(commit); }
  void on_done(const TurnOutcome& done) override {
    CHECK_FALSE(outcome.has_value());  // exactly once
    outcome = done;
  }

  std::vector<Message> committed() const {
    std::vector<Message> messages;
    for (const StepCommit& commit : commits)
      messages.insert(messages.end(), commit.messages.begin(), commit.messages.end());
    return messages;
  }

  std::string text, reasoning;
  std::vector<std::string> log;
  std::vector<TurnToolCall> calls;
  std::vector<std::string> waiting;
  std::vector<StepCommit> commits;
  std::optional<TurnOutcome> outcome;
};

// Runs each server tool on its own thread, as the registry's workers would.
class ThreadRunner {
 public:
  ~ThreadRunner() {
    for (std::thread& t : threads_) t.join();
  }
  ToolRunner runner() {
    return [this](const tools::ToolSpec& spec, const Json& arguments, const tools::ToolContext& context,
                  tools::ToolDone done) {
      runs++;
      std::lock_guard lock(mutex_);
      threads_.emplace_back([spec, arguments = nlohmann::json(arguments), context, done = std::move(done)] {
        done(spec.run(arguments, context));
      });
    };
  }
  std::atomic<int> runs{0};

 private:
  std::mutex mutex_;
  std::vector<std::thread> threads_;
};

tools::ToolSpec add_tool() {
  tools::ToolSpec spec;
  spec.name = "add";
  spec.description = "Adds two integers.";
  spec.parameters = nlohmann::json::parse(
      R"({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]})");
  spec.execution = tools::ToolExecution::kServer;
  spec.run = [](const nlohmann::json& args, const tools::ToolContext&) {
    return tools::ToolResult{std::to_string(args.at("a").get<int>() + args.at("b").get<int>()), false};
  };
  return spec;
}

tools::ToolSpec ask_user_tool() {
  tools::ToolSpec spec;
  spec.name = "ask_user";
  spec.description = "Asks the user a question.";
  spec.parameters = nlohmann::json::parse(
      R"({"type": "object", "properties": {"question": {"type": "string"}}, "required": ["question"]})");
  spec.execution = tools::ToolExecution::kClient;
  return spec;
}

// Two calls of it finish only if they run at the same time.
tools::ToolSpec meet_tool(std::shared_ptr<std::atomic<int>> arrived) {
  tools::ToolSpec spec;
  spec.name = "meet";
  spec.description = "Waits for its twin.";
  spec.parameters = nlohmann::json::parse(R"({"type": "object", "properties": {"who": {"type": "string"}}})");
  spec.execution = tools::ToolExecution::kServer;
  spec.run = [arrived](const nlohmann::json& args, const tools::ToolContext&) {
    arrived->fetch_add(1);
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    while (arrived->load() < 2 && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(1ms);
    return tools::ToolResult{args.value("who", "") + (arrived->load() >= 2 ? " met" : " alone"), false};
  };
  return spec;
}

std::string call_text(const std::string& name, const std::string& arguments) {
  return "<tool_call>\n{\"name\": \"" + name + "\", \"arguments\": " + arguments + "}\n</tool_call>";
}

std::vector<Message> question(const std::string& text = "What is 2 + 3?") {
  return {Message{Role::kSystem, "You are a careful agent.", std::nullopt, {}},
          Message{Role::kUser, text, std::nullopt, {}}};
}

struct Harness {
  explicit Harness(std::vector<std::string> scripts, TurnLoopOptions options = {},
                   std::vector<Message> messages = question())
      : generator(std::move(scripts)) {
    if (options.tools.empty()) options.tools = {add_tool(), ask_user_tool()};
    options.run_tool = runner.runner();
    loop = TurnLoop::create(generator, sink, executor.executor(), std::move(options), std::move(messages));
  }
  bool run_to_end() {
    return executor.run_until([&] { return sink.outcome.has_value(); });
  }

  ManualExecutor executor;
  ThreadRunner runner;  // joins its threads before the executor they post to goes
  ScriptedGenerator generator;
  RecordingSink sink;
  std::shared_ptr<TurnLoop> loop;
};

TEST_CASE("a final answer in one step streams text and reasoning and commits one assistant message") {
  Harness h({"<think>\nhmm\n</think>\n\nHello there."});
  REQUIRE(h.loop->start().ok());
  REQUIRE(h.run_to_end());
  CHECK(h.sink.outcome->status == TurnStatus::kCompleted);
  CHECK(h.sink.outcome->steps == 1);
  CHECK(h.sink.text == "Hello there.");
  CHECK(h.sink.reasoning == "hmm");
  REQUIRE(h.sink.commits.size() == 1);
  const Message& answer = h.sink.commits[0].messages.at(0);
  CHECK(answer.role == Role::kAssistant);
  CHECK(answer.content == "Hello there.");
  CHECK(answer.reasoning_content == "hmm");
  CHECK(h.sink.outcome->token_ids.back() == *qwen3_tokenizer().token_to_id("<|im_end|>"));
  CHECK(h.generator.prompt_text(0).find("\"name\": \"add\"") != std::string::npos);  // tools rendered
}

TEST_CASE("a server tool call runs, its result is appended, and the next step reuses the whole sequence") {
  Harness h({call_text("add", R"({"a": 2, "b": 3})"), "The sum is 5."});
  REQUIRE(h.loop->start().ok());
  REQUIRE(h.run_to_end());
  CHECK(h.sink.outcome->status == TurnStatus::kCompleted);
  CHECK(h.sink.outcome->steps == 2);
  CHECK(h.sink.log ==
        std::vector<std::string>{"server call add {\"a\":2,\"b\":3}", "started add", "completed add ok"});
  const std::vector<Message> committed = h.sink.committed();
  REQUIRE(committed.size() == 3);
  CHECK(committed[0].tool_calls.at(0).name == "add");
  CHECK(committed[1].role == Role::kTool);
  CHECK(committed[1].content == "5");
  CHECK(committed[2].content == "The sum is 5.");
  CHECK(h.generator.prompt_text(1).find("<tool_response>\n5\n</tool_response>") != std::string::npos);
  // Step 2's prompt starts with everything step 1 saw and generated.
  const auto& usage = h.sink.outcome->step_usage;
  REQUIRE(usage.size() == 2);
  const std::size_t step1_sequence =
      h.generator.prompts[0].size() +
      qwen3_tokenizer().encode(call_text("add", R"({"a": 2, "b": 3})")).size() + 1;
  CHECK(usage[1].reused_tokens == static_cast<int>(step1_sequence));
  CHECK(usage[1].prompt_tokens == static_cast<int>(h.generator.prompts[1].size()));
  CHECK(h.sink.outcome->usage.prompt_tokens == usage[0].prompt_tokens + usage[1].prompt_tokens);
}

TEST_CASE("two calls in one step run in parallel and their results keep the call order") {
  auto arrived = std::make_shared<std::atomic<int>>(0);
  TurnLoopOptions options;
  options.tools = {meet_tool(arrived)};
  Harness h({call_text("meet", R"({"who": "ann"})") + "\n" + call_text("meet", R"({"who": "bob"})"), "Done."},
            std::move(options));
  REQUIRE(h.loop->start().ok());
  REQUIRE(h.run_to_end());
  CHECK(h.sink.outcome->status == TurnStatus::kCompleted);
  const std::vector<Message> committed = h.sink.committed();
  REQUIRE(committed.size() == 4);
  CHECK(committed[0].tool_calls.size() == 2);
  CHECK(committed[1].content == "ann met");
  CHECK(committed[2].content == "bob met");
}

TEST_CASE("a client call asks for action, the delivered output continues the loop") {
  Harness h({call_text("ask_user", R"({"question": "Which city?"})"), "Thanks."});
  REQUIRE(h.loop->start().ok());
  REQUIRE(h.executor.run_until([&] { return !h.sink.waiting.empty(); }));
  CHECK(h.sink.log ==
        std::vector<std::string>{"client call ask_user {\"question\":\"Which city?\"}", "requires_action 1"});
  CHECK(h.loop->submit_tool_output("call_unknown", "x", false).code() == StatusCode::kNotFound);
  REQUIRE(h.loop->submit_tool_output(h.sink.waiting[0], "Paris", false).ok());
  CHECK(h.loop->submit_tool_output(h.sink.waiting[0], "Paris again", false).code() == StatusCode::kNotFound);
  REQUIRE(h.run_to_end());
  CHECK(h.sink.outcome->status == TurnStatus::kCompleted);
  CHECK(h.sink.committed().at(1).content == "Paris");
  CHECK(h.generator.prompt_text(1).find("<tool_response>\nParis\n</tool_response>") != std::string::npos);
}

TEST_CASE("a missed client deadline resolves the call as an error result and the loop goes on") {
  Harness h({call_text("ask_user", R"({"question": "Which city?"})"), "I will guess."});
  REQUIRE(h.loop->start().ok());
  REQUIRE(h.executor.run_until([&] { return !h.sink.waiting.empty(); }));
  CHECK(h.loop->expire_tool_calls() == 1);
  REQUIRE(h.run_to_end());
  CHECK(h.sink.outcome->status == TurnStatus::kCompleted);
  CHECK(h.sink.committed().at(1).content.starts_with("Error: the client did not return"));
  CHECK(h.loop->expire_tool_calls() == 0);
}

TEST_CASE("max_steps ends a loop that keeps calling tools as incomplete, results committed") {
  TurnLoopOptions options;
  options.max_steps = 2;
  Harness h({call_text("add", R"({"a": 1, "b": 1})"), call_text("add", R"({"a": 2, "b": 2})"), "never"},
            std::move(options));
  REQUIRE(h.loop->start().ok());
  REQUIRE(h.run_to_end());
  CHECK(h.sink.outcome->status == TurnStatus::kIncomplete);
  CHECK(h.sink.outcome->steps == 2);
  CHECK(h.generator.prompts.size() == 2);
  CHECK(h.sink.committed().back().content == "4");
}

TEST_CASE("cancel mid-generation cancels the request and ends the response once") {
  Harness h({ScriptedGenerator::hanging("Partial ")});
  REQUIRE(h.loop->start().ok());
  REQUIRE(h.executor.run_until([&] { return h.sink.text == "Partial "; }));
  h.loop->cancel();
  CHECK(h.generator.cancelled);
  REQUIRE(h.sink.outcome.has_value());
  CHECK(h.sink.outcome->status == TurnStatus::kCancelled);
  h.executor.run_until([] { return false; }, 50ms);  // the cancelled event arrives late and is dropped
  CHECK(h.sink.commits.empty());
}

TEST_CASE("a malformed call is an error event; with retry the model sees the error once and answers") {
  Harness h({"Let me try. <tool_call>\n{not json}\n</tool_call>", "Sorry, the answer is 5."});
  REQUIRE(h.loop->start().ok());
  REQUIRE(h.run_to_end());
  CHECK(h.sink.outcome->status == TurnStatus::kCompleted);
  CHECK(h.sink.outcome->steps == 2);
  CHECK(h.sink.log == std::vector<std::string>{"call_error InvalidArgument"});
  const std::vector<Message> committed = h.sink.committed();
  REQUIRE(committed.size() == 3);
  CHECK(committed[0].tool_calls.empty());
  CHECK(committed[1].role == Role::kTool);
  CHECK(committed[1].content.starts_with("Error: malformed tool call"));
  CHECK(h.sink.text.find("{not json}") == std::string::npos);  // never passed off as content
}

TEST_CASE("a malformed call without retry fails the response; a second malformed call is not retried") {
  SUBCASE("retry off") {
    TurnLoopOptions options;
    options.retry_malformed = false;
    Harness h({"<tool_call>\n{\"name\": \"add\"\n</tool_call>"}, std::move(options));
    REQUIRE(h.loop->start().ok());
    REQUIRE(h.run_to_end());
    CHECK(h.sink.outcome->status == TurnStatus::kFailed);
    CHECK(h.sink.outcome->steps == 1);
  }
  SUBCASE("retry used up") {
    Harness h({"<tool_call>\n{bad}\n</tool_call>", "<tool_call>\n{worse}\n</tool_call>"});
    REQUIRE(h.loop->start().ok());
    REQUIRE(h.run_to_end());
    CHECK(h.sink.outcome->status == TurnStatus::kFailed);
    CHECK(h.sink.outcome->steps == 2);
  }
}

TEST_CASE("a tool call inside <think> is a draft and is not executed") {
  Harness h({"<think>\nmaybe " + call_text("add", R"({"a": 1, "b": 2})") + "\n</think>\n\nNo tools needed."});
  REQUIRE(h.loop->start().ok());
  REQUIRE(h.run_to_end());
  CHECK(h.sink.outcome->status == TurnStatus::kCompleted);
  CHECK(h.sink.log.empty());
  CHECK(h.runner.runs == 0);
  CHECK(h.sink.reasoning.find("<tool_call>") != std::string::npos);
  CHECK(h.sink.text == "No tools needed.");
}

TEST_CASE("a denied approval blocks the response before the tool runs, and the step is not committed") {
  TurnLoopOptions options;
  std::vector<std::string> asked;
  options.approve = [&asked](const TurnToolCall& call, std::function<void(Status)> decide) {
    asked.push_back(call.name);
    std::thread([decide = std::move(decide)] {
      decide(Status::failed_precondition("flagged: violence"));
    }).detach();
  };
  Harness h({call_text("add", R"({"a": 2, "b": 3})"), "never"}, std::move(options));
  REQUIRE(h.loop->start().ok());
  REQUIRE(h.run_to_end());
  CHECK(h.sink.outcome->status == TurnStatus::kBlocked);
  CHECK(h.sink.outcome->error.message() == "flagged: violence");
  CHECK(asked == std::vector<std::string>{"add"});
  CHECK(h.runner.runs == 0);
  CHECK(h.sink.calls.empty());
  CHECK(h.sink.commits.empty());
}

TEST_CASE("an approved call runs after the approval arrives") {
  TurnLoopOptions options;
  options.approve = [](const TurnToolCall&, std::function<void(Status)> decide) {
    std::thread([decide = std::move(decide)] { decide(Status::ok_status()); }).detach();
  };
  Harness h({call_text("add", R"({"a": 2, "b": 3})"), "5."}, std::move(options));
  REQUIRE(h.loop->start().ok());
  REQUIRE(h.run_to_end());
  CHECK(h.sink.outcome->status == TurnStatus::kCompleted);
  CHECK(h.runner.runs == 1);
}

TEST_CASE("unknown tools and client arguments that fail the schema go back to the model as error results") {
  Harness h({call_text("nope", "{}") + "\n" + call_text("ask_user", R"({"question": 7})"), "Ok."});
  REQUIRE(h.loop->start().ok());
  REQUIRE(h.run_to_end());
  CHECK(h.sink.outcome->status == TurnStatus::kCompleted);
  CHECK(h.sink.log == std::vector<std::string>{"call_error NotFound", "call_error InvalidArgument"});
  CHECK(h.sink.waiting.empty());  // nothing was sent to the client
  const std::vector<Message> committed = h.sink.committed();
  REQUIRE(committed.size() == 4);
  CHECK(committed[1].content.starts_with("Error: there is no tool"));
  CHECK(committed[2].content.starts_with("Error: "));
}

TEST_CASE("tool_choice none renders no tools and refuses a call the model makes anyway") {
  TurnLoopOptions options;
  options.tool_choice.mode = ToolChoiceMode::kNone;
  options.retry_malformed = false;
  Harness h({call_text("add", R"({"a": 2, "b": 3})")}, std::move(options));
  REQUIRE(h.loop->start().ok());
  REQUIRE(h.run_to_end());
  CHECK(h.generator.prompt_text(0).find("# Tools") == std::string::npos);
  CHECK(h.sink.outcome->status == TurnStatus::kFailed);
  CHECK(h.sink.log == std::vector<std::string>{"call_error FailedPrecondition"});
  CHECK(h.runner.runs == 0);
}

class AllowAll final : public engine::TokenConstraint {
 public:
  void fill_allowed(std::span<uint32_t> mask) override { std::fill(mask.begin(), mask.end(), ~0u); }
  Status accept(int32_t) override { return Status::ok_status(); }
  bool is_complete() const override { return false; }
};

TEST_CASE("tool_choice required/named needs a constraint factory and constrains only the first step") {
  SUBCASE("no factory: refused up front") {
    TurnLoopOptions options;
    options.tool_choice.mode = ToolChoiceMode::kRequired;
    Harness h({"x"}, std::move(options));
    CHECK(h.loop->start().code() == StatusCode::kFailedPrecondition);
    CHECK(h.generator.prompts.empty());
  }
  SUBCASE("unknown name") {
    TurnLoopOptions options;
    options.tool_choice = {ToolChoiceMode::kNamed, "missing"};
    Harness h({"x"}, std::move(options));
    CHECK(h.loop->start().code() == StatusCode::kInvalidArgument);
  }
  SUBCASE("named with a factory") {
    TurnLoopOptions options;
    options.tool_choice = {ToolChoiceMode::kNamed, "add"};
    std::vector<std::string> allowed_names;
    options.constraint_factory = [&](std::span<const tools::ToolSpec* const> allowed)
        -> Result<std::shared_ptr<engine::TokenConstraint>> {
      for (const tools::ToolSpec* spec : allowed) allowed_names.push_back(spec->name);
      return std::shared_ptr<engine::TokenConstraint>(std::make_shared<AllowAll>());
    };
    Harness h({call_text("add", R"({"a": 2, "b": 3})"), "5."}, std::move(options));
    REQUIRE(h.loop->start().ok());
    REQUIRE(h.run_to_end());
    CHECK(h.sink.outcome->status == TurnStatus::kCompleted);
    CHECK(allowed_names == std::vector<std::string>{"add"});
    CHECK(h.generator.constraints == std::vector<bool>{true, false});
  }
}

TEST_CASE("through the real engine: a response ends, and the next response reuses its ids and KV") {
  const std::unique_ptr<engine::Engine> tiny = testing::open_tiny_engine();
  EngineTurnGenerator generator(*tiny);
  ManualExecutor executor;
  TurnLoopOptions options;
  options.tools = {add_tool()};
  options.sampling = engine::testing::greedy(6);
  options.sampling.ignore_eos = false;

  std::vector<Message> messages = question("Please add two numbers for me, then explain how you did it.");
  RecordingSink first;
  auto loop = TurnLoop::create(generator, first, executor.executor(), options, messages);
  REQUIRE(loop->start().ok());
  REQUIRE(executor.run_until([&] { return first.outcome.has_value(); }));
  const TurnOutcome& one = *first.outcome;
  // The random model's gibberish: an answer cut at max_tokens, or a refused call; never a crash or a hang.
  CHECK((one.status == TurnStatus::kIncomplete || one.status == TurnStatus::kCompleted ||
         one.status == TurnStatus::kFailed));
  REQUIRE(one.step_usage.size() >= 1);
  CHECK(one.usage.prompt_tokens >= one.step_usage[0].prompt_tokens);
  CHECK(one.step_usage[0].completion_tokens >= 1);
  CHECK(static_cast<int>(one.token_ids.size()) >= one.step_usage.back().prompt_tokens);

  for (const Message& m : first.committed()) messages.push_back(m);
  messages.push_back({Role::kUser, "Thanks. Once more?", std::nullopt, {}});
  RecordingSink second;
  auto again = TurnLoop::create(generator, second, executor.executor(), options, messages, one.token_ids);
  REQUIRE(again->start().ok());
  REQUIRE(executor.run_until([&] { return second.outcome.has_value(); }));
  const StepUsage& next = second.outcome->step_usage.at(0);
  CHECK(next.reused_tokens > 0);
  CHECK(next.cached_tokens >= 16);  // at least the first full block of the shared prefix
  CHECK(next.recomputed_tokens == next.prompt_tokens - next.cached_tokens);
  CHECK(next.recomputed_tokens < next.prompt_tokens);
}

}  // namespace
}  // namespace agentserve::agent
