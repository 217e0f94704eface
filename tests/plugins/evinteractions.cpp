// A test plugin that publishes whatever event a test asks for (type, key,
// payload), so end-to-end tests can feed consumers such as posts with
// comment.created, like.created or user.deleted before the plugins that
// really publish them exist. It also records the post.* events it
// receives, so tests can see what posts published.
#include <grapevine/sdk.hpp>

namespace {

using grapevine::json;
using grapevine::Request;
using grapevine::Response;

class EvInteractions : public grapevine::Plugin {
 public:
  explicit EvInteractions(grapevine::PluginContext& ctx) : db_(ctx.dal().db()) {
    // A database exists only with a migration; the outbox lives in it.
    ctx.dal().migration(1, "CREATE TABLE published (id INTEGER PRIMARY KEY, type TEXT NOT NULL)");
    ctx.dal().migration(2,
                        "CREATE TABLE received (id INTEGER PRIMARY KEY, type TEXT NOT NULL, "
                        "key TEXT NOT NULL, payload TEXT NOT NULL)");
    ctx.service().subscribe("post.*", [](const grapevine::Event& e, grapevine::Tx& tx) {
      tx.exec("INSERT INTO received (type, key, payload) VALUES ($1, $2, $3)",
              {e.type(), e.key(), e.payload().dump()});
    });
    ctx.registry().add({.name = "evinteractions.received",
                        .http_method = "GET",
                        .http_path = "/api/v1/evinteractions/received",
                        .input_schema = {{"type", "object"},
                                         {"properties", {{"type", {{"type", "string"}}}}},
                                         {"required", {"type"}}},
                        .summary = "The post.* events of a type received so far, oldest first"},
                       [this](const Request& req) {
                         return Response(db_.read([&](grapevine::Tx& tx) {
                           json items = json::array();
                           for (const auto& row : tx.query(
                                    "SELECT key, payload FROM received WHERE type = $1 ORDER BY id",
                                    {req.input()["type"].get<std::string>()}))
                             items.push_back({{"key", row["key"].as_text()},
                                              {"payload", json::parse(row["payload"].as_text())}});
                           return json{{"items", items}};
                         }));
                       });
    const json event = {{"type", "object"},
                        {"properties",
                         {{"type", {{"type", "string"}, {"minLength", 1}, {"maxLength", 128}}},
                          {"key", {{"type", "string"}, {"minLength", 1}, {"maxLength", 256}}},
                          {"payload", {{"type", "object"}, {"additionalProperties", true}}}}},
                        {"required", {"type", "key", "payload"}}};
    ctx.registry().add(
        {.name = "evinteractions.publish",
         .http_method = "POST",
         .http_path = "/api/v1/evinteractions/events",
         .input_schema = {{"type", "object"},
                          {"properties",
                           {{"events", {{"type", "array"}, {"minItems", 1}, {"items", event}}}}},
                          {"required", {"events"}}},
         .summary = "Publishes the given events in one transaction"},
        [this](const Request& req) {
          json ids = json::array();
          db_.write([&](grapevine::Tx& tx) {
            for (const auto& e : req.input()["events"]) {
              std::string type = e["type"].get<std::string>();
              tx.exec("INSERT INTO published (type) VALUES ($1)", {type});
              ids.push_back(tx.publish(type, e["key"].get<std::string>(), e["payload"]));
            }
          });
          return Response::created({{"ids", ids}});
        });
  }

 private:
  grapevine::Database db_;
};

}  // namespace

GRAPEVINE_PLUGIN(EvInteractions, "evinteractions", "1.0.0", "", R"({"type":"object"})")
