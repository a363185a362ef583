// The protocol's parsing and validation, without sockets: every bad input becomes an error naming the field.
#include "server/protocol.h"

#include <doctest/doctest.h>

#include <random>
#include <set>

using agentserve::server::ClientEvent;
using agentserve::server::ClientEventType;
using agentserve::server::ParseResult;
using agentserve::server::ProtocolError;
using agentserve::server::ServerOptions;
using nlohmann::json;
namespace server = agentserve::server;
namespace engine = agentserve::engine;

namespace {

constexpr int kVocab = 151936;

ParseResult parse(const std::string& text, const ServerOptions& options = {}) {
  return server::parse_client_event(text, options, kVocab);
}

ClientEvent parse_ok(const std::string& text) {
  ParseResult r = parse(text);
  if (auto* e = std::get_if<ProtocolError>(&r))
    FAIL_CHECK("unexpected error " << e->code << ": " << e->message);
  REQUIRE(std::holds_alternative<ClientEvent>(r));
  return std::get<ClientEvent>(r);
}

ProtocolError parse_error(const std::string& text, const ServerOptions& options = {}) {
  ParseResult r = parse(text, options);
  REQUIRE_MESSAGE(std::holds_alternative<ProtocolError>(r), "accepted: " << text);
  return std::get<ProtocolError>(r);
}

}  // namespace

TEST_CASE("session.create reads agent_id, instructions and every sampling field") {
  const ClientEvent e = parse_ok(R"({"type":"session.create","event_id":"c1","session":{"agent_id":"a1",
      "instructions":"be brief","sampling":{"temperature":0,"top_p":0.9,"top_k":40,"max_tokens":8,"seed":7,
      "stop":["\n\n","END"]}}})");
  CHECK(e.type == ClientEventType::kSessionCreate);
  CHECK(e.event_id == "c1");
  CHECK(e.session.agent_id == "a1");
  CHECK(e.session.instructions == "be brief");
  CHECK(e.session.sampling.temperature == 0.0);
  CHECK(e.session.sampling.top_p == doctest::Approx(0.9));
  CHECK(e.session.sampling.top_k == 40);
  CHECK(e.session.sampling.max_tokens == 8);
  REQUIRE(e.session.sampling.seed.has_value());
  CHECK(*e.session.sampling.seed == 7);
  CHECK(e.session.sampling.stop == std::vector<std::string>{"\n\n", "END"});
}

TEST_CASE("session.create without sampling gets the server's default max_tokens") {
  ServerOptions options;
  options.default_max_tokens = 77;
  ParseResult r = server::parse_client_event(R"({"type":"session.create"})", options, kVocab);
  REQUIRE(std::holds_alternative<ClientEvent>(r));
  CHECK(std::get<ClientEvent>(r).session.sampling.max_tokens == 77);
}

TEST_CASE("invalid JSON and non-object messages are invalid_json errors") {
  for (const char* text : {"{", "", "nonsense", "[1,2]", "\"session.create\"", "42", "{\"type\":}"}) {
    INFO(text);
    CHECK(parse_error(text).code == "invalid_json");
  }
}

TEST_CASE("type is required, must be a string, and must be known; errors echo the client's event_id") {
  const ProtocolError missing = parse_error(R"({"event_id":"e9"})");
  CHECK(missing.code == "missing_field");
  CHECK(missing.param == "type");
  CHECK(missing.event_id == "e9");
  const ProtocolError wrong = parse_error(R"({"type":5})");
  CHECK(wrong.code == "invalid_type");
  CHECK(wrong.param == "type");
  const ProtocolError unknown = parse_error(R"({"type":"session.explode","event_id":"x"})");
  CHECK(unknown.code == "unknown_event");
  CHECK(unknown.event_id == "x");
  CHECK(unknown.type == "invalid_request_error");
}

TEST_CASE("conversation.item.create needs a message with a known role and string content") {
  const ClientEvent ok = parse_ok(R"({"type":"conversation.item.create","session_id":"s_1",
      "item":{"type":"message","role":"user","content":"Hi"}})");
  CHECK(ok.type == ClientEventType::kConversationItemCreate);
  CHECK(ok.session_id == "s_1");
  CHECK(ok.item.role == "user");
  CHECK(ok.item.content == "Hi");

  struct Case {
    const char* text;
    const char* code;
    const char* param;
  };
  const Case cases[] = {
      {R"({"type":"conversation.item.create"})", "missing_field", "item"},
      {R"({"type":"conversation.item.create","item":"Hi"})", "invalid_type", "item"},
      {R"({"type":"conversation.item.create","item":{"content":"Hi"}})", "missing_field", "item.role"},
      {R"({"type":"conversation.item.create","item":{"role":"user"}})", "missing_field", "item.content"},
      {R"({"type":"conversation.item.create","item":{"role":"user","content":3}})", "invalid_type",
       "item.content"},
      {R"({"type":"conversation.item.create","item":{"role":"root","content":"x"}})", "invalid_value",
       "item.role"},
      {R"({"type":"conversation.item.create","item":{"role":7,"content":"x"}})", "invalid_type", "item.role"},
      {R"({"type":"conversation.item.create","item":{"type":"image","role":"user","content":"x"}})",
       "invalid_value", "item.type"},
      {R"({"type":"conversation.item.create","session_id":4,"item":{"role":"user","content":"x"}})",
       "invalid_type", "session_id"},
  };
  for (const Case& c : cases) {
    INFO(c.text);
    const ProtocolError e = parse_error(c.text);
    CHECK(e.code == c.code);
    CHECK(e.param == c.param);
  }
}

TEST_CASE("sampling values out of range or of the wrong type are rejected with the field named") {
  struct Case {
    const char* sampling;
    const char* code;
    const char* param;
  };
  const Case cases[] = {
      {R"({"temperature":-1})", "invalid_value", "session.sampling.temperature"},
      {R"({"temperature":"hot"})", "invalid_type", "session.sampling.temperature"},
      {R"({"top_p":0})", "invalid_value", "session.sampling.top_p"},
      {R"({"top_p":1.5})", "invalid_value", "session.sampling.top_p"},
      {R"({"top_k":-3})", "invalid_value", "session.sampling.top_k"},
      {R"({"top_k":2.5})", "invalid_type", "session.sampling.top_k"},
      {R"({"max_tokens":0})", "invalid_value", "session.sampling.max_tokens"},
      {R"({"max_tokens":1000000000})", "invalid_value", "session.sampling.max_tokens"},
      {R"({"max_tokens":18446744073709551615})", "invalid_value", "session.sampling.max_tokens"},
      {R"({"seed":-1})", "invalid_value", "session.sampling.seed"},
      {R"({"stop":5})", "invalid_type", "session.sampling.stop"},
      {R"({"stop":["a",1]})", "invalid_type", "session.sampling.stop"},
      {R"({"stop":[""]})", "invalid_value", "session.sampling.stop[0]"},
      {R"({"stop":["1","2","3","4","5","6","7","8","9","10","11","12","13","14","15","16","17"]})",
       "invalid_value", "session.sampling.stop"},
      {R"({"presence_penalty":3})", "invalid_value", "session.sampling.presence_penalty"},
      {R"("greedy")", "invalid_type", "session.sampling"},
  };
  for (const Case& c : cases) {
    const std::string text =
        std::string(R"({"type":"session.create","session":{"sampling":)") + c.sampling + "}}";
    INFO(text);
    const ProtocolError e = parse_error(text);
    CHECK(e.code == c.code);
    CHECK(e.param == c.param);
    CHECK_FALSE(e.message.empty());
  }
}

TEST_CASE("response.create keeps a validated sampling override; a bad one is an error") {
  const ClientEvent e = parse_ok(R"({"type":"response.create","response":{"sampling":{"max_tokens":3}}})");
  CHECK(e.type == ClientEventType::kResponseCreate);
  CHECK(e.sampling_override["max_tokens"] == 3);
  engine::SamplingParams params;
  params.temperature = 0.5;
  CHECK_FALSE(
      server::apply_sampling(e.sampling_override, "response.sampling", ServerOptions{}, kVocab, params));
  CHECK(params.max_tokens == 3);
  CHECK(params.temperature == 0.5);  // untouched fields keep the session's values
  const ProtocolError bad =
      parse_error(R"({"type":"response.create","response":{"sampling":{"top_k":"x"}}})");
  CHECK(bad.param == "response.sampling.top_k");
  CHECK(parse_error(R"({"type":"response.create","response":[]})").param == "response");
}

TEST_CASE("size limits: message bytes, content bytes") {
  ServerOptions options;
  options.max_message_bytes = 64;
  options.max_content_bytes = 8;
  const std::string big(100, ' ');
  CHECK(parse_error("{\"type\":\"ping\"}" + big, options).code == "message_too_large");
  options.max_message_bytes = 1024;
  const ProtocolError long_content = parse_error(
      R"({"type":"conversation.item.create","item":{"role":"user","content":"123456789"}})", options);
  CHECK(long_content.code == "string_too_long");
  CHECK(long_content.param == "item.content");
}

TEST_CASE("nesting past max_json_depth is json_too_deep, counted outside strings, before any parse") {
  ServerOptions options;
  options.max_json_depth = 3;
  CHECK(std::holds_alternative<ClientEvent>(parse(R"({"type":"ping","x":[[1]]})", options)));
  CHECK(parse_error(R"({"type":"ping","x":[[[1]]]})", options).code == "json_too_deep");
  CHECK(parse_error(R"({"type":"ping","x":{"a":{"b":{}}}})", options).code == "json_too_deep");
  // Brackets and escaped quotes inside strings are not nesting.
  CHECK(std::holds_alternative<ClientEvent>(parse(R"({"type":"ping","x":"[[[[\"{{{{"})", options)));
  // Not JSON at all: the depth is still judged first (a flood of brackets never reaches the parser).
  CHECK(parse_error(std::string(10000, '['), options).code == "json_too_deep");
  // The reference: an exact depth count on random bracket strings, with and without strings in between.
  std::mt19937 rng(7);
  const std::string alphabet = "[]{}\"\\a";
  for (int round = 0; round < 500; ++round) {
    std::string text;
    const int n = static_cast<int>(rng() % 40);
    for (int i = 0; i < n; ++i) text += alphabet[rng() % alphabet.size()];
    int depth = 0;
    int deepest = 0;
    bool in_string = false;
    for (size_t i = 0; i < text.size(); ++i) {
      const char c = text[i];
      if (in_string) {
        if (c == '\\') ++i;
        else if (c == '"') in_string = false;
        continue;
      }
      if (c == '"') in_string = true;
      if (c == '[' || c == '{') deepest = std::max(deepest, ++depth);
      if (c == ']' || c == '}') --depth;
    }
    for (int limit = 1; limit < 6; ++limit) {
      INFO(text << " limit " << limit);
      CHECK(server::json_nesting_exceeds(text, limit) == (deepest > limit));
    }
  }
}

TEST_CASE("ping, response.cancel and session.delete parse with their optional ids") {
  CHECK(parse_ok(R"({"type":"ping","event_id":"p1"})").type == ClientEventType::kPing);
  const ClientEvent cancel = parse_ok(R"({"type":"response.cancel","response_id":"r_1"})");
  CHECK(cancel.type == ClientEventType::kResponseCancel);
  CHECK(cancel.response_id == "r_1");
  CHECK(parse_error(R"({"type":"response.cancel","response_id":1})").param == "response_id");
  const ClientEvent del = parse_ok(R"({"type":"session.delete","session_id":"s_2"})");
  CHECK(del.type == ClientEventType::kSessionDelete);
  CHECK(del.session_id == "s_2");
}

TEST_CASE("random bytes and mutated events never throw and always yield an event or an error") {
  std::mt19937 rng(12345);
  const std::string seed_event =
      R"({"type":"conversation.item.create","item":{"role":"user","content":"Hi"},"session":{"sampling":{"top_k":2}}})";
  for (int i = 0; i < 3000; ++i) {
    std::string text = seed_event;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < edits; ++k) text[rng() % text.size()] = static_cast<char>(rng() % 256);
    if (i % 3 == 0) text = std::string(rng() % 40, static_cast<char>(rng() % 256));
    ParseResult r;
    CHECK_NOTHROW(r = parse(text));
    if (auto* e = std::get_if<ProtocolError>(&r)) {
      CHECK_FALSE(e->code.empty());
      // The error event must serialise even when the input was not UTF-8.
      CHECK_NOTHROW((void)server::error_event(*e).dump(-1, ' ', false, json::error_handler_t::replace));
    }
  }
}

TEST_CASE("function_call_output items carry call_id, output and is_error; each field is checked") {
  const ClientEvent ok = parse_ok(R"({"type":"conversation.item.create",
      "item":{"type":"function_call_output","call_id":"call_1","output":"{\"t\": 3}","is_error":true}})");
  REQUIRE(ok.tool_output.has_value());
  CHECK(ok.tool_output->call_id == "call_1");
  CHECK(ok.tool_output->output == "{\"t\": 3}");
  CHECK(ok.tool_output->is_error);
  const ClientEvent plain = parse_ok(
      R"({"type":"conversation.item.create","item":{"type":"function_call_output","call_id":"c","output":""}})");
  REQUIRE(plain.tool_output.has_value());
  CHECK_FALSE(plain.tool_output->is_error);
  const ClientEvent message = parse_ok(R"({"type":"conversation.item.create","item":{"role":"user","content":"x"}})");
  CHECK_FALSE(message.tool_output.has_value());

  const std::pair<const char*, const char*> cases[] = {
      {R"({"type":"function_call_output","output":"x"})", "item.call_id"},
      {R"({"type":"function_call_output","call_id":"c"})", "item.output"},
      {R"({"type":"function_call_output","call_id":5,"output":"x"})", "item.call_id"},
      {R"({"type":"function_call_output","call_id":"c","output":{"a":1}})", "item.output"},
      {R"({"type":"function_call_output","call_id":"c","output":"x","is_error":"yes"})", "item.is_error"},
  };
  for (const auto& [item, param] : cases) {
    const std::string text = std::string(R"({"type":"conversation.item.create","item":)") + item + "}";
    INFO(text);
    CHECK(parse_error(text).param == param);
  }
}

TEST_CASE("session fields for the turn loop: tool_choice forms, enable_thinking, client_tool_timeout_ms") {
  const ServerOptions options;
  server::SessionConfig config;
  CHECK_FALSE(config.enable_thinking);
  CHECK_FALSE(server::apply_session_fields(
      json{{"tool_choice", {{"type", "function"}, {"name", "f"}}}, {"enable_thinking", true},
           {"client_tool_timeout_ms", 250}},
      "session", options, 1000, config));
  CHECK(config.enable_thinking);
  CHECK(config.client_tool_timeout_ms == 250);
  CHECK(config.tool_choice["name"] == "f");
  CHECK_FALSE(server::apply_session_fields(
      json{{"tool_choice", {{"type", "function"}, {"function", {{"name", "g"}}}}}}, "session", options, 1000, config));
  const std::pair<json, const char*> bad[] = {
      {json{{"tool_choice", "sometimes"}}, "session.tool_choice"},
      {json{{"tool_choice", {{"type", "function"}}}}, "session.tool_choice.name"},
      {json{{"enable_thinking", "yes"}}, "session.enable_thinking"},
      {json{{"client_tool_timeout_ms", 0}}, "session.client_tool_timeout_ms"},
      {json{{"max_steps", 65}}, "session.max_steps"},
  };
  for (const auto& [fields, param] : bad) {
    INFO(fields.dump());
    server::SessionConfig c;
    const auto error = server::apply_session_fields(fields, "session", options, 1000, c);
    REQUIRE(error.has_value());
    CHECK(error->param == param);
  }
}

TEST_CASE("turn loop events: client calls, requires_action, tool executions, per-step usage in response.done") {
  const json call = server::function_call_arguments_done_event("r_1", "call_1", "get_weather", R"({"city": "Oslo"})");
  CHECK(call["type"] == "response.function_call_arguments.done");
  CHECK(json::parse(call["arguments"].get<std::string>())["city"] == "Oslo");
  const json action = server::requires_action_event("r_1", {"call_1", "call_2"}, 1700000000000);
  CHECK(action["call_ids"].size() == 2);
  CHECK(action["deadline"] == 1700000000000);
  const json ok = server::tool_execution_completed_event("r_1", "c", "memory_read", "note", false, "");
  CHECK(ok["error_code"].is_null());
  const json failed = server::tool_execution_completed_event("r_1", "c", "x", "late", true, "deadline_exceeded");
  CHECK(failed["error_code"] == "deadline_exceeded");
  const json done = server::response_done_event("s_1", "r_1", "incomplete", {}, std::nullopt, 2,
                                                {{10, 0, 0, 10, 5}, {20, 15, 15, 5, 3}});
  CHECK(done["response"]["steps"] == 2);
  CHECK(done["response"]["usage"]["recomputed_tokens"] == 15);
  CHECK(done["response"]["usage"]["steps"][1]["reused_tokens"] == 15);
}

TEST_CASE("error events carry type, code, message, param and event_id (null when absent)") {
  const json full = server::error_event({"invalid_request_error", "invalid_type", "m", "item.role", "e1"});
  CHECK(full["type"] == "error");
  CHECK(full["error"]["code"] == "invalid_type");
  CHECK(full["error"]["param"] == "item.role");
  CHECK(full["error"]["event_id"] == "e1");
  const json bare = server::error_event({"server_error", "x", "m", "", ""});
  CHECK(bare["error"]["param"].is_null());
  CHECK(bare["error"]["event_id"].is_null());
  const auto status = agentserve::Status::resource_exhausted("queue full");
  CHECK(server::error_from_status(status, "request_rejected").type == "server_busy_error");
  CHECK(server::error_from_status(agentserve::Status::invalid_argument("x"), "c").type ==
        "invalid_request_error");
}

TEST_CASE("response status follows the finish reason; response.done carries usage") {
  CHECK(server::response_status(engine::FinishReason::kStop) == "completed");
  CHECK(server::response_status(engine::FinishReason::kLength) == "incomplete");
  CHECK(server::response_status(engine::FinishReason::kCancelled) == "cancelled");
  CHECK(server::response_status(engine::FinishReason::kError) == "failed");
  engine::Usage usage;
  usage.prompt_tokens = 9;
  usage.cached_tokens = 4;
  usage.completion_tokens = 12;
  const json done = server::response_done_event("s_1", "r_1", "completed", usage, std::nullopt, 1, {});
  CHECK(done["response"]["usage"]["prompt_tokens"] == 9);
  CHECK(done["response"]["usage"]["cached_tokens"] == 4);
  CHECK(done["response"]["usage"]["completion_tokens"] == 12);
  CHECK(done["response"]["status"] == "completed");
  CHECK_FALSE(done["response"].contains("error"));
}

TEST_CASE("make_id keeps its prefix and does not repeat") {
  std::set<std::string> ids;
  for (int i = 0; i < 1000; ++i) {
    const std::string id = server::make_id("s_");
    CHECK(id.starts_with("s_"));
    CHECK(id.size() == 26);
    ids.insert(id);
  }
  CHECK(ids.size() == 1000);
}

TEST_CASE("session.resume needs a session_id and a non-negative last_seq; session.update is validated") {
  const ServerOptions options;
  const auto parse = [&](const json& event) { return server::parse_client_event(event.dump(), options, 1000); };
  const auto error_code = [&](const json& event) {
    const ParseResult r = parse(event);
    REQUIRE(std::holds_alternative<ProtocolError>(r));
    return std::get<ProtocolError>(r).code;
  };
  ParseResult ok = parse({{"type", "session.resume"}, {"session_id", "s_1"}, {"last_seq", 42}});
  REQUIRE(std::holds_alternative<ClientEvent>(ok));
  CHECK(std::get<ClientEvent>(ok).type == ClientEventType::kSessionResume);
  CHECK(std::get<ClientEvent>(ok).last_seq == 42);
  CHECK(error_code({{"type", "session.resume"}}) == "missing_field");
  CHECK(error_code({{"type", "session.resume"}, {"session_id", "s_1"}, {"last_seq", -1}}) == "invalid_value");
  CHECK(error_code({{"type", "session.resume"}, {"session_id", "s_1"}, {"last_seq", "5"}}) == "invalid_type");

  ParseResult update = parse({{"type", "session.update"}, {"session", {{"instructions", "x"}, {"max_steps", 3}}}});
  REQUIRE(std::holds_alternative<ClientEvent>(update));
  CHECK(std::get<ClientEvent>(update).session_update["max_steps"] == 3);
  CHECK(error_code({{"type", "session.update"}}) == "missing_field");
  CHECK(error_code({{"type", "session.update"}, {"session", {{"max_steps", 0}}}}) == "invalid_value");
  CHECK(error_code({{"type", "session.update"}, {"session", {{"tool_choice", "sometimes"}}}}) == "invalid_value");
  CHECK(error_code({{"type", "session.update"}, {"session", {{"tools", {{{"type", "function"}}}}}}}) ==
        "missing_field");
  CHECK(error_code({{"type", "session.create"}, {"session", {{"instrucions", "x"}}}}) == "unknown_field");
}

TEST_CASE("a session's config survives session_config_json and apply_session_fields unchanged") {
  const ServerOptions options;
  server::SessionConfig config{.agent_id = "agent-a", .instructions = "be brief"};
  config.sampling.temperature = 0.5;
  config.sampling.top_k = 7;
  config.sampling.seed = 99;
  config.sampling.stop = {"\n\n"};
  config.tools = json::array({{{"type", "function"}, {"function", {{"name", "f"}}}}});
  config.tool_choice = "required";
  config.enable_thinking = true;
  config.max_steps = 5;
  config.client_tool_timeout_ms = 1500;
  server::SessionConfig back;
  REQUIRE_FALSE(server::apply_session_fields(server::session_config_json(config), "session", options, 1000, back));
  CHECK(server::session_config_json(back) == server::session_config_json(config));
  CHECK(back.sampling.seed == config.sampling.seed);
}
