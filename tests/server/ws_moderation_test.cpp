// Integration: moderation of what enters a WebSocket response, on the real `agentserve serve` binary with
// the example webhook (examples/moderation_service.py) on loopback: a flagged user item never reaches the
// model (the response ends blocked, the item leaves the session), a flagged client tool output reaches the
// model only as "withheld", and a flagged tool call never runs (the note it would have written is not in
// the agent's memory afterwards). Every moderation.blocked event carries the reason.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../agent/moderation_service_process.h"
#include "../scratch_dir.h"
#include "server_process.h"
#include "ws_test_client.h"

namespace http = boost::beast::http;
using agentserve::testing::Client;
using agentserve::testing::named_tool_choice;
using agentserve::testing::narrowed_server_tool;
using agentserve::testing::ServerProcess;
using nlohmann::json;

namespace {

constexpr const char* kKey = "sk-test";
constexpr const char* kSecret = "whsec_c2VjcmV0LWZvci10ZXN0cw==";

struct ModerationService : agentserve::agent::testing::ModerationServiceProcess {
  explicit ModerationService(std::vector<std::string> extra)
      : ModerationServiceProcess(AGENTSERVE_SOURCE_DIR "/examples/moderation_service.py", std::move(extra)) {
    REQUIRE_MESSAGE(ok(), "examples/moderation_service.py did not announce its port");
  }
};

std::string server_config(const std::string& moderation_url) {
  std::string config = R"({"api_keys": [{"tenant": "t", "key": "sk-test"}])";
  if (!moderation_url.empty())
    config += R"(, "moderation": {"url": ")" + moderation_url + R"(", "secrets": [")" + kSecret +
              R"("], "window_tokens": 4, "overlap_tokens": 1, "timeout_ms": 300,
                   "check_input": true, "check_tool_results": true})";
  return config + "}";
}

// Short constrained strings, so a random model's calls end within a few tokens.
std::vector<std::string> server_args(const std::filesystem::path& data_dir) {
  return {"--data-dir", data_dir.string(), "--tool-arg-max-chars", "12"};
}

std::string create_session(Client& client, const json& tools = json::array(),
                           const json& tool_choice = "auto", int max_steps = 2) {
  client.send(json{{"type", "session.create"},
                   {"session",
                    {{"agent_id", "mod-agent"},
                     {"tools", tools},
                     {"tool_choice", tool_choice},
                     {"max_steps", max_steps},
                     {"sampling", {{"temperature", 0}, {"max_tokens", 64}}}}}});
  return client.read_until("session.created")["session"]["id"];
}

// Sends `text` as a user item and starts a response; returns the events up to response.done, which is last.
std::vector<json> respond(Client& client, const std::string& text) {
  client.send(agentserve::testing::user_message(text));
  client.read_until("conversation.item.created");
  client.send(json{{"type", "response.create"}});
  std::vector<json> events;
  events.push_back(client.read_until("response.done", &events));
  return events;
}

std::vector<json> of_type(const std::vector<json>& events, const std::string& type) {
  std::vector<json> out;
  for (const json& e : events)
    if (e["type"] == type) out.push_back(e);
  return out;
}

int session_items(int port, const std::string& id) {
  const auto reply = agentserve::testing::http_request(port, http::verb::get, "/v1/sessions/" + id, "", kKey);
  REQUIRE(reply.status == 200);
  return json::parse(reply.body)["items"];
}

// memory_write / memory_read held to one key, so the random model's forced call uses it.
json memory_tool(const std::string& name, const std::string& key) {
  json properties = {{"key", {{"type", "string"}, {"const", key}}}};
  if (name == "memory_write") properties["note"] = {{"type", "string"}};
  return narrowed_server_tool(name, properties);
}

}  // namespace

TEST_CASE(
    "check_input: a flagged user item never reaches the model, leaves the session, and the reason is sent") {
  ModerationService service({"--secret", kSecret, "--flag", "forbidden=hate"});
  const auto dir = agentserve::testing::scratch_dir("server_ws_moderation_test", "input");
  ServerProcess server(server_config(service.url()), server_args(dir));
  Client client(server.port(), kKey);
  const std::string id = create_session(client);

  const std::vector<json> events = respond(client, "tell me something forbidden");
  const auto blocked = of_type(events, "moderation.blocked");
  REQUIRE(blocked.size() == 1);
  CHECK(blocked[0]["kind"] == "input");
  CHECK(blocked[0]["reason"] == "flagged");
  CHECK(blocked[0]["action"] == "blocked");
  CHECK(blocked[0]["categories"] == json::array({"hate"}));
  CHECK(of_type(events, "response.output_text.delta").empty());
  const json& done = events.back();
  CHECK(done["response"]["status"] == "blocked");
  CHECK(done["response"]["steps"] == 0);
  CHECK(done["response"]["usage"]["completion_tokens"] == 0);
  CHECK(session_items(server.port(), id) == 0);

  // The session goes on: a clean item is answered, and only it and the answer are in the conversation.
  const std::vector<json> clean = respond(client, "Say hello.");
  CHECK(of_type(clean, "moderation.blocked").empty());
  CHECK(clean.back()["response"]["status"] != "blocked");
  CHECK(clean.back()["response"]["status"] != "failed");
  CHECK(session_items(server.port(), id) == 2);
}

TEST_CASE("check_tool_results: a flagged client tool output reaches the model only as withheld") {
  ModerationService service({"--secret", kSecret, "--flag", "forbidden=violence"});
  const auto dir = agentserve::testing::scratch_dir("server_ws_moderation_test", "tool_output");
  ServerProcess server(server_config(service.url()), server_args(dir));
  Client client(server.port(), kKey);
  const json weather = {{"type", "function"},
                        {"name", "get_weather"},
                        {"parameters",
                         {{"type", "object"},
                          {"properties", {{"city", {{"type", "string"}}}}},
                          {"required", {"city"}},
                          {"additionalProperties", false}}},
                        {"execution", "client"}};
  create_session(client, json::array({weather}), named_tool_choice("get_weather"), 2);
  client.send(agentserve::testing::user_message("Weather in Oslo?"));
  client.read_until("conversation.item.created");
  client.send(json{{"type", "response.create"}});
  const json call = client.read_until("response.function_call_arguments.done");
  client.read_until("response.requires_action");
  client.send(json{{"type", "conversation.item.create"},
                   {"item",
                    {{"type", "function_call_output"},
                     {"call_id", call["call_id"]},
                     {"output", "a forbidden forecast"}}}});
  std::vector<json> before;
  const json completed = client.read_until("tool.execution.completed", &before);
  const auto blocked = of_type(before, "moderation.blocked");
  REQUIRE(blocked.size() == 1);
  CHECK(blocked[0]["kind"] == "tool_result");
  CHECK(blocked[0]["action"] == "withheld");
  CHECK(blocked[0]["reason"] == "flagged");
  CHECK(blocked[0]["categories"] == json::array({"violence"}));
  // What the loop handed the model is the completed event's output.
  CHECK(completed["call_id"] == call["call_id"]);
  CHECK(completed["is_error"] == true);
  CHECK(completed["output"] == "the tool's output was withheld by moderation");
  const json done = client.read_until("response.done");
  CHECK(done["response"]["steps"] == 2);
  CHECK(done["response"]["status"] != "failed");
}

TEST_CASE("a flagged tool argument stops the tool from running: the note is not written") {
  const auto dir = agentserve::testing::scratch_dir("server_ws_moderation_test", "tool_arguments");
  const std::string key = "secret_plan";
  {
    ModerationService service({"--secret", kSecret, "--flag-kind", "tool_arguments"});
    ServerProcess server(server_config(service.url()), server_args(dir));
    Client client(server.port(), kKey);
    create_session(client, json::array({memory_tool("memory_write", key)}), named_tool_choice("memory_write"), 1);
    const std::vector<json> events = respond(client, "Remember the plan.");
    const auto blocked = of_type(events, "moderation.blocked");
    REQUIRE(blocked.size() == 1);
    CHECK(blocked[0]["kind"] == "tool_arguments");
    CHECK(blocked[0]["reason"] == "flagged");
    CHECK(blocked[0]["categories"] == json::array({"flagged_kind"}));
    CHECK(of_type(events, "tool.execution.started").empty());
    CHECK(of_type(events, "tool.execution.completed").empty());
    CHECK(events.back()["response"]["status"] == "blocked");
    CHECK(server.stop() == 0);
  }
  // The same data dir without moderation: the agent reads that key and finds nothing; then, as a control,
  // a write of that key unmoderated is read back.
  ServerProcess server(server_config(""), server_args(dir));
  Client client(server.port(), kKey);
  auto read_note = [&] {
    create_session(client, json::array({memory_tool("memory_read", key)}), named_tool_choice("memory_read"), 1);
    const std::vector<json> events = respond(client, "What is the plan?");
    const auto completed = of_type(events, "tool.execution.completed");
    REQUIRE(completed.size() == 1);
    return completed[0];
  };
  const json missing = read_note();
  CHECK(missing["is_error"] == true);
  CHECK(missing["error_code"] == "NotFound");
  create_session(client, json::array({memory_tool("memory_write", key)}), named_tool_choice("memory_write"), 1);
  const auto written = of_type(respond(client, "Remember the plan."), "tool.execution.completed");
  REQUIRE(written.size() == 1);
  CHECK(written[0]["is_error"] == false);
  CHECK(read_note()["is_error"] == false);
}
