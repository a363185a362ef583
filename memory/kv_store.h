// KvStore: the T2 tier, KV blocks spilled to the `kv` column family of the RocksDbStore. Blocks are a
// cache: writes are batched and not synced (a crash may lose the latest ones, which costs recompute), and
// every read is verified by the block codec; a block that fails verification is deleted and reported as
// Corruption (or FailedPrecondition for an intact block of another model or layout), never returned.
// Writes skip the WAL unless StoreOptions::kv_write_wal (rocksdb_store.h says why).
//
// Durable writes: a caller that must not lose certain blocks to a crash (a session's committed turn) writes
// them with put_batch(..., Durability::kSynced), which goes through the synced WAL, then calls
// make_durable(keys): if any of those keys was written earlier without the WAL and may still sit only in
// the memtable, it flushes the kv family. The store remembers which keys skipped the WAL since its last
// flush (up to kMaxVolatileKeys; past that it assumes all of them did), so a commit whose blocks were all
// written durably costs no flush.
//
// Disk quota, LRU by last use. Each block has two records in the family:
//   'b' + key(16 bytes, big-endian hi then lo) -> encoded block (kv_block_codec.h)
//   'm' + key                                  -> u64 LE encoded size, u64 LE last-use tick
// written and deleted together in one WriteBatch. The 'm' records are small, so open() rebuilds the
// in-memory LRU and the usage total by scanning only them (never the blobs). A hit stores its new tick
// with a 17+16-byte Put, so the order survives a restart up to the hits not yet flushed. When a write
// would pass the quota, the least recently used blocks not in the batch are deleted in the same WriteBatch;
// if the batch cannot fit even then, nothing is written and the call returns ResourceExhausted.
// The quota counts encoded value bytes, not files: a deleted block's blob space comes back when blob
// garbage collection rewrites or drops its file during compaction, so the folder can run above the quota
// for a while. open() makes every blob file eligible for that collection (age cutoff 1.0) and forces a
// compaction of files more than half garbage; reclaim() runs it now (flush + full compaction with forced
// blob GC), and the caller runs it when erased bytes pile up (KvStore::erased_since_reclaim()).
//
// Pinning: with a keep predicate set, the quota LRU never deletes a block it holds: a write that only
// fits by deleting kept blocks is refused (ResourceExhausted), and the kept blocks stay.
//
// Thread-safe: one mutex guards the index and is held across each write (RocksDB serializes writes
// anyway); the RocksDB read, verification and copy of get() run outside it.
// This module knows bytes and shapes, never models.
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <span>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "base/status.h"
#include "memory/block_key.h"
#include "memory/kv_block_codec.h"
#include "memory/rocksdb_store.h"

namespace agentserve::memory {

struct KvSpillBlock {
  BlockKey key;
  std::span<const int32_t> tokens;     // the block's token ids (stored in the header, checked on load)
  std::span<const std::byte> payload;  // layout.block_bytes() bytes of K/V
};

// One block of a batched read: its key, its token ids (checked as in get()) and where its payload goes.
struct KvLoad {
  BlockKey key;
  std::span<const int32_t> tokens;
  std::span<std::byte> out;
};

struct KvStoreCounters {
  int64_t hits = 0;
  int64_t misses = 0;
  int64_t bytes_written = 0;     // encoded bytes put
  int64_t bytes_read = 0;        // encoded bytes read by get (hits and rejected blocks)
  int64_t dropped_corrupt = 0;   // failed the checksum or the header's own consistency
  int64_t dropped_mismatch = 0;  // intact but another model, layout, version, key or tokens
  int64_t evictions = 0;
  int64_t quota_refusals = 0;
  int64_t reclaims = 0;  // reclaim() runs
};

enum class Durability {
  kCache,   // as the store is configured: no sync, WAL per StoreOptions::kv_write_wal
  kSynced,  // through the WAL, synced before put_batch returns
};

class KvStore {
 public:
  static constexpr size_t kMaxVolatileKeys = size_t{1} << 16;

  // Scans the 'm' records to rebuild the LRU; `store` must outlive the KvStore.
  static Result<std::unique_ptr<KvStore>> open(RocksDbStore& store, const KvBlockFormat& format,
                                               uint64_t quota_bytes);

  // Writes all blocks as one WriteBatch (unsynced unless kSynced), evicting LRU blocks to stay within the
  // quota. A key already stored is replaced. ResourceExhausted (and nothing written) when the batch alone
  // passes the quota; InvalidArgument when a block does not match the format.
  Status put_batch(std::span<const KvSpillBlock> blocks, Durability durability = Durability::kCache);
  // Makes the stored blocks among `keys` survive a crash of the process: flushes the kv family when one
  // of them was written without the WAL since the last flush. Slow when it flushes: storage thread only.
  Status make_durable(std::span<const BlockKey> keys);

  // Copies the verified payload of `key` into `out` (layout.block_bytes() bytes) and marks it used.
  // `tokens`, when non-empty, must equal the stored token ids. NotFound on a miss; Corruption or
  // FailedPrecondition for a rejected block, which is deleted.
  Status get(const BlockKey& key, std::span<const int32_t> tokens, std::span<std::byte> out);
  // get() of every load with one RocksDB MultiGet; one status per load, in order.
  std::vector<Status> get_batch(std::span<const KvLoad> loads);

  bool contains(const BlockKey& key) const;
  // Deletes the block if present; OK either way.
  Status erase(const BlockKey& key);
  // Deletes the blocks present, in one WriteBatch; returns how many it deleted.
  Result<size_t> erase_batch(std::span<const BlockKey> keys);

  // Blocks the quota LRU must not delete (pinned). Set before the store is shared between threads; it is
  // called under the store's lock, so it must not call back into the store.
  using KeepPredicate = std::function<bool(const BlockKey&)>;
  void set_keep(KeepPredicate keep) { keep_ = std::move(keep); }

  // Flushes the kv family and compacts it with forced blob garbage collection, so deleted blocks' blob
  // files are rewritten or dropped. Slow (reads and rewrites live blobs of the files it collects): run it
  // off the engine thread.
  Status reclaim();
  // After an I/O error (a full disk) RocksDB refuses writes until resumed: tries that, e.g. once space is
  // back. OK when the database had no error.
  Status resume();
  // Encoded bytes deleted (evicted, erased, dropped) since the last reclaim().
  uint64_t erased_since_reclaim() const;

  uint64_t usage_bytes() const;
  uint64_t quota_bytes() const { return quota_; }
  size_t num_blocks() const;
  KvStoreCounters counters() const;
  const KvBlockFormat& format() const { return format_; }

 private:
  struct Entry {
    uint64_t size = 0;
    uint64_t tick = 0;
    std::list<BlockKey>::iterator lru_pos;  // lru_ front = least recently used
  };

  KvStore(RocksDbStore& store, const KvBlockFormat& format, uint64_t quota);
  Status load_index();
  void touch_locked(Entry& e, const BlockKey& key);
  using Index = std::unordered_map<BlockKey, Entry>;
  Status drop_if_unchanged(const BlockKey& key, uint64_t tick);
  Status erase_locked(Index::iterator it);
  void forget_locked(Index::iterator it);
  // Verifies a value read for `key` (whose index tick was `tick`) and copies its payload to `out`.
  Status finish_get(const BlockKey& key, uint64_t tick, std::span<const int32_t> tokens,
                    const rocksdb::PinnableSlice& value, std::span<std::byte> out);

  RocksDbStore& store_;
  rocksdb::ColumnFamilyHandle* cf_;
  KvBlockFormat format_;
  uint64_t quota_;
  rocksdb::WriteOptions write_options_;
  rocksdb::ReadOptions read_options_;

  mutable std::mutex mu_;
  Index index_;
  std::list<BlockKey> lru_;
  uint64_t usage_ = 0;
  uint64_t next_tick_ = 1;
  uint64_t erased_bytes_ = 0;
  KvStoreCounters counters_;
  KeepPredicate keep_;
  // Keys whose blocks were written without the WAL since the last flush make_durable() ran.
  std::unordered_set<BlockKey> volatile_keys_;
  bool volatile_overflow_ = false;  // more than kMaxVolatileKeys: treat every key as volatile
};

}  // namespace agentserve::memory
