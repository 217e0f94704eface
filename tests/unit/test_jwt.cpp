// Token verification: every claim and header rule, for HS256 and EdDSA.
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <random>

#include "auth/jwt.hpp"

using gv::auth::Identity;
using gv::auth::KeySet;
using gv::auth::VerifyError;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

const std::string kSecret = "0123456789abcdef0123456789abcdef-unit";

struct Scratch {
  Scratch() {
    path = fs::temp_directory_path() / ("gv-jwt-" + std::to_string(std::random_device{}()));
    fs::create_directories(path);
  }
  ~Scratch() { fs::remove_all(path); }
  fs::path path;
};

gv::config::AuthConfig hs_config() {
  gv::config::AuthConfig c;
  gv::config::AuthKey k;
  k.kid = "main";
  k.alg = "HS256";
  k.secret = kSecret;
  c.keys.push_back(k);
  c.signing_kid = "main";
  return c;
}

int64_t now_s() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string hs256(const std::string& secret, const std::string& input) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(input.data()), input.size(), mac, &len);
  return std::string(reinterpret_cast<char*>(mac), len);
}

// A token that differs from a valid one only in what the test changes.
std::string forge(json header_changes, json claim_changes, const std::string& secret = kSecret) {
  json h = {{"alg", "HS256"}, {"typ", "at+jwt"}, {"kid", "main"}};
  json c = {{"sub", "u1"}, {"iss", "grapevine"}, {"aud", "grapevine"},
            {"iat", now_s()}, {"exp", now_s() + 600}, {"roles", {"user"}}};
  for (auto& [k, v] : header_changes.items()) v.is_null() ? (void)h.erase(k) : (void)(h[k] = v);
  for (auto& [k, v] : claim_changes.items()) v.is_null() ? (void)c.erase(k) : (void)(c[k] = v);
  std::string input = gv::auth::base64url_encode(h.dump()) + "." +
                      gv::auth::base64url_encode(c.dump());
  return input + "." + gv::auth::base64url_encode(hs256(secret, input));
}

void write_ed25519(const fs::path& dir) {
  EVP_PKEY* key = EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519");
  REQUIRE(key);
  FILE* priv = std::fopen((dir / "ed.key").c_str(), "w");
  PEM_write_PrivateKey(priv, key, nullptr, nullptr, 0, nullptr, nullptr);
  std::fclose(priv);
  FILE* pub = std::fopen((dir / "ed.pub").c_str(), "w");
  PEM_write_PUBKEY(pub, key);
  std::fclose(pub);
  EVP_PKEY_free(key);
}

}  // namespace

TEST_CASE("HS256 tokens round trip with the caller's identity", "[jwt]") {
  Scratch dir;
  std::string error;
  auto keys = KeySet::load(hs_config(), dir.path, &error);
  REQUIRE(keys);
  std::string token;
  REQUIRE(keys->sign({{"sub", "u42"}, {"roles", {"user", "admin"}}}, &token));
  Identity id;
  REQUIRE(keys->verify(token, &id) == VerifyError::none);
  CHECK(id.user_id == "u42");
  CHECK(id.has_role("admin"));
  CHECK(id.roles_joined() == "user,admin");
  CHECK(id.expires_at - now_s() > 800);  // the configured 900 s ttl
  CHECK(keys->verify(forge({}, {}), &id) == VerifyError::none);
}

TEST_CASE("each rule refuses a token that breaks only it", "[jwt]") {
  Scratch dir;
  std::string error;
  auto keys = KeySet::load(hs_config(), dir.path, &error);
  REQUIRE(keys);
  Identity id;
  std::string good = forge({}, {});
  // Someone else's claims under good's signature.
  std::string other = forge({}, {{"sub", "root"}});
  std::string tampered = other.substr(0, other.rfind('.')) + good.substr(good.rfind('.'));
  struct Case {
    const char* name;
    std::string token;
    VerifyError expected;
  };
  std::vector<Case> cases = {
      {"alg none", forge({{"alg", "none"}}, {}), VerifyError::bad_algorithm},
      {"alg RS256", forge({{"alg", "RS256"}}, {}), VerifyError::bad_algorithm},
      {"no alg", forge({{"alg", nullptr}}, {}), VerifyError::bad_algorithm},
      {"no kid", forge({{"kid", nullptr}}, {}), VerifyError::unknown_key},
      {"unknown kid", forge({{"kid", "old"}}, {}), VerifyError::unknown_key},
      {"wrong secret", forge({}, {}, std::string(40, 'x')), VerifyError::bad_signature},
      {"tampered payload", tampered, VerifyError::bad_signature},
      {"no typ", forge({{"typ", nullptr}}, {}), VerifyError::bad_type},
      {"typ JWT", forge({{"typ", "JWT"}}, {}), VerifyError::bad_type},
      {"expired", forge({}, {{"exp", now_s() - 120}}), VerifyError::expired},
      {"no exp", forge({}, {{"exp", nullptr}}), VerifyError::expired},
      {"exp as text", forge({}, {{"exp", "later"}}), VerifyError::expired},
      {"nbf ahead", forge({}, {{"nbf", now_s() + 120}}), VerifyError::not_yet_valid},
      {"iat ahead", forge({}, {{"iat", now_s() + 120}}), VerifyError::not_yet_valid},
      {"wrong iss", forge({}, {{"iss", "evil"}}), VerifyError::bad_issuer},
      {"wrong aud", forge({}, {{"aud", "other"}}), VerifyError::bad_audience},
      {"aud list without us", forge({}, {{"aud", {"a", "b"}}}), VerifyError::bad_audience},
      {"no sub", forge({}, {{"sub", nullptr}}), VerifyError::bad_subject},
      {"empty sub", forge({}, {{"sub", ""}}), VerifyError::bad_subject},
      {"two parts", good.substr(0, good.rfind('.')), VerifyError::malformed},
      {"four parts", good + ".x", VerifyError::malformed},
      {"bad base64", "!!!." + good.substr(good.find('.') + 1), VerifyError::malformed},
      {"empty", "", VerifyError::malformed},
      {"oversize", std::string(9000, 'a') + ".b.c", VerifyError::malformed},
  };
  for (const auto& c : cases) {
    INFO(c.name);
    CHECK(keys->verify(c.token, &id) == c.expected);
  }
  CHECK(keys->verify(forge({}, {{"aud", {"x", "grapevine"}}}), &id) == VerifyError::none);
}

TEST_CASE("leeway tolerates small clock skew both ways", "[jwt]") {
  Scratch dir;
  std::string error;
  auto config = hs_config();
  config.leeway = std::chrono::seconds(30);
  auto keys = KeySet::load(config, dir.path, &error);
  REQUIRE(keys);
  Identity id;
  CHECK(keys->verify(forge({}, {{"exp", now_s() - 10}}), &id) == VerifyError::none);
  CHECK(keys->verify(forge({}, {{"nbf", now_s() + 10}}), &id) == VerifyError::none);
  CHECK(keys->verify(forge({}, {{"exp", now_s() - 60}}), &id) == VerifyError::expired);
}

TEST_CASE("EdDSA tokens verify, and the public key is no HMAC secret", "[jwt]") {
  Scratch dir;
  write_ed25519(dir.path);
  gv::config::AuthConfig config;
  gv::config::AuthKey k;
  k.kid = "ed";
  k.alg = "EdDSA";
  k.public_key_file = "ed.pub";
  k.private_key_file = "ed.key";
  config.keys.push_back(k);
  config.signing_kid = "ed";
  std::string error;
  auto keys = KeySet::load(config, dir.path, &error);
  REQUIRE(keys);
  std::string token;
  REQUIRE(keys->sign({{"sub", "ed-user"}}, &token));
  Identity id;
  REQUIRE(keys->verify(token, &id) == VerifyError::none);
  CHECK(id.user_id == "ed-user");
  std::string tampered = token;
  tampered[tampered.size() - 3] = tampered[tampered.size() - 3] == 'A' ? 'B' : 'A';
  CHECK(keys->verify(tampered, &id) == VerifyError::bad_signature);

  // Algorithm confusion: an HS256 token keyed with the public key's PEM.
  std::ifstream in(dir.path / "ed.pub");
  std::string pem((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK(keys->verify(forge({{"kid", "ed"}}, {}, pem), &id) == VerifyError::bad_algorithm);

  // A verifying host needs only the public key, and cannot sign.
  config.keys[0].private_key_file.clear();
  config.signing_kid.clear();
  auto verify_only = KeySet::load(config, dir.path, &error);
  REQUIRE(verify_only);
  CHECK_FALSE(verify_only->can_sign());
  CHECK(verify_only->verify(token, &id) == VerifyError::none);
}

TEST_CASE("key loading: generated secrets, short secrets, missing files", "[jwt]") {
  Scratch dir;
  gv::config::AuthConfig config = hs_config();
  config.keys[0].secret.clear();
  config.keys[0].secret_file = "keys/main.key";
  config.keys[0].generate = true;
  std::string error;
  auto first = KeySet::load(config, dir.path, &error);
  REQUIRE(first);
  struct stat st{};
  REQUIRE(stat((dir.path / "keys/main.key").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  std::string token;
  REQUIRE(first->sign({{"sub", "s"}}, &token));
  auto second = KeySet::load(config, dir.path, &error);  // reuses the file
  Identity id;
  CHECK(second->verify(token, &id) == VerifyError::none);

  config.keys[0].generate = false;
  config.keys[0].secret_file = "absent.key";
  CHECK_FALSE(KeySet::load(config, dir.path, &error));
  CHECK(error.find("auth key 'main'") != std::string::npos);
  CHECK(error.find("absent.key") != std::string::npos);

  config.keys[0].secret_file.clear();
  config.keys[0].secret = "short";
  CHECK_FALSE(KeySet::load(config, dir.path, &error));
  CHECK(error.find("32 bytes") != std::string::npos);
}

TEST_CASE("base64url round trips binary and refuses other alphabets", "[jwt]") {
  std::string all;
  for (int i = 0; i < 256; ++i) all += static_cast<char>(i);
  for (size_t n = 0; n < 10; ++n) {
    std::string part = all.substr(n * 7, n);
    std::string decoded;
    REQUIRE(gv::auth::base64url_decode(gv::auth::base64url_encode(part), &decoded));
    CHECK(decoded == part);
  }
  std::string out;
  CHECK(gv::auth::base64url_encode("\xfb\xff") == "-_8");
  CHECK_FALSE(gv::auth::base64url_decode("+/8", &out));
  CHECK_FALSE(gv::auth::base64url_decode("ab=", &out));
  CHECK_FALSE(gv::auth::base64url_decode("a", &out));
}
