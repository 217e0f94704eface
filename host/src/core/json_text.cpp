#include "core/json_text.hpp"

#include <simdjson.h>

#include <nlohmann/json.hpp>

namespace gv {
namespace {

// Texts up to this size are checked by the thread's simdjson parser, which
// keeps memory for the largest text it saw (about 12 MB for a 1 MiB text,
// on each of the up to workers.threads + spare_threads threads); larger
// ones (list pages, say) by nlohmann. A post's answer or event payload is
// far smaller.
constexpr size_t kFastCheckMaxBytes = 16 << 10;

}  // namespace

bool is_json(std::string_view text) {
  if (text.size() <= kFastCheckMaxBytes) {
    thread_local simdjson::dom::parser parser;
    // Every text simdjson takes nlohmann takes too; it refuses a few that
    // nlohmann takes (integers past 64 bits, nesting past 1024), so its
    // no is checked again below.
    if (!parser.parse(text.data(), text.size()).error()) return true;
  }
  return nlohmann::json::accept(text);
}

bool is_json_object(std::string_view text) {
  auto first = text.find_first_not_of(" \t\r\n");
  return first != std::string_view::npos && text[first] == '{' && is_json(text);
}

}  // namespace gv
