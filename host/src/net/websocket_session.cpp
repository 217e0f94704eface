// One WebSocket at /ws: operations as {"op","id","data"} messages answered
// by {"id","ok",...}, and pushes {"event","data"} from the hub. The send
// queue is bounded: a client that cannot keep up is disconnected rather
// than buffered without end.
#include <boost/asio/post.hpp>
#include <boost/asio/system_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/websocket.hpp>
#include <deque>

#include "core/call.hpp"
#include "core/log.hpp"
#include "core/request_id.hpp"
#include "net/sessions.hpp"

namespace gv::net {
namespace {

namespace websocket = beast::websocket;

class WebSocketSession : public PushTarget,
                         public Drainable,
                         public std::enable_shared_from_this<WebSocketSession> {
 public:
  WebSocketSession(Stream stream, std::shared_ptr<ServerState> state,
                   std::optional<auth::Identity> identity)
      : ws_(std::move(stream)),
        state_(std::move(state)),
        limits_(state_->deps.config->websocket),
        identity_(std::move(identity)),
        expiry_(ws_.get_executor()) {}

  ~WebSocketSession() override {
    if (connection_id_) state_->deps.hub->remove(connection_id_);
    if (track_id_) state_->untrack(track_id_);
    --state_->connections;
    --state_->deps.metrics->websocket_connections;
  }

  void start(http::request<http::string_body> upgrade) {
    ++state_->deps.metrics->websocket_connections;
    track_id_ = state_->track(std::weak_ptr<Drainable>(shared_from_this()));
    websocket::stream_base::timeout timeouts;
    timeouts.handshake_timeout = limits_.handshake_timeout;
    // Beast pings after half the idle time and drops a peer that stays
    // silent for all of it.
    timeouts.idle_timeout = limits_.ping_interval * 2;
    timeouts.keep_alive_pings = true;
    ws_.set_option(timeouts);
    ws_.read_message_max(limits_.max_message_bytes);
    ws_.set_option(websocket::stream_base::decorator(
        [](websocket::response_type& res) { res.set(http::field::server, "grapevine"); }));
    ws_.async_accept(upgrade, [self = shared_from_this()](beast::error_code ec) {
      if (ec) return self->close_socket();
      self->connection_id_ = self->state_->deps.hub->add(
          std::weak_ptr<PushTarget>(self), self->identity_ ? self->identity_->user_id : "");
      self->arm_expiry();
      self->read();
      if (self->state_->draining) self->drain_now();  // accepted behind the drain
    });
  }

  // PushTarget: any thread.
  void send(std::shared_ptr<const std::string> text) override {
    asio::post(ws_.get_executor(),
               [self = shared_from_this(), text = std::move(text)] { self->enqueue(text); });
  }

  // Shutdown: answer the operations in flight, then close with 1001.
  void close_going_away() override {
    asio::post(ws_.get_executor(), [self = shared_from_this()] { self->drain_now(); });
  }

  void drain() override { close_going_away(); }

 private:
  void read() {
    ws_.async_read(
        buffer_, [self = shared_from_this()](beast::error_code ec, size_t) { self->on_read(ec); });
  }

  void on_read(beast::error_code ec) {
    // Oversize messages: Beast has already sent close code 1009 (too big).
    if (ec) return close_socket();
    if (!ws_.got_text()) {
      reply_error(nullptr, 400, "bad_request", "send text frames of JSON");
    } else {
      try {
        handle(beast::buffers_to_string(buffer_.data()));
      } catch (const std::exception& e) {  // a host bug: answer, keep the socket
        log::error("websocket message failed", {{"error", e.what()}});
        reply_error(nullptr, 500, "internal", "the message could not be handled");
      }
    }
    buffer_.consume(buffer_.size());
    if (!closing_) read();
  }

  void handle(const std::string& text) {
    auto started = std::chrono::steady_clock::now();
    auto msg = json_depth_within(text, state_->deps.config->limits.json_depth)
                   ? nlohmann::json::parse(text, nullptr, false)
                   : nlohmann::json(nlohmann::json::value_t::discarded);
    if (!msg.is_object())
      return reply_error(nullptr, 400, "invalid_json",
                         "a message is a JSON object {\"op\",\"id\",\"data\"}");
    nlohmann::json id = msg.contains("id") ? msg["id"] : nlohmann::json(nullptr);
    if (!id.is_null() && !id.is_string() && !id.is_number_integer())
      return reply_error(nullptr, 400, "bad_request", "id must be a string or an integer");
    if (!msg.contains("op") || !msg["op"].is_string())
      return reply_error(&id, 400, "bad_request", "op must be a string");
    for (auto it = msg.begin(); it != msg.end(); ++it)
      if (it.key() != "op" && it.key() != "id" && it.key() != "data")
        return reply_error(&id, 400, "bad_request", "unknown member '" + it.key() + "'");
    std::string op_name = msg["op"];
    nlohmann::json data = msg.contains("data") ? msg["data"] : nlohmann::json::object();
    if (!data.is_object())
      return reply_error(&id, 400, "invalid_input", "data must be a JSON object");
    if (op_name == "auth") return authenticate(id, data);
    if (draining_) return reply_error(&id, 503, "shutting_down", "the server is shutting down");
    refresh_identity();
    const Operation* op = state_->deps.registry->find(op_name);
    if (!op)
      return reply_error(&id, 404, "not_found", "no operation '" + op_name.substr(0, 128) + "'");
    if (in_flight_ >= limits_.max_in_flight)
      return reply_error(&id, 429, "too_many_requests",
                         "too many operations in flight on this socket");
    auto call = std::make_shared<Call>();
    call->op = op;
    call->request_id = new_request_id();
    call->identity = identity_;
    call->input = std::move(data);
    call->connection_id = connection_id_;
    if (peer_.empty()) peer_ = peer_address(ws_.next_layer().socket());
    call->client_address = peer_;
    ++in_flight_;
    auto self = shared_from_this();
    bool queued = state_->deps.dispatcher->submit(call, [self, call, id, started](Reply reply) {
      asio::post(self->ws_.get_executor(), [self, call, id, started, reply = std::move(reply)] {
        --self->in_flight_;
        self->reply(id, reply, call->op->name, call->request_id, started);
        if (self->draining_ && self->in_flight_ == 0)
          self->close(websocket::close_code::going_away, "server shutting down");
      });
    });
    if (!queued) {
      --in_flight_;
      ++state_->deps.metrics->rejected_overload;
      reply_error(&id, 503, "overloaded", "the server is busy; retry shortly");
    }
  }

  // {"op":"auth","data":{"token":"..."}} replaces the socket's identity;
  // an empty token signs the socket out.
  void authenticate(const nlohmann::json& id, const nlohmann::json& data) {
    auto given = data.find("token");
    if (given != data.end() && !given->is_string())
      return reply_error(&id, 400, "invalid_input", "token: expected string");
    for (auto it = data.begin(); it != data.end(); ++it)
      if (it.key() != "token")
        return reply_error(&id, 400, "invalid_input", "unknown field '" + it.key() + "'");
    std::string token = given == data.end() ? "" : given->get<std::string>();
    if (token.empty()) {
      identity_.reset();
    } else {
      TokenCheck check = check_token(*state_, token);
      if (!check.identity) return reply_error(&id, 401, "invalid_token", check.problem);
      identity_ = std::move(check.identity);
    }
    state_->deps.hub->set_user(connection_id_, identity_ ? identity_->user_id : "");
    arm_expiry();
    nlohmann::json out = {{"id", id},
                          {"ok", true},
                          {"status", 200},
                          {"data", {{"user_id", identity_ ? identity_->user_id : ""}}}};
    enqueue(std::make_shared<const std::string>(out.dump()));
  }

  // A token checked at connect expires; the socket then acts anonymously
  // until it sends a fresh one with "auth".
  void refresh_identity() {
    if (!identity_) return;
    auto now = std::chrono::system_clock::now().time_since_epoch();
    if (std::chrono::duration_cast<std::chrono::seconds>(now).count() >
        identity_->expires_at + leeway()) {
      identity_.reset();
      state_->deps.hub->set_user(connection_id_, "");
    }
  }

  // When the token expires the socket stops receiving its user's pushes,
  // whether or not the client sends anything.
  void arm_expiry() {
    expiry_.cancel();
    if (!identity_) return;
    expiry_.expires_at(std::chrono::system_clock::time_point(
        std::chrono::seconds(identity_->expires_at + leeway() + 1)));
    // Weak: a timer minutes away must not keep a closed socket alive.
    expiry_.async_wait([weak = weak_from_this()](beast::error_code ec) {
      if (auto self = weak.lock(); self && !ec) self->refresh_identity();
    });
  }

  // Verification tolerates this much clock skew past exp; so does the socket.
  int64_t leeway() const { return state_->deps.config->auth.leeway.count(); }

  void drain_now() {
    draining_ = true;
    if (in_flight_ == 0) close(websocket::close_code::going_away, "server shutting down");
  }

  void reply(const nlohmann::json& id, const Reply& r, const std::string& op,
             const std::string& request_id, std::chrono::steady_clock::time_point started) {
    bool ok = r.status < 400;
    std::string text = "{\"id\":" + id.dump() + ",\"ok\":" + (ok ? "true" : "false") +
                       ",\"status\":" + std::to_string(r.status) + ",\"request_id\":\"" +
                       request_id + "\"";
    if (ok) {
      text += ",\"data\":" + (r.body.empty() ? std::string("null") : r.body) + "}";
    } else {
      // The error body is {"error":{...}}; lift its inside.
      auto parsed = nlohmann::json::parse(r.body, nullptr, false);
      text += ",\"error\":" +
              (parsed.is_object() && parsed.contains("error") ? parsed["error"].dump()
                                                              : std::string("null")) +
              "}";
    }
    double secs = seconds_since(started);
    state_->deps.metrics->observe_request(op, r.status, secs);
    if (state_->deps.config->log.access)
      log::access({request_id, "ws", "WS", op, op, r.status, secs * 1000});
    enqueue(std::make_shared<const std::string>(std::move(text)));
  }

  void reply_error(const nlohmann::json* id, int status, std::string_view code,
                   const std::string& message) {
    std::string request_id = new_request_id();
    nlohmann::json out = {
        {"id", id ? *id : nlohmann::json(nullptr)},
        {"ok", false},
        {"status", status},
        {"request_id", request_id},
        {"error", {{"code", code}, {"message", message}, {"request_id", request_id}}}};
    enqueue(std::make_shared<const std::string>(
        out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)));
  }

  void enqueue(std::shared_ptr<const std::string> text) {
    if (closing_) return;
    if (queue_.size() >= limits_.send_queue_messages) {
      // The client reads slower than we send: drop it, not our memory.
      ++state_->deps.metrics->websocket_slow_closes;
      log::warn("websocket closed: send queue full", {{"connection_id", connection_id_}});
      closing_ = true;
      beast::error_code ec;
      beast::get_lowest_layer(ws_).socket().close(ec);
      return;
    }
    queue_.push_back(std::move(text));
    if (!writing_) write();
  }

  void write() {
    writing_ = true;
    ws_.text(true);
    ws_.async_write(asio::buffer(*queue_.front()),
                    [self = shared_from_this()](beast::error_code ec, size_t) {
                      self->queue_.pop_front();
                      self->writing_ = false;
                      if (ec) return;
                      if (!self->queue_.empty() && !self->closing_)
                        self->write();
                      else if (self->closing_ && self->pending_close_)
                        self->send_close();
                    });
  }

  void close(websocket::close_code code, const char* reason) {
    if (closing_) return;
    closing_ = true;
    pending_close_ = websocket::close_reason(code, reason);
    if (!writing_) send_close();
  }

  void send_close() {
    auto reason = *pending_close_;
    pending_close_.reset();
    expiry_.cancel();
    // A peer that never answers the close frame must not hold shutdown.
    ws_.set_option(
        websocket::stream_base::timeout{std::chrono::seconds(1), std::chrono::seconds(1), false});
    ws_.async_close(reason,
                    [self = shared_from_this()](beast::error_code) { self->close_socket(); });
  }

  // Closes the TCP socket here, on the session's own thread, once the
  // session is over: its last reference may be dropped on another thread
  // (a worker's reply, a push, the drain), and the I/O contexts take no
  // lock per socket operation (server.cpp), so the socket must not be
  // closed by the destructor there. Closing twice is harmless.
  void close_socket() {
    beast::error_code ec;
    beast::get_lowest_layer(ws_).socket().close(ec);
  }

  websocket::stream<Stream> ws_;
  beast::flat_buffer buffer_;
  std::shared_ptr<ServerState> state_;
  const config::WebSocketConfig& limits_;
  std::optional<auth::Identity> identity_;
  uint64_t connection_id_ = 0, track_id_ = 0;
  std::deque<std::shared_ptr<const std::string>> queue_;
  bool writing_ = false, closing_ = false, draining_ = false;
  asio::basic_waitable_timer<std::chrono::system_clock,
                             asio::wait_traits<std::chrono::system_clock>, Executor>
      expiry_;
  std::optional<websocket::close_reason> pending_close_;
  size_t in_flight_ = 0;
  std::string peer_;  // the client's address, read once per connection
};

}  // namespace

void start_websocket_session(Stream stream, http::request<http::string_body> upgrade,
                             std::shared_ptr<ServerState> state,
                             std::optional<auth::Identity> identity) {
  std::make_shared<WebSocketSession>(std::move(stream), std::move(state), std::move(identity))
      ->start(std::move(upgrade));
}

}  // namespace gv::net
