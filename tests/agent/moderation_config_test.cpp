#include "agent/moderation_config.h"

#include <doctest/doctest.h>

using agentserve::StatusCode;
using agentserve::agent::moderation_config_from_json;
using agentserve::agent::ModerationConfig;

namespace {

agentserve::Status parse_error(const char* text) {
  return moderation_config_from_json(nlohmann::json::parse(text)).status();
}

}  // namespace

TEST_CASE("an empty moderation object keeps the documented defaults, and moderation is off without a url") {
  auto config = moderation_config_from_json(nlohmann::json::object());
  REQUIRE(config.ok());
  CHECK_FALSE(config->enabled());
  CHECK(config->timeout_ms == 2000);
  CHECK_FALSE(config->fail_open);
  CHECK(config->window_tokens == 64);
  CHECK(config->overlap_tokens == 16);
  CHECK(config->check_reasoning);
  CHECK(config->check_tool_arguments);
  CHECK_FALSE(config->check_tool_results);
  CHECK_FALSE(config->check_input);
}

TEST_CASE("every key is read and carried into the client and sink options") {
  auto config = moderation_config_from_json(nlohmann::json::parse(R"({
    "url": "https://mod.example/v1/moderations", "model": "guard", "secrets": ["whsec_a", "b"],
    "timeout_ms": 250, "fail_open": true, "window_tokens": 32, "overlap_tokens": 4,
    "check_reasoning": false, "check_tool_arguments": false, "check_tool_results": true, "check_input": true})"));
  REQUIRE_MESSAGE(config.ok(), config.status().to_string());
  CHECK(config->enabled());
  const auto client = config->client_options();
  CHECK(client.url == "https://mod.example/v1/moderations");
  CHECK(client.model == "guard");
  CHECK(client.secrets == std::vector<std::string>{"whsec_a", "b"});
  CHECK(client.timeout.count() == 250);
  CHECK(config->fail_open);
  CHECK(config->check_input);
  const auto turn = config->turn_options();
  CHECK(turn.gate.window_tokens == 32);
  CHECK(turn.gate.overlap_tokens == 4);
  CHECK_FALSE(turn.check_reasoning);
  CHECK_FALSE(turn.check_tool_arguments);
  CHECK(turn.check_tool_results);
}

TEST_CASE("keys not given keep the base's values, so flags and file combine") {
  ModerationConfig base;
  base.url = "http://127.0.0.1:9/m";
  base.fail_open = true;
  auto config = moderation_config_from_json(
      nlohmann::json::parse(R"({"window_tokens": 16, "overlap_tokens": 2})"), base);
  REQUIRE(config.ok());
  CHECK(config->url == base.url);
  CHECK(config->fail_open);
  CHECK(config->window_tokens == 16);
}

TEST_CASE("unknown keys are an error naming every one of them") {
  const auto status = parse_error(R"({"url": "http://x/m", "fail_opn": true, "windows": 3})");
  CHECK(status.code() == StatusCode::kInvalidArgument);
  CHECK(status.message().find("fail_opn") != std::string::npos);
  CHECK(status.message().find("windows") != std::string::npos);
}

TEST_CASE("wrong types and out-of-range values are refused with the key's name") {
  CHECK(parse_error(R"([])").code() == StatusCode::kInvalidArgument);
  CHECK(parse_error(R"({"fail_open": "yes"})").message().find("fail_open") != std::string::npos);
  CHECK(parse_error(R"({"timeout_ms": 0})").message().find("timeout_ms") != std::string::npos);
  CHECK(parse_error(R"({"timeout_ms": 1.5})").message().find("timeout_ms") != std::string::npos);
  CHECK(parse_error(R"({"window_tokens": 0})").message().find("window_tokens") != std::string::npos);
  CHECK(parse_error(R"({"window_tokens": -3})").message().find("window_tokens") != std::string::npos);
  CHECK(parse_error(R"({"window_tokens": 8, "overlap_tokens": 8})").message().find("overlap_tokens") !=
        std::string::npos);
  CHECK(parse_error(R"({"secrets": "s"})").message().find("secrets") != std::string::npos);
  CHECK(parse_error(R"({"secrets": [""]})").message().find("secrets") != std::string::npos);
  CHECK(parse_error(R"({"url": "ftp://x/m"})").message().find("url") != std::string::npos);
}
