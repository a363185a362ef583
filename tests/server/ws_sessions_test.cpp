// Integration: sessions across connections and restarts, on the real binary with a config file (API keys
// for two tenants), a temporary data dir and real WebSocket clients: 401 on a wrong key, tenants apart,
// tenant limits, takeover, resume after a disconnect mid-stream (the rest exactly once), resume after
// kill -9 and after SIGTERM (committed turns back, the next answer identical to a server that never
// restarted), resume after being closed (1008) for not reading, and SIGTERM with a grace period shorter
// than the response (cancelled with reason server_shutdown, 1001, exit 0, resumable after a restart).
#include <doctest/doctest.h>

#include <fstream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "tests/scratch_dir.h"
#include "tests/server/ws_test_client.h"

using namespace agentserve::testing;

namespace {

const std::string kAlphaKey = "alpha-secret-key";
const std::string kBetaKey = "beta-secret-key";

struct Fixture {
  std::filesystem::path dir;
  std::string model;
  std::string config;

  // `options`: more config keys (transport limits) merged into the file.
  explicit Fixture(const std::string& name, const json& options = json::object()) {
    dir = scratch_dir("server_ws_sessions_test", name);
    model = make_tiny_model(dir).string();
    config = (dir / "config.json").string();
    json file = {{"api_keys",
                  {{{"key", kAlphaKey}, {"tenant", "alpha"}}, {{"key", kBetaKey}, {"tenant", "beta"}}}},
                 {"tenants", {{"beta", {{"max_sessions", 2}, {"max_concurrent_responses", 1}}}}}};
    file.update(options);
    std::ofstream(config) << file.dump();
  }

  std::vector<std::string> args(std::vector<std::string> more = {}) const {
    std::vector<std::string> all = {"--model",     model, "--config",    config, "--data-dir",
                                    (dir / "data").string(), "--threads", "2",   "--kv-cache-mb", "64"};
    all.insert(all.end(), more.begin(), more.end());
    return all;
  }
};

std::string create_session(Client& client, int max_tokens) {
  client.send(greedy_session(max_tokens));
  return client.read_until("session.created")["session"]["id"];
}

// One user message and a response to it; returns response.done (and the answer's text in `text`).
json turn(Client& client, const std::string& message, std::string* text = nullptr) {
  client.send(user_message(message));
  client.read_until("conversation.item.created");
  client.send(json{{"type", "response.create"}});
  const json done_text = client.read_until("response.output_text.done");
  if (text) *text = done_text["text"];
  return client.read_until("response.done");
}

// Reads one event, or returns null once the connection is closed (its close frame's code in `code`).
std::optional<json> read_or_closed(Client& client, int& code) {
  beast::flat_buffer buffer;
  beast::error_code ec;
  client.ws().read(buffer, ec);
  if (ec) {
    CHECK_MESSAGE(ec == websocket::error::closed, ec.message());
    code = static_cast<int>(client.ws().reason().code);
    return std::nullopt;
  }
  return json::parse(beast::buffers_to_string(buffer.data()));
}

std::string long_message(int round) {
  std::string m = "Round " + std::to_string(round) + ". ";
  for (int i = 0; i < 40; ++i) m += "The quick brown fox number " + std::to_string(i * 7 + round) + " jumps. ";
  return m;
}

}  // namespace

TEST_CASE("a wrong or missing API key is refused with 401; tenants never see each other's sessions") {
  Fixture f("auth");
  ServerProcess server;
  server.start(f.args());
  const auto upgrade_status = [&](const std::string& key) {
    return http_request(server.port(), http::verb::get, "/v1/ws", "", key, /*websocket_upgrade=*/true).status;
  };
  CHECK(upgrade_status("") == 401);
  CHECK(upgrade_status("wrong-key") == 401);
  CHECK(upgrade_status(kAlphaKey) == 101);

  Client alpha(server.port(), kAlphaKey);
  const std::string id = create_session(alpha, 4);
  Client beta(server.port(), kBetaKey);
  beta.send(json{{"type", "session.resume"}, {"session_id", id}, {"last_seq", 0}});
  json e = beta.read();
  CHECK(e["error"]["code"] == "session_not_found");
  CHECK(e.dump().find("\"instructions\"") == std::string::npos);
  beta.send(json{{"type", "session.resume"}, {"session_id", "s_never_made"}});
  CHECK(beta.read()["error"]["code"] == "session_not_found");

  // beta's limits (config): 2 sessions, 1 response at a time.
  const std::string b1 = create_session(beta, 4000);
  create_session(beta, 4);
  beta.send(greedy_session(4));
  CHECK(beta.read()["error"]["code"] == "tenant_session_limit");
  json item = user_message("count");
  item["session_id"] = b1;
  beta.send(item);
  beta.read_until("conversation.item.created");
  beta.send(json{{"type", "response.create"}, {"session_id", b1}});
  beta.read_until("response.created");
  beta.send(user_message("second session"));
  beta.read_until("conversation.item.created");
  beta.send(json{{"type", "response.create"}, {"event_id", "r2"}});
  const json limited = beta.read_until("error");
  CHECK(limited["error"]["code"] == "tenant_concurrency_limit");
  CHECK(limited["error"]["event_id"] == "r2");
  // alpha is not limited by beta's running response.
  const json done = turn(alpha, "hello");
  CHECK(done["response"]["status"] != "failed");
  CHECK(server.stop() == 0);
}

TEST_CASE("a disconnect mid-stream then session.resume with last_seq gives the rest exactly once; a second "
          "connection takes the session over") {
  Fixture f("resume");
  ServerProcess server;
  server.start(f.args());
  std::string id;
  std::string first_part;
  uint64_t last_seq = 0;
  {
    Client client(server.port(), kAlphaKey);
    id = create_session(client, 300);
    client.send(user_message("Tell me a long story"));
    client.read_until("conversation.item.created");
    client.send(json{{"type", "response.create"}});
    client.read_until("response.created");
    for (int i = 0; i < 5; ++i) {
      const json delta = client.read();
      if (delta["type"] != "response.output_text.delta") break;
      first_part += delta["delta"].get<std::string>();
    }
    last_seq = client.last_seq(id);
    beast::error_code ignored;
    client.ws().next_layer().close(ignored);  // gone without a close frame
  }
  Client again(server.port(), kAlphaKey);
  again.set_last_seq(id, last_seq);
  again.send(json{{"type", "session.resume"}, {"session_id", id}, {"last_seq", last_seq}});
  std::vector<json> events;
  const json text_done = again.read_until("response.output_text.done", &events);
  uint64_t expect = last_seq + 1;
  std::string rest;
  bool resumed = false;
  for (const json& e : events) {
    CHECK(e["seq"] == expect);  // no gap, no duplicate
    expect = e["seq"].get<uint64_t>() + 1;
    resumed |= e["type"] == "session.resumed";
    if (e["type"] == "response.output_text.delta") rest += e["delta"].get<std::string>();
  }
  CHECK(first_part + rest == text_done["text"].get<std::string>());
  const json done = again.read_until("response.done");
  CHECK(done["response"]["status"] != "failed");
  if (!resumed) CHECK(again.read_until("session.resumed")["replay_complete"] == true);

  // A third connection resumes it: the second is told, and only the third gets the session's events.
  Client third(server.port(), kAlphaKey);
  third.send(json{{"type", "session.resume"}, {"session_id", id}, {"last_seq", again.last_seq(id)}});
  const json resumed_event = third.read_until("session.resumed");
  CHECK(resumed_event["session"]["id"] == id);
  CHECK(resumed_event["turns"] == 1);
  const json taken = again.read_until("error");
  CHECK(taken["error"]["code"] == "session_taken_over");
  json item = user_message("still mine?");
  item["session_id"] = id;
  again.send(item);
  CHECK(again.read()["error"]["code"] == "session_not_found");
  CHECK(server.stop() == 0);
}

TEST_CASE("after kill -9 a resumed session has every committed turn and answers like a server that never "
          "restarted; after SIGTERM too") {
  Fixture f("restart");
  const int kTurns = 4;
  ServerProcess server;
  // No grace: SIGTERM cancels the running response at once.
  server.start(f.args({"--shutdown-grace-seconds", "0"}));
  std::string id;
  std::vector<std::string> answers;
  std::string reference_next;
  int committed_tokens = 0;
  {
    Client client(server.port(), kAlphaKey);
    id = create_session(client, 8);
    for (int t = 0; t < kTurns; ++t) {
      std::string text;
      const json done = turn(client, long_message(t), &text);
      answers.push_back(text);
      committed_tokens = done["response"]["usage"]["prompt_tokens"].get<int>() +
                         done["response"]["usage"]["completion_tokens"].get<int>();
    }
    // The reference: the same conversation in another session on this never-restarted server, one turn more.
    Client reference(server.port(), kAlphaKey);
    create_session(reference, 8);
    for (int t = 0; t < kTurns; ++t) {
      std::string text;
      turn(reference, long_message(t), &text);
      CHECK(text == answers[t]);
    }
    turn(reference, "And now?", &reference_next);
  }
  CHECK(committed_tokens > 1000);
  CHECK(server.kill9() == 128 + SIGKILL);

  server.start(f.args({"--shutdown-grace-seconds", "0"}));
  {
    Client client(server.port(), kAlphaKey);
    client.send(json{{"type", "session.resume"}, {"session_id", id}, {"last_seq", 0}});
    const json resumed = client.read_until("session.resumed");
    CHECK(resumed["turns"] == kTurns);
    CHECK(resumed["lost_unfinished_turn"] == false);
    // The events before the restart were kept in memory only: a resume from seq 0 cannot get them back.
    CHECK(resumed["replay_complete"] == false);
    const int restored = resumed["restored_tokens"];
    const int recomputed = resumed["recomputed_tokens"];
    MESSAGE("after kill -9: restored " << restored << ", recomputed " << recomputed);
    // The warm-up prompt re-renders the conversation: the last answer is re-tokenized from its text.
    CHECK(restored + recomputed >= committed_tokens - 16);
    // Each committed turn was written through to disk (Engine::persist), so kill -9 lost no KV: every full
    // block of the prompt comes back (the last prompt token is always computed), only the tail is recomputed.
    CHECK(restored == (restored + recomputed - 1) / 16 * 16);
    CHECK(recomputed <= 16);
    std::string next;
    turn(client, "And now?", &next);
    CHECK(next == reference_next);
    // A response cut by SIGTERM: the socket closes cleanly and the unfinished turn is reported after restart.
    client.send(user_message("Count to a thousand"));
    client.read_until("conversation.item.created");
    client.send(json{{"type", "response.create"}, {"response", {{"sampling", {{"max_tokens", 4000}}}}}});
    client.read_until("response.created");
    ::kill(server.pid(), SIGTERM);
    const json done = client.read_until("response.done");
    CHECK(done["response"]["status"] != "failed");
    int code = 0;
    CHECK_FALSE(read_or_closed(client, code).has_value());
    CHECK(code == websocket::close_code::going_away);
  }
  CHECK(server.stop() == 0);

  server.start(f.args());
  Client client(server.port(), kAlphaKey);
  client.send(json{{"type", "session.resume"}, {"session_id", id}, {"last_seq", 0}});
  const json resumed = client.read_until("session.resumed");
  CHECK(resumed["turns"] == kTurns + 1);
  CHECK(resumed["lost_unfinished_turn"] == true);
  const int restored = resumed["restored_tokens"];
  const int recomputed = resumed["recomputed_tokens"];
  MESSAGE("after SIGTERM: restored " << restored << ", recomputed " << recomputed);
  // A clean stop flushes the KV: every full block up to the last answer comes back from disk (the answer
  // itself is re-tokenized from its text, so its tokens may differ from the ones generated).
  CHECK(restored > 0);
  CHECK(recomputed < 64);
  // The loss is reported once: a later resume (here on another connection) no longer reports it.
  Client later(server.port(), kAlphaKey);
  later.send(json{{"type", "session.resume"}, {"session_id", id}, {"last_seq", client.last_seq(id)}});
  const json resumed_again = later.read_until("session.resumed");
  CHECK(resumed_again["lost_unfinished_turn"] == false);
  CHECK(resumed_again["replay_complete"] == true);
  CHECK(server.stop() == 0);
}

TEST_CASE("a client closed for not reading resumes and gets every missed event exactly once, in seq order, "
          "then response.done") {
  // Live output waiting behind the write in flight is capped at 256 KiB; the replay window holds it all.
  Fixture f("unread",
            {{"max_write_queue_bytes", 262144},
             {"max_message_bytes", 131072},
             {"replay_max_bytes", 64 << 20},
             {"replay_max_events", 16384}});
  ServerProcess server;
  server.start(f.args());
  std::string id;
  std::string text_before;
  uint64_t last_seq = 0;
  int updates_before = 0;
  const int kUpdates = 48;
  {
    Client slow(server.port(), kAlphaKey, /*receive_buffer_bytes=*/4096);
    id = create_session(slow, 1500);
    slow.send(user_message("Tell me everything"));
    slow.read_until("conversation.item.created");
    slow.send(json{{"type", "response.create"}});
    last_seq = slow.read_until("response.created")["seq"];
    // It stops reading while its output grows past what the kernel buffers hold: the response's deltas and
    // 48 session.updated events of 100 KB each (the session's instructions).
    for (int i = 0; i < kUpdates; ++i)
      slow.send(json{{"type", "session.update"},
                     {"session", {{"instructions", std::to_string(i) + std::string(100000, 'x')}}}});
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    int code = 0;
    while (auto event = read_or_closed(slow, code)) {
      if ((*event)["type"] == "error" || (*event)["type"] == "pong") continue;
      CHECK((*event)["seq"] == last_seq + 1);  // what did arrive is in order, without gaps
      last_seq = (*event)["seq"];
      if ((*event)["type"] == "response.output_text.delta")
        text_before += (*event)["delta"].get<std::string>();
      if ((*event)["type"] == "session.updated") ++updates_before;
    }
    CHECK(code == websocket::close_code::policy_error);
  }
  MESSAGE("closed for not reading after seq " << last_seq << " (" << updates_before << " updates read)");
  CHECK(updates_before < kUpdates);

  Client again(server.port(), kAlphaKey);
  again.set_last_seq(id, last_seq);
  again.send(json{{"type", "session.resume"}, {"session_id", id}, {"last_seq", last_seq}});
  std::vector<json> events;
  const json done = again.read_until("response.done", &events);
  uint64_t expect = last_seq + 1;
  std::string text_after;
  std::string text_done;
  int updates_after = 0;
  bool resumed = false;
  for (const json& e : events) {
    CHECK(e["seq"] == expect);  // no gap, no duplicate
    expect = e["seq"].get<uint64_t>() + 1;
    if (e["type"] == "response.output_text.delta") text_after += e["delta"].get<std::string>();
    if (e["type"] == "response.output_text.done") text_done = e["text"];
    if (e["type"] == "session.updated") ++updates_after;
    if (e["type"] == "session.resumed") {
      resumed = true;
      CHECK(e["replay_complete"] == true);
    }
  }
  CHECK(done["seq"] == expect);
  // Updates the server had not read when it closed the connection are not applied; those it applied and did
  // not get to write before the close come back with the replay.
  CHECK(updates_after > 0);
  CHECK(updates_before + updates_after <= kUpdates);
  CHECK(text_before + text_after == text_done);
  // The response ran on while its client was away: it ended by itself, not cancelled.
  const std::string status = done["response"]["status"];
  CHECK((status == "completed" || status == "incomplete"));
  if (!resumed) CHECK(again.read_until("session.resumed")["replay_complete"] == true);
  // The server serves on: the resumed connection runs another turn.
  CHECK(turn(again, "and now?")["response"]["status"] != "failed");
  CHECK(server.stop() == 0);
}

TEST_CASE("SIGTERM with a grace period shorter than the response cancels it (reason server_shutdown), closes "
          "with 1001, exits 0, and the session resumes after a restart") {
  Fixture f("grace");
  ServerProcess server;
  server.start(f.args({"--shutdown-grace-seconds", "1"}));
  std::string id;
  {
    Client client(server.port(), kAlphaKey);
    id = create_session(client, 8);
    turn(client, "first turn");
    client.send(user_message("Count to ten thousand"));
    client.read_until("conversation.item.created");
    client.send(json{{"type", "response.create"}, {"response", {{"sampling", {{"max_tokens", 4000}}}}}});
    client.read_until("response.created");
    client.read_until("response.output_text.delta");
    const auto signalled = std::chrono::steady_clock::now();
    ::kill(server.pid(), SIGTERM);
    const json done = client.read_until("response.done");
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - signalled).count();
    MESSAGE("response.done " << waited << " s after SIGTERM");
    CHECK(done["response"]["status"] == "cancelled");
    CHECK(done["response"]["status_details"]["reason"] == "server_shutdown");
    CHECK(waited >= 0.9);  // it ran on through the grace period
    int code = 0;
    CHECK_FALSE(read_or_closed(client, code).has_value());
    CHECK(code == websocket::close_code::going_away);
  }
  CHECK(server.stop() == 0);

  server.start(f.args());
  Client client(server.port(), kAlphaKey);
  client.send(json{{"type", "session.resume"}, {"session_id", id}, {"last_seq", 0}});
  const json resumed = client.read_until("session.resumed");
  CHECK(resumed["turns"] == 1);
  CHECK(resumed["session"]["id"] == id);
  CHECK(turn(client, "after the restart")["response"]["status"] != "failed");
  CHECK(server.stop() == 0);
}

TEST_CASE("deleting a session over HTTP while its response runs cancels the response: the tenant's slot frees, "
          "the connection gets session.deleted, and the session is gone there too") {
  Fixture f("http_delete_running");
  ServerProcess server;
  server.start(f.args());
  Client client(server.port(), kBetaKey);  // beta: one response at a time, two sessions
  const std::string id = create_session(client, 8);
  client.send(user_message("Count to a thousand"));
  client.read_until("conversation.item.created");
  client.send(json{{"type", "response.create"}, {"response", {{"sampling", {{"max_tokens", 4000}}}}}});
  client.read_until("response.output_text.delta");

  const auto deleted = http_request(server.port(), http::verb::delete_, "/v1/sessions/" + id, "", kBetaKey);
  CHECK(deleted.status == 200);
  client.read_until("session.deleted");

  // The cancelled loop hands the tenant's only response slot back: a new session's response is admitted
  // well before the 4000 tokens could have been generated.
  const std::string second = create_session(client, 4);
  client.send(user_message("hello"));
  client.read_until("conversation.item.created");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  bool admitted = false;
  while (!admitted && std::chrono::steady_clock::now() < deadline) {
    client.send(json{{"type", "response.create"}, {"session_id", second}});
    const json reply = client.read();
    if (reply["type"] == "response.created") {
      admitted = true;
    } else {
      REQUIRE(reply["type"] == "error");
      REQUIRE(reply["error"]["code"] == "tenant_concurrency_limit");
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  CHECK(admitted);
  CHECK(client.read_until("response.done")["session_id"] == second);
  // The deleted session's response ended cancelled (not by running out its tokens); its events stopped at
  // session.deleted, so only the metrics tell.
  const auto metrics = http_request(server.port(), http::verb::get, "/metrics", "", kBetaKey);
  CHECK(metrics.body.find("agentserve_requests_total{status=\"cancelled\"} 1") != std::string::npos);

  json item = user_message("still there?");
  item["session_id"] = id;
  client.send(item);
  CHECK(client.read_until("error")["error"]["code"] == "session_not_found");
  CHECK(http_request(server.port(), http::verb::get, "/v1/sessions/" + id, "", kBetaKey).status == 404);
  CHECK(server.stop() == 0);
}
