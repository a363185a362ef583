#include "memory/kv_block_codec.h"

#include <doctest/doctest.h>
#include <xxhash.h>

#include <cstring>
#include <random>
#include <vector>

namespace agentserve::memory {
namespace {

KvLayout small_layout() {
  return KvLayout{.n_layers = 2, .n_kv_heads = 2, .head_dim = 4, .block_size = 4};
}

struct Fixture {
  KvBlockFormat format = KvBlockFormat::make("qwen3-test-weights", small_layout());
  BlockKey key{0x0123456789abcdefull, 0xfedcba9876543210ull};
  std::vector<int32_t> tokens{7, -1, 151643, 42};
  std::vector<std::byte> payload;
  std::string encoded;

  Fixture() {
    payload.resize(format.layout.block_bytes());
    std::mt19937 rng(1);
    for (auto& b : payload) b = static_cast<std::byte>(rng());
    REQUIRE(encode_kv_block(format, key, tokens, payload, &encoded).ok());
  }
  std::span<const std::byte> bytes() const {
    return {reinterpret_cast<const std::byte*>(encoded.data()), encoded.size()};
  }
};

// Rewrites the checksum so that a deliberately edited header is intact again: what is left to catch the
// edit is the check for that field, not the checksum.
void reseal(std::string& e) {
  uint32_t header = 0;
  std::memcpy(&header, e.data() + 12, 4);
  const size_t prefix = header - 8;
  XXH3_state_t* st = XXH3_createState();
  XXH3_64bits_reset(st);
  XXH3_64bits_update(st, e.data(), prefix);
  XXH3_64bits_update(st, e.data() + header, e.size() - header);
  uint64_t sum = XXH3_64bits_digest(st);
  XXH3_freeState(st);
  for (int i = 0; i < 8; ++i) e[prefix + i] = static_cast<char>(sum >> (8 * i));
}

KvBlockReject decode_reject(const std::string& e, const KvBlockFormat& f, const BlockKey& k,
                            std::span<const int32_t> tokens = {}) {
  return decode_kv_block({reinterpret_cast<const std::byte*>(e.data()), e.size()}, f, k, tokens).reject;
}

TEST_CASE("kv block round trip returns the payload, key and token ids") {
  Fixture f;
  CHECK(f.encoded.size() == kv_block_encoded_size(f.tokens.size(), f.payload.size()));
  CHECK(f.encoded.size() == 88 + 4 * f.tokens.size() + f.payload.size());
  KvBlockDecodeResult r = decode_kv_block(f.bytes(), f.format, f.key, f.tokens);
  REQUIRE(r.ok());
  CHECK(r.status().ok());
  CHECK(r.view.key == f.key);
  REQUIRE(r.view.token_count() == f.tokens.size());
  for (size_t i = 0; i < f.tokens.size(); ++i) CHECK(r.view.token(i) == f.tokens[i]);
  REQUIRE(r.view.payload.size() == f.payload.size());
  CHECK(std::memcmp(r.view.payload.data(), f.payload.data(), f.payload.size()) == 0);
  // Without expected tokens the key alone is checked.
  CHECK(decode_kv_block(f.bytes(), f.format, f.key).ok());
}

TEST_CASE("kv block header is little-endian at the documented offsets") {
  Fixture f;
  CHECK(std::string(f.encoded.data(), 7) == "ASKVBLK");
  CHECK(static_cast<uint8_t>(f.encoded[8]) == kKvBlockFormatVersion);
  CHECK(static_cast<uint8_t>(f.encoded[12]) == 88 + 4 * 4);
  CHECK(static_cast<uint8_t>(f.encoded[36]) == 4);     // block_size
  CHECK(static_cast<uint8_t>(f.encoded[52]) == 4);     // token count
  CHECK(static_cast<uint8_t>(f.encoded[64]) == 0xef);  // key.hi low byte first
  CHECK(static_cast<uint8_t>(f.encoded[80]) == 7);     // first token id
}

TEST_CASE("every single flipped bit anywhere in the block is rejected as corrupt") {
  Fixture f;
  for (size_t i = 0; i < f.encoded.size(); ++i) {
    std::string e = f.encoded;
    e[i] = static_cast<char>(e[i] ^ (1 << (i % 8)));
    KvBlockReject r = decode_reject(e, f.format, f.key, f.tokens);
    CHECK_MESSAGE(r == KvBlockReject::kCorrupt, "byte ", i);
  }
}

TEST_CASE("every truncation and an appended byte are rejected as corrupt") {
  Fixture f;
  for (size_t n = 0; n < f.encoded.size(); ++n) {
    CHECK_MESSAGE(decode_reject(f.encoded.substr(0, n), f.format, f.key) == KvBlockReject::kCorrupt,
                  "length ", n);
  }
  CHECK(decode_reject(f.encoded + 'x', f.format, f.key) == KvBlockReject::kCorrupt);
}

TEST_CASE("a block with a huge claimed token count is rejected without reading past the value") {
  Fixture f;
  std::string e = f.encoded;
  e[52] = '\xff';
  e[53] = '\xff';
  e[54] = '\xff';
  e[55] = '\x7f';
  CHECK(decode_reject(e, f.format, f.key) == KvBlockReject::kCorrupt);
}

TEST_CASE("an intact block of another model, layout, version or key is rejected with that reason") {
  Fixture f;
  SUBCASE("wrong model") {
    KvBlockFormat other = KvBlockFormat::make("other-weights", small_layout());
    KvBlockDecodeResult r = decode_kv_block(f.bytes(), other, f.key);
    CHECK(r.reject == KvBlockReject::kWrongModel);
    CHECK(r.status().code() == StatusCode::kFailedPrecondition);
  }
  SUBCASE("wrong layout with the same byte count") {
    KvLayout swapped = small_layout();
    swapped.n_layers = 4;
    swapped.n_kv_heads = 1;  // same block_bytes, different shape
    REQUIRE(swapped.block_bytes() == small_layout().block_bytes());
    KvBlockFormat other = f.format;
    other.layout = swapped;
    CHECK(decode_reject(f.encoded, other, f.key) == KvBlockReject::kWrongLayout);
  }
  SUBCASE("wrong block size") {
    KvBlockFormat other = f.format;
    other.layout.block_size = 2;
    other.layout.head_dim = 8;
    CHECK(decode_reject(f.encoded, other, f.key) == KvBlockReject::kWrongLayout);
  }
  SUBCASE("unsupported version") {
    std::string e = f.encoded;
    e[8] = 2;
    reseal(e);
    CHECK(decode_reject(e, f.format, f.key) == KvBlockReject::kUnsupportedVersion);
  }
  SUBCASE("wrong key") {
    CHECK(decode_reject(f.encoded, f.format, BlockKey{1, 2}) == KvBlockReject::kWrongKey);
  }
  SUBCASE("wrong tokens") {
    std::vector<int32_t> other = f.tokens;
    other[3] = 43;
    CHECK(decode_reject(f.encoded, f.format, f.key, other) == KvBlockReject::kWrongTokens);
    CHECK(decode_reject(f.encoded, f.format, f.key, std::span(other).first(3)) ==
          KvBlockReject::kWrongTokens);
  }
  SUBCASE("corrupt maps to Corruption") {
    std::string e = f.encoded;
    e.back() = static_cast<char>(e.back() ^ 1);
    KvBlockDecodeResult r =
        decode_kv_block({reinterpret_cast<const std::byte*>(e.data()), e.size()}, f.format, f.key);
    CHECK(r.status().code() == StatusCode::kCorruption);
  }
}

TEST_CASE("encode refuses a payload or token count that does not fit the layout") {
  Fixture f;
  std::string out;
  std::vector<std::byte> short_payload(f.payload.size() - 1);
  CHECK(encode_kv_block(f.format, f.key, f.tokens, short_payload, &out).code() ==
        StatusCode::kInvalidArgument);
  std::vector<int32_t> too_many(5, 1);
  CHECK(encode_kv_block(f.format, f.key, too_many, f.payload, &out).code() == StatusCode::kInvalidArgument);
  CHECK(encode_kv_block(f.format, f.key, {}, f.payload, &out).code() == StatusCode::kInvalidArgument);
  // A partial block (fewer tokens than block_size) is allowed and round-trips.
  REQUIRE(encode_kv_block(f.format, f.key, std::span(f.tokens).first(2), f.payload, &out).ok());
  CHECK(decode_reject(out, f.format, f.key, std::span(f.tokens).first(2)) == KvBlockReject::kNone);
}

}  // namespace
}  // namespace agentserve::memory
