#include "memory/block_key.h"

#include <xxhash.h>

#include <array>
#include <vector>

namespace agentserve::memory {
namespace {

constexpr size_t kTagBytes = 8;
constexpr size_t kInlineTokens = 256;
// Tag, parent, salt, token count, tokens: the chain key's serialized size for n tokens.
constexpr size_t chain_bytes(size_t n_tokens) {
  return kTagBytes + 4 * 8 + 4 + 4 * n_tokens;
}

// Writes integers little-endian by shifting, so the bytes are the same on every host.
class ByteWriter {
 public:
  explicit ByteWriter(unsigned char* out) : out_(out) {}
  void bytes(std::string_view s) {
    for (char c : s) *out_++ = static_cast<unsigned char>(c);
  }
  void u64(uint64_t v) {
    for (int i = 0; i < 8; ++i) *out_++ = static_cast<unsigned char>(v >> (8 * i));
  }
  void u32(uint32_t v) {
    for (int i = 0; i < 4; ++i) *out_++ = static_cast<unsigned char>(v >> (8 * i));
  }
  void i32(int32_t v) { u32(static_cast<uint32_t>(v)); }

 private:
  unsigned char* out_;
};

BlockKey hash128(const unsigned char* data, size_t len) {
  XXH128_hash_t h = XXH3_128bits_withSeed(data, len, 0);
  return BlockKey{h.high64, h.low64};
}

}  // namespace

std::string BlockKey::to_hex() const {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(32, '0');
  for (int i = 0; i < 16; ++i) {
    out[15 - i] = kDigits[(hi >> (4 * i)) & 0xf];
    out[31 - i] = kDigits[(lo >> (4 * i)) & 0xf];
  }
  return out;
}

BlockKey make_salt(std::string_view model_fingerprint, std::string_view cache_salt) {
  std::vector<unsigned char> buf(kTagBytes + 8 + model_fingerprint.size() + 8 + cache_salt.size());
  ByteWriter w(buf.data());
  w.bytes("AS-SALT1");
  w.u64(model_fingerprint.size());
  w.bytes(model_fingerprint);
  w.u64(cache_salt.size());
  w.bytes(cache_salt);
  return hash128(buf.data(), buf.size());
}

BlockKey chain_block_key(const BlockKey& parent, std::span<const int32_t> tokens, const BlockKey& salt) {
  std::array<unsigned char, chain_bytes(kInlineTokens)> inline_buf;
  std::vector<unsigned char> heap_buf;
  unsigned char* buf = inline_buf.data();
  if (tokens.size() > kInlineTokens) {
    heap_buf.resize(chain_bytes(tokens.size()));
    buf = heap_buf.data();
  }
  ByteWriter w(buf);
  w.bytes("AS-BLK01");
  w.u64(parent.hi);
  w.u64(parent.lo);
  w.u64(salt.hi);
  w.u64(salt.lo);
  w.u32(static_cast<uint32_t>(tokens.size()));
  for (int32_t t : tokens) w.i32(t);
  return hash128(buf, chain_bytes(tokens.size()));
}

}  // namespace agentserve::memory
