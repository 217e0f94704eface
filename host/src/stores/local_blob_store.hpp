// The embedded blob store: one object per file under a root folder, the key
// used as the relative path ("avatars/u1.png" is <root>/avatars/u1.png), so
// the folder can be read, backed up, or copied to S3 as it is.
//
// Safety: keys are validated, the path is checked lexically to stay under
// the root, and every lookup walks the key one segment at a time from an
// open handle on the root with O_NOFOLLOW, so no symlink inside the root is
// ever followed (a planted link reads as "no object" and blocks a put
// through it with BlobError::conflict).
//
// Atomicity: put writes a temporary file beside the target (O_EXCL, unique
// name), fsyncs it, renames it over the target and fsyncs the folder. Temp
// files are named kTempPrefix + random; list and get never show them and
// keys with a segment starting with kTempPrefix are refused. The
// constructor deletes temp files left by a crash and prunes empty folders,
// so one root belongs to one LocalBlobStore at a time.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

#include "stores/blob_store.hpp"

namespace gv::stores {

class LocalBlobStore final : public BlobStore {
 public:
  // Names of the store's own temporary files; reserved in keys.
  static constexpr std::string_view kTempPrefix = ".gv-tmp-";

  // Creates root when missing, then removes crash leftovers. On failure
  // every operation returns open_status(); check it at start-up.
  explicit LocalBlobStore(std::filesystem::path root);
  ~LocalBlobStore() override;
  LocalBlobStore(const LocalBlobStore&) = delete;
  LocalBlobStore& operator=(const LocalBlobStore&) = delete;

  const BlobStatus& open_status() const { return open_status_; }
  const std::filesystem::path& root() const { return root_; }

  BlobStatus put(std::string_view key, std::string_view bytes) override;
  BlobResult<std::optional<std::string>> get(std::string_view key) override;
  BlobResult<bool> exists(std::string_view key) override;
  BlobResult<bool> del(std::string_view key) override;
  BlobResult<BlobPage> list(std::string_view prefix, std::string_view start_after,
                            size_t limit) override;

 private:
  BlobStatus check_key(std::string_view key) const;

  std::filesystem::path root_;  // absolute, normalised
  int root_fd_ = -1;            // every path walk starts here
  BlobStatus open_status_;
};

}  // namespace gv::stores
