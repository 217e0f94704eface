// A plugin for the end-to-end tests: operations that misbehave on purpose.
#include <grapevine/sdk.hpp>

#include <pthread.h>

#include <chrono>
#include <stdexcept>
#include <thread>

namespace {

using grapevine::json;
using grapevine::Request;
using grapevine::Response;

class TestKit : public grapevine::Plugin {
 public:
  explicit TestKit(grapevine::PluginContext& ctx) {
    auto& r = ctx.registry();
    r.add({.name = "testkit.throw", .http_method = "GET", .http_path = "/api/v1/testkit/throw"},
          [](const Request&) -> Response { throw std::runtime_error("boom, on purpose"); });
    r.add({.name = "testkit.slow",
           .http_method = "GET",
           .http_path = "/api/v1/testkit/slow",
           .input_schema = {{"type", "object"},
                            {"properties",
                             {{"ms", {{"type", "integer"}, {"minimum", 0}, {"maximum", 60000}}}}}}},
          [](const Request& req) {
            int ms = req.input().value("ms", 100);
            std::this_thread::sleep_for(std::chrono::milliseconds(ms));
            return Response(json{{"slept_ms", ms}});
          });
    r.add({.name = "testkit.error", .http_method = "GET", .http_path = "/api/v1/testkit/error"},
          [](const Request&) -> Response {
            throw grapevine::Error::conflict("a conflict the plugin chose");
          });
    // Headers a plugin sets: good ones pass, the host's own and malformed
    // ones are dropped (and logged); a 503 with its own Retry-After.
    r.add({.name = "testkit.headers", .http_method = "GET", .http_path = "/api/v1/testkit/headers"},
          [](const Request&) {
            Response out(json{{"ok", true}});
            out.header("Cache-Control", "max-age=60")
                .header("X-Custom", "one two")
                .header("Content-Type", "text/html")
                .header("Bad Name", "x")
                .header("X-Split", "a\r\nInjected: yes");
            return out;
          });
    r.add({.name = "testkit.busy", .http_method = "GET", .http_path = "/api/v1/testkit/busy"},
          [](const Request&) -> Response {
            throw grapevine::Error::unavailable("busy; come back").retry_after(7);
          });
    r.add({.name = "testkit.flood",
           .input_schema = {{"type", "object"},
                            {"properties",
                             {{"count",
                               {{"type", "integer"}, {"minimum", 1}, {"maximum", 100000}}}}}},
           .access = grapevine::Access::signed_in},
          [this](const Request& req) {
            int n = req.input().value("count", 1000);
            std::string payload(1000, 'x');
            for (int i = 0; i < n; ++i)
              service_->push_to_user(req.user_id(), "testkit.flood", {{"i", i}, {"pad", payload}});
            return Response(json{{"pushed", n}});
          });
    r.add({.name = "testkit.nullable",
           .http_method = "GET",
           .http_path = "/api/v1/testkit/nullable",
           .input_schema = {{"type", "object"},
                            {"properties", {{"n", {{"type", {"integer", "null"}}}}}}}},
          [](const Request& req) {
            return Response(json{{"n", req.input().value("n", json())}});
          });
    // Response::json_text: the text given, sent as it is (the host checks
    // that it is JSON).
    r.add({.name = "testkit.json_text",
           .http_method = "POST",
           .http_path = "/api/v1/testkit/json_text",
           .input_schema = {{"type", "object"},
                            {"properties", {{"text", {{"type", "string"}}}}},
                            {"required", {"text"}}}},
          [](const Request& req) {
            return Response::json_text(req.input()["text"].get<std::string>(), 201);
          });
    r.add({.name = "testkit.not_modified",
           .http_method = "GET",
           .http_path = "/api/v1/testkit/not_modified"},
          [](const Request&) {
            return Response(json{{"ignored", "body"}}, 304);
          });
    r.add({.name = "testkit.client",
           .http_method = "GET",
           .http_path = "/api/v1/testkit/client",
           .access = grapevine::Access::signed_in},
          [](const Request& req) {
            return Response(json{{"client_address", req.client_address()},
                                 {"session_id", req.session_id()},
                                 {"user_id", req.user_id()}});
          });
    // Logout-like: ends the caller's session; with all=true every token of
    // the caller issued until now.
    r.add({.name = "testkit.revoke",
           .http_method = "POST",
           .http_path = "/api/v1/testkit/revoke",
           .input_schema = {{"type", "object"}, {"properties", {{"all", {{"type", "boolean"}}}}}},
           .access = grapevine::Access::signed_in},
          [this](const Request& req) {
            if (req.input().value("all", false))
              service_->revoke_user_tokens(req.user_id(),
                                           std::chrono::duration_cast<std::chrono::seconds>(
                                               std::chrono::system_clock::now().time_since_epoch())
                                               .count());
            else
              service_->revoke_session(req.session_id());
            return Response::no_content();
          });
    // The thread a handler ran on, quick (on the network thread that read
    // the request) or not (on a worker); with "call": true the quick one
    // also calls another operation, which may wait and so is refused there.
    auto thread_of = [this](const Request& req) {
      if (req.input().value("call", false))
        service_->call_as_system("testkit.nullable", json::object());
      char name[32] = {};
      pthread_getname_np(pthread_self(), name, sizeof name);
      return Response(json{{"thread", name}});
    };
    const json call_flag = {{"type", "object"}, {"properties", {{"call", {{"type", "boolean"}}}}}};
    r.add({.name = "testkit.quick",
           .http_method = "GET",
           .http_path = "/api/v1/testkit/quick",
           .input_schema = call_flag,
           .quick = true},
          thread_of);
    r.add({.name = "testkit.thread",
           .http_method = "GET",
           .http_path = "/api/v1/testkit/thread",
           .input_schema = call_flag},
          thread_of);
    service_.emplace(ctx.service());
  }

 private:
  std::optional<grapevine::ServiceContext> service_;
};

}  // namespace

GRAPEVINE_PLUGIN(TestKit, "testkit", "0.0.1", "", R"({"type":"object"})")
