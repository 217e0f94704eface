// One call of an operation on its way through the host, whatever the
// transport (HTTP, WebSocket, in-process), and its reply.
#pragma once

#include <grapevine/abi.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "auth/jwt.hpp"
#include "core/registry.hpp"

namespace gv {

struct Call {
  const Operation* op = nullptr;
  std::string request_id;
  std::optional<auth::Identity> identity;  // nullopt: anonymous
  bool system = false;                     // an in-process call made as the system: every right
  std::string body;                        // raw JSON body over HTTP; may be empty
  nlohmann::json input = nlohmann::json::object();  // WebSocket data, or {}
  PathParams params;  // path and query parameters, strings until coerced
  uint64_t connection_id = 0;
  std::string client_address;  // the peer's IP address; "" for in-process calls
  std::vector<std::pair<std::string, std::string>> headers;
  int depth = 0;  // nesting of in-process calls
};

struct Reply {
  int status = 200;
  std::string body;  // JSON text; empty for 204
  std::vector<std::pair<std::string, std::string>> headers;  // a plugin's, checked
};

// {"error":{"code":...,"message":...,"request_id":...}} and its Reply.
std::string error_body(std::string_view code, std::string_view message, std::string_view request_id,
                       const nlohmann::json& details = nullptr);
Reply error_reply(int status, std::string_view code, std::string_view message,
                  std::string_view request_id);

// True when text nests arrays and objects no deeper than max_depth. Runs
// before parsing so a hostile body cannot exhaust the stack or memory.
bool json_depth_within(std::string_view text, unsigned max_depth);

}  // namespace gv

// The host's side of the opaque gv_response in abi.h.
struct gv_response {
  int status = 0;
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // respond_header, checked
  bool answered = false;
  std::string_view request_id;
};
