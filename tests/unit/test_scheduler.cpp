// The scheduler: cron expressions, interval and one-off jobs, no overlap,
// run_now, failures, stop, a refusing executor.
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <future>
#include <stdexcept>
#include <thread>

#include "core/metrics.hpp"
#include "core/scheduler.hpp"
#include "core/worker_pool.hpp"
#include "eventually.hpp"

using namespace std::chrono_literals;

namespace {

// ms since the epoch of a UTC date and time.
int64_t utc(int y, unsigned mo, unsigned d, int h = 0, int mi = 0, int s = 0) {
  using namespace std::chrono;
  const sys_days date{year{y} / month{mo} / day{d}};
  return duration_cast<milliseconds>(date.time_since_epoch() + hours{h} + minutes{mi} + seconds{s})
      .count();
}

gv::CronSpec cron(std::string_view expr) {
  gv::CronSpec spec;
  std::string error;
  INFO(expr);
  REQUIRE(gv::parse_cron(expr, &spec, &error));
  CHECK(error.empty());
  return spec;
}

std::string cron_error(std::string_view expr) {
  gv::CronSpec spec;
  std::string error;
  INFO(expr);
  CHECK_FALSE(gv::parse_cron(expr, &spec, &error));
  return error;
}

// Three seconds: every wait here is for a job due within a few hundred ms.
template <class Pred>
bool eventually(Pred pred) {
  return gvtest::eventually(pred, 3s);
}

gv::Scheduler::JobInfo info(const gv::Scheduler& s, const std::string& name) {
  for (auto& j : s.jobs())
    if (j.name == name) return j;
  FAIL("no job " << name);
  return {};
}

// A worker pool as the executor, as in the host.
struct Pool {
  gv::WorkerPool pool{4, 64};
  gv::Scheduler::Submit submit() {
    return [this](std::function<void()> f) { return pool.try_submit(std::move(f)); };
  }
};

}  // namespace

TEST_CASE("cron expressions parse", "[scheduler]") {
  auto all = cron("* * * * *");
  CHECK(all.minutes.all());
  CHECK(all.hours.all());
  CHECK(all.days_of_month.count() == 31);
  CHECK(all.months.count() == 12);
  CHECK(all.days_of_week.all());
  CHECK(all.dom_star);
  CHECK(all.dow_star);

  auto work = cron("*/15 9-17 * * mon-fri");
  CHECK(work.minutes.count() == 4);
  CHECK(work.minutes[45]);
  CHECK(work.hours.count() == 9);
  CHECK(work.days_of_week.count() == 5);
  CHECK_FALSE(work.days_of_week[0]);
  CHECK(work.dom_star);
  CHECK_FALSE(work.dow_star);

  auto lists = cron("0,30 0 1,15 JAN,jul 7");
  CHECK(lists.minutes.count() == 2);
  CHECK(lists.days_of_month.count() == 2);
  CHECK(lists.months.count() == 2);
  CHECK(lists.months[7]);
  CHECK(lists.days_of_week.count() == 1);
  CHECK(lists.days_of_week[0]);  // 7 is Sunday
  CHECK_FALSE(lists.dom_star);

  auto steps = cron("10-30/10 5/6 * * *");
  CHECK(steps.minutes.count() == 3);
  CHECK(steps.minutes[20]);
  CHECK(steps.hours.count() == 4);  // 5, 11, 17, 23
  CHECK(steps.hours[23]);

  auto tabs = cron("\t0  0 *\t* *  ");
  CHECK(tabs.minutes.count() == 1);

  auto daily = cron("@daily");
  CHECK(daily.minutes.count() == 1);
  CHECK(daily.hours.count() == 1);
  CHECK(cron("@hourly").hours.all());
}

TEST_CASE("bad cron expressions are refused with the field named", "[scheduler]") {
  CHECK(cron_error("") == "cron: the expression is empty");
  CHECK_THAT(cron_error("* * * *"),
             Catch::Contains("expected 5 fields") && Catch::Contains("got 4"));
  CHECK_THAT(cron_error("* * * * * *"), Catch::Contains("got 6"));
  CHECK(cron_error("60 * * * *") == "cron field 'minute' (0-59): value 60 is out of range");
  CHECK_THAT(cron_error("* 24 * * *"), Catch::Contains("'hour'") && Catch::Contains("24"));
  CHECK_THAT(cron_error("* * 0 * *"), Catch::Contains("'day-of-month'"));
  CHECK_THAT(cron_error("* * * 13 *"), Catch::Contains("'month'"));
  CHECK_THAT(cron_error("* * * * 8"), Catch::Contains("'day-of-week'"));
  CHECK_THAT(cron_error("*/0 * * * *"), Catch::Contains("'minute'") && Catch::Contains("step 0"));
  CHECK_THAT(cron_error("*/x * * * *"), Catch::Contains("bad step 'x'"));
  CHECK_THAT(cron_error("* */25 * * *"), Catch::Contains("'hour'") && Catch::Contains("step 25"));
  CHECK_THAT(cron_error("5-2 * * * *"),
             Catch::Contains("'minute'") && Catch::Contains("backwards"));
  CHECK_THAT(cron_error("* * * foo *"), Catch::Contains("'month'") && Catch::Contains("'foo'"));
  CHECK_THAT(cron_error("* * * * mon-funday"), Catch::Contains("'day-of-week'"));
  CHECK_THAT(cron_error("1,,2 * * * *"), Catch::Contains("empty item"));
  CHECK_THAT(cron_error("a * * * *"), Catch::Contains("'a' is not a number"));
  CHECK_THAT(cron_error("-1 * * * *"), Catch::Contains("missing"));
  CHECK_THAT(cron_error("0 0 31 4,6 *"), Catch::Contains("never matches"));
  CHECK_THAT(cron_error("0 0 30 2 *"), Catch::Contains("never matches"));
  CHECK_THAT(cron_error("@fortnightly"), Catch::Contains("unknown macro"));
  // Both day fields restricted: either may match, so this one can.
  cron("0 0 30 2 mon");
}

TEST_CASE("next_cron_time finds the next matching minute", "[scheduler]") {
  // Strictly after, at minute resolution.
  CHECK(gv::next_cron_time(cron("* * * * *"), utc(2024, 1, 1)) == utc(2024, 1, 1, 0, 1));
  CHECK(gv::next_cron_time(cron("* * * * *"), utc(2024, 1, 1, 0, 0, 30)) == utc(2024, 1, 1, 0, 1));
  CHECK(gv::next_cron_time(cron("* * * * *"), utc(2024, 1, 1) - 1) == utc(2024, 1, 1));

  // Month and year rollover.
  auto first = cron("0 0 1 * *");
  CHECK(gv::next_cron_time(first, utc(2024, 1, 31, 12)) == utc(2024, 2, 1));
  CHECK(gv::next_cron_time(first, utc(2024, 12, 15)) == utc(2025, 1, 1));
  CHECK(gv::next_cron_time(cron("59 23 31 12 *"), utc(2024, 12, 31, 23, 59)) ==
        utc(2025, 12, 31, 23, 59));
  CHECK(gv::next_cron_time(cron("0 12 31 * *"), utc(2024, 1, 31, 13)) == utc(2024, 3, 31, 12));

  // Leap day: every four years, but not in 2100.
  auto leap = cron("0 0 29 2 *");
  CHECK(gv::next_cron_time(leap, utc(2024, 3, 1)) == utc(2028, 2, 29));
  CHECK(gv::next_cron_time(leap, utc(2023, 6, 1)) == utc(2024, 2, 29));
  CHECK(gv::next_cron_time(leap, utc(2096, 3, 1)) == utc(2104, 2, 29));

  // Both day fields restricted: the 13th OR a Friday. 2024-09-01 is a Sunday.
  auto friday13 = cron("0 0 13 * 5");
  CHECK(gv::next_cron_time(friday13, utc(2024, 9, 1)) == utc(2024, 9, 6));
  CHECK(gv::next_cron_time(friday13, utc(2024, 9, 6)) == utc(2024, 9, 13));
  CHECK(gv::next_cron_time(friday13, utc(2024, 10, 12)) == utc(2024, 10, 13));  // a Sunday
  // Day of month starts with '*': both must match (Vixie cron): odd days
  // that are Mondays. 2024-09-02 is an even Monday.
  CHECK(gv::next_cron_time(cron("0 0 */2 * 1"), utc(2024, 9, 1)) == utc(2024, 9, 9));
  // Only the day of week restricted.
  CHECK(gv::next_cron_time(cron("30 8 * * mon-fri"), utc(2024, 9, 6, 9)) == utc(2024, 9, 9, 8, 30));
  CHECK(gv::next_cron_time(cron("0 0 * * 7"), utc(2024, 9, 2)) == utc(2024, 9, 8));

  // Steps.
  auto steps = cron("*/20 */6 * * *");
  CHECK(gv::next_cron_time(steps, utc(2024, 1, 1, 5, 50)) == utc(2024, 1, 1, 6, 0));
  CHECK(gv::next_cron_time(steps, utc(2024, 1, 1, 6, 41)) == utc(2024, 1, 1, 12, 0));
  CHECK(gv::next_cron_time(steps, utc(2024, 1, 1, 18, 40)) == utc(2024, 1, 2, 0, 0));
  CHECK(gv::next_cron_time(cron("10-30/10 * * * *"), utc(2024, 1, 1, 0, 30)) ==
        utc(2024, 1, 1, 1, 10));

  // Months by name, skipped quickly.
  CHECK(gv::next_cron_time(cron("0 6 1 dec *"), utc(2024, 1, 2)) == utc(2024, 12, 1, 6));
}

TEST_CASE("add refuses bad jobs", "[scheduler]") {
  gv::Scheduler s([](std::function<void()>) { return true; }, nullptr);
  auto noop = [] {};
  std::string error;
  CHECK(s.add({"a.tick", 1s, "", noop}, &error));
  CHECK_FALSE(s.add({"a.tick", 2s, "", noop}, &error));
  CHECK_THAT(error, Catch::Contains("already scheduled"));
  CHECK_FALSE(s.add({"a.cron", 0ms, "* 25 * * *", noop}, &error));
  CHECK_THAT(error, Catch::Contains("'a.cron'") && Catch::Contains("'hour'"));
  CHECK_FALSE(s.add({"a.both", 1s, "* * * * *", noop}, &error));
  CHECK_THAT(error, Catch::Contains("exactly one"));
  CHECK_FALSE(s.add({"a.neither", 0ms, "", noop}, &error));
  CHECK_THAT(error, Catch::Contains("exactly one"));
  CHECK_FALSE(s.add({"a.fast", 5ms, "", noop}, &error));
  CHECK_THAT(error, Catch::Contains("out of range"));
  CHECK_FALSE(s.add({"a.empty", 1s, "", nullptr}, &error));
  CHECK_THAT(error, Catch::Contains("run is empty"));
  CHECK_FALSE(s.add({"bad name", 1s, "", noop}, &error));
  CHECK_FALSE(s.add({"", 1s, "", noop}, &error));
  CHECK(s.add({"a.cron", 0ms, "*/5 * * * *", noop}, &error));

  auto jobs = s.jobs();
  REQUIRE(jobs.size() == 2);
  CHECK(jobs[0].schedule == "every 1s");
  CHECK(jobs[1].schedule == "*/5 * * * *");
  CHECK(jobs[0].next_run_ms == 0);  // not started
}

TEST_CASE("an interval job runs repeatedly", "[scheduler]") {
  Pool pool;
  gv::Metrics metrics;
  std::atomic<int> ran{0};
  gv::Scheduler s(pool.submit(), &metrics);
  REQUIRE(s.add({"t.tick", 20ms, "", [&] { ++ran; }}, nullptr));
  std::this_thread::sleep_for(60ms);
  CHECK(ran == 0);  // nothing before start
  const auto t0 = std::chrono::steady_clock::now();
  s.start();
  REQUIRE(eventually([&] { return ran >= 4; }));
  // No catch-up: four runs take at least three intervals after the first.
  CHECK(std::chrono::steady_clock::now() - t0 >= 70ms);
  CHECK(s.stop(1s));
  auto j = info(s, "t.tick");
  CHECK(j.runs == ran);
  CHECK(j.failures == 0);
  CHECK(j.last_start_ms > 0);
  CHECK(j.last_duration_ms >= 0);
  CHECK(j.schedule == "every 20ms");
  CHECK_THAT(metrics.render(), Catch::Contains("grapevine_jobs_runs_total{job=\"t.tick\"} " +
                                               std::to_string(ran.load())));
}

TEST_CASE("a job never overlaps itself; skipped ticks are counted", "[scheduler]") {
  Pool pool;
  gv::Metrics metrics;
  std::atomic<int> now{0}, most{0}, ran{0};
  gv::Scheduler s(pool.submit(), &metrics);
  REQUIRE(s.add({"t.slow", 10ms, "",
                 [&] {
                   int n = ++now;
                   int m = most;
                   while (n > m && !most.compare_exchange_weak(m, n)) {
                   }
                   std::this_thread::sleep_for(60ms);
                   --now;
                   ++ran;
                 }},
                nullptr));
  s.start();
  REQUIRE(eventually([&] { return ran >= 3; }));
  CHECK(s.stop(1s));
  CHECK(most == 1);
  auto j = info(s, "t.slow");
  CHECK_FALSE(j.queued);
  CHECK(j.skipped_running >= 3);
  CHECK(j.skipped_queue_full == 0);
  CHECK_FALSE(j.running);
  const auto text = metrics.render();
  CHECK_THAT(text,
             Catch::Contains("grapevine_jobs_skipped_total{job=\"t.slow\",reason=\"running\"} " +
                             std::to_string(j.skipped_running)));
  CHECK_THAT(text, Catch::Contains(
                       "grapevine_jobs_skipped_total{job=\"t.slow\",reason=\"queue_full\"} 0"));
}

TEST_CASE("run_now runs a job at once, never twice at a time", "[scheduler]") {
  Pool pool;
  std::promise<void> entered_p, release_p;
  auto entered = entered_p.get_future();
  auto release = release_p.get_future().share();
  std::atomic<int> ran{0};
  gv::Scheduler s(pool.submit(), nullptr);
  REQUIRE(s.add({"t.admin", std::chrono::hours(1), "",
                 [&, release] {
                   if (++ran == 1) {
                     entered_p.set_value();
                     release.wait();
                   }
                 }},
                nullptr));
  s.start();
  CHECK(s.run_now("t.admin") == gv::Scheduler::RunNow::started);
  REQUIRE(entered.wait_for(2s) == std::future_status::ready);
  CHECK(info(s, "t.admin").running);
  CHECK(s.run_now("t.admin") == gv::Scheduler::RunNow::already_running);
  CHECK(s.run_now("t.nope") == gv::Scheduler::RunNow::not_found);
  release_p.set_value();
  REQUIRE(eventually([&] { return !info(s, "t.admin").running; }));
  CHECK(s.run_now("t.admin") == gv::Scheduler::RunNow::started);
  REQUIRE(eventually([&] { return ran == 2; }));
  CHECK(s.stop(1s));
  CHECK(info(s, "t.admin").runs == 2);
  CHECK(s.run_now("t.admin") == gv::Scheduler::RunNow::stopped);
}

TEST_CASE("a job that throws is counted and keeps its schedule", "[scheduler]") {
  Pool pool;
  gv::Metrics metrics;
  std::atomic<int> ran{0};
  gv::Scheduler s(pool.submit(), &metrics);
  REQUIRE(s.add({"t.flaky", 10ms, "",
                 [&] {
                   if (++ran % 2 == 1) throw std::runtime_error("disk on fire");
                   if (ran == 4) throw 42;  // not a std::exception
                 }},
                nullptr));
  s.start();
  REQUIRE(eventually([&] { return ran >= 5; }));
  CHECK(s.stop(1s));
  auto j = info(s, "t.flaky");
  CHECK(j.runs == ran);
  CHECK(j.failures == (ran + 1) / 2 + 1);
  CHECK((j.last_error == "disk on fire" || j.last_error == "unknown exception"));
  CHECK_THAT(metrics.render(), Catch::Contains("grapevine_jobs_failures_total{job=\"t.flaky\"} " +
                                               std::to_string(j.failures)));
}

TEST_CASE("run_later fires once after its delay", "[scheduler]") {
  Pool pool;
  gv::Metrics metrics;
  std::atomic<int> ran{0}, early{0};
  std::atomic<int64_t> after_ms{-1};
  gv::Scheduler s(pool.submit(), &metrics);
  s.start();
  const auto t0 = std::chrono::steady_clock::now();
  REQUIRE(s.run_later(80ms, "t.once", [&] {
    after_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
            .count();
    ++ran;
  }));
  CHECK_FALSE(s.run_later(10ms, "bad name", [] {}));
  auto jobs = s.jobs();
  REQUIRE(jobs.size() == 1);
  CHECK(jobs[0].schedule == "once");
  CHECK(jobs[0].next_run_ms > 0);
  REQUIRE(eventually([&] { return ran == 1; }));
  CHECK(after_ms >= 80);
  std::this_thread::sleep_for(100ms);
  CHECK(ran == 1);
  CHECK(eventually([&] { return s.jobs().empty(); }));  // gone once run
  CHECK_THAT(metrics.render(), Catch::Contains("grapevine_jobs_runs_total{job=\"t.once\"} 1"));

  // One-offs added before start wait for it.
  gv::Scheduler later(pool.submit(), nullptr);
  REQUIRE(later.run_later(0ms, "t.early", [&] { ++early; }));
  std::this_thread::sleep_for(30ms);
  CHECK(early == 0);
  later.start();
  CHECK(eventually([&] { return early == 1; }));
}

TEST_CASE("stop waits for a running job and prevents further runs", "[scheduler]") {
  Pool pool;
  std::promise<void> release_p;
  auto release = release_p.get_future().share();
  std::atomic<int> ran{0}, pending{0};
  std::atomic<bool> inside{false}, finished{false};
  gv::Scheduler s(pool.submit(), nullptr);
  REQUIRE(s.add({"t.long", 10ms, "",
                 [&, release] {
                   ++ran;
                   inside = true;
                   release.wait();
                   finished = true;
                 }},
                nullptr));
  s.start();
  REQUIRE(eventually([&] { return inside.load(); }));
  REQUIRE(s.run_later(100ms, "t.pending", [&] { ++pending; }));
  std::thread releaser([&] {
    std::this_thread::sleep_for(200ms);
    release_p.set_value();
  });
  const auto t0 = std::chrono::steady_clock::now();
  CHECK(s.stop(5s));
  CHECK(finished);  // stop returned only after the run did
  CHECK(std::chrono::steady_clock::now() - t0 >= 150ms);
  releaser.join();
  CHECK(ran == 1);
  CHECK_FALSE(info(s, "t.long").running);
  std::this_thread::sleep_for(100ms);
  CHECK(ran == 1);
  CHECK(pending == 0);  // was due while stop waited
  CHECK(s.stop(10ms));  // idempotent
  std::string error;
  CHECK_FALSE(s.add({"t.new", 1s, "", [] {}}, &error));
  CHECK_THAT(error, Catch::Contains("stopped"));
  CHECK_FALSE(s.run_later(0ms, "t.new", [] {}));
  s.start();  // no restart
  std::this_thread::sleep_for(30ms);
  CHECK(ran == 1);
  CHECK(info(s, "t.long").next_run_ms == 0);
}

TEST_CASE("stop gives up on a run that outlasts its timeout", "[scheduler]") {
  Pool pool;
  std::promise<void> release_p;
  auto release = release_p.get_future().share();
  std::atomic<bool> inside{false};
  {
    gv::Scheduler s(pool.submit(), nullptr);
    REQUIRE(s.add({"t.stuck", 1h, "",
                   [&, release] {
                     inside = true;
                     release.wait();
                   }},
                  nullptr));
    REQUIRE(s.run_now("t.stuck") == gv::Scheduler::RunNow::started);  // before start: allowed
    REQUIRE(eventually([&] { return inside.load(); }));
    CHECK_FALSE(s.stop(30ms));
    release_p.set_value();
    CHECK(s.stop(2s));
  }
}

TEST_CASE("a refusing executor counts queue_full and the next tick tries again", "[scheduler]") {
  Pool pool;
  std::atomic<bool> accept{false};
  std::atomic<int> offered{0}, ran{0}, done{0};
  gv::Scheduler s(
      [&](std::function<void()> f) {
        ++offered;
        return accept && pool.pool.try_submit(std::move(f));
      },
      nullptr);
  REQUIRE(s.add({"t.busy", 10ms, "", [&] { ++ran; }}, nullptr));
  CHECK(s.run_now("t.busy") == gv::Scheduler::RunNow::queue_full);
  s.start();
  REQUIRE(eventually([&] { return info(s, "t.busy").skipped_queue_full >= 4; }));
  CHECK(ran == 0);
  CHECK_FALSE(info(s, "t.busy").running);
  accept = true;
  REQUIRE(eventually([&] { return ran >= 2; }));
  CHECK(s.stop(1s));

  // A one-off that was refused is tried again.
  gv::Scheduler once(
      [&](std::function<void()> f) { return accept && pool.pool.try_submit(std::move(f)); },
      nullptr);
  accept = false;
  once.start();
  REQUIRE(once.run_later(0ms, "t.retry", [&] { ++done; }));
  REQUIRE(eventually([&] { return once.jobs().at(0).skipped_queue_full >= 1; }));
  accept = true;
  CHECK(eventually([&] { return done == 1; }));
}

TEST_CASE("a run the executor drops does not wedge its job", "[scheduler]") {
  std::atomic<int> offered{0};
  // Accepts, then throws the function away without calling it.
  gv::Scheduler s(
      [&](std::function<void()> f) {
        ++offered;
        f = nullptr;
        return true;
      },
      nullptr);
  REQUIRE(s.add({"t.lost", 1h, "", [] {}}, nullptr));
  CHECK(s.run_now("t.lost") == gv::Scheduler::RunNow::started);
  CHECK_FALSE(info(s, "t.lost").running);
  CHECK(s.run_now("t.lost") == gv::Scheduler::RunNow::started);
  CHECK(offered == 2);
  CHECK(info(s, "t.lost").runs == 0);
}

TEST_CASE("a cron job is due at the next minute boundary", "[scheduler]") {
  Pool pool;
  gv::Scheduler s(pool.submit(), nullptr);
  REQUIRE(s.add({"t.minutely", 0ms, "* * * * *", [] {}}, nullptr));
  s.start();
  const auto now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  auto j = info(s, "t.minutely");
  CHECK(j.next_run_ms % 60000 == 0);
  CHECK(j.next_run_ms > now_ms - 1000);
  CHECK(j.next_run_ms <= now_ms + 60000);
  CHECK(j.schedule == "* * * * *");
}
