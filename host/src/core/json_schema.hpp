// JSON Schema validation (valijson, draft 7), shared by the config loader
// and by operation input checking. A compiled schema is immutable and can
// be used from many threads at once.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace gv {

struct SchemaViolation {
  std::string pointer;  // JSON pointer of the offending value: "/user/name"
  std::string message;  // "unknown field 'role'", "expected integer, found string"
};

class JsonSchema {
 public:
  // Compiles schema; nullptr with *error set when it is not a valid schema.
  static std::unique_ptr<JsonSchema> compile(const nlohmann::json& schema, std::string* error);
  ~JsonSchema();

  // Returns up to max_violations problems; empty means valid. Messages are
  // short, name the field, and never echo large values back.
  std::vector<SchemaViolation> validate(const nlohmann::json& value,
                                        size_t max_violations = 8) const;

  const nlohmann::json& source() const;

 private:
  struct Impl;
  explicit JsonSchema(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// One JSON pointer reference token, escaped (RFC 6901): "~" -> "~0",
// "/" -> "~1".
std::string pointer_token(std::string token);

// Returns a copy of schema in which every object schema that has
// "properties" and no "additionalProperties" gets "additionalProperties":
// false, so unknown fields are refused by default.
nlohmann::json strict_schema(nlohmann::json schema);

}  // namespace gv
