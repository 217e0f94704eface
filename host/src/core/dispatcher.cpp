#include "core/dispatcher.hpp"

#include <strings.h>

#include <charconv>

#include "core/blocking.hpp"
#include "core/json_text.hpp"
#include "core/log.hpp"

namespace gv {
namespace {

// Path and query parameters arrive as text; give them the JSON type the
// schema asks for, so "?limit=20" validates against {"type":"integer"}.
nlohmann::json coerce(const std::string& text, const nlohmann::json& prop) {
  // "type" is a string or, in draft 7, an array of them.
  std::vector<std::string> types;
  if (prop.is_object() && prop.contains("type")) {
    const auto& t = prop["type"];
    if (t.is_string()) types.push_back(t.get<std::string>());
    if (t.is_array())
      for (const auto& one : t)
        if (one.is_string()) types.push_back(one.get<std::string>());
  }
  const char* begin = text.data();
  const char* end = text.data() + text.size();
  for (const auto& type : types) {
    if (type == "integer") {
      int64_t v = 0;
      auto [stop, ec] = std::from_chars(begin, end, v);
      if (ec == std::errc() && stop == end) return v;
    } else if (type == "number") {
      double v = 0;
      auto [stop, ec] = std::from_chars(begin, end, v);
      if (ec == std::errc() && stop == end) return v;
    } else if (type == "boolean") {
      if (text == "true") return true;
      if (text == "false") return false;
    }
  }
  return text;  // the schema check names the field if it is wrong
}

int header_lookup(const gv_request_v1* req, const char* name, gv_str* value) {
  const auto* call = static_cast<const Call*>(req->host_data);
  if (!call || !name) return 0;
  for (const auto& [k, v] : call->headers)
    if (strcasecmp(k.c_str(), name) == 0) {
      *value = gv_str{v.data(), v.size()};
      return 1;
    }
  return 0;
}

}  // namespace

bool Dispatcher::submit(std::shared_ptr<Call> call, std::function<void(Reply)> done) {
  ++in_flight_;
  ++before_write_;
  auto job = [this, call, done = std::move(done)]() mutable {
    auto finish = [this, done = std::move(done)](Reply reply) {
      if (done) done(std::move(reply));  // empty only if grouped() threw after taking it
      --in_flight_;
    };
    // Once its handler has returned, or it is about to queue its grouped
    // write, a request queues no more writes (done() before either: the
    // write may be led on this thread, and must not wait for itself).
    struct Handled {
      std::atomic<int64_t>& count;
      bool counted = true;
      void done() {
        if (counted) --count;
        counted = false;
      }
      ~Handled() { done(); }
    } handled{before_write_};
    Reply reply;
    try {
      if (auto refused = prepare(*call)) {
        reply = std::move(*refused);
      } else if (call->op->grouped) {
        // Answered once the plugin's grouped write commits, maybe on
        // another thread; this worker goes on with the next request.
        // Its body is checked once committed, on the thread that runs the
        // group's completions (SqliteOptions::run_completions), not on
        // the one writing the next group.
        handled.done();
        call->op->grouped(
            call->request_id,
            [this, call, given = invocation_of(*call)] { return invoke(*call, given, false); },
            [this, call, finish = std::move(finish)](Reply reply) mutable {
              finish(checked_body(*call, std::move(reply)));
            });
        return;
      } else {
        reply = invoke(*call);
        handled.done();
        if (auto write = std::move(reply.after_write)) {
          // Answered with a write: queued in the plugin's group commit;
          // this worker goes on, and the answer follows the commit.
          write->run(false, [this, call, finish = std::move(finish)](Reply r) mutable {
            finish(checked_body(*call, std::move(r)));
          });
          return;
        }
      }
    } catch (const std::exception& e) {  // a host bug: answer, keep serving
      log::error("dispatch failed", {{"op", call->op->name}, {"error", e.what()}});
      reply = error_reply(500, "internal", "the operation failed", call->request_id);
    }
    finish(std::move(reply));
  };
  // A quick handler (GV_OP_QUICK) runs here, on the network thread that
  // read the request, which saves handing it to a worker and back; a write
  // it answers with is led by the database's own thread. Not while as many
  // calls are under way as the worker queue holds: then it queues like any
  // other, and a full queue refuses it.
  if (call->op->quick && in_flight_.load() <= static_cast<int64_t>(pool_.queue_limit())) {
    NoWaitRegion no_wait;
    job();
    return true;
  }
  bool queued = pool_.try_submit(std::move(job));
  if (!queued) {
    --in_flight_;
    --before_write_;
  }
  return queued;
}

Reply Dispatcher::run(Call& call) const {
  if (auto refused = prepare(call)) return *refused;
  Reply reply = invoke(call);
  if (auto write = std::move(reply.after_write)) {
    // A nested call waits for its write (run calls back before it returns).
    write->run(true, [&reply](Reply r) { reply = std::move(r); });
    return checked_body(call, std::move(reply));
  }
  return reply;
}

std::optional<Reply> Dispatcher::prepare(Call& call) const {
  if (auto denied = check_access(call)) return *denied;
  if (auto bad = build_input(call)) return *bad;
  auto violations = call.op->schema->validate(call.input);
  if (!violations.empty()) {
    nlohmann::json details = nlohmann::json::array();
    for (const auto& v : violations)
      details.push_back({{"field", v.pointer}, {"message", v.message}});
    const auto& first = violations.front();
    std::string where = first.pointer.empty() ? "input" : first.pointer.substr(1);
    return Reply{
        400, error_body("invalid_input", where + ": " + first.message, call.request_id, details)};
  }
  return std::nullopt;
}

std::optional<Reply> Dispatcher::check_access(const Call& call) const {
  const Operation& op = *call.op;
  // A revoked token is refused like any bad token, even on public
  // operations, and on sockets that authenticated before the revocation.
  if (!call.system && call.identity && revoked(*call.identity))
    return error_reply(401, "unauthorized", "the access token was revoked", call.request_id);
  if (call.system || op.access == GV_ACCESS_ANYONE) return std::nullopt;
  if (!call.identity)
    return error_reply(401, "unauthorized", "this operation needs a valid access token",
                       call.request_id);
  if (op.access == GV_ACCESS_ROLE && !call.identity->has_role(op.role))
    return error_reply(403, "forbidden", "this operation needs the role '" + op.role + "'",
                       call.request_id);
  return std::nullopt;
}

std::optional<Reply> Dispatcher::build_input(Call& call) const {
  if (!call.body.empty()) {
    if (!json_depth_within(call.body, json_depth_))
      return error_reply(400, "invalid_json",
                         "the body nests deeper than " + std::to_string(json_depth_) + " levels",
                         call.request_id);
    auto parsed = nlohmann::json::parse(call.body, nullptr, false);
    if (parsed.is_discarded())
      return error_reply(400, "invalid_json", "the body is not valid JSON", call.request_id);
    if (!parsed.is_object())
      return error_reply(400, "invalid_json", "the body must be a JSON object", call.request_id);
    call.input = std::move(parsed);
    call.input_is_body = call.params.empty();
  }
  // The parameter's schema, looked up in place (value() would copy the
  // schema's properties for every request); find() on a non-object is end().
  static const nlohmann::json no_schema;
  const auto& schema = call.op->input_schema;
  const auto props = schema.find("properties");
  auto schema_of = [&](const std::string& key) -> const nlohmann::json& {
    if (props == schema.end()) return no_schema;
    auto it = props->find(key);
    return it == props->end() ? no_schema : *it;
  };
  for (const auto& [key, text] : call.params) {
    if (call.input.contains(key))
      return error_reply(400, "invalid_input", key + ": given more than once (path, query or body)",
                         call.request_id);
    call.input[key] = coerce(text, schema_of(key));
  }
  call.params.clear();
  return std::nullopt;
}

Dispatcher::Invocation Dispatcher::invocation_of(const Call& call) {
  Invocation given;
  // A body that is the whole input goes as it came (it parsed as a JSON
  // object, so the handler's parse gives the same): no dump of it again.
  given.input = call.input_is_body
                    ? call.body
                    : call.input.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (call.identity) {
    given.user_id = call.identity->user_id;
    given.roles = call.identity->roles_joined();
    auto it = call.identity->claims().find("sid");
    if (it != call.identity->claims().end() && it->is_string())
      given.session_id = it->get<std::string>();
  }
  return given;
}

Reply Dispatcher::invoke(Call& call, const Invocation& given, bool check_body) const {
  const Operation& op = *call.op;
  gv_request_v1 req{};
  req.struct_size = sizeof req;
  req.operation = {op.name.data(), op.name.size()};
  req.request_id = {call.request_id.data(), call.request_id.size()};
  req.input_json = {given.input.data(), given.input.size()};
  req.user_id = {given.user_id.data(), given.user_id.size()};
  req.roles = {given.roles.data(), given.roles.size()};
  req.connection_id = call.connection_id;
  req.client_address = {call.client_address.data(), call.client_address.size()};
  req.session_id = {given.session_id.data(), given.session_id.size()};
  req.header = &header_lookup;
  req.host_data = &call;
  gv_response response;
  response.request_id = call.request_id;
  gv_status rc = GV_ERR_INTERNAL;
  try {
    rc = op.handler(op.handler_ctx, &req, &response);
  } catch (...) {  // a plugin that let an exception escape the ABI
    rc = GV_ERR_INTERNAL;
  }
  if (rc == GV_OK && response.after_write) {
    Reply pending;
    pending.after_write = std::move(response.after_write);
    return pending;  // its caller runs the write, then checks the answer
  }
  if (rc != GV_OK || !response.answered) return failed(call, rc, response.answered);
  Reply reply{response.status, std::move(response.body), std::move(response.headers)};
  return check_body ? checked_body(call, std::move(reply)) : reply;
}

Reply Dispatcher::checked_body(const Call& call, Reply reply) const {
  if (reply.body.empty() || is_json(reply.body)) return reply;
  return failed(call, GV_OK, true);
}

Reply Dispatcher::failed(const Call& call, gv_status rc, bool answered) const {
  const Operation& op = *call.op;
  log::error("operation failed", {{"op", op.name},
                                  {"plugin", op.plugin},
                                  {"request_id", call.request_id},
                                  {"code", static_cast<int>(rc)},
                                  {"answered", answered}});
  if (rc == GV_ERR_UNAVAILABLE)
    return error_reply(503, "unavailable", "the operation is unavailable", call.request_id);
  return error_reply(500, "internal",
                     "the operation failed; quote the request id when reporting it",
                     call.request_id);
}

}  // namespace gv
