// Data and events, end to end: the evsource plugin writes a row and
// publishes an event per request; evsink consumes and counts. These tests
// start the real binary, kill it, lock its files and read them back.
#include <sqlite3.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <random>
#include <thread>

#include "harness.hpp"

using namespace gvtest;
using namespace std::chrono_literals;

namespace {

json events_config(const fs::path& data, json sink = json::object(), json events = json::object()) {
  json c = default_config(data);
  c["plugins"] = {{"evsource", {{"config", json::object()}}}, {"evsink", {{"config", sink}}}};
  c["workers"] = {{"threads", 4}, {"queue_limit", 1024}};
  json e = {{"retry_backoff_ms", 20}, {"retry_backoff_max_ms", 200}, {"max_attempts", 5}};
  e.update(events);
  c["events"] = e;
  c["log"] = {{"access", false}};
  return c;
}

std::string admin_token() { return make_token({{"sub", "root"}, {"roles", {"admin"}}}); }

json sink_stats(int port) { return http(port, "GET", "/api/v1/evsink/stats").json_body(); }

int64_t source_rows(int port) {
  return http(port, "GET", "/api/v1/evsource/count").json_body().value("rows", int64_t(-1));
}

// Waits until the sink has applied every row of the source.
bool drained(int port, std::chrono::milliseconds timeout = 30s) {
  return eventually(
      [&] {
        int64_t rows = source_rows(port);
        return rows >= 0 && sink_stats(port).value("rows", int64_t(-2)) == rows;
      },
      timeout);
}

std::string integrity(const fs::path& file) {
  sqlite3* db = nullptr;
  std::string result;
  if (sqlite3_open_v2(file.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
    result = "cannot open";
  } else {
    sqlite3_stmt* st = nullptr;
    sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, nullptr);
    while (st && sqlite3_step(st) == SQLITE_ROW)
      result += reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
  }
  sqlite3_close(db);
  return result;
}

std::vector<fs::path> database_files(const fs::path& data) {
  std::vector<fs::path> files;
  for (const auto& e : fs::recursive_directory_iterator(data))
    if (e.path().extension() == ".sqlite") files.push_back(e.path());
  return files;
}

std::string item(const std::string& key, int64_t n) { return json{{"key", key}, {"n", n}}.dump(); }

}  // namespace

TEST_CASE("an event published with a write reaches its consumer once", "[events]") {
  TempDir data;
  Host host({.config = events_config(data.path / "d")});
  REQUIRE(host.started());
  HttpClient client(host.port());
  for (int i = 1; i <= 200; ++i) {
    auto r = client.request("POST", "/api/v1/evsource/items", item("k" + std::to_string(i % 3), i));
    REQUIRE(r.status == 201);
  }
  REQUIRE(drained(host.port()));
  // The default broker on a new data folder: the direct one, no log file.
  CHECK(http(host.port(), "GET", "/readyz").json_body()["events"]["broker"]["kind"] == "direct");
  CHECK_FALSE(fs::exists(data.path / "d" / "broker" / "events.sqlite"));
  json s = sink_stats(host.port());
  CHECK(s["rows"] == 200);
  CHECK(s["applied"] == 200);
  CHECK(s.value("order_violations", 0) == 0);
  CHECK(s["max_attempt"] == 1);
  // A second start with the same migrations changes nothing.
  REQUIRE(host.terminate() == 0);
  Host again({.config = events_config(data.path / "d")});
  REQUIRE(again.started());
  CHECK(source_rows(again.port()) == 200);
  CHECK(sink_stats(again.port())["rows"] == 200);
  std::string metrics = again.request("GET", "/metrics").body;
  CHECK(metrics.find("grapevine_events_outbox_backlog") != std::string::npos);
}

TEST_CASE("an answer that is a write: kept and published when committed, undone with a refusal",
          "[events][after_write]") {
  TempDir data;
  Host host({.config = events_config(data.path / "d")});
  REQUIRE(host.started());
  HttpClient client(host.port());
  auto post = [&](const std::string& path, json body) {
    return client.request("POST", "/api/v1/evsource/" + path, body.dump());
  };
  auto error_code = [](const HttpResult& r) {
    json b = r.json_body();
    return b.is_object() && b["error"].is_object() ? b["error"].value("code", "") : "";
  };

  // Written in the group commit, answered once committed.
  auto kept = post("after", {{"key", "a"}, {"n", 1}});
  REQUIRE(kept.status == 201);
  CHECK(kept.json_body()["id"].get<int64_t>() > 0);
  CHECK(kept.json_body()["event_id"].get<std::string>().size() == 26);
  CHECK(source_rows(host.port()) == 1);
  // Refused after its insert, a duplicate of its own row, a duplicate of
  // a kept row: the plugin's error or a 409, and nothing of it kept.
  auto refused = post("after", {{"key", "a"}, {"n", 2}, {"then", "throw"}});
  CHECK(refused.status == 422);
  CHECK(error_code(refused) == "refused");
  auto twice = post("after", {{"key", "a"}, {"n", 3}, {"then", "duplicate"}});
  CHECK(twice.status == 409);
  CHECK(error_code(twice) == "conflict");
  CHECK(post("after", {{"key", "a"}, {"n", 1}}).status == 409);
  CHECK(source_rows(host.port()) == 1);

  // Returned by a grouped handler: a part of its group, the same rules.
  CHECK(post("after_grouped", {{"key", "b"}, {"n", 1}}).status == 201);
  CHECK(post("after_grouped", {{"key", "b"}, {"n", 2}, {"then", "throw"}}).status == 422);
  CHECK(source_rows(host.port()) == 2);

  // An in-process call waits for the write and gets its answer.
  auto called = post("call_after", {{"key", "c"}, {"n", 1}});
  REQUIRE(called.status == 200);
  CHECK(called.json_body()["status"] == 201);
  CHECK(called.json_body()["body"]["id"].get<int64_t>() > 0);
  auto called_refused = post("call_after", {{"key", "c"}, {"n", 2}, {"then", "throw"}});
  CHECK(called_refused.json_body()["status"] == 422);
  CHECK(source_rows(host.port()) == 3);

  // Many at once share commits; every kept row's event reaches the sink,
  // and no undone row's does.
  std::vector<std::thread> writers;
  std::atomic<int> created{0};
  for (int t = 0; t < 4; ++t)
    writers.emplace_back([&, t] {
      HttpClient mine(host.port());
      for (int i = 0; i < 50; ++i) {
        json body = {{"key", "w" + std::to_string(t)}, {"n", i}};
        if (i % 10 == 9) body["then"] = "throw";
        auto r = mine.request("POST", "/api/v1/evsource/after", body.dump());
        if (r.status == 201) ++created;
      }
    });
  for (auto& w : writers) w.join();
  CHECK(created == 180);
  CHECK(source_rows(host.port()) == 183);
  REQUIRE(drained(host.port()));
  CHECK(sink_stats(host.port())["applied"] == 183);
}

TEST_CASE("auto keeps the log broker where its file exists; direct will not start over it",
          "[events]") {
  TempDir data;
  const fs::path dir = data.path / "d";
  auto kind = [](int port) {
    return http(port, "GET", "/readyz").json_body()["events"]["broker"]["kind"];
  };
  {
    Host host({.config = events_config(dir, json::object(), {{"broker", "in-process"}})});
    REQUIRE(host.started());  // leaves broker/events.sqlite
    CHECK(kind(host.port()) == "in-process");
    REQUIRE(http(host.port(), "POST", "/api/v1/evsource/items", item("k", 1)).status == 201);
    REQUIRE(drained(host.port()));
    REQUIRE(host.terminate() == 0);
  }
  const fs::path log_file = dir / "broker" / "events.sqlite";
  REQUIRE(fs::exists(log_file));
  {
    // auto (the default) goes on with the log on this folder, and says so.
    Host host({.config = events_config(dir)});
    REQUIRE(host.started());
    CHECK(kind(host.port()) == "in-process");
    CHECK(host.output().find("events.broker auto") != std::string::npos);
    REQUIRE(http(host.port(), "POST", "/api/v1/evsource/items", item("k", 2)).status == 201);
    REQUIRE(drained(host.port()));
    CHECK(sink_stats(host.port())["rows"] == 2);
    REQUIRE(host.terminate() == 0);
  }
  fs::path config = data.path / "direct.yaml";
  std::ofstream(config) << events_config(dir, json::object(), {{"broker", "direct"}}).dump(2);
  std::string out;
  CHECK(run_grapevine({"--config", config.string()}, &out) == 1);
  INFO(out);
  CHECK(out.find(log_file.string()) != std::string::npos);
  CHECK(out.find("consumer_lag 0") != std::string::npos);

  // Without the log, direct starts on the same data and sees the rows.
  fs::remove(log_file);
  Host direct({.config = events_config(dir, json::object(), {{"broker", "direct"}})});
  REQUIRE(direct.started());
  CHECK(source_rows(direct.port()) == 2);
  CHECK(kind(direct.port()) == "direct");
  REQUIRE(http(direct.port(), "POST", "/api/v1/evsource/items", item("k", 3)).status == 201);
  REQUIRE(drained(direct.port()));
  CHECK(sink_stats(direct.port())["rows"] == 3);
  REQUIRE(direct.terminate() == 0);
  CHECK_FALSE(fs::exists(log_file));
  // With the log gone, auto is direct too.
  Host later({.config = events_config(dir)});
  REQUIRE(later.started());
  CHECK(kind(later.port()) == "direct");
  CHECK_FALSE(fs::exists(log_file));
}

TEST_CASE("kill -9 during acknowledged writes loses nothing and applies nothing twice",
          "[events][crash]") {
  // The log broker and the direct one (the default), which keeps events
  // only in the outboxes until every consumer has applied them.
  const std::string broker = GENERATE(as<std::string>{}, "in-process", "direct");
  INFO("broker: " << broker);
  TempDir data;
  const fs::path dir = data.path / "d";
  constexpr int kRounds = 10;
  constexpr int kPerRound = 5000;
  constexpr int kWriters = 4;
  std::mt19937 rng(std::random_device{}());
  std::vector<int64_t> acked;  // every acknowledged id, all rounds
  std::mutex acked_mutex;
  int64_t next_n[kWriters] = {0, 0, 0, 0};
  for (int round = 0; round < kRounds; ++round) {
    int kill_at = std::uniform_int_distribution<int>(200, kPerRound - 200)(rng);
    std::atomic<int> round_acked{0};
    bool killed = false;
    while (round_acked < kPerRound) {
      auto host = std::make_unique<Host>(
          Host::Options{.config = events_config(dir, json::object(), {{"broker", broker}})});
      REQUIRE(host->started());
      std::atomic<bool> stop{false};
      std::vector<std::thread> writers;
      for (int w = 0; w < kWriters; ++w)
        writers.emplace_back([&, w] {
          try {
            HttpClient client(host->port());
            while (!stop && round_acked < kPerRound) {
              auto r = client.request("POST", "/api/v1/evsource/items",
                                      item("key" + std::to_string(w), ++next_n[w]));
              if (r.status != 201) continue;
              int64_t id = r.json_body()["id"];
              std::lock_guard lock(acked_mutex);
              acked.push_back(id);
              ++round_acked;
            }
          } catch (const std::exception&) {  // the host went away mid-request
          }
        });
      if (!killed) {
        while (round_acked < kill_at && round_acked < kPerRound) std::this_thread::sleep_for(1ms);
        host->kill_now();
        killed = true;
        stop = true;
        for (auto& t : writers) t.join();
        for (const auto& f : database_files(dir)) CHECK(integrity(f) == "ok");
        continue;
      }
      for (auto& t : writers) t.join();
      // Every acknowledged write survived the kill; the consumer catches up
      // with exactly the source's rows.
      for (size_t i = 0; i < acked.size(); i += 1000) {
        std::vector<int64_t> chunk(acked.begin() + i,
                                   acked.begin() + std::min(acked.size(), i + 1000));
        auto r = host->request("POST", "/api/v1/evsource/present", json{{"ids", chunk}}.dump());
        REQUIRE(r.json_body()["present"] == chunk.size());
      }
      REQUIRE(drained(host->port(), 60s));
      json s = sink_stats(host->port());
      INFO("round " << round << ": " << s.dump());
      CHECK(s["applied"] == s["rows"]);
      CHECK(s.value("order_violations", 0) == 0);
      CHECK(s["rows"].get<int64_t>() == source_rows(host->port()));
      CHECK(source_rows(host->port()) >= static_cast<int64_t>(acked.size()));
      host->kill_now();
      for (const auto& f : database_files(dir)) CHECK(integrity(f) == "ok");
    }
  }
  CHECK(acked.size() >= size_t(kRounds) * kPerRound);  // writers may overshoot a little
}

TEST_CASE("a handler that fails three times then succeeds is applied once", "[events]") {
  TempDir data;
  Host host({.config = events_config(data.path / "d", {{"fail_attempts", 3}})});
  REQUIRE(host.started());
  for (int i = 1; i <= 5; ++i)
    REQUIRE(host.request("POST", "/api/v1/evsource/items", item("k", i)).status == 201);
  REQUIRE(drained(host.port()));
  json s = sink_stats(host.port());
  CHECK(s["applied"] == 5);
  CHECK(s["max_attempt"] == 4);
  CHECK(s.value("order_violations", 0) == 0);
  std::string metrics = host.request("GET", "/metrics").body;
  CHECK(metrics.find("grapevine_events_retries_total{plugin=\"evsink\"} 15") != std::string::npos);
}

TEST_CASE("an event that always fails is parked, listed and replayed once", "[events]") {
  TempDir data;
  Host host(
      {.config = events_config(data.path / "d", {{"poison_key", "bad"}}, {{"max_attempts", 3}})});
  REQUIRE(host.started());
  Headers admin = {{"Authorization", "Bearer " + admin_token()}};
  REQUIRE(host.request("POST", "/api/v1/evsource/items", item("bad", 1)).status == 201);
  REQUIRE(host.request("POST", "/api/v1/evsource/items", item("good", 1)).status == 201);
  json parked;
  REQUIRE(eventually([&] {
    auto r = host.request("GET", "/api/v1/admin/events/dead-letters?plugin=evsink", "", admin);
    parked = r.json_body();
    return r.status == 200 && parked["items"].size() == 1;
  }));
  CHECK(parked["items"][0]["event"]["key"] == "bad");
  CHECK(parked["items"][0]["event"]["type"] == "item.created");
  CHECK(parked["items"][0]["event"]["source"] == "evsource");
  CHECK(parked["items"][0]["attempts"] == 3);
  CHECK(parked["items"][0]["error"].get<std::string>().find("poisoned") != std::string::npos);
  CHECK(eventually([&] { return sink_stats(host.port())["rows"] == 1; }));
  // The key's partition moved on: a later event of the same key is applied.
  REQUIRE(host.request("POST", "/api/v1/evsource/items", item("bad2", 1)).status == 201);
  CHECK(eventually([&] { return sink_stats(host.port())["rows"] == 2; }));
  // Only an admin may look or replay.
  CHECK(host.request("GET", "/api/v1/admin/events/dead-letters?plugin=evsink").status == 401);
  CHECK(host.request("GET", "/api/v1/admin/events/dead-letters?plugin=evsink", "",
                     {{"Authorization", "Bearer " + make_token()}})
            .status == 403);
  CHECK(host.request("GET", "/api/v1/admin/events/dead-letters?plugin=nobody", "", admin).status ==
        404);
  std::string metrics = host.request("GET", "/metrics").body;
  CHECK(metrics.find("grapevine_events_dead_letters") != std::string::npos);

  // Replaying while still failing keeps it parked.
  auto r =
      host.request("POST", "/api/v1/admin/events/replay", json{{"plugin", "evsink"}}.dump(), admin);
  REQUIRE(r.status == 200);
  CHECK(r.json_body()["failed"] == 1);
  REQUIRE(host.request("POST", "/api/v1/evsink/heal").status == 200);
  std::string id = parked["items"][0]["event"]["id"];
  r = host.request("POST", "/api/v1/admin/events/replay",
                   json{{"plugin", "evsink"}, {"event_id", id}}.dump(), admin);
  REQUIRE(r.status == 200);
  CHECK(r.json_body()["replayed"] == 1);
  CHECK(sink_stats(host.port())["rows"] == 3);
  CHECK(sink_stats(host.port())["applied"] == 3);
  r = host.request("GET", "/api/v1/admin/events/dead-letters?plugin=evsink", "", admin);
  CHECK(r.json_body()["items"].empty());
  // A second replay of the same id finds nothing to do.
  r = host.request("POST", "/api/v1/admin/events/replay",
                   json{{"plugin", "evsink"}, {"event_id", id}}.dump(), admin);
  CHECK(r.status == 404);
  CHECK(sink_stats(host.port())["applied"] == 3);
}

TEST_CASE("order per key holds over 10,000 events on 4 keys", "[events]") {
  TempDir data;
  Host host({.config = events_config(data.path / "d", json::object(),
                                     {{"partitions", 8}, {"consumer_threads", 2}})});
  REQUIRE(host.started());
  std::vector<std::thread> writers;
  std::atomic<int> failures{0};
  for (int w = 0; w < 4; ++w)
    writers.emplace_back([&, w] {
      HttpClient client(host.port());
      for (int n = 1; n <= 2500; ++n)
        if (client.request("POST", "/api/v1/evsource/items", item("key" + std::to_string(w), n))
                .status != 201)
          ++failures;
    });
  for (auto& t : writers) t.join();
  CHECK(failures == 0);
  REQUIRE(drained(host.port(), 60s));
  json s = sink_stats(host.port());
  CHECK(s["rows"] == 10000);
  CHECK(s["applied"] == 10000);
  CHECK(s.value("order_violations", 0) == 0);

  // Four writers at once share commits: the source's database ran every
  // write (and the relay's deletes) in fewer commits than writes.
  const std::string metrics = host.request("GET", "/metrics").body;
  auto sample = [&](const std::string& name, const std::string& plugin = "evsource") {
    const std::string key = name + "{plugin=\"" + plugin + "\"} ";
    const auto at = metrics.find(key);
    return at == std::string::npos ? -1.0 : std::stod(metrics.substr(at + key.size()));
  };
  const double writes = sample("grapevine_sqlite_writes_total");
  const double commits = sample("grapevine_sqlite_commits_total");
  INFO("writes " << writes << ", commits " << commits);
  CHECK(writes >= 10000);
  CHECK(commits >= 1);
  CHECK(commits < writes);
  // The WAL's restarts are counted (none past sqlite_wal_bytes here, but
  // the checkpointer may catch up in a pause of the writes).
  CHECK(sample("grapevine_sqlite_wal_restarts_total") >= 0);
  // The consumer applies runs of events read together in one transaction
  // each: fewer write transactions than events.
  const double sink_writes = sample("grapevine_sqlite_writes_total", "evsink");
  INFO("evsink writes " << sink_writes);
  CHECK(sink_writes >= 1);
  CHECK(sink_writes < 10000);
}

TEST_CASE("a failing migration names the plugin and the step", "[events][migrations]") {
  TempDir data;
  json c = events_config(data.path / "d");
  c["plugins"]["evsource"]["config"] = {{"second_step", true},
                                        {"second_step_sql", "CREATE TABLE items (dup TEXT)"}};
  Host host({.config = c});
  CHECK_FALSE(host.started());
  CHECK(host.wait() == 1);
  std::string out = host.output();
  CHECK(out.find("evsource") != std::string::npos);
  CHECK(out.find("step 2") != std::string::npos);
  // Step 1 stayed applied, step 2 did not: a fixed step 2 then runs.
  c["plugins"]["evsource"]["config"]["second_step_sql"] = "CREATE TABLE extra (x TEXT)";
  Host fixed({.config = c});
  CHECK(fixed.started());
}

TEST_CASE("another process holding the write lock gives 503, then writes resume",
          "[events][lock]") {
  TempDir data;
  const fs::path dir = data.path / "d";
  json c = events_config(dir);
  c["storage"] = {{"busy_timeout_ms", 300}};
  Host host({.config = c});
  REQUIRE(host.started());
  REQUIRE(host.request("POST", "/api/v1/evsource/items", item("k", 1)).status == 201);
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open((dir / "db" / "evsource.sqlite").c_str(), &db) == SQLITE_OK);
  // The host may be writing this file right now (the relay removing sent
  // outbox rows): wait for the lock as any other process would.
  sqlite3_busy_timeout(db, 5000);
  REQUIRE(sqlite3_exec(db, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) == SQLITE_OK);
  auto until = std::chrono::steady_clock::now() + 10s;
  int busy = 0;
  int64_t n = 2;
  std::vector<int64_t> acked = {1};
  while (std::chrono::steady_clock::now() < until) {
    auto r = host.request("POST", "/api/v1/evsource/items", item("k", n++));
    if (r.status == 201) acked.push_back(n - 1);
    if (r.status == 503) {
      ++busy;
      CHECK(r.header("retry-after") == "1");
      CHECK(r.json_body()["error"]["code"] == "unavailable");
    }
    CHECK(host.request("GET", "/healthz").status == 200);
  }
  sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
  sqlite3_close(db);
  CHECK(busy > 5);
  CHECK(acked.size() == 1);  // nothing got through the lock
  REQUIRE(host.request("POST", "/api/v1/evsource/items", item("k", n)).status == 201);
  REQUIRE(drained(host.port()));
  CHECK(source_rows(host.port()) == 2);
}

TEST_CASE("scheduled jobs run, and an admin runs one now", "[jobs]") {
  TempDir data;
  Host host({.config = events_config(data.path / "d")});
  REQUIRE(host.started());
  CHECK(eventually([&] { return sink_stats(host.port())["ticks"].get<int64_t>() >= 3; }, 5s));
  CHECK(sink_stats(host.port())["manual_runs"] == 0);
  Headers admin = {{"Authorization", "Bearer " + admin_token()}};
  auto r = host.request("POST", "/api/v1/admin/jobs/evsink.manual/run", "", admin);
  CHECK(r.status == 202);
  CHECK(eventually([&] { return sink_stats(host.port())["manual_runs"] == 1; }, 5s));
  CHECK(host.request("POST", "/api/v1/admin/jobs/evsink.nope/run", "", admin).status == 404);
  CHECK(host.request("POST", "/api/v1/admin/jobs/evsink.manual/run").status == 401);
  r = host.request("GET", "/api/v1/admin/jobs", "", admin);
  REQUIRE(r.status == 200);
  bool listed = false, prune_listed = false;
  json jobs = r.json_body();
  for (const auto& j : jobs["items"]) {
    listed |= j["name"] == "evsink.tick";
    prune_listed |= j["name"] == "host.events_prune";
  }
  INFO(r.body);
  CHECK(listed);
  CHECK(prune_listed);  // the host's own job: consumed-event records past retention
  CHECK(host.request("POST", "/api/v1/admin/jobs/host.events_prune/run", "", admin).status == 202);
}

TEST_CASE("plugins reach their cache and blob store through the ABI", "[stores]") {
  TempDir data;
  Host host({.config = events_config(data.path / "d")});
  REQUIRE(host.started());
  auto r =
      host.request("POST", "/api/v1/evsource/cache", json{{"key", "a"}, {"value", "x"}}.dump());
  CHECK(r.json_body()["value"] == "x");
  r = host.request("POST", "/api/v1/evsource/cache", json{{"key", "c"}, {"incr", 5}}.dump());
  CHECK(r.json_body()["incr"] == 5);
  r = host.request("POST", "/api/v1/evsource/cache",
                   json{{"key", "t"}, {"value", "y"}, {"ttl_ms", 50}}.dump());
  CHECK(r.json_body()["value"] == "y");
  std::this_thread::sleep_for(100ms);
  r = host.request("POST", "/api/v1/evsource/cache", json{{"key", "t"}}.dump());
  CHECK(r.json_body()["value"].is_null());

  CHECK(
      host.request("PUT", "/api/v1/evsource/blobs", json{{"key", "a/b.txt"}, {"text", "hi"}}.dump())
          .status == 204);
  r = host.request("GET", "/api/v1/evsource/blobs?key=a/b.txt");
  CHECK(r.json_body()["text"] == "hi");
  CHECK(r.json_body()["keys"] == json{"a/b.txt"});
  CHECK(fs::exists(data.path / "d" / "blobs" / "evsource" / "a" / "b.txt"));
  for (std::string bad : {"../x", "a/../../x", "/etc/passwd", "a//b", ""}) {
    r = host.request("PUT", "/api/v1/evsource/blobs", json{{"key", bad}, {"text", "no"}}.dump());
    INFO(bad);
    CHECK(r.status == 400);
  }
  CHECK(host.request("GET", "/api/v1/evsource/blobs?key=nothing").status == 404);
}
