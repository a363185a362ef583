#include "base/sha256.h"

#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <random>
#include <string>

namespace agentserve {
namespace {

TEST_CASE("sha256 matches the FIPS 180-2 test vectors") {
  CHECK(sha256_hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq") ==
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  CHECK(sha256_hex(std::string(1000000, 'a')) ==
        "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST_CASE("sha256 over uneven chunks equals the one-shot hash, and the hasher restarts after finish") {
  std::mt19937 rng(7);
  std::string data(100003, '\0');
  for (char& c : data) c = static_cast<char>(rng());
  Sha256 hasher;
  size_t pos = 0;
  for (size_t step : {0ul, 1ul, 63ul, 64ul, 65ul, 4097ul}) {
    hasher.update(std::string_view(data).substr(pos, step));
    pos += step;
  }
  hasher.update(std::string_view(data).substr(pos));
  CHECK(hasher.finish_hex() == sha256_hex(data));
  hasher.update("abc");
  CHECK(hasher.finish_hex() == sha256_hex("abc"));
}

TEST_CASE("sha256_file streams a file larger than its buffer and reports progress up to the size") {
  const auto path = std::filesystem::temp_directory_path() /
                    ("agentserve_sha256_test_" + std::to_string(::getpid()) + ".bin");
  std::string data(3 * (1 << 20) + 17, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 131 + (i >> 9));
  std::ofstream(path, std::ios::binary).write(data.data(), static_cast<std::streamsize>(data.size()));

  uint64_t last_done = 0, last_total = 0;
  int calls = 0;
  auto digest = sha256_file(path, [&](uint64_t done, uint64_t total) {
    CHECK(done > last_done);
    last_done = done;
    last_total = total;
    ++calls;
  });
  REQUIRE(digest.ok());
  CHECK(*digest == sha256_hex(data));
  CHECK(calls == 4);
  CHECK(last_done == data.size());
  CHECK(last_total == data.size());
  std::filesystem::remove(path);
}

TEST_CASE("sha256_file of a missing file is an IoError naming the file") {
  auto digest = sha256_file("/nonexistent/agentserve/weights.bin");
  REQUIRE_FALSE(digest.ok());
  CHECK(digest.status().code() == StatusCode::kIoError);
  CHECK(digest.status().message().find("weights.bin") != std::string::npos);
}

}  // namespace
}  // namespace agentserve
