#include "engine/kv_tiers.h"

#include <algorithm>
#include <cstring>
#include <system_error>

#include "memory/block_key.h"
#include "spdlog/spdlog.h"

namespace agentserve::engine {
namespace {

using Clock = std::chrono::steady_clock;

}  // namespace

Status ArenaBlockSpace::read_blocks(std::span<const int32_t> ids, std::span<std::byte> host) {
  const size_t bytes = arena_.layout().block_bytes();
  for (size_t i = 0; i < ids.size(); ++i)
    std::memcpy(host.data() + i * bytes, host_block(ids[i]).data(), bytes);
  return Status::ok_status();
}

void ArenaBlockSpace::write_blocks(std::span<const int32_t> ids, std::span<const std::byte> host) {
  const size_t bytes = arena_.layout().block_bytes();
  for (size_t i = 0; i < ids.size(); ++i)
    std::memcpy(host_block(ids[i]).data(), host.data() + i * bytes, bytes);
}

Result<std::unique_ptr<KvTiers>> KvTiers::open(const KvTierOptions& options,
                                               std::string_view model_fingerprint, KvBlockSpace& t0) {
  std::unique_ptr<KvTiers> tiers(new KvTiers(t0));
  tiers->options_ = options;
  const memory::KvLayout& layout = t0.layout();
  memory::RocksDbStore* db = options.store;
  if (db == nullptr && !options.data_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(options.data_dir, ec);
    if (ec)
      return Status::io_error("cannot create data_dir " + options.data_dir.string() + ": " + ec.message());
    memory::StoreOptions store_options;
    store_options.path = (options.data_dir / "rocksdb").string();
    store_options.kv_quota_bytes = options.disk_kv_quota_bytes;
    AS_ASSIGN_OR_RETURN(tiers->owned_db_, memory::RocksDbStore::open(store_options));
    db = tiers->owned_db_.get();
  }
  KvTiers* self = tiers.get();
  auto keep = [self](const memory::BlockKey& key) { return self->is_pinned(key); };
  if (db != nullptr) {
    AS_ASSIGN_OR_RETURN(tiers->disk_,
                        memory::KvStore::open(*db, memory::KvBlockFormat::make(model_fingerprint, layout),
                                              options.disk_kv_quota_bytes));
    tiers->disk_->set_keep(keep);
    if (options.disk_write_hook) tiers->disk_->set_write_hook(options.disk_write_hook);
    tiers->storage_ = std::make_unique<StorageThread>(options.spill_queue_bytes);
  }
  if (options.host_kv_bytes > 0) {
    AS_ASSIGN_OR_RETURN(
        tiers->host_,
        memory::HostKvTier::create(
            layout, options.host_kv_bytes,
            [self](std::span<const memory::KvSpillBlock> evicted) { self->on_host_evict(evicted); }, keep));
  }
  return tiers;
}

KvTiers::~KvTiers() {
  if (storage_) {
    submit_spills();
    storage_->drain();
  }
}

std::vector<memory::BlockKey> KvTiers::chain_keys(std::span<const int32_t> tokens,
                                                  const memory::BlockKey& salt) const {
  const size_t bs = static_cast<size_t>(t0_.layout().block_size);
  std::vector<memory::BlockKey> keys;
  keys.reserve(tokens.size() / bs);
  memory::BlockKey parent = memory::kRootBlockKey;
  for (size_t i = 0; i + bs <= tokens.size(); i += bs) {
    parent = memory::chain_block_key(parent, tokens.subspan(i, bs), salt);
    keys.push_back(parent);
  }
  return keys;
}

bool KvTiers::is_pinned(const memory::BlockKey& key) const {
  std::lock_guard lock(pins_mu_);
  return pinned_.contains(key);
}

std::span<const std::byte> KvTiers::t0_block(int block, std::vector<std::byte>& scratch) {
  if (t0_.in_host_memory()) return t0_.host_block(block);
  scratch.resize(t0_.layout().block_bytes());
  const int32_t id = block;
  const Status status = t0_.read_blocks(std::span(&id, 1), scratch);
  if (status.ok()) return scratch;
  spdlog::warn("kv tiers: reading KV block {} from the backend failed, not keeping it: {}", block,
               status.to_string());
  return {};
}

void KvTiers::spill(int block, const memory::BlockKey& key, std::span<const int32_t> tokens) {
  const std::span<const std::byte> payload = t0_block(block, spill_scratch_);
  if (payload.empty()) return;
  const memory::KvSpillBlock spilled{.key = key, .tokens = tokens, .payload = payload};
  if (host_) {
    // T1's evictions reach the staging queue through on_host_evict, inside this call.
    if (host_->put_batch(std::span(&spilled, 1)).ok()) {
      std::lock_guard lock(mu_);
      counters_.host_bytes_spilled += static_cast<int64_t>(spilled.payload.size());
      return;
    }
  }
  if (disk_) stage(std::span(&spilled, 1));
}

bool KvTiers::contains(const memory::BlockKey& key) const {
  {
    std::lock_guard lock(mu_);
    if (pending_.contains(key)) return true;
  }
  return (host_ && host_->contains(key)) || (disk_ && disk_->contains(key));
}

bool KvTiers::load(const memory::BlockKey& key, std::span<const int32_t> tokens, int block) {
  const memory::BlockLoad one{key, tokens, block};
  return load_chain(std::span(&one, 1)) == 1;
}

int KvTiers::load_chain(std::span<const memory::BlockLoad> loads) {
  const size_t n = loads.size();
  std::vector<char> ok(n, 0);
  std::vector<size_t> from_host;  // loads served by T1 (erased there once kept)
  std::vector<memory::KvLoad> disk_loads;
  std::vector<size_t> disk_pos;
  int64_t host_hits = 0, host_misses = 0, host_bytes = 0;
  // A T0 outside host memory gets the chain's blocks decoded into `staged`, then one upload.
  const bool in_place = t0_.in_host_memory();
  const size_t block_bytes = t0_.layout().block_bytes();
  std::vector<std::byte> staged(in_place ? 0 : n * block_bytes);
  for (size_t i = 0; i < n; ++i) {
    const memory::BlockLoad& l = loads[i];
    const std::span<std::byte> out =
        in_place ? t0_.host_block(l.block) : std::span(staged).subspan(i * block_bytes, block_bytes);
    PendingPtr pending;
    {
      std::lock_guard lock(mu_);
      if (auto it = pending_.find(l.key); it != pending_.end()) pending = it->second;
    }
    if (pending && std::ranges::equal(pending->tokens, l.tokens)) {
      std::memcpy(out.data(), pending->payload.data(), out.size());
      ok[i] = 1;
    } else if (host_ && host_->get(l.key, l.tokens, out).ok()) {
      ok[i] = 1;
      from_host.push_back(i);
    } else if (disk_ && disk_->contains(l.key)) {
      disk_loads.push_back({l.key, l.tokens, out});
      disk_pos.push_back(i);
    } else {
      if (host_) ++host_misses;
      break;  // the chain ends here: nothing after it can be used
    }
    if (ok[i]) {
      ++host_hits;
      host_bytes += static_cast<int64_t>(out.size());
    } else if (host_) {
      ++host_misses;
    }
  }
  int64_t disk_hits = 0, disk_misses = 0, disk_bytes = 0, corrupt = 0;
  if (!disk_loads.empty()) {
    const int64_t corrupt_before = disk_->counters().dropped_corrupt;
    const std::vector<Status> read = disk_->get_batch(disk_loads);
    corrupt = disk_->counters().dropped_corrupt - corrupt_before;
    for (size_t j = 0; j < read.size(); ++j) {
      if (read[j].ok()) {
        ok[disk_pos[j]] = 1;
        ++disk_hits;
        disk_bytes += static_cast<int64_t>(disk_loads[j].out.size());
        continue;
      }
      ++disk_misses;
      if (read[j].code() != StatusCode::kNotFound) {
        spdlog::warn("kv tiers: block {} rejected, recomputing: {}", disk_loads[j].key.to_hex(),
                     read[j].to_string());
      }
    }
  }
  size_t leading = 0;
  while (leading < n && ok[leading]) ++leading;
  if (!in_place && leading > 0) {
    std::vector<int32_t> ids(leading);
    for (size_t i = 0; i < leading; ++i) ids[i] = loads[i].block;
    t0_.write_blocks(ids, std::span(staged).first(leading * block_bytes));
  }
  // The block lives in T0 now and comes back to T1 if T0 evicts it: keeping both copies would only halve
  // what T1 holds. Blocks past the first failure stay in T1, since T0 gives them back unused.
  for (size_t i : from_host) {
    if (i < leading) host_->erase(loads[i].key);
  }
  std::lock_guard lock(mu_);
  counters_.host_hits += host_hits;
  counters_.host_misses += host_misses;
  counters_.host_bytes_loaded += host_bytes;
  counters_.disk_hits += disk_hits;
  counters_.disk_misses += disk_misses;
  counters_.disk_bytes_loaded += disk_bytes;
  counters_.dropped_corrupt += corrupt;
  return static_cast<int>(leading);
}

void KvTiers::prefetch(std::span<const int32_t> tokens, const memory::BlockKey& salt) {
  if (!host_ || !disk_) return;
  std::vector<memory::BlockKey> keys = chain_keys(tokens, salt);
  keys.resize(std::min(keys.size(), static_cast<size_t>(host_->capacity_blocks())));
  std::vector<int32_t> ids(tokens.begin(),
                           tokens.begin() + static_cast<ptrdiff_t>(keys.size() * t0_.layout().block_size));
  storage_->post([this, keys = std::move(keys), ids = std::move(ids)] { prefetch_job(keys, ids); });
}

void KvTiers::prefetch_job(const std::vector<memory::BlockKey>& keys, const std::vector<int32_t>& tokens) {
  const size_t bs = static_cast<size_t>(t0_.layout().block_size);
  const size_t block_bytes = t0_.layout().block_bytes();
  // One T1 put must fit T1 whole.
  const size_t batch_blocks = std::min(kIoBatchBlocks, static_cast<size_t>(host_->capacity_blocks()));
  std::vector<std::byte> buffer(batch_blocks * block_bytes);
  std::vector<memory::KvLoad> reads;
  int64_t fetched = 0;
  auto run = [&] {
    if (reads.empty()) return;
    const std::vector<Status> read = disk_->get_batch(reads);
    std::vector<memory::KvSpillBlock> got;
    for (size_t j = 0; j < reads.size(); ++j) {
      if (read[j].ok()) got.push_back({reads[j].key, reads[j].tokens, reads[j].out});
    }
    if (!got.empty() && host_->put_batch(got).ok()) fetched += static_cast<int64_t>(got.size());
    reads.clear();
  };
  for (size_t i = 0; i < keys.size(); ++i) {
    if (host_->contains(keys[i])) continue;
    {
      std::lock_guard lock(mu_);
      if (pending_.contains(keys[i])) continue;
    }
    if (!disk_->contains(keys[i])) break;  // the chain ends in T2: admission cannot use what follows
    const size_t slot = reads.size();
    reads.push_back({keys[i], std::span(tokens).subspan(i * bs, bs),
                     std::span(buffer).subspan(slot * block_bytes, block_bytes)});
    if (reads.size() == batch_blocks) run();
  }
  run();
  std::lock_guard lock(mu_);
  counters_.prefetched_blocks += fetched;
}

void KvTiers::pin(const std::string& pin_id, std::span<const int32_t> tokens, const memory::BlockKey& salt) {
  std::vector<memory::BlockKey> keys = chain_keys(tokens, salt);
  unpin(pin_id);
  std::lock_guard lock(pins_mu_);
  for (const memory::BlockKey& k : keys) ++pinned_[k];
  pins_[pin_id] = std::move(keys);
}

void KvTiers::unpin(const std::string& pin_id) {
  std::lock_guard lock(pins_mu_);
  auto it = pins_.find(pin_id);
  if (it == pins_.end()) return;
  for (const memory::BlockKey& k : it->second) {
    auto p = pinned_.find(k);
    if (p != pinned_.end() && --p->second == 0) pinned_.erase(p);
  }
  pins_.erase(it);
}

void KvTiers::discard(std::span<const int32_t> tokens, const memory::BlockKey& salt, int from_token) {
  std::vector<memory::BlockKey> keys = chain_keys(tokens, salt);
  const size_t first = static_cast<size_t>(std::max(0, from_token) / t0_.layout().block_size);
  keys.erase(keys.begin(), keys.begin() + static_cast<ptrdiff_t>(std::min(first, keys.size())));
  if (keys.empty()) return;
  if (!storage_) {
    discard_job(keys);
    return;
  }
  storage_->post([this, keys = std::move(keys)] { discard_job(keys); });
}

void KvTiers::discard_job(const std::vector<memory::BlockKey>& keys) {
  int64_t removed = 0;
  {
    std::lock_guard lock(mu_);
    for (const memory::BlockKey& k : keys) removed += static_cast<int64_t>(pending_.erase(k));
  }
  if (host_) {
    for (const memory::BlockKey& k : keys) {
      if (host_->contains(k)) {
        host_->erase(k);
        ++removed;
      }
    }
  }
  if (disk_) {
    Result<size_t> erased = disk_->erase_batch(keys);
    if (erased.ok()) {
      removed += static_cast<int64_t>(*erased);
      maybe_reclaim();
    } else {
      spdlog::warn("kv tiers: discard could not delete blocks on disk: {}", erased.status().to_string());
    }
  }
  std::lock_guard lock(mu_);
  counters_.discarded_blocks += removed;
}

void KvTiers::persist(std::span<const int32_t> tokens, const memory::BlockKey& salt,
                      const memory::BlockManager& blocks, std::function<void(Result<int>)> done) {
  if (!disk_) {
    done(0);
    return;
  }
  const size_t bs = static_cast<size_t>(t0_.layout().block_size);
  std::vector<memory::BlockKey> keys = chain_keys(tokens, salt);
  std::vector<PendingPtr> copies;
  size_t held = 0;
  for (; held < keys.size(); ++held) {
    const memory::BlockKey& key = keys[held];
    const std::span<const int32_t> ids = tokens.subspan(held * bs, bs);
    // Already in T2: make_durable writes it again through the WAL if it was a WAL-less cache write.
    if (disk_->contains(key)) continue;
    {
      std::lock_guard lock(mu_);
      if (auto it = pending_.find(key); it != pending_.end() && std::ranges::equal(it->second->tokens, ids)) {
        copies.push_back(it->second);
        continue;
      }
    }
    auto copy = std::make_shared<PendingBlock>();
    copy->key = key;
    copy->tokens.assign(ids.begin(), ids.end());
    if (const int block = blocks.pool().lookup(key, ids); block >= 0) {
      const std::span<const std::byte> bytes = t0_block(block, spill_scratch_);
      if (bytes.empty()) break;
      copy->payload.assign(bytes.begin(), bytes.end());
    } else if (host_) {
      copy->payload.resize(t0_.layout().block_bytes());
      if (!host_->get(key, ids, copy->payload).ok()) break;
    } else {
      break;  // no tier holds it: the chain's KV ends here
    }
    copies.push_back(std::move(copy));
  }
  keys.resize(held);
  storage_->post([this, keys = std::move(keys), copies = std::move(copies), done = std::move(done)] {
    done(persist_job(keys, copies));
  });
}

Result<int> KvTiers::persist_job(const std::vector<memory::BlockKey>& keys,
                                 const std::vector<PendingPtr>& copies) {
  std::vector<memory::KvSpillBlock> batch;
  int64_t bytes = 0;
  auto write = [&]() -> Status {
    if (batch.empty()) return Status::ok_status();
    // Through the WAL, unsynced: make_durable below syncs this and every earlier batch in one go.
    Status status = disk_->put_batch(batch, memory::Durability::kLogged);
    note_disk_write(status, batch.size());
    if (status.ok()) {
      for (const memory::KvSpillBlock& b : batch) bytes += static_cast<int64_t>(b.payload.size());
    }
    batch.clear();
    return status;
  };
  for (const PendingPtr& p : copies) {
    if (disk_->contains(p->key)) continue;  // a spill queued before this job wrote it
    batch.push_back({.key = p->key, .tokens = p->tokens, .payload = p->payload});
    if (batch.size() == kIoBatchBlocks) AS_RETURN_IF_ERROR(write());
  }
  AS_RETURN_IF_ERROR(write());
  {
    std::lock_guard lock(mu_);
    counters_.disk_bytes_spilled += bytes;
  }
  AS_RETURN_IF_ERROR(disk_->make_durable(keys));
  int stored = 0;
  while (stored < static_cast<int>(keys.size()) && disk_->contains(keys[static_cast<size_t>(stored)])) ++stored;
  return stored;
}

void KvTiers::sync() {
  if (!storage_) return;
  submit_spills();
  storage_->drain();
}

KvTierCounters KvTiers::counters() const {
  KvTierCounters c;
  {
    std::lock_guard lock(mu_);
    c = counters_;
    c.disk_spill_stalled = stalled_ ? 1 : 0;
    c.pinned_retry_blocks = static_cast<int64_t>(retry_.size());
  }
  {
    std::lock_guard lock(pins_mu_);
    c.pinned_blocks = static_cast<int64_t>(pinned_.size());
  }
  if (host_) {
    c.host_bytes_used = static_cast<int64_t>(host_->bytes_used());
    c.pinned_evictions = host_->counters().pinned_evictions;
  }
  if (disk_) c.disk_usage_bytes = static_cast<int64_t>(disk_->usage_bytes());
  if (storage_) c.spill_queue_bytes = static_cast<int64_t>(storage_->queued_bytes());
  return c;
}

Status KvTiers::flush(const memory::BlockManager& blocks) {
  if (!disk_) return Status::ok_status();
  sync();
  Status first_error;
  auto keep_error = [&first_error](Status s) {
    if (first_error.ok() && !s.ok()) first_error = std::move(s);
  };
  // Pinned blocks still waiting out a back-off: the last chance to write them, whatever the back-off says.
  std::vector<PendingPtr> kept;
  {
    std::lock_guard lock(mu_);
    kept = std::move(retry_);
    retry_.clear();
    retry_bytes_ = 0;
    std::erase_if(kept, [this](const PendingPtr& p) { return !is_current_locked(p); });
  }
  for (size_t done = 0; done < kept.size(); done += kIoBatchBlocks) {
    const std::span<const PendingPtr> group =
        std::span(kept).subspan(done, std::min(kIoBatchBlocks, kept.size() - done));
    std::vector<memory::KvSpillBlock> live;
    for (const PendingPtr& p : group)
      live.push_back({.key = p->key, .tokens = p->tokens, .payload = p->payload});
    const Status status = write_disk(live);
    std::lock_guard lock(mu_);
    if (!status.ok()) counters_.pinned_spills_lost += static_cast<int64_t>(group.size());
    for (const PendingPtr& p : group) {
      if (is_current_locked(p)) pending_.erase(p->key);
    }
    keep_error(status);
  }
  const size_t block_bytes = t0_.layout().block_bytes();
  // T1 first, then T0: T2's LRU then ranks the blocks T0 still held (the most recent) newest.
  if (host_) {
    std::vector<std::pair<memory::BlockKey, std::vector<int32_t>>> held;
    host_->for_each([&](const memory::KvSpillBlock& b) {
      if (!disk_->contains(b.key))
        held.emplace_back(b.key, std::vector<int32_t>(b.tokens.begin(), b.tokens.end()));
    });
    std::vector<std::byte> buffer(kIoBatchBlocks * block_bytes);
    std::vector<memory::KvSpillBlock> batch;
    for (const auto& [key, tokens] : held) {
      const std::span<std::byte> out = std::span(buffer).subspan(batch.size() * block_bytes, block_bytes);
      if (!host_->get(key, tokens, out).ok()) continue;
      batch.push_back({.key = key, .tokens = tokens, .payload = out});
      if (batch.size() == kIoBatchBlocks) {
        keep_error(write_disk(batch));
        batch.clear();
      }
    }
    if (!batch.empty()) keep_error(write_disk(batch));
  }
  // T0's blocks in place, or read kIoBatchBlocks at a time from a T0 outside host memory.
  const bool in_place = t0_.in_host_memory();
  std::vector<std::byte> staged(in_place ? 0 : kIoBatchBlocks * block_bytes);
  std::vector<int32_t> ids;
  std::vector<memory::KvSpillBlock> batch;
  batch.reserve(kIoBatchBlocks);
  auto write_batch = [&] {
    Status read = in_place ? Status::ok_status() : t0_.read_blocks(ids, staged);
    keep_error(read.ok() ? write_disk(batch) : read);
    batch.clear();
    ids.clear();
  };
  for (int b = 0; b < blocks.pool().num_blocks(); ++b) {
    const std::optional<memory::BlockKey> key = blocks.pool().key(b);
    if (!key) continue;
    // write_disk skips blocks T2 holds too; checking first spares a backend their reads.
    if (!in_place && disk_->contains(*key)) continue;
    const std::span<const std::byte> payload =
        in_place ? t0_.host_block(b) : std::span(staged).subspan(batch.size() * block_bytes, block_bytes);
    batch.push_back({.key = *key, .tokens = blocks.block_tokens(b), .payload = payload});
    ids.push_back(b);
    if (batch.size() == kIoBatchBlocks) write_batch();
  }
  if (!batch.empty()) write_batch();
  return first_error;
}

}  // namespace agentserve::engine
