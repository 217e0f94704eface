#include "stores/sqlite_database.hpp"

#include "core/blocking.hpp"
#include "core/cond_wait.hpp"
#include "core/log.hpp"
#include "core/thread_name.hpp"
#include "stores/sqlite_wal_vfs.hpp"

#include <linux/futex.h>
#include <sqlite3.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <list>
#include <mutex>
#include <string_view>
#include <unordered_map>
#include <utility>

namespace gv::stores {

namespace {

using Clock = std::chrono::steady_clock;

// ---- errors ----

SqlCode code_of(int rc) {
  switch (rc & 0xff) {  // the primary code of an extended one
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return SqlCode::busy;
    case SQLITE_CONSTRAINT:
      return SqlCode::constraint;
    case SQLITE_IOERR:
    case SQLITE_FULL:
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
    case SQLITE_CANTOPEN:
    case SQLITE_NOMEM:
    case SQLITE_READONLY:  // writes in read() are refused before they run,
                           // so this means a read-only file
    case SQLITE_PERM:
    case SQLITE_PROTOCOL:
    case SQLITE_NOLFS:
      return SqlCode::io;
    default:
      return SqlCode::invalid;
  }
}

SqlStatus invalid(std::string message) {
  return SqlStatus::failure(SqlCode::invalid, std::move(message));
}

std::string quoted(std::string_view sql) {
  constexpr size_t kMax = 200;  // enough to recognize the statement in a log
  std::string q = "\"" + std::string(sql.substr(0, kMax));
  return q + (sql.size() > kMax ? "...\"" : "\"");
}

// Whether sql's first word, past blanks and comments, is keyword (upper
// case), in any letter case.
bool first_keyword_is(std::string_view sql, std::string_view keyword) {
  size_t i = 0;
  for (;;) {
    while (i < sql.size() && std::isspace(static_cast<unsigned char>(sql[i]))) ++i;
    if (sql.substr(i, 2) == "--") {
      i = sql.find('\n', i);
      if (i == std::string_view::npos) return false;
    } else if (sql.substr(i, 2) == "/*") {
      i = sql.find("*/", i + 2);
      if (i == std::string_view::npos) return false;
      i += 2;
    } else {
      break;
    }
  }
  if (sql.size() - i < keyword.size()) return false;
  for (size_t k = 0; k < keyword.size(); ++k)
    if (std::toupper(static_cast<unsigned char>(sql[i + k])) != keyword[k]) return false;
  const size_t end = i + keyword.size();
  return end == sql.size() ||
         !(std::isalnum(static_cast<unsigned char>(sql[end])) || sql[end] == '_');
}

// The status for a failed SQLite call; names the SQL when it is the
// caller's bug, so the plugin's log shows which statement.
SqlStatus failure(sqlite3* db, int rc, std::string_view sql = {}) {
  std::string message = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  if ((rc & 0xff) == SQLITE_AUTH)
    message =
        "the host owns transactions and settings: BEGIN, COMMIT, ROLLBACK, "
        "SAVEPOINT, RELEASE, ATTACH, DETACH and PRAGMA are refused";
  SqlCode code = code_of(rc);
  if (code == SqlCode::invalid && !sql.empty()) message += " in " + quoted(sql);
  return SqlStatus::failure(code, std::move(message));
}

// ---- parameters ----

// True if s is well-formed UTF-8 (no overlong forms, surrogates or code
// points past U+10FFFF) without NUL: what PostgreSQL accepts as text.
bool valid_text(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c == 0) return false;
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 0;
    if (len == 0 || c > 0xF4 || s.size() - i < len) return false;
    uint32_t cp = c & (0x7F >> len);
    for (size_t k = 1; k < len; ++k) {
      auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

// The N of a "$N" placeholder name (N >= 1, no leading zero), or 0 for any
// other form (`?`, `?3`, `:x`, `@x`, `$x`), which PostgreSQL would not read.
int placeholder_number(const char* name) {
  if (!name || name[0] != '$' || name[1] < '1' || name[1] > '9') return 0;
  long n = 0;
  for (const char* p = name + 1; *p; ++p) {
    if (*p < '0' || *p > '9' || n > 100000) return 0;
    n = n * 10 + (*p - '0');
  }
  return static_cast<int>(n);
}

SqlStatus check_params(const std::vector<SqlValue>& params) {
  auto refuse = [](size_t i, const char* why) {
    return invalid("parameter $" + std::to_string(i + 1) + why);
  };
  for (size_t i = 0; i < params.size(); ++i) {
    if (auto* s = std::get_if<std::string>(&params[i]); s && !valid_text(*s))
      return refuse(i, " is not valid UTF-8 text without NUL: bind a blob");
    if (auto* d = std::get_if<double>(&params[i]); d && std::isnan(*d))
      return refuse(i, " is NaN, which SQLite would store as NULL");
  }
  return {};
}

int bind_value(sqlite3_stmt* st, int index, const SqlValue& v) {
  switch (v.index()) {
    case 0:
      return sqlite3_bind_null(st, index);
    case 1:
      return sqlite3_bind_int64(st, index, std::get<int64_t>(v));
    case 2:
      return sqlite3_bind_double(st, index, std::get<double>(v));
    case 3: {
      // SQLITE_STATIC: params outlive the statement's use (reset before
      // query()/exec() return).
      const std::string& s = std::get<std::string>(v);
      return sqlite3_bind_text64(st, index, s.data(), s.size(), SQLITE_STATIC, SQLITE_UTF8);
    }
    default: {
      const std::string& b = std::get<SqlBlob>(v).bytes;
      // A null data pointer would bind NULL, so an empty blob is explicit.
      if (b.empty()) return sqlite3_bind_zeroblob(st, index, 0);
      return sqlite3_bind_blob64(st, index, b.data(), b.size(), SQLITE_STATIC);
    }
  }
}

SqlValue column_value(sqlite3_stmt* st, int col) {
  switch (sqlite3_column_type(st, col)) {
    case SQLITE_INTEGER:
      return static_cast<int64_t>(sqlite3_column_int64(st, col));
    case SQLITE_FLOAT:
      return sqlite3_column_double(st, col);
    case SQLITE_TEXT: {
      auto* text = reinterpret_cast<const char*>(sqlite3_column_text(st, col));
      return std::string(text ? text : "", text ? sqlite3_column_bytes(st, col) : 0);
    }
    case SQLITE_BLOB: {
      auto* blob = static_cast<const char*>(sqlite3_column_blob(st, col));
      return SqlBlob(std::string(blob ? blob : "", blob ? sqlite3_column_bytes(st, col) : 0));
    }
    default:
      return nullptr;
  }
}

// ---- statements ----

struct StatementDeleter {
  void operator()(sqlite3_stmt* st) const { sqlite3_finalize(st); }
};
using StatementPtr = std::unique_ptr<sqlite3_stmt, StatementDeleter>;

// A cached statement and how its SQLite parameter indexes map to $N.
struct Prepared {
  StatementPtr stmt;
  std::vector<int> param_of_index;  // [i - 1]: the N of index i
};

// Statements by SQL text, least recently used evicted first. Statements are
// always reset after use, so an evicted one is never running.
class StatementCache {
 public:
  Prepared* find(std::string_view sql) {
    auto it = index_.find(sql);
    if (it == index_.end()) return nullptr;
    lru_.splice(lru_.begin(), lru_, it->second);
    return &it->second->second;
  }

  Prepared* insert(std::string sql, Prepared prepared) {
    if (lru_.size() >= SqliteDatabase::kStatementCacheSize) {
      index_.erase(lru_.back().first);
      lru_.pop_back();
    }
    lru_.emplace_front(std::move(sql), std::move(prepared));
    // The key is a view of the string in the list node, which never moves.
    index_[lru_.front().first] = lru_.begin();
    return &lru_.front().second;
  }

  void clear() {
    index_.clear();
    lru_.clear();
  }

 private:
  using Entry = std::pair<std::string, Prepared>;
  std::list<Entry> lru_;  // most recent first; nodes never move
  std::unordered_map<std::string_view, std::list<Entry>::iterator> index_;
};

// Resets a statement and drops its bindings when a call is done with it.
struct ResetOnExit {
  sqlite3_stmt* st;
  ~ResetOnExit() {
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
  }
};

template <class F>
struct ScopeExit {
  F f;
  ~ScopeExit() { f(); }
};
template <class F>
ScopeExit(F) -> ScopeExit<F>;

}  // namespace

// ---- connections ----

struct SqliteDatabase::Connection {
  sqlite3* db = nullptr;
  // Set while the host runs its own BEGIN/COMMIT/ROLLBACK/PRAGMA, which the
  // authorizer refuses to plugin SQL.
  bool host_statement = false;
  // The writer's WAL is to gather its commits' frames (sqlite_wal_vfs.hpp):
  // set up at its first write transaction, when the WAL is open.
  bool link_wal_due = false;
  StatementCache cache;
  // The host's own transaction statements (BEGIN, SAVEPOINT, COMMIT...),
  // prepared once, keyed by their literal SQL. Apart from cache, so that
  // plugin SQL never reaches one of them past the authorizer.
  std::unordered_map<std::string_view, StatementPtr> host_statements;
  // SqlTransaction::deferred()'s objects of the open write transaction.
  std::vector<std::pair<const void*, std::unique_ptr<SqlTransaction::Deferred>>> deferred;

  ~Connection() {
    cache.clear();  // statements before the connection
    host_statements.clear();
    sqlite3_close_v2(db);
  }
};

namespace {

using Connection = SqliteDatabase::Connection;

// Refuses, at prepare time, the statements that would let plugin SQL end
// the host's transaction, reach other files or change settings.
int authorize(void* arg, int action, const char*, const char*, const char*, const char*) {
  if (static_cast<Connection*>(arg)->host_statement) return SQLITE_OK;
  switch (action) {
    case SQLITE_TRANSACTION:
    case SQLITE_SAVEPOINT:
    case SQLITE_ATTACH:
    case SQLITE_DETACH:
    case SQLITE_PRAGMA:
      return SQLITE_DENY;
    default:
      return SQLITE_OK;
  }
}

// Runs the host's own SQL (no parameters, rows ignored) past the
// authorizer. first_value receives the first column of the first row.
int host_exec(Connection& c, const char* sql, std::string* first_value = nullptr) {
  c.host_statement = true;
  auto keep_first = [](void* out, int, char** values, char**) {
    auto* s = static_cast<std::string*>(out);
    if (s && s->empty() && values[0]) *s = values[0];
    return 0;
  };
  int rc = sqlite3_exec(c.db, sql, keep_first, first_value, nullptr);
  c.host_statement = false;
  return rc;
}

// Runs one of the host's transaction statements (sql: a string literal)
// past the authorizer, preparing it on first use. Returns SQLITE_OK or the
// error; sqlite3_errmsg(c.db) then describes it.
int host_run(Connection& c, std::string_view sql) {
  c.host_statement = true;  // a re-prepare after a schema change authorizes
  ScopeExit done{[&] { c.host_statement = false; }};
  auto it = c.host_statements.find(sql);
  if (it == c.host_statements.end()) {
    sqlite3_stmt* raw = nullptr;
    int rc = sqlite3_prepare_v3(c.db, sql.data(), static_cast<int>(sql.size()),
                                SQLITE_PREPARE_PERSISTENT, &raw, nullptr);
    StatementPtr st(raw);
    if (rc != SQLITE_OK) return rc;
    it = c.host_statements.emplace(sql, std::move(st)).first;
  }
  sqlite3_stmt* st = it->second.get();
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  return rc == SQLITE_DONE || rc == SQLITE_ROW ? SQLITE_OK : rc;
}

// Statement journals (the undo log of a savepoint: every group-committed
// work runs in one) stay in memory up to this size, then spill to a
// temporary file. SQLite's default is 64 KiB. The size is also the chunk
// the journal is written to that file in, one write call each, so at most
// what the Unix file layer writes at once (kUnixWriteMaxBytes; a chunk of
// 128 KiB or more failed every such work with SQLITE_FULL). A work undoing
// more than that (a large DELETE) spills.
constexpr int kStatementJournalInMemory = kUnixWriteMaxBytes;

// Once per process, before SQLite initializes: no memory statistics (with
// them on, Debian's default, every allocation SQLite makes takes one global
// mutex that the writer, the readers and the broker's threads queue on; the
// host never reads them), and statement journals in memory up to
// kStatementJournalInMemory.
void configure_sqlite_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
    sqlite3_config(SQLITE_CONFIG_STMTJRNL_SPILL, kStatementJournalInMemory);
  });
}

SqlResult<std::unique_ptr<Connection>> open_connection(const std::filesystem::path& path,
                                                       bool writer, const SqliteOptions& o) {
  configure_sqlite_once();
  auto c = std::make_unique<Connection>();
  int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE;
  if (writer) flags |= SQLITE_OPEN_CREATE;
  int rc = sqlite3_open_v2(path.c_str(), &c->db, flags, wal_coalescing_vfs());
  if (rc != SQLITE_OK) {
    SqlStatus s = failure(c->db, rc);
    s.message = "cannot open " + path.string() + ": " + s.message;
    return {s};
  }
  sqlite3_busy_timeout(c->db, o.busy_timeout_ms);
  std::string mode;
  const std::string settings =
      (writer ? "PRAGMA journal_mode=WAL; PRAGMA synchronous=" + o.synchronous +
                    "; PRAGMA foreign_keys=ON"
              : std::string("PRAGMA query_only=ON; PRAGMA foreign_keys=ON")) +
      "; PRAGMA mmap_size=" + std::to_string(o.mmap_bytes);
  rc = host_exec(*c, settings.c_str(), writer ? &mode : nullptr);
  if (rc != SQLITE_OK) {
    SqlStatus s = failure(c->db, rc);
    s.message = "cannot set up " + path.string() + ": " + s.message;
    return {s};
  }
  if (writer && mode != "wal")
    return {SqlStatus::failure(
        SqlCode::io, path.string() + ": cannot switch to WAL (journal mode is " + mode + ")")};
  c->link_wal_due = writer;
  sqlite3_set_authorizer(c->db, authorize, c.get());
  return {{}, std::move(c)};
}

// Maps the statement's parameters to $1..$N, refusing other forms and gaps.
SqlStatus map_placeholders(Prepared& p, std::string_view sql) {
  const int count = sqlite3_bind_parameter_count(p.stmt.get());
  int highest = 0;
  for (int i = 1; i <= count; ++i) {
    const char* name = sqlite3_bind_parameter_name(p.stmt.get(), i);
    int n = placeholder_number(name);
    if (n == 0)
      return invalid(std::string("placeholders are $1..$N, found ") + (name ? name : "?") + " in " +
                     quoted(sql));
    p.param_of_index.push_back(n);
    highest = std::max(highest, n);
  }
  // Distinct names have distinct indexes, so no gap means highest == count.
  if (highest != count)
    return invalid("placeholders must be $1..$N without gaps in " + quoted(sql));
  return {};
}

// True if text past the first statement holds another statement (or
// garbage): one statement per query()/exec().
bool more_statements(sqlite3* db, const char* tail, const char* end) {
  if (tail == nullptr || tail >= end) return false;
  sqlite3_stmt* next = nullptr;
  int rc = sqlite3_prepare_v2(db, tail, static_cast<int>(end - tail), &next, nullptr);
  sqlite3_finalize(next);
  return rc != SQLITE_OK || next != nullptr;
}

SqlResult<Prepared*> prepare_cached(Connection& c, std::string_view sql) {
  if (Prepared* hit = c.cache.find(sql)) return {{}, hit};
  if (sql.size() >= INT_MAX) return {invalid("SQL text too long")};
  Prepared p;
  sqlite3_stmt* raw = nullptr;
  const char* tail = nullptr;
  int rc = sqlite3_prepare_v3(c.db, sql.data(), static_cast<int>(sql.size()),
                              SQLITE_PREPARE_PERSISTENT, &raw, &tail);
  p.stmt.reset(raw);
  if (rc != SQLITE_OK) return {failure(c.db, rc, sql)};
  if (!p.stmt) return {invalid("no SQL statement in " + quoted(sql))};
  if (more_statements(c.db, tail, sql.data() + sql.size()))
    return {
        invalid("one statement per query()/exec(), use exec_script() for several: " + quoted(sql))};
  if (SqlStatus s = map_placeholders(p, sql); !s.ok()) return {s};
  return {{}, c.cache.insert(std::string(sql), std::move(p))};
}

SqlStatus bind_all(const Prepared& p, const std::vector<SqlValue>& params, std::string_view sql) {
  if (params.size() != p.param_of_index.size())
    return invalid(std::to_string(p.param_of_index.size()) + " placeholders but " +
                   std::to_string(params.size()) + " values for " + quoted(sql));
  if (SqlStatus s = check_params(params); !s.ok()) return s;
  for (size_t i = 0; i < p.param_of_index.size(); ++i) {
    const SqlValue& v = params[p.param_of_index[i] - 1];
    int rc = bind_value(p.stmt.get(), static_cast<int>(i + 1), v);
    if (rc != SQLITE_OK) return failure(sqlite3_db_handle(p.stmt.get()), rc, sql);
  }
  return {};
}

// ---- transactions ----

// A savepoint's statements: each write() work runs in kWrite, and a part of
// a work run by SqlTransaction::nested in kNested inside it.
struct Savepoint {
  const char* begin;
  const char* rollback_to;
  const char* release;
};
constexpr Savepoint kWrite{"SAVEPOINT gv_write", "ROLLBACK TO gv_write", "RELEASE gv_write"};
constexpr Savepoint kNested{"SAVEPOINT gv_nested", "ROLLBACK TO gv_nested", "RELEASE gv_nested"};

// Releases sp, first undoing its changes unless keep. SQLITE_OK or the
// failing statement's code.
int end_savepoint(Connection& c, const Savepoint& sp, bool keep) {
  int rc = keep ? SQLITE_OK : host_run(c, sp.rollback_to);
  if (rc == SQLITE_OK) rc = host_run(c, sp.release);
  return rc;
}

using CommitHooks = std::vector<std::function<void()>>;

class SqliteTransaction final : public SqlTransaction {
 public:
  // on_commit: where after_commit() keeps its functions; null in reads.
  SqliteTransaction(Connection& c, bool writable, CommitHooks* on_commit = nullptr)
      : c_(c), writable_(writable), on_commit_(on_commit) {}

  SqlResult<SqlRows> query(std::string_view sql, const std::vector<SqlValue>& params) override {
    return run(sql, params, true);
  }

  SqlResult<int64_t> exec(std::string_view sql, const std::vector<SqlValue>& params) override {
    if (!writable_) return {fail(invalid("exec() in a read transaction: " + quoted(sql)))};
    // changes() keeps the last DML's count through DDL and SELECT, so only
    // trust it when this statement changed something.
    const int64_t before = sqlite3_total_changes64(c_.db);
    auto result = run(sql, params, false);
    if (!result.ok()) return {result.status};
    const bool changed = sqlite3_total_changes64(c_.db) != before;
    return {{}, changed ? sqlite3_changes64(c_.db) : 0};
  }

  SqlResult<int64_t> insert(std::string_view sql, const std::vector<SqlValue>& params) override {
    if (!writable_) return {fail(invalid("insert() in a read transaction: " + quoted(sql)))};
    if (!first_keyword_is(sql, "INSERT") && !first_keyword_is(sql, "REPLACE"))
      return {fail(invalid("insert() runs INSERT or REPLACE statements only: " + quoted(sql)))};
    // Cleared first, so that 0 after says no row was inserted: SQLite
    // leaves it as it was for DO NOTHING and for an upsert that updated.
    sqlite3_set_last_insert_rowid(c_.db, 0);
    auto result = run(sql, params, false);
    if (!result.ok()) return {result.status};
    return {{}, sqlite3_last_insert_rowid(c_.db)};
  }

  SqlStatus exec_script(std::string_view sql) override;

  SqlStatus nested(const std::function<SqlStatus(SqlTransaction&)>& work) override {
    if (!writable_) return fail(invalid("nested() in a read transaction"));
    if (!failed_.ok()) return failed_;
    if (int rc = host_run(c_, kNested.begin); rc != SQLITE_OK) return fail(failure(c_.db, rc));
    // The part's after_commit functions go with its changes.
    const size_t hooks = on_commit_ ? on_commit_->size() : 0;
    auto drop_hooks = [&] {
      if (on_commit_) on_commit_->resize(hooks);
    };
    SqlStatus status;
    try {
      status = work(*this);
    } catch (...) {
      end_nested(false);
      drop_hooks();
      throw;
    }
    if (status.ok()) status = failed_;
    if (!status.ok()) drop_hooks();
    if (!end_nested(status.ok())) return failed_;
    return status;
  }

  SqlStatus after_commit(std::function<void()> fn) override {
    if (!writable_ || !on_commit_) return invalid("after_commit() in a read transaction");
    on_commit_->push_back(std::move(fn));
    return {};
  }

  SqlStatus read_only(const std::function<SqlStatus(SqlTransaction&)>& work) override {
    if (!failed_.ok()) return failed_;
    SqliteTransaction view(c_, false);  // its failures stay its own
    SqlStatus status = work(view);
    if (status.ok()) status = view.failed();
    return status;
  }

  Deferred* deferred(const void* key,
                     const std::function<std::unique_ptr<Deferred>()>& make) override {
    if (!writable_) return nullptr;
    for (auto& [k, d] : c_.deferred)
      if (k == key) return d.get();
    c_.deferred.emplace_back(key, make());
    return c_.deferred.back().second.get();
  }

  // The first failure of any statement in this transaction; ok if none.
  const SqlStatus& failed() const { return failed_; }

 private:
  SqlResult<SqlRows> run(std::string_view sql, const std::vector<SqlValue>& params, bool keep_rows);
  SqlStatus step_all(sqlite3_stmt* st, std::string_view sql, SqlRows* rows);

  // Ends the savepoint of nested(), undoing its changes unless keep; the
  // part's own statement failures are undone with it. False, with failed_
  // saying why, when the transaction cannot go on.
  bool end_nested(bool keep) {
    if (sqlite3_get_autocommit(c_.db)) {
      failed_ = SqlStatus::failure(SqlCode::io, "the transaction was rolled back");
      return false;
    }
    if (int rc = end_savepoint(c_, kNested, keep); rc != SQLITE_OK) {
      failed_ = failure(c_.db, rc);
      return false;
    }
    if (!keep) failed_ = {};
    return true;
  }

  // Records the transaction's first failure: PostgreSQL refuses every later
  // statement of a failed transaction, and SQLite is made to agree.
  SqlStatus fail(SqlStatus s) {
    if (failed_.ok()) failed_ = s;
    return s;
  }

  Connection& c_;
  const bool writable_;
  CommitHooks* const on_commit_;
  SqlStatus failed_;
};

SqlStatus SqliteTransaction::step_all(sqlite3_stmt* st, std::string_view sql, SqlRows* rows) {
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if (!rows) continue;
    const int n = sqlite3_column_count(st);
    auto& row = rows->rows.emplace_back();
    row.reserve(n);
    for (int i = 0; i < n; ++i) row.push_back(column_value(st, i));
  }
  return rc == SQLITE_DONE ? SqlStatus{} : failure(c_.db, rc, sql);
}

SqlResult<SqlRows> SqliteTransaction::run(std::string_view sql, const std::vector<SqlValue>& params,
                                          bool keep_rows) {
  if (!failed_.ok()) return {failed_};
  try {
    auto prepared = prepare_cached(c_, sql);
    if (!prepared.ok()) return {fail(prepared.status)};
    sqlite3_stmt* st = prepared.value->stmt.get();
    if (!writable_ && !sqlite3_stmt_readonly(st))
      return {fail(invalid("a read transaction cannot change the database: " + quoted(sql)))};
    ResetOnExit reset{st};
    if (SqlStatus s = bind_all(*prepared.value, params, sql); !s.ok()) return {fail(s)};
    SqlRows rows;
    if (SqlStatus s = step_all(st, sql, keep_rows ? &rows : nullptr); !s.ok()) return {fail(s)};
    // Names after stepping: a schema change re-prepares the statement at
    // its first step, and "SELECT *" may then have more columns.
    if (keep_rows)
      for (int i = 0; i < sqlite3_column_count(st); ++i) {
        const char* name = sqlite3_column_name(st, i);  // null if out of memory
        rows.columns.emplace_back(name ? name : "");
      }
    return {{}, std::move(rows)};
  } catch (const std::exception& e) {  // out of memory while materializing
    return {fail(SqlStatus::failure(SqlCode::io, e.what()))};
  }
}

SqlStatus SqliteTransaction::exec_script(std::string_view sql) {
  if (!failed_.ok()) return failed_;
  if (!writable_) return fail(invalid("exec_script() in a read transaction"));
  if (sql.size() >= INT_MAX) return fail(invalid("SQL text too long"));
  const char* next = sql.data();
  const char* end = sql.data() + sql.size();
  while (next < end) {
    sqlite3_stmt* raw = nullptr;
    const char* tail = nullptr;
    int rc = sqlite3_prepare_v2(c_.db, next, static_cast<int>(end - next), &raw, &tail);
    StatementPtr st(raw);
    if (rc != SQLITE_OK) return fail(failure(c_.db, rc, std::string_view(next, end - next)));
    if (!st) break;  // only whitespace or comments were left
    std::string_view text(next, tail - next);
    if (SqlStatus s = step_all(st.get(), text, nullptr); !s.ok()) return fail(s);
    next = tail;
  }
  return {};
}

// Databases that the current thread is inside write() or read() of, so a
// nested call is refused instead of waiting on its own caller.
thread_local std::vector<const SqlDatabase*> t_open_transactions;

class NestingGuard {
 public:
  explicit NestingGuard(const SqlDatabase* db) : db_(db) {
    auto& open = t_open_transactions;
    nested_ = std::find(open.begin(), open.end(), db) != open.end();
    if (!nested_) open.push_back(db);
  }
  ~NestingGuard() {
    auto& open = t_open_transactions;
    if (!nested_) open.erase(std::find(open.begin(), open.end(), db_));
  }
  bool nested() const { return nested_; }

 private:
  const SqlDatabase* db_;
  bool nested_;
};

SqlStatus nested_refusal(const char* call) {
  return invalid(std::string(call) +
                 "() inside a write() or read() of the same database: "
                 "transactions do not nest; use the transaction you have");
}

void rollback(Connection& c) {
  if (!sqlite3_get_autocommit(c.db)) host_run(c, "ROLLBACK");
}

// Opens a transaction, letting SQLite wait for the file's lock until
// deadline.
SqlStatus begin(Connection& c, const char* sql, Clock::time_point deadline, int busy_timeout_ms) {
  rollback(c);  // in case an earlier ROLLBACK failed and left one open
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  sqlite3_busy_timeout(c.db, static_cast<int>(std::max<int64_t>(left.count(), 0)));
  int rc = host_run(c, sql);
  if (rc == SQLITE_OK) {
    if (c.link_wal_due) {
      c.link_wal_due = false;
      (void)link_wal(c.db);  // false: written through, as with SQLite's own VFS
    }
    return {};
  }
  SqlStatus s = failure(c.db, rc);
  if (s.code == SqlCode::busy)
    s.message = "the database is locked by another writer; gave up after " +
                std::to_string(busy_timeout_ms) + " ms";
  return s;
}

// Runs work in the read transaction begun on c, then ends it.
SqlStatus run_transaction(Connection& c, bool writable, const SqlWork& work) {
  SqliteTransaction tx(c, writable);
  SqlStatus status;
  try {
    status = work(tx);
  } catch (...) {
    rollback(c);
    throw;
  }
  if (status.ok()) status = tx.failed();
  if (!status.ok()) {
    rollback(c);
    return status;
  }
  if (int rc = host_run(c, "COMMIT"); rc != SQLITE_OK) {
    status = failure(c.db, rc);
    rollback(c);
  }
  return status;
}

// Runs the before_commit of each SqlTransaction::deferred() object of the
// write transaction open on c, in the order they were made; the first
// failure stops them and is returned.
SqlStatus run_deferred(Connection& c) {
  SqliteTransaction tx(c, true);
  for (auto& entry : c.deferred) {
    SqlStatus s = entry.second->before_commit(tx);
    if (s.ok()) s = tx.failed();
    if (!s.ok()) return s;
  }
  return {};
}

// What the members of a broken group that were waiting for its COMMIT
// get: io if the medium failed, else busy (another write undid theirs; a
// retry runs in a new group).
SqlStatus group_failure(const SqlStatus& broken) {
  return SqlStatus::failure(
      broken.code == SqlCode::io ? SqlCode::io : SqlCode::busy,
      "rolled back with the other writes of its commit group: " + broken.message);
}

// Sleeps while state holds expected, and wakes a thread sleeping on state.
// Plain futexes: std::atomic::wait spins with sched_yield first, a system
// call per turn that costs more than the wait it hopes to avoid here.
void futex_wait(std::atomic<int>& state, int expected) {
  static_assert(sizeof(std::atomic<int>) == sizeof(int));
  while (state.load(std::memory_order_acquire) == expected)
    syscall(SYS_futex, reinterpret_cast<int*>(&state), FUTEX_WAIT_PRIVATE, expected, nullptr,
            nullptr, 0);
}

void futex_wake(std::atomic<int>& state) {
  syscall(SYS_futex, reinterpret_cast<int*>(&state), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
}

}  // namespace

// ---- the database ----

// One write() call waiting in the queue, run by the leader. Shared by its
// caller and the leader, which may still notify it after the caller saw
// kDone. status and thrown are written before state becomes kDone.
struct SqliteDatabase::Member {
  Member(const SqlWork& w, Clock::time_point d) : work(w), deadline(d) {}
  // Detached: owns its work; completion replaces the wake-up.
  Member(SqlWork w, std::function<void(SqlStatus)> c, Clock::time_point dl)
      : owned(std::move(w)), completion(std::move(c)), work(owned), deadline(dl) {}
  SqlWork owned;
  std::function<void(SqlStatus)> completion;
  const SqlWork& work;
  const Clock::time_point deadline;  // gives up with busy if not begun by then
  SqlStatus status;
  std::exception_ptr thrown;
  CommitHooks on_commit;  // after_commit() of its work, run once committed
  std::atomic<int> state{kQueued};
};

SqliteDatabase::SqliteDatabase(std::filesystem::path path, const SqliteOptions& options)
    : path_(std::move(path)), options_(options) {}

SqliteDatabase::~SqliteDatabase() {
  {
    std::lock_guard lock(checkpoint_mutex_);
    checkpoint_stop_ = true;
  }
  {
    std::lock_guard lock(lead_mutex_);
    lead_stop_ = true;
  }
  checkpoint_cv_.notify_all();
  lead_cv_.notify_all();
  if (checkpoint_thread_.joinable()) checkpoint_thread_.join();
  if (lead_thread_.joinable()) lead_thread_.join();
}

// The writer's WAL hook, after each commit (it replaces SQLite's automatic
// checkpoint, which copies the whole WAL inside the commit): wakes the
// checkpointer once the WAL holds kCheckpointPages, then again each time it
// has grown a quarter of what is left to restart_pages_ (from
// kCheckpointStep to kMaxCheckpointStep pages). The WAL starts over
// only when a writer finds it all copied, which under steady writes a
// checkpoint on another connection never sees; so past restart_pages_ the
// writer checkpoints here, between its transactions, copying what the
// checkpointer has not yet (little), and its next transaction starts the
// WAL over.
int SqliteDatabase::on_wal_commit(void* arg, sqlite3* db, const char*, int pages) {
  auto* self = static_cast<SqliteDatabase*>(arg);
  self->start_over_.new_wal = self->wal_pages_ < 0 || pages < self->wal_pages_;
  if (self->start_over_.new_wal && self->wal_pages_ >= 0)
    self->wal_restarts_.fetch_add(1, std::memory_order_relaxed);
  self->wal_pages_ = pages;
  if (pages < kCheckpointPages) {
    self->checkpoint_at_ = kCheckpointPages;  // the WAL started over
    return SQLITE_OK;
  }
  if (pages >= self->restart_pages_) {
    // Busy when the checkpointer is at it: the next commit tries again.
    // Past twice the bound (a checkpointer starved of CPU while writes go
    // on), this writer waits for it, so the WAL cannot grow without end.
    auto checkpoint = [db] {
      return sqlite3_wal_checkpoint_v2(db, nullptr, SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr);
    };
    const int waits = pages >= 2 * self->restart_pages_ ? kMaxCheckpointWaits : 0;
    int waited = 0;
    for (; checkpoint() == SQLITE_BUSY && waited < waits; ++waited)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    // Inside the COMMIT, which lead() times: said in its warning if slow.
    self->start_over_.done = true;
    self->start_over_.waited_ms = waited;
    return SQLITE_OK;
  }
  if (pages < self->checkpoint_at_) return SQLITE_OK;
  self->checkpoint_at_ =
      pages + std::clamp((self->restart_pages_ - pages) / 4, kCheckpointStep, kMaxCheckpointStep);
  {
    std::lock_guard lock(self->checkpoint_mutex_);
    if (self->checkpoint_wanted_) return SQLITE_OK;
    self->checkpoint_wanted_ = true;
  }
  self->checkpoint_cv_.notify_one();
  return SQLITE_OK;
}

void SqliteDatabase::run_checkpointer() {
  name_this_thread("gv-checkpoint");
  // Below the threads that answer requests: a pass copies thousands of
  // pages in one go, which at the same priority would take its share of
  // the CPU from them while it lasts. Failure (a sandbox that forbids it)
  // leaves it at theirs.
  setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), kCheckpointerNice);
  int synced_backfill = 0;  // the WAL's frames copied when the file was last synced here
  Clock::time_point synced_at;
  std::unique_lock lock(checkpoint_mutex_);
  for (;;) {
    wait_rechecking(checkpoint_cv_, lock,
                    [this] { return checkpoint_wanted_ || checkpoint_stop_; });
    if (checkpoint_stop_) return;
    lock.unlock();
    // PASSIVE, like SQLite's automatic checkpoint: copies what no reader
    // still needs and waits for no one, so writes go on meanwhile (see
    // on_wal_commit for how the WAL starts over). Busy (the writer's own
    // checkpoint running, say) waits for the next wake.
    int wal_pages = 0, backfilled = 0;  // the WAL's frames, and those copied into the database
    int rc = sqlite3_wal_checkpoint_v2(checkpointer_->db, nullptr, SQLITE_CHECKPOINT_PASSIVE,
                                       &wal_pages, &backfilled);
    if (rc == SQLITE_OK) {
      checkpoints_.fetch_add(1, std::memory_order_relaxed);
      // SQLite syncs the database file only after a checkpoint that copied
      // the whole WAL, which under steady writes is the writer's own, at
      // restart_pages_: that sync would have every page copied since to
      // flush, for tens of milliseconds, while every queued write waits.
      // Synced here, it has only the last pass's pages left: after each
      // pass near the start-over, and before that every kFileSyncInterval.
      // Not after every pass: a page that many passes copy (an index's
      // inner pages, the outbox's, a table's last leaf) would be written
      // to the disk each time, about a hundred times a second under
      // bench/api's POSTs, where one sync per interval writes it once.
      const auto now = Clock::now();
      if (backfilled != synced_backfill && (wal_pages >= restart_pages_ - 2 * kCheckpointStep ||
                                            now - synced_at >= kFileSyncInterval)) {
        synced_backfill = backfilled;
        synced_at = now;
        sqlite3_file* file = nullptr;
        if (sqlite3_file_control(checkpointer_->db, "main", SQLITE_FCNTL_FILE_POINTER, &file) ==
                SQLITE_OK &&
            file && file->pMethods)
          file->pMethods->xSync(file, SQLITE_SYNC_NORMAL);
      }
    }
    lock.lock();
    checkpoint_wanted_ = false;
  }
}

// Handed the lead by a writer (write()) with detached works queued behind
// its own: leads until a waiting writer can take it, or the queue is empty.
void SqliteDatabase::run_leader() {
  name_this_thread("gv-sqlite-lead");
  std::unique_lock lock(lead_mutex_);
  for (;;) {
    wait_rechecking(lead_cv_, lock, [this] { return lead_wanted_ || lead_stop_; });
    // A lead handed over before the stop is still served: its works'
    // completions are owed.
    if (!lead_wanted_) return;
    lead_wanted_ = false;
    lead_busy_ = true;
    lock.unlock();
    lead_detached();
    lock.lock();
    lead_busy_ = false;
  }
}

SqlResult<std::unique_ptr<SqliteDatabase>> SqliteDatabase::open(const std::filesystem::path& path,
                                                                const SqliteOptions& options) {
  SqliteOptions o = options;
  std::transform(o.synchronous.begin(), o.synchronous.end(), o.synchronous.begin(),
                 [](unsigned char ch) { return std::toupper(ch); });
  if (o.synchronous != "NORMAL" && o.synchronous != "FULL")
    return {invalid("synchronous must be NORMAL or FULL, not \"" + options.synchronous + "\"")};
  if (o.busy_timeout_ms < 0) return {invalid("busy_timeout_ms must not be negative")};
  if (o.reader_connections < 1) return {invalid("reader_connections must be at least 1")};
  if (o.mmap_bytes < 0) return {invalid("mmap_bytes must not be negative")};
  if (o.max_group_size < 1) return {invalid("max_group_size must be at least 1")};
  if (o.wal_bytes < (8 << 20)) return {invalid("wal_bytes must be at least 8 MiB")};
  std::unique_ptr<SqliteDatabase> db(new SqliteDatabase(path, o));
  if (SqlStatus s = db->open_connections(); !s.ok()) return {s};
  return {{}, std::move(db)};
}

SqlStatus SqliteDatabase::open_connections() {
  // The writer first: it creates the file and switches it to WAL, which the
  // readers need.
  auto writer = open_connection(path_, true, options_);
  if (!writer.ok()) return writer.status;
  writer_ = std::move(writer.value);
  std::string page_size;
  if (int rc = host_exec(*writer_, "PRAGMA page_size", &page_size); rc != SQLITE_OK)
    return failure(writer_->db, rc);
  restart_pages_ = static_cast<int>(
      std::clamp<int64_t>(options_.wal_bytes / std::max(512, std::atoi(page_size.c_str())),
                          kCheckpointPages + kCheckpointStep, INT_MAX / 2));
  for (int i = 0; i < options_.reader_connections; ++i) {
    auto reader = open_connection(path_, false, options_);
    if (!reader.ok()) return reader.status;
    idle_readers_.push_back(reader.value.get());
    readers_.push_back(std::move(reader.value));
  }
  auto checkpointer = open_connection(path_, false, options_);
  if (!checkpointer.ok()) return checkpointer.status;
  checkpointer_ = std::move(checkpointer.value);
  // A connection joins the WAL with its first read; until then a
  // checkpoint through it does nothing.
  if (int rc = host_exec(*checkpointer_, "SELECT count(*) FROM sqlite_master"); rc != SQLITE_OK)
    return failure(checkpointer_->db, rc);
  // An empty WAL file (a new database, or one whose last close removed its
  // WAL): the first commit begins a WAL, which is no start-over.
  std::error_code no_wal;
  const auto wal_size = std::filesystem::file_size(path_.string() + "-wal", no_wal);
  wal_pages_ = no_wal || wal_size == 0 ? -1 : 0;
  sqlite3_wal_hook(writer_->db, &SqliteDatabase::on_wal_commit, this);
  checkpoint_thread_ = std::thread([this] { run_checkpointer(); });
  lead_thread_ = std::thread([this] { run_leader(); });
  return {};
}

SqlStatus SqliteDatabase::write(const SqlWork& work) {
  NestingGuard guard(this);
  if (guard.nested()) return nested_refusal("write");
  auto me = std::make_shared<Member>(work, busy_deadline());
  bool leader = false, awaited = false;
  {
    std::lock_guard lock(queue_mutex_);
    awaited = push_locked(me);
    if (!leading_) leading_ = leader = true;
  }
  if (awaited) queue_cv_.notify_one();
  if (!leader) {
    // The pool may run another request meanwhile (which often writes too,
    // and so joins the group this one is in).
    BlockingRegion waiting;
    futex_wait(me->state, kQueued);
    leader = me->state.load(std::memory_order_acquire) == kLead;
  }
  // A new leader's member is at the head of the queue, so lead() runs it.
  // Detached works queued behind have no thread to lead them, and this
  // caller must not serve them for as long as they keep coming: the
  // database's own thread takes the lead over.
  if (leader && lead(me.get())) hand_lead();
  if (me->thrown) std::rethrow_exception(me->thrown);
  return me->status;
}

void SqliteDatabase::write_detached(SqlWork work, std::function<void(SqlStatus)> done) {
  NestingGuard guard(this);  // the works this thread may lead refuse nested writes
  if (guard.nested()) return done(nested_refusal("write_detached"));
  auto me = std::make_shared<Member>(std::move(work), std::move(done), busy_deadline());
  bool leader = false, awaited = false;
  {
    std::lock_guard lock(queue_mutex_);
    awaited = push_locked(std::move(me));
    if (!leading_) leading_ = leader = true;
  }
  if (awaited) queue_cv_.notify_one();
  if (!leader) return;  // the leader runs it and calls done
  // A thread that must not wait (a network thread running a quick
  // handler) leads no group: the lead thread does.
  if (t_must_not_wait) return hand_lead();
  // One group here, then the lead thread goes on if detached works keep
  // coming (quick handlers' writes, say): this caller, a worker, is not
  // kept from its other requests for as long as they do.
  if (lead(nullptr)) hand_lead();
}

void SqliteDatabase::hand_lead() {
  {
    std::lock_guard lock(lead_mutex_);
    lead_wanted_ = true;
  }
  lead_cv_.notify_one();
}

void SqliteDatabase::finish_writes() {
  for (;;) {
    {
      std::lock_guard queue_lock(queue_mutex_);
      std::lock_guard lead_lock(lead_mutex_);
      if (!leading_ && queue_.empty() && !lead_wanted_ && !lead_busy_) return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

void SqliteDatabase::write_queued(SqlWork work, std::function<void(SqlStatus)> done) {
  {
    NestingGuard guard(this);
    if (guard.nested()) return done(nested_refusal("write_queued"));
    std::unique_lock lock(queue_mutex_);
    if (leading_) {
      // Joins the group under way; its leader calls done.
      bool awaited =
          push_locked(std::make_shared<Member>(std::move(work), std::move(done), busy_deadline()));
      lock.unlock();
      if (awaited) queue_cv_.notify_one();
      return;
    }
  }
  // No group under way: a write() of its own, which leads only its own
  // group and hands the rest to the lead thread, then done here.
  SqlDatabase::write_detached(std::move(work), std::move(done));
}

bool SqliteDatabase::push_locked(std::shared_ptr<Member> m) {
  const auto now = Clock::now();
  if (last_arrival_ != Clock::time_point{}) {
    const auto gap = now - last_arrival_;
    arrival_gap_ = arrival_gap_ == Clock::duration::max() ? gap : (arrival_gap_ * 7 + gap) / 8;
  }
  last_arrival_ = now;
  queue_.push_back(std::move(m));
  return collecting_;
}

// Leads for no work of this thread's own, until the queue has a waiting
// writer to hand over to, or is empty.
void SqliteDatabase::lead_detached() {
  NestingGuard guard(this);  // the works it runs refuse nested writes
  while (lead(nullptr)) {
  }
}

// Runs queued works in one transaction until the queue is empty, the group
// is full or old, then commits, hands the lead to the next queued caller
// and wakes the members. Members whose works failed are woken at once.
bool SqliteDatabase::lead(const Member* own) {
  Connection& c = *writer_;
  std::vector<std::shared_ptr<Member>> done;     // results known: woken below
  std::vector<std::shared_ptr<Member>> pending;  // ran, waiting for COMMIT
  SqlStatus broken;                              // why the open transaction cannot go on
  bool open = false, own_done = false;
  Clock::time_point first_done;
  // Whether this group may wait for more works (commit_wait), and how that went.
  const bool may_wait = options_.commit_wait.count() > 0 && wait_skip_ == 0;
  if (wait_skip_ > 0) --wait_skip_;
  bool waited = false, wait_paid = false;
  const auto finish = [&](std::shared_ptr<Member> m, SqlStatus s) {
    m->status = std::move(s);
    if (m.get() == own) own_done = true;
    done.push_back(std::move(m));
  };
  const auto end_transaction = [&](SqlStatus result) {
    c.deferred.clear();
    if (!result.ok()) rollback(c);
    for (auto& m : pending) {
      if (result.ok())
        for (auto& hook : m->on_commit) try {
            hook();
          } catch (...) {  // documented not to throw; the commit stands
          }
      m->on_commit.clear();
      finish(std::move(m), result);
    }
    pending.clear();
    open = false;
    broken = {};
  };
  for (;;) {
    std::shared_ptr<Member> m;
    {
      std::unique_lock lock(queue_mutex_);
      if (queue_.empty() && may_wait && !pending.empty() && arrival_gap_ < options_.commit_wait &&
          (!options_.under_way || options_.under_way() > 0)) {
        // Writes keep coming: wait a little for the next, so that more
        // share this commit, rather than commit a group of one or two.
        const auto until =
            std::min(first_done + options_.commit_wait, Clock::now() + 2 * arrival_gap_);
        collecting_ = true;
        queue_cv_.wait_until(lock, until, [&] { return !queue_.empty(); });
        collecting_ = false;
        waited = true;
        if (!queue_.empty()) wait_paid = true;
      }
      if (queue_.empty()) break;
      if (open && (pending.size() >= static_cast<size_t>(options_.max_group_size) ||
                   Clock::now() - first_done >= kMaxCommitDelay))
        break;
      // With no transaction open, a leader whose own work is done hands
      // over rather than serve others' failing BEGINs for ever.
      if (!open && own_done) break;
      m = std::move(queue_.front());
      queue_.pop_front();
    }
    if (Clock::now() > m->deadline) {
      // Queued behind slow works for longer than the busy timeout.
      finish(std::move(m),
             SqlStatus::failure(SqlCode::busy,
                                "waited for the write lock in this process for more "
                                "than " +
                                    std::to_string(options_.busy_timeout_ms) + " ms"));
      continue;
    }
    if (!open) {
      SqlStatus s;
      {
        BlockingRegion waiting;  // BEGIN may wait for another process's lock
        s = begin(c, "BEGIN IMMEDIATE", m->deadline, options_.busy_timeout_ms);
      }
      if (!s.ok()) {
        finish(std::move(m), std::move(s));
        continue;
      }
      c.deferred.clear();  // none from an earlier transaction
      open = true;
    }
    SqlStatus s = run_member(c, *m, broken);
    if (!broken.ok()) {
      // Its transaction is gone: the members that ran before fail too.
      finish(std::move(m), s.ok() ? broken : s);
      end_transaction(group_failure(broken));
      continue;
    }
    if (!s.ok() || m->thrown) {
      finish(std::move(m), std::move(s));  // its savepoint is undone
      continue;
    }
    if (pending.empty()) first_done = Clock::now();
    pending.push_back(std::move(m));
  }
  if (waited) {
    waits_.fetch_add(1, std::memory_order_relaxed);
    if (wait_paid) {
      wait_backoff_ = 0;
    } else {
      fruitless_waits_.fetch_add(1, std::memory_order_relaxed);
      wait_backoff_ = std::min(std::max(1, 2 * wait_backoff_), kMaxWaitBackoff);
      wait_skip_ = wait_backoff_;
    }
  }
  if (open) {
    // A failing before_commit is rolled back like a failing COMMIT.
    SqlStatus result = run_deferred(c);
    if (result.ok()) {
      const auto began = Clock::now();
      start_over_ = {};
      if (int rc = host_run(c, "COMMIT"); rc != SQLITE_OK)
        result = failure(c.db, rc);
      else
        commits_.fetch_add(1, std::memory_order_relaxed);
      // Its members and every write queued behind waited for it (file
      // syncs at the WAL's start-over, a disk busy with other work): a
      // slow one is logged, one line a second at most, as a disk that
      // stays slow would otherwise log every commit.
      const auto now = Clock::now();
      const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(now - began);
      if (took >= kSlowCommit && now - slow_logged_at_ >= std::chrono::seconds(1)) {
        slow_logged_at_ = now;
        log::warn("sqlite: a group's COMMIT held writes up",
                  {{"file", path_.filename().string()},
                   {"ms", took.count()},
                   {"works", pending.size()},
                   {"new_wal", start_over_.new_wal},
                   {"wal_start_over", start_over_.done},
                   {"waited_for_checkpointer_ms", start_over_.waited_ms}});
      }
    }
    end_transaction(std::move(result));
  }
  // The next leader first, so that writing goes on while members wake. A
  // detached work has no thread to lead: this one goes on.
  std::shared_ptr<Member> next;
  bool again = false;
  {
    std::lock_guard lock(queue_mutex_);
    if (queue_.empty())
      leading_ = false;
    else if (queue_.front()->completion)
      again = true;
    else
      next = queue_.front();
  }
  if (next) {
    next->state.store(kLead, std::memory_order_release);
    futex_wake(next->state);
  }
  // The callers waiting in write() are woken here; the detached members'
  // completions run after, as one job of run_completions if it takes it,
  // so that the next group need not wait for them. Not from the lead
  // thread, which runs them itself: it leads for the threads that must not
  // wait (quick handlers), whose writes have no other leader, and a job
  // per group would wake an idle worker to do what it does as quickly
  // (bench/api's POSTs: 3-12% more a second, a lower p99 in 2 of 3 rounds).
  std::vector<std::shared_ptr<Member>> detached;
  for (auto& m : done) {
    if (m->completion) {
      detached.push_back(std::move(m));
      continue;
    }
    if (m.get() == own) {
      m->state.store(kDone, std::memory_order_relaxed);  // this thread: no wake
      continue;
    }
    m->state.store(kDone, std::memory_order_release);
    futex_wake(m->state);
  }
  if (detached.empty()) return again;
  auto job = std::make_shared<std::vector<std::shared_ptr<Member>>>(std::move(detached));
  auto complete_all = [job] {
    for (const auto& m : *job) complete(*m);
  };
  const bool handed = std::this_thread::get_id() != lead_thread_.get_id() &&
                      options_.run_completions && options_.run_completions(complete_all);
  if (!handed) complete_all();
  return again;
}

void SqliteDatabase::complete(Member& m) {
  SqlStatus s = m.status;
  if (m.thrown) s = SqlStatus::failure(SqlCode::invalid, "the work threw");
  try {
    m.completion(std::move(s));
  } catch (...) {  // a completion must not stop the others, nor the leader
  }
}

// Runs m's work in its own savepoint of the open transaction, keeping its
// changes only if it returns ok and none of its statements failed. Returns
// its status, and stores in m.thrown what it threw. Sets broken if the
// transaction cannot go on.
SqlStatus SqliteDatabase::run_member(Connection& c, Member& m, SqlStatus& broken) {
  if (int rc = host_run(c, kWrite.begin); rc != SQLITE_OK) {
    broken = failure(c.db, rc);
    return broken;
  }
  SqliteTransaction tx(c, true, &m.on_commit);
  SqlStatus status;
  try {
    status = m.work(tx);
  } catch (...) {
    m.thrown = std::current_exception();
  }
  works_.fetch_add(1, std::memory_order_relaxed);
  if (status.ok()) status = tx.failed();
  if (sqlite3_get_autocommit(c.db)) {
    // SQLite rolled back the whole transaction (ON CONFLICT ROLLBACK, an
    // I/O error...): the group's earlier works are gone too.
    broken =
        status.ok() ? SqlStatus::failure(SqlCode::io, "the transaction was rolled back") : status;
    return broken;
  }
  const bool keep = status.ok() && !m.thrown;
  if (int rc = end_savepoint(c, kWrite, keep); rc != SQLITE_OK) {
    broken = failure(c.db, rc);
    if (keep) status = broken;
  }
  return status;
}

SqliteWriteStats SqliteDatabase::write_stats() const {
  return {works_.load(std::memory_order_relaxed), commits_.load(std::memory_order_relaxed),
          waits_.load(std::memory_order_relaxed), fruitless_waits_.load(std::memory_order_relaxed),
          wal_restarts_.load(std::memory_order_relaxed)};
}

SqlStatus SqliteDatabase::read(const SqlWork& work) {
  NestingGuard guard(this);
  if (guard.nested()) return nested_refusal("read");
  const auto deadline = busy_deadline();
  auto reader = lease_reader(deadline);
  if (!reader.ok()) return reader.status;
  ScopeExit give_back{[&] { return_reader(reader.value); }};
  if (SqlStatus s = begin(*reader.value, "BEGIN", deadline, options_.busy_timeout_ms); !s.ok())
    return s;
  return run_transaction(*reader.value, false, work);
}

SqlResult<std::string> SqliteDatabase::integrity_check() {
  const auto deadline = busy_deadline();
  auto reader = lease_reader(deadline);
  if (!reader.ok()) return {reader.status};
  ScopeExit give_back{[&] { return_reader(reader.value); }};
  std::string lines;
  reader.value->host_statement = true;
  char* error = nullptr;
  int rc = sqlite3_exec(
      reader.value->db, "PRAGMA integrity_check",
      [](void* out, int, char** values, char**) {
        auto* s = static_cast<std::string*>(out);
        *s += (s->empty() ? "" : "\n") + std::string(values[0] ? values[0] : "");
        return 0;
      },
      &lines, &error);
  reader.value->host_statement = false;
  sqlite3_free(error);
  if (rc != SQLITE_OK) return {failure(reader.value->db, rc)};
  return {{}, lines};
}

SqlResult<SqliteDatabase::Connection*> SqliteDatabase::lease_reader(Clock::time_point deadline) {
  std::unique_lock lock(readers_mutex_);
  if (!reader_freed_.wait_until(lock, deadline, [&] { return !idle_readers_.empty(); }))
    return {SqlStatus::failure(SqlCode::busy, "every reader connection is in use; gave up after " +
                                                  std::to_string(options_.busy_timeout_ms) +
                                                  " ms")};
  Connection* c = idle_readers_.back();
  idle_readers_.pop_back();
  return {{}, c};
}

void SqliteDatabase::return_reader(Connection* reader) {
  {
    std::lock_guard lock(readers_mutex_);
    idle_readers_.push_back(reader);
  }
  reader_freed_.notify_one();
}

}  // namespace gv::stores
