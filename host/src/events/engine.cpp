// The event engine: outboxes in, consumer handlers out (events.hpp has the
// flow). This file holds the host tables, publish(), the relay thread, the
// consumer runner and the admin operations.
//
// Host tables, created in every plugin database by prepare_database():
//   gv_outbox_seq(id INTEGER PK, last_seq BIGINT)   one row: the outbox counter
//   gv_outbox(seq INTEGER PK, id, type, key, time_ms, source, schema_version,
//             payload)                              unsent events
//   gv_consumed(event_id TEXT PK, consumed_ms BIGINT) WITHOUT ROWID
//   gv_dead_letters(event_id TEXT PK, envelope TEXT (Envelope::to_json),
//                   attempts INTEGER, error TEXT, parked_ms BIGINT)
// Their statements are SQL PostgreSQL runs too (IF NOT EXISTS, ON CONFLICT,
// INSERT ... SELECT); their shapes are SQLite's cheapest, because each
// event adds a row to and deletes a row from both gv_outbox and
// gv_consumed: "seq INTEGER PRIMARY KEY" makes seq the rowid (one b-tree,
// not a table and an index), and WITHOUT ROWID keeps gv_consumed in its
// primary key's b-tree alone. (A PostgreSQL backend spells these
// "seq BIGINT PRIMARY KEY" and a plain table.) Tables of the earlier
// shapes (seq BIGINT PRIMARY KEY; gv_consumed with a rowid and an index on
// consumed_ms) are rebuilt by prepare_database, rows kept, in its
// transaction.
// The outbox sequence comes from the counter row rather than an
// auto-increment column: a transaction's first event bumps it (UPDATE
// gv_outbox_seq SET last_seq = last_seq + 1, then the INSERT reads last_seq
// from it), its later events (the other works of a group commit) count on
// in memory, and the row is set to the last one just before the COMMIT
// (SqlTransaction::deferred). It is the same SQL on both backends, and
// because the row stays locked from the first UPDATE until the publishing
// transaction ends, seq order is commit order even on PostgreSQL. (With a
// SEQUENCE, seq 5 may commit before seq 4; the relay would send 5 and its
// "DELETE ... WHERE seq <= 5" would then delete 4 unsent.) An event undone
// (its part or work failed) leaves a gap in seq, never a repeat. The cost
// is that publishing transactions of one plugin serialize on that row,
// which SQLite does anyway.
//
// publish() checks type (valid_type), key (1..kMaxKeyBytes bytes), source
// (non-empty), schema_version (>= 1) and payload (a JSON object of at most
// kMaxPayloadBytes), then appends the row in the caller's transaction.
//
// Relay: one thread. Each pass, for each source not in backoff, it reads up
// to relay_batch rows in seq order (read snapshot), hands them to
// Broker::produce and waits for done; on done(true) it deletes them
// (DELETE ... WHERE seq <= last) and, if the batch was full, goes on
// without sleeping. So a source has one batch in flight at a time and its
// rows reach the broker in seq order: order per key holds. On done(false)
// (or a failed read) the rows stay and the source waits retry_backoff,
// doubling up to retry_backoff_max, before the next try; if the delete
// fails the next pass sends the rows again (consumers drop duplicates).
// (Once stop() is under way the wait for done is bounded by kDrainWait:
// an unanswered batch stays in the outbox for the next start.)
// A broker whose max_in_flight() is more than one (the direct broker, which
// answers a batch only once consumers applied it) gets that many batches
// of a source at once instead (relay_pipelined): the relay does not wait,
// an answer wakes it, and it deletes answered batches oldest first.
// When idle the thread sleeps until notify_published() or relay_poll;
// woken by a publish, it first waits relay_linger for the commits that
// follow (like a Kafka producer's linger.ms), so that a pass moves their
// events together: under steady writes about a quarter of the broker
// writes and outbox deletes, for a few milliseconds more between publish
// and delivery. It
// also refreshes the backlog and lag gauges. stop() wakes it for a last
// drain pass before it exits.
//
// prune_consumed() deletes gv_consumed rows older than consumed_retention,
// kPruneChunk rows per transaction; the host runs it as the scheduled job
// host.events_prune (not on the relay thread: it waits for consumers'
// transactions). It walks the primary key: an event is consumed after it
// was made, so a row consumed before the cutoff has an id below
// event_id_floor(cutoff), and no index on consumed_ms is needed.
//
// Consumer runner (the Broker::ConsumerFn of each consuming plugin, group =
// plugin name), per delivery, attempt = 1..max_attempts:
//   write transaction on the consumer's database:
//     INSERT INTO gv_consumed ... ON CONFLICT (event_id) DO NOTHING
//     0 rows -> a duplicate: commit (nothing changed), count it, done;
//     else handler(event, attempt, tx), and on ok also drop a stale
//     dead letter of the same id (an event parked, then redelivered after a
//     crash and now applied), commit.
//   A failed status, an exception or busy (write lock not obtained: counts
//   as an attempt, so a locked database cannot hold a partition forever)
//   rolls back; the runner waits retry_backoff (doubling, capped at
//   retry_backoff_max) and tries again. After max_attempts the event is
//   parked in gv_dead_letters in its own transaction (upsert) and the
//   partition moves on. If parking itself fails the runner keeps retrying
//   the park with backoff: the event must not be lost. stop() wakes a
//   runner waiting for backoff at once; it returns false so the broker
//   leaves the event uncommitted, to be delivered after the restart.
//
// Admin: dead_letters() pages by event id (ULIDs sort by creation time);
// replay() reruns each chosen dead letter's handler in one transaction
// that also records gv_consumed and deletes the dead letter; a failure
// updates attempts and error in a second transaction.
//
// Metrics (when a Metrics is given; figures live in a shared_ptr the
// callbacks hold, so a scrape after the engine is gone reads the last
// values): grapevine_events_relayed_total, grapevine_events_outbox_backlog,
// grapevine_events_consumer_lag, and per plugin (label plugin=...)
// grapevine_events_consumed_total, grapevine_events_duplicates_total,
// grapevine_events_retries_total, grapevine_events_dead_letters_total
// (events parked, a counter) and grapevine_events_dead_letters_held (events
// parked now, a gauge, recounted at start, after a park and after replay).
//
// No exception leaves the relay thread or the runner: both catch and log.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <thread>

#include "core/json_text.hpp"
#include "core/log.hpp"
#include "core/metrics.hpp"
#include "core/thread_name.hpp"
#include "events/events.hpp"

namespace gv::events {

namespace {

using stores::SqlCode;
using stores::SqlDatabase;
using stores::SqlRows;
using stores::SqlStatus;
using stores::SqlTransaction;
using stores::SqlValue;
using Clock = std::chrono::steady_clock;

constexpr int64_t kPruneChunk = 10000;
constexpr size_t kMaxDeadLetterPage = 1000;
constexpr size_t kApplyBatch = 128;  // events of a run applied in one transaction
constexpr auto kDrainWait = std::chrono::seconds(3);  // for done() during stop
constexpr auto kRecountEvery = std::chrono::seconds(1);  // backlog recount while a batch waits

constexpr const char* kHostTables = R"sql(
CREATE TABLE IF NOT EXISTS gv_outbox_seq (id INTEGER PRIMARY KEY, last_seq BIGINT NOT NULL);
INSERT INTO gv_outbox_seq(id, last_seq) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS gv_outbox (
  seq INTEGER PRIMARY KEY,
  id TEXT NOT NULL,
  type TEXT NOT NULL,
  key TEXT NOT NULL,
  time_ms BIGINT NOT NULL,
  source TEXT NOT NULL,
  schema_version INTEGER NOT NULL,
  payload TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS gv_consumed (
  event_id TEXT PRIMARY KEY,
  consumed_ms BIGINT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS gv_dead_letters (
  event_id TEXT PRIMARY KEY,
  envelope TEXT NOT NULL,
  attempts INTEGER NOT NULL,
  error TEXT NOT NULL,
  parked_ms BIGINT NOT NULL)
)sql";

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

SqlStatus invalid(std::string message) {
  return SqlStatus::failure(SqlCode::invalid, std::move(message));
}

int64_t int_at(const std::vector<SqlValue>& row, size_t i) {
  return stores::sql_int(row.at(i)).value_or(0);
}
std::string text_at(const std::vector<SqlValue>& row, size_t i) {
  auto t = stores::sql_text(row.at(i));
  return t ? std::string(*t) : std::string();
}

// Unsent rows of a source's outbox.
SqlStatus count_outbox(SqlTransaction& tx, int64_t* rows) {
  auto c = tx.query("SELECT count(*) FROM gv_outbox");
  if (!c.ok()) return c.status;
  *rows = int_at(c.value.rows.at(0), 0);
  return SqlStatus::success();
}

std::string escape_label(std::string_view v) { return Metrics::label_value(v); }

// Counters of one consuming plugin; shared with the metrics callbacks.
struct ConsumerStats {
  std::atomic<int64_t> consumed{0}, duplicates{0}, retries{0}, parked{0}, parked_now{0};
};

struct EngineStats {
  std::atomic<int64_t> relayed{0}, backlog{0}, lag{0};
  std::vector<std::pair<std::string, std::shared_ptr<ConsumerStats>>>
      consumers;  // set before start
};

}  // namespace

struct EventEngine::Impl {
  // The broker's answer to one produce().
  struct Done {
    std::mutex m;
    std::condition_variable cv;
    bool done = false, ok = false;
    std::string error;

    void set(bool answer_ok, const std::string& why) {
      {
        std::lock_guard lock(m);
        done = true;
        ok = answer_ok;
        error = why;
      }
      cv.notify_all();
    }
    // Whether answered yet; if so, *answer_ok and *why receive the answer.
    bool answered(bool* answer_ok, std::string* why) {
      std::lock_guard lock(m);
      *answer_ok = ok;
      *why = error;
      return done;
    }
  };
  // A batch handed to a broker that takes several at once (pipelined).
  struct InFlight {
    int64_t last_seq = 0, rows = 0;
    std::shared_ptr<Done> done;
  };
  struct Source {
    std::string plugin;
    SqlDatabase* db;
    Clock::time_point retry_at{};
    std::chrono::milliseconds backoff{0};
    int64_t backlog = 0;
    // Pipelined relay only: batches not yet answered, oldest first, and the
    // last seq handed to the broker (0: none since the last failure).
    std::deque<InFlight> in_flight;
    int64_t sent_seq = 0;
  };
  struct Consumer {
    std::string plugin;
    SqlDatabase* db;
    std::vector<std::string> patterns;
    EventHandler handler;
    std::shared_ptr<ConsumerStats> stats = std::make_shared<ConsumerStats>();
  };

  Broker& broker;
  EngineOptions options;
  Metrics* metrics;
  std::shared_ptr<EngineStats> stats = std::make_shared<EngineStats>();
  std::vector<Source> sources;
  std::map<std::string, std::unique_ptr<Consumer>> consumers;

  // Guards wake_relay, published_wake, lingering, stopping_relay and
  // stopping_consumers.
  std::mutex mutex;
  std::condition_variable relay_cv;
  std::condition_variable backoff_cv;
  bool wake_relay = false;
  bool published_wake = false;  // wake_relay set by a publish (relay_linger applies)
  bool lingering = false;       // in relay_linger's wait, before a pass

  // Makes the relay pass now instead of at its next poll; published: for
  // new outbox rows (the relay lingers for more), not a broker's answer.
  // Called after every commit that published (once per grouped request):
  // the relay is signalled only when it waits for a wake, not when it was
  // told already or lingers (it reads the outbox next in both cases), so
  // that most calls cost a lock and no futex call or context switch.
  void wake(bool published = false) {
    bool signal;
    {
      std::lock_guard lock(mutex);
      signal = !wake_relay && !lingering;
      wake_relay = true;
      if (published) published_wake = true;
    }
    if (signal) relay_cv.notify_one();
  }
  bool stopping_relay = false;
  std::atomic<bool> relay_stop{false};  // stopping_relay, readable without mutex
  bool stopping_consumers = false;
  bool started = false;
  bool metrics_registered = false;
  std::thread relay;
  Clock::time_point drain_deadline{};  // set for the last pass, at stop

  Impl(Broker& b, const EngineOptions& o, Metrics* m) : broker(b), options(o), metrics(m) {
    if (options.relay_batch < 1) options.relay_batch = 1;
    if (options.max_attempts < 1) options.max_attempts = 1;
    if (options.retry_backoff < std::chrono::milliseconds(1))
      options.retry_backoff = std::chrono::milliseconds(1);
    options.retry_backoff_max = std::max(options.retry_backoff_max, options.retry_backoff);
    if (options.relay_poll < std::chrono::milliseconds(1))
      options.relay_poll = std::chrono::milliseconds(1);
  }

  void register_metrics();
  void relay_loop();
  bool relay_pass(bool final_pass);  // true if some source has more to send now
  bool relay_source(Source& s, bool final_pass);
  bool relay_pipelined(Source& s, bool final_pass);
  bool relay_failed(Source& s, const std::string& why);
  // Reads up to relay_batch unsent rows after seq after, in seq order.
  SqlStatus read_outbox(Source& s, int64_t after, std::vector<Envelope>* batch, int64_t* last_seq,
                        int64_t* total);
  // Deletes the outbox rows up to seq last (the broker has them).
  // Joins the group commit under way rather than waiting to lead one: a
  // lead handed to this thread would hold up the writers queued behind
  // until the scheduler runs it.
  SqlStatus delete_sent(Source& s, int64_t last) {
    std::promise<SqlStatus> committed;
    auto result = committed.get_future();
    s.db->write_queued(
        [last](SqlTransaction& tx) {
          return tx.exec("DELETE FROM gv_outbox WHERE seq <= $1", {last}).status;
        },
        [&committed](SqlStatus status) { committed.set_value(std::move(status)); });
    return result.get();
  }
  void recount_backlog(Source& s);
  size_t run_consumer_run(Consumer& c, std::span<const Delivery> run);
  size_t apply_run(Consumer& c, std::span<const Delivery> run, SqlStatus* failure);
  bool run_consumer(Consumer& c, const Delivery& d, const SqlStatus& first_failure = {});
  SqlStatus apply(Consumer& c, const Envelope& e, int attempt, bool* duplicate);
  SqlStatus apply_in(Consumer& c, const Envelope& e, int attempt, SqlTransaction& tx,
                     bool* duplicate);
  SqlStatus park(Consumer& c, const Envelope& e, int attempts, const std::string& error);
  void recount_dead_letters(Consumer& c);
  // Waits d unless consumers are stopping; false when they are.
  bool backoff_wait(std::chrono::milliseconds d) {
    std::unique_lock lock(mutex);
    return !backoff_cv.wait_for(lock, d, [&] { return stopping_consumers; });
  }
  bool consumers_stopping() {
    std::lock_guard lock(mutex);
    return stopping_consumers;
  }
};

// ---- tables and publish ----

// Events published on this thread so far: a consumer's handler may publish
// (cascading events), and the runner wakes the relay once its transaction
// has committed, not before, when the relay could not see the rows yet.
// Read before and after the handler inside the transaction's work, which
// runs on the thread of the group commit's leader.
thread_local int64_t published_on_thread = 0;

stores::SqlStatus EventEngine::prepare_database(stores::SqlDatabase& db) {
  return db.write([](SqlTransaction& tx) -> SqlStatus {
    // Tables of an earlier shape (see the top of this file): moved aside,
    // made anew below, their rows copied over.
    auto old = tx.query(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND ("
        "(name = 'gv_outbox' AND sql NOT LIKE '%seq INTEGER PRIMARY KEY%') OR "
        "(name = 'gv_consumed' AND sql NOT LIKE '%WITHOUT ROWID%'))");
    if (!old.ok()) return old.status;
    std::vector<std::string> rebuilt;
    for (auto& row : old.value.rows) {
      rebuilt.push_back(text_at(row, 0));
      auto r = tx.exec("ALTER TABLE " + rebuilt.back() + " RENAME TO " + rebuilt.back() + "_old");
      if (!r.ok()) return r.status;
    }
    if (SqlStatus s = tx.exec_script(kHostTables); !s.ok()) return s;
    for (const auto& table : rebuilt) {
      // Both shapes have the same columns in the same order.
      auto copied = tx.exec("INSERT INTO " + table + " SELECT * FROM " + table + "_old");
      if (!copied.ok()) return copied.status;
      auto dropped = tx.exec("DROP TABLE " + table + "_old");
      if (!dropped.ok()) return dropped.status;
      log::info("events: host table rebuilt in its current shape",
                {{"table", table}, {"rows", copied.value}});
    }
    return SqlStatus::success();
  });
}

namespace {

// The outbox counter of one write transaction (SqlTransaction::deferred):
// the last seq given in it, and the one its first event stored in
// gv_outbox_seq; before the COMMIT the row is set to the last, if later
// events counted on. 0: no event yet.
struct OutboxCounter final : stores::SqlTransaction::Deferred {
  int64_t last = 0;
  int64_t stored = 0;
  stores::SqlStatus before_commit(stores::SqlTransaction& tx) override {
    if (last == stored) return stores::SqlStatus::success();
    return tx.exec("UPDATE gv_outbox_seq SET last_seq = $1 WHERE id = 1", {last}).status;
  }
};
constexpr char kOutboxCounterKey = 0;  // its key: the address

}  // namespace

stores::SqlStatus EventEngine::publish(stores::SqlTransaction& tx, std::string_view source,
                                       std::string_view type, std::string_view key,
                                       std::string_view payload_json, int schema_version,
                                       std::string* id) {
  if (!valid_type(type))
    return invalid("event type \"" + std::string(type.substr(0, kMaxTypeBytes)) +
                   "\" is not valid: segments of [a-z0-9_] separated by '.', at most " +
                   std::to_string(kMaxTypeBytes) + " bytes");
  if (key.empty() || key.size() > kMaxKeyBytes)
    return invalid("event key must be 1.." + std::to_string(kMaxKeyBytes) + " bytes, got " +
                   std::to_string(key.size()));
  if (source.empty()) return invalid("event source (the publishing plugin) is empty");
  if (schema_version < 1)
    return invalid("event schema_version must be at least 1, got " +
                   std::to_string(schema_version));
  if (payload_json.size() > kMaxPayloadBytes)
    return invalid("event payload is " + std::to_string(payload_json.size()) +
                   " bytes, more than the limit of " + std::to_string(kMaxPayloadBytes));
  // Checked without building it.
  if (!is_json_object(payload_json)) return invalid("event payload must be a JSON object");

  // The first event of a transaction takes the counter row (UPDATE, which
  // also holds it against other writers until the transaction ends) and its
  // seq from it; the transaction's later ones (the other works of a group
  // commit) count on in memory, and the counter row is set once, before the
  // COMMIT (OutboxCounter). Two plain statements rather than UPDATE ...
  // RETURNING, which SQLite runs through a temporary table.
  auto* counter = static_cast<OutboxCounter*>(
      tx.deferred(&kOutboxCounterKey, [] { return std::make_unique<OutboxCounter>(); }));
  if (!counter) return invalid("publish() needs a write transaction");
  std::string event_id = new_event_id();
  // The row's values, after its seq when given.
  auto values = [&](std::optional<int64_t> seq) {
    std::vector<stores::SqlValue> v;
    v.reserve(8);
    if (seq) v.emplace_back(*seq);
    v.emplace_back(event_id);
    v.emplace_back(std::string(type));
    v.emplace_back(std::string(key));
    v.emplace_back(now_ms());
    v.emplace_back(std::string(source));
    v.emplace_back(static_cast<int64_t>(schema_version));
    v.emplace_back(std::string(payload_json));
    return v;
  };
  if (counter->last == 0) {
    auto bumped = tx.exec("UPDATE gv_outbox_seq SET last_seq = last_seq + 1 WHERE id = 1");
    if (!bumped.ok()) return bumped.status;
    if (bumped.value == 0)
      return invalid("the database has no event outbox: call EventEngine::prepare_database first");
    auto seq = tx.insert(
        "INSERT INTO gv_outbox(seq, id, type, key, time_ms, source, schema_version, payload) "
        "SELECT last_seq, $1, $2, $3, $4, $5, $6, $7 FROM gv_outbox_seq WHERE id = 1",
        values(std::nullopt));
    if (!seq.ok()) return seq.status;
    // seq is gv_outbox's rowid (INTEGER PRIMARY KEY: prepare_database
    // rebuilds older shapes before any publish), which insert() gives.
    counter->last = counter->stored = seq.value;
  } else {
    auto r = tx.exec(
        "INSERT INTO gv_outbox(seq, id, type, key, time_ms, source, schema_version, payload) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        values(counter->last + 1));
    if (!r.ok()) return r.status;
    ++counter->last;  // kept if this part is undone: a gap in seq, never a repeat
  }
  if (id) *id = std::move(event_id);
  ++published_on_thread;
  return SqlStatus::success();
}

// ---- engine ----

EventEngine::EventEngine(Broker& broker, const EngineOptions& options, Metrics* metrics)
    : impl_(std::make_unique<Impl>(broker, options, metrics)) {}

EventEngine::~EventEngine() { stop(); }

void EventEngine::add_source(const std::string& plugin, stores::SqlDatabase& db) {
  if (impl_->started) {
    log::error("events: add_source after start is ignored", {{"plugin", plugin}});
    return;
  }
  impl_->sources.push_back({plugin, &db});
}

void EventEngine::add_consumer(const std::string& plugin, stores::SqlDatabase& db,
                               std::vector<std::string> patterns, EventHandler handler) {
  if (impl_->started) {
    log::error("events: add_consumer after start is ignored", {{"plugin", plugin}});
    return;
  }
  if (impl_->consumers.count(plugin)) {
    log::error("events: a plugin registers as consumer once; the second is ignored",
               {{"plugin", plugin}});
    return;
  }
  for (auto& p : patterns)
    if (!valid_pattern(p))
      log::warn("events: pattern matches nothing", {{"plugin", plugin}, {"pattern", p}});
  auto c = std::make_unique<Impl::Consumer>();
  c->plugin = plugin;
  c->db = &db;
  c->patterns = patterns;
  c->handler = std::move(handler);
  Impl::Consumer* raw = c.get();
  impl_->stats->consumers.emplace_back(plugin, c->stats);
  impl_->consumers.emplace(plugin, std::move(c));
  Impl* impl = impl_.get();
  impl_->broker.subscribe(plugin, std::move(patterns),
                          [impl, raw](std::span<const Delivery> run) {
                            return impl->run_consumer_run(*raw, run);
                          });
}

bool EventEngine::start(std::string* error) {
  Impl& m = *impl_;
  if (m.started) {
    if (error) *error = "the event engine is already started";
    return false;
  }
  m.register_metrics();
  for (auto& [name, c] : m.consumers) m.recount_dead_letters(*c);
  {
    std::lock_guard lock(m.mutex);
    m.stopping_relay = false;
    m.stopping_consumers = false;
  }
  m.relay_stop = false;
  if (!m.broker.start(error)) return false;
  m.started = true;
  m.relay = std::thread([&m] {
    name_this_thread("gv-relay");
    m.relay_loop();
  });
  return true;
}

void EventEngine::notify_published() { impl_->wake(true); }

void EventEngine::stop() {
  Impl& m = *impl_;
  if (!m.started) return;
  // Consumers stop with the relay: a handler waiting for a retry gives up
  // now (its event is delivered again after the restart). With the direct
  // broker the relay's last pass waits for consumers, which must not keep
  // it waiting for a backoff.
  {
    std::lock_guard lock(m.mutex);
    m.stopping_relay = true;
    m.stopping_consumers = true;
  }
  m.relay_stop = true;
  m.relay_cv.notify_all();
  m.backoff_cv.notify_all();
  if (m.relay.joinable()) m.relay.join();  // after its last drain pass
  m.broker.stop();
  m.started = false;
}

int64_t EventEngine::outbox_backlog() const { return impl_->stats->backlog.load(); }

BrokerStats EventEngine::broker_stats() const { return impl_->broker.stats(); }

bool EventEngine::has_consumer(const std::string& plugin) const {
  return impl_->consumers.count(plugin) != 0;
}

// ---- metrics ----

void EventEngine::Impl::register_metrics() {
  if (!metrics || metrics_registered) return;
  metrics_registered = true;
  auto st = stats;
  auto one = [st](std::atomic<int64_t> EngineStats::*field) {
    return [st, field]() -> Metrics::Samples {
      return {{"", static_cast<double>(((*st).*field).load())}};
    };
  };
  metrics->add_family("grapevine_events_relayed_total", "Events moved from outboxes to the broker.",
                      "counter", one(&EngineStats::relayed));
  metrics->add_family("grapevine_events_outbox_backlog",
                      "Unsent outbox rows over every source, as of the last relay pass.", "gauge",
                      one(&EngineStats::backlog));
  metrics->add_family("grapevine_events_consumer_lag",
                      "Events in the broker not yet consumed, summed over consumer groups.",
                      "gauge", one(&EngineStats::lag));
  auto per_plugin = [st](std::atomic<int64_t> ConsumerStats::*field) {
    return [st, field]() -> Metrics::Samples {
      Metrics::Samples out;
      for (auto& [plugin, cs] : st->consumers)
        out.emplace_back("plugin=\"" + escape_label(plugin) + "\"",
                         static_cast<double>(((*cs).*field).load()));
      return out;
    };
  };
  metrics->add_family("grapevine_events_consumed_total",
                      "Events applied by a consuming plugin's handler.", "counter",
                      per_plugin(&ConsumerStats::consumed));
  metrics->add_family("grapevine_events_duplicates_total",
                      "Events delivered again and skipped (already consumed).", "counter",
                      per_plugin(&ConsumerStats::duplicates));
  metrics->add_family("grapevine_events_retries_total",
                      "Failed handler attempts (each one is retried or parked).", "counter",
                      per_plugin(&ConsumerStats::retries));
  metrics->add_family("grapevine_events_dead_letters_total",
                      "Events parked in gv_dead_letters after max_attempts.", "counter",
                      per_plugin(&ConsumerStats::parked));
  metrics->add_family("grapevine_events_dead_letters_held", "Events parked now, awaiting replay.",
                      "gauge", per_plugin(&ConsumerStats::parked_now));
}

// ---- relay ----

void EventEngine::Impl::relay_loop() {
  bool woken = false;  // by a publish, after an idle wait
  for (;;) {
    if (woken && options.relay_linger.count() > 0) {
      std::unique_lock lock(mutex);
      lingering = true;
      relay_cv.wait_for(lock, options.relay_linger, [&] { return stopping_relay; });
      lingering = false;
    }
    bool stopping;
    {
      std::lock_guard lock(mutex);
      stopping = stopping_relay;
      wake_relay = false;
      published_wake = false;
    }
    bool more = false;
    if (stopping) drain_deadline = Clock::now() + kDrainWait;  // for every source at once
    try {
      more = relay_pass(stopping);
      stats->lag = broker.stats().consumer_lag;
    } catch (const std::exception& e) {
      log::error("events: relay pass failed", {{"error", e.what()}});
    } catch (...) {
      log::error("events: relay pass failed", {{"error", "unknown exception"}});
    }
    if (stopping) return;
    if (more) continue;
    // Sleep until a publish, relay_poll, or the earliest retry of a source.
    auto until = Clock::now() + options.relay_poll;
    for (auto& s : sources)
      if (s.retry_at > Clock::now()) until = std::min(until, s.retry_at);
    std::unique_lock lock(mutex);
    woken = relay_cv.wait_until(lock, until, [&] { return wake_relay || stopping_relay; }) &&
            published_wake && !stopping_relay;
  }
}

bool EventEngine::Impl::relay_pass(bool final_pass) {
  bool more = false;
  int64_t backlog = 0;
  for (auto& s : sources) {
    // The last pass at stop skips a source in backoff: its broker just
    // failed (or did not answer), and its rows wait in the outbox for the
    // next start rather than hold up the shutdown.
    if (Clock::now() >= s.retry_at) {
      bool sent = broker.max_in_flight() > 1 ? relay_pipelined(s, final_pass)
                                             : relay_source(s, final_pass);
      if (sent) more = true;
    }
    backlog += s.backlog;
  }
  stats->backlog = backlog;
  return more;
}

// The source waits retry_backoff (doubling up to retry_backoff_max) before
// its next try. Returns false (nothing more to send now).
bool EventEngine::Impl::relay_failed(Source& s, const std::string& why) {
  s.backoff = s.backoff.count() == 0 ? options.retry_backoff
                                     : std::min(s.backoff * 2, options.retry_backoff_max);
  s.retry_at = Clock::now() + s.backoff;
  log::warn("events: relay failed; outbox rows kept for a retry",
            {{"plugin", s.plugin},
             {"error", why},
             {"retry_in_ms", static_cast<int64_t>(s.backoff.count())}});
  return false;
}

SqlStatus EventEngine::Impl::read_outbox(Source& s, int64_t after, std::vector<Envelope>* batch,
                                         int64_t* last_seq, int64_t* total) {
  const int64_t limit = options.relay_batch;
  return s.db->read([&](SqlTransaction& tx) -> SqlStatus {
    auto r = tx.query(
        "SELECT seq, id, type, key, time_ms, source, schema_version, payload FROM gv_outbox "
        "WHERE seq > $1 ORDER BY seq LIMIT $2",
        {after, limit});
    if (!r.ok()) return r.status;
    for (auto& row : r.value.rows) {
      Envelope e;
      *last_seq = int_at(row, 0);
      e.id = text_at(row, 1);
      e.type = text_at(row, 2);
      e.key = text_at(row, 3);
      e.time_ms = int_at(row, 4);
      e.source = text_at(row, 5);
      e.schema_version = static_cast<int>(int_at(row, 6));
      e.payload = text_at(row, 7);
      batch->push_back(std::move(e));
    }
    *total = static_cast<int64_t>(batch->size());
    if (*total == limit) return count_outbox(tx, total);  // count the rest only when there is one
    return SqlStatus::success();
  });
}

// One batch of one source, waiting for the broker's answer. True when the
// batch was full and was sent (more may be waiting).
bool EventEngine::Impl::relay_source(Source& s, bool final_pass) {
  const int64_t limit = options.relay_batch;
  std::vector<Envelope> batch;
  int64_t last_seq = 0, total = 0;
  SqlStatus st = read_outbox(s, 0, &batch, &last_seq, &total);
  if (!st.ok()) return relay_failed(s, "cannot read the outbox: " + st.message);
  s.backlog = total;
  if (batch.empty()) {
    s.backoff = std::chrono::milliseconds(0);
    return false;
  }

  auto done = std::make_shared<Done>();
  const auto n = static_cast<int64_t>(batch.size());
  broker.produce(std::move(batch),
                 [done](bool ok, const std::string& error) { done->set(ok, error); });
  {
    // Wait for done; once stop() is under way, at most kDrainWait more (the
    // rows stay in the outbox if the broker never answers).
    auto deadline = final_pass ? drain_deadline : Clock::time_point::max();
    auto recount_at = Clock::now() + kRecountEvery;
    std::unique_lock lock(done->m);
    while (!done->done) {
      done->cv.wait_for(lock, std::chrono::milliseconds(100));
      if (!done->done && Clock::now() >= recount_at) {
        // A broker that does not answer (Kafka away) holds this batch; the
        // backlog gauge still shows the outbox growing behind it.
        lock.unlock();
        recount_backlog(s);
        recount_at = Clock::now() + kRecountEvery;
        lock.lock();
      }
      if (deadline == Clock::time_point::max() && relay_stop.load())
        deadline = Clock::now() + kDrainWait;
      if (!done->done && Clock::now() >= deadline)
        return relay_failed(s, "the broker did not confirm the batch before stop");
    }
    if (!done->ok) return relay_failed(s, done->error);
  }
  SqlStatus del = delete_sent(s, last_seq);
  stats->relayed += n;
  if (!del.ok())
    return relay_failed(
        s, "relayed, but cannot delete from the outbox (will send again): " + del.message);
  s.backoff = std::chrono::milliseconds(0);
  s.backlog = std::max<int64_t>(0, total - n);
  return n == limit;
}

// The relay for a broker that takes several batches of a source at once
// (Broker::max_in_flight): each pass deletes the rows of the answered
// batches, oldest first and up to the first unanswered one, then hands the
// broker the rows after the last ones sent if fewer than max_in_flight
// batches are out. An answer wakes the relay. A refused batch sends the
// source back to its first row left, after a backoff (the later batches
// are sent again too; consumers drop what they had). True when it sent a
// full batch and may send another at once.
bool EventEngine::Impl::relay_pipelined(Source& s, bool final_pass) {
  int64_t delete_to = 0, relayed = 0;
  std::string refused;
  for (;;) {
    while (!s.in_flight.empty()) {
      bool ok = false;
      std::string error;
      if (!s.in_flight.front().done->answered(&ok, &error)) break;
      if (!ok) {
        refused = error;
        break;
      }
      delete_to = s.in_flight.front().last_seq;
      relayed += s.in_flight.front().rows;
      s.in_flight.pop_front();
      s.backoff = std::chrono::milliseconds(0);
    }
    // At stop, what is out gets until drain_deadline (one for all sources).
    if (!final_pass || s.in_flight.empty() || !refused.empty() ||
        Clock::now() >= drain_deadline)
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (delete_to > 0) {
    SqlStatus del = delete_sent(s, delete_to);
    stats->relayed += relayed;
    // The next delete covers these rows too, or a restart sends them again.
    if (!del.ok())
      return relay_failed(s, "relayed, but cannot delete from the outbox: " + del.message);
  }
  if (final_pass) {
    // Consumers are stopping: what was not applied waits in the outbox.
    if (!s.in_flight.empty() || !refused.empty())
      log::info("events: unapplied events stay in the outbox for the next start",
                {{"plugin", s.plugin}});
    s.in_flight.clear();
    s.sent_seq = 0;  // a later start() reads the outbox from its first row
    return false;
  }
  if (!refused.empty()) {
    s.in_flight.clear();  // their answers, when they come, go nowhere
    s.sent_seq = 0;
    return relay_failed(s, refused);
  }
  int64_t out = 0;
  for (auto& f : s.in_flight) out += f.rows;
  if (s.in_flight.size() >= static_cast<size_t>(broker.max_in_flight())) {
    s.backlog = std::max(s.backlog, out);
    return false;  // woken by an answer
  }
  std::vector<Envelope> batch;
  int64_t last_seq = 0, total = 0;
  SqlStatus st = read_outbox(s, s.sent_seq, &batch, &last_seq, &total);
  if (!st.ok()) return relay_failed(s, "cannot read the outbox: " + st.message);
  const bool full = static_cast<int64_t>(batch.size()) == options.relay_batch;
  s.backlog = full ? total : out + total;  // a full read counted the whole outbox
  if (batch.empty()) {
    if (s.in_flight.empty()) s.backoff = std::chrono::milliseconds(0);
    return false;
  }
  InFlight f;
  f.last_seq = last_seq;
  f.rows = static_cast<int64_t>(batch.size());
  f.done = std::make_shared<Done>();
  s.in_flight.push_back(f);
  s.sent_seq = last_seq;
  broker.produce(std::move(batch), [this, done = f.done](bool ok, const std::string& error) {
    done->set(ok, error);
    wake();
  });
  return full && s.in_flight.size() < static_cast<size_t>(broker.max_in_flight());
}

void EventEngine::Impl::recount_backlog(Source& s) {
  int64_t rows = 0;
  if (!s.db->read([&](SqlTransaction& tx) { return count_outbox(tx, &rows); }).ok()) return;
  int64_t others = 0;
  for (auto& o : sources)
    if (&o != &s) others += o.backlog;
  s.backlog = rows;
  stats->backlog = others + rows;
}

int64_t EventEngine::prune_consumed() {
  const int64_t cutoff =
      now_ms() - std::chrono::duration_cast<std::chrono::milliseconds>(
                     impl_->options.consumed_retention)
                     .count();
  const std::string floor = event_id_floor(cutoff);
  int64_t total = 0;
  for (auto& [name, c] : impl_->consumers) {
    for (int round = 0; round < 1000; ++round) {
      int64_t deleted = 0;
      SqlStatus s = c->db->write([&](SqlTransaction& tx) -> SqlStatus {
        auto r = tx.exec(
            "DELETE FROM gv_consumed WHERE event_id IN "
            "(SELECT event_id FROM gv_consumed WHERE event_id < $1 AND consumed_ms < $2 "
            "LIMIT $3)",
            {floor, cutoff, kPruneChunk});
        deleted = r.value;
        return r.status;
      });
      if (!s.ok()) {
        log::warn("events: cannot prune gv_consumed", {{"plugin", name}, {"error", s.message}});
        break;
      }
      total += deleted;
      if (deleted < kPruneChunk) break;
    }
  }
  return total;
}

// ---- consumer runner ----

// The effect of e in tx: recorded as consumed (or found already consumed:
// duplicate) and handled.
SqlStatus EventEngine::Impl::apply_in(Consumer& c, const Envelope& e, int attempt,
                                      SqlTransaction& tx, bool* duplicate) {
  *duplicate = false;
  auto r = tx.exec(
      "INSERT INTO gv_consumed(event_id, consumed_ms) VALUES ($1, $2) "
      "ON CONFLICT (event_id) DO NOTHING",
      {e.id, now_ms()});
  if (!r.ok()) return r.status;
  if (r.value == 0) {
    *duplicate = true;
    return SqlStatus::success();
  }
  SqlStatus h = c.handler(e, attempt, tx);
  if (!h.ok()) {
    if (h.message.empty())
      h.message = "the handler failed (" + std::string(to_string(h.code)) + ")";
    return h;
  }
  return tx.exec("DELETE FROM gv_dead_letters WHERE event_id = $1", {e.id}).status;
}

namespace {

// A handler's exception as its failure.
SqlStatus thrown_failure() {
  try {
    throw;
  } catch (const std::exception& ex) {
    return invalid(std::string("the handler threw: ") + ex.what());
  } catch (...) {
    return invalid("the handler threw an unknown exception");
  }
}

// Events published inside a consumer's transaction: counted inside the
// work, which group commit may run on another thread than the caller's.
struct PublishWatch {
  explicit PublishWatch(bool& published) : published_(published), before_(published_on_thread) {}
  ~PublishWatch() { published_ = published_on_thread != before_; }
  bool& published_;
  const int64_t before_;
};

}  // namespace

SqlStatus EventEngine::Impl::apply(Consumer& c, const Envelope& e, int attempt, bool* duplicate) {
  *duplicate = false;
  bool published = false;
  try {
    SqlStatus st = c.db->write([&](SqlTransaction& tx) -> SqlStatus {
      PublishWatch watch(published);
      return apply_in(c, e, attempt, tx, duplicate);
    });
    if (st.ok() && published) wake(true);
    return st;
  } catch (...) {
    *duplicate = false;
    return thrown_failure();
  }
}

// Applies events of run, first attempts, in one transaction, each in its
// own savepoint, up to the first that fails: those before it are committed
// together. Returns how many were applied, and in failure why the next one
// failed (ok when all were). When the transaction itself fails (busy, the
// commit), none was applied and failure is its status.
size_t EventEngine::Impl::apply_run(Consumer& c, std::span<const Delivery> run,
                                    SqlStatus* failure) {
  size_t applied = 0, duplicates = 0;
  bool published = false;
  *failure = {};
  SqlStatus st = c.db->write([&](SqlTransaction& tx) -> SqlStatus {
    PublishWatch watch(published);
    applied = duplicates = 0;
    for (const Delivery& d : run) {
      bool dup = false;
      SqlStatus s;
      try {
        s = tx.nested([&](SqlTransaction& t) { return apply_in(c, d.event, 1, t, &dup); });
      } catch (...) {
        s = thrown_failure();
      }
      if (!s.ok()) {
        *failure = std::move(s);
        break;
      }
      ++applied;
      if (dup) ++duplicates;
    }
    return SqlStatus::success();
  });
  if (!st.ok()) {
    *failure = std::move(st);
    return 0;
  }
  if (published) wake(true);
  c.stats->duplicates += static_cast<int64_t>(duplicates);
  c.stats->consumed += static_cast<int64_t>(applied - duplicates);
  return applied;
}

// The broker's handler of a consuming plugin: applies a run of events in
// transactions of up to kApplyBatch, and sends an event that fails through
// run_consumer's retries and parking before going on with the rest.
size_t EventEngine::Impl::run_consumer_run(Consumer& c, std::span<const Delivery> run) {
  size_t done = 0;
  while (done < run.size()) {
    if (consumers_stopping()) return done;
    SqlStatus failure;
    try {
      done += apply_run(c, run.subspan(done, std::min(run.size() - done, kApplyBatch)), &failure);
    } catch (...) {
      failure = thrown_failure();  // outside the handler (allocation): an attempt like others
    }
    if (failure.ok()) continue;
    if (!run_consumer(c, run[done], failure)) return done;
    ++done;
  }
  return done;
}

bool EventEngine::Impl::run_consumer(Consumer& c, const Delivery& d,
                                     const SqlStatus& first_failure) {
  try {
    const Envelope& e = d.event;
    auto backoff = options.retry_backoff;
    std::string last_error;
    for (int attempt = 1; attempt <= options.max_attempts; ++attempt) {
      bool duplicate = false;
      // A first attempt already made in a run (apply_run) is not repeated.
      SqlStatus s = attempt == 1 && !first_failure.ok() ? first_failure
                                                         : apply(c, e, attempt, &duplicate);
      if (s.ok()) {
        if (duplicate)
          ++c.stats->duplicates;
        else
          ++c.stats->consumed;
        return true;
      }
      last_error = std::string(to_string(s.code)) + ": " + s.message;
      ++c.stats->retries;
      log::warn("events: handler failed", {{"plugin", c.plugin},
                                           {"event_id", e.id},
                                           {"type", e.type},
                                           {"attempt", attempt},
                                           {"error", last_error}});
      if (attempt == options.max_attempts) break;
      if (!backoff_wait(backoff)) return false;  // stopping: redelivered after restart
      backoff = std::min(backoff * 2, options.retry_backoff_max);
    }
    // Park, and keep trying to park: the event must not be dropped.
    for (;;) {
      SqlStatus p;
      try {
        p = park(c, e, options.max_attempts, last_error);
      } catch (...) {
        p = invalid("parking threw");
      }
      if (p.ok()) break;
      log::error("events: cannot park a failed event; retrying",
                 {{"plugin", c.plugin}, {"event_id", e.id}, {"error", p.message}});
      if (!backoff_wait(backoff)) return false;
      backoff = std::min(backoff * 2, options.retry_backoff_max);
    }
    ++c.stats->parked;
    log::error("events: event parked in gv_dead_letters after max_attempts",
               {{"plugin", c.plugin},
                {"event_id", e.id},
                {"type", e.type},
                {"attempts", options.max_attempts},
                {"error", last_error}});
    recount_dead_letters(c);
    return true;
  } catch (const std::exception& ex) {  // logging or allocation: leave it for redelivery
    log::error("events: consumer runner failed", {{"plugin", c.plugin}, {"error", ex.what()}});
    throw;
  }
}

SqlStatus EventEngine::Impl::park(Consumer& c, const Envelope& e, int attempts,
                                  const std::string& error) {
  const std::string envelope = e.to_json().dump();
  return c.db->write([&](SqlTransaction& tx) {
    return tx
        .exec(
            "INSERT INTO gv_dead_letters(event_id, envelope, attempts, error, parked_ms) "
            "VALUES ($1, $2, $3, $4, $5) "
            "ON CONFLICT (event_id) DO UPDATE SET envelope = excluded.envelope, "
            "attempts = excluded.attempts, error = excluded.error, parked_ms = excluded.parked_ms",
            {e.id, envelope, static_cast<int64_t>(attempts), error, now_ms()})
        .status;
  });
}

void EventEngine::Impl::recount_dead_letters(Consumer& c) {
  int64_t n = 0;
  SqlStatus s = c.db->read([&](SqlTransaction& tx) -> SqlStatus {
    auto r = tx.query("SELECT count(*) FROM gv_dead_letters");
    if (!r.ok()) return r.status;
    n = int_at(r.value.rows.at(0), 0);
    return SqlStatus::success();
  });
  if (s.ok()) c.stats->parked_now = n;
}

// ---- admin ----

stores::SqlResult<std::vector<DeadLetter>> EventEngine::dead_letters(const std::string& plugin,
                                                                     size_t limit,
                                                                     const std::string& after) {
  stores::SqlResult<std::vector<DeadLetter>> out;
  auto it = impl_->consumers.find(plugin);
  if (it == impl_->consumers.end()) {
    out.status = invalid("no consuming plugin named \"" + plugin + "\"");
    return out;
  }
  limit = std::clamp<size_t>(limit, 1, kMaxDeadLetterPage);
  out.status = it->second->db->read([&](SqlTransaction& tx) -> SqlStatus {
    auto r = tx.query(
        "SELECT event_id, envelope, attempts, error, parked_ms FROM gv_dead_letters "
        "WHERE event_id > $1 ORDER BY event_id LIMIT $2",
        {after, static_cast<int64_t>(limit)});
    if (!r.ok()) return r.status;
    for (auto& row : r.value.rows) {
      DeadLetter d;
      auto j = nlohmann::json::parse(text_at(row, 1), nullptr, false);
      auto e = j.is_discarded() ? std::nullopt : Envelope::from_json(j);
      if (e)
        d.event = std::move(*e);
      else
        d.event.id = text_at(row, 0);  // unreadable envelope: show at least the id
      d.attempts = static_cast<int>(int_at(row, 2));
      d.error = text_at(row, 3);
      d.parked_ms = int_at(row, 4);
      out.value.push_back(std::move(d));
    }
    return SqlStatus::success();
  });
  if (!out.ok()) out.value.clear();
  return out;
}

stores::SqlStatus EventEngine::replay(const std::string& plugin, const std::string& event_id,
                                      int* replayed, int* failed) {
  if (replayed) *replayed = 0;
  if (failed) *failed = 0;
  auto it = impl_->consumers.find(plugin);
  if (it == impl_->consumers.end()) return invalid("no consuming plugin named \"" + plugin + "\"");
  Impl::Consumer& c = *it->second;

  // The chosen dead letters, oldest first, read page by page.
  std::vector<DeadLetter> chosen;
  if (!event_id.empty()) {
    std::vector<DeadLetter> one;
    SqlStatus s = c.db->read([&](SqlTransaction& tx) -> SqlStatus {
      auto r = tx.query("SELECT envelope, attempts FROM gv_dead_letters WHERE event_id = $1",
                        {event_id});
      if (!r.ok()) return r.status;
      for (auto& row : r.value.rows) {
        auto j = nlohmann::json::parse(text_at(row, 0), nullptr, false);
        auto e = j.is_discarded() ? std::nullopt : Envelope::from_json(j);
        if (!e) return invalid("dead letter " + event_id + " has an unreadable envelope");
        DeadLetter d;
        d.event = std::move(*e);
        d.attempts = static_cast<int>(int_at(row, 1));
        one.push_back(std::move(d));
      }
      return SqlStatus::success();
    });
    if (!s.ok()) return s;
    if (one.empty())
      return invalid("event " + event_id + " is not parked for plugin \"" + plugin + "\"");
    chosen = std::move(one);
  } else {
    std::string after;
    for (;;) {
      auto page = dead_letters(plugin, kMaxDeadLetterPage, after);
      if (!page.ok()) return page.status;
      if (page.value.empty()) break;
      after = page.value.back().event.id;
      for (auto& d : page.value) chosen.push_back(std::move(d));
      if (page.value.size() < kMaxDeadLetterPage) break;
    }
  }

  SqlStatus last_failure;
  for (auto& d : chosen) {
    const int attempt = d.attempts + 1;
    bool duplicate = false;
    SqlStatus s = impl_->apply(c, d.event, attempt, &duplicate);
    if (s.ok() && duplicate) {
      // Applied before (redelivered and consumed after it was parked):
      // only the dead letter is left to drop.
      s = c.db->write([&](SqlTransaction& tx) {
        return tx.exec("DELETE FROM gv_dead_letters WHERE event_id = $1", {d.event.id}).status;
      });
    }
    if (s.ok()) {
      if (replayed) ++*replayed;
      if (!duplicate) ++c.stats->consumed;
      continue;
    }
    if (failed) ++*failed;
    ++c.stats->retries;
    const std::string error = std::string(to_string(s.code)) + ": " + s.message;
    log::warn("events: replayed event failed again",
              {{"plugin", plugin}, {"event_id", d.event.id}, {"error", error}});
    SqlStatus u = c.db->write([&](SqlTransaction& tx) {
      return tx
          .exec("UPDATE gv_dead_letters SET attempts = $2, error = $3 WHERE event_id = $1",
                {d.event.id, static_cast<int64_t>(attempt), error})
          .status;
    });
    if (!u.ok()) last_failure = u;
  }
  impl_->recount_dead_letters(c);
  return last_failure;
}

}  // namespace gv::events
