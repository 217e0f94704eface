// Checks of JSON text the host passes on without building it (answers,
// event payloads, pushed messages).
#pragma once

#include <string_view>

namespace gv {

// Whether text is one JSON value (RFC 8259, UTF-8), surrounded by
// whitespace at most: exactly what nlohmann::json::accept answers, about
// ten times faster for the texts that pass (checked by simdjson, with
// nlohmann deciding those it refuses, such as integers past 64 bits).
bool is_json(std::string_view text);

// is_json, and the value is an object.
bool is_json_object(std::string_view text);

}  // namespace gv
