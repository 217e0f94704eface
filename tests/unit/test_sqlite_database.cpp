#include <pthread.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "core/blocking.hpp"
#include "eventually.hpp"
#include "stores/sqlite_database.hpp"
#include "temp_dir.hpp"

namespace fs = std::filesystem;
using namespace gv::stores;
using namespace std::chrono_literals;

namespace {

struct TempDir : gvtest::TempDir {
  TempDir() : gvtest::TempDir("gv-sql-test") {}
  fs::path file() const { return dir / "plugin.db"; }
};

std::unique_ptr<SqliteDatabase> open_db(const fs::path& path, SqliteOptions options = {}) {
  auto opened = SqliteDatabase::open(path, options);
  INFO(opened.status.message);
  REQUIRE(opened.ok());
  return std::move(opened.value);
}

SqlStatus exec_one(SqlDatabase& db, std::string_view sql, std::vector<SqlValue> params = {}) {
  return db.write([&](SqlTransaction& tx) { return tx.exec(sql, params).status; });
}

SqlRows select(SqlDatabase& db, std::string_view sql, std::vector<SqlValue> params = {}) {
  SqlRows rows;
  SqlStatus s = db.read([&](SqlTransaction& tx) {
    auto r = tx.query(sql, params);
    rows = std::move(r.value);
    return r.status;
  });
  INFO(s.message);
  REQUIRE(s.ok());
  return rows;
}

int64_t count(SqlDatabase& db, std::string_view table) {
  auto rows = select(db, "SELECT count(*) FROM " + std::string(table));
  return *sql_int(rows.rows.at(0).at(0));
}

// What one query returns inside a write, or its failure.
SqlResult<SqlRows> query_in_write(SqlDatabase& db, std::string_view sql,
                                  std::vector<SqlValue> params = {}) {
  SqlResult<SqlRows> result;
  db.write([&](SqlTransaction& tx) {
    result = tx.query(sql, params);
    return result.status;
  });
  return result;
}

}  // namespace

TEST_CASE("sqlite: every type round-trips", "[sql][sqlite]") {
  TempDir tmp;
  auto db = open_db(tmp.file());
  REQUIRE(exec_one(*db, "CREATE TABLE t (i INTEGER, r REAL, s TEXT, b BLOB, n TEXT)").ok());

  const std::string utf8 = "h\xC3\xA9llo \xE2\x9C\x93 \xF0\x9F\x98\x80";  // é ✓ 😀
  const std::string bytes("\0\x01\xFF\0z", 5);
  const std::vector<std::vector<SqlValue>> inserted = {
      {INT64_MAX, 3.25, utf8, SqlBlob(bytes), nullptr},
      {INT64_MIN, -1e300, "", SqlBlob(""), nullptr},
      {int64_t{0}, 0.5, "plain", SqlBlob(std::string(1, '\0')), nullptr},
  };
  for (const auto& row : inserted)
    REQUIRE(exec_one(*db, "INSERT INTO t VALUES ($1, $2, $3, $4, $5)", row).ok());

  auto rows = select(*db, "SELECT i, r, s, b, n FROM t ORDER BY rowid");
  CHECK(rows.columns == std::vector<std::string>{"i", "r", "s", "b", "n"});
  CHECK(rows.rows == inserted);
  CHECK(rows.column("b") == 3u);
  CHECK_FALSE(rows.column("nope"));

  const auto& first = rows.rows[0];
  CHECK(sql_int(first[0]) == INT64_MAX);
  CHECK(sql_real(first[1]) == 3.25);
  CHECK(sql_text(first[2]) == utf8);
  CHECK(sql_blob(first[3]) == bytes);
  CHECK(sql_is_null(first[4]));
  CHECK_FALSE(sql_text(first[3]));  // a blob is not text
  CHECK_FALSE(sql_blob(first[2]));  // nor text a blob
  CHECK_FALSE(sql_int(first[1]));
  CHECK(sql_real(first[0]) == static_cast<double>(INT64_MAX));
}

TEST_CASE("sqlite: text must be UTF-8 without NUL, reals not NaN", "[sql][sqlite]") {
  TempDir tmp;
  auto db = open_db(tmp.file());
  for (std::string bad : {std::string("a\0b", 3), std::string("\xC3"), std::string("\xC0\xAF"),
                          std::string("\xED\xA0\x80")}) {
    auto r = query_in_write(*db, "SELECT $1", {bad});
    CHECK(r.status.code == SqlCode::invalid);
    CHECK(r.status.message.find("$1") != std::string::npos);
  }
  CHECK(query_in_write(*db, "SELECT $1", {std::nan("")}).status.code == SqlCode::invalid);
  CHECK(query_in_write(*db, "SELECT $1", {SqlBlob(std::string("a\0b", 3))}).ok());
}

TEST_CASE("sqlite: placeholders are $1..$N, bound by number", "[sql][sqlite]") {
  TempDir tmp;
  auto db = open_db(tmp.file());
  auto r = query_in_write(*db, "SELECT $2 AS a, $1 AS b, $2 AS c", {int64_t{1}, "two"});
  REQUIRE(r.ok());
  CHECK(r.value.rows.at(0) == std::vector<SqlValue>{"two", int64_t{1}, "two"});

  CHECK(query_in_write(*db, "SELECT $1, $2", {int64_t{1}}).status.code == SqlCode::invalid);
  CHECK(query_in_write(*db, "SELECT $1", {int64_t{1}, int64_t{2}}).status.code == SqlCode::invalid);
  CHECK(query_in_write(*db, "SELECT $1, $3", {int64_t{1}, int64_t{2}, int64_t{3}}).status.code ==
        SqlCode::invalid);
  for (const char* other :
       {"SELECT ?", "SELECT ?1", "SELECT :a", "SELECT @a", "SELECT $a", "SELECT $01"}) {
    auto o = query_in_write(*db, other, {int64_t{1}});
    CHECK(o.status.code == SqlCode::invalid);
    CHECK(o.status.message.find("placeholders are $1..$N") != std::string::npos);
  }
}

TEST_CASE("sqlite: RETURNING gives ids, exec counts changed rows", "[sql][sqlite]") {
  TempDir tmp;
  auto db = open_db(tmp.file());
  SqlStatus s = db->write([](SqlTransaction& tx) {
    auto created = tx.exec("CREATE TABLE p (id INTEGER PRIMARY KEY, title TEXT)");
    CHECK(created.value == 0);
    auto a = tx.query("INSERT INTO p (title) VALUES ($1) RETURNING id", {"a"});
    auto b = tx.query("INSERT INTO p (title) VALUES ($1) RETURNING id, title", {"b"});
    REQUIRE(a.ok());
    REQUIRE(b.ok());
    CHECK(a.value.rows == std::vector<std::vector<SqlValue>>{{int64_t{1}}});
    CHECK(b.value.columns == std::vector<std::string>{"id", "title"});
    CHECK(b.value.rows == std::vector<std::vector<SqlValue>>{{int64_t{2}, "b"}});
    CHECK(tx.exec("UPDATE p SET title = $1", {"x"}).value == 2);
    CHECK(tx.exec("SELECT * FROM p").value == 0);  // not the UPDATE's count
    CHECK(tx.exec("UPDATE p SET title = 'y' WHERE id = 99").value == 0);
    CHECK(tx.exec("DELETE FROM p WHERE id = $1", {int64_t{1}}).value == 1);
    return SqlStatus::success();
  });
  CHECK(s.ok());
  CHECK(count(*db, "p") == 1);
}

TEST_CASE("sqlite: insert gives the new row's id, 0 when it inserted none", "[sql][sqlite]") {
  TempDir tmp;
  auto db = open_db(tmp.file());
  REQUIRE(
      exec_one(*db, "CREATE TABLE p (id INTEGER PRIMARY KEY, title TEXT UNIQUE, n INTEGER)").ok());
  SqlStatus s = db->write([](SqlTransaction& tx) {
    CHECK(tx.insert("INSERT INTO p (title) VALUES ($1)", {"a"}).value == 1);
    CHECK(tx.insert("  /* note */ -- line\n insert into p (title) VALUES ($1)", {"b"}).value == 2);
    CHECK(tx.insert("INSERT INTO p (id, title) VALUES (40, 'c')").value == 40);
    // Nothing inserted: not the id of the insert before.
    CHECK(tx.insert("INSERT INTO p (title) VALUES ('a') ON CONFLICT (title) DO NOTHING").value ==
          0);
    CHECK(tx.insert("INSERT INTO p (title, n) VALUES ('a', 1) "
                    "ON CONFLICT (title) DO UPDATE SET n = excluded.n")
              .value == 0);
    CHECK(tx.insert("REPLACE INTO p (id, title) VALUES (7, 'd')").value == 7);
    CHECK(tx.insert("INSERT INTO p (title) VALUES ('e'), ('f')").value == 42);  // the last
    return SqlStatus::success();
  });
  INFO(s.message);
  CHECK(s.ok());
  CHECK(count(*db, "p") == 6);
  CHECK(select(*db, "SELECT n FROM p WHERE title = 'a'").rows.at(0).at(0) == SqlValue{int64_t{1}});

  // Another statement is refused and fails the transaction; so is a read.
  for (const char* sql :
       {"UPDATE p SET n = 2", "SELECT 1", "INSERTED", "-- INSERT\nDELETE FROM p"}) {
    INFO(sql);
    s = db->write([&](SqlTransaction& tx) {
      CHECK(tx.insert(sql).status.code == SqlCode::invalid);
      return SqlStatus::success();
    });
    CHECK(s.code == SqlCode::invalid);
  }
  s = db->read(
      [](SqlTransaction& tx) { return tx.insert("INSERT INTO p (title) VALUES ('g')").status; });
  CHECK(s.code == SqlCode::invalid);
  CHECK(count(*db, "p") == 6);
}

TEST_CASE("sqlite: write rolls back on a failure status and on an exception", "[sql][sqlite]") {
  TempDir tmp;
  auto db = open_db(tmp.file());
  REQUIRE(exec_one(*db, "CREATE TABLE t (x INTEGER)").ok());

  SqlStatus s = db->write([](SqlTransaction& tx) {
    REQUIRE(tx.exec("INSERT INTO t VALUES (1)").ok());
    return SqlStatus::failure(SqlCode::constraint, "owner mismatch");
  });
  CHECK(s.code == SqlCode::constraint);
  CHECK(s.message == "owner mismatch");
  CHECK(count(*db, "t") == 0);

  CHECK_THROWS_AS(db->write([](SqlTransaction& tx) -> SqlStatus {
    REQUIRE(tx.exec("INSERT INTO t VALUES (2)").ok());
    throw std::runtime_error("plugin bug");
  }),
                  std::runtime_error);
  CHECK(count(*db, "t") == 0);

  CHECK_THROWS_AS(db->read([](SqlTransaction&) -> SqlStatus { throw 42; }), int);
  // Both connections were left usable.
  CHECK(exec_one(*db, "INSERT INTO t VALUES (3)").ok());
  CHECK(count(*db, "t") == 1);
}

TEST_CASE("sqlite: violations are constraint and fail the transaction", "[sql][sqlite]") {
  TempDir tmp;
  auto db = open_db(tmp.file());
  REQUIRE(db->write([](SqlTransaction& tx) {
              return tx.exec_script(
                  "CREATE TABLE u (id INTEGER PRIMARY KEY, name TEXT NOT NULL "
                  "UNIQUE,"
                  "                age INTEGER CHECK (age >= 0));"
                  "CREATE TABLE post (id INTEGER PRIMARY KEY,"
                  "                   author INTEGER NOT NULL REFERENCES u(id));"
                  "INSERT INTO u (id, name, age) VALUES (1, 'ann', 30);");
            }).ok());

  CHECK(exec_one(*db, "INSERT INTO u (name) VALUES ('ann')").code == SqlCode::constraint);
  CHECK(exec_one(*db, "INSERT INTO u (name) VALUES (NULL)").code == SqlCode::constraint);
  CHECK(exec_one(*db, "INSERT INTO u (name, age) VALUES ('bo', -1)").code == SqlCode::constraint);
  CHECK(exec_one(*db, "INSERT INTO post (author) VALUES (7)").code == SqlCode::constraint);
  CHECK(exec_one(*db, "INSERT INTO u (id, name) VALUES (1, 'cy')").code == SqlCode::constraint);

  // Ignoring the failure does not commit the rest: like PostgreSQL, the
  // transaction is failed, later statements report it and nothing lands.
  SqlStatus later;
  SqlStatus s = db->write([&](SqlTransaction& tx) {
    REQUIRE(tx.exec("INSERT INTO u (name) VALUES ('dee')").ok());
    CHECK(tx.exec("INSERT INTO u (name) VALUES ('ann')").status.code == SqlCode::constraint);
    later = tx.exec("INSERT INTO u (name) VALUES ('eve')").status;
    return SqlStatus::success();
  });
  CHECK(s.code == SqlCode::constraint);
  CHECK(later.code == SqlCode::constraint);
  CHECK(count(*db, "u") == 1);
  // ON CONFLICT is the portable way to insert unless present.
  CHECK(exec_one(*db, "INSERT INTO u (name) VALUES ($1) ON CONFLICT (name) DO NOTHING", {"ann"})
            .ok());
}

TEST_CASE("sqlite: bad SQL and host-owned statements are invalid", "[sql][sqlite]") {
  TempDir tmp;
  auto db = open_db(tmp.file());
  REQUIRE(exec_one(*db, "CREATE TABLE t (x INTEGER)").ok());
  for (const char* bad :
       {"SELEC 1", "SELECT * FROM missing", "", "  -- only a comment", "SELECT 1; SELECT 2",
        "BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT a", "PRAGMA foreign_keys = OFF",
        "PRAGMA synchronous", "ATTACH 'x.db' AS x"}) {
    INFO(bad);
    SqlStatus s = exec_one(*db, bad);
    CHECK(s.code == SqlCode::invalid);
    CHECK_FALSE(s.message.empty());
  }
  SqlStatus s = exec_one(*db, "SELEC 1");
  CHECK(s.message.find("SELEC 1") != std::string::npos);  // names the statement
  CHECK(db->write([](SqlTransaction& tx) {
            return tx.exec_script("CREATE TABLE a (x); COMMIT");
          }).code == SqlCode::invalid);
  CHECK(select(*db, "SELECT 1; -- trailing comment").rows.size() == 1);
}

TEST_CASE("sqlite: transactions do not nest, reads do not write", "[sql][sqlite]") {
  TempDir tmp;
  auto db = open_db(tmp.file());
  REQUIRE(exec_one(*db, "CREATE TABLE t (x INTEGER)").ok());
  auto noop = [](SqlTransaction&) { return SqlStatus::success(); };

  SqlStatus inner_write, inner_read;
  SqlStatus outer = db->write([&](SqlTransaction& tx) {
    REQUIRE(tx.exec("INSERT INTO t VALUES (1)").ok());
    inner_write = db->write(noop);
    inner_read = db->read(noop);
    return SqlStatus::success();
  });
  CHECK(outer.ok());  // a refused nested call does not fail the outer one
  CHECK(inner_write.code == SqlCode::invalid);
  CHECK(inner_read.code == SqlCode::invalid);
  CHECK(db->read([&](SqlTransaction&) { return db->write(noop); }).code == SqlCode::invalid);
  CHECK(count(*db, "t") == 1);

  // Another database may be used inside (another plugin's, say).
  TempDir tmp2;
  auto other = open_db(tmp2.file());
  CHECK(db->write([&](SqlTransaction&) { return other->write(noop); }).ok());

  CHECK(db->read([](SqlTransaction& tx) {
            return tx.exec("INSERT INTO t VALUES (2)").status;
          }).code == SqlCode::invalid);
  CHECK(db->read([](SqlTransaction& tx) {
            return tx.query("INSERT INTO t VALUES (2) RETURNING x").status;
          }).code == SqlCode::invalid);
  CHECK(db->read([](SqlTransaction& tx) { return tx.exec_script("DELETE FROM t"); }).code ==
        SqlCode::invalid);
  CHECK(count(*db, "t") == 1);
}

TEST_CASE("sqlite: concurrent writers all land", "[sql][sqlite]") {
  TempDir tmp;
  auto db = open_db(tmp.file());
  REQUIRE(exec_one(*db, "CREATE TABLE t (thread INTEGER, n INTEGER, UNIQUE (thread, n))").ok());
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int n = 0; n < 500; ++n) {
        if (!exec_one(*db, "INSERT INTO t VALUES ($1, $2)", {int64_t{t}, int64_t{n}}).ok())
          ++failures;
        // Readers alongside; no Catch macros off the main thread.
        auto read_count = [](SqlTransaction& tx) {
          return tx.query("SELECT count(*) FROM t").status;
        };
        if (n % 50 == 0 && !db->read(read_count).ok()) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(failures == 0);
  CHECK(count(*db, "t") == 2000);
}

TEST_CASE("sqlite: readers see committed data while a write is open", "[sql][sqlite]") {
  TempDir tmp;
  auto db = open_db(tmp.file());
  REQUIRE(exec_one(*db, "CREATE TABLE t (x INTEGER)").ok());
  REQUIRE(exec_one(*db, "INSERT INTO t VALUES (1)").ok());

  std::promise<void> inserted, finish;
  auto writer = std::async(std::launch::async, [&] {
    return db->write([&](SqlTransaction& tx) {
      auto s = tx.exec("INSERT INTO t VALUES (2)").status;
      inserted.set_value();
      finish.get_future().wait();
      return s;
    });
  });
  inserted.get_future().wait();
  CHECK(count(*db, "t") == 1);  // the committed row, without waiting
  finish.set_value();
  CHECK(writer.get().ok());
  CHECK(count(*db, "t") == 2);
}

TEST_CASE("sqlite: another process's write lock makes write busy, then it succeeds",
          "[sql][sqlite]") {
  TempDir tmp;
  auto db = open_db(tmp.file(), {.busy_timeout_ms = 200});
  REQUIRE(exec_one(*db, "CREATE TABLE t (x INTEGER)").ok());

  sqlite3* other = nullptr;
  REQUIRE(sqlite3_open(tmp.file().c_str(), &other) == SQLITE_OK);
  REQUIRE(sqlite3_exec(other, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) == SQLITE_OK);

  const auto start = std::chrono::steady_clock::now();
  SqlStatus s = exec_one(*db, "INSERT INTO t VALUES (1)");
  const auto waited = std::chrono::steady_clock::now() - start;
  CHECK(s.code == SqlCode::busy);
  CHECK(waited >= 150ms);
  CHECK(waited < 2s);
  CHECK(count(*db, "t") == 0);  // reads go on meanwhile

  REQUIRE(sqlite3_exec(other, "COMMIT", nullptr, nullptr, nullptr) == SQLITE_OK);
  CHECK(exec_one(*db, "INSERT INTO t VALUES (1)").ok());
  CHECK(count(*db, "t") == 1);
  sqlite3_close(other);
}

TEST_CASE("sqlite: waits for the in-process lock and readers are bounded too", "[sql][sqlite]") {
  TempDir tmp;
  auto db = open_db(tmp.file(), {.busy_timeout_ms = 200, .reader_connections = 1});
  auto hold = [](SqlTransaction&) {
    std::this_thread::sleep_for(700ms);
    return SqlStatus::success();
  };
  auto noop = [](SqlTransaction&) { return SqlStatus::success(); };

  auto writer = std::async(std::launch::async, [&] { return db->write(hold); });
  std::this_thread::sleep_for(100ms);
  CHECK(db->write(noop).code == SqlCode::busy);
  CHECK(writer.get().ok());

  auto reader = std::async(std::launch::async, [&] { return db->read(hold); });
  std::this_thread::sleep_for(100ms);
  CHECK(db->read(noop).code == SqlCode::busy);
  CHECK(reader.get().ok());
  CHECK(db->read(noop).ok());
}

TEST_CASE("sqlite: cached statements survive schema changes and eviction", "[sql][sqlite]") {
  TempDir tmp;
  auto db = open_db(tmp.file(), {.reader_connections = 1});
  REQUIRE(exec_one(*db, "CREATE TABLE t (a INTEGER)").ok());
  REQUIRE(exec_one(*db, "INSERT INTO t VALUES (1)").ok());
  const std::string all = "SELECT * FROM t";
  CHECK(select(*db, all).columns == std::vector<std::string>{"a"});
  CHECK(query_in_write(*db, all).value.columns == std::vector<std::string>{"a"});

  REQUIRE(exec_one(*db, "ALTER TABLE t ADD COLUMN b TEXT DEFAULT 'x'").ok());
  auto rows = select(*db, all);
  CHECK(rows.columns == std::vector<std::string>{"a", "b"});
  CHECK(rows.rows.at(0) == std::vector<SqlValue>{int64_t{1}, "x"});
  CHECK(query_in_write(*db, all).value.columns == std::vector<std::string>{"a", "b"});

  // More distinct statements than the cache holds, then the first again.
  for (size_t i = 0; i < 2 * SqliteDatabase::kStatementCacheSize; ++i)
    select(*db, "SELECT a + " + std::to_string(i) + " FROM t");
  CHECK(select(*db, all).rows.size() == 1);
}

TEST_CASE("sqlite: exec_script runs every statement or fails", "[sql][sqlite]") {
  TempDir tmp;
  auto db = open_db(tmp.file());
  CHECK(db->write([](SqlTransaction& tx) {
            return tx.exec_script(
                "CREATE TABLE a (x);\n"
                "-- a comment ; with a semicolon\n"
                "INSERT INTO a VALUES ('1;2');  INSERT INTO a VALUES (3);\n"
                "SELECT * FROM a;\n"
                "CREATE TABLE n (total INTEGER);  INSERT INTO n VALUES (0);\n"
                "CREATE TRIGGER count_a AFTER INSERT ON a BEGIN\n"
                "  UPDATE n SET total = total + 1;\n"
                "END;");
          }).ok());
  CHECK(count(*db, "a") == 2);
  REQUIRE(exec_one(*db, "INSERT INTO a VALUES (5)").ok());
  CHECK(select(*db, "SELECT total FROM n").rows.at(0).at(0) == SqlValue{int64_t{1}});
  SqlStatus s = db->write([](SqlTransaction& tx) {
    return tx.exec_script("INSERT INTO a VALUES (4); INSERT INTO nope VALUES (5)");
  });
  CHECK(s.code == SqlCode::invalid);
  CHECK(s.message.find("nope") != std::string::npos);
  CHECK(count(*db, "a") == 3);
}

// Readers map the file (mmap_bytes) while the writer's checkpoints copy the
// WAL into it with plain writes: every commit is seen, with the map and
// without, past several checkpoints and a file larger than the map.
TEST_CASE("sqlite: readers see every commit through the memory map", "[sql][sqlite]") {
  for (int64_t mmap : {int64_t{0}, int64_t{256} << 10, int64_t{64} << 20}) {
    TempDir tmp;
    auto db = open_db(tmp.file(), {.reader_connections = 2, .mmap_bytes = mmap});
    REQUIRE(exec_one(*db, "CREATE TABLE t (id INTEGER PRIMARY KEY, pad TEXT)").ok());
    int64_t rows = 0;
    for (int round = 0; round < 60; ++round) {
      REQUIRE(db->write([&](SqlTransaction& tx) {
                  for (int i = 0; i < 100; ++i) {
                    auto r = tx.exec("INSERT INTO t (pad) VALUES ($1)",
                                     {std::string(1000, static_cast<char>('a' + round % 26))});
                    if (!r.ok()) return r.status;
                  }
                  return SqlStatus{};
                }).ok());
      rows += 100;
      INFO("mmap " << mmap << " round " << round);
      REQUIRE(count(*db, "t") == rows);
      auto last = select(*db, "SELECT pad FROM t ORDER BY id DESC LIMIT 1");
      CHECK(sql_text(last.rows.at(0).at(0)).value_or("").front() == 'a' + round % 26);
    }
    // Checkpoints ran into the file: the checkpointer copies on its own
    // thread, so give it a moment after the last commit.
    CHECK(gvtest::eventually([&] { return fs::file_size(tmp.file()) > 1u << 20; }));
  }
}

TEST_CASE("sqlite: open checks options, the file and reports integrity", "[sql][sqlite]") {
  TempDir tmp;
  CHECK(SqliteDatabase::open(tmp.file(), {.synchronous = "OFF"}).status.code == SqlCode::invalid);
  CHECK(SqliteDatabase::open(tmp.file(), {.reader_connections = 0}).status.code ==
        SqlCode::invalid);
  CHECK(SqliteDatabase::open(tmp.file(), {.busy_timeout_ms = -1}).status.code == SqlCode::invalid);
  CHECK(SqliteDatabase::open(tmp.file(), {.mmap_bytes = -1}).status.code == SqlCode::invalid);
  auto missing = SqliteDatabase::open(tmp.dir / "no" / "such.db");
  CHECK(missing.status.code == SqlCode::io);
  CHECK(missing.status.message.find("no/such.db") != std::string::npos);

  {
    std::FILE* f = std::fopen((tmp.dir / "junk.db").c_str(), "w");
    std::fputs("this is not a database, just text long enough to be read as one", f);
    std::fclose(f);
    CHECK(SqliteDatabase::open(tmp.dir / "junk.db").status.code == SqlCode::io);
  }

  auto db = open_db(tmp.file(), {.synchronous = "full"});
  REQUIRE(exec_one(*db, "CREATE TABLE t (x)").ok());
  auto check = db->integrity_check();
  REQUIRE(check.ok());
  CHECK(check.value == "ok");
  CHECK(fs::exists(tmp.dir / "plugin.db-wal"));  // WAL mode
}

// ---- group commit ----

namespace {

// The schema of the group commit tests: a business table and its outbox,
// written together by every write.
void create_business_tables(SqlDatabase& db) {
  REQUIRE(db.write([](SqlTransaction& tx) {
              return tx.exec_script(
                  "CREATE TABLE item (thread INTEGER, n INTEGER, PRIMARY KEY (thread, n));"
                  "CREATE TABLE outbox (id INTEGER PRIMARY KEY, thread INTEGER, n INTEGER,"
                  "                     UNIQUE (thread, n));");
            }).ok());
}

SqlStatus insert_both(SqlTransaction& tx, int64_t thread, int64_t n) {
  if (auto s = tx.exec("INSERT INTO item VALUES ($1, $2)", {thread, n}).status; !s.ok()) return s;
  return tx.exec("INSERT INTO outbox (thread, n) VALUES ($1, $2)", {thread, n}).status;
}

// Runs work(m, tx) for members 0..members-1 in concurrent write()s, member
// 0 holding the write lock until every other has called write() (and 150 ms
// more), so that they queue up behind it and normally commit as one group.
// Returns each write's status; the message of a std::runtime_error a work
// throws is caught on its thread and kept in (*thrown)[m] when thrown is
// given ("" for the others).
std::vector<SqlStatus> write_together(SqlDatabase& db, int members,
                                      const std::function<SqlStatus(int, SqlTransaction&)>& work,
                                      std::vector<std::string>* thrown = nullptr) {
  std::atomic<int> started{0};
  std::atomic<bool> holding{false};
  std::vector<SqlStatus> status(static_cast<size_t>(members));
  if (thrown) thrown->assign(static_cast<size_t>(members), "");
  std::vector<std::thread> threads;
  for (int m = 0; m < members; ++m) {
    if (m == 1)
      while (!holding) std::this_thread::sleep_for(1ms);
    threads.emplace_back([&, m] {
      ++started;
      try {
        status[static_cast<size_t>(m)] = db.write([&](SqlTransaction& tx) {
          if (m == 0) {
            holding = true;
            while (started < members) std::this_thread::sleep_for(1ms);
            std::this_thread::sleep_for(150ms);  // they are all waiting now
          }
          return work(m, tx);
        });
      } catch (const std::runtime_error& e) {
        if (!thrown) throw;
        (*thrown)[static_cast<size_t>(m)] = e.what();
      }
    });
  }
  for (auto& th : threads) th.join();
  return status;
}

// The (thread, n) pairs in table, sorted.
std::vector<std::pair<int64_t, int64_t>> pairs_in(SqlDatabase& db, const std::string& table) {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (const auto& row : select(db, "SELECT thread, n FROM " + table + " ORDER BY thread, n").rows)
    out.emplace_back(*sql_int(row.at(0)), *sql_int(row.at(1)));
  return out;
}

}  // namespace

TEST_CASE("sqlite: group commit keeps every acknowledged write and isolates failures",
          "[sql][sqlite]") {
  TempDir tmp;
  auto db = open_db(tmp.file());
  create_business_tables(*db);
  constexpr int kThreads = 16, kWrites = 500;
  std::vector<std::vector<int64_t>> acked(kThreads);
  std::atomic<int> unexpected{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int64_t n = 0; n < kWrites; ++n) {
        // Every 10th write fails half-way: its business row is in, then its
        // outbox row collides with a row of the same thread. Every 10th
        // (other) one returns a failure after both inserts.
        const bool collide = n % 10 == 3 && n > 0, refuse = n % 10 == 7;
        SqlStatus s = db->write([&](SqlTransaction& tx) {
          if (collide) {
            if (SqlStatus i = tx.exec("INSERT INTO item VALUES ($1, $2)", {int64_t{t}, n}).status;
                !i.ok())
              return i;
            return tx.exec("INSERT INTO outbox (thread, n) VALUES ($1, $2)", {int64_t{t}, n - 1})
                .status;
          }
          SqlStatus both = insert_both(tx, t, n);
          if (both.ok() && refuse) return SqlStatus::failure(SqlCode::invalid, "refused");
          return both;
        });
        if (s.ok()) acked[t].push_back(n);
        const SqlCode expected = collide  ? SqlCode::constraint
                                 : refuse ? SqlCode::invalid
                                          : SqlCode::ok;
        if (s.code != expected) ++unexpected;
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(unexpected == 0);

  std::vector<std::pair<int64_t, int64_t>> expected;
  for (int t = 0; t < kThreads; ++t)
    for (int64_t n : acked[t]) expected.emplace_back(t, n);
  CHECK(expected.size() == size_t{kThreads} * (kWrites - kWrites / 5));
  CHECK(pairs_in(*db, "item") == expected);  // acknowledged rows, and nothing else
  CHECK(pairs_in(*db, "outbox") == expected);
  const auto stats = db->write_stats();
  INFO("works " << stats.works << ", commits " << stats.commits);
  CHECK(stats.works == 1 + size_t{kThreads} * kWrites);
  CHECK(db->integrity_check().value == "ok");
}

TEST_CASE("sqlite: a group shares one commit; a failing member leaves no trace", "[sql][sqlite]") {
  TempDir tmp;
  auto db = open_db(tmp.file());
  create_business_tables(*db);
  const auto before = db->write_stats();

  // The members run as one group (write_together).
  constexpr int kMembers = 8;
  enum Role { plain, refuse, collide, throws };
  const Role role[kMembers] = {plain, plain, refuse, plain, collide, throws, plain, plain};
  std::mutex hooks_mutex;
  std::vector<int> hooks_ran;  // members whose after_commit ran
  std::vector<std::string> thrown;
  const auto status = write_together(
      *db, kMembers,
      [&](int m, SqlTransaction& tx) {
        REQUIRE(tx.after_commit([&, m] {
                    std::lock_guard lock(hooks_mutex);
                    hooks_ran.push_back(m);
                  }).ok());
        SqlStatus s = insert_both(tx, m, 1);
        if (role[m] == refuse) return SqlStatus::failure(SqlCode::constraint, "refused");
        if (role[m] == collide) {
          // Fails (already present); the work ignores it, as a careless
          // DAL might: the write still fails and is undone.
          (void)insert_both(tx, m, 1);
          return SqlStatus::success();
        }
        if (role[m] == throws) throw std::runtime_error("member " + std::to_string(m));
        return s;
      },
      &thrown);

  std::vector<std::pair<int64_t, int64_t>> kept;
  for (int m = 0; m < kMembers; ++m) {
    INFO("member " << m << ": " << status[m].message);
    // Only to its own caller.
    CHECK(thrown[m] == (role[m] == throws ? "member " + std::to_string(m) : ""));
    if (role[m] == plain) {
      CHECK(status[m].ok());
      kept.emplace_back(m, 1);
    }
  }
  CHECK(status[2].code == SqlCode::constraint);
  CHECK(status[2].message == "refused");
  CHECK(status[4].code == SqlCode::constraint);
  CHECK(pairs_in(*db, "item") == kept);
  CHECK(pairs_in(*db, "outbox") == kept);
  // after_commit ran for exactly the members whose changes were kept.
  std::sort(hooks_ran.begin(), hooks_ran.end());
  std::vector<int> kept_members;
  for (const auto& [m, n] : kept) kept_members.push_back(static_cast<int>(m));
  CHECK(hooks_ran == kept_members);

  const auto after = db->write_stats();
  const auto works = after.works - before.works, commits = after.commits - before.commits;
  INFO("works " << works << ", commits " << commits);
  CHECK(works == kMembers);
  CHECK(commits < works);
  CHECK(commits <= 3);  // normally 1: the others queued behind member 0
}

TEST_CASE("sqlite: a transaction's deferred object spans its group; before_commit runs once",
          "[sql][sqlite]") {
  TempDir tmp;
  auto db = open_db(tmp.file());
  REQUIRE(exec_one(*db, "CREATE TABLE t (k INTEGER PRIMARY KEY)").ok());
  REQUIRE(exec_one(*db, "CREATE TABLE tally (n INTEGER NOT NULL)").ok());
  // Counts the works of its transaction; before COMMIT it records the count,
  // or refuses when a work asked it to.
  struct Tally final : SqlTransaction::Deferred {
    int works = 0;
    bool refuse = false;
    SqlStatus before_commit(SqlTransaction& tx) override {
      if (refuse) return SqlStatus::failure(SqlCode::constraint, "refused before commit");
      return tx.exec("INSERT INTO tally (n) VALUES ($1)", {int64_t{works}}).status;
    }
  };
  static const char key = 0;
  // The members write as one group (write_together); member `refuser` (if
  // >= 0) has the transaction refused.
  constexpr int kMembers = 6;
  auto round = [&](int first_key, int refuser) {
    return write_together(*db, kMembers, [&](int m, SqlTransaction& tx) {
      auto* tally =
          static_cast<Tally*>(tx.deferred(&key, [] { return std::make_unique<Tally>(); }));
      REQUIRE(tally);
      ++tally->works;
      if (m == refuser) tally->refuse = true;
      return tx.exec("INSERT INTO t (k) VALUES ($1)", {int64_t{first_key + m}}).status;
    });
  };

  const auto before = db->write_stats();
  for (const auto& s : round(0, -1)) CHECK(s.ok());
  const auto commits = db->write_stats().commits - before.commits;
  // One tally row per transaction, counting the works in it: together, all.
  CHECK(count(*db, "tally") == static_cast<int64_t>(commits));
  CHECK(select(*db, "SELECT sum(n) FROM tally").rows.at(0).at(0) == SqlValue{int64_t{kMembers}});
  CHECK(commits < kMembers);

  // A refusing before_commit fails every work of its transaction, and keeps
  // nothing of them; works in other transactions (if the group split) stand.
  auto status = round(100, 3);
  CHECK(status[3].message == "refused before commit");
  int kept = 0;
  for (int m = 0; m < kMembers; ++m) {
    INFO("member " << m << ": " << status[m].message);
    const bool present =
        !select(*db, "SELECT k FROM t WHERE k = $1", {int64_t{100 + m}}).rows.empty();
    CHECK(present == status[m].ok());
    kept += present;
  }
  CHECK(kept < kMembers);
  // The tallies recorded count exactly the works committed.
  CHECK(select(*db, "SELECT sum(n) FROM tally").rows.at(0).at(0) ==
        SqlValue{int64_t{kMembers + kept}});

  // None in a read.
  SqlStatus s = db->read([](SqlTransaction& tx) {
    CHECK(tx.deferred(&key, [] { return std::make_unique<Tally>(); }) == nullptr);
    return SqlStatus::success();
  });
  CHECK(s.ok());
}

TEST_CASE("sqlite: max_group_size 1 commits every write alone", "[sql][sqlite]") {
  TempDir tmp;
  auto db = open_db(tmp.file(), {.max_group_size = 1});
  create_business_tables(*db);
  CHECK(SqliteDatabase::open(tmp.dir / "x.db", {.max_group_size = 0}).status.code ==
        SqlCode::invalid);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int64_t n = 0; n < 100; ++n)
        (void)db->write([&](SqlTransaction& tx) { return insert_both(tx, t, n); });
    });
  for (auto& th : threads) th.join();
  CHECK(count(*db, "outbox") == 400);
  const auto stats = db->write_stats();
  CHECK(stats.commits == stats.works);
}

TEST_CASE("sqlite: commit_wait gathers writes that keep coming, not a lone writer's",
          "[sql][sqlite]") {
  TempDir tmp;
  // Eight threads each writing every 4 ms, in turn: with commit_wait the leader
  // waits for the next write, and groups grow; without, each write finds
  // the queue empty and commits alone or nearly.
  auto stream = [&](const fs::path& file, std::chrono::microseconds wait) {
    auto db = open_db(file, {.commit_wait = wait});
    create_business_tables(*db);
    const auto before = db->write_stats();
    std::atomic<int> done{0}, failed{0};
    std::vector<std::thread> threads;
    const auto start = std::chrono::steady_clock::now() + 10ms;
    for (int t = 0; t < 8; ++t)
      threads.emplace_back([&, t] {
        for (int64_t n = 0; n < 25; ++n) {
          // Staggered: together, a write every half millisecond.
          std::this_thread::sleep_until(start + t * 500us + n * 4ms);
          db->write_detached([t, n](SqlTransaction& tx) { return insert_both(tx, t, n); },
                             [&](SqlStatus s) {
                               if (!s.ok()) ++failed;
                               ++done;
                             });
        }
      });
    for (auto& th : threads) th.join();
    for (int i = 0; i < 500 && done < 200; ++i) std::this_thread::sleep_for(10ms);
    REQUIRE(done == 200);
    CHECK(failed == 0);
    CHECK(count(*db, "outbox") == 200);
    auto after = db->write_stats();
    after.works -= before.works;
    after.commits -= before.commits;
    after.waits -= before.waits;
    after.fruitless_waits -= before.fruitless_waits;
    return after;
  };
  const auto waiting = stream(tmp.dir / "wait.db", 20ms);
  const auto eager = stream(tmp.dir / "eager.db", 0us);
  INFO("groups of " << double(waiting.works) / double(waiting.commits) << " waiting, "
                    << double(eager.works) / double(eager.commits) << " without");
  CHECK(waiting.works >= 3 * waiting.commits);
  CHECK(waiting.waits > waiting.fruitless_waits);
  CHECK(eager.waits == 0);
  CHECK(eager.commits >= 2 * waiting.commits);

  // A lone writer: no wait brings it anything, so they back off (waits at
  // its groups 1, 3, 6, 11, 20 and 37 of 50, skipping 1, 2, 4, 8, 16).
  auto db = open_db(tmp.file(), {.commit_wait = 20ms});
  create_business_tables(*db);
  const auto before = db->write_stats();
  for (int64_t n = 0; n < 50; ++n)
    REQUIRE(db->write([n](SqlTransaction& tx) { return insert_both(tx, 9, n); }).ok());
  const auto lone = db->write_stats();
  CHECK(lone.commits - before.commits == 50);
  CHECK(lone.waits - before.waits >= 1);
  CHECK(lone.waits - before.waits <= 7);
  CHECK(lone.fruitless_waits - before.fruitless_waits == lone.waits - before.waits);
}

TEST_CASE("sqlite: another process's write lock makes each waiting writer busy, losing nothing",
          "[sql][sqlite]") {
  TempDir tmp;
  auto db = open_db(tmp.file(), {.busy_timeout_ms = 200});
  create_business_tables(*db);

  sqlite3* other = nullptr;
  REQUIRE(sqlite3_open(tmp.file().c_str(), &other) == SQLITE_OK);
  REQUIRE(sqlite3_exec(other, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) == SQLITE_OK);
  const auto locked_at = std::chrono::steady_clock::now();

  // Writers keep writing while the other connection holds the lock for
  // 800 ms, and for a while after.
  constexpr int kThreads = 8;
  std::atomic<bool> released{false};
  std::vector<std::vector<int64_t>> acked(kThreads);
  std::vector<int> busy(kThreads, 0), other_failures(kThreads, 0);
  std::vector<std::chrono::steady_clock::duration> longest_busy(kThreads),
      shortest_busy(kThreads, 1h);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      int64_t n = 0;
      auto stop = std::chrono::steady_clock::time_point::max();
      while (std::chrono::steady_clock::now() < stop) {
        const auto start = std::chrono::steady_clock::now();
        SqlStatus s = db->write([&](SqlTransaction& tx) { return insert_both(tx, t, n); });
        const auto waited = std::chrono::steady_clock::now() - start;
        if (s.ok()) {
          acked[t].push_back(n);
        } else if (s.code == SqlCode::busy) {
          ++busy[t];
          longest_busy[t] = std::max(longest_busy[t], waited);
          shortest_busy[t] = std::min(shortest_busy[t], waited);
        } else {
          ++other_failures[t];
        }
        ++n;
        if (released && stop == std::chrono::steady_clock::time_point::max())
          stop = std::chrono::steady_clock::now() + 300ms;
      }
    });
  }
  std::this_thread::sleep_for(800ms);
  CHECK(count(*db, "item") == 0);  // reads go on meanwhile
  REQUIRE(sqlite3_exec(other, "COMMIT", nullptr, nullptr, nullptr) == SQLITE_OK);
  const auto held = std::chrono::steady_clock::now() - locked_at;
  released = true;
  for (auto& th : threads) th.join();
  sqlite3_close(other);

  std::vector<std::pair<int64_t, int64_t>> expected;
  for (int t = 0; t < kThreads; ++t) {
    INFO("thread " << t);
    CHECK(other_failures[t] == 0);
    CHECK(busy[t] >= 2);  // 800 ms held, 200 ms each
    CHECK(busy[t] <= 1 + held / 150ms);
    // Each busy write gave up after about the timeout, not before and not
    // much later.
    CHECK(shortest_busy[t] >= 150ms);
    CHECK(longest_busy[t] < 600ms);
    CHECK(acked[t].size() > 0);  // writes resumed after the release
    for (int64_t n : acked[t]) expected.emplace_back(t, n);
  }
  std::sort(expected.begin(), expected.end());
  CHECK(pairs_in(*db, "item") == expected);
  CHECK(pairs_in(*db, "outbox") == expected);
}

TEST_CASE("sqlite: a work undoing the whole transaction fails its waiting group-mates",
          "[sql][sqlite]") {
  TempDir tmp;
  auto db = open_db(tmp.file());
  REQUIRE(exec_one(*db, "CREATE TABLE t (k INTEGER UNIQUE ON CONFLICT ROLLBACK)").ok());
  REQUIRE(exec_one(*db, "INSERT INTO t VALUES (0)").ok());

  // The first write holds the lock until the second waits for it, so both
  // run in one group; the second's conflict rolls back the transaction.
  std::atomic<bool> holding{false}, second_started{false};
  std::atomic<int> hooks_ran{0};
  auto first = std::async(std::launch::async, [&] {
    return db->write([&](SqlTransaction& tx) {
      holding = true;
      while (!second_started) std::this_thread::sleep_for(1ms);
      std::this_thread::sleep_for(150ms);
      // Its changes go with the group's transaction: so does this.
      REQUIRE(tx.after_commit([&] { ++hooks_ran; }).ok());
      return tx.exec("INSERT INTO t VALUES (1)").status;
    });
  });
  while (!holding) std::this_thread::sleep_for(1ms);
  auto second = std::async(std::launch::async, [&] {
    second_started = true;
    return exec_one(*db, "INSERT INTO t VALUES (0)");
  });
  const SqlStatus second_status = second.get(), first_status = first.get();
  CHECK(second_status.code == SqlCode::constraint);
  CHECK(first_status.code == SqlCode::busy);  // retry: it was not at fault
  CHECK(first_status.message.find("commit group") != std::string::npos);
  CHECK(count(*db, "t") == 1);
  CHECK(hooks_ran == 0);
  // The next writes open a new group.
  CHECK(exec_one(*db, "INSERT INTO t VALUES (1)").ok());
  CHECK(count(*db, "t") == 2);
}

TEST_CASE("sqlite: nested() keeps a part that succeeds and undoes only a part that fails",
          "[sql][sqlite]") {
  TempDir tmp;
  auto db = open_db(tmp.file());
  create_business_tables(*db);
  int threw = 0;
  SqlStatus failed_part, refused_part;
  SqlStatus s = db->write([&](SqlTransaction& tx) -> SqlStatus {
    REQUIRE(tx.nested([](SqlTransaction& t) { return insert_both(t, 1, 1); }).ok());
    // A failing statement inside: undone, and the outer transaction goes on.
    failed_part = tx.nested([](SqlTransaction& t) {
      (void)insert_both(t, 2, 1);
      (void)insert_both(t, 1, 1);  // already there
      return SqlStatus::success();
    });
    // A part returning a failure after writing.
    refused_part = tx.nested([](SqlTransaction& t) {
      (void)insert_both(t, 3, 1);
      return SqlStatus::failure(SqlCode::invalid, "no");
    });
    try {
      (void)tx.nested([](SqlTransaction& t) -> SqlStatus {
        (void)insert_both(t, 4, 1);
        throw std::runtime_error("part");
      });
    } catch (const std::runtime_error&) {
      ++threw;
    }
    return insert_both(tx, 5, 1);
  });
  CHECK(s.ok());
  CHECK(failed_part.code == SqlCode::constraint);
  CHECK(refused_part.message == "no");
  CHECK(threw == 1);
  const std::vector<std::pair<int64_t, int64_t>> kept = {{1, 1}, {5, 1}};
  CHECK(pairs_in(*db, "item") == kept);
  CHECK(pairs_in(*db, "outbox") == kept);
  // Refused in a read transaction.
  CHECK(db->read([](SqlTransaction& tx) {
              return tx.nested([](SqlTransaction&) { return SqlStatus::success(); });
            }).code == SqlCode::invalid);
}

TEST_CASE("sqlite: detached writes complete once committed, mixed with waiting writers",
          "[sql][sqlite]") {
  TempDir tmp;
  auto db = open_db(tmp.file());
  create_business_tables(*db);
  constexpr int kThreads = 8, kWrites = 300;
  std::mutex m;
  std::vector<std::pair<int64_t, int64_t>> acked;
  std::atomic<int> completions{0}, wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int64_t n = 0; n < kWrites; ++n) {
        const bool refuse = n % 10 == 7;
        auto work = [t, n, refuse](SqlTransaction& tx) -> SqlStatus {
          SqlStatus both = insert_both(tx, t, n);
          if (both.ok() && refuse) return SqlStatus::failure(SqlCode::invalid, "refused");
          return both;
        };
        auto record = [&, t, n, refuse](SqlStatus s) {
          if (s.code != (refuse ? SqlCode::invalid : SqlCode::ok)) ++wrong;
          if (s.ok()) {
            std::lock_guard lock(m);
            acked.emplace_back(t, n);
          }
        };
        if (t % 2 == 0) {  // half detached, half waiting: they share groups
          db->write_detached(work, [&, record](SqlStatus s) {
            record(std::move(s));
            ++completions;
          });
        } else {
          record(db->write(work));
          ++completions;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  // A detached work's completion may still run on another thread's lead;
  // the last leader drains the queue before it lets go.
  for (int i = 0; i < 500 && completions < kThreads * kWrites; ++i)
    std::this_thread::sleep_for(10ms);
  REQUIRE(completions == kThreads * kWrites);
  CHECK(wrong == 0);
  std::sort(acked.begin(), acked.end());
  CHECK(acked.size() == size_t{kThreads} * (kWrites - kWrites / 10));
  CHECK(pairs_in(*db, "item") == acked);  // every acknowledged row, nothing else
  CHECK(pairs_in(*db, "outbox") == acked);
  const auto stats = db->write_stats();
  CHECK(stats.commits < stats.works);
}

TEST_CASE("sqlite: a detached work that throws or nests fails alone; done sees the commit",
          "[sql][sqlite]") {
  TempDir tmp;
  auto db = open_db(tmp.file());
  REQUIRE(exec_one(*db, "CREATE TABLE t (x INTEGER)").ok());
  std::optional<SqlStatus> thrown, nested, fine;
  db->write_detached(
      [](SqlTransaction& tx) -> SqlStatus {
        (void)tx.exec("INSERT INTO t VALUES (1)");
        throw std::runtime_error("boom");
      },
      [&](SqlStatus s) { thrown = s; });
  db->write_detached(
      [&](SqlTransaction&) { return db->write([](SqlTransaction&) { return SqlStatus{}; }); },
      [&](SqlStatus s) { nested = s; });
  db->write_detached([](SqlTransaction& tx) { return tx.exec("INSERT INTO t VALUES (2)").status; },
                     [&](SqlStatus s) {
                       fine = s;
                       // Called after the commit: another connection sees
                       // the row. (done runs inside the leader's write, so
                       // it may not use this database itself.)
                       sqlite3* other = nullptr;
                       REQUIRE(sqlite3_open(tmp.file().c_str(), &other) == SQLITE_OK);
                       sqlite3_stmt* st = nullptr;
                       REQUIRE(sqlite3_prepare_v2(other, "SELECT count(*) FROM t", -1, &st,
                                                  nullptr) == SQLITE_OK);
                       REQUIRE(sqlite3_step(st) == SQLITE_ROW);
                       CHECK(sqlite3_column_int(st, 0) == 1);
                       sqlite3_finalize(st);
                       sqlite3_close(other);
                     });
  // Alone on this thread, each led its own group before returning.
  REQUIRE(thrown);
  REQUIRE(nested);
  REQUIRE(fine);
  CHECK(thrown->code == SqlCode::invalid);
  CHECK(nested->code == SqlCode::invalid);
  CHECK(fine->ok());
  CHECK(count(*db, "t") == 1);
}

TEST_CASE("sqlite: run_completions takes a group's completions off the writing thread",
          "[sql][sqlite]") {
  TempDir tmp;
  std::vector<std::function<void()>> handed;  // jobs given to run_completions, not yet run
  bool refuse = false;
  SqliteOptions options;
  options.run_completions = [&](std::function<void()> job) {
    if (refuse) return false;
    handed.push_back(std::move(job));
    return true;
  };
  auto db = open_db(tmp.file(), options);
  REQUIRE(exec_one(*db, "CREATE TABLE t (x INTEGER)").ok());
  std::optional<SqlStatus> first, second, third;
  auto insert = [](SqlTransaction& tx) { return tx.exec("INSERT INTO t VALUES (1)").status; };
  db->write_detached(insert, [&](SqlStatus s) { first = s; });
  // Committed and led to the end on this thread, but not yet completed:
  // its completion waits in the job it was handed.
  CHECK(count(*db, "t") == 1);
  CHECK_FALSE(first);
  REQUIRE(handed.size() == 1);
  handed[0]();
  REQUIRE(first);
  CHECK(first->ok());
  // A waiting write() is woken as before: no job for it.
  CHECK(db->write(insert).ok());
  CHECK(handed.size() == 1);
  // Refused, the completion runs on the writing thread after all.
  refuse = true;
  db->write_detached(insert, [&](SqlStatus s) { second = s; });
  REQUIRE(second);
  CHECK(second->ok());
  db->write_detached([](SqlTransaction&) { return SqlStatus::failure(SqlCode::invalid, "no"); },
                     [&](SqlStatus s) { third = s; });
  REQUIRE(third);
  CHECK(third->code == SqlCode::invalid);
  CHECK(count(*db, "t") == 3);
}

TEST_CASE("sqlite: a thread that must not wait leads no group; the lead thread runs its works",
          "[sql][sqlite]") {
  TempDir tmp;
  std::atomic<int> handed{0};  // completion jobs given to run_completions
  SqliteOptions options;
  options.run_completions = [&](std::function<void()> job) {
    ++handed;
    job();
    return true;
  };
  auto db = open_db(tmp.file(), options);
  REQUIRE(exec_one(*db, "CREATE TABLE t (x INTEGER)").ok());
  const int handed_before = handed;
  constexpr int kWrites = 200;
  std::mutex m;
  std::set<std::string> ran_on;  // names of the threads the works ran on
  std::atomic<int> completed{0}, failed{0}, on_caller{0};
  const auto caller = std::this_thread::get_id();
  auto write = [&](int64_t x) {
    db->write_detached(
        [&, x](SqlTransaction& tx) {
          if (std::this_thread::get_id() == caller) ++on_caller;
          char name[32] = {};
          pthread_getname_np(pthread_self(), name, sizeof name);
          {
            std::lock_guard lock(m);
            ran_on.insert(name);
          }
          return tx.exec("INSERT INTO t VALUES ($1)", {x}).status;
        },
        [&](SqlStatus s) {
          if (!s.ok()) ++failed;
          ++completed;
        });
  };
  {
    gv::NoWaitRegion no_wait;  // a network thread running a quick handler
    for (int64_t x = 0; x < kWrites; ++x) write(x);
  }
  db->finish_writes();  // returns once every queued write ran and completed
  REQUIRE(completed == kWrites);
  CHECK(failed == 0);
  CHECK(on_caller == 0);
  CHECK(ran_on == std::set<std::string>{"gv-sqlite-lead"});
  CHECK(count(*db, "t") == kWrites);
  CHECK(handed == handed_before);  // the lead thread completes its groups itself
  // Outside the region, the caller of an idle database leads its own write
  // and hands its completion over.
  write(kWrites);
  CHECK(completed == kWrites + 1);  // done before write_detached returned
  CHECK(on_caller == 1);
  CHECK(handed == handed_before + 1);
  CHECK(count(*db, "t") == kWrites + 1);
}

TEST_CASE("sqlite: a queued write joins the group under way, or else writes alone",
          "[sql][sqlite]") {
  TempDir tmp;
  auto db = open_db(tmp.file());
  REQUIRE(exec_one(*db, "CREATE TABLE t (x INTEGER)").ok());

  // No group under way: a write of its own, done before it returns.
  std::optional<SqlStatus> alone;
  std::thread::id ran_on;
  db->write_queued(
      [&](SqlTransaction& tx) {
        ran_on = std::this_thread::get_id();
        return tx.exec("INSERT INTO t VALUES (1)").status;
      },
      [&](SqlStatus s) { alone = s; });
  REQUIRE(alone);
  CHECK(alone->ok());
  CHECK(ran_on == std::this_thread::get_id());
  CHECK(count(*db, "t") == 1);

  // A group under way (a writer holding it open): the queued work joins
  // it and commits with it, on the leader's thread.
  std::promise<void> entered, go;
  std::thread::id leader;
  std::thread writer([&] {
    (void)db->write([&](SqlTransaction& tx) {
      leader = std::this_thread::get_id();
      entered.set_value();
      go.get_future().wait();
      return tx.exec("INSERT INTO t VALUES (2)").status;
    });
  });
  entered.get_future().wait();
  std::promise<SqlStatus> joined;
  db->write_queued(
      [&](SqlTransaction& tx) {
        ran_on = std::this_thread::get_id();
        return tx.exec("INSERT INTO t VALUES (3)").status;
      },
      [&](SqlStatus s) { joined.set_value(s); });
  const auto commits = db->write_stats().commits;
  go.set_value();
  writer.join();
  CHECK(joined.get_future().get().ok());
  CHECK(ran_on == leader);
  CHECK(db->write_stats().commits == commits + 1);  // one COMMIT for both
  CHECK(count(*db, "t") == 3);
}

namespace {

// Fills t (id, pad) with rows of 3,000 bytes: rounds writes of per_round rows.
void insert_padded(SqliteDatabase& db, int rounds, int per_round) {
  const std::string pad(3000, 'p');
  for (int round = 0; round < rounds; ++round)
    REQUIRE(db.write([&](SqlTransaction& tx) {
                for (int i = 0; i < per_round; ++i)
                  if (auto r = tx.exec("INSERT INTO t (pad) VALUES ($1)", {pad}); !r.ok())
                    return r.status;
                return SqlStatus{};
              }).ok());
}

}  // namespace

TEST_CASE("sqlite: checkpoints run beside the writes and keep the WAL bounded", "[sql][sqlite]") {
  TempDir tmp;
  CHECK(SqliteDatabase::open(tmp.dir / "x.db", {.wal_bytes = (8 << 20) - 1}).status.code ==
        SqlCode::invalid);
  auto db = open_db(tmp.file(), {.wal_bytes = 8 << 20});
  REQUIRE(exec_one(*db, "CREATE TABLE t (id INTEGER PRIMARY KEY, pad TEXT)").ok());
  CHECK(db->write_stats().wal_restarts == 0);  // a new database's first WAL is no restart
  // About 24,000 pages through the WAL, twelve times wal_bytes.
  insert_padded(*db, 300, 80);
  for (int i = 0; i < 200 && db->checkpoints() == 0; ++i) std::this_thread::sleep_for(10ms);
  CHECK(db->checkpoints() > 0);
  fs::path wal = tmp.file().string() + "-wal";
  REQUIRE(fs::exists(wal));
  INFO("WAL " << fs::file_size(wal) << " bytes after " << db->checkpoints() << " checkpoints");
  // Without restarts the WAL would hold every page written (~100 MB); it
  // starts over past wal_bytes, and writers wait for the checkpointer
  // rather than let it pass twice that.
  CHECK(fs::file_size(wal) > 4u << 20);
  CHECK(fs::file_size(wal) < 17u << 20);
  CHECK(fs::file_size(tmp.file()) > 50u << 20);  // copied into the database file
  // It started over about once per wal_bytes written (2,048 pages), each
  // counted; a pass of the checkpointer that caught up while the writer
  // was descheduled may begin a WAL sooner, after 1,000 pages at least.
  INFO("WAL restarts " << db->write_stats().wal_restarts);
  CHECK(db->write_stats().wal_restarts >= 4);
  CHECK(db->write_stats().wal_restarts <= 24);
  CHECK(count(*db, "t") == 300 * 80);
  CHECK(db->integrity_check().value == "ok");
}

namespace {

// The nice values of this process's threads named name (/proc/self/task).
std::vector<int> nice_of_threads(const std::string& name) {
  std::vector<int> out;
  for (const auto& task : fs::directory_iterator("/proc/self/task")) {
    std::ifstream comm(task.path() / "comm");
    std::string c;
    if (!std::getline(comm, c) || c != name) continue;
    std::ifstream stat_file(task.path() / "stat");
    std::string stat((std::istreambuf_iterator<char>(stat_file)), {});
    // Fields after the name in parentheses: state is the 3rd, nice the 19th.
    std::istringstream fields(stat.substr(stat.rfind(')') + 1));
    std::string field;
    for (int i = 3; i <= 19 && fields >> field; ++i) {
    }
    out.push_back(std::stoi(field));
  }
  return out;
}

}  // namespace

TEST_CASE("sqlite: the checkpoint thread runs below the writers' priority, the lead thread at it",
          "[sql][sqlite]") {
  const int own = getpriority(PRIO_PROCESS, 0);  // this thread's, which new threads inherit
  if (own >= SqliteDatabase::kCheckpointerNice) {
    WARN("the tests run at nice " << own << ": nothing to lower the checkpointer below");
    return;
  }
  TempDir tmp;
  auto db = open_db(tmp.file());
  // Each thread names itself, and the checkpointer lowers its own
  // priority, as it starts.
  CHECK(gvtest::eventually([&] {
    auto checkpointers = nice_of_threads("gv-checkpoint");
    return !checkpointers.empty() &&
           std::all_of(checkpointers.begin(), checkpointers.end(),
                       [](int n) { return n == SqliteDatabase::kCheckpointerNice; });
  }));
  std::vector<int> leads;
  CHECK(gvtest::eventually([&] { return !(leads = nice_of_threads("gv-sqlite-lead")).empty(); }));
  for (int n : leads) CHECK(n == own);
}

namespace {

// This thread's write system calls so far (/proc/thread-self/io syscw).
int64_t write_calls_of_this_thread() {
  std::ifstream io("/proc/thread-self/io");
  std::string key;
  int64_t value = 0;
  while (io >> key >> value)
    if (key == "syscw:") return value;
  return -1;
}

}  // namespace

// SQLite writes a WAL frame as two calls (header, then page); the store's
// VFS (stores/sqlite_wal_vfs.hpp) writes a commit's frames at once, before
// SQLite shows the commit to readers.
TEST_CASE("sqlite: a commit writes its WAL frames in one call, seen at once by readers",
          "[sql][sqlite]") {
  TempDir tmp;
  auto db = open_db(tmp.file());
  REQUIRE(exec_one(*db, "CREATE TABLE t (id INTEGER PRIMARY KEY, pad TEXT)").ok());
  insert_padded(*db, 1, 1);  // the WAL's header written and synced
  for (int round = 1; round <= 5; ++round) {
    // write() runs the work and its COMMIT on this thread (no other
    // writer to lead it): 20 rows of 3,000 bytes are 20 new pages, 40
    // write calls without the VFS.
    const int64_t before = write_calls_of_this_thread();
    REQUIRE(before >= 0);
    insert_padded(*db, 1, 20);
    const int64_t calls = write_calls_of_this_thread() - before;
    INFO("round " << round << ": " << calls << " write calls");
    CHECK(calls >= 1);
    CHECK(calls <= 2);
    // Another connection (a reader of this store) sees the whole commit.
    CHECK(count(*db, "t") == 1 + 20 * round);
  }
  db.reset();
  // The files are SQLite's own: the default VFS reads them back whole.
  sqlite3* plain = nullptr;
  REQUIRE(sqlite3_open_v2(tmp.file().c_str(), &plain, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  REQUIRE(sqlite3_prepare_v2(plain, "SELECT count(*), sum(length(pad)) FROM t", -1, &st, nullptr) ==
          SQLITE_OK);
  REQUIRE(sqlite3_step(st) == SQLITE_ROW);
  CHECK(sqlite3_column_int64(st, 0) == 101);
  CHECK(sqlite3_column_int64(st, 1) == 101 * 3000);
  sqlite3_finalize(st);
  sqlite3_close(plain);
}

namespace {

// The database and its WAL copied as a crash would leave them (no
// wal-index), opened with SQLite's default VFS: recovery replays the WAL,
// checksums checked. Returns "ROWS|SUM(n)|integrity".
std::string recovered(const fs::path& file, const fs::path& dir) {
  fs::create_directories(dir);
  fs::copy_file(file, dir / "copy.db", fs::copy_options::overwrite_existing);
  fs::copy_file(file.string() + "-wal", dir / "copy.db-wal", fs::copy_options::overwrite_existing);
  fs::remove(dir / "copy.db-shm");
  sqlite3* db = nullptr;
  std::string out;
  if (sqlite3_open_v2((dir / "copy.db").c_str(), &db, SQLITE_OPEN_READWRITE, nullptr) ==
      SQLITE_OK) {
    sqlite3_stmt* st = nullptr;
    if (sqlite3_prepare_v2(db,
                           "SELECT count(*) || '|' || coalesce(sum(n), 0) || '|' || "
                           "(SELECT group_concat(integrity_check) FROM pragma_integrity_check) "
                           "FROM t",
                           -1, &st, nullptr) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
      out = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
    else
      out = sqlite3_errmsg(db);
    sqlite3_finalize(st);
  }
  sqlite3_close(db);
  return out;
}

}  // namespace

// Each commit's frames are in the WAL file when write() returns, whatever
// their number (the gathering writes at most 124 KiB at once: 30 frames),
// and a transaction that spills frames and rewrites one of them in place
// (SQLite then rewrites the frames' checksums) is whole after a crash.
TEST_CASE("sqlite: every commit is in the WAL file when acknowledged, as a crash leaves it",
          "[sql][sqlite]") {
  TempDir tmp;
  auto db = open_db(tmp.file());
  REQUIRE(
      exec_one(*db,
               "CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER NOT NULL DEFAULT 0, pad TEXT)")
          .ok());
  int64_t rows = 0;
  for (int pages : {1, 2, 29, 30, 31, 32, 45, 61, 62}) {
    insert_padded(*db, 1, pages);  // a row of 3,000 bytes: a page
    rows += pages;
    INFO("a commit of " << pages << " rows");
    CHECK(recovered(tmp.file(), tmp.dir / "crash") == std::to_string(rows) + "|0|ok");
  }
  // About 9 MB in one transaction: more than the writer's page cache, so
  // SQLite writes (spills) frames before the COMMIT, then the UPDATE
  // changes pages already spilled.
  const std::string pad(3000, 'p');
  REQUIRE(db->write([&](SqlTransaction& tx) {
              for (int i = 0; i < 3000; ++i)
                if (auto r = tx.exec("INSERT INTO t (pad) VALUES ($1)", {pad}); !r.ok())
                  return r.status;
              return tx.exec("UPDATE t SET n = 1").status;
            }).ok());
  rows += 3000;
  CHECK(recovered(tmp.file(), tmp.dir / "crash") ==
        std::to_string(rows) + "|" + std::to_string(rows) + "|ok");
}

// A work whose undo log (statement journal) outgrows memory spills it to a
// temporary file; with a spill size of 128 KiB or more SQLite 3.40 failed
// every such work with "database or disk is full".
TEST_CASE("sqlite: a work changing many megabytes commits, or is undone whole", "[sql][sqlite]") {
  TempDir tmp;
  auto db = open_db(tmp.file());
  REQUIRE(exec_one(*db, "CREATE TABLE t (id INTEGER PRIMARY KEY, pad TEXT)").ok());
  insert_padded(*db, 40, 200);  // about 24 MB
  // Undone: the rows it deleted are back, from the spilled journal.
  SqlStatus undone = db->write([&](SqlTransaction& tx) {
    if (auto r = tx.exec("DELETE FROM t WHERE id % 2 = 0"); !r.ok()) return r.status;
    return SqlStatus::failure(SqlCode::invalid, "changed my mind");
  });
  CHECK(undone.message == "changed my mind");
  CHECK(count(*db, "t") == 40 * 200);
  SqlStatus deleted = exec_one(*db, "DELETE FROM t WHERE id % 2 = 0");
  INFO(deleted.message);
  CHECK(deleted.ok());
  CHECK(count(*db, "t") == 40 * 100);
  CHECK(db->integrity_check().value == "ok");
}

TEST_CASE("sqlite: after_commit runs once committed, never for undone changes", "[sql][sqlite]") {
  TempDir tmp;
  auto db = open_db(tmp.file());
  create_business_tables(*db);
  std::vector<std::string> ran;
  std::mutex ran_mutex;
  auto hook = [&](std::string name) {
    return [&ran, &ran_mutex, name] {
      std::lock_guard lock(ran_mutex);
      ran.push_back(name);
    };
  };
  // Committed: runs after the COMMIT, before write() returns, and sees the
  // change committed (a read from another connection finds the row).
  auto other = open_db(tmp.file());
  int64_t rows_seen = -1;
  SqlStatus s = db->write([&](SqlTransaction& tx) {
    (void)insert_both(tx, 1, 1);
    REQUIRE(tx.after_commit([&] { rows_seen = count(*other, "item"); }).ok());
    REQUIRE(tx.after_commit(hook("kept")).ok());
    // A nested part that is undone takes its hooks with it; a kept one not.
    (void)tx.nested([&](SqlTransaction& t) {
      REQUIRE(t.after_commit(hook("undone part")).ok());
      return SqlStatus::failure(SqlCode::invalid, "no");
    });
    (void)tx.nested([&](SqlTransaction& t) {
      REQUIRE(t.after_commit(hook("kept part")).ok());
      return SqlStatus::success();
    });
    CHECK(ran.empty());  // nothing before the commit
    return SqlStatus::success();
  });
  REQUIRE(s.ok());
  CHECK(rows_seen == 1);
  CHECK(ran == std::vector<std::string>{"kept", "kept part"});

  // A failing work, a throwing one, and a statement failure: never run.
  ran.clear();
  CHECK_FALSE(db->write([&](SqlTransaction& tx) {
                  (void)tx.after_commit(hook("failed"));
                  return SqlStatus::failure(SqlCode::invalid, "refused");
                }).ok());
  CHECK_THROWS(db->write([&](SqlTransaction& tx) -> SqlStatus {
    (void)tx.after_commit(hook("threw"));
    throw std::runtime_error("boom");
  }));
  CHECK_FALSE(db->write([&](SqlTransaction& tx) {
                  (void)tx.after_commit(hook("constraint"));
                  return insert_both(tx, 1, 1);  // already there
                }).ok());
  // Detached writes run theirs before done.
  std::promise<std::vector<std::string>> at_done;
  db->write_detached(
      [&](SqlTransaction& tx) {
        (void)insert_both(tx, 2, 1);
        return tx.after_commit(hook("detached"));
      },
      [&](SqlStatus st) {
        CHECK(st.ok());
        std::lock_guard lock(ran_mutex);
        at_done.set_value(ran);
      });
  CHECK(at_done.get_future().get() == std::vector<std::string>{"detached"});
  // Refused in reads.
  CHECK(db->read([&](SqlTransaction& tx) { return tx.after_commit(hook("read")); }).code ==
        SqlCode::invalid);
  CHECK(db->write([&](SqlTransaction& tx) {
              return tx.read_only([&](SqlTransaction& view) {
                return view.after_commit(hook("view"));
              });
            }).code == SqlCode::invalid);
  CHECK(ran == std::vector<std::string>{"detached"});
}
