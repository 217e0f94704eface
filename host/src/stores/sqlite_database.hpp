// SqliteDatabase: the embedded SQL store behind gv::stores::SqlDatabase, one
// SQLite file per plugin.
//
// Connections: one writer and a pool of readers, all on the same file in
// WAL mode, so readers keep reading their snapshot while a writer works.
// - write() queues its work for the writer connection (below), which runs
//   it after BEGIN IMMEDIATE (the file's write lock, which other processes
//   may hold). A work not begun within busy_timeout_ms of its call is not
//   run and write() returns busy, so an overloaded or locked database
//   answers 503 quickly instead of queueing requests without end.
// - read() leases a reader (query_only) for a deferred transaction; waiting
//   for a free reader is bounded by the same timeout. Readers never take
//   part in group commit.
// - Every connection has foreign_keys=ON and an LRU cache of prepared
//   statements keyed by SQL text (kStatementCacheSize entries), so plugins
//   pass constant SQL strings and pay for parsing once per connection.
//   SQLite re-prepares a cached statement by itself after a schema change.
//
// Group commit. A COMMIT costs far more than a small write (WAL frames and
// locks; a sync at synchronous=FULL), so concurrent write() calls share one:
// - Callers queue. The first to find no leader leads: on its own thread it
//   runs the queued works one after the other in one transaction, each in
//   its own SAVEPOINT, taking works that arrive meanwhile too, until the
//   queue is empty, max_group_size works ran or kMaxCommitDelay passed
//   since the first ended. (An empty queue while writes keep arriving
//   close together: it may wait a little for the next, commit_wait.)
//   Then it commits, hands the lead to the caller
//   at the head of the queue, and wakes the members. The others sleep
//   meanwhile (in a BlockingRegion, so the worker pool runs other requests,
//   whose writes join the queue). No lock passes from thread to thread
//   between works, so a group costs one commit and one wake-up per member.
// - write_detached() queues a work with a completion instead of a waiting
//   caller: the leader calls it after the commit. With no caller to hand
//   the lead to, the leader goes on; a write() caller whose own work is
//   done hands such a lead to a thread of the database's own instead, and
//   so does a write_detached() caller that must not wait (a network thread
//   running a quick handler: NoWaitRegion in core/blocking.hpp) at once,
//   and any other after leading one group.
//   write_queued() joins the group under way like write_detached(), or,
//   with none, is a write() of its own: its caller leads no other group.
// - So a work may run on another thread than its caller's (the leader's).
//   Its caller is blocked until it ends; its exception is rethrown on the
//   caller's thread; a nested write() or read() of the same database from
//   inside a work is still refused. Works must not rely on thread-locals.
// - After each work the leader RELEASEs its savepoint, or, if the work
//   failed, threw, or one of its statements failed, rolls back to it and
//   releases it: only that caller's changes are undone, and only it sees
//   its failure (or exception), at once.
// - A member whose work succeeded returns only once the group's COMMIT is
//   done, with its result: nothing acknowledged is lost at the configured
//   synchronous level. A failed COMMIT is rolled back and fails every
//   member that was waiting for it.
// - A group is broken when its transaction cannot go on: SQLite rolled it
//   back entirely (an ON CONFLICT ROLLBACK clause, RAISE(ROLLBACK), I/O
//   errors, out of memory) or a SAVEPOINT statement failed. It is rolled
//   back, and its earlier members get io (for medium failures) or busy
//   (retry: another write in its group undid it); later works run in a new
//   transaction.
// So a caller's wait is bounded by busy_timeout_ms until its work begins,
// plus, once its work is done, the works of later members (at most
// max_group_size - 1 more, each begun within kMaxCommitDelay of the
// group's first work's end) and one COMMIT.
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
#include <deque>
#include <exception>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "stores/sql.hpp"

struct sqlite3;  // <sqlite3.h>, kept out of this header

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
  // Group commit: when the queue is empty but writes have been arriving
  // less than this far apart, the leader waits for the next one (up to
  // twice the recent gap, and this long after the group's first work
  // ended) before it commits, so that more share the commit. A wait that
  // brought no work is not tried again for 1, 2, 4 ... 64 groups (a lone
  // writer, or every writer already in the group). 0: commit as soon as
  // the queue is empty.
  std::chrono::microseconds commit_wait{0};
  // With commit_wait: how many of the host's requests may still queue a
  // write (its dispatcher's, whose handlers have not returned). The leader
  // waits only while there are some: when every client's request is in
  // the group already (a few clients each waiting for its answer), none
  // can come. Unset: not checked.
  std::function<int64_t()> under_way;
  // Bytes of the file each connection maps into memory (PRAGMA mmap_size):
  // reads of mapped pages cost no system call. 0 reads with pread only.
  int64_t mmap_bytes = 256 << 20;
  // How long the WAL grows under steady writes before the writer starts it
  // over (see on_wal_commit), at least 8 MiB (and kCheckpointPages +
  // kCheckpointStep pages). Each start-over is a
  // checkpoint on the writer, with two file syncs that every queued write
  // waits for (milliseconds, tens on a busy disk): a longer WAL has them
  // less often. Without steady writes the checkpointer catches up and the
  // WAL starts over near kCheckpointPages. The file stays at the longest
  // it has been; past twice this, writers wait for the checkpointer.
  int64_t wal_bytes = 256 << 20;
  // Where the completions of a group's detached works (write_detached,
  // write_queued) run once it has committed: given them as one job, it
  // returns false to have them run on the writing thread after all. Unset,
  // they run on the writing thread, and the next group waits for them;
  // the host hands them to its worker pool, so that the next group begins
  // at once. The database's lead thread runs its groups' completions
  // itself (see lead()).
  std::function<bool(std::function<void()>)> run_completions;
};

// Counters of the write side since open(), for tests and metrics.
struct SqliteWriteStats {
  uint64_t works = 0;    // write() works run (each called once)
  uint64_t commits = 0;  // COMMITs that succeeded, each of one group
  uint64_t waits = 0;    // groups whose leader waited for more works (commit_wait)
  uint64_t fruitless_waits = 0;  // of which no wait brought one
  // Commits that began the WAL anew once all of it was copied into the
  // file: past wal_bytes (a start-over, whose file syncs every queued write
  // waited for), or after the checkpointer caught up in a pause of the
  // writes. Each syncs the new WAL's header.
  uint64_t wal_restarts = 0;
};

class SqliteDatabase final : public SqlDatabase {
 public:
  static constexpr size_t kStatementCacheSize = 64;
  // No work joins a group whose first work ended longer ago than this: the
  // leader commits it. Bounds how long finished works wait for later ones
  // when writers keep arriving (slow works, say).
  static constexpr std::chrono::milliseconds kMaxCommitDelay{10};
  // Groups that commit without waiting (commit_wait) after fruitless waits
  // in a row, at most.
  static constexpr int kMaxWaitBackoff = 64;
  // A commit that leaves at least this many pages in the WAL wakes the
  // checkpointer (SQLite's own automatic checkpoint uses the same figure,
  // but runs it inside that commit, on the writer's thread).
  static constexpr int kCheckpointPages = 1000;
  // Past kCheckpointPages, the checkpointer is woken again once the WAL has
  // grown a quarter of the way to its start-over (restart_pages_), and at
  // least this many pages: a page written by many commits in a row (a
  // table's last leaf, an index's inner pages) is copied once per wake, not
  // once per commit; and the wakes come closer together near the start-over,
  // whose checkpoint on the writer then has only the last of them to copy.
  static constexpr int kCheckpointStep = kCheckpointPages / 4;
  // And at most this many: a reader looks a page up in the WAL-index's
  // blocks of 4,096 frames from the newest down to the first frame not yet
  // copied, so a longer wal_bytes does not make its searches longer, nor a
  // pass copy more at once. Under the default wal_bytes (65,536 pages of
  // 4 KiB) the wakes are this far apart but for the last 16,384 pages.
  static constexpr int kMaxCheckpointStep = 4096;
  // The checkpointer syncs the database file after its passes at most this
  // often, and after each pass once the WAL is within two steps of its
  // start-over (see run_checkpointer).
  static constexpr std::chrono::milliseconds kFileSyncInterval{100};
  // The checkpoint thread's nice value, above the other threads' (0): it
  // runs when they leave the CPU free, and takes little from them
  // otherwise (README: the POST p99 it saves under bench/api).
  static constexpr int kCheckpointerNice = 10;
  // Past twice SqliteOptions::wal_bytes a writer waits for a running
  // checkpoint, up to this many milliseconds, rather than commit on (see
  // on_wal_commit).
  static constexpr int kMaxCheckpointWaits = 5000;
  // A COMMIT (with the WAL's start-over, if on_wal_commit did it) that
  // takes this long is logged as a warning (one line a second at most):
  // every queued write waited for it.
  static constexpr std::chrono::milliseconds kSlowCommit{50};

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
  void write_detached(SqlWork work, std::function<void(SqlStatus)> done) override;
  void finish_writes() override;
  void write_queued(SqlWork work, std::function<void(SqlStatus)> done) override;
  SqlStatus read(const SqlWork& work) override;

  // The write counters so far; works / commits is the mean group size.
  SqliteWriteStats write_stats() const;
  // Checkpoints run by the background checkpointer so far.
  uint64_t checkpoints() const { return checkpoints_.load(); }

  // Runs PRAGMA integrity_check on a reader and returns its lines joined by
  // '\n': exactly "ok" for a sound file.
  SqlResult<std::string> integrity_check();

  const std::filesystem::path& path() const { return path_; }

  // Internal; defined in the .cpp (public only so helpers there can name
  // it).
  struct Connection;

 private:
  using Clock = std::chrono::steady_clock;
  struct Member;
  enum : int { kQueued, kLead, kDone };  // Member::state

  SqliteDatabase(std::filesystem::path path, const SqliteOptions& options);
  SqlStatus open_connections();
  // Leads one group, own (the caller's queued work, or null) among them;
  // true when detached works head the queue, which have no thread of their
  // own to hand the lead to: the caller leads again.
  bool lead(const Member* own);
  void lead_detached();
  // Has the lead thread (run_leader) lead the queue.
  void hand_lead();
  // Of the COMMIT under way (the writing thread's, one at a time): whether
  // on_wal_commit started the WAL over in it (the checkpoint that lets the
  // next transaction write from the WAL's start), how long that waited for
  // the checkpointer, and whether the COMMIT was the first of a new WAL
  // (whose header SQLite syncs before its frames); the WAL's pages after
  // the last commit (-1 before a first commit that begins the WAL); and
  // when a slow COMMIT was last logged.
  struct StartOver {
    bool done = false;
    int waited_ms = 0;
    bool new_wal = false;
  } start_over_;
  int wal_pages_ = 0;
  Clock::time_point slow_logged_at_;
  // Calls a detached member's completion with its result.
  static void complete(Member& m);
  SqlStatus run_member(Connection& c, Member& m, SqlStatus& broken);
  SqlResult<Connection*> lease_reader(Clock::time_point deadline);
  // When a call begun now gives up waiting (busy_timeout_ms).
  Clock::time_point busy_deadline() const {
    return Clock::now() + std::chrono::milliseconds(options_.busy_timeout_ms);
  }
  void run_checkpointer();
  void run_leader();
  static int on_wal_commit(void* self, ::sqlite3* db, const char* name, int pages);
  void return_reader(Connection* reader);

  std::filesystem::path path_;
  SqliteOptions options_;

  // write() callers in arrival order. The first caller to find no leader
  // leads: it runs queued works on writer_ and commits them; members wait
  // until it sets their state. leading_ is true from then until a leader
  // finds the queue empty.
  std::mutex queue_mutex_;  // guards queue_, leading_ and the arrival fields below
  std::deque<std::shared_ptr<Member>> queue_;
  bool leading_ = false;
  // Queues m (queue_mutex_ held) and notes when it came; true when the
  // leader waits for it (notify queue_cv_ once the lock is released).
  bool push_locked(std::shared_ptr<Member> m);
  Clock::time_point last_arrival_{};
  Clock::duration arrival_gap_ = Clock::duration::max();  // smoothed, between queued works
  bool collecting_ = false;  // the leader waits on queue_cv_ for another work
  std::condition_variable queue_cv_;
  // Backoff of fruitless waits; only the leader (one at a time) uses them.
  int wait_skip_ = 0;     // groups left that commit without waiting
  int wait_backoff_ = 0;  // the last skip, doubled after each fruitless wait
  std::atomic<uint64_t> waits_{0}, fruitless_waits_{0};
  std::unique_ptr<Connection> writer_;  // used by the leader only
  std::atomic<uint64_t> works_{0};
  std::atomic<uint64_t> commits_{0};

  // Checkpoints (copying the WAL into the file, with its fsync) run on
  // their own thread and connection, so that no commit waits for one.
  // Another thread leads queued detached works that a write() caller
  // leaves (run_leader): at the writers' priority, which the
  // checkpointer's is not.
  std::unique_ptr<Connection> checkpointer_;
  std::thread checkpoint_thread_, lead_thread_;
  // Guards checkpoint_wanted_ and checkpoint_stop_.
  std::mutex checkpoint_mutex_;
  std::condition_variable checkpoint_cv_;
  bool checkpoint_wanted_ = false, checkpoint_stop_ = false;
  // Guards lead_wanted_, lead_busy_ and lead_stop_: a mutex of its own, which
  // a network thread takes to hand a lead over (hand_lead), and the
  // checkpointer, at nice 10, never holds.
  std::mutex lead_mutex_;
  std::condition_variable lead_cv_;
  bool lead_wanted_ = false;  // lead_thread_ leads detached works handed to it
  bool lead_busy_ = false;    // it is leading them now
  bool lead_stop_ = false;
  // WAL length at which on_wal_commit wakes the checkpointer next; only the
  // writer's commits (one at a time) touch it.
  int checkpoint_at_ = kCheckpointPages;
  // WAL length (pages) at which the writer starts it over: wal_bytes over
  // the page size, set by open_connections.
  int restart_pages_ = 4 * kCheckpointPages;
  std::atomic<uint64_t> checkpoints_{0};
  std::atomic<uint64_t> wal_restarts_{0};

  std::mutex readers_mutex_;  // guards idle_readers_
  std::condition_variable reader_freed_;
  std::vector<std::unique_ptr<Connection>> readers_;
  std::vector<Connection*> idle_readers_;
};

}  // namespace gv::stores
