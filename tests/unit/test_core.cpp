// Worker pool, hub, JSON checks and limits, error bodies and the batched log.
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <future>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "core/call.hpp"
#include "core/hub.hpp"
#include "core/json_text.hpp"
#include "core/log.hpp"
#include "core/request_id.hpp"
#include "core/worker_pool.hpp"

TEST_CASE("the worker pool refuses work past its queue limit", "[workers]") {
  std::promise<void> release;
  auto gate = release.get_future().share();
  // Opens the gate however the test ends (a failed REQUIRE must not leave
  // the pool's destructor waiting for a job that waits for the gate).
  struct Open {
    std::promise<void>& p;
    bool opened = false;
    void operator()() {
      if (!opened) p.set_value();
      opened = true;
    }
    ~Open() { (*this)(); }
  } open{release};
  gv::WorkerPool pool(1, 2);
  std::atomic<int> ran{0}, started{0};
  std::mutex order_mutex;
  std::vector<std::string> order;  // what the jobs after the first ran, in turn
  auto job = [&] {
    ++started;
    gate.wait();
    ++ran;
  };
  auto noted = [&](std::string what) {
    return [&, what] {
      job();
      std::lock_guard lock(order_mutex);
      order.push_back(what);
    };
  };
  REQUIRE(pool.try_submit(job));  // running
  for (int i = 0; i < 1000 && started == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  REQUIRE(started == 1);
  REQUIRE(pool.try_submit(noted("queued 1")));
  REQUIRE(pool.try_submit(noted("queued 2")));
  CHECK(pool.depth() == 2);
  CHECK_FALSE(pool.try_submit(job));
  // submit_first is not refused for a full queue, and runs next.
  REQUIRE(pool.submit_first(noted("first")));
  CHECK(pool.depth() == 3);
  open();
  pool.stop();
  CHECK(ran == 4);
  CHECK(order == std::vector<std::string>{"first", "queued 1", "queued 2"});
  CHECK_FALSE(pool.try_submit(job));
  CHECK_FALSE(pool.submit_first(job));
}

TEST_CASE("a job waiting in a BlockingRegion lets a spare thread run the next one", "[workers]") {
  using namespace std::chrono_literals;
  // One thread may use the CPU, with up to two spares for waiting jobs.
  gv::WorkerPool pool(1, 16, 2);
  CHECK(pool.started_threads() == 1);
  std::promise<void> release;
  auto gate = release.get_future().share();
  std::atomic<int> waiting{0}, plain{0};
  auto waiter = [&] {
    gv::BlockingRegion region;
    ++waiting;
    gate.wait();
  };
  REQUIRE(pool.try_submit(waiter));
  REQUIRE(pool.try_submit(waiter));
  REQUIRE(pool.try_submit([&] { ++plain; }));
  // Each waiter gives its place to a spare: the plain job runs although
  // both earlier jobs are still waiting.
  for (int i = 0; i < 400 && plain == 0; ++i) std::this_thread::sleep_for(5ms);
  CHECK(waiting == 2);
  CHECK(plain == 1);
  CHECK(pool.started_threads() == 3);
  // With every thread taken by a waiter, the next plain job waits: the
  // spares are bounded.
  REQUIRE(pool.try_submit(waiter));
  REQUIRE(pool.try_submit([&] { ++plain; }));
  std::this_thread::sleep_for(100ms);
  CHECK(waiting == 3);
  CHECK(plain == 1);
  CHECK(pool.started_threads() == 3);
  release.set_value();
  pool.stop();
  CHECK(plain == 2);
  CHECK(pool.started_threads() == 0);
}

TEST_CASE("a job submitted while every thread waits in a BlockingRegion gets a spare",
          "[workers]") {
  using namespace std::chrono_literals;
  gv::WorkerPool pool(1, 16, 2);
  std::promise<void> release;
  auto gate = release.get_future().share();
  std::atomic<int> waiting{0}, plain{0};
  REQUIRE(pool.try_submit([&] {
    gv::BlockingRegion region;
    ++waiting;
    gate.wait();
  }));
  // The only thread waits, and began to with nothing queued: no spare yet.
  for (int i = 0; i < 400 && waiting == 0; ++i) std::this_thread::sleep_for(5ms);
  REQUIRE(waiting == 1);
  REQUIRE(pool.try_submit([&] { ++plain; }));
  for (int i = 0; i < 400 && plain == 0; ++i) std::this_thread::sleep_for(5ms);
  CHECK(plain == 1);
  CHECK(pool.started_threads() == 2);
  release.set_value();
  pool.stop();
}

TEST_CASE("without a BlockingRegion a busy pool starts no spare thread", "[workers]") {
  using namespace std::chrono_literals;
  gv::WorkerPool pool(1, 16, 4);
  std::promise<void> release;
  auto gate = release.get_future().share();
  std::atomic<int> ran{0};
  REQUIRE(pool.try_submit([&] {
    gate.wait();
    ++ran;
  }));
  REQUIRE(pool.try_submit([&] { ++ran; }));
  std::this_thread::sleep_for(50ms);
  CHECK(ran == 0);  // the second waits for the only thread
  CHECK(pool.started_threads() == 1);
  release.set_value();
  pool.stop();
  CHECK(ran == 2);
}

TEST_CASE("a deferred wake-up reaches the workers when the thread flushes", "[workers]") {
  using namespace std::chrono_literals;
  gv::WorkerPool pool(2, 16);
  // Both threads waiting for a wake-up (so that a job needs one).
  auto both_idle = [&] {
    for (int i = 0; i < 400 && pool.idle_threads() < 2; ++i) std::this_thread::sleep_for(5ms);
    return pool.idle_threads() == 2;
  };
  int scheduled = 0;
  gv::WorkerPool::defer_wakes([&] { ++scheduled; });
  struct EndDeferral {
    ~EndDeferral() { gv::WorkerPool::defer_wakes(nullptr); }
  } end_deferral;  // also when a REQUIRE fails: later tests run on this thread
  std::atomic<int> ran{0};
  REQUIRE(both_idle());
  for (int i = 0; i < 3; ++i) REQUIRE(pool.try_submit([&] { ++ran; }));
  // One flush is asked for, however many jobs the batch queued; until it
  // comes the idle workers sleep.
  CHECK(scheduled == 1);
  std::this_thread::sleep_for(50ms);
  CHECK(ran == 0);
  gv::WorkerPool::flush_wakes();
  for (int i = 0; i < 400 && ran < 3; ++i) std::this_thread::sleep_for(5ms);
  CHECK(ran == 3);
  // The next batch asks again; ending deferral flushes what is owed.
  REQUIRE(both_idle());
  REQUIRE(pool.try_submit([&] { ++ran; }));
  CHECK(scheduled == 2);
  gv::WorkerPool::defer_wakes(nullptr);
  for (int i = 0; i < 400 && ran < 4; ++i) std::this_thread::sleep_for(5ms);
  CHECK(ran == 4);
  // Without deferral a job wakes a worker at once.
  REQUIRE(both_idle());
  REQUIRE(pool.try_submit([&] { ++ran; }));
  for (int i = 0; i < 400 && ran < 5; ++i) std::this_thread::sleep_for(5ms);
  CHECK(ran == 5);
  CHECK(scheduled == 2);
  pool.stop();
}

TEST_CASE("a deferred batch that fills half the queue wakes a worker at once", "[workers]") {
  using namespace std::chrono_literals;
  gv::WorkerPool pool(1, 4);
  for (int i = 0; i < 400 && pool.idle_threads() < 1; ++i) std::this_thread::sleep_for(5ms);
  REQUIRE(pool.idle_threads() == 1);
  gv::WorkerPool::defer_wakes([] {});  // a flush that never comes
  struct EndDeferral {
    ~EndDeferral() { gv::WorkerPool::defer_wakes(nullptr); }
  } end_deferral;
  std::atomic<int> ran{0};
  REQUIRE(pool.try_submit([&] { ++ran; }));
  REQUIRE(pool.try_submit([&] { ++ran; }));  // half of 4: woken now
  for (int i = 0; i < 400 && ran < 2; ++i) std::this_thread::sleep_for(5ms);
  CHECK(ran == 2);
  pool.stop();
}

namespace {
struct Recorder : gv::PushTarget {
  std::vector<std::string> got;
  bool closed = false;
  void send(std::shared_ptr<const std::string> text) override { got.push_back(*text); }
  void close_going_away() override { closed = true; }
};
}  // namespace

TEST_CASE("the hub pushes to users and channels", "[hub]") {
  gv::Hub hub;
  auto a = std::make_shared<Recorder>();
  auto b = std::make_shared<Recorder>();
  uint64_t ia = hub.add(a, "alice");
  uint64_t ib = hub.add(b, "");
  CHECK(ia != ib);
  CHECK(hub.push_to_user("alice", "poke", R"({"n":1})") == 1);
  CHECK(a->got.back() == R"({"event":"poke","data":{"n":1}})");
  CHECK(hub.join(ia, "room"));
  CHECK(hub.join(ib, "room"));
  CHECK_FALSE(hub.join(999, "room"));
  CHECK(hub.push_to_channel("room", "msg", "{}") == 2);
  hub.leave(ia, "room");
  CHECK(hub.push_to_channel("room", "msg", "{}") == 1);
  hub.set_user(ib, "alice");
  CHECK(hub.push_to_user("alice", "poke", "{}") == 2);
  hub.remove(ia);
  CHECK(hub.push_to_user("alice", "poke", "{}") == 1);
  b.reset();  // a socket gone without remove() is skipped
  CHECK(hub.push_to_user("alice", "poke", "{}") == 0);
  CHECK(hub.size() == 1);
}

TEST_CASE("JSON nesting is measured before parsing", "[limits]") {
  CHECK(gv::json_depth_within(R"({"a":[1,{"b":2}]})", 3));
  CHECK_FALSE(gv::json_depth_within(R"({"a":[1,{"b":2}]})", 2));
  CHECK(gv::json_depth_within(R"({"a":"[[[[[[[[["})", 1));  // brackets in strings
  CHECK(gv::json_depth_within(R"({"a":"\"[[[["})", 1));
  CHECK_FALSE(gv::json_depth_within(std::string(100000, '['), 32));
}

TEST_CASE("error bodies have one shape; request ids are sane", "[errors]") {
  auto body = nlohmann::json::parse(gv::error_body("not_found", "no such post", "r1"));
  CHECK(body ==
        nlohmann::json{
            {"error", {{"code", "not_found"}, {"message", "no such post"}, {"request_id", "r1"}}}});
  CHECK(gv::request_id_from("abc-1.2_3:4") == "abc-1.2_3:4");
  CHECK(gv::request_id_from("has space").size() == 16);
  CHECK(gv::request_id_from(std::string(200, 'a')).size() == 16);
  CHECK(gv::new_request_id() != gv::new_request_id());
}

TEST_CASE("batched log lines from many threads all come out, each thread's in order", "[log]") {
  // Standard output goes to a file for the test's length.
  char path[] = "/tmp/gv-log-test-XXXXXX";
  int file = mkstemp(path);
  REQUIRE(file >= 0);
  fflush(stdout);
  int saved = dup(STDOUT_FILENO);
  REQUIRE(dup2(file, STDOUT_FILENO) == STDOUT_FILENO);
  gv::log::start_batching(std::chrono::milliseconds(20));
  constexpr int kThreads = 4, kLines = 3000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([t] {
      for (int i = 0; i < kLines; ++i) {
        std::string id = "t" + std::to_string(t) + "-" + std::to_string(i);
        gv::log::access({id, "http", "GET", "/x", "op", 200, 0.5});
      }
      // An error line is written at once, after the thread's staged lines.
      gv::log::error("last", {{"thread", t}});
    });
  for (auto& th : threads) th.join();  // their stages outlive them
  gv::log::access({"main-0", "http", "GET", "/x", "op", 200, 0.5});
  // A line staged before the interval passes is written by the next flush.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  std::string before_stop;
  {
    std::ifstream early(path);
    before_stop.assign(std::istreambuf_iterator<char>(early), {});
  }
  gv::log::stop_batching();
  fflush(stdout);
  dup2(saved, STDOUT_FILENO);
  close(saved);

  std::ifstream in(path);
  std::vector<int> next(kThreads, 0);
  std::vector<bool> ended(kThreads, false);
  int bad = 0, main_lines = 0;
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded()) {
      ++bad;
      continue;
    }
    if (j["msg"] == "last") {
      int t = j["thread"];
      if (next[t] != kLines) ++bad;  // before some of its thread's lines
      ended[t] = true;
      continue;
    }
    std::string id = j["request_id"];
    if (id == "main-0") {
      ++main_lines;
      continue;
    }
    int t = std::stoi(id.substr(1, id.find('-') - 1));
    int i = std::stoi(id.substr(id.find('-') + 1));
    if (i != next[t] || ended[t]) ++bad;  // lost, repeated or out of order
    next[t] = i + 1;
  }
  close(file);
  std::remove(path);
  CHECK(bad == 0);
  CHECK(main_lines == 1);
  // Staged on the main thread, and by threads that had ended: out with
  // the flush that followed, not only at stop_batching().
  CHECK(before_stop.find("\"main-0\"") != std::string::npos);
  CHECK(before_stop.find("\"t3-2999\"") != std::string::npos);
  for (int t = 0; t < kThreads; ++t) {
    CHECK(next[t] == kLines);
    CHECK(ended[t]);
  }
}

TEST_CASE("is_json answers as nlohmann::json::accept does", "[json]") {
  const std::vector<std::string> texts = {
      "{}", " {\"a\": [1, 2.5e3, -0, true, false, null]} ", "\"\\ud834\\udd1e\"", "[]",
      "{\"a\":\"\\u0000\"}", "1", "\"caf\xc3\xa9\"",
      // integers past 64 bits: simdjson refuses them, nlohmann takes them
      "{\"n\":123456789012345678901234567890}", "-99999999999999999999999",
      // refused by both
      "", " ", "{", "[1,2,]", "{\"a\":1}x", "nul", "{'a':1}", "{\"a\":01}", "1e400", "\"\\ud800\"",
      "\"\\udc00\"", "\"\\ud800\\u0041\"", "\"\xed\xa0\x80\"", "\"\xc0\xaf\"", "\"\x01\"",
      std::string("{\"a\":1}\0", 8), "{\"a\" 1}", "\"\\x\""};
  for (const auto& t : texts) {
    INFO(nlohmann::json(t).dump(-1, ' ', true, nlohmann::json::error_handler_t::replace));
    CHECK(gv::is_json(t) == nlohmann::json::accept(t));
    CHECK(gv::is_json_object(t) ==
          (nlohmann::json::accept(t) && nlohmann::json::parse(t).is_object()));
  }
  // Nesting past simdjson's depth, and a text past the fast check's size.
  const std::string deep = std::string(2000, '[') + std::string(2000, ']');
  CHECK(gv::is_json(deep));
  CHECK_FALSE(gv::is_json(deep + "]"));
  const std::string big = "[\"" + std::string(2 << 20, 'x') + "\"]";
  CHECK(gv::is_json(big));
  CHECK_FALSE(gv::is_json(big.substr(1)));
  CHECK(gv::is_json_object("{\"a\":1}"));
  CHECK_FALSE(gv::is_json_object("[{\"a\":1}]"));
}
