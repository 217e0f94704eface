#include "stores/memory_cache.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <iterator>
#include <limits>

namespace gv::stores {
namespace {

// Longer TTLs are clamped so that now + ttl cannot overflow the clock.
constexpr Cache::Ttl kMaxTtl = std::chrono::hours(24 * 365 * 100);

// The whole of s as a decimal int64 (optional '-', digits), or nullopt.
std::optional<int64_t> parse_int64(std::string_view s) {
  int64_t v = 0;
  const char* end = s.data() + s.size();
  auto [ptr, ec] = std::from_chars(s.data(), end, v);
  if (s.empty() || ec != std::errc() || ptr != end) return std::nullopt;
  return v;
}

// Redis rank rules: inclusive, negative counts from the end, clamped.
// Returns [first, last] as positions, or nullopt when nothing is selected.
std::optional<std::pair<size_t, size_t>> rank_range(int64_t start, int64_t stop, size_t n) {
  const auto size = static_cast<int64_t>(n);
  if (start < 0) start += size;
  if (stop < 0) stop += size;
  start = std::max<int64_t>(start, 0);
  stop = std::min<int64_t>(stop, size - 1);
  if (start > stop) return std::nullopt;  // also: empty set, start >= n
  return std::pair<size_t, size_t>(start, stop);
}

// Copies (member, score) from [first, last), at most limit (0: all).
template <class It>
std::vector<ScoredMember> collect(It first, It last, size_t limit) {
  std::vector<ScoredMember> out;
  for (; first != last && (limit == 0 || out.size() < limit); ++first) {
    out.push_back({std::string(first->second), first->first});
  }
  return out;
}

}  // namespace

MemoryCache::MemoryCache(size_t max_bytes, Clock clock)
    : max_bytes_(max_bytes), clock_(std::move(clock)) {}

// --- strings ---

std::optional<std::string> MemoryCache::get(std::string_view key) {
  std::lock_guard lock(mutex_);
  Entry* e = read(key, clock_(), false);
  if (!e) return std::nullopt;
  return std::get<std::string>(e->value);
}

CacheStatus MemoryCache::set(std::string_view key, std::string_view value, Ttl ttl) {
  if (ttl.count() < 0) return CacheStatus::invalid_argument;
  if (string_cost(key, value) > max_bytes_) return CacheStatus::too_large;
  std::lock_guard lock(mutex_);
  assign_string(key, value, ttl, clock_());
  return CacheStatus::ok;
}

CacheResult<bool> MemoryCache::set_if_absent(std::string_view key, std::string_view value,
                                             Ttl ttl) {
  if (ttl.count() < 0) return {CacheStatus::invalid_argument};
  if (string_cost(key, value) > max_bytes_) return {CacheStatus::too_large};
  std::lock_guard lock(mutex_);
  const TimePoint now = clock_();
  if (live(key, now)) return {CacheStatus::ok, false};
  assign_string(key, value, ttl, now);
  return {CacheStatus::ok, true};
}

CacheResult<bool> MemoryCache::del(std::string_view key) {
  std::lock_guard lock(mutex_);
  if (!live(key, clock_())) return {CacheStatus::ok, false};
  erase(entries_.find(key));
  return {CacheStatus::ok, true};
}

CacheResult<bool> MemoryCache::expire(std::string_view key, Ttl ttl) {
  if (ttl.count() < 0) return {CacheStatus::invalid_argument};
  std::lock_guard lock(mutex_);
  const TimePoint now = clock_();
  Entry* e = live(key, now);
  if (!e) return {CacheStatus::ok, false};
  set_expiry(*e, now, ttl);
  touch(*e);
  return {CacheStatus::ok, true};
}

std::optional<Cache::Ttl> MemoryCache::ttl(std::string_view key) {
  std::lock_guard lock(mutex_);
  const TimePoint now = clock_();
  Entry* e = live(key, now);
  if (!e) return std::nullopt;
  if (e->expires_at == TimePoint::max()) return Ttl(0);
  return std::chrono::ceil<Ttl>(e->expires_at - now);
}

// --- counters ---

CacheResult<int64_t> MemoryCache::incr(std::string_view key, int64_t delta, Ttl ttl_if_created) {
  if (ttl_if_created.count() < 0) return {CacheStatus::invalid_argument};
  std::lock_guard lock(mutex_);
  const TimePoint now = clock_();
  Entry* e = live(key, now);
  int64_t next = delta;
  if (e) {
    auto* text = std::get_if<std::string>(&e->value);
    if (!text) return {CacheStatus::wrong_type};
    std::optional<int64_t> current = parse_int64(*text);
    if (!current) return {CacheStatus::not_integer};
    if (__builtin_add_overflow(*current, delta, &next)) {
      return {CacheStatus::overflow};
    }
  }
  const std::string text = std::to_string(next);
  if (string_cost(key, text) > max_bytes_) return {CacheStatus::too_large};
  if (!e) {
    assign_string(key, text, ttl_if_created, now);
    return {CacheStatus::ok, next};
  }
  std::get<std::string>(e->value) = text;  // keeps the existing TTL
  recharge(*e, string_cost(key, text));
  touch(*e);
  make_room(now);
  return {CacheStatus::ok, next};
}

// --- sorted sets ---

CacheResult<bool> MemoryCache::zadd(std::string_view key, std::string_view member, double score) {
  if (std::isnan(score)) return {CacheStatus::invalid_argument};
  std::lock_guard lock(mutex_);
  const TimePoint now = clock_();
  Entry* e = live(key, now);
  ZSet* z = as_zset(e);
  if (e && !z) return {CacheStatus::wrong_type};
  if (z) {
    if (auto it = z->scores.find(member); it != z->scores.end()) {
      if (it->second != score) {  // re-index under the new score
        z->order.erase({it->second, it->first});
        it->second = score;
        z->order.emplace(score, it->first);
      }
      touch(*e);
      return {CacheStatus::ok, false};
    }
  }
  const size_t base = e ? e->cost : kEntryOverhead + key.size();
  const size_t cost = base + kMemberOverhead + member.size();
  if (cost > max_bytes_) return {CacheStatus::too_large};
  if (!e) {
    e = &create(key);
    z = &e->value.emplace<ZSet>();
  }
  auto it = z->scores.try_emplace(std::string(member), score).first;
  z->order.emplace(score, it->first);
  recharge(*e, cost);
  touch(*e);
  make_room(now);
  return {CacheStatus::ok, true};
}

CacheResult<bool> MemoryCache::zrem(std::string_view key, std::string_view member) {
  std::lock_guard lock(mutex_);
  Entry* e = live(key, clock_());
  if (!e) return {CacheStatus::ok, false};
  ZSet* z = as_zset(e);
  if (!z) return {CacheStatus::wrong_type};
  auto it = z->scores.find(member);
  if (it == z->scores.end()) return {CacheStatus::ok, false};
  const size_t freed = remove_member(*z, it);
  after_removal(key, *e, freed);
  return {CacheStatus::ok, true};
}

std::optional<double> MemoryCache::zscore(std::string_view key, std::string_view member) {
  std::lock_guard lock(mutex_);
  ZSet* z = as_zset(read(key, clock_(), true));
  if (!z) return std::nullopt;
  auto it = z->scores.find(member);
  if (it == z->scores.end()) return std::nullopt;
  return it->second;
}

size_t MemoryCache::zcard(std::string_view key) {
  std::lock_guard lock(mutex_);
  ZSet* z = as_zset(read(key, clock_(), true));
  return z ? z->scores.size() : 0;
}

std::vector<ScoredMember> MemoryCache::zrange_by_rank(std::string_view key, int64_t start,
                                                      int64_t stop, bool reverse) {
  std::lock_guard lock(mutex_);
  ZSet* z = as_zset(read(key, clock_(), true));
  if (!z) return {};
  auto range = rank_range(start, stop, z->order.size());
  if (!range) return {};
  const auto skip = static_cast<std::ptrdiff_t>(range->first);
  const size_t count = range->second - range->first + 1;
  if (reverse) {
    return collect(std::next(z->order.rbegin(), skip), z->order.rend(), count);
  }
  return collect(std::next(z->order.begin(), skip), z->order.end(), count);
}

std::vector<ScoredMember> MemoryCache::zrange_by_score(std::string_view key, double min, double max,
                                                       bool reverse, size_t limit) {
  std::lock_guard lock(mutex_);
  ZSet* z = as_zset(read(key, clock_(), true));
  // !(min <= max) also rejects NaN bounds.
  if (!z || !(min <= max)) return {};
  auto lo = z->order.lower_bound(min);  // first with score >= min
  auto hi = z->order.upper_bound(max);  // first with score > max
  if (reverse) {
    return collect(std::make_reverse_iterator(hi), std::make_reverse_iterator(lo), limit);
  }
  return collect(lo, hi, limit);
}

CacheResult<size_t> MemoryCache::zremrange_by_rank(std::string_view key, int64_t start,
                                                   int64_t stop) {
  std::lock_guard lock(mutex_);
  Entry* e = live(key, clock_());
  if (!e) return {CacheStatus::ok, 0};
  ZSet* z = as_zset(e);
  if (!z) return {CacheStatus::wrong_type};
  auto range = rank_range(start, stop, z->order.size());
  if (!range) return {CacheStatus::ok, 0};
  const size_t count = range->second - range->first + 1;
  auto pos = std::next(z->order.begin(), static_cast<std::ptrdiff_t>(range->first));
  size_t freed = 0;
  for (size_t i = 0; i < count; ++i) {
    auto member = z->scores.find(pos->second);
    ++pos;  // before remove_member invalidates the current node
    freed += remove_member(*z, member);
  }
  after_removal(key, *e, freed);
  return {CacheStatus::ok, count};
}

// --- upkeep ---

size_t MemoryCache::purge_expired(size_t max) {
  std::lock_guard lock(mutex_);
  return purge_locked(clock_(), max);
}

CacheStats MemoryCache::stats() {
  std::lock_guard lock(mutex_);
  return {hits_, misses_, evictions_, expired_, bytes_used_, max_bytes_, entries_.size()};
}

// --- helpers (mutex_ held) ---

size_t MemoryCache::string_cost(std::string_view key, std::string_view value) {
  return kEntryOverhead + key.size() + value.size();
}

MemoryCache::ZSet* MemoryCache::as_zset(Entry* e) {
  return e ? std::get_if<ZSet>(&e->value) : nullptr;
}

// The entry for key if present and unexpired; an expired one is dropped.
MemoryCache::Entry* MemoryCache::live(std::string_view key, TimePoint now) {
  auto it = entries_.find(key);
  if (it == entries_.end()) return nullptr;
  if (it->second.expires_at <= now) {
    erase(it);
    ++expired_;
    return nullptr;
  }
  return &it->second;
}

// live() for a read: counts a hit (and marks the entry used) only when the
// key holds the kind the reader wants; the other kind reads as absent.
MemoryCache::Entry* MemoryCache::read(std::string_view key, TimePoint now, bool want_zset) {
  Entry* e = live(key, now);
  if (!e || std::holds_alternative<ZSet>(e->value) != want_zset) {
    ++misses_;
    return nullptr;
  }
  ++hits_;
  touch(*e);
  return e;
}

// A new empty-string entry; the caller has checked that key is absent.
MemoryCache::Entry& MemoryCache::create(std::string_view key) {
  auto it = entries_.try_emplace(std::string(key)).first;
  Entry& e = it->second;
  lru_.push_front(&it->first);  // map nodes never move, so this stays valid
  e.lru = lru_.begin();
  e.cost = kEntryOverhead + key.size();
  bytes_used_ += e.cost;
  return e;
}

void MemoryCache::erase(Map::iterator it) {
  Entry& e = it->second;
  if (e.expires_at != TimePoint::max()) {
    expiry_.erase({e.expires_at, &it->first});
  }
  lru_.erase(e.lru);
  bytes_used_ -= e.cost;
  entries_.erase(it);
}

void MemoryCache::touch(Entry& e) { lru_.splice(lru_.begin(), lru_, e.lru); }

void MemoryCache::set_expiry(Entry& e, TimePoint now, Ttl ttl) {
  const std::string* key = *e.lru;
  if (e.expires_at != TimePoint::max()) expiry_.erase({e.expires_at, key});
  e.expires_at = TimePoint::max();
  if (ttl.count() == 0) return;
  e.expires_at = now + std::min(ttl, kMaxTtl);
  expiry_.emplace(e.expires_at, key);
}

void MemoryCache::recharge(Entry& e, size_t cost) {
  bytes_used_ = bytes_used_ - e.cost + cost;
  e.cost = cost;
}

// Frees what is already dead first, then the least recently used.
void MemoryCache::make_room(TimePoint now) {
  if (bytes_used_ <= max_bytes_) return;
  purge_locked(now, std::numeric_limits<size_t>::max());
  // The entry just written is at the front and fits the bound on its own,
  // so this stops before reaching it; the size test only makes that certain.
  while (bytes_used_ > max_bytes_ && lru_.size() > 1) {
    erase(entries_.find(*lru_.back()));
    ++evictions_;
  }
}

size_t MemoryCache::purge_locked(TimePoint now, size_t max) {
  size_t n = 0;
  while (n < max && !expiry_.empty() && expiry_.begin()->first <= now) {
    erase(entries_.find(*expiry_.begin()->second));
    ++n;
  }
  expired_ += n;
  return n;
}

// Sets key to a string value with a fresh TTL; the caller checked the size.
void MemoryCache::assign_string(std::string_view key, std::string_view value, Ttl ttl,
                                TimePoint now) {
  Entry* e = live(key, now);
  if (!e) e = &create(key);
  e->value.emplace<std::string>(value);
  set_expiry(*e, now, ttl);
  recharge(*e, string_cost(key, value));
  touch(*e);
  make_room(now);
}

// Drops one member from both indexes; returns the bytes it was charged.
size_t MemoryCache::remove_member(ZSet& z, ZSet::Scores::iterator it) {
  const size_t freed = kMemberOverhead + it->first.size();
  z.order.erase({it->second, it->first});  // before the key it views goes
  z.scores.erase(it);
  return freed;
}

// After members went: drop the set if it is empty, else re-account it.
void MemoryCache::after_removal(std::string_view key, Entry& e, size_t freed) {
  if (std::get<ZSet>(e.value).scores.empty()) {
    erase(entries_.find(key));
    return;
  }
  recharge(e, e.cost - freed);
  touch(e);
}

}  // namespace gv::stores
