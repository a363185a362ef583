// InProcessCommunicator: the collectives of a tensor-parallel group whose ranks are threads. Every test
// runs real threads, one per rank, on random data of odd sizes, and repeats the collective so a barrier
// that lets a rank run ahead into the next call shows up as a wrong sum.
#include <doctest/doctest.h>

#include <atomic>
#include <functional>
#include <random>
#include <thread>
#include <vector>

#include "engine/communicator.h"

namespace agentserve::engine {
namespace {

std::vector<float> random_data(uint64_t seed, size_t n) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Runs fn(communicator) on one thread per rank and waits for all of them.
void run_ranks(int size, const std::function<void(Communicator&)>& fn) {
  auto group = InProcessCommunicator::create_group(size);
  std::vector<std::thread> threads;
  for (auto& comm : group) threads.emplace_back([&fn, c = comm.get()] { fn(*c); });
  for (auto& t : threads) t.join();
}

TEST_CASE("create_group hands out ranks 0..n-1 of one group") {
  auto group = InProcessCommunicator::create_group(3);
  REQUIRE(group.size() == 3);
  for (int r = 0; r < 3; ++r) {
    CHECK(group[static_cast<size_t>(r)]->rank() == r);
    CHECK(group[static_cast<size_t>(r)]->size() == 3);
  }
}

TEST_CASE(
    "all_reduce_sum leaves the rank-order sum on every rank, bit-identical, over odd sizes and repeats") {
  for (int size : {1, 2, 3, 4}) {
    for (size_t n : {size_t{1}, size_t{3}, size_t{17}, size_t{4097}}) {
      constexpr int kRepeats = 20;
      std::vector<std::vector<std::vector<float>>> results(static_cast<size_t>(size));
      run_ranks(size, [&](Communicator& comm) {
        for (int it = 0; it < kRepeats; ++it) {
          auto data = random_data(static_cast<uint64_t>(it * 100 + comm.rank()), n);
          comm.all_reduce_sum(data);
          results[static_cast<size_t>(comm.rank())].push_back(std::move(data));
        }
      });
      for (int it = 0; it < kRepeats; ++it) {
        std::vector<float> expected = random_data(static_cast<uint64_t>(it * 100), n);
        for (int r = 1; r < size; ++r) {
          const auto part = random_data(static_cast<uint64_t>(it * 100 + r), n);
          for (size_t i = 0; i < n; ++i) expected[i] += part[i];
        }
        for (int r = 0; r < size; ++r) {
          INFO("size " << size << ", n " << n << ", call " << it << ", rank " << r);
          CHECK(results[static_cast<size_t>(r)][static_cast<size_t>(it)] == expected);
        }
      }
    }
  }
}

TEST_CASE("all_gather gives every rank all send buffers in rank order") {
  for (int size : {1, 3, 4}) {
    for (size_t n : {size_t{1}, size_t{17}, size_t{4097}}) {
      std::atomic<int> mismatches{0};
      run_ranks(size, [&](Communicator& comm) {
        for (int it = 0; it < 10; ++it) {
          const auto send = random_data(static_cast<uint64_t>(it * 100 + comm.rank()), n);
          std::vector<float> recv(n * static_cast<size_t>(size), -7.0f);
          comm.all_gather(send, recv);
          for (int r = 0; r < size; ++r) {
            const auto expected = random_data(static_cast<uint64_t>(it * 100 + r), n);
            if (!std::equal(expected.begin(), expected.end(), recv.begin() + static_cast<long>(n) * r))
              ++mismatches;
          }
        }
      });
      CHECK(mismatches.load() == 0);
    }
  }
}

TEST_CASE("gather fills only the root's buffer") {
  for (int root : {0, 2}) {
    std::vector<std::vector<float>> recvs(3);
    run_ranks(3, [&](Communicator& comm) {
      const auto send = random_data(static_cast<uint64_t>(comm.rank()), 33);
      std::vector<float> recv(99, -7.0f);
      comm.gather(send, recv, root);
      recvs[static_cast<size_t>(comm.rank())] = recv;
    });
    for (int r = 0; r < 3; ++r) {
      const auto& recv = recvs[static_cast<size_t>(r)];
      if (r == root) {
        for (int src = 0; src < 3; ++src) {
          const auto expected = random_data(static_cast<uint64_t>(src), 33);
          CHECK(std::equal(expected.begin(), expected.end(), recv.begin() + 33 * src));
        }
      } else {
        CHECK(recv == std::vector<float>(99, -7.0f));
      }
    }
  }
}

TEST_CASE("barrier lets no rank past until every rank has arrived") {
  constexpr int kSize = 4;
  std::atomic<int> arrived{0};
  std::atomic<int> early{0};
  run_ranks(kSize, [&](Communicator& comm) {
    for (int it = 0; it < 50; ++it) {
      arrived.fetch_add(1);
      comm.barrier();
      if (arrived.load() < kSize * (it + 1)) early.fetch_add(1);
      comm.barrier();  // nobody starts the next round while another rank still checks this one
    }
  });
  CHECK(arrived.load() == kSize * 50);
  CHECK(early.load() == 0);
}

}  // namespace
}  // namespace agentserve::engine
