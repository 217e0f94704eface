// JsonSchema: short messages naming the field, pointers to the value.
#include <atomic>
#include <catch2/catch.hpp>
#include <thread>

#include "core/json_schema.hpp"

using gv::JsonSchema;
using gv::SchemaViolation;
using nlohmann::json;

namespace {

std::unique_ptr<JsonSchema> compile(const json& schema) {
  std::string error;
  auto s = JsonSchema::compile(schema, &error);
  INFO(error);
  REQUIRE(s);
  return s;
}

// The one violation value has against schema.
SchemaViolation only(const json& schema, const json& value) {
  auto v = compile(schema)->validate(value);
  REQUIRE(v.size() == 1);
  return v[0];
}

const json user_schema = gv::strict_schema({
    {"type", "object"},
    {"required", {"name"}},
    {"properties",
     {{"name", {{"type", "string"}, {"minLength", 3}, {"maxLength", 8}}},
      {"age", {{"type", "integer"}, {"minimum", 0}, {"maximum", 150}}},
      {"role", {{"enum", {"admin", "member"}}}},
      {"handle", {{"type", "string"}, {"pattern", "^[a-z]+$"}}},
      {"tags", {{"type", "array"}, {"items", {{"type", "string"}}}}},
      {"nick", {{"type", {"string", "null"}}}},
      {"address", {{"type", "object"}, {"properties", {{"city", {{"type", "string"}}}}}}}}},
});

}  // namespace

TEST_CASE("a valid value has no violations", "[schema]") {
  auto s = compile(user_schema);
  CHECK(s->validate({{"name", "ada"}, {"age", 36}, {"tags", {"x"}}}).empty());
  CHECK(s->source() == user_schema);
}

TEST_CASE("unknown fields are named with their pointer", "[schema]") {
  auto v = compile(user_schema)->validate({{"name", "ada"}, {"zeta", 1}, {"alpha", 2}});
  REQUIRE(v.size() == 2);  // valijson names only the first; both are reported
  CHECK(v[0].pointer == "/alpha");
  CHECK(v[0].message == "unknown field 'alpha'");
  CHECK(v[1].pointer == "/zeta");

  auto nested = only(user_schema, {{"name", "ada"}, {"address", {{"zip", "1"}}}});
  CHECK(nested.pointer == "/address/zip");
  CHECK(nested.message == "unknown field 'zip'");
}

TEST_CASE("type mismatches say what was expected and found", "[schema]") {
  auto v = only(user_schema, {{"name", "ada"}, {"age", "old"}});
  CHECK(v.pointer == "/age");
  CHECK(v.message == "expected integer, found string");
  CHECK(only(user_schema, {{"name", "ada"}, {"age", 1.5}}).message ==
        "expected integer, found number");
  CHECK(only(user_schema, {{"name", "ada"}, {"nick", 5}}).message ==
        "expected string or null, found integer");
  CHECK(only(user_schema, json::array()).message == "expected object, found array");
  auto item = only(user_schema, {{"name", "ada"}, {"tags", {"a", 2}}});
  CHECK(item.pointer == "/tags/1");
  CHECK(item.message == "expected string, found integer");
}

TEST_CASE("a missing required field points at the field", "[schema]") {
  auto v = only(user_schema, json::object());
  CHECK(v.pointer == "/name");
  CHECK(v.message == "missing required field 'name'");
}

TEST_CASE("bounds, enums and patterns read as plain words", "[schema]") {
  auto with = [](const char* key, json value) {
    return only(user_schema, {{"name", "ada"}, {key, value}}).message;
  };
  CHECK(only(user_schema, {{"name", "al"}}).message == "must be at least 3 characters long");
  CHECK(only(user_schema, {{"name", "alexandria"}}).message == "must be at most 8 characters long");
  CHECK(with("age", -1) == "must be at least 0");
  CHECK(with("age", 151) == "must be at most 150");
  CHECK(with("role", "owner") == "must be one of admin or member");
  CHECK(only({{"enum", {"x"}}}, "y").message == "must be x");
  CHECK(with("handle", "Ada") == "does not match the pattern ^[a-z]+$");
  CHECK(only({{"type", "array"}, {"maxItems", 1}}, {1, 2}).message == "must have at most 1 item");
  CHECK(only({{"type", "array"}, {"maxItems", 2}}, {1, 2, 3}).message ==
        "must have at most 2 items");
  CHECK(only({{"type", "string"}, {"minLength", 1}}, "").message == "must not be empty");
  CHECK(only({{"multipleOf", 5}}, 7).message == "must be a multiple of 5");
  CHECK(only({{"type", "array"}, {"uniqueItems", true}}, {1, 1}).message == "items must be unique");
  CHECK(only({{"exclusiveMinimum", 0.5}}, 0.5).message == "must be greater than 0.5");
}

TEST_CASE("large values are never echoed", "[schema]") {
  const std::string big(100000, 'x');
  auto v = compile(user_schema)->validate({{"name", big}, {big, 1}});
  REQUIRE(v.size() == 2);
  for (const auto& e : v) {
    CHECK(e.message.size() < 120);
    CHECK(e.pointer.size() < 200);
  }
}

TEST_CASE("anyOf reports the alternatives' problems once", "[schema]") {
  json schema = {{"anyOf", {{{"type", "string"}}, {{"type", "integer"}}}}};
  CHECK(only(schema, true).message == "expected string or integer, found boolean");
  json objects = {{"anyOf", {{{"required", {"a"}}}, {{"required", {"b"}}}}}};
  auto v = compile(objects)->validate(json::object());
  REQUIRE(v.size() == 2);
  CHECK(v[0].message == "missing required field 'a'");
}

TEST_CASE("$ref and definitions are followed for messages", "[schema]") {
  json schema = {{"definitions", {{"port", {{"type", "integer"}, {"maximum", 65535}}}}},
                 {"properties", {{"port", {{"$ref", "#/definitions/port"}}}}}};
  CHECK(only(schema, {{"port", "x"}}).message == "expected integer, found string");
  CHECK(only(schema, {{"port", 70000}}).message == "must be at most 65535");
}

TEST_CASE("format applies to strings only and never throws", "[schema]") {
  json schema = {{"type", {"string", "integer"}}, {"format", "date"}};
  auto s = compile(schema);
  CHECK(s->validate(5).empty());
  CHECK(s->validate("2024-02-03").empty());
  auto v = s->validate("yesterday");
  REQUIRE(v.size() == 1);
  CHECK(v[0].message == "must be a valid date");
}

TEST_CASE("bad schemas do not compile", "[schema]") {
  std::string error;
  CHECK_FALSE(JsonSchema::compile({{"pattern", "(unclosed"}}, &error));
  CHECK_FALSE(error.empty());
  CHECK_FALSE(JsonSchema::compile({{"$ref", "http://example.com/x"}}, &error));
  CHECK_FALSE(JsonSchema::compile(42, &error));
}

TEST_CASE("max_violations caps the list", "[schema]") {
  json schema = {{"type", "array"}, {"items", {{"type", "string"}}}};
  auto s = compile(schema);
  CHECK(s->validate(json(std::vector<int>(50, 1)), 3).size() == 3);
  CHECK(s->validate(json(std::vector<int>(50, 1))).size() == 8);
}

TEST_CASE("strict_schema refuses unknown fields by default", "[schema]") {
  json loose = {
      {"type", "object"},
      {"properties",
       {{"a", {{"type", "object"}, {"properties", {{"b", {{"type", "integer"}}}}}}},
        {"open",
         {{"type", "object"}, {"properties", json::object()}, {"additionalProperties", true}}},
        {"list", {{"items", {{"properties", {{"c", true}}}}}}}}},
      {"default", {{"properties", {{"x", 1}}}}},  // data, not a schema
  };
  json strict = gv::strict_schema(loose);
  CHECK(strict["additionalProperties"] == false);
  CHECK(strict["properties"]["a"]["additionalProperties"] == false);
  CHECK(strict["properties"]["open"]["additionalProperties"] == true);
  CHECK(strict["properties"]["list"]["items"]["additionalProperties"] == false);
  CHECK_FALSE(strict["default"].contains("additionalProperties"));
  CHECK(compile(loose)->validate({{"zzz", 1}}).empty());
  CHECK(only(strict, {{"a", {{"zzz", 1}}}}).pointer == "/a/zzz");
}

TEST_CASE("one compiled schema serves many threads", "[schema]") {
  auto s = compile(user_schema);
  std::vector<std::thread> threads;
  std::atomic<int> wrong{0};
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 200; ++i) {
        if (!s->validate({{"name", "ada"}, {"handle", "abc"}}).empty()) ++wrong;
        if (s->validate({{"name", "ada"}, {"handle", "A"}}).size() != 1) ++wrong;
      }
    });
  for (auto& t : threads) t.join();
  CHECK(wrong == 0);
}
