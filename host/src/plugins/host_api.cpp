#include "plugins/host_api.hpp"

#include <strings.h>
#include <algorithm>
#include <cctype>
#include <cstring>

#include "core/blocking.hpp"
#include "core/call.hpp"
#include "core/json_text.hpp"
#include "core/log.hpp"
#include "core/request_id.hpp"
#include "core/scheduler.hpp"
#include "events/events.hpp"
#include "stores/blob_store.hpp"
#include "stores/cache.hpp"

namespace gv::plugins {
namespace {

// The grouped write a GV_OP_GROUPED_WRITE handler runs in, on this thread
// while the handler runs; its sql_write and sql_read calls become parts of
// that transaction.
struct Ambient {
  gv_host* host = nullptr;
  stores::SqlTransaction* tx = nullptr;
  int published = 0;  // events published by its parts
};
thread_local Ambient* t_ambient = nullptr;

// Sets t_ambient for a scope, and restores it after, thrown or not.
class AmbientScope {
 public:
  explicit AmbientScope(Ambient* a) : outer_(t_ambient) { t_ambient = a; }
  ~AmbientScope() { t_ambient = outer_; }
  AmbientScope(const AmbientScope&) = delete;
  AmbientScope& operator=(const AmbientScope&) = delete;

 private:
  Ambient* outer_;
};

// Limits of respond_header (abi.h).
constexpr size_t kMaxHeaderName = 64;
constexpr size_t kMaxHeaderValue = 1024;
constexpr size_t kMaxHeaders = 16;

// Plugins call these from C, Rust or Zig: no exception may leave them.
template <class F>
gv_status shield(F&& f) noexcept {
  try {
    return f();
  } catch (...) {
    return GV_ERR_INTERNAL;
  }
}

template <class F>
void shield_void(F&& f) noexcept {
  try {
    f();
  } catch (...) {
  }
}

std::string str(gv_str s) { return s.data ? std::string(s.data, s.len) : std::string(); }

// A quick handler (GV_OP_QUICK) runs on a network thread, which must not
// wait (NoWaitRegion): the calls that may wait are refused there, and
// logged, so that the plugin's author learns which one.
bool refused_while_quick(const gv_host* host, const char* call) {
  if (!t_must_not_wait) return false;
  log::error("a quick operation's handler called what may wait; refused (GV_ERR_DENIED)",
             {{"plugin", host ? host->plugin : ""}, {"call", call}});
  return true;
}

void api_log(gv_host* host, gv_log_level level, gv_str message) {
  shield_void([&] {
    log::Level l = level == GV_LOG_DEBUG   ? log::Level::debug
                   : level == GV_LOG_WARN  ? log::Level::warn
                   : level == GV_LOG_ERROR ? log::Level::error
                                           : log::Level::info;
    log::write(l, str(message), {{"plugin", host ? host->plugin : ""}});
  });
}

// What a plugin's transaction function returning rc means for its
// writes: kept on GV_OK; else undone, for the statement that failed first,
// the plugin's own word (txn_fail), or otherwise.
stores::SqlStatus work_status(gv_status rc, const gv_txn& txn, const char* otherwise) {
  if (rc == GV_OK) return stores::SqlStatus::success();
  if (!txn.first_failure.ok()) return txn.first_failure;
  return stores::SqlStatus::failure(stores::SqlCode::invalid,
                                    txn.plugin_error.empty() ? otherwise : txn.plugin_error);
}

// Wakes the relay for events a committed write published.
void relay_published(const gv_host* host, int published) {
  if (published > 0 && host->services->events) host->services->events->notify_published();
}

// The answer to a grouped write whose work never began within the busy
// timeout, or whose group's commit failed: nothing it did is kept,
// whatever it answered.
Reply commit_failed(const gv_host* host, const std::string& request_id,
                    const stores::SqlStatus& s) {
  log::warn("grouped write failed",
            {{"plugin", host->plugin}, {"request_id", request_id}, {"error", s.message}});
  return error_reply(503, "unavailable", "the write could not be committed; retry shortly",
                     request_id);
}

// A write a handler answered with (respond_after_write, ABI 1.6): the
// plugin's work runs as one part of the plugin's grouped write and gives
// the answer, which goes out once the group has committed.
class PluginWrite final : public AfterWrite, public std::enable_shared_from_this<PluginWrite> {
 public:
  using Work = gv_status (*)(void* ctx, gv_txn* txn, gv_response* r);
  PluginWrite(gv_host* host, Work work, void* ctx, void (*release)(void*), std::string request_id)
      : host_(host),
        work_(work),
        ctx_(ctx),
        release_(release),
        request_id_(std::move(request_id)) {}
  ~PluginWrite() override {
    if (release_) release_(ctx_);
  }
  PluginWrite(const PluginWrite&) = delete;
  PluginWrite& operator=(const PluginWrite&) = delete;

  // What the work did.
  struct Outcome {
    bool ran = false;
    gv_status rc = GV_ERR_INTERNAL;
    stores::SqlStatus status;  // failed: its writes are to be undone
    gv_response response;
    int published = 0;  // events, its own and those of write()s it made
  };

  // Runs the work on tx; on failure the caller undoes what it wrote (the
  // savepoint of its group member, or of part()).
  stores::SqlStatus attempt(stores::SqlTransaction& tx, Outcome* out) {
    gv_txn txn;
    txn.host = host_;
    txn.writable = true;
    txn.tx = &tx;
    out->response.request_id = request_id_;
    Ambient ambient;  // a write() the work makes is a part of this one
    ambient.host = host_;
    ambient.tx = &tx;
    {
      AmbientScope scope(&ambient);
      try {
        out->rc = work_(ctx_, &txn, &out->response);
      } catch (...) {  // a plugin that let an exception escape the ABI
        out->rc = GV_ERR_INTERNAL;
      }
    }
    out->ran = true;
    out->published = txn.published + ambient.published;
    out->status = work_status(out->rc, txn, "the plugin's write failed");
    return out->status;
  }

  // The answer once the work ran: its own, or what its failure means.
  Reply answer(Outcome& out) const {
    gv_response& r = out.response;
    if (out.status.ok() && r.answered)
      return Reply{r.status, std::move(r.body), std::move(r.headers)};
    // The plugin's own refusal (a 404, say), its writes undone.
    if (!out.status.ok() && out.rc != GV_OK && r.answered && r.status >= 400)
      return Reply{r.status, std::move(r.body), std::move(r.headers)};
    if (out.status.code == stores::SqlCode::busy)
      return error_reply(503, "unavailable", "the database is busy; retry shortly", request_id_);
    if (out.status.code == stores::SqlCode::constraint)
      return error_reply(409, "conflict", "the request conflicts with existing data", request_id_);
    log::error("operation failed",
               {{"plugin", host_->plugin},
                {"request_id", request_id_},
                {"code", static_cast<int>(out.rc)},
                {"answered", r.answered},
                {"error", out.status.ok() ? "the write gave no answer" : out.status.message}});
    return error_reply(500, "internal",
                       "the operation failed; quote the request id when reporting it", request_id_);
  }

  // Runs the work as a part of tx (a grouped handler's transaction), in a
  // savepoint of its own; the events it published are added to *published.
  Reply part(stores::SqlTransaction& tx, int* published) {
    Outcome out;
    stores::SqlStatus kept =
        tx.nested([&](stores::SqlTransaction& inner) { return attempt(inner, &out); });
    if (kept.ok()) *published += out.published;
    if (!kept.ok() && out.status.ok()) out.status = kept;  // its savepoint could not be released
    return answer(out);
  }

  void run(bool wait, std::function<void(Reply)> done) override {
    if (Ambient* a = t_ambient; wait && a && a->host == host_)
      return done(part(*a->tx, &a->published));  // from inside this plugin's grouped write
    // A group member of its own, whose savepoint undoes a failed work. The
    // work holds this object until it has run; the caller drops its pointer.
    auto out = std::make_shared<Outcome>();
    auto work = [self = shared_from_this(), out](stores::SqlTransaction& tx) {
      return self->attempt(tx, out.get());
    };
    auto committed = [self = shared_from_this(), out, done = std::move(done)](stores::SqlStatus s) {
      if (out->ran && !out->status.ok()) return done(self->answer(*out));  // undone, answered
      if (!s.ok()) return done(commit_failed(self->host_, self->request_id_, s));
      relay_published(self->host_, out->published);
      done(self->answer(*out));
    };
    if (wait)
      committed(host_->db->write(work));
    else
      host_->db->write_detached(std::move(work), std::move(committed));
  }

 private:
  gv_host* host_;
  Work work_;
  void* ctx_;
  void (*release_)(void*);
  std::string request_id_;
};

// Runs a GV_OP_GROUPED_WRITE handler (run) as a work of the plugin's
// grouped write, and its reply to done once the group has committed.
void run_grouped(gv_host* host, const std::string& request_id, std::function<Reply()> run,
                 std::function<void(Reply)> done) {
  if (!host->db) return done(run());  // no database: nothing to group
  struct State {
    Ambient ambient;
    std::optional<Reply> reply;
  };
  auto state = std::make_shared<State>();
  state->ambient.host = host;
  host->db->write_detached(
      [state, run = std::move(run)](stores::SqlTransaction& tx) {
        state->ambient.tx = &tx;  // reached only through t_ambient, set meanwhile
        AmbientScope scope(&state->ambient);
        state->reply = run();
        if (auto write = std::move(state->reply->after_write)) {
          // Answered with a write (respond_after_write): a part of this group.
          state->reply = static_cast<PluginWrite&>(*write).part(tx, &state->ambient.published);
        }
        return stores::SqlStatus::success();  // its parts were kept or undone each
      },
      [host, state, request_id, done = std::move(done)](stores::SqlStatus s) {
        // Its reply may describe what was not kept.
        if (!s.ok() || !state->reply) return done(commit_failed(host, request_id, s));
        relay_published(host, state->ambient.published);
        done(std::move(*state->reply));
      });
}

gv_status api_register(gv_host* host, const gv_operation_v1* op) {
  return shield([&]() -> gv_status {
    // A plugin built for an older 1.x minor passes a shorter struct; read
    // what it has into a zeroed one (members it lacks stay null).
    if (!host || !op || op->struct_size < kOperationV10Size) return GV_ERR_INVALID;
    gv_operation_v1 copy{};
    std::memcpy(&copy, op, std::min<size_t>(op->struct_size, sizeof copy));
    // A flag is read only from a plugin built for an ABI that defines it:
    // to one built before 1.7, the value 2 (GV_OP_QUICK) meant nothing.
    if (host->abi_minor < 7) copy.flags &= ~GV_OP_QUICK;
    op = &copy;
    if (!host->creating) {
      log::error("operations can only be registered while a plugin is created",
                 {{"plugin", host->plugin}});
      return GV_ERR_DENIED;
    }
    std::string error;
    if (!host->services->registry->add(host->plugin, *op, &error)) {
      log::error(error, {{"plugin", host->plugin}});
      return GV_ERR_INVALID;
    }
    if (op->flags & GV_OP_GROUPED_WRITE)
      host->services->registry->find_mutable(op->name)->grouped =
          [host](const std::string& request_id, std::function<Reply()> run,
                 std::function<void(Reply)> done) {
            run_grouped(host, request_id, std::move(run), std::move(done));
          };
    return GV_OK;
  });
}

void api_respond_json(gv_response* r, int status, gv_str json) {
  shield_void([&] {
    // Unanswered (a 500), or answered with a write already.
    if (!r || status < 200 || status > 599 || r->after_write) return;
    r->status = status;
    r->body = str(json);
    r->answered = true;
  });
}

void api_respond_error(gv_response* r, int status, gv_str code, gv_str message) {
  shield_void([&] {
    if (!r || status < 400 || status > 599 || r->after_write) return;
    r->status = status;
    r->body = error_body(str(code), str(message), r->request_id);
    r->answered = true;
  });
}

gv_status api_respond_after_write(gv_host* host, gv_response* r,
                                  gv_status (*work)(void*, gv_txn*, gv_response*), void* ctx,
                                  void (*release)(void*)) {
  return shield([&]() -> gv_status {
    // Released here when refused: the plugin hands ctx over either way.
    auto write = std::make_shared<PluginWrite>(host, work, ctx, release,
                                               r ? std::string(r->request_id) : std::string());
    if (!host || !r || !work || r->answered || r->after_write) return GV_ERR_INVALID;
    if (!host->db) {
      log::error("respond_after_write: the plugin has no database (declare a migration step)",
                 {{"plugin", host->plugin}});
      return GV_ERR_INVALID;
    }
    r->after_write = std::move(write);
    return GV_OK;
  });
}

// Headers the host writes itself; a plugin cannot set or repeat them.
bool host_owned_header(std::string_view name) {
  static constexpr const char* kOwned[] = {
      "content-type", "content-length", "connection", "transfer-encoding", "server",
      "date",         "x-request-id",   "upgrade",    "keep-alive",        "trailer",
      "x-cache"};
  const std::string n(name);
  return std::any_of(std::begin(kOwned), std::end(kOwned),
                     [&](const char* owned) { return strcasecmp(n.c_str(), owned) == 0; });
}

bool header_token(std::string_view name) {
  if (name.empty() || name.size() > kMaxHeaderName) return false;
  for (unsigned char c : name)
    if (!(std::isalnum(c) || std::strchr("!#$%&'*+-.^_`|~", c))) return false;
  return true;
}

bool header_value(std::string_view value) {
  if (value.size() > kMaxHeaderValue) return false;
  for (unsigned char c : value)
    if ((c < 0x20 && c != '\t') || c == 0x7f) return false;
  return true;
}

gv_status api_respond_header(gv_response* r, gv_str name_in, gv_str value_in) {
  return shield([&]() -> gv_status {
    if (!r) return GV_ERR_INVALID;
    const std::string name = str(name_in), value = str(value_in);
    const char* problem = nullptr;
    if (!header_token(name))
      problem = "not a header name (1..64 token characters)";
    else if (host_owned_header(name))
      problem = "a header the host sets itself";
    else if (!header_value(value))
      problem = "a value with control characters or over 1024 bytes";
    else if (r->headers.size() >= kMaxHeaders)
      problem = "more than 16 headers";
    if (problem) {
      log::error("a plugin's response header was refused",
                 {{"header", std::string(name.substr(0, kMaxHeaderName))},
                  {"problem", problem},
                  {"request_id", std::string(r->request_id)}});
      return GV_ERR_INVALID;
    }
    r->headers.emplace_back(name, value);
    return GV_OK;
  });
}

gv_status api_call(gv_host* host, const gv_request_v1* caller, gv_str operation, gv_str input_json,
                   int* status, gv_sink_fn sink, void* sink_ctx) {
  return shield([&]() -> gv_status {
    if (!host || !status) return GV_ERR_INVALID;
    if (refused_while_quick(host, "call_operation")) return GV_ERR_DENIED;
    const Operation* op = host->services->registry->find(str(operation));
    if (!op) return GV_ERR_NOT_FOUND;
    Call call;
    call.op = op;
    const Call* parent = caller ? static_cast<const Call*>(caller->host_data) : nullptr;
    if (parent) {
      call.request_id = parent->request_id;
      call.identity = parent->identity;
      call.connection_id = parent->connection_id;
      call.client_address = parent->client_address;
      call.system = parent->system;
      call.depth = parent->depth + 1;
    } else {
      call.request_id = new_request_id();
      call.system = true;
    }
    if (call.depth > Dispatcher::kMaxCallDepth) return GV_ERR_DENIED;
    call.body = str(input_json);
    if (call.body.empty()) call.body = "{}";
    Reply reply = host->services->dispatcher->run(call);
    *status = reply.status;
    if (sink) sink(sink_ctx, reply.body.data(), reply.body.size());
    return GV_OK;
  });
}

gv_status api_push_user(gv_host* host, gv_str user, gv_str event, gv_str data) {
  return shield([&]() -> gv_status {
    if (!host || (data.len && !is_json(std::string_view(data.data, data.len))))
      return GV_ERR_INVALID;
    host->services->hub->push_to_user(str(user), str(event), str(data));
    return GV_OK;
  });
}

gv_status api_push_channel(gv_host* host, gv_str channel, gv_str event, gv_str data) {
  return shield([&]() -> gv_status {
    if (!host || (data.len && !is_json(std::string_view(data.data, data.len))))
      return GV_ERR_INVALID;
    host->services->hub->push_to_channel(str(channel), str(event), str(data));
    return GV_OK;
  });
}

gv_status api_join(gv_host* host, uint64_t connection, gv_str channel) {
  return shield([&]() -> gv_status {
    if (!host || channel.len == 0) return GV_ERR_INVALID;
    return host->services->hub->join(connection, str(channel)) ? GV_OK : GV_ERR_NOT_FOUND;
  });
}

gv_status api_leave(gv_host* host, uint64_t connection, gv_str channel) {
  return shield([&]() -> gv_status {
    if (!host) return GV_ERR_INVALID;
    return host->services->hub->leave(connection, str(channel)) ? GV_OK : GV_ERR_NOT_FOUND;
  });
}

gv_status api_sign(gv_host* host, gv_str user_id, gv_str roles, int64_t ttl, gv_str extra_claims,
                   gv_sink_fn sink, void* sink_ctx) {
  return shield([&]() -> gv_status {
    if (!host || !sink || user_id.len == 0 || ttl < 0) return GV_ERR_INVALID;
    const auth::KeySet* keys = host->services->keys;
    if (!keys || !keys->can_sign()) return GV_ERR_UNAVAILABLE;
    nlohmann::json claims = nlohmann::json::object();
    if (extra_claims.len > 0) {
      claims = nlohmann::json::parse(str(extra_claims), nullptr, false);
      if (!claims.is_object()) return GV_ERR_INVALID;
    }
    claims["sub"] = str(user_id);
    nlohmann::json role_list = nlohmann::json::array();
    std::string all = str(roles);
    for (size_t start = 0; start < all.size();) {
      size_t comma = all.find(',', start);
      if (comma == std::string::npos) comma = all.size();
      if (comma > start) role_list.push_back(all.substr(start, comma - start));
      start = comma + 1;
    }
    claims["roles"] = role_list;
    std::string token;
    if (!keys->sign(std::move(claims), &token, std::chrono::seconds(ttl))) return GV_ERR_INTERNAL;
    sink(sink_ctx, token.data(), token.size());
    return GV_OK;
  });
}

// ---- ABI 1.1: SQL --------------------------------------------------------

using stores::SqlCode;
using stores::SqlStatus;
using stores::SqlValue;

gv_status to_gv_status(SqlCode code) {
  switch (code) {
    case SqlCode::ok:
      return GV_OK;
    case SqlCode::busy:
      return GV_ERR_UNAVAILABLE;
    case SqlCode::constraint:
      return GV_ERR_CONFLICT;
    case SqlCode::invalid:
      return GV_ERR_INVALID;
    case SqlCode::io:
      return GV_ERR_INTERNAL;
  }
  return GV_ERR_INTERNAL;
}

void sink_text(gv_sink_fn sink, void* ctx, const std::string& text) {
  if (sink) sink(ctx, text.data(), text.size());
}

gv_status api_add_migration(gv_host* host, int32_t step, gv_str sql) {
  return shield([&]() -> gv_status {
    if (!host || !host->creating || sql.len == 0) return GV_ERR_INVALID;
    if (step != static_cast<int32_t>(host->migrations.size()) + 1) {
      log::error("migration steps must be added as 1, 2, 3 ...",
                 {{"plugin", host->plugin}, {"step", step}});
      return GV_ERR_INVALID;
    }
    host->migrations.push_back({step, str(sql)});
    return GV_OK;
  });
}

// Runs a plugin's transaction function; returns what the caller of
// sql_write/sql_read gets.
gv_status run_txn(gv_host* host, bool writable, gv_txn_fn work, void* ctx, gv_sink_fn error_sink,
                  void* error_ctx) {
  if (!host || !work) return GV_ERR_INVALID;
  if (refused_while_quick(host, writable ? "sql_write" : "sql_read")) return GV_ERR_DENIED;
  if (!host->db) {
    sink_text(error_sink, error_ctx,
              "plugin " + host->plugin + " has no database: declare a migration step first");
    return GV_ERR_INVALID;
  }
  gv_txn txn;
  txn.host = host;
  txn.writable = writable;
  gv_status work_rc = GV_OK;
  auto body = [&](stores::SqlTransaction& tx) -> SqlStatus {
    txn.tx = &tx;
    txn.published = 0;
    txn.first_failure = SqlStatus::success();
    work_rc = work(ctx, &txn);
    txn.tx = nullptr;
    return work_status(work_rc, txn, "the plugin's transaction function failed");
  };
  SqlStatus st;
  if (Ambient* a = t_ambient; a && a->host == host) {
    // A part of the handler's grouped write: kept or undone alone, like a
    // write() of its own. Inside it, another write() is nested as usual.
    {
      AmbientScope outside(nullptr);
      st = writable ? a->tx->nested(body) : a->tx->read_only(body);
    }
    if (st.ok()) {
      a->published += txn.published;  // the relay is woken after the commit
      return GV_OK;
    }
  } else {
    st = writable ? host->db->write(body) : host->db->read(body);
  }
  if (st.ok()) {
    relay_published(host, txn.published);
    return GV_OK;
  }
  sink_text(error_sink, error_ctx, st.message);
  // The plugin's own failure (an exception it keeps to rethrow) wins over
  // the generic status; a store failure says what happened.
  if (work_rc != GV_OK && txn.first_failure.ok() && st.code == SqlCode::invalid) return work_rc;
  return to_gv_status(st.code);
}

gv_status api_sql_write(gv_host* host, gv_txn_fn work, void* ctx, gv_sink_fn error_sink,
                        void* error_ctx) {
  return shield([&] { return run_txn(host, true, work, ctx, error_sink, error_ctx); });
}

gv_status api_sql_read(gv_host* host, gv_txn_fn work, void* ctx, gv_sink_fn error_sink,
                       void* error_ctx) {
  return shield([&] { return run_txn(host, false, work, ctx, error_sink, error_ctx); });
}

// A statement's parameters as the store takes them; false for an unknown
// value type.
bool sql_values(const gv_value* params, size_t nparams, std::vector<SqlValue>* values) {
  values->reserve(nparams);
  for (size_t i = 0; i < nparams; ++i) {
    const gv_value& v = params[i];
    switch (v.type) {
      case GV_VALUE_NULL:
        values->emplace_back(nullptr);
        break;
      case GV_VALUE_INT:
        values->emplace_back(v.i);
        break;
      case GV_VALUE_REAL:
        values->emplace_back(v.r);
        break;
      case GV_VALUE_TEXT:
        values->emplace_back(str(v.s));
        break;
      case GV_VALUE_BLOB:
        values->emplace_back(stores::SqlBlob(str(v.s)));
        break;
      default:
        return false;
    }
  }
  return true;
}

// Keeps a statement's failure as the transaction's first, and gives its
// ABI status.
gv_status txn_failed(gv_txn* txn, const SqlStatus& st) {
  if (txn->first_failure.ok()) txn->first_failure = st;
  return to_gv_status(st.code);
}

gv_status api_sql_run(gv_txn* txn, gv_str sql, const gv_value* params, size_t nparams,
                      gv_row_fn on_row, void* row_ctx, int64_t* changes) {
  return shield([&]() -> gv_status {
    if (!txn || !txn->tx || (nparams && !params)) return GV_ERR_INVALID;
    std::vector<SqlValue> values;
    if (!sql_values(params, nparams, &values)) return GV_ERR_INVALID;
    std::string_view text(sql.data ? sql.data : "", sql.len);
    if (!on_row) {
      auto r = txn->tx->exec(text, values);
      if (!r.ok()) return txn_failed(txn, r.status);
      if (changes) *changes = r.value;
      return GV_OK;
    }
    auto r = txn->tx->query(text, values);
    if (!r.ok()) return txn_failed(txn, r.status);
    const stores::SqlRows& rows = r.value;
    std::vector<gv_str> names;
    for (const auto& c : rows.columns) names.push_back({c.data(), c.size()});
    std::vector<gv_value> out(rows.columns.size());
    for (const auto& row : rows.rows) {
      for (size_t i = 0; i < row.size() && i < out.size(); ++i) {
        gv_value& o = out[i];
        o = gv_value{};
        std::visit(
            [&o](const auto& x) {
              using T = std::decay_t<decltype(x)>;
              if constexpr (std::is_same_v<T, int64_t>) {
                o.type = GV_VALUE_INT;
                o.i = x;
              } else if constexpr (std::is_same_v<T, double>) {
                o.type = GV_VALUE_REAL;
                o.r = x;
              } else if constexpr (std::is_same_v<T, std::string>) {
                o.type = GV_VALUE_TEXT;
                o.s = {x.data(), x.size()};
              } else if constexpr (std::is_same_v<T, stores::SqlBlob>) {
                o.type = GV_VALUE_BLOB;
                o.s = {x.bytes.data(), x.bytes.size()};
              } else {
                o.type = GV_VALUE_NULL;
              }
            },
            row[i]);
      }
      on_row(row_ctx, out.size(), names.data(), out.data());
    }
    if (changes) *changes = static_cast<int64_t>(rows.rows.size());
    return GV_OK;
  });
}

// ABI 1.5: one INSERT, and the integer key it gave the row.
gv_status api_sql_insert(gv_txn* txn, gv_str sql, const gv_value* params, size_t nparams,
                         int64_t* id) {
  return shield([&]() -> gv_status {
    if (!txn || !txn->tx || (nparams && !params)) return GV_ERR_INVALID;
    std::vector<SqlValue> values;
    if (!sql_values(params, nparams, &values)) return GV_ERR_INVALID;
    auto r = txn->tx->insert(std::string_view(sql.data ? sql.data : "", sql.len), values);
    if (!r.ok()) return txn_failed(txn, r.status);
    if (id) *id = r.value;
    return GV_OK;
  });
}

// ---- ABI 1.1: events -----------------------------------------------------

gv_status api_publish(gv_txn* txn, gv_str type, gv_str key, gv_str payload, uint32_t schema_version,
                      gv_sink_fn id_sink, void* id_ctx) {
  return shield([&]() -> gv_status {
    if (!txn || !txn->tx || !txn->writable) return GV_ERR_INVALID;
    std::string id;
    SqlStatus st =
        events::EventEngine::publish(*txn->tx, txn->host->plugin, str(type), str(key), str(payload),
                                     static_cast<int>(schema_version), &id);
    if (!st.ok()) {
      log::warn("publish refused", {{"plugin", txn->host->plugin}, {"reason", st.message}});
      if (st.code != SqlCode::invalid && txn->first_failure.ok()) txn->first_failure = st;
      return to_gv_status(st.code);
    }
    ++txn->published;
    sink_text(id_sink, id_ctx, id);
    return GV_OK;
  });
}

gv_status api_subscribe(gv_host* host, const gv_subscription_v1* sub) {
  return shield([&]() -> gv_status {
    if (!host || !sub || sub->struct_size < sizeof(gv_subscription_v1) || !sub->pattern ||
        !sub->handler)
      return GV_ERR_INVALID;
    if (!host->creating) return GV_ERR_DENIED;
    if (!events::valid_pattern(sub->pattern)) {
      log::error("invalid event pattern", {{"plugin", host->plugin}, {"pattern", sub->pattern}});
      return GV_ERR_INVALID;
    }
    host->subscriptions.push_back({sub->pattern, sub->handler, sub->handler_ctx});
    return GV_OK;
  });
}

// ---- ABI 1.1: jobs -------------------------------------------------------

std::function<void()> job_body(gv_job_fn fn, void* ctx) {
  return [fn, ctx] {
    if (fn(ctx) != GV_OK) throw std::runtime_error("the job reported a failure");
  };
}

gv_status api_add_job(gv_host* host, const gv_job_v1* job) {
  return shield([&]() -> gv_status {
    if (!host || !job || job->struct_size < sizeof(gv_job_v1) || !job->name || !job->run)
      return GV_ERR_INVALID;
    if (!host->creating) return GV_ERR_DENIED;
    if (!host->services->scheduler) return GV_ERR_UNAVAILABLE;
    Scheduler::Job j;
    j.name = host->plugin + "." + job->name;
    j.interval = std::chrono::milliseconds(job->interval_ms);
    j.cron = job->cron ? job->cron : "";
    j.run = job_body(job->run, job->ctx);
    std::string error;
    if (!host->services->scheduler->add(std::move(j), &error)) {
      log::error("job refused", {{"plugin", host->plugin}, {"reason", error}});
      return GV_ERR_INVALID;
    }
    return GV_OK;
  });
}

gv_status api_run_later(gv_host* host, int64_t delay_ms, gv_job_fn fn, void* ctx) {
  return shield([&]() -> gv_status {
    if (!host || !fn || delay_ms < 0) return GV_ERR_INVALID;
    if (!host->services->scheduler) return GV_ERR_UNAVAILABLE;
    return host->services->scheduler->run_later(std::chrono::milliseconds(delay_ms),
                                                host->plugin + ".later", job_body(fn, ctx))
               ? GV_OK
               : GV_ERR_UNAVAILABLE;
  });
}

// ---- ABI 1.1: cache ------------------------------------------------------

// Each plugin sees its own key space.
std::string cache_key(const gv_host* host, gv_str key) { return host->plugin + "/" + str(key); }

gv_status cache_status(stores::CacheStatus s) {
  switch (s) {
    case stores::CacheStatus::ok:
      return GV_OK;
    case stores::CacheStatus::unavailable:
      return GV_ERR_UNAVAILABLE;
    default:
      return GV_ERR_INVALID;
  }
}

template <class F>
gv_status with_cache(gv_host* host, F&& f) {
  return shield([&]() -> gv_status {
    if (refused_while_quick(host, "cache_*")) return GV_ERR_DENIED;
    if (!host || !host->services->cache) return GV_ERR_UNAVAILABLE;
    return f(*host->services->cache);
  });
}

gv_status api_cache_get(gv_host* host, gv_str key, gv_sink_fn sink, void* ctx) {
  return with_cache(host, [&](stores::Cache& c) {
    auto v = c.get(cache_key(host, key));
    if (!v) return GV_ERR_NOT_FOUND;
    sink_text(sink, ctx, *v);
    return GV_OK;
  });
}

gv_status api_cache_set(gv_host* host, gv_str key, gv_str value, int64_t ttl_ms) {
  return with_cache(host, [&](stores::Cache& c) {
    return cache_status(c.set(cache_key(host, key), str(value), stores::Cache::Ttl(ttl_ms)));
  });
}

gv_status api_cache_delete(gv_host* host, gv_str key) {
  return with_cache(
      host, [&](stores::Cache& c) { return cache_status(c.del(cache_key(host, key)).status); });
}

gv_status api_cache_incr(gv_host* host, gv_str key, int64_t delta, int64_t ttl_ms, int64_t* value) {
  return with_cache(host, [&](stores::Cache& c) {
    auto r = c.incr(cache_key(host, key), delta, stores::Cache::Ttl(ttl_ms));
    if (r.status == stores::CacheStatus::ok && value) *value = r.value;
    return cache_status(r.status);
  });
}

gv_status api_cache_zadd(gv_host* host, gv_str key, gv_str member, double score) {
  return with_cache(host, [&](stores::Cache& c) {
    return cache_status(c.zadd(cache_key(host, key), str(member), score).status);
  });
}

gv_status api_cache_zrem(gv_host* host, gv_str key, gv_str member) {
  return with_cache(host, [&](stores::Cache& c) {
    return cache_status(c.zrem(cache_key(host, key), str(member)).status);
  });
}

void emit_members(const std::vector<stores::ScoredMember>& members, gv_member_fn fn, void* ctx) {
  if (!fn) return;
  for (const auto& m : members) fn(ctx, {m.member.data(), m.member.size()}, m.score);
}

gv_status api_cache_zrange(gv_host* host, gv_str key, int64_t start, int64_t stop, int reverse,
                           gv_member_fn on_member, void* ctx) {
  return with_cache(host, [&](stores::Cache& c) {
    emit_members(c.zrange_by_rank(cache_key(host, key), start, stop, reverse != 0), on_member, ctx);
    return GV_OK;
  });
}

gv_status api_cache_zrange_by_score(gv_host* host, gv_str key, double min, double max, size_t limit,
                                    int reverse, gv_member_fn on_member, void* ctx) {
  return with_cache(host, [&](stores::Cache& c) {
    emit_members(c.zrange_by_score(cache_key(host, key), min, max, reverse != 0, limit), on_member,
                 ctx);
    return GV_OK;
  });
}

gv_status api_cache_ztrim(gv_host* host, gv_str key, size_t keep) {
  return with_cache(host, [&](stores::Cache& c) {
    int64_t stop = -static_cast<int64_t>(keep) - 1;
    return cache_status(c.zremrange_by_rank(cache_key(host, key), 0, stop).status);
  });
}

// ---- ABI 1.1: blobs ------------------------------------------------------

gv_status blob_status(const stores::BlobStatus& s) {
  switch (s.code) {
    case stores::BlobError::none:
      return GV_OK;
    case stores::BlobError::invalid_key:
    case stores::BlobError::conflict:
      return GV_ERR_INVALID;
    case stores::BlobError::unavailable:
      return GV_ERR_UNAVAILABLE;
    default:
      return GV_ERR_INTERNAL;
  }
}

// The plugin's folder in the shared store; the key rules are checked on
// the plugin's own key, so nothing can reach another plugin's objects.
bool blob_key(const gv_host* host, gv_str key, std::string* out) {
  std::string k = str(key);
  if (!stores::valid_blob_key(k)) return false;
  *out = host->plugin + "/" + k;
  return true;
}

template <class F>
gv_status with_blobs(gv_host* host, F&& f) {
  return shield([&]() -> gv_status {
    if (refused_while_quick(host, "blob_*")) return GV_ERR_DENIED;
    if (!host || !host->services->blobs) return GV_ERR_UNAVAILABLE;
    return f(*host->services->blobs);
  });
}

gv_status api_blob_put(gv_host* host, gv_str key, gv_str bytes) {
  return with_blobs(host, [&](stores::BlobStore& b) {
    std::string k;
    if (!blob_key(host, key, &k)) return GV_ERR_INVALID;
    stores::BlobStatus st = b.put(k, str(bytes));
    if (!st.ok()) log::warn("blob put failed", {{"plugin", host->plugin}, {"reason", st.message}});
    return blob_status(st);
  });
}

gv_status api_blob_get(gv_host* host, gv_str key, gv_sink_fn sink, void* ctx) {
  return with_blobs(host, [&](stores::BlobStore& b) {
    std::string k;
    if (!blob_key(host, key, &k)) return GV_ERR_INVALID;
    auto r = b.get(k);
    if (!r.ok()) return blob_status(r.status);
    if (!r.value) return GV_ERR_NOT_FOUND;
    sink_text(sink, ctx, *r.value);
    return GV_OK;
  });
}

gv_status api_blob_delete(gv_host* host, gv_str key) {
  return with_blobs(host, [&](stores::BlobStore& b) {
    std::string k;
    if (!blob_key(host, key, &k)) return GV_ERR_INVALID;
    auto r = b.del(k);
    if (!r.ok()) return blob_status(r.status);
    return r.value ? GV_OK : GV_ERR_NOT_FOUND;
  });
}

gv_status api_blob_list(gv_host* host, gv_str prefix, gv_str start_after, size_t limit,
                        gv_key_fn on_key, void* ctx, int* more) {
  return with_blobs(host, [&](stores::BlobStore& b) {
    std::string base = host->plugin + "/";
    std::string after = start_after.len ? base + str(start_after) : std::string();
    auto r = b.list(base + str(prefix), after, limit);
    if (!r.ok()) return blob_status(r.status);
    for (const auto& k : r.value.keys)
      if (on_key) on_key(ctx, {k.data() + base.size(), k.size() - base.size()});
    if (more) *more = r.value.truncated ? 1 : 0;
    return GV_OK;
  });
}

gv_status api_revoke(gv_host* host, gv_str session_id, gv_str user_id, int64_t issued_before) {
  return shield([&]() -> gv_status {
    if (!host || (session_id.len == 0 && user_id.len == 0)) return GV_ERR_INVALID;
    if (!host->services->revocations) return GV_ERR_UNAVAILABLE;
    if (session_id.len) host->services->revocations->revoke_session(str(session_id));
    if (user_id.len) host->services->revocations->revoke_user(str(user_id), issued_before);
    return GV_OK;
  });
}

int64_t api_access_token_ttl(gv_host* host) {
  if (!host || !host->services->config) return 0;
  return host->services->config->auth.access_token_ttl.count();
}

void api_txn_fail(gv_txn* txn, gv_str message) {
  shield_void([&] {
    if (txn) txn->plugin_error = str(message).substr(0, 2000);
  });
}

// A tag as a plugin names it: 1..1024 bytes.
bool valid_tag(gv_str tag) { return tag.data && tag.len > 0 && tag.len <= 1024; }

gv_status api_txn_invalidate(gv_txn* txn, gv_str tag) {
  return shield([&]() -> gv_status {
    if (!txn || !txn->tx || !txn->host || !txn->writable || !valid_tag(tag)) return GV_ERR_INVALID;
    ResponseCache* cache = txn->host->services->response_cache;
    if (!cache || !cache->enabled()) return GV_OK;
    auto st =
        txn->tx->after_commit([cache, scoped = scoped_cache_tag(txn->host->plugin, str(tag))] {
          cache->invalidate(scoped);
        });
    return st.ok() ? GV_OK : GV_ERR_INVALID;
  });
}

gv_status api_invalidate(gv_host* host, gv_str tag) {
  return shield([&]() -> gv_status {
    if (!host || !valid_tag(tag)) return GV_ERR_INVALID;
    ResponseCache* cache = host->services->response_cache;
    if (cache) cache->invalidate(scoped_cache_tag(host->plugin, str(tag)));
    return GV_OK;
  });
}

}  // namespace

stores::SqlStatus deliver_event(gv_host* host, const gv_event_v1& event,
                                stores::SqlTransaction& tx) {
  gv_txn txn;
  txn.tx = &tx;
  txn.host = host;
  txn.writable = true;
  std::string_view type(event.type.data, event.type.len);
  for (const auto& sub : host->subscriptions) {
    if (!events::type_matches(sub.pattern, type)) continue;
    gv_status rc = GV_ERR_INTERNAL;
    try {
      rc = sub.handler(sub.ctx, &event, &txn);
    } catch (...) {
    }
    if (rc != GV_OK) {
      if (!txn.first_failure.ok()) return txn.first_failure;
      if (!txn.plugin_error.empty()) return SqlStatus::failure(SqlCode::invalid, txn.plugin_error);
      return SqlStatus::failure(SqlCode::invalid, "the plugin's handler for " + std::string(type) +
                                                      " failed (status " + std::to_string(rc) +
                                                      ")");
    }
  }
  return SqlStatus::success();  // the events engine wakes its relay after the commit
}

namespace {}  // namespace

const gv_host_api_v1* host_api() {
  static const gv_host_api_v1 api = {sizeof(gv_host_api_v1),
                                     GV_ABI_MAJOR,
                                     GV_ABI_MINOR,
                                     &api_log,
                                     &api_register,
                                     &api_respond_json,
                                     &api_respond_error,
                                     &api_call,
                                     &api_push_user,
                                     &api_push_channel,
                                     &api_join,
                                     &api_leave,
                                     &api_sign,
                                     &api_add_migration,
                                     &api_sql_write,
                                     &api_sql_read,
                                     &api_sql_run,
                                     &api_publish,
                                     &api_subscribe,
                                     &api_add_job,
                                     &api_run_later,
                                     &api_cache_get,
                                     &api_cache_set,
                                     &api_cache_delete,
                                     &api_cache_incr,
                                     &api_cache_zadd,
                                     &api_cache_zrem,
                                     &api_cache_zrange,
                                     &api_cache_zrange_by_score,
                                     &api_cache_ztrim,
                                     &api_blob_put,
                                     &api_blob_get,
                                     &api_blob_delete,
                                     &api_blob_list,
                                     &api_txn_fail,
                                     &api_revoke,
                                     &api_respond_header,
                                     &api_access_token_ttl,
                                     &api_txn_invalidate,
                                     &api_invalidate,
                                     &api_sql_insert,
                                     &api_respond_after_write};
  return &api;
}

}  // namespace gv::plugins
