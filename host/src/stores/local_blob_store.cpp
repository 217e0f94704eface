#include "stores/local_blob_store.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <random>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

namespace gv::stores {
namespace fs = std::filesystem;

namespace {

// ---------------------------------------------------------------------------
// Small helpers over file descriptors and errno.
// ---------------------------------------------------------------------------

// Owns a file descriptor; closes it on destruction.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    std::swap(fd_, other.fd_);
    return *this;
  }
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_ = -1;
};

std::string quoted(std::string_view key) { return "\"" + std::string(key) + "\""; }

BlobStatus io_failure(std::string_view what, std::string_view key, int err) {
  return BlobStatus::failure(BlobError::io_error, "blob store: cannot " + std::string(what) + " " +
                                                      quoted(key) + ": " +
                                                      std::system_category().message(err));
}

BlobStatus conflict(std::string_view key, std::string_view reason) {
  return BlobStatus::failure(BlobError::conflict,
                             "blob store: " + quoted(key) + " " + std::string(reason));
}

bool write_all(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

bool read_all(int fd, size_t size_hint, std::string* out) {
  out->clear();
  out->reserve(size_hint);
  char buffer[64 * 1024];
  while (true) {
    const ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return false;
    if (n == 0) return true;
    out->append(buffer, static_cast<size_t>(n));
  }
}

// Splits a valid key into its segments (valid keys have no empty ones).
std::vector<std::string> split_key(std::string_view key) {
  std::vector<std::string> segments;
  size_t start = 0;
  while (true) {
    const size_t slash = key.find('/', start);
    if (slash == std::string_view::npos) {
      segments.emplace_back(key.substr(start));
      return segments;
    }
    segments.emplace_back(key.substr(start, slash - start));
    start = slash + 1;
  }
}

bool is_temp_name(std::string_view name) { return name.starts_with(LocalBlobStore::kTempPrefix); }

// The shared key rules plus this store's own: a segment must fit a file
// name, and the temp prefix is reserved. Returns true or sets *why.
bool valid_local_key(std::string_view key, std::string* why) {
  if (!valid_blob_key(key, why)) return false;
  for (const std::string& segment : split_key(key)) {
    if (segment.size() > NAME_MAX)
      return *why = "a segment is longer than the local store allows (255 bytes)", false;
    if (is_temp_name(segment))
      return *why = "segments starting with \".gv-tmp-\" are reserved", false;
  }
  return true;
}

// A fresh temp file name. Random so that writers in several threads or
// processes do not collide; O_EXCL settles the rare collision anyway.
std::string temp_name() {
  thread_local std::mt19937_64 random{std::random_device{}()};
  static constexpr char hex[] = "0123456789abcdef";
  std::string name(LocalBlobStore::kTempPrefix);
  uint64_t bits = random();
  for (int i = 0; i < 16; ++i, bits >>= 4) name += hex[bits & 0xF];
  return name;
}

// Defence in depth behind valid_blob_key: the key, joined to root and
// normalised, must still name something strictly inside root.
bool lexically_inside(const fs::path& root, std::string_view key) {
  const fs::path full = (root / fs::path(std::string(key))).lexically_normal();
  const fs::path relative = full.lexically_relative(root);
  if (relative.empty() || relative.is_absolute()) return false;
  const fs::path first = *relative.begin();
  return first != ".." && first != ".";
}

// ---------------------------------------------------------------------------
// Walking a key's folders one segment at a time from the root handle, never
// following a symlink: this, not string checks, is what keeps every access
// inside the root even if someone plants links in it.
// ---------------------------------------------------------------------------

enum class Walk {
  ok,
  absent,    // a folder on the way does not exist
  blocked,   // a file or symlink stands where a folder should be
  vanished,  // a folder was removed under us (concurrent del); try again
  error      // errno says why
};

int open_dir_nofollow(int parent, const std::string& name) {
  return ::openat(parent, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

// Opens (and with create, makes) one folder below parent.
Walk open_folder(int parent, const std::string& name, bool create, Fd* out, int* err) {
  int fd = open_dir_nofollow(parent, name);
  if (fd < 0 && errno == ENOENT && create) {
    if (::mkdirat(parent, name.c_str(), 0777) == 0) {
      // The new entry must survive a crash before anything inside it does.
      if (::fsync(parent) != 0) return *err = errno, Walk::error;
    } else if (errno == ENOENT) {
      return Walk::vanished;  // parent itself was pruned meanwhile
    } else if (errno != EEXIST) {
      return *err = errno, Walk::error;
    }
    fd = open_dir_nofollow(parent, name);
    if (fd < 0 && errno == ENOENT) return Walk::vanished;
  }
  if (fd >= 0) {
    *out = Fd(fd);
    return Walk::ok;
  }
  if (errno == ENOENT) return Walk::absent;
  if (errno == ENOTDIR || errno == ELOOP) return Walk::blocked;
  return *err = errno, Walk::error;
}

// Opens the folders for segments[0 .. size-2] (all but the object's name).
// dirs->back() (or root_fd when the key has one segment) holds the object.
struct FolderChain {
  int root_fd;
  std::vector<Fd> dirs;
  int parent_of(size_t level) const { return level == 0 ? root_fd : dirs[level - 1].get(); }
  int leaf() const { return parent_of(dirs.size()); }
};

Walk open_chain(const std::vector<std::string>& segments, bool create, FolderChain* chain,
                int* err) {
  for (size_t i = 0; i + 1 < segments.size(); ++i) {
    Fd fd;
    const Walk w = open_folder(chain->leaf(), segments[i], create, &fd, err);
    if (w != Walk::ok) return w;
    chain->dirs.push_back(std::move(fd));
  }
  return Walk::ok;
}

// Type of the entry name in dir without following a symlink.
bool stat_entry(int dir, const char* name, struct stat* st) {
  return ::fstatat(dir, name, st, AT_SYMLINK_NOFOLLOW) == 0;
}

// ---------------------------------------------------------------------------
// Reading a folder: its entries as key fragments, in key order.
// ---------------------------------------------------------------------------

struct Entry {
  std::string sort_name;  // name, plus '/' for a folder
  bool is_dir;
};

// Folders sort as "name/" so that the walk yields keys in byte order:
// "a-c" < "a/b" because '-' < '/', although "a" < "a-c".
// Returns 0, or the errno that stopped the reading.
int read_entries(Fd dir, std::vector<Entry>* entries) {
  DIR* stream = ::fdopendir(dir.get());
  if (!stream) return errno;
  const int fd = dir.release();  // now owned by stream
  int err = 0;
  while (true) {
    errno = 0;  // readdir signals an error only through errno
    const dirent* e = ::readdir(stream);
    if (!e) {
      err = errno;
      break;
    }
    const std::string_view name = e->d_name;
    if (name == "." || name == "..") continue;
    unsigned char type = e->d_type;
    struct stat st;
    if (type == DT_UNKNOWN && stat_entry(fd, e->d_name, &st))
      type = S_ISDIR(st.st_mode) ? DT_DIR : S_ISREG(st.st_mode) ? DT_REG : 0;
    // Symlinks, devices and the like are not objects: skip them.
    if (type == DT_DIR) entries->push_back({std::string(name) + "/", true});
    if (type == DT_REG) entries->push_back({std::string(name), false});
  }
  ::closedir(stream);
  std::sort(entries->begin(), entries->end(),
            [](const Entry& a, const Entry& b) { return a.sort_name < b.sort_name; });
  return err;
}

// A second handle on dir with its own read position, so that concurrent
// listings of one folder do not share a readdir cursor.
Fd reopen_dir(int dir_fd) { return Fd(::openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)); }

// Removes crash leftovers below dir: temp files, then folders left empty.
// Best effort: whatever remains is invisible to readers anyway.
void clean_folder(int dir_fd) {
  std::vector<Entry> entries;
  if (read_entries(reopen_dir(dir_fd), &entries) != 0) return;
  for (const Entry& e : entries) {
    if (!e.is_dir) {
      if (is_temp_name(e.sort_name)) ::unlinkat(dir_fd, e.sort_name.c_str(), 0);
      continue;
    }
    const std::string name = e.sort_name.substr(0, e.sort_name.size() - 1);
    Fd sub(open_dir_nofollow(dir_fd, name));
    if (!sub) continue;
    clean_folder(sub.get());
    ::unlinkat(dir_fd, name.c_str(), AT_REMOVEDIR);  // fails unless empty
  }
}

// ---------------------------------------------------------------------------
// Listing: a depth-first walk in key order that skips whole folders which
// cannot hold a wanted key, and stops one key past the page.
// ---------------------------------------------------------------------------

class Lister {
 public:
  Lister(std::string_view prefix, std::string_view start_after, size_t limit)
      : prefix_(prefix), start_after_(start_after), limit_(limit) {}

  // Returns 0, or the errno that stopped the walk.
  int walk(int dir_fd, const std::string& base) {
    std::vector<Entry> entries;
    if (const int err = read_entries(reopen_dir(dir_fd), &entries); err != 0) return err;
    for (const Entry& e : entries) {
      if (done_) return 0;
      const std::string key = base + e.sort_name;
      const int err = e.is_dir ? enter(dir_fd, e, key) : consider(key);
      if (err) return err;
    }
    return 0;
  }

  BlobPage take_page() { return std::move(page_); }

 private:
  int enter(int dir_fd, const Entry& e, const std::string& key) {
    if (!may_hold_wanted(key)) return 0;
    const std::string name = e.sort_name.substr(0, e.sort_name.size() - 1);
    Fd sub(open_dir_nofollow(dir_fd, name));
    if (!sub) {
      // Removed or replaced since we read the folder: nothing to list.
      if (errno == ENOENT || errno == ENOTDIR || errno == ELOOP) return 0;
      return errno;
    }
    return walk(sub.get(), key);
  }

  int consider(const std::string& key) {
    if (key <= start_after_ || !key.starts_with(prefix_)) return 0;
    std::string why;
    // A file put there by hand under a name no key can have is not listed,
    // so every listed key can be passed to get.
    if (!valid_local_key(key, &why)) return 0;
    if (page_.keys.size() == limit_) {
      page_.truncated = true;
      page_.next_start_after = page_.keys.back();
      done_ = true;
      return 0;
    }
    page_.keys.push_back(key);
    return 0;
  }

  // folder_key ends with '/'; every key below it begins with folder_key.
  bool may_hold_wanted(const std::string& folder_key) const {
    const bool prefix_fits = folder_key.starts_with(prefix_) || prefix_.starts_with(folder_key);
    // Keys below sort after folder_key; if folder_key < start_after without
    // being its prefix, they all sort before start_after too.
    const bool after_start = folder_key > start_after_ || start_after_.starts_with(folder_key);
    return prefix_fits && after_start;
  }

  const std::string prefix_;
  const std::string start_after_;
  const size_t limit_;
  BlobPage page_;
  bool done_ = false;
};

}  // namespace

// ---------------------------------------------------------------------------
// LocalBlobStore
// ---------------------------------------------------------------------------

LocalBlobStore::LocalBlobStore(fs::path root) {
  std::error_code ec;
  root_ = fs::absolute(root, ec).lexically_normal();
  if (!root_.has_filename()) root_ = root_.parent_path();  // drop trailing '/'
  fs::create_directories(root_, ec);
  // The root itself may be a symlink (an operator's choice); nothing below
  // it is followed.
  root_fd_ = ::open(root_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (root_fd_ < 0) {
    open_status_ = io_failure("open folder", root_.string(), errno);
    return;
  }
  clean_folder(root_fd_);
}

LocalBlobStore::~LocalBlobStore() {
  if (root_fd_ >= 0) ::close(root_fd_);
}

BlobStatus LocalBlobStore::check_key(std::string_view key) const {
  if (!open_status_.ok()) return open_status_;
  const auto refuse = [&](std::string_view why) {
    return BlobStatus::failure(BlobError::invalid_key,
                               "blob store: key " + quoted(key) + " refused: " + std::string(why));
  };
  std::string why;
  if (!valid_local_key(key, &why)) return refuse(why);
  if (!lexically_inside(root_, key)) return refuse("it leads outside the folder");
  return BlobStatus::success();
}

namespace {

enum class PutStep { done, retry };
constexpr int kPutAttempts = 40;  // see LocalBlobStore::put

// Writes bytes to a new temp file in dir; on success *name holds its name.
BlobStatus write_temp(int dir, std::string_view key, std::string_view bytes, std::string* name,
                      PutStep* step) {
  Fd file;
  for (int attempt = 0;; ++attempt) {
    *name = temp_name();
    file = Fd(
        ::openat(dir, name->c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666));
    if (file) break;
    if (errno == ENOENT) return *step = PutStep::retry, BlobStatus::success();
    if (errno != EEXIST || attempt == 8) return io_failure("create a temp file for", key, errno);
  }
  // fsync before rename: otherwise a crash could leave the new name
  // pointing at a file whose data never reached the disk.
  if (!write_all(file.get(), bytes) || ::fsync(file.get()) != 0 || ::close(file.release()) != 0) {
    const int err = errno;
    ::unlinkat(dir, name->c_str(), 0);
    return io_failure("write", key, err);
  }
  return BlobStatus::success();
}

// Moves the temp file over the object's name and makes that durable.
BlobStatus publish_temp(int dir, const std::string& temp, const std::string& name,
                        std::string_view key) {
  if (::renameat(dir, temp.c_str(), dir, name.c_str()) != 0) {
    const int err = errno;
    ::unlinkat(dir, temp.c_str(), 0);
    if (err == EISDIR || err == ENOTEMPTY || err == EEXIST)
      return conflict(key, "is a folder of other keys");
    return io_failure("store", key, err);
  }
  if (::fsync(dir) != 0) return io_failure("sync the folder of", key, errno);
  return BlobStatus::success();
}

BlobStatus put_once(int root_fd, std::string_view key, std::string_view bytes, PutStep* step) {
  *step = PutStep::done;
  const std::vector<std::string> segments = split_key(key);
  FolderChain chain{root_fd, {}};
  int err = 0;
  switch (open_chain(segments, /*create=*/true, &chain, &err)) {
    case Walk::ok:
      break;
    case Walk::vanished:
      return *step = PutStep::retry, BlobStatus::success();
    case Walk::blocked:
      return conflict(key, "cannot be stored: a file or symbolic link is in its path");
    case Walk::absent:  // not returned when creating
    case Walk::error:
      return io_failure("make the folders of", key, err);
  }
  std::string temp;
  BlobStatus status = write_temp(chain.leaf(), key, bytes, &temp, step);
  if (!status.ok() || *step == PutStep::retry) return status;
  return publish_temp(chain.leaf(), temp, segments.back(), key);
}

}  // namespace

BlobStatus LocalBlobStore::put(std::string_view key, std::string_view bytes) {
  if (BlobStatus s = check_key(key); !s.ok()) return s;
  // A concurrent del may prune a folder between our making or opening it
  // and writing into it (the sync of a new folder's parent leaves it empty
  // for milliseconds); a fresh walk recreates it. Dels of the folder's
  // other keys can win several times in a row (a CI run of the unit test
  // with 3 threads putting and deleting in one folder saw 15 of 900 puts
  // fail when 5 tries were the bound): past the first tries each waits a
  // little longer, about a fifth of a second in all, bounded in case
  // something keeps deleting the folders.
  for (int attempt = 0; attempt < kPutAttempts; ++attempt) {
    PutStep step;
    BlobStatus status = put_once(root_fd_, key, bytes, &step);
    if (step == PutStep::done) return status;
    if (attempt >= 3) std::this_thread::sleep_for(std::chrono::microseconds(250 * attempt));
  }
  return io_failure("store", key, ENOENT);
}

BlobResult<std::optional<std::string>> LocalBlobStore::get(std::string_view key) {
  if (BlobStatus s = check_key(key); !s.ok()) return {std::move(s)};
  const std::vector<std::string> segments = split_key(key);
  FolderChain chain{root_fd_, {}};
  int err = 0;
  const Walk w = open_chain(segments, /*create=*/false, &chain, &err);
  if (w == Walk::error) return {io_failure("read", key, err)};
  if (w != Walk::ok) return {};  // no folder, or a file/link in the way
  // O_NONBLOCK so that a FIFO planted at the key cannot hang us.
  Fd file(::openat(chain.leaf(), segments.back().c_str(),
                   O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  if (!file) {
    if (errno == ENOENT || errno == ELOOP || errno == ENOTDIR) return {};
    return {io_failure("read", key, errno)};
  }
  struct stat st;
  if (::fstat(file.get(), &st) != 0) return {io_failure("read", key, errno)};
  if (!S_ISREG(st.st_mode)) return {};  // a folder or device is not an object
  std::string bytes;
  if (!read_all(file.get(), static_cast<size_t>(st.st_size), &bytes))
    return {io_failure("read", key, errno)};
  return {BlobStatus::success(), std::move(bytes)};
}

BlobResult<bool> LocalBlobStore::exists(std::string_view key) {
  if (BlobStatus s = check_key(key); !s.ok()) return {std::move(s)};
  const std::vector<std::string> segments = split_key(key);
  FolderChain chain{root_fd_, {}};
  int err = 0;
  const Walk w = open_chain(segments, /*create=*/false, &chain, &err);
  if (w == Walk::error) return {io_failure("look up", key, err)};
  if (w != Walk::ok) return {BlobStatus::success(), false};
  struct stat st;
  if (!stat_entry(chain.leaf(), segments.back().c_str(), &st)) {
    if (errno == ENOENT || errno == ENOTDIR) return {BlobStatus::success(), false};
    return {io_failure("look up", key, errno)};
  }
  return {BlobStatus::success(), S_ISREG(st.st_mode)};
}

namespace {

// Removes the folders of chain that the delete left empty, deepest first,
// stopping at the first that still holds something. Never the root.
void prune_empty(FolderChain& chain, const std::vector<std::string>& segments) {
  for (size_t level = chain.dirs.size(); level-- > 0;) {
    chain.dirs.pop_back();  // close our handle before removing the folder
    if (::unlinkat(chain.parent_of(level), segments[level].c_str(), AT_REMOVEDIR) != 0) return;
  }
}

}  // namespace

BlobResult<bool> LocalBlobStore::del(std::string_view key) {
  if (BlobStatus s = check_key(key); !s.ok()) return {std::move(s)};
  const std::vector<std::string> segments = split_key(key);
  FolderChain chain{root_fd_, {}};
  int err = 0;
  const Walk w = open_chain(segments, /*create=*/false, &chain, &err);
  if (w == Walk::error) return {io_failure("delete", key, err)};
  if (w != Walk::ok) return {BlobStatus::success(), false};
  const char* name = segments.back().c_str();
  struct stat st;
  // Only regular files are objects; a planted symlink is left alone.
  if (!stat_entry(chain.leaf(), name, &st) || !S_ISREG(st.st_mode))
    return {BlobStatus::success(), false};
  if (::unlinkat(chain.leaf(), name, 0) != 0) {
    if (errno == ENOENT) return {BlobStatus::success(), false};  // lost a race
    return {io_failure("delete", key, errno)};
  }
  if (::fsync(chain.leaf()) != 0) return {io_failure("sync the folder of", key, errno)};
  prune_empty(chain, segments);
  return {BlobStatus::success(), true};
}

BlobResult<BlobPage> LocalBlobStore::list(std::string_view prefix, std::string_view start_after,
                                          size_t limit) {
  if (!open_status_.ok()) return {open_status_};
  if (limit == 0 || limit > max_list_limit) limit = max_list_limit;
  // prefix and start_after are only compared with keys, never turned into
  // paths, so they need no validation to be safe.
  Lister lister(prefix, start_after, limit);
  if (const int err = lister.walk(root_fd_, ""); err != 0) return {io_failure("list", prefix, err)};
  return {BlobStatus::success(), lister.take_page()};
}

}  // namespace gv::stores
