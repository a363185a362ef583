// Integration: the agent turn loop over a real WebSocket, on the real binary with the tiny random model, a
// temporary data dir and loopback. tool_choice required / named constrain the first step's decoding, so
// even random weights produce calls whose arguments parse and validate: a client tool's call goes out, its
// output comes back and the loop goes on; a server tool (memory_write, memory_read) runs in the server and
// its notes outlive the session and a restart; a client tool whose deadline passes becomes an error result.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "tests/scratch_dir.h"
#include "tests/server/ws_test_client.h"
#include "tools/json_schema_validator.h"

using namespace agentserve::testing;

namespace {

struct Fixture {
  std::filesystem::path dir;
  std::string model;

  explicit Fixture(const std::string& name) {
    dir = scratch_dir("server_ws_agent_test", name);
    model = make_tiny_model(dir).string();
  }

  // Strings in constrained arguments are capped so a random model's calls end within a few tokens.
  std::vector<std::string> args() const {
    return {"--model", model,           "--data-dir", (dir / "data").string(), "--threads",
            "2",       "--kv-cache-mb", "64",         "--tool-arg-max-chars",  "12"};
  }
};

const json kWeatherSchema = {
    {"type", "object"},
    {"properties",
     {{"city", {{"type", "string"}}}, {"unit", {{"type", "string"}, {"enum", {"celsius", "fahrenheit"}}}}}},
    {"required", {"city", "unit"}},
    {"additionalProperties", false}};

json weather_tool() {
  return {{"type", "function"},
          {"name", "get_weather"},
          {"description", "The weather in a city"},
          {"parameters", kWeatherSchema},
          {"execution", "client"}};
}

json server_tool(const std::string& name) {
  return {{"type", "function"}, {"name", name}, {"execution", "server"}};
}

json named(const std::string& name) {
  return {{"type", "function"}, {"name", name}};
}

std::string create_agent_session(Client& client, const std::string& agent_id, const json& tools,
                                 const json& tool_choice, int max_steps, int timeout_ms = 60000) {
  client.send(json{{"type", "session.create"},
                   {"session",
                    {{"agent_id", agent_id},
                     {"tools", tools},
                     {"tool_choice", tool_choice},
                     {"max_steps", max_steps},
                     {"client_tool_timeout_ms", timeout_ms},
                     {"sampling", {{"temperature", 0}, {"max_tokens", 96}}}}}});
  const json created = client.read_until("session.created");
  return created["session"]["id"];
}

void ask(Client& client, const std::string& text) {
  client.send(user_message(text));
  client.read_until("conversation.item.created");
  client.send(json{{"type", "response.create"}});
}

}  // namespace

TEST_CASE("tool_choice required with a client tool: valid arguments go out, the output continues the loop") {
  Fixture f("client_tool");
  ServerProcess server;
  server.start(f.args());
  {
    Client client(server.port());
    create_agent_session(client, "weather-agent", json::array({weather_tool()}), "required", 2);
    ask(client, "What is the weather in Oslo?");

    const json call = client.read_until("response.function_call_arguments.done");
    CHECK(call["name"] == "get_weather");
    const json arguments = json::parse(call["arguments"].get<std::string>(), nullptr, false);
    REQUIRE_FALSE(arguments.is_discarded());
    CHECK(agentserve::tools::validate_json(kWeatherSchema, arguments).ok());
    const json action = client.read_until("response.requires_action");
    REQUIRE(action["call_ids"].size() == 1);
    CHECK(action["call_ids"][0] == call["call_id"]);
    CHECK(action["deadline"].get<int64_t>() > 0);

    // An unknown call id is an error event; the loop keeps waiting for the real one.
    client.send(
        json{{"type", "conversation.item.create"},
             {"item", {{"type", "function_call_output"}, {"call_id", "call_nope"}, {"output", "x"}}}});
    const json unknown = client.read_until("error");
    CHECK(unknown["error"]["code"] == "unknown_call_id");

    client.send(
        json{{"type", "conversation.item.create"},
             {"item",
              {{"type", "function_call_output"}, {"call_id", call["call_id"]}, {"output", "12 C, rain"}}}});
    const json completed = client.read_until("tool.execution.completed");
    CHECK(completed["output"] == "12 C, rain");
    CHECK(completed["is_error"] == false);
    const json done = client.read_until("response.done");
    CHECK(done["response"]["steps"] == 2);
    CHECK(done["response"]["status"] != "failed");
    CHECK(done["response"]["usage"]["steps"].size() == 2);
    // The second step reuses the first step's tokens rather than re-tokenizing them.
    CHECK(done["response"]["usage"]["steps"][1]["reused_tokens"].get<int>() > 0);
  }
  CHECK(server.stop() == 0);
}

TEST_CASE("a client tool whose deadline passes becomes an error result and the loop goes on") {
  Fixture f("deadline");
  ServerProcess server;
  server.start(f.args());
  {
    Client client(server.port());
    create_agent_session(client, "slow-client", json::array({weather_tool()}), named("get_weather"), 2, 300);
    ask(client, "Weather in Rome?");
    const json call = client.read_until("response.function_call_arguments.done");
    client.read_until("response.requires_action");
    const json completed = client.read_until("tool.execution.completed");
    CHECK(completed["call_id"] == call["call_id"]);
    CHECK(completed["is_error"] == true);
    CHECK(completed["error_code"] == "DeadlineExceeded");
    const json done = client.read_until("response.done");
    CHECK(done["response"]["steps"] == 2);
  }
  CHECK(server.stop() == 0);
}

TEST_CASE(
    "server tools: memory_write runs in the server; a new session of the agent reads its notes, also after "
    "a restart") {
  Fixture f("memory");
  ServerProcess server;
  server.start(f.args());
  std::string key;
  std::string note;
  {
    Client client(server.port());
    create_agent_session(client, "notes-agent", json::array({server_tool("memory_write")}),
                         named("memory_write"), 1);
    ask(client, "Remember that my name is Ada.");
    const json started = client.read_until("tool.execution.started");
    CHECK(started["name"] == "memory_write");
    const json arguments = json::parse(started["arguments"].get<std::string>());
    key = arguments["key"];
    note = arguments["note"];
    const json completed = client.read_until("tool.execution.completed");
    CHECK(completed["is_error"] == false);
    const json done = client.read_until("response.done");
    CHECK(done["response"]["steps"] == 1);
    // max_steps 1 ends the loop after the tool's result: incomplete, not failed.
    CHECK(done["response"]["status"] == "incomplete");
    // A server tool that is not registered is refused when the session is created.
    client.send(
        json{{"type", "session.create"}, {"session", {{"tools", json::array({server_tool("rm_rf")})}}}});
    CHECK(client.read_until("error")["error"]["code"] == "invalid_tools");
  }
  // The random model picks the key it reads, and it need not be the key it wrote: when it is, the note
  // comes back; when not, the server's answer names the missing key (a real lookup in the agent's memory,
  // not an error of the loop).
  const auto read_back = [&](Client& client) {
    create_agent_session(client, "notes-agent", json::array({server_tool("memory_read")}),
                         named("memory_read"), 1);
    ask(client, "What is my name?");
    const json started = client.read_until("tool.execution.started");
    const std::string read_key = json::parse(started["arguments"].get<std::string>())["key"];
    const json completed = client.read_until("tool.execution.completed");
    client.read_until("response.done");
    return std::make_pair(read_key, completed);
  };
  {
    Client client(server.port());
    const auto [read_key, completed] = read_back(client);
    MESSAGE("written key '" << key << "', read key '" << read_key << "'");
    if (read_key == key) {
      CHECK(completed["is_error"] == false);
      CHECK(completed["output"].get<std::string>().find(note) != std::string::npos);
    } else {
      CHECK(completed["output"].get<std::string>().find(read_key) != std::string::npos);
    }
  }
  CHECK(server.stop() == 0);
  server.start(f.args());
  {
    Client client(server.port());
    const auto [read_key, completed] = read_back(client);
    if (read_key == key) CHECK(completed["output"].get<std::string>().find(note) != std::string::npos);
  }
  CHECK(server.stop() == 0);
}
