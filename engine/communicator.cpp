#include "engine/communicator.h"

#include <algorithm>
#include <cstring>

namespace agentserve::engine {

std::vector<std::unique_ptr<InProcessCommunicator>> InProcessCommunicator::create_group(int size) {
  auto group = std::make_shared<Group>(std::max(1, size));
  std::vector<std::unique_ptr<InProcessCommunicator>> ranks;
  for (int r = 0; r < group->size; ++r) ranks.emplace_back(new InProcessCommunicator(group, r));
  return ranks;
}

void InProcessCommunicator::all_reduce_sum(std::span<float> data) {
  Group& g = *group_;
  if (g.size == 1) return;
  g.buffers[static_cast<size_t>(rank_)] = data.data();
  g.sync.arrive_and_wait();
  // Reduce-scatter and all-gather in one pass: this rank sums its slice of every buffer and writes the sum
  // back into that slice of every buffer. Slices are disjoint, so no two ranks touch the same float.
  const size_t n = data.size();
  const size_t begin = n * static_cast<size_t>(rank_) / static_cast<size_t>(g.size);
  const size_t end = n * static_cast<size_t>(rank_ + 1) / static_cast<size_t>(g.size);
  constexpr size_t kTile = 256;
  float sum[kTile];
  for (size_t t = begin; t < end; t += kTile) {
    const size_t len = std::min(kTile, end - t);
    std::memcpy(sum, g.buffers[0] + t, len * sizeof(float));
    for (int r = 1; r < g.size; ++r) {
      const float* src = g.buffers[static_cast<size_t>(r)] + t;
      for (size_t i = 0; i < len; ++i) sum[i] += src[i];
    }
    for (int r = 0; r < g.size; ++r)
      std::memcpy(g.buffers[static_cast<size_t>(r)] + t, sum, len * sizeof(float));
  }
  // Nobody returns (and reuses its buffer) before every slice is written.
  g.sync.arrive_and_wait();
}

void InProcessCommunicator::all_gather(std::span<const float> send, std::span<float> recv) {
  Group& g = *group_;
  g.sends[static_cast<size_t>(rank_)] = send.data();
  g.sync.arrive_and_wait();
  for (int r = 0; r < g.size; ++r) {
    std::memcpy(recv.data() + static_cast<size_t>(r) * send.size(), g.sends[static_cast<size_t>(r)],
                send.size() * sizeof(float));
  }
  // The senders' buffers stay untouched until every rank has copied them.
  g.sync.arrive_and_wait();
}

void InProcessCommunicator::gather(std::span<const float> send, std::span<float> recv, int root) {
  Group& g = *group_;
  g.sends[static_cast<size_t>(rank_)] = send.data();
  g.sync.arrive_and_wait();
  if (rank_ == root) {
    for (int r = 0; r < g.size; ++r) {
      std::memcpy(recv.data() + static_cast<size_t>(r) * send.size(), g.sends[static_cast<size_t>(r)],
                  send.size() * sizeof(float));
    }
  }
  g.sync.arrive_and_wait();
}

void InProcessCommunicator::barrier() {
  group_->sync.arrive_and_wait();
}

}  // namespace agentserve::engine
