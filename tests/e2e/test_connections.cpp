// Connection handling at the byte level: keep-alive, pipelining, request
// and idle timeouts, dead WebSocket peers.
#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <memory>
#include <thread>
#include <vector>

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

// Many connections cut by their timeouts while others are busy: each cut
// closes a socket with a read outstanding, the path on which an I/O back
// end can hand one connection's completion to another (Asio 1.26's
// io_uring back end did: asio#1215). Every busy request must still get its
// own answer, on its own connection.
TEST_CASE("connections cut by their timeouts never disturb busy ones", "[connections]") {
  TempDir dir;
  Host host = host_with(dir, {{"limits", {{"request_timeout_ms", 150}}}});
  REQUIRE(host.started());
  std::atomic<bool> stop{false};
  std::atomic<int> answered{0}, wrong{0}, failed{0}, cut{0}, busy_done{0};
  std::vector<std::unique_ptr<HttpClient>> clients;
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    clients.push_back(std::make_unique<HttpClient>(host.port()));
    threads.emplace_back([&, t, client = clients.back().get()] {
      const std::string name = "busy" + std::to_string(t);
      try {
        for (int i = 0; !stop; ++i) {
          const std::string who = name + "-" + std::to_string(i);
          auto r = client->request("GET", "/api/v1/hello/greetings/" + who);
          bool mine = r.status == 200 && r.body.find("Hi, " + who + "!") != std::string::npos;
          ++(mine ? answered : wrong);
        }
        ++busy_done;
      } catch (const std::exception&) {
        ++failed;  // the server closed or stalled a busy connection
      }
    });
  }
  for (int t = 0; t < 3; ++t)
    threads.emplace_back([&] {
      while (!stop) {
        std::vector<std::unique_ptr<RawConnection>> idle;
        for (int i = 0; i < 20; ++i) {
          idle.push_back(std::make_unique<RawConnection>(host.port()));
          idle.back()->send("GET /healthz HTTP/1.1\r\nHost: t\r\n");  // never finished
        }
        // Cut after 150 ms; a server that never cuts them costs 2 s a batch.
        auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
        for (auto& conn : idle) {
          bool closed = false;
          auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
              deadline - std::chrono::steady_clock::now());
          conn->read_until_closed(std::max(left, std::chrono::milliseconds(0)), &closed);
          if (closed) ++cut;
        }
      }
    });
  std::this_thread::sleep_for(std::chrono::seconds(3));
  stop = true;
  // A busy request the server never answers would block its thread: give
  // them a while, then cut what is left so that the test ends either way.
  for (int i = 0; i < 100 && busy_done + failed < 2; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  for (auto& client : clients) client->abort();
  for (auto& t : threads) t.join();
  CHECK(busy_done == 2);
  CHECK(failed == 0);
  CHECK(wrong == 0);
  CHECK(answered > 1000);
  CHECK(cut > 100);
  if (failed == 0 && wrong == 0) CHECK(host.request("GET", "/healthz").status == 200);
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
