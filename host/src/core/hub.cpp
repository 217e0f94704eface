#include "core/hub.hpp"

#include <nlohmann/json.hpp>

namespace gv {

uint64_t Hub::add(std::weak_ptr<PushTarget> target, std::string user_id) {
  std::lock_guard lock(mutex_);
  uint64_t id = next_id_++;
  if (!user_id.empty()) by_user_[user_id].insert(id);
  sockets_[id] = Entry{std::move(target), std::move(user_id), {}};
  return id;
}

void Hub::remove(uint64_t id) {
  std::lock_guard lock(mutex_);
  auto it = sockets_.find(id);
  if (it == sockets_.end()) return;
  auto drop = [id](auto& index, const std::string& key) {
    auto found = index.find(key);
    if (found == index.end()) return;
    found->second.erase(id);
    if (found->second.empty()) index.erase(found);
  };
  if (!it->second.user_id.empty()) drop(by_user_, it->second.user_id);
  for (const auto& ch : it->second.channels) drop(by_channel_, ch);
  sockets_.erase(it);
}

void Hub::set_user(uint64_t id, std::string user_id) {
  std::lock_guard lock(mutex_);
  auto it = sockets_.find(id);
  if (it == sockets_.end()) return;
  if (!it->second.user_id.empty()) {
    auto found = by_user_.find(it->second.user_id);
    if (found != by_user_.end()) {
      found->second.erase(id);
      if (found->second.empty()) by_user_.erase(found);
    }
  }
  if (!user_id.empty()) by_user_[user_id].insert(id);
  it->second.user_id = std::move(user_id);
}

bool Hub::join(uint64_t id, const std::string& channel) {
  std::lock_guard lock(mutex_);
  auto it = sockets_.find(id);
  if (it == sockets_.end()) return false;
  it->second.channels.insert(channel);
  by_channel_[channel].insert(id);
  return true;
}

bool Hub::leave(uint64_t id, const std::string& channel) {
  std::lock_guard lock(mutex_);
  auto it = sockets_.find(id);
  if (it == sockets_.end()) return false;
  it->second.channels.erase(channel);
  auto found = by_channel_.find(channel);
  if (found != by_channel_.end()) {
    found->second.erase(id);
    if (found->second.empty()) by_channel_.erase(found);
  }
  return true;
}

std::shared_ptr<const std::string> Hub::frame(std::string_view event, std::string_view data_json) {
  std::string text = "{\"event\":";
  text += nlohmann::json(std::string(event)).dump();
  text += ",\"data\":";
  text += data_json.empty() ? std::string_view("null") : data_json;
  text += '}';
  return std::make_shared<const std::string>(std::move(text));
}

size_t Hub::send_to(const std::set<uint64_t>& ids, const std::shared_ptr<const std::string>& text) {
  // Collect under the lock, send outside it: send may close a socket,
  // which calls remove().
  std::vector<std::shared_ptr<PushTarget>> targets;
  {
    std::lock_guard lock(mutex_);
    for (uint64_t id : ids) {
      auto it = sockets_.find(id);
      if (it == sockets_.end()) continue;
      if (auto t = it->second.target.lock()) targets.push_back(std::move(t));
    }
  }
  for (auto& t : targets) t->send(text);
  return targets.size();
}

size_t Hub::push_to(const Index& index, std::string_view key, std::string_view event,
                    std::string_view data_json) {
  std::set<uint64_t> ids;
  {
    std::lock_guard lock(mutex_);
    auto it = index.find(key);
    if (it == index.end()) return 0;
    ids = it->second;
  }
  return send_to(ids, frame(event, data_json));
}

size_t Hub::push_to_user(std::string_view user_id, std::string_view event,
                         std::string_view data_json) {
  return push_to(by_user_, user_id, event, data_json);
}

size_t Hub::push_to_channel(std::string_view channel, std::string_view event,
                            std::string_view data_json) {
  return push_to(by_channel_, channel, event, data_json);
}

void Hub::close_all() {
  std::vector<std::shared_ptr<PushTarget>> targets;
  {
    std::lock_guard lock(mutex_);
    for (auto& [id, e] : sockets_)
      if (auto t = e.target.lock()) targets.push_back(std::move(t));
  }
  for (auto& t : targets) t->close_going_away();
}

size_t Hub::size() const {
  std::lock_guard lock(mutex_);
  return sockets_.size();
}

}  // namespace gv
