#include "core/call.hpp"

namespace gv {

std::string error_body(std::string_view code, std::string_view message, std::string_view request_id,
                       const nlohmann::json& details) {
  nlohmann::json e = {{"code", code}, {"message", message}, {"request_id", request_id}};
  if (!details.is_null()) e["details"] = details;
  return nlohmann::json{{"error", std::move(e)}}.dump(-1, ' ', false,
                                                      nlohmann::json::error_handler_t::replace);
}

Reply error_reply(int status, std::string_view code, std::string_view message,
                  std::string_view request_id) {
  return Reply{status, error_body(code, message, request_id)};
}

bool json_depth_within(std::string_view text, unsigned max_depth) {
  unsigned depth = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        in_string = false;
      continue;
    }
    if (c == '"')
      in_string = true;
    else if (c == '[' || c == '{') {
      if (++depth > max_depth) return false;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return true;
}

}  // namespace gv
