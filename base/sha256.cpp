#include "base/sha256.h"

#include <openssl/evp.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace agentserve {

struct Sha256::Context {
  EVP_MD_CTX* md = nullptr;
};

namespace {

// EVP_DigestInit only fails when the library is out of memory or broken; that is a programming or
// environment fault, not input the caller can fix, so it aborts rather than returning a Status.
void init_or_abort(EVP_MD_CTX* md) {
  if (md == nullptr || EVP_DigestInit_ex(md, EVP_sha256(), nullptr) != 1) {
    std::fputs("agentserve: OpenSSL SHA-256 initialisation failed\n", stderr);
    std::abort();
  }
}

}  // namespace

Sha256::Sha256() : ctx_(std::make_unique<Context>()) {
  ctx_->md = EVP_MD_CTX_new();
  init_or_abort(ctx_->md);
}

Sha256::~Sha256() {
  if (ctx_) EVP_MD_CTX_free(ctx_->md);
}

Sha256::Sha256(Sha256&&) noexcept = default;

Sha256& Sha256::operator=(Sha256&& other) noexcept {
  if (this != &other) {
    if (ctx_) EVP_MD_CTX_free(ctx_->md);
    ctx_ = std::move(other.ctx_);
  }
  return *this;
}

void Sha256::update(std::span<const std::byte> bytes) {
  if (!bytes.empty()) EVP_DigestUpdate(ctx_->md, bytes.data(), bytes.size());
}

void Sha256::update(std::string_view text) {
  update(std::as_bytes(std::span(text.data(), text.size())));
}

Sha256Digest Sha256::finish() {
  Sha256Digest digest{};
  unsigned int length = 0;
  EVP_DigestFinal_ex(ctx_->md, digest.data(), &length);
  init_or_abort(ctx_->md);
  return digest;
}

std::string Sha256::finish_hex() {
  const Sha256Digest digest = finish();
  return to_hex(digest);
}

std::string to_hex(std::span<const uint8_t> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (uint8_t b : bytes) {
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 0xf]);
  }
  return out;
}

std::string sha256_hex(std::string_view data) {
  Sha256 hasher;
  hasher.update(data);
  return hasher.finish_hex();
}

Result<std::string> sha256_file(const std::filesystem::path& path, const HashProgress& progress) {
  std::error_code ec;
  const uint64_t total = std::filesystem::file_size(path, ec);
  if (ec) return Status::io_error(path.string() + ": " + ec.message());
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!file) return Status::io_error(path.string() + ": " + std::strerror(errno));

  Sha256 hasher;
  std::vector<std::byte> buffer(1 << 20);
  uint64_t done = 0;
  while (true) {
    const size_t n = std::fread(buffer.data(), 1, buffer.size(), file.get());
    if (n > 0) {
      hasher.update(std::span(buffer.data(), n));
      done += n;
      if (progress) progress(done, total);
    }
    if (n < buffer.size()) {
      if (std::ferror(file.get())) return Status::io_error(path.string() + ": read failed");
      break;
    }
  }
  return hasher.finish_hex();
}

}  // namespace agentserve
