#include "agent/chat_template.h"

#include <doctest/doctest.h>

#include <unistd.h>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "tests/agent/reference_conversations.h"

namespace agentserve::agent {
namespace {

namespace fs = std::filesystem;

using testing::read_json;
using testing::reference_conversations;
using testing::ReferenceConversation;

std::string render_json(const Json& messages, const Json& tools = nullptr, ChatTemplateOptions options = {}) {
  auto parsed = parse_messages(messages);
  REQUIRE_MESSAGE(parsed.ok(), parsed.status().to_string());
  auto prompt = render_chat(*parsed, tools, options);
  REQUIRE_MESSAGE(prompt.ok(), prompt.status().to_string());
  return *prompt;
}

// The first byte where two renderings part, with some context, so a golden mismatch is readable.
std::string first_difference(const std::string& want, const std::string& got) {
  std::size_t at = 0;
  while (at < want.size() && at < got.size() && want[at] == got[at]) ++at;
  const std::size_t from = at > 40 ? at - 40 : 0;
  return "at byte " + std::to_string(at) + "\n  want: " + Json(want.substr(from, 100)).dump() +
         "\n  got:  " + Json(got.substr(from, 100)).dump();
}

TEST_CASE("every reference conversation renders byte for byte like the Jinja template") {
  const std::vector<ReferenceConversation> conversations = reference_conversations();
  const Json golden = read_json(fs::path(AGENTSERVE_SOURCE_DIR) / "tests/agent/data/chat_golden.json");
  REQUIRE(conversations.size() >= 30);
  REQUIRE(golden.size() == conversations.size());
  for (std::size_t i = 0; i < conversations.size(); ++i) {
    const ReferenceConversation& c = conversations[i];
    CAPTURE(c.name);
    REQUIRE(golden[i].at("name").get<std::string>() == c.name);
    auto prompt = render_chat(c.messages, c.tools, c.options);
    REQUIRE_MESSAGE(prompt.ok(), prompt.status().to_string());
    const std::string want = golden[i].at("prompt").get<std::string>();
    CHECK_MESSAGE(*prompt == want, c.name << " differs " << first_difference(want, *prompt));
  }
}

TEST_CASE("python_json_dumps matches json.dumps for scalars, escapes and key order") {
  CHECK(python_json_dumps(Json::parse(R"({"b": 1, "a": [true, false, null], "c": {}})")) ==
        R"({"b": 1, "a": [true, false, null], "c": {}})");
  CHECK(python_json_dumps(Json("q\"b\\n\n\t\r\b\f\x01\x1f\x7f")) == R"("q\"b\\n\n\t\r\b\f\u0001\u001f)"
                                                                    "\x7f\"");
  CHECK(python_json_dumps(Json("Zürich 😀")) == "\"Zürich 😀\"");
  CHECK(python_json_dumps(Json(-9223372036854775807LL - 1)) == "-9223372036854775808");
  CHECK(python_json_dumps(Json(18446744073709551615ULL)) == "18446744073709551615");
}

TEST_CASE("python_json_dumps writes floats as Python's repr") {
  const std::pair<double, const char*> cases[] = {
      {0.0, "0.0"},
      {-0.0, "-0.0"},
      {1.0, "1.0"},
      {0.1, "0.1"},
      {1e-4, "0.0001"},
      {1e-5, "1e-05"},
      {1.5e-5, "1.5e-05"},
      {1e15, "1000000000000000.0"},
      {1e16, "1e+16"},
      {1.25e16, "1.25e+16"},
      {123456.789, "123456.789"},
      {2.5e-300, "2.5e-300"},
      {1.5e300, "1.5e+300"},
      {1.0 / 3.0, "0.3333333333333333"},
      {-2.0, "-2.0"},
      {5e-324, "5e-324"},
      {1.7976931348623157e308, "1.7976931348623157e+308"},
      {9007199254740993.0, "9007199254740992.0"},
      {123.0, "123.0"},
  };
  for (const auto& [value, want] : cases) {
    CAPTURE(want);
    CHECK(python_json_dumps(Json(value)) == want);
  }
}

TEST_CASE("tool call arguments given as a string are rendered verbatim, objects in json.dumps form") {
  const Json messages = Json::parse(R"([
    {"role": "user", "content": "q"},
    {"role": "assistant", "content": null, "tool_calls": [
      {"type": "function", "function": {"name": "f", "arguments": "{\"x\":1,  \"y\" :2}"}},
      {"type": "function", "function": {"name": "g", "arguments": {"y": 2.0, "x": "é"}}}]}])");
  const std::string prompt = render_json(messages, nullptr, {.add_generation_prompt = false});
  CHECK(prompt.find("<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\":1,  \"y\" :2}}\n</tool_call>\n"
                    "<tool_call>\n{\"name\": \"g\", \"arguments\": {\"y\": 2.0, \"x\": \"é\"}}\n</tool_call>"
                    "<|im_end|>\n") != std::string::npos);
}

TEST_CASE("disabling thinking appends an empty think block after the generation prompt") {
  const Json messages = Json::parse(R"([{"role": "user", "content": "hi"}])");
  CHECK(render_json(messages, nullptr, {.enable_thinking = false}) ==
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
  CHECK(render_json(messages, nullptr, {.add_generation_prompt = false, .enable_thinking = false}) ==
        "<|im_start|>user\nhi<|im_end|>\n");
}

TEST_CASE("bad conversations are errors naming the message, not crashes") {
  const std::pair<const char*, const char*> cases[] = {
      {R"({"role": "user"})", "must be a JSON array"},
      {R"([{"role": "robot", "content": "x"}])", "messages[0].role \"robot\""},
      {R"([{"content": "x"}])", "messages[0].role"},
      {R"([{"role": "user", "content": "x"}, {"role": "user", "content": 5}])", "messages[1].content"},
      {R"([{"role": "user", "content": [{"type": "text", "text": "x"}]}])", "messages[0].content"},
      {R"([{"role": "tool"}])", "messages[0].content"},
      {R"([{"role": "assistant", "content": "", "reasoning_content": 1}])", "reasoning_content"},
      {R"([{"role": "assistant", "content": "", "tool_calls": {}}])", "tool_calls must be an array"},
      {R"([{"role": "assistant", "content": "", "tool_calls": [{"function": {"arguments": {}}}]}])",
       "tool_calls[0] needs a function name"},
      {R"([{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f"}}]}])",
       "needs arguments"},
      {R"([{"role": "assistant", "content": "", "tool_calls": [7]}])", "tool_calls[0] must be an object"},
  };
  for (const auto& [text, want] : cases) {
    CAPTURE(text);
    const auto parsed = parse_messages(Json::parse(text));
    REQUIRE_FALSE(parsed.ok());
    CHECK(parsed.status().message().find(want) != std::string::npos);
  }
  CHECK_FALSE(render_chat({}, nullptr, {}).ok());
  const std::vector<Message> one = {Message{Role::kUser, "x", std::nullopt, {}}};
  const auto bad_tools = render_chat(one, Json::object({{"name", "f"}}), {});
  REQUIRE_FALSE(bad_tools.ok());
  CHECK(bad_tools.status().message().find("tools must be a JSON array") != std::string::npos);
}

TEST_CASE("Qwen3's tokenizer_config.json carries the template implemented here") {
  CHECK(check_model_chat_template(AGENTSERVE_TOKENIZER_DIR).ok());
  const fs::path dir = fs::temp_directory_path() / ("chat_template_test_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / "tokenizer_config.json") << R"({"chat_template": "{{ messages }}"})";
  CHECK(check_model_chat_template(dir).code() == StatusCode::kFailedPrecondition);
  std::ofstream(dir / "tokenizer_config.json") << "{not json";
  CHECK(check_model_chat_template(dir).code() == StatusCode::kCorruption);
  fs::remove_all(dir);
  CHECK(check_model_chat_template(dir).code() == StatusCode::kNotFound);
}

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout, or stdout + stderr when asked
};

CommandResult run(const std::string& args, bool with_stderr) {
  const std::string command =
      std::string(AGENTSERVE_BINARY) + " " + args + (with_stderr ? " 2>&1" : " 2>/dev/null");
  CommandResult result;
  FILE* pipe = ::popen(command.c_str(), "r");
  REQUIRE(pipe != nullptr);
  char buffer[4096];
  for (std::size_t n; (n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0;) result.output.append(buffer, n);
  const int status = ::pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

TEST_CASE("agentserve render prints the exact prompt and rejects bad input with exit code 2") {
  const fs::path root = AGENTSERVE_SOURCE_DIR;
  const Json conversations = read_json(root / "tests/reference/chat_conversations.json");
  const Json golden = read_json(root / "tests/agent/data/chat_golden.json");
  const fs::path dir = fs::temp_directory_path() / ("render_cli_test_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string model = std::string("--model ") + AGENTSERVE_TOKENIZER_DIR;
  for (const char* name : {"nested_tool_schemas_and_flat_tool", "thinking_disabled", "no_generation_prompt",
                           "non_ascii_everywhere"}) {
    CAPTURE(name);
    std::size_t i = 0;
    while (conversations[i].at("name") != name) ++i;
    const Json& conversation = conversations[i];
    std::ofstream(dir / "messages.json") << conversation.at("messages").dump();
    std::ofstream(dir / "tools.json") << conversation.value("tools", Json::array()).dump();
    std::string args = "render " + model + " --messages " + (dir / "messages.json").string() + " --tools " +
                       (dir / "tools.json").string();
    if (!conversation.value("add_generation_prompt", false)) args += " --no-generation-prompt";
    if (!conversation.value("enable_thinking", true)) args += " --enable-thinking false";
    const CommandResult result = run(args, /*with_stderr=*/false);
    CHECK(result.exit_code == 0);
    CHECK(result.output == golden[i].at("prompt").get<std::string>());
  }
  // A chat-completions style body carries its tools along.
  std::ofstream(dir / "request.json")
      << R"({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "name": "t"}]})";
  const CommandResult request =
      run("render " + model + " --messages " + (dir / "request.json").string(), false);
  CHECK(request.exit_code == 0);
  CHECK(request.output.find("<tools>\n{\"type\": \"function\", \"name\": \"t\"}\n</tools>") !=
        std::string::npos);

  const std::pair<const char*, const char*> bad[] = {
      {"[{\"role\": \"user\", \"content\": ", "is not valid JSON"},
      {R"([{"role": "robot", "content": "x"}])",
       "role \"robot\" is not one of system, user, assistant, tool"},
      {R"([])", "the conversation has no messages"},
      {R"({"prompt": "x"})", "want a JSON array of messages"},
  };
  for (const auto& [text, want] : bad) {
    CAPTURE(text);
    std::ofstream(dir / "bad.json") << text;
    const CommandResult result = run("render " + model + " --messages " + (dir / "bad.json").string(), true);
    CHECK(result.exit_code == 2);
    CHECK(result.output.find(want) != std::string::npos);
  }
  const CommandResult missing =
      run("render --model " + dir.string() + " --messages " + (dir / "bad.json").string(), true);
  CHECK(missing.exit_code == 1);
  CHECK(missing.output.find("tokenizer_config.json") != std::string::npos);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace agentserve::agent
