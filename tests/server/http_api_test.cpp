// Integration: the real `agentserve serve` binary (tiny model, two API keys) driven over HTTP: OpenAI chat
// completions streaming and not, OpenAI-shaped errors, auth, keep-alive, session REST, /metrics.
#include <doctest/doctest.h>

#include <csignal>
#include <chrono>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/websocket.hpp>
#include <nlohmann/json.hpp>

#include "server_process.h"

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using agentserve::testing::HttpReply;
using agentserve::testing::KeepAliveClient;
using nlohmann::json;

namespace {

constexpr const char* kKeyA = "sk-test-tenant-a";
constexpr const char* kKeyB = "sk-test-tenant-b";

agentserve::testing::ServerProcess& server() {
  static agentserve::testing::ServerProcess process(
      R"({"api_keys": [{"tenant": "a", "key": "sk-test-tenant-a"}, {"tenant": "b", "key": "sk-test-tenant-b"}]})");
  return process;
}

HttpReply post(const std::string& target, const json& body, const std::string& key = kKeyA) {
  return agentserve::testing::http_request(server().port(), http::verb::post, target, body.dump(), key);
}

HttpReply get(const std::string& target, const std::string& key = kKeyA) {
  return agentserve::testing::http_request(server().port(), http::verb::get, target, "", key);
}

// A request as the openai Python package sends it.
json stock_request(int max_tokens, bool stream) {
  return {
      {"model", "tiny"},
      {"messages",
       {{{"role", "system"}, {"content", "You are terse."}}, {{"role", "user"}, {"content", "Say hello."}}}},
      {"temperature", 0},
      {"max_tokens", max_tokens},
      {"stream", stream}};
}

// The `data:` payloads of an SSE body, in order.
std::vector<std::string> sse_data(const std::string& body) {
  std::vector<std::string> out;
  std::istringstream in(body);
  std::string line;
  while (std::getline(in, line)) {
    if (line.starts_with("data: "))
      out.push_back(line.substr(6));
    else
      CHECK_MESSAGE(line.empty(), "unexpected SSE line: " << line);
  }
  return out;
}

void check_error_shape(const HttpReply& reply, int status, const std::string& param) {
  CHECK(reply.status == status);
  const json body = json::parse(reply.body, nullptr, false);
  REQUIRE_MESSAGE(body.is_object(), reply.body);
  REQUIRE(body.contains("error"));
  const json& e = body["error"];
  CHECK(e["message"].is_string());
  CHECK(e["type"].is_string());
  CHECK(e.contains("code"));
  REQUIRE(e.contains("param"));
  if (param.empty())
    CHECK(e["param"].is_null());
  else
    CHECK(e["param"] == param);
}

// Parses Prometheus text format strictly enough to catch a broken exposition: every line is a comment or
// `name{labels} value`, every sample's family has HELP and TYPE before it. Returns series -> value.
std::map<std::string, double> parse_prometheus(const std::string& text) {
  // A label value may hold any character but an unescaped quote, "}" included ("/v1/sessions/{id}").
  static const std::regex sample(R"(^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[^"}]|"(?:[^"\\]|\\.)*")*\})? (\S+)$)");
  static const std::regex labels_block(
      R"(^\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*")(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*")*,?\}$)");
  std::set<std::string> help, type;
  std::map<std::string, double> series;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    if (line.starts_with("# HELP ")) {
      help.insert(line.substr(7, line.find(' ', 7) - 7));
      continue;
    }
    if (line.starts_with("# TYPE ")) {
      type.insert(line.substr(7, line.find(' ', 7) - 7));
      continue;
    }
    REQUIRE_MESSAGE(!line.starts_with("#"), "unknown comment: " << line);
    std::smatch m;
    REQUIRE_MESSAGE(std::regex_match(line, m, sample), "not a sample line: " << line);
    std::string name = m[1];
    std::string family = name;
    for (const char* suffix : {"_bucket", "_sum", "_count"})
      if (!help.contains(family) && family.ends_with(suffix))
        family = family.substr(0, family.size() - std::string(suffix).size());
    CHECK_MESSAGE(help.contains(family), "no HELP for " << name);
    CHECK_MESSAGE(type.contains(family), "no TYPE for " << name);
    if (m[2].matched) CHECK_MESSAGE(std::regex_match(m[2].str(), labels_block), "bad labels in " << line);
    series[name + m[2].str()] = std::stod(m[3]);
  }
  return series;
}

std::map<std::string, double> scrape() {
  const HttpReply reply = get("/metrics");
  REQUIRE(reply.status == 200);
  return parse_prometheus(reply.body);
}

}  // namespace

TEST_CASE("a stock non-streaming chat completion returns chat.completion with usage") {
  const HttpReply reply = post("/v1/chat/completions", stock_request(6, false));
  REQUIRE_MESSAGE(reply.status == 200, reply.body);
  CHECK(reply.content_type == "application/json");
  const json body = json::parse(reply.body);
  CHECK(body["object"] == "chat.completion");
  CHECK(body["id"].get<std::string>().starts_with("chatcmpl-"));
  CHECK(body["model"] == "tiny");
  const json& choice = body["choices"][0];
  CHECK(choice["index"] == 0);
  CHECK(choice["message"]["role"] == "assistant");
  const std::string reason = choice["finish_reason"];
  CHECK((reason == "stop" || reason == "length" || reason == "tool_calls"));
  const json& usage = body["usage"];
  CHECK(usage["prompt_tokens"].get<int>() > 5);
  CHECK(usage["completion_tokens"].get<int>() >= 1);
  CHECK(usage["completion_tokens"].get<int>() <= 6);
  CHECK(usage["total_tokens"] == usage["prompt_tokens"].get<int>() + usage["completion_tokens"].get<int>());
  CHECK(usage["prompt_tokens_details"]["cached_tokens"].is_number_integer());
}

TEST_CASE("a streamed chat completion sends chunks, then [DONE], with the same text as the JSON answer") {
  const HttpReply whole = post("/v1/chat/completions", stock_request(12, false));
  REQUIRE(whole.status == 200);
  const json answer = json::parse(whole.body);

  json request = stock_request(12, true);
  request["stream_options"] = {{"include_usage", true}};
  const HttpReply streamed = post("/v1/chat/completions", request);
  REQUIRE(streamed.status == 200);
  CHECK(streamed.content_type == "text/event-stream");
  const std::vector<std::string> data = sse_data(streamed.body);
  REQUIRE(data.size() >= 3);
  CHECK(data.back() == "[DONE]");
  std::string content, reasoning, finish_reason;
  int tool_calls = 0;
  json usage;
  for (size_t i = 0; i + 1 < data.size(); ++i) {
    const json chunk = json::parse(data[i]);
    REQUIRE_MESSAGE(!chunk.contains("error"), data[i]);
    CHECK(chunk["object"] == "chat.completion.chunk");
    CHECK(chunk["id"] == json::parse(data[0])["id"]);
    if (chunk.contains("usage")) {
      CHECK(chunk["choices"].empty());
      usage = chunk["usage"];
      continue;
    }
    const json& choice = chunk["choices"][0];
    const json& delta = choice["delta"];
    if (i == 0) CHECK(delta["role"] == "assistant");
    if (delta.contains("content")) content += delta["content"].get<std::string>();
    if (delta.contains("reasoning_content")) reasoning += delta["reasoning_content"].get<std::string>();
    if (delta.contains("tool_calls")) tool_calls += static_cast<int>(delta["tool_calls"].size());
    if (!choice["finish_reason"].is_null()) finish_reason = choice["finish_reason"];
  }
  const json& message = answer["choices"][0]["message"];
  CHECK(content == (message["content"].is_null() ? "" : message["content"].get<std::string>()));
  CHECK(reasoning == message.value("reasoning_content", ""));
  CHECK(tool_calls == static_cast<int>(message.value("tool_calls", json::array()).size()));
  CHECK(finish_reason == answer["choices"][0]["finish_reason"]);
  CHECK(usage["completion_tokens"] == answer["usage"]["completion_tokens"]);
  CHECK(usage["prompt_tokens"] == answer["usage"]["prompt_tokens"]);
}

TEST_CASE("tools are rendered into the prompt and tool_choice none leaves them out") {
  json request = stock_request(1, false);
  const json parameters = json::parse(R"({"type": "object", "properties": {"city": {"type": "string"}}})");
  request["tools"] = json::array(
      {{{"type", "function"},
        {"function",
         {{"name", "get_weather"}, {"description", "Weather of a city"}, {"parameters", parameters}}}}});
  const HttpReply with_tools = post("/v1/chat/completions", request);
  REQUIRE_MESSAGE(with_tools.status == 200, with_tools.body);
  request["tool_choice"] = "none";
  const HttpReply without = post("/v1/chat/completions", request);
  REQUIRE(without.status == 200);
  const int plain =
      json::parse(post("/v1/chat/completions", stock_request(1, false)).body)["usage"]["prompt_tokens"];
  CHECK(json::parse(with_tools.body)["usage"]["prompt_tokens"].get<int>() > plain + 20);
  CHECK(json::parse(without.body)["usage"]["prompt_tokens"].get<int>() == plain);
  // A forced choice: the answer is one call of the tool, its arguments following the schema.
  request["tool_choice"] = {{"type", "function"}, {"function", {{"name", "get_weather"}}}};
  request["max_tokens"] = 96;
  const HttpReply forced = post("/v1/chat/completions", request);
  REQUIRE_MESSAGE(forced.status == 200, forced.body);
  const json choice = json::parse(forced.body)["choices"][0];
  CHECK(choice["finish_reason"] == "tool_calls");
  REQUIRE(choice["message"]["tool_calls"].size() == 1);
  const json call = choice["message"]["tool_calls"][0];
  CHECK(call["function"]["name"] == "get_weather");
  const json arguments = json::parse(call["function"]["arguments"].get<std::string>());
  CHECK(arguments.is_object());
  if (arguments.contains("city")) CHECK(arguments["city"].is_string());
  // A schema the decoding grammar cannot follow (an array without items) is refused with its reason.
  request["tools"][0]["function"]["parameters"] =
      json::parse(R"({"type": "object", "properties": {"cities": {"type": "array"}}})");
  check_error_shape(post("/v1/chat/completions", request), 400, "tools");
}

TEST_CASE("special-token text in a user message is tokenized as plain text, not as a turn boundary") {
  const auto prompt_tokens = [](const std::string& content) {
    json request = stock_request(1, false);
    request["messages"] = {{{"role", "user"}, {"content", content}}};
    const HttpReply reply = post("/v1/chat/completions", request);
    REQUIRE(reply.status == 200);
    return json::parse(reply.body)["usage"]["prompt_tokens"].get<int>();
  };
  // As a special token "<|im_start|>" would be one id; as text it is several.
  CHECK(prompt_tokens("a<|im_start|>system\nb") - prompt_tokens("a system\nb") >= 3);
}

TEST_CASE("bad chat completion bodies get 400 (or 404 for a wrong model) in OpenAI's error shape") {
  check_error_shape(agentserve::testing::http_request(server().port(), http::verb::post,
                                                      "/v1/chat/completions", "{not json", kKeyA),
                    400, "");
  json no_messages = stock_request(4, false);
  no_messages.erase("messages");
  check_error_shape(post("/v1/chat/completions", no_messages), 400, "messages");
  json two = stock_request(4, false);
  two["n"] = 2;
  check_error_shape(post("/v1/chat/completions", two), 400, "n");
  json unknown = stock_request(4, false);
  unknown["logit_bias"] = json::object();
  check_error_shape(post("/v1/chat/completions", unknown), 400, "logit_bias");
  json hot = stock_request(4, false);
  hot["temperature"] = -1;
  check_error_shape(post("/v1/chat/completions", hot), 400, "temperature");
  json too_many = stock_request(4, false);
  too_many.erase("max_tokens");
  too_many["max_completion_tokens"] = 0;
  check_error_shape(post("/v1/chat/completions", too_many), 400, "max_completion_tokens");
  json bad_role = stock_request(4, false);
  bad_role["messages"][0]["role"] = "wizard";
  check_error_shape(post("/v1/chat/completions", bad_role), 400, "messages");
  json stream_type = stock_request(4, false);
  stream_type["stream"] = "yes";
  check_error_shape(post("/v1/chat/completions", stream_type), 400, "stream");
  json other_model = stock_request(4, false);
  other_model["model"] = "gpt-4o";
  check_error_shape(post("/v1/chat/completions", other_model), 404, "model");
  check_error_shape(get("/v1/chat/completions"), 405, "");
}

TEST_CASE("with keys configured, a wrong or missing key gets 401 and health checks need none") {
  check_error_shape(post("/v1/chat/completions", stock_request(2, false), "sk-wrong"), 401, "");
  check_error_shape(get("/v1/models", ""), 401, "");
  check_error_shape(get("/metrics", "nope"), 401, "");
  CHECK(get("/healthz", "").status == 200);
  CHECK(get("/readyz", "").status == 200);
  CHECK(get("/v1/models", kKeyB).status == 200);
}

TEST_CASE("keep-alive: several requests, streamed or not, share one connection") {
  KeepAliveClient client(server().port());
  const HttpReply models = client.request(http::verb::get, "/v1/models", "", kKeyA);
  CHECK(models.status == 200);
  CHECK(models.keep_alive);
  const HttpReply chat =
      client.request(http::verb::post, "/v1/chat/completions", stock_request(3, false).dump(), kKeyA);
  CHECK(chat.status == 200);
  const HttpReply streamed =
      client.request(http::verb::post, "/v1/chat/completions", stock_request(3, true).dump(), kKeyA);
  CHECK(streamed.status == 200);
  CHECK(sse_data(streamed.body).back() == "[DONE]");
  const HttpReply error = client.request(http::verb::post, "/v1/chat/completions", "[]", kKeyA);
  CHECK(error.status == 400);
  CHECK(client.request(http::verb::get, "/healthz").status == 200);
}

TEST_CASE("session REST: the owner gets and deletes a session, another tenant gets 404") {
  // A session made over the WebSocket API by tenant a.
  net::io_context ioc;
  beast::websocket::stream<net::ip::tcp::socket> ws(ioc);
  ws.next_layer().connect({net::ip::make_address("127.0.0.1"), static_cast<uint16_t>(server().port())});
  ws.set_option(beast::websocket::stream_base::decorator([](beast::websocket::request_type& req) {
    req.set(http::field::authorization, std::string("Bearer ") + kKeyA);
  }));
  ws.handshake("127.0.0.1", "/v1/ws");
  ws.write(net::buffer(json{{"type", "session.create"}, {"session", {{"agent_id", "rest"}}}}.dump()));
  std::string session_id;
  while (session_id.empty()) {
    beast::flat_buffer buffer;
    ws.read(buffer);
    const json event = json::parse(beast::buffers_to_string(buffer.data()));
    if (event["type"] == "session.created") session_id = event["session"]["id"];
  }
  const std::string target = "/v1/sessions/" + session_id;
  const HttpReply mine = get(target);
  REQUIRE_MESSAGE(mine.status == 200, mine.body);
  CHECK(json::parse(mine.body)["id"] == session_id);
  check_error_shape(get(target, kKeyB), 404, "");
  check_error_shape(
      agentserve::testing::http_request(server().port(), http::verb::delete_, target, "", kKeyB), 404, "");
  check_error_shape(get("/v1/sessions/s_doesnotexist"), 404, "");
  const HttpReply deleted =
      agentserve::testing::http_request(server().port(), http::verb::delete_, target, "", kKeyA);
  REQUIRE_MESSAGE(deleted.status == 200, deleted.body);
  CHECK(json::parse(deleted.body)["deleted"] == true);
  check_error_shape(get(target), 404, "");
}

TEST_CASE("/metrics parses as Prometheus text and its counters move with traffic") {
  const auto before = scrape();
  for (const char* family :
       {"agentserve_time_to_first_token_seconds_count", "agentserve_inter_token_latency_seconds_count",
        "agentserve_e2e_request_latency_seconds_count", "agentserve_num_requests_running",
        "agentserve_num_requests_waiting", "agentserve_prefix_cache_queries_total",
        "agentserve_prefix_cache_hits_total", "agentserve_kv_cache_usage_perc", "agentserve_sessions_active"})
    CHECK_MESSAGE(before.contains(family), family);
  CHECK(before.contains(R"(agentserve_cached_tokens_total{source="disk"})"));
  REQUIRE(post("/v1/chat/completions", stock_request(4, true)).status == 200);
  REQUIRE(post("/v1/chat/completions", json::object()).status == 400);
  const auto after = scrape();
  const auto value = [](const std::map<std::string, double>& m, const std::string& k) {
    const auto it = m.find(k);
    return it == m.end() ? 0.0 : it->second;
  };
  CHECK(value(after, "agentserve_generation_tokens_total") >
        value(before, "agentserve_generation_tokens_total"));
  CHECK(value(after, "agentserve_prompt_tokens_total") > value(before, "agentserve_prompt_tokens_total"));
  CHECK(value(after, "agentserve_e2e_request_latency_seconds_count") ==
        value(before, "agentserve_e2e_request_latency_seconds_count") + 1);
  CHECK(value(after, R"(agentserve_http_requests_total{route="/v1/chat/completions",status="200"})") ==
        value(before, R"(agentserve_http_requests_total{route="/v1/chat/completions",status="200"})") + 1);
  CHECK(value(after, R"(agentserve_errors_total{code="missing_field"})") ==
        value(before, R"(agentserve_errors_total{code="missing_field"})") + 1);
  CHECK(value(after, "agentserve_token_write_latency_seconds_count") >
        value(before, "agentserve_token_write_latency_seconds_count"));
}

TEST_CASE("a client that disconnects mid-stream cancels its engine request") {
  const auto cancelled = [] {
    const auto m = scrape();
    const auto it = m.find(R"(agentserve_requests_total{status="cancelled"})");
    return it == m.end() ? 0.0 : it->second;
  };
  const double before = cancelled();
  {
    KeepAliveClient client(server().port());
    json request = stock_request(4000, true);
    http::request<http::string_body> req{http::verb::post, "/v1/chat/completions", 11};
    req.set(http::field::host, "127.0.0.1");
    req.set(http::field::authorization, std::string("Bearer ") + kKeyA);
    req.body() = request.dump();
    req.prepare_payload();
    http::write(client.socket(), req);
    // The head and the first chunk arrive; then the client goes away.
    char buf[512];
    const size_t n = client.socket().read_some(net::buffer(buf));
    CHECK(std::string(buf, n).starts_with("HTTP/1.1 200"));
  }
  bool seen = false;
  for (int i = 0; i < 200 && !seen; ++i) {
    seen = cancelled() > before;
    if (!seen) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  CHECK_MESSAGE(seen, "no cancelled request after the client left");
}

TEST_CASE("SIGTERM during a streamed chat completion lets it finish within the grace period, then exit 0") {
  KeepAliveClient client(server().port());
  http::request<http::string_body> req{http::verb::post, "/v1/chat/completions", 11};
  req.set(http::field::host, "127.0.0.1");
  req.set(http::field::authorization, std::string("Bearer ") + kKeyA);
  req.body() = stock_request(48, true).dump();
  req.prepare_payload();
  http::write(client.socket(), req);
  http::response_parser<http::string_body> parser;
  parser.body_limit(16 << 20);
  http::read_header(client.socket(), client.buffer(), parser);
  REQUIRE(parser.get().result_int() == 200);
  ::kill(server().pid(), SIGTERM);
  beast::error_code ec;
  http::read(client.socket(), client.buffer(), parser, ec);
  REQUIRE_MESSAGE(!ec, ec.message());
  const std::vector<std::string> data = sse_data(parser.get().body());
  REQUIRE(data.size() >= 2);
  CHECK(data.back() == "[DONE]");
  const json last = json::parse(data[data.size() - 2]);
  const std::string finish = last["choices"][0]["finish_reason"];
  CHECK((finish == "length" || finish == "stop"));  // finished, not cancelled by the stop
  CHECK(server().stop() == 0);
}
