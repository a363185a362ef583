// ThreadPool: fork-join parallelism for the compute inside one forward pass. A decode step calls
// parallel_for hundreds of times on small jobs, so dispatch is built for latency: the job is published
// through atomics (no locks, no allocation, no std::function per call), idle workers spin briefly before
// they sleep on a futex, and the calling thread works as thread 0 instead of waiting idle.
//
// Contract: one thread at a time calls parallel_for (the engine thread); fn must not throw and must not
// call parallel_for on the same pool (no nesting). The pool never runs work after parallel_for returns.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>
#include <type_traits>
#include <vector>

namespace agentserve {

class ThreadPool {
 public:
  // n_threads counts the calling thread: ThreadPool(1) starts no thread and runs every job inline.
  // Values below 1 are treated as 1. An idle worker spins for `spin` before it sleeps.
  explicit ThreadPool(int n_threads, std::chrono::microseconds spin = std::chrono::microseconds(100));
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Splits [0, n) into at most size() contiguous chunks of at least `grain` items (the last may be
  // smaller) and calls fn(begin, end, thread_index) once per chunk, thread_index in [0, size()); the same
  // thread_index never runs two chunks at once, so it can index per-thread scratch. Chunks are claimed
  // dynamically, so a worker that is slow to wake does not hold up the others. Returns when every chunk
  // is done. n <= 0 calls nothing.
  template <typename F>
  void parallel_for(int64_t n, F&& fn, int64_t grain = 1) {
    using Fn = std::remove_reference_t<F>;
    run(n, grain, const_cast<void*>(static_cast<const void*>(&fn)),
        [](void* obj, int64_t begin, int64_t end, int thread_index) {
          (*static_cast<Fn*>(obj))(begin, end, thread_index);
        });
  }

 private:
  using Invoke = void (*)(void* obj, int64_t begin, int64_t end, int thread_index);

  void run(int64_t n, int64_t grain, void* obj, Invoke invoke);
  void work_on_job(int thread_index);
  void worker_main(int thread_index);

  const int n_threads_;
  const std::chrono::microseconds spin_;
  std::vector<std::thread> workers_;

  // The job: written by the caller before it publishes state_, read by a worker only after it claimed a
  // chunk, which the caller cannot outlive (it waits for done_), so a plain field is never raced.
  void* job_obj_ = nullptr;
  Invoke job_invoke_ = nullptr;
  int64_t job_n_ = 0;
  int64_t job_chunks_ = 0;

  // (generation << 32) | chunks not yet claimed. The generation makes a stale claim attempt from a
  // previous job fail its compare-exchange instead of taking a chunk of the next one.
  alignas(64) std::atomic<uint64_t> state_{0};
  alignas(64) std::atomic<int64_t> done_{0};
  alignas(64) std::atomic<uint32_t> wake_{0};  // bumped per job; sleeping workers wait on it
  alignas(64) std::atomic<int> sleeping_{0};
  std::atomic<bool> stop_{false};
  uint32_t generation_ = 0;
};

}  // namespace agentserve
