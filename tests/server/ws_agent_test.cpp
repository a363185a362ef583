// Integration: the agent turn loop over a real WebSocket, on the real binary with the tiny random model, a
// temporary data dir and loopback. tool_choice required / named constrain the first step's decoding, so
// even random weights produce calls whose arguments parse and validate: a client tool's call goes out, its
// output comes back and the loop goes on; a server tool (memory_write, memory_read) runs in the server and
// its notes outlive the session and a kill -9 (the session narrows the tools' key to one value, so the
// random model writes and reads the same note); a client tool whose deadline passes becomes an error result;
// a loop killed while it waits for a client tool continues after the restart.
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
    create_agent_session(client, "slow-client", json::array({weather_tool()}), named_tool_choice("get_weather"), 2, 300);
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
    "server tools: memory_write in one session, memory_read in a new session of the agent returns the note, "
    "also after kill -9 and a restart") {
  Fixture f("memory");
  ServerProcess server;
  server.start(f.args());
  const std::string kKey = "user_name";
  const json write_tool = narrowed_server_tool(
      "memory_write", {{"key", {{"type", "string"}, {"const", kKey}}}, {"note", {{"type", "string"}}}});
  const json read_tool = narrowed_server_tool("memory_read", {{"key", {{"type", "string"}, {"enum", {kKey}}}}});
  std::string note;
  {
    Client client(server.port());
    create_agent_session(client, "notes-agent", json::array({write_tool}), named_tool_choice("memory_write"), 1);
    ask(client, "Remember that my name is Ada.");
    const json started = client.read_until("tool.execution.started");
    CHECK(started["name"] == "memory_write");
    const json arguments = json::parse(started["arguments"].get<std::string>());
    CHECK(arguments["key"] == kKey);  // the session's narrowed schema, enforced while decoding
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
  const auto read_back = [&](Client& client) {
    create_agent_session(client, "notes-agent", json::array({read_tool}), named_tool_choice("memory_read"), 1);
    ask(client, "What is my name?");
    const json started = client.read_until("tool.execution.started");
    CHECK(json::parse(started["arguments"].get<std::string>())["key"] == kKey);
    const json completed = client.read_until("tool.execution.completed");
    client.read_until("response.done");
    REQUIRE(completed["is_error"] == false);
    const json output = json::parse(completed["output"].get<std::string>());
    CHECK(output["key"] == kKey);
    CHECK(output["note"] == note);
  };
  {
    Client client(server.port());
    read_back(client);
  }
  server.kill9();
  server.start(f.args());
  {
    Client client(server.port());
    read_back(client);
  }
  CHECK(server.stop() == 0);
}

TEST_CASE("a narrowed schema cannot widen a server tool: arguments still pass the registered schema") {
  Fixture f("widen");
  ServerProcess server;
  server.start(f.args());
  {
    Client client(server.port());
    // memory_write's registered key is a string; this session's schema asks the model for an integer.
    const json widened =
        narrowed_server_tool("memory_write", {{"key", {{"type", "integer"}}}, {"note", {{"type", "string"}}}});
    create_agent_session(client, "widen-agent", json::array({widened}), named_tool_choice("memory_write"), 1);
    ask(client, "Remember this.");
    const json started = client.read_until("tool.execution.started");
    CHECK(json::parse(started["arguments"].get<std::string>())["key"].is_number_integer());
    const json completed = client.read_until("tool.execution.completed");
    CHECK(completed["is_error"] == true);
    CHECK(completed["error_code"] == "InvalidArgument");
    CHECK(completed["output"].get<std::string>().find("invalid arguments") != std::string::npos);
    client.read_until("response.done");
    // A schema that is not an object is refused when the session is created.
    json bad = server_tool("memory_read");
    bad["parameters"] = "key";
    client.send(json{{"type", "session.create"}, {"session", {{"tools", json::array({bad})}}}});
    CHECK(client.read_until("error")["error"]["code"] == "invalid_tools");
    // A valid schema the decoding grammar cannot follow (an array without items) is fine while the model may
    // answer in text, and refused, with the grammar's reason, once tool_choice forces a call of it.
    json loose = weather_tool();
    loose["parameters"] = {{"type", "object"}, {"properties", {{"cities", {{"type", "array"}}}}}};
    create_agent_session(client, "loose-agent", json::array({loose}), "auto", 1);
    client.send(json{{"type", "session.create"},
                     {"session", {{"tools", json::array({loose})}, {"tool_choice", "required"}}}});
    const json refused = client.read_until("error");
    CHECK(refused["error"]["code"] == "invalid_tools");
    CHECK_MESSAGE(refused["error"]["message"].get<std::string>().find("cannot be constrained") != std::string::npos,
                  refused.dump());
  }
  CHECK(server.stop() == 0);
}

TEST_CASE(
    "killed while waiting for a client tool: after a restart the call is announced again and its output "
    "continues the loop") {
  Fixture f("restart_mid_loop");
  ServerProcess server;
  server.start(f.args());
  std::string session_id;
  json call;
  {
    Client client(server.port());
    session_id =
        create_agent_session(client, "weather-agent", json::array({weather_tool()}), named_tool_choice("get_weather"), 3);
    ask(client, "What is the weather in Paris?");
    call = client.read_until("response.function_call_arguments.done");
    client.read_until("response.requires_action");
  }
  server.kill9();
  server.start(f.args());
  {
    Client client(server.port());
    client.send(json{{"type", "session.resume"}, {"session_id", session_id}});
    client.read_until("session.resumed");
    client.send(json{{"type", "response.create"}});
    const json again = client.read_until("response.function_call_arguments.done");
    CHECK(again["call_id"] == call["call_id"]);
    CHECK(again["name"] == "get_weather");
    CHECK(json::parse(again["arguments"].get<std::string>()) ==
          json::parse(call["arguments"].get<std::string>()));
    const json action = client.read_until("response.requires_action");
    REQUIRE(action["call_ids"].size() == 1);
    CHECK(action["call_ids"][0] == call["call_id"]);
    client.send(json{
        {"type", "conversation.item.create"},
        {"item", {{"type", "function_call_output"}, {"call_id", call["call_id"]}, {"output", "18 C, sun"}}}});
    const json completed = client.read_until("tool.execution.completed");
    CHECK(completed["call_id"] == call["call_id"]);
    CHECK(completed["output"] == "18 C, sun");
    const json done = client.read_until("response.done");
    CHECK(done["response"]["steps"].get<int>() >= 1);
    CHECK(done["response"]["status"] != "failed");
    // The result was committed before the loop went on: the session now holds user, call, result, answer...
    client.send(json{
        {"type", "session.resume"}, {"session_id", session_id}, {"last_seq", client.last_seq(session_id)}});
    const json resumed = client.read_until("session.resumed");
    CHECK(resumed["session"]["items"].get<int>() >= 4);
  }
  CHECK(server.stop() == 0);
}

TEST_CASE(
    "a response cancelled while it waits for a client tool: the next response announces the same call") {
  Fixture f("cancel_mid_loop");
  ServerProcess server;
  server.start(f.args());
  {
    Client client(server.port());
    create_agent_session(client, "weather-agent", json::array({weather_tool()}), named_tool_choice("get_weather"), 3);
    ask(client, "What is the weather in Lima?");
    const json call = client.read_until("response.function_call_arguments.done");
    client.read_until("response.requires_action");
    client.send(json{{"type", "response.cancel"}});
    CHECK(client.read_until("response.done")["response"]["status"] == "cancelled");

    client.send(json{{"type", "response.create"}});
    const json again = client.read_until("response.function_call_arguments.done");
    CHECK(again["call_id"] == call["call_id"]);
    client.read_until("response.requires_action");
    client.send(
        json{{"type", "conversation.item.create"},
             {"item", {{"type", "function_call_output"}, {"call_id", call["call_id"]}, {"output", "9 C"}}}});
    CHECK(client.read_until("tool.execution.completed")["output"] == "9 C");
    const json done = client.read_until("response.done");
    CHECK(done["response"]["status"] != "failed");
    CHECK(done["response"]["status"] != "cancelled");
  }
  CHECK(server.stop() == 0);
}
