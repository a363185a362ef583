#include "memory/block_manager.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <random>
#include <unordered_map>
#include <vector>

namespace agentserve::memory {
namespace {

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
