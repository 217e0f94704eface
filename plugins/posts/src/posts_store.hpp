// DAL of the posts plugin: posts, their earlier versions and the
// idempotency keys of POST /api/v1/posts, in the plugin's SQL database.
// Every change publishes its event in the same transaction.
//
// Deletion is soft: a deleted post keeps its row as a tombstone (text
// emptied, edit history removed, deleted_ms set) so its id is never reused
// and replies keep a stable reference; every read treats it as absent.
#pragma once

#include <grapevine/sdk.hpp>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace posts {

struct Post {
  int64_t id = 0;
  std::string author_id;
  std::string text;
  std::optional<int64_t> reply_to;
  int64_t created_ms = 0;
  std::optional<int64_t> edited_ms;
  int64_t version = 1;
  int64_t comments = 0, likes = 0, shares = 0, regossips = 0;
};

// One earlier version of a post, as it read before an edit replaced it.
struct PostVersion {
  int64_t version = 0;
  std::string text;
  int64_t written_ms = 0;   // when this version was written
  int64_t replaced_ms = 0;  // when an edit replaced it
};

// A counter of a post kept from events.
enum class Counter { comments, likes, shares, regossips };

// What POST /api/v1/posts answered: stored with its idempotency key.
struct StoredAnswer {
  int status = 0;
  std::string body;
  bool replayed = false;  // read back from an earlier request with the key
  int64_t post_id = 0;    // the post created (0 when replayed: see body)
};

struct IdempotencyKey {
  std::string key;
  std::string fingerprint;  // the request it was first used with
};

// Raised in a transaction when an idempotency key comes back with another
// request; the service turns it into the client's error.
struct KeyReused {};

class PostsStore {
 public:
  // Turns a post into the body of a 201 (stored with an idempotency key).
  using Render = std::function<std::string(const Post&)>;
  // Checks the caller may change a post; throws grapevine::Error if not.
  using Authorize = std::function<void(const Post&)>;
  // Writes the payload of a post.* event: a JSON object's text.
  using Payload = std::function<std::string(const Post&)>;

  explicit PostsStore(const grapevine::DalContext& dal) : db_(dal.db()) {
    dal.migration(1,
                  "CREATE TABLE posts (id INTEGER PRIMARY KEY, author_id TEXT NOT NULL, "
                  "text TEXT NOT NULL, reply_to BIGINT, created_ms BIGINT NOT NULL, "
                  "edited_ms BIGINT, deleted_ms BIGINT, version INTEGER NOT NULL DEFAULT 1, "
                  "comments BIGINT NOT NULL DEFAULT 0, likes BIGINT NOT NULL DEFAULT 0, "
                  "shares BIGINT NOT NULL DEFAULT 0, regossips BIGINT NOT NULL DEFAULT 0)");
    dal.migration(2, "CREATE INDEX posts_by_author ON posts (author_id, id)");
    dal.migration(3,
                  "CREATE TABLE post_versions (post_id BIGINT NOT NULL, version INTEGER NOT NULL, "
                  "text TEXT NOT NULL, written_ms BIGINT NOT NULL, replaced_ms BIGINT NOT NULL, "
                  "PRIMARY KEY (post_id, version))");
    dal.migration(4,
                  "CREATE TABLE idempotency_keys (author_id TEXT NOT NULL, key TEXT NOT NULL, "
                  "request TEXT NOT NULL, status INTEGER NOT NULL, body TEXT NOT NULL, "
                  "created_ms BIGINT NOT NULL, PRIMARY KEY (author_id, key))");
    dal.migration(5, "CREATE INDEX idempotency_by_time ON idempotency_keys (created_ms)");
    // An author's posts are chained, newest first, from author_heads
    // through prev_by_author, instead of indexed by (author_id, id): that
    // index took a leaf page per post at a random place (one per author
    // in each group commit): 82% of the WAL's pages under bench/api's
    // POSTs, where a head is one small row per author.
    dal.migration(6,
                  "ALTER TABLE posts ADD COLUMN prev_by_author BIGINT;\n"
                  "CREATE TABLE author_heads (author_id TEXT PRIMARY KEY, last_id BIGINT);\n"
                  "UPDATE posts SET prev_by_author = (SELECT max(p.id) FROM posts p "
                  "WHERE p.author_id = posts.author_id AND p.id < posts.id);\n"
                  "INSERT INTO author_heads (author_id, last_id) "
                  "SELECT author_id, max(id) FROM posts GROUP BY author_id;\n"
                  "DROP INDEX posts_by_author");
  }

  // Creates a post and publishes post.created, in tx (the service runs it
  // as its answer's write, in the group commit). With an idempotency key,
  // the key is claimed (unique per author) in the same transaction and the
  // answer stored with it; a key already claimed after fresh_after_ms
  // gives back the stored answer and creates nothing. Throws KeyReused when
  // the stored request differs, Error 422 when reply_to names no post.
  // post: a new post's author_id, text, reply_to and created_ms.
  static StoredAnswer create(grapevine::Tx& tx, Post post,
                             const std::optional<IdempotencyKey>& idem, int64_t fresh_after_ms,
                             const Render& render, const Payload& payload) {
    const std::string& author = post.author_id;
    if (idem) {
      // Claims the key, or takes over one that expired. A concurrent
      // duplicate waits on the unique key and then finds it claimed.
      auto claimed = tx.query_one(
          "INSERT INTO idempotency_keys (author_id, key, request, status, body, created_ms) "
          "VALUES ($1, $2, $3, 0, '', $4) ON CONFLICT (author_id, key) DO UPDATE SET "
          "request = excluded.request, status = 0, body = '', created_ms = excluded.created_ms "
          "WHERE idempotency_keys.created_ms < $5 RETURNING created_ms",
          {author, idem->key, idem->fingerprint, post.created_ms, fresh_after_ms});
      if (!claimed) {
        auto row = tx.query_one(
            "SELECT request, status, body FROM idempotency_keys "
            "WHERE author_id = $1 AND key = $2",
            {author, idem->key});
        if ((*row)["request"].as_text() != idem->fingerprint) throw KeyReused{};
        return {static_cast<int>((*row)["status"].as_int()), (*row)["body"].as_text(), true};
      }
    }
    const auto& reply_to = post.reply_to;
    if (reply_to &&
        !tx.query_one("SELECT 1 AS x FROM posts WHERE id = $1 AND deleted_ms IS NULL", {*reply_to}))
      throw grapevine::Error(422, "reply_to_not_found",
                             "reply_to: post " + std::to_string(*reply_to) + " does not exist");
    // The author's head is claimed first: a write to it, which in
    // PostgreSQL locks it until commit, so that two posts of one author
    // chain in the order of their ids.
    claim_head(tx, author);
    // Only the id back (the other columns are what was given or their
    // defaults: a new post is version 1 with no counts), and through
    // insert() rather than RETURNING, which SQLite runs through a
    // temporary table: this statement runs in the group commit, where
    // every writer waits for it.
    post.id = tx.insert(
        "INSERT INTO posts (author_id, text, reply_to, created_ms, prev_by_author) VALUES "
        "($1, $2, $3, $4, (SELECT last_id FROM author_heads WHERE author_id = $1))",
        {author, post.text, reply_to, post.created_ms});
    // It chains onto the head's post; the head moves to it.
    tx.exec("UPDATE author_heads SET last_id = $2 WHERE author_id = $1", {author, post.id});
    tx.publish_json_text("post.created", event_key(post.id), payload(post));
    tx.invalidate(author_tag(author));
    StoredAnswer answer{201, render(post), false, post.id};
    if (idem)
      tx.exec(
          "UPDATE idempotency_keys SET status = $3, body = $4 "
          "WHERE author_id = $1 AND key = $2",
          {author, idem->key, answer.status, answer.body});
    return answer;
  }

  std::optional<Post> get(int64_t id) {
    return db_.read([&](grapevine::Tx& tx) { return find(tx, id); });
  }

  // Replaces the text, keeping the old version; publishes post.updated.
  // An unchanged text changes nothing. nullopt: no such post.
  std::optional<Post> update(int64_t id, const std::string& text, int64_t now_ms,
                             const Authorize& authorize, const Payload& payload) {
    return db_.write([&](grapevine::Tx& tx) -> std::optional<Post> {
      auto post = find(tx, id);
      if (!post) return std::nullopt;
      authorize(*post);
      if (post->text == text) return post;
      tx.exec(
          "INSERT INTO post_versions (post_id, version, text, written_ms, replaced_ms) "
          "VALUES ($1, $2, $3, $4, $5)",
          {id, post->version, post->text, post->edited_ms.value_or(post->created_ms), now_ms});
      auto row = tx.query_one(
          "UPDATE posts SET text = $2, edited_ms = $3, version = version + 1 "
          "WHERE id = $1 RETURNING " +
              std::string(kColumns),
          {id, text, now_ms});
      Post updated = from_row(*row);
      tx.publish_json_text("post.updated", event_key(id), payload(updated));
      tx.invalidate(cache_tag(id));
      tx.invalidate(author_tag(updated.author_id));
      return updated;
    });
  }

  // Deletes a post (tombstone) and its history; publishes post.deleted.
  // False: no such post.
  bool remove(int64_t id, int64_t now_ms, const Authorize& authorize, const Payload& payload) {
    return db_.write([&](grapevine::Tx& tx) {
      auto post = find(tx, id);
      if (!post) return false;
      authorize(*post);
      tombstone(tx, *post, now_ms, payload);
      return true;
    });
  }

  // Deletes every post of author in tx (an event handler's transaction),
  // publishing post.deleted for each; forgets the author's idempotency keys.
  int64_t remove_by_author(grapevine::Tx& tx, const std::string& author, int64_t now_ms,
                           const Payload& payload) {
    // Writes the head, if any, as create() claims it: in PostgreSQL a post
    // being created meanwhile then commits first and is in the chain read
    // below.
    auto head = tx.query_one(
        "UPDATE author_heads SET last_id = last_id WHERE author_id = $1 RETURNING last_id",
        {author});
    grapevine::Rows rows;
    if (auto newest = head ? (*head)["last_id"].opt_int() : std::nullopt)
      rows = chain(tx, *newest, INT64_MAX);
    for (const auto& row : rows) tombstone(tx, from_row(row), now_ms, payload);
    tx.exec("DELETE FROM idempotency_keys WHERE author_id = $1", {author});
    return static_cast<int64_t>(rows.size());
  }

  // The author's posts older than the post before_id (from the newest when
  // nullopt), newest first, at most limit; nullopt when before_id is not a
  // post of author.
  std::optional<std::vector<Post>> list_by_author(const std::string& author,
                                                  std::optional<int64_t> before_id, int64_t limit) {
    return db_.read([&](grapevine::Tx& tx) -> std::optional<std::vector<Post>> {
      std::optional<int64_t> start;  // the newest post the page may hold
      if (before_id) {
        auto row = tx.query_one("SELECT prev_by_author FROM posts WHERE id = $1 AND author_id = $2",
                                {*before_id, author});
        if (!row) return std::nullopt;
        start = (*row)["prev_by_author"].opt_int();
      } else if (auto row = tx.query_one("SELECT last_id FROM author_heads WHERE author_id = $1",
                                         {author})) {
        start = (*row)["last_id"].opt_int();
      }
      std::vector<Post> out;
      if (!start || limit <= 0) return out;
      auto rows = chain(tx, *start, limit);
      out.reserve(rows.size());
      for (const auto& r : rows) out.push_back(from_row(r));
      return out;
    });
  }

  // Earlier versions of a live post with version below before (all when
  // nullopt), newest first, at most limit; nullopt: no such post.
  std::optional<std::vector<PostVersion>> history(int64_t id, std::optional<int64_t> before,
                                                  int64_t limit) {
    return db_.read([&](grapevine::Tx& tx) -> std::optional<std::vector<PostVersion>> {
      if (!find(tx, id)) return std::nullopt;
      auto rows = tx.query(
          "SELECT version, text, written_ms, replaced_ms FROM post_versions "
          "WHERE post_id = $1 AND version < $2 ORDER BY version DESC LIMIT $3",
          {id, before.value_or(INT64_MAX), limit});
      std::vector<PostVersion> out;
      for (const auto& r : rows)
        out.push_back({r["version"].as_int(), r["text"].as_text(), r["written_ms"].as_int(),
                       r["replaced_ms"].as_int()});
      return out;
    });
  }

  // Adds delta to a counter of a live post in tx (an event handler's
  // transaction), never below zero. False: no such post (ignored).
  bool add_to_counter(grapevine::Tx& tx, int64_t id, Counter counter, int64_t delta) {
    std::string col = column(counter);
    std::string sql = "UPDATE posts SET " + col + " = CASE WHEN " + col + " + $2 < 0 THEN 0 ELSE " +
                      col + " + $2 END WHERE id = $1 AND deleted_ms IS NULL";
    auto row = tx.query_one(sql + " RETURNING author_id", {id, delta});
    if (!row) return false;
    tx.invalidate(cache_tag(id));
    tx.invalidate(author_tag((*row)["author_id"].as_text()));
    return true;
  }

  // Forgets idempotency keys claimed before cutoff_ms; how many.
  int64_t purge_keys(int64_t cutoff_ms) {
    return db_.write([&](grapevine::Tx& tx) {
      return tx.exec("DELETE FROM idempotency_keys WHERE created_ms < $1", {cutoff_ms});
    });
  }

  static std::string event_key(int64_t id) { return "post:" + std::to_string(id); }
  // What cached answers of posts.get and posts.history are tagged with
  // (their cache_tag "post:{postId}"); every change to a post marks it.
  static std::string cache_tag(int64_t id) { return "post:" + std::to_string(id); }
  // What cached pages of posts.list_by_user are tagged with ("author:{userId}"):
  // every post an author creates, edits or loses, and every counter that
  // moves on one of them, marks it.
  static std::string author_tag(const std::string& author) { return "author:" + author; }

 private:
  static constexpr const char* kColumns =
      "id, author_id, text, reply_to, created_ms, edited_ms, version, comments, likes, shares, "
      "regossips";

  static std::string column(Counter c) {
    switch (c) {
      case Counter::comments:
        return "comments";
      case Counter::likes:
        return "likes";
      case Counter::shares:
        return "shares";
      case Counter::regossips:
        return "regossips";
    }
    return "likes";
  }

  static Post from_row(const grapevine::Row& r) {
    Post p;
    p.id = r["id"].as_int();
    p.author_id = r["author_id"].as_text();
    p.text = r["text"].as_text();
    p.reply_to = r["reply_to"].opt_int();
    p.created_ms = r["created_ms"].as_int();
    p.edited_ms = r["edited_ms"].opt_int();
    p.version = r["version"].as_int();
    p.comments = r["comments"].as_int();
    p.likes = r["likes"].as_int();
    p.shares = r["shares"].as_int();
    p.regossips = r["regossips"].as_int();
    return p;
  }

  // The live posts of the chain from the post start on, newest first, at
  // most limit. It follows the chain until it has passed limit live posts
  // (seen: the live ones before each link), so a page reads its own posts
  // and the deleted ones between them, not the rest.
  static grapevine::Rows chain(grapevine::Tx& tx, int64_t start, int64_t limit) {
    return tx.query(
        "WITH RECURSIVE chain(id, seen) AS (SELECT CAST($1 AS BIGINT), 0 "
        "UNION ALL SELECT p.prev_by_author, "
        "c.seen + CASE WHEN p.deleted_ms IS NULL THEN 1 ELSE 0 END FROM chain c "
        "JOIN posts p ON p.id = c.id WHERE p.prev_by_author IS NOT NULL "
        "AND c.seen + CASE WHEN p.deleted_ms IS NULL THEN 1 ELSE 0 END < $2) "
        "SELECT " +
            std::string(kColumns) +
            " FROM posts WHERE id IN (SELECT id FROM chain) AND deleted_ms IS NULL "
            "ORDER BY id DESC LIMIT $2",
        {start, limit});
  }

  // Writes the author's head (creating it), which in PostgreSQL locks it
  // until the transaction ends.
  static void claim_head(grapevine::Tx& tx, const std::string& author) {
    tx.exec(
        "INSERT INTO author_heads (author_id, last_id) VALUES ($1, NULL) "
        "ON CONFLICT (author_id) DO UPDATE SET last_id = author_heads.last_id",
        {author});
  }

  static std::optional<Post> find(grapevine::Tx& tx, int64_t id) {
    auto row = tx.query_one(
        "SELECT " + std::string(kColumns) + " FROM posts WHERE id = $1 AND deleted_ms IS NULL",
        {id});
    if (!row) return std::nullopt;
    return from_row(*row);
  }

  static void tombstone(grapevine::Tx& tx, const Post& post, int64_t now_ms,
                        const Payload& payload) {
    tx.exec("UPDATE posts SET deleted_ms = $2, text = '' WHERE id = $1", {post.id, now_ms});
    tx.exec("DELETE FROM post_versions WHERE post_id = $1", {post.id});
    tx.publish_json_text("post.deleted", event_key(post.id), payload(post));
    tx.invalidate(cache_tag(post.id));
    tx.invalidate(author_tag(post.author_id));
  }

  grapevine::Database db_;
};

}  // namespace posts
