// DAL of the example plugin: how many times each name was greeted. It
// holds the plugin's state and touches nothing else; with ABI 1.1 it would
// keep the counts in the plugin's SQL database.
#pragma once

#include <grapevine/sdk.hpp>

#include <map>
#include <mutex>
#include <string>

namespace hello {

class GreetingStore {
 public:
  explicit GreetingStore(grapevine::DalContext) {}

  // Counts one more greeting of name and returns the new count.
  int record(const std::string& name) {
    std::lock_guard lock(mutex_);
    return ++counts_[name];
  }

 private:
  std::mutex mutex_;  // handlers run on several worker threads at once
  std::map<std::string, int> counts_;
};

}  // namespace hello
