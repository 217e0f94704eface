// The bounded pool of threads that runs plugin code. I/O threads hand work
// over with try_submit and never wait: a full queue is the caller's 503.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace gv {

class WorkerPool {
 public:
  WorkerPool(unsigned threads, size_t queue_limit);
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // Queues job; false when the queue holds queue_limit jobs or the pool
  // is stopping. Jobs must not throw.
  bool try_submit(std::function<void()> job);

  size_t depth() const;    // jobs waiting
  size_t running() const;  // jobs being run now
  unsigned threads() const { return static_cast<unsigned>(threads_.size()); }

  // Runs every queued job, then joins the threads. Idempotent.
  void stop();

 private:
  void run();

  const size_t queue_limit_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> queue_;
  size_t running_ = 0;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace gv
