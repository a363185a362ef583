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

Status KvStore::put_batch(std::span<const KvSpillBlock> blocks, Durability durability) {
  // Encode outside the lock: it copies and hashes every payload.
  std::vector<std::string> encoded(blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) {
    Status s = encode_kv_block(format_, blocks[i].key, blocks[i].tokens, blocks[i].payload, &encoded[i]);
    if (!s.ok()) return s.with_context("kv put block " + blocks[i].key.to_hex());
  }

  std::lock_guard lock(mu_);
  // Last write of a key wins, as in the WriteBatch.
  std::unordered_map<BlockKey, uint64_t> incoming;
  for (size_t i = 0; i < blocks.size(); ++i) incoming[blocks[i].key] = encoded[i].size();
  uint64_t added = 0;
  uint64_t replaced = 0;
  for (const auto& [key, size] : incoming) {
    added += size;
    if (auto it = index_.find(key); it != index_.end()) replaced += it->second.size;
  }
  if (added > quota_) {
    ++counters_.quota_refusals;
    return Status::resource_exhausted("kv batch of " + std::to_string(added) +
                                      " bytes exceeds the disk quota of " + std::to_string(quota_));
  }
  uint64_t projected = usage_ - replaced + added;
  std::vector<BlockKey> victims;
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
  rocksdb::WriteBatch batch;
  for (const BlockKey& v : victims) delete_block(batch, cf_, v);
  std::vector<uint64_t> ticks(blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) {
    ticks[i] = next_tick_++;
    batch.Put(cf_, record_key(kBlockPrefix, blocks[i].key), encoded[i]);
    batch.Put(cf_, record_key(kMetaPrefix, blocks[i].key), meta_value(encoded[i].size(), ticks[i]));
  }
  // A crash may lose the newest cache writes, which only costs recompute; synced ones it may not lose.
  rocksdb::WriteOptions options = write_options_;
  if (durability == Durability::kSynced) {
    options.disableWAL = false;
    options.sync = true;
  }
  AS_RETURN_IF_ERROR(from_rocksdb(store_.db()->Write(options, &batch), "kv put batch"));
  if (options.disableWAL && !volatile_overflow_) {
    for (const KvSpillBlock& b : blocks) volatile_keys_.insert(b.key);
    if (volatile_keys_.size() > kMaxVolatileKeys) {
      volatile_keys_.clear();
      volatile_overflow_ = true;
    }
  }

  for (const BlockKey& v : victims) forget_locked(index_.find(v));
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
  // Best effort: a lost tick only makes this block look older after a restart.
  (void)store_.db()->Put(write_options_, cf_, record_key(kMetaPrefix, key), meta_value(e.size, e.tick));
}

Status KvStore::drop_if_unchanged(const BlockKey& key, uint64_t tick) {
  std::lock_guard lock(mu_);
  auto it = index_.find(key);
  // A newer put of the same key replaced the bad block: keep the new one.
  if (it == index_.end() || it->second.tick != tick) return Status::ok_status();
  return erase_locked(it);
}

Status KvStore::erase_locked(Index::iterator it) {
  rocksdb::WriteBatch batch;
  delete_block(batch, cf_, it->first);
  AS_RETURN_IF_ERROR(from_rocksdb(store_.db()->Write(write_options_, &batch), "kv erase"));
  forget_locked(it);
  return Status::ok_status();
}

void KvStore::forget_locked(Index::iterator it) {
  usage_ -= it->second.size;
  erased_bytes_ += it->second.size;
  lru_.erase(it->second.lru_pos);
  index_.erase(it);
}

Result<size_t> KvStore::erase_batch(std::span<const BlockKey> keys) {
  std::lock_guard lock(mu_);
  rocksdb::WriteBatch batch;
  std::vector<Index::iterator> present;
  std::unordered_set<BlockKey> seen;
  for (const BlockKey& key : keys) {
    auto it = index_.find(key);
    if (it == index_.end() || !seen.insert(key).second) continue;
    delete_block(batch, cf_, key);
    present.push_back(it);
  }
  if (present.empty()) return size_t{0};
  AS_RETURN_IF_ERROR(from_rocksdb(store_.db()->Write(write_options_, &batch), "kv erase batch"));
  for (auto it : present) forget_locked(it);
  return present.size();
}

Status KvStore::reclaim() {
  AS_RETURN_IF_ERROR(from_rocksdb(store_.db()->Flush(rocksdb::FlushOptions(), cf_), "kv flush"));
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
  {
    std::lock_guard lock(mu_);
    const bool needed = volatile_overflow_ || std::ranges::any_of(keys, [this](const BlockKey& k) {
                          return volatile_keys_.contains(k);
                        });
    if (!needed) return Status::ok_status();
    // The flush covers every write made before it starts; writes after this point are tracked anew.
    volatile_keys_.clear();
    volatile_overflow_ = false;
  }
  Status flushed = from_rocksdb(store_.db()->Flush(rocksdb::FlushOptions(), cf_), "kv flush for durability");
  if (!flushed.ok()) {
    std::lock_guard lock(mu_);
    volatile_overflow_ = true;  // what this flush should have covered is still volatile
  }
  return flushed;
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
  std::lock_guard lock(mu_);
  auto it = index_.find(key);
  if (it == index_.end()) return Status::ok_status();
  return erase_locked(it);
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
