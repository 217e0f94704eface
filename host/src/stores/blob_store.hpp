// The blob store a plugin's DAL uses for files: media, exports, anything too
// big or too opaque for SQL. The embedded default is a local folder
// (LocalBlobStore); an S3 or S3-compatible store comes later behind this same
// interface, so the contract below is written to fit both.
//
// Contract shared by every implementation:
// - Keys follow valid_blob_key (below); an invalid key is refused with
//   BlobError::invalid_key and touches nothing.
// - Bytes are opaque (std::string holds them, NULs included).
// - Absence is not an error: get returns an empty optional, exists false,
//   del false. Errors are failures (bad key, I/O, unreachable service).
// - No exception crosses this interface; every method reports through
//   BlobStatus / BlobResult. Every method is safe to call concurrently.
// - Portability: S3 lets "a" and "a/b" both be objects; a filesystem cannot,
//   so a store may refuse the second with BlobError::conflict. Plugins that
//   must run on both never use a key that is a folder of other keys.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace gv::stores {

enum class BlobError {
  none,
  invalid_key,  // the key (or list argument) breaks the key rules
  conflict,     // the key's path is blocked: "a/b" while "a" is an object,
                // "a" while "a/" holds objects, or a symlink in the way
  io_error,     // the medium failed (disk full, permission, corrupt state)
  unavailable   // a remote store could not be reached; worth retrying later
};

struct BlobStatus {
  BlobError code = BlobError::none;
  std::string message;  // one sentence for logs, naming the key; "" when ok

  bool ok() const { return code == BlobError::none; }
  static BlobStatus success() { return {}; }
  static BlobStatus failure(BlobError code, std::string message) {
    return {code, std::move(message)};
  }
};

template <class T>
struct BlobResult {
  BlobStatus status;
  T value{};  // meaningful only when ok()

  bool ok() const { return status.ok(); }
};

// One page of a listing. Keys are in ascending byte order (the order S3 uses
// for UTF-8 keys). When truncated, pass next_start_after as start_after to
// get the next page; it is the last key of this page.
struct BlobPage {
  std::vector<std::string> keys;
  bool truncated = false;
  std::string next_start_after;
};

class BlobStore {
 public:
  // The most keys one list call returns, as with S3's ListObjectsV2.
  static constexpr size_t max_list_limit = 1000;

  virtual ~BlobStore() = default;

  // Stores bytes under key, replacing any object there. Atomic: a reader
  // sees the old object or the new one, never a part, and a crash at any
  // moment leaves one or the other. Durable once it returns ok. Concurrent
  // puts of one key: the last to complete wins, whole.
  virtual BlobStatus put(std::string_view key, std::string_view bytes) = 0;

  // The whole object, or an empty optional when there is none.
  virtual BlobResult<std::optional<std::string>> get(std::string_view key) = 0;

  // Whether an object is stored under key.
  virtual BlobResult<bool> exists(std::string_view key) = 0;

  // Removes the object; true when there was one, false when there was none.
  virtual BlobResult<bool> del(std::string_view key) = 0;

  // Keys that begin with prefix (plain byte prefix, like S3: "a/b" matches
  // "a/bc"; "" matches everything) and sort strictly after start_after
  // ("" = from the start), ascending, at most limit of them (0 means
  // max_list_limit; larger values are lowered to it).
  virtual BlobResult<BlobPage> list(std::string_view prefix, std::string_view start_after,
                                    size_t limit) = 0;
};

// ---------------------------------------------------------------------------
// Key rules, chosen to be safe as a relative file path and valid for S3:
// 1..1024 bytes of well-formed UTF-8; segments separated by '/'; no leading
// '/', no empty segment (so no trailing '/' and no "//"), no "." or ".."
// segment; no NUL or other control character (U+0000-U+001F, U+007F-U+009F);
// no backslash. Returns false and, when why is given, sets a short reason.
// ---------------------------------------------------------------------------

constexpr size_t max_blob_key_bytes = 1024;

namespace detail {

// Length of the UTF-8 sequence at s[i] and its code point, or 0 when the
// bytes there are not well-formed (overlong, surrogate, beyond U+10FFFF,
// truncated).
inline size_t utf8_sequence(std::string_view s, size_t i, uint32_t* cp) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char lead = b(i);
  size_t len;
  uint32_t min;
  if (lead < 0x80) {
    *cp = lead;
    return 1;
  } else if ((lead & 0xE0) == 0xC0) {
    len = 2, min = 0x80, *cp = lead & 0x1F;
  } else if ((lead & 0xF0) == 0xE0) {
    len = 3, min = 0x800, *cp = lead & 0x0F;
  } else if ((lead & 0xF8) == 0xF0) {
    len = 4, min = 0x10000, *cp = lead & 0x07;
  } else {
    return 0;
  }
  if (i + len > s.size()) return 0;
  for (size_t k = 1; k < len; ++k) {
    if ((b(i + k) & 0xC0) != 0x80) return 0;
    *cp = (*cp << 6) | (b(i + k) & 0x3F);
  }
  if (*cp < min || *cp > 0x10FFFF || (*cp >= 0xD800 && *cp <= 0xDFFF)) return 0;
  return len;
}

inline bool blob_key_fail(std::string* why, const char* reason) {
  if (why) *why = reason;
  return false;
}

// Checks characters only; segment structure is checked separately.
inline bool blob_key_chars_ok(std::string_view key, std::string* why) {
  for (size_t i = 0; i < key.size();) {
    uint32_t cp = 0;
    const size_t len = utf8_sequence(key, i, &cp);
    if (len == 0) return blob_key_fail(why, "key is not valid UTF-8");
    if (cp == 0) return blob_key_fail(why, "key contains a NUL byte");
    if (cp < 0x20 || (cp >= 0x7F && cp <= 0x9F))
      return blob_key_fail(why, "key contains a control character");
    if (cp == '\\') return blob_key_fail(why, "key contains a backslash");
    i += len;
  }
  return true;
}

}  // namespace detail

inline bool valid_blob_key(std::string_view key, std::string* why = nullptr) {
  using detail::blob_key_fail;
  if (key.empty()) return blob_key_fail(why, "key is empty");
  if (key.size() > max_blob_key_bytes) return blob_key_fail(why, "key is longer than 1024 bytes");
  if (!detail::blob_key_chars_ok(key, why)) return false;
  if (key.front() == '/') return blob_key_fail(why, "key starts with '/'");
  size_t start = 0;
  while (true) {
    const size_t slash = key.find('/', start);
    const std::string_view segment =
        key.substr(start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
    if (segment.empty()) return blob_key_fail(why, "key has an empty segment");
    if (segment == "." || segment == "..")
      return blob_key_fail(why, "key has a \".\" or \"..\" segment");
    if (slash == std::string_view::npos) return true;
    start = slash + 1;
  }
}

}  // namespace gv::stores
