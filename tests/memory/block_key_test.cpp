#include "memory/block_key.h"

#include <doctest/doctest.h>
#include <xxhash.h>

#include <numeric>
#include <string>
#include <unordered_map>
#include <vector>

namespace agentserve::memory {
namespace {

// The documented byte layout, written out independently of block_key.cpp.
void put_le(std::vector<unsigned char>& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<unsigned char>(v >> (8 * i)));
}

BlockKey xxh128(const std::vector<unsigned char>& bytes) {
  XXH128_hash_t h = XXH3_128bits_withSeed(bytes.data(), bytes.size(), 0);
  return {h.high64, h.low64};
}

BlockKey documented_chain_key(const BlockKey& parent, const std::vector<int32_t>& tokens,
                              const BlockKey& salt) {
  std::vector<unsigned char> b{'A', 'S', '-', 'B', 'L', 'K', '0', '1'};
  put_le(b, parent.hi, 8);
  put_le(b, parent.lo, 8);
  put_le(b, salt.hi, 8);
  put_le(b, salt.lo, 8);
  put_le(b, tokens.size(), 4);
  for (int32_t t : tokens) put_le(b, static_cast<uint32_t>(t), 4);
  return xxh128(b);
}

BlockKey documented_salt(std::string_view fp, std::string_view salt) {
  std::vector<unsigned char> b{'A', 'S', '-', 'S', 'A', 'L', 'T', '1'};
  put_le(b, fp.size(), 8);
  b.insert(b.end(), fp.begin(), fp.end());
  put_le(b, salt.size(), 8);
  b.insert(b.end(), salt.begin(), salt.end());
  return xxh128(b);
}

std::vector<int32_t> tokens_from(int32_t first, int n) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  std::iota(t.begin(), t.end(), first);
  return t;
}

TEST_CASE("the library is XXH3-128 with seed 0 (empty input matches the published vector)") {
  CHECK(xxh128({}).to_hex() == "99aa06d3014798d86001c324468d497f");
}

TEST_CASE("salt and chain keys hash exactly the documented little-endian bytes") {
  BlockKey salt = make_salt("qwen3-30b-a3b/bf16/layout1", "tenant-a");
  CHECK(salt == documented_salt("qwen3-30b-a3b/bf16/layout1", "tenant-a"));
  for (int n : {0, 1, 16, 17, 256, 257, 4096}) {  // 257 and 4096 take the heap path
    std::vector<int32_t> t = tokens_from(151600, n);
    if (n > 0) t[0] = -7;  // negative ids serialize as two's complement
    CHECK(chain_block_key(kRootBlockKey, t, salt) == documented_chain_key(kRootBlockKey, t, salt));
  }
}

TEST_CASE("keys are stable across builds: a pinned key for a pinned input") {
  BlockKey salt = make_salt("fingerprint", "");
  BlockKey k0 = chain_block_key(kRootBlockKey, tokens_from(0, 16), salt);
  BlockKey k1 = chain_block_key(k0, tokens_from(16, 16), salt);
  CHECK(kRootBlockKey.to_hex() == "6167656e7473657276652d726f6f7431");
  CHECK(salt.to_hex() == "fb99850586549404e5737983d5bf88b1");
  CHECK(k1.to_hex() == "0ed5f505160c5f74e6973dc0ba8eaa56");
}

TEST_CASE("every input of the chain changes the key") {
  BlockKey s1 = make_salt("model", "a");
  BlockKey s2 = make_salt("model", "b");
  std::vector<int32_t> t = tokens_from(10, 16);
  BlockKey base = chain_block_key(kRootBlockKey, t, s1);
  CHECK(chain_block_key(kRootBlockKey, t, s2) != base);
  CHECK(chain_block_key(base, t, s1) != base);
  std::vector<int32_t> t2 = t;
  t2[15] += 1;
  CHECK(chain_block_key(kRootBlockKey, t2, s1) != base);
  CHECK(chain_block_key(kRootBlockKey, std::span(t).first(15), s1) != base);
  // Length prefixes keep the split between fingerprint and tenant salt unambiguous.
  CHECK(make_salt("ab", "c") != make_salt("a", "bc"));
  CHECK(make_salt("model", "") != make_salt("", "model"));
}

TEST_CASE("to_hex prints hi then lo as 32 lowercase digits") {
  BlockKey k{0x0123456789abcdefull, 0x00000000000000ffull};
  CHECK(k.to_hex() == "0123456789abcdef00000000000000ff");
  CHECK(BlockKey{}.to_hex() == std::string(32, '0'));
}

TEST_CASE("BlockKey works as an unordered_map key") {
  std::unordered_map<BlockKey, int> m;
  BlockKey salt = make_salt("m", "");
  BlockKey parent = kRootBlockKey;
  for (int i = 0; i < 1000; ++i) {
    parent = chain_block_key(parent, tokens_from(i, 4), salt);
    m[parent] = i;
  }
  CHECK(m.size() == 1000);
  CHECK(m.at(chain_block_key(kRootBlockKey, tokens_from(0, 4), salt)) == 0);
  CHECK(m.count(BlockKey{1, 2}) == 0);
}

}  // namespace
}  // namespace agentserve::memory
