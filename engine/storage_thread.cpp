#include "engine/storage_thread.h"

#include <pthread.h>

namespace agentserve::engine {

StorageThread::StorageThread(size_t max_queued_bytes)
    : max_queued_bytes_(max_queued_bytes), thread_([this] {
        // Named so per-thread CPU (top -H, /proc/PID/task) tells disk work from the engine's.
        ::pthread_setname_np(::pthread_self(), "as-storage");
        loop();
      }) {}

StorageThread::~StorageThread() {
  drain();
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

bool StorageThread::try_post(size_t bytes, std::function<void()> job) {
  {
    std::lock_guard lock(mu_);
    if (queued_bytes_ > 0 && queued_bytes_ + bytes > max_queued_bytes_) return false;
    queued_bytes_ += bytes;
    jobs_.push_back({std::move(job), bytes});
    ++posted_;
  }
  wake_.notify_one();
  return true;
}

void StorageThread::post(std::function<void()> job) {
  {
    std::lock_guard lock(mu_);
    jobs_.push_back({std::move(job), 0});
    ++posted_;
  }
  wake_.notify_one();
}

void StorageThread::drain() {
  std::unique_lock lock(mu_);
  const uint64_t target = posted_;
  idle_.wait(lock, [&] { return finished_ >= target; });
}

size_t StorageThread::queued_bytes() const {
  std::lock_guard lock(mu_);
  return queued_bytes_;
}

void StorageThread::loop() {
  std::unique_lock lock(mu_);
  while (true) {
    wake_.wait(lock, [&] { return stopping_ || !jobs_.empty(); });
    if (jobs_.empty()) return;  // stopping, and everything ran
    Job job = std::move(jobs_.front());
    jobs_.pop_front();
    lock.unlock();
    job.run();
    job.run = nullptr;  // release what the job captured before reporting it done
    lock.lock();
    queued_bytes_ -= job.bytes;
    ++finished_;
    idle_.notify_all();
  }
}

}  // namespace agentserve::engine
