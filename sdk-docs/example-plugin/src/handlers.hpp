// Handlers of the example plugin: each operation's name, HTTP binding,
// input schema and who may call it, mapped onto the service.
#pragma once

#include <grapevine/sdk.hpp>

#include "greeter_service.hpp"

namespace hello {

using grapevine::Access;
using grapevine::json;
using grapevine::Request;
using grapevine::Response;

inline void register_handlers(grapevine::Registry& registry, GreeterService& service) {
  const json name_schema = {{"type", "string"}, {"minLength", 1}, {"maxLength", 64}};

  registry.add({.name = "hello.greet",
                .http_method = "GET",
                .http_path = "/api/v1/hello/greetings/{name}",
                .input_schema = {{"type", "object"},
                                 {"properties", {{"name", name_schema}}},
                                 {"required", {"name"}}},
                .summary = "Greets someone and says how often they were greeted"},
               [&service](const Request& r) { return Response(service.greet(r.input()["name"])); });

  registry.add({.name = "hello.greet_indirect",
                .http_method = "GET",
                .http_path = "/api/v1/hello/indirect/{name}",
                .input_schema = {{"type", "object"},
                                 {"properties", {{"name", name_schema}}},
                                 {"required", {"name"}}},
                .summary = "Greets through an in-process call to hello.greet"},
               [&service](const Request& r) {
                 return Response(service.greet_via_registry(r.input()["name"], r));
               });

  registry.add(
      {.name = "hello.echo",
       .http_method = "POST",
       .http_path = "/api/v1/hello/echo",
       .input_schema = {{"type", "object"},
                        {"properties",
                         {{"text", {{"type", "string"}, {"maxLength", 200}}},
                          {"repeat", {{"type", "integer"}, {"minimum", 1}, {"maximum", 5}}}}},
                        {"required", {"text"}}},
       .summary = "Echoes text, repeated"},
      [](const Request& r) {
        std::string out;
        int times = r.input().value("repeat", 1);
        for (int i = 0; i < times; ++i) out += r.input()["text"].get<std::string>();
        return Response::created({{"text", out}});
      });

  registry.add({.name = "hello.whoami",
                .http_method = "GET",
                .http_path = "/api/v1/hello/whoami",
                .summary = "Says who the caller is",
                .access = Access::signed_in},
               [](const Request& r) {
                 return Response(json{{"user_id", r.user_id()}, {"admin", r.has_role("admin")}});
               });

  registry.add({.name = "hello.subscribe", .summary = "Subscribes this WebSocket to announcements"},
               [&service](const Request& r) {
                 service.subscribe(r);
                 return Response(json{{"subscribed", kAnnouncements}});
               });

  registry.add(
      {.name = "hello.announce",
       .http_method = "POST",
       .http_path = "/api/v1/hello/announcements",
       .input_schema = {{"type", "object"},
                        {"properties", {{"text", {{"type", "string"}, {"maxLength", 500}}}}},
                        {"required", {"text"}}},
       .summary = "Pushes an announcement to every subscribed socket",
       .access = Access::role,
       .role = "admin"},
      [&service](const Request& r) {
        service.announce(r.input()["text"], r.user_id());
        return Response(json{{"sent", true}}, 202);
      });

  registry.add({.name = "hello.poke",
                .http_method = "POST",
                .http_path = "/api/v1/hello/pokes/{user_id}",
                .input_schema = {{"type", "object"},
                                 {"properties",
                                  {{"user_id", name_schema},
                                   {"text", {{"type", "string"}, {"maxLength", 200}}}}},
                                 {"required", {"user_id", "text"}}},
                .summary = "Pushes a message to every socket of a user",
                .access = Access::signed_in},
               [&service](const Request& r) {
                 service.poke(r.input()["user_id"].get<std::string>(), r.input()["text"]);
                 return Response(json{{"sent", true}}, 202);
               });
}

}  // namespace hello
