#include "core/metrics.hpp"

#include <cstdio>

namespace gv {
namespace {

// Label values are operation names we chose; escape anyway, per the format.
std::string label(std::string_view v) { return Metrics::label_value(v); }

std::string number(double v) {
  if (v == static_cast<double>(static_cast<int64_t>(v)) && v > -1e15 && v < 1e15)
    return std::to_string(static_cast<int64_t>(v));
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

}  // namespace

std::string Metrics::label_value(std::string_view v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

uint64_t Metrics::next_id() {
  static std::atomic<uint64_t> ids{1};
  return ids++;
}

Metrics::Shard& Metrics::local_shard() {
  // Keyed by the Metrics' id, not its address: a later Metrics (in tests)
  // may reuse the address of one that is gone.
  thread_local std::map<uint64_t, std::shared_ptr<Shard>> mine;
  auto& shard = mine[id_];
  if (!shard) {
    shard = std::make_shared<Shard>();
    std::lock_guard lock(shards_mutex_);
    shards_.push_back(shard);
  }
  return *shard;
}

void Metrics::observe_request(std::string_view op, int status, double seconds) {
  Shard& shard = local_shard();
  std::lock_guard lock(shard.mutex);
  auto it = shard.ops.find(op);
  if (it == shard.ops.end()) it = shard.ops.emplace(std::string(op), OpStats{}).first;
  OpStats& s = it->second;
  ++s.by_status[status];
  size_t i = 0;
  while (i < kBuckets.size() && seconds > kBuckets[i]) ++i;
  ++s.buckets[i];
  s.sum += seconds;
  ++s.count;
}

std::string Metrics::render() const {
  std::string out;
  OpMap ops;  // every shard merged
  {
    std::lock_guard lock(shards_mutex_);
    for (const auto& shard : shards_) {
      std::lock_guard shard_lock(shard->mutex);
      for (const auto& [op, s] : shard->ops) {
        OpStats& into = ops[op];
        for (const auto& [status, n] : s.by_status) into.by_status[status] += n;
        for (size_t i = 0; i < s.buckets.size(); ++i) into.buckets[i] += s.buckets[i];
        into.sum += s.sum;
        into.count += s.count;
      }
    }
  }
  out += "# HELP grapevine_requests_total Requests answered, by operation and status.\n";
  out += "# TYPE grapevine_requests_total counter\n";
  for (const auto& [op, s] : ops)
    for (const auto& [status, n] : s.by_status)
      out += "grapevine_requests_total{op=\"" + label(op) + "\",status=\"" +
             std::to_string(status) + "\"} " + std::to_string(n) + "\n";
  out += "# HELP grapevine_request_duration_seconds Time from a request read to its answer.\n";
  out += "# TYPE grapevine_request_duration_seconds histogram\n";
  for (const auto& [op, s] : ops) {
    uint64_t cumulative = 0;
    std::string name = "grapevine_request_duration_seconds";
    for (size_t i = 0; i <= kBuckets.size(); ++i) {
      cumulative += s.buckets[i];
      std::string le = i < kBuckets.size() ? number(kBuckets[i]) : "+Inf";
      out += name + "_bucket{op=\"" + label(op) + "\",le=\"" + le + "\"} " +
             std::to_string(cumulative) + "\n";
    }
    out += name + "_sum{op=\"" + label(op) + "\"} " + number(s.sum) + "\n";
    out += name + "_count{op=\"" + label(op) + "\"} " + std::to_string(s.count) + "\n";
  }
  auto gauge = [&out](const char* name, const char* help, const char* type, int64_t v) {
    out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n" +
           name + " " + std::to_string(v) + "\n";
  };
  gauge("grapevine_open_connections_http", "Open HTTP connections.", "gauge",
        http_connections.load());
  gauge("grapevine_open_connections_websocket", "Open WebSocket connections.", "gauge",
        websocket_connections.load());
  gauge("grapevine_worker_queue_depth", "Calls waiting for a worker thread.", "gauge",
        worker_queue_depth ? static_cast<int64_t>(worker_queue_depth()) : 0);
  gauge("grapevine_plugin_load_failures_total", "Plugins that failed to load or start.", "counter",
        plugin_load_failures.load());
  gauge("grapevine_websocket_slow_closes_total",
        "WebSockets closed because their send queue was full.", "counter",
        websocket_slow_closes.load());
  gauge("grapevine_overload_rejections_total",
        "Requests refused with 503 because a queue was full.", "counter", rejected_overload.load());
  std::lock_guard lock(families_mutex_);
  for (const auto& f : families_) {
    out += "# HELP " + f.name + " " + f.help + "\n# TYPE " + f.name + " " + f.type + "\n";
    for (const auto& [labels, value] : f.sample())
      out += f.name + (labels.empty() ? "" : "{" + labels + "}") + " " + number(value) + "\n";
  }
  return out;
}

void Metrics::add_family(std::string name, std::string help, std::string type,
                         std::function<Samples()> sample) {
  std::lock_guard lock(families_mutex_);
  families_.push_back({std::move(name), std::move(help), std::move(type), std::move(sample)});
}

}  // namespace gv
