// KvStore: the T2 tier, KV blocks spilled to the `kv` column family of the RocksDbStore. Blocks are a
// cache: writes are batched and not synced (a crash may lose the latest ones, which costs recompute), and
// every read is verified by the block codec; a block that fails verification is deleted and reported as
// Corruption (or FailedPrecondition for an intact block of another model or layout), never returned.
// Writes skip the WAL unless StoreOptions::kv_write_wal (rocksdb_store.h says why).
//
// Durable writes: a caller that must not lose certain blocks to a crash (a session's committed turn) writes
// the new ones with put_batch(..., Durability::kLogged), through the WAL, then calls make_durable(keys),
// which costs one WAL sync: the chain's blocks that were written earlier without the WAL (spills, which
// may sit only in the memtable) are written again through the WAL in that synced write. The store
// remembers which keys skipped the WAL (up to kMaxVolatileKeys; past that it cannot tell them apart and
// flushes the kv family once instead, which persists every write so far).
//
// Disk quota, LRU by last use. Each block has two records in the family:
//   'b' + key(16 bytes, big-endian hi then lo) -> encoded block (kv_block_codec.h)
//   'm' + key                                  -> u64 LE encoded size, u64 LE last-use tick
// written and deleted together in one WriteBatch. The 'm' records are small, so open() rebuilds the
// in-memory LRU and the usage total by scanning only them (never the blobs). A hit's new tick is written
// with the store's next write batch (or on close), so the order survives a restart up to the hits of the
// last moments. When a write would pass the quota, the least recently used blocks not in the batch are
// deleted in the same WriteBatch; if the batch cannot fit even then, nothing is written and the call
// returns ResourceExhausted.
// The quota counts encoded value bytes, not files: a deleted block's blob space comes back when blob
// garbage collection rewrites or drops its file during compaction, so the folder can run above the quota
// for a while. LRU evictions delete the oldest blocks, which sit in the oldest blob files: open() makes
// RocksDB's own compactions collect those files once half garbage, so evictions need nothing more.
// erase() and dropped blocks delete blocks of any age, in files that collection may never reach:
// erased_since_reclaim() counts those bytes, and the caller runs reclaim() (flush + full compaction with
// forced blob GC) when they pile up.
//
// Pinning: with a keep predicate set, the quota LRU never deletes a block it holds: a write that only
// fits by deleting kept blocks is refused (ResourceExhausted), and the kept blocks stay.
//
// Thread-safe. Mutations (put, erase, make_durable) are serialized by a writer lock held across the RocksDB
// write; the index lock covers only the in-memory index, LRU and accounting (the plan before the write
// and the update after it), never a RocksDB write or sync, so contains(), get() and the counters never
// wait for the disk (except get() deleting a damaged block). Readers see a write in the index once it is
// in the database.
// This module knows bytes and shapes, never models.
#pragma once

#include <rocksdb/write_batch.h>

#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <span>
#include <string_view>
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
  kLogged,  // through the WAL, unsynced: survives a kill of the process; make_durable() syncs it
};

class KvStore {
 public:
  static constexpr size_t kMaxVolatileKeys = size_t{1} << 16;

  // Scans the 'm' records to rebuild the LRU; `store` must outlive the KvStore.
  static Result<std::unique_ptr<KvStore>> open(RocksDbStore& store, const KvBlockFormat& format,
                                               uint64_t quota_bytes);
  ~KvStore();  // writes the last hits' ticks
  KvStore(const KvStore&) = delete;
  KvStore& operator=(const KvStore&) = delete;

  // Writes all blocks as one WriteBatch (unsynced), evicting LRU blocks to stay within the quota. A key
  // already stored is replaced. ResourceExhausted (and nothing written) when the batch alone passes the
  // quota; InvalidArgument when a block does not match the format.
  Status put_batch(std::span<const KvSpillBlock> blocks, Durability durability = Durability::kCache);
  // Makes the stored blocks among `keys`, and every kLogged write before the call, survive a crash of
  // the process or the machine, with one synced WAL write: the blocks among `keys` written without the
  // WAL go into it again (read back first). Flushes the kv family instead when more than
  // kMaxVolatileKeys WAL-less writes made the store lose track. Storage thread only: it waits for a sync.
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
  // Encoded bytes erased or dropped since the last reclaim(); LRU evictions do not count (see above).
  uint64_t erased_since_reclaim() const;

  // Test seam: runs before each RocksDB write of the store, under the writer lock and outside the index
  // lock. A non-OK status fails that write as the disk would (nothing written); a hook that blocks stands
  // for a slow disk. Set before the store is shared between threads.
  using WriteHook = std::function<Status()>;
  void set_write_hook(WriteHook hook) { write_hook_ = std::move(hook); }

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
  // The RocksDB write of every mutation: the test hook, then the write. Writer lock held, index lock not.
  Status write(const rocksdb::WriteOptions& options, rocksdb::WriteBatch& batch, std::string_view context);
  // Adds the 'm' records of hits since the last write (keys still stored and not in `skip`) to `batch`;
  // returns the keys it added, to put back when the write fails.
  std::vector<BlockKey> add_ticks_locked(rocksdb::WriteBatch& batch,
                                         const std::unordered_set<BlockKey>& skip);
  // `counts_for_reclaim`: false for LRU evictions, which RocksDB's own blob GC collects (see above).
  void forget_locked(Index::iterator it, bool counts_for_reclaim);
  // Verifies a value read for `key` (whose index tick was `tick`) and copies its payload to `out`.
  Status finish_get(const BlockKey& key, uint64_t tick, std::span<const int32_t> tokens,
                    const rocksdb::PinnableSlice& value, std::span<std::byte> out);

  RocksDbStore& store_;
  rocksdb::ColumnFamilyHandle* cf_;
  KvBlockFormat format_;
  uint64_t quota_;
  rocksdb::WriteOptions write_options_;
  rocksdb::ReadOptions read_options_;
  WriteHook write_hook_;

  // Held across each mutation's RocksDB write, so the index changes in the order the database does and
  // equals it whenever no write is in flight. Taken before mu_, never while holding it.
  std::mutex write_mu_;
  // Guards everything below; never held across a RocksDB write or sync.
  mutable std::mutex mu_;
  Index index_;
  std::list<BlockKey> lru_;
  uint64_t usage_ = 0;
  uint64_t next_tick_ = 1;
  uint64_t erased_bytes_ = 0;
  KvStoreCounters counters_;
  KeepPredicate keep_;
  std::unordered_set<BlockKey> touched_;  // hits whose new tick is not written yet
  // Keys whose blocks were written without the WAL and not made durable since.
  std::unordered_set<BlockKey> volatile_keys_;
  bool volatile_overflow_ = false;  // more than kMaxVolatileKeys: treat every key as volatile
  bool wal_unsynced_ = false;       // a kLogged write since the last sync
};

}  // namespace agentserve::memory
