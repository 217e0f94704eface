// The bounded pool of threads that runs plugin code. I/O threads hand work
// over with try_submit and never wait: a full queue is the caller's 503.
//
// At most `threads` jobs run at once (one per core by default). A job that
// waits for another thread inside a BlockingRegion (a write waiting for its
// group commit) gives up its place meanwhile, and a spare thread, started
// on demand up to `spare_threads`, runs the next job. So writes from many
// requests can share one commit although only `threads` of them use the
// CPU at a time, and CPU-bound requests still run on `threads` threads.
#pragma once

#include "core/blocking.hpp"

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace gv {

class WorkerPool final : private BlockingObserver {
 public:
  WorkerPool(unsigned threads, size_t queue_limit, unsigned spare_threads = 0);
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // Queues job; false when the queue holds queue_limit jobs or the pool
  // is stopping. Jobs must not throw.
  bool try_submit(std::function<void()> job) { return submit(std::move(job), false); }
  // Queues job ahead of every queued job, whatever the queue holds: for
  // work that finishes requests already taken (a group commit's
  // completions answer its writers), which queue_limit, a bound on new
  // requests, must not refuse. False only when the pool is stopping.
  bool submit_first(std::function<void()> job) { return submit(std::move(job), true); }

  // Deferred wake-ups, for I/O threads: each wake-up is a futex call, and
  // the woken worker often takes the CPU from the I/O thread at once, in
  // the middle of the requests one poll brought. On a thread that called
  // defer_wakes(schedule), try_submit only counts the wake-up it owes, and
  // the first one owed calls schedule, which must arrange for
  // flush_wakes() to run on this thread once its current batch is handled
  // (an I/O thread posts it to its own context: it runs after the
  // handlers already queued). flush_wakes() wakes as many threads as may
  // start a queued job. defer_wakes(nullptr) flushes and ends deferral.
  // A batch that fills half the queue wakes a worker at once. A pool must
  // outlive the threads that defer wake-ups for it (or their deferral).
  static void defer_wakes(std::function<void()> schedule);
  static void flush_wakes();

  size_t depth() const;              // jobs waiting
  size_t queue_limit() const { return queue_limit_; }
  unsigned idle_threads() const;     // threads waiting for a job
  unsigned started_threads() const;  // threads started so far, spares included

  // Runs every queued job, then joins the threads. Idempotent.
  void stop();

 private:
  bool submit(std::function<void()> job, bool first);
  void run();
  void start_thread();  // under mutex_
  void wake_for_queued();
  void blocking_begin() override;
  void blocking_end() override;

  const unsigned limit_;      // jobs using the CPU at once
  const unsigned max_threads_;  // limit_ + spare threads
  const size_t queue_limit_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> queue_;
  unsigned active_ = 0;  // jobs started, not finished and not inside a BlockingRegion
  unsigned idle_ = 0;    // threads waiting for a job
  unsigned starting_ = 0;  // threads started that have not yet looked at the queue
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace gv
