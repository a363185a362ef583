// Integration: the real `agentserve serve` binary with the example moderation webhook
// (examples/moderation_service.py) on loopback, driven through /v1/chat/completions and the WebSocket. Every
// byte the client receives is checked: a flagged window's text never arrives, failures block under
// fail-closed and pass under a tenant's fail-open, the Python service accepts our Standard Webhooks
// signatures, and /metrics moves. The tiny random model's greedy output is learned first, then one of its
// words is flagged.
#include <doctest/doctest.h>

#include <cctype>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <atomic>
#include <mutex>
#include <thread>

#include <boost/asio/connect.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <nlohmann/json.hpp>

#include "../agent/moderation_service_process.h"
#include "server_process.h"
#include "ws_test_client.h"

namespace http = boost::beast::http;
namespace net = boost::asio;
using agentserve::testing::ServerProcess;
using nlohmann::json;

namespace {

constexpr const char* kStrictKey = "sk-strict";
constexpr const char* kLenientKey = "sk-lenient";
constexpr const char* kSecret = "whsec_c2VjcmV0LWZvci10ZXN0cw==";  // base64("secret-for-tests")
constexpr int kWindow = 4;
constexpr int kMaxTokens = 24;

// The example webhook as a child process (the moderation tests' shared helper), plus its request count.
struct ModerationService : agentserve::agent::testing::ModerationServiceProcess {
  explicit ModerationService(std::vector<std::string> extra)
      : ModerationServiceProcess(AGENTSERVE_SOURCE_DIR "/examples/moderation_service.py", std::move(extra)) {
    REQUIRE_MESSAGE(ok(), "examples/moderation_service.py did not announce its port");
  }
  int requests() const {
    const auto reply = agentserve::testing::http_request(port(), http::verb::get, "/stats");
    return json::parse(reply.body)["requests"].get<int>();
  }
};

// A server whose tenant "strict" follows the default policy (fail-closed) and "lenient" has fail-open.
std::string server_config(const std::string& url, const std::string& extra_moderation = "") {
  return R"({"api_keys": [{"tenant": "strict", "key": "sk-strict"}, {"tenant": "lenient", "key": "sk-lenient"}],
             "tenants": {"lenient": {"moderation_fail_open": true}},
             "moderation": {"url": ")" +
         url + R"(", "secrets": [")" + kSecret + R"("], "window_tokens": 4, "overlap_tokens": 1,
                            "timeout_ms": 300)" +
         extra_moderation + "}}";
}

json chat_request(bool stream, const std::string& user = "Say hello.") {
  return {
      {"model", "tiny"},          {"messages", {{{"role", "user"}, {"content", user}}}},  {"temperature", 0},
      {"max_tokens", kMaxTokens}, {"chat_template_kwargs", {{"enable_thinking", false}}}, {"stream", stream}};
}

// Every byte of one exchange (Connection: close, read to EOF), so nothing the server sent escapes a check.
struct RawReply {
  std::string bytes;  // as received, headers included
  int status = 0;
  std::string body;  // de-chunked
};

RawReply raw_post(int port, const json& body, const std::string& key) {
  net::io_context ioc;
  net::ip::tcp::socket socket(ioc);
  socket.connect({net::ip::make_address("127.0.0.1"), static_cast<uint16_t>(port)});
  const std::string payload = body.dump();
  const std::string request =
      "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + key +
      "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(payload.size()) +
      "\r\nConnection: close\r\n\r\n" + payload;
  net::write(socket, net::buffer(request));
  RawReply reply;
  boost::system::error_code ec;
  char buf[4096];
  for (;;) {
    const size_t n = socket.read_some(net::buffer(buf), ec);
    reply.bytes.append(buf, n);
    if (ec) break;
  }
  const size_t head_end = reply.bytes.find("\r\n\r\n");
  REQUIRE(head_end != std::string::npos);
  const std::string head = reply.bytes.substr(0, head_end);
  reply.status = std::stoi(head.substr(9, 3));
  std::string rest = reply.bytes.substr(head_end + 4);
  if (head.find("Transfer-Encoding: chunked") == std::string::npos) {
    reply.body = rest;
    return reply;
  }
  size_t at = 0;
  for (;;) {
    const size_t eol = rest.find("\r\n", at);
    REQUIRE(eol != std::string::npos);
    const size_t size = std::stoul(rest.substr(at, eol - at), nullptr, 16);
    if (size == 0) break;
    reply.body += rest.substr(eol + 2, size);
    at = eol + 2 + size + 2;
  }
  return reply;
}

// The SSE events of a streamed body: the JSON objects, then whether it ended with [DONE].
struct Stream {
  std::vector<json> events;
  bool done = false;
  std::string content;  // every content delta, concatenated
  std::vector<std::string> deltas;
  std::string finish_reason;
  json error;
};

Stream parse_stream(const std::string& body) {
  Stream s;
  std::istringstream in(body);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.starts_with("data: ")) continue;
    const std::string data = line.substr(6);
    if (data == "[DONE]") {
      s.done = true;
      continue;
    }
    json event = json::parse(data);
    if (event.contains("error")) s.error = event["error"];
    if (event.contains("choices") && !event["choices"].empty()) {
      const json& choice = event["choices"][0];
      if (choice["delta"].contains("content") && !choice["delta"]["content"].get<std::string>().empty()) {
        s.deltas.push_back(choice["delta"]["content"]);
        s.content += s.deltas.back();
      }
      if (!choice["finish_reason"].is_null()) s.finish_reason = choice["finish_reason"];
    }
    s.events.push_back(std::move(event));
  }
  return s;
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// The value of one series in a /metrics text (0 when absent).
double metric(int port, const std::string& series) {
  const auto reply = agentserve::testing::http_request(port, http::verb::get, "/metrics", "", kStrictKey);
  REQUIRE(reply.status == 200);
  std::istringstream in(reply.body);
  std::string line;
  while (std::getline(in, line))
    if (line.starts_with(series + " ")) return std::stod(line.substr(series.size() + 1));
  return 0;
}

// The greedy output without moderation, learned once: its deltas (one per token while the stream is 1:1)
// and full text.
struct Baseline {
  std::vector<std::string> deltas;
  std::string content;
  int completion_tokens = 0;
};

const Baseline& baseline() {
  static const Baseline b = [] {
    ServerProcess server(
        R"({"api_keys": [{"tenant": "strict", "key": "sk-strict"}, {"tenant": "lenient", "key": "sk-lenient"}]})");
    Baseline out;
    const RawReply reply = raw_post(server.port(), chat_request(true), kStrictKey);
    REQUIRE(reply.status == 200);
    const Stream s = parse_stream(reply.body);
    REQUIRE(s.done);
    REQUIRE(s.error.is_null());
    out.deltas = s.deltas;
    out.content = s.content;
    const RawReply whole = raw_post(server.port(), chat_request(false), kStrictKey);
    REQUIRE(whole.status == 200);
    const json body = json::parse(whole.body);
    CHECK(body["choices"][0]["message"]["content"] == out.content);
    out.completion_tokens = body["usage"]["completion_tokens"];
    return out;
  }();
  return b;
}

// A delta of the baseline worth flagging: plain letters, not seen earlier in the output or in the prompt, in
// the third window or later (so earlier windows pass and are streamed).
struct FlagChoice {
  size_t index = 0;
  std::string word;
};

std::optional<FlagChoice> choose_flag(const Baseline& b) {
  std::string before;
  for (size_t i = 0; i < b.deltas.size(); ++i) {
    std::string word = b.deltas[i];
    while (!word.empty() && word.front() == ' ') word.erase(word.begin());
    bool plain = word.size() >= 3;
    for (char c : word) plain = plain && std::isalpha(static_cast<unsigned char>(c));
    const std::string lw = lower(word);
    if (i >= 2 * kWindow && plain && lower(before).find(lw) == std::string::npos &&
        lower(b.content.substr(before.size() + b.deltas[i].size())).find(lw) == std::string::npos &&
        std::string("say hello.").find(lw) == std::string::npos)
      return FlagChoice{i, word};
    before += b.deltas[i];
  }
  return std::nullopt;
}

// One WebSocket response to `message` in a new greedy session: every frame, raw, through response.done.
std::vector<std::string> ws_response(int port, const std::string& key, const std::string& message) {
  agentserve::testing::Client client(port, key);
  std::vector<std::string> frames;
  auto read_until = [&](const std::string& type) {
    for (;;) {
      boost::beast::flat_buffer buffer;
      client.ws().read(buffer);
      frames.push_back(boost::beast::buffers_to_string(buffer.data()));
      if (json::parse(frames.back())["type"] == type) return;
    }
  };
  client.send(agentserve::testing::greedy_session(kMaxTokens));
  read_until("session.created");
  client.send(agentserve::testing::user_message(message));
  read_until("conversation.item.created");
  client.send(json{{"type", "response.create"}});
  read_until("response.done");
  return frames;
}

// The text and reasoning deltas among `frames`, in order.
std::vector<std::string> ws_deltas(const std::vector<std::string>& frames) {
  std::vector<std::string> deltas;
  for (const std::string& frame : frames) {
    const json event = json::parse(frame);
    if (event["type"] == "response.output_text.delta" || event["type"] == "response.reasoning.delta")
      deltas.push_back(event["delta"]);
  }
  return deltas;
}

json ws_event(const std::vector<std::string>& frames, const std::string& type) {
  for (const std::string& frame : frames) {
    json event = json::parse(frame);
    if (event["type"] == type) return event;
  }
  return nullptr;
}

}  // namespace

TEST_CASE("clean output passes moderation, streams in windows, and the service accepts our signatures") {
  const Baseline& b = baseline();
  CHECK(!b.content.empty());
  ModerationService service({"--secret", kSecret});
  ServerProcess server(server_config(service.url()));
  const RawReply reply = raw_post(server.port(), chat_request(true), kStrictKey);
  REQUIRE(reply.status == 200);
  const Stream s = parse_stream(reply.body);
  CHECK(s.done);
  CHECK(s.error.is_null());
  CHECK(s.content == b.content);
  // Text is released a window at a time, never token by token ahead of its check.
  CHECK(s.deltas.size() <= static_cast<size_t>((b.completion_tokens + kWindow - 1) / kWindow));
  CHECK((s.finish_reason == "length" || s.finish_reason == "stop"));
  // The service verifies every signature (401 otherwise, which would block): each window was one check.
  CHECK(service.requests() >= (b.completion_tokens + kWindow - 1) / kWindow);
  CHECK(metric(server.port(),
               R"(agentserve_moderation_checks_total{kind="output_text",verdict="allowed"})") >= 1);
  CHECK(metric(server.port(), "agentserve_moderation_latency_seconds_count") >= 1);
  CHECK(metric(server.port(), "agentserve_moderation_blocked_responses_total") == 0);
}

TEST_CASE("a wrong signing secret is refused by the service and blocks under fail-closed") {
  ModerationService service({"--secret", "whsec_b3RoZXItc2VjcmV0"});
  ServerProcess server(server_config(service.url()));
  const RawReply reply = raw_post(server.port(), chat_request(true), kStrictKey);
  REQUIRE(reply.status == 200);
  const Stream s = parse_stream(reply.body);
  CHECK(s.content.empty());
  CHECK(s.finish_reason == "content_filter");
  CHECK(s.error["code"] == "moderation_blocked");
  CHECK(s.error["reason"] == "http_status");
}

TEST_CASE("a flagged window blocks: no byte of it or after it reaches the client, stream or not") {
  const Baseline& b = baseline();
  const auto flag = choose_flag(b);
  // The model (seed 3) and greedy decoding are deterministic, so a word is always there to flag.
  REQUIRE_MESSAGE(flag.has_value(), "no flaggable word in: " << b.content);
  MESSAGE("flagging '" << flag->word << "' (token " << flag->index << " of " << b.completion_tokens << ")");
  ModerationService service({"--secret", kSecret, "--flag", flag->word + "=violence"});
  ServerProcess server(server_config(service.url(), R"(, "check_input": true)"));

  const RawReply reply = raw_post(server.port(), chat_request(true), kStrictKey);
  REQUIRE(reply.status == 200);
  CHECK_MESSAGE(lower(reply.bytes).find(lower(flag->word)) == std::string::npos, reply.bytes);
  const Stream s = parse_stream(reply.body);
  CHECK(s.done);
  CHECK(s.finish_reason == "content_filter");
  CHECK(s.error["code"] == "moderation_blocked");
  CHECK(s.error["reason"] == "flagged");
  CHECK(s.error["categories"] == json::array({"violence"}));
  // What arrived is the output before the flagged window, nothing of the window itself.
  CHECK(b.content.starts_with(s.content));
  std::string passed;
  const size_t window_start = flag->index / kWindow * kWindow;
  for (size_t i = 0; i < window_start; ++i) passed += b.deltas[i];
  if (static_cast<int>(b.deltas.size()) == b.completion_tokens)  // one delta per token: windows are exact
    CHECK(s.content == passed);
  else
    CHECK(s.content.size() <= passed.size());

  const RawReply whole = raw_post(server.port(), chat_request(false), kStrictKey);
  REQUIRE(whole.status == 200);
  CHECK(lower(whole.bytes).find(lower(flag->word)) == std::string::npos);
  const json body = json::parse(whole.body);
  CHECK(body["choices"][0]["finish_reason"] == "content_filter");
  CHECK(body["choices"][0]["message"]["content"] == "");
  CHECK(body["choices"][0]["content_filter_results"]["categories"] == json::array({"violence"}));

  // check_input: the same word typed by the user is refused before anything is generated.
  const RawReply input = raw_post(server.port(), chat_request(false, "please " + flag->word), kStrictKey);
  CHECK(input.status == 400);
  CHECK(json::parse(input.body)["error"]["code"] == "moderation_blocked");

  CHECK(metric(server.port(), "agentserve_moderation_blocked_responses_total") == 3);
  CHECK(metric(server.port(),
               R"(agentserve_moderation_checks_total{kind="output_text",verdict="flagged"})") >= 2);
  CHECK(metric(server.port(), R"(agentserve_moderation_checks_total{kind="input",verdict="flagged"})") == 1);
  CHECK(metric(server.port(), R"(agentserve_requests_total{status="blocked"})") == 2);
}

TEST_CASE("webhook failures block with their reason under fail-closed and pass under a fail-open tenant") {
  const Baseline& b = baseline();
  struct Mode {
    const char* name;
    std::vector<std::string> service_args;  // empty: no service at all (connection refused)
    const char* reason;
  };
  const std::vector<Mode> modes = {
      {"webhook down", {}, "connection"},
      {"slow past the timeout", {"--delay-ms", "1500"}, "timeout"},
      {"HTTP 500", {"--status", "500"}, "http_status"},
      {"garbage JSON", {"--garbage"}, "bad_response"},
  };
  for (const Mode& mode : modes) {
    CAPTURE(mode.name);
    std::optional<ModerationService> service;
    std::string url;
    if (mode.service_args.empty()) {
      // A port that was just free: nothing listens there.
      net::io_context ioc;
      net::ip::tcp::acceptor probe(ioc, {net::ip::make_address("127.0.0.1"), 0});
      url = "http://127.0.0.1:" + std::to_string(probe.local_endpoint().port()) + "/moderate";
    } else {
      service.emplace(mode.service_args);
      url = service->url();
    }
    ServerProcess server(server_config(url));
    const RawReply strict = raw_post(server.port(), chat_request(true), kStrictKey);
    REQUIRE(strict.status == 200);
    const Stream s = parse_stream(strict.body);
    CHECK(s.content.empty());
    CHECK(s.finish_reason == "content_filter");
    CHECK(s.error["reason"] == mode.reason);
    CHECK(s.done);

    const RawReply lenient = raw_post(server.port(), chat_request(true), kLenientKey);
    REQUIRE(lenient.status == 200);
    const Stream l = parse_stream(lenient.body);
    CHECK(l.error.is_null());
    CHECK(l.content == b.content);
    // The WebSocket's moderation.blocked names the same reason.
    const std::vector<std::string> frames = ws_response(server.port(), kStrictKey, "Say hello.");
    const json blocked = ws_event(frames, "moderation.blocked");
    REQUIRE(blocked.is_object());
    CHECK(blocked["reason"] == mode.reason);
    CHECK(blocked["categories"] == json::array());
    CHECK(ws_event(frames, "response.done")["response"]["status"] == "blocked");
    CHECK(ws_deltas(frames).empty());
    CHECK(metric(server.port(),
                 std::string("agentserve_moderation_failures_total{reason=\"") + mode.reason + "\"}") >= 2);
    CHECK(metric(server.port(),
                 R"(agentserve_moderation_checks_total{kind="output_text",verdict="failed_passed"})") >= 1);
  }
}

TEST_CASE("WebSocket: a flagged window blocks the response and no frame carries its text") {
  // The session's own prompt differs from the chat completion's: learn its greedy output without moderation.
  Baseline b;
  {
    ServerProcess plain(R"({"api_keys": [{"tenant": "strict", "key": "sk-strict"}]})");
    b.deltas = ws_deltas(ws_response(plain.port(), kStrictKey, "Say hello."));
    for (const std::string& d : b.deltas) b.content += d;
    b.completion_tokens = static_cast<int>(b.deltas.size());
  }
  const auto flag = choose_flag(b);
  REQUIRE_MESSAGE(flag.has_value(), "no flaggable word in: " << b.content);
  MESSAGE("flagging '" << flag->word << "' (delta " << flag->index << " of " << b.deltas.size() << ")");
  ModerationService service({"--secret", kSecret, "--flag", flag->word + "=violence"});
  ServerProcess server(server_config(service.url()));
  const std::vector<std::string> frames = ws_response(server.port(), kStrictKey, "Say hello.");
  std::string received;
  for (const std::string& frame : frames) {
    CHECK_MESSAGE(lower(frame).find(lower(flag->word)) == std::string::npos, frame);
    received += frame;
  }
  std::string streamed;
  for (const std::string& d : ws_deltas(frames)) streamed += d;
  CHECK(b.content.starts_with(streamed));
  std::string passed;
  for (size_t i = 0; i < flag->index / kWindow * kWindow; ++i) passed += b.deltas[i];
  CHECK(streamed.size() <= passed.size());
  const json blocked = ws_event(frames, "moderation.blocked");
  REQUIRE(blocked.is_object());
  CHECK(blocked["categories"] == json::array({"violence"}));
  CHECK(blocked["reason"] == "flagged");
  CHECK(ws_event(frames, "response.done")["response"]["status"] == "blocked");
  CHECK(metric(server.port(),
               R"(agentserve_moderation_checks_total{kind="output_text",verdict="flagged"})") >= 1);
}

TEST_CASE("the --moderation-* flags configure moderation; a typo in the moderation section stops serve") {
  const Baseline& b = baseline();
  ModerationService service({"--secret", kSecret});
  // No config file: the flags alone. --moderation-window 4 pulls the default overlap (16) down to 1.
  ServerProcess server(
      "", {"--moderation-url", service.url(), "--moderation-secret", "not-this-one", "--moderation-secret",
           kSecret, "--moderation-window", "4", "--moderation-timeout-ms", "500"});
  const auto reply = agentserve::testing::http_request(server.port(), http::verb::post,
                                                       "/v1/chat/completions", chat_request(false).dump());
  REQUIRE_MESSAGE(reply.status == 200, reply.body);
  CHECK(json::parse(reply.body)["choices"][0]["message"]["content"] == b.content);
  CHECK(service.requests() >= (b.completion_tokens + kWindow - 1) / kWindow);

  const std::string config = server.dir() / "bad.json";
  FILE* f = std::fopen(config.c_str(), "w");
  REQUIRE(f != nullptr);
  std::fputs(R"({"moderation": {"url": "http://127.0.0.1:9/", "windw_tokens": 8}})", f);
  std::fclose(f);
  const std::string command = std::string("'") + AGENTSERVE_BINARY +
                              "' serve --model /nonexistent --config '" + config + "' --port 0 > '" + config +
                              ".out' 2>&1";
  CHECK(std::system(command.c_str()) != 0);
  std::ifstream out(config + ".out");
  const std::string printed((std::istreambuf_iterator<char>(out)), std::istreambuf_iterator<char>());
  CHECK_MESSAGE(printed.find("windw_tokens") != std::string::npos, printed);
}

namespace {

// A webhook inside the test: records every request's signature headers and body and answers "not flagged".
// One thread per connection (the server's client keeps several alive).
class RecordingWebhook {
 public:
  struct Seen {
    std::string id, timestamp, signature, body;
  };

  RecordingWebhook() : acceptor_(ioc_, {net::ip::make_address("127.0.0.1"), 0}) {
    accepter_ = std::thread([this] {
      for (;;) {
        net::ip::tcp::socket socket(ioc_);
        boost::system::error_code ec;
        acceptor_.accept(socket, ec);
        if (ec || stopping_) return;
        connections_.emplace_back([this, s = std::move(socket)]() mutable { serve(std::move(s)); });
      }
    });
  }
  ~RecordingWebhook() {
    stopping_ = true;
    boost::system::error_code ignored;
    net::ip::tcp::socket wake(ioc_);
    wake.connect(acceptor_.local_endpoint(), ignored);
    accepter_.join();
    wake.close(ignored);
    for (auto& t : connections_) t.join();
  }
  int port() const { return acceptor_.local_endpoint().port(); }
  std::vector<Seen> seen() {
    std::lock_guard lock(mutex_);
    return seen_;
  }

 private:
  void serve(net::ip::tcp::socket socket) {
    boost::beast::flat_buffer buffer;
    for (;;) {
      http::request<http::string_body> req;
      boost::system::error_code ec;
      http::read(socket, buffer, req, ec);
      if (ec) return;
      {
        std::lock_guard lock(mutex_);
        seen_.push_back({std::string(req["webhook-id"]), std::string(req["webhook-timestamp"]),
                         std::string(req["webhook-signature"]), req.body()});
      }
      http::response<http::string_body> res{http::status::ok, 11};
      res.set(http::field::content_type, "application/json");
      res.body() = R"({"results": [{"flagged": false, "categories": {}, "category_scores": {}}]})";
      res.keep_alive(true);
      res.prepare_payload();
      http::write(socket, res, ec);
      if (ec) return;
    }
  }

  net::io_context ioc_;
  net::ip::tcp::acceptor acceptor_;
  std::atomic<bool> stopping_{false};
  std::thread accepter_;
  std::vector<std::thread> connections_;  // touched only by the accepting thread until it is joined
  std::mutex mutex_;
  std::vector<Seen> seen_;
};

// Standard Webhooks, from the spec: base64(HMAC-SHA256(key, id + "." + timestamp + "." + body)).
std::string spec_signature(const std::string& key, const RecordingWebhook::Seen& seen) {
  const std::string message = seen.id + "." + seen.timestamp + "." + seen.body;
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int mac_size = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(message.data()), message.size(), mac, &mac_size);
  std::string encoded(4 * ((mac_size + 2) / 3), '\0');
  EVP_EncodeBlock(reinterpret_cast<unsigned char*>(encoded.data()), mac, static_cast<int>(mac_size));
  return "v1," + encoded;
}

}  // namespace

TEST_CASE("the signature the webhook receives is the one the Standard Webhooks spec computes") {
  RecordingWebhook webhook;  // declared first: the server (and its connections) go before it
  ServerProcess server(server_config("http://127.0.0.1:" + std::to_string(webhook.port()) + "/moderate"));
  const RawReply reply = raw_post(server.port(), chat_request(false), kStrictKey);
  REQUIRE(reply.status == 200);
  const auto seen = webhook.seen();
  REQUIRE(!seen.empty());
  for (const auto& s : seen) {
    CHECK(s.id.starts_with("msg_"));
    CHECK(std::abs(std::stoll(s.timestamp) - static_cast<long long>(std::time(nullptr))) < 300);
    // "secret-for-tests" is what kSecret's base64 spells.
    CHECK(s.signature == spec_signature("secret-for-tests", s));
    const json body = json::parse(s.body);
    CHECK(body["input"].is_string());
    CHECK(body["model"] == "omni-moderation-latest");
    CHECK(body["metadata"]["tenant"] == "strict");
    CHECK(body["metadata"]["kind"] == "output_text");
    CHECK(body["metadata"]["response_id"].get<std::string>().starts_with("chatcmpl-"));
  }
}
