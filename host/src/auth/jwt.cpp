// JWT verification and signing over OpenSSL 3 (HS256 and EdDSA/Ed25519).
//
// Thread safety: after load() a KeySet is never modified. verify() and
// sign() create their own OpenSSL contexts per call; the shared EVP_PKEY
// objects are only read, which OpenSSL 3 allows from many threads (its
// internal caches are locked, see openssl-threads(7)).
#include "auth/jwt.hpp"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <limits>
#include <map>
#include <mutex>
#include <system_error>
#include <unordered_map>

namespace gv::auth {

namespace {

using json = nlohmann::json;

// ---------------------------------------------------------------- OpenSSL RAII

template <auto Free>
struct Deleter {
  template <class T>
  void operator()(T* p) const {
    Free(p);
  }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY_free>>;
using MdCtxPtr = std::unique_ptr<EVP_MD_CTX, Deleter<EVP_MD_CTX_free>>;
using BioPtr = std::unique_ptr<BIO, Deleter<BIO_free>>;

constexpr size_t kMaxTokenBytes = 8 * 1024;
constexpr size_t kMinHmacSecretBytes = 32;  // RFC 7518 3.2: >= hash size
constexpr size_t kHs256Bytes = 32;
constexpr size_t kEd25519SigBytes = 64;
constexpr const char* kTokenType = "at+jwt";

enum class Alg { hs256, eddsa };

const char* alg_name(Alg alg) { return alg == Alg::hs256 ? "HS256" : "EdDSA"; }

// Wipes a secret on destruction so it does not linger in freed memory.
struct SecretString {
  std::string bytes;
  ~SecretString() { OPENSSL_cleanse(bytes.data(), bytes.size()); }
};

struct Key {
  std::string kid;
  Alg alg = Alg::hs256;
  SecretString secret;  // HS256
  PkeyPtr public_key;   // EdDSA
  PkeyPtr private_key;  // EdDSA, only for the signing key
};

// ------------------------------------------------------------------- signing

bool hmac_sha256(const std::string& secret, std::string_view data, std::string* mac) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> out{};
  unsigned int len = 0;
  // HMAC() is one-shot with its own context, so it is safe to call from
  // many threads at once.
  if (!HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
            reinterpret_cast<const unsigned char*>(data.data()), data.size(), out.data(), &len))
    return false;
  mac->assign(reinterpret_cast<const char*>(out.data()), len);
  OPENSSL_cleanse(out.data(), out.size());
  return true;
}

bool ed25519_sign(EVP_PKEY* key, std::string_view data, std::string* sig) {
  MdCtxPtr ctx(EVP_MD_CTX_new());
  std::array<unsigned char, kEd25519SigBytes> out{};
  size_t len = out.size();
  // Ed25519 hashes internally: no digest, and only the one-shot call works.
  bool ok = ctx && EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, key) == 1 &&
            EVP_DigestSign(ctx.get(), out.data(), &len,
                           reinterpret_cast<const unsigned char*>(data.data()), data.size()) == 1;
  if (ok) sig->assign(reinterpret_cast<const char*>(out.data()), len);
  ERR_clear_error();
  return ok;
}

bool ed25519_verify(EVP_PKEY* key, std::string_view data, const std::string& sig) {
  if (sig.size() != kEd25519SigBytes) return false;
  MdCtxPtr ctx(EVP_MD_CTX_new());
  bool ok =
      ctx && EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, key) == 1 &&
      EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(sig.data()), sig.size(),
                       reinterpret_cast<const unsigned char*>(data.data()), data.size()) == 1;
  ERR_clear_error();  // a failed verify leaves errors; keep the queue clean
  return ok;
}

bool sign_with(const Key& key, std::string_view data, std::string* sig) {
  if (key.alg == Alg::hs256) return hmac_sha256(key.secret.bytes, data, sig);
  return ed25519_sign(key.private_key.get(), data, sig);
}

bool signature_matches(const Key& key, std::string_view data, const std::string& sig) {
  if (key.alg == Alg::eddsa) return ed25519_verify(key.public_key.get(), data, sig);
  std::string expected;
  if (!hmac_sha256(key.secret.bytes, data, &expected)) return false;
  // Constant time, so the comparison leaks nothing about the right MAC.
  return sig.size() == kHs256Bytes && CRYPTO_memcmp(sig.data(), expected.data(), kHs256Bytes) == 0;
}

// ------------------------------------------------------------- token parsing

struct Parts {
  std::string_view header_b64, payload_b64;
  std::string_view signing_input;          // "header.payload"
  std::string header, payload, signature;  // decoded
};

bool split_token(std::string_view token, Parts* parts) {
  if (token.empty() || token.size() > kMaxTokenBytes) return false;
  size_t dot1 = token.find('.');
  if (dot1 == std::string_view::npos) return false;
  size_t dot2 = token.find('.', dot1 + 1);
  if (dot2 == std::string_view::npos || token.find('.', dot2 + 1) != std::string_view::npos)
    return false;
  parts->header_b64 = token.substr(0, dot1);
  parts->payload_b64 = token.substr(dot1 + 1, dot2 - dot1 - 1);
  std::string_view sig_b64 = token.substr(dot2 + 1);
  parts->signing_input = token.substr(0, dot2);
  if (parts->header_b64.empty() || parts->payload_b64.empty() || sig_b64.empty()) return false;
  return base64url_decode(parts->header_b64, &parts->header) &&
         base64url_decode(parts->payload_b64, &parts->payload) &&
         base64url_decode(sig_b64, &parts->signature);
}

bool parse_object(const std::string& text, json* out) {
  *out = json::parse(text, nullptr, /*allow_exceptions=*/false);
  return out->is_object();
}

const std::string* string_member(const json& obj, const char* name) {
  auto it = obj.find(name);
  if (it == obj.end() || !it->is_string()) return nullptr;
  return it->get_ptr<const std::string*>();
}

// A NumericDate (RFC 7519) as whole seconds, clamped to the int64 range so
// later arithmetic cannot overflow. False when absent or not a number.
bool numeric_date(const json& obj, const char* name, int64_t* out) {
  auto it = obj.find(name);
  if (it == obj.end() || !it->is_number()) return false;
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max() / 2;
  if (it->is_number_unsigned()) {
    uint64_t v = it->get<uint64_t>();
    *out = v > static_cast<uint64_t>(kMax) ? kMax : static_cast<int64_t>(v);
  } else if (it->is_number_integer()) {
    *out = std::clamp<int64_t>(it->get<int64_t>(), -kMax, kMax);
  } else {
    double v = std::floor(it->get<double>());
    *out = v >= static_cast<double>(kMax)    ? kMax
           : v <= -static_cast<double>(kMax) ? -kMax
                                             : static_cast<int64_t>(v);
  }
  return true;
}

// RFC 9068 2.1 allows the media type with or without "application/".
bool type_ok(const json& header) {
  const std::string* typ = string_member(header, "typ");
  return typ && (*typ == kTokenType || *typ == "application/at+jwt");
}

bool audience_ok(const json& claims, const std::string& audience) {
  auto it = claims.find("aud");
  if (it == claims.end()) return false;
  if (it->is_string()) return *it == audience;
  if (!it->is_array()) return false;
  for (const json& a : *it)
    if (a.is_string() && a == audience) return true;
  return false;
}

// "roles": absent means none; anything but an array of strings is malformed.
bool read_roles(const json& claims, std::vector<std::string>* roles) {
  auto it = claims.find("roles");
  if (it == claims.end()) return true;
  if (!it->is_array()) return false;
  for (const json& r : *it) {
    if (!r.is_string()) return false;
    roles->push_back(r.get<std::string>());
  }
  return true;
}

int64_t epoch_seconds(std::chrono::system_clock::time_point t) {
  return std::chrono::floor<std::chrono::seconds>(t.time_since_epoch()).count();
}

// ------------------------------------------------------------- key loading

std::string key_error(const std::string& kid, const std::string& what) {
  return "auth key '" + kid + "': " + what;
}

std::string errno_text(int err) { return std::generic_category().message(err); }

std::filesystem::path resolve(const std::string& file, const std::filesystem::path& data_dir) {
  std::filesystem::path p(file);
  return p.is_relative() ? data_dir / p : p;
}

// Reads a whole file; on failure returns the errno.
int read_file(const std::filesystem::path& path, std::string* out) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  out->clear();
  char buf[4096];
  int err = 0;
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n > 0) {
      out->append(buf, static_cast<size_t>(n));
    } else if (n == 0) {
      break;
    } else if (errno != EINTR) {
      err = errno;
      break;
    }
  }
  OPENSSL_cleanse(buf, sizeof buf);
  ::close(fd);
  return err;
}

bool write_all(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

std::string random_hex_secret() {
  std::array<unsigned char, 32> raw{};
  if (RAND_bytes(raw.data(), static_cast<int>(raw.size())) != 1) return {};
  static const char digits[] = "0123456789abcdef";
  std::string hex;
  for (unsigned char b : raw) {
    hex += digits[b >> 4];
    hex += digits[b & 0xf];
  }
  OPENSSL_cleanse(raw.data(), raw.size());
  return hex + "\n";
}

// Writes a fresh secret to a 0600 temp file and renames it into place, so
// no reader ever sees a partial file. Returns an error text or "".
std::string generate_secret_file(const std::filesystem::path& path) {
  std::error_code ec;
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path(), ec);
  if (ec) return path.parent_path().string() + ": " + ec.message();
  SecretString secret{random_hex_secret()};
  if (secret.bytes.empty()) return "no random bytes available";
  std::string tmp = path.string() + ".XXXXXX";
  int fd = ::mkstemp(tmp.data());  // creates the file with mode 0600
  if (fd < 0) return tmp + ": " + errno_text(errno);
  bool ok = write_all(fd, secret.bytes) && ::fsync(fd) == 0;
  int err = errno;
  if (::close(fd) != 0 && ok) {
    ok = false;
    err = errno;
  }
  if (ok && ::rename(tmp.c_str(), path.c_str()) == 0) return {};
  if (ok) err = errno;  // the rename failed
  ::unlink(tmp.c_str());
  return path.string() + ": " + errno_text(err);
}

std::string load_secret_file(const config::AuthKey& cfg, const std::filesystem::path& data_dir,
                             std::string* secret) {
  std::filesystem::path path = resolve(cfg.secret_file, data_dir);
  int err = read_file(path, secret);
  if (err == ENOENT && cfg.generate) {
    std::string gen_error = generate_secret_file(path);
    if (!gen_error.empty()) return key_error(cfg.kid, "cannot generate secret_file " + gen_error);
    // Read back what is on disk: if another process generated the file at
    // the same moment, both then use the same (last renamed) secret.
    err = read_file(path, secret);
  }
  if (err != 0) return key_error(cfg.kid, "secret_file " + path.string() + ": " + errno_text(err));
  if (!secret->empty() && secret->back() == '\n') {
    secret->pop_back();
    if (!secret->empty() && secret->back() == '\r') secret->pop_back();
  }
  return {};
}

std::string load_hs256(const config::AuthKey& cfg, const std::filesystem::path& data_dir,
                       Key* key) {
  if (!cfg.secret.empty() && !cfg.secret_file.empty())
    return key_error(cfg.kid, "set either secret or secret_file, not both");
  if (cfg.generate && cfg.secret_file.empty())
    return key_error(cfg.kid, "generate needs a secret_file to write");
  if (cfg.secret.empty() && cfg.secret_file.empty())
    return key_error(cfg.kid, "an HS256 key needs a secret or a secret_file");
  std::string& secret = key->secret.bytes;
  if (!cfg.secret.empty()) {
    secret = cfg.secret;
  } else if (std::string e = load_secret_file(cfg, data_dir, &secret); !e.empty()) {
    return e;
  }
  if (secret.size() < kMinHmacSecretBytes)
    return key_error(cfg.kid, "the HS256 secret is " + std::to_string(secret.size()) +
                                  " bytes; at least " + std::to_string(kMinHmacSecretBytes) +
                                  " are required");
  return {};
}

// Never prompt on the terminal for a passphrase: encrypted keys just fail.
int no_passphrase(char*, int, int, void*) { return 0; }

// Loads a PEM key file (public or private) and checks it is Ed25519.
std::string load_pem(const std::string& kid, const char* field, const std::string& file,
                     const std::filesystem::path& data_dir, bool is_private, PkeyPtr* out) {
  std::filesystem::path path = resolve(file, data_dir);
  SecretString pem;
  if (int err = read_file(path, &pem.bytes); err != 0)
    return key_error(kid, std::string(field) + " " + path.string() + ": " + errno_text(err));
  BioPtr bio(BIO_new_mem_buf(pem.bytes.data(), static_cast<int>(pem.bytes.size())));
  if (bio)
    out->reset(is_private ? PEM_read_bio_PrivateKey(bio.get(), nullptr, no_passphrase, nullptr)
                          : PEM_read_bio_PUBKEY(bio.get(), nullptr, no_passphrase, nullptr));
  ERR_clear_error();
  std::string where = std::string(field) + " " + path.string();
  if (!*out)
    return key_error(kid, where + ": not a PEM " +
                              (is_private ? "private key (or it is encrypted)" : "public key"));
  if (!EVP_PKEY_is_a(out->get(), "ED25519"))
    return key_error(kid, where + ": the key is not Ed25519");
  return {};
}

std::string load_eddsa(const config::AuthKey& cfg, const std::filesystem::path& data_dir,
                       bool signing, Key* key) {
  if (cfg.public_key_file.empty())
    return key_error(cfg.kid, "an EdDSA key needs a public_key_file");
  if (std::string e = load_pem(cfg.kid, "public_key_file", cfg.public_key_file, data_dir, false,
                               &key->public_key);
      !e.empty())
    return e;
  // The private key is read only on the host that signs with it, so other
  // hosts never hold it in memory.
  if (!signing) return {};
  if (cfg.private_key_file.empty())
    return key_error(cfg.kid, "it is the signing key but has no private_key_file");
  if (std::string e = load_pem(cfg.kid, "private_key_file", cfg.private_key_file, data_dir, true,
                               &key->private_key);
      !e.empty())
    return e;
  if (EVP_PKEY_eq(key->public_key.get(), key->private_key.get()) != 1) {
    ERR_clear_error();
    return key_error(cfg.kid, "private_key_file does not match public_key_file");
  }
  return {};
}

std::string load_key(const config::AuthKey& cfg, const std::filesystem::path& data_dir,
                     bool signing, Key* key) {
  key->kid = cfg.kid;
  if (cfg.alg == "HS256") {
    key->alg = Alg::hs256;
    return load_hs256(cfg, data_dir, key);
  }
  if (cfg.alg == "EdDSA") {
    key->alg = Alg::eddsa;
    return load_eddsa(cfg, data_dir, signing, key);
  }
  return key_error(cfg.kid, "alg '" + cfg.alg + "' is not supported (use HS256 or EdDSA)");
}

}  // namespace

// ------------------------------------------------------------------ Identity

const nlohmann::json& Identity::claims() const {
  static const nlohmann::json none = nlohmann::json::object();
  return claims_json ? *claims_json : none;
}

bool Identity::has_role(std::string_view role) const {
  for (const std::string& r : roles)
    if (r == role) return true;
  return false;
}

std::string Identity::roles_joined() const {
  std::string out;
  for (const std::string& r : roles) {
    if (!out.empty()) out += ',';
    out += r;
  }
  return out;
}

const char* describe(VerifyError e) {
  switch (e) {
    case VerifyError::none:
      return "ok";
    case VerifyError::malformed:
      return "malformed token";
    case VerifyError::unknown_key:
      return "unknown signing key";
    case VerifyError::bad_algorithm:
      return "algorithm not allowed";
    case VerifyError::bad_signature:
      return "bad signature";
    case VerifyError::bad_type:
      return "not an access token";
    case VerifyError::expired:
      return "token expired";
    case VerifyError::not_yet_valid:
      return "token not yet valid";
    case VerifyError::bad_issuer:
      return "wrong issuer";
    case VerifyError::bad_audience:
      return "wrong audience";
    case VerifyError::bad_subject:
      return "no subject";
  }
  return "invalid token";
}

// ------------------------------------------------------------------- KeySet

// Tokens that verified, by their exact text, with the seconds in which
// they stay valid: a client sends the same access token with every request
// until it expires, and verifying it again (an HMAC or Ed25519 check and two
// JSON parses) is the largest cost of an authenticated request. A hit needs
// the whole token to match byte for byte and the time to be inside the
// window its claims gave, so it answers exactly what verifying would.
// Revocation is not decided here: the host checks it on every request.
// Bounded by auth.verified_tokens: when full, expired tokens go, and if none
// had, all go (each is verified once more on its next use).
class VerifiedTokens {
 public:
  explicit VerifiedTokens(size_t max_entries) : max_(max_entries) {}

  bool find(std::string_view token, int64_t now, Identity* out) const {
    if (max_ == 0) return false;
    std::shared_ptr<const Entry> e;
    {
      std::lock_guard lock(mutex_);
      auto it = entries_.find(token);
      if (it == entries_.end()) return false;
      e = it->second;
    }
    if (now < e->valid_from || now > e->valid_until) return false;
    if (out) *out = e->identity;  // copied outside the lock
    hits_.fetch_add(1, std::memory_order_relaxed);
    return true;
  }

  uint64_t hits() const { return hits_.load(std::memory_order_relaxed); }

  void add(std::string_view token, const Identity& id, int64_t valid_from, int64_t valid_until,
           int64_t now) {
    if (max_ == 0) return;
    auto e = std::make_shared<const Entry>(Entry{id, valid_from, valid_until});
    std::lock_guard lock(mutex_);
    if (entries_.size() >= max_ && !entries_.count(token)) {
      std::erase_if(entries_, [now](const auto& kv) { return kv.second->valid_until < now; });
      if (entries_.size() >= max_) entries_.clear();
    }
    entries_.insert_or_assign(std::string(token), std::move(e));
  }

  size_t size() const {
    std::lock_guard lock(mutex_);
    return entries_.size();
  }

 private:
  struct Entry {
    Identity identity;
    int64_t valid_from, valid_until;  // seconds since the epoch, leeway included
  };
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };

  const size_t max_;
  mutable std::atomic<uint64_t> hits_{0};
  mutable std::mutex mutex_;
  std::unordered_map<std::string, std::shared_ptr<const Entry>, Hash, std::equal_to<>> entries_;
};

struct KeySet::Impl {
  std::string issuer, audience;
  std::chrono::seconds ttl{0}, leeway{0};
  std::map<std::string, Key, std::less<>> keys;
  const Key* signing = nullptr;
  std::unique_ptr<VerifiedTokens> verified;

  // *valid_from: the first second the token is valid in (leeway included).
  VerifyError verify(std::string_view token, Identity* out, int64_t now,
                     int64_t* valid_from) const;
  VerifyError check_claims(const json& claims, int64_t now, int64_t* valid_from) const;
};

KeySet::KeySet(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
KeySet::~KeySet() = default;

std::unique_ptr<KeySet> KeySet::load(const config::AuthConfig& auth,
                                     const std::filesystem::path& data_dir, std::string* error) {
  try {
    auto impl = std::make_unique<Impl>();
    impl->issuer = auth.issuer;
    impl->audience = auth.audience;
    impl->ttl = auth.access_token_ttl;
    impl->leeway = auth.leeway;
    impl->verified = std::make_unique<VerifiedTokens>(auth.verified_tokens);
    for (const config::AuthKey& cfg : auth.keys) {
      std::string e;
      if (cfg.kid.empty())
        e = "auth key with alg '" + cfg.alg + "' has an empty kid";
      else if (impl->keys.count(cfg.kid))
        e = key_error(cfg.kid, "the kid is used twice");
      else
        e = load_key(cfg, data_dir, cfg.kid == auth.signing_kid, &impl->keys[cfg.kid]);
      if (!e.empty()) {
        if (error) *error = e;
        return nullptr;
      }
    }
    if (!auth.signing_kid.empty()) {
      auto it = impl->keys.find(auth.signing_kid);
      if (it == impl->keys.end()) {
        if (error) *error = "auth signing_kid '" + auth.signing_kid + "' names no key";
        return nullptr;
      }
      impl->signing = &it->second;
    }
    return std::unique_ptr<KeySet>(new KeySet(std::move(impl)));
  } catch (const std::exception& e) {
    if (error) *error = std::string("auth keys: ") + e.what();
    return nullptr;
  }
}

VerifyError KeySet::verify(std::string_view token, Identity* out,
                           std::chrono::system_clock::time_point now) const {
  try {
    const int64_t t = epoch_seconds(now);
    if (impl_->verified->find(token, t, out)) return VerifyError::none;
    Identity id;
    int64_t from = 0;
    VerifyError e = impl_->verify(token, &id, t, &from);
    if (e != VerifyError::none) return e;
    impl_->verified->add(token, id, from, id.expires_at + impl_->leeway.count(), t);
    if (out) *out = std::move(id);
    return VerifyError::none;
  } catch (...) {  // only allocation failure can get here
    return VerifyError::malformed;
  }
}

size_t KeySet::verified_tokens() const { return impl_->verified->size(); }
uint64_t KeySet::verified_token_hits() const { return impl_->verified->hits(); }

VerifyError KeySet::Impl::verify(std::string_view token, Identity* out, int64_t now,
                                 int64_t* valid_from) const {
  Parts parts;
  json header;
  if (!split_token(token, &parts) || !parse_object(parts.header, &header))
    return VerifyError::malformed;

  // The key comes from our set by kid; its pinned alg must match the
  // header's, so "none" and HS256-with-a-public-key are refused here.
  const std::string* kid = string_member(header, "kid");
  if (!kid) return VerifyError::unknown_key;
  auto key = keys.find(*kid);
  if (key == keys.end()) return VerifyError::unknown_key;
  const std::string* alg = string_member(header, "alg");
  if (!alg || *alg != alg_name(key->second.alg)) return VerifyError::bad_algorithm;
  if (!signature_matches(key->second, parts.signing_input, parts.signature))
    return VerifyError::bad_signature;

  // Everything below is signed content.
  if (!type_ok(header)) return VerifyError::bad_type;
  json claims;
  if (!parse_object(parts.payload, &claims)) return VerifyError::malformed;
  if (VerifyError e = check_claims(claims, now, valid_from); e != VerifyError::none) return e;
  Identity id;
  if (!read_roles(claims, &id.roles)) return VerifyError::malformed;
  id.user_id = *string_member(claims, "sub");
  numeric_date(claims, "exp", &id.expires_at);
  id.claims_json = std::make_shared<const json>(std::move(claims));
  if (out) *out = std::move(id);
  return VerifyError::none;
}

VerifyError KeySet::Impl::check_claims(const json& claims, int64_t now,
                                       int64_t* valid_from) const {
  const int64_t slack = leeway.count();
  int64_t exp = 0;
  if (!numeric_date(claims, "exp", &exp) || now - slack > exp) return VerifyError::expired;
  int64_t from = std::numeric_limits<int64_t>::min();
  for (const char* name : {"nbf", "iat"}) {
    if (!claims.contains(name)) continue;
    int64_t t = 0;
    if (!numeric_date(claims, name, &t)) return VerifyError::malformed;
    if (t > now + slack) return VerifyError::not_yet_valid;
    from = std::max(from, t - slack);
  }
  if (valid_from) *valid_from = from;
  const std::string* iss = string_member(claims, "iss");
  if (!iss || *iss != issuer) return VerifyError::bad_issuer;
  if (!audience_ok(claims, audience)) return VerifyError::bad_audience;
  const std::string* sub = string_member(claims, "sub");
  if (!sub || sub->empty()) return VerifyError::bad_subject;
  return VerifyError::none;
}

bool KeySet::sign(nlohmann::json claims, std::string* token, std::chrono::seconds ttl) const {
  const Key* key = impl_->signing;
  if (!key || !token) return false;
  try {
    if (claims.is_null()) claims = json::object();
    if (!claims.is_object()) return false;
    const int64_t now = epoch_seconds(std::chrono::system_clock::now());
    if (ttl.count() == 0) ttl = impl_->ttl;
    claims.emplace("iss", impl_->issuer);  // emplace keeps present claims
    claims.emplace("aud", impl_->audience);
    claims.emplace("iat", now);
    claims.emplace("nbf", claims["iat"]);
    claims.emplace("exp", now + ttl.count());
    json header = {{"alg", alg_name(key->alg)}, {"typ", kTokenType}, {"kid", key->kid}};
    // dump() throws on invalid UTF-8 in a claim; caught below.
    std::string input = base64url_encode(header.dump()) + "." + base64url_encode(claims.dump());
    std::string sig;
    if (!sign_with(*key, input, &sig)) return false;
    *token = input + "." + base64url_encode(sig);
    return true;
  } catch (...) {
    return false;
  }
}

bool KeySet::can_sign() const { return impl_->signing != nullptr; }

// ---------------------------------------------------------------- base64url

namespace {
constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

int sextet(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '-') return 62;
  if (c == '_') return 63;
  return -1;  // includes '+', '/', '=' and whitespace
}
}  // namespace

std::string base64url_encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() * 4 + 2) / 3);
  uint32_t acc = 0;
  int bits = 0;
  for (unsigned char b : bytes) {
    acc = (acc << 8) | b;
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      out += kAlphabet[(acc >> bits) & 0x3f];
    }
  }
  if (bits > 0) out += kAlphabet[(acc << (6 - bits)) & 0x3f];
  return out;
}

bool base64url_decode(std::string_view text, std::string* bytes) {
  // One leftover character would carry only 6 bits: never a valid length.
  if (text.size() % 4 == 1) return false;
  std::string out;
  out.reserve(text.size() * 3 / 4);
  uint32_t acc = 0;
  int bits = 0;
  for (char c : text) {
    int v = sextet(c);
    if (v < 0) return false;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xff);
    }
  }
  // Unused low bits must be zero, so each byte string has one encoding
  // (otherwise a token could be altered without touching its meaning).
  if ((acc & ((1u << bits) - 1)) != 0) return false;
  *bytes = std::move(out);
  return true;
}

}  // namespace gv::auth
