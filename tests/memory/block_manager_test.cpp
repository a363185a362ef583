#include "memory/block_manager.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <memory>
#include <numeric>
#include <random>
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

// Random admissions, prefill chunks, decode steps and releases under memory pressure. Besides the
// bookkeeping invariants (check_integrity), a shadow "KV" per slot holds a hash of the whole prefix that
// produced it, so a reused cached block with the wrong content, or a write into a shared block, shows up.
// With `tiered`, evicted blocks spill (shadow and tokens) to a lower tier that admission loads them back
// from; one load in ten fails, as a corrupt block would, and the block is dropped.
class RandomWorkload : private BlockSource {
 public:
  static constexpr int kBlocks = 48;
  static constexpr int kBlockSize = 4;

  explicit RandomWorkload(uint32_t seed, bool tiered = false)
      : rng_(seed),
        m_(kBlocks, kBlockSize, [this](int block, const BlockKey& key) { on_evict(block, key); }),
        shadow_(kBlocks * kBlockSize, 0),
        tiered_(tiered) {
    if (tiered) m_.set_block_source(this);
    for (auto& family : families_) {
      for (int i = 0; i < 40; ++i) family.push_back(uniform(0, 20));
    }
  }

  void step() {
    int op = uniform(0, 9);
    if (op < 3 && live_.size() < 8) {
      admit();
    } else if (op < 9 && !live_.empty()) {
      advance(*live_[uniform(0, static_cast<int>(live_.size()) - 1)]);
    } else if (!live_.empty()) {
      size_t i = static_cast<size_t>(uniform(0, static_cast<int>(live_.size()) - 1));
      m_.release(*live_[i]);
      live_.erase(live_.begin() + static_cast<ptrdiff_t>(i));
    }
    std::vector<const SequenceState*> live;
    for (auto& s : live_) live.push_back(s.get());
    Status st = m_.check_integrity(live);
    REQUIRE_MESSAGE(st.ok(), st.to_string());
    for (auto& s : live_) check_shadow(*s);
  }

  int cached_admissions = 0;
  int refused = 0;
  int evictions = 0;
  int failed_loads = 0;
  int64_t loaded_blocks() const { return m_.stats().loaded_blocks; }

 private:
  struct Spilled {
    std::vector<int32_t> tokens;
    std::vector<uint64_t> shadow;
  };

  bool contains(const BlockKey& key) const override { return tier_.count(key) > 0; }
  bool load(const BlockKey& key, std::span<const int32_t> tokens, int block) override {
    auto it = tier_.find(key);
    REQUIRE(it != tier_.end());
    REQUIRE(std::equal(tokens.begin(), tokens.end(), it->second.tokens.begin(), it->second.tokens.end()));
    REQUIRE(m_.pool().ref_count(block) == 1);
    if (uniform(0, 9) == 0) {
      tier_.erase(it);
      ++failed_loads;
      return false;
    }
    std::copy(it->second.shadow.begin(), it->second.shadow.end(),
              shadow_.begin() + static_cast<ptrdiff_t>(block) * kBlockSize);
    return true;
  }

  int uniform(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }

  static uint64_t mix(uint64_t h, int32_t token) {
    h ^= static_cast<uint64_t>(static_cast<uint32_t>(token)) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    return h * 0xff51afd7ed558ccdull;
  }
  // What the KV of position `pos` depends on: the salt and every token up to and including it.
  static uint64_t expected(const SequenceState& s, int pos) {
    uint64_t h = s.salt.lo;
    for (int p = 0; p <= pos; ++p) h = mix(h, s.tokens[p]);
    return h;
  }

  void on_evict(int block, const BlockKey& key) {
    CHECK(m_.pool().ref_count(block) == 0);
    ++evictions;
    if (!tiered_) return;
    auto tokens = m_.block_tokens(block);
    auto first = shadow_.begin() + static_cast<ptrdiff_t>(block) * kBlockSize;
    tier_[key] = {{tokens.begin(), tokens.end()}, {first, first + kBlockSize}};
  }

  void admit() {
    auto s = std::make_unique<SequenceState>();
    const auto& family = families_[uniform(0, 3)];
    s->tokens.assign(family.begin(), family.begin() + uniform(1, 40));
    for (int i = uniform(0, 20); i > 0; --i) s->tokens.push_back(uniform(0, 20));
    s->salt = salts_[uniform(0, 1)];
    PrefixMatch match = m_.match_prefix(s->tokens, s->salt);
    int n_new = uniform(1, static_cast<int>(s->tokens.size()) - match.num_tokens);
    bool fits = m_.can_allocate(*s, n_new);
    int free_before = m_.pool().num_free();
    auto cached = m_.allocate(*s, n_new);
    REQUIRE(cached.ok() == fits);
    if (!fits) {
      CHECK(cached.status().code() == StatusCode::kResourceExhausted);
      CHECK(s->block_table.empty());
      CHECK(m_.pool().num_free() == free_before);
      ++refused;
      return;
    }
    // Only a failed load from the tier can end the prefix before the match.
    if (tiered_) {
      CHECK(*cached <= match.num_tokens);
    } else {
      CHECK(*cached == match.num_tokens);
    }
    CHECK(*cached % kBlockSize == 0);
    CHECK(*cached < static_cast<int>(s->tokens.size()));
    CHECK(m_.capacity(*s) >= *cached + n_new);
    cached_admissions += *cached > 0;
    compute(*s, std::min(n_new, static_cast<int>(s->tokens.size()) - *cached));
    live_.push_back(std::move(s));
  }

  // One more prefill chunk, or one decode step when the prompt is done.
  void advance(SequenceState& s) {
    int pending = static_cast<int>(s.tokens.size()) - s.num_computed;
    if (pending == 0) {
      if (s.tokens.size() >= 80) return;
      s.tokens.push_back(uniform(0, 20));
      pending = 1;
    }
    int n = uniform(1, pending);
    bool fits = m_.can_append(s, n);
    Status st = m_.append(s, n);
    REQUIRE(st.ok() == fits);
    if (!fits) {
      ++refused;
      return;
    }
    compute(s, n);
  }

  // The "forward": writes the KV of the next n tokens, then commits them.
  void compute(SequenceState& s, int n) {
    for (int pos = s.num_computed; pos < s.num_computed + n; ++pos) {
      KvSlot slot = m_.slot(s, pos);
      REQUIRE(m_.pool().ref_count(slot.block) == 1);  // a shared block is never written
      shadow_[static_cast<size_t>(slot.block) * kBlockSize + slot.offset] = expected(s, pos);
    }
    REQUIRE(m_.commit_computed(s, s.num_computed + n).ok());
  }

  void check_shadow(const SequenceState& s) {
    for (int pos = 0; pos < s.num_computed; ++pos) {
      KvSlot slot = m_.slot(s, pos);
      REQUIRE(shadow_[static_cast<size_t>(slot.block) * kBlockSize + slot.offset] == expected(s, pos));
    }
  }

  std::mt19937 rng_;
  BlockManager m_;
  std::vector<uint64_t> shadow_;
  std::vector<int32_t> families_[4];
  BlockKey salts_[2] = {make_salt("m", "tenant-1"), make_salt("m", "tenant-2")};
  std::vector<std::unique_ptr<SequenceState>> live_;
  bool tiered_ = false;
  std::unordered_map<BlockKey, Spilled> tier_;
};

TEST_CASE("randomized admissions, chunks, decodes and releases keep every invariant and the right KV") {
  for (uint32_t seed : {1u, 2u, 3u}) {
    RandomWorkload w(seed);
    for (int i = 0; i < 3000; ++i) w.step();
    // The run must have exercised the cache, eviction and refusal paths to mean anything.
    CHECK(w.cached_admissions > 50);
    CHECK(w.evictions > 50);
    CHECK(w.refused > 10);
  }
}

TEST_CASE("randomized workload with a spill tier loads evicted blocks back with the right KV") {
  for (uint32_t seed : {4u, 5u, 6u}) {
    RandomWorkload w(seed, true);
    for (int i = 0; i < 3000; ++i) w.step();
    CHECK(w.loaded_blocks() > 50);
    CHECK(w.failed_loads > 5);
    CHECK(w.evictions > 50);
  }
}

}  // namespace
}  // namespace agentserve::memory
