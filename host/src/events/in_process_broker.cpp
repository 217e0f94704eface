// The in-process broker: a durable partitioned log in its own SQLite file,
// with committed offsets per (group, partition), like a one-node Kafka.
//
// File (a SqliteDatabase on options.file; its folder is created):
//   meta(name PK, value)                 "partitions" -> the partition count,
//                                        fixed when the file is created
//   partitions(part PK, next_offset)     the next offset to assign
//   log(part, off, id, type, key, time_ms, source, schema_version, payload,
//       PRIMARY KEY (part, off))         the events
//   offsets(grp, part, next_offset, PRIMARY KEY (grp, part))
//                                        the first offset a group has not
//                                        consumed yet
// (Columns are part/off/grp because PARTITION, OFFSET and GROUP are SQL
// keywords.) start() refuses a file whose partition count differs from
// options.partitions: the partition of a key would change, and with it the
// order of its events.
//
// produce(): under produce_mutex_, one write transaction appends the whole
// batch, each event at partition_of(key) (FNV-1a 64 % partitions) and the
// next offset of that partition, and stores the new next offsets; after the
// commit the in-memory next offsets move and the delivery threads are woken
// (condition variable), then done(true) runs on the caller's thread. On
// failure nothing moves and done(false, why) runs.
//
// Delivery: consumer_threads threads; partition p belongs to thread
// p % consumer_threads, for every group, so a partition is only ever
// delivered by one thread and its events stay in order. A thread loops:
// for each of its (group, partition) pairs with something new (committed <
// next, both in memory) it reads up to kReadBatch rows from the committed
// offset (every pair in one read transaction) and hands the ones whose type
// matches a pattern of the group to the handler, moving the in-memory
// committed offset past each row it is done with (delivered or not
// matching). produce() notes per (group, partition) where the last event
// the group matches ends; a pair whose new rows hold none is moved to the
// next offset without reading them (events logged before start() are read). At most every
// kStoreEvery it stores the moved offsets in one write transaction (at least once: a crash before
// that store redelivers, and the engine drops duplicates by event id). With nothing to do it sleeps
// on the condition variable until a produce, kIdleWait or the next offsets store, never spinning.
//
// A handler returning false (giving up for stop()) leaves its offset where
// it was and ends the thread's delivery. A handler that throws is logged;
// its offset stays and the pair is retried after kThrowRetry.
//
// Retention: thread 0, every retention_every, deletes per partition the log
// rows below (lowest committed offset over the groups) minus the partition's
// share of retention_events (with no groups, below next offset minus that
// share), at most retention_batch rows per transaction: while rows remain
// to delete, the next batch goes in the thread's next loop, after its
// deliveries. A group without an offsets row starts at offset 0, that is at the
// oldest event still in the log.
//
// Known limits: a handler that blocks (retrying) holds up every partition
// of its thread for every group. Groups may only be added before start().
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "core/log.hpp"
#include "core/metrics.hpp"
#include "events/events.hpp"
#include "stores/sqlite_database.hpp"
#include "core/thread_name.hpp"

namespace gv::events {

namespace {

using stores::SqlCode;
using stores::SqlRows;
using stores::SqlStatus;
using stores::SqlTransaction;
using stores::SqlValue;
using Clock = std::chrono::steady_clock;

constexpr int64_t kReadBatch = 256;
constexpr auto kIdleWait = std::chrono::milliseconds(1000);
constexpr auto kThrowRetry = std::chrono::milliseconds(1000);
// Moved offsets are stored at most this often (and at stop): a crash
// redelivers at most this much, which consumers drop as duplicates.
constexpr auto kStoreEvery = std::chrono::milliseconds(100);

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS partitions (part INTEGER PRIMARY KEY, next_offset BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS log (
  part INTEGER NOT NULL,
  off BIGINT NOT NULL,
  id TEXT NOT NULL,
  type TEXT NOT NULL,
  key TEXT NOT NULL,
  time_ms BIGINT NOT NULL,
  source TEXT NOT NULL,
  schema_version INTEGER NOT NULL,
  payload TEXT NOT NULL,
  PRIMARY KEY (part, off));
CREATE TABLE IF NOT EXISTS offsets (
  grp TEXT NOT NULL,
  part INTEGER NOT NULL,
  next_offset BIGINT NOT NULL,
  PRIMARY KEY (grp, part))
)sql";

int64_t int_at(const std::vector<SqlValue>& row, size_t i) {
  return stores::sql_int(row.at(i)).value_or(0);
}
std::string text_at(const std::vector<SqlValue>& row, size_t i) {
  auto t = stores::sql_text(row.at(i));
  return t ? std::string(*t) : std::string();
}

class InProcessBroker final : public Broker {
 public:
  InProcessBroker(const InProcessBrokerOptions& options, Metrics* metrics)
      : options_(options), stats_(std::make_shared<SharedStats>()) {
    if (metrics) {
      auto stats = stats_;
      metrics->add_family("grapevine_events_broker_stored_events",
                          "Events held by the in-process broker's log.", "gauge",
                          [stats]() -> Metrics::Samples {
                            return {{"", static_cast<double>(stats->stored.load())}};
                          });
    }
  }

  ~InProcessBroker() override { stop(); }

  void produce(std::vector<Envelope> batch,
               std::function<void(bool, const std::string&)> done) override {
    std::string error;
    bool ok = false;
    try {
      ok = append(batch, &error);
    } catch (const std::exception& e) {
      error = std::string("in-process broker: ") + e.what();
    } catch (...) {
      error = "in-process broker: unknown exception";
    }
    if (done) done(ok, error);
  }

  void subscribe(const std::string& group, std::vector<std::string> patterns,
                 ConsumerFn handler) override {
    add_group(groups_, started_, {group, std::move(patterns), std::move(handler)});
  }

  bool start(std::string* error) override;
  void stop() override;

  BrokerStats stats() const override {
    BrokerStats s;
    if (!started_ || partitions_ == 0) return s;
    int64_t stored = 0, lag = 0;
    for (int p = 0; p < partitions_; ++p) {
      const int64_t next = next_[p].load(), first = first_[p].load();
      stored += next - first;
      for (auto& g : groups_)
        lag += std::max<int64_t>(0, next - std::max(first, g->committed[p].load()));
    }
    s.stored_events = stored;
    s.consumer_lag = lag;
    return s;
  }

 private:
  struct Group : Subscription {
    std::unique_ptr<std::atomic<int64_t>[]> committed;  // per partition, in memory
    std::vector<int64_t> stored;                        // per partition, in the file
    std::vector<Clock::time_point> retry_after;         // per partition, after a throw
    // Per partition: one past the offset of the last event this group's
    // patterns match (any event logged before start() counts as matching).
    // Below it up to next_, nothing is for this group: delivery moves the
    // offset over such a stretch without reading it.
    std::unique_ptr<std::atomic<int64_t>[]> match_end;
  };
  struct SharedStats {  // outlives the broker: the metrics callback holds it
    std::atomic<int64_t> stored{0};
  };

  bool append(const std::vector<Envelope>& batch, std::string* error);
  void run(int thread_index);
  bool deliver_pass(int thread_index, bool* progressed);
  void store_offsets(int thread_index);
  bool retention();
  void update_stored() {
    int64_t stored = 0;
    for (int p = 0; p < partitions_; ++p) stored += next_[p].load() - first_[p].load();
    stats_->stored = stored;
  }

  InProcessBrokerOptions options_;
  std::shared_ptr<SharedStats> stats_;
  std::vector<std::unique_ptr<Group>> groups_;
  std::atomic<bool> started_{false};
  int partitions_ = 0;
  int threads_count_ = 0;

  std::mutex produce_mutex_;  // serializes append(); guards db_ against stop()
  std::unique_ptr<stores::SqliteDatabase> db_;
  std::unique_ptr<std::atomic<int64_t>[]> next_;   // per partition: next offset to assign
  std::unique_ptr<std::atomic<int64_t>[]> first_;  // per partition: lowest offset kept

  std::mutex wake_mutex_;  // guards produced_, stopping_
  std::condition_variable wake_;
  uint64_t produced_ = 0;
  bool stopping_ = false;
  std::atomic<bool> stop_flag_{false};
  std::vector<std::thread> threads_;
};

bool InProcessBroker::start(std::string* error) {
  auto fail = [&](std::string message) {
    if (error) *error = message;
    log::error("events: the in-process broker did not start", {{"error", message}});
    db_.reset();
    return false;
  };
  if (started_) return fail("the in-process broker is already started");
  if (auto wrong = check_delivery_options(options_.partitions, options_.consumer_threads);
      !wrong.empty())
    return fail(wrong);
  partitions_ = options_.partitions;
  threads_count_ = std::min(options_.consumer_threads, partitions_);

  std::error_code ec;
  if (options_.file.has_parent_path()) {
    std::filesystem::create_directories(options_.file.parent_path(), ec);
    if (ec)
      return fail("cannot create " + options_.file.parent_path().string() + ": " + ec.message());
  }
  stores::SqliteOptions so;
  so.busy_timeout_ms = options_.busy_timeout_ms;
  so.synchronous = options_.synchronous;
  so.mmap_bytes = options_.mmap_bytes;
  so.wal_bytes = options_.wal_bytes;
  so.reader_connections = threads_count_ + 1;
  auto opened = stores::SqliteDatabase::open(options_.file, so);
  if (!opened.ok())
    return fail("events log " + options_.file.string() + ": " + opened.status.message);
  db_ = std::move(opened.value);

  // Schema, the partition count, and every offset, in one transaction.
  next_ = std::make_unique<std::atomic<int64_t>[]>(static_cast<size_t>(partitions_));
  first_ = std::make_unique<std::atomic<int64_t>[]>(static_cast<size_t>(partitions_));
  for (auto& g : groups_) {
    g->committed = std::make_unique<std::atomic<int64_t>[]>(static_cast<size_t>(partitions_));
    g->stored.assign(static_cast<size_t>(partitions_), 0);
    g->retry_after.assign(static_cast<size_t>(partitions_), Clock::time_point{});
    g->match_end = std::make_unique<std::atomic<int64_t>[]>(static_cast<size_t>(partitions_));
  }
  std::string refused;
  SqlStatus s = db_->write([&](SqlTransaction& tx) -> SqlStatus {
    if (auto st = tx.exec_script(kSchema); !st.ok()) return st;
    auto r = tx.query("SELECT value FROM meta WHERE name = 'partitions'");
    if (!r.ok()) return r.status;
    if (r.value.rows.empty()) {
      auto ins = tx.exec("INSERT INTO meta(name, value) VALUES ('partitions', $1)",
                         {std::to_string(partitions_)});
      if (!ins.ok()) return ins.status;
    } else if (text_at(r.value.rows[0], 0) != std::to_string(partitions_)) {
      refused = "events log " + options_.file.string() + " has " + text_at(r.value.rows[0], 0) +
                " partitions but the configuration asks for " + std::to_string(partitions_) +
                ": the partition count is fixed once the log exists (configure " +
                text_at(r.value.rows[0], 0) +
                ", or move the file away after every event is consumed to start a new log)";
      return SqlStatus::failure(SqlCode::invalid, refused);
    }
    for (int p = 0; p < partitions_; ++p) next_[p] = 0, first_[p] = 0;
    auto parts = tx.query("SELECT part, next_offset FROM partitions");
    if (!parts.ok()) return parts.status;
    for (auto& row : parts.value.rows) {
      int64_t p = int_at(row, 0);
      if (p >= 0 && p < partitions_) next_[p] = int_at(row, 1);
    }
    for (int p = 0; p < partitions_; ++p) first_[p] = next_[p].load();
    auto firsts = tx.query("SELECT part, MIN(off) FROM log GROUP BY part");
    if (!firsts.ok()) return firsts.status;
    for (auto& row : firsts.value.rows) {
      int64_t p = int_at(row, 0);
      if (p >= 0 && p < partitions_) first_[p] = int_at(row, 1);
    }
    for (auto& g : groups_) {
      for (int p = 0; p < partitions_; ++p) g->committed[p] = 0, g->match_end[p] = next_[p].load();
      auto offs = tx.query("SELECT part, next_offset FROM offsets WHERE grp = $1", {g->name});
      if (!offs.ok()) return offs.status;
      for (auto& row : offs.value.rows) {
        int64_t p = int_at(row, 0);
        if (p < 0 || p >= partitions_) continue;
        g->committed[p] = int_at(row, 1);
        g->stored[static_cast<size_t>(p)] = int_at(row, 1);
      }
    }
    return SqlStatus::success();
  });
  if (!refused.empty()) return fail(refused);
  if (!s.ok()) return fail("events log " + options_.file.string() + ": " + s.message);
  update_stored();

  {
    std::lock_guard lock(wake_mutex_);
    stopping_ = false;
  }
  stop_flag_ = false;
  started_ = true;
  for (int t = 0; t < threads_count_; ++t) threads_.emplace_back([this, t] {
      name_this_thread("gv-deliver");
      run(t);
    });
  return true;
}

void InProcessBroker::stop() {
  {
    std::lock_guard lock(wake_mutex_);
    stopping_ = true;
  }
  stop_flag_ = true;
  wake_.notify_all();
  for (auto& t : threads_)
    if (t.joinable()) t.join();
  threads_.clear();
  std::lock_guard lock(produce_mutex_);
  db_.reset();
}

bool InProcessBroker::append(const std::vector<Envelope>& batch, std::string* error) {
  std::lock_guard lock(produce_mutex_);
  if (!db_ || stop_flag_) {
    *error = "the in-process broker is not running";
    return false;
  }
  if (batch.empty()) return true;
  std::vector<int64_t> next(static_cast<size_t>(partitions_));
  for (int p = 0; p < partitions_; ++p) next[static_cast<size_t>(p)] = next_[p].load();
  std::vector<bool> touched(static_cast<size_t>(partitions_), false);
  std::vector<std::pair<size_t, int64_t>> placed;  // per event: partition and offset
  placed.reserve(batch.size());
  SqlStatus s = db_->write([&](SqlTransaction& tx) -> SqlStatus {
    for (const Envelope& e : batch) {
      const auto p = static_cast<size_t>(partition_of(e.key, partitions_));
      placed.emplace_back(p, next[p]);
      auto r = tx.exec(
          "INSERT INTO log(part, off, id, type, key, time_ms, source, schema_version, payload) "
          "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
          {static_cast<int64_t>(p), next[p], e.id, e.type, e.key, e.time_ms, e.source,
           static_cast<int64_t>(e.schema_version), e.payload});
      if (!r.ok()) return r.status;
      ++next[p];
      touched[p] = true;
    }
    for (int p = 0; p < partitions_; ++p) {
      if (!touched[static_cast<size_t>(p)]) continue;
      auto r = tx.exec(
          "INSERT INTO partitions(part, next_offset) VALUES ($1, $2) "
          "ON CONFLICT (part) DO UPDATE SET next_offset = excluded.next_offset",
          {static_cast<int64_t>(p), next[static_cast<size_t>(p)]});
      if (!r.ok()) return r.status;
    }
    return SqlStatus::success();
  });
  if (!s.ok()) {
    *error = "in-process broker: " + s.message;
    return false;
  }
  // Which groups the new events are for, before next_ shows them (delivery
  // reads next_ first, then match_end).
  for (auto& g : groups_)
    for (size_t i = 0; i < batch.size(); ++i)
      if (g->matches(batch[i].type)) g->match_end[placed[i].first] = placed[i].second + 1;
  for (int p = 0; p < partitions_; ++p) next_[p] = next[static_cast<size_t>(p)];
  update_stored();
  {
    std::lock_guard wl(wake_mutex_);
    ++produced_;
  }
  wake_.notify_all();
  return true;
}

void InProcessBroker::run(int thread_index) {
  auto last_retention = Clock::now(), last_store = Clock::now();
  bool unstored = false;        // offsets moved since the last store
  bool retention_left = false;  // the last retention pass had more to delete
  for (;;) {
    uint64_t seen;
    {
      std::lock_guard lock(wake_mutex_);
      if (stopping_) break;
      seen = produced_;
    }
    bool progressed = false, go_on = true;
    try {
      go_on = deliver_pass(thread_index, &progressed);
      unstored = unstored || progressed;
      if (unstored && Clock::now() - last_store >= kStoreEvery) {
        store_offsets(thread_index);
        last_store = Clock::now();
        unstored = false;
      }
      if (thread_index == 0 &&
          (retention_left || Clock::now() - last_retention >= options_.retention_every)) {
        retention_left = retention();
        progressed = progressed || retention_left;  // no sleep before the next batch
        last_retention = Clock::now();
      }
    } catch (const std::exception& e) {
      log::error("events: broker delivery pass failed", {{"error", e.what()}});
    } catch (...) {
      log::error("events: broker delivery pass failed", {{"error", "unknown exception"}});
    }
    if (!go_on) break;
    if (progressed) continue;
    // Thread 0 also wakes for retention; moved offsets are stored on time.
    Clock::duration idle = kIdleWait;
    if (thread_index == 0)
      idle = std::min(idle, std::max<Clock::duration>(options_.retention_every,
                                                      std::chrono::milliseconds(1)));
    if (unstored)
      idle = std::min(idle, std::max<Clock::duration>(last_store + kStoreEvery - Clock::now(),
                                                      std::chrono::milliseconds(1)));
    std::unique_lock lock(wake_mutex_);
    wake_.wait_for(lock, idle, [&] { return stopping_ || produced_ != seen; });
  }
  try {
    store_offsets(thread_index);  // what the last handlers finished
  } catch (...) {
    log::error("events: broker could not store offsets at stop");
  }
}

// One pass over the thread's (group, partition) pairs: the rows of every
// pair with something new are read in one read transaction, then handed
// out pair by pair. False when a handler gave up because of stop().
bool InProcessBroker::deliver_pass(int thread_index, bool* progressed) {
  struct Pair {
    Group* g;
    int p;
    int64_t next;
    SqlRows rows;
  };
  std::vector<Pair> pairs;
  const auto now = Clock::now();
  for (auto& gp : groups_)
    for (int p = thread_index; p < partitions_; p += threads_count_) {
      const int64_t committed = std::max(gp->committed[p].load(), int64_t{0});
      const int64_t next = next_[p].load();  // every row below is committed
      if (committed >= next) continue;
      if (gp->match_end[p].load() <= committed) {
        // Nothing up to next is for this group: no need to read it.
        gp->committed[p] = next;
        *progressed = true;
        continue;
      }
      if (now >= gp->retry_after[static_cast<size_t>(p)]) pairs.push_back({gp.get(), p, next, {}});
    }
  if (pairs.empty()) return true;
  if (stop_flag_) return false;
  SqlStatus s = db_->read([&](SqlTransaction& tx) {
    for (auto& pair : pairs) {
      const int64_t part = pair.p;
      const int64_t from = std::max(pair.g->committed[pair.p].load(), int64_t{0});
      auto r = tx.query(
          "SELECT off, id, type, key, time_ms, source, schema_version, payload FROM log "
          "WHERE part = $1 AND off >= $2 ORDER BY off LIMIT $3",
          {part, from, kReadBatch});
      if (!r.ok()) return r.status;
      pair.rows = std::move(r.value);
    }
    return SqlStatus::success();
  });
  if (!s.ok()) {
    log::warn("events: broker cannot read its log", {{"error", s.message}});
    return true;
  }
  for (auto& pair : pairs) {
    Group& g = *pair.g;
    const int p = pair.p;
    const auto up = static_cast<size_t>(p);
    if (stop_flag_) return false;
    if (pair.rows.rows.empty()) {
      // Nothing left below next (cannot happen while retention keeps
      // every row at or above the lowest committed offset): skip ahead,
      // but not past rows produced since next was read.
      g.committed[p] = pair.next;
      *progressed = true;
      continue;
    }
    // The matching events of what was read go to the handler as one run;
    // rows of other types in between only move the offset.
    std::vector<Delivery> run;
    run.reserve(pair.rows.rows.size());
    for (auto& row : pair.rows.rows) {
      std::string type = text_at(row, 2);
      if (!g.matches(type)) continue;
      Delivery& d = run.emplace_back();
      d.partition = p;
      d.offset = int_at(row, 0);
      d.event.type = std::move(type);
      d.event.id = text_at(row, 1);
      d.event.key = text_at(row, 3);
      d.event.time_ms = int_at(row, 4);
      d.event.source = text_at(row, 5);
      d.event.schema_version = static_cast<int>(int_at(row, 6));
      d.event.payload = text_at(row, 7);
    }
    const int64_t after_read = int_at(pair.rows.rows.back(), 0) + 1;
    size_t done = 0;
    if (!run.empty()) {
      try {
        done = g.handler(run);
      } catch (const std::exception& e) {
        log::error("events: consumer threw; its events will be delivered again",
                   {{"group", g.name}, {"event_id", run.front().event.id}, {"error", e.what()}});
        g.retry_after[up] = Clock::now() + kThrowRetry;
        continue;
      } catch (...) {
        log::error("events: consumer threw; its events will be delivered again",
                   {{"group", g.name}, {"event_id", run.front().event.id}});
        g.retry_after[up] = Clock::now() + kThrowRetry;
        continue;
      }
    }
    *progressed = true;
    if (done < run.size()) {
      // Gave up for stop(): the first event not done keeps its offset.
      g.committed[p] = run[done].offset;
      return false;
    }
    g.committed[p] = after_read;
  }
  return true;
}

void InProcessBroker::store_offsets(int thread_index) {
  struct Move {
    Group* g;
    int p;
    int64_t offset;
  };
  std::vector<Move> moves;
  for (auto& g : groups_)
    for (int p = thread_index; p < partitions_; p += threads_count_) {
      int64_t c = g->committed[p].load();
      if (c != g->stored[static_cast<size_t>(p)]) moves.push_back({g.get(), p, c});
    }
  if (moves.empty() || !db_) return;
  SqlStatus s = db_->write([&](SqlTransaction& tx) -> SqlStatus {
    for (auto& m : moves) {
      auto r = tx.exec(
          "INSERT INTO offsets(grp, part, next_offset) VALUES ($1, $2, $3) "
          "ON CONFLICT (grp, part) DO UPDATE SET next_offset = excluded.next_offset",
          {m.g->name, static_cast<int64_t>(m.p), m.offset});
      if (!r.ok()) return r.status;
    }
    return SqlStatus::success();
  });
  if (!s.ok()) {
    log::warn("events: broker cannot store consumer offsets; will retry", {{"error", s.message}});
    return;
  }
  for (auto& m : moves) m.g->stored[static_cast<size_t>(m.p)] = m.offset;
}

// Deletes up to retention_batch rows due; true when more are due.
bool InProcessBroker::retention() {
  const int64_t keep =
      std::max<int64_t>(0, (options_.retention_events + partitions_ - 1) / partitions_);
  int64_t budget = std::max<int64_t>(1, options_.retention_batch);
  bool left = false;
  std::vector<std::pair<int, int64_t>> cuts;
  for (int p = 0; p < partitions_; ++p) {
    int64_t low = next_[p].load();
    for (auto& g : groups_) low = std::min(low, g->committed[p].load());
    const int64_t first = first_[p].load(), due = low - keep;
    if (due <= first) continue;
    const int64_t cut = std::min(due, first + budget);
    left = left || cut < due;
    if (cut == first) continue;  // the budget is spent
    budget -= cut - first;
    cuts.emplace_back(p, cut);
  }
  if (cuts.empty()) return false;
  SqlStatus s = db_->write([&](SqlTransaction& tx) -> SqlStatus {
    for (auto& [p, cut] : cuts) {
      auto r =
          tx.exec("DELETE FROM log WHERE part = $1 AND off < $2", {static_cast<int64_t>(p), cut});
      if (!r.ok()) return r.status;
    }
    return SqlStatus::success();
  });
  if (!s.ok()) {
    log::warn("events: broker retention failed; will retry", {{"error", s.message}});
    return false;
  }
  for (auto& [p, cut] : cuts) first_[p] = cut;
  update_stored();
  return left;
}

}  // namespace

std::unique_ptr<Broker> make_in_process_broker(const InProcessBrokerOptions& options,
                                               Metrics* metrics) {
  return std::make_unique<InProcessBroker>(options, metrics);
}

}  // namespace gv::events
