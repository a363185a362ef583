#include "base/thread_pool.h"

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

namespace agentserve {
namespace {

// Runs parallel_for and checks every index in [0, n) was visited exactly once, by chunks that respect
// the thread-index contract.
void check_covers_each_index_once(ThreadPool& pool, int64_t n, int64_t grain = 1) {
  std::vector<std::atomic<int>> hits(static_cast<size_t>(std::max<int64_t>(n, 0)));
  std::atomic<int> calls{0};
  std::atomic<int> bad_thread_index{0};
  pool.parallel_for(
      n,
      [&](int64_t begin, int64_t end, int thread_index) {
        calls.fetch_add(1);
        if (thread_index < 0 || thread_index >= pool.size()) bad_thread_index.fetch_add(1);
        for (int64_t i = begin; i < end; ++i) hits[static_cast<size_t>(i)].fetch_add(1);
      },
      grain);
  for (int64_t i = 0; i < n; ++i) REQUIRE(hits[static_cast<size_t>(i)].load() == 1);
  CHECK(bad_thread_index.load() == 0);
  CHECK(calls.load() <= pool.size());
  if (n <= 0) CHECK(calls.load() == 0);
}

TEST_CASE("parallel_for visits every index exactly once for odd sizes and thread counts") {
  for (int threads : {1, 2, 3, 5}) {
    ThreadPool pool(threads);
    CHECK(pool.size() == threads);
    for (int64_t n : {0, 1, 2, 3, 4, 7, 17, 100, 4097}) check_covers_each_index_once(pool, n);
  }
}

TEST_CASE("zero items call nothing and one item runs inline on the caller as thread 0") {
  ThreadPool pool(4);
  int calls = 0;
  pool.parallel_for(0, [&](int64_t, int64_t, int) { ++calls; });
  pool.parallel_for(-5, [&](int64_t, int64_t, int) { ++calls; });
  CHECK(calls == 0);
  std::thread::id who;
  int index = -1;
  pool.parallel_for(1, [&](int64_t b, int64_t e, int t) {
    CHECK(b == 0);
    CHECK(e == 1);
    who = std::this_thread::get_id();
    index = t;
  });
  CHECK(who == std::this_thread::get_id());
  CHECK(index == 0);
}

TEST_CASE("a pool of one thread runs the whole range inline") {
  ThreadPool pool(1);
  std::vector<std::pair<int64_t, int64_t>> ranges;
  pool.parallel_for(10, [&](int64_t b, int64_t e, int t) {
    CHECK(t == 0);
    ranges.emplace_back(b, e);
  });
  REQUIRE(ranges.size() == 1);
  CHECK(ranges[0] == std::make_pair<int64_t, int64_t>(0, 10));
}

TEST_CASE("grain bounds the number of chunks so small jobs stay on fewer threads") {
  ThreadPool pool(4);
  std::atomic<int> calls{0};
  pool.parallel_for(
      10,
      [&](int64_t b, int64_t e, int) {
        calls.fetch_add(1);
        CHECK(e - b >= 5);
      },
      5);
  CHECK(calls.load() == 2);
  check_covers_each_index_once(pool, 1000, 64);
}

TEST_CASE("concurrent chunks never share a thread index") {
  ThreadPool pool(4);
  std::vector<std::atomic<int>> in_use(4);
  std::atomic<int> clashes{0};
  for (int rep = 0; rep < 200; ++rep) {
    pool.parallel_for(16, [&](int64_t, int64_t, int t) {
      if (in_use[t].fetch_add(1) != 0) clashes.fetch_add(1);
      std::this_thread::yield();
      in_use[t].fetch_sub(1);
    });
  }
  CHECK(clashes.load() == 0);
}

TEST_CASE("many short calls in a row all complete with correct sums") {
  ThreadPool pool(3, std::chrono::microseconds(20));
  std::vector<int64_t> partial(3);
  for (int rep = 0; rep < 20000; ++rep) {
    const int64_t n = 1 + rep % 37;
    std::fill(partial.begin(), partial.end(), 0);
    pool.parallel_for(n, [&](int64_t b, int64_t e, int t) {
      for (int64_t i = b; i < e; ++i) partial[static_cast<size_t>(t)] += i + rep;
    });
    const int64_t got = partial[0] + partial[1] + partial[2];
    REQUIRE(got == n * (n - 1) / 2 + n * rep);
  }
}

TEST_CASE("workers that fell asleep wake for the next job") {
  ThreadPool pool(2, std::chrono::microseconds(1));
  for (int rep = 0; rep < 5; ++rep) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));  // well past the spin: workers sleep
    std::mutex mu;
    std::set<int> threads_seen;
    std::atomic<int> started{0};
    pool.parallel_for(2, [&](int64_t, int64_t, int t) {
      {
        std::lock_guard lock(mu);
        threads_seen.insert(t);
      }
      // The caller waits here until the second chunk started, which only the woken worker can take
      // once the caller is busy with the first.
      started.fetch_add(1);
      auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
      while (started.load() < 2 && std::chrono::steady_clock::now() < until) std::this_thread::yield();
    });
    CHECK(started.load() == 2);
    CHECK(threads_seen.size() == 2);
  }
}

TEST_CASE("destroying an idle pool joins its workers") {
  for (int rep = 0; rep < 20; ++rep) {
    ThreadPool pool(3, std::chrono::microseconds(rep % 2 == 0 ? 0 : 1000));
    int64_t sum = 0;
    std::mutex mu;
    pool.parallel_for(100, [&](int64_t b, int64_t e, int) {
      std::lock_guard lock(mu);
      for (int64_t i = b; i < e; ++i) sum += i;
    });
    CHECK(sum == 4950);
  }
}

}  // namespace
}  // namespace agentserve
