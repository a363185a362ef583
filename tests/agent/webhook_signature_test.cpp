#include "agent/webhook_signature.h"

#include <cstdio>
#include <fstream>
#include <string>

#include <doctest/doctest.h>

#include "tests/scratch_dir.h"

using agentserve::StatusCode;
using agentserve::agent::decode_webhook_secret;
using agentserve::agent::new_webhook_id;
using agentserve::agent::webhook_signature;
using agentserve::agent::WebhookSigner;

namespace {

// The signature as Python's hmac module computes it from the spec's description, independent of our code.
std::string python_signature(const std::string& secret_b64, const std::string& id, int64_t ts,
                             const std::string& body) {
  const auto dir = agentserve::testing::scratch_dir("webhook_signature_test", "py");
  const auto script = dir / "sign.py";
  std::ofstream(script)
      << "import base64,hashlib,hmac,sys\n"
         "key=base64.b64decode(sys.argv[1])\n"
         "msg=(sys.argv[2]+'.'+sys.argv[3]+'.'+open(sys.argv[4]).read()).encode()\n"
         "print('v1,'+base64.b64encode(hmac.new(key,msg,hashlib.sha256).digest()).decode())\n";
  std::ofstream(dir / "body") << body;
  const std::string command = "/usr/bin/python3 " + script.string() + " " + secret_b64 + " " + id + " " +
                              std::to_string(ts) + " " + (dir / "body").string();
  FILE* pipe = popen(command.c_str(), "r");
  REQUIRE(pipe != nullptr);
  char buf[256] = {};
  std::string out;
  while (fgets(buf, sizeof(buf), pipe)) out += buf;
  pclose(pipe);
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

}  // namespace

TEST_CASE("webhook signature matches the Standard Webhooks reference vector") {
  // The test vector of the Standard Webhooks reference libraries.
  auto key = decode_webhook_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
  REQUIRE(key.ok());
  CHECK(webhook_signature(*key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, "{\"test\": 2432232314}") ==
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
}

TEST_CASE("webhook signature matches an HMAC computed by Python's hmac module") {
  const std::string secret_b64 = "c2VjcmV0LWtleS1ieXRlcy0wMTIzNDU2Nzg5";
  const std::string body = "{\"input\":\"hello world\",\"model\":\"m\"}";
  auto key = decode_webhook_secret("whsec_" + secret_b64);
  REQUIRE(key.ok());
  CHECK(*key == "secret-key-bytes-0123456789");
  CHECK(webhook_signature(*key, "msg_abc", 1700000000, body) ==
        python_signature(secret_b64, "msg_abc", 1700000000, body));
}

TEST_CASE("a plain secret string is used as the key bytes") {
  auto key = decode_webhook_secret("not-prefixed");
  REQUIRE(key.ok());
  CHECK(*key == "not-prefixed");
  CHECK(decode_webhook_secret("").status().code() == StatusCode::kInvalidArgument);
  CHECK(decode_webhook_secret("whsec_!!!!").status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("signer emits one signature per secret and verify accepts any of them") {
  auto both = WebhookSigner::create({"whsec_c2VjcmV0LWtleS1ieXRlcy0wMTIzNDU2Nzg5", "old-secret"});
  REQUIRE(both.ok());
  const auto headers = both->sign("msg_1", 1700000000, "body");
  REQUIRE(headers.size() == 3);
  CHECK(headers[0] == std::pair<std::string, std::string>{"webhook-id", "msg_1"});
  CHECK(headers[1] == std::pair<std::string, std::string>{"webhook-timestamp", "1700000000"});
  const std::string& sig = headers[2].second;
  CHECK(sig.find(' ') != std::string::npos);
  CHECK(sig == webhook_signature("secret-key-bytes-0123456789", "msg_1", 1700000000, "body") + " " +
                   webhook_signature("old-secret", "msg_1", 1700000000, "body"));

  // A receiver that only knows the old secret still verifies.
  auto old_only = WebhookSigner::create({"old-secret"});
  REQUIRE(old_only.ok());
  CHECK(old_only->verify("msg_1", "1700000000", sig, "body", 1700000010).ok());
  CHECK_FALSE(old_only->verify("msg_1", "1700000000", sig, "body!", 1700000010).ok());
  CHECK_FALSE(old_only->verify("msg_2", "1700000000", sig, "body", 1700000010).ok());
  CHECK_FALSE(old_only->verify("msg_1", "1700000000", sig, "body", 1700000000 + 301).ok());
  CHECK_FALSE(old_only->verify("msg_1", "17x", sig, "body", 1700000000).ok());
  auto other = WebhookSigner::create({"another"});
  REQUIRE(other.ok());
  CHECK(other->verify("msg_1", "1700000000", sig, "body", 1700000000).code() == StatusCode::kInvalidArgument);
}

TEST_CASE("webhook ids are fresh each time") {
  const std::string a = new_webhook_id();
  const std::string b = new_webhook_id();
  CHECK(a.rfind("msg_", 0) == 0);
  CHECK(a.size() == 36);
  CHECK(a != b);
}
