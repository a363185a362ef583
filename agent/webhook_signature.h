// Standard Webhooks signing (standardwebhooks.com), used for the moderation webhook: every request carries
// webhook-id, webhook-timestamp (unix seconds) and webhook-signature, a space-separated list of
// "v1,<base64(HMAC-SHA256(key, id + "." + timestamp + "." + body))>", one entry per configured secret so a
// receiver can rotate its secret without downtime. A secret written "whsec_<base64>" is the base64 of the key
// bytes (the spec's form); any other string is taken as the key bytes themselves.
//
// It must never log or return a key, and verification must compare in constant time.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "net/http_client.h"

namespace agentserve::agent {

// The key bytes of a configured secret. InvalidArgument for an empty secret or a "whsec_" one that is not
// valid base64.
Result<std::string> decode_webhook_secret(std::string_view secret);

// "v1,<base64 HMAC-SHA256>" of one message under one key (raw bytes).
std::string webhook_signature(std::string_view key, std::string_view id, int64_t timestamp,
                              std::string_view body);

// A fresh message id, "msg_" + 32 random hex characters. A retry reuses its first attempt's id so the
// receiver can deduplicate.
std::string new_webhook_id();

class WebhookSigner {
 public:
  // One or more secrets (the first is the current one); each is decoded by decode_webhook_secret.
  static Result<WebhookSigner> create(const std::vector<std::string>& secrets);

  // The three headers for `body`: webhook-id, webhook-timestamp, webhook-signature.
  net::HttpHeaders sign(std::string_view id, int64_t timestamp, std::string_view body) const;

  // OK when one of the signatures in `signature_header` matches under one of the keys, and the timestamp is
  // within `tolerance_s` of `now_s` (replay protection). InvalidArgument otherwise, saying which check
  // failed.
  Status verify(std::string_view id, std::string_view timestamp, std::string_view signature_header,
                std::string_view body, int64_t now_s, int64_t tolerance_s = 300) const;

 private:
  std::vector<std::string> keys_;
};

}  // namespace agentserve::agent
