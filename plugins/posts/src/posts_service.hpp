// Service of the posts plugin: the rules (text, ownership, idempotency,
// cursors) over the DAL, and the events it consumes.
#pragma once

#include <grapevine/sdk.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <ctime>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "posts_store.hpp"

namespace posts {

using grapevine::Error;
using grapevine::json;

// The plugin's config section, with its defaults (see the manifest schema).
struct Config {
  int64_t max_text_chars = 500;
  int64_t default_page_size = 20;
  int64_t max_page_size = 100;
  int64_t idempotency_ttl_s = 86400;
  int64_t max_idempotency_key_chars = 128;
  int64_t purge_interval_s = 600;

  static Config from(const json& c) {
    Config out;
    out.max_text_chars = c.value("max_text_chars", out.max_text_chars);
    out.max_page_size = c.value("max_page_size", out.max_page_size);
    out.default_page_size =
        std::min(c.value("default_page_size", out.default_page_size), out.max_page_size);
    out.idempotency_ttl_s = c.value("idempotency_ttl_s", out.idempotency_ttl_s);
    out.max_idempotency_key_chars =
        c.value("max_idempotency_key_chars", out.max_idempotency_key_chars);
    out.purge_interval_s = c.value("purge_interval_s", out.purge_interval_s);
    return out;
  }
};

namespace text {

// Decodes UTF-8 into code points; false when the bytes are not valid UTF-8
// (overlong forms, surrogates and values past U+10FFFF included).
inline bool decode(std::string_view s, std::vector<char32_t>* out) {
  size_t i = 0;
  while (i < s.size()) {
    auto b = static_cast<unsigned char>(s[i]);
    char32_t cp;
    int extra;
    if (b < 0x80) {
      cp = b, extra = 0;
    } else if (b >= 0xC2 && b <= 0xDF) {
      cp = b & 0x1F, extra = 1;
    } else if (b >= 0xE0 && b <= 0xEF) {
      cp = b & 0x0F, extra = 2;
    } else if (b >= 0xF0 && b <= 0xF4) {
      cp = b & 0x07, extra = 3;
    } else {
      return false;
    }
    if (i + static_cast<size_t>(extra) >= s.size()) return false;  // cut short
    for (int k = 1; k <= extra; ++k) {
      auto c = static_cast<unsigned char>(s[i + k]);
      if ((c & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (c & 0x3F);
    }
    if ((extra == 2 && cp < 0x800) || (extra == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    out->push_back(cp);
    i += extra + 1;
  }
  return true;
}

inline bool is_space(char32_t c) {
  return c == ' ' || (c >= 0x09 && c <= 0x0D) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200B) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000 || c == 0x180E || c == 0xFEFF || c == 0x200C || c == 0x200D || c == 0x2060;
}

// Control characters other than tab, newline and carriage return.
inline bool is_control(char32_t c) {
  return (c < 0x20 && c != '\t' && c != '\n' && c != '\r') || (c >= 0x7F && c <= 0x9F);
}

}  // namespace text

// "2026-12-01T21:57:49.189Z": every post rendered carries one or two, so
// the digits are written here rather than through snprintf's format parser.
inline std::string iso8601(int64_t ms) {
  if (ms < 0) ms = 0;  // post times are after 1970
  std::time_t s = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&s, &tm);
  int year = tm.tm_year + 1900;
  if (year > 9999) year = 9999;  // no post is that late; keeps four digits
  std::string out = "0000-00-00T00:00:00.000Z";
  auto put = [&out](size_t at, int value, int digits) {
    for (size_t i = at + static_cast<size_t>(digits); i-- > at; value /= 10)
      out[i] = static_cast<char>('0' + value % 10);
  };
  put(0, year, 4);
  put(5, tm.tm_mon + 1, 2);
  put(8, tm.tm_mday, 2);
  put(11, tm.tm_hour, 2);
  put(14, tm.tm_min, 2);
  put(17, tm.tm_sec, 2);
  put(20, static_cast<int>(ms % 1000), 3);
  return out;
}

inline int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Opaque page cursors: base64url of "<kind>:<scope>:<position>", so a
// cursor of one list is refused by another.
namespace cursor {

inline constexpr char kAlphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

inline std::string encode(const std::string& plain) {
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (unsigned char c : plain) {
    acc = (acc << 8) | c;
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      out += kAlphabet[(acc >> bits) & 0x3F];
    }
  }
  if (bits > 0) out += kAlphabet[(acc << (6 - bits)) & 0x3F];
  return out;
}

inline std::optional<std::string> decode(std::string_view in) {
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    const char* at = std::char_traits<char>::find(kAlphabet, 64, c);
    if (!at) return std::nullopt;
    acc = (acc << 6) | static_cast<uint32_t>(at - kAlphabet);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xFF);
    }
  }
  if (bits >= 6 || (acc & ((1u << bits) - 1)) != 0) return std::nullopt;  // not canonical
  return out;
}

inline std::optional<int64_t> parse_positive(std::string_view s) {
  if (s.empty() || s.size() > 18 || s[0] == '0') return std::nullopt;
  int64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + (c - '0');
  }
  return v;
}

inline std::string make(std::string_view kind, std::string_view scope, int64_t position) {
  return encode(std::string(kind) + ":" + std::string(scope) + ":" + std::to_string(position));
}

// The 400 of a cursor that is not one of the list asked for.
[[noreturn]] inline void refuse() {
  throw Error(400, "invalid_cursor", "cursor: not a cursor of this list");
}

// The position of a cursor made by make(kind, scope, ...), or Error 400.
inline int64_t read(const std::string& given, std::string_view kind, std::string_view scope) {
  auto plain = decode(given);
  std::string prefix = std::string(kind) + ":" + std::string(scope) + ":";
  if (plain && plain->size() > prefix.size() && plain->compare(0, prefix.size(), prefix) == 0)
    if (auto v = parse_positive(std::string_view(*plain).substr(prefix.size()))) return *v;
  refuse();
}

}  // namespace cursor

class PostsService {
 public:
  PostsService(PostsStore& store, grapevine::ServiceContext ctx)
      : store_(store), ctx_(ctx), config_(Config::from(ctx.config())) {
    auto counter = [this](Counter c, int64_t delta) {
      return [this, c, delta](const grapevine::Event& e, grapevine::Tx& tx) {
        auto id = post_id_of(e.payload());
        if (!id) {
          ctx_.log().warn("posts: " + std::string(e.type()) + " " + std::string(e.id()) +
                          " has no usable post_id; ignored");
          return;
        }
        store_.add_to_counter(tx, *id, c, delta);  // an unknown post: ignored
      };
    };
    struct Rule {
      const char* type;
      Counter counter;
      int64_t delta;
    };
    for (const Rule& r :
         {Rule{"comment.created", Counter::comments, 1},
          Rule{"comment.deleted", Counter::comments, -1}, Rule{"like.created", Counter::likes, 1},
          Rule{"like.deleted", Counter::likes, -1}, Rule{"share.created", Counter::shares, 1},
          Rule{"share.deleted", Counter::shares, -1},
          Rule{"regossip.created", Counter::regossips, 1},
          Rule{"regossip.deleted", Counter::regossips, -1}})
      ctx_.subscribe(r.type, counter(r.counter, r.delta));
    ctx_.subscribe("user.deleted", [this](const grapevine::Event& e, grapevine::Tx& tx) {
      const json& p = e.payload();
      std::string user;
      if (p.is_object() && p.contains("id")) {
        if (p["id"].is_string()) user = p["id"].get<std::string>();
        if (p["id"].is_number_integer()) user = std::to_string(p["id"].get<int64_t>());
      }
      if (user.empty()) {
        ctx_.log().warn("posts: user.deleted " + std::string(e.id()) + " has no id; ignored");
        return;
      }
      store_.remove_by_author(tx, user, e.time_ms(), [&](const Post& post) {
        return deleted_payload(post, "user_deleted", user);
      });
    });
    ctx_.every("purge_idempotency_keys", std::chrono::seconds(config_.purge_interval_s),
               [this] { store_.purge_keys(now_ms() - config_.idempotency_ttl_s * 1000); });
  }

  const Config& config() const { return config_; }

  // POST /api/v1/posts: status and body (the stored ones on a replay).
  grapevine::Response create(const grapevine::Request& r) {
    const json& in = r.input();
    std::string body_text = in["text"].get<std::string>();
    check_text(body_text);
    std::optional<int64_t> reply_to;
    if (in.contains("reply_to") && !in["reply_to"].is_null())
      reply_to = parse_id(in["reply_to"].get<std::string>(), "reply_to");
    std::optional<IdempotencyKey> idem;
    if (auto key = idempotency_key(r))
      idem = IdempotencyKey{
          *key, json{{"text", body_text}, {"reply_to", in.value("reply_to", json())}}.dump()};
    Post post;  // as it will be written, but for its id
    post.author_id = r.user_id();
    post.text = std::move(body_text);
    post.reply_to = reply_to;
    post.created_ms = now_ms();
    int64_t fresh_after = post.created_ms - config_.idempotency_ttl_s * 1000;
    // The answer and the event payload are written here, before the
    // transaction, but for the id. What follows is the transaction: the
    // host runs it in the group commit, where every writer waits for it.
    std::string answer_head = text_before_id(post, true),
                payload_head = text_before_id(post, false), tail = text_after_id(post);
    return grapevine::Response::after_write([post = std::move(post), idem = std::move(idem),
                                             fresh_after, answer_head = std::move(answer_head),
                                             payload_head = std::move(payload_head),
                                             tail = std::move(tail)](grapevine::Tx& tx) {
      try {
        StoredAnswer a = PostsStore::create(
            tx, post, idem, fresh_after,
            [&](const Post& p) { return answer_head + std::to_string(p.id) + tail; },
            [&](const Post& p) { return payload_head + std::to_string(p.id) + tail; });
        return created_answer(std::move(a));
      } catch (const KeyReused&) {
        throw Error(422, "idempotency_key_reused",
                    "Idempotency-Key was already used with a different request");
      }
    });
  }

  // The answer of create: the stored text as it is (the answer of a
  // replayed key byte for byte, and no parse and second dump of a new
  // post's), with the new post's Location.
  static grapevine::Response created_answer(StoredAnswer a) {
    std::string id;
    if (a.post_id > 0) {
      id = std::to_string(a.post_id);
    } else if (a.status == 201) {  // replayed: the same Location as the first time
      json stored = json::parse(a.body, nullptr, false);
      if (stored.is_object() && stored.contains("id") && stored["id"].is_string())
        id = stored["id"].get<std::string>();
    }
    grapevine::Response out = grapevine::Response::json_text(std::move(a.body), a.status);
    if (a.status == 201 && !id.empty()) out.header("Location", "/api/v1/posts/" + id);
    return out;
  }

  // GET /api/v1/posts/{postId} and PUT: the post as clients see it, as
  // text (no json built, parsed and dumped again).
  grapevine::Response get(const std::string& id_text) {
    int64_t id = parse_id(id_text, "postId");
    auto post = store_.get(id);
    if (!post) throw not_found(id);
    return grapevine::Response::json_text(post_text(*post, true));
  }

  grapevine::Response update(const grapevine::Request& r) {
    int64_t id = parse_id(r.input()["postId"].get<std::string>(), "postId");
    std::string new_text = r.input()["text"].get<std::string>();
    check_text(new_text);
    std::string caller(r.user_id());
    auto post = store_.update(
        id, new_text, now_ms(),
        [&](const Post& p) {
          if (p.author_id != caller) throw Error::forbidden("only the author may edit a post");
        },
        [](const Post& p) { return post_text(p, false); });
    if (!post) throw not_found(id);
    return grapevine::Response::json_text(post_text(*post, true));
  }

  void remove(const grapevine::Request& r) {
    int64_t id = parse_id(r.input()["postId"].get<std::string>(), "postId");
    std::string caller(r.user_id());
    bool moderator = r.has_role("moderator") || r.has_role("admin");
    bool found = store_.remove(
        id, now_ms(),
        [&](const Post& p) {
          if (p.author_id != caller && !moderator)
            throw Error::forbidden("only the author, a moderator or an admin may delete a post");
        },
        [&](const Post& p) {
          return deleted_payload(p, p.author_id == caller ? "author" : "moderator", caller);
        });
    if (!found) throw not_found(id);
  }

  json history(const json& in) {
    int64_t id = parse_id(in["postId"].get<std::string>(), "postId");
    std::string scope = std::to_string(id);
    std::optional<int64_t> before;
    if (in.contains("cursor")) before = cursor::read(in["cursor"].get<std::string>(), "h", scope);
    int64_t limit = page_size(in);
    auto versions = store_.history(id, before, limit + 1);
    if (!versions) throw not_found(id);
    json items = json::array();
    json next = nullptr;
    for (size_t i = 0; i < versions->size(); ++i) {
      const PostVersion& v = (*versions)[i];
      if (static_cast<int64_t>(i) == limit) {
        next = cursor::make("h", scope, (*versions)[i - 1].version);
        break;
      }
      items.push_back({{"version", v.version},
                       {"text", v.text},
                       {"written_at", iso8601(v.written_ms)},
                       {"replaced_at", iso8601(v.replaced_ms)}});
    }
    return {{"items", items}, {"next_cursor", next}};
  }

  json list_by_author(const json& in) {
    std::string author = in["userId"].get<std::string>();
    std::optional<int64_t> before;
    if (in.contains("cursor")) before = cursor::read(in["cursor"].get<std::string>(), "u", author);
    int64_t limit = page_size(in);
    auto page = store_.list_by_author(author, before, limit + 1);
    // A cursor names a post of the list it came from; a made-up one may not.
    if (!page) cursor::refuse();
    const auto& posts = *page;
    json items = json::array();
    json next = nullptr;
    for (size_t i = 0; i < posts.size(); ++i) {
      if (static_cast<int64_t>(i) == limit) {
        next = cursor::make("u", author, posts[i - 1].id);
        break;
      }
      items.push_back(render(posts[i]));
    }
    return {{"items", items}, {"next_cursor", next}};
  }

  // A post as clients see it: its event payload plus the counters.
  static json render(const Post& p) { return json::parse(post_text(p, true)); }

  // A post as JSON text: with counters as clients see it, without as the
  // payload of post.created and post.updated. Keys in the order a json
  // object writes them (sorted). Written directly rather than built as a
  // json and dumped, which costs about ten times as much.
  static std::string post_text(const Post& p, bool counters) {
    std::string out;
    out.reserve(200 + p.author_id.size() + p.text.size());
    append_before_id(out, p, counters);
    out += std::to_string(p.id);
    append_after_id(out, p);
    return out;
  }

  // A post's text in two parts around its id, which follows `"id":"` in
  // the first: the parts of a new post are written before its write, whose
  // insert gives the id (see create).
  static std::string text_before_id(const Post& p, bool counters) {
    std::string out;
    append_before_id(out, p, counters);
    return out;
  }
  static std::string text_after_id(const Post& p) {
    std::string out;
    append_after_id(out, p);
    return out;
  }

 private:
  static void append_before_id(std::string& out, const Post& p, bool counters) {
    out += "{\"author_id\":";
    append_json_string(out, p.author_id);
    if (counters) {
      out += ",\"counters\":{\"comments\":" + std::to_string(p.comments) +
             ",\"likes\":" + std::to_string(p.likes) +
             ",\"regossips\":" + std::to_string(p.regossips) +
             ",\"shares\":" + std::to_string(p.shares) + "}";
    }
    out += ",\"created_at\":\"" + iso8601(p.created_ms) + "\"";
    out += ",\"edited_at\":";
    out += p.edited_ms ? "\"" + iso8601(*p.edited_ms) + "\"" : std::string("null");
    out += ",\"id\":\"";
  }
  static void append_after_id(std::string& out, const Post& p) {
    out += "\",\"reply_to\":";
    out += p.reply_to ? "\"" + std::to_string(*p.reply_to) + "\"" : std::string("null");
    out += ",\"text\":";
    append_json_string(out, p.text);
    out += ",\"version\":" + std::to_string(p.version) + "}";
  }

  // Appends s as a JSON string, escaped as json::dump escapes it. s is
  // valid UTF-8: texts are checked when written, and user ids come from
  // tokens the host verified (the host also checks every answer and event
  // payload is JSON).
  static void append_json_string(std::string& out, std::string_view s) {
    static constexpr char kHex[] = "0123456789abcdef";
    out += '"';
    size_t plain = 0;  // the start of the run not yet copied
    for (size_t i = 0; i < s.size(); ++i) {
      const auto c = static_cast<unsigned char>(s[i]);
      if (c >= 0x20 && c != '"' && c != '\\') continue;
      out.append(s, plain, i - plain);
      plain = i + 1;
      switch (c) {
        case '"':
          out += "\\\"";
          break;
        case '\\':
          out += "\\\\";
          break;
        case '\b':
          out += "\\b";
          break;
        case '\f':
          out += "\\f";
          break;
        case '\n':
          out += "\\n";
          break;
        case '\r':
          out += "\\r";
          break;
        case '\t':
          out += "\\t";
          break;
        default:
          out += "\\u00";
          out += kHex[c >> 4];
          out += kHex[c & 0xF];
      }
    }
    out.append(s, plain, s.size() - plain);
    out += '"';
  }

  static std::string deleted_payload(const Post& p, const char* reason, const std::string& by) {
    return json{{"id", std::to_string(p.id)},
                {"author_id", p.author_id},
                {"reply_to", p.reply_to ? json(std::to_string(*p.reply_to)) : json()},
                {"reason", reason},
                {"deleted_by", by}}
        .dump(-1, ' ', false, json::error_handler_t::replace);
  }

  static Error not_found(int64_t id) {
    return Error::not_found("post " + std::to_string(id) + " does not exist");
  }

  // A post id as the API writes it: a positive integer in decimal.
  static int64_t parse_id(const std::string& s, const char* field) {
    if (auto v = cursor::parse_positive(s)) return *v;
    throw Error(400, "invalid_input", std::string(field) + ": not a post id");
  }

  // post_id of an interaction event: "123" or 123.
  static std::optional<int64_t> post_id_of(const json& p) {
    if (!p.is_object() || !p.contains("post_id")) return std::nullopt;
    const json& v = p["post_id"];
    if (v.is_string()) return cursor::parse_positive(v.get<std::string>());
    if (v.is_number_integer() && v.get<int64_t>() > 0) return v.get<int64_t>();
    return std::nullopt;
  }

  void check_text(const std::string& s) const {
    std::vector<char32_t> cps;
    cps.reserve(s.size());
    if (!text::decode(s, &cps)) throw Error(400, "invalid_input", "text: not valid UTF-8");
    if (cps.empty()) throw Error(400, "invalid_input", "text: must not be empty");
    if (static_cast<int64_t>(cps.size()) > config_.max_text_chars)
      throw Error(400, "invalid_input",
                  "text: longer than " + std::to_string(config_.max_text_chars) + " characters");
    bool blank = true;
    for (char32_t c : cps) {
      if (text::is_control(c))
        throw Error(400, "invalid_input", "text: control characters are not allowed");
      blank = blank && text::is_space(c);
    }
    if (blank) throw Error(400, "invalid_input", "text: must not be only whitespace");
  }

  // The key from the Idempotency-Key header (HTTP) or the idempotency_key
  // input field (WebSocket); both given must agree.
  std::optional<std::string> idempotency_key(const grapevine::Request& r) const {
    std::optional<std::string> key = r.header("Idempotency-Key");
    if (r.input().contains("idempotency_key")) {
      std::string field = r.input()["idempotency_key"].get<std::string>();
      if (key && *key != field)
        throw Error(400, "invalid_input",
                    "idempotency_key: differs from the Idempotency-Key header");
      key = field;
    }
    if (!key) return std::nullopt;
    if (key->empty() || static_cast<int64_t>(key->size()) > config_.max_idempotency_key_chars)
      throw Error(400, "invalid_input",
                  "Idempotency-Key: 1 to " + std::to_string(config_.max_idempotency_key_chars) +
                      " characters");
    for (char c : *key)
      if (c < 0x20 || c > 0x7E)
        throw Error(400, "invalid_input", "Idempotency-Key: printable ASCII only");
    return key;
  }

  int64_t page_size(const json& in) const {
    int64_t limit = in.value("limit", config_.default_page_size);
    if (limit < 1 || limit > config_.max_page_size)
      throw Error(400, "invalid_input", "limit: 1 to " + std::to_string(config_.max_page_size));
    return limit;
  }

  PostsStore& store_;
  grapevine::ServiceContext ctx_;
  Config config_;
};

}  // namespace posts
