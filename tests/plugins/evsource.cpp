// A test plugin that writes rows and publishes one event per row, in the
// same transaction (the "A" of the events tests). Also exercises the cache
// and blob store through the ABI.
#include <grapevine/sdk.hpp>

namespace {

using grapevine::json;
using grapevine::Request;
using grapevine::Response;

json object_schema(json properties, json required = json::array()) {
  return {{"type", "object"}, {"properties", std::move(properties)}, {"required", required}};
}

class EvSource : public grapevine::Plugin {
 public:
  explicit EvSource(grapevine::PluginContext& ctx)
      : db_(ctx.dal().db()), cache_(ctx.dal().cache()), blobs_(ctx.dal().blobs()) {
    ctx.dal().migration(1,
                        "CREATE TABLE items (id INTEGER PRIMARY KEY, k TEXT NOT NULL, "
                        "n BIGINT NOT NULL, UNIQUE (k, n))");
    if (ctx.config().value("second_step", false))
      ctx.dal().migration(2, ctx.config().value("second_step_sql", "CREATE TABLE extra (x TEXT)"));
    auto& r = ctx.registry();
    r.add({.name = "evsource.write",
           .http_method = "POST",
           .http_path = "/api/v1/evsource/items",
           .input_schema = object_schema(
               {{"key", {{"type", "string"}, {"minLength", 1}}}, {"n", {{"type", "integer"}}}},
               {"key", "n"}),
           .grouped_write = true},  // answered once its group commits (the crash test's writes)
          [this](const Request& req) {
            std::string key = req.input()["key"];
            int64_t n = req.input()["n"];
            json out = db_.write([&](grapevine::Tx& tx) {
              int64_t id = tx.insert("INSERT INTO items (k, n) VALUES ($1, $2)", {key, n});
              std::string event = tx.publish("item.created", key, {{"id", id}, {"key", key}, {"n", n}});
              return json{{"id", id}, {"event_id", event}};
            });
            return Response::created(out);
          });
    // The same row and event as an answer that is a write
    // (Response::after_write): checked here, written in the group commit.
    // then: "throw" refuses after inserting, "duplicate" inserts the row
    // twice (a constraint); either way nothing of it is kept.
    json after_schema = object_schema({{"key", {{"type", "string"}, {"minLength", 1}}},
                                       {"n", {{"type", "integer"}}},
                                       {"then", {{"enum", {"keep", "throw", "duplicate"}}}}},
                                      {"key", "n"});
    auto after_write = [](const Request& req) {
      std::string key = req.input()["key"];
      int64_t n = req.input()["n"];
      std::string then = req.input().value("then", "keep");
      return Response::after_write([key, n, then](grapevine::Tx& tx) {
        int64_t id = tx.insert("INSERT INTO items (k, n) VALUES ($1, $2)", {key, n});
        std::string event = tx.publish("item.created", key, {{"id", id}, {"key", key}, {"n", n}});
        if (then == "throw") throw grapevine::Error(422, "refused", "refused after its insert");
        if (then == "duplicate") tx.insert("INSERT INTO items (k, n) VALUES ($1, $2)", {key, n});
        return Response::created({{"id", id}, {"event_id", event}});
      });
    };
    r.add({.name = "evsource.write_after",
           .http_method = "POST",
           .http_path = "/api/v1/evsource/after",
           .input_schema = after_schema},
          after_write);
    // Inside a grouped handler, the write is a part of the handler's group.
    r.add({.name = "evsource.write_after_grouped",
           .http_method = "POST",
           .http_path = "/api/v1/evsource/after_grouped",
           .input_schema = after_schema,
           .grouped_write = true},
          after_write);
    // An in-process call of write_after, which waits for its write.
    r.add({.name = "evsource.call_after",
           .http_method = "POST",
           .http_path = "/api/v1/evsource/call_after",
           .input_schema = after_schema},
          [service = ctx.service()](const Request& req) {
            auto result = service.call("evsource.write_after", req.input(), req);
            return Response(json{{"status", result.status}, {"body", result.body}});
          });
    r.add({.name = "evsource.count", .http_method = "GET", .http_path = "/api/v1/evsource/count"},
          [this](const Request&) {
            return Response(db_.read([](grapevine::Tx& tx) {
              return json{
                  {"rows",
                   tx.query_one("SELECT COUNT(*) AS c FROM items")->operator[]("c").as_int()}};
            }));
          });
    // Per key: how many rows, the sum and the largest n (to compare with
    // what a consumer applied).
    r.add({.name = "evsource.keys", .http_method = "GET", .http_path = "/api/v1/evsource/keys"},
          [this](const Request&) {
            return Response(db_.read([](grapevine::Tx& tx) {
              json o = json::object();
              for (const auto& row :
                   tx.query("SELECT k, COUNT(*) AS c, SUM(n) AS s, MAX(n) AS m FROM items GROUP BY k"))
                o[row["k"].as_text()] = {row["c"].as_int(), row["s"].as_int(), row["m"].as_int()};
              return o;
            }));
          });
    // Which of the given ids exist.
    r.add({.name = "evsource.present",
           .http_method = "POST",
           .http_path = "/api/v1/evsource/present",
           .input_schema = object_schema(
               {{"ids", {{"type", "array"}, {"items", {{"type", "integer"}}}}}}, {"ids"})},
          [this](const Request& req) {
            std::vector<int64_t> ids = req.input()["ids"];
            int64_t present = db_.read([&](grapevine::Tx& tx) {
              int64_t found = 0;
              for (int64_t id : ids)
                found += tx.query("SELECT 1 FROM items WHERE id = $1", {id}).size();
              return found;
            });
            return Response(json{{"present", present}});
          });
    r.add({.name = "evsource.cache",
           .http_method = "POST",
           .http_path = "/api/v1/evsource/cache",
           .input_schema = object_schema({{"key", {{"type", "string"}}},
                                          {"value", {{"type", "string"}}},
                                          {"ttl_ms", {{"type", "integer"}}},
                                          {"incr", {{"type", "integer"}}}},
                                         {"key"})},
          [this](const Request& req) {
            const json& in = req.input();
            std::string key = in["key"];
            grapevine::Cache::Ttl ttl(in.value("ttl_ms", 0));
            json out = json::object();
            if (in.contains("value"))
              out["set"] = cache_.set(key, in["value"].get<std::string>(), ttl);
            if (in.contains("incr"))
              out["incr"] = *cache_.incr(key, in["incr"].get<int64_t>(), ttl);
            auto v = cache_.get(key);
            out["value"] = v ? json(*v) : json();
            return Response(out);
          });
    r.add({.name = "evsource.blob_put",
           .http_method = "PUT",
           .http_path = "/api/v1/evsource/blobs",
           .input_schema = object_schema(
               {{"key", {{"type", "string"}}}, {"text", {{"type", "string"}}}}, {"key", "text"})},
          [this](const Request& req) {
            blobs_.put(req.input()["key"].get<std::string>(),
                       req.input()["text"].get<std::string>());
            return Response::no_content();
          });
    r.add({.name = "evsource.blob_get",
           .http_method = "GET",
           .http_path = "/api/v1/evsource/blobs",
           .input_schema = object_schema({{"key", {{"type", "string"}}}}, {"key"})},
          [this](const Request& req) {
            auto v = blobs_.get(req.input()["key"].get<std::string>());
            if (!v) throw grapevine::Error::not_found("no such blob");
            auto listing = blobs_.list("");
            return Response(json{{"text", *v}, {"keys", listing.keys}});
          });
  }

 private:
  grapevine::Database db_;
  grapevine::Cache cache_;
  grapevine::Blobs blobs_;
};

}  // namespace

GRAPEVINE_PLUGIN(EvSource, "evsource", "1.0.0", "",
                 R"({"type":"object","properties":{
                      "second_step":{"type":"boolean"},
                      "second_step_sql":{"type":"string"}}})")
