// Blocking regions: a thread about to wait for another thread (for a group
// commit to which its write belongs, say) tells the pool it runs on, so the
// pool can run another job on a spare thread meanwhile. Outside a pool
// thread a region does nothing.
//
// No-wait regions: the opposite promise. A network thread running a quick
// operation's handler (GV_OP_QUICK) must not wait for anything, since every
// connection it serves would wait too: host calls that may wait refuse,
// and a write it queues is led by a thread of the database's own.
#pragma once

namespace gv {

class BlockingObserver {
 public:
  virtual void blocking_begin() = 0;
  virtual void blocking_end() = 0;

 protected:
  ~BlockingObserver() = default;
};

// Set by a pool on each of its threads.
inline thread_local BlockingObserver* t_blocking_observer = nullptr;

class BlockingRegion {
 public:
  BlockingRegion() : observer_(t_blocking_observer) {
    if (observer_) observer_->blocking_begin();
  }
  ~BlockingRegion() {
    if (observer_) observer_->blocking_end();
  }
  BlockingRegion(const BlockingRegion&) = delete;
  BlockingRegion& operator=(const BlockingRegion&) = delete;

 private:
  BlockingObserver* observer_;
};

// True inside a NoWaitRegion on this thread.
inline thread_local bool t_must_not_wait = false;

class NoWaitRegion {
 public:
  NoWaitRegion() : outer_(t_must_not_wait) { t_must_not_wait = true; }
  ~NoWaitRegion() { t_must_not_wait = outer_; }
  NoWaitRegion(const NoWaitRegion&) = delete;
  NoWaitRegion& operator=(const NoWaitRegion&) = delete;

 private:
  bool outer_;
};

}  // namespace gv
