// Polls pred until it holds or timeout passes; its last answer. For tests
// that wait on another thread (a delivery, a job, a checkpoint).
#pragma once

#include <chrono>
#include <thread>

namespace gvtest {

template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return pred();
}

}  // namespace gvtest
