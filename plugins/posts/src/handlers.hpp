// Handlers of the posts plugin: each operation's name, HTTP binding, input
// schema and who may call it, mapped onto the service.
#pragma once

#include <grapevine/sdk.hpp>

#include "posts_service.hpp"

namespace posts {

using grapevine::Access;
using grapevine::Request;
using grapevine::Response;

inline void register_handlers(grapevine::Registry& registry, PostsService& service) {
  const Config& cfg = service.config();
  // Ids are positive integers written as decimal strings.
  const json id = {{"type", "string"}, {"pattern", "^[1-9][0-9]{0,17}$"}};
  // Length in characters is checked by the service (code points, and the
  // configured limit); this only bounds the bytes.
  const json text = {{"type", "string"}, {"minLength", 1}, {"maxLength", cfg.max_text_chars * 4}};
  const json page = {
      {"cursor", {{"type", "string"}, {"minLength", 1}, {"maxLength", 512}}},
      {"limit", {{"type", "integer"}, {"minimum", 1}, {"maximum", cfg.max_page_size}}}};
  auto object = [](json properties, json required) {
    return json{{"type", "object"},
                {"properties", std::move(properties)},
                {"required", std::move(required)},
                {"additionalProperties", false}};
  };

  registry.add(
      {.name = "posts.create",
       .http_method = "POST",
       .http_path = "/api/v1/posts",
       .input_schema = object(
           {{"text", text},
            {"reply_to", {{"type", {"string", "null"}}, {"pattern", id["pattern"]}}},
            {"idempotency_key",
             {{"type", "string"}, {"minLength", 1}, {"maxLength", cfg.max_idempotency_key_chars}}}},
           {"text"}),
       .summary = "Creates a post; honours the Idempotency-Key header",
       .access = Access::signed_in,
       .quick = true},
      // Checks its input and answers with its write (after_write), which
      // the host runs in the group commit. It reads nothing, so it is
      // quick: the host may run it on the network thread that read the
      // request.
      [&service](const Request& r) { return service.create(r); });

  registry.add(
      {.name = "posts.get",
       .http_method = "GET",
       .http_path = "/api/v1/posts/{postId}",
       .input_schema = object({{"postId", id}}, {"postId"}),
       .summary = "A post with its counters",
       // Answers are kept by the host until the post changes
       // (PostsStore::cache_tag).
       .cache_tag = "post:{postId}"},
      [&service](const Request& r) { return service.get(r.input()["postId"].get<std::string>()); });

  registry.add({.name = "posts.update",
                .http_method = "PUT",
                .http_path = "/api/v1/posts/{postId}",
                .input_schema = object({{"postId", id}, {"text", text}}, {"postId", "text"}),
                .summary = "Edits a post's text (the author only); the old text goes to history",
                .access = Access::signed_in},
               [&service](const Request& r) { return service.update(r); });

  registry.add({.name = "posts.delete",
                .http_method = "DELETE",
                .http_path = "/api/v1/posts/{postId}",
                .input_schema = object({{"postId", id}}, {"postId"}),
                .summary = "Deletes a post (the author, a moderator or an admin)",
                .access = Access::signed_in},
               [&service](const Request& r) {
                 service.remove(r);
                 return Response::no_content();
               });

  json history_props = page;
  history_props["postId"] = id;
  registry.add({.name = "posts.history",
                .http_method = "GET",
                .http_path = "/api/v1/posts/{postId}/history",
                .input_schema = object(history_props, {"postId"}),
                .summary = "Earlier versions of a post, newest first, in cursor pages",
                .cache_tag = "post:{postId}"},
               [&service](const Request& r) { return Response(service.history(r.input())); });

  json list_props = page;
  list_props["userId"] = {{"type", "string"}, {"minLength", 1}, {"maxLength", 128}};
  registry.add(
      {.name = "posts.list_by_user",
       .http_method = "GET",
       .http_path = "/api/v1/users/{userId}/posts",
       .input_schema = object(list_props, {"userId"}),
       .summary = "A user's posts, newest first, in cursor pages",
       .cache_tag = "author:{userId}"},
      [&service](const Request& r) { return Response(service.list_by_author(r.input())); });
}

}  // namespace posts
