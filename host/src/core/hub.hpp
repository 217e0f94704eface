// Live sockets by connection id, by user and by channel, so services can
// push to a user or a channel without knowing the transport.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace gv {

// A socket the hub can push to. send must not block (it queues, and closes
// the socket when its bounded queue is full); close ends it politely.
class PushTarget {
 public:
  virtual ~PushTarget() = default;
  virtual void send(std::shared_ptr<const std::string> text) = 0;
  virtual void close_going_away() = 0;
};

class Hub {
 public:
  // Registers a socket; returns its connection id (never 0).
  uint64_t add(std::weak_ptr<PushTarget> target, std::string user_id);
  void remove(uint64_t connection_id);
  void set_user(uint64_t connection_id, std::string user_id);

  bool join(uint64_t connection_id, const std::string& channel);
  bool leave(uint64_t connection_id, const std::string& channel);

  // {"event":event,"data":data}; data_json must be valid JSON text.
  // Returns how many sockets it was queued on.
  size_t push_to_user(std::string_view user_id, std::string_view event, std::string_view data_json);
  size_t push_to_channel(std::string_view channel, std::string_view event,
                         std::string_view data_json);

  void close_all();
  size_t size() const;

 private:
  struct Entry {
    std::weak_ptr<PushTarget> target;
    std::string user_id;
    std::set<std::string> channels;
  };
  using Index = std::map<std::string, std::set<uint64_t>, std::less<>>;
  size_t push_to(const Index& index, std::string_view key, std::string_view event,
                 std::string_view data_json);
  static std::shared_ptr<const std::string> frame(std::string_view event,
                                                  std::string_view data_json);
  size_t send_to(const std::set<uint64_t>& ids, const std::shared_ptr<const std::string>& text);

  mutable std::mutex mutex_;
  uint64_t next_id_ = 1;
  std::unordered_map<uint64_t, Entry> sockets_;
  Index by_user_;
  Index by_channel_;
};

}  // namespace gv
