// The registry of operations every plugin offers, and the HTTP routes bound
// to them. Filled while plugins are created, read-only once the host serves.
#pragma once

#include <grapevine/abi.h>

#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "core/json_schema.hpp"

namespace gv {

struct Reply;  // core/call.hpp

struct Operation {
  std::string name;         // "posts.create"
  std::string plugin;       // who registered it
  std::string http_method;  // empty: not bound to HTTP
  std::string http_path;    // "/api/v1/posts/{postId}"
  std::string summary;
  gv_access access = GV_ACCESS_ANYONE;
  std::string role;
  nlohmann::json input_schema;         // as registered, made strict
  std::unique_ptr<JsonSchema> schema;  // compiled input_schema
  gv_handler_fn handler = nullptr;
  void* handler_ctx = nullptr;
  // Set for GV_OP_GROUPED_WRITE by the plugin host: runs `run` (the
  // handler's call) inside the plugin's grouped write and hands its reply
  // to done once committed, on some thread. Empty: run on the worker.
  std::function<void(const std::string& request_id, std::function<Reply()> run,
                     std::function<void(Reply)> done)>
      grouped;
  // GV_OP_QUICK (ABI 1.7): the handler does not wait, so the dispatcher
  // may run it on the network thread that read the request.
  bool quick = false;

  struct Segment {
    std::string text;  // literal text, or the parameter name
    bool param = false;
  };
  std::vector<Segment> segments;  // the parsed http_path

  // The parsed cache_tag (ABI 1.4): literal text, and path parameters
  // whose values fill it in. Empty: answers are not cached.
  std::vector<Segment> cache_tag;
};

using PathParams = std::vector<std::pair<std::string, std::string>>;

// The tag of an answer of op to a request with these path parameters: the
// plugin's name, a NUL, then op's cache_tag filled in ("posts\0post:42").
// Tags are scoped by plugin so that no plugin can invalidate another's.
std::string cache_tag_of(const Operation& op, const PathParams& params);
// A plugin's tag as it names it in an invalidation, scoped the same way.
std::string scoped_cache_tag(std::string_view plugin, std::string_view tag);

class Registry {
 public:
  // Adds an operation from a plugin. Refuses (false, *error set) a bad or
  // duplicate name, a route that another operation already has, a path
  // that is not under /api/, or an input schema that does not compile.
  bool add(const std::string& plugin, const gv_operation_v1& raw, std::string* error);

  const Operation* find(std::string_view name) const;
  // While plugins are created only: to attach host behaviour to an
  // operation just added.
  Operation* find_mutable(std::string_view name);

  // Drops every operation of a plugin that failed after registering some.
  void remove_plugin(const std::string& plugin);

  enum class Match { found, no_path, no_method };
  // Matches a decoded path; literal segments win over parameters. On
  // no_method, *allowed lists the methods the path has ("GET, PUT").
  Match route(std::string_view method, std::string_view path, const Operation** op,
              PathParams* params, std::string* allowed) const;

  // The OpenAPI 3.1 document of every HTTP-bound operation.
  nlohmann::json openapi(std::string_view title, std::string_view version) const;

  size_t size() const { return ops_.size(); }
  template <class F>
  void for_each(F&& f) const {
    for (const auto& op : ops_) f(*op);
  }

 private:
  std::vector<std::unique_ptr<Operation>> ops_;
  std::map<std::string, Operation*, std::less<>> by_name_;
};

// Splits "/api/v1/a/{b}" into segments; false for a malformed template.
bool parse_path_template(std::string_view path, std::vector<Operation::Segment>* out);

}  // namespace gv
