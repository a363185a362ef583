#include "agent/moderation_client.h"

#include <future>

#include <doctest/doctest.h>
#include <boost/asio/io_context.hpp>
#include <nlohmann/json.hpp>

#include "tests/agent/moderation_client_harness.h"
#include "tests/agent/moderation_service_process.h"

using agentserve::agent::ModerationClient;
using agentserve::agent::ModerationFailure;
using agentserve::agent::ModerationKind;
using agentserve::agent::ModerationOptions;
using agentserve::agent::ModerationRequest;
using agentserve::agent::ModerationStats;
using agentserve::agent::ModerationVerdict;
using agentserve::agent::parse_moderation_response;

namespace {

constexpr const char* kSecret = "whsec_c2VjcmV0LWtleS1ieXRlcy0wMTIzNDU2Nzg5";

// examples/moderation_service.py with `args`; the test stops here if it does not come up.
struct ModerationService : agentserve::agent::testing::ModerationServiceProcess {
  explicit ModerationService(std::vector<std::string> args)
      : ModerationServiceProcess(AGENTSERVE_SOURCE_DIR "/examples/moderation_service.py", std::move(args)) {
    REQUIRE(ok());
  }
};

struct Fixture : agentserve::agent::testing::ModerationClientHarness {
  ModerationVerdict check(const std::string& url, const std::string& text, bool fail_open = false,
                          std::vector<std::string> secrets = {kSecret},
                          std::chrono::milliseconds timeout = std::chrono::milliseconds(2000)) {
    ModerationOptions options;
    options.url = url;
    options.secrets = std::move(secrets);
    options.timeout = timeout;
    connect(options);
    ModerationRequest request{text, ModerationKind::kOutputText, "t1", "s_1", "r_1"};
    std::promise<ModerationVerdict> promise;
    client->check(request, fail_open, [&](ModerationVerdict v) { promise.set_value(std::move(v)); });
    auto future = promise.get_future();
    REQUIRE(future.wait_for(std::chrono::seconds(10)) == std::future_status::ready);
    return future.get();
  }
};

nlohmann::json get_stats(agentserve::net::HttpClient& http, int port) {
  agentserve::net::HttpRequest req;
  req.method = "GET";
  req.url = "http://127.0.0.1:" + std::to_string(port) + "/stats";
  auto res = http.request(req);
  REQUIRE(res.ok());
  return nlohmann::json::parse(res->body);
}

}  // namespace

TEST_CASE("moderation: clean text is allowed by the example service") {
  ModerationService service({"--flag", "bomb=violence", "--secret", kSecret});
  Fixture f;
  const auto v = f.check(service.url(), "a friendly greeting");
  CHECK(v.allowed);
  CHECK_FALSE(v.flagged);
  CHECK(v.failure == ModerationFailure::kNone);
  CHECK(v.attempts == 1);
  CHECK(v.latency.count() > 0);
  CHECK(f.stats.checks[0][ModerationStats::kAllowed] == 1);
}

TEST_CASE("moderation: a configured word is flagged with its category, case-insensitively") {
  ModerationService service({"--flag", "bomb=violence", "--flag", "scam", "--secret", kSecret});
  Fixture f;
  const auto v = f.check(service.url(), "how to build a BoMb");
  CHECK_FALSE(v.allowed);
  CHECK(v.flagged);
  CHECK(v.failure == ModerationFailure::kNone);
  CHECK(v.categories == std::vector<std::string>{"violence"});
  CHECK(f.stats.checks[0][ModerationStats::kFlagged] == 1);
}

TEST_CASE("moderation: a wrong secret is a 401 failure, blocked and not retried") {
  ModerationService service({"--secret", kSecret});
  Fixture f;
  const auto v = f.check(service.url(), "hello", false, {"some-other-secret"});
  CHECK_FALSE(v.allowed);
  CHECK(v.failure == ModerationFailure::kHttpStatus);
  CHECK(v.failure_detail == "HTTP 401");
  CHECK(v.attempts == 1);
  // A rotated configuration (old and new secret) passes.
  const auto rotated = f.check(service.url(), "hello", false, {"some-other-secret", kSecret});
  CHECK(rotated.allowed);
}

TEST_CASE("moderation: a 500 is retried once, then blocks fail-closed and passes fail-open") {
  ModerationService service({"--status", "500", "--secret", kSecret});
  Fixture f;
  const auto closed = f.check(service.url(), "hello", false);
  CHECK_FALSE(closed.allowed);
  CHECK(closed.failure == ModerationFailure::kHttpStatus);
  CHECK(closed.attempts == 2);
  const auto open = f.check(service.url(), "hello", true);
  CHECK(open.allowed);
  CHECK_FALSE(open.flagged);
  CHECK(open.failure == ModerationFailure::kHttpStatus);
  CHECK(f.stats.checks[0][ModerationStats::kFailedBlocked] == 1);
  CHECK(f.stats.checks[0][ModerationStats::kFailedPassed] == 1);
  CHECK(f.stats.failures[static_cast<size_t>(ModerationFailure::kHttpStatus)] == 2);
  CHECK(f.stats.retries == 2);
}

TEST_CASE("moderation: the retry after a 500 carries the same webhook-id and can succeed") {
  ModerationService service({"--fail-first", "1", "--secret", kSecret});
  Fixture f;
  const auto v = f.check(service.url(), "hello");
  CHECK(v.allowed);
  CHECK(v.attempts == 2);
  const auto seen = get_stats(f.http, service.port());
  REQUIRE(seen["requests"] == 2);
  CHECK(seen["ids"][0] == seen["ids"][1]);
  CHECK(seen["ids"][0].get<std::string>().rfind("msg_", 0) == 0);
}

TEST_CASE("moderation: garbage JSON is bad_response and is not retried") {
  ModerationService service({"--garbage"});
  Fixture f;
  const auto v = f.check(service.url(), "hello");
  CHECK_FALSE(v.allowed);
  CHECK(v.failure == ModerationFailure::kBadResponse);
  CHECK(v.attempts == 1);
}

TEST_CASE("moderation: a service slower than the timeout is a timeout failure after one retry") {
  ModerationService service({"--delay-ms", "600"});
  Fixture f;
  const auto start = std::chrono::steady_clock::now();
  const auto v = f.check(service.url(), "hello", false, {kSecret}, std::chrono::milliseconds(100));
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::milliseconds(550));
  CHECK_FALSE(v.allowed);
  CHECK(v.failure == ModerationFailure::kTimeout);
  CHECK(v.attempts == 2);
}

TEST_CASE("moderation: a service that is down is a connection failure; fail-open passes it") {
  int dead_port = 0;
  {
    ModerationService gone({});
    dead_port = gone.port();
  }
  Fixture f;
  const std::string url = "http://127.0.0.1:" + std::to_string(dead_port) + "/";
  const auto closed = f.check(url, "hello", false);
  CHECK_FALSE(closed.allowed);
  CHECK(closed.failure == ModerationFailure::kConnection);
  CHECK(closed.attempts == 2);
  CHECK(f.check(url, "hello", true).allowed);
}

TEST_CASE("moderation request body is OpenAI's shape plus our metadata") {
  boost::asio::io_context io;
  agentserve::net::HttpClient http(io);
  ModerationOptions options;
  options.url = "http://127.0.0.1:1/";
  options.model = "m1";
  auto client = ModerationClient::create(http, options, nullptr);
  REQUIRE(client.ok());
  const auto body = nlohmann::json::parse(
      (*client)->request_body({"some \xff text", ModerationKind::kToolArguments, "acme", "s_9", "r_9"}));
  CHECK(body["input"] == "some \xef\xbf\xbd text");
  CHECK(body["model"] == "m1");
  CHECK(body["metadata"] ==
        nlohmann::json{
            {"tenant", "acme"}, {"session_id", "s_9"}, {"response_id", "r_9"}, {"kind", "tool_arguments"}});
  options.url = "ftp://x/";
  CHECK_FALSE(ModerationClient::create(http, options, nullptr).ok());
}

TEST_CASE("moderation response parsing accepts only OpenAI's shape") {
  ModerationVerdict v;
  CHECK(
      parse_moderation_response(
          R"({"results":[{"flagged":true,"categories":{"b":true,"a":true,"c":false},"category_scores":{"a":0.9}}]})",
          v)
          .ok());
  CHECK(v.flagged);
  CHECK(v.categories == std::vector<std::string>{"a", "b"});
  for (const char* bad : {"", "[]", "{}", R"({"results":[]})", R"({"results":{}})", R"({"results":[1]})",
                          R"({"results":[{"categories":{},"category_scores":{}}]})",
                          R"({"results":[{"flagged":"no","categories":{},"category_scores":{}}]})",
                          R"({"results":[{"flagged":false,"category_scores":{}}]})",
                          R"({"results":[{"flagged":false,"categories":{}}]})",
                          R"({"results":[{"flagged":false,"categories":{"a":1},"category_scores":{}}]})",
                          R"({"results":[{"flagged":false,"categories":{},"category_scores":{"a":"x"}}]})"}) {
    CAPTURE(bad);
    ModerationVerdict w;
    CHECK_FALSE(parse_moderation_response(bad, w).ok());
  }
}
