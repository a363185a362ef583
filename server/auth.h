// Auth: API keys -> tenants, and each tenant's limits and live usage (concurrent responses, tokens per
// minute). Keys are held only as SHA-256 digests; a presented key is hashed and compared against every
// digest in constant time, so neither the key nor its position leaks through timing. With no keys
// configured every caller is the tenant "default" (the server then listens on loopback only).
//
// It must never store or log a plaintext key, and never let one tenant's usage count against another.
// Thread-safe: authenticate() is const; the usage methods lock.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace agentserve::server {

inline constexpr std::string_view kDefaultTenant = "default";

struct TenantLimits {
  int max_sessions = 1000;               // sessions alive at once (in memory or persisted)
  int max_concurrent_responses = 16;     // responses running at once over all its sessions
  int64_t tokens_per_minute = 0;         // prompt + completion tokens per 60 s window; 0 = unlimited
  bool moderation_fail_open = false;     // for the moderation gate (read by the agent layer later)
};

struct Tenant {
  std::string name;
  // Prefix-cache salt: the tenant's name, so blocks (in memory and on disk) are shared only within it and
  // stay valid across restarts.
  std::string cache_salt;
  TenantLimits limits;
};

struct ApiKey {
  std::array<uint8_t, 32> sha256{};
  std::string tenant;
};

// "key" -> its digest; "64 hex digits" -> the digest they spell (InvalidArgument otherwise).
std::array<uint8_t, 32> hash_api_key(std::string_view key);
Result<std::array<uint8_t, 32>> parse_key_sha256(std::string_view hex);

class Auth {
 public:
  // Tenants named by keys but absent from `tenants` get `default_limits`. No keys: open mode.
  Auth(std::vector<ApiKey> keys, std::map<std::string, TenantLimits> tenants, TenantLimits default_limits);
  Auth() : Auth({}, {}, TenantLimits{}) {}

  // True when no keys are configured (everyone is tenant "default").
  bool open() const { return keys_.empty(); }

  // The value of an HTTP Authorization header ("Bearer <key>", may be empty). Open mode: always the
  // default tenant. Otherwise FailedPrecondition ("missing API key" / "invalid API key"): answer 401.
  Result<Tenant> authenticate(std::string_view authorization_header) const;
  // The tenant of that name with its limits (for sessions reloaded from the store).
  Tenant tenant(std::string_view name) const;

  // Per-tenant usage. try_start_response: refused when the tenant already runs its maximum of concurrent
  // responses or has spent its tokens for this minute; otherwise counts one running response, which
  // end_response() releases with the tokens it used (prompt + completion).
  enum class Admission { kAdmitted, kConcurrencyLimit, kTokenLimit };
  Admission try_start_response(const Tenant& tenant);
  void end_response(const Tenant& tenant, int64_t tokens);

 private:
  struct Usage {
    int running = 0;
    int64_t window_tokens = 0;
    std::chrono::steady_clock::time_point window_start{};
  };

  std::vector<ApiKey> keys_;
  std::map<std::string, TenantLimits, std::less<>> tenants_;
  TenantLimits default_limits_;
  std::mutex mutex_;
  std::map<std::string, Usage, std::less<>> usage_;
};

}  // namespace agentserve::server
