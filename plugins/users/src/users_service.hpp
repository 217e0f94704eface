// Service of the users plugin: the rules (who may do what, rate limits,
// password hashing, session and token life cycle) over the DAL, with the
// host's services (token signing and revocation, jobs, log).
#pragma once

#include <argon2.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <sys/mman.h>
#include <grapevine/sdk.hpp>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "users_store.hpp"

namespace users {

using grapevine::Error;
using grapevine::json;
using grapevine::Request;

// Every tunable, with its default; the same keys and defaults are in the
// manifest's config schema (plugin.cpp) and in sdk-docs/plugins/users.md.
struct Settings {
  std::vector<std::string> admins;
  int max_concurrent_hashes = 2;
  int hash_wait_ms = 1000;
  int argon2_memory_kib = 19456;
  int argon2_passes = 2;
  int login_per_ip_per_minute = 10;
  int login_per_account_per_minute = 5;
  int register_per_ip_per_hour = 20;
  int refresh_token_ttl_days = 30;
  int list_max_page = 100;

  static Settings from(const json& c) {
    Settings s;
    if (c.contains("admins"))
      for (const auto& a : c["admins"]) s.admins.push_back(UsersStore::to_lower(a));
    s.max_concurrent_hashes = c.value("max_concurrent_hashes", s.max_concurrent_hashes);
    s.hash_wait_ms = c.value("hash_wait_ms", s.hash_wait_ms);
    s.argon2_memory_kib = c.value("argon2_memory_kib", s.argon2_memory_kib);
    s.argon2_passes = c.value("argon2_passes", s.argon2_passes);
    s.login_per_ip_per_minute = c.value("login_per_ip_per_minute", s.login_per_ip_per_minute);
    s.login_per_account_per_minute =
        c.value("login_per_account_per_minute", s.login_per_account_per_minute);
    s.register_per_ip_per_hour = c.value("register_per_ip_per_hour", s.register_per_ip_per_hour);
    s.refresh_token_ttl_days = c.value("refresh_token_ttl_days", s.refresh_token_ttl_days);
    s.list_max_page = c.value("list_max_page", s.list_max_page);
    return s;
  }
};

// ---- small helpers ----

inline int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

inline std::string iso_time(int64_t ms) {
  std::time_t t = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// Base64 without padding over the given 64-character alphabet.
inline std::string encode64(const unsigned char* data, size_t n, const char* abc) {
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < n; ++i) {
    acc = (acc << 8) | data[i];
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      out += abc[(acc >> bits) & 63];
    }
  }
  if (bits > 0) out += abc[(acc << (6 - bits)) & 63];
  return out;
}

inline std::string base64url(const unsigned char* data, size_t n) {
  return encode64(data, n, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_");
}

inline std::string base64url_decode(std::string_view in) {
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    int v = c >= 'A' && c <= 'Z'   ? c - 'A'
            : c >= 'a' && c <= 'z' ? c - 'a' + 26
            : c >= '0' && c <= '9' ? c - '0' + 52
            : c == '-'             ? 62
            : c == '_'             ? 63
                                   : -1;
    if (v < 0) break;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xff);
    }
  }
  return out;
}

// n random bytes from the OS CSPRNG (through OpenSSL), base64url.
inline std::string random_token(size_t n) {
  std::vector<unsigned char> bytes(n);
  if (RAND_bytes(bytes.data(), static_cast<int>(n)) != 1)
    throw std::runtime_error("RAND_bytes failed");
  return base64url(bytes.data(), n);
}

inline std::string sha256_hex(std::string_view s) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(s.data()), s.size(), digest);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned char b : digest) {
    out += hex[b >> 4];
    out += hex[b & 15];
  }
  return out;
}

// Characters (code points) in valid UTF-8 (the host checked validity).
inline size_t utf8_length(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s)
    if ((c & 0xC0) != 0x80) ++n;
  return n;
}

inline bool has_control(std::string_view s) {
  for (unsigned char c : s)
    if (c < 0x20 || c == 0x7f) return true;
  return false;
}

// A plain form check: local@domain.tld, no spaces or controls, at most 254.
inline bool valid_email(std::string_view e) {
  if (e.size() < 3 || e.size() > 254 || has_control(e)) return false;
  size_t at = e.find('@');
  if (at == std::string_view::npos || at == 0 || at > 64 || e.find('@', at + 1) != e.npos)
    return false;
  std::string_view domain = e.substr(at + 1);
  size_t dot = domain.rfind('.');
  if (dot == std::string_view::npos || dot == 0 || dot + 1 >= domain.size()) return false;
  if (domain.find("..") != domain.npos || domain.front() == '-' || domain.back() == '.')
    return false;
  for (char c : e)
    if (c == ' ' || c == '<' || c == '>' || c == '(' || c == ')' || c == ',' || c == ';' ||
        c == ':' || c == '\\' || c == '"' || c == '[' || c == ']')
      return false;
  return true;
}

inline bool valid_username(std::string_view u) {
  if (u.size() < 3 || u.size() > 30) return false;
  for (char c : u)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) return false;
  return true;
}

// A user id from a path or body: 1 .. 10^18, digits only; else 404.
inline int64_t parse_id(const json& v) {
  if (!v.is_string()) throw Error::not_found("no such user");
  const std::string& s = v.get_ref<const std::string&>();
  if (s.empty() || s.size() > 18 || s[0] == '0') throw Error::not_found("no such user");
  int64_t id = 0;
  for (char c : s) {
    if (c < '0' || c > '9') throw Error::not_found("no such user");
    id = id * 10 + (c - '0');
  }
  return id;
}

inline Error unauthorized(const std::string& m) { return Error(401, "unauthorized", m); }

// ---- password hashing ----

// argon2id with a bound on hashes running at once: each takes
// argon2_memory_kib of memory, so a flood of logins waits (up to
// hash_wait_ms) and then gets 503 instead of exhausting memory.
class PasswordHasher {
 public:
  explicit PasswordHasher(const Settings& s)
      : slots_(s.max_concurrent_hashes),
        wait_(s.hash_wait_ms),
        m_kib_(static_cast<uint32_t>(s.argon2_memory_kib)),
        t_(static_cast<uint32_t>(s.argon2_passes)) {}

  // The PHC string libargon2 writes: $argon2id$v=19$m=M,t=T,p=1$SALT$HASH.
  std::string hash(std::string_view password) {
    Slot slot(*this);
    unsigned char salt[16];
    if (RAND_bytes(salt, sizeof salt) != 1) throw std::runtime_error("RAND_bytes failed");
    unsigned char out[32];
    run(password, salt, sizeof salt, t_, m_kib_, out, sizeof out);
    return "$argon2id$v=19$m=" + std::to_string(m_kib_) + ",t=" + std::to_string(t_) + ",p=1$" +
           b64(salt, sizeof salt) + "$" + b64(out, sizeof out);
  }

  bool verify(const std::string& encoded, std::string_view password) {
    unsigned m = 0, t = 0, p = 0;
    int salt_at = 0;
    if (std::sscanf(encoded.c_str(), "$argon2id$v=19$m=%u,t=%u,p=%u$%n", &m, &t, &p, &salt_at) !=
            3 ||
        salt_at == 0 || p != 1 || m < 8 || m > (1u << 22) || t < 1 || t > 64)
      return false;
    size_t dollar = encoded.find('$', static_cast<size_t>(salt_at));
    if (dollar == std::string::npos) return false;
    std::string salt = unb64(std::string_view(encoded).substr(salt_at, dollar - salt_at));
    std::string expected = unb64(std::string_view(encoded).substr(dollar + 1));
    if (salt.size() < 8 || expected.size() < 16 || expected.size() > 64) return false;
    Slot slot(*this);
    std::string got(expected.size(), '\0');
    run(password, reinterpret_cast<const unsigned char*>(salt.data()), salt.size(), t, m,
        reinterpret_cast<unsigned char*>(got.data()), got.size());
    return CRYPTO_memcmp(got.data(), expected.data(), got.size()) == 0;
  }

 private:
  // argon2id with its memory mapped and unmapped per hash: through malloc,
  // freed blocks of 19 MiB stay in the worker threads' arenas and the
  // process keeps growing even though only a few hashes run at once.
  static void run(std::string_view password, const unsigned char* salt, size_t salt_len, uint32_t t,
                  uint32_t m_kib, unsigned char* out, size_t out_len) {
    argon2_context ctx{};
    ctx.out = out;
    ctx.outlen = static_cast<uint32_t>(out_len);
    ctx.pwd = reinterpret_cast<uint8_t*>(const_cast<char*>(password.data()));
    ctx.pwdlen = static_cast<uint32_t>(password.size());
    ctx.salt = const_cast<uint8_t*>(salt);
    ctx.saltlen = static_cast<uint32_t>(salt_len);
    ctx.t_cost = t;
    ctx.m_cost = m_kib;
    ctx.lanes = 1;
    ctx.threads = 1;
    ctx.version = ARGON2_VERSION_13;
    ctx.allocate_cbk = [](uint8_t** memory, size_t bytes) -> int {
      void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) return ARGON2_MEMORY_ALLOCATION_ERROR;
      *memory = static_cast<uint8_t*>(p);
      return ARGON2_OK;
    };
    ctx.free_cbk = [](uint8_t* memory, size_t bytes) { munmap(memory, bytes); };
    ctx.flags = ARGON2_DEFAULT_FLAGS;
    int rc = argon2id_ctx(&ctx);
    if (rc != ARGON2_OK)
      throw std::runtime_error(std::string("argon2: ") + argon2_error_message(rc));
  }

  // Standard base64 without padding, as in PHC strings.
  static std::string b64(const unsigned char* data, size_t n) {
    return encode64(data, n, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/");
  }
  static std::string unb64(std::string_view in) {
    std::string url(in);
    for (char& c : url) c = c == '+' ? '-' : c == '/' ? '_' : c;
    return base64url_decode(url);
  }

  struct Slot {
    explicit Slot(PasswordHasher& h) : h_(h) {
      std::unique_lock lock(h_.mutex_);
      if (!h_.freed_.wait_for(lock, h_.wait_, [&] { return h_.slots_ > 0; }))
        throw Error::unavailable("too many password checks at once; retry shortly");
      --h_.slots_;
    }
    ~Slot() {
      {
        std::lock_guard lock(h_.mutex_);
        ++h_.slots_;
      }
      h_.freed_.notify_one();
    }
    PasswordHasher& h_;
  };

  std::mutex mutex_;
  std::condition_variable freed_;
  int slots_;
  std::chrono::milliseconds wait_;
  uint32_t m_kib_, t_;
};

// ---- the service ----

class UsersService {
 public:
  UsersService(UsersStore& store, grapevine::ServiceContext ctx)
      : store_(store), ctx_(ctx), settings_(Settings::from(ctx.config())), hasher_(settings_) {
    ctx_.every("purge_sessions", std::chrono::hours(1), [this] {
      int64_t now = now_ms();
      store_.purge(now, now - revocation_window_ms());
    });
  }

  // After every plugin is created: learns the access-token lifetime,
  // re-asserts recent revocations (the host keeps them in memory only)
  // and promotes the configured admins.
  void start() {
    access_ttl_s_ = ctx_.access_token_ttl().count();
    int64_t now = now_ms();
    auto sids = store_.revoked_since(now - revocation_window_ms());
    for (const auto& sid : sids) ctx_.revoke_session(sid);
    int promoted = store_.promote_admins(settings_.admins, now);
    ctx_.log().info("users: " + std::to_string(sids.size()) + " revoked sessions re-asserted, " +
                    std::to_string(promoted) + " admins promoted");
  }

  const Settings& settings() const { return settings_; }

  json register_user(const json& in, const Request& req) {
    limit("register:ip:" + std::string(req.client_address()), settings_.register_per_ip_per_hour,
          std::chrono::hours(1));
    std::string username = UsersStore::to_lower(in.at("username").get<std::string>());
    if (!valid_username(username)) throw Error::bad_request("username: 3 to 30 of a-z, 0-9 and _");
    std::string email = in.at("email").get<std::string>();
    if (!valid_email(email)) throw Error::bad_request("email: not an email address");
    std::string password = in.at("password").get<std::string>();
    check_password(password, "password");
    std::string display = in.contains("display_name") ? in["display_name"].get<std::string>() : "";
    if (in.contains("display_name")) check_display_name(display);
    if (display.empty()) display = username;
    bool admin = std::find(settings_.admins.begin(), settings_.admins.end(), username) !=
                 settings_.admins.end();
    // Cheap pre-check so a taken name costs no hash; the insert checks again.
    if (store_.find_by_login(username) || store_.find_by_login(email)) {
      auto other = store_.find_by_login(username);
      throw Error::conflict(other && other->username == username ? "username is already taken"
                                                                 : "email is already registered");
    }
    int64_t now = now_ms();
    UserRow u = store_.create_user(UserRow{.username = username,
                                           .email = email,
                                           .display_name = display,
                                           .role = admin ? "admin" : "user",
                                           .password_hash = hasher_.hash(password),
                                           .created_ms = now});
    return view(u, true);
  }

  json login(const json& in, const Request& req) {
    std::string login = UsersStore::to_lower(in.at("login").get<std::string>());
    limit("login:ip:" + std::string(req.client_address()), settings_.login_per_ip_per_minute,
          std::chrono::minutes(1));
    limit("login:account:" + login, settings_.login_per_account_per_minute,
          std::chrono::minutes(1));
    std::string password = in.at("password").get<std::string>();
    auto user = store_.find_by_login(login);
    // Unknown user: verify against a dummy hash, so both cost the same.
    bool ok = hasher_.verify(user ? user->password_hash : dummy_hash(), password) && user;
    if (!ok) throw unauthorized("wrong login or password");
    std::string sid = random_token(16);
    std::string refresh = random_token(32);
    int64_t now = now_ms();
    store_.create_session(sid, user->id, sha256_hex(refresh), now, now + refresh_ttl_ms());
    return tokens(*user, sid, refresh);
  }

  json refresh(const json& in) {
    std::string presented = in.at("refresh_token").get<std::string>();
    std::string next = random_token(32);
    int64_t now = now_ms();
    Rotation r =
        store_.rotate(sha256_hex(presented), sha256_hex(next), now, now + refresh_ttl_ms());
    switch (r.result) {
      case RotateResult::rotated:
        break;
      case RotateResult::reused:
        // The family is revoked in the database; its access tokens die now.
        ctx_.revoke_session(r.session_id);
        ctx_.log().warn("users: refresh token reuse, session revoked for user " +
                        std::to_string(r.user_id));
        throw unauthorized("refresh token was already used; the session is ended");
      case RotateResult::expired:
        throw unauthorized("refresh token expired");
      default:
        throw unauthorized("invalid refresh token");
    }
    auto user = store_.find(r.user_id);
    if (!user) throw unauthorized("invalid refresh token");
    return tokens(*user, r.session_id, next);
  }

  void logout(const json& in, const Request& req) {
    int64_t now = now_ms();
    std::string sid(req.session_id());
    if (in.contains("refresh_token")) {
      auto s = store_.session_of(sha256_hex(in["refresh_token"].get<std::string>()));
      // Only the caller's own family; another's is ignored, not revealed.
      if (s && std::to_string(s->second) == req.user_id() && s->first != sid) {
        store_.revoke_session(s->first, now);
        ctx_.revoke_session(s->first);
      }
    }
    if (!sid.empty()) {
      store_.revoke_session(sid, now);
      ctx_.revoke_session(sid);
    }
  }

  json me(const Request& req) {
    auto u = store_.find(parse_id(json(std::string(req.user_id()))));
    if (!u) throw Error::not_found("no such user");
    return view(*u, true);
  }

  json get(const json& id_in, const Request& req) {
    int64_t id = parse_id(id_in);
    auto u = store_.find(id);
    if (!u) throw Error::not_found("no such user");
    return view(*u, may_see_private(id, req));
  }

  json list(const json& in) {
    int64_t after = in.contains("after") ? parse_id(in["after"]) : 0;
    int64_t limit = std::min<int64_t>(in.value("limit", 50), settings_.list_max_page);
    auto rows = store_.list(after, limit);
    json users = json::array();
    for (const auto& u : rows) users.push_back(view(u, true));
    json out = {{"users", users}, {"total", store_.count()}};
    out["next_cursor"] = static_cast<int64_t>(rows.size()) == limit && !rows.empty()
                             ? json(std::to_string(rows.back().id))
                             : json(nullptr);
    return out;
  }

  json update(const json& in, const Request& req) {
    int64_t id = parse_id(in.at("userId"));
    bool self = is_self(id, req);
    bool admin = req.has_role("admin");
    if (!self && !admin) throw Error::forbidden("only the user or an admin may change a profile");
    auto current = store_.find(id);
    if (!current) throw Error::not_found("no such user");
    UserChanges c;
    if (in.contains("display_name")) {
      std::string d = in["display_name"].get<std::string>();
      check_display_name(d);
      c.display_name = d.empty() ? current->username : d;
    }
    if (in.contains("email")) {
      std::string e = in["email"].get<std::string>();
      if (!valid_email(e)) throw Error::bad_request("email: not an email address");
      c.email = e;
    }
    if (in.contains("role")) {
      if (!admin) throw Error::forbidden("only an admin may change a role");
      c.role = in["role"].get<std::string>();
    }
    // The password and the email (where the account is reached) change
    // only with proof of the password: a stolen access token alone cannot
    // take the account over. Even an admin proves it for their own.
    bool guarded = in.contains("password") || in.contains("email");
    if (in.contains("old_password") && !guarded)
      throw Error::bad_request("old_password: only with password or email");
    if (in.contains("password")) check_password(in["password"].get<std::string>(), "password");
    if (self && guarded) {
      if (!in.contains("old_password"))
        throw Error::bad_request(std::string("old_password: needed to change the ") +
                                 (in.contains("password") ? "password" : "email"));
      if (!hasher_.verify(current->password_hash, in["old_password"].get<std::string>()))
        throw Error::forbidden("old_password is wrong");
    }
    if (in.contains("password")) c.password_hash = hasher_.hash(in["password"].get<std::string>());
    if (!c.display_name && !c.email && !c.role && !c.password_hash)
      throw Error::bad_request("nothing to change");
    int64_t now = now_ms();
    auto u = store_.update_user(id, c, now);
    if (!u) throw Error::not_found("no such user");
    if (c.password_hash) {
      // A password change ends every other session of the user (a change
      // by an admin: every session); the caller's own session goes on.
      std::string keep = self ? std::string(req.session_id()) : std::string();
      for (const auto& sid : store_.revoke_other_sessions(id, keep, now)) ctx_.revoke_session(sid);
    }
    if (c.role && c.role != current->role && !self) {
      // Tokens carry roles: end the user's sessions so no token keeps an
      // old role.
      for (const auto& sid : store_.revoke_other_sessions(id, "", now)) ctx_.revoke_session(sid);
    }
    return view(*u, true);
  }

  void remove(const json& in, const Request& req) {
    int64_t id = parse_id(in.at("userId"));
    bool self = is_self(id, req);
    bool admin = req.has_role("admin");
    if (!self && !admin) throw Error::forbidden("only the user or an admin may delete an account");
    auto current = store_.find(id);
    if (!current) throw Error::not_found("no such user");
    if (self && !admin) {
      if (!in.contains("password"))
        throw Error::bad_request("password: needed to delete your account");
      if (!hasher_.verify(current->password_hash, in["password"].get<std::string>()))
        throw Error::forbidden("password is wrong");
    }
    int64_t now = now_ms();
    auto sids = store_.delete_user(id, now);
    if (!sids) throw Error::not_found("no such user");
    for (const auto& sid : *sids) ctx_.revoke_session(sid);
    ctx_.revoke_user_tokens(std::to_string(id), now / 1000);
  }

 private:
  json tokens(const UserRow& u, const std::string& sid, const std::string& refresh) {
    std::string roles = roles_of(u.role);
    std::string access = ctx_.sign_access_token(std::to_string(u.id), roles, 0, {{"sid", sid}});
    return {{"access_token", access},
            {"token_type", "Bearer"},
            {"expires_in", access_ttl_s_},
            {"refresh_token", refresh},
            {"refresh_expires_in", static_cast<int64_t>(settings_.refresh_token_ttl_days) * 86400},
            {"user", view(u, true)}};
  }

  // Roles are cumulative: an admin is also a moderator.
  static std::string roles_of(const std::string& role) {
    if (role == "admin") return "user,moderator,admin";
    if (role == "moderator") return "user,moderator";
    return "user";
  }

  static json view(const UserRow& u, bool with_private) {
    json j = {{"id", std::to_string(u.id)},
              {"username", u.username},
              {"display_name", u.display_name},
              {"role", u.role},
              {"created_at", iso_time(u.created_ms)}};
    if (with_private) {
      j["email"] = u.email;
      j["updated_at"] = iso_time(u.updated_ms);
    }
    return j;
  }

  static bool is_self(int64_t id, const Request& req) {
    return req.signed_in() && req.user_id() == std::to_string(id);
  }
  static bool may_see_private(int64_t id, const Request& req) {
    return is_self(id, req) || req.has_role("admin");
  }

  static void check_password(const std::string& p, const char* field) {
    if (p.size() > 1024) throw Error::bad_request(std::string(field) + ": at most 1024 bytes");
    if (utf8_length(p) < 8)
      throw Error::bad_request(std::string(field) + ": at least 8 characters");
  }
  static void check_display_name(const std::string& d) {
    if (utf8_length(d) > 64) throw Error::bad_request("display_name: at most 64 characters");
    if (has_control(d)) throw Error::bad_request("display_name: no control characters");
  }

  // Fixed-window counter in the cache; a cache failure lets the call
  // through (the cache holds only rebuildable data).
  void limit(const std::string& what, int per_window, std::chrono::seconds window) {
    const int64_t now_s = now_ms() / 1000;
    int64_t slot = now_s / window.count();
    auto n = store_.cache().incr("rl:" + what + ":" + std::to_string(slot), 1, window);
    if (n && *n > per_window)  // Retry-After: when the window turns
      throw Error::too_many_requests("too many attempts; retry later",
                                     window.count() - now_s % window.count());
  }


  int64_t revocation_window_ms() const { return (access_ttl_s_ + 120) * 1000; }
  int64_t refresh_ttl_ms() const {
    return static_cast<int64_t>(settings_.refresh_token_ttl_days) * 86400 * 1000;
  }

  UsersStore& store_;
  grapevine::ServiceContext ctx_;
  Settings settings_;
  PasswordHasher hasher_;
  // What an unknown user's password is checked against, so both cost the
  // same; made on first need rather than at start (a hash takes ~30 ms).
  const std::string& dummy_hash() {
    std::call_once(dummy_once_, [this] { dummy_hash_ = hasher_.hash(random_token(16)); });
    return dummy_hash_;
  }
  std::once_flag dummy_once_;
  std::string dummy_hash_;
  int64_t access_ttl_s_ = 900;
};

}  // namespace users
