// DAL of the users plugin: accounts, sessions (refresh-token families) and
// refresh tokens, in the plugin's own SQL database. Events are published in
// the same transaction as the change they describe. It touches its stores
// and nothing else.
#pragma once

#include <grapevine/sdk.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace users {

struct UserRow {
  int64_t id = 0;
  std::string username;  // lower case
  std::string email;     // as given
  std::string display_name;
  std::string role;           // user, moderator or admin
  std::string password_hash;  // argon2id encoded string; never leaves the plugin
  int64_t created_ms = 0;
  int64_t updated_ms = 0;
};

// What an update changes; empty members stay as they are.
struct UserChanges {
  std::optional<std::string> email;
  std::optional<std::string> display_name;
  std::optional<std::string> role;
  std::optional<std::string> password_hash;
};

// The outcome of presenting a refresh token.
enum class RotateResult { rotated, unknown, expired, revoked, reused };

struct Rotation {
  RotateResult result = RotateResult::unknown;
  std::string session_id;
  int64_t user_id = 0;
};

class UsersStore {
 public:
  explicit UsersStore(const grapevine::DalContext& dal) : db_(dal.db()), cache_(dal.cache()) {
    // Numbered steps, applied once each before start; never edit one.
    dal.migration(1,
                  "CREATE TABLE users (id BIGINT PRIMARY KEY, username TEXT NOT NULL UNIQUE, "
                  "email TEXT NOT NULL, email_lower TEXT NOT NULL UNIQUE, "
                  "display_name TEXT NOT NULL, role TEXT NOT NULL, password_hash TEXT NOT NULL, "
                  "created_ms BIGINT NOT NULL, updated_ms BIGINT NOT NULL)");
    // Ids come from a counter, never from MAX(id)+1: an id is never reused,
    // so an old token of a deleted account can never name a new one.
    dal.migration(2, "CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL)");
    dal.migration(3,
                  "CREATE TABLE sessions (id TEXT PRIMARY KEY, user_id BIGINT NOT NULL, "
                  "created_ms BIGINT NOT NULL, revoked_ms BIGINT)");
    dal.migration(4, "CREATE INDEX sessions_by_user ON sessions (user_id)");
    dal.migration(5, "CREATE INDEX sessions_by_revoked ON sessions (revoked_ms)");
    dal.migration(6,
                  "CREATE TABLE refresh_tokens (hash TEXT PRIMARY KEY, session_id TEXT NOT NULL, "
                  "created_ms BIGINT NOT NULL, expires_ms BIGINT NOT NULL, used_ms BIGINT)");
    dal.migration(7, "CREATE INDEX refresh_by_session ON refresh_tokens (session_id)");
  }

  grapevine::Cache& cache() { return cache_; }

  // ---- users ----

  // Inserts a user; throws Error 409 naming the field that is taken.
  UserRow create_user(UserRow u) {
    return db_.write([&](grapevine::Tx& tx) {
      check_free(tx, u.username, to_lower(u.email), 0);
      auto id = tx.query_one(
          "INSERT INTO counters (name, value) VALUES ('user_id', 1) "
          "ON CONFLICT (name) DO UPDATE SET value = counters.value + 1 RETURNING value");
      u.id = (*id)["value"].as_int();
      tx.exec(
          "INSERT INTO users (id, username, email, email_lower, display_name, role, "
          "password_hash, created_ms, updated_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
          {u.id, u.username, u.email, to_lower(u.email), u.display_name, u.role, u.password_hash,
           u.created_ms});
      u.updated_ms = u.created_ms;
      tx.publish("user.registered", key(u.id),
                 {{"id", std::to_string(u.id)}, {"username", u.username}, {"role", u.role}});
      return u;
    });
  }

  std::optional<UserRow> find(int64_t id) {
    return db_.read([&](grapevine::Tx& tx) -> std::optional<UserRow> {
      auto row = tx.query_one(kSelect + std::string("WHERE id = $1"), {id});
      if (!row) return std::nullopt;
      return from_row(*row);
    });
  }

  // By username or email, both compared in lower case.
  std::optional<UserRow> find_by_login(const std::string& login) {
    std::string l = to_lower(login);
    return db_.read([&](grapevine::Tx& tx) -> std::optional<UserRow> {
      auto row =
          tx.query_one(kSelect + std::string("WHERE username = $1 OR email_lower = $1"), {l});
      if (!row) return std::nullopt;
      return from_row(*row);
    });
  }

  // Applies changes; publishes user.updated with the names of the changed
  // fields. nullopt when the user does not exist.
  std::optional<UserRow> update_user(int64_t id, const UserChanges& c, int64_t now_ms) {
    return db_.write([&](grapevine::Tx& tx) -> std::optional<UserRow> {
      auto row = tx.query_one(kSelect + std::string("WHERE id = $1"), {id});
      if (!row) return std::nullopt;
      UserRow u = from_row(*row);
      grapevine::json fields = grapevine::json::array();
      if (c.email && *c.email != u.email) {
        if (to_lower(*c.email) != to_lower(u.email)) check_free(tx, "", to_lower(*c.email), id);
        u.email = *c.email;
        fields.push_back("email");
      }
      if (c.display_name && *c.display_name != u.display_name) {
        u.display_name = *c.display_name;
        fields.push_back("display_name");
      }
      if (c.role && *c.role != u.role) {
        u.role = *c.role;
        fields.push_back("role");
      }
      if (c.password_hash) {
        u.password_hash = *c.password_hash;
        fields.push_back("password");
      }
      if (fields.empty()) return u;
      u.updated_ms = now_ms;
      tx.exec(
          "UPDATE users SET email = $2, email_lower = $3, display_name = $4, role = $5, "
          "password_hash = $6, updated_ms = $7 WHERE id = $1",
          {id, u.email, to_lower(u.email), u.display_name, u.role, u.password_hash, now_ms});
      tx.publish("user.updated", key(id),
                 {{"id", std::to_string(id)}, {"username", u.username}, {"fields", fields}});
      return u;
    });
  }

  // Deletes the user and revokes its sessions in one commit; returns the
  // ids of the sessions it revoked, nullopt when there was no such user.
  std::optional<std::vector<std::string>> delete_user(int64_t id, int64_t now_ms) {
    return db_.write([&](grapevine::Tx& tx) -> std::optional<std::vector<std::string>> {
      if (tx.exec("DELETE FROM users WHERE id = $1", {id}) == 0) return std::nullopt;
      auto sids = revoke_user_sessions(tx, id, "", now_ms);
      tx.publish("user.deleted", key(id), {{"id", std::to_string(id)}});
      return sids;
    });
  }

  // Makes each named user an admin (the `admins` config key); returns how
  // many were promoted.
  int promote_admins(const std::vector<std::string>& usernames, int64_t now_ms) {
    int promoted = 0;
    for (const auto& name : usernames) {
      auto u = find_by_login(name);
      if (!u || u->role == "admin" || u->username != to_lower(name)) continue;
      UserChanges c;
      c.role = "admin";
      if (update_user(u->id, c, now_ms)) ++promoted;
    }
    return promoted;
  }

  // Keyset page by id ascending.
  std::vector<UserRow> list(int64_t after_id, int64_t limit) {
    return db_.read([&](grapevine::Tx& tx) {
      std::vector<UserRow> out;
      for (const auto& row :
           tx.query(kSelect + std::string("WHERE id > $1 ORDER BY id LIMIT $2"), {after_id, limit}))
        out.push_back(from_row(row));
      return out;
    });
  }

  int64_t count() {
    return db_.read([&](grapevine::Tx& tx) {
      return (*tx.query_one("SELECT COUNT(*) AS n FROM users"))["n"].as_int();
    });
  }

  // ---- sessions and refresh tokens ----

  void create_session(const std::string& sid, int64_t user_id, const std::string& refresh_hash,
                      int64_t now_ms, int64_t refresh_expires_ms) {
    db_.write([&](grapevine::Tx& tx) {
      tx.exec("INSERT INTO sessions (id, user_id, created_ms) VALUES ($1, $2, $3)",
              {sid, user_id, now_ms});
      tx.exec(
          "INSERT INTO refresh_tokens (hash, session_id, created_ms, expires_ms) "
          "VALUES ($1, $2, $3, $4)",
          {refresh_hash, sid, now_ms, refresh_expires_ms});
    });
  }

  // Presents a refresh token: a live one is marked used and replaced by
  // new_hash in the same family; a used one revokes the whole family
  // (reuse detection) in the same commit.
  Rotation rotate(const std::string& hash, const std::string& new_hash, int64_t now_ms,
                  int64_t new_expires_ms) {
    return db_.write([&](grapevine::Tx& tx) {
      Rotation r;
      auto row = tx.query_one(
          "SELECT t.session_id, t.expires_ms, t.used_ms, s.user_id, s.revoked_ms "
          "FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id WHERE t.hash = $1",
          {hash});
      if (!row) return r;
      r.session_id = (*row)["session_id"].as_text();
      r.user_id = (*row)["user_id"].as_int();
      if (!(*row)["revoked_ms"].is_null()) {
        r.result = RotateResult::revoked;
      } else if (!(*row)["used_ms"].is_null()) {
        revoke_session_in(tx, r.session_id, now_ms);
        r.result = RotateResult::reused;
      } else if ((*row)["expires_ms"].as_int() <= now_ms) {
        r.result = RotateResult::expired;
      } else {
        tx.exec("UPDATE refresh_tokens SET used_ms = $2 WHERE hash = $1", {hash, now_ms});
        tx.exec(
            "INSERT INTO refresh_tokens (hash, session_id, created_ms, expires_ms) "
            "VALUES ($1, $2, $3, $4)",
            {new_hash, r.session_id, now_ms, new_expires_ms});
        r.result = RotateResult::rotated;
      }
      return r;
    });
  }

  // The session a refresh token belongs to, if any.
  std::optional<std::pair<std::string, int64_t>> session_of(const std::string& hash) {
    return db_.read([&](grapevine::Tx& tx) -> std::optional<std::pair<std::string, int64_t>> {
      auto row = tx.query_one(
          "SELECT s.id, s.user_id FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id "
          "WHERE t.hash = $1",
          {hash});
      if (!row) return std::nullopt;
      return std::make_pair((*row)["id"].as_text(), (*row)["user_id"].as_int());
    });
  }

  void revoke_session(const std::string& sid, int64_t now_ms) {
    db_.write([&](grapevine::Tx& tx) { revoke_session_in(tx, sid, now_ms); });
  }

  // Revokes every live session of the user except keep_sid; returns them.
  std::vector<std::string> revoke_other_sessions(int64_t user_id, const std::string& keep_sid,
                                                 int64_t now_ms) {
    return db_.write(
        [&](grapevine::Tx& tx) { return revoke_user_sessions(tx, user_id, keep_sid, now_ms); });
  }

  // Sessions revoked at or after since_ms (re-asserted to the host at start).
  std::vector<std::string> revoked_since(int64_t since_ms) {
    return db_.read([&](grapevine::Tx& tx) {
      std::vector<std::string> out;
      for (const auto& row : tx.query("SELECT id FROM sessions WHERE revoked_ms >= $1", {since_ms}))
        out.push_back(row["id"].as_text());
      return out;
    });
  }

  // Drops refresh tokens past their expiry and sessions that can no longer
  // matter (revoked before revoked_before_ms, or with no live token).
  void purge(int64_t now_ms, int64_t revoked_before_ms) {
    db_.write([&](grapevine::Tx& tx) {
      tx.exec("DELETE FROM refresh_tokens WHERE expires_ms <= $1", {now_ms});
      tx.exec(
          "DELETE FROM refresh_tokens WHERE session_id IN "
          "(SELECT id FROM sessions WHERE revoked_ms < $1)",
          {revoked_before_ms});
      tx.exec("DELETE FROM sessions WHERE revoked_ms < $1", {revoked_before_ms});
      tx.exec(
          "DELETE FROM sessions WHERE revoked_ms IS NULL AND NOT EXISTS "
          "(SELECT 1 FROM refresh_tokens t WHERE t.session_id = sessions.id)");
    });
  }

  static std::string to_lower(std::string s) {
    for (char& c : s)
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    return s;
  }

 private:
  static constexpr const char* kSelect =
      "SELECT id, username, email, display_name, role, password_hash, created_ms, updated_ms "
      "FROM users ";

  static std::string key(int64_t id) { return "user:" + std::to_string(id); }

  static UserRow from_row(const grapevine::Row& r) {
    return UserRow{r["id"].as_int(),         r["username"].as_text(),
                   r["email"].as_text(),     r["display_name"].as_text(),
                   r["role"].as_text(),      r["password_hash"].as_text(),
                   r["created_ms"].as_int(), r["updated_ms"].as_int()};
  }

  static void check_free(grapevine::Tx& tx, const std::string& username,
                         const std::string& email_lower, int64_t except_id) {
    if (!username.empty() && tx.query_one("SELECT id FROM users WHERE username = $1", {username}))
      throw grapevine::Error::conflict("username is already taken");
    if (tx.query_one("SELECT id FROM users WHERE email_lower = $1 AND id <> $2",
                     {email_lower, except_id}))
      throw grapevine::Error::conflict("email is already registered");
  }

  static void revoke_session_in(grapevine::Tx& tx, const std::string& sid, int64_t now_ms) {
    tx.exec("UPDATE sessions SET revoked_ms = $2 WHERE id = $1 AND revoked_ms IS NULL",
            {sid, now_ms});
  }

  static std::vector<std::string> revoke_user_sessions(grapevine::Tx& tx, int64_t user_id,
                                                       const std::string& keep_sid,
                                                       int64_t now_ms) {
    std::vector<std::string> out;
    for (const auto& row :
         tx.query("UPDATE sessions SET revoked_ms = $3 "
                  "WHERE user_id = $1 AND id <> $2 AND revoked_ms IS NULL RETURNING id",
                  {user_id, keep_sid, now_ms}))
      out.push_back(row["id"].as_text());
    return out;
  }

  grapevine::Database db_;
  grapevine::Cache cache_;
};

}  // namespace users
