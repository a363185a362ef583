#include "memory/kv_store.h"

#include <rocksdb/write_batch.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <unordered_set>

namespace agentserve::memory {
namespace {

constexpr char kBlockPrefix = 'b';
constexpr char kMetaPrefix = 'm';
constexpr size_t kRecordKeyBytes = 17;
constexpr size_t kMetaValueBytes = 16;

std::string record_key(char prefix, const BlockKey& key) {
  std::string k(kRecordKeyBytes, '\0');
  k[0] = prefix;
  for (int i = 0; i < 8; ++i) {
    k[1 + i] = static_cast<char>(key.hi >> (56 - 8 * i));
    k[9 + i] = static_cast<char>(key.lo >> (56 - 8 * i));
  }
  return k;
}

BlockKey parse_record_key(const rocksdb::Slice& k) {
  BlockKey key;
  for (int i = 0; i < 8; ++i) {
    key.hi = key.hi << 8 | static_cast<uint8_t>(k[1 + i]);
    key.lo = key.lo << 8 | static_cast<uint8_t>(k[9 + i]);
  }
  return key;
}

std::string meta_value(uint64_t size, uint64_t tick) {
  std::string v(kMetaValueBytes, '\0');
  for (int i = 0; i < 8; ++i) {
    v[i] = static_cast<char>(size >> (8 * i));
    v[8 + i] = static_cast<char>(tick >> (8 * i));
  }
  return v;
}

uint64_t read_u64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(static_cast<uint8_t>(p[i])) << (8 * i);
  return v;
}

void delete_block(rocksdb::WriteBatch& batch, rocksdb::ColumnFamilyHandle* cf, const BlockKey& key) {
  batch.Delete(cf, record_key(kBlockPrefix, key));
  batch.Delete(cf, record_key(kMetaPrefix, key));
}

}  // namespace

KvStore::KvStore(RocksDbStore& store, const KvBlockFormat& format, uint64_t quota)
    : store_(store), cf_(store.handle(ColumnFamily::kKv)), format_(format), quota_(quota) {
  // Never synced (KV is a cache); WAL as StoreOptions::kv_write_wal says. Every kv write uses these, so
  // a block and its 'm' record are always equally durable.
  write_options_.disableWAL = !store.options().kv_write_wal;
  // The codec's XXH3 checksum covers every byte we use; RocksDB's own CRC pass over the blob would repeat it.
  read_options_.verify_checksums = false;
}

Result<std::unique_ptr<KvStore>> KvStore::open(RocksDbStore& store, const KvBlockFormat& format,
                                               uint64_t quota_bytes) {
  AS_RETURN_IF_ERROR(format.layout.validate());
  std::unique_ptr<KvStore> kv(new KvStore(store, format, quota_bytes));
  // LRU eviction deletes the oldest blocks, which sit in the oldest blob files: compact those (the default
  // age cutoff's oldest quarter) as soon as half their bytes are garbage, instead of waiting for the LSM's
  // own compactions to reach them.
  AS_RETURN_IF_ERROR(
      from_rocksdb(store.db()->SetOptions(kv->cf_, {{"blob_garbage_collection_force_threshold", "0.5"}}),
                   "set kv blob gc options"));
  AS_RETURN_IF_ERROR(kv->load_index());
  return kv;
}

Status KvStore::load_index() {
  struct Loaded {
    BlockKey key;
    uint64_t size;
    uint64_t tick;
  };
  std::vector<Loaded> loaded;
  rocksdb::WriteBatch bad;
  std::unique_ptr<rocksdb::Iterator> it(store_.db()->NewIterator(rocksdb::ReadOptions(), cf_));
  for (it->Seek(rocksdb::Slice(&kMetaPrefix, 1));
       it->Valid() && it->key().starts_with(rocksdb::Slice(&kMetaPrefix, 1)); it->Next()) {
    if (it->key().size() != kRecordKeyBytes) {
      bad.Delete(cf_, it->key());
      continue;
    }
    BlockKey key = parse_record_key(it->key());
    if (it->value().size() != kMetaValueBytes) {
      // A record we cannot read makes its block unaccountable for the quota: drop both.
      delete_block(bad, cf_, key);
      continue;
    }
    loaded.push_back({key, read_u64(it->value().data()), read_u64(it->value().data() + 8)});
  }
  AS_RETURN_IF_ERROR(from_rocksdb(it->status(), "scan kv index"));
  if (bad.Count() > 0)
    AS_RETURN_IF_ERROR(from_rocksdb(store_.db()->Write(write_options_, &bad), "drop bad kv records"));

  std::sort(loaded.begin(), loaded.end(), [](const Loaded& a, const Loaded& b) { return a.tick < b.tick; });
  std::lock_guard lock(mu_);
  for (const Loaded& l : loaded) {
    lru_.push_back(l.key);
    index_[l.key] = Entry{l.size, l.tick, std::prev(lru_.end())};
    usage_ += l.size;
    next_tick_ = std::max(next_tick_, l.tick + 1);
  }
  return Status::ok_status();
}

KvStore::~KvStore() {
  std::lock_guard writer(write_mu_);
  rocksdb::WriteBatch batch;
  {
    std::lock_guard lock(mu_);
    add_ticks_locked(batch, {});
  }
  // Best effort: a lost tick only makes its block look older after a restart.
  if (batch.Count() > 0) (void)store_.db()->Write(write_options_, &batch);
}

Status KvStore::write(const rocksdb::WriteOptions& options, rocksdb::WriteBatch& batch,
                      std::string_view context) {
  if (write_hook_) AS_RETURN_IF_ERROR(write_hook_());
  return from_rocksdb(store_.db()->Write(options, &batch), context);
}

std::vector<BlockKey> KvStore::add_ticks_locked(rocksdb::WriteBatch& batch,
                                                const std::unordered_set<BlockKey>& skip) {
  std::vector<BlockKey> added;
  for (const BlockKey& key : touched_) {
    auto it = index_.find(key);
    if (it == index_.end() || skip.contains(key)) continue;
    batch.Put(cf_, record_key(kMetaPrefix, key), meta_value(it->second.size, it->second.tick));
    added.push_back(key);
  }
  touched_.clear();
  return added;
}

Status KvStore::put_batch(std::span<const KvSpillBlock> blocks, Durability durability) {
  // Encode outside the locks: it copies and hashes every payload.
  std::vector<std::string> encoded(blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) {
    Status s = encode_kv_block(format_, blocks[i].key, blocks[i].tokens, blocks[i].payload, &encoded[i]);
    if (!s.ok()) return s.with_context("kv put block " + blocks[i].key.to_hex());
  }
  // Last write of a key wins, as in the WriteBatch.
  std::unordered_map<BlockKey, uint64_t> incoming;
  for (size_t i = 0; i < blocks.size(); ++i) incoming[blocks[i].key] = encoded[i].size();
  uint64_t added = 0;
  for (const auto& [key, size] : incoming) added += size;

  // The writer lock keeps every other mutation out until the index matches the database again, so the
  // plan made under mu_ (victims, usage) still holds when it is applied after the write.
  std::lock_guard writer(write_mu_);
  rocksdb::WriteBatch batch;
  std::vector<BlockKey> victims;
  std::vector<BlockKey> ticked;
  std::vector<uint64_t> ticks(blocks.size());
  {
    std::lock_guard lock(mu_);
    if (added > quota_) {
      ++counters_.quota_refusals;
      return Status::resource_exhausted("kv batch of " + std::to_string(added) +
                                        " bytes exceeds the disk quota of " + std::to_string(quota_));
    }
    uint64_t replaced = 0;
    for (const auto& [key, size] : incoming) {
      if (auto it = index_.find(key); it != index_.end()) replaced += it->second.size;
    }
    uint64_t projected = usage_ - replaced + added;
    std::unordered_set<BlockKey> written;  // the batch's keys and victims: no stale tick for them
    for (auto it = lru_.begin(); projected > quota_ && it != lru_.end(); ++it) {
      if (incoming.contains(*it) || (keep_ && keep_(*it))) continue;
      victims.push_back(*it);
      projected -= index_.at(*it).size;
    }
    if (projected > quota_) {
      ++counters_.quota_refusals;
      return Status::resource_exhausted("kv batch of " + std::to_string(added) +
                                        " bytes does not fit the disk quota of " + std::to_string(quota_) +
                                        ": the rest is pinned");
    }
    for (const BlockKey& v : victims) {
      delete_block(batch, cf_, v);
      written.insert(v);
    }
    for (size_t i = 0; i < blocks.size(); ++i) {
      ticks[i] = next_tick_++;
      batch.Put(cf_, record_key(kBlockPrefix, blocks[i].key), encoded[i]);
      batch.Put(cf_, record_key(kMetaPrefix, blocks[i].key), meta_value(encoded[i].size(), ticks[i]));
      written.insert(blocks[i].key);
    }
    ticked = add_ticks_locked(batch, written);
  }

  // A crash may lose the newest cache writes, which only costs recompute; logged ones it may not lose.
  rocksdb::WriteOptions options = write_options_;
  if (durability == Durability::kLogged) options.disableWAL = false;
  const Status status = write(options, batch, "kv put batch");

  std::lock_guard lock(mu_);
  if (!status.ok()) {
    touched_.insert(ticked.begin(), ticked.end());
    return status;
  }
  if (options.disableWAL && !volatile_overflow_) {
    for (const KvSpillBlock& b : blocks) volatile_keys_.insert(b.key);
    if (volatile_keys_.size() > kMaxVolatileKeys) {
      volatile_keys_.clear();
      volatile_overflow_ = true;
    }
  } else if (!options.disableWAL) {
    // Now in the WAL: the durable copy replaces any WAL-less one as far as a crash is concerned.
    for (const KvSpillBlock& b : blocks) volatile_keys_.erase(b.key);
    wal_unsynced_ = true;
  }
  for (const BlockKey& v : victims) forget_locked(index_.find(v), false);
  counters_.evictions += static_cast<int64_t>(victims.size());
  for (size_t i = 0; i < blocks.size(); ++i) {
    auto [it, inserted] = index_.try_emplace(blocks[i].key);
    Entry& e = it->second;
    if (!inserted) {
      usage_ -= e.size;
      lru_.erase(e.lru_pos);
    }
    lru_.push_back(blocks[i].key);
    e = Entry{encoded[i].size(), ticks[i], std::prev(lru_.end())};
    usage_ += e.size;
    counters_.bytes_written += static_cast<int64_t>(e.size);
  }
  return Status::ok_status();
}

Status KvStore::get(const BlockKey& key, std::span<const int32_t> tokens, std::span<std::byte> out) {
  const KvLoad load{key, tokens, out};
  return get_batch(std::span(&load, 1))[0];
}

std::vector<Status> KvStore::get_batch(std::span<const KvLoad> loads) {
  const size_t n = loads.size();
  std::vector<Status> statuses(n);
  std::vector<uint64_t> ticks(n, 0);
  std::vector<size_t> wanted;  // loads to read
  wanted.reserve(n);
  {
    std::lock_guard lock(mu_);
    for (size_t i = 0; i < n; ++i) {
      if (loads[i].out.size() != format_.layout.block_bytes()) {
        statuses[i] =
            Status::invalid_argument("kv get buffer is " + std::to_string(loads[i].out.size()) +
                                     " bytes, a block is " + std::to_string(format_.layout.block_bytes()));
        continue;
      }
      auto it = index_.find(loads[i].key);
      if (it == index_.end()) {
        ++counters_.misses;
        statuses[i] = Status::not_found("kv block " + loads[i].key.to_hex());
        continue;
      }
      ticks[i] = it->second.tick;
      wanted.push_back(i);
    }
  }
  if (wanted.empty()) return statuses;
  std::vector<std::string> record_keys(wanted.size());
  std::vector<rocksdb::Slice> slices(wanted.size());
  for (size_t j = 0; j < wanted.size(); ++j) {
    record_keys[j] = record_key(kBlockPrefix, loads[wanted[j]].key);
    slices[j] = record_keys[j];
  }
  std::vector<rocksdb::PinnableSlice> values(wanted.size());
  std::vector<rocksdb::Status> read(wanted.size());
  store_.db()->MultiGet(read_options_, cf_, wanted.size(), slices.data(), values.data(), read.data());
  for (size_t j = 0; j < wanted.size(); ++j) {
    const size_t i = wanted[j];
    if (read[j].IsNotFound()) {
      // Evicted or erased since the lookup.
      std::lock_guard lock(mu_);
      ++counters_.misses;
      statuses[i] = Status::not_found("kv block " + loads[i].key.to_hex());
    } else if (!read[j].ok()) {
      statuses[i] = from_rocksdb(read[j], "kv get " + loads[i].key.to_hex());
    } else {
      statuses[i] = finish_get(loads[i].key, ticks[i], loads[i].tokens, values[j], loads[i].out);
    }
  }
  return statuses;
}

Status KvStore::finish_get(const BlockKey& key, uint64_t tick, std::span<const int32_t> tokens,
                           const rocksdb::PinnableSlice& value, std::span<std::byte> out) {
  std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(value.data()), value.size());
  KvBlockDecodeResult decoded = decode_kv_block(bytes, format_, key, tokens);
  if (!decoded.ok()) {
    {
      std::lock_guard lock(mu_);
      counters_.bytes_read += static_cast<int64_t>(value.size());
      ++(decoded.reject == KvBlockReject::kCorrupt ? counters_.dropped_corrupt : counters_.dropped_mismatch);
    }
    // Token mismatch means this key names other tokens (a hash collision): the stored block is still
    // right for its own tokens, so it stays. Anything else is useless to every caller.
    if (decoded.reject != KvBlockReject::kWrongTokens) AS_RETURN_IF_ERROR(drop_if_unchanged(key, tick));
    return decoded.status();
  }
  std::memcpy(out.data(), decoded.view.payload.data(), out.size());

  std::lock_guard lock(mu_);
  ++counters_.hits;
  counters_.bytes_read += static_cast<int64_t>(value.size());
  auto it = index_.find(key);
  if (it != index_.end() && it->second.tick == tick) touch_locked(it->second, key);
  return Status::ok_status();
}

void KvStore::touch_locked(Entry& e, const BlockKey& key) {
  e.tick = next_tick_++;
  lru_.splice(lru_.end(), lru_, e.lru_pos);
  // Written with the next write batch: a Put here would wait in RocksDB's write queue behind a synced
  // write, on the reader's thread (the engine's, at admission).
  touched_.insert(key);
}

Status KvStore::drop_if_unchanged(const BlockKey& key, uint64_t tick) {
  std::lock_guard writer(write_mu_);
  {
    std::lock_guard lock(mu_);
    auto it = index_.find(key);
    // A newer put of the same key replaced the bad block: keep the new one.
    if (it == index_.end() || it->second.tick != tick) return Status::ok_status();
  }
  rocksdb::WriteBatch batch;
  delete_block(batch, cf_, key);
  AS_RETURN_IF_ERROR(write(write_options_, batch, "kv drop"));
  std::lock_guard lock(mu_);
  forget_locked(index_.find(key), true);
  return Status::ok_status();
}

void KvStore::forget_locked(Index::iterator it, bool counts_for_reclaim) {
  usage_ -= it->second.size;
  if (counts_for_reclaim) erased_bytes_ += it->second.size;
  lru_.erase(it->second.lru_pos);
  touched_.erase(it->first);
  volatile_keys_.erase(it->first);  // gone: nothing of it left to make durable
  index_.erase(it);
}

Result<size_t> KvStore::erase_batch(std::span<const BlockKey> keys) {
  std::lock_guard writer(write_mu_);
  rocksdb::WriteBatch batch;
  std::vector<BlockKey> present;
  {
    std::lock_guard lock(mu_);
    std::unordered_set<BlockKey> seen;
    for (const BlockKey& key : keys) {
      if (!index_.contains(key) || !seen.insert(key).second) continue;
      delete_block(batch, cf_, key);
      present.push_back(key);
    }
  }
  if (present.empty()) return size_t{0};
  AS_RETURN_IF_ERROR(write(write_options_, batch, "kv erase batch"));
  std::lock_guard lock(mu_);
  // Still indexed: only a writer removes entries, and this one holds the writer lock.
  for (const BlockKey& key : present) forget_locked(index_.find(key), true);
  return present.size();
}

Status KvStore::reclaim() {
  {
    // Under the writer lock, so the flush covers every write the index knows of: none is volatile after.
    std::lock_guard writer(write_mu_);
    AS_RETURN_IF_ERROR(from_rocksdb(store_.db()->Flush(rocksdb::FlushOptions(), cf_), "kv flush"));
    std::lock_guard lock(mu_);
    volatile_keys_.clear();
    volatile_overflow_ = false;
    wal_unsynced_ = false;
  }
  rocksdb::CompactRangeOptions options;
  options.blob_garbage_collection_policy = rocksdb::BlobGarbageCollectionPolicy::kForce;
  options.blob_garbage_collection_age_cutoff = 1.0;
  options.bottommost_level_compaction = rocksdb::BottommostLevelCompaction::kForce;
  AS_RETURN_IF_ERROR(from_rocksdb(store_.db()->CompactRange(options, cf_, nullptr, nullptr), "kv compact"));
  std::lock_guard lock(mu_);
  erased_bytes_ = 0;
  ++counters_.reclaims;
  return Status::ok_status();
}

Status KvStore::make_durable(std::span<const BlockKey> keys) {
  std::lock_guard writer(write_mu_);
  bool flush = false;
  std::vector<BlockKey> rewrite;
  std::vector<std::string> metas;
  {
    std::lock_guard lock(mu_);
    flush = volatile_overflow_;
    std::unordered_set<BlockKey> seen;
    // Past a memtable's worth of rewrites a flush costs less: it writes at most that much.
    const uint64_t flush_cheaper_after = store_.options().kv_write_buffer_bytes;
    uint64_t rewrite_bytes = 0;
    for (const BlockKey& k : keys) {
      if (flush) break;
      auto it = index_.find(k);
      if (it == index_.end() || !volatile_keys_.contains(k) || !seen.insert(k).second) continue;
      rewrite.push_back(k);
      metas.push_back(meta_value(it->second.size, it->second.tick));
      rewrite_bytes += it->second.size;
      flush = rewrite_bytes > flush_cheaper_after;
    }
    if (!flush && rewrite.empty() && !wal_unsynced_) return Status::ok_status();
  }
  if (flush) {
    // Lost track of which keys skipped the WAL: a flush persists every kv write made before it.
    AS_RETURN_IF_ERROR(
        from_rocksdb(store_.db()->Flush(rocksdb::FlushOptions(), cf_), "kv flush for durability"));
    std::lock_guard lock(mu_);
    volatile_keys_.clear();
    volatile_overflow_ = false;
    wal_unsynced_ = false;
    return Status::ok_status();
  }
  // Rewriting the few WAL-less blocks of the chain costs their bytes once more in the WAL; a flush would
  // write the whole memtable (up to kv_write_buffer_bytes of everyone's spills) into new files.
  rocksdb::WriteBatch batch;
  if (!rewrite.empty()) {
    std::vector<std::string> record_keys(rewrite.size());
    std::vector<rocksdb::Slice> slices(rewrite.size());
    for (size_t i = 0; i < rewrite.size(); ++i) {
      record_keys[i] = record_key(kBlockPrefix, rewrite[i]);
      slices[i] = record_keys[i];
    }
    std::vector<rocksdb::PinnableSlice> values(rewrite.size());
    std::vector<rocksdb::Status> read(rewrite.size());
    store_.db()->MultiGet(read_options_, cf_, rewrite.size(), slices.data(), values.data(), read.data());
    for (size_t i = 0; i < rewrite.size(); ++i) {
      // Indexed and the writer lock held: the record is there unless the disk failed.
      AS_RETURN_IF_ERROR(from_rocksdb(read[i], "kv read back " + rewrite[i].to_hex()));
      batch.Put(cf_, slices[i], values[i]);
      batch.Put(cf_, record_key(kMetaPrefix, rewrite[i]), metas[i]);
    }
  }
  rocksdb::WriteOptions options;
  options.sync = true;  // a synced write syncs every earlier WAL entry with it
  Status status = batch.Count() > 0 ? write(options, batch, "kv durable rewrite")
                                    : from_rocksdb(store_.db()->SyncWAL(), "kv sync wal");
  if (!status.ok()) return status;
  std::lock_guard lock(mu_);
  for (const BlockKey& k : rewrite) volatile_keys_.erase(k);
  wal_unsynced_ = false;
  return Status::ok_status();
}

Status KvStore::resume() {
  return from_rocksdb(store_.db()->Resume(), "kv resume");
}

uint64_t KvStore::erased_since_reclaim() const {
  std::lock_guard lock(mu_);
  return erased_bytes_;
}

bool KvStore::contains(const BlockKey& key) const {
  std::lock_guard lock(mu_);
  return index_.contains(key);
}

Status KvStore::erase(const BlockKey& key) {
  return erase_batch(std::span(&key, 1)).status();
}

uint64_t KvStore::usage_bytes() const {
  std::lock_guard lock(mu_);
  return usage_;
}

size_t KvStore::num_blocks() const {
  std::lock_guard lock(mu_);
  return index_.size();
}

KvStoreCounters KvStore::counters() const {
  std::lock_guard lock(mu_);
  return counters_;
}

}  // namespace agentserve::memory
