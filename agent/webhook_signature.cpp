#include "agent/webhook_signature.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <array>
#include <charconv>

#include "base/sha256.h"

namespace agentserve::agent {

namespace {

constexpr std::string_view kSecretPrefix = "whsec_";

std::string base64_encode(const unsigned char* data, size_t size) {
  std::string out(4 * ((size + 2) / 3), '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), data, static_cast<int>(size));
  out.resize(static_cast<size_t>(n));
  return out;
}

Result<std::string> base64_decode(std::string_view text) {
  if (text.empty() || text.size() % 4 != 0) return Status::invalid_argument("not base64 (length)");
  std::string out(3 * (text.size() / 4), '\0');
  const int n =
      EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                      reinterpret_cast<const unsigned char*>(text.data()), static_cast<int>(text.size()));
  if (n < 0) return Status::invalid_argument("not base64");
  // EVP_DecodeBlock counts padding as zero bytes; drop them.
  size_t size = static_cast<size_t>(n);
  for (size_t i = text.size(); i > 0 && text[i - 1] == '='; --i) --size;
  out.resize(size);
  return out;
}

}  // namespace

Result<std::string> decode_webhook_secret(std::string_view secret) {
  if (secret.empty()) return Status::invalid_argument("webhook secret is empty");
  if (secret.substr(0, kSecretPrefix.size()) != kSecretPrefix) return std::string(secret);
  auto key = base64_decode(secret.substr(kSecretPrefix.size()));
  if (!key.ok() || key->empty())
    return Status::invalid_argument("webhook secret starts with whsec_ but the rest is not base64");
  return key;
}

std::string webhook_signature(std::string_view key, std::string_view id, int64_t timestamp,
                              std::string_view body) {
  const std::string message = std::string(id) + "." + std::to_string(timestamp) + "." + std::string(body);
  std::array<unsigned char, EVP_MAX_MD_SIZE> mac{};
  unsigned int mac_size = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(message.data()), message.size(), mac.data(), &mac_size);
  return "v1," + base64_encode(mac.data(), mac_size);
}

std::string new_webhook_id() {
  std::array<uint8_t, 16> bytes{};
  if (RAND_bytes(bytes.data(), static_cast<int>(bytes.size())) != 1) {
    // Uniqueness, not secrecy, is what the id needs; fall back to the clock if the RNG refuses.
    const auto now = std::chrono::steady_clock::now().time_since_epoch().count();
    for (size_t i = 0; i < sizeof(now); ++i) bytes[i] = static_cast<uint8_t>(now >> (8 * i));
  }
  return "msg_" + to_hex(bytes);
}

Result<WebhookSigner> WebhookSigner::create(const std::vector<std::string>& secrets) {
  if (secrets.empty()) return Status::invalid_argument("no webhook secret given");
  WebhookSigner signer;
  for (const auto& secret : secrets) {
    AS_ASSIGN_OR_RETURN(std::string key, decode_webhook_secret(secret));
    signer.keys_.push_back(std::move(key));
  }
  return signer;
}

net::HttpHeaders WebhookSigner::sign(std::string_view id, int64_t timestamp, std::string_view body) const {
  std::string signatures;
  for (const auto& key : keys_) {
    if (!signatures.empty()) signatures += ' ';
    signatures += webhook_signature(key, id, timestamp, body);
  }
  return {{"webhook-id", std::string(id)},
          {"webhook-timestamp", std::to_string(timestamp)},
          {"webhook-signature", std::move(signatures)}};
}

Status WebhookSigner::verify(std::string_view id, std::string_view timestamp,
                             std::string_view signature_header, std::string_view body, int64_t now_s,
                             int64_t tolerance_s) const {
  int64_t ts = 0;
  const auto [end, ec] = std::from_chars(timestamp.data(), timestamp.data() + timestamp.size(), ts);
  if (ec != std::errc() || end != timestamp.data() + timestamp.size() || timestamp.empty())
    return Status::invalid_argument("webhook-timestamp is not an integer");
  if (ts < now_s - tolerance_s || ts > now_s + tolerance_s)
    return Status::invalid_argument("webhook-timestamp is outside the tolerance");
  for (const auto& key : keys_) {
    const std::string expected = webhook_signature(key, id, ts, body);
    size_t start = 0;
    while (start <= signature_header.size()) {
      size_t space = signature_header.find(' ', start);
      if (space == std::string_view::npos) space = signature_header.size();
      const std::string_view candidate = signature_header.substr(start, space - start);
      if (candidate.size() == expected.size() &&
          CRYPTO_memcmp(candidate.data(), expected.data(), expected.size()) == 0)
        return Status::ok_status();
      start = space + 1;
    }
  }
  return Status::invalid_argument("no webhook signature matches");
}

}  // namespace agentserve::agent
