#include "memory/block_manager.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <memory>
#include <numeric>
#include <unordered_map>
#include <vector>

namespace agentserve::memory {
namespace {

const BlockKey kSalt = make_salt("test-model", "");

std::vector<int32_t> prompt(int32_t first, int n) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  std::iota(t.begin(), t.end(), first);
  return t;
}

SequenceState sequence(std::vector<int32_t> tokens, BlockKey salt = kSalt) {
  SequenceState s;
  s.tokens = std::move(tokens);
  s.salt = salt;
  return s;
}

// Admits the sequence for its whole prompt and "runs" the prefill; returns the cached tokens.
int prefill(BlockManager& m, SequenceState& s) {
  PrefixMatch match = m.match_prefix(s.tokens, s.salt);
  int n_new = static_cast<int>(s.tokens.size()) - match.num_tokens;
  REQUIRE(m.can_allocate(s, n_new));
  auto cached = m.allocate(s, n_new);
  REQUIRE(cached.ok());
  CHECK(*cached == match.num_tokens);
  REQUIRE(m.commit_computed(s, static_cast<int>(s.tokens.size())).ok());
  return *cached;
}

Status integrity(const BlockManager& m, std::initializer_list<const SequenceState*> live) {
  return m.check_integrity(std::span<const SequenceState* const>(live.begin(), live.size()));
}

TEST_CASE("a second sequence sharing a 1,000-token prefix gets 62 blocks (992 tokens) from the cache") {
  BlockManager m(200, 16);
  SequenceState a = sequence(prompt(0, 1000));
  CHECK(prefill(m, a) == 0);
  CHECK(a.block_table.size() == 63);
  CHECK(m.pool().num_cached() == 62);  // the 8-token tail block is not full

  std::vector<int32_t> longer = prompt(0, 1000);
  longer.push_back(77777);
  SequenceState b = sequence(longer);
  PrefixMatch match = m.match_prefix(b.tokens, b.salt);
  CHECK(match.num_blocks == 62);
  CHECK(match.num_tokens == 992);
  CHECK(match.num_free_hits == 0);
  CHECK(prefill(m, b) == 992);
  CHECK(b.num_computed == 1001);
  for (int i = 0; i < 62; ++i) {
    CHECK(b.block_table[i] == a.block_table[i]);
    CHECK(m.pool().ref_count(a.block_table[i]) == 2);
  }
  CHECK(b.block_table[62] != a.block_table[62]);
  CHECK(m.stats().hit_blocks == 62);
  CHECK(integrity(m, {&a, &b}).ok());
}

TEST_CASE(
    "the last prompt token is always computed: an identical, block-aligned prompt reuses all but one block") {
  std::vector<int> evicted;
  BlockManager m(64, 16, [&](int block, const BlockKey&) { evicted.push_back(block); });
  SequenceState a = sequence(prompt(0, 1008));  // 63 full blocks, all cached
  prefill(m, a);
  CHECK(m.pool().num_cached() == 63);
  SequenceState b = sequence(prompt(0, 1008));
  CHECK(prefill(m, b) == 992);
  // b recomputed block 62 into its own block; the index keeps a's copy, b's stays private.
  CHECK(b.block_table[62] != a.block_table[62]);
  CHECK_FALSE(m.pool().key(b.block_table[62]).has_value());
  CHECK(m.pool().num_cached() == 63);
  CHECK(m.pool().num_free() == 0);
  CHECK(integrity(m, {&a, &b}).ok());
  const int b_private = b.block_table[62];
  const int a_tail = a.block_table[62];
  m.release(a);
  m.release(b);
  CHECK(integrity(m, {}).ok());
  // The private duplicate is reused before any cached block; the next allocation evicts a's tail.
  SequenceState c = sequence(prompt(50000, 16));
  REQUIRE(m.allocate(c, 16).ok());
  CHECK(c.block_table[0] == b_private);
  CHECK(evicted.empty());
  SequenceState d = sequence(prompt(60000, 16));
  REQUIRE(m.allocate(d, 16).ok());
  CHECK(evicted == std::vector<int>{a_tail});
  CHECK(m.match_prefix(prompt(0, 1008), kSalt).num_blocks == 62);
}

TEST_CASE("different salts never share blocks") {
  BlockManager m(100, 16);
  std::vector<int32_t> t = prompt(0, 200);
  SequenceState a = sequence(t, make_salt("model", "tenant-a"));
  SequenceState b = sequence(t, make_salt("model", "tenant-b"));
  SequenceState c = sequence(t, make_salt("other-model", "tenant-a"));
  prefill(m, a);
  CHECK(prefill(m, b) == 0);
  CHECK(prefill(m, c) == 0);
  SequenceState a2 = sequence(t, make_salt("model", "tenant-a"));
  CHECK(prefill(m, a2) == 192);
  CHECK(integrity(m, {&a, &b, &c, &a2}).ok());
}

TEST_CASE("ref counts return to zero after release, and full blocks stay cached") {
  BlockManager m(100, 16);
  SequenceState a = sequence(prompt(0, 100));
  SequenceState b = sequence(prompt(0, 120));
  prefill(m, a);
  prefill(m, b);
  m.release(b);
  m.release(a);
  for (int id = 0; id < 100; ++id) CHECK(m.pool().ref_count(id) == 0);
  CHECK(m.pool().num_free() == 100);
  CHECK(m.pool().num_cached() == 7);  // 120 tokens: 7 full blocks
  CHECK(a.block_table.empty());
  CHECK(a.num_computed == 0);
  CHECK(integrity(m, {}).ok());
  m.release(a);  // releasing an empty sequence is a no-op
  CHECK(integrity(m, {}).ok());
}

TEST_CASE("a hit on a cached free block takes it off the free list") {
  BlockManager m(20, 16);
  SequenceState a = sequence(prompt(0, 64));
  prefill(m, a);
  std::vector<int> a_blocks = a.block_table;
  m.release(a);
  CHECK(m.pool().num_free() == 20);
  SequenceState b = sequence(prompt(0, 64));
  PrefixMatch match = m.match_prefix(b.tokens, b.salt);
  CHECK(match.num_blocks == 3);
  CHECK(match.num_free_hits == 3);
  CHECK(prefill(m, b) == 48);
  for (int i = 0; i < 3; ++i) {
    CHECK(b.block_table[i] == a_blocks[i]);
    CHECK_FALSE(m.pool().is_free(a_blocks[i]));
  }
  CHECK(m.pool().num_free() == 16);  // 3 hits + 1 fresh block
  CHECK(integrity(m, {&b}).ok());
}

TEST_CASE("eviction under pressure takes the least recently used sequence first, its chain tail first") {
  std::vector<int> evicted;
  BlockManager m(8, 4, [&](int block, const BlockKey&) { evicted.push_back(block); });
  SequenceState a = sequence(prompt(0, 16));    // 4 full blocks
  SequenceState b = sequence(prompt(100, 16));  // 4 full blocks
  prefill(m, a);
  prefill(m, b);
  std::vector<int> a_blocks = a.block_table;
  std::vector<int> b_blocks = b.block_table;
  m.release(a);  // a is older
  m.release(b);
  SequenceState c = sequence(prompt(500, 8));
  REQUIRE(m.allocate(c, 8).ok());
  CHECK(evicted == std::vector<int>{a_blocks[3], a_blocks[2]});
  // a's prefix is still useful (head kept), b is untouched.
  CHECK(m.match_prefix(a.tokens, kSalt).num_blocks == 2);
  CHECK(m.match_prefix(b.tokens, kSalt).num_blocks == 3);  // capped at (16 - 1) / 4
  CHECK(integrity(m, {&c}).ok());
}

TEST_CASE("admission never evicts the blocks it matched") {
  std::vector<int> evicted;
  BlockManager m(6, 4, [&](int block, const BlockKey&) { evicted.push_back(block); });
  SequenceState a = sequence(prompt(0, 20));  // 5 full blocks, one block left untouched
  prefill(m, a);
  std::vector<int> a_blocks = a.block_table;
  m.release(a);
  std::vector<int32_t> t = prompt(0, 8);  // a's first two blocks, then new tokens
  for (int i = 0; i < 12; ++i) t.push_back(9000 + i);
  SequenceState b = sequence(t);
  REQUIRE(m.can_allocate(b, 12));
  REQUIRE(m.allocate(b, 12).value() == 8);
  CHECK(b.block_table[0] == a_blocks[0]);
  CHECK(b.block_table[1] == a_blocks[1]);
  // Fresh blocks: the never-used one, then a's tail (a_blocks[4], a_blocks[3]); a_blocks[2] stays cached.
  CHECK(evicted == std::vector<int>{a_blocks[4], a_blocks[3]});
  CHECK(m.pool().key(a_blocks[2]).has_value());
  CHECK(integrity(m, {&b}).ok());
}

TEST_CASE("a match stops at the first missing block even when later blocks of the chain are cached") {
  std::vector<int> evicted;
  BlockManager m(8, 4, [&](int block, const BlockKey&) { evicted.push_back(block); });
  // a and b run concurrently: a publishes blocks 0-1 first, so b's copies of them stay private and only
  // b's blocks 2-3 enter the index.
  SequenceState a = sequence(prompt(0, 9));
  SequenceState b = sequence(prompt(0, 17));
  REQUIRE(m.allocate(a, 9).ok());
  REQUIRE(m.allocate(b, 17).ok());
  REQUIRE(m.commit_computed(a, 9).ok());
  REQUIRE(m.commit_computed(b, 17).ok());
  CHECK(m.pool().num_cached() == 4);
  CHECK_FALSE(m.pool().key(b.block_table[0]).has_value());
  CHECK(integrity(m, {&a, &b}).ok());
  const int a1 = a.block_table[1];
  m.release(a);
  m.release(b);
  // Free list: [4 keyless | a1, a0, b3, b2]. Five fresh blocks evict a1 only: block 1 of the chain is gone.
  SequenceState c = sequence(prompt(100, 20));
  REQUIRE(m.allocate(c, 20).ok());
  CHECK(evicted == std::vector<int>{a1});
  CHECK(m.match_prefix(prompt(0, 17), kSalt).num_blocks == 1);
  CHECK(integrity(m, {&c}).ok());
}

TEST_CASE("admission that does not fit fails cleanly and changes nothing") {
  BlockManager m(4, 16);
  SequenceState a = sequence(prompt(0, 65));  // 5 blocks
  CHECK_FALSE(m.can_allocate(a, 65));
  auto r = m.allocate(a, 65);
  CHECK(r.status().code() == StatusCode::kResourceExhausted);
  CHECK(a.block_table.empty());
  CHECK(a.block_keys.empty());
  CHECK(m.pool().num_free() == 4);
  CHECK(m.can_allocate(a, 64));
  CHECK(integrity(m, {}).ok());
}

TEST_CASE("bad requests are errors, not crashes") {
  BlockManager m(8, 4);
  SequenceState empty = sequence({});
  CHECK_FALSE(m.can_allocate(empty, 1));
  CHECK(m.allocate(empty, 1).status().code() == StatusCode::kInvalidArgument);
  SequenceState a = sequence(prompt(0, 10));
  CHECK(m.allocate(a, -1).status().code() == StatusCode::kInvalidArgument);
  REQUIRE(m.allocate(a, 10).ok());
  CHECK(m.allocate(a, 10).status().code() == StatusCode::kFailedPrecondition);
  CHECK_FALSE(m.can_allocate(a, 1));
  CHECK(m.commit_computed(a, 13).code() == StatusCode::kInvalidArgument);  // past capacity (12)
  CHECK(m.commit_computed(a, 11).code() == StatusCode::kInvalidArgument);  // past the known tokens
  REQUIRE(m.commit_computed(a, 8).ok());
  CHECK(m.commit_computed(a, 7).code() == StatusCode::kInvalidArgument);  // backwards
  CHECK_FALSE(m.can_append(a, -1));
  CHECK(m.append(a, -1).code() == StatusCode::kInvalidArgument);
  CHECK(m.append(a, 1 << 30).code() == StatusCode::kResourceExhausted);
  CHECK(integrity(m, {&a}).ok());
}

TEST_CASE("decode appends a block only at a block boundary and publishes blocks as they fill") {
  BlockManager m(10, 4);
  SequenceState a = sequence(prompt(0, 5));
  prefill(m, a);
  CHECK(a.block_table.size() == 2);
  CHECK(m.slot(a, 5).block == a.block_table[1]);
  CHECK(m.slot(a, 5).offset == 1);
  for (int step = 0; step < 6; ++step) {
    a.tokens.push_back(100 + step);
    int pos = a.num_computed;
    REQUIRE(m.can_append(a, 1));
    REQUIRE(m.append(a, 1).ok());
    CHECK(m.capacity(a) > pos);
    CHECK(m.capacity(a) == (pos / 4 + 1) * 4);
    KvSlot s = m.slot(a, pos);
    CHECK(s.block == a.block_table[pos / 4]);
    CHECK(s.offset == pos % 4);
    REQUIRE(m.commit_computed(a, pos + 1).ok());
    CHECK(static_cast<int>(a.block_keys.size()) == (pos + 1) / 4);
    CHECK(integrity(m, {&a}).ok());
  }
  // 11 tokens computed: 2 full blocks published; a new sequence with them and one more token reuses both.
  std::vector<int32_t> t(a.tokens.begin(), a.tokens.begin() + 9);
  CHECK(m.match_prefix(t, kSalt).num_blocks == 2);
}

TEST_CASE("chunked prefill ends with the same blocks and keys as a one-shot prefill") {
  BlockManager m(200, 16);
  SequenceState whole = sequence(prompt(0, 1000), make_salt("m", "x"));
  prefill(m, whole);
  SequenceState chunked = sequence(prompt(0, 1000), make_salt("m", "y"));
  REQUIRE(m.allocate(chunked, 100).ok());
  CHECK(m.capacity(chunked) == 112);
  REQUIRE(m.commit_computed(chunked, 100).ok());
  while (chunked.num_computed < 1000) {
    int n = std::min(137, 1000 - chunked.num_computed);
    REQUIRE(m.append(chunked, n).ok());
    REQUIRE(m.commit_computed(chunked, chunked.num_computed + n).ok());
    CHECK(integrity(m, {&whole, &chunked}).ok());
  }
  CHECK(chunked.block_table.size() == whole.block_table.size());
  CHECK(chunked.block_keys.size() == 62);
  // Same tokens, different salt: same count of keys, none equal.
  for (size_t i = 0; i < chunked.block_keys.size(); ++i) CHECK(chunked.block_keys[i] != whole.block_keys[i]);
  SequenceState again = sequence(prompt(0, 1000), make_salt("m", "y"));
  CHECK(m.match_prefix(again.tokens, again.salt).num_tokens == 992);
}

TEST_CASE("prefix cache counters count hit and missed blocks at admission") {
  BlockManager m(100, 16);
  SequenceState a = sequence(prompt(0, 100));  // 6 eligible blocks, all missed
  prefill(m, a);
  SequenceState b = sequence(prompt(0, 70));  // 4 eligible, all hit
  prefill(m, b);
  PrefixCacheStats s = m.stats();
  CHECK(s.hit_blocks == 4);
  CHECK(s.miss_blocks == 6);
  CHECK(s.num_cached == 6);
  CHECK(s.num_free == 100 - 7 - 1);
}

TEST_CASE("a sequence that is not cacheable neither reuses nor publishes blocks") {
  BlockManager m(20, 4);
  SequenceState a = sequence(prompt(0, 17));
  prefill(m, a);
  SequenceState s = sequence(prompt(0, 17));
  s.cacheable = false;
  REQUIRE(m.can_allocate(s, 17));
  auto cached = m.allocate(s, 17);
  REQUIRE(cached.ok());
  CHECK(*cached == 0);
  REQUIRE(m.commit_computed(s, 17).ok());
  CHECK(s.block_keys.size() == 4);
  for (int block : s.block_table) CHECK_FALSE(m.pool().key(block).has_value());
  CHECK(m.pool().num_cached() == 4);  // a's blocks only
  CHECK(integrity(m, {&a, &s}).ok());
}

// A lower tier that holds chosen blocks of a chain; load() records which key went into which T0 block.
class FakeSource : public BlockSource {
 public:
  // Holds blocks [first, last) of the chain of `tokens` (block size 4); `failing` blocks fail to load.
  void hold(const std::vector<int32_t>& tokens, int first, int last, std::vector<int> failing = {}) {
    BlockKey parent = kRootBlockKey;
    for (int i = 0; i < last; ++i) {
      parent = chain_block_key(parent, std::span<const int32_t>(tokens).subspan(i * 4, 4), kSalt);
      if (i >= first) held_[parent] = std::find(failing.begin(), failing.end(), i) == failing.end();
    }
  }
  bool contains(const BlockKey& key) const override { return held_.count(key) > 0; }
  bool load(const BlockKey& key, std::span<const int32_t>, int block) override {
    auto it = held_.find(key);
    if (it == held_.end() || !it->second) return false;
    loaded_into[block] = key;
    return true;
  }
  std::unordered_map<int, BlockKey> loaded_into;

 private:
  std::unordered_map<BlockKey, bool> held_;  // key -> loads fine
};

TEST_CASE("a prefix missing from T0 is loaded from the block source into fresh blocks that count as cached") {
  BlockManager m(20, 4);
  FakeSource source;
  m.set_block_source(&source);
  const auto tokens = prompt(0, 17);
  source.hold(tokens, 0, 4);
  SequenceState s = sequence(tokens);
  PrefixMatch match = m.match_prefix(s.tokens, s.salt);
  CHECK(match.num_blocks == 4);
  CHECK(match.num_source_hits == 4);
  CHECK(match.num_free_hits == 0);
  CHECK(m.can_allocate(s, 1));
  auto cached = m.allocate(s, 1);
  REQUIRE(cached.ok());
  CHECK(*cached == 16);
  CHECK(s.num_computed == 16);
  REQUIRE(s.block_table.size() == 5);
  for (int i = 0; i < 4; ++i) {
    CHECK(source.loaded_into.at(s.block_table[i]) == s.block_keys[i]);
    CHECK(m.pool().key(s.block_table[i]) == s.block_keys[i]);
  }
  CHECK(m.stats().loaded_blocks == 4);
  CHECK(m.stats().hit_blocks == 0);
  CHECK(m.stats().miss_blocks == 0);
  CHECK(integrity(m, {&s}).ok());

  // Once loaded, the blocks are ordinary T0 cache entries.
  REQUIRE(m.commit_computed(s, 17).ok());
  m.release(s);
  SequenceState t = sequence(tokens);
  CHECK(prefill(m, t) == 16);
  CHECK(m.stats().hit_blocks == 4);
  CHECK(m.stats().loaded_blocks == 4);
  CHECK(integrity(m, {&t}).ok());
}

TEST_CASE("a failed load ends the cached prefix there and gives back every block after it") {
  BlockManager m(20, 4);
  FakeSource source;
  const auto tokens = prompt(0, 21);  // 5 eligible blocks
  SequenceState head = sequence(prompt(0, 9));
  prefill(m, head);  // blocks 0 and 1 in T0
  m.release(head);
  m.set_block_source(&source);
  source.hold(tokens, 2, 5, {3});
  SequenceState s = sequence(tokens);
  PrefixMatch match = m.match_prefix(s.tokens, s.salt);
  CHECK(match.num_blocks == 5);
  CHECK(match.num_source_hits == 3);
  CHECK(match.num_free_hits == 2);
  const int n_new = static_cast<int>(tokens.size()) - match.num_tokens;
  REQUIRE(m.can_allocate(s, n_new));
  auto cached = m.allocate(s, n_new);
  REQUIRE(cached.ok());
  CHECK(*cached == 12);  // blocks 0, 1 from T0, 2 loaded, 3 failed
  CHECK(s.num_computed == 12);
  CHECK(s.block_table.size() == 4);  // 3 cached + room for the n_new tokens after them
  CHECK(m.pool().num_free() == 20 - 4);
  CHECK(m.stats().hit_blocks == 2);
  CHECK(m.stats().loaded_blocks == 1);
  CHECK(integrity(m, {&s}).ok());
  // The rest is computed in chunks like any prefill.
  REQUIRE(m.commit_computed(s, 12 + n_new).ok());
  REQUIRE(m.append(s, static_cast<int>(tokens.size()) - s.num_computed).ok());
  REQUIRE(m.commit_computed(s, 21).ok());
  CHECK(integrity(m, {&s}).ok());
}

TEST_CASE("the cap on cached tokens holds for blocks the source has") {
  BlockManager m(20, 4);
  FakeSource source;
  m.set_block_source(&source);
  const auto tokens = prompt(0, 20);
  source.hold(tokens, 0, 5);
  SequenceState s = sequence(tokens);
  CHECK(m.match_prefix(s.tokens, s.salt).num_blocks == 4);  // the last token is always computed
  CHECK(prefill(m, s) == 16);
  CHECK(integrity(m, {&s}).ok());
}

TEST_CASE("the evict callback can read the evicted block's token ids, tail block first") {
  std::vector<std::vector<int32_t>> spilled;
  std::unique_ptr<BlockManager> m;
  m = std::make_unique<BlockManager>(3, 4, [&](int block, const BlockKey&) {
    auto t = m->block_tokens(block);
    spilled.emplace_back(t.begin(), t.end());
  });
  SequenceState a = sequence(prompt(0, 9));
  prefill(*m, a);
  m->release(a);
  SequenceState b = sequence(prompt(100, 12));
  REQUIRE(m->allocate(b, 12).ok());
  CHECK(spilled == std::vector<std::vector<int32_t>>{prompt(4, 4), prompt(0, 4)});
}

}  // namespace
}  // namespace agentserve::memory
