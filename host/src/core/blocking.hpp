// Blocking regions: a thread about to wait for another thread (for a group
// commit to which its write belongs, say) tells the pool it runs on, so the
// pool can run another job on a spare thread meanwhile. Outside a pool
// thread a region does nothing.
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

}  // namespace gv
