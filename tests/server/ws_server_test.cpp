// Integration: the real `agentserve serve` binary with a tiny generated model, driven over real HTTP and
// WebSocket connections with Boost.Beast's client, then stopped with SIGTERM.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <nlohmann/json.hpp>

namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using nlohmann::json;

namespace {

// One server process for the whole file: made on first use, stopped by the last test case.
struct ServerProcess {
  std::filesystem::path dir;
  pid_t pid = -1;
  int port = 0;
  int stdout_fd = -1;

  ServerProcess() {
    char templ[] = "/tmp/agentserve_ws_test_XXXXXX";
    REQUIRE(::mkdtemp(templ) != nullptr);
    dir = templ;
    const std::string make = std::string("'") + AGENTSERVE_BINARY +
                             "' make-model --preset tiny --seed 3 --out '" + (dir / "tiny").string() +
                             "' >/dev/null 2>&1";
    REQUIRE(std::system(make.c_str()) == 0);
    int out[2];
    REQUIRE(::pipe(out) == 0);
    pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::dup2(out[1], STDOUT_FILENO);
      ::close(out[0]);
      ::close(out[1]);
      const std::string model = (dir / "tiny").string();
      ::execl(AGENTSERVE_BINARY, AGENTSERVE_BINARY, "serve", "--model", model.c_str(), "--port", "0",
              "--threads", "2", "--kv-cache-mb", "64", "--io-threads", "2", static_cast<char*>(nullptr));
      ::_exit(127);
    }
    ::close(out[1]);
    // stdout carries one line, "listening on 127.0.0.1:PORT", once the model is loaded and the port bound.
    const std::string prefix = "listening on 127.0.0.1:";
    std::string out_text;
    pollfd pfd{out[0], POLLIN, 0};
    while (out_text.find('\n') == std::string::npos && ::poll(&pfd, 1, 60000) > 0) {
      char buf[256];
      const ssize_t n = ::read(out[0], buf, sizeof buf);
      if (n <= 0) break;
      out_text.append(buf, static_cast<size_t>(n));
    }
    stdout_fd = out[0];  // kept open: a closed pipe would kill the server with SIGPIPE if it wrote again
    REQUIRE_MESSAGE(out_text.starts_with(prefix), "serve printed: " << out_text);
    port = std::stoi(out_text.substr(prefix.size()));
  }

  // SIGTERM, then the exit status (or -1 if it did not exit within 30 s).
  int stop() {
    ::kill(pid, SIGTERM);
    for (int i = 0; i < 3000; ++i) {
      int status = 0;
      if (::waitpid(pid, &status, WNOHANG) == pid) {
        pid = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return -1;
  }

  ~ServerProcess() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
    if (stdout_fd >= 0) ::close(stdout_fd);
    std::error_code ignored;
    std::filesystem::remove_all(dir, ignored);
  }
};

ServerProcess& server() {
  static ServerProcess process;
  return process;
}

struct HttpReply {
  int status;
  std::string body;
};

HttpReply get(const std::string& target) {
  net::io_context ioc;
  tcp::socket socket(ioc);
  socket.connect({net::ip::make_address("127.0.0.1"), static_cast<uint16_t>(server().port)});
  http::request<http::empty_body> req{http::verb::get, target, 11};
  req.set(http::field::host, "127.0.0.1");
  http::write(socket, req);
  beast::flat_buffer buffer;
  http::response<http::string_body> res;
  http::read(socket, buffer, res);
  return {static_cast<int>(res.result_int()), res.body()};
}

// A WebSocket client that checks the envelope of every event it reads.
class Client {
 public:
  Client() : ws_(ioc_) {
    ws_.next_layer().connect({net::ip::make_address("127.0.0.1"), static_cast<uint16_t>(server().port)});
    ws_.handshake("127.0.0.1", "/v1/ws");
    ws_.text(true);
  }

  void send(const std::string& text) { ws_.write(net::buffer(text)); }
  void send(const json& event) { send(event.dump()); }

  json read() {
    beast::flat_buffer buffer;
    ws_.read(buffer);
    json event = json::parse(beast::buffers_to_string(buffer.data()));
    REQUIRE(event.contains("type"));
    REQUIRE(event["event_id"].is_string());
    REQUIRE(event["seq"].is_number_unsigned());
    const uint64_t seq = event["seq"].get<uint64_t>();
    CHECK_MESSAGE(seq > last_seq_, "seq " << seq << " after " << last_seq_);
    last_seq_ = seq;
    return event;
  }

  // Reads until an event of `type`; the ones before it are returned in `before` when given.
  json read_until(const std::string& type, std::vector<json>* before = nullptr) {
    for (;;) {
      json event = read();
      if (event["type"] == type) return event;
      if (before) before->push_back(event);
    }
  }

  websocket::stream<tcp::socket>& ws() { return ws_; }

 private:
  net::io_context ioc_;
  websocket::stream<tcp::socket> ws_;
  uint64_t last_seq_ = 0;
};

json user_message(const std::string& text) {
  return {{"type", "conversation.item.create"},
          {"item", {{"type", "message"}, {"role", "user"}, {"content", text}}}};
}

json greedy_session(int max_tokens) {
  return {
      {"type", "session.create"},
      {"session", {{"agent_id", "test"}, {"sampling", {{"temperature", 0}, {"max_tokens", max_tokens}}}}}};
}

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
  Client client;
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
    Client client;
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
  Client client;
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
  Client client;
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
  CHECK(done["response"]["usage"]["completion_tokens"].get<int>() < 4000);
}

TEST_CASE("sessions are addressed by session_id, capped per connection, and gone once deleted") {
  Client client;
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

TEST_CASE("SIGTERM cancels a running response, reports it, closes the socket and exits 0") {
  Client client;
  client.send(greedy_session(4000));
  client.read_until("session.created");
  client.send(user_message("Go on"));
  client.read_until("conversation.item.created");
  client.send(json{{"type", "response.create"}});
  client.read_until("response.created");
  ::kill(server().pid, SIGTERM);
  const json done = client.read_until("response.done");
  CHECK(done["response"]["status"] != "failed");
  beast::flat_buffer buffer;
  beast::error_code ec;
  client.ws().read(buffer, ec);
  CHECK(ec == websocket::error::closed);
  CHECK(server().stop() == 0);
}
