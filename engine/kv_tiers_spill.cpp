// KvTiers' write side (engine/kv_tiers.h): T1 evictions and direct spills staged for T2, the storage
// thread's write jobs, the back-off while T2 refuses writes (pinned blocks wait in the retry queue), and
// reclaiming deleted blocks' space. Loads, pins, persists and flush are in kv_tiers.cpp.
#include <algorithm>

#include "engine/kv_tiers.h"
#include "spdlog/spdlog.h"

namespace agentserve::engine {
namespace {

using Clock = std::chrono::steady_clock;

}  // namespace

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

}  // namespace agentserve::engine
