#include "agent/tool_call_parser.h"

#include <doctest/doctest.h>

#include <random>

#include "agent/chat_template.h"

namespace agentserve::agent {
namespace {

// One line per event, with consecutive text deltas of one kind joined, so streams cut differently compare.
std::vector<std::string> summarize(const std::vector<TurnEvent>& events) {
  std::vector<std::string> lines;
  TurnEventKind last_text_kind = TurnEventKind::kToolCall;
  for (const TurnEvent& event : events) {
    switch (event.kind) {
      case TurnEventKind::kReasoning:
      case TurnEventKind::kContent: {
        const std::string prefix = event.kind == TurnEventKind::kReasoning ? "R:" : "C:";
        if (!lines.empty() && last_text_kind == event.kind) {
          lines.back() += event.text;
        } else {
          lines.push_back(prefix + event.text);
        }
        last_text_kind = event.kind;
        continue;
      }
      case TurnEventKind::kToolCall:
        lines.push_back("T:" + event.call.name + ":" + event.call.arguments.dump());
        break;
      case TurnEventKind::kError:
        lines.push_back("E:" + event.text + "|" + event.raw);
        break;
    }
    last_text_kind = TurnEventKind::kToolCall;
  }
  return lines;
}

std::vector<TurnEvent> parse_pieces(const std::vector<std::string_view>& pieces,
                                    ToolCallParserOptions options = {}) {
  ToolCallParser parser(options);
  std::vector<TurnEvent> events;
  for (std::string_view piece : pieces) parser.feed(piece, events);
  parser.finish(events);
  return events;
}

std::vector<std::string> parse_whole(std::string_view text, ToolCallParserOptions options = {}) {
  return summarize(parse_pieces({text}, options));
}

bool valid_utf8(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const std::size_t n = c < 0x80             ? 1
                          : (c & 0xE0) == 0xC0 ? 2
                          : (c & 0xF0) == 0xE0 ? 3
                          : (c & 0xF8) == 0xF0 ? 4
                                               : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (std::size_t k = 1; k < n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    i += n;
  }
  return true;
}

// Cuts `text` at every byte position (and every pair of positions for short texts) and checks the events
// equal the one-piece parse, and that every text delta holds whole UTF-8 characters.
void check_every_split(std::string_view text, const std::vector<std::string>& want,
                       ToolCallParserOptions options = {}) {
  REQUIRE(parse_whole(text, options) == want);
  for (std::size_t i = 0; i <= text.size(); ++i) {
    const auto events = parse_pieces({text.substr(0, i), text.substr(i)}, options);
    CAPTURE(i);
    REQUIRE(summarize(events) == want);
    for (const TurnEvent& event : events) REQUIRE(valid_utf8(event.text));
  }
  if (text.size() <= 160) {
    for (std::size_t i = 0; i <= text.size(); ++i)
      for (std::size_t j = i; j <= text.size(); ++j) {
        CAPTURE(i);
        CAPTURE(j);
        REQUIRE(summarize(parse_pieces({text.substr(0, i), text.substr(i, j - i), text.substr(j)},
                                       options)) == want);
      }
  }
  std::vector<std::string_view> bytes;
  for (std::size_t i = 0; i < text.size(); ++i) bytes.push_back(text.substr(i, 1));
  const auto byte_events = parse_pieces(bytes, options);
  REQUIRE(summarize(byte_events) == want);
  for (const TurnEvent& event : byte_events) REQUIRE(valid_utf8(event.text));
}

TEST_CASE("reasoning, content and a call are separated, template newlines dropped, at every split") {
  check_every_split(
      "<think>\nI should look up the weather.\n</think>\n\nLet me check.\n<tool_call>\n"
      "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
      {"R:I should look up the weather.", "C:Let me check.", R"(T:get_weather:{"city":"Paris"})"});
}

TEST_CASE("several calls with text between them come out in order") {
  check_every_split(
      "A<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>\nthen\n\n<tool_call>{\"name\":\"g\","
      "\"arguments\":{\"n\":[1,{\"x\":2}]}}</tool_call>\n<tool_call>\n{\"name\": \"h\", \"arguments\": {}}\n"
      "</tool_call>\ndone",
      {"C:A", "T:f:{}", "C:then", R"(T:g:{"n":[1,{"x":2}]})", "T:h:{}", "C:done"});
}

TEST_CASE("a closing tag and braces inside JSON strings do not end the call") {
  check_every_split(
      "<tool_call>\n{\"name\": \"run\", \"arguments\": {\"code\": \"s = \\\"</tool_call>\\\" + '{' \\\\\", "
      "\"deep\": {\"a\": {\"b\": {\"c\": \"}}}\"}}}}}\n</tool_call>",
      {R"(T:run:{"code":"s = \"</tool_call>\" + '{' \\","deep":{"a":{"b":{"c":"}}}"}}}})"});
}

TEST_CASE("a tool call inside think is a draft in the reasoning, not a call") {
  check_every_split(
      "<think>\nMaybe <tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call> is "
      "right.\n</think>\n\nOK",
      {"R:Maybe <tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call> is right.", "C:OK"});
}

TEST_CASE("an unterminated call at the end of the turn is an error, never content") {
  check_every_split("Sure.\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1",
                    {"C:Sure.",
                     "E:tool call not terminated: the turn ended before </tool_call>|\n{\"name\": \"f\", "
                     "\"arguments\": {\"a\": 1"});
  // An unclosed JSON string swallows the closing tag and everything after it: still one error.
  check_every_split("<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": \"x}}</tool_call>tail",
                    {"E:tool call not terminated: the turn ended before </tool_call>|{\"name\": \"f\", "
                     "\"arguments\": {\"a\": \"x}}</tool_call>tail"});
}

TEST_CASE("malformed calls are errors carrying the raw text") {
  CHECK(parse_whole("<tool_call>\nget_weather(city='Paris')\n</tool_call>") ==
        std::vector<std::string>{"E:tool call is not valid JSON|\nget_weather(city='Paris')\n"});
  CHECK(parse_whole("<tool_call>{\"arguments\": {}}</tool_call>") ==
        std::vector<std::string>{"E:tool call has no function name|{\"arguments\": {}}"});
  CHECK(parse_whole("<tool_call>{\"name\": \"\", \"arguments\": {}}</tool_call>") ==
        std::vector<std::string>{"E:tool call has no function name|{\"name\": \"\", \"arguments\": {}}"});
  CHECK(parse_whole("<tool_call>[1, 2]</tool_call>") ==
        std::vector<std::string>{"E:tool call must be a JSON object with \"name\" and \"arguments\"|[1, 2]"});
  CHECK(parse_whole("<tool_call>{\"name\": \"f\", \"arguments\": [1]}</tool_call>") ==
        std::vector<std::string>{
            "E:arguments of tool call \"f\" must be a JSON object|{\"name\": \"f\", \"arguments\": [1]}"});
  CHECK(parse_whole("<tool_call>{\"name\": \"f\", \"arguments\": {}} extra</tool_call>ok") ==
        std::vector<std::string>{"E:tool call is not valid JSON|{\"name\": \"f\", \"arguments\": {}} extra",
                                 "C:ok"});
  // Arguments double-encoded as a JSON string, or left out, are still a call.
  CHECK(parse_whole("<tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"a\\\": 1}\"}</tool_call>") ==
        std::vector<std::string>{R"(T:f:{"a":1})"});
  CHECK(parse_whole("<tool_call>{\"name\": \"f\"}</tool_call>") == std::vector<std::string>{"T:f:{}"});
}

TEST_CASE("text that only looks like the start of a tag is content") {
  check_every_split("a < b, <b>bold</b>, <tool>, <thinking>, </think> and <tool_call without close",
                    {"C:a < b, <b>bold</b>, <tool>, <thinking>, </think> and <tool_call without close"});
  check_every_split("ends with a partial tag <tool_ca", {"C:ends with a partial tag <tool_ca"});
}

TEST_CASE("content is released as soon as it cannot start a tag") {
  ToolCallParser parser;
  std::vector<TurnEvent> events;
  parser.feed("Hello <to", events);
  REQUIRE(summarize(events) == std::vector<std::string>{"C:Hello "});
  events.clear();
  parser.feed("p", events);
  CHECK(summarize(events) == std::vector<std::string>{"C:<top"});
  events.clear();
  parser.feed(" line\n", events);  // a newline waits: it may be the separator before a <tool_call>
  CHECK(summarize(events) == std::vector<std::string>{"C: line"});
  events.clear();
  parser.feed("next", events);
  CHECK(summarize(events) == std::vector<std::string>{"C:\nnext"});
  events.clear();
  parser.feed("<thi", events);
  CHECK(events.empty());
  parser.feed("nk>x", events);
  CHECK(summarize(events) == std::vector<std::string>{"R:x"});
}

TEST_CASE("unicode is never split inside a character") {
  check_every_split(
      "<think>\nДумаю… 🤔\n</think>\n\n答案是 😀 — “fin”<tool_call>\n{\"name\": "
      "\"note\", "
      "\"arguments\": {\"text\": \"Zürich 🌍\"}}\n</tool_call>",
      {"R:Думаю… 🤔", "C:答案是 😀 — “fin”", "T:note:{\"text\":\"Zürich 🌍\"}"});
  ToolCallParser parser;
  std::vector<TurnEvent> events;
  parser.feed("ok \xF0\x9F", events);
  REQUIRE(summarize(events) == std::vector<std::string>{"C:ok "});
  parser.feed("\x98\x80", events);
  CHECK(summarize(events) == std::vector<std::string>{"C:ok 😀"});
}

TEST_CASE("a turn that starts inside the reasoning, and a reasoning cut off by the end of the turn") {
  ToolCallParserOptions in_think{.starts_in_reasoning = true};
  check_every_split("plan\n</think>\n\nanswer", {"R:plan", "C:answer"}, in_think);
  check_every_split("<think>\nstill thinking when max_tokens hit", {"R:still thinking when max_tokens hit"});
}

TEST_CASE("newlines inside text are kept, trailing content newlines are released at the end") {
  check_every_split("<think>\n\na\n\nb\n\n</think>\n\nx\n\ny\n\n", {"R:a\n\nb", "C:x\n\ny\n\n"});
}

TEST_CASE("finish resets the parser for the next turn") {
  ToolCallParser parser;
  std::vector<TurnEvent> events;
  parser.feed("<tool_call>{\"name\": \"f\"", events);
  parser.finish(events);
  REQUIRE(events.size() == 1);
  CHECK(events[0].kind == TurnEventKind::kError);
  events.clear();
  parser.feed("plain", events);
  parser.finish(events);
  CHECK(summarize(events) == std::vector<std::string>{"C:plain"});
}

// The parser inverts the template: a rendered assistant turn parses back into a message that renders the
// same, for random mixes of reasoning, content and calls cut into random pieces.
TEST_CASE("random assistant turns round-trip through render_chat and the parser") {
  std::mt19937 rng(1234);
  const std::vector<std::string> texts = {"",         "Hi.", "two\nlines",    "a < b",
                                          "<b>x</b>", "ü 😀", "{\"json\": 1}", "ends with </tool_call> text",
                                          "x\n\ny"};
  auto pick = [&](const std::vector<std::string>& from) { return from[rng() % from.size()]; };
  for (int round = 0; round < 300; ++round) {
    Message assistant{Role::kAssistant, pick(texts), pick(texts), {}};
    if (assistant.reasoning_content->find("</tool_call>") != std::string::npos)
      assistant.reasoning_content = "r";
    const int n_calls = static_cast<int>(rng() % 3);
    for (int c = 0; c < n_calls; ++c) {
      Json arguments = Json::object();
      arguments["q"] = pick(texts);
      if (rng() % 2) arguments["n"] = Json::array({1, 2.5, Json::object({{"deep", "}"}})});
      assistant.tool_calls.push_back({"tool_" + std::to_string(c), arguments});
    }
    const std::vector<Message> conversation = {Message{Role::kUser, "q", std::nullopt, {}}, assistant};
    const auto rendered = render_chat(conversation, nullptr, {.add_generation_prompt = false});
    REQUIRE(rendered.ok());
    const std::string_view prompt = *rendered;
    const std::string_view header = "<|im_start|>assistant\n";
    const std::size_t start = prompt.find(header) + header.size();
    const std::string_view generated =
        prompt.substr(start, prompt.size() - start - std::string_view("<|im_end|>\n").size());
    CAPTURE(std::string(generated));

    std::vector<std::string_view> pieces;
    for (std::size_t at = 0; at < generated.size();) {
      const std::size_t n = std::min<std::size_t>(1 + rng() % 7, generated.size() - at);
      pieces.push_back(generated.substr(at, n));
      at += n;
    }
    Message parsed{Role::kAssistant, "", std::string(), {}};
    for (const TurnEvent& event : parse_pieces(pieces)) {
      REQUIRE(event.kind != TurnEventKind::kError);
      if (event.kind == TurnEventKind::kReasoning) *parsed.reasoning_content += event.text;
      if (event.kind == TurnEventKind::kContent) parsed.content += event.text;
      if (event.kind == TurnEventKind::kToolCall) parsed.tool_calls.push_back(event.call);
    }
    REQUIRE(parsed.tool_calls.size() == assistant.tool_calls.size());
    const std::vector<Message> again = {conversation[0], parsed};
    const auto rerendered = render_chat(again, nullptr, {.add_generation_prompt = false});
    REQUIRE(rerendered.ok());
    CHECK(*rerendered == *rendered);
  }
}

}  // namespace
}  // namespace agentserve::agent
