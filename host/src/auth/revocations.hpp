// Access tokens revoked before they expire: a session ended by logout (its
// "sid" claim), or every token of a user issued before a moment (a password
// change, a deleted account). The users plugin records them through the
// host function table; the dispatcher checks every call's identity, over
// HTTP and on already open WebSockets alike, so a revoked token stops
// working at once. Entries are kept only as long as a token they match can
// still be valid (its lifetime plus leeway), so memory stays bounded by the
// number of revocations in that window.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>

#include "auth/jwt.hpp"

namespace gv::auth {

class Revocations {
 public:
  // keep: how long an entry must live (access-token lifetime + leeway).
  explicit Revocations(std::chrono::seconds keep) : keep_(keep) {}

  // Tokens whose "sid" claim is sid stop working.
  void revoke_session(const std::string& sid);
  // Tokens of user_id with "iat" at or before issued_before (Unix seconds)
  // stop working.
  void revoke_user(const std::string& user_id, int64_t issued_before);

  bool revoked(const Identity& identity) const;
  size_t size() const;

 private:
  void prune(int64_t now);  // with mutex_ held

  const std::chrono::seconds keep_;
  mutable std::shared_mutex mutex_;
  std::unordered_map<std::string, int64_t> sessions_;  // sid -> drop after
  std::unordered_map<std::string, std::pair<int64_t, int64_t>>
      users_;  // user -> (before, drop after)
  int64_t next_prune_ = 0;
};

}  // namespace gv::auth
