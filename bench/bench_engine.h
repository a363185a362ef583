// Shared setup of the benchmarks that drive the real Engine from a strand: the model folder (given, or the
// repository's models/demo-tiny or models/tiny), the engine opened on it, and the strand the bench's main
// thread runs. It never makes a model: a missing one is reported with the command that makes it.
#pragma once

#include <condition_variable>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "engine/engine.h"

namespace agentserve::bench {

// Tasks posted from the engine, io and tool threads wait until the main thread runs them in run_until().
class MainThreadStrand {
 public:
  std::function<void(std::function<void()>)> executor() {
    return [this](std::function<void()> task) {
      {
        std::lock_guard lock(mutex_);
        tasks_.push_back(std::move(task));
      }
      wake_.notify_one();
    };
  }
  void run_until(const std::function<bool()>& done) {
    while (!done()) {
      std::function<void()> task;
      {
        std::unique_lock lock(mutex_);
        wake_.wait(lock, [&] { return !tasks_.empty(); });
        task = std::move(tasks_.front());
        tasks_.pop_front();
      }
      task();
    }
  }

 private:
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> tasks_;
};

// `given` when set, else the first of models/demo-tiny and models/tiny (from the working directory) holding a
// config.json; empty, with a message on stderr naming `bench`, when there is none.
inline std::string find_model_dir(const char* bench, const std::string& given) {
  if (!given.empty()) return given;
  for (const char* candidate : {"models/demo-tiny", "models/tiny"})
    if (std::filesystem::exists(std::filesystem::path(candidate) / "config.json")) return candidate;
  std::fprintf(stderr,
               "%s: no model; make one with agentserve make-model --preset tiny --out models/tiny "
               "or pass --model DIR\n",
               bench);
  return {};
}

// The engine on `model_dir` with `n_threads` compute threads (0 = all); null, with the reason on stderr
// naming `bench`, when it does not open.
inline std::unique_ptr<engine::Engine> open_engine(const char* bench, const std::string& model_dir,
                                                   int n_threads) {
  engine::EngineOptions options;
  options.model_dir = model_dir;
  options.n_threads = n_threads;
  auto opened = engine::Engine::open(options);
  if (!opened.ok()) {
    std::fprintf(stderr, "%s: %s\n", bench, opened.status().to_string().c_str());
    return nullptr;
  }
  return std::move(opened).value();
}

}  // namespace agentserve::bench
