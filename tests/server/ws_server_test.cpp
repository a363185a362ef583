// Integration: the real `agentserve serve` binary with a tiny generated model, driven over real HTTP and
// WebSocket connections with Boost.Beast's client (bad input and its limits: JSON depth, invalid UTF-8),
// then stopped with SIGTERM during a response, which finishes within the grace period.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "tests/scratch_dir.h"
#include "tests/server/ws_test_client.h"

using namespace agentserve::testing;

namespace {

// One server process for the whole file: made on first use, stopped by the last test case.
struct SharedServer {
  ServerProcess process;
  SharedServer() {
    const auto dir = scratch_dir("server_ws_server_test", "shared");
    const std::string model = make_tiny_model(dir).string();
    process.start({"--model", model, "--threads", "2", "--kv-cache-mb", "64", "--io-threads", "2"});
  }
  int port() const { return process.port(); }
  pid_t pid() const { return process.pid(); }
  int stop() { return process.stop(); }
};

SharedServer& server() {
  static SharedServer shared;
  return shared;
}

HttpReply get(const std::string& target) {
  return http_request(server().port(), http::verb::get, target);
}

// A client of the shared server.
struct SharedClient : Client {
  SharedClient() : Client(server().port()) {}
};

}  // namespace

TEST_CASE("serve answers /healthz, /readyz and /v1/models, and a JSON 404 elsewhere") {
  CHECK(get("/healthz").status == 200);
  CHECK(get("/healthz").body == "ok\n");
  CHECK(get("/readyz").status == 200);
  const HttpReply models = get("/v1/models");
  REQUIRE(models.status == 200);
  const json list = json::parse(models.body);
  CHECK(list["object"] == "list");
  CHECK(list["data"][0]["id"] == "tiny");
  const HttpReply missing = get("/nope?x=1");
  CHECK(missing.status == 404);
  CHECK(json::parse(missing.body)["error"]["code"] == "not_found");
}

TEST_CASE("a greedy response streams deltas and ends with response.done after max_tokens") {
  SharedClient client;
  client.send(greedy_session(8));
  const json created = client.read_until("session.created");
  const std::string session_id = created["session"]["id"];
  CHECK(session_id.starts_with("s_"));
  client.send(user_message("Hello there"));
  const json item = client.read_until("conversation.item.created");
  CHECK(item["item"]["content"] == "Hello there");
  client.send(json{{"type", "response.create"}});
  const json response_created = client.read_until("response.created");
  const std::string response_id = response_created["response"]["id"];
  std::vector<json> streamed;
  const json text_done = client.read_until("response.output_text.done", &streamed);
  std::string deltas;
  for (const json& e : streamed) {
    CHECK(e["type"] == "response.output_text.delta");
    CHECK(e["response_id"] == response_id);
    deltas += e["delta"].get<std::string>();
  }
  CHECK(text_done["text"] == deltas);
  const json done = client.read();
  REQUIRE(done["type"] == "response.done");
  CHECK(done["response"]["id"] == response_id);
  const int completion = done["response"]["usage"]["completion_tokens"];
  const std::string status = done["response"]["status"];
  // The tiny model's random weights could pick EOS early; then the status says so.
  if (status == "incomplete") {
    CHECK(completion == 8);
  } else {
    CHECK(status == "completed");
    CHECK(completion <= 8);
  }
  CHECK(done["response"]["usage"]["prompt_tokens"].get<int>() > 3);

  // The answer joined the conversation: a second response on the same session sees a longer prompt.
  client.send(user_message("Again"));
  client.read_until("conversation.item.created");
  client.send(json{{"type", "response.create"}, {"response", {{"sampling", {{"max_tokens", 2}}}}}});
  const json second = client.read_until("response.done");
  CHECK(second["response"]["usage"]["completion_tokens"].get<int>() <= 2);
  // The new user turn alone adds 6 tokens; the kept answer adds its "<|im_end|>\n" (2) and its text.
  CHECK(second["response"]["usage"]["prompt_tokens"].get<int>() >=
        done["response"]["usage"]["prompt_tokens"].get<int>() + 8);
}

TEST_CASE(
    "the same greedy conversation on a new connection gives the same text, its prompt from the prefix "
    "cache") {
  const std::string long_message =
      "Please repeat after me: the quick brown fox jumps over the lazy dog, twice.";
  json first_done;
  std::string first_text;
  for (int round = 0; round < 2; ++round) {
    SharedClient client;
    client.send(greedy_session(6));
    client.read_until("session.created");
    client.send(user_message(long_message));
    client.read_until("conversation.item.created");
    client.send(json{{"type", "response.create"}});
    const std::string text = client.read_until("response.output_text.done")["text"];
    const json done = client.read_until("response.done");
    if (round == 0) {
      first_text = text;
      first_done = done;
      continue;
    }
    CHECK(text == first_text);
    CHECK(done["response"]["usage"]["prompt_tokens"] == first_done["response"]["usage"]["prompt_tokens"]);
    CHECK(done["response"]["usage"]["completion_tokens"] ==
          first_done["response"]["usage"]["completion_tokens"]);
    CHECK(done["response"]["usage"]["cached_tokens"].get<int>() >= 16);
  }
}

TEST_CASE("bad input gets an error event and the connection keeps working") {
  SharedClient client;
  client.send(std::string("{not json"));
  json e = client.read();
  CHECK(e["type"] == "error");
  CHECK(e["error"]["code"] == "invalid_json");
  client.send(json{{"type", "session.explode"}, {"event_id", "c7"}});
  e = client.read();
  CHECK(e["error"]["code"] == "unknown_event");
  CHECK(e["error"]["event_id"] == "c7");
  client.send(json{{"type", "response.create"}});
  CHECK(client.read()["error"]["code"] == "no_session");
  client.send(json{{"type", "session.create"}, {"session", {{"sampling", {{"temperature", -1}}}}}});
  e = client.read();
  CHECK(e["error"]["code"] == "invalid_value");
  CHECK(e["error"]["param"] == "session.sampling.temperature");
  client.send(greedy_session(4));
  client.read_until("session.created");
  client.send(json{{"type", "conversation.item.create"}, {"item", {{"role", "user"}}}});
  e = client.read();
  CHECK(e["error"]["param"] == "item.content");
  // A message over the limit (1 MiB) but under the hard cap is refused without closing the connection.
  client.send(std::string(3 << 19, ' '));
  CHECK(client.read()["error"]["code"] == "message_too_large");
  client.send(json{{"type", "ping"}, {"event_id", "p1"}});
  const json pong = client.read();
  CHECK(pong["type"] == "pong");
  CHECK(pong["reply_to"] == "p1");
}

TEST_CASE("a second response.create while one runs is refused, and response.cancel ends the first") {
  SharedClient client;
  client.send(greedy_session(4000));
  client.read_until("session.created");
  client.send(user_message("Count"));
  client.read_until("conversation.item.created");
  client.send(json{{"type", "response.create"}});
  client.send(json{{"type", "response.create"}, {"event_id", "second"}});
  client.read_until("response.created");
  std::vector<json> before;
  const json refused = client.read_until("error", &before);
  CHECK(refused["error"]["code"] == "response_in_progress");
  CHECK(refused["error"]["event_id"] == "second");
  client.send(json{{"type", "response.cancel"}});
  std::vector<json> events;
  const json done = client.read_until("response.done", &events);
  const std::string status = done["response"]["status"];
  bool cancel_refused = false;
  for (const json& e : events) cancel_refused |= e["type"] == "error";
  // The tiny model may reach its end before the cancel arrives; then the cancel is refused instead.
  CHECK((status == "cancelled" || cancel_refused));
  if (status == "cancelled") CHECK(done["response"]["status_details"]["reason"] == "client_cancelled");
  CHECK(done["response"]["usage"]["completion_tokens"].get<int>() < 4000);
}

TEST_CASE("sessions are addressed by session_id, capped per connection, and gone once deleted") {
  SharedClient client;
  client.send(greedy_session(2));
  const std::string first = client.read_until("session.created")["session"]["id"];
  client.send(greedy_session(2));
  const std::string second = client.read_until("session.created")["session"]["id"];
  CHECK(first != second);
  json item = user_message("to the first");
  item["session_id"] = first;
  client.send(item);
  CHECK(client.read_until("conversation.item.created")["session_id"] == first);
  client.send(user_message("to the newest"));
  CHECK(client.read_until("conversation.item.created")["session_id"] == second);
  client.send(json{{"type", "session.delete"}, {"session_id", first}});
  CHECK(client.read_until("session.deleted")["session_id"] == first);
  client.send(item);
  json e = client.read();
  CHECK(e["error"]["code"] == "session_not_found");
  CHECK(e["error"]["param"] == "session_id");
  for (int i = 1; i < 16; ++i) {
    client.send(greedy_session(2));
    client.read_until("session.created");
  }
  client.send(greedy_session(2));
  CHECK(client.read()["error"]["code"] == "limit_exceeded");
}

TEST_CASE("/metrics is Prometheus text with the engine's token counts") {
  const HttpReply metrics = get("/metrics");
  REQUIRE(metrics.status == 200);
  for (const char* name :
       {"agentserve_generation_tokens_total", "agentserve_prompt_tokens_total", "agentserve_requests_total",
        "agentserve_time_to_first_token_seconds_bucket", "agentserve_num_requests_running",
        "agentserve_kv_blocks_total", "agentserve_prefix_cache_hit_blocks_total",
        "agentserve_kv_restored_tokens_total", "agentserve_kv_tier_events_total"}) {
    INFO(name);
    CHECK(metrics.body.find(name) != std::string::npos);
  }
  const auto at = metrics.body.find("\nagentserve_generation_tokens_total ");
  REQUIRE(at != std::string::npos);
  CHECK(std::stod(metrics.body.substr(at + 36)) >= 8);
}

TEST_CASE("events nested past max_json_depth get json_too_deep; a text frame that is not UTF-8 is closed "
          "with 1007; the server keeps serving") {
  SharedClient client;
  // The default limit is 64 levels: the event object and 63 arrays inside it are fine, one more is not.
  const auto nested = [](int arrays) {
    return R"({"type":"ping","event_id":"deep","x":)" + std::string(arrays, '[') + std::string(arrays, ']') +
           "}";
  };
  client.send(nested(63));
  CHECK(client.read()["type"] == "pong");
  client.send(nested(64));
  json e = client.read();
  CHECK(e["type"] == "error");
  CHECK(e["error"]["code"] == "json_too_deep");
  // Brackets inside strings are text, not nesting.
  client.send(json{{"type", "ping"}, {"x", std::string(500, '[')}});
  CHECK(client.read()["type"] == "pong");
  client.send(std::string(200000, '['));
  CHECK(client.read()["error"]["code"] == "json_too_deep");

  {
    SharedClient bad;
    bad.send(std::string("{\"type\":\"ping\",\"event_id\":\"\xff\xfe\"}"));
    beast::flat_buffer buffer;
    beast::error_code ec;
    bad.ws().read(buffer, ec);
    CHECK(ec == websocket::error::closed);
    CHECK(bad.ws().reason().code == websocket::close_code::bad_payload);
  }
  client.send(json{{"type", "ping"}, {"event_id", "still"}});
  CHECK(client.read()["reply_to"] == "still");
  SharedClient fresh;
  fresh.send(json{{"type", "ping"}, {"event_id", "new"}});
  CHECK(fresh.read()["reply_to"] == "new");
  const std::string metrics = get("/metrics").body;
  CHECK(metrics.find(R"(agentserve_errors_total{code="json_too_deep"} 2)") != std::string::npos);
  CHECK(metrics.find(R"(agentserve_errors_total{code="bad_frame_payload"} 1)") != std::string::npos);
}

TEST_CASE("SIGTERM during a short response lets it finish: the rest of it, response.done, close 1001, "
          "exit 0") {
  SharedClient client;
  client.send(greedy_session(48));
  client.read_until("session.created");
  client.send(user_message("Go on"));
  client.read_until("conversation.item.created");
  client.send(json{{"type", "response.create"}});
  client.read_until("response.created");
  ::kill(server().pid(), SIGTERM);
  std::vector<json> streamed;
  const json text_done = client.read_until("response.output_text.done", &streamed);
  std::string deltas;
  for (const json& e : streamed)
    if (e["type"] == "response.output_text.delta") deltas += e["delta"].get<std::string>();
  CHECK(text_done["text"] == deltas);
  const json done = client.read_until("response.done");
  const std::string status = done["response"]["status"];
  CHECK((status == "completed" || status == "incomplete"));  // finished within the grace period, not cut
  beast::flat_buffer buffer;
  beast::error_code ec;
  client.ws().read(buffer, ec);
  CHECK(ec == websocket::error::closed);
  CHECK(client.ws().reason().code == websocket::close_code::going_away);
  CHECK(server().stop() == 0);
}
