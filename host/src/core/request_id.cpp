#include "core/request_id.hpp"

#include <random>

namespace gv {

std::string new_request_id() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  static const char* hex = "0123456789abcdef";
  uint64_t v = rng();
  std::string id(16, '0');
  for (int i = 15; i >= 0; --i, v >>= 4) id[static_cast<size_t>(i)] = hex[v & 15];
  return id;
}

std::string request_id_from(std::string_view incoming) {
  if (incoming.empty() || incoming.size() > 128) return new_request_id();
  for (char c : incoming) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '-';
    if (!ok) return new_request_id();
  }
  return std::string(incoming);
}

}  // namespace gv
