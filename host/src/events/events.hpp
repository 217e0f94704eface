// Events: the envelope, the broker interface and the engine that moves
// events from each plugin's outbox to the plugins that consume them.
//
// Flow (see ARCHITECTURE.md, Events):
//   1. A plugin's DAL publishes inside its own write transaction:
//      EventEngine::publish() appends an outbox row in that transaction.
//   2. After the commit the host calls notify_published(); the relay reads
//      unsent outbox rows of every source database in outbox order, hands
//      them to the Broker in batches, and deletes them from the outbox only
//      when the broker reports them durably stored.
//   3. The Broker delivers each event to every consumer group (one group per
//      consuming plugin) whose patterns match its type, in order per key
//      (partition = hash(key) % partitions), at least once.
//   4. The consumer runner applies an event in one write transaction on the
//      consumer's database: it records the event id in gv_consumed and runs
//      the plugin's handler; a duplicate (id already recorded) is skipped.
//      A failing handler is retried with exponential backoff, blocking its
//      partition (order per key holds); after max_attempts the event is
//      parked in gv_dead_letters and the partition moves on.
//
// Nothing here names SQLite or librdkafka: sources and consumers are
// gv::stores::SqlDatabase, and Kafka is another Broker.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "stores/sql.hpp"

namespace gv {
class Metrics;
}

namespace gv::events {

// ---- envelope ----

struct Envelope {
  std::string id;       // sortable unique id: 26-char ULID (Crockford base32)
  std::string type;     // "post.created"
  std::string key;      // ordering key ("post:123"); order holds per key
  int64_t time_ms = 0;  // publish time, Unix milliseconds
  std::string source;   // publishing plugin
  int schema_version = 1;
  std::string payload;  // a JSON document (object), as text

  nlohmann::json to_json() const;  // {"id","type","key","time","source","schema_version","payload"}
  // nullopt when j lacks a member or has a wrong type.
  static std::optional<Envelope> from_json(const nlohmann::json& j);
};

// Bounds publish() enforces (and from_json does not: a broker hands back
// what was published).
constexpr size_t kMaxKeyBytes = 256;
constexpr size_t kMaxPayloadBytes = 256 * 1024;
constexpr size_t kMaxTypeBytes = 128;

// A new ULID: 48-bit millisecond time + 80 random bits, monotonic within
// the process (same millisecond: previous + 1), so ids sort by creation.
std::string new_event_id();

// The time part of the ids made in millisecond time_ms (10 characters):
// every id made earlier sorts before it, every id made then or later after.
std::string event_id_floor(int64_t time_ms);

// Event type patterns: "post.created" (exact), "post.*" (one or more
// segments after "post."), "*" (everything). Segments are [a-z0-9_]+
// separated by '.'. valid_pattern() checks the form; valid_type() a type.
bool valid_pattern(std::string_view pattern);
bool valid_type(std::string_view type);
bool type_matches(std::string_view pattern, std::string_view type);

// The partition of key among partitions (> 0): FNV-1a 64 of the key's bytes
// modulo partitions. Stable across processes, versions and platforms: the
// in-process log relies on it after a restart.
uint64_t fnv1a64(std::string_view bytes);
int partition_of(std::string_view key, int partitions);

// ---- broker interface (shaped for Kafka) ----

// One event handed to a consumer group.
struct Delivery {
  Envelope event;
  int partition = 0;
  int64_t offset = 0;
};

struct BrokerStats {
  std::string kind = "in-process";  // "in-process", "direct" or "kafka"
  bool connected = true;      // Kafka: the cluster is reachable
  int brokers_up = 0;         // Kafka: brokers this host is connected to
  int brokers_known = 0;      // Kafka: brokers in the cluster's metadata
  int64_t stored_events = 0;  // events held by the broker (in-process log length)
  int64_t consumer_lag = 0;   // events not yet consumed, summed over groups
  int64_t in_flight = 0;      // Kafka: produced, delivery not yet confirmed
  std::string last_error;     // Kafka: the last client error, "" when none
};

class Broker {
 public:
  virtual ~Broker() = default;

  // Stores events durably (Kafka: idempotent producer, acks=all), each in
  // partition hash(key) % partitions, keeping the given order within a key.
  // done(true, "") once every event of the batch is stored; done(false, why)
  // when any is not (the relay retries the whole batch later; the broker
  // may then hold duplicates, which consumers drop by event id). done may
  // run on any thread, before or after produce returns.
  virtual void produce(std::vector<Envelope> batch,
                       std::function<void(bool ok, const std::string& error)> done) = 0;

  // A consumer group: handler receives, for each partition, the events whose
  // type matches one of patterns, in offset order, a run of consecutive
  // ones at a time (one or more: the in-process broker hands over what one
  // read of its log found, so that the consumer can apply them in one
  // transaction). It returns how many of them, from the first, are applied
  // or parked: their offsets may be committed. It returns fewer than it got
  // only when it gave up because the broker is stopping: the offsets of the
  // rest are not committed, nothing more is delivered on that partition,
  // and they are delivered again after a restart. An offset is committed
  // only after handler has returned for it; after a restart delivery
  // resumes at the first uncommitted offset (at least once). handler may
  // block (it retries). If it throws, no offset of the run is committed and
  // the run is delivered again later. Register every group before start().
  using ConsumerFn = std::function<size_t(std::span<const Delivery>)>;
  virtual void subscribe(const std::string& group, std::vector<std::string> patterns,
                         ConsumerFn handler) = 0;

  virtual bool start(std::string* error) = 0;
  // Stops delivering: a handler in progress finishes, its offset is
  // committed if it returned true; nothing else runs after stop returns.
  virtual void stop() = 0;

  virtual BrokerStats stats() const = 0;

  // How many produce() batches of one source the relay may have unanswered
  // at once. More than one only where a batch refused means that nothing
  // after it was delivered out of order either: the relay sends a refused
  // batch again, and the later ones after it. (The direct broker refuses
  // only when stopping; a Kafka produce may fail after a later one
  // succeeded, so Kafka keeps one.)
  virtual int max_in_flight() const { return 1; }
};

// ---- shared by the embedded brokers ----

// A consumer group as Broker::subscribe() gave it.
struct Subscription {
  std::string name;
  std::vector<std::string> patterns;
  Broker::ConsumerFn handler;
  bool matches(std::string_view type) const;  // one of patterns matches type
};

// An embedded broker's subscribe(): adds the group, as a G (a Subscription
// with the broker's own per-group state), before start; after start it is
// logged and ignored.
void log_late_subscription(const std::string& group);
template <class G>
void add_group(std::vector<std::unique_ptr<G>>& groups, bool started, Subscription subscription) {
  if (started) return log_late_subscription(subscription.name);
  groups.push_back(std::make_unique<G>(std::move(subscription)));
}

// The options both embedded brokers check at start: "" when partitions is
// 1..1024 and consumer_threads 1..64, else what is wrong.
std::string check_delivery_options(int partitions, int consumer_threads);

struct InProcessBrokerOptions {
  std::filesystem::path file;  // the broker's log, a SQLite file (data_dir/broker/events.db)
  int partitions = 8;          // fixed once the log exists: a different value is refused
  int consumer_threads = 2;    // threads delivering to consumers (partition p -> thread p % n)
  int busy_timeout_ms = 5000;
  std::string synchronous = "NORMAL";
  int64_t mmap_bytes = 256 << 20;  // PRAGMA mmap_size of the log's connections
  int64_t wal_bytes = 256 << 20;   // stores::SqliteOptions::wal_bytes of the log
  int64_t retention_events = 100000;  // consumed events kept in the log for inspection
  std::chrono::milliseconds retention_every{5000};  // how often consumed events are deleted
  // Rows one retention transaction deletes at most: a backlog is deleted in
  // several, with deliveries and appends going on between them (60,000 rows
  // in one held the log's writer for about 250 ms).
  int64_t retention_batch = 2000;
};

// The embedded broker: a durable partitioned log in its own SQLite file,
// with committed offsets per (group, partition), like a one-node Kafka.
std::unique_ptr<Broker> make_in_process_broker(const InProcessBrokerOptions& options,
                                               Metrics* metrics);

struct DirectBrokerOptions {
  int partitions = 8;          // order holds per key within a partition
  int consumer_threads = 2;    // threads delivering to consumers (partition p -> thread p % n)
};

// The embedded dispatcher over the outboxes: no log of its own; a batch is
// done (and the relay deletes it from the outbox) once every consumer group
// has applied it. See direct_broker.cpp.
std::unique_ptr<Broker> make_direct_broker(const DirectBrokerOptions& options, Metrics* metrics);

struct KafkaBrokerOptions {
  std::string bootstrap_servers;          // "host1:9092,host2:9092"
  std::string topic = "grapevine.events";  // every event goes to this one topic
  int partitions = 8;                      // when this host creates the topic
  int replication_factor = -1;             // when this host creates the topic; -1: broker default
  bool create_topic = true;                // create the topic at start when absent
  std::string client_id = "grapevine";     // this host's client id (per host)
  std::string group_prefix = "grapevine.";  // consumer group = prefix + plugin name
  int message_timeout_ms = 300000;  // a produce not confirmed by then fails (the relay retries)
  int session_timeout_ms = 10000;   // a consumer silent this long leaves its group
  int commit_interval_ms = 1000;    // stored offsets are committed this often
  int consumer_threads = 2;         // per consuming plugin: partition p is applied by thread p % n
  // librdkafka properties passed through as named by librdkafka
  // (security.protocol, sasl.mechanisms, ssl.ca.location, ...), after the
  // host's own settings; the host's delivery guarantees cannot be turned off.
  std::vector<std::pair<std::string, std::string>> properties;
};

// Kafka through librdkafka: one idempotent producer (acks=all) for every
// source, one consumer per consuming plugin (group = group_prefix + name)
// that stores an offset only after the handler returned for it.
std::unique_ptr<Broker> make_kafka_broker(const KafkaBrokerOptions& options, Metrics* metrics);
// Checks the options (every property name and value) without connecting.
bool check_kafka_options(const KafkaBrokerOptions& options, std::string* error);

// ---- engine ----

struct EngineOptions {
  int relay_batch = 500;                         // outbox rows per produce
  std::chrono::milliseconds relay_poll{200};     // relay wakes at least this often
  // Woken by a publish after an idle wait, the relay waits this long before
  // its pass, so that one pass (one broker write, one outbox delete) takes
  // the events of many commits rather than of one or two.
  std::chrono::milliseconds relay_linger{5};
  int max_attempts = 5;                          // handler runs before parking
  std::chrono::milliseconds retry_backoff{100};  // first retry delay, doubling
  std::chrono::milliseconds retry_backoff_max{10000};
  std::chrono::hours consumed_retention{24 * 7};  // gv_consumed rows kept this long
};

// The consumer's handler, run inside the write transaction that also
// records the event id. attempt counts from 1. Return ok to commit; any
// failure (or an exception) rolls back and counts as a failed attempt.
using EventHandler =
    std::function<stores::SqlStatus(const Envelope&, int attempt, stores::SqlTransaction&)>;

// One parked event, as the admin operations show it.
struct DeadLetter {
  Envelope event;
  int attempts = 0;
  std::string error;  // the last failure
  int64_t parked_ms = 0;
};

class EventEngine {
 public:
  EventEngine(Broker& broker, const EngineOptions& options, Metrics* metrics);
  ~EventEngine();

  // Creates the host's tables in a plugin database when absent:
  // gv_outbox, gv_consumed, gv_dead_letters. Call once per database before
  // add_source/add_consumer/publish. Tables are prefixed gv_; plugins must
  // not use that prefix.
  static stores::SqlStatus prepare_database(stores::SqlDatabase& db);

  // Appends an outbox row inside the caller's write transaction (the
  // plugin's). Checks type (valid_type) and that payload is a JSON object;
  // invalid otherwise. *id receives the event id.
  static stores::SqlStatus publish(stores::SqlTransaction& tx, std::string_view source,
                                   std::string_view type, std::string_view key,
                                   std::string_view payload_json, int schema_version,
                                   std::string* id);

  // Registers a plugin database whose outbox the relay drains. Before start.
  void add_source(const std::string& plugin, stores::SqlDatabase& db);
  // Registers a consuming plugin: its group is the plugin name. Before start.
  void add_consumer(const std::string& plugin, stores::SqlDatabase& db,
                    std::vector<std::string> patterns, EventHandler handler);

  // Starts the relay thread and the broker.
  bool start(std::string* error);
  // Wakes the relay now (a publishing transaction committed).
  void notify_published();
  // Stops the relay (after a last drain attempt), wakes consumers waiting to
  // retry (their events come again after the restart) and stops the broker.
  void stop();

  // Admin: parked events of a consumer, oldest first, at most limit, after
  // the event id after ("" from the start).
  stores::SqlResult<std::vector<DeadLetter>> dead_letters(const std::string& plugin, size_t limit,
                                                          const std::string& after);
  // Admin: runs a parked event's handler again now (event_id "" = every
  // parked event of the plugin, oldest first). Each that succeeds is applied
  // once and unparked; one that fails stays parked with the new error.
  // *replayed / *failed receive the counts. not found: invalid with a message.
  stores::SqlStatus replay(const std::string& plugin, const std::string& event_id, int* replayed,
                           int* failed);

  // Deletes the consumed-event records (gv_consumed) older than
  // consumed_retention from every consumer's database; returns how many.
  // The host runs it as the job host.events_prune. Any thread, any time.
  int64_t prune_consumed();

  // For /readyz and /metrics.
  int64_t outbox_backlog() const;  // unsent outbox rows, as of the last relay pass
  BrokerStats broker_stats() const;
  bool has_consumer(const std::string& plugin) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace gv::events
