// The host's YAML config: defaults, the shipped file, and error reports
// that give every problem at once with its line.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <fstream>

#include "config/host_config.hpp"
#include "config/yaml_document.hpp"

using namespace gv::config;
namespace fs = std::filesystem;

namespace {

// A fresh directory per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "gv-config-XXXXXX").string();
    REQUIRE(mkdtemp(tmpl.data()) != nullptr);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  fs::path write(const std::string& name, const std::string& text) const {
    std::ofstream(path_ / name) << text;
    return path_ / name;
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

struct Loaded {
  bool ok;
  HostConfig config;
  std::vector<Diagnostic> errors;
};

Loaded load(const std::string& yaml, const Overrides& overrides = {}) {
  TempDir dir;
  Loaded r;
  r.ok = load_host_config(dir.write("grapevine.yaml", yaml), overrides, &r.config, &r.errors);
  for (const auto& e : r.errors) UNSCOPED_INFO(e.to_string());
  return r;
}

// The single error a file gives.
Diagnostic one_error(const std::string& yaml) {
  Loaded r = load(yaml);
  CHECK_FALSE(r.ok);
  REQUIRE(r.errors.size() == 1);
  return r.errors[0];
}

}  // namespace

TEST_CASE("an empty file gives the defaults", "[config]") {
  Loaded r = load("");
  REQUIRE(r.ok);
  const HostConfig def;
  CHECK(r.config.server.listen_host == "127.0.0.1");
  CHECK(r.config.server.listen_port == 8080);
  CHECK(r.config.limits.body_bytes == def.limits.body_bytes);
  CHECK(r.config.limits.request_timeout == def.limits.request_timeout);
  CHECK(r.config.websocket.ping_interval == def.websocket.ping_interval);
  CHECK(r.config.auth.access_token_ttl == def.auth.access_token_ttl);
  // As config/grapevine.yaml: one HS256 key made in data_dir, signing.
  CHECK(r.config.auth.signing_kid == "main");
  REQUIRE(r.config.auth.keys.size() == 1);
  CHECK(r.config.auth.keys[0].kid == "main");
  CHECK(r.config.auth.keys[0].alg == "HS256");
  CHECK(r.config.auth.keys[0].secret_file == "jwt-main.key");
  CHECK(r.config.auth.keys[0].generate);
  CHECK(r.config.log.level == "info");
  CHECK(r.config.data_dir == "data");
  CHECK(r.config.plugin_dirs == def.plugin_dirs);
  CHECK(r.config.plugins.empty());
  CHECK(load("# only a comment\n").ok);
}

TEST_CASE("the shipped config/grapevine.yaml loads cleanly", "[config]") {
  const fs::path file = fs::path(GRAPEVINE_SOURCE_DIR) / "config" / "grapevine.yaml";
  HostConfig c;
  std::vector<Diagnostic> errors;
  bool ok = load_host_config(file, {}, &c, &errors);
  for (const auto& e : errors) UNSCOPED_INFO(e.to_string());
  REQUIRE(ok);
  CHECK(c.server.listen_host == "127.0.0.1");
  CHECK(c.server.listen_port == 8080);
  CHECK(c.data_dir == "data");
  CHECK(c.auth.signing_kid == "main");
  REQUIRE(c.auth.keys.size() == 1);
  CHECK(c.auth.keys[0].alg == "HS256");
  CHECK(c.auth.keys[0].secret_file == "jwt-main.key");
  CHECK(c.auth.keys[0].generate);
  REQUIRE(c.plugins.size() == 3);  // hello, users, posts: in file order
  CHECK(c.plugins[0].name == "hello");
  CHECK(c.plugins[1].name == "users");
  CHECK(c.plugins[2].name == "posts");
  CHECK(c.plugins[0].config == nlohmann::json{{"greeting", "Hello"}});
  CHECK(c.plugins[0].mark.line > 0);
}

TEST_CASE("values from the file are applied", "[config]") {
  Loaded r = load(
      "server: {listen: '[::1]:9000', io_threads: 2}\n"
      "limits: {body_bytes: 10, idle_timeout_ms: 5}\n"
      "websocket: {allowed_origins: ['https://a.example', '*']}\n"
      "auth: {leeway_s: 0}\n"
      "log: {level: debug, access: false}\n"
      "data_dir: ../var/gv\n"
      "response_cache: {max_bytes: 0, max_age_ms: 250}\n"
      "plugin_dirs: [/opt/p]\n");
  REQUIRE(r.ok);
  CHECK(r.config.response_cache.max_bytes == 0);
  CHECK(r.config.response_cache.max_age == std::chrono::milliseconds(250));
  CHECK(r.config.server.listen_host == "::1");
  CHECK(r.config.server.listen_port == 9000);
  CHECK(r.config.server.io_threads == 2);
  CHECK(r.config.limits.body_bytes == 10);
  CHECK(r.config.limits.idle_timeout == std::chrono::milliseconds(5));
  CHECK(r.config.websocket.allowed_origins.size() == 2);
  CHECK(r.config.auth.leeway == std::chrono::seconds(0));
  CHECK(r.config.log.level == "debug");
  CHECK_FALSE(r.config.log.access);
  CHECK(r.config.data_dir == "../var/gv");  // relative stays as written
  CHECK(r.config.plugin_dirs == std::vector<std::string>{"/opt/p"});
}

TEST_CASE("every error in a file is reported at once, with its line", "[config]") {
  Loaded r = load(
      "server:\n"
      "  listen: 127.0.0.1:8080\n"
      "  colour: blue\n"  // line 3: unknown key
      "limits:\n"
      "  body_bytes: lots\n"  // line 5: wrong type
      "log:\n"
      "  level: loud\n");  // line 7: not in the enum
  CHECK_FALSE(r.ok);
  REQUIRE(r.errors.size() == 3);
  CHECK(r.errors[0].mark.line == 3);
  CHECK(r.errors[0].path == "server.colour");
  CHECK(r.errors[0].message == "unknown field 'colour'");
  CHECK(r.errors[1].mark.line == 5);
  CHECK(r.errors[1].mark.column == 15);
  CHECK(r.errors[1].path == "limits.body_bytes");
  CHECK(r.errors[1].message == "expected integer, found string");
  CHECK(r.errors[2].mark.line == 7);
  CHECK(r.errors[2].path == "log.level");
  CHECK(r.errors[2].message == "must be one of debug, info, warn or error");
  CHECK(r.errors[0].file.find("grapevine.yaml") != std::string::npos);
  CHECK(r.errors[1].to_string().find("grapevine.yaml:5:15: limits.body_bytes: expected integer") !=
        std::string::npos);
}

TEST_CASE("unknown keys and bad values are refused", "[config]") {
  auto top = one_error("listen: 1\n");
  CHECK(top.message == "unknown field 'listen'");
  CHECK(top.mark.line == 1);
  CHECK(one_error("limits:\n  body_bytes: 0\n").message == "must be at least 1");
  CHECK(one_error("server:\n  io_threads: -1\n").message == "must be at least 0");
  CHECK(one_error("limits:\n  body_bytes: '12'\n").message == "expected integer, found string");
  CHECK(one_error("log: {access: yes}\n").message == "expected boolean, found string");
  auto plugin = one_error("plugins:\n  hello:\n    enable: true\n");
  CHECK(plugin.path == "plugins.hello.enable");
  CHECK(plugin.mark.line == 3);
  CHECK(one_error("plugins:\n  hello:\n    config: [1]\n").message ==
        "expected object, found array");
  CHECK(one_error("- a\n").message == "expected object, found array");
  CHECK(one_error("response_cache: {max_bytes: 4096}\n").message ==
        "must be 0 (no cache) or at least 65536");
}

TEST_CASE("!env takes a value from the environment", "[config]") {
  ::setenv("GV_TEST_SECRET", "0123456789abcdef0123456789abcdef", 1);
  ::unsetenv("GV_TEST_UNSET");
  Loaded r = load(
      "auth:\n"
      "  keys:\n"
      "    - kid: k1\n"
      "      alg: HS256\n"
      "      secret: !env GV_TEST_SECRET\n");
  REQUIRE(r.ok);
  REQUIRE(r.config.auth.keys.size() == 1);  // instead of the default key
  CHECK(r.config.auth.keys[0].secret == "0123456789abcdef0123456789abcdef");
  CHECK(r.config.auth.signing_kid.empty());  // keys given, no signing_kid: no signing

  auto e = one_error(
      "auth:\n"
      "  keys:\n"
      "    - kid: k1\n"
      "      alg: HS256\n"
      "      secret: !env GV_TEST_UNSET\n");
  CHECK(e.mark.line == 5);
  CHECK(e.path == "auth.keys[0].secret");
  CHECK(e.message.find("GV_TEST_UNSET") != std::string::npos);
}

TEST_CASE("auth keys are checked against their algorithm", "[config]") {
  auto both = one_error(
      "auth:\n  keys:\n"
      "    - kid: a\n      alg: HS256\n"
      "      secret: 0123456789abcdef0123456789abcdef\n      secret_file: "
      "a.key\n");
  CHECK(both.mark.line == 3);
  CHECK(both.path == "auth.keys[0]");
  CHECK(both.message.find("exactly one of secret or secret_file") != std::string::npos);
  CHECK(one_error("auth: {keys: [{kid: a, alg: HS256}]}\n").path == "auth.keys[0]");
  CHECK(one_error("auth:\n  keys:\n    - {kid: e, alg: EdDSA}\n").message ==
        "an EdDSA key needs public_key_file");
  CHECK(one_error("auth: {keys: [{kid: a, alg: RS256, secret_file: f}]}\n").message ==
        "must be one of HS256 or EdDSA");
  CHECK(one_error("auth: {keys: [{kid: a, alg: HS256, secret: short}]}\n").message ==
        "must be at least 32 characters long");
  auto missing = one_error("auth: {keys: [{alg: HS256, secret_file: f}]}\n");
  CHECK(missing.path == "auth.keys[0].kid");
  CHECK(missing.message == "missing required field 'kid'");
  auto signer = one_error(
      "auth: {signing_kid: nope, keys: [{kid: a, alg: HS256, secret_file: "
      "f}]}\n");
  CHECK(signer.path == "auth.signing_kid");
  CHECK(signer.message.find("names no key in auth.keys") == 0);
  // No keys at all: a host that neither signs nor accepts tokens.
  Loaded none = load("auth: {keys: []}\n");
  CHECK(none.ok);
  CHECK(none.config.auth.keys.empty());
  CHECK(none.config.auth.signing_kid.empty());
  CHECK(one_error("auth: {signing_kid: main, keys: []}\n").path == "auth.signing_kid");
  auto dup = one_error(
      "auth: {keys: [{kid: a, alg: HS256, secret_file: f}, {kid: a, alg: "
      "HS256, secret_file: g}]}\n");
  CHECK(dup.path == "auth.keys[1].kid");
  Loaded ed = load(
      "auth:\n  signing_kid: e\n  keys:\n"
      "    - {kid: e, alg: EdDSA, public_key_file: e.pub, private_key_file: "
      "e.pem}\n");
  CHECK(ed.ok);
}

TEST_CASE("listen is HOST:PORT and --listen wins", "[config]") {
  CHECK(one_error("server: {listen: localhost}\n").path == "server.listen");
  CHECK(one_error("server: {listen: '::1:80'}\n").message.find("brackets") != std::string::npos);
  CHECK(one_error("server: {listen: 'a:70000'}\n").message.find("0 to 65535") != std::string::npos);
  CHECK(one_error("server: {listen: ':80'}\n").mark.line == 1);

  Loaded any_port = load("server: {listen: '127.0.0.1:8080'}\n", {"0.0.0.0:0", ""});
  REQUIRE(any_port.ok);
  CHECK(any_port.config.server.listen_host == "0.0.0.0");
  CHECK(any_port.config.server.listen_port == 0);

  Loaded v6 = load("", {"[::]:8443", "/srv/gv"});
  REQUIRE(v6.ok);
  CHECK(v6.config.server.listen_host == "::");
  CHECK(v6.config.server.listen_port == 8443);
  CHECK(v6.config.data_dir == "/srv/gv");

  Loaded bad = load("", {"nope", ""});
  CHECK_FALSE(bad.ok);
  REQUIRE(bad.errors.size() == 1);
  CHECK(bad.errors[0].file == "command line");
  CHECK(bad.errors[0].path == "--listen");
}

TEST_CASE("YAML syntax errors and missing files are one diagnostic", "[config]") {
  auto e = one_error("server:\n  listen: [1, 2\nlog: {}\n");
  CHECK(e.mark.line >= 2);
  CHECK(e.message.find("invalid YAML") == 0);

  TempDir dir;
  HostConfig c;
  std::vector<Diagnostic> errors;
  CHECK_FALSE(load_host_config(dir.path() / "absent.yaml", {}, &c, &errors));
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].message == "file not found");
}

TEST_CASE("duplicate keys are errors", "[config]") {
  auto e = one_error("log:\n  level: info\n  level: debug\n");
  CHECK(e.mark.line == 3);
  CHECK(e.path == "log.level");
  CHECK(e.message == "duplicate key 'level'");
}

TEST_CASE("plain scalars get YAML types, quoted ones stay strings", "[config]") {
  Loaded r = load(
      "plugins:\n"
      "  zeta:\n"
      "    config: {a: true, b: False, c: 12, d: -3, e: 1.5, f: ~, g: null, h: "
      "'12',\n"
      "             i: \"true\", j: hello, k: 1e3, l: +7, m: !!str 5}\n"
      "  alpha:\n"
      "    enabled: false\n"
      "    optional: true\n");
  REQUIRE(r.ok);
  REQUIRE(r.config.plugins.size() == 2);
  CHECK(r.config.plugins[0].name == "zeta");  // file order, not sorted
  CHECK(r.config.plugins[0].mark.line == 2);
  CHECK(r.config.plugins[1].name == "alpha");
  CHECK_FALSE(r.config.plugins[1].enabled);
  CHECK(r.config.plugins[1].optional);
  CHECK(r.config.plugins[1].config == nlohmann::json::object());
  const auto& c = r.config.plugins[0].config;
  CHECK(c["a"] == true);
  CHECK(c["b"] == false);
  CHECK(c["c"].is_number_integer());
  CHECK(c["c"] == 12);
  CHECK(c["d"] == -3);
  CHECK(c["e"].is_number_float());
  CHECK(c["f"].is_null());
  CHECK(c["g"].is_null());
  CHECK(c["h"] == "12");
  CHECK(c["i"] == "true");
  CHECK(c["j"] == "hello");
  CHECK(c["k"] == 1000.0);
  CHECK(c["l"] == 7);
  CHECK(c["m"] == "5");
}

TEST_CASE("YamlDocument keeps marks and dotted paths", "[config]") {
  TempDir dir;
  YamlDocument doc;
  std::vector<Diagnostic> errors;
  REQUIRE(load_yaml(dir.write("d.yaml", "a:\n  b:\n    - x\n    - y: 1\n"), &doc, &errors));
  CHECK(doc.mark_of("/a/b/1/y").line == 4);
  CHECK(doc.mark_of("/a/b/1/y").column == 10);  // the value
  CHECK(doc.mark_of("/a/b/1/nope").line == 4);
  CHECK(doc.mark_of("/a").line == 1);
  CHECK(YamlDocument::dotted("/plugins/hello/config") == "plugins.hello.config");
  CHECK(YamlDocument::dotted("/auth/keys/0/alg") == "auth.keys[0].alg");
  CHECK(YamlDocument::dotted("/a~1b/c~0d") == "a/b.c~d");
  CHECK(YamlDocument::dotted("") == "");

  // Plugin sections are checked later against the plugin's own schema.
  std::string error;
  auto schema = gv::JsonSchema::compile(
      {{"type", "object"}, {"properties", {{"n", {{"type", "integer"}}}}}}, &error);
  REQUIRE(schema);
  validate_at(doc, "/a/b/1", *schema, &errors);
  CHECK(errors.empty());
  REQUIRE(load_yaml(dir.write("e.yaml", "p:\n  config:\n    n: x\n"), &doc, &errors));
  validate_at(doc, "/p/config", *schema, &errors);
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].path == "p.config.n");
  CHECK(errors[0].mark.line == 3);
  CHECK(errors[0].message == "expected integer, found string");
}
