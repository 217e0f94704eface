// SqliteDatabase: the embedded SQL store behind gv::stores::SqlDatabase, one
// SQLite file per plugin.
//
// Connections: one writer and a pool of readers, all on the same file in
// WAL mode, so readers keep reading their snapshot while a writer works.
// - write() takes the in-process write lock, then (unless a group is open,
//   below) BEGIN IMMEDIATE (the file's write lock, which other processes may
//   hold). Both waits together are bounded by busy_timeout_ms; past it
//   write() returns busy without running its work, so an overloaded or
//   locked database answers 503 quickly instead of queueing requests
//   without end.
// - read() leases a reader (query_only) for a deferred transaction; waiting
//   for a free reader is bounded by the same timeout. Readers never take
//   part in group commit.
// - Every connection has foreign_keys=ON and an LRU cache of prepared
//   statements keyed by SQL text (kStatementCacheSize entries), so plugins
//   pass constant SQL strings and pay for parsing once per connection.
//   SQLite re-prepares a cached statement by itself after a schema change.
//
// Group commit. A COMMIT costs far more than a small write (a WAL sync at
// synchronous=FULL), so concurrent write() calls share one:
// - The write lock passes from caller to caller; each caller runs its own
//   work on its own thread (thread-locals and the nesting check rely on
//   it), inside the group's transaction, within its own SAVEPOINT.
// - The first caller of a group runs BEGIN IMMEDIATE. After each work the
//   caller RELEASEs its savepoint, or, if the work failed, threw, or one
//   of its statements failed, rolls back to it and releases it: only that
//   caller's changes are undone, and only it sees its failure (or its
//   exception, rethrown on its thread, at once).
// - Then, if other writers are waiting for the lock and the group holds
//   fewer than max_group_size works and its first work ended less than
//   kMaxCommitDelay ago, the caller hands the lock to one of them without
//   committing. Otherwise it commits the group (or rolls it back if it is
//   broken) and wakes its members. When nobody waits yet but writers are
//   concurrent (this group or the last one ran several works), the caller
//   first yields the CPU once (std::this_thread::yield): the members of the
//   last group, just woken, are usually about to write again, and this lets
//   them queue up. Without it, groups stay near one work at
//   synchronous=NORMAL, where a COMMIT is shorter than a thread's wake-up.
//   A lone writer never yields (that could only give the CPU away).
// - A member whose work succeeded returns only once the group's COMMIT is
//   done, with its result: nothing acknowledged is lost at the configured
//   synchronous level. A failed COMMIT is rolled back and fails every
//   member that was waiting for it.
// - A group is broken when its transaction cannot go on: SQLite rolled it
//   back entirely (an ON CONFLICT ROLLBACK clause, RAISE(ROLLBACK), I/O
//   errors, out of memory) or a SAVEPOINT statement failed. Then no one
//   joins it, it is rolled back, and members waiting for it get io (for
//   medium failures) or busy (retry: another write in its group undid it).
// So a caller's wait is bounded by busy_timeout_ms for the lock, plus, once
// its work is done, the works of later members (at most max_group_size - 1
// more, each started within kMaxCommitDelay of the group's first work's
// end) and one COMMIT.
//
// Error mapping: BUSY/LOCKED -> busy; CONSTRAINT_* -> constraint;
// IOERR/FULL/CORRUPT/NOTADB/CANTOPEN/NOMEM/READONLY(file) -> io; everything
// else (ERROR, RANGE, MISMATCH, AUTH, TOOBIG...) -> invalid.
//
// sqlite3.h is not included here: nothing outside this store's .cpp sees
// SQLite.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
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
  // Group commit: how many write() works at most share one COMMIT, at least
  // 1. 1 disables grouping (one transaction per write(), as without group
  // commit); larger groups save commits under load but make the first
  // members of a group wait for the later ones.
  int max_group_size = 64;
};

// Counters of the write side since open(), for tests and metrics.
struct SqliteWriteStats {
  uint64_t works = 0;    // write() works run (each called once)
  uint64_t commits = 0;  // COMMITs that succeeded, each of one group
};

class SqliteDatabase final : public SqlDatabase {
 public:
  static constexpr size_t kStatementCacheSize = 64;
  // No one joins a group whose first work ended longer ago than this: the
  // member then running commits it. Bounds how long finished works wait for
  // later ones when writers keep arriving (slow works, say).
  static constexpr std::chrono::milliseconds kMaxCommitDelay{10};

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

  // The write counters so far; works / commits is the mean group size.
  SqliteWriteStats write_stats() const;

  // Runs PRAGMA integrity_check on a reader and returns its lines joined by
  // '\n': exactly "ok" for a sound file.
  SqlResult<std::string> integrity_check();

  const std::filesystem::path& path() const { return path_; }

  // Internal; defined in the .cpp (public only so helpers there can name
  // it).
  struct Connection;

 private:
  using Clock = std::chrono::steady_clock;
  struct Group;

  SqliteDatabase(std::filesystem::path path, const SqliteOptions& options);
  SqlStatus open_connections();
  bool take_writer(Clock::time_point deadline);
  void give_back_writer();
  SqlStatus run_member(Group& group, const SqlWork& work, std::exception_ptr& thrown);
  void end_turn(Group& group);
  SqlStatus await_commit(Group& group);
  SqlResult<Connection*> lease_reader(Clock::time_point deadline);
  void return_reader(Connection* reader);

  std::filesystem::path path_;
  SqliteOptions options_;

  // The writer is taken for one work of a group (and, by the group's last
  // member, for its COMMIT). A flag under a mutex rather than a
  // std::timed_mutex: waits are bounded the same way, the number of
  // waiters is known (group commit hands over only when someone waits),
  // and thread sanitizers understand condition variables.
  std::mutex writer_mutex_;  // guards the three ints below
  std::condition_variable writer_freed_;
  bool writer_taken_ = false;
  int writers_waiting_ = 0;
  int last_group_works_ = 0;  // how many works the last group ran
  std::unique_ptr<Connection> writer_;
  // The group whose transaction is open on writer_, if any; only the
  // writer's holder reads or changes this pointer.
  std::shared_ptr<Group> open_group_;
  std::atomic<uint64_t> works_{0};
  std::atomic<uint64_t> commits_{0};

  std::mutex readers_mutex_;  // guards idle_readers_
  std::condition_variable reader_freed_;
  std::vector<std::unique_ptr<Connection>> readers_;
  std::vector<Connection*> idle_readers_;
};

}  // namespace gv::stores
