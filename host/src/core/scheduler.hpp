// The scheduler for plugin services: recurring jobs (a fixed interval or a
// 5-field cron expression in UTC), one-off delayed jobs, and an admin "run
// it now".
//
// One timer thread sleeps on a condition variable until the earliest due
// time (or until a job is added, or stop()). It never runs job code: a due
// job is handed to the executor through the submit function given to the
// constructor (the worker pool's try_submit), so plugin code runs where all
// plugin code runs.
//
// Rules:
// - A job never overlaps itself. A job is "in flight" from the moment it is
//   handed to the executor until its run returns; a tick that comes while
//   it is in flight is skipped and counted (reason "running").
// - When submit refuses (full queue), the tick is skipped and counted
//   (reason "queue_full"); a recurring job tries again at its next tick, a
//   one-off job after kOneOffRetry.
// - Interval jobs: the first run is one interval after start() (or after
//   add() once started); then next = previous due time + interval, and if
//   that is already past (a slow executor, a long stall), now + interval.
//   Missed ticks are never made up in a burst.
// - Cron jobs: the next matching minute, UTC, strictly after the tick. A
//   due time is turned into a steady-clock deadline when it is computed, so
//   a step of the wall clock is noticed at the following tick.
// - A job's run may throw: the exception is caught, logged (gv::log::error
//   "scheduled job failed" with the job name and message) and counted; the
//   job keeps its schedule.
//
// Metrics (when a Metrics is given), sampled at scrape time:
//   grapevine_jobs_runs_total{job}              runs started (failed ones included)
//   grapevine_jobs_failures_total{job}          runs that threw
//   grapevine_jobs_skipped_total{job,reason}    reason "running" or "queue_full"
// One-off jobs are counted under their name, so give them a fixed name per
// kind of work ("posts.reindex"), not one per item.
//
// Every member function is thread-safe and may be called from a job's run
// (except stop(): a job that stops its own scheduler waits for itself until
// the timeout).
#pragma once

#include <bitset>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace gv {

class Metrics;

// A parsed cron expression. Bit i is set when value i matches.
struct CronSpec {
  std::bitset<60> minutes;        // 0-59
  std::bitset<24> hours;          // 0-23
  std::bitset<32> days_of_month;  // 1-31 (bit 0 unused)
  std::bitset<13> months;         // 1-12 (bit 0 unused)
  std::bitset<7> days_of_week;    // 0-6, 0 = Sunday (7 is read as Sunday)
  // Whether the day-of-month / day-of-week field starts with '*'. As in
  // Vixie cron: when both day fields are restricted (neither starts with
  // '*'), a day matches if EITHER matches; otherwise both must match.
  bool dom_star = true;
  bool dow_star = true;
};

// Parses "minute hour day-of-month month day-of-week" (fields separated by
// spaces or tabs). Each field is a comma-separated list of items: "*", "n",
// "a-b", "*/s", "a-b/s" or "a/s" (a to the field's maximum, step s). Months
// and days of week may be names (jan-dec, sun-sat; any case). The macros
// @yearly (@annually), @monthly, @weekly, @daily (@midnight) and @hourly
// are accepted. Times are UTC. An expression that can never match (such as
// "0 0 31 4 *") is refused. On failure returns false and sets *error (when
// given) to a message naming the field, e.g.
//   cron field 'hour' (0-23): value 24 is out of range
bool parse_cron(std::string_view expr, CronSpec* out, std::string* error);

// The start of the next matching minute strictly after after_ms (ms since
// the Unix epoch, UTC), in ms since the epoch; -1 if the spec never matches
// (not possible for a spec parse_cron accepted).
int64_t next_cron_time(const CronSpec& spec, int64_t after_ms);

class Scheduler {
 public:
  // submit hands one run to the executor and returns false when it cannot
  // queue it now. It is called without the scheduler's lock held; it should
  // hand the function off rather than run it on the calling thread (the
  // timer thread would wait for the run). A function the executor drops
  // without calling releases its job. metrics may be null; the families
  // registered there hold only a weak reference, so they report nothing
  // once the scheduler is gone.
  using Submit = std::function<bool(std::function<void()>)>;
  Scheduler(Submit submit, Metrics* metrics);
  // Calls stop() with its default timeout.
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  static constexpr std::chrono::milliseconds kMinInterval{10};
  static constexpr std::chrono::milliseconds kMaxInterval{std::chrono::hours(24 * 366)};
  // How soon a one-off job whose submit was refused is tried again.
  static constexpr std::chrono::milliseconds kOneOffRetry{250};

  struct Job {
    // Unique among recurring jobs; by convention "plugin.job". 1-128
    // characters of [A-Za-z0-9_.:-].
    std::string name;
    // Exactly one of interval (kMinInterval..kMaxInterval) and cron.
    std::chrono::milliseconds interval{0};
    std::string cron;
    // The work; may throw (caught, logged, counted).
    std::function<void()> run;
  };

  // Adds a recurring job, before or after start(). Returns false and sets
  // *error (when given) for a duplicate or invalid name, a bad cron
  // expression, both or neither of interval and cron, an interval out of
  // range, an empty run, or a stopped scheduler.
  bool add(Job job, std::string* error);

  // A one-off job: fn runs once, delay after this call (or at start() if
  // that is later). Negative delays count as 0. The name need not be
  // unique. Returns false (and drops fn) for an invalid name, an empty fn
  // or a stopped scheduler.
  bool run_later(std::chrono::milliseconds delay, std::string name, std::function<void()> fn);

  // Admin: hands the named recurring job to the executor now, unless it is
  // in flight. Works before start(); the job's schedule is not changed (a
  // tick that comes during this run is skipped as usual).
  enum class RunNow { started, already_running, not_found, queue_full, stopped };
  RunNow run_now(const std::string& name);

  struct JobInfo {
    std::string name;
    std::string schedule;  // "every 250ms", "every 5s", the cron expression, or "once"
    int64_t runs = 0;
    int64_t failures = 0;
    int64_t skipped_running = 0;     // ticks skipped because it was in flight
    int64_t skipped_queue_full = 0;  // ticks (and run_now calls) refused by submit
    bool running = false;            // its run has started and not yet returned
    bool queued = false;             // handed to the executor, not started yet
    int64_t last_start_ms = 0;       // UTC ms since epoch; 0 = never ran
    int64_t last_duration_ms = -1;   // -1 = no run finished yet
    int64_t next_run_ms = 0;         // UTC ms since epoch; 0 = not scheduled
    std::string last_error;          // what the last failed run threw
  };
  // Recurring jobs in the order they were added, then pending one-off jobs.
  std::vector<JobInfo> jobs() const;

  // Starts the timer thread. Idempotent; does nothing after stop().
  void start();

  // No new runs from now on: the timer thread ends, and runs that are
  // queued in the executor but have not started are dropped when it calls
  // them. Waits up to timeout for runs in progress to return; true if none
  // is left. Idempotent (a later call waits again). The scheduler cannot be
  // started again.
  bool stop(std::chrono::milliseconds timeout = std::chrono::seconds(30));

  // The internals, shared with the functions handed to the executor and
  // with the metric families, so either may outlive the Scheduler.
  struct State;

 private:
  void timer_loop();

  std::shared_ptr<State> state_;
  std::mutex stop_mutex_;  // serialises joining the timer thread
  std::thread timer_;
};

}  // namespace gv
