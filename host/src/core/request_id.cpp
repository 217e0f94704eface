#include "core/request_id.hpp"

#include <random>

namespace gv {

void new_request_id(std::string& out) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  static const char* hex = "0123456789abcdef";
  uint64_t v = rng();
  out.resize(16);
  for (int i = 15; i >= 0; --i, v >>= 4) out[static_cast<size_t>(i)] = hex[v & 15];
}

std::string new_request_id() {
  std::string id;
  new_request_id(id);
  return id;
}

void request_id_from(std::string_view incoming, std::string& out) {
  bool sane = !incoming.empty() && incoming.size() <= 128;
  for (char c : incoming) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '-';
    if (!ok) sane = false;
  }
  if (sane)
    out.assign(incoming);
  else
    new_request_id(out);
}

std::string request_id_from(std::string_view incoming) {
  std::string id;
  request_id_from(incoming, id);
  return id;
}

}  // namespace gv
