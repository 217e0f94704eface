// Connection handling at the byte level: keep-alive, pipelining, request
// and idle timeouts, dead WebSocket peers.
#include <catch2/catch.hpp>

#include "harness.hpp"

using namespace gvtest;

namespace {

int count(const std::string& s, const std::string& needle) {
  int n = 0;
  for (size_t at = s.find(needle); at != std::string::npos; at = s.find(needle, at + 1)) ++n;
  return n;
}

Host host_with(TempDir& dir, const json& section_name_and_value) {
  json c = default_config(dir.path / "data");
  for (auto& [k, v] : section_name_and_value.items()) c[k] = v;
  return Host({c});
}

}  // namespace

TEST_CASE("keep-alive serves several requests on one connection", "[connections]") {
  Host host;
  REQUIRE(host.started());
  RawConnection conn(host.port());
  conn.send(
      "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
      "GET /api/v1/hello/greetings/k HTTP/1.1\r\nHost: t\r\n\r\n"
      "GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
  bool closed = false;
  std::string got = conn.read_until_closed(std::chrono::seconds(5), &closed);
  CHECK(closed);
  CHECK(count(got, "HTTP/1.1 200 OK") == 3);
  CHECK(got.find("Hi, k!") != std::string::npos);
}

TEST_CASE("an idle keep-alive connection is closed after idle_timeout_ms", "[connections]") {
  TempDir dir;
  Host host = host_with(dir, {{"limits", {{"idle_timeout_ms", 300}}}});
  REQUIRE(host.started());
  RawConnection conn(host.port());
  auto start = std::chrono::steady_clock::now();
  conn.send("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
  bool closed = false;
  std::string got = conn.read_until_closed(std::chrono::seconds(5), &closed);
  CHECK(got.find("200 OK") != std::string::npos);
  CHECK(closed);
  CHECK(std::chrono::steady_clock::now() - start >= std::chrono::milliseconds(250));
}

TEST_CASE("a request that never finishes is cut at request_timeout_ms", "[connections]") {
  TempDir dir;
  Host host = host_with(dir, {{"limits", {{"request_timeout_ms", 300}}}});
  REQUIRE(host.started());
  RawConnection conn(host.port());
  conn.send("POST /api/v1/hello/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{\"te");
  bool closed = false;
  conn.read_until_closed(std::chrono::seconds(5), &closed);
  CHECK(closed);
  CHECK(host.request("GET", "/healthz").status == 200);
}

TEST_CASE("a WebSocket peer that stops answering pings is dropped", "[connections][ws]") {
  TempDir dir;
  Host host = host_with(dir, {{"websocket", {{"ping_interval_ms", 200}}}});
  REQUIRE(host.started());
  RawConnection conn(host.port());
  conn.send(
      "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
  bool closed = false;
  auto start = std::chrono::steady_clock::now();
  std::string got = conn.read_until_closed(std::chrono::seconds(5), &closed);
  CHECK(got.find("101 Switching Protocols") != std::string::npos);
  CHECK(got.find('\x89') != std::string::npos);  // a ping frame arrived
  CHECK(closed);
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(4));
}
