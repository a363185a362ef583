#include "engine/kv_tiers.h"

#include <algorithm>
#include <cstring>
#include <system_error>

#include "memory/block_key.h"
#include "spdlog/spdlog.h"

namespace agentserve::engine {
namespace {

// Blocks per WriteBatch at flush and per MultiGet in prefetch: large enough to amortize a batch, small
// enough that one refused batch (quota) loses little and the read buffer stays small.
constexpr size_t kIoBatchBlocks = 64;

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

void KvTiers::on_host_evict(std::span<const memory::KvSpillBlock> evicted) {
  if (disk_) stage(evicted);
}

void KvTiers::stage(std::span<const memory::KvSpillBlock> blocks) {
  std::vector<PendingPtr> copies;
  copies.reserve(blocks.size());
  for (const memory::KvSpillBlock& b : blocks) {
    // A block loaded from T2 and evicted again is still there: writing it again would only cost I/O.
    if (disk_->contains(b.key)) continue;
    auto p = std::make_shared<PendingBlock>();
    p->key = b.key;
    p->tokens.assign(b.tokens.begin(), b.tokens.end());
    p->payload.assign(b.payload.begin(), b.payload.end());
    p->pinned = is_pinned(b.key);
    copies.push_back(std::move(p));
  }
  std::lock_guard lock(mu_);
  for (PendingPtr& p : copies) {
    pending_[p->key] = p;
    staged_.push_back(std::move(p));
  }
  if (staged_.size() >= kSpillBatchBlocks) submit_locked();
}

void KvTiers::submit_spills() {
  if (!storage_) return;
  std::lock_guard lock(mu_);
  submit_locked();
}

void KvTiers::submit_locked() {
  if (staged_.empty()) {
    // Nothing new to write, but pinned blocks wait for the back-off to end: give them their turn.
    if (!retry_.empty() && !retry_posted_ && Clock::now() >= retry_at_) {
      retry_posted_ = true;
      storage_->post([this] { write_job({}); });
    }
    return;
  }
  auto batch = std::make_shared<std::vector<PendingPtr>>(std::move(staged_));
  staged_.clear();
  size_t bytes = 0;
  for (const PendingPtr& p : *batch) bytes += p->payload.size();
  if (storage_->try_post(bytes, [this, batch] { write_job(*batch); })) return;
  // Queue full: the newest spill gives way (KV is a cache), except pinned blocks, which must not be lost.
  auto pinned = std::make_shared<std::vector<PendingPtr>>();
  for (const PendingPtr& p : *batch) {
    if (p->pinned) {
      pinned->push_back(p);
      continue;
    }
    if (auto it = pending_.find(p->key); it != pending_.end() && it->second == p) pending_.erase(it);
    ++counters_.spills_dropped;
  }
  if (!pinned->empty()) storage_->post([this, pinned] { write_job(*pinned); });
}

bool KvTiers::is_current_locked(const PendingPtr& p) const {
  auto it = pending_.find(p->key);
  return it != pending_.end() && it->second == p;
}

void KvTiers::write_job(const std::vector<PendingPtr>& batch) {
  std::vector<PendingPtr> blocks;
  {
    std::lock_guard lock(mu_);
    retry_posted_ = false;
    const bool paused = stalled_ && Clock::now() < retry_at_;
    if (!paused) {
      // The back-off is over: the pinned blocks kept through it go first. Those unpinned since are cache
      // blocks again, given up as their refusal (already counted) said.
      blocks = std::move(retry_);
      retry_.clear();
      retry_bytes_ = 0;
      std::erase_if(blocks, [this](const PendingPtr& p) {
        if (!is_current_locked(p)) return true;
        if (is_pinned(p->key)) return false;
        pending_.erase(p->key);
        return true;
      });
    }
    // A discard since staging took the block out of pending_ (or a newer spill replaced it): it must not
    // reach T2 any more.
    for (const PendingPtr& p : batch) {
      if (is_current_locked(p)) blocks.push_back(p);
    }
    if (paused) {
      counters_.disk_write_errors += static_cast<int64_t>(blocks.size());
      refused_since_warn_ += static_cast<int64_t>(blocks.size());
      settle_locked(blocks, false);
      return;
    }
  }
  // At most kIoBatchBlocks per write: the kept blocks together may pass what the quota takes in one
  // batch, and a group refused (say, pinned blocks that do not fit) must not take the others with it.
  for (size_t done = 0; done < blocks.size(); done += kIoBatchBlocks) {
    const std::span<const PendingPtr> group =
        std::span(blocks).subspan(done, std::min(kIoBatchBlocks, blocks.size() - done));
    std::vector<memory::KvSpillBlock> live;
    live.reserve(group.size());
    for (const PendingPtr& p : group)
      live.push_back({.key = p->key, .tokens = p->tokens, .payload = p->payload});
    // After an I/O error RocksDB stays read-only until resumed; a quota refusal needs no resume.
    const bool written = write_disk(live).ok();
    std::lock_guard lock(mu_);
    settle_locked(group, written);
  }
}

void KvTiers::settle_locked(std::span<const PendingPtr> blocks, bool written) {
  for (const PendingPtr& p : blocks) {
    // A discard or a newer spill of the key since the write began: that one decides.
    if (!is_current_locked(p)) continue;
    if (!written && is_pinned(p->key)) {
      // A pinned block must survive the back-off: it stays readable in pending_ and is written by the
      // first write job after it. The list is bounded so a disk that never comes back (or a quota full
      // of pinned blocks) cannot grow it without end; past the bound the block is lost, and said so.
      if (retry_bytes_ + p->payload.size() <= options_.pinned_retry_bytes) {
        retry_bytes_ += p->payload.size();
        retry_.push_back(p);
        continue;
      }
      ++counters_.pinned_spills_lost;
      const auto now = Clock::now();
      if (now - last_lost_warn_ >= kWarnEvery) {
        spdlog::error(
            "kv tiers: pinned KV block {} not kept: the disk refuses writes and {} bytes of pinned blocks "
            "already wait for it ({} pinned blocks lost so far); a resumed session recomputes them",
            p->key.to_hex(), retry_bytes_, counters_.pinned_spills_lost);
        last_lost_warn_ = now;
      }
    }
    pending_.erase(p->key);
  }
}

Status KvTiers::write_disk(std::span<const memory::KvSpillBlock> blocks) {
  std::vector<memory::KvSpillBlock> missing;
  missing.reserve(blocks.size());
  for (const memory::KvSpillBlock& b : blocks) {
    if (!disk_->contains(b.key)) missing.push_back(b);
  }
  if (missing.empty()) return Status::ok_status();
  Status status = disk_->put_batch(missing);
  if (!status.ok() && status.code() != StatusCode::kResourceExhausted) {
    // A full disk leaves RocksDB read-only; once space is back, Resume() lets the next write through.
    if (disk_->resume().ok()) status = disk_->put_batch(missing);
  }
  note_disk_write(status, missing.size());
  if (status.ok()) {
    int64_t bytes = 0;
    for (const memory::KvSpillBlock& b : missing) bytes += static_cast<int64_t>(b.payload.size());
    std::lock_guard lock(mu_);
    counters_.disk_bytes_spilled += bytes;
  }
  maybe_reclaim();
  return status;
}

void KvTiers::note_disk_write(const Status& status, size_t n_blocks) {
  std::lock_guard lock(mu_);
  const auto now = Clock::now();
  if (status.ok()) {
    if (stalled_) {
      spdlog::info("kv tiers: disk spill resumed ({} blocks were not written while it was stopped)",
                   refused_since_warn_);
    }
    stalled_ = false;
    refused_since_warn_ = 0;
    return;
  }
  // KV is a cache: a refused spill costs recompute later, never correctness.
  counters_.disk_write_errors += static_cast<int64_t>(n_blocks);
  refused_since_warn_ += static_cast<int64_t>(n_blocks);
  if (!stalled_ || now - last_warn_ >= kWarnEvery) {
    spdlog::warn(
        "kv tiers: disk spill stopped, serving continues without keeping new KV on disk ({} blocks not "
        "written so far; usage {} of quota {} bytes): {}",
        refused_since_warn_, disk_->usage_bytes(), disk_->quota_bytes(), status.to_string());
    last_warn_ = now;
  }
  stalled_ = true;
  retry_at_ = now + kRetryAfter;
}

void KvTiers::maybe_reclaim() {
  if (disk_->erased_since_reclaim() < options_.reclaim_after_bytes) return;
  const auto start = Clock::now();
  const Status status = disk_->reclaim();
  if (!status.ok()) {
    spdlog::warn("kv tiers: reclaiming deleted blocks' disk space failed: {}", status.to_string());
    return;
  }
  std::lock_guard lock(mu_);
  ++counters_.disk_reclaims;
  spdlog::info("kv tiers: compacted deleted blocks away in {:.2f} s",
               std::chrono::duration<double>(Clock::now() - start).count());
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
