// JSON logs: one object per line on standard output, written with a single
// write(2) so lines from different threads never interleave.
#pragma once

#include <chrono>
#include <nlohmann/json.hpp>
#include <string_view>

namespace gv::log {

enum class Level { debug = 0, info = 1, warn = 2, error = 3 };

// From now on, lines are written by a background thread at most every
// interval (and whenever 64 KiB have collected); error lines at once.
// interval 0 keeps writing each line as it comes.
void start_batching(std::chrono::milliseconds interval);
// Writes every pending line now (after "listening", before exit).
void flush();
// Writes what is pending and stops the thread; lines are then written
// directly again.
void stop_batching();

// Parses "debug", "info", "warn", "error"; info for anything else.
Level parse_level(std::string_view name);
void set_level(Level level);
bool enabled(Level level);

// {"ts":"2026-11-23T09:31:26.123Z","level":"info","msg":msg,...fields}
void write(Level level, std::string_view msg,
           const nlohmann::json& fields = nlohmann::json::object());

inline void debug(std::string_view m, const nlohmann::json& f = nlohmann::json::object()) {
  write(Level::debug, m, f);
}
inline void info(std::string_view m, const nlohmann::json& f = nlohmann::json::object()) {
  write(Level::info, m, f);
}
inline void warn(std::string_view m, const nlohmann::json& f = nlohmann::json::object()) {
  write(Level::warn, m, f);
}
inline void error(std::string_view m, const nlohmann::json& f = nlohmann::json::object()) {
  write(Level::error, m, f);
}

// The access line of one request, built without a JSON tree (hot path).
struct AccessRecord {
  std::string_view request_id;
  std::string_view transport;  // "http" or "ws"
  std::string_view method;
  std::string_view path;  // or the operation name over WebSocket
  std::string_view op;
  int status = 0;
  double duration_ms = 0;
};
void access(const AccessRecord& record);

}  // namespace gv::log
