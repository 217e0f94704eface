#include "plugins/admin_ops.hpp"

#include <nlohmann/json.hpp>

#include "core/log.hpp"
#include "core/scheduler.hpp"
#include "events/events.hpp"
#include "plugins/host_api.hpp"

namespace gv::plugins {
namespace {

using json = nlohmann::json;

json input_of(const gv_request_v1* r) {
  if (!r->input_json.data || r->input_json.len == 0) return json::object();
  return json::parse(std::string_view(r->input_json.data, r->input_json.len), nullptr, false);
}

gv_status reply(gv_response* out, int status, const json& body) {
  std::string text = body.dump(-1, ' ', false, json::error_handler_t::replace);
  host_api()->respond_json(out, status, {text.data(), text.size()});
  return GV_OK;
}

gv_status fail(gv_response* out, int status, std::string_view code, std::string_view message) {
  host_api()->respond_error(out, status, {code.data(), code.size()},
                            {message.data(), message.size()});
  return GV_OK;
}

gv_status dead_letters(void* ctx, const gv_request_v1* r, gv_response* out) {
  auto* s = static_cast<HostServices*>(ctx);
  json in = input_of(r);
  std::string plugin = in.value("plugin", "");
  if (!s->events || !s->events->has_consumer(plugin))
    return fail(out, 404, "not_found", "no plugin '" + plugin + "' consumes events here");
  size_t limit = in.value("limit", 100);
  auto result = s->events->dead_letters(plugin, limit, in.value("after", ""));
  if (!result.ok()) return fail(out, 503, "unavailable", result.status.message);
  json items = json::array();
  for (const auto& d : result.value)
    items.push_back({{"event", d.event.to_json()},
                     {"attempts", d.attempts},
                     {"error", d.error},
                     {"parked_ms", d.parked_ms}});
  json body{{"items", items}};
  if (result.value.size() == limit && !result.value.empty())
    body["next"] = result.value.back().event.id;
  return reply(out, 200, body);
}

gv_status replay(void* ctx, const gv_request_v1* r, gv_response* out) {
  auto* s = static_cast<HostServices*>(ctx);
  json in = input_of(r);
  std::string plugin = in.value("plugin", "");
  if (!s->events || !s->events->has_consumer(plugin))
    return fail(out, 404, "not_found", "no plugin '" + plugin + "' consumes events here");
  int replayed = 0, failed = 0;
  stores::SqlStatus st = s->events->replay(plugin, in.value("event_id", ""), &replayed, &failed);
  if (!st.ok()) {
    if (st.code == stores::SqlCode::invalid) return fail(out, 404, "not_found", st.message);
    return fail(out, 503, "unavailable", st.message);
  }
  log::info("dead letters replayed",
            {{"plugin", plugin}, {"replayed", replayed}, {"failed", failed}});
  return reply(out, 200, {{"replayed", replayed}, {"failed", failed}});
}

gv_status jobs_list(void* ctx, const gv_request_v1*, gv_response* out) {
  auto* s = static_cast<HostServices*>(ctx);
  json items = json::array();
  if (s->scheduler)
    for (const auto& j : s->scheduler->jobs())
      items.push_back({{"name", j.name},
                       {"schedule", j.schedule},
                       {"runs", j.runs},
                       {"failures", j.failures},
                       {"running", j.running},
                       {"last_start_ms", j.last_start_ms},
                       {"last_duration_ms", j.last_duration_ms},
                       {"next_run_ms", j.next_run_ms}});
  return reply(out, 200, {{"items", items}});
}

gv_status jobs_run(void* ctx, const gv_request_v1* r, gv_response* out) {
  auto* s = static_cast<HostServices*>(ctx);
  std::string name = input_of(r).value("job", "");
  if (!s->scheduler) return fail(out, 404, "not_found", "no job '" + name + "'");
  switch (s->scheduler->run_now(name)) {
    case Scheduler::RunNow::started:
      return reply(out, 202, {{"job", name}, {"started", true}});
    case Scheduler::RunNow::already_running:
      return fail(out, 409, "already_running", "job '" + name + "' is running now");
    case Scheduler::RunNow::not_found:
      return fail(out, 404, "not_found", "no job '" + name + "'");
    case Scheduler::RunNow::stopped:
      return fail(out, 503, "unavailable", "the server is shutting down");
    case Scheduler::RunNow::queue_full:
      break;
  }
  return fail(out, 503, "overloaded", "the worker queue is full; retry shortly");
}

}  // namespace

bool register_admin_operations(HostServices* services, std::string* error) {
  struct Def {
    const char* name;
    const char* method;
    const char* path;
    const char* schema;
    const char* summary;
    gv_handler_fn handler;
  };
  static const Def defs[] = {
      {"admin.events.dead_letters", "GET", "/api/v1/admin/events/dead-letters",
       R"({"type":"object","required":["plugin"],"properties":{
            "plugin":{"type":"string","minLength":1,"maxLength":64},
            "limit":{"type":"integer","minimum":1,"maximum":1000},
            "after":{"type":"string","maxLength":64}}})",
       "Events a consumer parked after its retries, oldest first", &dead_letters},
      {"admin.events.replay", "POST", "/api/v1/admin/events/replay",
       R"({"type":"object","required":["plugin"],"properties":{
            "plugin":{"type":"string","minLength":1,"maxLength":64},
            "event_id":{"type":"string","maxLength":64}}})",
       "Runs parked events again (one by id, or every one of the plugin)", &replay},
      {"admin.jobs.list", "GET", "/api/v1/admin/jobs", R"({"type":"object"})",
       "Scheduled jobs and their last runs", &jobs_list},
      {"admin.jobs.run", "POST", "/api/v1/admin/jobs/{job}/run",
       R"({"type":"object","required":["job"],"properties":{
            "job":{"type":"string","minLength":1,"maxLength":200}}})",
       "Runs a scheduled job now, unless it is running", &jobs_run},
  };
  for (const Def& d : defs) {
    gv_operation_v1 op{};
    op.struct_size = sizeof op;
    op.name = d.name;
    op.http_method = d.method;
    op.http_path = d.path;
    op.input_schema = d.schema;
    op.summary = d.summary;
    op.access = GV_ACCESS_ROLE;
    op.role = "admin";
    op.handler = d.handler;
    op.handler_ctx = services;
    if (!services->registry->add("host", op, error)) return false;
  }
  return true;
}

}  // namespace gv::plugins
