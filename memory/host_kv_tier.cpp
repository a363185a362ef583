#include "memory/host_kv_tier.h"

#include <algorithm>
#include <cstring>
#include <unordered_set>

namespace agentserve::memory {

Result<std::unique_ptr<HostKvTier>> HostKvTier::create(const KvLayout& layout, size_t budget_bytes,
                                                       EvictCallback on_evict, KeepPredicate keep) {
  AS_RETURN_IF_ERROR(layout.validate());
  const int n = layout.blocks_that_fit(budget_bytes);
  if (n <= 0) {
    return Status::invalid_argument("host kv budget of " + std::to_string(budget_bytes) +
                                    " bytes holds no block of " + std::to_string(layout.block_stride()));
  }
  AS_ASSIGN_OR_RETURN(KvArena arena, KvArena::create(layout, n));
  return std::unique_ptr<HostKvTier>(new HostKvTier(std::move(arena), std::move(on_evict), std::move(keep)));
}

HostKvTier::HostKvTier(KvArena arena, EvictCallback on_evict, KeepPredicate keep)
    : arena_(std::move(arena)),
      on_evict_(std::move(on_evict)),
      keep_(std::move(keep)),
      slots_(static_cast<size_t>(arena_.num_blocks())),
      tokens_(static_cast<size_t>(arena_.num_blocks()) * static_cast<size_t>(arena_.layout().block_size)) {
  // Reused from the back: slot 0 first.
  for (int s = arena_.num_blocks() - 1; s >= 0; --s) free_.push_back(s);
}

std::span<int32_t> HostKvTier::tokens_of(int slot) {
  const auto b = static_cast<size_t>(arena_.layout().block_size);
  return std::span(tokens_).subspan(static_cast<size_t>(slot) * b, b);
}

std::span<const int32_t> HostKvTier::tokens_of(int slot) const {
  const auto b = static_cast<size_t>(arena_.layout().block_size);
  return std::span(tokens_).subspan(static_cast<size_t>(slot) * b, b);
}

void HostKvTier::release_locked(int slot) {
  index_.erase(slots_[slot].key);
  lru_.erase(slots_[slot].lru_pos);
  free_.push_back(slot);
}

Status HostKvTier::put_batch(std::span<const KvSpillBlock> blocks) {
  const KvLayout& l = arena_.layout();
  for (const KvSpillBlock& b : blocks) {
    if (b.payload.size() != l.block_bytes() || b.tokens.empty() ||
        b.tokens.size() > static_cast<size_t>(l.block_size)) {
      return Status::invalid_argument("host kv block " + b.key.to_hex() + " does not fit the layout");
    }
  }
  std::lock_guard lock(mu_);
  std::unordered_set<BlockKey> incoming;
  size_t new_keys = 0;
  for (const KvSpillBlock& b : blocks) {
    if (incoming.insert(b.key).second && !index_.contains(b.key)) ++new_keys;
  }
  if (incoming.size() > slots_.size()) {
    return Status::resource_exhausted("host kv batch of " + std::to_string(incoming.size()) +
                                      " blocks exceeds " + std::to_string(slots_.size()) + " slots");
  }
  // Victims leave together, so the callback can spill them as one batch while their bytes are intact.
  // Unpinned blocks first; pinned ones only when those cannot make room.
  std::vector<int> victims;
  int64_t pinned_victims = 0;
  for (int pass = 0; pass < (keep_ ? 2 : 1); ++pass) {
    for (auto it = lru_.begin(); free_.size() + victims.size() < new_keys && it != lru_.end(); ++it) {
      const BlockKey& key = slots_[*it].key;
      if (incoming.contains(key)) continue;
      const bool pinned = keep_ && keep_(key);
      if (pass == 0 && pinned) continue;
      if (pass == 1 && !pinned) continue;
      victims.push_back(*it);
      pinned_victims += pass;
    }
  }
  if (!victims.empty()) {
    std::vector<KvSpillBlock> evicted;
    for (int s : victims) {
      evicted.push_back({slots_[s].key, tokens_of(s).first(static_cast<size_t>(slots_[s].n_tokens)),
                         arena_.block_bytes(s)});
    }
    if (on_evict_) on_evict_(evicted);
    for (int s : victims) release_locked(s);
    counters_.evictions += static_cast<int64_t>(victims.size());
    counters_.pinned_evictions += pinned_victims;
  }
  for (const KvSpillBlock& b : blocks) {
    int slot;
    if (auto it = index_.find(b.key); it != index_.end()) {
      slot = it->second;
      lru_.erase(slots_[slot].lru_pos);
    } else {
      slot = free_.back();
      free_.pop_back();
      index_[b.key] = slot;
    }
    std::memcpy(arena_.block_bytes(slot).data(), b.payload.data(), b.payload.size());
    std::copy(b.tokens.begin(), b.tokens.end(), tokens_of(slot).begin());
    lru_.push_back(slot);
    slots_[slot] = Slot{b.key, static_cast<int>(b.tokens.size()), std::prev(lru_.end())};
  }
  return Status::ok_status();
}

Status HostKvTier::get(const BlockKey& key, std::span<const int32_t> tokens, std::span<std::byte> out) {
  if (out.size() != arena_.layout().block_bytes()) {
    return Status::invalid_argument("host kv get buffer is " + std::to_string(out.size()) + " bytes");
  }
  std::lock_guard lock(mu_);
  auto it = index_.find(key);
  if (it == index_.end()) {
    ++counters_.misses;
    return Status::not_found("host kv block " + key.to_hex());
  }
  const int slot = it->second;
  std::span<const int32_t> held = tokens_of(slot).first(static_cast<size_t>(slots_[slot].n_tokens));
  if (!std::ranges::equal(held, tokens)) {
    ++counters_.misses;
    return Status::failed_precondition("host kv block " + key.to_hex() + " holds other token ids");
  }
  std::memcpy(out.data(), arena_.block_bytes(slot).data(), out.size());
  lru_.splice(lru_.end(), lru_, slots_[slot].lru_pos);
  ++counters_.hits;
  return Status::ok_status();
}

bool HostKvTier::contains(const BlockKey& key) const {
  std::lock_guard lock(mu_);
  return index_.contains(key);
}

void HostKvTier::erase(const BlockKey& key) {
  std::lock_guard lock(mu_);
  if (auto it = index_.find(key); it != index_.end()) release_locked(it->second);
}

void HostKvTier::for_each(const std::function<void(const KvSpillBlock&)>& fn) const {
  std::lock_guard lock(mu_);
  for (int s : lru_) {
    fn(KvSpillBlock{slots_[s].key, tokens_of(s).first(static_cast<size_t>(slots_[s].n_tokens)),
                    arena_.block_bytes(s)});
  }
}

int HostKvTier::num_blocks() const {
  std::lock_guard lock(mu_);
  return static_cast<int>(index_.size());
}

HostKvTierCounters HostKvTier::counters() const {
  std::lock_guard lock(mu_);
  return counters_;
}

}  // namespace agentserve::memory
