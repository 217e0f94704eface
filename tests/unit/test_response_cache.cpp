// The response cache: freshness by tag generations, age, and the memory
// bound.
#include <catch2/catch.hpp>
#include <string>

#include "core/registry.hpp"
#include "core/response_cache.hpp"

using gv::ResponseCache;
using namespace std::chrono_literals;
using namespace std::string_literals;

namespace {

std::shared_ptr<const ResponseCache::Answer> answer(std::string body) {
  return std::make_shared<const ResponseCache::Answer>(ResponseCache::Answer{std::move(body), {}});
}

std::string body_of(ResponseCache& c, const std::string& key, ResponseCache::Clock::time_point t) {
  auto a = c.find(key, t);
  return a ? a->body : "<none>";
}

}  // namespace

TEST_CASE("response cache: an answer is served until its tag is invalidated", "[response-cache]") {
  ResponseCache c(1 << 20, 60s);
  auto now = ResponseCache::Clock::now();
  CHECK(c.find("/a", now) == nullptr);
  c.store("/a", c.ticket("p\0post:1"s), answer("one"), now);
  c.store("/b", c.ticket("p\0post:2"s), answer("two"), now);
  CHECK(body_of(c, "/a", now) == "one");
  CHECK(body_of(c, "/b", now) == "two");
  c.invalidate("p\0post:1"s);
  CHECK(body_of(c, "/a", now) == "<none>");
  CHECK(body_of(c, "/b", now) == "two");
  // Stored again after the invalidation: served again.
  c.store("/a", c.ticket("p\0post:1"s), answer("one'"), now);
  CHECK(body_of(c, "/a", now) == "one'");
  auto st = c.stats();
  CHECK(st.hits == 4);
  CHECK(st.misses == 2);
  CHECK(st.invalidations == 1);
  CHECK(st.entries == 2);
}

TEST_CASE("response cache: an answer computed across an invalidation is never served",
          "[response-cache]") {
  ResponseCache c(1 << 20, 60s);
  auto now = ResponseCache::Clock::now();
  // The request takes its ticket, reads the old data; meanwhile a write
  // commits and invalidates; then the request's answer arrives.
  auto ticket = c.ticket(std::string("posts\0post:7", 12));
  c.invalidate(std::string("posts\0post:7", 12));
  c.store("/api/v1/posts/7", ticket, answer("old"), now);
  CHECK(c.find("/api/v1/posts/7", now) == nullptr);
  // Also when the invalidation lands after the store.
  ticket = c.ticket(std::string("posts\0post:7", 12));
  c.store("/api/v1/posts/7", ticket, answer("old"), now);
  c.invalidate(std::string("posts\0post:7", 12));
  CHECK(c.find("/api/v1/posts/7", now) == nullptr);
}

TEST_CASE("response cache: max_age bounds how long an answer is served", "[response-cache]") {
  ResponseCache c(1 << 20, 100ms);
  auto t0 = ResponseCache::Clock::now();
  c.store("/a", c.ticket("t"), answer("x"), t0);
  CHECK(body_of(c, "/a", t0 + 99ms) == "x");
  CHECK(body_of(c, "/a", t0 + 100ms) == "<none>");
  CHECK(c.stats().entries == 0);  // dropped when found stale
}

TEST_CASE("response cache: the least recently used answers go past max_bytes", "[response-cache]") {
  // 8 shards of 4 KiB: each answer takes about 1.2 KiB, 3 per shard.
  ResponseCache c(ResponseCache::kShards * 4096, 60s);
  auto now = ResponseCache::Clock::now();
  const std::string big(1000, 'x');
  for (int i = 0; i < 200; ++i) {
    std::string key = "/k" + std::to_string(i);
    c.store(key, c.ticket(key), answer(big), now);
    // Keep /k0 in use: it must survive all the others.
    CHECK(c.find("/k0", now) != nullptr);
  }
  auto st = c.stats();
  CHECK(st.bytes <= ResponseCache::kShards * 4096);
  CHECK(st.evictions > 0);
  CHECK(st.entries < 200);
  CHECK(c.find("/k199", now) != nullptr);  // the newest is kept
  // An answer larger than a shard's share is not kept at all.
  c.store("/huge", c.ticket("h"), answer(std::string(8000, 'y')), now);
  CHECK(c.find("/huge", now) == nullptr);
}

TEST_CASE("response cache: max_bytes 0 keeps nothing", "[response-cache]") {
  ResponseCache c(0, 60s);
  auto now = ResponseCache::Clock::now();
  CHECK_FALSE(c.enabled());
  c.store("/a", c.ticket("t"), answer("x"), now);
  CHECK(c.find("/a", now) == nullptr);
  c.invalidate("t");  // harmless
}

TEST_CASE("cache tags: a template over path parameters, scoped by plugin", "[response-cache]") {
  gv::Registry r;
  std::string error;
  auto op = [](const char* name, const char* method, const char* path, const char* tag) {
    gv_operation_v1 o{};
    o.struct_size = sizeof o;
    o.name = name;
    o.http_method = method;
    o.http_path = path;
    o.handler = [](void*, const gv_request_v1*, gv_response*) { return GV_OK; };
    o.cache_tag = tag;
    return o;
  };
  REQUIRE(
      r.add("posts", op("posts.get", "GET", "/api/v1/posts/{postId}", "post:{postId}"), &error));
  const gv::Operation* get = r.find("posts.get");
  CHECK(gv::cache_tag_of(*get, {{"postId", "42"}, {"q", "x"}}) ==
        std::string("posts\0post:42", 13));
  CHECK(gv::scoped_cache_tag("posts", "post:42") == std::string("posts\0post:42", 13));
  REQUIRE(r.add("posts", op("posts.pair", "GET", "/api/v1/a/{x}/b/{y}", "{y}-{x}"), &error));
  CHECK(gv::cache_tag_of(*r.find("posts.pair"), {{"x", "1"}, {"y", "2"}}) == std::string("posts\0"
                                                                                         "2-1",
                                                                                         9));

  // Refused: not a GET, an unknown parameter, unbalanced braces, a grouped
  // write, an operation not everyone may call.
  CHECK_FALSE(r.add("posts", op("posts.put", "PUT", "/api/v1/p/{id}", "p:{id}"), &error));
  CHECK(error.find("only GET") != std::string::npos);
  CHECK_FALSE(r.add("posts", op("posts.bad1", "GET", "/api/v1/p1/{id}", "p:{other}"), &error));
  CHECK(error.find("{other} is not a parameter") != std::string::npos);
  CHECK_FALSE(r.add("posts", op("posts.bad2", "GET", "/api/v1/p2/{id}", "p:{id"), &error));
  CHECK_FALSE(r.add("posts", op("posts.bad3", "GET", "/api/v1/p3/{id}", "p:}"), &error));
  CHECK_FALSE(r.add("posts", op("posts.bad4", "GET", "/api/v1/p4/{id}", ""), &error));
  auto grouped = op("posts.bad5", "GET", "/api/v1/p5/{id}", "p:{id}");
  grouped.flags = GV_OP_GROUPED_WRITE;
  CHECK_FALSE(r.add("posts", grouped, &error));
  auto signed_in = op("posts.bad6", "GET", "/api/v1/p6/{id}", "p:{id}");
  signed_in.access = GV_ACCESS_SIGNED_IN;
  CHECK_FALSE(r.add("posts", signed_in, &error));
  CHECK(error.find("anyone") != std::string::npos);
}
