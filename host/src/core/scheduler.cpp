#include "core/scheduler.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <condition_variable>
#include <exception>
#include <map>

#include "core/cond_wait.hpp"
#include "core/log.hpp"
#include "core/metrics.hpp"
#include "core/thread_name.hpp"

namespace gv {

// ---------------------------------------------------------------------------
// Cron expressions

namespace {

constexpr std::array<const char*, 12> kMonthNames = {"jan", "feb", "mar", "apr", "may", "jun",
                                                     "jul", "aug", "sep", "oct", "nov", "dec"};
constexpr std::array<const char*, 7> kDayNames = {"sun", "mon", "tue", "wed", "thu", "fri", "sat"};

struct FieldDef {
  const char* name;
  int lo, hi;
  const char* range;          // for messages: "0-59", "1-12 or jan-dec"
  const char* const* names;   // null when the field has none
  int name_count, name_base;  // names[i] is the value name_base + i
};

constexpr FieldDef kFields[5] = {
    {"minute", 0, 59, "0-59", nullptr, 0, 0},
    {"hour", 0, 23, "0-23", nullptr, 0, 0},
    {"day-of-month", 1, 31, "1-31", nullptr, 0, 0},
    {"month", 1, 12, "1-12 or jan-dec", kMonthNames.data(), 12, 1},
    {"day-of-week", 0, 7, "0-7 or sun-sat, 0 and 7 are Sunday", kDayNames.data(), 7, 0},
};

bool fail(std::string* error, std::string message) {
  if (error) *error = std::move(message);
  return false;
}

bool field_fail(std::string* error, const FieldDef& f, const std::string& what) {
  return fail(error, std::string("cron field '") + f.name + "' (" + f.range + "): " + what);
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// A number or (where the field has them) a name.
bool parse_value(std::string_view text, const FieldDef& f, int* out, std::string* error) {
  if (text.empty()) return field_fail(error, f, "a value is missing");
  if (std::isdigit(static_cast<unsigned char>(text[0]))) {
    if (text.size() > 3 || !std::all_of(text.begin(), text.end(), [](char c) {
          return std::isdigit(static_cast<unsigned char>(c));
        }))
      return field_fail(error, f, "'" + std::string(text) + "' is not a number");
    int v = std::stoi(std::string(text));
    if (v < f.lo || v > f.hi)
      return field_fail(error, f, "value " + std::to_string(v) + " is out of range");
    *out = v;
    return true;
  }
  if (f.names) {
    std::string l = lower(text);
    for (int i = 0; i < f.name_count; ++i)
      if (l == f.names[i]) {
        *out = f.name_base + i;
        return true;
      }
    return field_fail(error, f, "unknown name '" + std::string(text) + "'");
  }
  return field_fail(error, f, "'" + std::string(text) + "' is not a number");
}

// One field: a comma-separated list of items. Sets bits[lo..hi].
bool parse_field(std::string_view text, const FieldDef& f, std::bitset<64>* bits, bool* star,
                 std::string* error) {
  *star = !text.empty() && text[0] == '*';
  size_t pos = 0;
  for (;;) {
    size_t comma = text.find(',', pos);
    std::string_view item =
        text.substr(pos, comma == std::string_view::npos ? std::string_view::npos : comma - pos);
    if (item.empty()) return field_fail(error, f, "empty item in '" + std::string(text) + "'");

    std::string_view base = item, step_text;
    bool has_step = false;
    if (size_t slash = item.find('/'); slash != std::string_view::npos) {
      base = item.substr(0, slash);
      step_text = item.substr(slash + 1);
      has_step = true;
    }
    int step = 1;
    if (has_step) {
      if (step_text.empty() || step_text.size() > 3 ||
          !std::all_of(step_text.begin(), step_text.end(),
                       [](char c) { return std::isdigit(static_cast<unsigned char>(c)); }))
        return field_fail(
            error, f, "bad step '" + std::string(step_text) + "' in '" + std::string(item) + "'");
      step = std::stoi(std::string(step_text));
      if (step < 1 || step > f.hi - f.lo + 1)
        return field_fail(error, f,
                          "step " + std::to_string(step) + " in '" + std::string(item) +
                              "' must be 1-" + std::to_string(f.hi - f.lo + 1));
    }
    int a = f.lo, b = f.hi;
    if (base == "*") {
    } else if (size_t dash = base.find('-'); dash != std::string_view::npos) {
      if (!parse_value(base.substr(0, dash), f, &a, error) ||
          !parse_value(base.substr(dash + 1), f, &b, error))
        return false;
      if (a > b) return field_fail(error, f, "range '" + std::string(base) + "' runs backwards");
    } else {
      if (!parse_value(base, f, &a, error)) return false;
      b = has_step ? f.hi : a;  // "a/s" is a to the maximum, step s
    }
    for (int v = a; v <= b; v += step) bits->set(static_cast<size_t>(v));

    if (comma == std::string_view::npos) break;
    pos = comma + 1;
  }
  return true;
}

template <size_t N>
std::bitset<N> narrow(const std::bitset<64>& b) {
  std::bitset<N> out;
  for (size_t i = 0; i < N; ++i) out[i] = b[i];
  return out;
}

int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

}  // namespace

bool parse_cron(std::string_view expr, CronSpec* out, std::string* error) {
  std::vector<std::string_view> fields;
  for (size_t i = 0; i < expr.size();) {
    if (expr[i] == ' ' || expr[i] == '\t') {
      ++i;
      continue;
    }
    size_t j = expr.find_first_of(" \t", i);
    if (j == std::string_view::npos) j = expr.size();
    fields.push_back(expr.substr(i, j - i));
    i = j;
  }
  if (fields.empty()) return fail(error, "cron: the expression is empty");

  if (fields.size() == 1 && fields[0][0] == '@') {
    static const std::map<std::string, std::string, std::less<>> kMacros = {
        {"@yearly", "0 0 1 1 *"}, {"@annually", "0 0 1 1 *"}, {"@monthly", "0 0 1 * *"},
        {"@weekly", "0 0 * * 0"}, {"@daily", "0 0 * * *"},    {"@midnight", "0 0 * * *"},
        {"@hourly", "0 * * * *"}};
    auto it = kMacros.find(lower(fields[0]));
    if (it == kMacros.end())
      return fail(error, "cron: unknown macro '" + std::string(fields[0]) +
                             "' (known: @yearly, @annually, @monthly, @weekly, @daily, "
                             "@midnight, @hourly)");
    return parse_cron(it->second, out, error);
  }
  if (fields.size() != 5)
    return fail(error,
                "cron: expected 5 fields (minute hour day-of-month month day-of-week), got " +
                    std::to_string(fields.size()) + " in '" + std::string(expr) + "'");

  std::bitset<64> bits[5];
  bool star[5];
  for (int i = 0; i < 5; ++i)
    if (!parse_field(fields[i], kFields[i], &bits[i], &star[i], error)) return false;

  CronSpec spec;
  spec.minutes = narrow<60>(bits[0]);
  spec.hours = narrow<24>(bits[1]);
  spec.days_of_month = narrow<32>(bits[2]);
  spec.months = narrow<13>(bits[3]);
  spec.days_of_week = narrow<7>(bits[4]);
  if (bits[4][7]) spec.days_of_week.set(0);  // 7 is Sunday too
  spec.dom_star = star[2];
  spec.dow_star = star[4];
  if (next_cron_time(spec, 0) < 0)
    return fail(error, "cron: '" + std::string(expr) +
                           "' never matches (no selected month has that day of the month)");
  *out = spec;
  return true;
}

int64_t next_cron_time(const CronSpec& spec, int64_t after_ms) {
  using namespace std::chrono;
  constexpr int64_t kMinuteMs = 60'000, kDayMinutes = 1440;
  const int64_t minute = floor_div(after_ms, kMinuteMs) + 1;  // strictly after
  int64_t day = floor_div(minute, kDayMinutes);
  int64_t from = minute - day * kDayMinutes;  // first candidate minute of this day
  // The Gregorian calendar, weekdays included, repeats every 146097 days:
  // nothing in that span means nothing ever.
  const int64_t end = day + 146097 + 1;
  while (day < end) {
    const sys_days date{days{day}};
    const year_month_day ymd{date};
    const unsigned month = static_cast<unsigned>(ymd.month());
    if (!spec.months[month]) {
      const year_month_day first = ymd.year() / ymd.month() / 1;
      day = sys_days{first + std::chrono::months{1}}.time_since_epoch().count();
      from = 0;
      continue;
    }
    const bool dom = spec.days_of_month[static_cast<unsigned>(ymd.day())];
    const bool dow = spec.days_of_week[weekday{date}.c_encoding()];
    const bool match = (spec.dom_star || spec.dow_star) ? (dom && dow) : (dom || dow);
    if (match) {
      for (int64_t h = from / 60; h < 24; ++h) {
        if (!spec.hours[static_cast<size_t>(h)]) continue;
        for (int64_t m = (h == from / 60 ? from % 60 : 0); m < 60; ++m)
          if (spec.minutes[static_cast<size_t>(m)])
            return ((day * kDayMinutes) + h * 60 + m) * kMinuteMs;
      }
    }
    ++day;
    from = 0;
  }
  return -1;
}

// ---------------------------------------------------------------------------
// The scheduler

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

int64_t wall_ms() {
  return std::chrono::duration_cast<milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

struct Counters {
  int64_t runs = 0, failures = 0, skipped_running = 0, skipped_queue_full = 0;
  Counters& operator+=(const Counters& o) {
    runs += o.runs;
    failures += o.failures;
    skipped_running += o.skipped_running;
    skipped_queue_full += o.skipped_queue_full;
    return *this;
  }
};

// Everything but name, schedule, kind, interval, cron and run is guarded by
// State::mutex; those are fixed once the entry is listed.
struct Entry {
  std::string name, schedule;
  bool one_off = false;
  bool is_cron = false;
  milliseconds interval{0};
  CronSpec cron;
  std::function<void()> run;

  bool scheduled = false;  // due is meaningful
  Clock::time_point due;
  int64_t due_wall_ms = 0;  // cron: the minute due stands for
  bool in_flight = false;   // handed to the executor, not yet returned
  bool executing = false;   // its run has started and not yet returned
  Counters counters;
  int64_t last_start_ms = 0, last_duration_ms = -1;
  std::string last_error;
};

std::string schedule_text(milliseconds interval) {
  const int64_t ms = interval.count();
  if (ms % 3'600'000 == 0) return "every " + std::to_string(ms / 3'600'000) + "h";
  if (ms % 60'000 == 0) return "every " + std::to_string(ms / 60'000) + "m";
  if (ms % 1000 == 0) return "every " + std::to_string(ms / 1000) + "s";
  return "every " + std::to_string(ms) + "ms";
}

bool valid_name(const std::string& name) {
  return !name.empty() && name.size() <= 128 && std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == ':' ||
           c == '-';
  });
}

std::string label_value(std::string_view v) { return Metrics::label_value(v); }

}  // namespace

struct Scheduler::State {
  Submit submit;
  mutable std::mutex mutex;
  std::condition_variable wake;  // the timer thread
  std::condition_variable idle;  // executing dropped to 0
  std::vector<std::shared_ptr<Entry>> recurring;
  std::vector<std::shared_ptr<Entry>> one_offs;
  std::map<std::string, Counters> finished_one_offs;  // counters of one-offs no longer listed
  bool started = false, stopping = false;
  int executing = 0;  // runs between start and return

  // The next due time of a recurring entry after a tick (or its first).
  void reschedule(Entry& e, Clock::time_point now, bool first) {
    if (e.is_cron) {
      const int64_t now_w = wall_ms();
      // Never the same minute twice, even if the wall clock lags the
      // steady one a little (or was stepped back).
      const int64_t next = next_cron_time(e.cron, std::max(now_w, e.due_wall_ms));
      if (next < 0) {  // cannot happen for a spec parse_cron accepted
        e.scheduled = false;
        return;
      }
      e.due_wall_ms = next;
      e.due = now + milliseconds(next - now_w);
    } else if (first) {
      e.due = now + e.interval;
    } else {
      e.due += e.interval;
      if (e.due <= now) e.due = now + e.interval;  // no catch-up burst
    }
    e.scheduled = true;
  }

  void retire(const std::shared_ptr<Entry>& e) {
    auto it = std::find(one_offs.begin(), one_offs.end(), e);
    if (it == one_offs.end()) return;
    finished_one_offs[e->name] += e->counters;
    one_offs.erase(it);
  }

  // A handed-over run will not happen (refused, dropped, or stopping).
  void release(const std::shared_ptr<Entry>& e) {
    e->in_flight = false;
    if (!e->one_off) return;
    if (stopping) {
      retire(e);
    } else {
      e->scheduled = true;
      e->due = Clock::now() + kOneOffRetry;
      wake.notify_all();
    }
  }
};

namespace {

// One handed-over run. done (guarded by State::mutex) is set by whichever
// comes first: the run starting, submit's refusal, or the last copy of the
// function being destroyed without a run; only the first acts.
struct Ticket {
  std::shared_ptr<Scheduler::State> state;
  std::shared_ptr<Entry> entry;
  bool done = false;
  Ticket(std::shared_ptr<Scheduler::State> s, std::shared_ptr<Entry> e)
      : state(std::move(s)), entry(std::move(e)) {}
  Ticket(const Ticket&) = delete;
  Ticket& operator=(const Ticket&) = delete;
  ~Ticket() {
    std::lock_guard lock(state->mutex);
    if (!done) state->release(entry);
  }
};

void execute(Ticket& t) {
  Scheduler::State& s = *t.state;
  Entry& e = *t.entry;
  {
    std::lock_guard lock(s.mutex);
    if (t.done) return;
    t.done = true;
    if (s.stopping) {
      s.release(t.entry);
      return;
    }
    ++s.executing;
    e.executing = true;
    ++e.counters.runs;
    e.last_start_ms = wall_ms();
  }
  const auto started = Clock::now();
  bool failed = false;
  std::string what;
  try {
    e.run();
  } catch (const std::exception& ex) {
    failed = true;
    what = ex.what();
  } catch (...) {
    failed = true;
    what = "unknown exception";
  }
  const auto took = std::chrono::duration_cast<milliseconds>(Clock::now() - started).count();
  if (failed) {
    try {
      log::error("scheduled job failed", {{"job", e.name}, {"error", what}, {"duration_ms", took}});
    } catch (...) {
    }
  }
  std::lock_guard lock(s.mutex);
  e.in_flight = false;
  e.executing = false;
  e.last_duration_ms = took;
  if (failed) {
    ++e.counters.failures;
    e.last_error = std::move(what);
  }
  if (e.one_off) s.retire(t.entry);
  if (--s.executing == 0) s.idle.notify_all();
}

// Hands the run over; false when submit refuses or throws.
bool hand_over(Scheduler::State& s, const std::shared_ptr<Ticket>& ticket) {
  try {
    return s.submit([ticket] { execute(*ticket); });
  } catch (const std::exception& ex) {
    try {
      log::warn("scheduler: submit threw", {{"job", ticket->entry->name}, {"error", ex.what()}});
    } catch (...) {
    }
    return false;
  } catch (...) {
    return false;
  }
}

// After submit refused: counts it and frees the job (unless the ticket was
// already settled).
void refused(Scheduler::State& s, Ticket& t) {
  std::lock_guard lock(s.mutex);
  ++t.entry->counters.skipped_queue_full;
  if (!t.done) {
    t.done = true;
    s.release(t.entry);
  }
  log::debug("scheduled job skipped: executor queue full", {{"job", t.entry->name}});
}

}  // namespace

Scheduler::Scheduler(Submit submit, Metrics* metrics) : state_(std::make_shared<State>()) {
  state_->submit = std::move(submit);
  if (!metrics) return;
  std::weak_ptr<State> weak = state_;
  auto totals = [weak] {
    std::map<std::string, Counters> out;
    auto s = weak.lock();
    if (!s) return out;
    std::lock_guard lock(s->mutex);
    out = s->finished_one_offs;
    for (const auto& e : s->recurring) out[e->name] += e->counters;
    for (const auto& e : s->one_offs) out[e->name] += e->counters;
    return out;
  };
  metrics->add_family("grapevine_jobs_runs_total", "Scheduled job runs started.", "counter",
                      [totals] {
                        Metrics::Samples out;
                        for (const auto& [name, c] : totals())
                          out.emplace_back("job=\"" + label_value(name) + "\"", c.runs);
                        return out;
                      });
  metrics->add_family("grapevine_jobs_failures_total", "Scheduled job runs that threw.", "counter",
                      [totals] {
                        Metrics::Samples out;
                        for (const auto& [name, c] : totals())
                          out.emplace_back("job=\"" + label_value(name) + "\"", c.failures);
                        return out;
                      });
  metrics->add_family(
      "grapevine_jobs_skipped_total",
      "Scheduled job ticks skipped: the job was still running, or the worker queue was full.",
      "counter", [totals] {
        Metrics::Samples out;
        for (const auto& [name, c] : totals()) {
          const std::string job = "job=\"" + label_value(name) + "\"";
          out.emplace_back(job + ",reason=\"running\"", c.skipped_running);
          out.emplace_back(job + ",reason=\"queue_full\"", c.skipped_queue_full);
        }
        return out;
      });
}

Scheduler::~Scheduler() { stop(); }

bool Scheduler::add(Job job, std::string* error) {
  auto e = std::make_shared<Entry>();
  if (!valid_name(job.name))
    return fail(error, "job name '" + job.name + "' must be 1-128 characters of [A-Za-z0-9_.:-]");
  const bool has_interval = job.interval.count() != 0, has_cron = !job.cron.empty();
  if (has_interval == has_cron)
    return fail(error, "job '" + job.name + "': give exactly one of interval and cron");
  if (has_interval) {
    if (job.interval < kMinInterval || job.interval > kMaxInterval)
      return fail(error, "job '" + job.name + "': interval " +
                             std::to_string(job.interval.count()) + "ms is out of range (" +
                             std::to_string(kMinInterval.count()) + "ms to 366 days)");
    e->interval = job.interval;
    e->schedule = schedule_text(job.interval);
  } else {
    std::string why;
    if (!parse_cron(job.cron, &e->cron, &why)) return fail(error, "job '" + job.name + "': " + why);
    e->is_cron = true;
    e->schedule = job.cron;
  }
  if (!job.run) return fail(error, "job '" + job.name + "': run is empty");
  e->name = std::move(job.name);
  e->run = std::move(job.run);

  std::lock_guard lock(state_->mutex);
  if (state_->stopping) return fail(error, "job '" + e->name + "': the scheduler is stopped");
  for (const auto& other : state_->recurring)
    if (other->name == e->name) return fail(error, "job '" + e->name + "' is already scheduled");
  if (state_->started) {
    state_->reschedule(*e, Clock::now(), true);
    state_->wake.notify_all();
  }
  state_->recurring.push_back(std::move(e));
  return true;
}

bool Scheduler::run_later(milliseconds delay, std::string name, std::function<void()> fn) {
  if (!valid_name(name) || !fn) return false;
  auto e = std::make_shared<Entry>();
  e->name = std::move(name);
  e->schedule = "once";
  e->one_off = true;
  e->run = std::move(fn);
  e->scheduled = true;
  e->due = Clock::now() + std::clamp(delay, milliseconds(0), kMaxInterval);
  std::lock_guard lock(state_->mutex);
  if (state_->stopping) return false;
  state_->one_offs.push_back(std::move(e));
  state_->wake.notify_all();
  return true;
}

Scheduler::RunNow Scheduler::run_now(const std::string& name) {
  std::shared_ptr<Ticket> ticket;
  {
    std::lock_guard lock(state_->mutex);
    if (state_->stopping) return RunNow::stopped;
    auto it = std::find_if(state_->recurring.begin(), state_->recurring.end(),
                           [&](const auto& e) { return e->name == name; });
    if (it == state_->recurring.end()) return RunNow::not_found;
    if ((*it)->in_flight) return RunNow::already_running;
    (*it)->in_flight = true;
    ticket = std::make_shared<Ticket>(state_, *it);
  }
  if (hand_over(*state_, ticket)) return RunNow::started;
  refused(*state_, *ticket);
  return RunNow::queue_full;
}

std::vector<Scheduler::JobInfo> Scheduler::jobs() const {
  std::vector<JobInfo> out;
  std::lock_guard lock(state_->mutex);
  const auto now = Clock::now();
  const int64_t now_w = wall_ms();
  auto info = [&](const Entry& e) {
    JobInfo j;
    j.name = e.name;
    j.schedule = e.schedule;
    j.runs = e.counters.runs;
    j.failures = e.counters.failures;
    j.skipped_running = e.counters.skipped_running;
    j.skipped_queue_full = e.counters.skipped_queue_full;
    j.running = e.executing;
    // Queued runs are dropped once stopping.
    j.queued = e.in_flight && !e.executing && !state_->stopping;
    j.last_start_ms = e.last_start_ms;
    j.last_duration_ms = e.last_duration_ms;
    if (e.scheduled && !state_->stopping)
      j.next_run_ms = e.is_cron
                          ? e.due_wall_ms
                          : now_w + std::chrono::duration_cast<milliseconds>(e.due - now).count();
    j.last_error = e.last_error;
    out.push_back(std::move(j));
  };
  for (const auto& e : state_->recurring) info(*e);
  for (const auto& e : state_->one_offs) info(*e);
  return out;
}

void Scheduler::start() {
  std::lock_guard stop_lock(stop_mutex_);
  {
    std::lock_guard lock(state_->mutex);
    if (state_->started || state_->stopping) return;
    state_->started = true;
    const auto now = Clock::now();
    for (auto& e : state_->recurring) state_->reschedule(*e, now, true);
  }
  timer_ = std::thread([this] {
    name_this_thread("gv-scheduler");
    timer_loop();
  });
}

bool Scheduler::stop(milliseconds timeout) {
  {
    std::lock_guard stop_lock(stop_mutex_);
    {
      std::lock_guard lock(state_->mutex);
      state_->stopping = true;
    }
    state_->wake.notify_all();
    if (timer_.joinable()) timer_.join();
  }
  std::unique_lock lock(state_->mutex);
  return state_->idle.wait_for(lock, timeout, [this] { return state_->executing == 0; });
}

void Scheduler::timer_loop() {
  State& s = *state_;
  std::vector<std::shared_ptr<Ticket>> due;
  std::unique_lock lock(s.mutex);
  while (!s.stopping) {
    const auto now = Clock::now();
    auto next = Clock::time_point::max();
    auto visit = [&](const std::shared_ptr<Entry>& e) {
      if (!e->scheduled) return;
      if (e->due <= now) {
        if (e->in_flight) {
          ++e->counters.skipped_running;
          log::debug("scheduled job skipped: still running", {{"job", e->name}});
          s.reschedule(*e, now, false);
        } else {
          e->in_flight = true;
          if (e->one_off)
            e->scheduled = false;
          else
            s.reschedule(*e, now, false);
          due.push_back(std::make_shared<Ticket>(state_, e));
        }
      }
      if (e->scheduled) next = std::min(next, e->due);
    };
    for (const auto& e : s.recurring) visit(e);
    for (const auto& e : s.one_offs) visit(e);

    if (!due.empty()) {
      // submit, and a ticket's destructor, run without the lock.
      lock.unlock();
      for (const auto& t : due)
        if (!hand_over(s, t)) refused(s, *t);
      due.clear();
      lock.lock();
      continue;  // due times may have moved meanwhile
    }
    if (next == Clock::time_point::max())
      wait_rechecking(s.wake, lock);
    else
      s.wake.wait_until(lock, next);
  }
}

}  // namespace gv
