// The config file: defaults, every section, flags-free parsing, and errors that name the bad key.
#include <doctest/doctest.h>

#include "base/sha256.h"
#include "server/http_server.h"
#include "server/server_config.h"

using namespace agentserve;
using namespace agentserve::server;

TEST_CASE("an empty config keeps every default") {
  auto config = parse_server_config("{}");
  REQUIRE(config.ok());
  CHECK(config->options.host == "127.0.0.1");
  CHECK(config->options.port == 8080);
  CHECK(config->api_keys.empty());
  CHECK(config->options.session_ttl.count() == 0);
  CHECK(config->default_limits.max_concurrent_responses == TenantLimits{}.max_concurrent_responses);
}

TEST_CASE("options, keys and tenants are read from one JSON file") {
  const std::string hex = sha256_hex("secret-b");
  auto config = parse_server_config(R"({
    "port": 9001, "io_threads": 3, "max_write_queue_bytes": 65536, "session_ttl_seconds": 3600,
    "replay_max_events": 64, "idle_pin_window_seconds": 30, "max_json_depth": 16, "shutdown_grace_seconds": 3,
    "tool_constraint_cache_entries": 4,
    "api_keys": [{"key": "secret-a", "tenant": "alpha"}, {"key_sha256": ")" + hex + R"(", "tenant": "beta"}],
    "tenants": {"alpha": {"max_sessions": 2, "max_concurrent_responses": 1, "tokens_per_minute": 500,
                          "moderation_fail_open": true}},
    "default_tenant_limits": {"max_sessions": 7}
  })");
  REQUIRE_MESSAGE(config.ok(), config.status().to_string());
  CHECK(config->options.port == 9001);
  CHECK(config->options.io_threads == 3);
  CHECK(config->options.max_write_queue_bytes == 65536);
  CHECK(config->options.constraint_cache_entries == 4);
  CHECK(config->options.session_ttl.count() == 3600);
  CHECK(config->options.replay_max_events == 64);
  CHECK(config->options.idle_pin_window.count() == 30);
  CHECK(config->options.max_json_depth == 16);
  CHECK(config->options.shutdown_grace.count() == 3);
  REQUIRE(config->api_keys.size() == 2);
  CHECK(config->api_keys[0].sha256 == hash_api_key("secret-a"));
  CHECK(config->api_keys[1].sha256 == hash_api_key("secret-b"));
  CHECK(config->api_keys[1].tenant == "beta");
  const TenantLimits& alpha = config->tenants.at("alpha");
  CHECK(alpha.max_sessions == 2);
  CHECK(alpha.max_concurrent_responses == 1);
  CHECK(alpha.tokens_per_minute == 500);
  CHECK(alpha.moderation_fail_open);
  CHECK(config->default_limits.max_sessions == 7);
}

TEST_CASE("unknown keys, wrong types and bad values are errors naming the key") {
  const auto error_of = [](const std::string& text) {
    auto config = parse_server_config(text);
    REQUIRE_FALSE(config.ok());
    CHECK(config.status().code() == StatusCode::kInvalidArgument);
    return config.status().message();
  };
  CHECK(error_of(R"({"prot": 1})").find("'prot'") != std::string::npos);
  CHECK(error_of(R"({"tenants": {"a": {"max_session": 1}}})").find("tenants.a.max_session") != std::string::npos);
  CHECK(error_of(R"({"api_keys": [{"key": "k", "tenant": "t", "x": 1}]})").find("api_keys[0].x") !=
        std::string::npos);
  CHECK(error_of(R"({"port": "80"})").find("'port'") != std::string::npos);
  CHECK(error_of(R"({"port": 70000})").find("'port'") != std::string::npos);
  CHECK(error_of(R"({"max_json_depth": 0})").find("'max_json_depth'") != std::string::npos);
  CHECK(error_of(R"({"shutdown_grace_seconds": -1})").find("'shutdown_grace_seconds'") != std::string::npos);
  CHECK(error_of(R"({"api_keys": [{"key_sha256": "abc", "tenant": "t"}]})").find("key_sha256") !=
        std::string::npos);
  CHECK(error_of(R"({"api_keys": [{"tenant": "t"}]})").find("api_keys[0]") != std::string::npos);
  CHECK(error_of("[1]").find("object") != std::string::npos);
  CHECK(error_of("{").find("JSON") != std::string::npos);
}

TEST_CASE("a config over a base keeps the base's fields it does not name") {
  ServerConfig base;
  base.options.port = 1234;
  base.options.io_threads = 5;
  auto config = parse_server_config(R"({"io_threads": 2})", base);
  REQUIRE(config.ok());
  CHECK(config->options.port == 1234);
  CHECK(config->options.io_threads == 2);
}

TEST_CASE("a write queue limit below one client message is refused at start") {
  ServerOptions options;
  options.max_message_bytes = size_t{1} << 20;
  options.max_write_queue_bytes = size_t{512} << 10;
  const Status refused = HttpServer::check_options(options);
  CHECK(refused.code() == StatusCode::kInvalidArgument);
  CHECK(refused.message().find("max_write_queue_bytes") != std::string::npos);
  options.max_write_queue_bytes = options.max_message_bytes;
  CHECK(HttpServer::check_options(options).ok());
}
