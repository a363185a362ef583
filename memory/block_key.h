// BlockKey: the 128-bit name of a full KV block in the prefix cache. A key chains the parent block's key,
// the block's token ids and a salt (model fingerprint + tenant cache salt), so equal keys mean "same tokens
// after the same prefix, for the same model and tenant". Keys are a storage format (the spill tier writes
// them to disk), so the bytes hashed are fixed below and must never depend on the host or on struct padding.
// This module never looks at KV bytes or model shapes; it only names blocks.
//
// Hash: XXH3-128 (XXH3_128bits_withSeed, seed 0). BlockKey{hi, lo} = {high64, low64} of the result, and
// to_hex() prints hi then lo, 32 lowercase hex digits (xxhsum's canonical XXH128 form). All integers below
// are little-endian; "u64(x)" is 8 bytes, "i32(x)" 4 bytes two's complement.
//
//   make_salt(fp, salt)      = XXH3-128( "AS-SALT1" | u64(len fp) | fp | u64(len salt) | salt )
//   chain_block_key(p, t, s) = XXH3-128( "AS-BLK01" | u64(p.hi) | u64(p.lo) | u64(s.hi) | u64(s.lo)
//                                        | u32(n tokens) | i32(t[0]) ... i32(t[n-1]) )
//   the first block of a sequence has p = kRootBlockKey.
//
// The 8-byte ASCII tags separate the two uses and carry the format version: change the layout, bump the
// tag. Length prefixes keep ("ab", "c") and ("a", "bc") apart.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>

namespace agentserve::memory {

struct BlockKey {
  uint64_t hi = 0;
  uint64_t lo = 0;

  bool operator==(const BlockKey&) const = default;
  std::string to_hex() const;
};

// The parent of every sequence's first block. Fixed forever: it is part of every stored key.
inline constexpr BlockKey kRootBlockKey{0x6167656e74736572ull /* "agentser" */,
                                        0x76652d726f6f7431ull /* "ve-root1" */};

BlockKey make_salt(std::string_view model_fingerprint, std::string_view cache_salt);

// Key of the block holding `tokens` whose preceding block has key `parent`. Allocates nothing for blocks
// of up to 256 tokens.
BlockKey chain_block_key(const BlockKey& parent, std::span<const int32_t> tokens, const BlockKey& salt);

}  // namespace agentserve::memory

// Keys are already uniform hash output, so one half mixed with the other is a good bucket hash.
template <>
struct std::hash<agentserve::memory::BlockKey> {
  size_t operator()(const agentserve::memory::BlockKey& k) const noexcept {
    return static_cast<size_t>(k.lo ^ (k.hi * 0x9e3779b97f4a7c15ull));
  }
};
