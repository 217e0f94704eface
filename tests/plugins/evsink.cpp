// A test plugin that consumes item.* events and counts them (the "B" of
// the events tests), checks order per key, fails on purpose when told to,
// and has scheduled jobs.
#include <grapevine/sdk.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <stdexcept>
#include <vector>

namespace {

using grapevine::json;
using grapevine::Request;
using grapevine::Response;

class EvSink : public grapevine::Plugin {
 public:
  explicit EvSink(grapevine::PluginContext& ctx) : db_(ctx.dal().db()) {
    fail_attempts_ = ctx.config().value("fail_attempts", 0);
    track_latency_ = ctx.config().value("track_latency", false);
    poison_key_ = ctx.config().value("poison_key", "");
    ctx.dal().migration(1,
                        "CREATE TABLE applied (event_id TEXT PRIMARY KEY, k TEXT NOT NULL, "
                        "n BIGINT NOT NULL, attempt INTEGER NOT NULL);"
                        "CREATE TABLE last_n (k TEXT PRIMARY KEY, n BIGINT NOT NULL);"
                        "CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL)");
    auto service = ctx.service();
    service.subscribe("item.*", [this](const grapevine::Event& e, grapevine::Tx& tx) {
      const json& p = e.payload();
      std::string key = p["key"];
      if (static_cast<int>(e.attempt()) <= fail_attempts_)
        throw std::runtime_error("failing attempt " + std::to_string(e.attempt()) + " on purpose");
      if (!poison_key_.empty() && key == poison_key_ && !healed_)
        throw std::runtime_error("poisoned key " + key);
      int64_t n = p["n"];
      // Out of order: an older n after a newer one of the same key.
      auto last = tx.query_one("SELECT n FROM last_n WHERE k = $1", {key});
      if (last && (*last)["n"].as_int() >= n) bump(tx, "order_violations");
      tx.exec(
          "INSERT INTO last_n (k, n) VALUES ($1, $2) "
          "ON CONFLICT (k) DO UPDATE SET n = excluded.n",
          {key, n});
      // PRIMARY KEY: a second application of one event would fail here.
      tx.exec("INSERT INTO applied (event_id, k, n, attempt) VALUES ($1, $2, $3, $4)",
              {std::string(e.id()), key, n, static_cast<int64_t>(e.attempt())});
      bump(tx, "applied");
      if (track_latency_) {
        int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
        std::lock_guard lock(latency_mutex_);
        if (latencies_.size() < 10'000'000) latencies_.push_back(now - e.time_ms());
      }
    });
    service.every("tick", std::chrono::milliseconds(100), [this] { ++ticks_; });
    service.every("manual", std::chrono::hours(24), [this] { ++manual_runs_; });

    auto& r = ctx.registry();
    r.add({.name = "evsink.stats", .http_method = "GET", .http_path = "/api/v1/evsink/stats"},
          [this](const Request&) {
            json out = db_.read([](grapevine::Tx& tx) {
              json o = json::object();
              for (const auto& row : tx.query("SELECT name, value FROM counters"))
                o[row["name"].as_text()] = row["value"].as_int();
              o["rows"] =
                  tx.query_one("SELECT COUNT(*) AS c FROM applied")->operator[]("c").as_int();
              o["max_attempt"] = tx.query_one("SELECT COALESCE(MAX(attempt), 0) AS a FROM applied")
                                     ->
                                     operator[]("a")
                                     .as_int();
              return o;
            });
            {
              std::lock_guard lock(latency_mutex_);
              if (!latencies_.empty()) {
                std::vector<int64_t> v = latencies_;
                std::sort(v.begin(), v.end());
                out["latency_ms"] = {{"count", v.size()},
                                     {"p50", v[v.size() / 2]},
                                     {"p99", v[v.size() * 99 / 100]},
                                     {"max", v.back()}};
              }
            }
            out["ticks"] = ticks_.load();
            out["manual_runs"] = manual_runs_.load();
            return Response(out);
          });
    // Per key: events applied, the sum and the largest n.
    r.add({.name = "evsink.keys", .http_method = "GET", .http_path = "/api/v1/evsink/keys"},
          [this](const Request&) {
            return Response(db_.read([](grapevine::Tx& tx) {
              json o = json::object();
              for (const auto& row : tx.query(
                       "SELECT k, COUNT(*) AS c, SUM(n) AS s, MAX(n) AS m FROM applied GROUP BY k"))
                o[row["k"].as_text()] = {row["c"].as_int(), row["s"].as_int(), row["m"].as_int()};
              return o;
            }));
          });
    r.add({.name = "evsink.heal", .http_method = "POST", .http_path = "/api/v1/evsink/heal"},
          [this](const Request&) {
            healed_ = true;
            return Response(json{{"healed", true}});
          });
  }

 private:
  static void bump(grapevine::Tx& tx, const char* name) {
    tx.exec(
        "INSERT INTO counters (name, value) VALUES ($1, 1) "
        "ON CONFLICT (name) DO UPDATE SET value = counters.value + 1",
        {name});
  }

  grapevine::Database db_;
  int fail_attempts_ = 0;
  std::string poison_key_;
  std::atomic<bool> healed_{false};
  bool track_latency_ = false;
  std::mutex latency_mutex_;
  std::vector<int64_t> latencies_;  // publish to effect, milliseconds
  std::atomic<int64_t> ticks_{0};
  std::atomic<int64_t> manual_runs_{0};
};

}  // namespace

GRAPEVINE_PLUGIN(EvSink, "evsink", "1.0.0", "",
                 R"({"type":"object","properties":{
                      "fail_attempts":{"type":"integer","minimum":0},
                      "poison_key":{"type":"string"},
                      "track_latency":{"type":"boolean"}}})")
