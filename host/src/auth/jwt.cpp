// JWT over OpenSSL 3. No Debian JWT library does EdDSA (libjwt 1.10 and
// libcpp-jwt lack it), so the few steps are here, each kept small.
#include "auth/jwt.hpp"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

namespace gv::auth {
namespace {

constexpr size_t kMaxTokenBytes = 8192;
constexpr size_t kMinSecretBytes = 32;  // RFC 7518: HS256 keys of 256 bits
constexpr const char* kType = "at+jwt"; // RFC 9068 access tokens

struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct MdCtxFree {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};
struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;

enum class Alg { hs256, eddsa };

struct Key {
  std::string kid;
  Alg alg = Alg::hs256;
  std::string secret;  // HS256
  Pkey public_key;     // EdDSA
  Pkey private_key;    // EdDSA, signing hosts only
};

int64_t seconds(std::chrono::system_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count();
}

std::string hmac_sha256(const std::string& secret, std::string_view data) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (!HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
            reinterpret_cast<const unsigned char*>(data.data()), data.size(), mac, &len))
    return {};
  return std::string(reinterpret_cast<char*>(mac), len);
}

bool ed25519_verify(EVP_PKEY* key, std::string_view data, const std::string& sig) {
  std::unique_ptr<EVP_MD_CTX, MdCtxFree> ctx(EVP_MD_CTX_new());
  return ctx && EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, key) == 1 &&
         EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(sig.data()),
                          sig.size(), reinterpret_cast<const unsigned char*>(data.data()),
                          data.size()) == 1;
}

std::string ed25519_sign(EVP_PKEY* key, std::string_view data) {
  std::unique_ptr<EVP_MD_CTX, MdCtxFree> ctx(EVP_MD_CTX_new());
  size_t len = 0;
  if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, key) != 1 ||
      EVP_DigestSign(ctx.get(), nullptr, &len,
                     reinterpret_cast<const unsigned char*>(data.data()), data.size()) != 1)
    return {};
  std::string sig(len, '\0');
  if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len,
                     reinterpret_cast<const unsigned char*>(data.data()), data.size()) != 1)
    return {};
  sig.resize(len);
  return sig;
}

bool read_file(const std::filesystem::path& path, std::string* out, std::string* error) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    *error = path.string() + ": " + std::strerror(errno);
    return false;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  *out = ss.str();
  return true;
}

// Writes a new random secret to path, mode 0600, atomically (temp + rename)
// so two hosts starting together never read half a key.
bool generate_secret(const std::filesystem::path& path, std::string* error) {
  unsigned char raw[32];
  if (RAND_bytes(raw, sizeof raw) != 1) {
    *error = "no randomness available";
    return false;
  }
  static const char* hex = "0123456789abcdef";
  std::string text;
  for (unsigned char c : raw) {
    text += hex[c >> 4];
    text += hex[c & 15];
  }
  std::error_code ec;
  std::filesystem::create_directories(path.parent_path(), ec);
  std::string tmp = path.string() + ".tmp" + std::to_string(getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  bool ok = fd >= 0 && ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
            ::fsync(fd) == 0;
  if (fd >= 0) ::close(fd);
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    *error = path.string() + ": " + std::strerror(errno);
    ::unlink(tmp.c_str());
    return false;
  }
  return true;
}

Pkey read_pem(const std::filesystem::path& path, bool private_key, std::string* error) {
  std::string pem;
  if (!read_file(path, &pem, error)) return nullptr;
  std::unique_ptr<BIO, BioFree> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  EVP_PKEY* key = private_key ? PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr)
                              : PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr);
  if (!key) {
    *error = path.string() + ": not a PEM " + (private_key ? "private" : "public") + " key";
    return nullptr;
  }
  Pkey owned(key);
  if (EVP_PKEY_get_id(key) != EVP_PKEY_ED25519) {
    *error = path.string() + ": not an Ed25519 key";
    return nullptr;
  }
  return owned;
}

bool load_key(const config::AuthKey& cfg, const std::filesystem::path& data_dir, Key* key,
              std::string* error) {
  auto resolve = [&](const std::string& p) {
    std::filesystem::path path(p);
    return path.is_absolute() ? path : data_dir / path;
  };
  key->kid = cfg.kid;
  if (cfg.alg == "HS256") {
    key->alg = Alg::hs256;
    if (!cfg.secret.empty()) {
      key->secret = cfg.secret;
    } else {
      auto path = resolve(cfg.secret_file);
      std::error_code ec;
      if (!std::filesystem::exists(path, ec) && cfg.generate && !generate_secret(path, error))
        return false;
      if (!read_file(path, &key->secret, error)) return false;
      while (!key->secret.empty() &&
             (key->secret.back() == '\n' || key->secret.back() == '\r'))
        key->secret.pop_back();
    }
    if (key->secret.size() < kMinSecretBytes) {
      *error = "secret is shorter than 32 bytes";
      return false;
    }
    return true;
  }
  if (cfg.alg == "EdDSA") {
    key->alg = Alg::eddsa;
    key->public_key = read_pem(resolve(cfg.public_key_file), false, error);
    if (!key->public_key) return false;
    if (!cfg.private_key_file.empty()) {
      key->private_key = read_pem(resolve(cfg.private_key_file), true, error);
      if (!key->private_key) return false;
    }
    return true;
  }
  *error = "unknown algorithm '" + cfg.alg + "'";
  return false;
}

// Splits a compact JWS into its three parts and decodes header and payload.
bool split_token(std::string_view token, std::string_view* signing_input,
                 nlohmann::json* header, nlohmann::json* payload, std::string* signature) {
  if (token.empty() || token.size() > kMaxTokenBytes) return false;
  size_t a = token.find('.');
  if (a == std::string_view::npos) return false;
  size_t b = token.find('.', a + 1);
  if (b == std::string_view::npos || token.find('.', b + 1) != std::string_view::npos)
    return false;
  if (a == 0 || b == a + 1 || b + 1 == token.size()) return false;
  std::string h, p;
  if (!base64url_decode(token.substr(0, a), &h) ||
      !base64url_decode(token.substr(a + 1, b - a - 1), &p) ||
      !base64url_decode(token.substr(b + 1), signature))
    return false;
  *header = nlohmann::json::parse(h, nullptr, false);
  *payload = nlohmann::json::parse(p, nullptr, false);
  *signing_input = token.substr(0, b);
  return header->is_object() && payload->is_object();
}

bool audience_matches(const nlohmann::json& aud, const std::string& expected) {
  if (aud.is_string()) return aud == expected;
  if (aud.is_array())
    for (const auto& a : aud)
      if (a.is_string() && a == expected) return true;
  return false;
}

}  // namespace

struct KeySet::Impl {
  config::AuthConfig config;
  std::map<std::string, Key, std::less<>> keys;
  const Key* signing = nullptr;

  VerifyError check_claims(const nlohmann::json& c, int64_t now) const {
    int64_t leeway = config.leeway.count();
    auto number = [&](const char* name) { return c.contains(name) && c[name].is_number(); };
    if (!number("exp") || now > c["exp"].get<int64_t>() + leeway) return VerifyError::expired;
    if (c.contains("nbf") && (!number("nbf") || c["nbf"].get<int64_t>() > now + leeway))
      return VerifyError::not_yet_valid;
    if (c.contains("iat") && (!number("iat") || c["iat"].get<int64_t>() > now + leeway))
      return VerifyError::not_yet_valid;
    if (!c.contains("iss") || c["iss"] != config.issuer) return VerifyError::bad_issuer;
    if (!c.contains("aud") || !audience_matches(c["aud"], config.audience))
      return VerifyError::bad_audience;
    if (!c.contains("sub") || !c["sub"].is_string() || c["sub"].get<std::string>().empty())
      return VerifyError::bad_subject;
    if (c.contains("roles") && !c["roles"].is_array()) return VerifyError::malformed;
    return VerifyError::none;
  }
};

bool Identity::has_role(std::string_view role) const {
  for (const auto& r : roles)
    if (r == role) return true;
  return false;
}

std::string Identity::roles_joined() const {
  std::string out;
  for (const auto& r : roles) out += (out.empty() ? "" : ",") + r;
  return out;
}

const char* describe(VerifyError e) {
  switch (e) {
    case VerifyError::none: return "valid";
    case VerifyError::malformed: return "token is malformed";
    case VerifyError::unknown_key: return "token names no known key";
    case VerifyError::bad_algorithm: return "token algorithm is not the key's";
    case VerifyError::bad_signature: return "token signature is invalid";
    case VerifyError::bad_type: return "token is not an access token";
    case VerifyError::expired: return "token expired";
    case VerifyError::not_yet_valid: return "token is not valid yet";
    case VerifyError::bad_issuer: return "token issuer is not accepted";
    case VerifyError::bad_audience: return "token audience is not this service";
    case VerifyError::bad_subject: return "token has no subject";
  }
  return "token is invalid";
}

KeySet::KeySet(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
KeySet::~KeySet() = default;

std::unique_ptr<KeySet> KeySet::load(const config::AuthConfig& auth,
                                     const std::filesystem::path& data_dir,
                                     std::string* error) {
  auto impl = std::make_unique<Impl>();
  impl->config = auth;
  for (const auto& cfg : auth.keys) {
    Key key;
    std::string problem;
    if (!load_key(cfg, data_dir, &key, &problem)) {
      *error = "auth key '" + cfg.kid + "': " + problem;
      return nullptr;
    }
    impl->keys[cfg.kid] = std::move(key);
  }
  if (!auth.signing_kid.empty()) {
    auto it = impl->keys.find(auth.signing_kid);
    if (it == impl->keys.end()) {
      *error = "auth.signing_kid '" + auth.signing_kid + "' names no key";
      return nullptr;
    }
    if (it->second.alg == Alg::eddsa && !it->second.private_key) {
      *error = "auth key '" + auth.signing_kid + "': signing needs private_key_file";
      return nullptr;
    }
    impl->signing = &it->second;
  }
  return std::unique_ptr<KeySet>(new KeySet(std::move(impl)));
}

bool KeySet::can_sign() const { return impl_->signing != nullptr; }

VerifyError KeySet::verify(std::string_view token, Identity* out,
                           std::chrono::system_clock::time_point now) const {
  std::string_view signing_input;
  nlohmann::json header, claims;
  std::string signature;
  if (!split_token(token, &signing_input, &header, &claims, &signature))
    return VerifyError::malformed;
  if (!header.contains("kid") || !header["kid"].is_string()) return VerifyError::unknown_key;
  auto it = impl_->keys.find(header["kid"].get<std::string>());
  if (it == impl_->keys.end()) return VerifyError::unknown_key;
  const Key& key = it->second;
  // The key decides the algorithm; the token's "alg" must merely agree.
  const char* pinned = key.alg == Alg::hs256 ? "HS256" : "EdDSA";
  if (!header.contains("alg") || header["alg"] != pinned) return VerifyError::bad_algorithm;
  bool valid = false;
  if (key.alg == Alg::hs256) {
    std::string mac = hmac_sha256(key.secret, signing_input);
    valid = !mac.empty() && mac.size() == signature.size() &&
            CRYPTO_memcmp(mac.data(), signature.data(), mac.size()) == 0;
  } else {
    valid = ed25519_verify(key.public_key.get(), signing_input, signature);
  }
  if (!valid) return VerifyError::bad_signature;
  if (!header.contains("typ") || !header["typ"].is_string() ||
      strcasecmp(header["typ"].get<std::string>().c_str(), kType) != 0)
    return VerifyError::bad_type;
  VerifyError e = impl_->check_claims(claims, seconds(now));
  if (e != VerifyError::none) return e;
  out->user_id = claims["sub"].get<std::string>();
  out->roles.clear();
  if (claims.contains("roles"))
    for (const auto& r : claims["roles"])
      if (r.is_string()) out->roles.push_back(r.get<std::string>());
  out->expires_at = claims["exp"].get<int64_t>();
  out->claims = std::move(claims);
  return VerifyError::none;
}

bool KeySet::sign(nlohmann::json claims, std::string* token, std::chrono::seconds ttl) const {
  const Key* key = impl_->signing;
  if (!key || !claims.is_object()) return false;
  int64_t now = seconds(std::chrono::system_clock::now());
  if (ttl.count() <= 0) ttl = impl_->config.access_token_ttl;
  auto set_default = [&claims](const char* name, nlohmann::json value) {
    if (!claims.contains(name)) claims[name] = std::move(value);
  };
  set_default("iss", impl_->config.issuer);
  set_default("aud", impl_->config.audience);
  set_default("iat", now);
  set_default("nbf", now);
  set_default("exp", now + ttl.count());
  nlohmann::json header = {{"alg", key->alg == Alg::hs256 ? "HS256" : "EdDSA"},
                           {"typ", kType},
                           {"kid", key->kid}};
  std::string input = base64url_encode(header.dump()) + "." + base64url_encode(claims.dump());
  std::string sig = key->alg == Alg::hs256 ? hmac_sha256(key->secret, input)
                                           : ed25519_sign(key->private_key.get(), input);
  if (sig.empty()) return false;
  *token = input + "." + base64url_encode(sig);
  return true;
}

std::string base64url_encode(std::string_view bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(bytes.data()),
                          static_cast<int>(bytes.size()));
  out.resize(static_cast<size_t>(n));
  while (!out.empty() && out.back() == '=') out.pop_back();
  for (auto& c : out) c = c == '+' ? '-' : c == '/' ? '_' : c;
  return out;
}

bool base64url_decode(std::string_view text, std::string* bytes) {
  if (text.size() % 4 == 1) return false;
  std::string std64;
  std64.reserve(text.size() + 3);
  for (char c : text) {
    if (c == '-') c = '+';
    else if (c == '_') c = '/';
    else if (!std::isalnum(static_cast<unsigned char>(c))) return false;
    std64 += c;
  }
  size_t pad = (4 - std64.size() % 4) % 4;
  std64.append(pad, '=');
  std::string out(std64.size() / 4 * 3, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(std64.data()),
                          static_cast<int>(std64.size()));
  if (n < 0) return false;
  out.resize(static_cast<size_t>(n) - pad);  // DecodeBlock counts padding as zeros
  *bytes = std::move(out);
  return true;
}

}  // namespace gv::auth
