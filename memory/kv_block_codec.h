// KvBlockCodec: the on-disk form of one spilled KV block (a header, then the block's K/V bytes as laid out
// by KvLayout). The header lets a loader prove that the bytes are intact and belong to this model, this
// layout and this block before any of them reach attention; a block that fails any check is rejected with
// the reason, and the caller drops it (KV is a cache: a dropped block costs recompute, never correctness).
// This module knows bytes and shapes only; it never interprets the payload and never does I/O.
//
// Storage format, version 1. All integers little-endian, no padding; offsets in bytes:
//    0  u8[8]  magic "ASKVBLK\0"
//    8  u32    format version (1)
//   12  u32    header bytes H = 88 + 4 * token count (fixed fields + token ids + checksum)
//   16  u64    model fingerprint hash, high half   (XXH3-128 of the fingerprint string, seed 0)
//   24  u64    model fingerprint hash, low half
//   32  u8     KV dtype (KvDtype), then u8[3] zero
//   36  u32    block_size (tokens per block)
//   40  u32    n_layers
//   44  u32    n_kv_heads
//   48  u32    head_dim
//   52  u32    token count n (1..block_size)
//   56  u64    payload bytes P (must equal the layout's block_bytes())
//   64  u64    block key hi
//   72  u64    block key lo
//   80  i32[n] token ids of the block
//   80+4n u64  checksum: XXH3-64 (seed 0) over bytes [0, 80+4n) followed by the P payload bytes
//   H   u8[P]  payload: K/V exactly as KvLayout places them in one block
// A change to any of this bumps the version; a loader rejects versions it does not know.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "base/status.h"
#include "memory/block_key.h"
#include "memory/kv_layout.h"

namespace agentserve::memory {

inline constexpr uint32_t kKvBlockFormatVersion = 1;
inline constexpr size_t kKvBlockFixedHeaderBytes = 80;

// What every block of one store must match: the model (by its fingerprint's 128-bit hash) and the layout.
struct KvBlockFormat {
  uint64_t fingerprint_hi = 0;
  uint64_t fingerprint_lo = 0;
  KvLayout layout;

  static KvBlockFormat make(std::string_view model_fingerprint, const KvLayout& layout);
};

// Why decode rejected a block. kCorrupt: the bytes are damaged (magic, lengths, checksum). The others are
// intact blocks that are not ours to use.
enum class KvBlockReject : uint8_t {
  kNone = 0,
  kCorrupt,
  kUnsupportedVersion,
  kWrongModel,
  kWrongLayout,
  kWrongKey,     // header names another block key
  kWrongTokens,  // token ids differ from the ones the caller expects for this key
};

std::string_view kv_block_reject_name(KvBlockReject reject);

// A decoded block: views into the encoded bytes, valid while they live.
struct KvBlockView {
  BlockKey key;
  std::span<const std::byte> token_bytes;  // n little-endian i32; use token(i)
  std::span<const std::byte> payload;

  size_t token_count() const { return token_bytes.size() / 4; }
  int32_t token(size_t i) const;
};

struct KvBlockDecodeResult {
  KvBlockReject reject = KvBlockReject::kNone;
  std::string detail;  // why, for logs; empty when accepted
  KvBlockView view;

  bool ok() const { return reject == KvBlockReject::kNone; }
  // kCorruption for kCorrupt, kFailedPrecondition for an intact block that is not ours.
  Status status() const;
};

size_t kv_block_encoded_size(size_t token_count, size_t payload_bytes);

// Appends nothing: `out` is replaced by the encoded block. InvalidArgument when the payload size is not
// the layout's block_bytes() or the token count is outside 1..block_size.
Status encode_kv_block(const KvBlockFormat& format, const BlockKey& key, std::span<const int32_t> tokens,
                       std::span<const std::byte> payload, std::string* out);

// Verifies `bytes` against `format`, `key`, and `tokens` when it is non-empty. Never reads past `bytes`.
KvBlockDecodeResult decode_kv_block(std::span<const std::byte> bytes, const KvBlockFormat& format,
                                    const BlockKey& key, std::span<const int32_t> tokens = {});

}  // namespace agentserve::memory
