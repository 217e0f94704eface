#include "core/registry.hpp"

#include <algorithm>
#include <regex>

namespace gv {
namespace {

bool valid_operation_name(std::string_view name) {
  static const std::regex re("[a-z][a-z0-9_]*(\\.[a-z][a-z0-9_]*)+");
  return name.size() <= 128 && std::regex_match(name.begin(), name.end(), re);
}

bool valid_method(std::string_view m) {
  return m == "GET" || m == "POST" || m == "PUT" || m == "PATCH" || m == "DELETE";
}

std::vector<std::string_view> split_path(std::string_view path) {
  std::vector<std::string_view> parts;
  if (!path.empty() && path.front() == '/') path.remove_prefix(1);
  while (true) {
    size_t slash = path.find('/');
    parts.push_back(path.substr(0, slash));
    if (slash == std::string_view::npos) break;
    path.remove_prefix(slash + 1);
  }
  return parts;
}

bool same_route(const Operation& a, const Operation& b) {
  if (a.http_method != b.http_method || a.segments.size() != b.segments.size()) return false;
  for (size_t i = 0; i < a.segments.size(); ++i) {
    const auto& x = a.segments[i];
    const auto& y = b.segments[i];
    if (x.param != y.param || (!x.param && x.text != y.text)) return false;
  }
  return true;
}

// Parses a cache tag template ("post:{postId}") over op's path parameters.
bool parse_cache_tag(Operation& op, std::string_view tag, std::string* error) {
  auto refuse = [&](const std::string& why) {
    *error =
        "operation " + op.name + " cache_tag '" + std::string(tag.substr(0, 200)) + "': " + why;
    return false;
  };
  if (op.http_method != "GET") return refuse("only GET operations can be cached");
  if (op.access != GV_ACCESS_ANYONE)
    return refuse("only operations anyone may call can be cached (the answer is shared)");
  if (tag.empty() || tag.size() > 256) return refuse("must be 1 to 256 characters");
  std::vector<Operation::Segment> out;
  while (!tag.empty()) {
    size_t open = tag.find('{');
    if (open != 0) {
      std::string_view literal = tag.substr(0, open);
      if (literal.find('}') != std::string_view::npos) return refuse("a '}' without its '{'");
      out.push_back({std::string(literal), false});
      if (open == std::string_view::npos) break;
      tag.remove_prefix(open);
      continue;
    }
    size_t close = tag.find('}');
    if (close == std::string_view::npos) return refuse("a '{' without its '}'");
    std::string name(tag.substr(1, close - 1));
    bool known =
        std::any_of(op.segments.begin(), op.segments.end(),
                    [&](const Operation::Segment& s) { return s.param && s.text == name; });
    if (!known) return refuse("{" + name + "} is not a parameter of the path " + op.http_path);
    out.push_back({std::move(name), true});
    tag.remove_prefix(close + 1);
  }
  op.cache_tag = std::move(out);
  return true;
}

}  // namespace

std::string scoped_cache_tag(std::string_view plugin, std::string_view tag) {
  std::string out;
  out.reserve(plugin.size() + 1 + tag.size());
  out.append(plugin);
  out.push_back('\0');
  out.append(tag);
  return out;
}

std::string cache_tag_of(const Operation& op, const PathParams& params) {
  std::string out = scoped_cache_tag(op.plugin, {});
  for (const auto& seg : op.cache_tag) {
    if (!seg.param) {
      out += seg.text;
      continue;
    }
    for (const auto& [name, value] : params)
      if (name == seg.text) {
        out += value;
        break;
      }
  }
  return out;
}

bool parse_path_template(std::string_view path, std::vector<Operation::Segment>* out) {
  static const std::regex literal("[A-Za-z0-9._~-]+");
  static const std::regex param("\\{[A-Za-z_][A-Za-z0-9_]*\\}");
  if (path.empty() || path.front() != '/') return false;
  out->clear();
  for (std::string_view part : split_path(path)) {
    std::string s(part);
    if (std::regex_match(s, param))
      out->push_back({s.substr(1, s.size() - 2), true});
    else if (std::regex_match(s, literal))
      out->push_back({s, false});
    else
      return false;
  }
  return true;
}

bool Registry::add(const std::string& plugin, const gv_operation_v1& raw, std::string* error) {
  auto op = std::make_unique<Operation>();
  op->name = raw.name ? raw.name : "";
  op->plugin = plugin;
  if (!valid_operation_name(op->name)) {
    *error = "operation name '" + op->name + "' must look like plugin.verb (lower case, digits, _)";
    return false;
  }
  if (by_name_.count(op->name)) {
    *error =
        "operation " + op->name + " is already registered by plugin " + by_name_[op->name]->plugin;
    return false;
  }
  op->summary = raw.summary ? raw.summary : "";
  op->access = raw.access;
  op->role = raw.role ? raw.role : "";
  if (op->access == GV_ACCESS_ROLE && op->role.empty()) {
    *error = "operation " + op->name + " requires a role but names none";
    return false;
  }
  op->handler = raw.handler;
  op->handler_ctx = raw.handler_ctx;
  if (!op->handler) {
    *error = "operation " + op->name + " has no handler";
    return false;
  }
  op->quick = (raw.flags & GV_OP_QUICK) != 0;
  if (op->quick && (raw.flags & GV_OP_GROUPED_WRITE)) {
    *error = "operation " + op->name +
             " is a grouped write and cannot be quick (its handler runs in the group commit)";
    return false;
  }
  if (raw.http_method || raw.http_path) {
    op->http_method = raw.http_method ? raw.http_method : "";
    op->http_path = raw.http_path ? raw.http_path : "";
    if (!valid_method(op->http_method) || !parse_path_template(op->http_path, &op->segments) ||
        op->http_path.rfind("/api/", 0) != 0) {
      *error = "operation " + op->name + " has a bad HTTP binding '" + op->http_method + " " +
               op->http_path + "' (method GET/POST/PUT/PATCH/DELETE, path under /api/)";
      return false;
    }
    for (const auto& other : ops_)
      if (same_route(*op, *other)) {
        *error = "operation " + op->name + " has the same route as " + other->name + ": " +
                 op->http_method + " " + op->http_path;
        return false;
      }
  }
  nlohmann::json schema = nlohmann::json{{"type", "object"}};
  if (raw.input_schema && *raw.input_schema) {
    schema = nlohmann::json::parse(raw.input_schema, nullptr, false);
    if (schema.is_discarded() || !schema.is_object()) {
      *error = "operation " + op->name + " input schema is not a JSON object";
      return false;
    }
  }
  op->input_schema = strict_schema(std::move(schema));
  if (raw.cache_tag) {
    if (raw.flags & GV_OP_GROUPED_WRITE) {
      *error = "operation " + op->name + " is a grouped write and cannot have a cache_tag";
      return false;
    }
    if (!parse_cache_tag(*op, raw.cache_tag, error)) return false;
  }
  std::string schema_error;
  op->schema = JsonSchema::compile(op->input_schema, &schema_error);
  if (!op->schema) {
    *error = "operation " + op->name + " input schema: " + schema_error;
    return false;
  }
  by_name_[op->name] = op.get();
  ops_.push_back(std::move(op));
  return true;
}

const Operation* Registry::find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

Operation* Registry::find_mutable(std::string_view name) {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

void Registry::remove_plugin(const std::string& plugin) {
  for (auto it = ops_.begin(); it != ops_.end();) {
    if ((*it)->plugin == plugin) {
      by_name_.erase((*it)->name);
      it = ops_.erase(it);
    } else {
      ++it;
    }
  }
}

Registry::Match Registry::route(std::string_view method, std::string_view path,
                                const Operation** found, PathParams* params,
                                std::string* allowed) const {
  std::vector<std::string_view> parts = split_path(path);
  const Operation* best = nullptr;
  int best_literals = -1;
  std::vector<std::string> methods;
  for (const auto& op : ops_) {
    if (op->segments.size() != parts.size()) continue;
    int literals = 0;
    bool ok = true;
    for (size_t i = 0; i < parts.size() && ok; ++i) {
      const auto& seg = op->segments[i];
      if (seg.param)
        ok = !parts[i].empty();
      else if ((ok = seg.text == parts[i]))
        ++literals;
    }
    if (!ok) continue;
    if (op->http_method != method) {
      methods.push_back(op->http_method);
      continue;
    }
    if (literals > best_literals) {
      best = op.get();
      best_literals = literals;
    }
  }
  if (!best) {
    if (methods.empty()) return Match::no_path;
    std::sort(methods.begin(), methods.end());
    methods.erase(std::unique(methods.begin(), methods.end()), methods.end());
    allowed->clear();
    for (const auto& m : methods) *allowed += (allowed->empty() ? "" : ", ") + m;
    return Match::no_method;
  }
  *found = best;
  params->clear();
  for (size_t i = 0; i < parts.size(); ++i)
    if (best->segments[i].param)
      params->emplace_back(best->segments[i].text, std::string(parts[i]));
  return Match::found;
}

}  // namespace gv
