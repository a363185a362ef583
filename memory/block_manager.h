// BlockManager: sequence-level paged KV bookkeeping with a prefix cache (nano-vllm's BlockManager, vLLM's
// hash chain). It gives each sequence a block table, reuses cached full blocks of a matching prefix at
// admission, grows tables for decode and chunked prefill, and publishes blocks once their KV is computed.
//
// Life of a sequence (the engine thread drives it; nothing here is thread-safe):
//   can_allocate(seq, n) -> allocate(seq, n)       admit: cached prefix + room for n more tokens
//   can_append(seq, n)   -> append(seq, n)         room for positions [0, num_computed + n)
//   slot(seq, pos)                                 where the forward writes the KV of position pos
//   commit_computed(seq, n)                        KV of tokens [0, n) is written; full blocks get keys
//   release(seq)                                   ref-- on every block, tail first
// Queries (match_prefix, can_*) never modify anything; a failed allocate/append changes nothing.
// A shared block is never written: cached tokens are capped at (n_tokens - 1) rounded down to a block
// multiple, so the last prompt token is always computed (its logits are needed) and every block the
// sequence writes is its own. The manager never reads KV bytes and knows no model.
//
// Lower tiers: with a BlockSource set (T1 host RAM, T2 disk), a prefix walk that misses T0 goes on while
// the source holds the chain's next block; allocate() loads all such blocks in one load_chain() call (so the
// source can batch its reads) into fresh T0 blocks, which are then committed under their keys and count as
// cached like T0 hits. A load that fails (gone, or rejected by
// its checksum) ends the cached prefix there; the rest is computed, so a lower tier can cost time, never
// correctness.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "base/status.h"
#include "memory/block_key.h"
#include "memory/block_pool.h"

namespace agentserve::memory {

// The manager's view of one sequence. The engine appends sampled tokens to `tokens`; the manager owns the
// other fields (they are public so the engine can pass the table to attention without a copy).
struct SequenceState {
  std::vector<int32_t> tokens;       // prompt + generated ids
  BlockKey salt;                     // make_salt(model fingerprint, tenant cache salt)
  std::vector<int> block_table;      // block ids by position / block_size
  std::vector<BlockKey> block_keys;  // chain keys of the first num_computed / block_size blocks
  int num_computed = 0;              // tokens whose KV is in the blocks
  // false: the sequence neither reuses cached blocks nor publishes its own (scoring needs every position
  // computed, and its blocks are worth nothing to requests or to the spill tiers).
  bool cacheable = true;
  // Of the cached prefix taken at the last admission, the tokens loaded from the BlockSource (T1/T2).
  int restored_tokens = 0;
};

struct PrefixMatch {
  int num_blocks = 0;       // leading full blocks found in the cache
  int num_tokens = 0;       // num_blocks * block_size
  int num_free_hits = 0;    // how many of them sit in the free list (taking them uses free capacity)
  int num_source_hits = 0;  // how many of them the BlockSource holds (each needs a fresh T0 block)
};

// One block to load from a lower tier into T0 block `block`.
struct BlockLoad {
  BlockKey key;
  std::span<const int32_t> tokens;
  int block = -1;
};

// A lower KV tier as the manager sees it. The calls take the chain key and the block's token ids.
class BlockSource {
 public:
  virtual ~BlockSource() = default;
  // Whether a load of `key` is likely to succeed. A query: changes nothing, reads no payload.
  virtual bool contains(const BlockKey& key) const = 0;
  // Writes the block's KV into T0 block `block` (exclusively owned by the caller, ref 1); false when the
  // block is gone or was rejected, and then the block's bytes are unspecified.
  virtual bool load(const BlockKey& key, std::span<const int32_t> tokens, int block) = 0;
  // Loads blocks of one chain, given in chain order; returns how many leading loads succeeded (the blocks
  // after them hold unspecified bytes). The default calls load() one by one; a tier overrides it to batch.
  virtual int load_chain(std::span<const BlockLoad> loads) {
    int n = 0;
    while (n < static_cast<int>(loads.size()) &&
           load(loads[static_cast<size_t>(n)].key, loads[static_cast<size_t>(n)].tokens,
                loads[static_cast<size_t>(n)].block)) {
      ++n;
    }
    return n;
  }
};

struct KvSlot {
  int block = -1;
  int offset = 0;  // token slot inside the block
};

// Block-granular prefix-cache counters, counted at admission: hits = T0 blocks reused, loaded = blocks
// taken from the BlockSource, misses = full blocks of the prompt (within the cap above) to be computed.
struct PrefixCacheStats {
  int64_t hit_blocks = 0;
  int64_t loaded_blocks = 0;
  int64_t miss_blocks = 0;
  int64_t evictions = 0;
  int num_free = 0;
  int num_cached = 0;
};

class BlockManager {
 public:
  BlockManager(int num_blocks, int block_size, BlockPool::EvictCallback on_evict = {});

  int block_size() const { return block_size_; }
  const BlockPool& pool() const { return pool_; }
  PrefixCacheStats stats() const;

  // Lower tiers consulted at admission after T0 (nullptr: none). The source must outlive its use here.
  void set_block_source(BlockSource* source) { source_ = source; }
  // The token ids of a keyed block (pool().key(block) is set); valid until the block is committed again.
  // The evict callback may call it for the block being evicted, to spill the block with its tokens.
  std::span<const int32_t> block_tokens(int block) const {
    return std::span<const int32_t>(block_tokens_)
        .subspan(static_cast<size_t>(block) * block_size_, block_size_);
  }

  // Leading cached full blocks of `tokens` under `salt` (hash chain + token compare in T0, then the
  // BlockSource's contains()), within the cap. num_free_hits counts T0 blocks only.
  PrefixMatch match_prefix(std::span<const int32_t> tokens, const BlockKey& salt) const;

  // Admission of a sequence with an empty table and at least one token: the cached prefix (ref++) plus
  // fresh blocks for n_new_tokens positions after it (the whole rest of the prompt, or a first prefill
  // chunk). allocate returns the number of cached tokens, whose prefill the engine skips, and sets
  // num_computed to it; it fails with ResourceExhausted (nothing changed) when blocks are short and with
  // InvalidArgument/FailedPrecondition on a bad request.
  bool can_allocate(const SequenceState& seq, int n_new_tokens) const;
  Result<int> allocate(SequenceState& seq, int n_new_tokens);

  // Room for n more tokens after the computed ones (decode: 1; a prefill chunk: its length).
  bool can_append(const SequenceState& seq, int n) const {
    return blocks_to_append(seq, n) <= pool_.num_free();
  }
  Status append(SequenceState& seq, int n);

  // The forward wrote KV for tokens [0, n_computed); each block that became full enters the index.
  // n_computed must lie in [num_computed, min(capacity, tokens.size())].
  Status commit_computed(SequenceState& seq, int n_computed);

  // Drops the sequence's blocks (last block first, so a chain's tail is evicted before its head) and
  // clears its table, keys and num_computed. Safe on a sequence that holds nothing.
  void release(SequenceState& seq);

  int capacity(const SequenceState& seq) const {
    return static_cast<int>(seq.block_table.size()) * block_size_;
  }
  // position must be below capacity(seq).
  KvSlot slot(const SequenceState& seq, int position) const {
    return {seq.block_table[position / block_size_], position % block_size_};
  }

  // Pool integrity, plus for the live sequences: ref counts equal the number of tables holding each block,
  // keys match the hash chain of the tokens, counts are within the table.
  Status check_integrity(std::span<const SequenceState* const> live) const;

 private:
  int blocks_for(int n_tokens) const { return (n_tokens + block_size_ - 1) / block_size_; }
  int blocks_to_append(const SequenceState& seq, int n) const;
  // Appends the cached prefix's blocks and keys to seq (no ref change; -1 for a block the source holds);
  // returns the match.
  PrefixMatch collect_prefix(SequenceState& seq) const;
  // Takes the T0 hits, then loads the source's blocks in order; on the first failed load, gives back
  // everything from there on. Returns the number of blocks kept.
  int take_prefix(SequenceState& seq);
  bool commit_block(int block, const BlockKey& key, std::span<const int32_t> tokens);

  int block_size_;
  BlockPool pool_;
  BlockSource* source_ = nullptr;
  std::vector<int32_t> block_tokens_;  // block_size_ ids per block, written when the block gets its key
  int64_t hit_blocks_ = 0;
  int64_t loaded_blocks_ = 0;
  int64_t miss_blocks_ = 0;
};

}  // namespace agentserve::memory
