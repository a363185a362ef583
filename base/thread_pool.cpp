#include "base/thread_pool.h"

#include <algorithm>

namespace agentserve {
namespace {

constexpr uint64_t kRemainingMask = 0xffffffffu;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

}  // namespace

ThreadPool::ThreadPool(int n_threads, std::chrono::microseconds spin)
    : n_threads_(std::max(1, n_threads)), spin_(spin) {
  workers_.reserve(n_threads_ - 1);
  for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { worker_main(i); });
}

ThreadPool::~ThreadPool() {
  stop_.store(true, std::memory_order_release);
  wake_.fetch_add(1, std::memory_order_seq_cst);
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::run(int64_t n, int64_t grain, void* obj, Invoke invoke) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  const int64_t chunks = std::min<int64_t>(n_threads_, (n + grain - 1) / grain);
  if (chunks <= 1) {
    invoke(obj, 0, n, 0);
    return;
  }
  job_obj_ = obj;
  job_invoke_ = invoke;
  job_n_ = n;
  job_chunks_ = chunks;
  done_.store(0, std::memory_order_relaxed);
  ++generation_;
  state_.store((static_cast<uint64_t>(generation_) << 32) | static_cast<uint64_t>(chunks),
               std::memory_order_release);
  // seq_cst pairs with the worker's sleeping_ increment: either it sees the new wake_ or we see it asleep.
  wake_.fetch_add(1, std::memory_order_seq_cst);
  if (sleeping_.load(std::memory_order_seq_cst) > 0) wake_.notify_all();

  work_on_job(0);
  for (int iter = 0; done_.load(std::memory_order_acquire) != chunks; ++iter) {
    // A worker preempted mid-chunk (the machine is shared) would otherwise cost us a full time slice.
    if (iter < 4096) {
      cpu_relax();
    } else {
      std::this_thread::yield();
    }
  }
}

void ThreadPool::work_on_job(int thread_index) {
  for (;;) {
    uint64_t s = state_.load(std::memory_order_acquire);
    do {
      if ((s & kRemainingMask) == 0) return;
    } while (!state_.compare_exchange_weak(s, s - 1, std::memory_order_acq_rel, std::memory_order_acquire));
    const int64_t chunk = job_chunks_ - static_cast<int64_t>(s & kRemainingMask);
    const int64_t q = job_n_ / job_chunks_;
    const int64_t r = job_n_ % job_chunks_;
    const int64_t begin = chunk * q + std::min(chunk, r);
    const int64_t end = begin + q + (chunk < r ? 1 : 0);
    job_invoke_(job_obj_, begin, end, thread_index);
    done_.fetch_add(1, std::memory_order_release);
  }
}

void ThreadPool::worker_main(int thread_index) {
  using Clock = std::chrono::steady_clock;
  uint32_t seen = 0;
  for (;;) {
    uint32_t w;
    auto deadline = Clock::now() + spin_;
    int iter = 0;
    while ((w = wake_.load(std::memory_order_acquire)) == seen) {
      cpu_relax();
      if ((++iter & 63) != 0 || Clock::now() < deadline) continue;
      sleeping_.fetch_add(1, std::memory_order_seq_cst);
      if (wake_.load(std::memory_order_seq_cst) == seen) wake_.wait(seen, std::memory_order_seq_cst);
      sleeping_.fetch_sub(1, std::memory_order_relaxed);
      deadline = Clock::now() + spin_;
    }
    seen = w;
    if (stop_.load(std::memory_order_acquire)) return;
    work_on_job(thread_index);
  }
}

}  // namespace agentserve
