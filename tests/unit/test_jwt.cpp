// Tests for auth/jwt: tokens are crafted by hand here (base64url through
// OpenSSL's EVP_EncodeBlock, HMAC through OpenSSL) so every negative case
// differs from a valid token in exactly one thing.
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <fstream>
#include <sstream>
#include <thread>

#include "auth/jwt.hpp"

namespace {

using gv::auth::Identity;
using gv::auth::KeySet;
using gv::auth::VerifyError;
using json = nlohmann::json;
using std::chrono::seconds;
using std::chrono::system_clock;

constexpr int64_t kNow = 1'700'000'000;
const system_clock::time_point kNowTp{seconds(kNow)};
const std::string kSecret = "test-secret-0123456789abcdef-0123456789";

// ------------------------------------------------------------ test helpers

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::string t = (std::filesystem::temp_directory_path() / "gv-jwt-XXXXXX").string();
    REQUIRE(::mkdtemp(t.data()) != nullptr);
    path = t;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

// base64url written independently of the code under test.
std::string b64url(std::string_view bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(bytes.data()),
                          static_cast<int>(bytes.size()));
  out.resize(static_cast<size_t>(n));
  while (!out.empty() && out.back() == '=') out.pop_back();
  for (char& c : out) c = c == '+' ? '-' : c == '/' ? '_' : c;
  return out;
}

std::string hmac(const std::string& secret, const std::string& data) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), mac, &len);
  return std::string(reinterpret_cast<char*>(mac), len);
}

// A token from raw header and payload text, HMAC-signed with secret.
std::string raw_token(const std::string& header, const std::string& payload,
                      const std::string& secret = kSecret) {
  std::string input = b64url(header) + "." + b64url(payload);
  return input + "." + b64url(hmac(secret, input));
}

std::string hs_token(const json& header, const json& claims, const std::string& secret = kSecret) {
  return raw_token(header.dump(), claims.dump(), secret);
}

json valid_header() { return {{"alg", "HS256"}, {"typ", "at+jwt"}, {"kid", "hs"}}; }

json valid_claims() {
  return {{"iss", "grapevine"},         {"aud", "grapevine"}, {"sub", "alice"},
          {"roles", {"user", "admin"}}, {"iat", kNow},        {"nbf", kNow},
          {"exp", kNow + 600}};
}

std::vector<std::string> split(const std::string& token) {
  std::vector<std::string> parts;
  std::stringstream ss(token);
  for (std::string p; std::getline(ss, p, '.');) parts.push_back(p);
  return parts;
}

json decode_part(const std::string& part) {
  std::string text;
  REQUIRE(gv::auth::base64url_decode(part, &text));
  return json::parse(text);
}

using PkeyPtr = std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)>;

PkeyPtr keygen(const char* type) {
  return PkeyPtr(EVP_PKEY_Q_keygen(nullptr, nullptr, type), EVP_PKEY_free);
}

PkeyPtr keygen_ec() {
  return PkeyPtr(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"), EVP_PKEY_free);
}

std::string to_pem(EVP_PKEY* key, bool is_private) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), BIO_free);
  int ok = is_private
               ? PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr)
               : PEM_write_bio_PUBKEY(bio.get(), key);
  REQUIRE(ok == 1);
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

void write_file(const std::filesystem::path& p, const std::string& text) {
  std::ofstream(p, std::ios::binary) << text;
}

std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Keys "hs" (HS256 secret) and "ed" (EdDSA, PEM files in a temp dir).
struct Env {
  TempDir dir;
  PkeyPtr ed = keygen("ED25519");
  std::string pub_pem = to_pem(ed.get(), false);
  gv::config::AuthConfig auth;

  explicit Env(std::string signing_kid = "hs") {
    write_file(dir.path / "ed.pub", pub_pem);
    write_file(dir.path / "ed.key", to_pem(ed.get(), true));
    gv::config::AuthKey hs;
    hs.kid = "hs";
    hs.alg = "HS256";
    hs.secret = kSecret;
    gv::config::AuthKey eddsa;
    eddsa.kid = "ed";
    eddsa.alg = "EdDSA";
    eddsa.public_key_file = "ed.pub";  // relative: resolved against data_dir
    eddsa.private_key_file = (dir.path / "ed.key").string();
    auth.keys = {hs, eddsa};
    auth.signing_kid = std::move(signing_kid);
  }

  std::unique_ptr<KeySet> load() {
    std::string error;
    auto keys = KeySet::load(auth, dir.path, &error);
    INFO(error);
    REQUIRE(keys);
    return keys;
  }

  std::string load_error() {
    std::string error;
    CHECK_FALSE(KeySet::load(auth, dir.path, &error));
    return error;
  }
};

VerifyError check(const KeySet& keys, const std::string& token, int64_t now = kNow) {
  Identity id;
  return keys.verify(token, &id, system_clock::time_point(seconds(now)));
}

}  // namespace

// ------------------------------------------------------------------- base64url

TEST_CASE("base64url round trips binary data", "[jwt][base64]") {
  std::string all;
  for (int i = 0; i < 256; ++i) all += static_cast<char>(i);
  for (size_t len = 0; len <= all.size(); ++len) {
    std::string in = all.substr(256 - len);
    std::string enc = gv::auth::base64url_encode(in);
    CHECK(enc == b64url(in));
    std::string out;
    REQUIRE(gv::auth::base64url_decode(enc, &out));
    CHECK(out == in);
  }
  unsigned char rnd[97];
  REQUIRE(RAND_bytes(rnd, sizeof rnd) == 1);
  std::string r(reinterpret_cast<char*>(rnd), sizeof rnd), out;
  REQUIRE(gv::auth::base64url_decode(gv::auth::base64url_encode(r), &out));
  CHECK(out == r);
}

TEST_CASE("base64url rejects the standard alphabet, padding and bad lengths", "[jwt][base64]") {
  std::string out;
  CHECK(gv::auth::base64url_decode("-_-_", &out));
  CHECK(out == "\xfb\xff\xbf");
  CHECK_FALSE(gv::auth::base64url_decode("+/+/", &out));
  CHECK_FALSE(gv::auth::base64url_decode("ab+d", &out));
  CHECK_FALSE(gv::auth::base64url_decode("ab/d", &out));
  CHECK_FALSE(gv::auth::base64url_decode("YQ==", &out));  // padded "a"
  CHECK_FALSE(gv::auth::base64url_decode("YQ=", &out));
  CHECK_FALSE(gv::auth::base64url_decode("Y=Q", &out));
  CHECK_FALSE(gv::auth::base64url_decode("YWJj=", &out));
  CHECK_FALSE(gv::auth::base64url_decode("Y", &out));  // length 1 mod 4
  CHECK_FALSE(gv::auth::base64url_decode("YWJjZ", &out));
  CHECK_FALSE(gv::auth::base64url_decode("YW Jj", &out));
  CHECK_FALSE(gv::auth::base64url_decode("YR", &out));  // nonzero spare bits
  CHECK(gv::auth::base64url_decode("YQ", &out));
  CHECK(out == "a");
  CHECK(gv::auth::base64url_decode("", &out));
  CHECK(out.empty());
}

// ------------------------------------------------------------------ round
// trips

TEST_CASE("HS256 sign then verify yields the identity", "[jwt]") {
  Env env("hs");
  auto keys = env.load();
  REQUIRE(keys->can_sign());
  std::string token;
  REQUIRE(keys->sign({{"sub", "alice"}, {"roles", {"user", "admin"}}}, &token));

  auto parts = split(token);
  REQUIRE(parts.size() == 3);
  json header = decode_part(parts[0]);
  CHECK(header == json{{"alg", "HS256"}, {"typ", "at+jwt"}, {"kid", "hs"}});
  json claims = decode_part(parts[1]);
  CHECK(claims["iss"] == "grapevine");
  CHECK(claims["aud"] == "grapevine");
  CHECK(claims["nbf"] == claims["iat"]);
  CHECK(claims["exp"].get<int64_t>() == claims["iat"].get<int64_t>() + 900);

  Identity id;
  REQUIRE(keys->verify(token, &id) == VerifyError::none);
  CHECK(id.user_id == "alice");
  CHECK(id.roles == std::vector<std::string>{"user", "admin"});
  CHECK(id.expires_at == claims["exp"].get<int64_t>());
  CHECK(id.claims() == claims);
  CHECK(id.has_role("admin"));
  CHECK_FALSE(id.has_role("root"));
  CHECK(id.roles_joined() == "user,admin");
}

TEST_CASE("sign keeps claims that are present and honours ttl", "[jwt]") {
  Env env("hs");
  auto keys = env.load();
  std::string token;
  REQUIRE(keys->sign({{"sub", "bob"}}, &token, seconds(60)));
  json claims = decode_part(split(token)[1]);
  CHECK(claims["exp"].get<int64_t>() == claims["iat"].get<int64_t>() + 60);

  REQUIRE(keys->sign(valid_claims(), &token));
  CHECK(decode_part(split(token)[1]) == valid_claims());
  CHECK(check(*keys, token) == VerifyError::none);

  CHECK_FALSE(keys->sign(json::array(), &token));
  CHECK_FALSE(keys->sign({{"sub", "\xff"}}, &token));  // invalid UTF-8
}

TEST_CASE("a host without signing_kid cannot sign", "[jwt]") {
  Env env("");
  auto keys = env.load();
  std::string token;
  CHECK_FALSE(keys->can_sign());
  CHECK_FALSE(keys->sign({{"sub", "alice"}}, &token));
}

TEST_CASE("hand-made valid HS256 token verifies", "[jwt]") {
  Env env;
  auto keys = env.load();
  Identity id;
  REQUIRE(keys->verify(hs_token(valid_header(), valid_claims()), &id, kNowTp) == VerifyError::none);
  CHECK(id.user_id == "alice");
  CHECK(id.expires_at == kNow + 600);
}

TEST_CASE("EdDSA sign then verify, also on a verify-only host", "[jwt]") {
  Env env("ed");
  auto keys = env.load();
  std::string token;
  REQUIRE(keys->sign({{"sub", "carol"}, {"roles", {"ops"}}}, &token));
  CHECK(decode_part(split(token)[0]) == json{{"alg", "EdDSA"}, {"typ", "at+jwt"}, {"kid", "ed"}});
  Identity id;
  REQUIRE(keys->verify(token, &id) == VerifyError::none);
  CHECK(id.user_id == "carol");
  CHECK(id.roles_joined() == "ops");

  // Another host with only the public key accepts it too.
  env.auth.signing_kid.clear();
  env.auth.keys[1].private_key_file.clear();
  auto verifier = env.load();
  CHECK(verifier->verify(token, &id) == VerifyError::none);

  // Tampering with the payload breaks the Ed25519 signature.
  auto parts = split(token);
  json claims = decode_part(parts[1]);
  claims["sub"] = "mallory";
  std::string forged = parts[0] + "." + b64url(claims.dump()) + "." + parts[2];
  CHECK(verifier->verify(forged, &id) == VerifyError::bad_signature);
}

TEST_CASE("hand-signed EdDSA token verifies", "[jwt]") {
  Env env("");
  auto keys = env.load();
  json header = {{"alg", "EdDSA"}, {"typ", "at+jwt"}, {"kid", "ed"}};
  std::string input = b64url(header.dump()) + "." + b64url(valid_claims().dump());
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  unsigned char sig[64];
  size_t len = sizeof sig;
  REQUIRE(EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, env.ed.get()) == 1);
  REQUIRE(EVP_DigestSign(ctx.get(), sig, &len, reinterpret_cast<const unsigned char*>(input.data()),
                         input.size()) == 1);
  std::string token = input + "." + b64url(std::string(reinterpret_cast<char*>(sig), len));
  CHECK(check(*keys, token) == VerifyError::none);
}

// ------------------------------------------------------------ header checks

TEST_CASE("algorithm is pinned by the key", "[jwt]") {
  Env env;
  auto keys = env.load();
  json h = valid_header();

  SECTION("alg none") {
    h["alg"] = "none";
    CHECK(check(*keys, hs_token(h, valid_claims())) == VerifyError::bad_algorithm);
    // The classic form, with an empty signature, is not even well formed.
    std::string unsigned_token = b64url(h.dump()) + "." + b64url(valid_claims().dump()) + ".";
    CHECK(check(*keys, unsigned_token) == VerifyError::malformed);
  }
  SECTION("alg missing") {
    h.erase("alg");
    CHECK(check(*keys, hs_token(h, valid_claims())) == VerifyError::bad_algorithm);
  }
  SECTION("alg differs in case") {
    h["alg"] = "hs256";
    CHECK(check(*keys, hs_token(h, valid_claims())) == VerifyError::bad_algorithm);
  }
  SECTION("EdDSA claimed for an HS256 key") {
    h["alg"] = "EdDSA";
    CHECK(check(*keys, hs_token(h, valid_claims())) == VerifyError::bad_algorithm);
  }
  SECTION("HS256 with the EdDSA public key as secret (algorithm confusion)") {
    h["kid"] = "ed";
    CHECK(check(*keys, hs_token(h, valid_claims(), env.pub_pem)) == VerifyError::bad_algorithm);
  }
}

TEST_CASE("key is chosen by kid only", "[jwt]") {
  Env env;
  auto keys = env.load();
  json h = valid_header();
  SECTION("no kid") { h.erase("kid"); }
  SECTION("unknown kid") { h["kid"] = "other"; }
  SECTION("kid not a string") { h["kid"] = 1; }
  CHECK(check(*keys, hs_token(h, valid_claims())) == VerifyError::unknown_key);
}

TEST_CASE("typ must be at+jwt", "[jwt]") {
  Env env;
  auto keys = env.load();
  json h = valid_header();
  SECTION("wrong typ") {
    h["typ"] = "JWT";
    CHECK(check(*keys, hs_token(h, valid_claims())) == VerifyError::bad_type);
  }
  SECTION("missing typ") {
    h.erase("typ");
    CHECK(check(*keys, hs_token(h, valid_claims())) == VerifyError::bad_type);
  }
  SECTION("full media type is accepted (RFC 9068)") {
    h["typ"] = "application/at+jwt";
    CHECK(check(*keys, hs_token(h, valid_claims())) == VerifyError::none);
  }
}

// --------------------------------------------------------------- signatures

TEST_CASE("tampering is detected", "[jwt]") {
  Env env;
  auto keys = env.load();
  std::string token = hs_token(valid_header(), valid_claims());
  auto parts = split(token);

  SECTION("payload changed after signing") {
    json claims = valid_claims();
    claims["roles"] = {"admin"};
    CHECK(check(*keys, parts[0] + "." + b64url(claims.dump()) + "." + parts[2]) ==
          VerifyError::bad_signature);
  }
  SECTION("signature byte changed") {
    parts[2][0] = parts[2][0] == 'A' ? 'B' : 'A';
    CHECK(check(*keys, parts[0] + "." + parts[1] + "." + parts[2]) == VerifyError::bad_signature);
  }
  SECTION("signature truncated") {
    CHECK(check(*keys, parts[0] + "." + parts[1] + "." + parts[2].substr(0, 40)) ==
          VerifyError::bad_signature);
  }
  SECTION("another secret") {
    CHECK(check(*keys, hs_token(valid_header(), valid_claims(), kSecret + "x")) ==
          VerifyError::bad_signature);
  }
}

// ---------------------------------------------------------------- malformed

TEST_CASE("malformed tokens are rejected", "[jwt]") {
  Env env;
  auto keys = env.load();
  std::string token = hs_token(valid_header(), valid_claims());
  auto p = split(token);
  REQUIRE(check(*keys, token) == VerifyError::none);

  CHECK(check(*keys, "") == VerifyError::malformed);
  CHECK(check(*keys, p[0] + "." + p[1]) == VerifyError::malformed);
  CHECK(check(*keys, token + "." + p[2]) == VerifyError::malformed);
  CHECK(check(*keys, token + ".") == VerifyError::malformed);
  CHECK(check(*keys, "." + p[1] + "." + p[2]) == VerifyError::malformed);
  CHECK(check(*keys, p[0] + ".." + p[2]) == VerifyError::malformed);
  CHECK(check(*keys, p[0] + "=." + p[1] + "." + p[2]) == VerifyError::malformed);
  CHECK(check(*keys, p[0] + "." + p[1] + "." + p[2] + "=") == VerifyError::malformed);
  std::string std_alphabet = p[0];
  std_alphabet[1] = '+';
  CHECK(check(*keys, std_alphabet + "." + p[1] + "." + p[2]) == VerifyError::malformed);

  json claims = valid_claims();
  CHECK(check(*keys, raw_token("not json", claims.dump())) == VerifyError::malformed);
  CHECK(check(*keys, raw_token("[1,2]", claims.dump())) == VerifyError::malformed);
  CHECK(check(*keys, raw_token("\"at+jwt\"", claims.dump())) == VerifyError::malformed);
  CHECK(check(*keys, raw_token(valid_header().dump(), "{\"sub\":")) == VerifyError::malformed);
  CHECK(check(*keys, raw_token(valid_header().dump(), "[]")) == VerifyError::malformed);

  claims["roles"] = "admin";  // roles must be an array of strings
  CHECK(check(*keys, hs_token(valid_header(), claims)) == VerifyError::malformed);
  claims["roles"] = {"user", 7};
  CHECK(check(*keys, hs_token(valid_header(), claims)) == VerifyError::malformed);
}

TEST_CASE("tokens over 8 KiB are rejected", "[jwt]") {
  Env env;
  auto keys = env.load();
  json claims = valid_claims();
  claims["pad"] = std::string(5000, 'x');
  std::string token = hs_token(valid_header(), claims);
  REQUIRE(token.size() <= 8192);
  CHECK(check(*keys, token) == VerifyError::none);
  claims["pad"] = std::string(6500, 'x');
  token = hs_token(valid_header(), claims);
  REQUIRE(token.size() > 8192);
  CHECK(check(*keys, token) == VerifyError::malformed);
}

// ------------------------------------------------------------------- claims

TEST_CASE("time claims with leeway", "[jwt]") {
  Env env;  // leeway 30 s
  auto keys = env.load();
  json c = valid_claims();

  SECTION("expired") {
    c["exp"] = kNow - 31;
    CHECK(check(*keys, hs_token(valid_header(), c)) == VerifyError::expired);
  }
  SECTION("expired but within leeway") {
    c["exp"] = kNow - 30;
    CHECK(check(*keys, hs_token(valid_header(), c)) == VerifyError::none);
    CHECK(check(*keys, hs_token(valid_header(), c), kNow + 1) == VerifyError::expired);
  }
  SECTION("exp missing or not a number") {
    c.erase("exp");
    CHECK(check(*keys, hs_token(valid_header(), c)) == VerifyError::expired);
    c["exp"] = std::to_string(kNow + 600);
    CHECK(check(*keys, hs_token(valid_header(), c)) == VerifyError::expired);
  }
  SECTION("fractional exp") {
    c["exp"] = static_cast<double>(kNow) + 0.5;
    CHECK(check(*keys, hs_token(valid_header(), c)) == VerifyError::none);
  }
  SECTION("nbf in the future") {
    c["nbf"] = kNow + 31;
    CHECK(check(*keys, hs_token(valid_header(), c)) == VerifyError::not_yet_valid);
  }
  SECTION("nbf in the future but within leeway") {
    c["nbf"] = kNow + 30;
    CHECK(check(*keys, hs_token(valid_header(), c)) == VerifyError::none);
    CHECK(check(*keys, hs_token(valid_header(), c), kNow - 1) == VerifyError::not_yet_valid);
  }
  SECTION("iat in the future") {
    c["iat"] = kNow + 31;
    CHECK(check(*keys, hs_token(valid_header(), c)) == VerifyError::not_yet_valid);
    c["iat"] = kNow + 30;
    CHECK(check(*keys, hs_token(valid_header(), c)) == VerifyError::none);
  }
  SECTION("nbf not a number") {
    c["nbf"] = "soon";
    CHECK(check(*keys, hs_token(valid_header(), c)) == VerifyError::malformed);
  }
  SECTION("zero leeway") {
    env.auth.leeway = seconds(0);
    auto strict = env.load();
    c["exp"] = kNow - 1;
    CHECK(check(*strict, hs_token(valid_header(), c)) == VerifyError::expired);
    c["exp"] = kNow;
    c["nbf"] = kNow + 1;
    CHECK(check(*strict, hs_token(valid_header(), c)) == VerifyError::not_yet_valid);
  }
}

TEST_CASE("verified tokens are remembered, within their claims' window and the bound", "[jwt]") {
  Env env;  // leeway 30 s
  env.auth.verified_tokens = 3;
  auto keys = env.load();
  json c = valid_claims();  // nbf and iat kNow, exp kNow + 600
  const std::string token = hs_token(valid_header(), c);
  Identity first, again;
  REQUIRE(keys->verify(token, &first, system_clock::time_point(seconds(kNow))) ==
          VerifyError::none);
  CHECK(keys->verified_tokens() == 1);
  CHECK(keys->verified_token_hits() == 0);
  REQUIRE(keys->verify(token, &again, system_clock::time_point(seconds(kNow + 5))) ==
          VerifyError::none);
  CHECK(keys->verified_token_hits() == 1);
  CHECK(again.user_id == "alice");
  CHECK(again.roles == first.roles);
  CHECK(again.claims() == first.claims());
  CHECK(again.expires_at == kNow + 600);

  // Outside the window of its claims (leeway included) the answer is what
  // verifying gives, remembered or not.
  CHECK(check(*keys, token, kNow + 630) == VerifyError::none);
  CHECK(check(*keys, token, kNow + 631) == VerifyError::expired);
  CHECK(check(*keys, token, kNow - 30) == VerifyError::none);
  CHECK(check(*keys, token, kNow - 31) == VerifyError::not_yet_valid);

  // A token one character away from a remembered one is verified, and
  // refused; refused tokens are not remembered.
  std::string tampered = token;
  char& mid = tampered[tampered.size() - 10];  // inside the signature
  mid = mid == 'A' ? 'B' : 'A';
  CHECK(check(*keys, tampered) == VerifyError::bad_signature);
  CHECK(keys->verified_tokens() == 1);

  // More distinct tokens than the bound never make it hold more.
  for (int i = 0; i < 10; ++i) {
    c["sub"] = "user" + std::to_string(i);
    CHECK(check(*keys, hs_token(valid_header(), c)) == VerifyError::none);
    CHECK(keys->verified_tokens() <= 3);
  }

  SECTION("0 remembers none") {
    env.auth.verified_tokens = 0;
    auto every_time = env.load();
    CHECK(check(*every_time, token) == VerifyError::none);
    CHECK(check(*every_time, token) == VerifyError::none);
    CHECK(every_time->verified_tokens() == 0);
    CHECK(every_time->verified_token_hits() == 0);
  }
}

TEST_CASE("issuer, audience and subject", "[jwt]") {
  Env env;
  auto keys = env.load();
  json c = valid_claims();
  auto verdict = [&] { return check(*keys, hs_token(valid_header(), c)); };

  SECTION("wrong iss") {
    c["iss"] = "someone-else";
    CHECK(verdict() == VerifyError::bad_issuer);
  }
  SECTION("missing iss") {
    c.erase("iss");
    CHECK(verdict() == VerifyError::bad_issuer);
  }
  SECTION("wrong aud") {
    c["aud"] = "other";
    CHECK(verdict() == VerifyError::bad_audience);
  }
  SECTION("missing aud") {
    c.erase("aud");
    CHECK(verdict() == VerifyError::bad_audience);
  }
  SECTION("aud array with ours") {
    c["aud"] = {"other", "grapevine"};
    CHECK(verdict() == VerifyError::none);
  }
  SECTION("aud array without ours") {
    c["aud"] = {"other", "more"};
    CHECK(verdict() == VerifyError::bad_audience);
  }
  SECTION("missing sub") {
    c.erase("sub");
    CHECK(verdict() == VerifyError::bad_subject);
  }
  SECTION("empty sub") {
    c["sub"] = "";
    CHECK(verdict() == VerifyError::bad_subject);
  }
  SECTION("sub not a string") {
    c["sub"] = 42;
    CHECK(verdict() == VerifyError::bad_subject);
  }
  SECTION("no roles means none") {
    c.erase("roles");
    Identity id;
    REQUIRE(keys->verify(hs_token(valid_header(), c), &id, kNowTp) == VerifyError::none);
    CHECK(id.roles.empty());
    CHECK(id.roles_joined().empty());
  }
}

TEST_CASE("every error has a description", "[jwt]") {
  for (int e = 0; e <= static_cast<int>(VerifyError::bad_subject); ++e)
    CHECK(std::string(gv::auth::describe(static_cast<VerifyError>(e))).size() > 0);
  CHECK(std::string(gv::auth::describe(VerifyError::expired)) == "token expired");
}

TEST_CASE("verify is safe from many threads", "[jwt]") {
  Env env("ed");
  auto keys = env.load();
  std::string ed_token;
  REQUIRE(keys->sign({{"sub", "t"}}, &ed_token));
  std::string hs = hs_token(valid_header(), valid_claims());
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 200; ++i) {
        if (keys->verify(ed_token, nullptr) != VerifyError::none) ++failures;
        if (check(*keys, hs) != VerifyError::none) ++failures;
      }
    });
  for (auto& t : threads) t.join();
  CHECK(failures == 0);
}

// ------------------------------------------------------------- key loading

TEST_CASE("secret_file is generated once and then reused", "[jwt][keys]") {
  TempDir dir;
  gv::config::AuthConfig auth;
  gv::config::AuthKey key;
  key.kid = "gen";
  key.alg = "HS256";
  key.secret_file = "keys/nested/hs.secret";
  key.generate = true;
  auth.keys = {key};
  auth.signing_kid = "gen";
  std::filesystem::path file = dir.path / "keys/nested/hs.secret";

  std::string error;
  auto first = KeySet::load(auth, dir.path, &error);
  INFO(error);
  REQUIRE(first);
  struct stat st {};
  REQUIRE(::stat(file.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  std::string content = read_file(file);
  CHECK(content.size() == 65);  // 32 bytes as hex, then a newline
  CHECK(content.back() == '\n');
  CHECK(content.find_first_not_of("0123456789abcdef") == 64);
  // Only the secret: the temp file was renamed, not left behind.
  CHECK(std::distance(std::filesystem::directory_iterator(file.parent_path()),
                      std::filesystem::directory_iterator()) == 1);

  std::string token;
  REQUIRE(first->sign({{"sub", "alice"}}, &token));
  auto second = KeySet::load(auth, dir.path, &error);
  REQUIRE(second);
  CHECK(read_file(file) == content);
  CHECK(second->verify(token, nullptr) == VerifyError::none);
  // The secret is the file's text without the newline.
  json h = {{"alg", "HS256"}, {"typ", "at+jwt"}, {"kid", "gen"}};
  CHECK(check(*second, hs_token(h, valid_claims(), content.substr(0, 64))) == VerifyError::none);
}

TEST_CASE("key loading errors name the kid", "[jwt][keys]") {
  Env env;
  auto& hs = env.auth.keys[0];
  auto& ed = env.auth.keys[1];

  SECTION("short secret") {
    hs.secret = std::string(31, 's');
    std::string e = env.load_error();
    CHECK(e.find("'hs'") != std::string::npos);
    CHECK(e.find("31 bytes") != std::string::npos);
    hs.secret = std::string(32, 's');
    env.load();
  }
  SECTION("short secret_file") {
    hs.secret.clear();
    hs.secret_file = "short.secret";
    write_file(env.dir.path / "short.secret", std::string(31, 's') + "\n");
    CHECK(env.load_error().find("'hs'") != std::string::npos);
  }
  SECTION("missing secret_file without generate") {
    hs.secret.clear();
    hs.secret_file = "absent.secret";
    CHECK(env.load_error() == "auth key 'hs': secret_file " +
                                  (env.dir.path / "absent.secret").string() +
                                  ": No such file or directory");
  }
  SECTION("no secret at all") {
    hs.secret.clear();
    CHECK(env.load_error().find("'hs'") != std::string::npos);
  }
  SECTION("unsupported alg") {
    hs.alg = "RS256";
    CHECK(env.load_error().find("'hs'") != std::string::npos);
  }
  SECTION("duplicate kid") {
    ed.kid = "hs";
    CHECK(env.load_error().find("'hs'") != std::string::npos);
  }
  SECTION("missing public key file") {
    ed.public_key_file = "nope.pub";
    std::string e = env.load_error();
    CHECK(e.find("'ed'") != std::string::npos);
    CHECK(e.find("No such file or directory") != std::string::npos);
  }
  SECTION("public key file is not PEM") {
    write_file(env.dir.path / "ed.pub", "garbage");
    CHECK(env.load_error().find("'ed'") != std::string::npos);
  }
  SECTION("public key is not Ed25519") {
    write_file(env.dir.path / "ed.pub", to_pem(keygen_ec().get(), false));
    CHECK(env.load_error().find("not Ed25519") != std::string::npos);
  }
  SECTION("signing key without private key") {
    env.auth.signing_kid = "ed";
    ed.private_key_file.clear();
    CHECK(env.load_error().find("'ed'") != std::string::npos);
  }
  SECTION("private key does not match") {
    env.auth.signing_kid = "ed";
    write_file(env.dir.path / "ed.key", to_pem(keygen("ED25519").get(), true));
    CHECK(env.load_error().find("does not match") != std::string::npos);
  }
  SECTION("signing_kid names no key") {
    env.auth.signing_kid = "ghost";
    CHECK(env.load_error().find("'ghost'") != std::string::npos);
  }
}
