// Registry::openapi: the OpenAPI document, generated from the operations.
#include "core/registry.hpp"

namespace gv {
namespace {

nlohmann::json error_response(const char* description) {
  return {
      {"description", description},
      {"content", {{"application/json", {{"schema", {{"$ref", "#/components/schemas/Error"}}}}}}}};
}

nlohmann::json operation_object(const Operation& op) {
  nlohmann::json o = {{"operationId", op.name}, {"summary", op.summary}, {"tags", {op.plugin}}};
  nlohmann::json parameters = nlohmann::json::array();
  const auto& props = op.input_schema.value("properties", nlohmann::json::object());
  for (const auto& seg : op.segments) {
    if (!seg.param) continue;
    parameters.push_back({{"name", seg.text},
                          {"in", "path"},
                          {"required", true},
                          {"schema", props.value(seg.text, nlohmann::json{{"type", "string"}})}});
  }
  if (op.http_method == "GET" || op.http_method == "DELETE") {
    // Inputs that are not path parameters come from the query string.
    for (auto it = props.begin(); it != props.end(); ++it) {
      bool in_path = false;
      for (const auto& seg : op.segments) in_path |= seg.param && seg.text == it.key();
      if (!in_path)
        parameters.push_back({{"name", it.key()}, {"in", "query"}, {"schema", it.value()}});
    }
  } else {
    o["requestBody"] = {{"required", false},
                        {"content", {{"application/json", {{"schema", op.input_schema}}}}}};
  }
  if (!parameters.empty()) o["parameters"] = parameters;
  o["responses"] = {{"200", {{"description", "Success"}}},
                    {"400", error_response("Invalid input")},
                    {"default", error_response("Error")}};
  if (op.access != GV_ACCESS_ANYONE) {
    o["security"] = nlohmann::json::array({{{"bearer", nlohmann::json::array()}}});
    o["responses"]["401"] = error_response("Missing or invalid token");
  }
  if (op.access == GV_ACCESS_ROLE) o["x-grapevine-role"] = op.role;
  return o;
}

}  // namespace

nlohmann::json Registry::openapi(std::string_view title, std::string_view version) const {
  nlohmann::json paths = nlohmann::json::object();
  for (const auto& op : ops_) {
    if (op->http_method.empty()) continue;
    std::string method = op->http_method;
    for (auto& c : method) c = static_cast<char>(std::tolower(c));
    paths[op->http_path][method] = operation_object(*op);
  }
  return {{"openapi", "3.1.0"},
          {"info", {{"title", title}, {"version", version}}},
          {"paths", paths},
          {"components",
           {{"securitySchemes",
             {{"bearer", {{"type", "http"}, {"scheme", "bearer"}, {"bearerFormat", "JWT"}}}}},
            {"schemas",
             {{"Error",
               {{"type", "object"},
                {"required", {"error"}},
                {"properties",
                 {{"error",
                   {{"type", "object"},
                    {"properties",
                     {{"code", {{"type", "string"}}},
                      {"message", {{"type", "string"}}},
                      {"request_id", {{"type", "string"}}}}}}}}}}}}}}}};
}

}  // namespace gv
