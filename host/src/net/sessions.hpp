// Internal to net/: the state sessions share, and how to start them.
#pragma once

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "net/server.hpp"

namespace gv::net {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

// Each connection lives on one single-threaded io_context; naming its
// executor type (not the type-erased any_io_executor) saves work per call.
using Executor = asio::io_context::executor_type;
using Socket = tcp::socket::rebind_executor<Executor>::other;
using Stream = beast::basic_stream<tcp, Executor, beast::unlimited_rate_policy>;

// A session the server can ask to finish: close when idle, else after the
// answer in flight.
class Drainable {
 public:
  virtual ~Drainable() = default;
  virtual void drain() = 0;  // called on any thread
};

struct ServerState {
  ServerDeps deps;
  std::string openapi_json;  // built once; the registry is final
  std::atomic<bool> draining{false};
  std::atomic<int64_t> connections{0};      // HTTP and WebSocket
  std::atomic<int64_t> active_requests{0};  // read, not yet answered

  std::mutex sessions_mutex;
  uint64_t next_session = 1;
  std::unordered_map<uint64_t, std::weak_ptr<Drainable>> sessions;

  uint64_t track(std::weak_ptr<Drainable> s) {
    std::lock_guard lock(sessions_mutex);
    uint64_t id = next_session++;
    sessions.emplace(id, std::move(s));
    return id;
  }
  void untrack(uint64_t id) {
    std::lock_guard lock(sessions_mutex);
    sessions.erase(id);
  }
  size_t tracked() {
    std::lock_guard lock(sessions_mutex);
    return sessions.size();
  }
};

// Serves HTTP on a freshly accepted socket (and hands /ws upgrades over).
void start_http_session(Socket socket, std::shared_ptr<ServerState> state);

// The peer's IP address as text ("127.0.0.1", "::1"); "" when unknown.
inline std::string peer_address(const Socket& socket) {
  boost::system::error_code ec;
  auto ep = socket.remote_endpoint(ec);
  return ec ? std::string() : ep.address().to_string();
}

// Takes over an upgraded connection; identity is the verified caller.
void start_websocket_session(Stream stream, http::request<http::string_body> upgrade,
                             std::shared_ptr<ServerState> state,
                             std::optional<auth::Identity> identity);

// The access token of a request: "Authorization: Bearer X", or for
// WebSocket upgrades also the query parameter access_token (browsers cannot
// set headers there). Empty when none was given.
struct TokenCheck {
  bool present = false;
  std::optional<auth::Identity> identity;  // set when valid
  std::string problem;                     // why not, when present and invalid
};
TokenCheck check_token(const ServerState& state, std::string_view token);

double seconds_since(std::chrono::steady_clock::time_point start);

}  // namespace gv::net
