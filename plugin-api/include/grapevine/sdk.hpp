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

#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

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

 private:
  int status_;
  std::string code_;
};

// What a handler returns: a status and a JSON body.
struct Response {
  Response(json body_in = json::object(), int status_in = 200)  // NOLINT
      : status(status_in), body(std::move(body_in)) {}
  static Response created(json b) { return {std::move(b), 201}; }
  static Response no_content() { return {json(nullptr), 204}; }
  int status;
  json body;
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
  std::optional<std::string> header(const char* name) const {
    gv_str value{};
    if (raw_->header && raw_->header(raw_, name, &value)) return std::string(from_gv(value));
    return std::nullopt;
  }
  const gv_request_v1* raw() const { return raw_; }

 private:
  const gv_request_v1* raw_;
  mutable std::optional<json> input_;
};

using Handler = std::function<Response(const Request&)>;

enum class Access { anyone, signed_in, role };

// Declares an operation. input_schema is a JSON Schema of the input object;
// the host adds "additionalProperties": false where it is not set, so
// unknown fields are refused before the handler runs.
struct Operation {
  std::string name;         // "plugin.verb"
  std::string http_method;  // empty: WebSocket and in-process only
  std::string http_path;    // "/api/v1/things/{thingId}"
  json input_schema = json{{"type", "object"}};
  std::string summary;
  Access access = Access::anyone;
  std::string role;  // with Access::role
};

namespace detail {

struct Shared {
  const gv_host_api_v1* api = nullptr;
  gv_host* host = nullptr;
};

struct StringSink {
  std::string out;
  static void write(void* ctx, const char* data, size_t len) {
    static_cast<StringSink*>(ctx)->out.assign(data, len);
  }
};

inline void answer(const Shared& shared, gv_response* response, const Response& r) {
  std::string body = r.body.is_null() ? std::string()
                                      : r.body.dump(-1, ' ', false, json::error_handler_t::replace);
  shared.api->respond_json(response, r.status, to_gv(body));
}

inline void answer_error(const Shared& shared, gv_response* response, int status,
                         std::string_view code, std::string_view message) {
  shared.api->respond_error(response, status, to_gv(code), to_gv(message));
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

// What the DAL may touch: the plugin's own stores. The SQL database, cache
// and blob store arrive with ABI 1.1; until then a DAL keeps its state in
// memory and gets its configuration and a log.
class DalContext {
 public:
  DalContext(const detail::Shared* shared, const json* config) : shared_(shared), config_(config) {}
  const json& config() const { return *config_; }
  Log log() const { return Log(shared_); }

 private:
  const detail::Shared* shared_;
  const json* config_;
};

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
  // caller's rights. Throws Error(503) when it cannot run now.
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
  // Returns false when the connection is gone.
  bool join_channel(uint64_t connection_id, std::string_view channel) const {
    return shared_->api->join_channel(shared_->host, connection_id, to_gv(channel)) == GV_OK;
  }
  bool leave_channel(uint64_t connection_id, std::string_view channel) const {
    return shared_->api->leave_channel(shared_->host, connection_id, to_gv(channel)) == GV_OK;
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
    if (rc != GV_OK)
      throw Error(503, "unavailable", "operation " + std::string(operation) + " is unavailable");
    CallResult result;
    result.status = status;
    result.body = sink.out.empty() ? json() : json::parse(sink.out, nullptr, false);
    return result;
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
      detail::answer(*e->shared, response, e->handler(request));
      return GV_OK;
    } catch (const Error& err) {
      detail::answer_error(*e->shared, response, err.status(), err.code(), err.what());
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
      : shared_{api, host}, config_(std::move(config)) {}
  PluginContext(const PluginContext&) = delete;
  PluginContext& operator=(const PluginContext&) = delete;

  const json& config() const { return config_; }
  DalContext dal() const { return DalContext(&shared_, &config_); }
  ServiceContext service() const { return ServiceContext(&shared_, &config_); }
  Registry& registry() { return registry_; }
  Log log() const { return Log(&shared_); }

 private:
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
