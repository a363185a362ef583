// API keys -> tenants (constant-time digest compare), open mode, and per-tenant response limits.
#include <doctest/doctest.h>

#include "server/auth.h"

using namespace agentserve;
using namespace agentserve::server;

TEST_CASE("with no keys every caller is the default tenant") {
  Auth auth;
  CHECK(auth.open());
  auto tenant = auth.authenticate("");
  REQUIRE(tenant.ok());
  CHECK(tenant->name == "default");
  CHECK(auth.authenticate("Bearer anything")->name == "default");
}

TEST_CASE("a key maps to its tenant; a wrong, missing or malformed key is refused") {
  Auth auth({{hash_api_key("ka"), "alpha"}, {hash_api_key("kb"), "beta"}}, {}, TenantLimits{});
  CHECK_FALSE(auth.open());
  CHECK(auth.authenticate("Bearer ka")->name == "alpha");
  CHECK(auth.authenticate("Bearer kb")->name == "beta");
  CHECK(auth.authenticate("Bearer ka")->cache_salt != auth.authenticate("Bearer kb")->cache_salt);
  for (const char* header : {"", "Bearer ", "Bearer kc", "Basic ka", "ka", "Bearer ka "}) {
    auto tenant = auth.authenticate(header);
    CHECK_MESSAGE(!tenant.ok(), header);
  }
}

TEST_CASE("key_sha256 accepts 64 hex digits of either case and nothing else") {
  const auto digest = hash_api_key("k");
  std::string hex;
  for (uint8_t b : digest) {
    static const char* digits = "0123456789ABCDEF";
    hex += digits[b >> 4];
    hex += digits[b & 15];
  }
  auto parsed = parse_key_sha256(hex);
  REQUIRE(parsed.ok());
  CHECK(*parsed == digest);
  CHECK_FALSE(parse_key_sha256(hex.substr(2)).ok());
  CHECK_FALSE(parse_key_sha256(std::string(64, 'g')).ok());
}

TEST_CASE("a tenant's concurrent responses and tokens per minute are capped, others unaffected") {
  TenantLimits tight;
  tight.max_concurrent_responses = 2;
  tight.tokens_per_minute = 100;
  Auth auth({{hash_api_key("ka"), "alpha"}, {hash_api_key("kb"), "beta"}}, {{"alpha", tight}}, TenantLimits{});
  const Tenant alpha = *auth.authenticate("Bearer ka");
  const Tenant beta = *auth.authenticate("Bearer kb");
  CHECK(alpha.limits.max_concurrent_responses == 2);
  CHECK(auth.try_start_response(alpha) == Auth::Admission::kAdmitted);
  CHECK(auth.try_start_response(alpha) == Auth::Admission::kAdmitted);
  CHECK(auth.try_start_response(alpha) == Auth::Admission::kConcurrencyLimit);
  CHECK(auth.try_start_response(beta) == Auth::Admission::kAdmitted);
  auth.end_response(alpha, 60);
  CHECK(auth.try_start_response(alpha) == Auth::Admission::kAdmitted);
  auth.end_response(alpha, 60);  // 120 tokens this minute: over the 100 budget
  auth.end_response(alpha, 0);
  CHECK(auth.try_start_response(alpha) == Auth::Admission::kTokenLimit);
  CHECK(auth.try_start_response(beta) == Auth::Admission::kAdmitted);
}
