// Handlers of the users plugin: each operation's name, HTTP binding, input
// schema and who may call it, mapped onto the service. The schemas bound
// every field (the host adds additionalProperties: false), so unknown and
// privileged fields (id, password_hash, role on register) never arrive.
#pragma once

#include <grapevine/sdk.hpp>

#include "users_service.hpp"

namespace users {

using grapevine::Access;
using grapevine::Response;

inline json str(int min_len, int max_len) {
  return {{"type", "string"}, {"minLength", min_len}, {"maxLength", max_len}};
}

inline json object_schema(json properties, json required = json::array()) {
  json s = {{"type", "object"}, {"properties", std::move(properties)}};
  if (!required.empty()) s["required"] = std::move(required);
  return s;
}

inline void register_handlers(grapevine::Registry& registry, UsersService& service) {
  const json username = {
      {"type", "string"}, {"minLength", 3}, {"maxLength", 30}, {"pattern", "^[A-Za-z0-9_]+$"}};
  const json email = str(3, 254);
  const json password = str(8, 1024);
  const json display_name = str(0, 64);
  const json user_id = {
      {"type", "string"}, {"minLength", 1}, {"maxLength", 18}, {"pattern", "^[1-9][0-9]*$"}};

  registry.add({.name = "users.register",
                .http_method = "POST",
                .http_path = "/api/v1/users/register",
                .input_schema = object_schema({{"username", username},
                                               {"email", email},
                                               {"password", password},
                                               {"display_name", display_name}},
                                              {"username", "email", "password"}),
                .summary = "Creates an account (201 and the user)"},
               [&service](const Request& r) {
                 json user = service.register_user(r.input(), r);
                 std::string location = "/api/v1/users/" + user["id"].get<std::string>();
                 return Response::created(std::move(user), std::move(location));
               });

  registry.add({.name = "users.login",
                .http_method = "POST",
                .http_path = "/api/v1/users/login",
                .input_schema = object_schema({{"login", str(1, 254)}, {"password", str(1, 1024)}},
                                              {"login", "password"}),
                .summary = "Signs in with username or email: access and refresh tokens"},
               [&service](const Request& r) { return Response(service.login(r.input(), r)); });

  registry.add({.name = "users.refresh",
                .http_method = "POST",
                .http_path = "/api/v1/users/refresh",
                .input_schema = object_schema({{"refresh_token", str(1, 128)}}, {"refresh_token"}),
                .summary = "Rotates a refresh token: new access and refresh tokens"},
               [&service](const Request& r) { return Response(service.refresh(r.input())); });

  registry.add({.name = "users.logout",
                .http_method = "POST",
                .http_path = "/api/v1/users/logout",
                .input_schema = object_schema({{"refresh_token", str(1, 128)}}),
                .summary = "Ends the caller's session (and a refresh token's family)",
                .access = Access::signed_in},
               [&service](const Request& r) {
                 service.logout(r.input(), r);
                 return Response::no_content();
               });

  registry.add({.name = "users.me",
                .http_method = "GET",
                .http_path = "/api/v1/users/me",
                .summary = "The caller's own account, email included",
                .access = Access::signed_in},
               [&service](const Request& r) { return Response(service.me(r)); });

  registry.add({.name = "users.list",
                .http_method = "GET",
                .http_path = "/api/v1/users",
                .input_schema = object_schema(
                    {{"limit", {{"type", "integer"}, {"minimum", 1}, {"maximum", 1000}}},
                     {"after", user_id}}),
                .summary = "Lists accounts by id, with the total (admins)",
                .access = Access::role,
                .role = "admin"},
               [&service](const Request& r) { return Response(service.list(r.input())); });

  registry.add(
      {.name = "users.get",
       .http_method = "GET",
       .http_path = "/api/v1/users/{userId}",
       .input_schema = object_schema({{"userId", user_id}}, {"userId"}),
       .summary = "A public profile; email only for the user and admins"},
      [&service](const Request& r) { return Response(service.get(r.input()["userId"], r)); });

  registry.add({.name = "users.update",
                .http_method = "PUT",
                .http_path = "/api/v1/users/{userId}",
                .input_schema = object_schema(
                    {{"userId", user_id},
                     {"display_name", display_name},
                     {"email", email},
                     {"password", password},
                     {"old_password", str(1, 1024)},
                     {"role", {{"type", "string"}, {"enum", {"user", "moderator", "admin"}}}}},
                    {"userId"}),
                .summary = "Changes a profile (the user or an admin; role: admins only)",
                .access = Access::signed_in},
               [&service](const Request& r) { return Response(service.update(r.input(), r)); });

  registry.add(
      {.name = "users.delete",
       .http_method = "DELETE",
       .http_path = "/api/v1/users/{userId}",
       .input_schema = object_schema({{"userId", user_id}, {"password", str(1, 1024)}}, {"userId"}),
       .summary = "Deletes an account (the user with the password, or an admin)",
       .access = Access::signed_in},
      [&service](const Request& r) {
        service.remove(r.input(), r);
        return Response::no_content();
      });
}

}  // namespace users
