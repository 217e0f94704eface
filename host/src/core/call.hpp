// One call of an operation on its way through the host, whatever the
// transport (HTTP, WebSocket, in-process), and its reply.
#pragma once

#include <grapevine/abi.h>

#include <cstdint>
#include <functional>
#include <memory>
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
  bool input_is_body = false;  // input is body as parsed, nothing merged: the handler gets body
  nlohmann::json input = nlohmann::json::object();  // WebSocket data, or {}
  PathParams params;  // path and query parameters, strings until coerced
  uint64_t connection_id = 0;
  std::string client_address;  // the peer's IP address; "" for in-process calls
  std::vector<std::pair<std::string, std::string>> headers;
  int depth = 0;  // nesting of in-process calls
};

struct Reply;

// A write a handler answered with (respond_after_write, ABI 1.6), still to
// run in the plugin's database; it gives the answer.
class AfterWrite {
 public:
  virtual ~AfterWrite() = default;
  // wait false: queued as one part of the plugin's grouped write; done gets
  // the answer once the group has committed, on some thread. wait true: a
  // write of its own on this thread (in-process calls), done called before
  // run returns.
  virtual void run(bool wait, std::function<void(Reply)> done) = 0;
};

struct Reply {
  int status = 200;
  std::string body;  // JSON text; empty for 204
  std::vector<std::pair<std::string, std::string>> headers;  // a plugin's, checked
  // Set instead of the above when the handler answered with a write: the
  // caller runs it (Dispatcher does) for the real answer.
  std::shared_ptr<AfterWrite> after_write{};
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
  std::shared_ptr<gv::AfterWrite> after_write;  // respond_after_write; then not answered
};
