#pragma once
// A SQLite VFS over the default one ("unix") that writes each commit's WAL
// frames with one system call instead of two per frame.
//
// SQLite writes a WAL frame as its 24-byte header and then its page, each
// with its own pwrite(); a group commit of 40 frames costs 80 calls on the
// writer's thread, where every queued write waits, and each of those
// unaligned writes touches two pages of the file's cache (about 3.7 us per
// frame, against 0.4 us when the frames go in one call, measured on the
// development machine). This VFS gathers the contiguous writes to a WAL
// file in memory and writes them at once when the commit frame (the frame
// whose header carries the database size) is complete, inside that
// xWrite: a failure is that write's error, as without the VFS, and SQLite
// makes the commit visible to readers (the wal-index header) only after
// it. Only a frame's header appended at the end of what was written, and
// its page right after, are gathered; anything else on the file (the WAL
// header, a frame or checksum rewritten in place, a write split at a sync
// point, a read, sync, truncate, size, file control, close) writes what is
// gathered first, and itself at once. Only the writer's WAL (link_wal)
// gathers; other files pass straight through.
//
// Only stores/ uses it; the file format is SQLite's own, so the sqlite3
// shell, backups and other processes read the files as before.

struct sqlite3;  // <sqlite3.h>, kept out of this header

namespace gv::stores {

// Registers the VFS once (not as the default) and returns its name, for
// sqlite3_open_v2. nullptr if it could not be registered (no default VFS):
// the caller opens with the default then.
const char* wal_coalescing_vfs();

// Gathers the WAL writes of db (opened through the VFS, in WAL mode, its
// WAL open), from now on; other connections' WALs are written through. At
// the end of each write transaction (the wal-index write lock let go) what
// a rolled-back transaction left gathered is dropped. False (nothing
// gathered) if db's files are not this VFS's.
bool link_wal(sqlite3* db);

// The most one write call to SQLite's Unix file layer may carry, in whole
// 4 KiB pages: it writes less than 128 KiB per call (it masks larger
// counts with 0x1ffff, and a write of a multiple of 128 KiB writes nothing
// and fails with SQLITE_FULL, "database or disk is full"; SQLite 3.40,
// Debian 12).
inline constexpr int kUnixWriteMaxBytes = (128 << 10) - 4096;

// Bytes gathered at most before they are written anyway: a group commit of
// 40 frames (165 KB) is two calls.
inline constexpr long long kWalGatherBytes = kUnixWriteMaxBytes;

}  // namespace gv::stores
