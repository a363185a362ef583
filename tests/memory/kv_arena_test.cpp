#include "memory/kv_arena.h"

#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>

namespace agentserve::memory {
namespace {

// A distinct value for every float of every block (all below 2^24, so exact), so a wrong offset shows up.
float tag(const KvLayout& l, int block, int layer, int is_v, size_t i) {
  return static_cast<float>(
      ((static_cast<size_t>(block) * l.n_layers + layer) * 2 + is_v) * l.tensor_elems() + i);
}

TEST_CASE("arena pointers match the plain offset formula and regions never overlap, on odd shapes") {
  for (KvLayout l : {KvLayout{.n_layers = 1, .n_kv_heads = 1, .head_dim = 1, .block_size = 1},
                     KvLayout{.n_layers = 3, .n_kv_heads = 2, .head_dim = 3, .block_size = 17},
                     KvLayout{.n_layers = 2, .n_kv_heads = 4, .head_dim = 128, .block_size = 16}}) {
    const int n_blocks = 5;
    auto arena = KvArena::create(l, n_blocks);
    REQUIRE(arena.ok());
    CHECK(arena->total_bytes() == n_blocks * l.block_stride());
    for (int b = 0; b < n_blocks; ++b) {
      CHECK(reinterpret_cast<uintptr_t>(arena->block_bytes(b).data()) % 64 == 0);
      CHECK(arena->block_bytes(b).size() == l.block_bytes());
      for (int layer = 0; layer < l.n_layers; ++layer) {
        for (size_t i = 0; i < l.tensor_elems(); ++i) {
          arena->k(b, layer)[i] = tag(l, b, layer, 0, i);
          arena->v(b, layer)[i] = tag(l, b, layer, 1, i);
        }
      }
    }
    // Read back through the byte view, with the offsets computed by hand.
    const KvArena& ro = *arena;
    for (int b = 0; b < n_blocks; ++b) {
      std::span<const std::byte> bytes = ro.block_bytes(b);
      for (int layer = 0; layer < l.n_layers; ++layer) {
        for (int is_v = 0; is_v < 2; ++is_v) {
          for (size_t i = 0; i < l.tensor_elems(); ++i) {
            size_t offset = ((static_cast<size_t>(layer) * 2 + is_v) * l.tensor_elems() + i) * sizeof(float);
            float f;
            std::memcpy(&f, bytes.data() + offset, sizeof f);
            REQUIRE(f == tag(l, b, layer, is_v, i));
          }
        }
      }
    }
  }
}

TEST_CASE("a new arena reads as zeros") {
  KvLayout l{.n_layers = 2, .n_kv_heads = 2, .head_dim = 5, .block_size = 3};
  auto arena = KvArena::create(l, 4);
  REQUIRE(arena.ok());
  for (int b = 0; b < 4; ++b) {
    for (std::byte x : arena->block_bytes(b)) REQUIRE(x == std::byte{0});
  }
}

TEST_CASE("arena creation reports bad layouts and counts as errors, and allows zero blocks") {
  CHECK(KvArena::create(KvLayout{}, 4).status().code() == StatusCode::kInvalidArgument);
  KvLayout l{.n_layers = 1, .n_kv_heads = 1, .head_dim = 16, .block_size = 1};
  CHECK(KvArena::create(l, -1).status().code() == StatusCode::kInvalidArgument);
  auto empty = KvArena::create(l, 0);
  REQUIRE(empty.ok());
  CHECK(empty->total_bytes() == 0);
  // 2^31 blocks of 1 TiB: the product overflows 64 bits.
  KvLayout big{.n_layers = 1 << 10, .n_kv_heads = 1 << 10, .head_dim = 1 << 10, .block_size = 1 << 7};
  REQUIRE(big.validate().ok());
  CHECK(KvArena::create(big, INT32_MAX).status().code() == StatusCode::kResourceExhausted);
}

TEST_CASE("an arena moves without copying its memory") {
  KvLayout l{.n_layers = 1, .n_kv_heads = 1, .head_dim = 16, .block_size = 2};
  auto arena = KvArena::create(l, 2);
  REQUIRE(arena.ok());
  float* k = arena->k(1, 0);
  k[0] = 42.0f;
  KvArena moved = std::move(arena).value();
  CHECK(moved.k(1, 0) == k);
  CHECK(moved.k(1, 0)[0] == 42.0f);
}

}  // namespace
}  // namespace agentserve::memory
