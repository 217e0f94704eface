// Config errors are reported all at once, with file and line.
#include <catch2/catch.hpp>
#include <fstream>

#include "harness.hpp"

using namespace gvtest;

TEST_CASE("a bad config prints every error with file and line", "[config]") {
  TempDir dir;
  fs::path file = dir.path / "bad.yaml";
  std::ofstream(file) << "server:\n"
                         "  listen: 127.0.0.1:8080\n"
                         "  io_thread: 2\n"  // line 3: unknown key
                         "limits:\n"
                         "  body_bytes: lots\n"  // line 5: wrong type
                         "log:\n"
                         "  level: loud\n";  // line 7: not an allowed value
  for (bool check_only : {true, false}) {
    std::string out;
    std::vector<std::string> args = {"--config", file.string()};
    if (check_only) args.push_back("--check-config");
    INFO(out);
    CHECK(run_grapevine(args, &out) == 2);
    CHECK(out.find(file.string() + ":3:") != std::string::npos);
    CHECK(out.find("io_thread") != std::string::npos);
    CHECK(out.find(file.string() + ":5:") != std::string::npos);
    CHECK(out.find("limits.body_bytes") != std::string::npos);
    CHECK(out.find(file.string() + ":7:") != std::string::npos);
    CHECK(out.find("log.level") != std::string::npos);
  }
}

TEST_CASE("--check-config checks plugin sections against the plugin's schema", "[config]") {
  TempDir dir;
  json c = default_config(dir.path / "data");
  fs::path good = dir.path / "good.yaml";
  std::ofstream(good) << c.dump(2);
  std::string out;
  CHECK(run_grapevine({"--config", good.string(), "--check-config"}, &out) == 0);
  c["plugins"]["hello"]["config"] = {{"greeting", 5}, {"colour", "red"}};
  fs::path bad = dir.path / "bad.yaml";
  std::ofstream(bad) << c.dump(2);
  CHECK(run_grapevine({"--config", bad.string(), "--check-config"}, &out) == 2);
  CHECK(out.find("plugins.hello.config.greeting") != std::string::npos);
  // The line of the offending value itself: "greeting": 5 in the dump.
  std::ifstream in(bad);
  int line = 0, greeting_line = 0;
  for (std::string l; std::getline(in, l);) {
    ++line;
    if (l.find("\"greeting\": 5") != std::string::npos) greeting_line = line;
  }
  CHECK(out.find(bad.string() + ":" + std::to_string(greeting_line) + ":") != std::string::npos);
  CHECK(out.find("colour") != std::string::npos);
}

TEST_CASE("the shipped config is valid", "[config]") {
  std::string out;
  int code = run_grapevine(
      {"--config", GRAPEVINE_SOURCE_DIR "/config/grapevine.yaml", "--check-config"}, &out);
  INFO(out);
  CHECK(code == 0);
}

TEST_CASE("--listen overrides the address and a bad one is refused", "[config]") {
  std::string out;
  CHECK(run_grapevine({"--config", GRAPEVINE_SOURCE_DIR "/config/grapevine.yaml", "--listen",
                       "nonsense", "--check-config"},
                      &out) == 2);
  CHECK(out.find("listen") != std::string::npos);
}

TEST_CASE("--check-config reports host and plugin errors in one run", "[config]") {
  TempDir dir;
  json c = default_config(dir.path / "data");
  c["limits"] = {{"body_bytes", "big"}};
  c["plugins"]["hello"]["config"] = {{"greeting", 5}};
  fs::path bad = dir.path / "both.yaml";
  std::ofstream(bad) << c.dump(2);
  std::string out;
  CHECK(run_grapevine({"--config", bad.string(), "--check-config"}, &out) == 2);
  CHECK(out.find("limits.body_bytes") != std::string::npos);
  CHECK(out.find("plugins.hello.config.greeting") != std::string::npos);
}
