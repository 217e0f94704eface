#include "core/response_cache.hpp"

namespace gv {

ResponseCache::ResponseCache(size_t max_bytes, std::chrono::milliseconds max_age)
    : max_bytes_(max_bytes),
      shard_bytes_(max_bytes / kShards),
      max_age_(max_age),
      generations_(max_bytes > 0 ? new std::atomic<uint32_t>[kSlots] : nullptr) {
  if (generations_)
    for (size_t i = 0; i < kSlots; ++i) generations_[i].store(0, std::memory_order_relaxed);
}

std::shared_ptr<const ResponseCache::Answer> ResponseCache::find(std::string_view key,
                                                                 Clock::time_point now) {
  if (!enabled()) return nullptr;
  Shard& s = shard_of(key);
  {
    std::lock_guard lock(s.mutex);
    auto found = s.index.find(key);
    if (found != s.index.end()) {
      Lru::iterator it = found->second;
      // acquire: pairs with invalidate()'s release, after the writer's commit.
      bool fresh = now < it->expires && generations_[it->ticket.slot].load(
                                            std::memory_order_acquire) == it->ticket.generation;
      if (fresh) {
        // Marked, not moved: a hit touches no other entry (see store()).
        it->used = true;
        hits_.fetch_add(1, std::memory_order_relaxed);
        return it->answer;
      }
      erase(s, it);
    }
  }
  misses_.fetch_add(1, std::memory_order_relaxed);
  return nullptr;
}

ResponseCache::Ticket ResponseCache::ticket(std::string_view tag) const {
  Ticket t;
  if (!enabled()) return t;
  t.slot = slot_of(tag);
  t.generation = generations_[t.slot].load(std::memory_order_acquire);
  return t;
}

void ResponseCache::store(std::string key, Ticket ticket, std::shared_ptr<const Answer> answer,
                          Clock::time_point asked) {
  if (!enabled() || !answer) return;
  size_t bytes = key.size() + answer->body.size() + kEntryOverhead;
  for (const auto& [name, value] : answer->headers) bytes += name.size() + value.size() + 64;
  if (bytes > shard_bytes_) return;
  // Already stale: invalidated while the operation ran.
  if (generations_[ticket.slot].load(std::memory_order_acquire) != ticket.generation) return;
  Shard& s = shard_of(key);
  std::lock_guard lock(s.mutex);
  if (auto found = s.index.find(key); found != s.index.end()) erase(s, found->second);
  // CLOCK, an approximation of least recently used: the oldest entry goes
  // unless it was used since it last came round, in which case it gets
  // another turn at the front.
  while (s.bytes + bytes > shard_bytes_ && !s.lru.empty()) {
    auto last = std::prev(s.lru.end());
    if (last->used) {
      last->used = false;
      s.lru.splice(s.lru.begin(), s.lru, last);
      continue;
    }
    erase(s, last);
    evictions_.fetch_add(1, std::memory_order_relaxed);
  }
  s.lru.push_front(
      Entry{std::move(key), std::move(answer), ticket, asked + max_age_, bytes, false});
  s.index.emplace(s.lru.front().key, s.lru.begin());
  s.bytes += bytes;
  stores_.fetch_add(1, std::memory_order_relaxed);
}

void ResponseCache::invalidate(std::string_view tag) {
  if (!enabled()) return;
  generations_[slot_of(tag)].fetch_add(1, std::memory_order_acq_rel);
  invalidations_.fetch_add(1, std::memory_order_relaxed);
}

void ResponseCache::erase(Shard& s, Lru::iterator it) {
  s.bytes -= it->bytes;
  s.index.erase(std::string_view(it->key));
  s.lru.erase(it);
}

ResponseCache::Stats ResponseCache::stats() const {
  Stats st;
  st.hits = hits_.load(std::memory_order_relaxed);
  st.misses = misses_.load(std::memory_order_relaxed);
  st.stores = stores_.load(std::memory_order_relaxed);
  st.evictions = evictions_.load(std::memory_order_relaxed);
  st.invalidations = invalidations_.load(std::memory_order_relaxed);
  for (const auto& s : shards_) {
    std::lock_guard lock(s.mutex);
    st.entries += s.index.size();
    st.bytes += s.bytes;
  }
  return st;
}

}  // namespace gv
