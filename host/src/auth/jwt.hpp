// JSON Web Tokens: verification of access tokens on every request, and
// signing for the plugin that issues them. HS256 and EdDSA (Ed25519) over
// OpenSSL; the algorithm is pinned per key and the key is chosen by the
// token's kid from the configured set only (no "alg" from the token is ever
// trusted, "none" never accepted).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "config/host_config.hpp"

namespace gv::auth {

// Who made a request, as the verified token says.
struct Identity {
  std::string user_id;             // "sub"
  std::vector<std::string> roles;  // "roles" claim
  int64_t expires_at = 0;          // "exp", seconds since the epoch
  // Every claim, for plugins that need more. Shared: an identity is copied
  // out of the verified-token cache for each request.
  std::shared_ptr<const nlohmann::json> claims_json;
  const nlohmann::json& claims() const;
  bool has_role(std::string_view role) const;
  std::string roles_joined() const;  // "user,admin"
};

enum class VerifyError {
  none,
  malformed,      // not three base64url parts of JSON
  unknown_key,    // no kid, or a kid not in the key set
  bad_algorithm,  // header alg is not the key's pinned algorithm
  bad_signature,
  bad_type,       // header typ is not "at+jwt"
  expired,        // exp in the past (beyond leeway) or missing
  not_yet_valid,  // nbf or iat in the future (beyond leeway)
  bad_issuer,
  bad_audience,  // aud (string or array) lacks the configured audience
  bad_subject    // no "sub" string
};

// A short reason for logs and the 401 body, e.g. "token expired".
const char* describe(VerifyError e);

class KeySet {
 public:
  // Builds keys from config: reads key files (relative paths resolve
  // against data_dir), generates an HS256 secret_file when asked. On
  // failure returns nullptr and sets *error to a sentence naming the kid.
  static std::unique_ptr<KeySet> load(const config::AuthConfig& auth,
                                      const std::filesystem::path& data_dir, std::string* error);
  ~KeySet();

  // Checks signature, kid, alg, typ, exp, nbf, iat, iss, aud and sub. A
  // token that verified before is found by its text, with the same answer
  // while the time is within its claims (auth.verified_tokens bounds them).
  VerifyError verify(
      std::string_view token, Identity* out,
      std::chrono::system_clock::time_point now = std::chrono::system_clock::now()) const;

  // Signs claims (iss, aud, iat, nbf, exp are added unless present) with the
  // signing key. Returns false when this host has no signing key.
  bool sign(nlohmann::json claims, std::string* token,
            std::chrono::seconds ttl = std::chrono::seconds(0)) const;

  bool can_sign() const;
  // How many verified tokens are remembered now (at most auth.verified_tokens),
  // and how many verify() calls were answered from them.
  size_t verified_tokens() const;
  uint64_t verified_token_hits() const;

 private:
  struct Impl;
  explicit KeySet(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// base64url without padding, as JWT uses it.
std::string base64url_encode(std::string_view bytes);
bool base64url_decode(std::string_view text, std::string* bytes);

}  // namespace gv::auth
