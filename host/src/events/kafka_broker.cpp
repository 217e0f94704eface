// The Kafka broker, with librdkafka. No librdkafka type leaves this file.
//
// Wire format (readable by any Kafka client): every event is one message on
// options.topic; message key = the event key, so Kafka's own partitioner
// (murmur2, as the Java client) keeps a key in one partition and its events
// in order; value = the envelope as JSON (Envelope::to_json); headers gv-id
// and gv-type, so a consumer can skip types it does not want unparsed.
//
// Producer: one per host, shared by every source. enable.idempotence=true
// (which implies acks=all and retries that keep order), linger.ms 5.
// produce() enqueues the batch in order with one shared counter; each
// delivery report decrements it; the last one calls done(ok, first error).
// A message that cannot be enqueued (local queue full: waits and tries
// again; any other error: fails) counts as a failed delivery, so done(false)
// makes the relay send the batch again later (duplicates are dropped by the
// consumers' event-id record). A dedicated thread serves delivery reports
// (rd_kafka_poll), creates the topic once at start where the cluster
// allows it (CreateTopics; "already exists" is success; a refusal is logged
// once and the host goes on, since the topic may be made by an operator or
// auto-created), and replaces the producer after a fatal idempotence error.
//
// Consumers: one rd_kafka_t per consuming plugin, group group_prefix+name,
// subscribed to the topic. Its poll thread hands each message to one of
// consumer_threads workers by partition (p % n, a bounded queue), so
// partitions are applied in parallel and each strictly in order.
// enable.auto.offset.store is off: a worker stores offset+1 only after the
// handler returned true (the event applied or parked, in the consumer's
// committed transaction), and librdkafka commits stored offsets every
// commit_interval_ms and on close. A crash redelivers at most the
// uncommitted tail, which the engine drops by event id: at least once in,
// exactly once in effect. Rebalances: before partitions are revoked the
// rebalance callback waits until every worker is idle with an empty queue,
// so no other member starts on a partition while this one still applies
// it (eager and cooperative protocols both). A message that is not an
// envelope (written by someone else) is logged, counted and skipped. A
// handler returning false (stop under way) halts the group without storing
// its offset; queued messages are dropped unstored (delivered again). A
// handler that throws is called again after a second, holding its partition.
//
// State: every handle emits statistics each second (statistics.interval.ms);
// the broker count UP and the consumer lag per partition are read from them.
// "connected" is true when the producer or a consumer has a broker UP; an
// ALL_BROKERS_DOWN error makes it false at once.
#include <librdkafka/rdkafka.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <shared_mutex>
#include <thread>

#include "core/cond_wait.hpp"
#include "core/log.hpp"
#include "core/metrics.hpp"
#include "core/thread_name.hpp"
#include "events/events.hpp"

namespace gv::events {
namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

constexpr int kStatsIntervalMs = 1000;
constexpr auto kTopicRetry = std::chrono::seconds(5);
constexpr auto kThrowRetry = std::chrono::seconds(1);
constexpr size_t kWorkerQueue = 1000;  // messages waiting per consumer worker
constexpr auto kErrorLogEvery = std::chrono::seconds(10);
constexpr int kTopicAttempts = 3;  // CreateTopics tries before leaving it to the cluster

// Settings the host makes for its delivery guarantees; properties may not
// change them.
const std::set<std::string, std::less<>> kHostOwned = {
    "enable.idempotence", "acks", "request.required.acks", "enable.auto.offset.store",
    "enable.auto.commit", "group.id", "bootstrap.servers", "metadata.broker.list",
    "client.id", "statistics.interval.ms", "enable.partition.eof", "auto.offset.reset",
    "partitioner", "isolation.level"};

struct ConfDeleter {
  void operator()(rd_kafka_conf_t* c) const { rd_kafka_conf_destroy(c); }
};
using ConfPtr = std::unique_ptr<rd_kafka_conf_t, ConfDeleter>;

bool set(rd_kafka_conf_t* c, const std::string& key, const std::string& value,
         std::string* error) {
  char err[512];
  if (rd_kafka_conf_set(c, key.c_str(), value.c_str(), err, sizeof err) == RD_KAFKA_CONF_OK)
    return true;
  if (error) *error = "events.kafka: " + key + ": " + err;
  return false;
}

// The operator's events.kafka.properties, after the host's settings; a
// setting the delivery guarantees depend on is refused.
bool apply_properties(rd_kafka_conf_t* c,
                      const std::vector<std::pair<std::string, std::string>>& properties,
                      std::string* error) {
  for (auto& [k, v] : properties) {
    if (kHostOwned.count(k)) {
      if (error)
        *error = "events.kafka.properties: " + k +
                 " is set by the host (its delivery guarantees depend on it)";
      return false;
    }
    if (!set(c, k, v, error)) return false;
  }
  return true;
}

// Figures the metrics callbacks read; shared so a late scrape is safe.
struct Figures {
  std::atomic<int64_t> produced{0}, delivery_failures{0}, skipped{0}, in_flight{0};
  std::atomic<bool> connected{false};
};

// One produce() call: the last delivery report calls done.
struct PendingBatch {
  std::atomic<int64_t> remaining{0};
  std::mutex m;
  std::string error;
  std::function<void(bool, const std::string&)> done;
  Figures* figures = nullptr;

  void fail(const std::string& why) {
    std::lock_guard lock(m);
    if (error.empty()) error = why;
  }
  // n messages are finished (delivered or failed).
  static void finish(PendingBatch* p, int64_t n) {
    p->figures->in_flight -= n;
    if (p->remaining.fetch_sub(n) != n) return;
    std::string error;
    {
      std::lock_guard lock(p->m);
      error = p->error;
    }
    try {
      p->done(error.empty(), error);
    } catch (...) {
    }
    delete p;
  }
};

class KafkaBroker final : public Broker {
 public:
  KafkaBroker(KafkaBrokerOptions options, Metrics* metrics)
      : options_(std::move(options)), figures_(std::make_shared<Figures>()) {
    if (metrics) register_metrics(metrics);
  }
  ~KafkaBroker() override { stop(); }

  void subscribe(const std::string& group, std::vector<std::string> patterns,
                 ConsumerFn handler) override {
    auto g = std::make_unique<Group>();
    g->name = group;
    g->patterns = std::move(patterns);
    g->handler = std::move(handler);
    g->handle.owner = this;
    g->handle.group = g.get();
    groups_.push_back(std::move(g));
  }

  bool start(std::string* error) override {
    producer_handle_.owner = this;
    if (!(producer_ = make_producer(error))) return false;
    for (auto& g : groups_)
      if (!make_consumer(*g, error)) {
        stop();
        return false;
      }
    stopping_ = false;
    poller_ = std::thread([this] {
      name_this_thread("gv-kafka-poll");
      poll_loop();
    });
    for (auto& g : groups_) {
      for (int i = 0; i < std::max(1, options_.consumer_threads); ++i)
        g->workers.push_back(std::make_unique<Worker>());
      for (auto& w : g->workers)
        w->thread = std::thread([this, p = g.get(), wp = w.get()] {
          name_this_thread("gv-kafka-work");
          work_loop(*p, *wp);
        });
      g->thread = std::thread([this, p = g.get()] {
        name_this_thread("gv-kafka-cons");
        consume_loop(*p);
      });
    }
    log::info("events: kafka broker started", {{"bootstrap", options_.bootstrap_servers},
                                               {"topic", options_.topic},
                                               {"client_id", options_.client_id},
                                               {"consumer_groups", groups_.size()}});
    return true;
  }

  void stop() override {
    stopping_ = true;
    for (auto& g : groups_) {
      for (auto& w : g->workers) {
        {
          std::lock_guard lock(w->m);  // no lost wake-up
        }
        w->cv.notify_all();
        w->changed.notify_all();
      }
      for (auto& w : g->workers)
        if (w->thread.joinable()) w->thread.join();
      if (g->thread.joinable()) g->thread.join();
      for (auto& w : g->workers) {
        for (rd_kafka_message_t* m : w->queue) rd_kafka_message_destroy(m);  // delivered again
        w->queue.clear();
      }
      g->workers.clear();
      if (g->rk) {
        rd_kafka_consumer_close(g->rk);  // commits the stored offsets, leaves the group
        rd_kafka_destroy(g->rk);
        g->rk = nullptr;
      }
    }
    if (poller_.joinable()) poller_.join();
    if (producer_) {
      // The relay has stopped: what is still in flight either arrives now
      // or fails (its rows are still in the outbox for the next start).
      rd_kafka_flush(producer_, 2000);
      rd_kafka_purge(producer_, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
      rd_kafka_flush(producer_, 1000);
      rd_kafka_destroy(producer_);
      producer_ = nullptr;
    }
    if (admin_queue_) {
      rd_kafka_queue_destroy(admin_queue_);
      admin_queue_ = nullptr;
    }
  }

  void produce(std::vector<Envelope> batch,
               std::function<void(bool, const std::string&)> done) override {
    if (batch.empty()) return done(true, "");
    auto* p = new PendingBatch;
    const auto n = static_cast<int64_t>(batch.size());
    p->remaining = n;
    p->done = std::move(done);
    p->figures = figures_.get();
    figures_->in_flight += n;
    std::shared_lock lock(producer_mutex_);
    for (int64_t i = 0; i < n; ++i) {
      const Envelope& e = batch[static_cast<size_t>(i)];
      const std::string value = e.to_json().dump();
      rd_kafka_resp_err_t err;
      for (;;) {
        err = producer_ ? rd_kafka_producev(
                              producer_, RD_KAFKA_V_TOPIC(options_.topic.c_str()),
                              RD_KAFKA_V_KEY(e.key.data(), e.key.size()),
                              RD_KAFKA_V_VALUE(const_cast<char*>(value.data()), value.size()),
                              RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                              RD_KAFKA_V_HEADER("gv-id", e.id.data(),
                                                static_cast<ssize_t>(e.id.size())),
                              RD_KAFKA_V_HEADER("gv-type", e.type.data(),
                                                static_cast<ssize_t>(e.type.size())),
                              RD_KAFKA_V_OPAQUE(p), RD_KAFKA_V_END)
                        : RD_KAFKA_RESP_ERR__STATE;
        if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL || stopping_) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));  // the poller drains it
      }
      if (err) {
        p->fail(std::string("cannot enqueue for kafka: ") + rd_kafka_err2str(err));
        figures_->delivery_failures += n - i;
        PendingBatch::finish(p, n - i);  // this one and every later one
        return;
      }
    }
  }

  BrokerStats stats() const override {
    BrokerStats s;
    s.kind = "kafka";
    int up = producer_handle_.up, known = producer_handle_.known;
    int64_t lag = 0;
    for (auto& g : groups_) {
      up = std::max(up, g->handle.up.load());
      known = std::max(known, g->handle.known.load());
      lag += g->handle.lag;
    }
    s.brokers_up = up;
    s.brokers_known = known;
    s.connected = figures_->connected;
    s.consumer_lag = lag;
    s.in_flight = figures_->in_flight;
    std::lock_guard lock(error_mutex_);
    s.last_error = last_error_;
    return s;
  }

 private:
  // The opaque every callback of a handle gets.
  struct Group;
  struct Handle {
    KafkaBroker* owner = nullptr;
    Group* group = nullptr;  // the consumer's group; nullptr for the producer
    // From the handle's last statistics.
    std::atomic<int> up{0}, known{0};
    std::atomic<int64_t> lag{0};
  };

  // A thread applying the events of some partitions (p % workers), in order.
  struct Worker {
    std::mutex m;
    std::condition_variable cv;       // work arrived, or stop
    std::condition_variable changed;  // room in the queue, or idle
    std::deque<rd_kafka_message_t*> queue;
    bool busy = false;  // a message is being handled
    std::thread thread;
  };

  struct Group {
    std::string name;
    std::vector<std::string> patterns;
    ConsumerFn handler;
    rd_kafka_t* rk = nullptr;
    std::thread thread;  // polls and hands messages to the workers
    std::vector<std::unique_ptr<Worker>> workers;
    std::atomic<bool> halted{false};  // a handler gave up for stop()
    Handle handle;

    bool matches(std::string_view type) const {
      for (auto& p : patterns)
        if (type_matches(p, type)) return true;
      return false;
    }
  };

  // ---- configuration ----

  using Settings = std::vector<std::pair<std::string, std::string>>;

  // A handle's settings: the shared ones, then the role's, then the
  // operator's properties (which may change any setting not in kHostOwned).
  // nullptr with *error on a bad one.
  ConfPtr make_conf(Handle* handle, const Settings& role, std::string* error) {
    ConfPtr c(rd_kafka_conf_new());
    rd_kafka_conf_set_opaque(c.get(), handle);
    rd_kafka_conf_set_log_cb(c.get(), &on_log);
    rd_kafka_conf_set_error_cb(c.get(), &on_error);
    rd_kafka_conf_set_stats_cb(c.get(), &on_stats);
    Settings all = {{"bootstrap.servers", options_.bootstrap_servers},
                    {"client.id", options_.client_id},
                    {"statistics.interval.ms", std::to_string(kStatsIntervalMs)}};
    all.insert(all.end(), role.begin(), role.end());
    for (auto& [k, v] : all)
      if (!set(c.get(), k, v, error)) return nullptr;
    if (!apply_properties(c.get(), options_.properties, error)) return nullptr;
    return c;
  }

  rd_kafka_t* make_producer(std::string* error) {
    ConfPtr c = make_conf(&producer_handle_,
                          {{"enable.idempotence", "true"},
                           {"acks", "all"},
                           {"partitioner", "murmur2_random"},
                           {"linger.ms", "5"},
                           {"message.timeout.ms", std::to_string(options_.message_timeout_ms)}},
                          error);
    if (!c) return nullptr;
    rd_kafka_conf_set_dr_msg_cb(c.get(), &on_delivery);
    char err[512];
    rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, c.get(), err, sizeof err);
    if (!rk) {
      if (error) *error = std::string("events.kafka: cannot create the producer: ") + err;
      return nullptr;
    }
    c.release();  // rd_kafka_new took it
    return rk;
  }

  bool make_consumer(Group& g, std::string* error) {
    ConfPtr c = make_conf(
        &g.handle,
        {{"group.id", options_.group_prefix + g.name},
         {"enable.auto.offset.store", "false"},
         {"enable.auto.commit", "true"},
         {"auto.commit.interval.ms", std::to_string(options_.commit_interval_ms)},
         {"auto.offset.reset", "earliest"},
         {"enable.partition.eof", "false"},
         {"session.timeout.ms", std::to_string(options_.session_timeout_ms)},
         {"fetch.wait.max.ms", "100"}},
        error);
    if (!c) return false;
    rd_kafka_conf_set_rebalance_cb(c.get(), &on_rebalance);
    char err[512];
    g.rk = rd_kafka_new(RD_KAFKA_CONSUMER, c.get(), err, sizeof err);
    if (!g.rk) {
      if (error) *error = "events.kafka: cannot create the consumer of " + g.name + ": " + err;
      return false;
    }
    c.release();
    rd_kafka_poll_set_consumer(g.rk);
    rd_kafka_topic_partition_list_t* topics = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(topics, options_.topic.c_str(), RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(g.rk, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    if (e) {
      if (error) *error = "events.kafka: " + g.name + " cannot subscribe: " + rd_kafka_err2str(e);
      return false;
    }
    return true;
  }

  // ---- callbacks (librdkafka threads) ----

  static Handle* handle_of(void* opaque) { return static_cast<Handle*>(opaque); }

  static void on_log(const rd_kafka_t* rk, int level, const char* fac, const char* buf) {
    // Errors also reach on_error, which logs them (rate-limited); the log
    // lines that repeat them (facility FAIL: a connection failed) and the
    // chatty levels are kept for debug.
    json fields = {{"client", rd_kafka_name(rk)}, {"facility", fac}};
    if (level <= 4 && std::string_view(fac) != "FAIL") log::warn(std::string("kafka: ") + buf, fields);
    else log::debug(std::string("kafka: ") + buf, fields);
  }

  static void on_error(rd_kafka_t* rk, int err, const char* reason, void* opaque) {
    Handle* h = handle_of(opaque);
    KafkaBroker* self = h->owner;
    {
      std::lock_guard lock(self->error_mutex_);
      self->last_error_ =
          std::string(rd_kafka_err2name(static_cast<rd_kafka_resp_err_t>(err))) + ": " + reason;
    }
    if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
      h->up = 0;
      self->recompute_connected();
    }
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
      char why[512];
      rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, why, sizeof why);
      log::error("events: kafka producer failed fatally; it is replaced",
                 {{"error", rd_kafka_err2name(orig)}, {"reason", why}});
      self->producer_fatal_ = true;
      return;
    }
    // The same error from the same client is logged at most every
    // kErrorLogEvery, with the count of those left out.
    int64_t suppressed = 0;
    {
      std::lock_guard lock(self->error_mutex_);
      auto& seen = self->error_log_[std::string(rd_kafka_name(rk)) + "/" + std::to_string(err)];
      auto now = Clock::now();
      if (seen.count > 0 && now - seen.logged < kErrorLogEvery) {
        ++seen.count;
        return;
      }
      suppressed = std::max<int64_t>(0, seen.count - 1);
      seen = {now, 1};
    }
    log::warn("events: kafka client error",
              {{"client", rd_kafka_name(rk)},
               {"error", rd_kafka_err2name(static_cast<rd_kafka_resp_err_t>(err))},
               {"reason", reason},
               {"repeats_not_logged", suppressed}});
  }

  static int on_stats(rd_kafka_t*, char* text, size_t len, void* opaque) {
    Handle* h = handle_of(opaque);
    json j = json::parse(std::string_view(text, len), nullptr, false);
    if (j.is_discarded()) return 0;
    int up = 0, known = 0;
    if (auto brokers = j.find("brokers"); brokers != j.end() && brokers->is_object()) {
      for (const json& b : *brokers) {
        if (!b.is_object() || b.value("nodeid", -1) < 0) continue;  // bootstrap entries
        ++known;
        if (b.value("state", "") == "UP") ++up;
      }
    }
    int64_t lag = 0;
    auto topics = j.find("topics");
    if (topics != j.end() && topics->is_object()) {
      auto t = topics->find(h->owner->options_.topic);
      auto parts = t != topics->end() ? t->find("partitions") : t;
      if (t != topics->end() && parts != t->end() && parts->is_object()) {
        for (auto p = parts->begin(); p != parts->end(); ++p) {
          if (p.key() == "-1" || !p->is_object()) continue;
          int64_t l = p->value("consumer_lag_stored", int64_t(-1));
          if (l < 0) l = p->value("consumer_lag", int64_t(-1));
          if (l > 0) lag += l;
        }
      }
    }
    h->up = up;
    h->known = known;
    h->lag = lag;
    h->owner->recompute_connected();
    return 0;  // librdkafka frees text
  }

  static void on_delivery(rd_kafka_t*, const rd_kafka_message_t* m, void*) {
    auto* p = static_cast<PendingBatch*>(m->_private);
    if (!p) return;
    if (m->err) {
      p->fail(std::string("kafka delivery failed: ") + rd_kafka_err2str(m->err));
      ++p->figures->delivery_failures;
    } else {
      ++p->figures->produced;
      p->figures->connected = true;
    }
    PendingBatch::finish(p, 1);
  }

  void recompute_connected() {
    bool any = producer_handle_.up > 0;
    for (auto& g : groups_) any = any || g->handle.up > 0;
    figures_->connected = any;
  }

  // ---- threads ----

  void poll_loop() {
    auto next_topic_try = Clock::now();
    int topic_tries = 0;
    bool topic_done = !options_.create_topic;
    bool topic_waiting = false;
    while (!stopping_) {
      {
        std::shared_lock lock(producer_mutex_);
        if (producer_) rd_kafka_poll(producer_, 100);
      }
      if (producer_fatal_) replace_producer();
      if (!topic_done && !topic_waiting && Clock::now() >= next_topic_try) {
        request_topic();
        topic_waiting = true;
        ++topic_tries;
      }
      if (topic_waiting) {
        int result = topic_result();  // 1 done, 0 waiting, -1 retry later
        if (result != 0) topic_waiting = false;
        if (result == 1) topic_done = true;
        if (result == -1) next_topic_try = Clock::now() + kTopicRetry;
        if (result == -1 && topic_tries >= kTopicAttempts) {
          log::warn("events: gave up creating the kafka topic; it must exist or be auto-created",
                    {{"topic", options_.topic}, {"attempts", topic_tries}});
          topic_done = true;
        }
      }
    }
  }

  void replace_producer() {
    std::unique_lock lock(producer_mutex_);
    producer_fatal_ = false;
    if (admin_queue_) {  // belongs to the old handle; a pending CreateTopics is dropped
      rd_kafka_queue_destroy(admin_queue_);
      admin_queue_ = nullptr;
    }
    if (producer_) {
      rd_kafka_purge(producer_, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
      rd_kafka_flush(producer_, 1000);  // fails the purged messages' batches
      rd_kafka_destroy(producer_);
    }
    std::string error;
    producer_ = make_producer(&error);
    if (!producer_) log::error("events: cannot replace the kafka producer", {{"error", error}});
  }

  void request_topic() {
    if (!producer_) return;
    if (!admin_queue_) admin_queue_ = rd_kafka_queue_new(producer_);
    char err[512];
    rd_kafka_NewTopic_t* t = rd_kafka_NewTopic_new(options_.topic.c_str(), options_.partitions,
                                                   options_.replication_factor, err, sizeof err);
    if (!t) {
      log::warn("events: kafka topic not created", {{"topic", options_.topic}, {"error", err}});
      return;
    }
    rd_kafka_AdminOptions_t* o = rd_kafka_AdminOptions_new(producer_, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    rd_kafka_AdminOptions_set_request_timeout(o, 10000, err, sizeof err);
    std::shared_lock lock(producer_mutex_);
    rd_kafka_CreateTopics(producer_, &t, 1, o, admin_queue_);
    rd_kafka_AdminOptions_destroy(o);
    rd_kafka_NewTopic_destroy(t);
  }

  int topic_result() {
    if (!admin_queue_) return -1;  // the producer was replaced meanwhile
    rd_kafka_event_t* ev = rd_kafka_queue_poll(admin_queue_, 0);
    if (!ev) return 0;
    int outcome = 1;
    std::string why;
    rd_kafka_resp_err_t err = rd_kafka_event_error(ev);
    if (err) {
      why = rd_kafka_event_error_string(ev);
    } else if (const rd_kafka_CreateTopics_result_t* r = rd_kafka_event_CreateTopics_result(ev)) {
      size_t n = 0;
      const rd_kafka_topic_result_t** results = rd_kafka_CreateTopics_result_topics(r, &n);
      for (size_t i = 0; i < n; ++i) {
        rd_kafka_resp_err_t e = rd_kafka_topic_result_error(results[i]);
        if (e && e != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
          err = e;
          const char* s = rd_kafka_topic_result_error_string(results[i]);
          why = s ? s : rd_kafka_err2str(e);
        } else if (!e) {
          log::info("events: kafka topic created",
                    {{"topic", options_.topic}, {"partitions", options_.partitions}});
        }
      }
    }
    rd_kafka_event_destroy(ev);
    if (!err) return outcome;
    // Transport trouble: try again. A refusal (no permission, a policy, an
    // old or mock cluster without CreateTopics): say so once and go on.
    const bool transient = err == RD_KAFKA_RESP_ERR__TIMED_OUT ||
                           err == RD_KAFKA_RESP_ERR__TRANSPORT ||
                           err == RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT ||
                           err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN;
    log::warn(transient ? "events: cannot create the kafka topic yet; trying again"
                        : "events: the kafka topic was not created; it must exist or be "
                          "auto-created",
              {{"topic", options_.topic}, {"error", rd_kafka_err2name(err)}, {"reason", why}});
    return transient ? -1 : 1;
  }

  // The group's poll thread: hands each message to the worker of its
  // partition (bounded queue: waits when full), so partitions are applied
  // in parallel and each in order.
  void consume_loop(Group& g) {
    while (!stopping_ && !g.halted) {
      rd_kafka_message_t* m = rd_kafka_consumer_poll(g.rk, 200);
      if (!m) continue;
      if (m->err) {
        if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
          log::warn("events: kafka consumer error",
                    {{"group", g.name}, {"error", rd_kafka_message_errstr(m)}});
        rd_kafka_message_destroy(m);
        continue;
      }
      Worker& w = *g.workers[static_cast<size_t>(m->partition) % g.workers.size()];
      std::unique_lock lock(w.m);
      wait_rechecking(w.changed, lock,
                      [&] { return w.queue.size() < kWorkerQueue || stopping_ || g.halted; });
      if (stopping_ || g.halted) {
        rd_kafka_message_destroy(m);  // not applied, not stored: delivered again
        break;
      }
      w.queue.push_back(m);
      w.cv.notify_one();
    }
  }

  void work_loop(Group& g, Worker& w) {
    for (;;) {
      rd_kafka_message_t* m;
      {
        std::unique_lock lock(w.m);
        wait_rechecking(w.cv, lock, [&] { return !w.queue.empty() || stopping_ || g.halted; });
        if (stopping_ || g.halted) return;  // the queue is emptied after the join
        m = w.queue.front();
        w.queue.pop_front();
        w.busy = true;
      }
      bool go_on = handle_message(g, m);
      rd_kafka_message_destroy(m);
      {
        std::lock_guard lock(w.m);
        w.busy = false;
        if (!go_on) g.halted = true;
      }
      w.changed.notify_all();
      if (!go_on) {
        for (auto& other : g.workers) other->cv.notify_all();
        return;
      }
    }
  }

  // Waits until every worker of the group is idle with an empty queue (or
  // the group stops): before partitions are revoked, so that no other
  // member gets a partition while this one still applies its events.
  static void drain(Group& g, const std::atomic<bool>& stopping) {
    for (auto& w : g.workers) {
      std::unique_lock lock(w->m);
      wait_rechecking(w->changed, lock,
                      [&] { return (w->queue.empty() && !w->busy) || stopping || g.halted; });
    }
  }

  static void on_rebalance(rd_kafka_t* rk, rd_kafka_resp_err_t err,
                           rd_kafka_topic_partition_list_t* partitions, void* opaque) {
    Handle* h = handle_of(opaque);
    KafkaBroker* self = h->owner;
    Group* g = h->group;
    const bool cooperative = std::string_view(rd_kafka_rebalance_protocol(rk)) == "COOPERATIVE";
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
      if (cooperative) {
        if (rd_kafka_error_t* e = rd_kafka_incremental_assign(rk, partitions))
          rd_kafka_error_destroy(e);
      } else {
        rd_kafka_assign(rk, partitions);
      }
      log::info("events: kafka partitions assigned",
                {{"group", g ? g->name : ""}, {"partitions", partitions->cnt}});
      return;
    }
    if (g) drain(*g, self->stopping_);
    // Commit what was applied now, not at the next interval: the member
    // that gets these partitions starts right after the last applied event.
    rd_kafka_resp_err_t committed = rd_kafka_commit(rk, nullptr, 0);
    if (committed && committed != RD_KAFKA_RESP_ERR__NO_OFFSET)
      log::warn("events: kafka offsets not committed before the partitions were revoked",
                {{"group", g ? g->name : ""}, {"error", rd_kafka_err2name(committed)}});
    if (cooperative) {
      if (rd_kafka_error_t* e = rd_kafka_incremental_unassign(rk, partitions))
        rd_kafka_error_destroy(e);
    } else {
      rd_kafka_assign(rk, nullptr);
    }
    log::info("events: kafka partitions revoked",
              {{"group", g ? g->name : ""}, {"partitions", partitions->cnt}});
  }

  // False when the handler gave up for stop().
  bool handle_message(Group& g, rd_kafka_message_t* m) {
    // The type header lets a group skip what it does not want unparsed.
    const void* value = nullptr;
    size_t size = 0;
    rd_kafka_headers_t* headers = nullptr;
    std::optional<std::string> type;
    if (rd_kafka_message_headers(m, &headers) == RD_KAFKA_RESP_ERR_NO_ERROR &&
        rd_kafka_header_get_last(headers, "gv-type", &value, &size) == RD_KAFKA_RESP_ERR_NO_ERROR &&
        value)
      type.emplace(static_cast<const char*>(value), size);
    if (type && !g.matches(*type)) {
      rd_kafka_offset_store(m->rkt, m->partition, m->offset);
      return true;
    }
    std::optional<Envelope> e;
    if (m->payload) {
      json j = json::parse(std::string_view(static_cast<const char*>(m->payload), m->len), nullptr,
                           false);
      if (!j.is_discarded()) e = Envelope::from_json(j);
    }
    if (!e) {
      ++figures_->skipped;
      log::warn("events: a kafka message that is not an event envelope is skipped",
                {{"group", g.name},
                 {"topic", options_.topic},
                 {"partition", m->partition},
                 {"offset", m->offset}});
      rd_kafka_offset_store(m->rkt, m->partition, m->offset);
      return true;
    }
    if (!type && !g.matches(e->type)) {
      rd_kafka_offset_store(m->rkt, m->partition, m->offset);
      return true;
    }
    Delivery d;
    d.event = std::move(*e);
    d.partition = m->partition;
    d.offset = m->offset;
    for (;;) {  // a throwing handler is called again: later events of its partition wait
      try {
        if (g.handler(std::span<const Delivery>(&d, 1)) != 1) return false;
        break;
      } catch (const std::exception& ex) {
        log::error("events: a consumer threw; the event is delivered again",
                   {{"group", g.name}, {"event", d.event.id}, {"error", ex.what()}});
      } catch (...) {
        log::error("events: a consumer threw; the event is delivered again",
                   {{"group", g.name}, {"event", d.event.id}});
      }
      for (int i = 0; i < 10 && !stopping_; ++i) std::this_thread::sleep_for(kThrowRetry / 10);
      if (stopping_) return false;
    }
    rd_kafka_offset_store(m->rkt, m->partition, m->offset);  // stores offset + 1
    return true;
  }

  // ---- metrics ----

  void register_metrics(Metrics* metrics) {
    auto f = figures_;
    auto gauge = [f](auto field) {
      return [f, field]() -> Metrics::Samples {
        return {{"", static_cast<double>(((*f).*field).load())}};
      };
    };
    metrics->add_family("grapevine_kafka_connected",
                        "1 when this host reaches a Kafka broker, else 0.", "gauge",
                        gauge(&Figures::connected));
    metrics->add_family("grapevine_kafka_produced_total",
                        "Events the Kafka cluster confirmed (acks=all).", "counter",
                        gauge(&Figures::produced));
    metrics->add_family("grapevine_kafka_delivery_failures_total",
                        "Events Kafka did not confirm (the relay sends them again).", "counter",
                        gauge(&Figures::delivery_failures));
    metrics->add_family("grapevine_kafka_in_flight",
                        "Events handed to the Kafka producer, not yet confirmed.", "gauge",
                        gauge(&Figures::in_flight));
    metrics->add_family("grapevine_kafka_skipped_total",
                        "Messages on the topic that are not event envelopes, skipped.", "counter",
                        gauge(&Figures::skipped));
  }

  KafkaBrokerOptions options_;
  std::shared_ptr<Figures> figures_;
  std::vector<std::unique_ptr<Group>> groups_;
  Handle producer_handle_;
  rd_kafka_t* producer_ = nullptr;
  std::shared_mutex producer_mutex_;
  std::atomic<bool> producer_fatal_{false};
  rd_kafka_queue_t* admin_queue_ = nullptr;
  std::thread poller_;
  std::atomic<bool> stopping_{false};
  mutable std::mutex error_mutex_;
  std::string last_error_;
  struct Logged {
    Clock::time_point logged;
    int64_t count = 0;
  };
  std::map<std::string, Logged> error_log_;  // client/error -> last logged
};

}  // namespace

std::unique_ptr<Broker> make_kafka_broker(const KafkaBrokerOptions& options, Metrics* metrics) {
  return std::make_unique<KafkaBroker>(options, metrics);
}

bool check_kafka_options(const KafkaBrokerOptions& options, std::string* error) {
  if (options.bootstrap_servers.empty()) {
    if (error) *error = "events.kafka.bootstrap_servers: required when events.broker is kafka";
    return false;
  }
  ConfPtr c(rd_kafka_conf_new());
  return apply_properties(c.get(), options.properties, error);
}

}  // namespace gv::events
