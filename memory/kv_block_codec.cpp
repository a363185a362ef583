#include "memory/kv_block_codec.h"

#include <xxhash.h>

#include <cstring>
#include <memory>

namespace agentserve::memory {
namespace {

constexpr char kMagic[8] = {'A', 'S', 'K', 'V', 'B', 'L', 'K', '\0'};
constexpr size_t kChecksumBytes = 8;

void put_u32(std::byte* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<std::byte>(v >> (8 * i));
}
void put_u64(std::byte* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<std::byte>(v >> (8 * i));
}
uint32_t get_u32(const std::byte* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(p[i]) << (8 * i);
  return v;
}
uint64_t get_u64(const std::byte* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

uint64_t block_checksum(std::span<const std::byte> header_without_checksum,
                        std::span<const std::byte> payload) {
  // The streaming state is opaque in the shared-library header, so it lives on the heap.
  std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> state(XXH3_createState(), &XXH3_freeState);
  XXH3_64bits_reset(state.get());
  XXH3_64bits_update(state.get(), header_without_checksum.data(), header_without_checksum.size());
  XXH3_64bits_update(state.get(), payload.data(), payload.size());
  return XXH3_64bits_digest(state.get());
}

KvBlockDecodeResult reject(KvBlockReject why, std::string detail) {
  KvBlockDecodeResult r;
  r.reject = why;
  r.detail = std::move(detail);
  return r;
}

}  // namespace

KvBlockFormat KvBlockFormat::make(std::string_view model_fingerprint, const KvLayout& layout) {
  XXH128_hash_t h = XXH3_128bits_withSeed(model_fingerprint.data(), model_fingerprint.size(), 0);
  return KvBlockFormat{h.high64, h.low64, layout};
}

std::string_view kv_block_reject_name(KvBlockReject reject) {
  switch (reject) {
    case KvBlockReject::kNone:
      return "none";
    case KvBlockReject::kCorrupt:
      return "corrupt";
    case KvBlockReject::kUnsupportedVersion:
      return "unsupported version";
    case KvBlockReject::kWrongModel:
      return "wrong model";
    case KvBlockReject::kWrongLayout:
      return "wrong layout";
    case KvBlockReject::kWrongKey:
      return "wrong key";
    case KvBlockReject::kWrongTokens:
      return "wrong tokens";
  }
  return "unknown";
}

int32_t KvBlockView::token(size_t i) const {
  return static_cast<int32_t>(get_u32(token_bytes.data() + 4 * i));
}

Status KvBlockDecodeResult::status() const {
  if (ok()) return Status::ok_status();
  std::string m = "kv block rejected (" + std::string(kv_block_reject_name(reject)) + "): " + detail;
  if (reject == KvBlockReject::kCorrupt) return Status::corruption(std::move(m));
  return Status::failed_precondition(std::move(m));
}

size_t kv_block_encoded_size(size_t token_count, size_t payload_bytes) {
  return kKvBlockFixedHeaderBytes + 4 * token_count + kChecksumBytes + payload_bytes;
}

Status encode_kv_block(const KvBlockFormat& format, const BlockKey& key, std::span<const int32_t> tokens,
                       std::span<const std::byte> payload, std::string* out) {
  const KvLayout& l = format.layout;
  AS_RETURN_IF_ERROR(l.validate());
  if (payload.size() != l.block_bytes()) {
    return Status::invalid_argument("kv block payload is " + std::to_string(payload.size()) +
                                    " bytes, layout says " + std::to_string(l.block_bytes()));
  }
  if (tokens.empty() || tokens.size() > static_cast<size_t>(l.block_size)) {
    return Status::invalid_argument("kv block token count " + std::to_string(tokens.size()) + " outside 1.." +
                                    std::to_string(l.block_size));
  }
  const size_t prefix = kKvBlockFixedHeaderBytes + 4 * tokens.size();
  const size_t header = prefix + kChecksumBytes;
  out->assign(header + payload.size(), '\0');
  auto* p = reinterpret_cast<std::byte*>(out->data());
  std::memcpy(p, kMagic, sizeof kMagic);
  put_u32(p + 8, kKvBlockFormatVersion);
  put_u32(p + 12, static_cast<uint32_t>(header));
  put_u64(p + 16, format.fingerprint_hi);
  put_u64(p + 24, format.fingerprint_lo);
  p[32] = static_cast<std::byte>(l.dtype);
  put_u32(p + 36, static_cast<uint32_t>(l.block_size));
  put_u32(p + 40, static_cast<uint32_t>(l.n_layers));
  put_u32(p + 44, static_cast<uint32_t>(l.n_kv_heads));
  put_u32(p + 48, static_cast<uint32_t>(l.head_dim));
  put_u32(p + 52, static_cast<uint32_t>(tokens.size()));
  put_u64(p + 56, payload.size());
  put_u64(p + 64, key.hi);
  put_u64(p + 72, key.lo);
  for (size_t i = 0; i < tokens.size(); ++i) put_u32(p + 80 + 4 * i, static_cast<uint32_t>(tokens[i]));
  if (!payload.empty()) std::memcpy(p + header, payload.data(), payload.size());
  put_u64(p + prefix, block_checksum({p, prefix}, payload));
  return Status::ok_status();
}

KvBlockDecodeResult decode_kv_block(std::span<const std::byte> bytes, const KvBlockFormat& format,
                                    const BlockKey& key, std::span<const int32_t> tokens) {
  const KvLayout& l = format.layout;
  const std::byte* p = bytes.data();
  if (bytes.size() < kKvBlockFixedHeaderBytes + kChecksumBytes) {
    return reject(KvBlockReject::kCorrupt, "truncated: " + std::to_string(bytes.size()) + " bytes");
  }
  if (std::memcmp(p, kMagic, sizeof kMagic) != 0) return reject(KvBlockReject::kCorrupt, "bad magic");
  // Lengths first, so that the checksum can be computed without reading out of bounds.
  const uint32_t n = get_u32(p + 52);
  const uint64_t payload_bytes = get_u64(p + 56);
  const uint64_t header = get_u32(p + 12);
  if (n == 0 || n > (1u << 20) || header != kKvBlockFixedHeaderBytes + 4ull * n + kChecksumBytes ||
      payload_bytes > bytes.size() || header + payload_bytes != bytes.size()) {
    return reject(KvBlockReject::kCorrupt, "header and value lengths disagree");
  }
  const size_t prefix = header - kChecksumBytes;
  std::span<const std::byte> payload = bytes.subspan(header);
  if (block_checksum(bytes.first(prefix), payload) != get_u64(p + prefix)) {
    return reject(KvBlockReject::kCorrupt, "checksum mismatch");
  }
  // The bytes are what was written; now check they are ours.
  const uint32_t version = get_u32(p + 8);
  if (version != kKvBlockFormatVersion) {
    return reject(KvBlockReject::kUnsupportedVersion, "format version " + std::to_string(version));
  }
  if (get_u64(p + 16) != format.fingerprint_hi || get_u64(p + 24) != format.fingerprint_lo) {
    return reject(KvBlockReject::kWrongModel, "model fingerprint differs");
  }
  const bool layout_ok = static_cast<uint8_t>(p[32]) == static_cast<uint8_t>(l.dtype) &&
                         get_u32(p + 36) == static_cast<uint32_t>(l.block_size) &&
                         get_u32(p + 40) == static_cast<uint32_t>(l.n_layers) &&
                         get_u32(p + 44) == static_cast<uint32_t>(l.n_kv_heads) &&
                         get_u32(p + 48) == static_cast<uint32_t>(l.head_dim) &&
                         n <= static_cast<uint32_t>(l.block_size) && payload_bytes == l.block_bytes();
  if (!layout_ok) return reject(KvBlockReject::kWrongLayout, "dtype, shape or block size differs");
  if (get_u64(p + 64) != key.hi || get_u64(p + 72) != key.lo) {
    return reject(KvBlockReject::kWrongKey,
                  "header names block " + BlockKey{get_u64(p + 64), get_u64(p + 72)}.to_hex());
  }
  KvBlockDecodeResult r;
  r.view.key = key;
  r.view.token_bytes = bytes.subspan(kKvBlockFixedHeaderBytes, 4 * static_cast<size_t>(n));
  r.view.payload = payload;
  if (!tokens.empty()) {
    bool same = tokens.size() == n;
    for (size_t i = 0; same && i < n; ++i) same = r.view.token(i) == tokens[i];
    if (!same) return reject(KvBlockReject::kWrongTokens, "token ids differ from the expected ones");
  }
  return r;
}

}  // namespace agentserve::memory
