#include "server/auth.h"

#include "base/sha256.h"

namespace agentserve::server {
namespace {

constexpr auto kTokenWindow = std::chrono::seconds(60);

bool equal_constant_time(const std::array<uint8_t, 32>& a, const std::array<uint8_t, 32>& b) {
  uint8_t diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<uint8_t>(a[i] ^ b[i]);
  return diff == 0;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

std::array<uint8_t, 32> hash_api_key(std::string_view key) {
  Sha256 hasher;
  hasher.update(key);
  return hasher.finish();
}

Result<std::array<uint8_t, 32>> parse_key_sha256(std::string_view hex) {
  if (hex.size() != 64) return Status::invalid_argument("key_sha256 must be 64 hex digits");
  std::array<uint8_t, 32> out{};
  for (size_t i = 0; i < out.size(); ++i) {
    const int hi = hex_value(hex[2 * i]);
    const int lo = hex_value(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return Status::invalid_argument("key_sha256 must be 64 hex digits");
    out[i] = static_cast<uint8_t>(hi * 16 + lo);
  }
  return out;
}

Auth::Auth(std::vector<ApiKey> keys, std::map<std::string, TenantLimits> tenants, TenantLimits default_limits)
    : keys_(std::move(keys)), tenants_(tenants.begin(), tenants.end()), default_limits_(default_limits) {}

Tenant Auth::tenant(std::string_view name) const {
  const auto it = tenants_.find(name);
  return Tenant{std::string(name), std::string(name), it == tenants_.end() ? default_limits_ : it->second};
}

Result<Tenant> Auth::authenticate(std::string_view header) const {
  if (open()) return tenant(kDefaultTenant);
  constexpr std::string_view kBearer = "Bearer ";
  if (header.size() <= kBearer.size() || !header.starts_with(kBearer))
    return Status::failed_precondition("missing API key: send 'Authorization: Bearer <key>'");
  const std::array<uint8_t, 32> presented = hash_api_key(header.substr(kBearer.size()));
  // Every digest is compared, match or not, so the time taken does not say which key matched.
  const ApiKey* match = nullptr;
  for (const ApiKey& key : keys_)
    if (equal_constant_time(key.sha256, presented) && match == nullptr) match = &key;
  if (match == nullptr) return Status::failed_precondition("invalid API key");
  return tenant(match->tenant);
}

Auth::Admission Auth::try_start_response(const Tenant& tenant) {
  std::lock_guard lock(mutex_);
  Usage& usage = usage_[tenant.name];
  const auto now = std::chrono::steady_clock::now();
  if (now - usage.window_start >= kTokenWindow) {
    usage.window_start = now;
    usage.window_tokens = 0;
  }
  if (usage.running >= tenant.limits.max_concurrent_responses) return Admission::kConcurrencyLimit;
  if (tenant.limits.tokens_per_minute > 0 && usage.window_tokens >= tenant.limits.tokens_per_minute)
    return Admission::kTokenLimit;
  ++usage.running;
  return Admission::kAdmitted;
}

void Auth::end_response(const Tenant& tenant, int64_t tokens) {
  std::lock_guard lock(mutex_);
  Usage& usage = usage_[tenant.name];
  if (usage.running > 0) --usage.running;
  const auto now = std::chrono::steady_clock::now();
  if (now - usage.window_start >= kTokenWindow) {
    usage.window_start = now;
    usage.window_tokens = 0;
  }
  usage.window_tokens += tokens;
}

}  // namespace agentserve::server
