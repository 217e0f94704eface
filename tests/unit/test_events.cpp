// Events: ids, patterns, the embedded brokers and the engine, on real
// SQLite files. Backoffs and polls are short so the whole [events] run
// stays within seconds.
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/metrics.hpp"
#include "eventually.hpp"
#include "events/events.hpp"
#include "stores/sqlite_database.hpp"
#include "temp_dir.hpp"

namespace fs = std::filesystem;
using namespace gv::events;
using namespace gv::stores;
using namespace std::chrono_literals;

namespace {

struct TempDir : gvtest::TempDir {
  TempDir() : gvtest::TempDir("gv-events-test") {}
};

std::unique_ptr<SqliteDatabase> open_db(const fs::path& path) {
  auto opened = SqliteDatabase::open(path);
  INFO(opened.status.message);
  REQUIRE(opened.ok());
  return std::move(opened.value);
}

// A database with the host tables and the caller's DDL.
std::unique_ptr<SqliteDatabase> plugin_db(const fs::path& path, std::string_view ddl = {}) {
  auto db = open_db(path);
  SqlStatus s = EventEngine::prepare_database(*db);
  INFO(s.message);
  REQUIRE(s.ok());
  if (!ddl.empty()) {
    s = db->write([&](SqlTransaction& tx) { return tx.exec_script(ddl); });
    INFO(s.message);
    REQUIRE(s.ok());
  }
  return db;
}

int64_t scalar(SqlDatabase& db, std::string_view sql, std::vector<SqlValue> params = {}) {
  int64_t v = -1;
  SqlStatus s = db.read([&](SqlTransaction& tx) -> SqlStatus {
    auto r = tx.query(sql, params);
    if (!r.ok()) return r.status;
    if (!r.value.rows.empty()) v = sql_int(r.value.rows[0][0]).value_or(-1);
    return SqlStatus::success();
  });
  INFO(s.message);
  REQUIRE(s.ok());
  return v;
}

using gvtest::eventually;

Envelope make_event(std::string type, std::string key, std::string payload = "{}") {
  Envelope e;
  e.id = new_event_id();
  e.type = std::move(type);
  e.key = std::move(key);
  e.time_ms = 1;
  e.source = "test";
  e.payload = std::move(payload);
  return e;
}

// Hands batch to b and waits for its answer (the log broker answers before
// produce returns, the direct broker once every group has applied it).
// False, with why, when refused or not answered within 10 s.
bool produce_sync(Broker& b, std::vector<Envelope> batch, std::string* error = nullptr) {
  struct Answer {
    std::mutex m;
    std::condition_variable cv;
    bool done = false, ok = false;
    std::string why;
  };
  auto answer = std::make_shared<Answer>();
  b.produce(std::move(batch), [answer](bool ok, const std::string& why) {
    std::lock_guard l(answer->m);
    answer->done = true;
    answer->ok = ok;
    answer->why = why;
    answer->cv.notify_all();
  });
  std::unique_lock l(answer->m);
  if (!answer->cv.wait_for(l, 10s, [&] { return answer->done; })) answer->why = "no answer in 10 s";
  if (error) *error = answer->why;
  return answer->done && answer->ok;
}

InProcessBrokerOptions broker_options(const TempDir& tmp, int partitions = 4, int threads = 2) {
  InProcessBrokerOptions o;
  o.file = tmp.dir / "broker" / "events.db";  // the folder does not exist yet
  o.partitions = partitions;
  o.consumer_threads = threads;
  return o;
}

// The embedded brokers: "log" (make_in_process_broker, a SQLite log) or
// "direct" (make_direct_broker, the dispatcher over the outboxes). The
// engine's tests run on each.
std::unique_ptr<Broker> make_broker(const std::string& kind, const TempDir& tmp,
                                    gv::Metrics* metrics, int partitions = 4, int threads = 2) {
  if (kind == "direct") return make_direct_broker({partitions, threads}, metrics);
  return make_in_process_broker(broker_options(tmp, partitions, threads), metrics);
}

EngineOptions fast_options() {
  EngineOptions o;
  o.relay_poll = 20ms;
  o.retry_backoff = 2ms;
  o.retry_backoff_max = 10ms;
  o.max_attempts = 5;
  return o;
}

// Publishes one event in its own write transaction, with a business row.
std::string publish_one(SqlDatabase& db, std::string type, std::string key, std::string payload) {
  std::string id;
  SqlStatus s = db.write([&](SqlTransaction& tx) -> SqlStatus {
    auto r = tx.exec("INSERT INTO things(name) VALUES ($1)", {key});
    if (!r.ok()) return r.status;
    return EventEngine::publish(tx, "source", type, key, payload, 1, &id);
  });
  INFO(s.message);
  REQUIRE(s.ok());
  return id;
}

constexpr const char* kThings = "CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT NOT NULL)";
constexpr const char* kCounters =
    "CREATE TABLE counters (name TEXT PRIMARY KEY, n BIGINT NOT NULL)";

SqlStatus bump(SqlTransaction& tx, const std::string& name) {
  return tx
      .exec(
          "INSERT INTO counters(name, n) VALUES ($1, 1) "
          "ON CONFLICT (name) DO UPDATE SET n = counters.n + 1",
          {name})
      .status;
}

int64_t counter(SqlDatabase& db, const std::string& name) {
  int64_t n = scalar(db, "SELECT n FROM counters WHERE name = $1", {name});
  return n < 0 ? 0 : n;
}

}  // namespace

// ---- ids, types, envelopes ----

TEST_CASE("events: ULIDs are 26 sortable characters, unique and increasing per thread",
          "[events]") {
  const std::string id = new_event_id();
  REQUIRE(id.size() == 26);
  for (char c : id)
    REQUIRE(std::string_view("0123456789ABCDEFGHJKMNPQRSTVWXYZ").find(c) != std::string_view::npos);
  // The first 10 characters are the time: decode and compare with now.
  uint64_t t = 0;
  for (int i = 0; i < 10; ++i)
    t = t * 32 + std::string_view("0123456789ABCDEFGHJKMNPQRSTVWXYZ").find(id[size_t(i)]);
  const auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
  REQUIRE(std::llabs(static_cast<long long>(t) - now) < 5000);

  constexpr int kThreads = 4, kPer = 25000;
  std::vector<std::vector<std::string>> ids(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      ids[size_t(t)].reserve(kPer);
      for (int i = 0; i < kPer; ++i) ids[size_t(t)].push_back(new_event_id());
    });
  for (auto& th : threads) th.join();
  std::set<std::string> all;
  for (auto& list : ids) {
    for (size_t i = 1; i < list.size(); ++i) REQUIRE(list[i - 1] < list[i]);
    all.insert(list.begin(), list.end());
  }
  REQUIRE(all.size() == size_t(kThreads * kPer));
  // Later ids sort after earlier ones across threads too.
  REQUIRE(new_event_id() > *all.rbegin());

  // One id per millisecond for 200 of them, past the 64 milliseconds one
  // draw of random bytes serves: each new millisecond has random bits of
  // its own (no repeat of a spent draw), and the ids still increase.
  std::vector<std::string> slow;
  for (int i = 0; i < 200; ++i) {
    slow.push_back(new_event_id());
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  std::set<std::string> random_parts;
  for (size_t i = 0; i < slow.size(); ++i) {
    if (i > 0) REQUIRE(slow[i - 1] < slow[i]);
    random_parts.insert(slow[i].substr(10));
  }
  REQUIRE(random_parts.size() == slow.size());
}

TEST_CASE("events: types and patterns", "[events]") {
  CHECK(valid_type("post.created"));
  CHECK(valid_type("post"));
  CHECK(valid_type("a_1.b_2.c3"));
  CHECK_FALSE(valid_type(""));
  CHECK_FALSE(valid_type("Post.created"));
  CHECK_FALSE(valid_type("post..created"));
  CHECK_FALSE(valid_type(".post"));
  CHECK_FALSE(valid_type("post."));
  CHECK_FALSE(valid_type("post.*"));
  CHECK_FALSE(valid_type("post-created"));
  CHECK_FALSE(valid_type(std::string(kMaxTypeBytes + 1, 'a')));

  CHECK(valid_pattern("*"));
  CHECK(valid_pattern("post.*"));
  CHECK(valid_pattern("post.created"));
  CHECK_FALSE(valid_pattern("*.created"));
  CHECK_FALSE(valid_pattern("post.*.x"));
  CHECK_FALSE(valid_pattern(".*"));
  CHECK_FALSE(valid_pattern("post*"));
  CHECK_FALSE(valid_pattern(""));

  CHECK(type_matches("post.created", "post.created"));
  CHECK_FALSE(type_matches("post.created", "post.deleted"));
  CHECK(type_matches("post.*", "post.created"));
  CHECK(type_matches("post.*", "post.edit.v2"));
  CHECK_FALSE(type_matches("post.*", "post"));
  CHECK_FALSE(type_matches("post.*", "postal.created"));
  CHECK_FALSE(type_matches("post.*", "user.created"));
  CHECK(type_matches("*", "anything.at.all"));
  CHECK_FALSE(type_matches("*", "Not Valid"));
  CHECK_FALSE(type_matches("post.created", "post.created.more"));
}

TEST_CASE("events: envelope JSON round trip and FNV-1a partitioning", "[events]") {
  Envelope e = make_event("post.created", "post:1", R"({"a":1,"b":"x"})");
  e.time_ms = 1732350000000;
  e.schema_version = 3;
  auto j = e.to_json();
  CHECK(j["payload"]["b"] == "x");
  auto back = Envelope::from_json(j);
  REQUIRE(back);
  CHECK(back->id == e.id);
  CHECK(back->type == e.type);
  CHECK(back->key == e.key);
  CHECK(back->time_ms == e.time_ms);
  CHECK(back->source == e.source);
  CHECK(back->schema_version == 3);
  CHECK(nlohmann::json::parse(back->payload) == nlohmann::json::parse(e.payload));
  j.erase("key");
  CHECK_FALSE(Envelope::from_json(j));
  CHECK_FALSE(Envelope::from_json(nlohmann::json::array()));

  CHECK(fnv1a64("") == 0xcbf29ce484222325ULL);
  CHECK(fnv1a64("a") == 0xaf63dc4c8601ec8cULL);
  CHECK(partition_of("a", 8) == int(0xaf63dc4c8601ec8cULL % 8));
  CHECK(partition_of("anything", 1) == 0);
}

TEST_CASE("events: publish validates and appends to the outbox in the caller's transaction",
          "[events]") {
  TempDir tmp;
  auto db = plugin_db(tmp.dir / "p.db", kThings);
  auto try_publish = [&](std::string_view type, std::string_view key, std::string_view payload) {
    return db->write([&](SqlTransaction& tx) {
      return EventEngine::publish(tx, "p", type, key, payload, 1, nullptr);
    });
  };
  CHECK(try_publish("Bad Type", "k", "{}").code == SqlCode::invalid);
  CHECK(try_publish("post.created", "", "{}").code == SqlCode::invalid);
  CHECK(try_publish("post.created", std::string(kMaxKeyBytes + 1, 'k'), "{}").code ==
        SqlCode::invalid);
  CHECK(try_publish("post.created", "k", "[1,2]").code == SqlCode::invalid);
  CHECK(try_publish("post.created", "k", "{not json").code == SqlCode::invalid);
  CHECK(try_publish("post.created", "k", "\"text\"").code == SqlCode::invalid);
  CHECK(try_publish("post.created", "k", "").code == SqlCode::invalid);
  CHECK(try_publish("post.created", "k", " \n ").code == SqlCode::invalid);
  CHECK(try_publish("post.created", "k", "{} {}").code == SqlCode::invalid);
  CHECK(try_publish("post.created", "k", "{\"a\":1").code == SqlCode::invalid);
  const std::string big = "{\"x\":\"" + std::string(kMaxPayloadBytes, 'x') + "\"}";
  CHECK(try_publish("post.created", "k", big).code == SqlCode::invalid);
  CHECK(scalar(*db, "SELECT count(*) FROM gv_outbox") == 0);

  // Rolled back with the caller's work: no row.
  SqlStatus s = db->write([&](SqlTransaction& tx) -> SqlStatus {
    EventEngine::publish(tx, "p", "post.created", "k", "{}", 1, nullptr);
    return SqlStatus::failure(SqlCode::constraint, "the business change failed");
  });
  CHECK_FALSE(s.ok());
  CHECK(scalar(*db, "SELECT count(*) FROM gv_outbox") == 0);

  std::string id1 = publish_one(*db, "post.created", "k", R"({"n":1})");
  std::string id2 = publish_one(*db, "post.created", "k", R"({"n":2})");
  CHECK(id1.size() == 26);
  CHECK(id1 < id2);
  CHECK(scalar(*db, "SELECT count(*) FROM gv_outbox") == 2);
  CHECK(scalar(*db, "SELECT count(*) FROM things") == 2);

  // A database without the host tables is refused, not half-written.
  auto bare = open_db(tmp.dir / "bare.db");
  s = bare->write([&](SqlTransaction& tx) {
    return EventEngine::publish(tx, "p", "post.created", "k", "{}", 1, nullptr);
  });
  CHECK_FALSE(s.ok());
  // prepare_database twice is harmless.
  CHECK(EventEngine::prepare_database(*db).ok());
  CHECK(scalar(*db, "SELECT last_seq FROM gv_outbox_seq") == 2);
  // An object with whitespace around it is an object.
  CHECK(try_publish("post.created", "k", " \n{\"n\":3} ").ok());
  CHECK(scalar(*db, "SELECT count(*) FROM gv_outbox") == 3);
}

TEST_CASE("events: seq grows in commit order, the counter row set once per transaction",
          "[events]") {
  TempDir tmp;
  auto db = plugin_db(tmp.dir / "p.db", kThings);
  auto seqs = [&] {
    std::vector<int64_t> out;
    SqlStatus s = db->read([&](SqlTransaction& tx) {
      auto r = tx.query("SELECT seq FROM gv_outbox ORDER BY seq");
      for (const auto& row : r.value.rows) out.push_back(*sql_int(row.at(0)));
      return r.status;
    });
    REQUIRE(s.ok());
    return out;
  };
  auto part = [](SqlTransaction& tx, const char* key, bool keep) {
    return tx.nested([&](SqlTransaction& t) {
      SqlStatus s = EventEngine::publish(t, "p", "thing.made", key, "{}", 1, nullptr);
      return keep ? s : SqlStatus::failure(SqlCode::constraint, "undone");
    });
  };
  // Three events in one transaction, the second undone: its seq is a gap,
  // never given again.
  SqlStatus s = db->write([&](SqlTransaction& tx) {
    CHECK(part(tx, "a", true).ok());
    CHECK_FALSE(part(tx, "b", false).ok());
    CHECK(part(tx, "c", true).ok());
    return SqlStatus::success();
  });
  REQUIRE(s.ok());
  CHECK(seqs() == std::vector<int64_t>{1, 3});
  CHECK(scalar(*db, "SELECT last_seq FROM gv_outbox_seq") == 3);
  publish_one(*db, "thing.made", "d", "{}");
  CHECK(seqs() == std::vector<int64_t>{1, 3, 4});
  // A transaction whose only event is undone leaves the counter as it was.
  s = db->write([&](SqlTransaction& tx) {
    CHECK_FALSE(part(tx, "e", false).ok());
    return SqlStatus::success();
  });
  REQUIRE(s.ok());
  CHECK(scalar(*db, "SELECT last_seq FROM gv_outbox_seq") == 4);
  // Its first event undone, the transaction's next ones count on above it.
  s = db->write([&](SqlTransaction& tx) {
    CHECK_FALSE(part(tx, "f", false).ok());
    CHECK(part(tx, "g", true).ok());
    CHECK(part(tx, "h", true).ok());
    return SqlStatus::success();
  });
  REQUIRE(s.ok());
  CHECK(seqs() == std::vector<int64_t>{1, 3, 4, 6, 7});
  CHECK(scalar(*db, "SELECT last_seq FROM gv_outbox_seq") == 7);
  // A failed write takes its events with it; their seqs are gaps too.
  s = db->write([&](SqlTransaction& tx) {
    CHECK(part(tx, "i", true).ok());
    CHECK(part(tx, "j", true).ok());
    return SqlStatus::failure(SqlCode::constraint, "the business change failed");
  });
  CHECK_FALSE(s.ok());
  CHECK(seqs() == std::vector<int64_t>{1, 3, 4, 6, 7});
  publish_one(*db, "thing.made", "k", "{}");
  auto after = seqs();
  REQUIRE(after.size() == 6);
  CHECK(after.back() > 7);
  CHECK(scalar(*db, "SELECT last_seq FROM gv_outbox_seq") == after.back());
}

// ---- broker ----

namespace {

// A group's received events, thread-safe.
struct Received {
  std::mutex m;
  std::vector<Envelope> events;
  void add(const Envelope& e) {
    std::lock_guard l(m);
    events.push_back(e);
  }
  size_t size() {
    std::lock_guard l(m);
    return events.size();
  }
  std::vector<Envelope> copy() {
    std::lock_guard l(m);
    return events;
  }
};

Broker::ConsumerFn collect(Received& r) {
  return [&r](std::span<const Delivery> run) {
    for (const auto& d : run) r.add(d.event);
    return run.size();
  };
}

}  // namespace

TEST_CASE("events: the in-process broker is durable and resumes at committed offsets", "[events]") {
  TempDir tmp;
  auto options = broker_options(tmp, 4, 2);
  std::vector<Envelope> first;
  for (int i = 0; i < 40; ++i)
    first.push_back(make_event(i % 2 ? "post.created" : "user.created",
                               "key" + std::to_string(i % 5), "{\"i\":" + std::to_string(i) + "}"));
  {
    auto broker = make_in_process_broker(options, nullptr);
    std::string error;
    REQUIRE(broker->start(&error));
    REQUIRE(fs::exists(options.file));
    REQUIRE(produce_sync(*broker, first, &error));
    CHECK(broker->stats().stored_events == 40);
    broker->stop();
    std::string why;
    CHECK_FALSE(produce_sync(*broker, {make_event("post.created", "k")}, &why));
    CHECK_FALSE(why.empty());
  }

  Received all, posts;
  {
    // Reopened: a new group gets everything from offset 0, in order per key.
    auto broker = make_in_process_broker(options, nullptr);
    broker->subscribe("all", {"*"}, collect(all));
    broker->subscribe("posts", {"post.*"}, collect(posts));
    std::string error;
    REQUIRE(broker->start(&error));
    REQUIRE(eventually([&] { return all.size() == 40 && posts.size() == 20; }));
    REQUIRE(eventually([&] { return broker->stats().consumer_lag == 0; }));
    broker->stop();
  }
  {
    auto got = all.copy();
    std::map<std::string, std::vector<int>> by_key;
    for (auto& e : got) by_key[e.key].push_back(nlohmann::json::parse(e.payload)["i"].get<int>());
    REQUIRE(by_key.size() == 5);
    for (auto& [key, list] : by_key) {
      CHECK(list.size() == 8);
      CHECK(std::is_sorted(list.begin(), list.end()));
    }
    for (auto& e : posts.copy()) CHECK(e.type == "post.created");
  }

  // Reopened again: the committed group resumes after its offset; a new
  // group still starts at 0.
  Received all_again, fresh;
  {
    auto broker = make_in_process_broker(options, nullptr);
    broker->subscribe("all", {"*"}, collect(all_again));
    broker->subscribe("fresh", {"*"}, collect(fresh));
    std::string error;
    REQUIRE(broker->start(&error));
    std::vector<Envelope> more;
    for (int i = 0; i < 5; ++i)
      more.push_back(make_event("post.created", "new" + std::to_string(i)));
    REQUIRE(produce_sync(*broker, more, &error));
    REQUIRE(eventually([&] { return all_again.size() == 5 && fresh.size() == 45; }));
    std::this_thread::sleep_for(50ms);
    CHECK(all_again.size() == 5);
    for (auto& e : all_again.copy()) CHECK(e.key.rfind("new", 0) == 0);
    CHECK(broker->stats().stored_events == 45);
    broker->stop();
  }

  // A different partition count is refused with a clear error.
  {
    auto other = options;
    other.partitions = 8;
    auto broker = make_in_process_broker(other, nullptr);
    std::string error;
    CHECK_FALSE(broker->start(&error));
    CHECK_THAT(error, Catch::Contains("4 partitions") && Catch::Contains("asks for 8"));
  }
}

TEST_CASE("events: the in-process broker moves a group past events it does not match", "[events]") {
  // Batches of mostly other types, produced while delivery runs: the
  // group gets each of its events once, in order per key, none of the
  // others, and its lag comes to 0; after a restart it resumes there.
  TempDir tmp;
  auto options = broker_options(tmp, 4, 2);
  int produced_posts = 0;
  auto batch_of = [&](int b) {
    std::vector<Envelope> batch;
    for (int i = 0; i < 20; ++i) {
      const bool post = (b * 20 + i) % 7 == 0;
      produced_posts += post;
      batch.push_back(make_event(post ? "post.created" : "user.updated",
                                 "key" + std::to_string(i % 6),
                                 "{\"n\":" + std::to_string(b * 20 + i) + "}"));
    }
    return batch;
  };
  auto check_order = [](const std::vector<Envelope>& got) {
    std::map<std::string, int> last;
    for (const auto& e : got) {
      CHECK(e.type == "post.created");
      int n = nlohmann::json::parse(e.payload)["n"].get<int>();
      auto it = last.find(e.key);
      if (it != last.end()) CHECK(n > it->second);
      last[e.key] = n;
    }
  };
  Received posts;
  {
    auto broker = make_in_process_broker(options, nullptr);
    broker->subscribe("posts", {"post.*"}, collect(posts));
    std::string error;
    REQUIRE(broker->start(&error));
    for (int b = 0; b < 50; ++b) REQUIRE(produce_sync(*broker, batch_of(b), &error));
    REQUIRE(eventually([&] { return broker->stats().consumer_lag == 0; }));
    CHECK(posts.size() == static_cast<size_t>(produced_posts));
    broker->stop();
  }
  check_order(posts.copy());
  // Only events of other types since: the group's lag still comes to 0.
  Received again;
  auto broker = make_in_process_broker(options, nullptr);
  broker->subscribe("posts", {"post.*"}, collect(again));
  std::string error;
  REQUIRE(broker->start(&error));
  REQUIRE(produce_sync(*broker, {make_event("user.updated", "key1")}, &error));
  REQUIRE(eventually([&] { return broker->stats().consumer_lag == 0; }));
  const int before = produced_posts;
  for (int b = 50; b < 60; ++b) REQUIRE(produce_sync(*broker, batch_of(b), &error));
  REQUIRE(eventually([&] { return again.size() == static_cast<size_t>(produced_posts - before); }));
  REQUIRE(eventually([&] { return broker->stats().consumer_lag == 0; }));
  check_order(again.copy());
  broker->stop();
}

TEST_CASE("events: retention keeps retention_events consumed events", "[events]") {
  TempDir tmp;
  auto options = broker_options(tmp, 1, 1);
  options.retention_events = 3;
  options.retention_every = 10ms;
  std::vector<Envelope> batch;
  for (int i = 0; i < 10; ++i)
    batch.push_back(make_event("a.b", "k", "{\"i\":" + std::to_string(i) + "}"));
  {
    Received r;
    auto broker = make_in_process_broker(options, nullptr);
    broker->subscribe("g", {"*"}, collect(r));
    std::string error;
    REQUIRE(broker->start(&error));
    REQUIRE(produce_sync(*broker, batch, &error));
    REQUIRE(eventually([&] { return r.size() == 10; }));
    REQUIRE(eventually([&] { return broker->stats().stored_events == 3; }));
    std::this_thread::sleep_for(30ms);
    CHECK(broker->stats().stored_events == 3);
    broker->stop();
  }
  // A group that joins later starts at the oldest event kept; offsets go on.
  Received g, late;
  auto broker = make_in_process_broker(options, nullptr);
  broker->subscribe("g", {"*"}, collect(g));
  broker->subscribe("late", {"*"}, collect(late));
  std::string error;
  REQUIRE(broker->start(&error));
  CHECK(broker->stats().stored_events == 3);
  REQUIRE(eventually([&] { return late.size() == 3; }));
  REQUIRE(produce_sync(*broker, {make_event("a.b", "k", R"({"i":10})")}, &error));
  REQUIRE(eventually([&] { return late.size() == 4 && g.size() == 1; }));
  std::vector<int> seen;
  for (auto& e : late.copy()) seen.push_back(nlohmann::json::parse(e.payload)["i"].get<int>());
  CHECK(seen == std::vector<int>{7, 8, 9, 10});
  broker->stop();
}

TEST_CASE("events: retention deletes a backlog in batches down to retention_events", "[events]") {
  TempDir tmp;
  auto options = broker_options(tmp, 2, 1);
  options.retention_events = 10;  // 5 per partition
  options.retention_batch = 64;   // 1,990 rows due: 32 batches
  // Due once a second: batches that waited for it would take 32 s.
  options.retention_every = std::chrono::seconds(1);
  Received r;
  auto broker = make_in_process_broker(options, nullptr);
  broker->subscribe("g", {"*"}, collect(r));
  std::string error;
  REQUIRE(broker->start(&error));
  std::vector<Envelope> batch;
  for (int i = 0; i < 2000; ++i)
    batch.push_back(make_event("a.b", "k" + std::to_string(i % 7), "{}"));
  REQUIRE(produce_sync(*broker, batch, &error));
  REQUIRE(eventually([&] { return r.size() == 2000; }));
  CHECK(eventually([&] { return broker->stats().stored_events == 10; }, std::chrono::seconds(8)));
  CHECK(broker->stats().stored_events == 10);
  broker->stop();
}

TEST_CASE("events: a consumer that gives up at stop leaves its offset uncommitted", "[events]") {
  TempDir tmp;
  auto options = broker_options(tmp, 1, 1);
  std::atomic<int> calls{0};
  {
    auto broker = make_in_process_broker(options, nullptr);
    broker->subscribe("g", {"*"}, [&](std::span<const Delivery>) {
      ++calls;
      return size_t{0};  // as if stop() interrupted its retries
    });
    std::string error;
    REQUIRE(broker->start(&error));
    REQUIRE(produce_sync(*broker, {make_event("a.b", "k"), make_event("a.b", "k")}, &error));
    REQUIRE(eventually([&] { return calls.load() == 1; }));
    std::this_thread::sleep_for(50ms);
    CHECK(calls.load() == 1);  // that thread delivers nothing more
    broker->stop();
  }
  Received r;
  auto broker = make_in_process_broker(options, nullptr);
  broker->subscribe("g", {"*"}, collect(r));
  std::string error;
  REQUIRE(broker->start(&error));
  REQUIRE(eventually([&] { return r.size() == 2; }));
  broker->stop();
}

TEST_CASE("events: a consumer that throws gets its events again after a pause, once each",
          "[events]") {
  const std::string kind = GENERATE(as<std::string>{}, "log", "direct");
  INFO("broker: " << kind);
  TempDir tmp;
  Received r;
  std::atomic<int> calls{0};
  std::chrono::steady_clock::time_point first_call, second_call;
  auto broker = make_broker(kind, tmp, nullptr, 1, 1);  // one partition: the retry is of the same events
  broker->subscribe("g", {"a.*"}, [&](std::span<const Delivery> run) {
    const int call = ++calls;
    if (call == 1) {
      first_call = std::chrono::steady_clock::now();
      throw std::runtime_error("the consumer fails once");
    }
    if (call == 2) second_call = std::chrono::steady_clock::now();
    for (const auto& d : run) r.add(d.event);
    return run.size();
  });
  std::string error;
  REQUIRE(broker->start(&error));
  std::vector<Envelope> batch;
  for (int i = 0; i < 20; ++i)
    batch.push_back(make_event(i % 3 ? "a.x" : "b.x", "key" + std::to_string(i % 7)));
  const size_t matching = 13;  // i % 3 != 0 for 13 of 0..19
  REQUIRE(produce_sync(*broker, batch, &error));
  REQUIRE(eventually([&] { return r.size() == matching; }));
  REQUIRE(eventually([&] { return broker->stats().consumer_lag == 0; }));
  std::this_thread::sleep_for(50ms);
  broker->stop();

  std::set<std::string> ids;
  for (auto& e : r.copy()) {
    CHECK(e.type == "a.x");
    ids.insert(e.id);
  }
  CHECK(ids.size() == matching);  // the thrown run came again, and was applied once
  CHECK(r.size() == matching);
  // Not again at once: a throwing consumer does not spin.
  CHECK(second_call - first_call >= 900ms);
}

TEST_CASE("events: the direct broker answers a batch once every group has applied it",
          "[events]") {
  auto broker = make_direct_broker({4, 2}, nullptr);
  Received all;
  std::atomic<bool> gate{false};
  std::atomic<int> held_calls{0};
  // "all" first: a thread serves its pairs in subscription order, so each
  // thread hands "all" its events before "held" blocks it.
  broker->subscribe("all", {"a.*", "b.*"}, collect(all));
  broker->subscribe("held", {"a.*"}, [&](std::span<const Delivery> run) {
    ++held_calls;
    while (!gate) std::this_thread::sleep_for(1ms);  // a slow consumer
    return run.size();
  });
  std::string error;
  CHECK_FALSE(produce_sync(*broker, {make_event("a.x", "k")}, &error));  // not started
  CHECK_THAT(error, Catch::Contains("not running"));
  REQUIRE(broker->start(&error));

  // Nothing wants c.*: answered before produce returns.
  bool answered = false, ok = false;
  broker->produce({make_event("c.x", "k")}, [&](bool o, const std::string&) {
    answered = true;
    ok = o;
  });
  CHECK(answered);
  CHECK(ok);

  std::atomic<bool> done{false}, done_ok{false};
  std::vector<Envelope> batch;
  for (int i = 0; i < 10; ++i)
    batch.push_back(make_event(i < 6 ? "a.x" : "b.x", "key" + std::to_string(i % 3)));
  broker->produce(batch, [&](bool o, const std::string&) {
    done_ok = o;
    done = true;
  });
  REQUIRE(eventually([&] { return all.size() == 10 && held_calls.load() > 0; }));
  std::this_thread::sleep_for(50ms);
  CHECK_FALSE(done.load());  // "held" has not applied its six yet
  CHECK(broker->stats().consumer_lag > 0);
  gate = true;
  REQUIRE(eventually([&] { return done.load(); }));
  CHECK(done_ok.load());
  REQUIRE(eventually([&] { return broker->stats().consumer_lag == 0; }));
  CHECK(broker->stats().stored_events == 0);
  // Order per key within the run of each partition, as produced.
  std::map<std::string, std::vector<std::string>> by_key;
  for (auto& e : all.copy()) by_key[e.key].push_back(e.id);
  for (auto& [key, ids] : by_key) CHECK(std::is_sorted(ids.begin(), ids.end()));
  broker->stop();
}

TEST_CASE("events: the direct broker answers at once what it will not apply", "[events]") {
  auto broker = make_direct_broker({2, 2}, nullptr);
  std::atomic<int> calls{0};
  std::atomic<bool> release{false};
  // Partition of "k" gives up (as when stop() interrupts a retry); the
  // other partition's consumer blocks until released.
  const int give_up_partition = partition_of("k", 2);
  broker->subscribe("g", {"*"}, [&](std::span<const Delivery> run) -> size_t {
    ++calls;
    if (run.front().partition == give_up_partition) return 0;
    while (!release) std::this_thread::sleep_for(1ms);
    return run.size();
  });
  std::string error;
  REQUIRE(broker->start(&error));
  std::string other_key;
  for (int i = 0; other_key.empty(); ++i)
    if (partition_of("o" + std::to_string(i), 2) != give_up_partition)
      other_key = "o" + std::to_string(i);

  std::atomic<bool> blocked_done{false}, blocked_ok{true};
  broker->produce({make_event("a.x", other_key)}, [&](bool ok, const std::string&) {
    blocked_ok = ok;
    blocked_done = true;
  });
  REQUIRE(eventually([&] { return calls.load() == 1; }));
  // Given up: answered false without waiting, and so is what comes after.
  CHECK_FALSE(produce_sync(*broker, {make_event("a.x", "k")}, &error));
  CHECK_THAT(error, Catch::Contains("stopping"));
  CHECK_FALSE(produce_sync(*broker, {make_event("a.x", other_key)}, &error));
  CHECK_FALSE(blocked_done.load());
  // stop() lets the blocked consumer finish; its batch was applied.
  std::thread stopper([&] { broker->stop(); });
  std::this_thread::sleep_for(20ms);
  release = true;
  stopper.join();
  CHECK(blocked_done.load());
  CHECK(blocked_ok.load());
}

// ---- engine ----

TEST_CASE("events: end to end, each event applied exactly once", "[events]") {
  const std::string kind = GENERATE(as<std::string>{}, "log", "direct");
  INFO("broker: " << kind);
  TempDir tmp;
  auto source = plugin_db(tmp.dir / "source.db", kThings);
  auto sink = plugin_db(tmp.dir / "sink.db", kCounters);
  gv::Metrics metrics;
  auto broker = make_broker(kind, tmp, &metrics);
  EventEngine engine(*broker, fast_options(), &metrics);
  engine.add_source("source", *source);
  engine.add_consumer("sink", *sink, {"thing.*"},
                      [](const Envelope& e, int, SqlTransaction& tx) { return bump(tx, e.type); });
  CHECK(engine.has_consumer("sink"));
  CHECK_FALSE(engine.has_consumer("source"));
  std::string error;
  REQUIRE(engine.start(&error));

  constexpr int kEvents = 300;
  for (int i = 0; i < kEvents; ++i) {
    publish_one(*source, "thing.made", "thing:" + std::to_string(i % 7),
                "{\"i\":" + std::to_string(i) + "}");
    publish_one(*source, "other.made", "x", "{}");  // matches no pattern
    if (i % 50 == 0) engine.notify_published();
  }
  engine.notify_published();
  REQUIRE(eventually([&] { return counter(*sink, "thing.made") == kEvents; }));
  REQUIRE(eventually([&] { return scalar(*source, "SELECT count(*) FROM gv_outbox") == 0; }));
  REQUIRE(eventually([&] { return engine.broker_stats().consumer_lag == 0; }));
  std::this_thread::sleep_for(50ms);
  CHECK(counter(*sink, "thing.made") == kEvents);
  CHECK(counter(*sink, "other.made") == 0);
  CHECK(scalar(*sink, "SELECT count(*) FROM gv_consumed") == kEvents);
  CHECK(scalar(*source, "SELECT count(*) FROM things") == 2 * kEvents);

  // Exactly once: the same event handed to the broker again, twice.
  Envelope dup = make_event("thing.dup", "d");
  REQUIRE(produce_sync(*broker, {dup, dup}, &error));
  REQUIRE(produce_sync(*broker, {dup}, &error));
  REQUIRE(eventually(
      [&] { return counter(*sink, "thing.dup") == 1 && engine.broker_stats().consumer_lag == 0; }));
  std::this_thread::sleep_for(50ms);
  CHECK(counter(*sink, "thing.dup") == 1);

  REQUIRE(eventually([&] { return engine.outbox_backlog() == 0; }));
  const std::string text = metrics.render();
  CHECK_THAT(text,
             Catch::Contains("grapevine_events_relayed_total " + std::to_string(2 * kEvents)));
  CHECK_THAT(text, Catch::Contains("grapevine_events_consumed_total{plugin=\"sink\"} " +
                                   std::to_string(kEvents + 1)));
  CHECK_THAT(text, Catch::Contains("grapevine_events_duplicates_total{plugin=\"sink\"} 2"));
  CHECK_THAT(text, Catch::Contains("grapevine_events_outbox_backlog 0"));
  CHECK_THAT(text, Catch::Contains("# TYPE grapevine_events_consumer_lag gauge"));
  engine.stop();
}

TEST_CASE("events: retries, dead letters and replay", "[events]") {
  const std::string kind = GENERATE(as<std::string>{}, "log", "direct");
  INFO("broker: " << kind);
  TempDir tmp;
  auto source = plugin_db(tmp.dir / "source.db", kThings);
  auto sink = plugin_db(tmp.dir / "sink.db", kCounters);
  gv::Metrics metrics;
  auto broker = make_broker(kind, tmp, &metrics, 2, 1);
  EventEngine engine(*broker, fast_options(), &metrics);
  std::mutex m;
  std::vector<int> flaky_attempts;
  std::atomic<bool> healed{false};
  engine.add_source("source", *source);
  engine.add_consumer("sink", *sink, {"*"},
                      [&](const Envelope& e, int attempt, SqlTransaction& tx) -> SqlStatus {
                        // The handler's writes are rolled back with a failed attempt.
                        if (auto s = bump(tx, e.type + ".tries"); !s.ok()) return s;
                        if (e.type == "flaky.one") {
                          {
                            std::lock_guard l(m);
                            flaky_attempts.push_back(attempt);
                          }
                          if (attempt == 2) throw std::runtime_error("boom");
                          if (attempt <= 3) return SqlStatus::failure(SqlCode::invalid, "not yet");
                        }
                        if (e.type == "broken.one" && !healed)
                          return SqlStatus::failure(SqlCode::invalid, "broken handler");
                        return bump(tx, e.type);
                      });
  std::string error;
  REQUIRE(engine.start(&error));

  publish_one(*source, "flaky.one", "k", "{}");
  const std::string broken_id = publish_one(*source, "broken.one", "k", R"({"why":"test"})");
  publish_one(*source, "after.one", "k", "{}");  // same key: waits for the park, then runs
  engine.notify_published();

  REQUIRE(eventually([&] { return counter(*sink, "after.one") == 1; }));
  CHECK(counter(*sink, "flaky.one") == 1);
  CHECK(counter(*sink, "flaky.one.tries") == 1);  // failed attempts rolled back
  {
    std::lock_guard l(m);
    CHECK(flaky_attempts == std::vector<int>{1, 2, 3, 4});
  }
  CHECK(counter(*sink, "broken.one") == 0);
  CHECK(counter(*sink, "broken.one.tries") == 0);

  auto parked = engine.dead_letters("sink", 10, "");
  REQUIRE(parked.ok());
  REQUIRE(parked.value.size() == 1);
  CHECK(parked.value[0].event.id == broken_id);
  CHECK(parked.value[0].event.type == "broken.one");
  CHECK(nlohmann::json::parse(parked.value[0].event.payload)["why"] == "test");
  CHECK(parked.value[0].attempts == 5);
  CHECK_THAT(parked.value[0].error, Catch::Contains("broken handler"));
  CHECK(parked.value[0].parked_ms > 0);
  CHECK(engine.dead_letters("sink", 10, broken_id).value.empty());  // paging past it
  CHECK_FALSE(engine.dead_letters("nobody", 10, "").ok());
  CHECK_THAT(metrics.render(),
             Catch::Contains("grapevine_events_dead_letters_total{plugin=\"sink\"} 1"));
  CHECK_THAT(metrics.render(),
             Catch::Contains("grapevine_events_dead_letters_held{plugin=\"sink\"} 1"));

  // Replay while still broken: stays parked with one more attempt.
  int replayed = -1, failed = -1;
  REQUIRE(engine.replay("sink", broken_id, &replayed, &failed).ok());
  CHECK(replayed == 0);
  CHECK(failed == 1);
  parked = engine.dead_letters("sink", 10, "");
  REQUIRE(parked.value.size() == 1);
  CHECK(parked.value[0].attempts == 6);

  CHECK(engine.replay("sink", "01NOTPARKED000000000000000", &replayed, &failed).code ==
        SqlCode::invalid);
  CHECK(engine.replay("nobody", "", &replayed, &failed).code == SqlCode::invalid);

  healed = true;
  REQUIRE(engine.replay("sink", "", &replayed, &failed).ok());
  CHECK(replayed == 1);
  CHECK(failed == 0);
  CHECK(counter(*sink, "broken.one") == 1);
  CHECK(engine.dead_letters("sink", 10, "").value.empty());
  REQUIRE(engine.replay("sink", "", &replayed, &failed).ok());  // nothing left
  CHECK(replayed == 0);
  CHECK(counter(*sink, "broken.one") == 1);
  CHECK_THAT(metrics.render(),
             Catch::Contains("grapevine_events_dead_letters_held{plugin=\"sink\"} 0"));
  engine.stop();
}

TEST_CASE("events: stop wakes a handler in backoff and the event is redelivered", "[events]") {
  const std::string kind = GENERATE(as<std::string>{}, "log", "direct");
  INFO("broker: " << kind);
  TempDir tmp;
  auto source = plugin_db(tmp.dir / "source.db", kThings);
  auto sink = plugin_db(tmp.dir / "sink.db", kCounters);
  auto options = fast_options();
  options.retry_backoff = 30s;  // would block the test if stop did not wake it
  options.retry_backoff_max = 30s;
  std::atomic<int> attempts{0};
  {
    auto broker = make_broker(kind, tmp, nullptr);
    EventEngine engine(*broker, options, nullptr);
    engine.add_source("source", *source);
    engine.add_consumer("sink", *sink, {"*"}, [&](const Envelope&, int, SqlTransaction&) {
      ++attempts;
      return SqlStatus::failure(SqlCode::io, "down");
    });
    std::string error;
    REQUIRE(engine.start(&error));
    publish_one(*source, "thing.made", "k", "{}");
    engine.notify_published();
    REQUIRE(eventually([&] { return attempts.load() == 1; }));
    auto t0 = std::chrono::steady_clock::now();
    engine.stop();
    CHECK(std::chrono::steady_clock::now() - t0 < 3s);
    CHECK(attempts.load() == 1);
    CHECK(engine.dead_letters("sink", 10, "").value.empty());
  }
  // After the restart the event comes again, and now it is applied.
  auto broker = make_broker(kind, tmp, nullptr);
  EventEngine engine(*broker, fast_options(), nullptr);
  engine.add_source("source", *source);
  engine.add_consumer("sink", *sink, {"*"},
                      [&](const Envelope& e, int, SqlTransaction& tx) { return bump(tx, e.type); });
  std::string error;
  REQUIRE(engine.start(&error));
  REQUIRE(eventually([&] { return counter(*sink, "thing.made") == 1; }));
  engine.stop();
}

namespace {

// A broker that refuses the first produce calls, then passes them on.
class FlakyBroker final : public Broker {
 public:
  FlakyBroker(Broker& inner, int failures) : inner_(inner), failures_(failures) {}
  void produce(std::vector<Envelope> batch,
               std::function<void(bool, const std::string&)> done) override {
    ++calls;
    if (failures_-- > 0) return done(false, "broker unavailable");
    inner_.produce(std::move(batch), std::move(done));
  }
  void subscribe(const std::string& g, std::vector<std::string> p, ConsumerFn h) override {
    inner_.subscribe(g, std::move(p), std::move(h));
  }
  bool start(std::string* error) override { return inner_.start(error); }
  void stop() override { inner_.stop(); }
  BrokerStats stats() const override { return inner_.stats(); }
  int max_in_flight() const override { return inner_.max_in_flight(); }
  std::atomic<int> calls{0};

 private:
  Broker& inner_;
  std::atomic<int> failures_;
};

}  // namespace

TEST_CASE("events: the relay keeps outbox rows until the broker has them", "[events]") {
  const std::string kind = GENERATE(as<std::string>{}, "log", "direct");
  INFO("broker: " << kind);
  TempDir tmp;
  auto source = plugin_db(tmp.dir / "source.db", kThings);
  auto sink = plugin_db(tmp.dir / "sink.db", kCounters);
  auto inner = make_broker(kind, tmp, nullptr);
  FlakyBroker broker(*inner, 3);
  EventEngine engine(broker, fast_options(), nullptr);
  engine.add_source("source", *source);
  engine.add_consumer("sink", *sink, {"*"},
                      [&](const Envelope& e, int, SqlTransaction& tx) { return bump(tx, e.type); });
  std::string error;
  REQUIRE(engine.start(&error));
  for (int i = 0; i < 10; ++i) publish_one(*source, "thing.made", "k", "{}");
  engine.notify_published();
  REQUIRE(eventually([&] { return counter(*sink, "thing.made") == 10; }));
  CHECK(broker.calls.load() >= 4);
  REQUIRE(eventually([&] { return scalar(*source, "SELECT count(*) FROM gv_outbox") == 0; }));
  engine.stop();
}

TEST_CASE("events: woken by a publish, the relay lingers and moves what came meanwhile at once",
          "[events]") {
  TempDir tmp;
  auto source = plugin_db(tmp.dir / "source.db", kThings);
  auto sink = plugin_db(tmp.dir / "sink.db", kCounters);
  auto inner = make_broker("log", tmp, nullptr);
  FlakyBroker broker(*inner, 0);  // counts the batches produced
  EngineOptions options = fast_options();
  options.relay_poll = 10s;  // only publishes wake it
  options.relay_linger = 400ms;
  EventEngine engine(broker, options, nullptr);
  engine.add_source("source", *source);
  engine.add_consumer("sink", *sink, {"*"},
                      [&](const Envelope& e, int, SqlTransaction& tx) { return bump(tx, e.type); });
  std::string error;
  REQUIRE(engine.start(&error));
  std::this_thread::sleep_for(100ms);  // its first pass done: idle
  const auto published = std::chrono::steady_clock::now();
  publish_one(*source, "thing.made", "a", "{}");
  engine.notify_published();
  for (int i = 0; i < 4; ++i) publish_one(*source, "thing.made", "k" + std::to_string(i), "{}");
  engine.notify_published();
  std::this_thread::sleep_for(100ms);
  CHECK(broker.calls.load() == 0);  // still lingering
  CHECK(counter(*sink, "thing.made") == 0);
  REQUIRE(eventually([&] { return counter(*sink, "thing.made") == 5; }));
  CHECK(std::chrono::steady_clock::now() - published >= 400ms);
  CHECK(broker.calls.load() == 1);  // all five in one batch
  engine.stop();
}

TEST_CASE("events: consumed event ids older than consumed_retention are pruned", "[events]") {
  TempDir tmp;
  auto source = plugin_db(tmp.dir / "source.db", kThings);
  auto sink = plugin_db(tmp.dir / "sink.db", kCounters);
  const int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  const int64_t day = 24 * 3600 * 1000;
  // Ids made now sort between the floors of now and of a second later.
  const std::string made_now = new_event_id();
  CHECK(event_id_floor(now) <= made_now);
  CHECK(made_now < event_id_floor(now + 1000));
  CHECK(event_id_floor(now - 1) < event_id_floor(now));
  // An event id made at time t (ULID: time, then random characters).
  auto id_at = [](int64_t t, int i) {
    std::string n = std::to_string(i);
    return event_id_floor(t) + std::string(16 - n.size(), '0') + n;
  };
  SqlStatus s = sink->write([&](SqlTransaction& tx) -> SqlStatus {
    for (int i = 0; i < 31; ++i) {
      // 20 made and recorded 10 days ago, 10 an hour ago; and one made 10
      // days ago but recorded an hour ago (a backlog consumed late): kept.
      const int64_t made = i < 20 || i == 30 ? now - 10 * day : now - day / 24;
      const int64_t at = i < 20 ? now - 10 * day : now - day / 24;
      auto r = tx.exec("INSERT INTO gv_consumed(event_id, consumed_ms) VALUES ($1, $2)",
                       {id_at(made, i), at});
      if (!r.ok()) return r.status;
    }
    return SqlStatus::success();
  });
  REQUIRE(s.ok());
  auto broker = make_direct_broker({2, 1}, nullptr);
  auto options = fast_options();
  options.consumed_retention = std::chrono::hours(24 * 7);
  EventEngine engine(*broker, options, nullptr);
  engine.add_source("source", *source);
  engine.add_consumer("sink", *sink, {"*"},
                      [](const Envelope& e, int, SqlTransaction& tx) { return bump(tx, e.type); });
  std::string error;
  REQUIRE(engine.start(&error));
  CHECK(engine.prune_consumed() == 20);
  CHECK(scalar(*sink, "SELECT count(*) FROM gv_consumed") == 11);
  CHECK(scalar(*sink, "SELECT count(*) FROM gv_consumed WHERE consumed_ms < $1",
               {now - 7 * day}) == 0);
  // What it records from now on is kept.
  publish_one(*source, "thing.made", "k", "{}");
  engine.notify_published();
  REQUIRE(eventually([&] { return counter(*sink, "thing.made") == 1; }));
  CHECK(scalar(*sink, "SELECT count(*) FROM gv_consumed") == 12);
  CHECK(engine.prune_consumed() == 0);
  engine.stop();
}

TEST_CASE("events: host tables of an earlier release are rebuilt in their new shapes, rows kept",
          "[events]") {
  TempDir tmp;
  auto db = open_db(tmp.dir / "old.db");
  // The host tables as releases before the rowid outbox made them, with
  // two unsent events and one consumed id.
  SqlStatus s = db->write([](SqlTransaction& tx) {
    return tx.exec_script(R"sql(
CREATE TABLE gv_outbox_seq (id INTEGER PRIMARY KEY, last_seq BIGINT NOT NULL);
INSERT INTO gv_outbox_seq(id, last_seq) VALUES (1, 2);
CREATE TABLE gv_outbox (seq BIGINT PRIMARY KEY, id TEXT NOT NULL, type TEXT NOT NULL,
  key TEXT NOT NULL, time_ms BIGINT NOT NULL, source TEXT NOT NULL,
  schema_version INTEGER NOT NULL, payload TEXT NOT NULL);
INSERT INTO gv_outbox VALUES (1, '01JAAAAAAAAAAAAAAAAAAAAAA1', 'thing.made', 'k', 5, 'source', 1, '{"n":1}');
INSERT INTO gv_outbox VALUES (2, '01JAAAAAAAAAAAAAAAAAAAAAA2', 'thing.made', 'k', 6, 'source', 1, '{"n":2}');
CREATE TABLE gv_consumed (event_id TEXT PRIMARY KEY, consumed_ms BIGINT NOT NULL);
CREATE INDEX gv_consumed_by_time ON gv_consumed(consumed_ms);
INSERT INTO gv_consumed VALUES ('01JBBBBBBBBBBBBBBBBBBBBBB1', 7);
CREATE TABLE gv_dead_letters (event_id TEXT PRIMARY KEY, envelope TEXT NOT NULL,
  attempts INTEGER NOT NULL, error TEXT NOT NULL, parked_ms BIGINT NOT NULL);
CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
)sql");
  });
  REQUIRE(s.ok());
  auto sql_of = [&](const std::string& name) {
    std::string sql;
    REQUIRE(db->read([&](SqlTransaction& tx) -> SqlStatus {
                auto r = tx.query("SELECT sql FROM sqlite_master WHERE name = $1", {name});
                if (!r.ok()) return r.status;
                if (!r.value.rows.empty()) sql = std::string(*sql_text(r.value.rows[0][0]));
                return SqlStatus::success();
              }).ok());
    return sql;
  };
  for (int start = 0; start < 2; ++start) {  // the second start finds nothing to do
    INFO("start " << start);
    s = EventEngine::prepare_database(*db);
    INFO(s.message);
    REQUIRE(s.ok());
    CHECK(sql_of("gv_outbox").find("seq INTEGER PRIMARY KEY") != std::string::npos);
    CHECK(sql_of("gv_consumed").find("WITHOUT ROWID") != std::string::npos);
    CHECK(sql_of("gv_consumed_by_time").empty());
    CHECK(sql_of("gv_outbox_old").empty());
    CHECK(sql_of("gv_consumed_old").empty());
    CHECK(scalar(*db, "SELECT count(*) FROM gv_outbox") == 2);
    CHECK(scalar(*db, "SELECT seq FROM gv_outbox WHERE payload = '{\"n\":2}'") == 2);
    CHECK(scalar(*db,
                 "SELECT consumed_ms FROM gv_consumed "
                 "WHERE event_id = '01JBBBBBBBBBBBBBBBBBBBBBB1'") == 7);
  }
  // The sequence goes on from the kept rows, and they reach a consumer in
  // order.
  publish_one(*db, "thing.made", "k", R"({"n":3})");
  CHECK(scalar(*db, "SELECT max(seq) FROM gv_outbox") == 3);
  auto sink = plugin_db(tmp.dir / "sink.db", kCounters);
  auto broker = make_direct_broker({2, 1}, nullptr);
  EventEngine engine(*broker, fast_options(), nullptr);
  engine.add_source("source", *db);
  std::vector<std::string> payloads;
  std::mutex m;
  engine.add_consumer("sink", *sink, {"*"}, [&](const Envelope& e, int, SqlTransaction& tx) {
    std::lock_guard lock(m);
    payloads.push_back(e.payload);
    return bump(tx, e.type);
  });
  std::string error;
  REQUIRE(engine.start(&error));
  engine.notify_published();
  REQUIRE(eventually([&] { return counter(*sink, "thing.made") == 3; }));
  // Deleted from the outbox once applied: just after, not with it.
  CHECK(eventually([&] { return scalar(*db, "SELECT count(*) FROM gv_outbox") == 0; }));
  engine.stop();
  CHECK(payloads == std::vector<std::string>{R"({"n":1})", R"({"n":2})", R"({"n":3})"});
}

TEST_CASE("events: the relay keeps several batches with the direct broker, and no more",
          "[events]") {
  TempDir tmp;
  auto source = plugin_db(tmp.dir / "source.db", kThings);
  auto sink = plugin_db(tmp.dir / "sink.db",
                        "CREATE TABLE counters (name TEXT PRIMARY KEY, n BIGINT NOT NULL);"
                        "CREATE TABLE last (k TEXT PRIMARY KEY, n BIGINT NOT NULL)");
  auto options = fast_options();
  options.relay_batch = 10;
  std::atomic<bool> gate{false};
  // Counts applications, and out-of-order ones (n not last + 1).
  EventHandler handler = [&](const Envelope& e, int, SqlTransaction& tx) -> SqlStatus {
    while (!gate) std::this_thread::sleep_for(1ms);  // a slow consumer
    const int64_t n = nlohmann::json::parse(e.payload)["n"];
    auto last = tx.query("SELECT n FROM last WHERE k = 'k'");
    if (!last.ok()) return last.status;
    const int64_t prev = last.value.rows.empty() ? 0 : *sql_int(last.value.rows[0][0]);
    if (auto st = bump(tx, n == prev + 1 ? "in_order" : "out_of_order"); !st.ok()) return st;
    return tx
        .exec("INSERT INTO last(k, n) VALUES ('k', $1) ON CONFLICT (k) DO UPDATE SET n = $1",
              {n})
        .status;
  };
  {
    auto broker = make_direct_broker({1, 1}, nullptr);
    EventEngine engine(*broker, options, nullptr);
    engine.add_source("source", *source);
    engine.add_consumer("sink", *sink, {"*"}, handler);
    // Lets a failed check end the test instead of hanging it (declared
    // after the engine: destroyed, and the consumer released, first).
    struct OpenOnExit {
      std::atomic<bool>& gate;
      ~OpenOnExit() { gate = true; }
    } open_on_exit{gate};
    std::string error;
    REQUIRE(engine.start(&error));
    // 100 events of one key, n = 1..100, in one transaction (so that the
    // relay's first read finds them all and its batches are full).
    SqlStatus published = source->write([&](SqlTransaction& tx) -> SqlStatus {
      for (int n = 1; n <= 100; ++n)
        if (auto st = EventEngine::publish(tx, "source", "thing.made", "k",
                                           "{\"n\":" + std::to_string(n) + "}", 1, nullptr);
            !st.ok())
          return st;
      return SqlStatus::success();
    });
    REQUIRE(published.ok());
    engine.notify_published();
    // While the consumer is held, the relay hands over max_in_flight batches.
    const int64_t most = int64_t{10} * broker->max_in_flight();
    REQUIRE(broker->max_in_flight() > 1);
    REQUIRE(eventually([&] { return broker->stats().stored_events == most; }));
    std::this_thread::sleep_for(50ms);
    CHECK(broker->stats().stored_events == most);
    CHECK(scalar(*source, "SELECT count(*) FROM gv_outbox") == 100);  // none applied, none deleted
    // Stop with those batches out: the handler in progress finishes, the
    // rest are refused at once and stay in the outbox.
    std::thread opener([&] {
      std::this_thread::sleep_for(100ms);
      gate = true;
    });
    auto t0 = std::chrono::steady_clock::now();
    engine.stop();
    CHECK(std::chrono::steady_clock::now() - t0 < 2s);
    opener.join();
  }
  const int64_t applied_before = counter(*sink, "in_order");
  CHECK(applied_before < 100);
  CHECK(scalar(*source, "SELECT count(*) FROM gv_outbox") == 100 - applied_before);
  // After a restart every event is applied once, in order.
  auto broker = make_direct_broker({1, 1}, nullptr);
  EventEngine engine(*broker, options, nullptr);
  engine.add_source("source", *source);
  engine.add_consumer("sink", *sink, {"*"}, handler);
  std::string error;
  REQUIRE(engine.start(&error));
  REQUIRE(eventually([&] { return counter(*sink, "in_order") == 100; }));
  REQUIRE(eventually([&] { return scalar(*source, "SELECT count(*) FROM gv_outbox") == 0; }));
  CHECK(counter(*sink, "out_of_order") == 0);
  CHECK(scalar(*sink, "SELECT count(*) FROM gv_consumed") == 100);
  engine.stop();
}

TEST_CASE("events: order per key holds with 8 partitions and 2 consumer threads", "[events]") {
  const std::string kind = GENERATE(as<std::string>{}, "log", "direct");
  INFO("broker: " << kind);
  TempDir tmp;
  auto source = plugin_db(tmp.dir / "source.db",
                          "CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT NOT NULL);"
                          "CREATE TABLE seqs (key TEXT PRIMARY KEY, n BIGINT NOT NULL)");
  auto sink = plugin_db(tmp.dir / "sink.db",
                        "CREATE TABLE last (key TEXT PRIMARY KEY, n BIGINT NOT NULL);"
                        "CREATE TABLE seen (key TEXT NOT NULL, n BIGINT NOT NULL,"
                        " PRIMARY KEY (key, n));"
                        "CREATE TABLE violations (key TEXT NOT NULL, n BIGINT NOT NULL,"
                        " last BIGINT NOT NULL)");
  auto broker = make_broker(kind, tmp, nullptr, 8, 2);
  EventEngine engine(*broker, fast_options(), nullptr);
  engine.add_source("source", *source);
  engine.add_consumer(
      "sink", *sink, {"seq.*"}, [](const Envelope& e, int, SqlTransaction& tx) -> SqlStatus {
        auto p = nlohmann::json::parse(e.payload);
        const std::string key = p["key"];
        const int64_t n = p["n"];
        if (key != e.key) return SqlStatus::failure(SqlCode::invalid, "key mismatch");
        auto last = tx.query("SELECT n FROM last WHERE key = $1", {key});
        if (!last.ok()) return last.status;
        int64_t prev = last.value.rows.empty() ? 0 : *sql_int(last.value.rows[0][0]);
        if (n != prev + 1) {
          auto v =
              tx.exec("INSERT INTO violations(key, n, last) VALUES ($1, $2, $3)", {key, n, prev});
          if (!v.ok()) return v.status;
        }
        auto u = tx.exec(
            "INSERT INTO last(key, n) VALUES ($1, $2) "
            "ON CONFLICT (key) DO UPDATE SET n = excluded.n",
            {key, n});
        if (!u.ok()) return u.status;
        return tx.exec("INSERT INTO seen(key, n) VALUES ($1, $2)", {key, n}).status;
      });
  std::string error;
  REQUIRE(engine.start(&error));

  constexpr int kThreads = 4, kPer = 2500, kKeys = 4;
  std::atomic<int> failures{0};
  std::vector<std::thread> publishers;
  for (int t = 0; t < kThreads; ++t)
    publishers.emplace_back([&, t] {
      for (int i = 0; i < kPer; ++i) {
        const std::string key = "key:" + std::to_string((t + i) % kKeys);
        SqlStatus s = source->write([&](SqlTransaction& tx) -> SqlStatus {
          // The per-key sequence number, taken in the publishing transaction.
          auto r = tx.query(
              "INSERT INTO seqs(key, n) VALUES ($1, 1) "
              "ON CONFLICT (key) DO UPDATE SET n = seqs.n + 1 RETURNING n",
              {key});
          if (!r.ok()) return r.status;
          nlohmann::json payload = {{"key", key}, {"n", *sql_int(r.value.rows[0][0])}};
          return EventEngine::publish(tx, "source", "seq.step", key, payload.dump(), 1, nullptr);
        });
        if (!s.ok()) ++failures;
        if (i % 100 == 0) engine.notify_published();
      }
    });
  for (auto& th : publishers) th.join();
  engine.notify_published();
  REQUIRE(failures.load() == 0);
  REQUIRE(eventually([&] { return scalar(*sink, "SELECT count(*) FROM seen") == kThreads * kPer; },
                     30s));
  CHECK(scalar(*sink, "SELECT count(*) FROM violations") == 0);
  for (int k = 0; k < kKeys; ++k) {
    const std::string key = "key:" + std::to_string(k);
    CHECK(scalar(*sink, "SELECT n FROM last WHERE key = $1", {key}) ==
          scalar(*source, "SELECT n FROM seqs WHERE key = $1", {key}));
    CHECK(scalar(*sink, "SELECT count(*) FROM seen WHERE key = $1", {key}) ==
          kThreads * kPer / kKeys);
  }
  REQUIRE(eventually([&] { return scalar(*source, "SELECT count(*) FROM gv_outbox") == 0; }));
  engine.stop();
}
