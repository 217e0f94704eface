// The network front of the host: HTTP/1.1 and WebSocket on one port
// (Boost.Beast), behind a small interface so that only net/*.cpp include
// Beast and Asio.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "auth/jwt.hpp"
#include "config/host_config.hpp"
#include "core/dispatcher.hpp"
#include "core/hub.hpp"
#include "core/metrics.hpp"
#include <nlohmann/json.hpp>

#include "core/registry.hpp"
#include "core/response_cache.hpp"

namespace gv::net {

struct ServerDeps {
  const config::HostConfig* config = nullptr;
  Registry* registry = nullptr;
  Dispatcher* dispatcher = nullptr;
  Hub* hub = nullptr;
  Metrics* metrics = nullptr;
  const auth::KeySet* keys = nullptr;  // nullptr: no token is ever valid
  ResponseCache* response_cache = nullptr;  // nullptr: no answer is cached
  std::function<bool()> ready;         // every plugin started
  // Extra members of the /readyz body (the event broker's state); optional.
  std::function<nlohmann::json()> readiness;
};

class Server {
 public:
  explicit Server(ServerDeps deps);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds the configured address (port 0: any free port). False with
  // *error set when it cannot.
  bool listen(std::string* error);
  // The bound address, "127.0.0.1:41234" or "[::1]:8080".
  std::string address() const;

  // Serves until SIGTERM or SIGINT (or stop()), then drains: stops
  // accepting, lets requests in flight finish within the shutdown grace,
  // closes sockets, and returns.
  void run();
  // Starts the drain from any thread.
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace gv::net
