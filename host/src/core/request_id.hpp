// Request ids: kept from X-Request-Id when it is sane, made up otherwise.
#pragma once

#include <string>
#include <string_view>

namespace gv {

// 16 random hex digits.
std::string new_request_id();
// The same into out, reusing its storage (once per HTTP request).
void new_request_id(std::string& out);

// incoming if it is 1..128 characters of [A-Za-z0-9._:-], else a new id.
std::string request_id_from(std::string_view incoming);
void request_id_from(std::string_view incoming, std::string& out);

}  // namespace gv
