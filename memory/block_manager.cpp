#include "memory/block_manager.h"

#include <algorithm>
#include <limits>
#include <string>

namespace agentserve::memory {
namespace {

// Full blocks of a prompt that may come from the cache: (n - 1) / block_size, so the last token is always
// computed and no shared block is ever written.
int eligible_blocks(size_t n_tokens, int block_size) {
  return n_tokens == 0 ? 0 : static_cast<int>((n_tokens - 1) / static_cast<size_t>(block_size));
}

// Walks the hash chain of `tokens` while T0 or the source holds the next block, calling on_hit(block, key)
// for each (block -1: in the source only).
template <typename OnHit>
PrefixMatch walk_prefix(const BlockPool& pool, const BlockSource* source, std::span<const int32_t> tokens,
                        const BlockKey& salt, OnHit&& on_hit) {
  const int bs = pool.block_size();
  const int max_blocks = eligible_blocks(tokens.size(), bs);
  PrefixMatch m;
  BlockKey parent = kRootBlockKey;
  for (int i = 0; i < max_blocks; ++i) {
    std::span<const int32_t> block_tokens = tokens.subspan(static_cast<size_t>(i) * bs, bs);
    BlockKey key = chain_block_key(parent, block_tokens, salt);
    int block = pool.lookup(key, block_tokens);
    if (block >= 0) {
      m.num_free_hits += pool.is_free(block) ? 1 : 0;
    } else if (source != nullptr && source->contains(key)) {
      ++m.num_source_hits;
    } else {
      break;
    }
    on_hit(block, key);
    ++m.num_blocks;
    parent = key;
  }
  m.num_tokens = m.num_blocks * bs;
  return m;
}

Status bad_admission(const SequenceState& seq, int n_new_tokens) {
  if (!seq.block_table.empty() || !seq.block_keys.empty() || seq.num_computed != 0) {
    return Status::failed_precondition("sequence already holds KV blocks");
  }
  if (seq.tokens.empty()) return Status::invalid_argument("cannot admit a sequence without tokens");
  if (n_new_tokens < 0)
    return Status::invalid_argument("negative token count " + std::to_string(n_new_tokens));
  return Status::ok_status();
}

}  // namespace

BlockManager::BlockManager(int num_blocks, int block_size, BlockPool::EvictCallback on_evict)
    : block_size_(block_size),
      pool_(num_blocks, block_size, std::move(on_evict)),
      block_tokens_(static_cast<size_t>(num_blocks) * static_cast<size_t>(block_size)) {}

PrefixCacheStats BlockManager::stats() const {
  return {hit_blocks_, loaded_blocks_, miss_blocks_, pool_.evictions(), pool_.num_free(), pool_.num_cached()};
}

PrefixMatch BlockManager::match_prefix(std::span<const int32_t> tokens, const BlockKey& salt) const {
  return walk_prefix(pool_, source_, tokens, salt, [](int, const BlockKey&) {});
}

PrefixMatch BlockManager::collect_prefix(SequenceState& seq) const {
  if (!seq.cacheable) return {};
  return walk_prefix(pool_, source_, seq.tokens, seq.salt, [&seq](int block, const BlockKey& key) {
    seq.block_table.push_back(block);
    seq.block_keys.push_back(key);
  });
}

bool BlockManager::can_allocate(const SequenceState& seq, int n_new_tokens) const {
  if (!bad_admission(seq, n_new_tokens).ok()) return false;
  PrefixMatch m = seq.cacheable ? match_prefix(seq.tokens, seq.salt) : PrefixMatch{};
  // Fresh blocks cover the tokens after the T0 hits: the source's blocks are loaded into fresh ones.
  int64_t fresh = (int64_t{m.num_tokens} + n_new_tokens + block_size_ - 1) / block_size_ -
                  (m.num_blocks - m.num_source_hits);
  return fresh + m.num_free_hits <= pool_.num_free();
}

Result<int> BlockManager::allocate(SequenceState& seq, int n_new_tokens) {
  AS_RETURN_IF_ERROR(bad_admission(seq, n_new_tokens));
  PrefixMatch m = collect_prefix(seq);
  int64_t fresh = (int64_t{m.num_tokens} + n_new_tokens + block_size_ - 1) / block_size_ -
                  (m.num_blocks - m.num_source_hits);
  if (fresh + m.num_free_hits > pool_.num_free()) {
    seq.block_table.clear();
    seq.block_keys.clear();
    return Status::resource_exhausted("KV cache needs " + std::to_string(fresh + m.num_free_hits) +
                                      " free blocks, has " + std::to_string(pool_.num_free()));
  }
  // A failed load keeps fewer blocks, but the blocks after a whole-block prefix number the same
  // (blocks_for(n_new_tokens)), and the blocks given back cover the difference, so this cannot run short.
  const int kept = take_prefix(seq);
  const int cached = kept * block_size_;
  const int64_t rest = (int64_t{n_new_tokens} + block_size_ - 1) / block_size_;
  seq.block_table.reserve(seq.block_table.size() + static_cast<size_t>(rest));
  for (int64_t i = 0; i < rest; ++i) seq.block_table.push_back(pool_.allocate());
  seq.num_computed = cached;
  miss_blocks_ += eligible_blocks(seq.tokens.size(), block_size_) - kept;
  return cached;
}

int BlockManager::take_prefix(SequenceState& seq) {
  // Take the hits before allocating, so a fresh allocation can never evict a block we just matched.
  for (int block : seq.block_table) {
    if (block >= 0) pool_.acquire(block);
  }
  const std::span<const int32_t> tokens(seq.tokens);
  const size_t n = seq.block_table.size();
  std::vector<BlockLoad> loads;
  std::vector<size_t> load_pos;  // chain position of each load
  for (size_t i = 0; i < n; ++i) {
    if (seq.block_table[i] >= 0) continue;
    seq.block_table[i] = pool_.allocate();
    loads.push_back({seq.block_keys[i], tokens.subspan(i * block_size_, block_size_), seq.block_table[i]});
    load_pos.push_back(i);
  }
  // On the caller's thread: a load from disk holds up this admission (and the engine step), which is why
  // the tiers batch it and prefetch ahead of it.
  const size_t loaded = loads.empty() ? 0 : static_cast<size_t>(source_->load_chain(loads));
  const size_t kept = loaded < loads.size() ? load_pos[loaded] : n;
  for (size_t j = 0; j < loaded && load_pos[j] < kept; ++j) {
    // A false return would mean the key is already indexed; the loaded copy then stays private, still valid.
    commit_block(loads[j].block, loads[j].key, loads[j].tokens);
    ++loaded_blocks_;
  }
  if (kept < n) {
    for (size_t j = n; j-- > kept;) pool_.release(seq.block_table[j]);
    seq.block_table.resize(kept);
    seq.block_keys.resize(kept);
  }
  // Every load before the first failure lies before `kept`, so `loaded` of the kept blocks came from below.
  hit_blocks_ += static_cast<int64_t>(kept - loaded);
  seq.restored_tokens = static_cast<int>(loaded) * block_size_;
  return static_cast<int>(kept);
}

bool BlockManager::commit_block(int block, const BlockKey& key, std::span<const int32_t> tokens) {
  if (!pool_.commit(block, key, tokens)) return false;
  std::copy(tokens.begin(), tokens.end(),
            block_tokens_.begin() + static_cast<ptrdiff_t>(block) * block_size_);
  return true;
}

int BlockManager::blocks_to_append(const SequenceState& seq, int n) const {
  if (n < 0) return std::numeric_limits<int>::max();
  int64_t needed = (int64_t{seq.num_computed} + n + block_size_ - 1) / block_size_;
  return static_cast<int>(std::max<int64_t>(0, needed - static_cast<int64_t>(seq.block_table.size())));
}

Status BlockManager::append(SequenceState& seq, int n) {
  if (n < 0) return Status::invalid_argument("negative token count " + std::to_string(n));
  int needed = blocks_to_append(seq, n);
  if (needed > pool_.num_free()) {
    return Status::resource_exhausted("KV cache needs " + std::to_string(needed) + " free blocks, has " +
                                      std::to_string(pool_.num_free()));
  }
  for (int i = 0; i < needed; ++i) seq.block_table.push_back(pool_.allocate());
  return Status::ok_status();
}

Status BlockManager::commit_computed(SequenceState& seq, int n_computed) {
  int limit = std::min<int64_t>(capacity(seq), static_cast<int64_t>(seq.tokens.size()));
  if (n_computed < seq.num_computed || n_computed > limit) {
    return Status::invalid_argument("computed tokens " + std::to_string(n_computed) + " outside [" +
                                    std::to_string(seq.num_computed) + ", " + std::to_string(limit) + "]");
  }
  const std::span<const int32_t> tokens(seq.tokens);
  for (size_t i = seq.block_keys.size(); i < static_cast<size_t>(n_computed / block_size_); ++i) {
    const BlockKey& parent = i == 0 ? kRootBlockKey : seq.block_keys[i - 1];
    std::span<const int32_t> block_tokens = tokens.subspan(i * block_size_, block_size_);
    BlockKey key = chain_block_key(parent, block_tokens, seq.salt);
    // A false return means another sequence published the same block first; ours stays private.
    if (seq.cacheable) commit_block(seq.block_table[i], key, block_tokens);
    seq.block_keys.push_back(key);
  }
  seq.num_computed = n_computed;
  return Status::ok_status();
}

void BlockManager::release(SequenceState& seq) {
  for (auto it = seq.block_table.rbegin(); it != seq.block_table.rend(); ++it) pool_.release(*it);
  seq.block_table.clear();
  seq.block_keys.clear();
  seq.num_computed = 0;
}

Status BlockManager::check_integrity(std::span<const SequenceState* const> live) const {
  AS_RETURN_IF_ERROR(pool_.check_integrity());
  auto fail = [](size_t s, std::string what) {
    return Status::internal("sequence " + std::to_string(s) + ": " + what);
  };
  const int n = pool_.num_blocks();
  std::vector<int> refs(static_cast<size_t>(n), 0);
  std::vector<size_t> last_seen(static_cast<size_t>(n), live.size());
  for (size_t s = 0; s < live.size(); ++s) {
    const SequenceState& seq = *live[s];
    for (int block : seq.block_table) {
      if (block < 0 || block >= n) return fail(s, "bad block id " + std::to_string(block));
      if (last_seen[block] == s) return fail(s, "holds block " + std::to_string(block) + " twice");
      last_seen[block] = s;
      ++refs[block];
    }
    if (seq.num_computed < 0 || seq.num_computed > capacity(seq) ||
        static_cast<size_t>(seq.num_computed) > seq.tokens.size()) {
      return fail(s, "num_computed " + std::to_string(seq.num_computed) + " outside its table or tokens");
    }
    if (seq.block_keys.size() != static_cast<size_t>(seq.num_computed / block_size_)) {
      return fail(s, "has " + std::to_string(seq.block_keys.size()) + " keys for " +
                         std::to_string(seq.num_computed) + " computed tokens");
    }
    BlockKey parent = kRootBlockKey;
    for (size_t i = 0; i < seq.block_table.size(); ++i) {
      std::optional<BlockKey> pool_key = pool_.key(seq.block_table[i]);
      if (i >= seq.block_keys.size()) {
        if (pool_key) return fail(s, "uncomputed block " + std::to_string(i) + " has a key");
        continue;
      }
      BlockKey key = chain_block_key(
          parent, std::span<const int32_t>(seq.tokens).subspan(i * block_size_, block_size_), seq.salt);
      if (key != seq.block_keys[i]) return fail(s, "key of block " + std::to_string(i) + " breaks the chain");
      if (pool_key && *pool_key != key) return fail(s, "block " + std::to_string(i) + " has another's key");
      parent = key;
    }
  }
  for (int b = 0; b < n; ++b) {
    if (refs[b] != pool_.ref_count(b)) {
      return Status::internal("block " + std::to_string(b) + " has ref " +
                              std::to_string(pool_.ref_count(b)) + " but " + std::to_string(refs[b]) +
                              " tables hold it");
    }
    if (refs[b] > 1 && !pool_.key(b))
      return Status::internal("shared block " + std::to_string(b) + " has no key");
  }
  return Status::ok_status();
}

}  // namespace agentserve::memory
