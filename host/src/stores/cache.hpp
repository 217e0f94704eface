// The cache store seen by the host and, through the C ABI, by plugins:
// key/value with TTL, integer counters and sorted sets (Redis ZSET-like).
// MemoryCache is the in-process implementation; a Redis one can sit behind
// the same interface, so nothing here names a library type.
//
// Conventions for every implementation:
// - Keys, values and members are byte strings (any bytes, including NUL).
//   Callers namespace their keys; the store does not.
// - No exceptions cross this interface.
// - Operations that change the store return CacheStatus or CacheResult<T>, so
//   a remote backend can report failure. Reads return plain values: a missing
//   or expired key, a key holding the other kind of value (string vs sorted
//   set), and a backend that cannot be reached all read as absent/empty.
//   Cache content must always be rebuildable from the source of truth.
// - A TTL of 0 means "no expiry"; a negative TTL is invalid_argument.
// - A key holds either a string or a sorted set. A write of the wrong kind
//   (incr on a sorted set, zadd on a string) fails with wrong_type; set()
//   replaces whatever the key held, like Redis SET.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace gv::stores {

enum class CacheStatus {
  ok,
  invalid_argument,  // negative TTL, NaN score
  wrong_type,        // the key holds the other kind of value
  not_integer,       // incr on a value that is not a decimal int64
  overflow,          // incr would leave the int64 range
  too_large,         // the entry alone would exceed the store's memory bound
  unavailable,       // a remote backend could not be reached
};

constexpr std::string_view to_string(CacheStatus s) {
  switch (s) {
    case CacheStatus::ok:
      return "ok";
    case CacheStatus::invalid_argument:
      return "invalid argument";
    case CacheStatus::wrong_type:
      return "wrong type";
    case CacheStatus::not_integer:
      return "value is not an integer";
    case CacheStatus::overflow:
      return "increment would overflow";
    case CacheStatus::too_large:
      return "entry larger than the cache";
    case CacheStatus::unavailable:
      return "cache unavailable";
  }
  return "unknown";
}

// A status plus a value; value is meaningful only when ok().
template <class T>
struct CacheResult {
  CacheStatus status = CacheStatus::ok;
  T value{};
  bool ok() const { return status == CacheStatus::ok; }
};

struct ScoredMember {
  std::string member;
  double score = 0;
  bool operator==(const ScoredMember&) const = default;
};

struct CacheStats {
  uint64_t hits = 0;         // reads that found their key (see get, z*)
  uint64_t misses = 0;       // reads that did not
  uint64_t evictions = 0;    // live entries dropped to respect the bound
  uint64_t expired = 0;      // entries dropped because their TTL passed
  uint64_t bytes_used = 0;   // the store's own (approximate) accounting
  uint64_t bytes_limit = 0;  // the bound; 0 if the backend does not say
  uint64_t keys = 0;         // may include expired keys not yet purged
};

class Cache {
 public:
  using Ttl = std::chrono::milliseconds;

  virtual ~Cache() = default;

  // --- strings ---

  // The value of key, or nullopt if it is absent, expired or a sorted set.
  // Counts a hit or a miss.
  virtual std::optional<std::string> get(std::string_view key) = 0;

  // Stores value under key, replacing any value of either kind, with the
  // given TTL (0: none). The old TTL is discarded.
  virtual CacheStatus set(std::string_view key, std::string_view value, Ttl ttl) = 0;

  // Like set, but only if key holds nothing (of either kind). value is true
  // when it stored, false when the key already existed. Atomic: usable as a
  // lock or a de-duplication marker.
  virtual CacheResult<bool> set_if_absent(std::string_view key, std::string_view value,
                                          Ttl ttl) = 0;

  // Removes key of either kind. value is true if it existed.
  virtual CacheResult<bool> del(std::string_view key) = 0;

  // Gives an existing key a new TTL (0: remove its expiry). value is false
  // (and nothing changes) if the key does not exist.
  virtual CacheResult<bool> expire(std::string_view key, Ttl ttl) = 0;

  // Remaining time to live: nullopt if the key is absent, 0 if it has no
  // expiry, otherwise the remaining time rounded up (so never 0 while live).
  // Not counted as a hit or miss.
  virtual std::optional<Ttl> ttl(std::string_view key) = 0;

  // --- counters ---

  // Adds delta to the decimal int64 stored at key and returns the new value.
  // An absent key starts at 0 and gets ttl_if_created (0: none); an existing
  // key keeps its TTL. The value stays a decimal string, readable by get.
  // Fails with not_integer, overflow or wrong_type without changing anything.
  virtual CacheResult<int64_t> incr(std::string_view key, int64_t delta, Ttl ttl_if_created) = 0;

  // --- sorted sets ---
  // Members are unique and ordered by score, ties by member bytes (unsigned,
  // like memcmp). Ranks count from 0 at the lowest score. A sorted set is
  // created without expiry by its first zadd (give it one with expire) and
  // removed when its last member goes.

  // Adds member with score, or moves an existing member to score. value is
  // true if the member is new.
  virtual CacheResult<bool> zadd(std::string_view key, std::string_view member, double score) = 0;

  // Removes member. value is true if it was there.
  virtual CacheResult<bool> zrem(std::string_view key, std::string_view member) = 0;

  // The member's score, or nullopt. Counts a hit if the set exists (even
  // without the member), a miss otherwise.
  virtual std::optional<double> zscore(std::string_view key, std::string_view member) = 0;

  // The number of members (0 if absent). Counts a hit or a miss.
  virtual size_t zcard(std::string_view key) = 0;

  // Members with ranks start..stop inclusive, Redis ZRANGE semantics:
  // negative indexes count from the end (-1 is the last), out-of-range
  // indexes are clamped, start > stop gives nothing. reverse ranks from the
  // highest score (rank 0 = highest) and returns highest first.
  // Counts a hit or a miss.
  virtual std::vector<ScoredMember> zrange_by_rank(std::string_view key, int64_t start,
                                                   int64_t stop, bool reverse) = 0;

  // Members with min <= score <= max, lowest first (highest first if
  // reverse; min and max keep their meaning), at most limit of them
  // (0: no limit). For an exclusive bound pass std::nextafter(bound, ...).
  // Counts a hit or a miss.
  virtual std::vector<ScoredMember> zrange_by_score(std::string_view key, double min, double max,
                                                    bool reverse, size_t limit) = 0;

  // Removes members with ranks start..stop (ascending, same index rules as
  // zrange_by_rank). value is how many went. To keep only the N highest
  // (newest, with time as the score): zremrange_by_rank(key, 0, -N - 1).
  virtual CacheResult<size_t> zremrange_by_rank(std::string_view key, int64_t start,
                                                int64_t stop) = 0;

  // --- upkeep ---

  // Drops up to max entries whose TTL has passed; returns how many. The host
  // calls it periodically so expired keys nobody reads free their memory.
  // Backends that expire on their own (Redis) return 0.
  virtual size_t purge_expired(size_t max) = 0;

  // Counters and gauges for /metrics. Hits and misses count key look-ups
  // by reads, as Redis's keyspace_hits/keyspace_misses do.
  virtual CacheStats stats() = 0;
};

}  // namespace gv::stores
