// The posts plugin, end to end: create, read, edit with history, list in
// cursor pages and delete over HTTP and /ws; Idempotency-Key; counters and
// deletions fed by events the evinteractions test plugin publishes; an
// authorization matrix and a table of malformed requests.
#include <sqlite3.h>
#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>

#include "harness.hpp"

using namespace gvtest;
using namespace std::chrono_literals;

namespace {

json posts_config(const fs::path& data, json posts = json::object()) {
  json c = default_config(data);
  c["plugins"] = {{"posts", {{"config", posts}}}, {"evinteractions", {{"config", json::object()}}}};
  c["plugin_dirs"] = {build_plugin_dir().string(), test_plugin_dir().string()};
  c["workers"] = {{"threads", 4}, {"queue_limit", 1024}};
  c["events"] = {{"retry_backoff_ms", 20}, {"retry_backoff_max_ms", 200}, {"max_attempts", 3}};
  c["log"] = {{"access", false}};
  return c;
}

std::string token(const std::string& user, json roles = json::array()) {
  return make_token({{"sub", user}, {"roles", roles}});
}

Headers as(const std::string& user, json roles = json::array()) {
  return {{"Authorization", "Bearer " + token(user, roles)}};
}

std::string body(json j) { return j.dump(); }

// Every post of user, following next_cursor to the end.
std::vector<json> all_posts(int port, const std::string& user, int limit = 100) {
  std::vector<json> out;
  std::string target = "/api/v1/users/" + user + "/posts?limit=" + std::to_string(limit);
  std::string cursor;
  for (int pages = 0; pages < 10000; ++pages) {
    auto r = http(port, "GET", target + (cursor.empty() ? "" : "&cursor=" + cursor));
    REQUIRE(r.status == 200);
    json page = r.json_body();
    for (const auto& p : page["items"]) out.push_back(p);
    if (page["next_cursor"].is_null()) break;
    cursor = page["next_cursor"].get<std::string>();
  }
  return out;
}

size_t count_posts(int port, const std::string& user) { return all_posts(port, user).size(); }

json create(int port, const std::string& user, const std::string& text) {
  auto r = http(port, "POST", "/api/v1/posts", body({{"text", text}}), as(user));
  REQUIRE(r.status == 201);
  // Location names the new post.
  CHECK(r.header("location") == "/api/v1/posts/" + r.json_body()["id"].get<std::string>());
  return r.json_body();
}

void publish(int port, const std::vector<json>& events) {
  auto r = http(port, "POST", "/api/v1/evinteractions/events", body({{"events", events}}));
  REQUIRE(r.status == 201);
}

json event(const std::string& type, const std::string& key, json payload) {
  return {{"type", type}, {"key", key}, {"payload", std::move(payload)}};
}

json received(int port, const std::string& type) {
  return http(port, "GET", "/api/v1/evinteractions/received?type=" + type).json_body()["items"];
}

bool is_error_body(const HttpResult& r) {
  json j = r.json_body();
  return j.is_object() && j.contains("error") && j["error"]["code"].is_string() &&
         j["error"]["message"].is_string() && j["error"]["request_id"].is_string();
}

// s in unpadded base64url, as the server writes cursors.
std::string b64(const std::string& s) {
  static const char* a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (unsigned char c : s) {
    acc = (acc << 8) | c, bits += 8;
    while (bits >= 6) bits -= 6, out += a[(acc >> bits) & 63];
  }
  if (bits) out += a[(acc << (6 - bits)) & 63];
  return out;
}

}  // namespace

TEST_CASE("posts: create, get, edit, history, list and delete over HTTP", "[posts]") {
  TempDir data;
  Host host({.config = posts_config(data.path / "d")});
  REQUIRE(host.started());
  int port = host.port();

  auto r = host.request("POST", "/api/v1/posts", body({{"text", "héllo wörld 🌍"}}), as("alice"));
  REQUIRE(r.status == 201);
  json post = r.json_body();
  std::string id = post["id"];
  CHECK(post["author_id"] == "alice");
  CHECK(post["text"] == "héllo wörld 🌍");
  CHECK(post["reply_to"].is_null());
  CHECK(post["edited_at"].is_null());
  CHECK(post["created_at"].get<std::string>().size() == 24);
  CHECK(post["counters"] == json{{"comments", 0}, {"likes", 0}, {"shares", 0}, {"regossips", 0}});

  r = host.request("GET", "/api/v1/posts/" + id);
  REQUIRE(r.status == 200);
  CHECK(r.json_body() == post);

  // A reply; replying to nothing is refused.
  r = host.request("POST", "/api/v1/posts", body({{"text", "a reply"}, {"reply_to", id}}),
                   as("bob"));
  REQUIRE(r.status == 201);
  CHECK(r.json_body()["reply_to"] == id);
  r = host.request("POST", "/api/v1/posts", body({{"text", "x"}, {"reply_to", "987654"}}),
                   as("bob"));
  CHECK(r.status == 422);
  CHECK(r.json_body()["error"]["code"] == "reply_to_not_found");

  // Exactly 500 characters (code points, not bytes) is fine; 501 is not.
  CHECK(host.request("POST", "/api/v1/posts", body({{"text", std::string(500, 'x')}}), as("carol"))
            .status == 201);
  std::string e500;
  for (int i = 0; i < 500; ++i) e500 += "é";
  CHECK(host.request("POST", "/api/v1/posts", body({{"text", e500}}), as("carol")).status == 201);
  CHECK(host.request("POST", "/api/v1/posts", body({{"text", e500 + "é"}}), as("carol")).status ==
        400);

  // Edits keep history, newest first.
  r = host.request("PUT", "/api/v1/posts/" + id, body({{"text", "second"}}), as("alice"));
  REQUIRE(r.status == 200);
  CHECK(r.json_body()["text"] == "second");
  CHECK(r.json_body()["edited_at"].is_string());
  r = host.request("PUT", "/api/v1/posts/" + id, body({{"text", "third"}}), as("alice"));
  REQUIRE(r.status == 200);
  CHECK(host.request("GET", "/api/v1/posts/" + id).json_body()["text"] == "third");
  r = host.request("GET", "/api/v1/posts/" + id + "/history");
  REQUIRE(r.status == 200);
  json h = r.json_body();
  REQUIRE(h["items"].size() == 2);
  CHECK(h["items"][0]["text"] == "second");
  CHECK(h["items"][1]["text"] == "héllo wörld 🌍");
  CHECK(h["next_cursor"].is_null());
  // History in pages of one.
  r = host.request("GET", "/api/v1/posts/" + id + "/history?limit=1");
  json p1 = r.json_body();
  REQUIRE(p1["items"].size() == 1);
  REQUIRE(p1["next_cursor"].is_string());
  r = host.request("GET", "/api/v1/posts/" + id +
                              "/history?limit=1&cursor=" + p1["next_cursor"].get<std::string>());
  CHECK(r.json_body()["items"][0]["text"] == "héllo wörld 🌍");

  // List, newest first.
  create(port, "alice", "another");
  auto mine = all_posts(port, "alice");
  REQUIRE(mine.size() == 2);
  CHECK(mine[0]["text"] == "another");
  CHECK(mine[1]["id"] == id);

  // Events were published for each change.
  CHECK(eventually([&] { return received(port, "post.updated").size() == 2; }));
  CHECK(eventually([&] { return received(port, "post.created").size() == 5; }));
  // Order holds per key (per post), not across posts: the first post's.
  json created;
  for (const auto& e : received(port, "post.created"))
    if (e["key"] == "post:" + id) created = e;
  REQUIRE(created.is_object());
  CHECK(created["payload"]["author_id"] == "alice");
  CHECK(created["payload"]["text"] == "héllo wörld 🌍");

  // Delete: 204, then 404 everywhere.
  CHECK(host.request("DELETE", "/api/v1/posts/" + id, "", as("alice")).status == 204);
  r = host.request("GET", "/api/v1/posts/" + id);
  CHECK(r.status == 404);
  CHECK(is_error_body(r));
  CHECK(host.request("GET", "/api/v1/posts/" + id + "/history").status == 404);
  CHECK(host.request("PUT", "/api/v1/posts/" + id, body({{"text", "z"}}), as("alice")).status ==
        404);
  CHECK(host.request("DELETE", "/api/v1/posts/" + id, "", as("alice")).status == 404);
  CHECK(count_posts(port, "alice") == 1);
  CHECK(eventually([&] { return received(port, "post.deleted").size() == 1; }));
  CHECK(received(port, "post.deleted")[0]["payload"]["id"] == id);
}

TEST_CASE("posts: every operation over /ws", "[posts][ws]") {
  TempDir data;
  Host host({.config = posts_config(data.path / "d")});
  REQUIRE(host.started());
  WebSocket ws(host.port(), "/ws?access_token=" + token("wanda"));
  json r = ws.call("posts.create", {{"text", "over the socket"}});
  REQUIRE(r["ok"] == true);
  CHECK(r["status"] == 201);
  std::string id = r["data"]["id"];
  CHECK(r["data"]["author_id"] == "wanda");

  r = ws.call("posts.get", {{"postId", id}});
  CHECK(r["data"]["text"] == "over the socket");
  r = ws.call("posts.update", {{"postId", id}, {"text", "edited"}});
  CHECK(r["data"]["text"] == "edited");
  r = ws.call("posts.history", {{"postId", id}});
  REQUIRE(r["data"]["items"].size() == 1);
  CHECK(r["data"]["items"][0]["text"] == "over the socket");
  r = ws.call("posts.list_by_user", {{"userId", "wanda"}});
  REQUIRE(r["data"]["items"].size() == 1);
  CHECK(r["data"]["items"][0]["text"] == "edited");

  // Idempotency over the socket: the idempotency_key field.
  json a = ws.call("posts.create", {{"text", "once"}, {"idempotency_key", "k1"}});
  json b = ws.call("posts.create", {{"text", "once"}, {"idempotency_key", "k1"}});
  CHECK(a["data"] == b["data"]);
  CHECK(a["status"] == 201);
  CHECK(b["status"] == 201);

  // Errors keep their shape.
  r = ws.call("posts.get", {{"postId", "abc"}});
  CHECK(r["ok"] == false);
  CHECK(r["status"] == 400);
  r = ws.call("posts.update", {{"postId", id}, {"text", "   "}});
  CHECK(r["status"] == 400);

  WebSocket other(host.port(), "/ws?access_token=" + token("xavier"));
  CHECK(other.call("posts.update", {{"postId", id}, {"text", "mine now"}})["status"] == 403);
  CHECK(other.call("posts.delete", {{"postId", id}})["status"] == 403);
  WebSocket anonymous(host.port());
  CHECK(anonymous.call("posts.create", {{"text", "hi"}})["status"] == 401);

  r = ws.call("posts.delete", {{"postId", id}});
  CHECK(r["status"] == 204);
  CHECK(ws.call("posts.get", {{"postId", id}})["status"] == 404);
  CHECK(ws.call("posts.list_by_user", {{"userId", "wanda"}})["data"]["items"].size() == 1);
}

TEST_CASE("posts: texts and user ids that JSON escapes read back as written", "[posts]") {
  TempDir data;
  Host host({.config = posts_config(data.path / "d")});
  REQUIRE(host.started());
  int port = host.port();
  const std::string user = "o\"brien\\ 🌍";
  const std::vector<std::string> texts = {
      "say \"hi\"",       "C:\\path\\",          "tab\there",
      "line1\nline2\r\n", "</script><!-- & -->", "\xc3\xa9 \xe2\x82\xac \xf0\x9f\x8c\x8d",
      "\\u0041 is not A", "/slash/ and \\/"};
  std::vector<json> answers;
  for (const auto& text : texts) {
    json post = create(port, user, text);
    CHECK(post["text"] == text);
    CHECK(post["author_id"] == user);
    auto r = host.request("GET", "/api/v1/posts/" + post["id"].get<std::string>());
    REQUIRE(r.status == 200);
    CHECK(r.json_body() == post);
    answers.push_back(post);
  }
  // An edit's answer and event carry the escaped text too.
  std::string first = answers[0]["id"];
  auto r =
      host.request("PUT", "/api/v1/posts/" + first, body({{"text", "now \"quoted\"\n"}}), as(user));
  REQUIRE(r.status == 200);
  CHECK(r.json_body()["text"] == "now \"quoted\"\n");
  // The post.created payloads are the answers without their counters.
  CHECK(eventually([&] { return received(port, "post.created").size() == texts.size(); }));
  for (const auto& e : received(port, "post.created")) {
    json want;
    for (const auto& a : answers)
      if (e["key"] == "post:" + a["id"].get<std::string>()) want = a;
    REQUIRE(want.is_object());
    want.erase("counters");
    CHECK(e["payload"] == want);
  }
  CHECK(eventually([&] { return received(port, "post.updated").size() == 1; }));
  CHECK(received(port, "post.updated")[0]["payload"]["text"] == "now \"quoted\"\n");
  CHECK(received(port, "post.updated")[0]["payload"]["version"] == 2);
}

TEST_CASE("posts: 250 posts in cursor pages, each once, newest first", "[posts]") {
  TempDir data;
  Host host({.config = posts_config(data.path / "d")});
  REQUIRE(host.started());
  HttpClient client(host.port());
  Headers paula = as("paula");
  std::vector<std::string> ids;
  for (int i = 0; i < 250; ++i) {
    auto r = client.request("POST", "/api/v1/posts", body({{"text", "post " + std::to_string(i)}}),
                            paula);
    REQUIRE(r.status == 201);
    ids.push_back(r.json_body()["id"]);
  }
  create(host.port(), "someone_else", "not paula's");
  for (int limit : {1, 7, 20, 100}) {
    auto posts = all_posts(host.port(), "paula", limit);
    INFO("limit " << limit);
    REQUIRE(posts.size() == 250);
    for (size_t i = 0; i < posts.size(); ++i) {
      CHECK(posts[i]["id"] == ids[249 - i]);
      CHECK(posts[i]["text"] == "post " + std::to_string(249 - i));
    }
  }
  // Default page is 20; the last page says there is no more.
  json first = host.request("GET", "/api/v1/users/paula/posts").json_body();
  CHECK(first["items"].size() == 20);
  CHECK(first["next_cursor"].is_string());
  json page = host.request("GET", "/api/v1/users/paula/posts?limit=100").json_body();
  page = host.request("GET", "/api/v1/users/paula/posts?limit=100&cursor=" +
                                 page["next_cursor"].get<std::string>())
             .json_body();
  json last = host.request("GET", "/api/v1/users/paula/posts?limit=100&cursor=" +
                                      page["next_cursor"].get<std::string>())
                  .json_body();
  CHECK(last["items"].size() == 50);
  CHECK(last["next_cursor"].is_null());
  // A cursor of one list is not a cursor of another.
  auto r = host.request(
      "GET", "/api/v1/users/someone_else/posts?cursor=" + first["next_cursor"].get<std::string>());
  CHECK(r.status == 400);
  CHECK(host.request("GET", "/api/v1/users/nobody/posts").json_body()["items"].empty());
}

TEST_CASE("posts: Idempotency-Key gives the same answer and one post", "[posts][idempotency]") {
  TempDir data;
  Host host({.config = posts_config(data.path / "d")});
  REQUIRE(host.started());
  int port = host.port();
  auto with_key = [](const std::string& user, const std::string& key) {
    Headers h = as(user);
    h.emplace_back("Idempotency-Key", key);
    return h;
  };
  auto a = host.request("POST", "/api/v1/posts", body({{"text", "once"}}), with_key("ivy", "k-1"));
  auto b = host.request("POST", "/api/v1/posts", body({{"text", "once"}}), with_key("ivy", "k-1"));
  REQUIRE(a.status == 201);
  CHECK(b.status == 201);
  CHECK(a.json_body() == b.json_body());
  CHECK(count_posts(port, "ivy") == 1);
  // The same key with another request is refused, and writes nothing.
  auto c = host.request("POST", "/api/v1/posts", body({{"text", "other"}}), with_key("ivy", "k-1"));
  CHECK(c.status == 422);
  CHECK(c.json_body()["error"]["code"] == "idempotency_key_reused");
  CHECK(count_posts(port, "ivy") == 1);
  // Keys are per author.
  auto d = host.request("POST", "/api/v1/posts", body({{"text", "once"}}), with_key("jack", "k-1"));
  REQUIRE(d.status == 201);
  CHECK(d.json_body()["id"] != a.json_body()["id"]);
  CHECK(count_posts(port, "jack") == 1);
  // A failed request stores nothing: the key stays usable.
  auto e = host.request("POST", "/api/v1/posts", body({{"text", "r"}, {"reply_to", "999999"}}),
                        with_key("ivy", "k-2"));
  CHECK(e.status == 422);
  CHECK(
      host.request("POST", "/api/v1/posts", body({{"text", "r"}}), with_key("ivy", "k-2")).status ==
      201);
  CHECK(count_posts(port, "ivy") == 2);

  // 8 threads, same key at once: one post, one answer.
  std::vector<std::thread> threads;
  std::mutex m;
  std::vector<HttpResult> answers;
  std::atomic<int> ready{0};
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&] {
      ++ready;
      while (ready < 8) std::this_thread::yield();
      auto r =
          http(port, "POST", "/api/v1/posts", body({{"text", "racing"}}), with_key("kim", "race"));
      std::lock_guard lock(m);
      answers.push_back(r);
    });
  for (auto& t : threads) t.join();
  REQUIRE(answers.size() == 8);
  for (const auto& r : answers) {
    CHECK(r.status == 201);
    CHECK(r.json_body() == answers[0].json_body());
  }
  CHECK(count_posts(port, "kim") == 1);
  CHECK(eventually([&] {
    int kim = 0;
    for (const auto& ev : received(port, "post.created"))
      kim += ev["payload"]["author_id"] == "kim";
    return kim == 1;
  }));
}

TEST_CASE("posts: counters follow interaction events", "[posts][events]") {
  TempDir data;
  Host host({.config = posts_config(data.path / "d")});
  REQUIRE(host.started());
  int port = host.port();
  std::string id = create(port, "lena", "count me")["id"];
  std::string other = create(port, "lena", "and me")["id"];
  std::vector<json> events;
  for (int i = 0; i < 10; ++i)
    events.push_back(event("like.created", "post:" + id, {{"post_id", id}, {"user_id", i}}));
  for (int i = 0; i < 3; ++i)
    events.push_back(event("comment.created", "post:" + id, {{"post_id", id}}));
  events.push_back(event("comment.deleted", "post:" + id, {{"post_id", id}}));
  events.push_back(event("share.created", "post:" + id, {{"post_id", std::stoll(id)}}));
  events.push_back(event("regossip.created", "post:" + id, {{"post_id", id}}));
  events.push_back(event("regossip.created", "post:" + id, {{"post_id", id}}));
  events.push_back(event("regossip.deleted", "post:" + id, {{"post_id", id}}));
  // Never below zero; unknown posts and bad payloads are ignored.
  events.push_back(event("like.deleted", "post:" + other, {{"post_id", other}}));
  events.push_back(event("comment.created", "post:777777", {{"post_id", "777777"}}));
  events.push_back(event("like.created", "post:x", {{"post_id", "not-an-id"}}));
  events.push_back(event("like.created", "post:y", json::object()));
  publish(port, events);
  json want = {{"comments", 2}, {"likes", 10}, {"shares", 1}, {"regossips", 1}};
  CHECK(eventually(
      [&] { return host.request("GET", "/api/v1/posts/" + id).json_body()["counters"] == want; }));
  // Give the trailing events time to apply, then check nothing else moved.
  CHECK(eventually([&] { return received(port, "post.created").size() == 2; }));
  std::this_thread::sleep_for(300ms);
  CHECK(host.request("GET", "/api/v1/posts/" + id).json_body()["counters"] == want);
  CHECK(host.request("GET", "/api/v1/posts/" + other).json_body()["counters"]["likes"] == 0);
  auto dead = host.request("GET", "/api/v1/admin/events/dead-letters?plugin=posts", "",
                           as("root", {"admin"}));
  REQUIRE(dead.status == 200);
  CHECK(dead.json_body()["items"].empty());
}

// A user's posts are chained from the newest (author_heads, then each
// post's prev_by_author): pages follow one author's chain past the posts
// of others and past deleted ones.
TEST_CASE("posts: a user's list skips others' and deleted posts; a cursor of another's post is 400",
          "[posts]") {
  TempDir data;
  Host host({.config = posts_config(data.path / "d")});
  REQUIRE(host.started());
  int port = host.port();
  std::vector<std::string> mine;  // oldest first
  for (int i = 0; i < 30; ++i) {
    mine.push_back(create(port, "ida", "ida " + std::to_string(i))["id"]);
    create(port, i % 2 ? "jon" : "kim", "other " + std::to_string(i));
  }
  // Deleted: the newest, a run of five in the middle, and the oldest.
  std::set<std::string> deleted = {mine[29], mine[0]};
  for (int i = 10; i < 15; ++i) deleted.insert(mine[i]);
  for (const auto& id : deleted)
    REQUIRE(host.request("DELETE", "/api/v1/posts/" + id, "", as("ida")).status == 204);
  std::vector<std::string> live;  // newest first
  for (int i = 29; i >= 0; --i)
    if (!deleted.count(mine[i])) live.push_back(mine[i]);
  for (int limit : {1, 2, 5, 23, 100}) {
    INFO("limit " << limit);
    std::vector<std::string> got;
    for (const auto& p : all_posts(port, "ida", limit)) {
      CHECK(p["author_id"] == "ida");
      got.push_back(p["id"]);
    }
    CHECK(got == live);
  }
  // A page that ends just before the deleted run goes on after it.
  json page = host.request("GET", "/api/v1/users/ida/posts?limit=14").json_body();
  REQUIRE(page["items"].size() == 14);
  CHECK(page["items"][13]["id"] == mine[15]);
  page = host.request("GET", "/api/v1/users/ida/posts?limit=2&cursor=" +
                                 page["next_cursor"].get<std::string>())
             .json_body();
  REQUIRE(page["items"].size() == 2);
  CHECK(page["items"][0]["id"] == mine[9]);
  CHECK(page["items"][1]["id"] == mine[8]);
  // A well-formed cursor of this list naming a post of someone else, or
  // no post at all, is refused, not taken as a position.
  std::string jons = all_posts(port, "jon")[0]["id"];
  for (const std::string& position : {jons, std::string("999999")}) {
    auto r = host.request("GET", "/api/v1/users/ida/posts?cursor=" + b64("u:ida:" + position));
    INFO(position);
    CHECK(r.status == 400);
    CHECK(r.json_body()["error"]["code"] == "invalid_cursor");
  }
  // The cursor of a post deleted after the page was read still goes on.
  page = host.request("GET", "/api/v1/users/ida/posts?limit=3").json_body();
  REQUIRE(host.request("DELETE", "/api/v1/posts/" + page["items"][2]["id"].get<std::string>(), "",
                       as("ida"))
              .status == 204);
  page = host.request("GET", "/api/v1/users/ida/posts?limit=1&cursor=" +
                                 page["next_cursor"].get<std::string>())
             .json_body();
  REQUIRE(page["items"].size() == 1);
  CHECK(page["items"][0]["id"] == live[3]);
}

// Concurrent posts of one author share group commits: each claims the
// head after the one before it in the group, so the chain holds every post
// once, in the order of ids.
TEST_CASE("posts: one author's concurrent posts are each listed once, newest first", "[posts]") {
  TempDir data;
  Host host({.config = posts_config(data.path / "d")});
  REQUIRE(host.started());
  int port = host.port();
  std::mutex mutex;
  std::vector<int64_t> ids;
  std::atomic<int> failures{0};
  std::vector<std::thread> writers;
  for (int w = 0; w < 8; ++w)
    writers.emplace_back([&, w] {
      HttpClient client(port);
      for (int n = 0; n < 40; ++n) {
        // Another author's posts between them, in the same groups.
        std::string user = n % 4 == 3 ? "zed" : "yan";
        auto r =
            client.request("POST", "/api/v1/posts",
                           body({{"text", std::to_string(w) + "/" + std::to_string(n)}}), as(user));
        if (r.status != 201) {
          ++failures;
          continue;
        }
        if (user == "yan") {
          std::lock_guard lock(mutex);
          ids.push_back(std::stoll(r.json_body()["id"].get<std::string>()));
        }
      }
    });
  for (auto& t : writers) t.join();
  REQUIRE(failures == 0);
  REQUIRE(ids.size() == 8 * 30);
  std::sort(ids.rbegin(), ids.rend());
  for (int limit : {1, 37, 100}) {
    INFO("limit " << limit);
    std::vector<int64_t> listed;
    for (const auto& p : all_posts(port, "yan", limit))
      listed.push_back(std::stoll(p["id"].get<std::string>()));
    CHECK(listed == ids);
  }
  CHECK(all_posts(port, "zed").size() == 8 * 10);
}

// Migration 6 replaced the (author_id, id) index with the author chain: a
// database written before it is chained when the new plugin opens it.
TEST_CASE("posts: a database from before the author chain keeps every list", "[posts]") {
  TempDir data;
  json config = posts_config(data.path / "d");
  std::map<std::string, std::vector<std::string>> before;  // user: ids, newest first
  {
    Host host({.config = config});
    REQUIRE(host.started());
    for (int i = 0; i < 12; ++i) create(host.port(), i % 3 ? "lea" : "max", std::to_string(i));
    auto some = all_posts(host.port(), "lea");
    REQUIRE(
        host.request("DELETE", "/api/v1/posts/" + some[3]["id"].get<std::string>(), "", as("lea"))
            .status == 204);
    for (const char* u : {"lea", "max"})
      for (const auto& p : all_posts(host.port(), u)) before[u].push_back(p["id"]);
    REQUIRE(before["lea"].size() == 7);
    REQUIRE(before["max"].size() == 4);
  }
  // Back to the schema of migration step 5, with the posts kept.
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open((data.path / "d" / "db" / "posts.sqlite").string().c_str(), &db) ==
          SQLITE_OK);
  char* error = nullptr;
  int rc = sqlite3_exec(db,
                        "DROP TABLE author_heads; ALTER TABLE posts DROP COLUMN prev_by_author; "
                        "CREATE INDEX posts_by_author ON posts (author_id, id); "
                        "DELETE FROM gv_migrations WHERE step >= 6",
                        nullptr, nullptr, &error);
  std::string message = error ? error : "";
  sqlite3_free(error);
  sqlite3_close(db);
  INFO(message);
  REQUIRE(rc == SQLITE_OK);

  Host host({.config = config});
  REQUIRE(host.started());
  for (const char* u : {"lea", "max"}) {
    std::vector<std::string> after;
    for (const auto& p : all_posts(host.port(), u, 2)) after.push_back(p["id"]);
    CHECK(after == before[u]);
  }
  // New posts chain onto the migrated ones.
  std::string added = create(host.port(), "max", "after")["id"];
  auto maxs = all_posts(host.port(), "max", 3);
  REQUIRE(maxs.size() == 5);
  CHECK(maxs[0]["id"] == added);
  CHECK(maxs[1]["id"] == before["max"][0]);
  CHECK(maxs[4]["id"] == before["max"][3]);
}

TEST_CASE("posts: user.deleted removes that user's posts", "[posts][events]") {
  TempDir data;
  Host host({.config = posts_config(data.path / "d")});
  REQUIRE(host.started());
  int port = host.port();
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) ids.push_back(create(port, "gone", "bye " + std::to_string(i))["id"]);
  std::string kept = create(port, "stays", "still here")["id"];
  publish(port, {event("user.deleted", "user:gone", {{"id", "gone"}})});
  CHECK(eventually([&] { return count_posts(port, "gone") == 0; }));
  for (const auto& id : ids) CHECK(host.request("GET", "/api/v1/posts/" + id).status == 404);
  CHECK(host.request("GET", "/api/v1/posts/" + kept).status == 200);
  CHECK(eventually([&] { return received(port, "post.deleted").size() == 5; }));
  std::set<std::string> deleted;
  for (const auto& ev : received(port, "post.deleted")) {
    deleted.insert(ev["payload"]["id"].get<std::string>());
    CHECK(ev["payload"]["author_id"] == "gone");
    CHECK(ev["payload"]["reason"] == "user_deleted");
  }
  CHECK(deleted == std::set<std::string>(ids.begin(), ids.end()));
}

// posts.get and posts.history declare the cache tag "post:{postId}": the
// host answers a repeated GET from memory (X-Cache: hit) until a write to
// that post commits, and never serves an answer older than that write.
TEST_CASE("posts: cached answers are fresh after every change", "[posts][cache]") {
  TempDir data;
  Host host({.config = posts_config(data.path / "d")});
  REQUIRE(host.started());
  int port = host.port();
  std::string id = create(port, "carl", "first text")["id"];
  std::string other = create(port, "carl", "untouched")["id"];
  const std::string path = "/api/v1/posts/" + id;
  auto get = [&](const std::string& target) { return host.request("GET", target); };

  auto r = get(path);
  REQUIRE(r.status == 200);
  CHECK(r.header("x-cache") == "miss");
  auto again = get(path);
  CHECK(again.header("x-cache") == "hit");
  CHECK(again.body == r.body);
  CHECK(again.header("content-type") == "application/json");
  CHECK(again.header("x-request-id") != r.header("x-request-id"));
  // HEAD is served from the same answer, without a body.
  auto head = host.request("HEAD", path);
  CHECK(head.status == 200);
  CHECK(head.header("x-cache") == "hit");
  CHECK(head.body.empty());
  CHECK(head.header("content-length") == std::to_string(r.body.size()));
  CHECK(get("/api/v1/posts/" + other).status == 200);
  // Another spelling of the same target shares the answer (and so its
  // invalidation): the id's digits percent-encoded.
  std::string escaped = "/api/v1/posts/";
  for (char c : id) escaped += std::string("%3") + c;
  auto spelled = get(escaped);
  CHECK(spelled.header("x-cache") == "hit");
  CHECK(spelled.body == r.body);

  // An edit: the next read shows it at once, and history follows too.
  CHECK(get(path + "/history").header("x-cache") == "miss");
  CHECK(get(path + "/history").header("x-cache") == "hit");
  REQUIRE(host.request("PUT", path, body({{"text", "second text"}}), as("carl")).status == 200);
  r = get(path);
  CHECK(r.header("x-cache") == "miss");
  CHECK(r.json_body()["text"] == "second text");
  CHECK(get(escaped).json_body()["text"] == "second text");
  auto history = get(path + "/history");
  CHECK(history.header("x-cache") == "miss");
  CHECK(history.json_body()["items"].size() == 1);
  // Another post's answer was not touched.
  CHECK(get("/api/v1/posts/" + other).header("x-cache") == "hit");

  // A refused edit (not the author) changes nothing and keeps the answer.
  CHECK(host.request("PUT", path, body({{"text", "hijack"}}), as("mallory")).status == 403);
  CHECK(get(path).header("x-cache") == "hit");
  CHECK(get(path).json_body()["text"] == "second text");

  // Counters kept from events: the consumer's commit invalidates.
  publish(port, {event("like.created", "post:" + id, {{"post_id", id}})});
  CHECK(eventually([&] { return get(path).json_body()["counters"]["likes"] == 1; }));

  // An author's pages: kept, and fresh after a new post, an edit and a
  // counter event; another author's new post leaves them alone.
  const std::string list = "/api/v1/users/carl/posts";
  CHECK(get(list).header("x-cache") == "miss");
  CHECK(get(list).header("x-cache") == "hit");
  std::string third = create(port, "carl", "third post")["id"];
  auto page = get(list);
  CHECK(page.header("x-cache") == "miss");
  REQUIRE(page.json_body()["items"].size() == 3);
  CHECK(page.json_body()["items"][0]["id"] == third);
  CHECK(get(list + "?limit=1").json_body()["items"][0]["id"] == third);
  create(port, "dora", "not carl's");
  CHECK(get(list).header("x-cache") == "hit");
  REQUIRE(host.request("PUT", "/api/v1/posts/" + third, body({{"text", "third, edited"}}),
                       as("carl"))
              .status == 200);
  CHECK(get(list).json_body()["items"][0]["text"] == "third, edited");
  CHECK(get(list + "?limit=1").json_body()["items"][0]["text"] == "third, edited");
  publish(port, {event("like.created", "post:" + third, {{"post_id", third}})});
  CHECK(eventually(
      [&] { return get(list).json_body()["items"][0]["counters"]["likes"] == 1; }));

  // Bad input and unknown ids are never cached.
  CHECK(get("/api/v1/posts/999999").status == 404);
  CHECK(get("/api/v1/posts/999999").header("x-cache").empty());
  CHECK(get(path + "?extra=1").status == 400);
  CHECK(get(path + "?extra=1").status == 400);

  // A deleted post is gone for the very next read.
  REQUIRE(host.request("DELETE", path, "", as("carl")).status == 204);
  CHECK(get(path).status == 404);
  CHECK(get(path + "/history").status == 404);
  CHECK(get(list).json_body()["items"].size() == 2);

  // user.deleted (a consumer deleting many posts) invalidates each.
  CHECK(get("/api/v1/posts/" + other).header("x-cache") == "hit");
  publish(port, {event("user.deleted", "user:carl", {{"id", "carl"}})});
  CHECK(eventually([&] { return get("/api/v1/posts/" + other).status == 404; }));
  CHECK(get(list).json_body()["items"].empty());

  // Over /metrics: hits, misses and invalidations are counted.
  auto metrics = get("/metrics").body;
  CHECK(metrics.find("grapevine_response_cache_hits_total") != std::string::npos);
  CHECK(metrics.find("grapevine_response_cache_invalidations_total") != std::string::npos);
}

TEST_CASE("posts: no read after an acknowledged edit sees the text before it",
          "[posts][cache]") {
  TempDir data;
  Host host({.config = posts_config(data.path / "d")});
  REQUIRE(host.started());
  int port = host.port();
  std::string id = create(port, "vera", "version 0")["id"];
  const std::string path = "/api/v1/posts/" + id;
  // Readers keep the cache filled (and racing its fills with the edits);
  // after each acknowledged edit, a read must show that edit or a later one.
  std::atomic<bool> stop{false};
  std::atomic<int> reads{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 3; ++t)
    readers.emplace_back([&] {
      while (!stop) {
        http(port, "GET", path);
        ++reads;
      }
    });
  int stale = 0;
  for (int v = 1; v <= 60; ++v) {
    auto put = http(port, "PUT", path, body({{"text", "version " + std::to_string(v)}}), as("vera"));
    REQUIRE(put.status == 200);
    auto r = http(port, "GET", path);
    REQUIRE(r.status == 200);
    int seen = std::stoi(r.json_body()["text"].get<std::string>().substr(8));
    if (seen < v) ++stale;
  }
  stop = true;
  for (auto& t : readers) t.join();
  CHECK(stale == 0);
  CHECK(reads > 60);
}

TEST_CASE("posts: response_cache.max_bytes 0 turns the cache off", "[posts][cache]") {
  TempDir data;
  json config = posts_config(data.path / "d");
  config["response_cache"] = {{"max_bytes", 0}};
  Host host({.config = config});
  REQUIRE(host.started());
  std::string id = create(host.port(), "olga", "plain")["id"];
  for (int i = 0; i < 2; ++i) {
    auto r = host.request("GET", "/api/v1/posts/" + id);
    CHECK(r.status == 200);
    CHECK(r.header("x-cache").empty());
  }
  CHECK(host.request("GET", "/metrics").body.find("grapevine_response_cache_hits_total") ==
        std::string::npos);
}

TEST_CASE("posts: authorization matrix", "[posts][auth]") {
  TempDir data;
  Host host({.config = posts_config(data.path / "d")});
  REQUIRE(host.started());
  int port = host.port();
  // Who calls: the owner of the post, another user, nobody, a moderator, an admin.
  const std::map<std::string, Headers> actors = {{"owner", as("olga")},
                                                 {"other", as("oscar")},
                                                 {"anonymous", {}},
                                                 {"moderator", as("mod", {"moderator"})},
                                                 {"admin", as("root", {"admin"})}};
  struct Row {
    std::string op, actor;
    int status;
  };
  const std::vector<Row> matrix = {
      {"posts.create", "owner", 201},     {"posts.create", "other", 201},
      {"posts.create", "anonymous", 401}, {"posts.create", "moderator", 201},
      {"posts.create", "admin", 201},     {"posts.update", "owner", 200},
      {"posts.update", "other", 403},     {"posts.update", "anonymous", 401},
      {"posts.update", "moderator", 403}, {"posts.update", "admin", 403},
      {"posts.delete", "owner", 204},     {"posts.delete", "other", 403},
      {"posts.delete", "anonymous", 401}, {"posts.delete", "moderator", 204},
      {"posts.delete", "admin", 204},
  };
  for (const auto& row : matrix) {
    std::string id = create(port, "olga", "the owner's post")["id"];
    const Headers& h = actors.at(row.actor);
    HttpResult r;
    if (row.op == "posts.create")
      r = host.request("POST", "/api/v1/posts", body({{"text", "new"}}), h);
    else if (row.op == "posts.update")
      r = host.request("PUT", "/api/v1/posts/" + id, body({{"text", "changed"}}), h);
    else if (row.op == "posts.delete")
      r = host.request("DELETE", "/api/v1/posts/" + id, "", h);
    INFO(row.op << " as " << row.actor << ": " << r.body);
    CHECK(r.status == row.status);
    if (r.status >= 400) CHECK(is_error_body(r));
    // A refused change changed nothing.
    json now = host.request("GET", "/api/v1/posts/" + id).json_body();
    if (row.op == "posts.update" && row.status != 200) CHECK(now["text"] == "the owner's post");
    if (row.op == "posts.delete" && row.status != 204) CHECK(now["id"] == id);
  }
  // Every state-changing posts operation has a row for every actor.
  json openapi = host.request("GET", "/api/v1/openapi.json").json_body();
  int checked = 0;
  for (const auto& [path, methods] : openapi["paths"].items())
    for (const auto& [method, op] : methods.items()) {
      std::string name = op.value("operationId", "");
      if (name.rfind("posts.", 0) != 0 || method == "get") continue;
      ++checked;
      for (const auto& [actor, unused] : actors) {
        bool found = false;
        for (const auto& row : matrix) found |= row.op == name && row.actor == actor;
        INFO(name << " (" << method << " " << path << ") has no row for " << actor);
        CHECK(found);
      }
    }
  CHECK(checked == 3);
}

TEST_CASE("posts: malformed requests get a 4xx and write nothing", "[posts][bad-input]") {
  TempDir data;
  Host host({.config = posts_config(data.path / "d")});
  REQUIRE(host.started());
  int port = host.port();
  json fixture = create(port, "alice", "the original");
  std::string id = fixture["id"];
  struct Row {
    std::string method, target, body;
    Headers headers;
  };
  Headers alice = as("alice");
  auto with = [&](std::vector<std::pair<std::string, std::string>> extra) {
    Headers h = alice;
    for (auto& e : extra) h.push_back(e);
    return h;
  };
  std::vector<Row> rows;
  auto post = [&](const std::string& b, Headers h = {}) {
    rows.push_back({"POST", "/api/v1/posts", b, h.empty() ? alice : h});
  };
  auto put = [&](const std::string& b, const std::string& target_id = "") {
    rows.push_back({"PUT", "/api/v1/posts/" + (target_id.empty() ? id : target_id), b, alice});
  };
  auto get = [&](const std::string& target) { rows.push_back({"GET", target, "", alice}); };

  // Wrong types of text.
  for (const char* v : {"1", "1.5", "true", "false", "null", "[]", "{}", "[\"a\"]", "{\"a\":1}"}) {
    post(std::string("{\"text\":") + v + "}");
    put(std::string("{\"text\":") + v + "}");
  }
  // Bad reply_to.
  for (const char* v : {"1", "true", "[]", "{}", "\"abc\"", "\"0\"", "\"-1\"", "\"01\"", "\"1.0\"",
                        "\"99999999999999999999\"", "\"999999\"", "\" 1\"", "\"\""})
    post(std::string("{\"text\":\"ok\",\"reply_to\":") + v + "}");
  // Unknown and privileged fields.
  for (const char* f : {"author_id", "likes_count", "id", "created_at", "edited_at", "counters",
                        "likes", "comments", "role", "version", "deleted", "user_id"}) {
    post(json{{"text", "ok"}, {f, "x"}}.dump());
    put(json{{"text", "ok"}, {f, "x"}}.dump());
  }
  post(json{{"text", "ok"}, {"counters", {{"likes", 1000}}}}.dump());
  put(json{{"text", "ok"}, {"reply_to", id}}.dump());
  put(json{{"text", "ok"}, {"postId", id}}.dump());  // given twice (path and body)
  // Bad idempotency keys.
  post(json{{"text", "ok"}, {"idempotency_key", 1}}.dump());
  post(json{{"text", "ok"}, {"idempotency_key", ""}}.dump());
  post(json{{"text", "ok"}, {"idempotency_key", std::string(129, 'k')}}.dump());
  post(json{{"text", "ok"}}.dump(), with({{"Idempotency-Key", std::string(129, 'k')}}));
  post(json{{"text", "ok"}}.dump(), with({{"Idempotency-Key", "caf\xc3\xa9"}}));
  post(json{{"text", "ok"}}.dump(), with({{"Idempotency-Key", "a\tb"}}));
  post(json{{"text", "ok"}, {"idempotency_key", "one"}}.dump(), with({{"Idempotency-Key", "two"}}));
  // Oversize, empty, blank and control-character text.
  std::string e501, emoji501;
  for (int i = 0; i < 501; ++i) e501 += "é", emoji501 += "🌍";
  for (const std::string& t :
       {std::string(501, 'a'), e501, emoji501, std::string(1000, 'a'), std::string(100000, 'a'),
        std::string(600000, 'a'), std::string(""), std::string(" "), std::string("    "),
        std::string("\t\n\r "), std::string("\u00a0"), std::string("\u3000\u3000"),
        std::string("\u200b"), std::string("\u2028"), std::string("\ufeff"),
        std::string("a\u0007b"), std::string(1, '\0'), std::string("x\x1b[31m")}) {
    post(json{{"text", t}}.dump());
    put(json{{"text", t}}.dump());
  }
  // Invalid UTF-8 bytes inside the JSON string, and a lone surrogate escape.
  for (const char* bytes : {"\xff", "\xc3\x28", "\xe2\x82", "\xc0\xaf", "\xed\xa0\x80",
                            "\xf5\x80\x80\x80", "\xf8\x88\x80\x80\x80", "\x80"}) {
    post(std::string("{\"text\":\"a") + bytes + "b\"}");
    put(std::string("{\"text\":\"a") + bytes + "b\"}");
  }
  post("{\"text\":\"\\ud800\"}");
  // Empty, non-object and malformed bodies.
  for (const char* b :
       {"", "[]", "\"text\"", "1", "null", "true", "{", "{\"text\":}", "{'text':'a'}",
        "{\"text\":\"a\",}", "{\"text\":\"a\"} x", "{\"text\" \"a\"}"}) {
    post(b);
    put(b);
  }
  // Deeply nested JSON.
  for (int depth : {33, 100, 5000}) {
    std::string nested = std::string(depth, '[') + std::string(depth, ']');
    post("{\"text\":\"a\",\"x\":" + nested + "}");
  }
  put("{\"text\":" + std::string(200, '[') + std::string(200, ']') + "}");
  // Bad ids in paths.
  for (std::string bad : {"abc", "0", "-1", "1.5", "01", "1e3", "99999999999999999999", "999999",
                          "%00", "%FF", "1%20", "1;drop", "0x10", "+1"}) {
    get("/api/v1/posts/" + bad);
    get("/api/v1/posts/" + bad + "/history");
    put(json{{"text", "ok"}}.dump(), bad);
    rows.push_back({"DELETE", "/api/v1/posts/" + bad, "", alice});
  }
  // Bad cursors and limits.
  std::string base = "/api/v1/users/alice/posts";
  for (const std::string& c :
       {std::string("!!!"), std::string("abc"), std::string("AAAA"), b64("u:bob:5"),
        b64("u:alice:0"), b64("u:alice:-1"), b64("u:alice:abc"), b64("h:777:5"), b64("u:alice:"),
        std::string(600, 'A'), std::string("%FF")}) {
    get(base + "?cursor=" + c);
    get("/api/v1/posts/" + id + "/history?cursor=" + c);
  }
  get(base + "?cursor=");
  for (const char* l : {"0", "100000", "-1", "abc", "1.5", "101", ""}) {
    get(base + "?limit=" + l);
    get("/api/v1/posts/" + id + "/history?limit=" + l);
  }
  get(base + "?foo=1");
  get("/api/v1/users/" + std::string(200, 'u') + "/posts");

  INFO(rows.size() << " rows");
  REQUIRE(rows.size() >= 100);
  size_t before = count_posts(port, "alice");
  for (const auto& row : rows) {
    auto r = http(port, row.method, row.target, row.body, row.headers);
    INFO(row.method << " " << row.target << " " << row.body.substr(0, 80) << " -> " << r.status
                    << " " << r.body.substr(0, 200));
    CHECK(r.status >= 400);
    CHECK(r.status < 500);
    CHECK(is_error_body(r));
  }
  CHECK(count_posts(port, "alice") == before);
  CHECK(host.request("GET", "/api/v1/posts/" + id).json_body() == fixture);
  CHECK(host.request("GET", "/api/v1/posts/" + id + "/history").json_body()["items"].empty());
  // Only the fixture was ever created.
  CHECK(eventually([&] { return received(port, "post.created").size() == 1; }));
  std::this_thread::sleep_for(200ms);
  CHECK(received(port, "post.created").size() == 1);
  CHECK(received(port, "post.updated").empty());
}
