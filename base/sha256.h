// SHA-256 through OpenSSL's EVP interface: an incremental hasher, one-shot helpers, and a streaming file
// hash with a progress callback (weight shards are tens of gigabytes, so files are never read whole).
// Digests are given as 64 lowercase hex characters. This module must never load a whole file into memory
// and never throws: an unreadable file is a Status.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "base/status.h"

namespace agentserve {

using Sha256Digest = std::array<uint8_t, 32>;

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(Sha256&&) noexcept;
  Sha256& operator=(Sha256&&) noexcept;
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void update(std::span<const std::byte> bytes);
  void update(std::string_view text);
  // Ends the hash; the hasher starts over afterwards.
  Sha256Digest finish();
  std::string finish_hex();

 private:
  struct Context;
  std::unique_ptr<Context> ctx_;
};

std::string to_hex(std::span<const uint8_t> bytes);
std::string sha256_hex(std::string_view data);

// Called after each chunk with bytes hashed so far and the file's size.
using HashProgress = std::function<void(uint64_t done, uint64_t total)>;

// Hex SHA-256 of a file's contents, read in 1 MiB chunks.
Result<std::string> sha256_file(const std::filesystem::path& path, const HashProgress& progress = {});

}  // namespace agentserve
