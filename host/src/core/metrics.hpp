// Process metrics in the Prometheus text format, served at /metrics.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace gv {

class Metrics {
 public:
  // Counts one finished request of operation op (or route name such as
  // "healthz") with its status and duration.
  void observe_request(std::string_view op, int status, double seconds);

  std::atomic<int64_t> http_connections{0};
  std::atomic<int64_t> websocket_connections{0};
  std::atomic<int64_t> plugin_load_failures{0};
  std::atomic<int64_t> websocket_slow_closes{0};  // send queue overflowed
  std::atomic<int64_t> rejected_overload{0};      // 503 for a full queue

  // Read when rendering; set once before serving.
  std::function<size_t()> worker_queue_depth;

  // A metric family rendered from a callback at scrape time, for parts that
  // keep their own figures (events, cache, scheduler). type: "counter" or
  // "gauge". sample returns (label set, value) pairs; a label set is the
  // text inside the braces ('plugin="posts"') or "" for none. Register
  // before serving; the callback runs on a scrape thread.
  using Samples = std::vector<std::pair<std::string, double>>;
  void add_family(std::string name, std::string help, std::string type,
                  std::function<Samples()> sample);

  std::string render() const;

  // v escaped for a label value in the text format (\\, \" and \n).
  static std::string label_value(std::string_view v);

  static constexpr std::array<double, 14> kBuckets = {
      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};

 private:
  struct OpStats {
    std::map<int, uint64_t> by_status;
    std::array<uint64_t, kBuckets.size() + 1> buckets{};  // last: +Inf
    double sum = 0;
    uint64_t count = 0;
  };
  using OpMap = std::map<std::string, OpStats, std::less<>>;
  // One shard per thread that observes, so request threads never contend;
  // render() merges them.
  struct Shard {
    std::mutex mutex;  // taken by its own thread and by render() only
    OpMap ops;
  };
  Shard& local_shard();

  struct Family {
    std::string name, help, type;
    std::function<Samples()> sample;
  };
  mutable std::mutex families_mutex_;
  std::vector<Family> families_;

  const uint64_t id_ = next_id();
  static uint64_t next_id();
  mutable std::mutex shards_mutex_;
  std::vector<std::shared_ptr<Shard>> shards_;
};

}  // namespace gv
