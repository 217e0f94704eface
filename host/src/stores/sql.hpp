// The SQL store a plugin's DAL uses. SQLite (SqliteDatabase) is the embedded
// implementation; PostgreSQL (libpq) comes later behind this same interface,
// so the contract below is what both backends honour and all that plugin SQL
// may rely on. Nothing here names a library type.
//
// Contract shared by every implementation:
// - Every statement runs inside a transaction: write() or read(). The host
//   owns transactions and settings, so BEGIN, COMMIT, ROLLBACK, SAVEPOINT,
//   RELEASE, ATTACH, DETACH and PRAGMA in plugin SQL are refused (invalid).
// - Placeholders are $1..$N, PostgreSQL style, in any order and repeatable
//   ("... WHERE a = $2 OR b = $1 OR c = $2"). A call passes exactly N values:
//   no more, no fewer, no gaps. `?`, `?NNN`, `:name` and `@name` are refused.
// - Five value types: null, integer (int64), real (double), text (valid
//   UTF-8 without NUL, which PostgreSQL would refuse too) and blob (any
//   bytes). Text that is not valid UTF-8 is refused: send it as a blob.
// - query() and exec() run one statement; exec_script() runs several
//   without parameters (migrations, DDL).
// - No last_insert_id: write INSERT ... RETURNING id (query()).
// - Upserts: INSERT ... ON CONFLICT (cols) DO NOTHING / DO UPDATE SET
//   col = excluded.col; both backends accept this form.
// - A failed statement fails its transaction, as on PostgreSQL: later
//   statements in it return the same status without running, and write()
//   rolls back even if the work function returns ok. To insert "unless
//   present", use ON CONFLICT DO NOTHING instead of catching a constraint.
// - Results are materialized in memory: page with LIMIT (keyset paging, not
//   large OFFSETs).
// - No exception crosses this interface, except the work function's own,
//   which write()/read() rethrow after rolling back.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace gv::stores {

// ---- values ----

// Blob bytes, wrapped so a blob is never mistaken for text.
// (explicit, so that "x" converts to text, never to a blob.)
struct SqlBlob {
  std::string bytes;
  SqlBlob() = default;
  explicit SqlBlob(std::string b) : bytes(std::move(b)) {}
  bool operator==(const SqlBlob&) const = default;
};

// One parameter or column value. The alternatives, in index order: null,
// integer, real, text, blob. Build with SqlValue{nullptr}, SqlValue{int64_t},
// SqlValue{1.5}, SqlValue{std::string("x")} or "x", SqlValue{SqlBlob{bytes}}.
// (Integers other than int64 convert implicitly when they fit; cast a
// size_t or uint64_t yourself.)
using SqlValue = std::variant<std::nullptr_t, int64_t, double, std::string, SqlBlob>;

inline bool sql_is_null(const SqlValue& v) { return std::holds_alternative<std::nullptr_t>(v); }

// The integer in v; nullopt if v holds anything else (no coercion from real
// or text: a column's type is part of the schema both backends share).
inline std::optional<int64_t> sql_int(const SqlValue& v) {
  if (auto* i = std::get_if<int64_t>(&v)) return *i;
  return std::nullopt;
}

// The real in v, or an integer widened to double (SQLite keeps integral
// values of NUMERIC columns as integers); nullopt otherwise.
inline std::optional<double> sql_real(const SqlValue& v) {
  if (auto* d = std::get_if<double>(&v)) return *d;
  if (auto* i = std::get_if<int64_t>(&v)) return static_cast<double>(*i);
  return std::nullopt;
}

// A view of the text in v (valid while v lives); nullopt if v is not text.
inline std::optional<std::string_view> sql_text(const SqlValue& v) {
  if (auto* s = std::get_if<std::string>(&v)) return std::string_view(*s);
  return std::nullopt;
}
std::optional<std::string_view> sql_text(const SqlValue&&) = delete;

// A view of the blob bytes in v (valid while v lives); nullopt if v is not
// a blob.
inline std::optional<std::string_view> sql_blob(const SqlValue& v) {
  if (auto* b = std::get_if<SqlBlob>(&v)) return std::string_view(b->bytes);
  return std::nullopt;
}
std::optional<std::string_view> sql_blob(const SqlValue&&) = delete;

// ---- status ----

enum class SqlCode {
  ok,
  busy,        // the write lock (or a pooled connection) was not obtained
               // within the busy timeout; retry later (HTTP 503 +
               // Retry-After)
  constraint,  // a UNIQUE, PRIMARY KEY, FOREIGN KEY, CHECK or NOT NULL
               // violation; the client's request conflicts (HTTP 409)
  invalid,     // bad SQL, placeholders or parameters, a write in read(), a
               // nested transaction: the caller's bug (HTTP 500)
  io,          // the medium failed: disk full, I/O error, corrupt file,
               // out of memory (HTTP 500, alert the operator)
};

constexpr std::string_view to_string(SqlCode c) {
  switch (c) {
    case SqlCode::ok:
      return "ok";
    case SqlCode::busy:
      return "busy";
    case SqlCode::constraint:
      return "constraint";
    case SqlCode::invalid:
      return "invalid";
    case SqlCode::io:
      return "io";
  }
  return "unknown";
}

struct SqlStatus {
  SqlCode code = SqlCode::ok;
  std::string message;  // one sentence for logs; "" when ok

  bool ok() const { return code == SqlCode::ok; }
  static SqlStatus success() { return {}; }
  static SqlStatus failure(SqlCode code, std::string message) { return {code, std::move(message)}; }
};

// A status plus a value; value is meaningful only when ok().
template <class T>
struct SqlResult {
  SqlStatus status;
  T value{};

  bool ok() const { return status.ok(); }
};

// ---- results ----

// A materialized result: column names in select order, then rows of values
// in the same order. A statement without result columns has none.
struct SqlRows {
  std::vector<std::string> columns;
  std::vector<std::vector<SqlValue>> rows;

  // The position of the column named name (exact match), or nullopt.
  std::optional<size_t> column(std::string_view name) const {
    for (size_t i = 0; i < columns.size(); ++i)
      if (columns[i] == name) return i;
    return std::nullopt;
  }
};

// ---- transactions ----

// The handle a work function receives. Valid only during that call and only
// on the calling thread; keep no reference to it.
class SqlTransaction {
 public:
  virtual ~SqlTransaction() = default;

  // Runs one statement with params bound to $1..$N and returns every row it
  // yields (SELECT, or INSERT/UPDATE/DELETE ... RETURNING). In read() only
  // statements that change nothing are allowed.
  virtual SqlResult<SqlRows> query(std::string_view sql,
                                   const std::vector<SqlValue>& params = {}) = 0;

  // Runs one statement with params bound to $1..$N, discards any rows, and
  // returns how many rows it inserted, updated or deleted itself (not
  // counting triggers or foreign-key actions; 0 for DDL and SELECT).
  // Refused in read().
  virtual SqlResult<int64_t> exec(std::string_view sql,
                                  const std::vector<SqlValue>& params = {}) = 0;

  // Runs one INSERT or REPLACE statement like exec() and returns the
  // integer primary key the database gave the row it inserted (SQLite's
  // rowid; of several rows, the last), or 0 when it inserted none (ON
  // CONFLICT DO NOTHING, or an upsert that updated). Cheaper than INSERT ...
  // RETURNING, which SQLite runs through a temporary table. Any other
  // statement is invalid. Refused in read().
  virtual SqlResult<int64_t> insert(std::string_view sql,
                                    const std::vector<SqlValue>& params = {}) = 0;

  // Runs every statement of sql, separated by ';', in order, without
  // parameters, discarding rows; stops at the first failure. For
  // migrations and DDL; statements are not cached. Refused in read().
  virtual SqlStatus exec_script(std::string_view sql) = 0;

  // Runs work inside a savepoint of this transaction: its changes are kept
  // if it returns ok and none of its statements failed; otherwise they
  // alone are undone, the transaction goes on as before it (a failed
  // statement inside does not fail the rest), and its status is returned.
  // If work throws, its changes are undone and the exception rethrown.
  // Host code only: plugins get no handle to it. Refused in read().
  virtual SqlStatus nested(const std::function<SqlStatus(SqlTransaction&)>& work) = 0;

  // Runs work on a read-only view of this transaction: it sees this
  // transaction's changes, and exec(), exec_script() and changing queries
  // are refused as in read(). Returns work's status; rethrows. Host code
  // only.
  virtual SqlStatus read_only(const std::function<SqlStatus(SqlTransaction&)>& work) = 0;

  // Runs fn once this write transaction has committed (with group commit:
  // after the group's COMMIT), on the thread that committed, before
  // write() returns; never if these changes are undone (the work fails or
  // throws, the nested() part that registered it is undone, the COMMIT
  // fails). fn must be quick, must not throw and must not use this
  // database. Refused (invalid) in read() and read_only().
  virtual SqlStatus after_commit(std::function<void()> fn) = 0;

  // State of host code that writes once per transaction rather than once
  // per call (the outbox counter: EventEngine::publish): the object kept
  // under key for the enclosing write transaction (with group commit, the
  // group's, across its works), made by make on first use. Its
  // before_commit runs once, in the transaction, just before the COMMIT;
  // a failure there fails the transaction, and so every work in it. The
  // object outlives the changes of a nested() part or a work that is
  // undone: keep state that stays right then (a counter that only grows).
  // Null in read() and read_only().
  struct Deferred {
    virtual ~Deferred() = default;
    virtual SqlStatus before_commit(SqlTransaction& tx) = 0;
  };
  virtual Deferred* deferred(const void* key,
                             const std::function<std::unique_ptr<Deferred>()>& make) = 0;
};

// The work function: returns ok to commit, any failure to roll back.
using SqlWork = std::function<SqlStatus(SqlTransaction&)>;

// A plugin's database. Thread-safe: any number of threads may call write()
// and read() at once.
class SqlDatabase {
 public:
  virtual ~SqlDatabase() = default;

  // Runs work in one write transaction. Writers are serialized: work starts
  // once this caller holds the database's write lock. Commits if work
  // returns ok and none of its statements failed; otherwise rolls back and
  // returns work's failure, or else the first failed statement's status.
  // A failing COMMIT rolls back and returns its status. If work throws, the
  // transaction is rolled back and the exception rethrown.
  // Returns busy, without calling work, if the write lock is not obtained
  // within the busy timeout. Returns invalid, without calling work, when
  // called from inside write() or read() on the same database and thread
  // (no nesting: it would wait on itself).
  // An implementation may commit the works of several concurrent write()
  // calls together (group commit), and run a work on the thread that leads
  // the group rather than the caller's (so works use no thread-locals): each work
  // still sees the changes of the works before it and is undone alone when
  // it fails or throws, and write() returns ok only once its changes are
  // committed. A failure of the shared COMMIT, or of another work that
  // undoes the whole transaction (an ON CONFLICT ROLLBACK clause, a
  // trigger's RAISE(ROLLBACK), an I/O error), fails every write() whose
  // work was waiting for that COMMIT (busy, or io for the medium). So keep
  // works short, and never make one wait for another thread's write() to
  // return: that thread may be waiting for this work's COMMIT.
  virtual SqlStatus write(const SqlWork& work) = 0;

  // Like write(), but returns without waiting for the commit: work runs on
  // whichever thread leads its group (maybe this one, before write_detached
  // returns), and done(status) runs there too once the group has committed
  // or failed, with what write() would have returned. A throwing work
  // fails with invalid; nothing is rethrown. done must not call write() or
  // read() of this database (it may run inside the leader's write). For
  // callers that must not hold a thread while a commit is pending. In a
  // NoWaitRegion (core/blocking.hpp: a network thread running a quick
  // handler) the work must not run on this thread: SQLite's has its own
  // thread lead the group. The default runs write() and then done on this
  // thread, so a store that keeps it cannot serve quick handlers.
  virtual void write_detached(SqlWork work, std::function<void(SqlStatus)> done) {
    SqlStatus s;
    try {
      s = write(work);
    } catch (const std::exception& e) {
      s = SqlStatus::failure(SqlCode::invalid, std::string("the work threw: ") + e.what());
    } catch (...) {
      s = SqlStatus::failure(SqlCode::invalid, "the work threw");
    }
    done(std::move(s));
  }

  // For a background thread that waits for its write but must not be
  // handed the lead of other callers' groups (the event relay): with a
  // group under way the work joins it, and done runs on its leader's
  // thread after its commit; with none, it is a write() here, then done.
  // So no group waits for this thread to be scheduled. The default is
  // write_detached().
  virtual void write_queued(SqlWork work, std::function<void(SqlStatus)> done) {
    write_detached(std::move(work), std::move(done));
  }

  // Returns once the writes queued so far have run and their completions
  // with them, on whatever thread led them (shutdown: before the objects
  // those completions reach go away). Writes queued meanwhile may still
  // run. The default has nothing to wait for.
  virtual void finish_writes() {}

  // Runs work in a read-only snapshot: every query sees the database as of
  // the snapshot's first read, including all writes committed before it,
  // and nothing committed after. Never waits for writers. exec(),
  // exec_script() and query() of a changing statement are refused with
  // invalid. Returns work's status; rethrows its exception. Returns busy if
  // no reader connection frees up within the busy timeout, and invalid when
  // nested like write().
  virtual SqlStatus read(const SqlWork& work) = 0;
};

}  // namespace gv::stores
