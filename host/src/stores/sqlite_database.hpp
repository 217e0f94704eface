// SqliteDatabase: the embedded SQL store behind gv::stores::SqlDatabase, one
// SQLite file per plugin.
//
// Connections: one writer and a pool of readers, all on the same file in
// WAL mode, so readers keep reading their snapshot while a writer works.
// - write() takes the in-process write mutex, then BEGIN IMMEDIATE (the
//   file's write lock, which other processes may hold). Both waits together
//   are bounded by busy_timeout_ms; past it write() returns busy, so an
//   overloaded or locked database answers 503 quickly instead of queueing
//   requests without end.
// - read() leases a reader (query_only) for a deferred transaction; waiting
//   for a free reader is bounded by the same timeout.
// - Every connection has foreign_keys=ON and an LRU cache of prepared
//   statements keyed by SQL text (kStatementCacheSize entries), so plugins
//   pass constant SQL strings and pay for parsing once per connection.
//   SQLite re-prepares a cached statement by itself after a schema change.
//
// Error mapping: BUSY/LOCKED -> busy; CONSTRAINT_* -> constraint;
// IOERR/FULL/CORRUPT/NOTADB/CANTOPEN/NOMEM/READONLY(file) -> io; everything
// else (ERROR, RANGE, MISMATCH, AUTH, TOOBIG...) -> invalid.
//
// sqlite3.h is not included here: nothing outside this store's .cpp sees
// SQLite.
#pragma once

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "stores/sql.hpp"

namespace gv::stores {

struct SqliteOptions {
  // How long write() may wait for the write lock (and read() for a free
  // reader) before returning busy. 0: do not wait.
  int busy_timeout_ms = 5000;
  // "NORMAL": a commit survives a process crash, and the database stays
  // consistent after a power loss (which may undo the last commits).
  // "FULL": a commit also survives power loss (one fsync per commit).
  // Case-insensitive; anything else is refused by open().
  std::string synchronous = "NORMAL";
  // Size of the reader pool, at least 1.
  int reader_connections = 4;
};

class SqliteDatabase final : public SqlDatabase {
 public:
  static constexpr size_t kStatementCacheSize = 64;

  // Opens (creating if absent) the database file at path and its
  // connections, switching it to WAL. The folder must exist. Fails with
  // invalid for bad options, busy if another process keeps the file locked
  // past the busy timeout, io if the file cannot be opened or is not a
  // database.
  static SqlResult<std::unique_ptr<SqliteDatabase>> open(const std::filesystem::path& path,
                                                         const SqliteOptions& options = {});

  // Closes every connection. No write() or read() may be running.
  ~SqliteDatabase() override;

  SqlStatus write(const SqlWork& work) override;
  SqlStatus read(const SqlWork& work) override;

  // Runs PRAGMA integrity_check on a reader and returns its lines joined by
  // '\n': exactly "ok" for a sound file.
  SqlResult<std::string> integrity_check();

  const std::filesystem::path& path() const { return path_; }

  // Internal; defined in the .cpp (public only so helpers there can name
  // it).
  struct Connection;

 private:
  using Clock = std::chrono::steady_clock;

  SqliteDatabase(std::filesystem::path path, const SqliteOptions& options);
  SqlStatus open_connections();
  bool take_writer(Clock::time_point deadline);
  void give_back_writer();
  SqlResult<Connection*> lease_reader(Clock::time_point deadline);
  void return_reader(Connection* reader);

  std::filesystem::path path_;
  SqliteOptions options_;

  // The writer is taken for a whole write transaction. A flag under a
  // mutex rather than a std::timed_mutex: waits are bounded the same way,
  // and thread sanitizers understand condition variables.
  std::mutex writer_mutex_;  // guards writer_taken_
  std::condition_variable writer_freed_;
  bool writer_taken_ = false;
  std::unique_ptr<Connection> writer_;

  std::mutex readers_mutex_;  // guards idle_readers_
  std::condition_variable reader_freed_;
  std::vector<std::unique_ptr<Connection>> readers_;
  std::vector<Connection*> idle_readers_;
};

}  // namespace gv::stores
