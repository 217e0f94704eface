// JSON Schema validation over valijson (draft 7). The wording of the
// violations is in core/schema_messages.cpp.

// Without this valijson calls abort() on a bad schema or value.
#define VALIJSON_USE_EXCEPTIONS 1

#include "core/json_schema.hpp"

#include <algorithm>
#include <regex>
#include <valijson/adapters/nlohmann_json_adapter.hpp>
#include <valijson/schema.hpp>
#include <valijson/schema_parser.hpp>
#include <valijson/validation_results.hpp>
#include <valijson/validator.hpp>

#include "core/schema_messages.hpp"

namespace gv {

using nlohmann::json;

namespace {

// Calls fn on each direct subschema of s (the draft 7 keywords that hold
// schemas; "enum", "const", "default" and the like hold data).
template <class Fn>
void for_each_subschema(json& s, Fn&& fn) {
  for (const char* k : {"properties", "patternProperties", "definitions", "$defs", "dependencies"})
    if (auto it = s.find(k); it != s.end() && it->is_object())
      for (auto& [_, sub] : it->items()) fn(sub);
  for (const char* k : {"allOf", "anyOf", "oneOf", "items"})
    if (auto it = s.find(k); it != s.end() && it->is_array())
      for (auto& sub : *it) fn(sub);
  for (const char* k : {"additionalProperties", "additionalItems", "items", "not", "if", "then",
                        "else", "contains", "propertyNames"})
    if (auto it = s.find(k); it != s.end() && it->is_object()) fn(*it);
}

// valijson's 'format' check calls asString() on any value and throws for a
// non-string, so each 'format' is moved under "if it is a string".
void guard_formats(json& s) {
  if (!s.is_object()) return;
  for_each_subschema(s, guard_formats);
  auto it = s.find("format");
  if (it == s.end() || !it->is_string()) return;
  json guarded = {{"if", {{"type", "string"}}}, {"then", {{"format", *it}}}};
  s.erase(it);
  s["allOf"].push_back(std::move(guarded));
}

// Builds every regex of the schema once, so a bad pattern is a compile
// error here instead of an exception in the middle of validation.
void check_patterns(const json& s) {
  if (s.is_array()) {
    for (const auto& e : s) check_patterns(e);
    return;
  }
  if (!s.is_object()) return;
  for (const auto& [key, v] : s.items()) {
    if (key == "enum" || key == "const" || key == "default" || key == "examples") continue;
    if (key == "pattern" && v.is_string()) std::regex(v.get<std::string>());
    if (key == "patternProperties" && v.is_object())
      for (const auto& [p, _] : v.items()) std::regex{p};
    check_patterns(v);
  }
}

}  // namespace

// ------------------------------------------------------------------- public

struct JsonSchema::Impl {
  json source;
  json compiled;  // source with guarded formats; what valijson parsed
  valijson::Schema schema;
};

JsonSchema::JsonSchema(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
JsonSchema::~JsonSchema() = default;

std::unique_ptr<JsonSchema> JsonSchema::compile(const json& schema, std::string* error) {
  auto impl = std::make_unique<Impl>();
  impl->source = schema;
  impl->compiled = schema;
  try {
    if (!schema.is_object() && !schema.is_boolean())
      throw std::runtime_error("a schema must be an object or a boolean");
    guard_formats(impl->compiled);
    check_patterns(impl->compiled);
    valijson::SchemaParser parser(valijson::SchemaParser::kDraft7);
    valijson::adapters::NlohmannJsonAdapter adapter(impl->compiled);
    parser.populateSchema(adapter, impl->schema);
  } catch (const std::exception& e) {
    if (error) *error = std::string("invalid JSON schema: ") + e.what();
    return nullptr;
  }
  return std::unique_ptr<JsonSchema>(new JsonSchema(std::move(impl)));
}

std::vector<SchemaViolation> JsonSchema::validate(const json& value, size_t max_violations) const {
  valijson::adapters::NlohmannJsonAdapter target(value);
  try {
    // Fast path without collecting errors: most values are valid. A
    // Validator's only state is its cache of compiled `pattern` regexes, keyed
    // by pattern text; compiling one costs far more than validating, so each
    // thread keeps one Validator for every schema. Patterns come from
    // registered schemas only, so the cache is bounded by them.
    thread_local valijson::Validator quick(valijson::Validator::kStrongTypes);
    if (quick.validate(impl_->schema, target, nullptr)) return {};
    valijson::Validator full(valijson::Validator::kStrongTypes);
    valijson::ValidationResults results;
    full.validate(impl_->schema, target, &results);
    std::vector<schema_messages::RawError> errors;
    for (const auto& e : results) errors.push_back({e.context, e.description});
    auto out = schema_messages::translate(impl_->compiled, value, errors,
                                          std::max<size_t>(max_violations, 1));
    if (out.empty()) out.push_back({"", "does not match the schema"});
    return out;
  } catch (const std::exception& e) {
    // Fail closed: a value that could not be checked is not valid.
    return {{"", std::string("could not be validated: ") + std::string(e.what()).substr(0, 120)}};
  }
}

const json& JsonSchema::source() const { return impl_->source; }

// ------------------------------------------------------------ strict_schema

namespace {

void make_strict(json& s) {
  if (!s.is_object()) return;
  if (s.contains("properties") && !s.contains("additionalProperties"))
    s["additionalProperties"] = false;
  for_each_subschema(s, make_strict);
}

}  // namespace

// Note: with allOf, each branch then refuses the other branches' fields;
// schemas that compose objects that way must set additionalProperties.
json strict_schema(json schema) {
  make_strict(schema);
  return schema;
}

std::string pointer_token(std::string t) {
  for (size_t i = 0; (i = t.find('~', i)) != std::string::npos; i += 2) t.replace(i, 1, "~0");
  for (size_t i = 0; (i = t.find('/', i)) != std::string::npos; i += 2) t.replace(i, 1, "~1");
  return t;
}

}  // namespace gv