#include "core/log.hpp"
#include "core/thread_name.hpp"

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace gv::log {
namespace {

std::atomic<int> g_level{static_cast<int>(Level::info)};

const char* level_name(Level l) {
  switch (l) {
    case Level::debug:
      return "debug";
    case Level::info:
      return "info";
    case Level::warn:
      return "warn";
    case Level::error:
      return "error";
  }
  return "info";
}

void append_timestamp(std::string& out) {
  // The date and time up to the second change once a second; format them
  // then, and only the milliseconds on every line.
  thread_local std::time_t cached_second = -1;
  thread_local char prefix[64];
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                std::chrono::system_clock::now().time_since_epoch())
                .count();
  std::time_t secs = static_cast<std::time_t>(ms / 1000);
  if (secs != cached_second) {
    std::tm tm{};
    gmtime_r(&secs, &tm);
    std::snprintf(prefix, sizeof prefix, "%04d-%02d-%02dT%02d:%02d:%02d.", tm.tm_year + 1900,
                  tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    cached_second = secs;
  }
  out += prefix;
  int milli = static_cast<int>(ms % 1000);
  out += static_cast<char>('0' + milli / 100);
  out += static_cast<char>('0' + milli / 10 % 10);
  out += static_cast<char>('0' + milli % 10);
  out += 'Z';
}

void write_all(const char* p, size_t left) {
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

// Lines collect here and a writer thread writes them in batches, so a
// busy server makes one write(2) per flush, not one per request (like
// nginx's access_log buffer=/flush=). Errors are written at once.
//
// Each thread first stages its lines in a buffer of its own, under a lock
// only the writer ever contends for, and hands them on in chunks of
// kStageBytes: the shared lock is then taken once per chunk, not once per
// line. Lines of one thread keep their order; lines of different threads
// may reach the output out of time order by up to one flush (as nginx's
// workers' buffered lines do).
struct Stage {
  std::mutex mutex;
  std::string lines;
};

struct Batcher {
  std::mutex mutex;
  // Held while writing, taken before mutex is let go: writes reach the
  // output in the order their lines were collected (an error line never
  // overtakes a flush of its thread's earlier lines).
  std::mutex output;
  std::condition_variable wake;
  std::string pending;
  std::vector<std::shared_ptr<Stage>> stages;  // of every thread that logged
  std::atomic<bool> batching{false};           // set while the writer runs
  std::thread writer;
  std::chrono::milliseconds interval{0};
  bool stopping = false;
  uint64_t dropped = 0;

  static constexpr size_t kFlushBytes = 64 * 1024;
  static constexpr size_t kStageBytes = 16 * 1024;
  static constexpr size_t kMaxPending = 8 * 1024 * 1024;  // writer stuck: drop

  void run() {
    std::unique_lock lock(mutex);
    while (!stopping) {
      wake.wait_for(lock, interval, [this] { return stopping || pending.size() >= kFlushBytes; });
      flush_locked(lock);
    }
    flush_locked(lock);
  }

  // Moves every thread's staged lines to pending; forgets the stages of
  // threads that have ended. Holds mutex.
  void collect_locked() {
    for (auto it = stages.begin(); it != stages.end();) {
      {
        std::lock_guard stage_lock((*it)->mutex);
        append_locked((*it)->lines);
        (*it)->lines.clear();
      }
      if (it->use_count() == 1)
        it = stages.erase(it);
      else
        ++it;
    }
  }

  void append_locked(const std::string& lines) {
    if (pending.size() + lines.size() > kMaxPending) {
      ++dropped;
      return;
    }
    pending += lines;
  }

  void flush_locked(std::unique_lock<std::mutex>& lock) {
    collect_locked();
    if (pending.empty()) return;
    std::string out;
    out.swap(pending);
    std::unique_lock writing(output);
    lock.unlock();
    write_all(out.data(), out.size());
    writing.unlock();
    lock.lock();
  }
};

Batcher& batcher() {
  static Batcher* b = new Batcher;  // never destroyed: threads may log at exit
  return *b;
}

// This thread's stage, registered with the batcher on first use; the
// batcher forgets it once the thread has ended and its lines are out.
Stage& this_threads_stage() {
  thread_local std::shared_ptr<Stage> stage = [] {
    auto s = std::make_shared<Stage>();
    Batcher& b = batcher();
    std::lock_guard lock(b.mutex);
    b.stages.push_back(s);
    return s;
  }();
  return *stage;
}

void write_line(std::string& line, bool urgent = false) {
  line += '\n';
  Batcher& b = batcher();
  if (!urgent && b.batching.load(std::memory_order_relaxed)) {
    Stage& stage = this_threads_stage();
    std::string chunk;
    {
      std::lock_guard lock(stage.mutex);
      // Checked again under the stage's lock: stop_batching() collects
      // every stage after clearing it, so no line is left behind.
      if (b.batching.load(std::memory_order_relaxed)) {
        stage.lines += line;
        if (stage.lines.size() < Batcher::kStageBytes) return;
        chunk.swap(stage.lines);
      }
    }
    if (!chunk.empty()) {
      std::lock_guard lock(b.mutex);
      b.append_locked(chunk);
      if (b.pending.size() >= Batcher::kFlushBytes) b.wake.notify_one();
      return;
    }
  }
  // Unbatched, or urgent: write what is pending first to keep the order.
  std::unique_lock lock(b.mutex);
  b.collect_locked();
  std::string out;
  out.swap(b.pending);
  out += line;
  std::lock_guard writing(b.output);
  write_all(out.data(), out.size());
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
  out +=
      nlohmann::json(std::string(s)).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace

Level parse_level(std::string_view name) {
  if (name == "debug") return Level::debug;
  if (name == "warn") return Level::warn;
  if (name == "error") return Level::error;
  return Level::info;
}

void set_level(Level level) { g_level = static_cast<int>(level); }

void start_batching(std::chrono::milliseconds interval) {
  Batcher& b = batcher();
  std::lock_guard lock(b.mutex);
  if (interval.count() <= 0 || b.writer.joinable()) return;
  b.interval = interval;
  b.batching = true;
  b.writer = std::thread([&b] {
    name_this_thread("gv-log");
    b.run();
  });
}

void flush() {
  Batcher& b = batcher();
  std::unique_lock lock(b.mutex);
  b.flush_locked(lock);
}

void stop_batching() {
  Batcher& b = batcher();
  {
    std::lock_guard lock(b.mutex);
    if (!b.writer.joinable()) return;
    b.batching = false;
    b.stopping = true;
  }
  b.wake.notify_all();
  b.writer.join();
  std::unique_lock lock(b.mutex);
  b.flush_locked(lock);  // lines staged while the writer made its last flush
  b.writer = std::thread();
  b.stopping = false;
}
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
      line += it.value().dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    }
  }
  line += '}';
  write_line(line, level >= Level::error);
}

void access(const AccessRecord& r) {
  if (!enabled(Level::info)) return;
  thread_local std::string line;  // reused: this runs once per request
  line.assign("{\"ts\":\"");
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
  // duration as milliseconds with three decimals, in integers: printf's
  // floating point is a measurable cost per request.
  auto micros = static_cast<int64_t>(r.duration_ms * 1000.0 + 0.5);
  line += ",\"status\":";
  line += std::to_string(r.status);
  line += ",\"duration_ms\":";
  line += std::to_string(micros / 1000);
  line += '.';
  int frac = static_cast<int>(micros % 1000);
  line += static_cast<char>('0' + frac / 100);
  line += static_cast<char>('0' + frac / 10 % 10);
  line += static_cast<char>('0' + frac % 10);
  line += '}';
  write_line(line);
}

}  // namespace gv::log
