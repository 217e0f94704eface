// The direct broker: the in-process dispatcher over the outboxes. It keeps
// no log of its own: the plugins' outboxes are the durable log, and a batch
// counts as stored only once every consumer group it concerns has applied
// each of its events (committed in the consumer's database, with the event
// id, by the engine's runner). So produce()'s done(true), after which the
// relay deletes the rows from the outbox, comes when nothing is left to do
// for them; until then the rows stay in the outbox, and a crash sends them
// again after the restart (consumers drop what they had already applied,
// by event id). Compared with the log broker (in_process_broker.cpp) it
// saves, per event, a write to and a read from a second SQLite file.
//
// Memory: for each (group, partition) a queue of deliveries, in produce
// order. produce() appends every event to partition_of(key) of every group
// whose patterns match its type, under mutex_, and wakes the threads owning
// those partitions. A batch with nothing to deliver is done at once.
// Offsets are per (group, partition) counters in memory, starting at 0 with
// each start: they order deliveries, nothing is resumed from them.
//
// Delivery: consumer_threads threads; partition p belongs to thread
// p % consumer_threads for every group, so a partition's events reach the
// handler in order, one run of up to kRunLength consecutive ones at a time.
// The thread takes the run out of the queue, calls the handler without the
// lock, and for each event the handler reports applied, counts down the
// batch; the last count runs done(true, "") on the delivery thread. The
// pairs of a thread are served in turn, so one busy group does not starve
// the others.
//
// A handler returning fewer than it got (the engine is stopping): the rest
// are not applied; their batches, and those of every event still queued
// in any partition, are answered done(false) at once, so are later
// produce() calls, and the thread ends (the others finish the run they
// are in). A handler that
// throws: the run goes back to the front of its queue and the pair waits
// kThrowRetry. stop() ends the threads (a handler in progress finishes) and
// answers every batch not yet complete with done(false, why): the relay
// keeps its rows in the outbox for the next start.
//
// The relay may have kInFlight batches of a source out at once
// (max_in_flight), so the consumers always have the next one. That is safe
// for order per key because a batch is refused only when stopping, when
// nothing after it is applied either.
//
// Limits (as the log broker's, and more): a source's batches are deleted
// from its outbox oldest first, so a consumer that retries (with backoff,
// up to max_attempts, then parks) holds up the events of that source for
// every group until it has parked, after kInFlight batches; and a blocked
// handler holds up every partition of its thread.
#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "core/cond_wait.hpp"
#include "core/log.hpp"
#include "core/metrics.hpp"
#include "core/thread_name.hpp"
#include "events/events.hpp"

namespace gv::events {

namespace {

using Clock = std::chrono::steady_clock;

constexpr size_t kRunLength = 256;  // events handed to a handler at once
constexpr auto kThrowRetry = std::chrono::milliseconds(1000);
constexpr int kInFlight = 4;  // batches of a source the relay may have unanswered
constexpr const char* kStopping = "the in-process broker is stopping";

// One produce() call: done runs once, when pending reaches 0 or at stop.
struct Batch {
  std::function<void(bool, const std::string&)> done;
  std::atomic<size_t> pending{0};
  std::atomic<bool> answered{false};

  void answer(bool ok, const std::string& error) {
    if (answered.exchange(true)) return;
    if (done) done(ok, error);
  }
  void applied(size_t n) {
    if (pending.fetch_sub(n) == n) answer(true, "");
  }
};

struct Item {
  Delivery delivery;
  std::shared_ptr<Batch> batch;
};

class DirectBroker final : public Broker {
 public:
  DirectBroker(const DirectBrokerOptions& options, Metrics* metrics)
      : options_(options), stats_(std::make_shared<SharedStats>()) {
    if (metrics) {
      auto stats = stats_;
      metrics->add_family("grapevine_events_broker_stored_events",
                          "Events held by the broker: relayed, not yet applied by every group.",
                          "gauge", [stats]() -> Metrics::Samples {
                            return {{"", static_cast<double>(stats->held.load())}};
                          });
    }
  }

  ~DirectBroker() override { stop(); }

  void produce(std::vector<Envelope> batch,
               std::function<void(bool, const std::string&)> done) override {
    auto b = std::make_shared<Batch>();
    b->done = std::move(done);
    // The groups each event goes to, found before taking the lock.
    std::vector<std::shared_ptr<const std::vector<Group*>>> targets(batch.size());
    size_t deliveries = 0;
    for (size_t i = 0; i < batch.size(); ++i) {
      targets[i] = groups_for(batch[i].type);
      deliveries += targets[i]->size();
    }
    if (deliveries == 0) return b->answer(true, "");  // no group wants any of them
    b->pending = deliveries;
    std::vector<bool> wake;
    {
      std::unique_lock lock(mutex_);
      if (!running_ || giving_up_) {
        const char* why = running_ ? kStopping : "the in-process broker is not running";
        lock.unlock();
        b->answer(false, why);
        return;
      }
      wake.assign(static_cast<size_t>(threads_count_), false);
      for (size_t i = 0; i < batch.size(); ++i) {
        if (targets[i]->empty()) continue;
        const int p = partition_of(batch[i].key, partitions_);
        for (Group* g : *targets[i]) {
          auto& part = g->parts[static_cast<size_t>(p)];
          Item item;
          item.delivery.partition = p;
          item.delivery.offset = part.next_offset++;
          // The last group takes the envelope, the others a copy.
          item.delivery.event = g == targets[i]->back() ? std::move(batch[i]) : batch[i];
          item.batch = b;
          part.queue.push_back(std::move(item));
        }
        wake[static_cast<size_t>(p % threads_count_)] = true;
      }
      stats_->held += static_cast<int64_t>(deliveries);
    }
    for (size_t t = 0; t < wake.size(); ++t)
      if (wake[t]) threads_[t]->cv.notify_one();
  }

  void subscribe(const std::string& group, std::vector<std::string> patterns,
                 ConsumerFn handler) override {
    std::lock_guard lock(mutex_);
    add_group(groups_, started_, {group, std::move(patterns), std::move(handler)});
    std::lock_guard routes(routes_mutex_);
    routes_.clear();
  }

  bool start(std::string* error) override {
    auto fail = [&](std::string message) {
      if (error) *error = message;
      log::error("events: the in-process broker did not start", {{"error", message}});
      return false;
    };
    std::lock_guard lock(mutex_);
    if (started_) return fail("the in-process broker is already started");
    if (auto wrong = check_delivery_options(options_.partitions, options_.consumer_threads);
        !wrong.empty())
      return fail(wrong);
    partitions_ = options_.partitions;
    threads_count_ = std::min(options_.consumer_threads, partitions_);
    for (auto& g : groups_) g->parts = std::vector<Partition>(static_cast<size_t>(partitions_));
    started_ = running_ = true;
    giving_up_ = false;
    for (int t = 0; t < threads_count_; ++t) threads_.push_back(std::make_unique<Worker>());
    for (int t = 0; t < threads_count_; ++t)
      threads_[static_cast<size_t>(t)]->thread = std::thread([this, t] {
        name_this_thread("gv-deliver");
        run(t);
      });
    return true;
  }

  void stop() override {
    // A second stop() waits for the first: when either returns, no answer
    // is left to run (done may reach into its caller, the engine).
    std::lock_guard stopping(stop_mutex_);
    {
      std::lock_guard lock(mutex_);
      if (!running_) return;
      running_ = false;
    }
    for (auto& w : threads_) w->cv.notify_all();
    for (auto& w : threads_)
      if (w->thread.joinable()) w->thread.join();
    // Every batch not applied by now stays in its outbox.
    std::vector<std::shared_ptr<Batch>> unfinished;
    {
      std::lock_guard lock(mutex_);
      unfinished = take_queued();
    }
    for (auto& b : unfinished) b->answer(false, kStopping);
  }

  // A batch waits for the consumers: with several in flight they always
  // have the next one.
  int max_in_flight() const override { return kInFlight; }

  BrokerStats stats() const override {
    BrokerStats s;
    s.kind = "direct";
    s.stored_events = s.consumer_lag = stats_->held.load();
    return s;
  }

 private:
  struct Partition {
    std::deque<Item> queue;
    int64_t next_offset = 0;
    Clock::time_point retry_after{};  // after a throw
  };
  struct Group : Subscription {
    std::vector<Partition> parts;
  };
  struct Worker {
    std::thread thread;
    std::condition_variable cv;
  };
  struct SharedStats {  // outlives the broker: the metrics callback holds it
    std::atomic<int64_t> held{0};  // deliveries queued or with a handler
  };

  void run(int t);

  // Empties every queue; returns the batches of what was in them. Under
  // mutex_.
  std::vector<std::shared_ptr<Batch>> take_queued() {
    std::vector<std::shared_ptr<Batch>> batches;
    for (auto& g : groups_)
      for (auto& part : g->parts) {
        for (auto& item : part.queue) batches.push_back(std::move(item.batch));
        stats_->held -= static_cast<int64_t>(part.queue.size());
        part.queue.clear();
      }
    return batches;
  }

  DirectBrokerOptions options_;
  std::shared_ptr<SharedStats> stats_;
  std::mutex stop_mutex_;     // held through stop()
  // The groups whose patterns match type: matched once per type and kept
  // (a plugin publishes a few types; past kMaxRoutes kept, they start over).
  std::shared_ptr<const std::vector<Group*>> groups_for(const std::string& type) {
    std::lock_guard lock(routes_mutex_);
    if (auto it = routes_.find(type); it != routes_.end()) return it->second;
    auto groups = std::make_shared<std::vector<Group*>>();
    for (auto& g : groups_)
      if (g->matches(type)) groups->push_back(g.get());
    if (routes_.size() >= kMaxRoutes) routes_.clear();
    routes_.emplace(type, groups);
    return groups;
  }
  static constexpr size_t kMaxRoutes = 1024;
  std::mutex routes_mutex_;  // guards routes_
  std::unordered_map<std::string, std::shared_ptr<const std::vector<Group*>>> routes_;
  mutable std::mutex mutex_;  // guards everything below but the threads' handles
  std::vector<std::unique_ptr<Group>> groups_;
  bool started_ = false, running_ = false;
  bool giving_up_ = false;  // a handler gave up for stop: nothing more is delivered
  int partitions_ = 0, threads_count_ = 0;
  std::vector<std::unique_ptr<Worker>> threads_;
};

void DirectBroker::run(int t) {
  Worker& me = *threads_[static_cast<size_t>(t)];
  // This thread's (group, partition) pairs, served in turn from next.
  std::vector<std::pair<Group*, int>> pairs;
  {
    std::lock_guard lock(mutex_);
    for (auto& g : groups_)
      for (int p = t; p < partitions_; p += threads_count_) pairs.emplace_back(g.get(), p);
  }
  if (pairs.empty()) return;
  size_t next = 0;
  std::unique_lock lock(mutex_);
  while (running_) {
    // The next pair, in turn, with events and not waiting after a throw.
    Group* g = nullptr;
    Partition* part = nullptr;
    auto now = Clock::now();
    Clock::time_point wake_at = Clock::time_point::max();
    for (size_t i = 0; i < pairs.size(); ++i) {
      auto& [group, p] = pairs[(next + i) % pairs.size()];
      Partition& candidate = group->parts[static_cast<size_t>(p)];
      if (candidate.queue.empty()) continue;
      if (candidate.retry_after > now) {
        wake_at = std::min(wake_at, candidate.retry_after);
        continue;
      }
      g = group;
      part = &candidate;
      next = (next + i + 1) % pairs.size();
      break;
    }
    if (!part) {
      if (wake_at == Clock::time_point::max())
        wait_rechecking(me.cv, lock);
      else
        me.cv.wait_until(lock, wake_at);
      continue;
    }
    const size_t n = std::min(part->queue.size(), kRunLength);
    std::vector<Item> run(std::make_move_iterator(part->queue.begin()),
                          std::make_move_iterator(part->queue.begin() + static_cast<long>(n)));
    part->queue.erase(part->queue.begin(), part->queue.begin() + static_cast<long>(n));
    lock.unlock();

    std::vector<Delivery> deliveries;
    deliveries.reserve(n);
    for (auto& item : run) deliveries.push_back(std::move(item.delivery));
    size_t applied = 0;
    bool threw = false;
    try {
      applied = std::min(g->handler(std::span<const Delivery>(deliveries)), n);
    } catch (const std::exception& e) {
      threw = true;
      log::error("events: consumer handler threw; retrying",
                 {{"group", g->name}, {"error", e.what()}});
    } catch (...) {
      threw = true;
      log::error("events: consumer handler threw; retrying",
                 {{"group", g->name}, {"error", "unknown exception"}});
    }
    // Count down each applied event's batch, a batch at a time (a run
    // mostly holds consecutive events of one batch).
    for (size_t i = 0; i < applied;) {
      size_t j = i + 1;
      while (j < applied && run[j].batch == run[i].batch) ++j;
      run[i].batch->applied(j - i);
      i = j;
    }
    lock.lock();
    stats_->held -= static_cast<int64_t>(applied);
    if (threw) {
      // Back to the front, in order, to be tried again later.
      for (size_t i = n; i-- > 0;) {
        run[i].delivery = std::move(deliveries[i]);
        part->queue.push_front(std::move(run[i]));
      }
      part->retry_after = Clock::now() + kThrowRetry;
      continue;
    }
    if (applied < n) {
      // The handler gave up (the engine is stopping): this thread delivers
      // nothing more, and every batch not yet applied, in this run or
      // queued anywhere, is answered now, so that the relay keeps their
      // rows for the next start instead of waiting for them.
      giving_up_ = true;
      std::vector<std::shared_ptr<Batch>> unapplied = take_queued();
      for (size_t i = applied; i < n; ++i) unapplied.push_back(std::move(run[i].batch));
      stats_->held -= static_cast<int64_t>(n - applied);
      lock.unlock();
      for (auto& b : unapplied) b->answer(false, kStopping);
      return;
    }
  }
}

}  // namespace

std::unique_ptr<Broker> make_direct_broker(const DirectBrokerOptions& options, Metrics* metrics) {
  return std::make_unique<DirectBroker>(options, metrics);
}

}  // namespace gv::events
