// Loading plugins: the example over both transports, and every way a
// plugin can be refused.
#include <catch2/catch.hpp>
#include <fstream>

#include "harness.hpp"

using namespace gvtest;

namespace {

json config_with(const fs::path& data, const json& plugins) {
  json c = default_config(data);
  c["plugins"] = plugins;
  return c;
}

int count_lines_with(const std::string& text, const std::string& needle) {
  int n = 0;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) n += line.find(needle) != std::string::npos;
  return n;
}

}  // namespace

TEST_CASE("the example plugin answers over HTTP", "[plugins][sdk]") {
  Host host;
  REQUIRE(host.started());
  auto r = host.request("GET", "/api/v1/hello/greetings/bob");
  REQUIRE(r.status == 200);
  CHECK(r.json_body()["message"] == "Hi, bob!");
  CHECK(r.json_body()["count"] == 1);
  CHECK(host.request("GET", "/api/v1/hello/greetings/bob").json_body()["count"] == 2);
  CHECK(r.header("content-type") == "application/json");

  auto echo = host.request("POST", "/api/v1/hello/echo", R"({"text":"ab","repeat":3})");
  CHECK(echo.status == 201);
  CHECK(echo.json_body()["text"] == "ababab");

  auto via = host.request("GET", "/api/v1/hello/indirect/carol");
  REQUIRE(via.status == 200);
  CHECK(via.json_body()["result"]["message"] == "Hi, carol!");
}

TEST_CASE("the example plugin answers over /ws", "[plugins][sdk][ws]") {
  Host host;
  REQUIRE(host.started());
  WebSocket ws(host.port());
  json reply = ws.call("hello.greet", {{"name", "dora"}});
  CHECK(reply["ok"] == true);
  CHECK(reply["status"] == 200);
  CHECK(reply["data"]["message"] == "Hi, dora!");
  json bad = ws.call("hello.greet", {{"name", 7}});
  CHECK(bad["ok"] == false);
  CHECK(bad["status"] == 400);
  CHECK(bad["error"]["message"].get<std::string>().find("name") != std::string::npos);
}

// An operation flag means what the plugin's own ABI minor defines: the value 2,
// GV_OP_QUICK since 1.7, is nothing to a 1.6 plugin, whose handler may
// wait and so must run on a worker, not on a network thread.
TEST_CASE("a flag a plugin's older ABI minor did not define is ignored", "[plugins][abi]") {
  TempDir scratch;
  Host host({config_with(scratch.path / "data", {{"oldminor", json::object()}})});
  REQUIRE(host.started());
  auto r = host.request("GET", "/api/v1/oldminor/thread");
  REQUIRE(r.status == 200);
  CHECK(r.json_body()["thread"] == "gv-worker");
  WebSocket ws(host.port());
  CHECK(ws.call("oldminor.thread")["data"]["thread"] == "gv-worker");
}

TEST_CASE("a plugin built for another ABI major is refused before its code runs",
          "[plugins][abi]") {
  TempDir scratch;
  fs::path marker = scratch.path / "marker";
  SECTION("required: the host does not start") {
    Host host({config_with(scratch.path / "data", {{"bad_abi", json::object()}}),
               {{"GRAPEVINE_TEST_MARKER", marker.string()}}});
    CHECK_FALSE(host.started());
    CHECK(host.wait() == 1);
    std::string out = host.output();
    CHECK(count_lines_with(out, "bad_abi.so: built for plugin ABI 2.0") >= 1);
    CHECK(out.find("this host supports 1.0") != std::string::npos);
    CHECK_FALSE(fs::exists(marker));
  }
  SECTION("optional: the host starts without it") {
    Host host({config_with(scratch.path / "data",
                           {{"bad_abi", {{"optional", true}}}, {"hello", json::object()}}),
               {{"GRAPEVINE_TEST_MARKER", marker.string()}}});
    REQUIRE(host.started());
    CHECK(host.request("GET", "/readyz").status == 200);
    CHECK(host.request("GET", "/api/v1/hello/greetings/x").status == 200);
    CHECK(host.request("GET", "/metrics").body.find("grapevine_plugin_load_failures_total 1") !=
          std::string::npos);
    CHECK_FALSE(fs::exists(marker));
  }
}

TEST_CASE("files that are not plugins get a clear error, not a crash", "[plugins]") {
  TempDir scratch;
  SECTION("a shared library without a manifest") {
    Host host({config_with(scratch.path / "data", {{"not_a_plugin", json::object()}})});
    CHECK_FALSE(host.started());
    CHECK(host.wait() == 1);
    CHECK(host.output().find("not a Grapevine plugin") != std::string::npos);
  }
  SECTION("a text file named like a plugin") {
    fs::path dir = scratch.path / "plugins";
    fs::create_directories(dir);
    std::ofstream(dir / "junk.so") << "this is not a library\n";
    json c = config_with(scratch.path / "data", {{"junk", json::object()}});
    c["plugin_dirs"] = {dir.string()};
    Host host({c});
    CHECK_FALSE(host.started());
    CHECK(host.wait() == 1);
    CHECK(host.output().find("not an ELF file") != std::string::npos);
  }
  SECTION("an enabled plugin that is not installed") {
    Host host({config_with(scratch.path / "data", {{"nosuch", json::object()}})});
    CHECK(host.wait() == 1);
    CHECK(host.output().find("no nosuch.so in the plugin directories") != std::string::npos);
  }
  SECTION("a missing dependency is named") {
    Host host({config_with(scratch.path / "data", {{"needs_missing", json::object()}})});
    CHECK(host.wait() == 1);
    CHECK(host.output().find("nowhere_to_be_found") != std::string::npos);
  }
}

TEST_CASE("grapevine plugins lists what is installed without running it", "[plugins][cli]") {
  TempDir scratch;
  fs::path marker = scratch.path / "marker";
  std::string out;
  int code = run_grapevine({"plugins", "--plugin-dir", test_plugin_dir().string(), "--plugin-dir",
                            build_plugin_dir().string()},
                           &out, {{"GRAPEVINE_TEST_MARKER", marker.string()}});
  CHECK(code == 0);
  CHECK(out.find("testkit") != std::string::npos);
  CHECK(out.find("hello ") != std::string::npos);
  CHECK(out.find("built for plugin ABI 2.0") != std::string::npos);
  CHECK(out.find("not_a_plugin.so") != std::string::npos);
  CHECK_FALSE(fs::exists(marker));
}
