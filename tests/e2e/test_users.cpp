// The users plugin end to end: accounts, sessions and tokens over HTTP and
// /ws, an authorization matrix, a table of malformed requests, rate limits
// and memory under a login flood. Hashes run at the real argon2id cost, so
// the number of registrations and logins here is kept modest.
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <memory>
#include <set>
#include <thread>

#include "harness.hpp"

using namespace gvtest;
using namespace std::chrono_literals;

namespace {

const std::string kPassword = "correct horse";

json users_config(const fs::path& data, json users = json::object(), int threads = 4) {
  json c = default_config(data);
  json u = {{"admins", {"root_admin"}},
            {"login_per_ip_per_minute", 100000},
            {"login_per_account_per_minute", 100000},
            {"register_per_ip_per_hour", 100000}};
  u.update(users);
  c["plugins"]["users"] = {{"config", u}};
  c["workers"] = {{"threads", threads}, {"queue_limit", 256}};
  c["log"] = {{"access", false}};
  return c;
}

Headers bearer(const std::string& token) { return {{"Authorization", "Bearer " + token}}; }

json register_user(int port, const std::string& name, const std::string& password = kPassword) {
  auto r = http(
      port, "POST", "/api/v1/users/register",
      json{{"username", name}, {"email", name + "@example.com"}, {"password", password}}.dump());
  INFO(r.body);
  REQUIRE(r.status == 201);
  return r.json_body();
}

json login(int port, const std::string& login_name, const std::string& password = kPassword) {
  auto r = http(port, "POST", "/api/v1/users/login",
                json{{"login", login_name}, {"password", password}}.dump());
  INFO(r.body);
  REQUIRE(r.status == 200);
  return r.json_body();
}

int me_status(int port, const std::string& token) {
  return http(port, "GET", "/api/v1/users/me", "", bearer(token)).status;
}

int refresh_status(int port, const std::string& refresh, json* out = nullptr) {
  auto r = http(port, "POST", "/api/v1/users/refresh", json{{"refresh_token", refresh}}.dump());
  if (out) *out = r.json_body();
  return r.status;
}

bool is_error_body(const HttpResult& r) {
  json j = r.json_body();
  return j.is_object() && j.contains("error") && j["error"].contains("code") &&
         j["error"]["code"].is_string();
}

int64_t user_count(int port, const std::string& admin_token) {
  auto r = http(port, "GET", "/api/v1/users?limit=1", "", bearer(admin_token));
  REQUIRE(r.status == 200);
  return r.json_body()["total"];
}

int64_t rss_kib(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  return -1;
}

}  // namespace

TEST_CASE("users: register, login, me, get, update, delete over HTTP", "[users]") {
  TempDir data;
  json config = users_config(data.path / "d");
  config["auth"]["access_token_ttl_s"] = 600;
  Host host({.config = config});
  REQUIRE(host.started());
  const int port = host.port();

  json alice = register_user(port, "Alice_1");
  CHECK(alice["username"] == "alice_1");  // stored in lower case
  CHECK(alice["id"].is_string());
  CHECK(alice["role"] == "user");
  CHECK(alice["display_name"] == "alice_1");
  CHECK(alice.contains("created_at"));
  CHECK_FALSE(alice.contains("password_hash"));
  CHECK(alice.dump().find("argon2") == std::string::npos);
  const std::string id = alice["id"];

  // Duplicates, ignoring case: 409 naming the field.
  auto dup = http(
      port, "POST", "/api/v1/users/register",
      json{{"username", "ALICE_1"}, {"email", "x@example.com"}, {"password", kPassword}}.dump());
  CHECK(dup.status == 409);
  CHECK(dup.json_body()["error"]["message"].get<std::string>().find("username") !=
        std::string::npos);
  dup = http(port, "POST", "/api/v1/users/register",
             json{{"username", "other"}, {"email", "ALICE_1@Example.com"}, {"password", kPassword}}
                 .dump());
  CHECK(dup.status == 409);
  CHECK(dup.json_body()["error"]["message"].get<std::string>().find("email") != std::string::npos);

  // Login by username or email, any case.
  json t = login(port, "ALICE_1");
  CHECK(t["token_type"] == "Bearer");
  CHECK(t["expires_in"] == 600);  // the host's auth.access_token_ttl_s
  CHECK(t["user"]["id"] == id);
  json t2 = login(port, "alice_1@EXAMPLE.com");
  const std::string token = t["access_token"];

  auto me = http(port, "GET", "/api/v1/users/me", "", bearer(token));
  REQUIRE(me.status == 200);
  CHECK(me.json_body()["email"] == "Alice_1@example.com");  // as given

  // Public profile: email only for the user and admins.
  json bob = register_user(port, "bob_1");
  json bob_t = login(port, "bob_1");
  auto pub = http(port, "GET", "/api/v1/users/" + id);
  REQUIRE(pub.status == 200);
  CHECK_FALSE(pub.json_body().contains("email"));
  CHECK_FALSE(http(port, "GET", "/api/v1/users/" + id, "", bearer(bob_t["access_token"]))
                  .json_body()
                  .contains("email"));
  CHECK(http(port, "GET", "/api/v1/users/" + id, "", bearer(token)).json_body().contains("email"));
  CHECK(http(port, "GET", "/api/v1/users/999999").status == 404);

  // Unknown user and wrong password: the same answer.
  auto wrong = http(port, "POST", "/api/v1/users/login",
                    json{{"login", "alice_1"}, {"password", "not the password"}}.dump());
  auto unknown = http(port, "POST", "/api/v1/users/login",
                      json{{"login", "nobody_here"}, {"password", "not the password"}}.dump());
  CHECK(wrong.status == 401);
  CHECK(unknown.status == 401);
  CHECK(wrong.json_body()["error"]["code"] == unknown.json_body()["error"]["code"]);
  CHECK(wrong.json_body()["error"]["message"] == unknown.json_body()["error"]["message"]);

  // ... in about the same time.
  auto timed = [&](const std::string& who) {
    auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < 3; ++i)
      http(port, "POST", "/api/v1/users/login",
           json{{"login", who}, {"password", "not the password"}}.dump());
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
               .count() /
           3;
  };
  double known_ms = timed("alice_1"), unknown_ms = timed("nobody_here");
  WARN("login with a wrong password: " << known_ms << " ms; unknown user: " << unknown_ms << " ms");
  CHECK(unknown_ms > known_ms * 0.5);
  CHECK(unknown_ms < known_ms * 2.0);

  // Update: display name and email; the email only with the password.
  auto no_proof = http(port, "PUT", "/api/v1/users/" + id,
                       json{{"display_name", "Alice Ü"}, {"email", "new@example.com"}}.dump(),
                       bearer(token));
  CHECK(no_proof.status == 400);
  CHECK(no_proof.json_body()["error"]["message"] == "old_password: needed to change the email");
  CHECK(http(port, "PUT", "/api/v1/users/" + id,
             json{{"email", "new@example.com"}, {"old_password", "not my password"}}.dump(),
             bearer(token))
            .status == 403);
  CHECK(http(port, "GET", "/api/v1/users/me", "", bearer(token)).json_body()["email"] ==
        "Alice_1@example.com");  // neither changed anything
  auto put = http(port, "PUT", "/api/v1/users/" + id,
                  json{{"display_name", "Alice Ü"},
                       {"email", "new@example.com"},
                       {"old_password", kPassword}}
                      .dump(),
                  bearer(token));
  INFO(put.body);
  REQUIRE(put.status == 200);
  CHECK(put.json_body()["display_name"] == "Alice Ü");
  CHECK(put.json_body()["email"] == "new@example.com");
  CHECK(http(port, "PUT", "/api/v1/users/" + id,
             json{{"email", "BOB_1@example.com"}, {"old_password", kPassword}}.dump(),
             bearer(token))
            .status == 409);

  // Delete: the user with the password.
  CHECK(http(port, "DELETE", "/api/v1/users/" + id, json{{"password", "wrong password"}}.dump(),
             bearer(token))
            .status == 403);
  CHECK(http(port, "DELETE", "/api/v1/users/" + id, "", bearer(token)).status == 400);
  auto del = http(port, "DELETE", "/api/v1/users/" + id, json{{"password", kPassword}}.dump(),
                  bearer(token));
  CHECK(del.status == 204);
  CHECK(http(port, "GET", "/api/v1/users/" + id).status == 404);
  CHECK(me_status(port, token) == 401);               // its tokens die with it
  CHECK(me_status(port, t2["access_token"]) == 401);  // every session
  CHECK(refresh_status(port, t2["refresh_token"]) == 401);
  CHECK(http(port, "POST", "/api/v1/users/login",
             json{{"login", "alice_1"}, {"password", kPassword}}.dump())
            .status == 401);
  // Ids are never reused.
  json carol = register_user(port, "carol_1");
  CHECK(std::stoll(carol["id"].get<std::string>()) > std::stoll(bob["id"].get<std::string>()));
}

// The operator's minimal config: no auth section. The host makes its
// signing key in data_dir on first start (as config/grapevine.yaml does)
// and keeps it, so tokens outlive a restart.
TEST_CASE("users: with no auth section, logins are signed by a key made in data_dir", "[users]") {
  TempDir data;
  json config = users_config(data.path / "d");
  config.erase("auth");
  std::string token;
  {
    Host host({.config = config});
    REQUIRE(host.started());
    register_user(host.port(), "minimal");
    json t = login(host.port(), "minimal");
    token = t["access_token"];
    CHECK(me_status(host.port(), token) == 200);
  }
  REQUIRE(fs::exists(data.path / "d" / "jwt-main.key"));
  CHECK(fs::file_size(data.path / "d" / "jwt-main.key") >= 32);
  Host again({.config = config});
  REQUIRE(again.started());
  CHECK(me_status(again.port(), token) == 200);
}

TEST_CASE("users: every operation over /ws", "[users][ws]") {
  TempDir data;
  Host host({.config = users_config(data.path / "d")});
  REQUIRE(host.started());
  WebSocket ws(host.port());
  json reg =
      ws.call("users.register",
              {{"username", "wsuser"}, {"email", "ws@example.com"}, {"password", kPassword}});
  INFO(reg.dump());
  REQUIRE(reg["ok"] == true);
  CHECK(reg["status"] == 201);
  const std::string id = reg["data"]["id"];

  json bad = ws.call("users.register", {{"username", 5}});
  CHECK(bad["ok"] == false);
  CHECK(bad["status"] == 400);

  json in = ws.call("users.login", {{"login", "wsuser"}, {"password", kPassword}});
  REQUIRE(in["ok"] == true);
  json tokens = in["data"];
  CHECK(ws.call("users.me")["status"] == 401);  // not yet signed in on this socket
  REQUIRE(ws.call("auth", {{"token", tokens["access_token"]}})["ok"] == true);
  json me = ws.call("users.me");
  REQUIRE(me["ok"] == true);
  CHECK(me["data"]["id"] == id);
  CHECK(ws.call("users.get", {{"userId", id}})["data"]["email"] == "ws@example.com");
  json upd = ws.call("users.update", {{"userId", id}, {"display_name", "Over WS"}});
  REQUIRE(upd["ok"] == true);
  CHECK(upd["data"]["display_name"] == "Over WS");
  CHECK(ws.call("users.get", {{"userId", "abc"}})["status"] == 400);

  json ref = ws.call("users.refresh", {{"refresh_token", tokens["refresh_token"]}});
  REQUIRE(ref["ok"] == true);
  CHECK(ref["data"]["refresh_token"] != tokens["refresh_token"]);
  CHECK(ws.call("users.refresh", {{"refresh_token", tokens["refresh_token"]}})["status"] == 401);

  // The reuse ended the session: this socket's token is dead too.
  CHECK(ws.call("users.me")["status"] == 401);
  // A socket whose token was revoked is refused every operation, public
  // ones included (host rule): sign in again on a new socket.
  CHECK(ws.call("users.login", {{"login", "wsuser"}, {"password", kPassword}})["status"] == 401);
  WebSocket ws2(host.port());
  json again = ws2.call("users.login", {{"login", "wsuser"}, {"password", kPassword}});
  REQUIRE(again["ok"] == true);
  REQUIRE(ws2.call("auth", {{"token", again["data"]["access_token"]}})["ok"] == true);
  CHECK(ws2.call("users.logout")["status"] == 204);
  CHECK(ws2.call("users.me")["status"] == 401);

  WebSocket ws3(host.port());
  json last = ws3.call("users.login", {{"login", "wsuser"}, {"password", kPassword}});
  REQUIRE(ws3.call("auth", {{"token", last["data"]["access_token"]}})["ok"] == true);
  json del = ws3.call("users.delete", {{"userId", id}, {"password", kPassword}});
  CHECK(del["status"] == 204);
  CHECK(http(host.port(), "GET", "/api/v1/users/" + id).status == 404);
}

TEST_CASE("users: refresh rotation, reuse detection, logout, password change", "[users]") {
  TempDir data;
  Host host({.config = users_config(data.path / "d")});
  REQUIRE(host.started());
  const int port = host.port();
  json dave = register_user(port, "dave");

  SECTION("rotation and reuse") {
    json t1 = login(port, "dave");
    json t2;
    REQUIRE(refresh_status(port, t1["refresh_token"], &t2) == 200);
    CHECK(t2["refresh_token"] != t1["refresh_token"]);
    CHECK(me_status(port, t2["access_token"]) == 200);
    json t3;
    REQUIRE(refresh_status(port, t2["refresh_token"], &t3) == 200);
    CHECK(me_status(port, t3["access_token"]) == 200);
    // Presenting a rotated token: 401, and the whole family dies.
    CHECK(refresh_status(port, t1["refresh_token"]) == 401);
    CHECK(refresh_status(port, t3["refresh_token"]) == 401);
    CHECK(me_status(port, t3["access_token"]) == 401);
    CHECK(me_status(port, t1["access_token"]) == 401);
    // Garbage and a refresh token used as an access token.
    CHECK(refresh_status(port, "not-a-token") == 401);
    CHECK(me_status(port, t3["refresh_token"]) == 401);
    // Another session is untouched.
    json other = login(port, "dave");
    CHECK(me_status(port, other["access_token"]) == 200);
  }

  SECTION("logout takes effect within a second") {
    json a = login(port, "dave");
    json b = login(port, "dave");
    REQUIRE(me_status(port, a["access_token"]) == 200);
    auto start = std::chrono::steady_clock::now();
    auto out = http(port, "POST", "/api/v1/users/logout", "", bearer(a["access_token"]));
    CHECK(out.status == 204);
    CHECK(me_status(port, a["access_token"]) == 401);
    CHECK(std::chrono::steady_clock::now() - start < 1s);
    // Token a was remembered as verified by its first use: revocation
    // still refuses it, and /metrics counts the uses it answered.
    std::string metrics = http(port, "GET", "/metrics").body;
    const std::string hits = "\ngrapevine_auth_verified_token_hits_total ";
    auto at = metrics.find(hits);
    REQUIRE(at != std::string::npos);
    CHECK(std::stod(metrics.substr(at + hits.size())) >= 2);
    CHECK(refresh_status(port, a["refresh_token"]) == 401);
    CHECK(me_status(port, b["access_token"]) == 200);
    // Logout with a refresh token of the caller's other session ends it too.
    json c = login(port, "dave");
    CHECK(http(port, "POST", "/api/v1/users/logout",
               json{{"refresh_token", b["refresh_token"]}}.dump(), bearer(c["access_token"]))
              .status == 204);
    CHECK(me_status(port, b["access_token"]) == 401);
    CHECK(refresh_status(port, b["refresh_token"]) == 401);
    CHECK(me_status(port, c["access_token"]) == 401);
    CHECK(http(port, "POST", "/api/v1/users/logout").status == 401);
  }

  SECTION("a password change ends the other sessions") {
    json mine = login(port, "dave");
    json other = login(port, "dave");
    const std::string id = dave["id"];
    CHECK(http(port, "PUT", "/api/v1/users/" + id, json{{"password", "new password!"}}.dump(),
               bearer(mine["access_token"]))
              .status == 400);  // old_password missing
    CHECK(http(port, "PUT", "/api/v1/users/" + id,
               json{{"password", "new password!"}, {"old_password", "wrong one"}}.dump(),
               bearer(mine["access_token"]))
              .status == 403);
    auto r = http(port, "PUT", "/api/v1/users/" + id,
                  json{{"password", "new password!"}, {"old_password", kPassword}}.dump(),
                  bearer(mine["access_token"]));
    REQUIRE(r.status == 200);
    CHECK(me_status(port, other["access_token"]) == 401);
    CHECK(refresh_status(port, other["refresh_token"]) == 401);
    CHECK(me_status(port, mine["access_token"]) == 200);  // the caller's session goes on
    CHECK(http(port, "POST", "/api/v1/users/login",
               json{{"login", "dave"}, {"password", kPassword}}.dump())
              .status == 401);
    login(port, "dave", "new password!");
  }
}

TEST_CASE("users: revocations survive a restart", "[users]") {
  TempDir data;
  json config = users_config(data.path / "d");
  std::string token, id;
  {
    Host host({.config = config});
    REQUIRE(host.started());
    id = register_user(host.port(), "erin")["id"];
    json t = login(host.port(), "erin");
    token = t["access_token"];
    REQUIRE(http(host.port(), "POST", "/api/v1/users/logout", "", bearer(token)).status == 204);
    REQUIRE(host.terminate() == 0);
  }
  Host again({.config = config});
  REQUIRE(again.started());
  CHECK(me_status(again.port(), token) == 401);
  CHECK(again.request("GET", "/api/v1/users/" + id).status == 200);
}

TEST_CASE("users: authorization matrix of state-changing operations", "[users][auth]") {
  TempDir data;
  Host host({.config = users_config(data.path / "d")});
  REQUIRE(host.started());
  const int port = host.port();

  register_user(port, "root_admin");  // made admin by the plugin's `admins` config
  json admin = login(port, "root_admin");
  REQUIRE(admin["user"]["role"] == "admin");
  json mod_user = register_user(port, "modder");
  REQUIRE(http(port, "PUT", "/api/v1/users/" + mod_user["id"].get<std::string>(),
               json{{"role", "moderator"}}.dump(), bearer(admin["access_token"]))
              .status == 200);
  json mod = login(port, "modder");
  REQUIRE(mod["user"]["role"] == "moderator");
  register_user(port, "stranger");
  json other = login(port, "stranger");

  enum Caller { owner, another, anonymous, moderator, administrator };
  const char* caller_names[] = {"owner", "another user", "anonymous", "moderator", "admin"};
  struct Row {
    std::string operation, variant;
    int expected[5];  // owner, another user, anonymous, moderator, admin
  };
  // Each cell runs against a fresh target account.
  const std::vector<Row> matrix = {
      {"users.update", "display_name", {200, 403, 401, 403, 200}},
      {"users.update", "role", {403, 403, 401, 403, 200}},
      {"users.update", "password", {200, 403, 401, 403, 200}},
      {"users.update", "email", {200, 403, 401, 403, 200}},
      {"users.delete", "", {204, 403, 401, 403, 204}},
      {"users.logout", "", {204, 204, 401, 204, 204}},  // each ends their own session
      {"users.register", "", {201, 201, 201, 201, 201}},
      {"users.login", "", {200, 200, 200, 200, 200}},
      {"users.refresh", "", {200, 200, 200, 200, 200}},
  };

  // Every registered users.* operation that changes state has a row.
  json openapi = host.request("GET", "/api/v1/openapi.json").json_body();
  std::set<std::string> changing, covered;
  for (auto& [path, methods] : openapi["paths"].items())
    for (auto& [method, op] : methods.items()) {
      std::string name = op.value("operationId", "");
      if (name.rfind("users.", 0) == 0 && method != "get" && method != "head")
        changing.insert(name);
    }
  for (const auto& row : matrix) covered.insert(row.operation);
  CHECK(changing == covered);
  REQUIRE(changing.size() >= 6);

  int n = 0;
  for (const auto& row : matrix) {
    for (int c = owner; c <= administrator; ++c) {
      std::string target_name = "target" + std::to_string(++n);
      json target = register_user(port, target_name);
      const std::string tid = target["id"];
      std::string token;
      json owner_tokens;
      bool needs_owner = c == owner || row.operation == "users.refresh";
      if (needs_owner) owner_tokens = login(port, target_name);
      if (c == owner)
        token = owner_tokens["access_token"];
      else if (c == another)
        token = login(port, "stranger")["access_token"];
      else if (c == moderator)
        token = login(port, "modder")["access_token"];
      else if (c == administrator)
        token = admin["access_token"];
      Headers h = token.empty() ? Headers{} : bearer(token);
      HttpResult r;
      if (row.operation == "users.update") {
        json body = row.variant == "display_name" ? json{{"display_name", "Changed"}}
                    : row.variant == "role" ? json{{"role", "moderator"}}
                    : row.variant == "email"
                        ? json{{"email", target_name + "_moved@example.com"},
                               {"old_password", kPassword}}
                        : json{{"password", "brand new pw"}, {"old_password", kPassword}};
        r = http(port, "PUT", "/api/v1/users/" + tid, body.dump(), h);
      } else if (row.operation == "users.delete") {
        r = http(port, "DELETE", "/api/v1/users/" + tid, json{{"password", kPassword}}.dump(), h);
      } else if (row.operation == "users.logout") {
        r = http(port, "POST", "/api/v1/users/logout", "", h);
      } else if (row.operation == "users.register") {
        r = http(port, "POST", "/api/v1/users/register",
                 json{{"username", target_name + "_b"},
                      {"email", target_name + "_b@example.com"},
                      {"password", kPassword}}
                     .dump(),
                 h);
      } else if (row.operation == "users.login") {
        r = http(port, "POST", "/api/v1/users/login",
                 json{{"login", target_name}, {"password", kPassword}}.dump(), h);
      } else if (row.operation == "users.refresh") {
        r = http(port, "POST", "/api/v1/users/refresh",
                 json{{"refresh_token", owner_tokens["refresh_token"]}}.dump(), h);
      }
      INFO(row.operation << " " << row.variant << " as " << caller_names[c] << ": " << r.body);
      CHECK(r.status == row.expected[c]);
      if (r.status >= 400) CHECK(is_error_body(r));
      // A refused change wrote nothing.
      if (r.status == 403 || r.status == 401) {
        json now = http(port, "GET", "/api/v1/users/" + tid, "", bearer(admin["access_token"]))
                       .json_body();
        CHECK(now["display_name"] == target_name);
        CHECK(now["role"] == "user");
      }
      // The caller's token was spent by logout: the admin needs a new one.
      if (row.operation == "users.logout" && c == administrator) admin = login(port, "root_admin");
    }
  }
}

TEST_CASE("users: malformed requests get a 4xx with a JSON error and write nothing",
          "[users][input]") {
  TempDir data;
  Host host({.config = users_config(data.path / "d")});
  REQUIRE(host.started());
  const int port = host.port();
  register_user(port, "root_admin");
  const std::string admin = login(port, "root_admin")["access_token"];
  json victim = register_user(port, "victim");
  const std::string vid = victim["id"];
  const std::string vtoken = login(port, "victim")["access_token"];
  const json before = http(port, "GET", "/api/v1/users/" + vid, "", bearer(admin)).json_body();
  const int64_t count_before = user_count(port, admin);

  struct Case {
    std::string method, target, body;
    bool signed_in = false;
  };
  std::vector<Case> cases;
  const json good = {
      {"username", "newbie"}, {"email", "newbie@example.com"}, {"password", kPassword}};
  auto reg = [&](json body) { cases.push_back({"POST", "/api/v1/users/register", body.dump()}); };
  auto reg_raw = [&](std::string body) {
    cases.push_back({"POST", "/api/v1/users/register", body});
  };
  auto upd = [&](json body) {
    cases.push_back({"PUT", "/api/v1/users/" + vid, body.dump(), true});
  };

  // Wrong types for every field of register, update and login.
  const std::vector<json> wrong = {
      123, 1.5, true, nullptr, json::array(), json::object(), json::array({"a"})};
  for (const char* field : {"username", "email", "password", "display_name"})
    for (const auto& w : wrong) {
      json b = good;
      b[field] = w;
      reg(b);
    }
  for (const char* field : {"display_name", "email", "password", "role"})
    for (const auto& w : {json(1), json(nullptr), json::array(), json::object()}) upd({{field, w}});
  for (const auto& w : wrong) {
    cases.push_back({"POST", "/api/v1/users/login", json{{"login", w}, {"password", "x"}}.dump()});
    cases.push_back({"POST", "/api/v1/users/refresh", json{{"refresh_token", w}}.dump()});
  }
  // Unknown and privileged fields.
  for (const char* field : {"role", "id", "password_hash", "created_at", "is_admin", "roles",
                            "user_id", "email_verified", "__proto__", "sid"}) {
    json b = good;
    b[field] = field == std::string("role") ? json("admin") : json("1");
    reg(b);
    upd({{field, field == std::string("role") ? json("root") : json("1")}});
  }
  upd({{"id", "2"}, {"display_name", "x"}});
  upd({{"username", "renamed"}});
  // Oversize and out-of-range values.
  auto with = [&](const char* f, json v) {
    json b = good;
    b[f] = std::move(v);
    reg(b);
  };
  with("username", std::string(31, 'a'));
  with("username", "ab");
  with("username", "");
  with("username", "has space");
  with("username", "dash-name");
  with("username", "dot.name");
  with("username", "ünicode");
  with("username", "name\n");
  with("email", std::string(250, 'a') + "@x.com");
  with("email", "no-at-sign");
  with("email", "a@b");
  with("email", "@example.com");
  with("email", "a@@example.com");
  with("email", "a b@example.com");
  with("email", "a@example..com");
  with("email", "a@example.com.");
  with("email", "");
  with("password", std::string(1025, 'p'));
  with("password", "short");
  with("password", "");
  std::string emoji_pw;  // 300 characters, 1200 bytes
  for (int i = 0; i < 300; ++i) emoji_pw += "\xF0\x9F\x98\x80";
  with("password", emoji_pw);
  with("display_name", std::string(65, 'd'));
  with("display_name", "bell\x07");
  upd({{"display_name", std::string(65, 'd')}});
  upd({{"display_name", "tab\there"}});
  upd({{"email", "not an email"}});
  upd({{"email", std::string(300, 'e')}});
  upd({{"role", "superuser"}});
  upd({{"password", "short"}, {"old_password", kPassword}});
  upd({{"password", "long enough pw"}});  // no old_password
  upd({{"password", "long enough pw"}, {"old_password", "wrong pw 1"}});
  upd({{"old_password", kPassword}});  // without password
  upd(json::object());                 // nothing to change
  upd({{"role", "admin"}});            // not an admin
  // Missing required fields.
  for (const char* field : {"username", "email", "password"}) {
    json b = good;
    b.erase(field);
    reg(b);
  }
  cases.push_back({"POST", "/api/v1/users/login", json{{"login", "victim"}}.dump()});
  cases.push_back({"POST", "/api/v1/users/login", json{{"password", kPassword}}.dump()});
  cases.push_back({"POST", "/api/v1/users/refresh", "{}"});
  cases.push_back({"POST", "/api/v1/users/refresh", json{{"refresh_token", ""}}.dump()});
  cases.push_back(
      {"POST", "/api/v1/users/refresh", json{{"refresh_token", std::string(200, 'r')}}.dump()});
  // Empty and non-object bodies, broken JSON, invalid UTF-8, deep nesting.
  for (const char* body : {"", "null", "[]", "\"text\"", "42", "{", "{\"username\":", "{}}",
                           "{'username':'x'}", "{\"username\":\"a\",}", "\x00", "nul"})
    reg_raw(body);
  for (const char* field : {"username", "email", "password", "display_name"}) {
    std::string b = good.dump();
    b.pop_back();
    reg_raw(b + ",\"" + field + "\":\"bad\xff\xfe utf8\"}");
    json g = good;
    g.erase(field);
    std::string c = g.dump();
    c.pop_back();
    reg_raw(c + ",\"" + field + "\":\"\xc3\x28 broken\"}");
  }
  cases.push_back({"PUT", "/api/v1/users/" + vid, "{\"display_name\":\"\xed\xa0\x80\"}", true});
  std::string deep = "{\"username\":";
  for (int i = 0; i < 100; ++i) deep += "[";
  for (int i = 0; i < 100; ++i) deep += "]";
  reg_raw(deep + "}");
  std::string deep_obj;
  for (int i = 0; i < 60; ++i) deep_obj += "{\"a\":";
  deep_obj += "1";
  for (int i = 0; i < 60; ++i) deep_obj += "}";
  reg_raw(deep_obj);
  reg_raw(std::string(2 * 1024 * 1024, ' '));  // over the body limit
  // Bad ids in paths.
  for (std::string bad : {"abc", "0", "-1", "1.5", "99999999999999999999", "%00", "%ff", "1%20",
                          "'%20OR%201=1", "0x10", "1e3", "00001", "%2e%2e", "me2", " "}) {
    if (bad == " ") bad = "%20";
    cases.push_back({"GET", "/api/v1/users/" + bad, ""});
    cases.push_back({"PUT", "/api/v1/users/" + bad, json{{"display_name", "x"}}.dump(), true});
    cases.push_back({"DELETE", "/api/v1/users/" + bad, json{{"password", kPassword}}.dump(), true});
  }
  // Login and list: oversize, empty, bad parameters.
  cases.push_back({"POST", "/api/v1/users/login", json{{"login", ""}, {"password", "x"}}.dump()});
  cases.push_back({"POST", "/api/v1/users/login",
                   json{{"login", std::string(255, 'l')}, {"password", "x"}}.dump()});
  cases.push_back({"POST", "/api/v1/users/login",
                   json{{"login", "victim"}, {"password", std::string(1025, 'p')}}.dump()});
  cases.push_back({"POST", "/api/v1/users/login",
                   json{{"login", "victim"}, {"password", kPassword}, {"role", "admin"}}.dump()});
  cases.push_back(
      {"POST", "/api/v1/users/refresh", json{{"refresh_token", "x"}, {"user_id", "1"}}.dump()});
  for (const char* q : {"limit=0", "limit=abc", "limit=100000", "limit=-5", "after=abc", "after=0",
                        "limit=1.5", "unknown=1"})
    cases.push_back({"GET", std::string("/api/v1/users?") + q, ""});
  cases.push_back({"GET", "/api/v1/users?limit=5", "", true});  // not an admin
  cases.push_back({"POST", "/api/v1/users/logout", json{{"refresh_token", 5}}.dump(), true});
  cases.push_back({"POST", "/api/v1/users/logout", json{{"all", true}}.dump(), true});
  cases.push_back({"PUT", "/api/v1/users/999999", json{{"display_name", "x"}}.dump(), true});
  cases.push_back({"DELETE", "/api/v1/users/" + vid, "", true});  // no password
  cases.push_back({"DELETE", "/api/v1/users/" + vid, json{{"password", 5}}.dump(), true});
  cases.push_back(
      {"DELETE", "/api/v1/users/" + vid, json{{"password", kPassword}, {"x", 1}}.dump(), true});

  CHECK(cases.size() >= 200);
  auto client = std::make_unique<HttpClient>(port);
  int index = 0;
  for (const auto& c : cases) {
    Headers h = c.signed_in ? bearer(vtoken) : Headers{};
    if (!c.body.empty()) h.push_back({"Content-Type", "application/json"});
    HttpResult r;
    try {
      r = client->request(c.method, c.target, c.body, h);
    } catch (const std::exception&) {  // the server closed (e.g. a body over the limit)
      client = std::make_unique<HttpClient>(port);
      r = http(port, c.method, c.target, c.body, h);
    }
    INFO("case " << index << ": " << c.method << " " << c.target << " " << c.body.substr(0, 200)
                 << " -> " << r.status << " " << r.body);
    CHECK(r.status >= 400);
    CHECK(r.status < 500);
    CHECK(is_error_body(r));
    ++index;
  }
  CHECK(user_count(port, admin) == count_before);
  json after = http(port, "GET", "/api/v1/users/" + vid, "", bearer(admin)).json_body();
  CHECK(after == before);
  CHECK(me_status(port, vtoken) == 200);
  login(port, "victim");  // the password is unchanged
}

TEST_CASE("users: a login flood gets 429 and memory stays bounded", "[users][limits]") {
  TempDir data;
  Host host({.config = users_config(data.path / "d",
                                    {{"login_per_ip_per_minute", 10},
                                     {"login_per_account_per_minute", 5},
                                     {"register_per_ip_per_hour", 3}},
                                    16)});
  REQUIRE(host.started());
  const int port = host.port();
  // The limits are fixed one-minute windows: start early in one.
  auto in_minute = std::chrono::duration_cast<std::chrono::seconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count() %
                   60;
  if (in_minute > 40) std::this_thread::sleep_for(std::chrono::seconds(61 - in_minute));
  register_user(port, "flooded");
  const int64_t rss_start = rss_kib(host.pid());
  REQUIRE(rss_start > 0);

  auto attempt = [&](const std::string& who) {
    return http(port, "POST", "/api/v1/users/login",
                json{{"login", who}, {"password", "wrong password"}}.dump());
  };
  // Per account: 5 a minute.
  for (int i = 0; i < 5; ++i) CHECK(attempt("flooded").status == 401);
  auto limited = attempt("FLOODED");
  CHECK(limited.status == 429);
  CHECK(limited.json_body()["error"]["code"] == "rate_limited");
  // Retry-After: the seconds left in the minute window, not a fixed 1.
  REQUIRE_FALSE(limited.header("retry-after").empty());
  const int retry_after = std::stoi(limited.header("retry-after"));
  CHECK(retry_after >= 1);
  CHECK(retry_after <= 60);
  CHECK(limited.header("retry-after").find_first_not_of("0123456789") == std::string::npos);
  // Per address: 10 a minute, whatever the account.
  int before_limit = 0;
  for (int i = 0; i < 10; ++i)
    if (attempt("someone" + std::to_string(i)).status == 401) ++before_limit;
  CHECK(before_limit == 4);  // 6 attempts were already counted for this address
  CHECK(attempt("someone_else").status == 429);

  // Registration: 3 an hour per address (one used above).
  for (int i = 0; i < 2; ++i) register_user(port, "reg" + std::to_string(i));
  auto reg = http(
      port, "POST", "/api/v1/users/register",
      json{{"username", "reg9"}, {"email", "reg9@example.com"}, {"password", kPassword}}.dump());
  CHECK(reg.status == 429);

  // The flood: all refused before any hashing, fast, memory flat.
  std::atomic<int> refused{0}, other{0};
  std::vector<std::thread> threads;
  auto start = std::chrono::steady_clock::now();
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&, t] {
      HttpClient client(port);
      for (int i = 0; i < 100; ++i) {
        auto r = client.request(
            "POST", "/api/v1/users/login",
            json{{"login", "u" + std::to_string(t * 1000 + i)}, {"password", "xxxxxxxx"}}.dump());
        (r.status == 429 ? refused : other)++;
      }
    });
  for (auto& th : threads) th.join();
  double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  WARN("800 flood logins refused in " << ms << " ms");
  CHECK(refused == 800);
  CHECK(other == 0);
  const int64_t rss_end = rss_kib(host.pid());
  WARN("host RSS: " << rss_start << " KiB before, " << rss_end << " KiB after the flood");
  CHECK(rss_end < rss_start + 64 * 1024);
}

TEST_CASE("users: concurrent hashing is bounded", "[users][limits]") {
  TempDir data;
  Host host({.config = users_config(data.path / "d", {{"hash_wait_ms", 100}}, 16)});
  REQUIRE(host.started());
  const int port = host.port();
  register_user(port, "busy");
  const int64_t rss_start = rss_kib(host.pid());
  std::atomic<int64_t> rss_peak{rss_start};
  std::atomic<int> unauthorized{0}, unavailable{0}, other{0};
  std::atomic<bool> done{false};
  std::thread sampler([&] {
    while (!done) {
      int64_t v = rss_kib(host.pid());
      if (v > rss_peak) rss_peak = v;
      std::this_thread::sleep_for(5ms);
    }
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < 12; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 3; ++i) {
        auto r = http(port, "POST", "/api/v1/users/login",
                      json{{"login", "busy"}, {"password", "wrong password"}}.dump());
        if (r.status == 401)
          ++unauthorized;
        else if (r.status == 503)
          ++unavailable;
        else
          ++other;
      }
    });
  for (auto& th : threads) th.join();
  done = true;
  sampler.join();
  WARN("36 concurrent logins: " << unauthorized << " x 401, " << unavailable << " x 503; RSS peak +"
                                << (rss_peak - rss_start) << " KiB");
  CHECK(other == 0);
  CHECK(unavailable > 0);  // 12 at once against 2 slots and a 100 ms wait
  // Two 19 MiB hashes at a time, not twelve.
  CHECK(rss_peak - rss_start < 60 * 1024);
}
