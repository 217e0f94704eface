// The HTTP transport: limits, errors, tokens, overload, shutdown.
#include <signal.h>

#include <catch2/catch.hpp>
#include <future>
#include <thread>

#include "harness.hpp"

using namespace gvtest;

namespace {

void check_error_body(const HttpResult& r, const std::string& code) {
  INFO(r.body);
  json body = r.json_body();
  REQUIRE(body.is_object());
  CHECK(body["error"]["code"] == code);
  CHECK(body["error"]["message"].is_string());
  CHECK(body["error"]["request_id"] == r.header("x-request-id"));
}

Headers bearer(const std::string& token) { return {{"Authorization", "Bearer " + token}}; }

}  // namespace

TEST_CASE("host endpoints", "[http]") {
  Host host;
  REQUIRE(host.started());
  CHECK(host.request("GET", "/healthz").status == 200);
  CHECK(host.request("GET", "/readyz").json_body()["status"] == "ready");
  host.request("GET", "/api/v1/hello/greetings/ann");
  auto metrics = host.request("GET", "/metrics");
  CHECK(metrics.status == 200);
  CHECK(metrics.body.find("grapevine_requests_total{op=\"hello.greet\",status=\"200\"} 1") !=
        std::string::npos);
  CHECK(metrics.body.find("grapevine_request_duration_seconds_bucket{op=\"hello.greet\"") !=
        std::string::npos);
  CHECK(metrics.body.find("grapevine_worker_queue_depth 0") != std::string::npos);
  auto openapi = host.request("GET", "/api/v1/openapi.json").json_body();
  CHECK(openapi["openapi"] == "3.1.0");
  CHECK(openapi["paths"]["/api/v1/hello/greetings/{name}"]["get"]["operationId"] == "hello.greet");
  CHECK(openapi["paths"]["/api/v1/hello/whoami"]["get"].contains("security"));
}

TEST_CASE("request ids are kept or made, and logged", "[http]") {
  Host host;
  REQUIRE(host.started());
  auto r = host.request("GET", "/api/v1/hello/greetings/a", "", {{"X-Request-Id", "abc-123"}});
  CHECK(r.header("x-request-id") == "abc-123");
  auto made = host.request("GET", "/api/v1/hello/greetings/a", "", {{"X-Request-Id", "bad id!"}});
  CHECK(made.header("x-request-id").size() == 16);
  host.terminate();
  std::string log = host.output();
  CHECK(log.find("\"request_id\":\"abc-123\"") != std::string::npos);
  CHECK(log.find("\"op\":\"hello.greet\",\"status\":200") != std::string::npos);
}

TEST_CASE("JSON 404 and 405", "[http]") {
  Host host;
  REQUIRE(host.started());
  auto missing = host.request("GET", "/api/v1/nothing/here");
  CHECK(missing.status == 404);
  check_error_body(missing, "not_found");
  auto wrong = host.request("DELETE", "/api/v1/hello/echo");
  CHECK(wrong.status == 405);
  CHECK(wrong.header("allow") == "POST");
  check_error_body(wrong, "method_not_allowed");
}

TEST_CASE("input is checked against the operation's schema", "[http][validation]") {
  Host host;
  REQUIRE(host.started());
  struct Case {
    std::string body;
    std::string field;
  };
  std::vector<Case> cases = {
      {R"({"text":5})", "text"},
      {R"({"text":"a","role":"admin"})", "role"},
      {R"({"text":"a","repeat":"2"})", "repeat"},
      {R"({"text":"a","repeat":9})", "repeat"},
      {R"({})", "text"},
      {"{\"text\":\"" + std::string(300, 'x') + "\"}", "text"},
  };
  for (const auto& c : cases) {
    INFO(c.body);
    auto r = host.request("POST", "/api/v1/hello/echo", c.body);
    CHECK(r.status == 400);
    check_error_body(r, "invalid_input");
    CHECK(r.json_body()["error"]["message"].get<std::string>().find(c.field) != std::string::npos);
  }
  for (const std::string& bad :
       std::vector<std::string>{"{", "[1,2]", "\"text\"", std::string(100, '[')}) {
    auto r = host.request("POST", "/api/v1/hello/echo", bad);
    CHECK(r.status == 400);
    check_error_body(r, "invalid_json");
  }
  auto query = host.request("GET", "/api/v1/hello/greetings/a?extra=1");
  CHECK(query.status == 400);
  check_error_body(query, "invalid_input");
}

TEST_CASE("413 for a body over the limit, 431 for oversize headers", "[http][limits]") {
  TempDir dir;
  json c = default_config(dir.path / "data");
  c["limits"] = {{"body_bytes", 1024}, {"header_bytes", 2048}};
  Host host({c});
  REQUIRE(host.started());
  auto big = host.request("POST", "/api/v1/hello/echo", std::string(4096, ' '));
  CHECK(big.status == 413);
  check_error_body(big, "body_too_large");
  auto headers = host.request("GET", "/healthz", "", {{"X-Big", std::string(4096, 'h')}});
  CHECK(headers.status == 431);
  CHECK(host.request("POST", "/api/v1/hello/echo", R"({"text":"ok"})").status == 201);
}

TEST_CASE("tokens are verified", "[http][auth]") {
  Host host;
  REQUIRE(host.started());
  auto ok = host.request("GET", "/api/v1/hello/whoami", "", bearer(make_token()));
  REQUIRE(ok.status == 200);
  CHECK(ok.json_body()["user_id"] == "alice");

  auto anonymous = host.request("GET", "/api/v1/hello/whoami");
  CHECK(anonymous.status == 401);
  check_error_body(anonymous, "unauthorized");

  std::string good = make_token();
  std::string tampered = good;
  tampered[good.find('.') + 5] = tampered[good.find('.') + 5] == 'A' ? 'B' : 'A';
  auto now = std::chrono::duration_cast<std::chrono::seconds>(
                 std::chrono::system_clock::now().time_since_epoch())
                 .count();
  std::vector<std::pair<std::string, std::string>> bad = {
      {"alg none", make_token({}, {{"alg", "none"}}).substr(0, good.rfind('.') + 1)},
      {"alg none signed", make_token({}, {{"alg", "none"}})},
      {"expired", make_token({{"exp", now - 3600}})},
      {"not yet valid", make_token({{"nbf", now + 3600}})},
      {"wrong aud", make_token({{"aud", "someone-else"}})},
      {"wrong iss", make_token({{"iss", "someone-else"}})},
      {"wrong typ", make_token({}, {{"typ", "JWT"}})},
      {"unknown kid", make_token({}, {{"kid", "other"}})},
      {"wrong secret", make_token({}, {}, std::string(40, 'z'))},
      {"tampered", tampered},
      {"garbage", "not.a.token"},
  };
  for (const auto& [name, token] : bad) {
    INFO(name);
    auto r = host.request("GET", "/api/v1/hello/whoami", "", bearer(token));
    CHECK(r.status == 401);
    check_error_body(r, "invalid_token");
    CHECK(r.header("www-authenticate").find("invalid_token") != std::string::npos);
    // A bad token is refused even where no token is needed.
    CHECK(host.request("GET", "/api/v1/hello/greetings/x", "", bearer(token)).status == 401);
  }
  auto basic = host.request("GET", "/api/v1/hello/whoami", "", {{"Authorization", "Basic YTpi"}});
  CHECK(basic.status == 401);
}

TEST_CASE("operations declare who may call them", "[http][auth]") {
  Host host;
  REQUIRE(host.started());
  std::string body = R"({"text":"hi all"})";
  CHECK(host.request("POST", "/api/v1/hello/announcements", body).status == 401);
  auto user = host.request("POST", "/api/v1/hello/announcements", body, bearer(make_token()));
  CHECK(user.status == 403);
  check_error_body(user, "forbidden");
  auto admin = host.request("POST", "/api/v1/hello/announcements", body,
                            bearer(make_token({{"roles", {"user", "admin"}}})));
  CHECK(admin.status == 202);
}

TEST_CASE("a throwing handler gives 500 with the request id; the host keeps serving",
          "[http][faults]") {
  Host host;
  REQUIRE(host.started());
  auto r = host.request("GET", "/api/v1/testkit/throw", "", {{"X-Request-Id", "req-500"}});
  CHECK(r.status == 500);
  check_error_body(r, "internal");
  CHECK(r.json_body()["error"]["request_id"] == "req-500");
  CHECK(host.request("GET", "/api/v1/hello/greetings/after").status == 200);
  auto chosen = host.request("GET", "/api/v1/testkit/error");
  CHECK(chosen.status == 409);
  check_error_body(chosen, "conflict");
}

TEST_CASE("a quick handler runs on the network thread, where a call that may wait is refused",
          "[http][faults]") {
  Host host;
  REQUIRE(host.started());
  // The network threads: the main one (the process's name) and gv-io.
  auto network = [](const json& thread) { return thread == "grapevine" || thread == "gv-io"; };
  auto worker = host.request("GET", "/api/v1/testkit/thread");
  REQUIRE(worker.status == 200);
  CHECK(worker.json_body()["thread"] == "gv-worker");
  auto quick = host.request("GET", "/api/v1/testkit/quick");
  REQUIRE(quick.status == 200);
  CHECK(network(quick.json_body()["thread"]));
  WebSocket ws(host.port());
  json reply = ws.call("testkit.quick");
  REQUIRE(reply["ok"] == true);
  CHECK(network(reply["data"]["thread"]));
  CHECK(ws.call("testkit.thread")["data"]["thread"] == "gv-worker");
  // Calling another operation: fine on a worker, refused on the network
  // thread (a 500 with the request id, and the refusal logged).
  CHECK(host.request("GET", "/api/v1/testkit/thread?call=true").status == 200);
  auto refused =
      host.request("GET", "/api/v1/testkit/quick?call=true", "", {{"X-Request-Id", "req-quick"}});
  CHECK(refused.status == 500);
  check_error_body(refused, "internal");
  CHECK(refused.json_body()["error"]["request_id"] == "req-quick");
  CHECK(eventually([&] {
    const std::string out = host.output();
    return out.find("a quick operation's handler called what may wait") != std::string::npos &&
           out.find(R"("call":"call_operation")") != std::string::npos;
  }));
  CHECK(host.request("GET", "/api/v1/testkit/quick").status == 200);  // still serving
}

TEST_CASE("a body given as JSON text is sent as it is; text that is not JSON gives 500",
          "[http][faults]") {
  Host host;
  REQUIRE(host.started());
  const std::string text = R"({"b": [1, 2.50, "x"],   "a":null})";  // spacing and order kept
  auto ok = host.request("POST", "/api/v1/testkit/json_text", json{{"text", text}}.dump());
  CHECK(ok.status == 201);
  CHECK(ok.body == text);
  auto bad = host.request("POST", "/api/v1/testkit/json_text", json{{"text", "{\"a\":"}}.dump(),
                          {{"X-Request-Id", "req-bad-json"}});
  CHECK(bad.status == 500);
  check_error_body(bad, "internal");
  CHECK(bad.json_body()["error"]["request_id"] == "req-bad-json");
}

TEST_CASE("503 with Retry-After when the worker queue is full", "[http][overload]") {
  TempDir dir;
  json c = default_config(dir.path / "data");
  c["workers"] = {{"threads", 1}, {"queue_limit", 1}};
  Host host({c});
  REQUIRE(host.started());
  std::vector<std::future<HttpResult>> slow;
  for (int i = 0; i < 2; ++i) {
    slow.push_back(std::async(std::launch::async, [&host] {
      return host.request("GET", "/api/v1/testkit/slow?ms=1500");
    }));
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  auto refused = host.request("GET", "/api/v1/hello/greetings/x");
  CHECK(refused.status == 503);
  CHECK(refused.header("retry-after") == "1");
  check_error_body(refused, "overloaded");
  for (auto& f : slow) CHECK(f.get().status == 200);
  CHECK(host.request("GET", "/api/v1/hello/greetings/x").status == 200);
}

TEST_CASE("503 past the connection limit", "[http][limits]") {
  TempDir dir;
  json c = default_config(dir.path / "data");
  c["limits"] = {{"max_connections", 1}};
  Host host({c});
  REQUIRE(host.started());
  auto held = std::async(std::launch::async,
                         [&host] { return host.request("GET", "/api/v1/testkit/slow?ms=1000"); });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CHECK(host.request("GET", "/healthz").status == 503);
  CHECK(held.get().status == 200);
  CHECK(host.request("GET", "/healthz").status == 200);
}

TEST_CASE("SIGTERM lets a slow request finish, then exits 0", "[http][shutdown]") {
  Host host;
  REQUIRE(host.started());
  auto slow = std::async(std::launch::async,
                         [&host] { return host.request("GET", "/api/v1/testkit/slow?ms=1500"); });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CHECK(host.terminate() == 0);
  auto r = slow.get();
  CHECK(r.status == 200);
  CHECK(r.json_body()["slept_ms"] == 1500);
  CHECK(host.output().find("\"msg\":\"stopped\"") != std::string::npos);
}

TEST_CASE("query parameters take the schema's type, also from a type list", "[http][validation]") {
  Host host;
  REQUIRE(host.started());
  auto r = host.request("GET", "/api/v1/testkit/nullable?n=5");
  REQUIRE(r.status == 200);
  CHECK(r.json_body()["n"] == 5);
  CHECK(host.request("GET", "/api/v1/testkit/nullable?n=x").status == 400);
  CHECK(host.request("GET", "/healthz").status == 200);
}

TEST_CASE("HEAD, absolute-form targets and bodyless statuses", "[http]") {
  Host host;
  REQUIRE(host.started());
  auto head = host.request("HEAD", "/api/v1/hello/greetings/h");
  CHECK(head.status == 200);
  CHECK(head.body.empty());
  CHECK(std::stoi(head.header("content-length")) > 0);
  auto absolute = host.request("GET", "http://127.0.0.1/api/v1/hello/greetings/abs");
  CHECK(absolute.status == 200);
  CHECK(absolute.json_body()["message"] == "Hi, abs!");
  // A 304 carries no body, so the next response on the connection parses.
  RawConnection conn(host.port());
  conn.send(
      "GET /api/v1/testkit/not_modified HTTP/1.1\r\nHost: t\r\n\r\n"
      "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
  bool closed = false;
  std::string got = conn.read_until_closed(std::chrono::seconds(5), &closed);
  CHECK(got.find("HTTP/1.1 304 Not Modified\r\n") == 0);
  CHECK(got.find("ignored") == std::string::npos);
  CHECK(got.find("\r\n\r\nHTTP/1.1 200 OK\r\n") != std::string::npos);
}

TEST_CASE("Expect: 100-continue is answered in any letter case", "[http]") {
  Host host;
  REQUIRE(host.started());
  RawConnection conn(host.port());
  conn.send(
      "POST /api/v1/hello/echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
      "Content-Length: 13\r\nExpect: 100-Continue\r\nConnection: close\r\n\r\n");
  bool closed = false;
  std::string interim = conn.read_until_closed(std::chrono::milliseconds(500), &closed);
  CHECK(interim.find("100 Continue") != std::string::npos);
  conn.send(R"({"text":"go"})");
  std::string rest = conn.read_until_closed(std::chrono::seconds(5), &closed);
  CHECK(rest.find("201 Created") != std::string::npos);
}

TEST_CASE("a revoked session or user stops working at once, on open sockets too",
          "[http][auth][revoke]") {
  Host host;
  REQUIRE(host.started());
  auto now = std::chrono::duration_cast<std::chrono::seconds>(
                 std::chrono::system_clock::now().time_since_epoch())
                 .count();
  std::string s1 = make_token({{"sid", "s1"}, {"iat", now - 10}});
  std::string s2 = make_token({{"sid", "s2"}, {"iat", now - 10}});
  Headers h1 = {{"Authorization", "Bearer " + s1}};
  Headers h2 = {{"Authorization", "Bearer " + s2}};
  auto r = host.request("GET", "/api/v1/testkit/client", "", h1);
  REQUIRE(r.status == 200);
  CHECK(r.json_body()["client_address"] == "127.0.0.1");
  CHECK(r.json_body()["session_id"] == "s1");
  WebSocket ws(host.port(), "/ws?access_token=" + s1);
  CHECK(ws.call("testkit.client")["ok"] == true);

  REQUIRE(host.request("POST", "/api/v1/testkit/revoke", "", h1).status == 204);
  r = host.request("GET", "/api/v1/testkit/client", "", h1);
  CHECK(r.status == 401);
  CHECK(r.json_body()["error"]["message"] == "the access token was revoked");
  // Even a public operation refuses it, like any bad token.
  CHECK(host.request("GET", "/api/v1/hello/greetings/x", "", h1).status == 401);
  json reply = ws.call("testkit.client");
  CHECK(reply["ok"] == false);
  CHECK(reply["error"]["code"] == "unauthorized");
  // The revoked token opens no new socket and authenticates none; the old
  // socket goes on with a valid token.
  CHECK_THROWS_WITH(WebSocket(host.port(), "/ws?access_token=" + s1), Catch::Contains("401"));
  WebSocket fresh(host.port());
  json refused = fresh.call("auth", {{"token", s1}});
  CHECK(refused["status"] == 401);
  CHECK(refused["error"]["message"] == "the access token was revoked");
  REQUIRE(ws.call("auth", {{"token", s2}})["ok"] == true);
  CHECK(ws.call("testkit.client")["data"]["session_id"] == "s2");
  // Another session of the same user goes on.
  CHECK(host.request("GET", "/api/v1/testkit/client", "", h2).status == 200);

  // Every token of the user issued until now.
  REQUIRE(host.request("POST", "/api/v1/testkit/revoke", R"({"all":true})", h2).status == 204);
  CHECK(host.request("GET", "/api/v1/testkit/client", "", h2).status == 401);
  std::string later = make_token({{"sid", "s3"}, {"iat", now + 5}});
  CHECK(host.request("GET", "/api/v1/testkit/client", "", {{"Authorization", "Bearer " + later}})
            .status == 200);
  std::string other = make_token({{"sub", "bob"}, {"iat", now - 10}});
  CHECK(host.request("GET", "/api/v1/testkit/client", "", {{"Authorization", "Bearer " + other}})
            .status == 200);
}

TEST_CASE("plugins set response headers; the host's own and malformed ones are refused",
          "[http][headers]") {
  Host host;
  REQUIRE(host.started());
  auto r = host.request("GET", "/api/v1/testkit/headers");
  REQUIRE(r.status == 200);
  CHECK(r.header("cache-control") == "max-age=60");
  CHECK(r.header("x-custom") == "one two");
  CHECK(r.header("content-type") == "application/json");  // not the plugin's text/html
  CHECK(r.header("injected").empty());                    // no header splitting
  CHECK(r.header("x-split").empty());
  CHECK(r.json_body()["ok"] == true);
  std::string log = host.output();
  CHECK(log.find("\"header\":\"Content-Type\"") != std::string::npos);
  CHECK(log.find("\"header\":\"Bad Name\"") != std::string::npos);
  // A plugin's Retry-After replaces the host's default of 1 second.
  auto busy = host.request("GET", "/api/v1/testkit/busy");
  CHECK(busy.status == 503);
  CHECK(busy.header("retry-after") == "7");
  CHECK(busy.json_body()["error"]["code"] == "unavailable");
  // Over WebSocket the same operations answer with their body alone.
  WebSocket ws(host.port());
  json reply = ws.call("testkit.headers");
  CHECK(reply["ok"] == true);
  CHECK(reply["data"]["ok"] == true);
}
