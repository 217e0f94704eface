#include "core/log.hpp"

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <string>

namespace gv::log {
namespace {

std::atomic<int> g_level{static_cast<int>(Level::info)};

const char* level_name(Level l) {
  switch (l) {
    case Level::debug: return "debug";
    case Level::info: return "info";
    case Level::warn: return "warn";
    case Level::error: return "error";
  }
  return "info";
}

void append_timestamp(std::string& out) {
  auto now = std::chrono::system_clock::now();
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                now.time_since_epoch()).count();
  std::time_t secs = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[96];  // sized for any int, to keep -Wformat-truncation quiet
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
                tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                tm.tm_min, tm.tm_sec, static_cast<int>(ms % 1000));
  out += buf;
}

void write_line(std::string& line) {
  line += '\n';
  const char* p = line.data();
  size_t left = line.size();
  while (left > 0) {
    ssize_t n = ::write(STDOUT_FILENO, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;  // nowhere to report a failing log
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
}

// Appends s as a JSON string literal.
void append_json_string(std::string& out, std::string_view s) {
  bool plain = true;  // printable ASCII needing no escape: the common case
  for (unsigned char c : s)
    if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') plain = false;
  if (plain) {
    out += '"';
    out += s;
    out += '"';
    return;
  }
  out += nlohmann::json(std::string(s)).dump(-1, ' ', false,
                                            nlohmann::json::error_handler_t::replace);
}

}  // namespace

Level parse_level(std::string_view name) {
  if (name == "debug") return Level::debug;
  if (name == "warn") return Level::warn;
  if (name == "error") return Level::error;
  return Level::info;
}

void set_level(Level level) { g_level = static_cast<int>(level); }
bool enabled(Level level) { return static_cast<int>(level) >= g_level.load(); }

void write(Level level, std::string_view msg, const nlohmann::json& fields) {
  if (!enabled(level)) return;
  std::string line = "{\"ts\":\"";
  append_timestamp(line);
  line += "\",\"level\":\"";
  line += level_name(level);
  line += "\",\"msg\":";
  append_json_string(line, msg);
  if (fields.is_object()) {
    for (auto it = fields.begin(); it != fields.end(); ++it) {
      line += ',';
      append_json_string(line, it.key());
      line += ':';
      line += it.value().dump(-1, ' ', false,
                              nlohmann::json::error_handler_t::replace);
    }
  }
  line += '}';
  write_line(line);
}

void access(const AccessRecord& r) {
  if (!enabled(Level::info)) return;
  std::string line;
  line.reserve(256);
  line = "{\"ts\":\"";
  append_timestamp(line);
  line += "\",\"level\":\"info\",\"msg\":\"request\",\"request_id\":";
  append_json_string(line, r.request_id);
  line += ",\"transport\":\"";
  line += r.transport;
  line += "\",\"method\":";
  append_json_string(line, r.method);
  line += ",\"path\":";
  append_json_string(line, r.path);
  line += ",\"op\":";
  append_json_string(line, r.op);
  char tail[64];
  std::snprintf(tail, sizeof tail, ",\"status\":%d,\"duration_ms\":%.3f}",
                r.status, r.duration_ms);
  line += tail;
  write_line(line);
}

}  // namespace gv::log
