// The in-process cache: strings with TTL, counters, sorted sets, the memory
// bound and its LRU eviction, stats, and thread safety.
#include <catch2/catch.hpp>

#include <chrono>
#include <cmath>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "stores/memory_cache.hpp"

using gv::stores::CacheStatus;
using gv::stores::MemoryCache;
using gv::stores::ScoredMember;
using namespace std::chrono_literals;

namespace {

// A clock the test moves by hand, so TTL tests never sleep.
struct FakeClock {
  MemoryCache::TimePoint now{std::chrono::hours(1)};
  MemoryCache::Clock fn() {
    return [this] { return now; };
  }
};

constexpr size_t kBig = 1 << 20;

// What the cache charges for a string entry.
size_t cost(const std::string& key, const std::string& value) {
  return MemoryCache::kEntryOverhead + key.size() + value.size();
}

std::vector<std::string> members(const std::vector<ScoredMember>& v) {
  std::vector<std::string> out;
  for (const auto& m : v) out.push_back(m.member);
  return out;
}

using Names = std::vector<std::string>;

}  // namespace

TEST_CASE("set and get bytes; set replaces value and TTL", "[cache]") {
  FakeClock clock;
  MemoryCache cache(kBig, clock.fn());
  const std::string key("k\0ey", 4), value("v\0\xff", 3);
  CHECK_FALSE(cache.get(key));
  REQUIRE(cache.set(key, value, 0ms) == CacheStatus::ok);
  CHECK(cache.get(key) == value);
  CHECK(cache.ttl(key) == 0ms);  // 0: no expiry
  REQUIRE(cache.set(key, "x", 50ms) == CacheStatus::ok);
  CHECK(cache.ttl(key) == 50ms);
  REQUIRE(cache.set(key, "y", 0ms) == CacheStatus::ok);
  CHECK(cache.ttl(key) == 0ms);
  CHECK_FALSE(cache.ttl("absent"));
  CHECK(cache.set(key, "z", -1ms) == CacheStatus::invalid_argument);
  CHECK(cache.get(key) == "y");
  CHECK(cache.del(key).value);
  CHECK_FALSE(cache.del(key).value);
  CHECK(cache.stats().bytes_used == 0);
}

TEST_CASE("keys expire at their TTL without sleeping", "[cache][ttl]") {
  FakeClock clock;
  MemoryCache cache(kBig, clock.fn());
  REQUIRE(cache.set("a", "1", 100ms) == CacheStatus::ok);
  clock.now += 99ms;
  CHECK(cache.get("a") == "1");
  CHECK(cache.ttl("a") == 1ms);
  clock.now += 500us;
  CHECK(cache.ttl("a") == 1ms);  // rounded up while live
  clock.now += 500us;
  CHECK_FALSE(cache.get("a"));
  CHECK_FALSE(cache.ttl("a"));
  CHECK(cache.stats().expired == 1);
  CHECK(cache.stats().keys == 0);
}

TEST_CASE("expire sets, changes and removes a TTL", "[cache][ttl]") {
  FakeClock clock;
  MemoryCache cache(kBig, clock.fn());
  CHECK_FALSE(cache.expire("a", 10ms).value);
  cache.set("a", "1", 0ms);
  CHECK(cache.expire("a", 10ms).value);
  CHECK(cache.ttl("a") == 10ms);
  CHECK(cache.expire("a", 0ms).value);  // persist
  clock.now += 1h;
  CHECK(cache.get("a") == "1");
  CHECK(cache.expire("a", -5ms).status == CacheStatus::invalid_argument);
  cache.expire("a", 5ms);
  clock.now += 5ms;
  CHECK_FALSE(cache.del("a").value);  // expired counts as absent
}

TEST_CASE("purge_expired frees expired keys nobody reads", "[cache][ttl]") {
  FakeClock clock;
  MemoryCache cache(kBig, clock.fn());
  for (int i = 0; i < 5; ++i) cache.set("t" + std::to_string(i), "v", 10ms);
  cache.set("keep", "v", 0ms);
  CHECK(cache.purge_expired(100) == 0);
  clock.now += 10ms;
  CHECK(cache.purge_expired(2) == 2);
  CHECK(cache.stats().keys == 4);
  CHECK(cache.purge_expired(100) == 3);
  auto s = cache.stats();
  CHECK(s.keys == 1);
  CHECK(s.expired == 5);
  CHECK(s.bytes_used == cost("keep", "v"));
}

TEST_CASE("set_if_absent stores only over nothing", "[cache]") {
  FakeClock clock;
  MemoryCache cache(kBig, clock.fn());
  auto r = cache.set_if_absent("lock", "me", 30ms);
  REQUIRE(r.ok());
  CHECK(r.value);
  r = cache.set_if_absent("lock", "you", 30ms);
  REQUIRE(r.ok());
  CHECK_FALSE(r.value);
  CHECK(cache.get("lock") == "me");
  clock.now += 30ms;
  CHECK(cache.set_if_absent("lock", "you", 0ms).value);
  CHECK(cache.get("lock") == "you");
  cache.zadd("z", "m", 1);
  CHECK_FALSE(cache.set_if_absent("z", "v", 0ms).value);  // either kind counts
  CHECK(cache.set_if_absent("x", "v", -1ms).status == CacheStatus::invalid_argument);
}

TEST_CASE("incr creates, adds, and refuses what is not an integer", "[cache][incr]") {
  FakeClock clock;
  MemoryCache cache(kBig, clock.fn());

  SECTION("created with the TTL, which later increments keep") {
    auto r = cache.incr("n", 5, 100ms);
    REQUIRE(r.ok());
    CHECK(r.value == 5);
    CHECK(cache.ttl("n") == 100ms);
    clock.now += 60ms;
    CHECK(cache.incr("n", -7, 1h).value == -2);
    CHECK(cache.ttl("n") == 40ms);  // not reset by the second incr
    CHECK(cache.get("n") == "-2");
    clock.now += 40ms;
    CHECK(cache.incr("n", 1, 0ms).value == 1);  // expired: starts over
    CHECK(cache.ttl("n") == 0ms);
  }
  SECTION("works on a value written by set") {
    cache.set("n", "41", 0ms);
    CHECK(cache.incr("n", 1, 0ms).value == 42);
  }
  SECTION("non-integers fail and stay unchanged") {
    for (std::string bad : {"abc", "12x", "", " 1", "1.5", "99999999999999999999"}) {
      cache.set("s", bad, 0ms);
      CHECK(cache.incr("s", 1, 0ms).status == CacheStatus::not_integer);
      CHECK(cache.get("s") == bad);
    }
  }
  SECTION("overflow fails and leaves the value") {
    cache.set("n", std::to_string(std::numeric_limits<int64_t>::max()), 0ms);
    CHECK(cache.incr("n", 1, 0ms).status == CacheStatus::overflow);
    CHECK(cache.incr("n", -1, 0ms).value == std::numeric_limits<int64_t>::max() - 1);
  }
  SECTION("a sorted set is the wrong type") {
    cache.zadd("z", "m", 1);
    CHECK(cache.incr("z", 1, 0ms).status == CacheStatus::wrong_type);
  }
}

TEST_CASE("sorted sets order by score, ties by member", "[cache][zset]") {
  FakeClock clock;
  MemoryCache cache(kBig, clock.fn());
  CHECK(cache.zadd("z", "c", 2).value);
  CHECK(cache.zadd("z", "b", 1).value);
  CHECK(cache.zadd("z", "a", 2).value);
  CHECK(cache.zadd("z", "d", 3).value);
  CHECK_FALSE(cache.zadd("z", "d", 0.5).value);  // moved, not new
  CHECK(cache.zcard("z") == 4);
  CHECK(cache.zscore("z", "d") == 0.5);
  CHECK_FALSE(cache.zscore("z", "nope"));
  CHECK(cache.zrange_by_rank("z", 0, -1, false) ==
        std::vector<ScoredMember>{{"d", 0.5}, {"b", 1}, {"a", 2}, {"c", 2}});
  cache.zadd("bytes", "\xff", 1);  // members compare as unsigned bytes
  cache.zadd("bytes", "a", 1);
  CHECK(members(cache.zrange_by_rank("bytes", 0, -1, false)) == Names{"a", "\xff"});
  CHECK(cache.zadd("z", "x", std::nan("")).status == CacheStatus::invalid_argument);
  cache.set("s", "v", 0ms);
  CHECK(cache.zadd("s", "m", 1).status == CacheStatus::wrong_type);
  CHECK(cache.zrem("s", "m").status == CacheStatus::wrong_type);
  CHECK(cache.zremrange_by_rank("s", 0, -1).status == CacheStatus::wrong_type);
  CHECK_FALSE(cache.get("z"));  // the other kind reads as absent
  CHECK(cache.zcard("s") == 0);
}

TEST_CASE("zrange_by_rank follows Redis index rules", "[cache][zset]") {
  MemoryCache cache(kBig);
  for (int i = 0; i < 5; ++i) cache.zadd("z", std::string(1, 'a' + i), i);
  auto rank = [&](int64_t a, int64_t b, bool rev) {
    return members(cache.zrange_by_rank("z", a, b, rev));
  };
  CHECK(rank(0, -1, false) == Names{"a", "b", "c", "d", "e"});
  CHECK(rank(1, 2, false) == Names{"b", "c"});
  CHECK(rank(-2, -1, false) == Names{"d", "e"});
  CHECK(rank(-100, 1, false) == Names{"a", "b"});
  CHECK(rank(3, 100, false) == Names{"d", "e"});
  CHECK(rank(0, 1, true) == Names{"e", "d"});
  CHECK(rank(-1, -1, true) == Names{"a"});
  CHECK(rank(3, 2, false).empty());
  CHECK(rank(5, 10, false).empty());
  CHECK(rank(-100, -6, false).empty());
  CHECK(cache.zrange_by_rank("absent", 0, -1, false).empty());
}

TEST_CASE("zrange_by_score is inclusive, reversible and limited", "[cache][zset]") {
  MemoryCache cache(kBig);
  for (int i = 1; i <= 6; ++i) cache.zadd("z", "m" + std::to_string(i), i);
  cache.zadd("z", "m3b", 3);
  auto range = [&](double lo, double hi, bool rev, size_t limit) {
    return members(cache.zrange_by_score("z", lo, hi, rev, limit));
  };
  CHECK(range(2, 4, false, 0) == Names{"m2", "m3", "m3b", "m4"});
  CHECK(range(2, 4, true, 0) == Names{"m4", "m3b", "m3", "m2"});
  CHECK(range(2, 4, false, 2) == Names{"m2", "m3"});
  CHECK(range(2, 4, true, 2) == Names{"m4", "m3b"});
  CHECK(range(-INFINITY, INFINITY, true, 1) == Names{"m6"});
  CHECK(range(std::nextafter(3.0, 4.0), 4, false, 0) == Names{"m4"});
  CHECK(range(4, 2, false, 0).empty());
  CHECK(range(6.5, 9, false, 0).empty());
  CHECK(range(NAN, 9, false, 0).empty());
}

TEST_CASE("trim keeps the newest N; the last removal drops the key", "[cache][zset]") {
  MemoryCache cache(kBig);
  for (int i = 1; i <= 10; ++i) cache.zadd("tl", "p" + std::to_string(i), i);
  const size_t keep = 3;
  auto r = cache.zremrange_by_rank("tl", 0, -static_cast<int64_t>(keep) - 1);
  REQUIRE(r.ok());
  CHECK(r.value == 7);
  CHECK(members(cache.zrange_by_rank("tl", 0, -1, true)) == Names{"p10", "p9", "p8"});
  CHECK(cache.zremrange_by_rank("tl", 0, -4).value == 0);  // already short
  CHECK(cache.zremrange_by_rank("tl", 1, 1).value == 1);
  CHECK(cache.zrem("tl", "p8").value);
  CHECK_FALSE(cache.zrem("tl", "p8").value);
  CHECK(cache.zrem("tl", "p10").value);
  CHECK(cache.stats().keys == 0);
  CHECK(cache.stats().bytes_used == 0);
  CHECK(cache.zremrange_by_rank("tl", 0, -1).value == 0);
}

TEST_CASE("sorted-set members are charged against the bound", "[cache][zset][memory]") {
  MemoryCache cache(kBig);
  cache.zadd("z", "abc", 1);
  const size_t one = MemoryCache::kEntryOverhead + 1 + MemoryCache::kMemberOverhead + 3;
  CHECK(cache.stats().bytes_used == one);
  cache.zadd("z", "abcd", 2);
  CHECK(cache.stats().bytes_used == one + MemoryCache::kMemberOverhead + 4);
  cache.zadd("z", "abcd", 3);  // a score change costs nothing
  CHECK(cache.stats().bytes_used == one + MemoryCache::kMemberOverhead + 4);
  cache.zrem("z", "abcd");
  CHECK(cache.stats().bytes_used == one);
}

TEST_CASE("over the bound, least recently used entries go", "[cache][memory]") {
  FakeClock clock;
  const std::string v(100, 'x');
  MemoryCache cache(3 * cost("a", v), clock.fn());
  cache.set("a", v, 0ms);
  cache.set("b", v, 0ms);
  cache.set("c", v, 0ms);
  CHECK(cache.stats().evictions == 0);

  SECTION("a recently read key survives") {
    CHECK(cache.get("a"));  // a is now the most recently used
    cache.set("d", v, 0ms);
    CHECK_FALSE(cache.get("b"));
    CHECK(cache.get("a"));
    CHECK(cache.get("c"));
    CHECK(cache.get("d"));
    CHECK(cache.stats().evictions == 1);
  }
  SECTION("expired entries go before live ones") {
    cache.expire("c", 10ms);
    clock.now += 10ms;
    cache.set("d", v, 0ms);
    CHECK(cache.get("a"));
    CHECK(cache.get("b"));
    auto s = cache.stats();
    CHECK(s.evictions == 0);
    CHECK(s.expired == 1);
  }
  SECTION("a growing sorted set pushes others out") {
    for (int i = 0; i < 4; ++i) cache.zadd("z", "member" + std::to_string(i), i);
    CHECK(cache.zcard("z") == 4);
    CHECK_FALSE(cache.get("a"));
    CHECK(cache.stats().evictions >= 1);
  }
  CHECK(cache.stats().bytes_used <= cache.stats().bytes_limit);
}

TEST_CASE("an entry larger than the bound is refused", "[cache][memory]") {
  MemoryCache cache(1000);
  cache.set("k", "small", 0ms);
  const std::string huge(1000, 'x');
  CHECK(cache.set("k", huge, 0ms) == CacheStatus::too_large);
  CHECK(cache.get("k") == "small");  // the old value is untouched
  CHECK(cache.set_if_absent("n", huge, 0ms).status == CacheStatus::too_large);
  CHECK(cache.zadd("z", huge, 1).status == CacheStatus::too_large);
  CHECK(cache.stats().keys == 1);
  const std::string fits(1000 - cost("k", ""), 'x');
  CHECK(cache.set("k", fits, 0ms) == CacheStatus::ok);
  CHECK(cache.stats().bytes_used == 1000);
}

TEST_CASE("stats count hits, misses and evictions", "[cache][stats]") {
  MemoryCache cache(kBig);
  cache.set("a", "1", 0ms);
  cache.zadd("z", "m", 1);
  cache.get("a");                           // hit
  cache.get("b");                           // miss
  cache.get("z");                           // miss: wrong kind
  cache.zscore("z", "m");                   // hit
  cache.zscore("z", "other");               // hit: the set exists
  cache.zrange_by_rank("q", 0, -1, false);  // miss
  cache.zcard("z");                         // hit
  cache.ttl("a");                           // not counted
  auto s = cache.stats();
  CHECK(s.hits == 4);
  CHECK(s.misses == 3);
  CHECK(s.evictions == 0);
  CHECK(s.keys == 2);
  CHECK(s.bytes_limit == kBig);
  CHECK(s.bytes_used ==
        cost("a", "1") + MemoryCache::kEntryOverhead + 1 + MemoryCache::kMemberOverhead + 1);
}

TEST_CASE("concurrent mixed operations stay consistent", "[cache][threads]") {
  MemoryCache cache(64 * 1024);  // small: eviction runs during the test
  constexpr int kThreads = 4, kOps = 3000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&cache, t] {
      for (int i = 0; i < kOps; ++i) {
        const std::string key = "k" + std::to_string(i % 97);
        switch ((i + t) % 8) {
          case 0:
            cache.set(key, std::string(i % 300, 'v'), 5ms);
            break;
          case 1:
            cache.get(key);
            break;
          case 2:
            cache.incr("n" + key, 1, 0ms);
            break;
          case 3:
            cache.zadd("z" + std::to_string(i % 5), key, i);
            break;
          case 4:
            cache.zrange_by_rank("z" + std::to_string(i % 5), 0, 9, true);
            break;
          case 5:
            cache.zremrange_by_rank("z" + std::to_string(i % 5), 0, -21);
            break;
          case 6:
            cache.del(key);
            break;
          case 7:
            cache.purge_expired(10);
            break;
        }
      }
    });
  }
  // One counter no eviction can touch, to check that increments are atomic.
  MemoryCache counters(kBig);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&counters] {
      for (int i = 0; i < kOps; ++i) counters.incr("c", 1, 0ms);
    });
  }
  for (auto& th : threads) th.join();
  CHECK(cache.stats().bytes_used <= 64 * 1024);
  CHECK(counters.get("c") == std::to_string(kThreads * kOps));
}
