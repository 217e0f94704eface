#include "stores/sqlite_wal_vfs.hpp"

#include <sqlite3.h>

#include <cstring>
#include <memory>
#include <new>
#include <vector>

namespace gv::stores {
namespace {

constexpr int kFrameHeaderBytes = 24;  // a WAL frame's header, before its page

sqlite3_vfs* real_vfs = nullptr;  // the default VFS this one wraps
sqlite3_vfs shim_vfs{};

// SQLite allocates szOsFile bytes per open file: this, then the real
// VFS's file right after it.
struct File {
  sqlite3_file base;           // pMethods: the methods below
  sqlite3_file* real;          // the wrapped file, in the same allocation
  bool wal;                    // a WAL file
  bool header_gathered;        // the last write was a frame header, gathered: its page is next
  bool commit;                 // that header is the commit frame's
  long long gathered_at;       // file offset of pending's first byte
  long long end;               // just past the last write through this handle; -1: none yet
  std::vector<char>* pending;  // on a linked WAL (link_wal): what is gathered
  File* db_of_wal;  // on a WAL: the database file it is linked to (link_wal); gathers only then
  File* wal_of_db;  // on a database file: its linked WAL
};

File* as_file(sqlite3_file* f) { return reinterpret_cast<File*>(f); }
const sqlite3_io_methods* real_methods(File* f) { return f->real->pMethods; }

// Writes what is gathered; the real write's result.
int flush(File* f) {
  if (!f->pending || f->pending->empty()) return SQLITE_OK;
  int rc = real_methods(f)->xWrite(f->real, f->pending->data(),
                                   static_cast<int>(f->pending->size()), f->gathered_at);
  f->pending->clear();
  return rc;
}

// The same before another method: its failure is an I/O error there, which
// makes SQLite roll the whole transaction back (SQLITE_FULL from a read
// would undo only the statement, and the commit would go on without the
// frames).
int flush_before(File* f) {
  int rc = flush(f);
  return rc == SQLITE_OK ? rc : SQLITE_IOERR_WRITE;
}

// Drops what is gathered: the frames of a transaction rolled back.
void discard(File* f) {
  if (!f->pending || f->pending->empty()) return;
  f->end = f->gathered_at;
  f->pending->clear();
  f->header_gathered = f->commit = false;
}

int x_close(sqlite3_file* p) {
  File* f = as_file(p);
  int flushed = flush_before(f);
  if (f->db_of_wal) f->db_of_wal->wal_of_db = nullptr;
  if (f->wal_of_db) f->wal_of_db->db_of_wal = nullptr;
  int rc = real_methods(f)->xClose(f->real);
  delete f->pending;
  f->pending = nullptr;
  return flushed != SQLITE_OK ? flushed : rc;
}

int x_read(sqlite3_file* p, void* out, int amount, sqlite3_int64 offset) {
  File* f = as_file(p);
  if (int rc = flush_before(f); rc != SQLITE_OK) return rc;
  return real_methods(f)->xRead(f->real, out, amount, offset);
}

bool is_page_size(int amount) { return amount >= 512 && (amount & (amount - 1)) == 0; }

// Gathers bytes appended at the end of what was written: a frame's header
// or, right after it, its page.
int gather(File* f, const void* data, int amount, sqlite3_int64 offset) {
  auto& pending = *f->pending;
  // Never allocates (no exception may cross SQLite's C frames): reserved
  // by link_wal, and a header or a page (at most 64 KiB) goes in only
  // after a flush past kWalGatherBytes.
  if (static_cast<long long>(pending.size()) + amount > kWalGatherBytes)
    if (int rc = flush(f); rc != SQLITE_OK) return rc;
  if (pending.empty()) f->gathered_at = offset;
  const char* bytes = static_cast<const char*>(data);
  pending.insert(pending.end(), bytes, bytes + amount);
  f->end = offset + amount;
  return SQLITE_OK;
}

int x_write(sqlite3_file* p, const void* data, int amount, sqlite3_int64 offset) {
  File* f = as_file(p);
  if (!f->db_of_wal) return real_methods(f)->xWrite(f->real, data, amount, offset);
  const bool appended = offset == f->end;
  if (appended && amount == kFrameHeaderBytes) {
    // A new frame's header: bytes 4..7 are the database size in pages
    // after a commit, 0 in the other frames of a transaction.
    const char* bytes = static_cast<const char*>(data);
    if (int rc = gather(f, data, amount, offset); rc != SQLITE_OK) return rc;
    f->header_gathered = true;
    f->commit = std::memcmp(bytes + 4, "\0\0\0\0", 4) != 0;
    return SQLITE_OK;
  }
  if (appended && f->header_gathered && is_page_size(amount)) {
    f->header_gathered = false;
    if (int rc = gather(f, data, amount, offset); rc != SQLITE_OK) return rc;
    // The commit frame's page ends what the commit writes before SQLite
    // shows it to readers: written now, and a failure is the commit's.
    if (f->commit) {
      f->commit = false;
      return flush(f);
    }
    return SQLITE_OK;
  }
  // Anything else (the WAL's own header, a frame rewritten in place, its
  // checksums rewritten, a write split at a sync point): what is gathered,
  // then this write, at once.
  f->header_gathered = f->commit = false;
  if (int rc = flush(f); rc != SQLITE_OK) return rc;
  f->end = offset + amount;
  return real_methods(f)->xWrite(f->real, data, amount, offset);
}

int x_truncate(sqlite3_file* p, sqlite3_int64 size) {
  File* f = as_file(p);
  if (int rc = flush_before(f); rc != SQLITE_OK) return rc;
  return real_methods(f)->xTruncate(f->real, size);
}

int x_sync(sqlite3_file* p, int flags) {
  File* f = as_file(p);
  if (int rc = flush_before(f); rc != SQLITE_OK) return rc;
  return real_methods(f)->xSync(f->real, flags);
}

int x_file_size(sqlite3_file* p, sqlite3_int64* size) {
  File* f = as_file(p);
  if (int rc = flush_before(f); rc != SQLITE_OK) return rc;
  return real_methods(f)->xFileSize(f->real, size);
}

int x_lock(sqlite3_file* p, int level) {
  return real_methods(as_file(p))->xLock(as_file(p)->real, level);
}
int x_unlock(sqlite3_file* p, int level) {
  return real_methods(as_file(p))->xUnlock(as_file(p)->real, level);
}
int x_check_reserved_lock(sqlite3_file* p, int* out) {
  return real_methods(as_file(p))->xCheckReservedLock(as_file(p)->real, out);
}

int x_file_control(sqlite3_file* p, int op, void* arg) {
  File* f = as_file(p);
  if (int rc = flush_before(f); rc != SQLITE_OK) return rc;
  return real_methods(f)->xFileControl(f->real, op, arg);
}

int x_sector_size(sqlite3_file* p) {
  return real_methods(as_file(p))->xSectorSize(as_file(p)->real);
}
int x_device_characteristics(sqlite3_file* p) {
  return real_methods(as_file(p))->xDeviceCharacteristics(as_file(p)->real);
}

// Shared memory and memory mapping: the database file's, passed through
// (the default VFS's methods are version 3, checked in x_open).
int x_shm_map(sqlite3_file* p, int page, int size, int extend, void volatile** out) {
  return real_methods(as_file(p))->xShmMap(as_file(p)->real, page, size, extend, out);
}
int x_shm_lock(sqlite3_file* p, int offset, int n, int flags) {
  File* f = as_file(p);
  // The write lock (lock 0 of the wal-index) let go: the write
  // transaction is over. A commit wrote all it gathered; what is left
  // belongs to one rolled back, and must not be written after another
  // writer (another process) may have taken the WAL over.
  if (f->wal_of_db && offset == 0 && (flags & SQLITE_SHM_UNLOCK) && (flags & SQLITE_SHM_EXCLUSIVE))
    discard(f->wal_of_db);
  return real_methods(f)->xShmLock(f->real, offset, n, flags);
}
void x_shm_barrier(sqlite3_file* p) { real_methods(as_file(p))->xShmBarrier(as_file(p)->real); }
int x_shm_unmap(sqlite3_file* p, int remove) {
  return real_methods(as_file(p))->xShmUnmap(as_file(p)->real, remove);
}
int x_fetch(sqlite3_file* p, sqlite3_int64 offset, int amount, void** out) {
  return real_methods(as_file(p))->xFetch(as_file(p)->real, offset, amount, out);
}
int x_unfetch(sqlite3_file* p, sqlite3_int64 offset, void* mapped) {
  return real_methods(as_file(p))->xUnfetch(as_file(p)->real, offset, mapped);
}

const sqlite3_io_methods shim_methods = {
    3,
    x_close,
    x_read,
    x_write,
    x_truncate,
    x_sync,
    x_file_size,
    x_lock,
    x_unlock,
    x_check_reserved_lock,
    x_file_control,
    x_sector_size,
    x_device_characteristics,
    x_shm_map,
    x_shm_lock,
    x_shm_barrier,
    x_shm_unmap,
    x_fetch,
    x_unfetch,
};

int x_open(sqlite3_vfs*, sqlite3_filename name, sqlite3_file* p, int flags, int* out_flags) {
  File* f = as_file(p);
  f->base.pMethods = nullptr;
  f->real = reinterpret_cast<sqlite3_file*>(f + 1);
  f->wal = (flags & SQLITE_OPEN_WAL) != 0;
  f->header_gathered = f->commit = false;
  f->gathered_at = 0;
  f->end = -1;
  f->pending = nullptr;
  f->db_of_wal = f->wal_of_db = nullptr;
  int rc = real_vfs->xOpen(real_vfs, name, f->real, flags, out_flags);
  if (rc != SQLITE_OK || !f->real->pMethods) return rc;
  if (f->real->pMethods->iVersion < 3) {
    // Older methods than the default unix VFS's: refused, rather than
    // offered through shim_methods, which would call ones they lack.
    f->real->pMethods->xClose(f->real);
    return SQLITE_CANTOPEN;
  }
  f->base.pMethods = &shim_methods;
  return SQLITE_OK;
}

// The VFS's other methods: the real VFS's, given the real VFS.
int x_delete(sqlite3_vfs*, const char* name, int sync_dir) {
  return real_vfs->xDelete(real_vfs, name, sync_dir);
}
int x_access(sqlite3_vfs*, const char* name, int flags, int* out) {
  return real_vfs->xAccess(real_vfs, name, flags, out);
}
int x_full_pathname(sqlite3_vfs*, const char* name, int n, char* out) {
  return real_vfs->xFullPathname(real_vfs, name, n, out);
}
void* x_dl_open(sqlite3_vfs*, const char* name) { return real_vfs->xDlOpen(real_vfs, name); }
void x_dl_error(sqlite3_vfs*, int n, char* out) { real_vfs->xDlError(real_vfs, n, out); }
void (*x_dl_sym(sqlite3_vfs*, void* handle, const char* symbol))(void) {
  return real_vfs->xDlSym(real_vfs, handle, symbol);
}
void x_dl_close(sqlite3_vfs*, void* handle) { real_vfs->xDlClose(real_vfs, handle); }
int x_randomness(sqlite3_vfs*, int n, char* out) { return real_vfs->xRandomness(real_vfs, n, out); }
int x_sleep(sqlite3_vfs*, int us) { return real_vfs->xSleep(real_vfs, us); }
int x_current_time(sqlite3_vfs*, double* out) { return real_vfs->xCurrentTime(real_vfs, out); }
int x_get_last_error(sqlite3_vfs*, int n, char* out) {
  return real_vfs->xGetLastError ? real_vfs->xGetLastError(real_vfs, n, out) : 0;
}
int x_current_time_int64(sqlite3_vfs*, sqlite3_int64* out) {
  return real_vfs->xCurrentTimeInt64(real_vfs, out);
}

}  // namespace

bool link_wal(sqlite3* db) {
  sqlite3_file* main = nullptr;
  sqlite3_file* wal = nullptr;
  if (sqlite3_file_control(db, "main", SQLITE_FCNTL_FILE_POINTER, &main) != SQLITE_OK ||
      sqlite3_file_control(db, "main", SQLITE_FCNTL_JOURNAL_POINTER, &wal) != SQLITE_OK)
    return false;
  if (!main || !wal || main->pMethods != &shim_methods || wal->pMethods != &shim_methods)
    return false;
  File* m = as_file(main);
  File* w = as_file(wal);
  if (!w->wal) return false;
  if (!w->pending) {
    // Its one allocation: gather() never allocates.
    try {
      auto pending = std::make_unique<std::vector<char>>();
      pending->reserve(kWalGatherBytes);
      w->pending = pending.release();
    } catch (const std::bad_alloc&) {
      return false;
    }
  }
  m->wal_of_db = w;
  w->db_of_wal = m;
  return true;
}

const char* wal_coalescing_vfs() {
  static const char* name = []() -> const char* {
    real_vfs = sqlite3_vfs_find(nullptr);
    if (!real_vfs || real_vfs->iVersion < 2 || !real_vfs->xCurrentTimeInt64) return nullptr;
    shim_vfs.iVersion = 2;
    shim_vfs.szOsFile = static_cast<int>(sizeof(File)) + real_vfs->szOsFile;
    shim_vfs.mxPathname = real_vfs->mxPathname;
    shim_vfs.zName = "grapevine-wal";
    shim_vfs.xOpen = x_open;
    shim_vfs.xDelete = x_delete;
    shim_vfs.xAccess = x_access;
    shim_vfs.xFullPathname = x_full_pathname;
    shim_vfs.xDlOpen = x_dl_open;
    shim_vfs.xDlError = x_dl_error;
    shim_vfs.xDlSym = x_dl_sym;
    shim_vfs.xDlClose = x_dl_close;
    shim_vfs.xRandomness = x_randomness;
    shim_vfs.xSleep = x_sleep;
    shim_vfs.xCurrentTime = x_current_time;
    shim_vfs.xGetLastError = x_get_last_error;
    shim_vfs.xCurrentTimeInt64 = x_current_time_int64;
    if (sqlite3_vfs_register(&shim_vfs, 0) != SQLITE_OK) return nullptr;
    return shim_vfs.zName;
  }();
  return name;
}

}  // namespace gv::stores
