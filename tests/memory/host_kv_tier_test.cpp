#include "memory/host_kv_tier.h"

#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <random>
#include <vector>

namespace agentserve::memory {
namespace {

const KvLayout kLayout{.n_layers = 1, .n_kv_heads = 1, .head_dim = 16, .block_size = 4};  // 512 bytes

struct TestBlock {
  BlockKey key;
  std::vector<int32_t> tokens;
  std::vector<std::byte> payload;

  explicit TestBlock(uint64_t n) : key{n, ~n}, payload(kLayout.block_bytes()) {
    for (int i = 0; i < kLayout.block_size; ++i) tokens.push_back(static_cast<int32_t>(n * 100 + i));
    std::mt19937_64 rng(n);
    for (auto& b : payload) b = static_cast<std::byte>(rng());
  }
  KvSpillBlock spill() const { return {key, tokens, payload}; }
};

Status put(HostKvTier& t, std::initializer_list<uint64_t> ns) {
  std::vector<TestBlock> blocks;
  for (uint64_t n : ns) blocks.emplace_back(n);
  std::vector<KvSpillBlock> spills;
  for (const auto& b : blocks) spills.push_back(b.spill());
  return t.put_batch(spills);
}

Status get_checked(HostKvTier& t, uint64_t n) {
  TestBlock want(n);
  std::vector<std::byte> out(kLayout.block_bytes());
  AS_RETURN_IF_ERROR(t.get(want.key, want.tokens, out));
  if (out != want.payload) return Status::internal("wrong bytes for block " + std::to_string(n));
  return Status::ok_status();
}

std::unique_ptr<HostKvTier> make_tier(int slots, HostKvTier::EvictCallback cb = {}) {
  auto t = HostKvTier::create(kLayout, static_cast<size_t>(slots) * kLayout.block_stride(), std::move(cb));
  REQUIRE_MESSAGE(t.ok(), t.status().to_string());
  REQUIRE((*t)->capacity_blocks() == slots);
  return std::move(t).value();
}

TEST_CASE("host tier returns the bytes put, misses unknown keys and refuses other token ids") {
  auto tier = make_tier(4);
  REQUIRE(put(*tier, {1, 2}).ok());
  CHECK(get_checked(*tier, 1).ok());
  CHECK(get_checked(*tier, 2).ok());
  CHECK(get_checked(*tier, 3).code() == StatusCode::kNotFound);
  std::vector<std::byte> out(kLayout.block_bytes());
  std::vector<int32_t> other{1, 2, 3, 4};
  CHECK(tier->get(TestBlock(1).key, other, out).code() == StatusCode::kFailedPrecondition);
  tier->erase(TestBlock(1).key);
  CHECK_FALSE(tier->contains(TestBlock(1).key));
  CHECK(tier->num_blocks() == 1);
  CHECK(tier->counters().hits == 2);
}

TEST_CASE("host tier evicts least recently used blocks in one callback with their bytes intact") {
  std::vector<std::vector<uint64_t>> calls;
  std::vector<bool> bytes_ok;
  auto tier = make_tier(3, [&](std::span<const KvSpillBlock> evicted) {
    calls.emplace_back();
    for (const KvSpillBlock& b : evicted) {
      calls.back().push_back(b.key.hi);
      TestBlock want(b.key.hi);
      bytes_ok.push_back(std::equal(b.payload.begin(), b.payload.end(), want.payload.begin()) &&
                         std::equal(b.tokens.begin(), b.tokens.end(), want.tokens.begin()));
    }
  });
  REQUIRE(put(*tier, {1, 2, 3}).ok());
  REQUIRE(get_checked(*tier, 1).ok());  // LRU order now 2, 3, 1
  REQUIRE(put(*tier, {4, 5}).ok());
  REQUIRE(calls.size() == 1);
  CHECK(calls[0] == std::vector<uint64_t>{2, 3});
  CHECK(std::all_of(bytes_ok.begin(), bytes_ok.end(), [](bool b) { return b; }));
  for (uint64_t n : {1, 4, 5}) CHECK(get_checked(*tier, n).ok());
  CHECK(tier->counters().evictions == 2);
}

TEST_CASE("host tier overwrites a held key in place and refuses a batch larger than its slots") {
  int evicted = 0;
  auto tier = make_tier(2, [&](std::span<const KvSpillBlock> e) { evicted += static_cast<int>(e.size()); });
  REQUIRE(put(*tier, {1, 2}).ok());
  REQUIRE(put(*tier, {2, 1, 2}).ok());  // both held: no eviction
  CHECK(evicted == 0);
  CHECK(tier->num_blocks() == 2);
  CHECK(put(*tier, {3, 4, 5}).code() == StatusCode::kResourceExhausted);
  CHECK(get_checked(*tier, 1).ok());
  CHECK(get_checked(*tier, 2).ok());
  std::vector<std::byte> small(3);
  TestBlock b(9);
  KvSpillBlock bad{b.key, b.tokens, small};
  CHECK(tier->put_batch({&bad, 1}).code() == StatusCode::kInvalidArgument);
  CHECK(HostKvTier::create(kLayout, 10).status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("blocks evicted from the host tier are found verified in the disk tier") {
  std::string tmpl = (std::filesystem::temp_directory_path() / "as-hosttier-XXXXXX").string();
  REQUIRE(mkdtemp(tmpl.data()) != nullptr);
  {
    auto store = RocksDbStore::open(StoreOptions{.path = tmpl + "/db"});
    REQUIRE(store.ok());
    auto disk = KvStore::open(**store, KvBlockFormat::make("m", kLayout), 1 << 20);
    REQUIRE(disk.ok());
    auto tier = make_tier(2, [&](std::span<const KvSpillBlock> e) { CHECK((*disk)->put_batch(e).ok()); });
    REQUIRE(put(*tier, {1, 2}).ok());
    REQUIRE(put(*tier, {3, 4}).ok());
    std::vector<std::byte> out(kLayout.block_bytes());
    for (uint64_t n : {1, 2}) {
      TestBlock want(n);
      REQUIRE((*disk)->get(want.key, want.tokens, out).ok());
      CHECK(out == want.payload);
    }
    CHECK_FALSE((*disk)->contains(TestBlock(3).key));
  }
  std::filesystem::remove_all(tmpl);
}

TEST_CASE("host tier evicts unpinned blocks first, and pinned ones only when nothing else makes room") {
  std::vector<BlockKey> evicted;
  auto t = HostKvTier::create(
      kLayout, 3 * kLayout.block_stride(),
      [&](std::span<const KvSpillBlock> out) {
        for (const auto& b : out) evicted.push_back(b.key);
      },
      [](const BlockKey& k) { return k == TestBlock(1).key || k == TestBlock(2).key; });
  REQUIRE(t.ok());
  HostKvTier& tier = **t;
  REQUIRE(put(tier, {1, 2, 3}).ok());
  REQUIRE(put(tier, {4}).ok());  // LRU is 1, but 1 is pinned: 3 goes
  REQUIRE(evicted.size() == 1);
  CHECK(evicted[0] == TestBlock(3).key);
  CHECK(tier.counters().pinned_evictions == 0);
  REQUIRE(put(tier, {5, 6}).ok());  // only 4 is unpinned: it goes, then the oldest pinned (1)
  REQUIRE(evicted.size() == 3);
  CHECK(evicted[1] == TestBlock(4).key);
  CHECK(evicted[2] == TestBlock(1).key);
  CHECK(tier.counters().pinned_evictions == 1);
  CHECK(get_checked(tier, 2).ok());
  CHECK(tier.bytes_used() == 3 * kLayout.block_stride());
  int seen = 0;
  tier.for_each([&](const KvSpillBlock& b) {
    seen++;
    CHECK(b.tokens.size() == 4);
  });
  CHECK(seen == 3);
}

}  // namespace
}  // namespace agentserve::memory
