#include "plugins/host_api.hpp"

#include <algorithm>
#include <cstring>

#include "core/call.hpp"
#include "core/log.hpp"
#include "core/request_id.hpp"

namespace gv::plugins {
namespace {

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

void api_log(gv_host* host, gv_log_level level, gv_str message) {
  shield_void([&] {
    log::Level l = level == GV_LOG_DEBUG   ? log::Level::debug
                   : level == GV_LOG_WARN  ? log::Level::warn
                   : level == GV_LOG_ERROR ? log::Level::error
                                           : log::Level::info;
    log::write(l, str(message), {{"plugin", host ? host->plugin : ""}});
  });
}

gv_status api_register(gv_host* host, const gv_operation_v1* op) {
  return shield([&]() -> gv_status {
    // A plugin built for an older 1.x minor passes a shorter struct; read
    // what it has into a zeroed one (members it lacks stay null).
    if (!host || !op || op->struct_size < kOperationV10Size) return GV_ERR_INVALID;
    gv_operation_v1 copy{};
    std::memcpy(&copy, op, std::min<size_t>(op->struct_size, sizeof copy));
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
    return GV_OK;
  });
}

void api_respond_json(gv_response* r, int status, gv_str json) {
  shield_void([&] {
    if (!r || status < 200 || status > 599) return;  // unanswered: a 500
    r->status = status;
    r->body = str(json);
    r->answered = true;
  });
}

void api_respond_error(gv_response* r, int status, gv_str code, gv_str message) {
  shield_void([&] {
    if (!r || status < 400 || status > 599) return;
    r->status = status;
    r->body = error_body(str(code), str(message), r->request_id);
    r->answered = true;
  });
}

gv_status api_call(gv_host* host, const gv_request_v1* caller, gv_str operation, gv_str input_json,
                   int* status, gv_sink_fn sink, void* sink_ctx) {
  return shield([&]() -> gv_status {
    if (!host || !status) return GV_ERR_INVALID;
    const Operation* op = host->services->registry->find(str(operation));
    if (!op) return GV_ERR_NOT_FOUND;
    Call call;
    call.op = op;
    const Call* parent = caller ? static_cast<const Call*>(caller->host_data) : nullptr;
    if (parent) {
      call.request_id = parent->request_id;
      call.identity = parent->identity;
      call.connection_id = parent->connection_id;
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
    if (!host || (data.len && !nlohmann::json::accept(str(data)))) return GV_ERR_INVALID;
    host->services->hub->push_to_user(str(user), str(event), str(data));
    return GV_OK;
  });
}

gv_status api_push_channel(gv_host* host, gv_str channel, gv_str event, gv_str data) {
  return shield([&]() -> gv_status {
    if (!host || (data.len && !nlohmann::json::accept(str(data)))) return GV_ERR_INVALID;
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

}  // namespace

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
                                     &api_sign};
  return &api;
}

}  // namespace gv::plugins
