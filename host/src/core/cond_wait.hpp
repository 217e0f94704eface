// Condition-variable waits that survive a lost wake-up.
//
// glibc before 2.41 (Debian 12 ships 2.36) can lose a notify: a thread
// stays asleep in pthread_cond_wait although it was signalled and its
// condition holds (sourceware bug 25847). Seen here as a worker pool
// whose last thread slept through stop() in the [workers] tests under
// load. An untimed wait then hangs for good; these wake to re-check at
// least every kLostWakeupRecheck, so a lost wake-up costs at most that.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>

namespace gv {

inline constexpr std::chrono::milliseconds kLostWakeupRecheck{100};

// cv.wait(lock, pred), re-checking pred at least every kLostWakeupRecheck.
template <class Pred>
void wait_rechecking(std::condition_variable& cv, std::unique_lock<std::mutex>& lock, Pred pred) {
  while (!cv.wait_for(lock, kLostWakeupRecheck, pred)) {
  }
}

// cv.wait(lock) for callers that re-check their state in a loop: returns
// on a notify, spuriously, or after kLostWakeupRecheck.
inline void wait_rechecking(std::condition_variable& cv, std::unique_lock<std::mutex>& lock) {
  cv.wait_for(lock, kLostWakeupRecheck);
}

}  // namespace gv
