// The I/O back end: io_uring where the kernel allows it, epoll where it
// does not (server.io). The kernel's refusal is made real with the seccomp
// filter container runtimes apply: io_uring_setup fails with EPERM.
#include <catch2/catch.hpp>
#include <fstream>

#include "harness.hpp"

using namespace gvtest;

namespace {

json config_with_io(TempDir& dir, const std::string& io) {
  json c = default_config(dir.path / "data");
  c["server"]["io"] = io;
  return c;
}

// Serves HTTP and WebSocket, and stops cleanly on SIGTERM.
void check_serves(Host& host) {
  auto health = host.request("GET", "/healthz");
  CHECK(health.status == 200);
  CHECK(host.request("GET", "/api/v1/hello/greetings/io").body.find("Hi, io!") !=
        std::string::npos);
  WebSocket ws(host.port());
  CHECK(ws.call("hello.greet", {{"name", "ws"}})["ok"] == true);
  CHECK(host.terminate() == 0);
}

}  // namespace

#ifdef GRAPEVINE_IO_URING_BUILD

TEST_CASE("grapevine serves on io_uring, or on epoll where the kernel refuses io_uring", "[io]") {
  SECTION("auto, io_uring allowed") {
    Host host;
    REQUIRE(host.started());
    CHECK(host.output().find(R"("io":"io_uring")") != std::string::npos);
    check_serves(host);
  }
  SECTION("auto, io_uring refused: the same process goes on as grapevine-epoll") {
    Host::Options options;
    options.without_io_uring = true;
    Host host(options);
    REQUIRE(host.started());
    std::string out = host.output();
    CHECK(out.find("the kernel refuses io_uring; serving on epoll") != std::string::npos);
    CHECK(out.find("io_uring_queue_init") != std::string::npos);  // the reason
    CHECK(out.find(R"("io":"epoll")") != std::string::npos);
    check_serves(host);  // the pid the harness started is the one serving
  }
  SECTION("epoll asked for") {
    TempDir dir;
    Host host({config_with_io(dir, "epoll")});
    REQUIRE(host.started());
    std::string out = host.output();
    CHECK(out.find(R"("io":"epoll")") != std::string::npos);
    CHECK(out.find("refuses") == std::string::npos);
    check_serves(host);
  }
  SECTION("auto, io_uring refused, grapevine-epoll not installed: a clear error") {
    TempDir bin;
    fs::copy_file(grapevine_binary(), bin.path / "grapevine");
    setenv("GRAPEVINE_TEST_BINARY", (bin.path / "grapevine").c_str(), 1);
    Host::Options options;
    options.without_io_uring = true;
    Host host(options);
    unsetenv("GRAPEVINE_TEST_BINARY");
    CHECK_FALSE(host.started());
    CHECK(host.wait() == 1);
    std::string out = host.output();
    CHECK(out.find("cannot run " + (bin.path / "grapevine-epoll").string()) != std::string::npos);
    CHECK(out.find("needed because the kernel refuses io_uring") != std::string::npos);
  }
  SECTION("io_uring asked for and refused: a clear error, nothing started") {
    TempDir dir;
    Host::Options options{config_with_io(dir, "io_uring")};
    options.without_io_uring = true;
    Host host(options);
    CHECK_FALSE(host.started());
    CHECK(host.wait() == 1);
    std::string out = host.output();
    CHECK(out.find("server.io is io_uring, but the kernel refuses it") != std::string::npos);
    CHECK(out.find("\"listening\"") == std::string::npos);
  }
}

#else

TEST_CASE("a grapevine built without io_uring serves on epoll", "[io]") {
  Host host;
  REQUIRE(host.started());
  CHECK(host.output().find(R"("io":"epoll")") != std::string::npos);
  check_serves(host);
  TempDir dir;
  Host refused({config_with_io(dir, "io_uring")});
  CHECK_FALSE(refused.started());
  CHECK(refused.output().find("is built for epoll only") != std::string::npos);
}

#endif

TEST_CASE("--version names the I/O back end", "[io]") {
  std::string out;
  CHECK(run_grapevine({"--version"}, &out) == 0);
#ifdef GRAPEVINE_IO_URING_BUILD
  CHECK(out.find("I/O on io_uring") != std::string::npos);
#else
  CHECK(out.find("I/O on epoll") != std::string::npos);
#endif
}

TEST_CASE("server.io takes auto, io_uring or epoll only", "[io][config]") {
  TempDir dir;
  std::string out;
  fs::path file = dir.path / "bad.yaml";
  std::ofstream(file) << "server:\n  io: kqueue\n";
  CHECK(run_grapevine({"--check-config", "--config", file.string()}, &out) != 0);
  CHECK(out.find("bad.yaml:2") != std::string::npos);
  CHECK(out.find("server.io") != std::string::npos);
}
