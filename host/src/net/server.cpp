// The listener and the process's I/O threads. Each I/O thread runs its own
// single-threaded io_context; accepted sockets are dealt to them in turn,
// so a connection never needs a strand.
#include "net/server.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <thread>

#include <unistd.h>

#include "core/log.hpp"
#include "core/thread_name.hpp"
#include "core/worker_pool.hpp"
#include "net/sessions.hpp"

namespace gv::net {

struct Server::Impl {
  explicit Impl(ServerDeps deps) : state(std::make_shared<ServerState>()) {
    state->deps = std::move(deps);
    state->openapi_json = state->deps.registry->openapi("Grapevine", GRAPEVINE_VERSION).dump();
    unsigned n = state->deps.config->server.io_threads;
    if (n == 0) n = std::max(1u, std::thread::hardware_concurrency());
    // One thread runs each context, and a socket is touched only by its
    // context's thread (other threads post to it): so the reactor needs no
    // lock per socket operation (registration and the scheduler keep theirs).
    for (unsigned i = 0; i < n; ++i)
      contexts.push_back(std::make_unique<asio::io_context>(BOOST_ASIO_CONCURRENCY_HINT_UNSAFE_IO));
    acceptor.emplace(*contexts[0]);
    signals.emplace(*contexts[0], SIGINT, SIGTERM);
    drain_timer.emplace(*contexts[0]);
  }

  // Accepts on context 0, then hands the descriptor over: the connection's
  // socket is opened (registered with the reactor) and used only on the
  // thread of the context it is dealt to.
  void accept() {
    acceptor->async_accept([this](beast::error_code ec, tcp::socket socket) {
      if (ec) {
        if (ec == asio::error::operation_aborted || !acceptor->is_open()) return;
        // Out of file descriptors and the like: keep serving the others.
        log::warn("accept failed", {{"error", ec.message()}});
        return accept();
      }
      socket.set_option(tcp::no_delay(true), ec);
      const tcp protocol = acceptor->local_endpoint(ec).protocol();
      const int fd = socket.release(ec);
      if (ec) {
        log::warn("accept failed", {{"error", ec.message()}});
        return accept();
      }
      asio::io_context& next = *contexts[next_context++ % contexts.size()];
      asio::post(next, [this, &next, protocol, fd] {
        Socket mine(next.get_executor());
        beast::error_code e;
        mine.assign(protocol, fd, e);
        if (e) {
          ::close(fd);
          return;
        }
        start_http_session(std::move(mine), state);
      });
      accept();
    });
  }

  void begin_drain(const char* why) {
    if (state->draining.exchange(true)) return;
    log::info("shutting down", {{"reason", why}, {"in_flight", state->active_requests.load()}});
    beast::error_code ec;
    acceptor->close(ec);
    signals->cancel(ec);
    std::vector<std::shared_ptr<Drainable>> live;
    {
      std::lock_guard lock(state->sessions_mutex);
      for (auto& [id, weak] : state->sessions)
        if (auto s = weak.lock()) live.push_back(std::move(s));
    }
    for (auto& s : live) s->drain();
    drain_deadline = std::chrono::steady_clock::now() + state->deps.config->shutdown_grace;
    poll_drain();
  }

  void poll_drain() {
    bool idle = state->active_requests == 0 && state->deps.dispatcher->in_flight() == 0 &&
                state->tracked() == 0;
    if (idle || std::chrono::steady_clock::now() >= drain_deadline) {
      if (!idle)
        log::warn("shutdown grace ran out", {{"in_flight", state->active_requests.load()},
                                             {"connections", state->tracked()}});
      for (auto& c : contexts) c->stop();
      return;
    }
    drain_timer->expires_after(std::chrono::milliseconds(20));
    drain_timer->async_wait([this](beast::error_code) { poll_drain(); });
  }

  std::shared_ptr<ServerState> state;
  std::vector<std::unique_ptr<asio::io_context>> contexts;
  std::optional<tcp::acceptor> acceptor;
  std::optional<asio::signal_set> signals;
  std::optional<asio::steady_timer> drain_timer;
  std::chrono::steady_clock::time_point drain_deadline;
  size_t next_context = 0;
  std::string bound;
};

namespace {

// Runs an I/O context until stopped. An exception out of a handler is a
// host bug; log it and keep serving rather than take every connection down.
// The workers are woken once per batch of handlers, not once per request
// handed over (WorkerPool::defer_wakes).
void run_context(asio::io_context& context) {
  auto guard = asio::make_work_guard(context);
  WorkerPool::defer_wakes([&context] { asio::post(context, [] { WorkerPool::flush_wakes(); }); });
  // Once the context is done nothing would run a flush posted to it (the
  // main thread goes on to stop the host): wake what is owed, directly
  // from then on.
  struct EndDeferral {
    ~EndDeferral() { WorkerPool::defer_wakes(nullptr); }
  } end_deferral;
  for (;;) {
    try {
      context.run();
      return;
    } catch (const std::exception& e) {
      log::error("I/O handler failed", {{"error", e.what()}});
    }
  }
}

}  // namespace

Server::Server(ServerDeps deps) : impl_(std::make_unique<Impl>(std::move(deps))) {}
Server::~Server() = default;

bool Server::listen(std::string* error) {
  const auto& sc = impl_->state->deps.config->server;
  beast::error_code ec;
  auto address = asio::ip::make_address(sc.listen_host, ec);
  if (ec) {
    *error = "server.listen: '" + sc.listen_host + "' is not an IP address";
    return false;
  }
  tcp::endpoint endpoint(address, sc.listen_port);
  auto& acc = *impl_->acceptor;
  acc.open(endpoint.protocol(), ec);
  if (!ec) acc.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acc.bind(endpoint, ec);
  if (!ec) acc.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    *error = "cannot listen on " + sc.listen_host + ":" + std::to_string(sc.listen_port) + ": " +
             ec.message();
    return false;
  }
  auto local = acc.local_endpoint();
  std::string host = local.address().to_string();
  if (local.address().is_v6()) host = "[" + host + "]";
  impl_->bound = host + ":" + std::to_string(local.port());
  return true;
}

std::string Server::address() const { return impl_->bound; }

void Server::run() {
  Impl& impl = *impl_;
  impl.signals->async_wait([&impl](beast::error_code ec, int sig) {
    if (!ec) impl.begin_drain(sig == SIGTERM ? "SIGTERM" : "SIGINT");
  });
  impl.accept();
  std::vector<std::thread> threads;
  for (size_t i = 1; i < impl.contexts.size(); ++i)
    threads.emplace_back([&impl, i] {
      name_this_thread("gv-io");
      run_context(*impl.contexts[i]);
    });
  run_context(*impl.contexts[0]);
  for (auto& t : threads) t.join();
}

void Server::stop() {
  asio::post(*impl_->contexts[0], [this] { impl_->begin_drain("stop requested"); });
}

}  // namespace gv::net
