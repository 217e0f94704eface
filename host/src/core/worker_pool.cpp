#include "core/worker_pool.hpp"
#include "core/cond_wait.hpp"
#include "core/thread_name.hpp"

#include <algorithm>

namespace gv {
namespace {

// The calling thread's deferral of wake-ups (WorkerPool::defer_wakes).
struct DeferredWakes {
  std::function<void()> schedule;
  std::vector<WorkerPool*> owed;  // pools owed a wake-up; flush pending when not empty
};
thread_local DeferredWakes* t_deferred = nullptr;

}  // namespace

void WorkerPool::defer_wakes(std::function<void()> schedule) {
  static thread_local DeferredWakes deferred;
  if (!schedule) {
    flush_wakes();
    t_deferred = nullptr;
    return;
  }
  deferred.schedule = std::move(schedule);
  t_deferred = &deferred;
}

void WorkerPool::flush_wakes() {
  DeferredWakes* d = t_deferred;
  if (!d) return;
  for (WorkerPool* pool : d->owed) pool->wake_for_queued();  // submits nothing
  d->owed.clear();  // keeps its room: no allocation per batch
}

// Wakes as many idle threads as may start a queued job now.
void WorkerPool::wake_for_queued() {
  size_t n = 0;
  {
    std::lock_guard lock(mutex_);
    if (active_ < limit_) n = std::min<size_t>({queue_.size(), limit_ - active_, idle_});
  }
  for (size_t i = 0; i < n; ++i) wake_.notify_one();
}

WorkerPool::WorkerPool(unsigned threads, size_t queue_limit, unsigned spare_threads)
    : limit_(std::max(threads, 1u)),
      max_threads_(std::max(threads, 1u) + spare_threads),
      queue_limit_(queue_limit) {
  std::lock_guard lock(mutex_);
  threads_.reserve(max_threads_);
  for (unsigned i = 0; i < limit_; ++i) start_thread();
}

WorkerPool::~WorkerPool() { stop(); }

void WorkerPool::start_thread() {
  ++starting_;
  threads_.emplace_back([this] {
    name_this_thread("gv-worker");
    run();
  });
}

bool WorkerPool::submit(std::function<void()> job, bool first) {
  bool wake = false, half_full = false;
  {
    std::lock_guard lock(mutex_);
    if (stopping_ || (!first && queue_.size() >= queue_limit_)) return false;
    if (first)
      queue_.push_front(std::move(job));
    else
      queue_.push_back(std::move(job));
    // A thread is woken only if it may start the job now; otherwise a
    // thread finishing or starting to wait picks it up. May start, but
    // none idle: the threads are waiting in BlockingRegions (a job that
    // began waiting while the queue was empty started no spare), so a
    // spare runs it, as blocking_begin would have. (A thread still
    // starting will take it.)
    if (active_ < limit_) {
      if (idle_ > 0)
        wake = true;
      else if (starting_ == 0 && threads_.size() < max_threads_)
        start_thread();
    }
    half_full = queue_.size() * 2 >= queue_limit_;
  }
  if (!wake) return true;
  // A batch that fills half the queue wakes a worker at once: no 503 for
  // a queue that idle workers could have been draining.
  if (DeferredWakes* d = t_deferred; d && !half_full) {
    if (std::find(d->owed.begin(), d->owed.end(), this) == d->owed.end()) {
      d->owed.push_back(this);
      if (d->owed.size() == 1) try {
          d->schedule();
        } catch (...) {  // no flush will come: wake now
          d->owed.clear();
          wake_.notify_one();
        }
    }
    return true;
  }
  wake_.notify_one();
  return true;
}

size_t WorkerPool::depth() const {
  std::lock_guard lock(mutex_);
  return queue_.size();
}

unsigned WorkerPool::idle_threads() const {
  std::lock_guard lock(mutex_);
  return idle_;
}

unsigned WorkerPool::started_threads() const {
  std::lock_guard lock(mutex_);
  return static_cast<unsigned>(threads_.size());
}

void WorkerPool::stop() {
  std::vector<std::thread> threads;
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  // Threads may still be started by blocking_begin while jobs run, so join
  // until none are left.
  for (;;) {
    {
      std::lock_guard lock(mutex_);
      if (threads_.empty()) break;
      threads.swap(threads_);
    }
    for (auto& t : threads)
      if (t.joinable()) t.join();
    threads.clear();
  }
}

void WorkerPool::run() {
  t_blocking_observer = this;
  std::unique_lock lock(mutex_);
  --starting_;
  for (;;) {
    ++idle_;
    wait_rechecking(wake_, lock, [this] {
      return (stopping_ && queue_.empty()) || (!queue_.empty() && active_ < limit_);
    });
    --idle_;
    if (queue_.empty()) return;  // stopping and drained
    auto job = std::move(queue_.front());
    queue_.pop_front();
    ++active_;
    lock.unlock();
    job();
    job = nullptr;  // destroyed before taking the lock
    lock.lock();
    --active_;
  }
}

void WorkerPool::blocking_begin() {
  bool wake = false;
  {
    std::lock_guard lock(mutex_);
    --active_;
    if (queue_.empty() || active_ >= limit_) return;
    if (idle_ > 0)
      wake = true;
    else if (starting_ == 0 && threads_.size() < max_threads_ && !stopping_)
      start_thread();
  }
  if (wake) wake_.notify_one();
}

void WorkerPool::blocking_end() {
  std::lock_guard lock(mutex_);
  ++active_;  // may pass limit_ for a moment: no job starts until it drops
}

}  // namespace gv
