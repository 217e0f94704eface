// Operation registry: names, routes, schemas, OpenAPI.
#include <catch2/catch.hpp>

#include "core/registry.hpp"

namespace {

gv_status noop(void*, const gv_request_v1*, gv_response*) { return GV_OK; }

gv_operation_v1 op(const char* name, const char* method = nullptr, const char* path = nullptr,
                   const char* schema = nullptr) {
  gv_operation_v1 o{};
  o.struct_size = sizeof o;
  o.name = name;
  o.http_method = method;
  o.http_path = path;
  o.input_schema = schema;
  o.handler = &noop;
  return o;
}

}  // namespace

TEST_CASE("routes match literals before parameters and report allowed methods", "[registry]") {
  gv::Registry r;
  std::string error;
  REQUIRE(r.add("users", op("users.get", "GET", "/api/v1/users/{userId}"), &error));
  REQUIRE(r.add("users", op("users.me", "GET", "/api/v1/users/me"), &error));
  REQUIRE(r.add("users", op("users.update", "PUT", "/api/v1/users/{userId}"), &error));
  const gv::Operation* found = nullptr;
  gv::PathParams params;
  std::string allowed;
  REQUIRE(r.route("GET", "/api/v1/users/me", &found, &params, &allowed) ==
          gv::Registry::Match::found);
  CHECK(found->name == "users.me");
  CHECK(params.empty());
  REQUIRE(r.route("GET", "/api/v1/users/u7", &found, &params, &allowed) ==
          gv::Registry::Match::found);
  CHECK(found->name == "users.get");
  REQUIRE(params.size() == 1);
  CHECK(params[0] == std::make_pair(std::string("userId"), std::string("u7")));
  CHECK(r.route("DELETE", "/api/v1/users/u7", &found, &params, &allowed) ==
        gv::Registry::Match::no_method);
  CHECK(allowed == "GET, PUT");
  CHECK(r.route("GET", "/api/v1/users", &found, &params, &allowed) == gv::Registry::Match::no_path);
  CHECK(r.route("GET", "/api/v1/users/", &found, &params, &allowed) ==
        gv::Registry::Match::no_path);
}

TEST_CASE("the registry refuses bad and clashing operations", "[registry]") {
  gv::Registry r;
  std::string error;
  REQUIRE(r.add("a", op("a.one", "POST", "/api/v1/a/{id}"), &error));
  CHECK_FALSE(r.add("b", op("a.one"), &error));
  CHECK(error.find("already registered by plugin a") != std::string::npos);
  CHECK_FALSE(r.add("b", op("b.two", "POST", "/api/v1/a/{other}"), &error));
  CHECK(error.find("same route as a.one") != std::string::npos);
  CHECK_FALSE(r.add("b", op("Bad Name"), &error));
  CHECK_FALSE(r.add("b", op("b.three", "GET", "/not-api"), &error));
  CHECK_FALSE(r.add("b", op("b.four", "FETCH", "/api/v1/b"), &error));
  CHECK_FALSE(r.add("b", op("b.five", nullptr, nullptr, "[1]"), &error));
  CHECK_FALSE(r.add("b", op("b.six", nullptr, nullptr, R"({"type":"object","minProperties":"x"})"),
                    &error));
  auto no_handler = op("b.seven");
  no_handler.handler = nullptr;
  CHECK_FALSE(r.add("b", no_handler, &error));
  auto quick_grouped = op("b.eight");
  quick_grouped.flags = GV_OP_QUICK | GV_OP_GROUPED_WRITE;
  CHECK_FALSE(r.add("b", quick_grouped, &error));
  CHECK(error.find("cannot be quick") != std::string::npos);
  CHECK(r.size() == 1);
  auto quick = op("b.nine");
  quick.flags = GV_OP_QUICK;
  REQUIRE(r.add("b", quick, &error));
  CHECK(r.find("b.nine")->quick);
  CHECK_FALSE(r.find("a.one")->quick);
  r.remove_plugin("b");
  r.remove_plugin("a");
  CHECK(r.size() == 0);
  CHECK(r.find("a.one") == nullptr);
}

TEST_CASE("input schemas become strict and appear in OpenAPI", "[registry]") {
  gv::Registry r;
  std::string error;
  REQUIRE(r.add(
      "p",
      op("p.create", "POST", "/api/v1/p/{pid}",
         R"({"type":"object","properties":{"pid":{"type":"integer"},"text":{"type":"string"}}})"),
      &error));
  const gv::Operation* o = r.find("p.create");
  REQUIRE(o);
  CHECK(o->input_schema["additionalProperties"] == false);
  CHECK_FALSE(o->schema->validate({{"text", "x"}, {"role", "admin"}}).empty());
  CHECK(o->schema->validate({{"text", "x"}, {"pid", 3}}).empty());
  auto doc = r.openapi("t", "1");
  auto& post = doc["paths"]["/api/v1/p/{pid}"]["post"];
  CHECK(post["operationId"] == "p.create");
  CHECK(post["parameters"][0]["name"] == "pid");
  CHECK(post["parameters"][0]["schema"]["type"] == "integer");
}
