// Grapevine C++ SDK: a header-only layer over the C ABI in abi.h.
//
// A plugin is three layers, and each is handed only what it may touch:
//   DAL       gets DalContext      (its stores)
//   service   gets ServiceContext  (calls to other operations, pushes to
//                                   sockets, token signing, logging)
//   handlers  get Registry         (declare operations and their handlers)
// A plugin class builds the three from a PluginContext in its constructor,
// and GRAPEVINE_PLUGIN exports it. See sdk-docs/ for the walk-through.
//
// Exceptions never cross the ABI: every handler and lifecycle call is wrapped
// here, and a grapevine::Error becomes the JSON error body its status says.
#ifndef GRAPEVINE_SDK_HPP
#define GRAPEVINE_SDK_HPP

#include <grapevine/abi.h>

#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <initializer_list>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace grapevine {

using json = nlohmann::json;

inline gv_str to_gv(std::string_view s) { return gv_str{s.data(), s.size()}; }
inline std::string_view from_gv(gv_str s) {
  return s.data ? std::string_view(s.data, s.len) : std::string_view();
}

// Thrown by plugin code to answer with an error: status is the HTTP status,
// code a short snake_case word, message a sentence for the client.
class Error : public std::runtime_error {
 public:
  Error(int status, std::string code, const std::string& message)
      : std::runtime_error(message), status_(status), code_(std::move(code)) {}
  int status() const { return status_; }
  const std::string& code() const { return code_; }

  static Error bad_request(const std::string& m) { return {400, "bad_request", m}; }
  static Error forbidden(const std::string& m) { return {403, "forbidden", m}; }
  static Error not_found(const std::string& m) { return {404, "not_found", m}; }
  static Error conflict(const std::string& m) { return {409, "conflict", m}; }
  static Error unavailable(const std::string& m) { return {503, "unavailable", m}; }
  // 429 with Retry-After: seconds until a new attempt may succeed.
  static Error too_many_requests(const std::string& m, int64_t retry_after_s) {
    return Error(429, "rate_limited", m).retry_after(retry_after_s);
  }

  // Sets the Retry-After header of the answer (for 429 and 503; over HTTP),
  // in seconds (at least 1); without it the host sends 1.
  Error& retry_after(int64_t seconds) {
    retry_after_s_ = seconds < 1 ? 1 : seconds;
    return *this;
  }
  int64_t retry_after_seconds() const { return retry_after_s_; }  // 0: not set

 private:
  int status_;
  std::string code_;
  int64_t retry_after_s_ = 0;
};

class Tx;

// What a handler returns: a status and a JSON body.
struct Response {
  Response(json body_in = json::object(), int status_in = 200)  // NOLINT
      : status(status_in), body(std::move(body_in)) {}
  static Response created(json b) { return {std::move(b), 201}; }
  // 201 with a Location header naming the new resource.
  static Response created(json b, std::string location) {
    Response r(std::move(b), 201);
    r.header("Location", std::move(location));
    return r;
  }
  static Response no_content() { return {json(nullptr), 204}; }
  // A body that is JSON text already (an answer stored earlier, say): sent
  // as it is, without parsing it here to have it written out again. The
  // host checks that it is JSON; if not, the caller gets a 500.
  static Response json_text(std::string text, int status_in = 200) {
    Response r(json(nullptr), status_in);
    r.text = std::move(text);
    return r;
  }
  // Adds an HTTP header (HTTP only; see respond_header in abi.h for the
  // rules). Returns *this, so calls chain.
  Response& header(std::string name, std::string value) {
    headers.emplace_back(std::move(name), std::move(value));
    return *this;
  }
  // An answer that is a write (ABI 1.6): the handler checks its input
  // and returns after_write(work), and the host runs work(Tx&) as one part
  // of the plugin's grouped write transaction (the group commit), on the
  // thread writing the group. Its Response is the answer, sent once the
  // group has committed (503 if the commit fails). So parsing and checks
  // run on a worker, in parallel with other requests, and only the
  // transaction holds up the group: keep work to its statements and
  // building the answer. An Error work throws undoes its writes and is the
  // answer; a failed statement too (409 for a constraint, 503 when busy).
  // work runs later, on another thread: capture by value what it needs
  // (not the Request). In-process calls wait for it in a write of their own.
  template <class F>
  static Response after_write(F&& work) {
    Response r(json(nullptr), 0);
    r.write = std::make_shared<std::function<Response(Tx&)>>(std::forward<F>(work));
    return r;
  }

  int status;
  json body;
  std::vector<std::pair<std::string, std::string>> headers{};
  std::optional<std::string> text{};  // set by json_text: the body, and body unused
  std::shared_ptr<std::function<Response(Tx&)>> write{};  // set by after_write
};

// One call of an operation, as a handler sees it.
class Request {
 public:
  explicit Request(const gv_request_v1* raw) : raw_(raw) {}

  // The validated input: JSON body merged with path and query parameters.
  const json& input() const {
    if (!input_) {
      std::string_view text = from_gv(raw_->input_json);
      input_ = text.empty() ? json::object() : json::parse(text);
    }
    return *input_;
  }
  std::string_view operation() const { return from_gv(raw_->operation); }
  std::string_view request_id() const { return from_gv(raw_->request_id); }
  // Empty when the caller is anonymous.
  std::string_view user_id() const { return from_gv(raw_->user_id); }
  bool signed_in() const { return raw_->user_id.len > 0; }
  bool has_role(std::string_view role) const {
    std::string_view all = from_gv(raw_->roles);
    while (!all.empty()) {
      size_t comma = all.find(',');
      if (all.substr(0, comma) == role) return true;
      if (comma == std::string_view::npos) break;
      all.remove_prefix(comma + 1);
    }
    return false;
  }
  // WebSocket connection id; 0 over HTTP.
  uint64_t connection_id() const { return raw_->connection_id; }
  // The client's IP address ("" for in-process calls), for rate limits.
  std::string_view client_address() const {
    return has_v11() ? from_gv(raw_->client_address) : std::string_view();
  }
  // The access token's "sid" claim (a session id the signer put there).
  std::string_view session_id() const {
    return has_v11() ? from_gv(raw_->session_id) : std::string_view();
  }
  std::optional<std::string> header(const char* name) const {
    gv_str value{};
    if (raw_->header && raw_->header(raw_, name, &value)) return std::string(from_gv(value));
    return std::nullopt;
  }
  const gv_request_v1* raw() const { return raw_; }

 private:
  bool has_v11() const {
    return raw_->struct_size >= offsetof(gv_request_v1, session_id) + sizeof(gv_str);
  }
  const gv_request_v1* raw_;
  mutable std::optional<json> input_;
};

using Handler = std::function<Response(const Request&)>;

enum class Access { anyone, signed_in, role };

// Declares an operation. input_schema is a JSON Schema of the input object;
// the host adds "additionalProperties": false where it is not set, so
// unknown fields are refused before the handler runs.
struct Operation {
  std::string name{};         // "plugin.verb"
  std::string http_method{};  // empty: WebSocket and in-process only
  std::string http_path{};    // "/api/v1/things/{thingId}"
  json input_schema = json{{"type", "object"}};
  std::string summary{};
  Access access = Access::anyone;
  std::string role{};  // with Access::role
  // Run the handler inside the database's grouped write transaction and
  // answer once it commits (GV_OP_GROUPED_WRITE in abi.h): for short
  // operations whose effect is their writes and events.
  bool grouped_write = false;
  // The handler does not wait (GV_OP_QUICK in abi.h, ABI 1.7): it checks
  // its input and answers, or answers with Response::after_write, touching
  // no store and calling no operation. The host may run it on the network
  // thread that read the request, one thread hand-off less per request;
  // there Database, Blobs and call() throw (a 500) and Cache calls fail as
  // when the cache is down, each refusal logged by the host. Not with
  // grouped_write.
  bool quick = false;
  // For a GET that anyone may call and whose answer depends only on its
  // path and query: what the answer shows, over the path's parameters
  // ("post:{postId}"). The host then keeps 200 answers in memory and sends
  // them again without calling the handler, until a write calls
  // Tx::invalidate("post:42") (see sdk-docs, "Cached answers").
  std::string cache_tag{};
};

namespace detail {

struct Keep;

struct Shared {
  const gv_host_api_v1* api = nullptr;
  gv_host* host = nullptr;
  Keep* keep = nullptr;  // callbacks registered with the host
};

struct StringSink {
  std::string out;
  static void write(void* ctx, const char* data, size_t len) {
    static_cast<StringSink*>(ctx)->out.assign(data, len);
  }
};

inline void answer(const Shared& shared, gv_response* response, const Response& r) {
  std::string dumped;
  if (!r.text && !r.body.is_null())
    dumped = r.body.dump(-1, ' ', false, json::error_handler_t::replace);
  const std::string& body = r.text ? *r.text : dumped;
  for (const auto& [name, value] : r.headers)
    shared.api->respond_header(response, to_gv(name), to_gv(value));  // refused ones are logged
  shared.api->respond_json(response, r.status, to_gv(body));
}

inline void answer_error(const Shared& shared, gv_response* response, int status,
                         std::string_view code, std::string_view message) {
  shared.api->respond_error(response, status, to_gv(code), to_gv(message));
}

// The answer to an Error thrown by a handler, with its Retry-After.
inline void answer_thrown(const Shared& shared, gv_response* response, const Error& err) {
  if (err.retry_after_seconds() > 0) {
    std::string seconds = std::to_string(err.retry_after_seconds());
    shared.api->respond_header(response, to_gv("Retry-After"), to_gv(seconds));
  }
  answer_error(shared, response, err.status(), err.code(), err.what());
}

}  // namespace detail

// Logging, for every layer.
class Log {
 public:
  explicit Log(const detail::Shared* shared) : shared_(shared) {}
  void debug(std::string_view m) const { write(GV_LOG_DEBUG, m); }
  void info(std::string_view m) const { write(GV_LOG_INFO, m); }
  void warn(std::string_view m) const { write(GV_LOG_WARN, m); }
  void error(std::string_view m) const { write(GV_LOG_ERROR, m); }

 private:
  void write(gv_log_level level, std::string_view m) const {
    shared_->api->log(shared_->host, level, to_gv(m));
  }
  const detail::Shared* shared_;
};

// ---- SQL ----

// Blob bytes, wrapped so a blob is never mistaken for text.
struct Blob {
  std::string bytes;
};

// One SQL parameter or column value: null, integer (int64), real, text
// (valid UTF-8) or blob. Integers and bools convert implicitly.
class Value {
 public:
  enum class Type { null = GV_VALUE_NULL, integer, real, text, blob };

  Value() = default;
  Value(std::nullptr_t) {}  // NOLINT
  template <std::integral I>
  Value(I v) : type_(Type::integer), i_(static_cast<int64_t>(v)) {}  // NOLINT
  Value(double v) : type_(Type::real), r_(v) {}                      // NOLINT
  Value(std::string v) : type_(Type::text), s_(std::move(v)) {}      // NOLINT
  Value(std::string_view v) : type_(Type::text), s_(v) {}            // NOLINT
  Value(const char* v) : type_(Type::text), s_(v) {}                 // NOLINT
  Value(Blob b) : type_(Type::blob), s_(std::move(b.bytes)) {}       // NOLINT
  template <class T>
  Value(const std::optional<T>& v) {  // NOLINT: empty is NULL
    if (v) *this = Value(*v);
  }

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::null; }
  // The value as a type; throws std::logic_error when it holds another
  // (a column's type is part of the schema, so this is the plugin's bug).
  int64_t as_int() const { return type_ == Type::integer ? i_ : (bad("an integer"), 0); }
  double as_real() const {
    if (type_ == Type::integer) return static_cast<double>(i_);
    return type_ == Type::real ? r_ : (bad("a real"), 0.0);
  }
  const std::string& as_text() const { return type_ == Type::text ? s_ : (bad("text"), s_); }
  const std::string& as_blob() const { return type_ == Type::blob ? s_ : (bad("a blob"), s_); }
  bool as_bool() const { return as_int() != 0; }
  std::optional<int64_t> opt_int() const {
    return is_null() ? std::nullopt : std::optional<int64_t>(as_int());
  }
  std::optional<std::string> opt_text() const {
    return is_null() ? std::nullopt : std::optional<std::string>(as_text());
  }

  gv_value raw() const {
    gv_value v{};
    v.type = static_cast<int32_t>(type_);
    v.i = i_;
    v.r = r_;
    v.s = to_gv(s_);
    return v;
  }
  static Value from_raw(const gv_value& v) {
    switch (v.type) {
      case GV_VALUE_INT:
        return Value(v.i);
      case GV_VALUE_REAL:
        return Value(v.r);
      case GV_VALUE_TEXT:
        return Value(std::string(from_gv(v.s)));
      case GV_VALUE_BLOB:
        return Value(Blob{std::string(from_gv(v.s))});
      default:
        return Value();
    }
  }

 private:
  [[noreturn]] void bad(const char* wanted) const {
    static const char* names[] = {"null", "an integer", "a real", "text", "a blob"};
    throw std::logic_error(std::string("SQL value is ") + names[static_cast<int>(type_)] +
                           ", not " + wanted);
  }
  Type type_ = Type::null;
  int64_t i_ = 0;
  double r_ = 0;
  std::string s_;
};

// One result row; columns by position or by name.
class Row {
 public:
  Row(std::shared_ptr<const std::vector<std::string>> names, std::vector<Value> values)
      : names_(std::move(names)), values_(std::move(values)) {}
  const Value& operator[](size_t i) const { return values_.at(i); }
  const Value& operator[](std::string_view name) const {
    for (size_t i = 0; i < names_->size(); ++i)
      if ((*names_)[i] == name) return values_[i];
    throw std::logic_error("no column " + std::string(name) + " in the result");
  }
  size_t size() const { return values_.size(); }
  const std::vector<std::string>& columns() const { return *names_; }

 private:
  std::shared_ptr<const std::vector<std::string>> names_;
  std::vector<Value> values_;
};

using Rows = std::vector<Row>;

namespace detail {

// Thrown by Tx when a statement fails; the transaction call turns it into
// the Error its status says, with the host's message.
struct SqlFailure {
  gv_status status;
};

struct ErrorSink {
  std::string message;
  static void write(void* ctx, const char* data, size_t len) {
    static_cast<ErrorSink*>(ctx)->message.assign(data, len);
  }
};

// What a failed store call means to the client.
[[noreturn]] inline void throw_for(gv_status rc, const std::string& what) {
  switch (rc) {
    case GV_ERR_UNAVAILABLE:
      throw Error(503, "unavailable", "the database is busy; retry shortly");
    case GV_ERR_CONFLICT:
      throw Error(409, "conflict", "the request conflicts with existing data");
    case GV_ERR_NOT_FOUND:
      throw Error(404, "not_found", what);
    default:
      throw std::runtime_error(what);  // a 500 with the request id; logged
  }
}

}  // namespace detail

// An open transaction; valid only inside the function given to
// Database::write / read or an event handler, on that thread.
class Tx {
 public:
  Tx(const detail::Shared* shared, gv_txn* txn, bool writable)
      : shared_(shared), txn_(txn), writable_(writable) {}

  // Runs one statement with params bound to $1..$N and returns its rows
  // (SELECT, or INSERT/UPDATE/DELETE ... RETURNING). A failure fails the
  // whole transaction: it throws, and the transaction rolls back.
  Rows query(std::string_view sql, std::initializer_list<Value> params = {}) {
    return query(sql, params.begin(), params.size());
  }
  Rows query(std::string_view sql, const std::vector<Value>& params) {
    return query(sql, params.data(), params.size());
  }
  // The first row, or nullopt.
  std::optional<Row> query_one(std::string_view sql, std::initializer_list<Value> params = {}) {
    Rows rows = query(sql, params);
    if (rows.empty()) return std::nullopt;
    return std::move(rows.front());
  }
  // Runs a statement without rows; returns how many rows it changed.
  int64_t exec(std::string_view sql, std::initializer_list<Value> params = {}) {
    return exec(sql, params.begin(), params.size());
  }
  int64_t exec(std::string_view sql, const std::vector<Value>& params) {
    return exec(sql, params.data(), params.size());
  }

  // Runs one INSERT (or REPLACE) and returns the integer primary key the
  // database gave the row it inserted (an INTEGER PRIMARY KEY column; of
  // several rows, the last), or 0 when it inserted none (ON CONFLICT DO
  // NOTHING, or an upsert that updated). Cheaper than query_one(INSERT ...
  // RETURNING id), which SQLite runs through a temporary table. Another
  // statement fails the transaction like a failed statement. (ABI 1.5.)
  int64_t insert(std::string_view sql, std::initializer_list<Value> params = {}) {
    std::vector<gv_value> p = raw(params.begin(), params.size());
    int64_t id = 0;
    gv_status rc = shared_->api->sql_insert(txn_, to_gv(sql), p.data(), p.size(), &id);
    if (rc != GV_OK) throw detail::SqlFailure{rc};
    return id;
  }

  // Publishes an event in this (write) transaction: stored in the same
  // commit as the transaction's changes, delivered once committed. Returns
  // the event id.
  std::string publish(std::string_view type, std::string_view key, const json& payload,
                      uint32_t schema_version = 1) {
    return publish_json_text(
        type, key, payload.dump(-1, ' ', false, json::error_handler_t::replace), schema_version);
  }
  // publish with the payload already written as a JSON object's text (a
  // plugin that has the text at hand saves building and dumping a json).
  // The host checks it: text that is not a JSON object fails the
  // transaction like a failed statement.
  std::string publish_json_text(std::string_view type, std::string_view key, std::string_view text,
                                uint32_t schema_version = 1) {
    if (!writable_) throw std::logic_error("publish needs a write transaction");
    detail::StringSink id;
    gv_status rc = shared_->api->publish(txn_, to_gv(type), to_gv(key), to_gv(text), schema_version,
                                         &detail::StringSink::write, &id);
    if (rc != GV_OK) throw detail::SqlFailure{rc};
    return id.out;
  }

  // Marks the host's cached answers tagged `tag` stale once this (write)
  // transaction commits; nothing if it rolls back. Call it in every write
  // that changes what an operation with a cache_tag shows: "post:" + id
  // for an operation tagged "post:{postId}".
  void invalidate(std::string_view tag) {
    if (!writable_) throw std::logic_error("invalidate needs a write transaction");
    gv_status rc = shared_->api->txn_invalidate(txn_, to_gv(tag));
    if (rc != GV_OK) throw detail::SqlFailure{rc};
  }

 private:
  struct Collect {
    std::shared_ptr<std::vector<std::string>> names;
    Rows rows;
    static void row(void* ctx, size_t n, const gv_str* names, const gv_value* values) {
      auto* c = static_cast<Collect*>(ctx);
      if (!c->names) {
        c->names = std::make_shared<std::vector<std::string>>();
        for (size_t i = 0; i < n; ++i) c->names->emplace_back(from_gv(names[i]));
      }
      std::vector<Value> v;
      v.reserve(n);
      for (size_t i = 0; i < n; ++i) v.push_back(Value::from_raw(values[i]));
      c->rows.emplace_back(c->names, std::move(v));
    }
  };

  static std::vector<gv_value> raw(const Value* params, size_t n) {
    std::vector<gv_value> out;
    out.reserve(n);
    for (size_t i = 0; i < n; ++i) out.push_back(params[i].raw());
    return out;
  }
  Rows query(std::string_view sql, const Value* params, size_t n) {
    std::vector<gv_value> p = raw(params, n);
    Collect c;
    gv_status rc =
        shared_->api->sql_run(txn_, to_gv(sql), p.data(), p.size(), &Collect::row, &c, nullptr);
    if (rc != GV_OK) throw detail::SqlFailure{rc};
    return std::move(c.rows);
  }
  int64_t exec(std::string_view sql, const Value* params, size_t n) {
    std::vector<gv_value> p = raw(params, n);
    int64_t changes = 0;
    gv_status rc =
        shared_->api->sql_run(txn_, to_gv(sql), p.data(), p.size(), nullptr, nullptr, &changes);
    if (rc != GV_OK) throw detail::SqlFailure{rc};
    return changes;
  }

  const detail::Shared* shared_;
  gv_txn* txn_;
  bool writable_;
};

// The plugin's own SQL database (SQLite now, PostgreSQL later: write SQL
// both accept; see sdk-docs/). Thread-safe.
class Database {
 public:
  explicit Database(const detail::Shared* shared) : shared_(shared) {}

  // Runs f(Tx&) in one write transaction and returns what f returns. It
  // commits when f returns, rolls back when f or a statement throws, and
  // rethrows. A database locked past the busy timeout throws Error 503; a
  // constraint violation Error 409; any other failure a 500.
  template <class F>
  auto write(F&& f) {
    return run(std::forward<F>(f), true);
  }
  // The same in a read-only snapshot: never waits for writers.
  template <class F>
  auto read(F&& f) {
    return run(std::forward<F>(f), false);
  }

 private:
  template <class F>
  auto run(F&& f, bool writable) {
    using R = std::invoke_result_t<F&, Tx&>;
    struct Ctx {
      const detail::Shared* shared;
      F* f;
      bool writable;
      std::exception_ptr error;
      std::optional<gv_status> failed;
      std::conditional_t<std::is_void_v<R>, char, std::optional<R>> result;
    } ctx{shared_, &f, writable, nullptr, std::nullopt, {}};
    auto work = [](void* p, gv_txn* txn) -> gv_status {
      auto* c = static_cast<Ctx*>(p);
      try {
        Tx tx(c->shared, txn, c->writable);
        if constexpr (std::is_void_v<R>)
          (*c->f)(tx);
        else
          c->result.emplace((*c->f)(tx));
        return GV_OK;
      } catch (const detail::SqlFailure& e) {
        c->failed = e.status;
        return e.status;
      } catch (...) {
        c->error = std::current_exception();
        return GV_ERR_INTERNAL;
      }
    };
    detail::ErrorSink sink;
    auto call = writable ? shared_->api->sql_write : shared_->api->sql_read;
    gv_status rc = call(shared_->host, work, &ctx, &detail::ErrorSink::write, &sink);
    if (ctx.error) std::rethrow_exception(ctx.error);
    if (rc != GV_OK) detail::throw_for(rc, "database: " + sink.message);
    if constexpr (!std::is_void_v<R>) return std::move(*ctx.result);
  }

  const detail::Shared* shared_;
};

namespace detail {

// A handler's Response::after_write, handed to the host
// (respond_after_write), which runs it inside the group commit.
struct WriteAnswer {
  const Shared* shared;
  std::shared_ptr<std::function<Response(Tx&)>> work;

  static gv_status hand_over(const Shared* shared, gv_response* response,
                             std::shared_ptr<std::function<Response(Tx&)>> work) {
    auto* w = new WriteAnswer{shared, std::move(work)};
    // The host owns w from here, refused or not (it releases it then).
    return shared->api->respond_after_write(shared->host, response, &run, w, &release);
  }

  static gv_status run(void* ctx, gv_txn* txn, gv_response* response) {
    auto* w = static_cast<WriteAnswer*>(ctx);
    try {
      try {
        Tx tx(w->shared, txn, true);
        Response out = (*w->work)(tx);
        if (out.write) throw std::logic_error("after_write: the write answered with another write");
        answer(*w->shared, response, out);
        return GV_OK;
      } catch (const SqlFailure& failed) {
        throw_for(failed.status, "database: a statement failed");  // the host logs which
      }
    } catch (const Error& err) {
      answer_thrown(*w->shared, response, err);
      return GV_ERR_INVALID;  // its writes are undone; the answer stands
    } catch (const std::exception& err) {
      w->shared->api->log(w->shared->host, GV_LOG_ERROR, to_gv(err.what()));
      return GV_ERR_INTERNAL;
    } catch (...) {
      return GV_ERR_INTERNAL;
    }
  }

  static void release(void* ctx) { delete static_cast<WriteAnswer*>(ctx); }
};

}  // namespace detail

// ---- cache ----

struct ScoredMember {
  std::string member;
  double score = 0;
};

// The plugin's private cache (in process now, Redis later): rebuildable
// data only, never the source of truth. A missing key, an expired one and
// an unreachable backend all read as absent.
class Cache {
 public:
  using Ttl = std::chrono::milliseconds;
  explicit Cache(const detail::Shared* shared) : shared_(shared) {}

  std::optional<std::string> get(std::string_view key) const {
    detail::StringSink sink;
    if (api()->cache_get(host(), to_gv(key), &detail::StringSink::write, &sink) != GV_OK)
      return std::nullopt;
    return sink.out;
  }
  // Returns false when the cache refused or could not store it.
  bool set(std::string_view key, std::string_view value, Ttl ttl = Ttl(0)) const {
    return api()->cache_set(host(), to_gv(key), to_gv(value), ttl.count()) == GV_OK;
  }
  bool del(std::string_view key) const { return api()->cache_delete(host(), to_gv(key)) == GV_OK; }
  // Adds delta and returns the new value; nullopt when the cache failed.
  std::optional<int64_t> incr(std::string_view key, int64_t delta = 1, Ttl ttl = Ttl(0)) const {
    int64_t v = 0;
    if (api()->cache_incr(host(), to_gv(key), delta, ttl.count(), &v) != GV_OK) return std::nullopt;
    return v;
  }
  bool zadd(std::string_view key, std::string_view member, double score) const {
    return api()->cache_zadd(host(), to_gv(key), to_gv(member), score) == GV_OK;
  }
  bool zrem(std::string_view key, std::string_view member) const {
    return api()->cache_zrem(host(), to_gv(key), to_gv(member)) == GV_OK;
  }
  // By rank: 0 is the lowest score (reverse: the highest); stop -1 = last.
  std::vector<ScoredMember> zrange(std::string_view key, int64_t start, int64_t stop,
                                   bool reverse = false) const {
    std::vector<ScoredMember> out;
    api()->cache_zrange(host(), to_gv(key), start, stop, reverse ? 1 : 0, &collect, &out);
    return out;
  }
  // By score, min..max inclusive, at most limit (0: all).
  std::vector<ScoredMember> zrange_by_score(std::string_view key, double min, double max,
                                            size_t limit = 0, bool reverse = false) const {
    std::vector<ScoredMember> out;
    api()->cache_zrange_by_score(host(), to_gv(key), min, max, limit, reverse ? 1 : 0, &collect,
                                 &out);
    return out;
  }
  // Keeps only the `keep` highest-scored members.
  bool ztrim(std::string_view key, size_t keep) const {
    return api()->cache_ztrim(host(), to_gv(key), keep) == GV_OK;
  }

 private:
  static void collect(void* ctx, gv_str member, double score) {
    static_cast<std::vector<ScoredMember>*>(ctx)->push_back({std::string(from_gv(member)), score});
  }
  const gv_host_api_v1* api() const { return shared_->api; }
  gv_host* host() const { return shared_->host; }
  const detail::Shared* shared_;
};

// ---- blobs ----

struct BlobPage {
  std::vector<std::string> keys;
  bool more = false;  // the listing was cut at limit: ask again after keys.back()
};

// The plugin's private blob store (a local folder now, S3 later). Keys are
// '/'-separated paths of UTF-8 segments; "." and ".." segments, empty
// segments and control characters are refused (Error 400).
class Blobs {
 public:
  explicit Blobs(const detail::Shared* shared) : shared_(shared) {}

  // Atomic and durable: readers see the old object or the new one.
  void put(std::string_view key, std::string_view bytes) const {
    check(shared_->api->blob_put(shared_->host, to_gv(key), to_gv(bytes)), key);
  }
  std::optional<std::string> get(std::string_view key) const {
    detail::StringSink sink;
    gv_status rc =
        shared_->api->blob_get(shared_->host, to_gv(key), &detail::StringSink::write, &sink);
    if (rc == GV_ERR_NOT_FOUND) return std::nullopt;
    check(rc, key);
    return sink.out;
  }
  // True when there was an object.
  bool del(std::string_view key) const {
    gv_status rc = shared_->api->blob_delete(shared_->host, to_gv(key));
    if (rc == GV_ERR_NOT_FOUND) return false;
    check(rc, key);
    return true;
  }
  BlobPage list(std::string_view prefix, std::string_view start_after = {},
                size_t limit = 0) const {
    BlobPage page;
    int more = 0;
    check(shared_->api->blob_list(
              shared_->host, to_gv(prefix), to_gv(start_after), limit,
              [](void* ctx, gv_str key) {
                static_cast<BlobPage*>(ctx)->keys.emplace_back(from_gv(key));
              },
              &page, &more),
          prefix);
    page.more = more != 0;
    return page;
  }

 private:
  static void check(gv_status rc, std::string_view key) {
    if (rc == GV_OK) return;
    if (rc == GV_ERR_INVALID)
      throw Error::bad_request("invalid blob key '" + std::string(key) + "'");
    detail::throw_for(rc, "blob store failed for '" + std::string(key) + "'");
  }
  const detail::Shared* shared_;
};

// What the DAL may touch: the plugin's own stores.
class DalContext {
 public:
  DalContext(const detail::Shared* shared, const json* config) : shared_(shared), config_(config) {}
  const json& config() const { return *config_; }
  Log log() const { return Log(shared_); }

  Database db() const { return Database(shared_); }
  Cache cache() const { return Cache(shared_); }
  Blobs blobs() const { return Blobs(shared_); }

  // Declares migration step `step` (1, 2, 3 ... in order; never edit a
  // released one, add a new step). Only in the plugin's constructor; the
  // host applies pending steps before start, each in one transaction.
  void migration(int step, std::string_view sql) const {
    if (shared_->api->add_migration(shared_->host, step, to_gv(sql)) != GV_OK)
      throw std::invalid_argument("host refused migration step " + std::to_string(step));
  }

 private:
  const detail::Shared* shared_;
  const json* config_;
};

// ---- events ----

// One delivered event.
class Event {
 public:
  explicit Event(const gv_event_v1* raw) : raw_(raw) {}
  std::string_view id() const { return from_gv(raw_->id); }
  std::string_view type() const { return from_gv(raw_->type); }
  std::string_view key() const { return from_gv(raw_->key); }
  std::string_view source() const { return from_gv(raw_->source); }
  int64_t time_ms() const { return raw_->time_ms; }
  uint32_t schema_version() const { return raw_->schema_version; }
  uint32_t attempt() const { return raw_->attempt; }  // 1 on first delivery
  const json& payload() const {
    if (!payload_) payload_ = json::parse(from_gv(raw_->payload_json), nullptr, false);
    return *payload_;
  }

 private:
  const gv_event_v1* raw_;
  mutable std::optional<json> payload_;
};

// Runs inside the consumer's write transaction; throw to fail (retried).
using EventHandler = std::function<void(const Event&, Tx&)>;
using Job = std::function<void()>;

namespace detail {

inline void log_error(const Shared* shared, const std::string& m) {
  shared->api->log(shared->host, GV_LOG_ERROR, to_gv(m));
}

struct Subscription {
  const Shared* shared;
  std::string pattern;
  EventHandler handler;
  static gv_status trampoline(void* ctx, const gv_event_v1* raw, gv_txn* txn) {
    auto* s = static_cast<Subscription*>(ctx);
    try {
      Event event(raw);
      Tx tx(s->shared, txn, true);
      s->handler(event, tx);
      return GV_OK;
    } catch (const SqlFailure& e) {
      return e.status;
    } catch (const std::exception& e) {
      s->shared->api->txn_fail(txn, to_gv(e.what()));
      return GV_ERR_INTERNAL;
    } catch (...) {
      return GV_ERR_INTERNAL;
    }
  }
};

struct JobEntry {
  const Shared* shared;
  std::string name, cron;
  Job job;
  static gv_status trampoline(void* ctx) {
    auto* j = static_cast<JobEntry*>(ctx);
    try {
      j->job();
      return GV_OK;
    } catch (const std::exception& e) {
      log_error(j->shared, "job " + j->name + ": " + e.what());
    } catch (...) {
    }
    return GV_ERR_INTERNAL;
  }
};

struct Keep {
  std::deque<Subscription> subscriptions;
  std::deque<JobEntry> jobs;
};

}  // namespace detail

// The result of an in-process call to another operation.
struct CallResult {
  int status = 0;
  json body;
  bool ok() const { return status >= 200 && status < 300; }
};

// What the service layer may touch: other operations, sockets, tokens.
class ServiceContext {
 public:
  ServiceContext(const detail::Shared* shared, const json* config)
      : shared_(shared), config_(config) {}
  const json& config() const { return *config_; }
  Log log() const { return Log(shared_); }

  // Calls another operation in process as the caller of `as`, with that
  // caller's rights. Throws Error(503) when it cannot run now, and
  // std::runtime_error (a 500) when the host refuses the call: nested more
  // than 8 deep, or from a quick handler.
  CallResult call(std::string_view operation, const json& input, const Request& as) const {
    return invoke(operation, input, as.raw());
  }
  // The same as the system, with every right: for jobs and event handlers
  // that act for no user. Never pass a client's input through unchecked.
  CallResult call_as_system(std::string_view operation, const json& input) const {
    return invoke(operation, input, nullptr);
  }

  void push_to_user(std::string_view user_id, std::string_view event, const json& data) const {
    std::string text = data.dump(-1, ' ', false, json::error_handler_t::replace);
    shared_->api->push_to_user(shared_->host, to_gv(user_id), to_gv(event), to_gv(text));
  }
  void push_to_channel(std::string_view channel, std::string_view event, const json& data) const {
    std::string text = data.dump(-1, ' ', false, json::error_handler_t::replace);
    shared_->api->push_to_channel(shared_->host, to_gv(channel), to_gv(event), to_gv(text));
  }
  // Marks the host's cached answers tagged `tag` stale at once, for changes
  // outside the plugin's database; after a database write, use
  // Tx::invalidate, which waits for the commit.
  void invalidate(std::string_view tag) const {
    if (shared_->api->invalidate(shared_->host, to_gv(tag)) != GV_OK)
      throw std::invalid_argument("invalidate: a tag is 1 to 1024 bytes");
  }
  // Returns false when the connection is gone.
  bool join_channel(uint64_t connection_id, std::string_view channel) const {
    return shared_->api->join_channel(shared_->host, connection_id, to_gv(channel)) == GV_OK;
  }
  bool leave_channel(uint64_t connection_id, std::string_view channel) const {
    return shared_->api->leave_channel(shared_->host, connection_id, to_gv(channel)) == GV_OK;
  }

  // Ends a session now: access tokens carrying "sid": session_id stop
  // working on the next call (HTTP and open WebSockets).
  void revoke_session(std::string_view session_id) const {
    if (shared_->api->revoke_tokens(shared_->host, to_gv(session_id), {}, 0) != GV_OK)
      throw std::runtime_error("token revocation failed");
  }
  // Every access token of user_id issued at or before issued_before_s
  // (Unix seconds) stops working.
  void revoke_user_tokens(std::string_view user_id, int64_t issued_before_s) const {
    if (shared_->api->revoke_tokens(shared_->host, {}, to_gv(user_id), issued_before_s) != GV_OK)
      throw std::runtime_error("token revocation failed");
  }

  // Subscribes to events whose type matches pattern ("post.created",
  // "post.*", "*"). Only in the plugin's constructor. handler runs in a
  // write transaction on this plugin's database, in order per key, and its
  // effect happens once: hand the Tx to the DAL.
  void subscribe(std::string_view pattern, EventHandler handler) const {
    auto* entry = &shared_->keep->subscriptions.emplace_back(
        detail::Subscription{shared_, std::string(pattern), std::move(handler)});
    gv_subscription_v1 raw{};
    raw.struct_size = sizeof raw;
    raw.pattern = entry->pattern.c_str();
    raw.handler = &detail::Subscription::trampoline;
    raw.handler_ctx = entry;
    if (shared_->api->subscribe(shared_->host, &raw) != GV_OK)
      throw std::invalid_argument("host refused subscription " + entry->pattern);
  }

  // Runs job every interval (never overlapping itself). Only in the
  // plugin's constructor. The job's name appears as "plugin.name" in
  // /metrics and in the admin operation that runs a job now.
  void every(std::string_view name, std::chrono::milliseconds interval, Job job) const {
    add_job(name, interval.count(), "", std::move(job));
  }
  // Runs job at the times of a 5-field cron expression, UTC.
  void cron(std::string_view name, std::string_view expression, Job job) const {
    add_job(name, 0, expression, std::move(job));
  }
  // Runs fn once after delay (any time after start). Returns false when
  // the host refused (shutting down).
  bool run_later(std::chrono::milliseconds delay, Job fn) const {
    auto* once = new Job(std::move(fn));
    gv_status rc = shared_->api->run_later(
        shared_->host, delay.count(),
        [](void* ctx) -> gv_status {
          std::unique_ptr<Job> job(static_cast<Job*>(ctx));
          try {
            (*job)();
            return GV_OK;
          } catch (...) {
            return GV_ERR_INTERNAL;
          }
        },
        once);
    if (rc != GV_OK) delete once;
    return rc == GV_OK;
  }

  // The configured access-token lifetime (auth.access_token_ttl_s): what
  // sign_access_token gives a token for ttl 0.
  std::chrono::seconds access_token_ttl() const {
    return std::chrono::seconds(shared_->api->access_token_ttl(shared_->host));
  }

  // Signs an access token with the host's key; ttl 0: the configured one.
  std::string sign_access_token(std::string_view user_id, std::string_view roles,
                                int64_t ttl_seconds = 0, const json& extra = json::object()) const {
    std::string claims = extra.dump();
    detail::StringSink sink;
    if (shared_->api->sign_access_token(shared_->host, to_gv(user_id), to_gv(roles), ttl_seconds,
                                        to_gv(claims), &detail::StringSink::write, &sink) != GV_OK)
      throw Error(500, "internal", "token signing failed");
    return sink.out;
  }

 private:
  CallResult invoke(std::string_view operation, const json& input, const gv_request_v1* as) const {
    std::string text = input.dump(-1, ' ', false, json::error_handler_t::replace);
    detail::StringSink sink;
    int status = 0;
    gv_status rc = shared_->api->call_operation(shared_->host, as, to_gv(operation), to_gv(text),
                                                &status, &detail::StringSink::write, &sink);
    if (rc == GV_ERR_NOT_FOUND)
      throw Error(500, "internal", "no operation " + std::string(operation));
    if (rc == GV_ERR_DENIED)  // nested too deep, or from a quick handler: a bug, not a load
      throw std::runtime_error("the host refused the call to " + std::string(operation));
    if (rc != GV_OK)
      throw Error(503, "unavailable", "operation " + std::string(operation) + " is unavailable");
    CallResult result;
    result.status = status;
    result.body = sink.out.empty() ? json() : json::parse(sink.out, nullptr, false);
    return result;
  }

  void add_job(std::string_view name, int64_t interval_ms, std::string_view cron, Job job) const {
    auto* entry = &shared_->keep->jobs.emplace_back(
        detail::JobEntry{shared_, std::string(name), std::string(cron), std::move(job)});
    gv_job_v1 raw{};
    raw.struct_size = sizeof raw;
    raw.name = entry->name.c_str();
    raw.interval_ms = interval_ms;
    raw.cron = cron.empty() ? nullptr : entry->cron.c_str();
    raw.run = &detail::JobEntry::trampoline;
    raw.ctx = entry;
    if (shared_->api->add_job(shared_->host, &raw) != GV_OK)
      throw std::invalid_argument("host refused job " + entry->name);
  }

  const detail::Shared* shared_;
  const json* config_;
};

// What the handlers layer may touch: declaring operations.
class Registry {
 public:
  explicit Registry(const detail::Shared* shared) : shared_(shared) {}

  // Registers an operation; throws std::invalid_argument when the host
  // refuses it (duplicate name or route, bad schema).
  void add(const Operation& op, Handler handler) {
    entries_.push_back(Entry{shared_, std::move(handler), op.input_schema.dump()});
    Entry& e = entries_.back();
    gv_operation_v1 raw{};
    raw.struct_size = sizeof raw;
    raw.name = op.name.c_str();
    raw.http_method = op.http_method.empty() ? nullptr : op.http_method.c_str();
    raw.http_path = op.http_path.empty() ? nullptr : op.http_path.c_str();
    raw.input_schema = e.schema.c_str();
    raw.summary = op.summary.c_str();
    raw.access = op.access == Access::anyone      ? GV_ACCESS_ANYONE
                 : op.access == Access::signed_in ? GV_ACCESS_SIGNED_IN
                                                  : GV_ACCESS_ROLE;
    raw.role = op.role.c_str();
    raw.handler = &Registry::trampoline;
    raw.handler_ctx = &e;
    raw.flags = (op.grouped_write ? GV_OP_GROUPED_WRITE : 0u) | (op.quick ? GV_OP_QUICK : 0u);
    raw.cache_tag = op.cache_tag.empty() ? nullptr : op.cache_tag.c_str();
    if (shared_->api->register_operation(shared_->host, &raw) != GV_OK) {
      entries_.pop_back();
      throw std::invalid_argument("host refused operation " + op.name);
    }
  }

 private:
  struct Entry {
    const detail::Shared* shared;
    Handler handler;
    std::string schema;
  };

  static gv_status trampoline(void* ctx, const gv_request_v1* raw, gv_response* response) {
    auto* e = static_cast<Entry*>(ctx);
    try {
      Request request(raw);
      Response out = e->handler(request);
      if (out.write)
        return detail::WriteAnswer::hand_over(e->shared, response, std::move(out.write));
      detail::answer(*e->shared, response, out);
      return GV_OK;
    } catch (const Error& err) {
      detail::answer_thrown(*e->shared, response, err);
      return GV_OK;
    } catch (const json::exception& err) {
      // Input was schema-checked, so a JSON error here is the plugin's bug.
      e->shared->api->log(e->shared->host, GV_LOG_ERROR, to_gv(err.what()));
      return GV_ERR_INTERNAL;
    } catch (const std::exception& err) {
      e->shared->api->log(e->shared->host, GV_LOG_ERROR, to_gv(err.what()));
      return GV_ERR_INTERNAL;
    } catch (...) {
      return GV_ERR_INTERNAL;
    }
  }

  const detail::Shared* shared_;
  std::deque<Entry> entries_;  // deque: handler_ctx pointers stay valid
};

// Everything a plugin constructor receives. Hand each layer its part.
class PluginContext {
 public:
  PluginContext(const gv_host_api_v1* api, gv_host* host, json config)
      : shared_{api, host, &keep_}, config_(std::move(config)) {}
  PluginContext(const PluginContext&) = delete;
  PluginContext& operator=(const PluginContext&) = delete;

  const json& config() const { return config_; }
  DalContext dal() const { return DalContext(&shared_, &config_); }
  ServiceContext service() const { return ServiceContext(&shared_, &config_); }
  Registry& registry() { return registry_; }
  Log log() const { return Log(&shared_); }

 private:
  detail::Keep keep_;
  detail::Shared shared_;
  json config_;
  Registry registry_{&shared_};
};

// Base of a plugin class. start runs once every plugin is created, in
// dependency order; stop runs in reverse order at shutdown.
class Plugin {
 public:
  virtual ~Plugin() = default;
  virtual void start() {}
  virtual void stop() {}
};

namespace detail {

template <class P>
struct Holder {
  std::unique_ptr<PluginContext> context;
  std::unique_ptr<P> plugin;
};

template <class P>
gv_status create(const gv_host_api_v1* api, gv_host* host, gv_str config, void** state) {
  try {
    auto holder = std::make_unique<Holder<P>>();
    std::string_view text = from_gv(config);
    holder->context = std::make_unique<PluginContext>(
        api, host, text.empty() ? json::object() : json::parse(text));
    holder->plugin = std::make_unique<P>(*holder->context);
    *state = holder.release();
    return GV_OK;
  } catch (const std::exception& e) {
    api->log(host, GV_LOG_ERROR, to_gv(e.what()));
    return GV_ERR_INTERNAL;
  } catch (...) {
    return GV_ERR_INTERNAL;
  }
}

template <class P>
gv_status start(void* state) {
  auto* holder = static_cast<Holder<P>*>(state);
  try {
    holder->plugin->start();
    return GV_OK;
  } catch (const std::exception& e) {
    holder->context->log().error(e.what());
    return GV_ERR_INTERNAL;
  } catch (...) {
    return GV_ERR_INTERNAL;
  }
}

template <class P>
void stop(void* state) {
  auto* holder = static_cast<Holder<P>*>(state);
  try {
    holder->plugin->stop();
  } catch (...) {  // a failing stop must not take the host down
  }
}

template <class P>
void destroy(void* state) {
  delete static_cast<Holder<P>*>(state);
}

}  // namespace detail
}  // namespace grapevine

// Exports plugin class P. name, version, depends (comma-separated plugin
// names, "" for none) and config_schema (a JSON Schema of the plugin's
// config section, as a string literal) go into the manifest the host reads
// without running plugin code.
#define GRAPEVINE_PLUGIN(P, name, version, depends, config_schema)                             \
  extern "C" {                                                                                 \
  __attribute__((section(GV_MANIFEST_SECTION), used)) const char grapevine_plugin_manifest[] = \
      GV_MANIFEST(name, version, depends, config_schema);                                      \
  GV_EXPORT const gv_plugin_v1* grapevine_plugin_entry_v1(void) {                              \
    static const gv_plugin_v1 descriptor = {GV_PLUGIN_MAGIC,                                   \
                                            sizeof(gv_plugin_v1),                              \
                                            GV_ABI_MAJOR,                                      \
                                            GV_ABI_MINOR,                                      \
                                            name,                                              \
                                            version,                                           \
                                            &::grapevine::detail::create<P>,                   \
                                            &::grapevine::detail::start<P>,                    \
                                            &::grapevine::detail::stop<P>,                     \
                                            &::grapevine::detail::destroy<P>};                 \
    return &descriptor;                                                                        \
  }                                                                                            \
  }

#endif  // GRAPEVINE_SDK_HPP
