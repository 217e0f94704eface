// The WebSocket transport: limits, pushes, origins, tokens.
#include <catch2/catch.hpp>
#include <future>
#include <thread>

#include "harness.hpp"

using namespace gvtest;

TEST_CASE("close code 1009 for an oversize message", "[ws][limits]") {
  TempDir dir;
  json c = default_config(dir.path / "data");
  c["websocket"] = {{"max_message_bytes", 1024}};
  Host host({c});
  REQUIRE(host.started());
  WebSocket ws(host.port());
  CHECK(ws.call("hello.greet", {{"name", "a"}})["ok"] == true);
  ws.send(std::string(4096, 'x'));
  CHECK_FALSE(ws.receive().has_value());
  CHECK(ws.close_code() == 1009);
}

TEST_CASE("malformed messages get an error and the socket stays open", "[ws]") {
  Host host;
  REQUIRE(host.started());
  WebSocket ws(host.port());
  for (std::string bad :
       std::vector<std::string>{"not json", "[1]", R"({"id":"1"})", R"({"op":"x","id":{}})",
                                R"({"op":"hello.greet","id":"2","data":[]})",
                                R"({"op":"hello.greet","id":"3","extra":1})"}) {
    INFO(bad);
    ws.send(bad);
    auto reply = ws.receive_json();
    REQUIRE(reply);
    CHECK((*reply)["ok"] == false);
    CHECK((*reply)["status"] == 400);
    CHECK((*reply)["error"]["code"].is_string());
  }
  auto missing = ws.call("nosuch.op");
  CHECK(missing["status"] == 404);
  CHECK(ws.call("hello.greet", {{"name", "still"}})["ok"] == true);
}

TEST_CASE("operations over /ws check tokens and roles", "[ws][auth]") {
  Host host;
  REQUIRE(host.started());
  WebSocket anonymous(host.port());
  CHECK(anonymous.call("hello.whoami")["status"] == 401);
  CHECK(anonymous.call("auth", {{"token", "garbage"}})["status"] == 401);
  CHECK(anonymous.call("auth", {{"token", make_token({{"sub", "eve"}})}})["ok"] == true);
  CHECK(anonymous.call("hello.whoami")["data"]["user_id"] == "eve");

  WebSocket by_header(host.port(), "/ws", {{"Authorization", "Bearer " + make_token()}});
  CHECK(by_header.call("hello.whoami")["data"]["user_id"] == "alice");
  WebSocket by_query(host.port(), "/ws?access_token=" + make_token({{"sub", "bob"}}));
  CHECK(by_query.call("hello.whoami")["data"]["user_id"] == "bob");
  CHECK(by_query.call("hello.announce", {{"text", "x"}})["status"] == 403);
  CHECK_THROWS_WITH(WebSocket(host.port(), "/ws?access_token=bad"), Catch::Contains("401"));
}

TEST_CASE("the Origin allowlist guards the upgrade", "[ws]") {
  TempDir dir;
  json c = default_config(dir.path / "data");
  c["websocket"] = {{"allowed_origins", {"http://good.example"}}};
  Host host({c});
  REQUIRE(host.started());
  CHECK_THROWS_WITH(WebSocket(host.port(), "/ws", {{"Origin", "http://evil.example"}}),
                    Catch::Contains("403"));
  WebSocket ok(host.port(), "/ws", {{"Origin", "http://good.example"}});
  CHECK(ok.call("hello.greet", {{"name", "o"}})["ok"] == true);
  WebSocket no_origin(host.port());  // not a browser
  CHECK(no_origin.is_open());
}

TEST_CASE("services push to a channel and to a user", "[ws][push]") {
  Host host;
  REQUIRE(host.started());
  WebSocket listener(host.port());
  CHECK(listener.call("hello.subscribe")["ok"] == true);
  WebSocket bob(host.port(), "/ws?access_token=" + make_token({{"sub", "bob"}}));

  auto admin = make_token({{"roles", {"admin"}}});
  CHECK(host.request("POST", "/api/v1/hello/announcements", R"({"text":"news"})",
                     {{"Authorization", "Bearer " + admin}})
            .status == 202);
  auto event = listener.receive_json();
  REQUIRE(event);
  CHECK((*event)["event"] == "hello.announcement");
  CHECK((*event)["data"]["text"] == "news");

  CHECK(host.request("POST", "/api/v1/hello/pokes/bob", R"({"text":"psst"})",
                     {{"Authorization", "Bearer " + make_token()}})
            .status == 202);
  auto poke = bob.receive_json();
  REQUIRE(poke);
  CHECK((*poke)["event"] == "hello.poke");
  CHECK((*poke)["data"]["text"] == "psst");
  // Subscribing needs a socket.
  CHECK(host.request("GET", "/api/v1/hello/greetings/x").status == 200);
}

TEST_CASE("a client that does not read is closed, not buffered", "[ws][limits]") {
  TempDir dir;
  json c = default_config(dir.path / "data");
  c["websocket"] = {{"send_queue_messages", 16}};
  Host host({c});
  REQUIRE(host.started());
  WebSocket slow(host.port(), "/ws?access_token=" + make_token({{"sub", "slowpoke"}}));
  slow.send_json({{"op", "testkit.flood"}, {"id", "f"}, {"data", {{"count", 20000}}}});
  // Do not read while the flood is queued; then drain what arrived.
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  int received = 0;
  while (slow.receive(std::chrono::seconds(5))) ++received;
  CHECK(received < 20000);
  auto metrics = host.request("GET", "/metrics").body;
  CHECK(metrics.find("grapevine_websocket_slow_closes_total 1") != std::string::npos);
  CHECK(host.request("GET", "/healthz").status == 200);
}

TEST_CASE("a malformed auth message is refused without harm", "[ws][auth]") {
  Host host;
  REQUIRE(host.started());
  WebSocket ws(host.port());
  for (json data : {json{{"token", 123}}, json{{"token", {{"a", 1}}}}, json{{"tok", "x"}}}) {
    INFO(data.dump());
    json reply = ws.call("auth", data);
    CHECK(reply["status"] == 400);
  }
  CHECK(ws.call("hello.greet", {{"name", "alive"}})["ok"] == true);
  CHECK(host.request("GET", "/healthz").status == 200);
}

TEST_CASE("a socket stops getting its user's pushes when the token expires", "[ws][auth]") {
  Host host;
  REQUIRE(host.started());
  auto now = std::chrono::duration_cast<std::chrono::seconds>(
                 std::chrono::system_clock::now().time_since_epoch())
                 .count();
  // The harness config allows 30 s of leeway; expire beyond it.
  WebSocket ws(host.port(),
               "/ws?access_token=" + make_token({{"sub", "shortlived"}, {"exp", now - 28}}));
  auto poke = [&] {
    return host
        .request("POST", "/api/v1/hello/pokes/shortlived", R"({"text":"hey"})",
                 {{"Authorization", "Bearer " + make_token()}})
        .status;
  };
  CHECK(poke() == 202);
  REQUIRE(ws.receive_json(std::chrono::seconds(2)).has_value());
  std::this_thread::sleep_for(std::chrono::milliseconds(4500));
  CHECK(poke() == 202);
  CHECK_FALSE(ws.receive_json(std::chrono::milliseconds(800)).has_value());
}

TEST_CASE("SIGTERM answers operations in flight on sockets, then closes with 1001",
          "[ws][shutdown]") {
  Host host;
  REQUIRE(host.started());
  WebSocket ws(host.port());
  ws.send_json({{"op", "testkit.slow"}, {"id", "s"}, {"data", {{"ms", 1000}}}});
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  auto terminated = std::async(std::launch::async, [&host] { return host.terminate(); });
  auto reply = ws.receive_json(std::chrono::seconds(5));
  REQUIRE(reply);
  CHECK((*reply)["id"] == "s");
  CHECK((*reply)["ok"] == true);
  CHECK_FALSE(ws.receive().has_value());
  CHECK(ws.close_code() == 1001);
  CHECK(terminated.get() == 0);
}
