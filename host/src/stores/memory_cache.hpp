// The in-process cache: the embedded default behind gv::stores::Cache.
//
// Memory: every entry is charged kEntryOverhead + key bytes + value bytes;
// each sorted-set member kMemberOverhead + member bytes (stored once; the
// score index holds views into it). The overheads approximate the node,
// list and index allocations, so bytes_used tracks real use within a small
// factor. After a write that leaves the store over its bound, expired
// entries go first, then least recently used ones (reads and writes both
// count as use). A single entry larger than the bound is refused with
// too_large.
//
// Threads: one mutex guards everything. Every operation is short (hash
// look-up, list splice, log-n set step), the bound and the LRU order stay
// exact and global, and reads move entries in the LRU list anyway, so a
// reader/writer lock would not help. Shard by key hash if profiling shows
// contention.
//
// Expiry: lazily on access, plus purge_expired which the host calls
// periodically. The clock is injectable so tests need not sleep.
#pragma once

#include <chrono>
#include <functional>
#include <list>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <variant>

#include "stores/cache.hpp"

namespace gv::stores {

class MemoryCache final : public Cache {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;
  using Clock = std::function<TimePoint()>;

  static constexpr size_t kEntryOverhead = 128;
  static constexpr size_t kMemberOverhead = 96;

  explicit MemoryCache(size_t max_bytes, Clock clock = &std::chrono::steady_clock::now);

  std::optional<std::string> get(std::string_view key) override;
  CacheStatus set(std::string_view key, std::string_view value, Ttl ttl) override;
  CacheResult<bool> set_if_absent(std::string_view key, std::string_view value, Ttl ttl) override;
  CacheResult<bool> del(std::string_view key) override;
  CacheResult<bool> expire(std::string_view key, Ttl ttl) override;
  std::optional<Ttl> ttl(std::string_view key) override;
  CacheResult<int64_t> incr(std::string_view key, int64_t delta, Ttl ttl_if_created) override;
  CacheResult<bool> zadd(std::string_view key, std::string_view member, double score) override;
  CacheResult<bool> zrem(std::string_view key, std::string_view member) override;
  std::optional<double> zscore(std::string_view key, std::string_view member) override;
  size_t zcard(std::string_view key) override;
  std::vector<ScoredMember> zrange_by_rank(std::string_view key, int64_t start, int64_t stop,
                                           bool reverse) override;
  std::vector<ScoredMember> zrange_by_score(std::string_view key, double min, double max,
                                            bool reverse, size_t limit) override;
  CacheResult<size_t> zremrange_by_rank(std::string_view key, int64_t start, int64_t stop) override;
  size_t purge_expired(size_t max) override;
  CacheStats stats() override;

 private:
  // Lets unordered_map find by string_view without building a std::string.
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  // Orders (score, member) pairs and also compares them with a bare score,
  // so lower_bound(min) / upper_bound(max) find score ranges.
  struct ByScore {
    using is_transparent = void;
    using Item = std::pair<double, std::string_view>;
    bool operator()(const Item& a, const Item& b) const { return a < b; }
    bool operator()(const Item& a, double b) const { return a.first < b; }
    bool operator()(double a, const Item& b) const { return a < b.first; }
  };
  struct ZSet {
    ZSet() = default;
    ZSet(const ZSet&) = delete;  // order holds views into scores' keys
    ZSet& operator=(const ZSet&) = delete;
    using Scores = std::unordered_map<std::string, double, Hash, std::equal_to<>>;
    Scores scores;                           // member -> score
    std::set<ByScore::Item, ByScore> order;  // (score, view of member)
  };
  using KeyList = std::list<const std::string*>;  // points at map keys
  struct Entry {
    std::variant<std::string, ZSet> value;
    TimePoint expires_at = TimePoint::max();  // max: no expiry
    KeyList::iterator lru;
    size_t cost = 0;
  };
  using Map = std::unordered_map<std::string, Entry, Hash, std::equal_to<>>;

  // All private helpers expect mutex_ to be held.
  Entry* live(std::string_view key, TimePoint now);
  Entry* read(std::string_view key, TimePoint now, bool want_zset);
  Entry& create(std::string_view key);
  void erase(Map::iterator it);
  void touch(Entry& e);
  void set_expiry(Entry& e, TimePoint now, Ttl ttl);
  void recharge(Entry& e, size_t cost);
  void make_room(TimePoint now);
  size_t purge_locked(TimePoint now, size_t max);
  void assign_string(std::string_view key, std::string_view value, Ttl ttl, TimePoint now);
  size_t remove_member(ZSet& z, ZSet::Scores::iterator it);
  void after_removal(std::string_view key, Entry& e, size_t freed);
  static size_t string_cost(std::string_view key, std::string_view value);
  static ZSet* as_zset(Entry* e);

  const size_t max_bytes_;
  const Clock clock_;
  std::mutex mutex_;
  Map entries_;
  KeyList lru_;  // front: most recently used
  std::set<std::pair<TimePoint, const std::string*>> expiry_;
  size_t bytes_used_ = 0;
  uint64_t hits_ = 0, misses_ = 0, evictions_ = 0, expired_ = 0;
};

}  // namespace gv::stores
