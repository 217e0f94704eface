// Events: the envelope, event ids, type patterns and partitioning.
//
// Envelope JSON (to_json / from_json), the form the dead-letter table keeps
// and a network broker would carry:
//   {"id":"01J...","type":"post.created","key":"post:1","time":1732350000000,
//    "source":"posts","schema_version":1,"payload":{...}}
// "payload" is the payload document itself (an object) when the text
// parses, so an operator reading a dead letter sees JSON rather than an
// escaped string; from_json accepts an object (serialized back to text,
// which may reformat it: same JSON value, not the same bytes) or a string
// (taken as is).
//
// Event ids are ULIDs (https://github.com/ulid/spec): 26 Crockford base32
// characters, 10 for the 48-bit Unix-millisecond time and 16 for 80 random
// bits, so the text sorts like the creation order. new_event_id() is
// monotonic within the process: under one mutex it keeps the last
// (time, random) pair; a later millisecond takes fresh random bits from
// OpenSSL's RAND_bytes (drawn ahead for 64 milliseconds; std::random_device
// if that fails), the same or an earlier millisecond (clock stepped back)
// reuses the last time with the random part plus one. Ids from every thread are therefore unique
// and strictly increasing in the order the mutex hands them out.
//
// Types and patterns: a type is segments of [a-z0-9_]+ joined by '.', at
// most kMaxTypeBytes. A pattern is a type (exact match), a type followed by
// ".*" (any type with one or more further segments: "post.*" matches
// "post.created" and "post.edit.v2", not "post"), or "*" (everything).
//
// Partitioning: FNV-1a 64 (offset basis 0xcbf29ce484222325, prime
// 0x100000001b3) over the key's bytes, modulo the partition count. It is
// part of the on-disk contract of the in-process log: changing it would
// reorder events of a key across a restart.
#include <openssl/rand.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <mutex>
#include <random>

#include "core/log.hpp"
#include "events/events.hpp"

namespace gv::events {

// ---- envelope ----

nlohmann::json Envelope::to_json() const {
  nlohmann::json p = nlohmann::json::parse(payload, nullptr, /*allow_exceptions=*/false);
  if (p.is_discarded()) p = payload;
  return {{"id", id},
          {"type", type},
          {"key", key},
          {"time", time_ms},
          {"source", source},
          {"schema_version", schema_version},
          {"payload", std::move(p)}};
}

std::optional<Envelope> Envelope::from_json(const nlohmann::json& j) {
  if (!j.is_object()) return std::nullopt;
  auto text = [&](const char* name, std::string& out) {
    auto it = j.find(name);
    if (it == j.end() || !it->is_string()) return false;
    out = it->get<std::string>();
    return true;
  };
  Envelope e;
  if (!text("id", e.id) || !text("type", e.type) || !text("key", e.key) ||
      !text("source", e.source))
    return std::nullopt;
  auto time = j.find("time");
  if (time == j.end() || !time->is_number_integer()) return std::nullopt;
  e.time_ms = time->get<int64_t>();
  auto version = j.find("schema_version");
  if (version == j.end() || !version->is_number_integer()) return std::nullopt;
  int64_t v = version->get<int64_t>();
  if (v < 0 || v > INT32_MAX) return std::nullopt;
  e.schema_version = static_cast<int>(v);
  auto payload = j.find("payload");
  if (payload == j.end()) return std::nullopt;
  if (payload->is_object())
    e.payload = payload->dump();
  else if (payload->is_string())
    e.payload = payload->get<std::string>();
  else
    return std::nullopt;
  return e;
}

// ---- ULID ----

namespace {

constexpr char kCrockford[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

struct UlidState {
  std::mutex mutex;
  uint64_t time_ms = 0;
  uint16_t rand_hi = 0;  // the top 16 of the 80 random bits
  uint64_t rand_lo = 0;  // the low 64
  std::random_device fallback;
  // Random bytes drawn ahead from RAND_bytes, 10 taken per new millisecond:
  // one call per 64 of them (a call costs about 6,500 instructions, whatever
  // its length; under load every millisecond is new).
  std::array<unsigned char, 640> pool{};
  size_t pool_used = 640;
};

UlidState& ulid_state() {
  static UlidState state;
  return state;
}

void fill_random(UlidState& s) {
  constexpr size_t kBytes = 10;
  if (s.pool_used + kBytes > s.pool.size()) {
    if (RAND_bytes(s.pool.data(), static_cast<int>(s.pool.size())) != 1)
      for (auto& b : s.pool) b = static_cast<unsigned char>(s.fallback() & 0xff);
    s.pool_used = 0;
  }
  const unsigned char* bytes = s.pool.data() + s.pool_used;
  s.pool_used += kBytes;
  s.rand_hi = static_cast<uint16_t>((bytes[0] << 8) | bytes[1]);
  s.rand_lo = 0;
  for (size_t i = 2; i < kBytes; ++i) s.rand_lo = (s.rand_lo << 8) | bytes[i];
}

}  // namespace

std::string event_id_floor(int64_t time_ms) {
  auto time = static_cast<uint64_t>(std::max<int64_t>(time_ms, 0)) & ((uint64_t{1} << 48) - 1);
  std::string prefix(10, '0');
  for (int i = 9; i >= 0; --i) {  // 48 time bits in 10 characters (top 2 bits zero)
    prefix[static_cast<size_t>(i)] = kCrockford[time & 31];
    time >>= 5;
  }
  return prefix;
}

std::string new_event_id() {
  const auto now = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                             std::chrono::system_clock::now().time_since_epoch())
                                             .count()) &
                   ((uint64_t{1} << 48) - 1);
  uint64_t time = 0, lo = 0;
  uint16_t hi = 0;
  {
    UlidState& s = ulid_state();
    std::lock_guard lock(s.mutex);
    if (now > s.time_ms) {
      s.time_ms = now;
      fill_random(s);
    } else if (++s.rand_lo == 0 && ++s.rand_hi == 0) {
      // 2^80 ids in one millisecond cannot happen; borrow the next one.
      ++s.time_ms;
      fill_random(s);
    }
    time = s.time_ms;
    hi = s.rand_hi;
    lo = s.rand_lo;
  }
  std::string id = event_id_floor(static_cast<int64_t>(time));
  id.resize(26, '0');
  for (int i = 25; i >= 10; --i) {  // 80 random bits in 16 characters
    id[static_cast<size_t>(i)] = kCrockford[lo & 31];
    lo = (lo >> 5) | (static_cast<uint64_t>(hi & 31) << 59);
    hi = static_cast<uint16_t>(hi >> 5);
  }
  return id;
}

// ---- types and patterns ----

namespace {

bool segment_char(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'; }

}  // namespace

bool valid_type(std::string_view type) {
  if (type.empty() || type.size() > kMaxTypeBytes) return false;
  bool segment_empty = true;
  for (char c : type) {
    if (c == '.') {
      if (segment_empty) return false;
      segment_empty = true;
    } else if (segment_char(c)) {
      segment_empty = false;
    } else {
      return false;
    }
  }
  return !segment_empty;
}

bool valid_pattern(std::string_view pattern) {
  if (pattern == "*") return true;
  if (pattern.size() > 2 && pattern.substr(pattern.size() - 2) == ".*")
    return valid_type(pattern.substr(0, pattern.size() - 2));
  return valid_type(pattern);
}

bool type_matches(std::string_view pattern, std::string_view type) {
  if (!valid_pattern(pattern) || !valid_type(type)) return false;
  if (pattern == "*") return true;
  if (pattern.size() > 2 && pattern.substr(pattern.size() - 2) == ".*") {
    std::string_view prefix = pattern.substr(0, pattern.size() - 1);  // "post."
    return type.size() > prefix.size() && type.substr(0, prefix.size()) == prefix;
  }
  return pattern == type;
}

// ---- partitioning ----

uint64_t fnv1a64(std::string_view bytes) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (char c : bytes) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ULL;
  }
  return h;
}

int partition_of(std::string_view key, int partitions) {
  if (partitions <= 1) return 0;
  return static_cast<int>(fnv1a64(key) % static_cast<uint64_t>(partitions));
}

bool Subscription::matches(std::string_view type) const {
  for (const auto& p : patterns)
    if (type_matches(p, type)) return true;
  return false;
}

void log_late_subscription(const std::string& group) {
  log::error("events: subscribe after start is ignored", {{"group", group}});
}

std::string check_delivery_options(int partitions, int consumer_threads) {
  if (partitions < 1 || partitions > 1024)
    return "events partitions must be 1..1024, got " + std::to_string(partitions);
  if (consumer_threads < 1 || consumer_threads > 64)
    return "events consumer_threads must be 1..64, got " + std::to_string(consumer_threads);
  return "";
}

}  // namespace gv::events
