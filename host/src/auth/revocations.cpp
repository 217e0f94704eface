#include "auth/revocations.hpp"

namespace gv::auth {
namespace {

int64_t now_s() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

void Revocations::revoke_session(const std::string& sid) {
  int64_t now = now_s();
  std::unique_lock lock(mutex_);
  prune(now);
  sessions_[sid] = now + keep_.count();
}

void Revocations::revoke_user(const std::string& user_id, int64_t issued_before) {
  int64_t now = now_s();
  std::unique_lock lock(mutex_);
  prune(now);
  auto& entry = users_[user_id];
  entry.first = std::max(entry.first, issued_before);
  entry.second = now + keep_.count();
}

bool Revocations::revoked(const Identity& id) const {
  std::shared_lock lock(mutex_);
  if (sessions_.empty() && users_.empty()) return false;
  if (!sessions_.empty()) {
    auto sid = id.claims().find("sid");
    if (sid != id.claims().end() && sid->is_string() && sessions_.count(sid->get<std::string>()))
      return true;
  }
  auto user = users_.find(id.user_id);
  if (user == users_.end()) return false;
  auto iat = id.claims().find("iat");
  // A token without iat cannot prove it came after the revocation.
  if (iat == id.claims().end() || !iat->is_number_integer()) return true;
  return iat->get<int64_t>() <= user->second.first;
}

size_t Revocations::size() const {
  std::shared_lock lock(mutex_);
  return sessions_.size() + users_.size();
}

void Revocations::prune(int64_t now) {
  if (now < next_prune_) return;
  next_prune_ = now + 60;
  std::erase_if(sessions_, [now](const auto& e) { return e.second < now; });
  std::erase_if(users_, [now](const auto& e) { return e.second.second < now; });
}

}  // namespace gv::auth
