#include "memory/block_pool.h"

#include <doctest/doctest.h>

#include <numeric>
#include <set>
#include <utility>
#include <vector>

namespace agentserve::memory {
namespace {

constexpr int kBlock = 4;

std::vector<int32_t> block_tokens(int32_t first) {
  std::vector<int32_t> t(kBlock);
  std::iota(t.begin(), t.end(), first);
  return t;
}

BlockKey key_of(int i) {
  return BlockKey{0x1000u + static_cast<uint64_t>(i), 0xabcdu};
}

// Allocates a block, publishes it under key_of(i) with block_tokens(i * kBlock), returns its id.
int cached_block(BlockPool& pool, int i) {
  int b = pool.allocate();
  REQUIRE(b >= 0);
  REQUIRE(pool.commit(b, key_of(i), block_tokens(i * kBlock)));
  return b;
}

TEST_CASE("a fresh pool hands out every block once, then reports exhaustion without changing") {
  BlockPool pool(5, kBlock);
  CHECK(pool.num_free() == 5);
  CHECK(pool.can_allocate(5));
  CHECK_FALSE(pool.can_allocate(6));
  std::set<int> ids;
  for (int i = 0; i < 5; ++i) ids.insert(pool.allocate());
  CHECK(ids == std::set<int>{0, 1, 2, 3, 4});
  CHECK(pool.num_free() == 0);
  CHECK(pool.allocate() == -1);
  CHECK(pool.check_integrity().ok());
  for (int b : ids) CHECK(pool.ref_count(b) == 1);
}

TEST_CASE("a freed full block keeps its key and is found again, and a hit takes it off the free list") {
  BlockPool pool(4, kBlock);
  int b = cached_block(pool, 0);
  pool.release(b);
  CHECK(pool.is_free(b));
  CHECK(pool.num_free() == 4);
  CHECK(pool.num_cached() == 1);
  REQUIRE(pool.lookup(key_of(0), block_tokens(0)) == b);
  pool.acquire(b);
  CHECK(pool.ref_count(b) == 1);
  CHECK(pool.num_free() == 3);
  CHECK(pool.check_integrity().ok());
  // The other three are handed out without touching the acquired block.
  for (int i = 0; i < 3; ++i) CHECK(pool.allocate() != b);
  CHECK(pool.allocate() == -1);
  CHECK(pool.evictions() == 0);
  CHECK(pool.check_integrity().ok());
}

TEST_CASE("a forced 128-bit key collision never returns a block whose tokens differ") {
  BlockPool pool(2, kBlock);
  int b = cached_block(pool, 0);
  std::vector<int32_t> other = block_tokens(0);
  other[3] = 999;  // same (fake) key, different content
  CHECK(pool.lookup(key_of(0), other) == -1);
  std::vector<int32_t> shorter = block_tokens(0);
  shorter.pop_back();
  CHECK(pool.lookup(key_of(0), shorter) == -1);
  CHECK(pool.lookup(key_of(0), block_tokens(0)) == b);
  CHECK(pool.lookup(key_of(1), block_tokens(0)) == -1);
}

TEST_CASE("committing a key twice keeps the first block indexed and the second private, reused first") {
  BlockPool pool(4, kBlock);
  int first = cached_block(pool, 0);
  int second = pool.allocate();
  CHECK_FALSE(pool.commit(second, key_of(0), block_tokens(0)));
  CHECK_FALSE(pool.key(second).has_value());
  CHECK(pool.lookup(key_of(0), block_tokens(0)) == first);
  CHECK(pool.num_cached() == 1);
  pool.release(first);
  pool.release(second);
  CHECK(pool.check_integrity().ok());
  // Free list: [second (keyless), 2 untouched..., first (keyed)]; the keyless ones go before any eviction.
  std::set<int> taken;
  for (int i = 0; i < 3; ++i) taken.insert(pool.allocate());
  CHECK(taken.count(second) == 1);
  CHECK(taken.count(first) == 0);
  CHECK(pool.evictions() == 0);
  CHECK(pool.lookup(key_of(0), block_tokens(0)) == first);
}

TEST_CASE("allocation evicts cached blocks least recently freed first and reports each eviction") {
  std::vector<std::pair<int, BlockKey>> evicted;
  BlockPool pool(3, kBlock, [&](int block, const BlockKey& key) { evicted.emplace_back(block, key); });
  int a = cached_block(pool, 0);
  int b = cached_block(pool, 1);
  int c = cached_block(pool, 2);
  pool.release(b);
  pool.release(c);
  pool.release(a);  // a is now the most recently freed
  CHECK(pool.check_integrity().ok());
  CHECK(pool.allocate() == b);
  CHECK(pool.allocate() == c);
  REQUIRE(evicted.size() == 2);
  CHECK(evicted[0] == std::pair(b, key_of(1)));
  CHECK(evicted[1] == std::pair(c, key_of(2)));
  CHECK(pool.evictions() == 2);
  CHECK(pool.num_cached() == 1);
  CHECK(pool.lookup(key_of(1), block_tokens(4)) == -1);
  CHECK(pool.lookup(key_of(0), block_tokens(0)) == a);
  CHECK_FALSE(pool.key(b).has_value());
  CHECK(pool.check_integrity().ok());
}

TEST_CASE("a block shared by two owners is freed only when both release it") {
  BlockPool pool(2, kBlock);
  int b = cached_block(pool, 0);
  pool.acquire(b);
  CHECK(pool.ref_count(b) == 2);
  pool.release(b);
  CHECK_FALSE(pool.is_free(b));
  CHECK(pool.num_free() == 1);
  pool.release(b);
  CHECK(pool.is_free(b));
  CHECK(pool.num_free() == 2);
  CHECK(pool.check_integrity().ok());
}

TEST_CASE("an empty pool is valid and never allocates") {
  BlockPool pool(0, kBlock);
  CHECK(pool.num_free() == 0);
  CHECK(pool.can_allocate(0));
  CHECK_FALSE(pool.can_allocate(1));
  CHECK(pool.allocate() == -1);
  CHECK(pool.check_integrity().ok());
}

}  // namespace
}  // namespace agentserve::memory
