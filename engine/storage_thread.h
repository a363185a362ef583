// StorageThread: one background thread that runs the KV tiers' disk work (spill writes, prefetch reads,
// discards) in the order it was posted, so the engine thread never waits on disk for work it did not ask
// to wait for. Work that may be dropped (a spill: KV is a cache) declares its size in bytes and is refused
// when the queued droppable bytes would pass the bound; work that must run (prefetch, discard) is always
// queued. The thread never touches engine state; jobs capture what they need.
//
// Contracts: post/try_post/drain are thread-safe and never block on a job, except drain(), which waits
// for everything posted before it. A job must not call drain() (it would wait for itself). The destructor
// drains, then joins.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

namespace agentserve::engine {

class StorageThread {
 public:
  explicit StorageThread(size_t max_queued_bytes);
  ~StorageThread();
  StorageThread(const StorageThread&) = delete;
  StorageThread& operator=(const StorageThread&) = delete;

  // Queues droppable work of `bytes`; false (nothing queued) when the queue's droppable bytes would pass
  // the bound. A single job larger than the bound is taken when the queue is empty, so it is never
  // refused forever.
  bool try_post(size_t bytes, std::function<void()> job);
  // Queues work that must run.
  void post(std::function<void()> job);
  // Returns once every job posted before the call has finished.
  void drain();

  size_t queued_bytes() const;

 private:
  struct Job {
    std::function<void()> run;
    size_t bytes = 0;
  };
  void loop();

  const size_t max_queued_bytes_;
  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::condition_variable idle_;
  std::deque<Job> jobs_;
  size_t queued_bytes_ = 0;
  uint64_t posted_ = 0;    // jobs posted so far
  uint64_t finished_ = 0;  // jobs finished so far (in posting order)
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace agentserve::engine
