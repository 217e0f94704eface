// Answers of cacheable operations (an HTTP GET whose operation declares a
// cache tag), kept in memory and served on the I/O thread without running
// plugin code: a hit costs about what /healthz costs.
//
// Freshness. Every answer carries a tag naming what it shows
// ("posts\0post:42": the plugin, then the operation's tag with the request's
// path parameters). A plugin marks a tag stale after the write that changes
// what it names has committed (Tx::invalidate in the SDK). Stale answers are
// not searched for: a tag hashes to one of kSlots generation counters, and
// invalidate() bumps its counter. A request takes a Ticket (the counter as
// it is) *before* its operation runs, and the answer is stored with it; an
// entry is served only while its counter still holds the ticket's value. So
// an answer computed from data read before a commit is never served after
// that commit's invalidation, whichever finishes first. Tags that share a
// counter invalidate each other's answers: a miss, never a stale answer.
//
// Bounds: entries older than max_age are not served (across hosts, which
// see no invalidation from each other, that is how stale an answer can be),
// and entries not used lately are evicted past max_bytes (CLOCK: a hit
// marks its entry and moves nothing, so it touches no other entry).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace gv {

class ResponseCache {
 public:
  using Clock = std::chrono::steady_clock;
  using Headers = std::vector<std::pair<std::string, std::string>>;

  // A 200 answer as the operation gave it.
  struct Answer {
    std::string body;
    Headers headers;  // the plugin's own, already checked
  };

  // The generation of a tag's counter before the request ran.
  struct Ticket {
    uint32_t slot = 0;
    uint32_t generation = 0;
  };

  struct Stats {
    uint64_t hits = 0, misses = 0, stores = 0, evictions = 0, invalidations = 0;
    uint64_t entries = 0, bytes = 0;
  };

  // max_bytes 0: nothing is cached (enabled() is false).
  ResponseCache(size_t max_bytes, std::chrono::milliseconds max_age);
  ResponseCache(const ResponseCache&) = delete;
  ResponseCache& operator=(const ResponseCache&) = delete;

  bool enabled() const { return max_bytes_ > 0; }

  // The answer stored under key, if still fresh; counts a hit or a miss.
  std::shared_ptr<const Answer> find(std::string_view key, Clock::time_point now);

  Ticket ticket(std::string_view tag) const;

  // Stores answer under key unless its tag was invalidated since ticket
  // was taken, or it alone is larger than a shard's share of max_bytes
  // (max_bytes / kShards). asked: when the request began, before the
  // handler read anything; the answer's age counts from then.
  void store(std::string key, Ticket ticket, std::shared_ptr<const Answer> answer,
             Clock::time_point asked);

  // Every answer stored under tag, or under a tag sharing its counter, is
  // stale from now on.
  void invalidate(std::string_view tag);

  Stats stats() const;

  static constexpr size_t kSlots = 1 << 14;
  static constexpr size_t kShards = 8;
  // Bytes counted per entry besides its key, body and headers: the map
  // and list nodes, the shared answer, allocator rounding.
  static constexpr size_t kEntryOverhead = 192;

 private:
  struct Entry {
    std::string key;
    std::shared_ptr<const Answer> answer;
    Ticket ticket;
    Clock::time_point expires;
    size_t bytes = 0;
    bool used = false;  // found since it was stored or last came round
  };
  using Lru = std::list<Entry>;  // newest (or given another turn) first
  struct Shard {
    mutable std::mutex mutex;
    Lru lru;
    std::unordered_map<std::string_view, Lru::iterator> index;  // views of Entry::key
    size_t bytes = 0;
  };

  Shard& shard_of(std::string_view key) {
    return shards_[std::hash<std::string_view>{}(key) % kShards];
  }
  static uint32_t slot_of(std::string_view tag) {
    return static_cast<uint32_t>(std::hash<std::string_view>{}(tag) % kSlots);
  }
  static void erase(Shard& s, Lru::iterator it);

  const size_t max_bytes_;
  const size_t shard_bytes_;
  const std::chrono::milliseconds max_age_;
  std::unique_ptr<std::atomic<uint32_t>[]> generations_;
  Shard shards_[kShards];
  std::atomic<uint64_t> hits_{0}, misses_{0}, stores_{0}, evictions_{0}, invalidations_{0};
};

}  // namespace gv
