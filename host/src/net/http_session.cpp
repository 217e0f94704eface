// One HTTP/1.1 connection: read a request, answer it (directly for the
// host's own endpoints, through the worker pool for operations), repeat
// while keep-alive holds. Runs on one single-threaded io_context, so no
// strand is needed; worker results are posted back to it.
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket/rfc6455.hpp>
#include <boost/url/parse.hpp>
#include <boost/url/url_view.hpp>

#include "core/call.hpp"
#include "core/log.hpp"
#include "core/request_id.hpp"
#include "core/response_cache.hpp"
#include "net/edge_socket.hpp"
#include "net/sessions.hpp"

namespace gv::net {
namespace {

struct Answer {
  http::status status = http::status::ok;
  std::string body;
  const char* content_type = "application/json";  // a literal
  std::string allow;         // for 405
  bool retry_after = false;  // for 503
  bool www_authenticate = false;
  std::vector<std::pair<std::string, std::string>> headers;  // a plugin's, checked by the host
  // A kept answer, sent instead of body and with its headers.
  std::shared_ptr<const ResponseCache::Answer> cached;
  const char* x_cache = nullptr;  // "hit" or "miss" for cacheable operations
};

Answer error_answer(int status, std::string_view code, std::string_view msg,
                    std::string_view request_id) {
  Answer a;
  a.status = static_cast<http::status>(status);
  a.body = error_body(code, msg, request_id);
  return a;
}

using Clock = std::chrono::steady_clock;

class HttpSession : public Drainable, public std::enable_shared_from_this<HttpSession> {
 public:
  HttpSession(Socket socket, std::shared_ptr<ServerState> state)
      : stream_(std::move(socket)),
        executor_(stream_.get_executor()),
        watchdog_(executor_),
        state_(std::move(state)),
        limits_(state_->deps.config->limits) {}

  ~HttpSession() override {
    if (tracked_) state_->untrack(track_id_);
    if (counted_) {
      --state_->connections;
      --state_->deps.metrics->http_connections;
    }
  }

  void start() {
    track_id_ = state_->track(weak_from_this());
    tracked_ = true;
    counted_ = true;
    ++state_->deps.metrics->http_connections;
    ++state_->connections;
    if (state_->draining) return close();  // accepted behind the drain
    if (state_->connections > static_cast<int64_t>(limits_.max_connections)) {
      begin_request();
      method_ = "-";
      keep_alive_ = false;
      send(error_answer(503, "overloaded", "too many open connections", request_id_), true);
      return;
    }
    read_header();
  }

  void drain() override {
    asio::post(executor_, [self = shared_from_this()] {
      if (!self->busy_ && !self->upgraded_) self->close();
    });
  }

 private:
  // now: the time, when the caller has just read the clock.
  void read_header(Clock::time_point now = Clock::now()) {
    parser_.emplace();
    parser_->header_limit(static_cast<uint32_t>(limits_.header_bytes));
    parser_->body_limit(limits_.body_bytes);
    watch(first_ ? limits_.request_timeout : limits_.idle_timeout, now);
    read_more_header();
  }

  // Feeds the parser until it has the whole header: the bytes already
  // buffered first (a pipelined request), then the socket's. What
  // http::async_read_header does, without its three layers of composed
  // operations and their work tracking per read (bench/http).
  void read_more_header() {
    if (buffer_.size() > 0) {
      beast::error_code ec;
      buffer_.consume(parser_->put(buffer_.data(), ec));
      if (ec == http::error::need_more) ec = {};
      if (ec || parser_->is_header_done()) return on_header(ec);
    }
    stream_.async_read_some(buffer_.prepare(beast::read_size(buffer_, kReadSize)),
                            [self = shared_from_this()](beast::error_code ec, size_t n) {
                              self->buffer_.commit(n);
                              if (ec == asio::error::eof) {
                                // Between requests: the client is done. Within
                                // one: a request cut short (partial_message).
                                if (!self->parser_->got_some())
                                  ec = http::error::end_of_stream;
                                else
                                  self->parser_->put_eof(ec);
                                return self->on_header(ec ? ec : http::error::partial_message);
                              }
                              if (ec) return self->on_header(ec);
                              self->read_more_header();
                            });
  }

  void on_header(beast::error_code ec) {
    first_ = false;
    if (ec) return on_read_error(ec);
    if (state_->draining) keep_alive_ = false;
    auto& req = parser_->get();
    if (beast::websocket::is_upgrade(req)) return upgrade();
    auto length = parser_->content_length();
    if (length && *length > limits_.body_bytes) return refuse_body();
    // No body (a GET, say): answer now, without another read operation.
    if (parser_->is_done()) return on_request();
    if (beast::iequals(req[http::field::expect], "100-continue")) {
      wire_ = "HTTP/1.1 100 Continue\r\n\r\n";
      asio::async_write(stream_, asio::buffer(wire_),
                        [self = shared_from_this()](beast::error_code e, size_t) {
                          if (e) return self->close();
                          self->read_body();
                        });
      return;
    }
    read_body();
  }

  void read_body() {
    watch(limits_.request_timeout);
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t) {
                       if (ec) return self->on_read_error(ec);
                       self->on_request();
                     });
  }

  void on_read_error(beast::error_code ec) {
    if (ec == http::error::end_of_stream || ec == asio::error::eof || ec == beast::error::timeout ||
        ec == asio::error::operation_aborted || ec == asio::error::connection_reset)
      return close();
    begin_request();
    keep_alive_ = false;
    if (ec == http::error::header_limit)
      return send(
          error_answer(431, "headers_too_large",
                       "request headers exceed " + std::to_string(limits_.header_bytes) + " bytes",
                       request_id_),
          true);
    if (ec == http::error::body_limit) return refuse_body();
    send(error_answer(400, "bad_request", "malformed HTTP request", request_id_), true);
  }

  void refuse_body() {
    begin_request();
    keep_alive_ = false;
    send(error_answer(413, "body_too_large",
                      "request body exceeds " + std::to_string(limits_.body_bytes) + " bytes",
                      request_id_),
         true);
  }

  // Marks a request as started: counted until its answer is written.
  void begin_request() {
    if (busy_) return;
    busy_ = true;
    ++state_->active_requests;
    started_ = std::chrono::steady_clock::now();
    op_.clear();
    if (parser_) {
      auto& req = parser_->get();
      request_id_from(req["X-Request-Id"], request_id_);
      method_.assign(req.method_string());
      path_.assign(req.target().substr(0, req.target().find('?')));
    } else {
      new_request_id(request_id_);
    }
  }

  void on_request() {
    begin_request();
    auto& req = parser_->get();
    keep_alive_ = keep_alive_ && req.keep_alive() && !state_->draining;
    // A plain path, the common case, is the path as it stands: no query,
    // no escapes to decode. Anything else goes through the URL parser.
    if (plain_path(req.target())) {
      std::string path(req.target());
      if (auto a = host_endpoint(req.method(), path)) return send(*a, false);
      return operation(req, nullptr, path);
    }
    // Origin form ("/path?q") as clients send it, or absolute form
    // ("http://host/path") as proxies may (RFC 9112 3.2.2).
    auto url = boost::urls::parse_origin_form(req.target());
    if (!url) {
      if (auto absolute = boost::urls::parse_absolute_uri(req.target())) url = *absolute;
    }
    if (!url) {
      op_ = "bad_target";
      return send(error_answer(400, "bad_request", "malformed request target", request_id_), false);
    }
    std::string path = url->path();
    if (auto a = host_endpoint(req.method(), path)) return send(*a, false);
    operation(req, &*url, path);
  }

  // True for an origin-form target made only of '/' and the characters a
  // path segment may hold unescaped (RFC 3986 pchar without '%'): the URL
  // parser would accept it and give it back unchanged as the path.
  static bool plain_path(std::string_view target) {
    if (target.empty() || target[0] != '/') return false;
    for (unsigned char c : target) {
      bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                std::string_view("/-._~!$&'()*+,;=:@").find(static_cast<char>(c)) !=
                    std::string_view::npos;
      if (!ok) return false;
    }
    return true;
  }

  // /healthz, /readyz, /metrics, /api/v1/openapi.json: served on this
  // thread, without plugins.
  std::optional<Answer> host_endpoint(http::verb method, const std::string& path) {
    bool get = method == http::verb::get || method == http::verb::head;
    Answer a;
    if (path == "/healthz") {
      op_ = "healthz";
      a.body = R"({"status":"ok"})";
    } else if (path == "/readyz") {
      op_ = "readyz";
      bool ready = !state_->draining && state_->deps.ready && state_->deps.ready();
      a.status = ready ? http::status::ok : http::status::service_unavailable;
      if (state_->deps.readiness) {
        nlohmann::json body = state_->deps.readiness();
        body["status"] = ready ? "ready" : "not_ready";
        a.body = body.dump();
      } else {
        a.body = ready ? R"({"status":"ready"})" : R"({"status":"not_ready"})";
      }
    } else if (path == "/metrics") {
      op_ = "metrics";
      a.content_type = "text/plain; version=0.0.4";
      a.body = state_->deps.metrics->render();
    } else if (path == "/api/v1/openapi.json") {
      op_ = "openapi";
      a.body = state_->openapi_json;
    } else if (path == "/ws") {
      op_ = "ws";
      return error_answer(426, "upgrade_required", "/ws takes WebSocket upgrade requests only",
                          request_id_);
    } else {
      return std::nullopt;
    }
    if (!get) {
      Answer e = error_answer(405, "method_not_allowed", "use GET for " + path, request_id_);
      e.allow = "GET, HEAD";
      return e;
    }
    return a;
  }

  // url: the parsed target, or nullptr for a plain path (no query).
  void operation(http::request<http::string_body>& req, const boost::urls::url_view* url,
                 const std::string& path) {
    const Operation* op = nullptr;
    PathParams params;
    std::string allowed;
    // HEAD is GET without the body (send() leaves it out).
    std::string_view method = req.method() == http::verb::head
                                  ? std::string_view("GET")
                                  : std::string_view(req.method_string());
    switch (state_->deps.registry->route(method, path, &op, &params, &allowed)) {
      case Registry::Match::no_path:
        op_ = "not_found";
        return send(
            error_answer(404, "not_found", "no such path: " + path.substr(0, 200), request_id_),
            false);
      case Registry::Match::no_method: {
        op_ = "method_not_allowed";
        Answer a =
            error_answer(405, "method_not_allowed",
                         std::string(req.method_string()) + " is not allowed here", request_id_);
        a.allow = allowed;
        return send(a, false);
      }
      case Registry::Match::found:
        break;
    }
    op_ = op->name;
    if (url) {
      for (auto p : url->params()) {
        for (const auto& [k, v] : params)
          if (k == p.key)
            return send(
                error_answer(400, "invalid_input", p.key + ": given more than once", request_id_),
                false);
        params.emplace_back(p.key, p.has_value ? p.value : std::string());
      }
    }
    std::optional<auth::Identity> identity;
    auto auth = req[http::field::authorization];
    if (!auth.empty()) {
      constexpr std::string_view bearer = "Bearer ";
      TokenCheck check;
      if (auth.size() <= bearer.size() || !beast::iequals(auth.substr(0, bearer.size()), bearer))
        check.problem = "the Authorization header must be 'Bearer <token>'";
      else
        check = check_token(*state_, auth.substr(bearer.size()));
      if (!check.identity) {
        Answer a = error_answer(401, "invalid_token", check.problem, request_id_);
        a.www_authenticate = true;
        return send(a, false);
      }
      identity = std::move(check.identity);
    }
    // A cacheable operation's answer to this very target, kept in memory:
    // sent from here, the handler does not run (core/response_cache.hpp).
    ResponseCache* cache = state_->deps.response_cache;
    std::string cache_key;
    ResponseCache::Ticket ticket;
    if (cache && cache->enabled() && !op->cache_tag.empty() && req.body().empty()) {
      // Keyed by the decoded path and query, so that spellings of one
      // target ("%34%32" for "42", absolute form) share an entry. Without
      // a query the path is the key, looked up without a copy.
      std::string with_query;
      if (url && !url->params().empty()) {
        with_query = path;
        for (auto p : url->params()) {
          with_query += '\0';
          with_query += p.key;
          with_query += '=';
          with_query += p.value;
        }
      }
      const std::string_view key = with_query.empty() ? std::string_view(path) : with_query;
      if (auto hit = cache->find(key, started_)) {
        Answer a;
        a.cached = std::move(hit);
        a.x_cache = "hit";
        return send(a, false);
      }
      cache_key = key;
      // Taken before the handler reads anything: see ResponseCache.
      ticket = cache->ticket(cache_tag_of(*op, params));
    }
    auto call = std::make_shared<Call>();
    call->op = op;
    call->request_id = request_id_;
    if (peer_.empty()) peer_ = peer_address(stream_);
    call->client_address = peer_;
    call->params = std::move(params);
    call->identity = std::move(identity);
    for (const auto& field : req)
      call->headers.emplace_back(std::string(field.name_string()), std::string(field.value()));
    call->body = std::move(req.body());
    unwatch();
    auto self = shared_from_this();
    bool queued = state_->deps.dispatcher->submit(call, [self, cache,
                                                         cache_key = std::move(cache_key), ticket,
                                                         asked = started_](Reply reply) mutable {
      std::shared_ptr<const ResponseCache::Answer> kept;  // set: a cacheable 200, a miss
      if (!cache_key.empty() && reply.status == 200) {
        kept = std::make_shared<const ResponseCache::Answer>(
            ResponseCache::Answer{std::move(reply.body), std::move(reply.headers)});
        cache->store(std::move(cache_key), ticket, kept, asked);  // its age counts from the request
      }
      asio::post(self->stream_.get_executor(),
                 [self, reply = std::move(reply), kept = std::move(kept)]() mutable {
                   Answer a;
                   if (kept) a.x_cache = "miss";
                   a.cached = std::move(kept);
                   a.status = static_cast<http::status>(reply.status);
                   a.body = std::move(reply.body);
                   // A plugin's 503 (a locked database, a busy dependency) or 429
                   // tells the client when to come back, like the host's own.
                   a.headers = std::move(reply.headers);
                   bool own_retry_after =
                       std::any_of(a.headers.begin(), a.headers.end(),
                                   [](auto& h) { return beast::iequals(h.first, "Retry-After"); });
                   a.retry_after = (reply.status == 503 || reply.status == 429) && !own_retry_after;
                   self->send(a, false);
                 });
    });
    if (!queued) {
      ++state_->deps.metrics->rejected_overload;
      Answer a = error_answer(503, "overloaded", "the server is busy; retry shortly", request_id_);
      a.retry_after = true;
      send(a, false);
    }
  }

  // Writes the answer. The head is composed here rather than by Beast's
  // serializer: our responses have a handful of fixed headers, and one
  // reused buffer costs far less per request (see bench/http).
  void send(const Answer& a, bool close_after) {
    if (close_after || state_->draining) keep_alive_ = false;
    bool head = parser_ && parser_->is_header_done() && parser_->get().method() == http::verb::head;
    unsigned version = parser_ && parser_->is_header_done() ? parser_->get().version() : 11;
    int status = static_cast<int>(a.status);
    // These statuses never carry a body (RFC 9110 6.4.1); 204 and 1xx not
    // even a Content-Length.
    bool bodyless = status < 200 || status == 204 || status == 304;
    wire_.clear();
    wire_ += "HTTP/1.1 ";
    wire_ += std::to_string(status);
    wire_ += ' ';
    wire_ += http::obsolete_reason(a.status);
    wire_ += "\r\nServer: grapevine\r\nX-Request-Id: ";
    wire_ += request_id_;  // sanitized: no CR or LF can get here
    const std::string_view body = a.cached ? std::string_view(a.cached->body) : a.body;
    if (!body.empty() && !bodyless) {
      wire_ += "\r\nContent-Type: ";
      wire_ += a.content_type;
    }
    if (!a.allow.empty()) {
      wire_ += "\r\nAllow: ";
      wire_ += a.allow;
    }
    if (a.retry_after) wire_ += "\r\nRetry-After: 1";
    for (const auto& [name, value] : a.cached ? a.cached->headers : a.headers) {
      wire_ += "\r\n";
      wire_ += name;
      wire_ += ": ";
      wire_ += value;
    }
    if (a.x_cache) {
      wire_ += "\r\nX-Cache: ";
      wire_ += a.x_cache;
    }
    if (a.www_authenticate) wire_ += "\r\nWWW-Authenticate: Bearer error=\"invalid_token\"";
    if (status >= 200 && status != 204) {
      wire_ += "\r\nContent-Length: ";
      wire_ += std::to_string(bodyless ? 0 : body.size());
    }
    if (!keep_alive_)
      wire_ += "\r\nConnection: close";
    else if (version == 10)
      wire_ += "\r\nConnection: keep-alive";
    wire_ += "\r\n\r\n";
    if (!head && !bodyless) wire_ += body;
    watch(limits_.request_timeout);
    asio::async_write(stream_, asio::buffer(wire_),
                      [self = shared_from_this(), status](beast::error_code ec, size_t) {
                        self->on_write(ec, status);
                      });
  }

  void on_write(beast::error_code ec, int status) {
    auto now = Clock::now();
    double secs = std::chrono::duration<double>(now - started_).count();
    state_->deps.metrics->observe_request(op_.empty() ? "unknown" : op_, status, secs);
    if (state_->deps.config->log.access)
      log::access({request_id_, "http", method_, path_, op_, status, secs * 1000});
    busy_ = false;
    --state_->active_requests;
    if (ec || !keep_alive_ || state_->draining) return close();
    read_header(now);
  }

  void upgrade() {
    auto& req = parser_->get();
    begin_request();
    op_ = "ws.upgrade";
    keep_alive_ = false;
    std::string target(req.target());
    if (target.substr(0, target.find('?')) != "/ws")
      return send(error_answer(404, "not_found", "WebSocket upgrades go to /ws", request_id_),
                  true);
    if (state_->draining)
      return send(error_answer(503, "shutting_down", "the server is shutting down", request_id_),
                  true);
    const auto& origins = state_->deps.config->websocket.allowed_origins;
    auto origin = req[http::field::origin];
    if (!origin.empty() && std::find(origins.begin(), origins.end(), "*") == origins.end() &&
        std::find(origins.begin(), origins.end(), std::string(origin)) == origins.end())
      return send(error_answer(403, "origin_not_allowed", "origin not in websocket.allowed_origins",
                               request_id_),
                  true);
    std::string token;
    auto auth = req[http::field::authorization];
    if (auth.size() > 7 && beast::iequals(auth.substr(0, 7), "Bearer "))
      token = std::string(auth.substr(7));
    else if (auto url = boost::urls::parse_origin_form(req.target()))
      for (auto p : url->params())
        if (p.key == "access_token") token = p.value;
    std::optional<auth::Identity> identity;
    if (!token.empty()) {
      TokenCheck check = check_token(*state_, token);
      if (!check.identity) {
        Answer a = error_answer(401, "invalid_token", check.problem, request_id_);
        a.www_authenticate = true;
        return send(a, true);
      }
      identity = std::move(check.identity);
    }
    // The upgrade is logged here; the socket's own traffic is logged per op.
    double secs = seconds_since(started_);
    state_->deps.metrics->observe_request(op_, 101, secs);
    if (state_->deps.config->log.access)
      log::access({request_id_, "http", method_, path_, op_, 101, secs * 1000});
    busy_ = false;
    --state_->active_requests;
    if (tracked_) state_->untrack(track_id_);
    tracked_ = false;
    counted_ = false;  // the WebSocket session counts the connection now
    --state_->deps.metrics->http_connections;
    unwatch();
    watchdog_.cancel();
    upgraded_ = true;
    start_websocket_session(Stream(stream_.take_socket()), parser_->release(), state_,
                            std::move(identity));
  }

  void close() {
    beast::error_code ec;
    stream_.shutdown(tcp::socket::shutdown_send, ec);
    stream_.close(ec);
  }

  // Timeouts: a deadline moved forward per request, and one timer that
  // only wakes when a deadline may have passed. Cheaper than arming a timer
  // for every read and write (bench/http).
  void watch(std::chrono::milliseconds timeout, Clock::time_point now = Clock::now()) {
    deadline_ = now + timeout;
    if (!watching_ || deadline_ < armed_for_) arm_watchdog();
  }
  // No deadline while a worker runs the operation; the answer sets one.
  void unwatch() { deadline_ = std::chrono::steady_clock::time_point::max(); }

  void arm_watchdog() {
    watching_ = true;
    armed_for_ = deadline_;
    watchdog_.expires_at(deadline_);  // cancels a wait for a later deadline
    watchdog_.async_wait([weak = weak_from_this()](beast::error_code ec) {
      auto self = weak.lock();
      if (!self || ec) return;
      self->watching_ = false;
      if (self->deadline_ == std::chrono::steady_clock::time_point::max()) return;
      if (std::chrono::steady_clock::now() >= self->deadline_) return self->close();
      self->arm_watchdog();
    });
  }

  static constexpr size_t kReadSize = 65536;  // most bytes one read asks for, as Beast's reads

  EdgeSocket<Executor> stream_;  // reads skip the recv() that would find nothing
  const Executor executor_;  // stream_ may be moved away on upgrade
  asio::basic_waitable_timer<std::chrono::steady_clock,
                             asio::wait_traits<std::chrono::steady_clock>, Executor>
      watchdog_;
  std::chrono::steady_clock::time_point deadline_, armed_for_;
  bool watching_ = false;
  std::string wire_;  // the response being written; reused across requests
  beast::flat_buffer buffer_;
  std::shared_ptr<ServerState> state_;
  const config::LimitsConfig& limits_;
  std::optional<http::request_parser<http::string_body>> parser_;
  uint64_t track_id_ = 0;
  bool tracked_ = false, counted_ = false;
  bool first_ = true, busy_ = false, keep_alive_ = true, upgraded_ = false;
  std::chrono::steady_clock::time_point started_;
  std::string request_id_, method_, path_, op_;
  std::string peer_;  // the client's address, read once per connection
};

}  // namespace

void start_http_session(Socket socket, std::shared_ptr<ServerState> state) {
  std::make_shared<HttpSession>(std::move(socket), std::move(state))->start();
}

TokenCheck check_token(const ServerState& state, std::string_view token) {
  TokenCheck check;
  check.present = true;
  if (!state.deps.keys) {
    check.problem = "this host has no token keys configured";
    return check;
  }
  auth::Identity id;
  auth::VerifyError e = state.deps.keys->verify(token, &id);
  if (e != auth::VerifyError::none)
    check.problem = auth::describe(e);
  else if (state.deps.dispatcher && state.deps.dispatcher->revoked(id))
    // A signed-out token opens no socket and authenticates none.
    check.problem = "the access token was revoked";
  else
    check.identity = std::move(id);
  return check;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace gv::net
