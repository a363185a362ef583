// Prefix-cache bookkeeping cost: block key hashing, prefix matching and admission of a 128k-token context
// that is fully cached, and block churn under eviction. Prints the ratio that matters: how much the index
// and token compare add on top of hashing the chain alone (admission walks the chain twice: can_allocate,
// then allocate).
#include <chrono>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "memory/block_key.h"
#include "memory/block_manager.h"

namespace {

using agentserve::memory::BlockKey;
using agentserve::memory::BlockManager;
using agentserve::memory::SequenceState;
namespace mem = agentserve::memory;

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown";
}

// Best of `reps` runs of f, in seconds.
template <typename F>
double best_of(int reps, F&& f) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, seconds_since(t0));
  }
  return best;
}

}  // namespace

int main() {
  constexpr int kBlock = 16;
  constexpr int kTokens = 131072;
  constexpr int kBlocks = kTokens / kBlock;
  std::printf("cpu: %s, %u hardware threads; block %d tokens, context %d tokens\n", cpu_model().c_str(),
              std::thread::hardware_concurrency(), kBlock, kTokens);

  std::vector<int32_t> tokens(kTokens + 1);
  std::iota(tokens.begin(), tokens.end(), 1000);
  const BlockKey salt = mem::make_salt("bench-model", "tenant");

  BlockKey sink{};
  double t_hash = best_of(5, [&] {
    BlockKey parent = mem::kRootBlockKey;
    for (int i = 0; i < kBlocks; ++i) {
      parent = mem::chain_block_key(parent,
                                    std::span(tokens).subspan(static_cast<size_t>(i) * kBlock, kBlock), salt);
    }
    sink = parent;
  });
  std::printf("chain_block_key:      %7.1f ns/block  (%.2f GB/s of token ids)\n", t_hash / kBlocks * 1e9,
              kTokens * 4.0 / t_hash / 1e9);

  BlockManager m(kBlocks + 64, kBlock);
  SequenceState first{.tokens = tokens, .salt = salt};
  if (!m.allocate(first, kTokens + 1).ok() || !m.commit_computed(first, kTokens + 1).ok()) return 1;

  int matched = 0;
  double t_match = best_of(5, [&] { matched = m.match_prefix(tokens, salt).num_blocks; });
  std::printf("match_prefix (hit):   %7.1f ns/block  %d blocks, %.2fx hashing alone\n",
              t_match / kBlocks * 1e9, matched, t_match / t_hash);

  SequenceState second{.tokens = tokens, .salt = salt};
  double t_admit = best_of(5, [&] {
    if (!m.can_allocate(second, 1) || !m.allocate(second, 1).ok()) std::abort();
    m.release(second);
  });
  std::printf("admit+release (hit):  %7.1f us for %d tokens, %.2fx hashing alone\n", t_admit * 1e6, kTokens,
              t_admit / t_hash);

  // Churn: every allocation of a 4k-block pool evicts a cached block through the callback.
  int64_t evicted = 0;
  BlockManager churn(4096, kBlock, [&](int, const BlockKey&) { ++evicted; });
  std::vector<int32_t> t(kBlock + 1);
  constexpr int kSeqs = 200000;
  auto t0 = std::chrono::steady_clock::now();
  for (int s = 0; s < kSeqs; ++s) {
    std::iota(t.begin(), t.end(), s * 31);
    SequenceState seq{.tokens = t, .salt = salt};
    if (!churn.allocate(seq, kBlock + 1).ok() || !churn.commit_computed(seq, kBlock + 1).ok()) return 1;
    churn.release(seq);
  }
  double t_churn = seconds_since(t0);
  std::printf("admit/commit/release: %7.1f ns per 17-token sequence (2 blocks), %lld evictions\n",
              t_churn / kSeqs * 1e9, static_cast<long long>(evicted));
  return sink.lo == 42 ? 2 : 0;  // keeps the hashing loop from being optimized away
}
