#include <stdlib.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <string>
#include <vector>

#include "stores/migrations.hpp"
#include "stores/sqlite_database.hpp"

namespace fs = std::filesystem;
using namespace gv::stores;

namespace {

// A fresh database in a folder under /tmp, removed at scope exit.
struct TempDb {
  fs::path dir;
  std::unique_ptr<SqliteDatabase> db;
  TempDb() {
    char pattern[] = "/tmp/gv-migrations-test-XXXXXX";
    REQUIRE(::mkdtemp(pattern) != nullptr);
    dir = pattern;
    auto opened = SqliteDatabase::open(dir / "posts.db");
    REQUIRE(opened.ok());
    db = std::move(opened.value);
  }
  ~TempDb() {
    db.reset();
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};

SqlRows select(SqlDatabase& db, std::string_view sql) {
  SqlRows rows;
  SqlStatus s = db.read([&](SqlTransaction& tx) {
    auto r = tx.query(sql);
    rows = std::move(r.value);
    return r.status;
  });
  INFO(s.message);
  REQUIRE(s.ok());
  return rows;
}

// Everything a migration can change: the schema, the record and the data
// of the test tables.
std::vector<std::vector<SqlValue>> snapshot(SqlDatabase& db) {
  auto rows = select(db, "SELECT type, name, sql FROM sqlite_master ORDER BY name").rows;
  bool recorded = false;
  for (auto& row : rows) recorded = recorded || sql_text(row[1]) == "gv_migrations";
  if (recorded)
    for (auto& row : select(db, "SELECT step, applied_at FROM gv_migrations").rows)
      rows.push_back(row);
  return rows;
}

std::vector<std::string> tables(SqlDatabase& db) {
  std::vector<std::string> names;
  for (auto& row :
       select(db, "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").rows)
    names.emplace_back(*sql_text(row[0]));
  return names;
}

int64_t recorded_step(SqlDatabase& db) {
  auto v = select(db, "SELECT max(step) FROM gv_migrations").rows.at(0).at(0);
  return sql_int(v).value_or(0);
}

const std::vector<Migration> kSteps = {
    {1, "CREATE TABLE posts (id INTEGER PRIMARY KEY, body TEXT NOT NULL)"},
    {2,
     "CREATE TABLE tags (post INTEGER NOT NULL REFERENCES posts(id), tag "
     "TEXT);\n"
     "CREATE INDEX tags_by_tag ON tags (tag);\n"
     "INSERT INTO posts (body) VALUES ('welcome');"},
    {3, "ALTER TABLE posts ADD COLUMN edited INTEGER NOT NULL DEFAULT 0"},
};

}  // namespace

TEST_CASE("migrations: a fresh database gets every step, recorded", "[sql][migrations]") {
  TempDb t;
  SqlStatus s = migrate(*t.db, "posts", kSteps);
  INFO(s.message);
  REQUIRE(s.ok());
  CHECK(tables(*t.db) == std::vector<std::string>{"gv_migrations", "posts", "tags"});
  auto record = select(*t.db, "SELECT step, applied_at FROM gv_migrations ORDER BY step");
  REQUIRE(record.rows.size() == 3);
  for (int64_t i = 0; i < 3; ++i) {
    CHECK(sql_int(record.rows[i][0]) == i + 1);
    CHECK(sql_text(record.rows[i][1])->size() == 20);  // 2024-01-02T03:04:05Z
  }
  CHECK(select(*t.db, "SELECT body, edited FROM posts").rows ==
        std::vector<std::vector<SqlValue>>{{"welcome", int64_t{0}}});
}

TEST_CASE("migrations: a second run changes nothing, a new step alone runs", "[sql][migrations]") {
  TempDb t;
  REQUIRE(migrate(*t.db, "posts", kSteps).ok());
  const auto before = snapshot(*t.db);
  CHECK(migrate(*t.db, "posts", kSteps).ok());
  CHECK(snapshot(*t.db) == before);

  auto more = kSteps;
  more.push_back({4, "INSERT INTO posts (body) VALUES ('step four')"});
  REQUIRE(migrate(*t.db, "posts", more).ok());
  CHECK(recorded_step(*t.db) == 4);
  CHECK(select(*t.db, "SELECT count(*) FROM posts").rows[0][0] == SqlValue{int64_t{2}});
  CHECK(migrate(*t.db, "posts", more).ok());
  CHECK(select(*t.db, "SELECT count(*) FROM posts").rows[0][0] == SqlValue{int64_t{2}});
}

TEST_CASE("migrations: a failing step is named, earlier steps are kept", "[sql][migrations]") {
  TempDb t;
  auto steps = kSteps;
  steps[2].sql = "CREATE TABLE half (x); INSERT INTO missing VALUES (1)";
  steps.push_back({4, "CREATE TABLE never (x)"});
  SqlStatus s = migrate(*t.db, "posts", steps);
  CHECK(s.code == SqlCode::invalid);
  CHECK(s.message.rfind("plugin 'posts' migration step 3 failed: ", 0) == 0);
  CHECK(s.message.find("missing") != std::string::npos);
  CHECK(tables(*t.db) == std::vector<std::string>{"gv_migrations", "posts", "tags"});
  CHECK(recorded_step(*t.db) == 2);

  // A constraint failure keeps its code.
  steps[2].sql = "INSERT INTO tags (post, tag) VALUES (99, 'orphan')";
  s = migrate(*t.db, "posts", steps);
  CHECK(s.code == SqlCode::constraint);
  CHECK(s.message.rfind("plugin 'posts' migration step 3 failed: ", 0) == 0);
  CHECK(recorded_step(*t.db) == 2);

  // Fixed, the remaining steps run.
  CHECK(migrate(*t.db, "posts", kSteps).ok());
  CHECK(recorded_step(*t.db) == 3);
}

TEST_CASE("migrations: a newer database is refused untouched", "[sql][migrations]") {
  TempDb t;
  auto five = kSteps;
  five.push_back({4, "CREATE TABLE four (x)"});
  five.push_back({5, "CREATE TABLE five (x)"});
  REQUIRE(migrate(*t.db, "posts", five).ok());
  const auto before = snapshot(*t.db);

  auto four = five;
  four.pop_back();
  four[3].sql = "DROP TABLE posts";  // must never run
  SqlStatus s = migrate(*t.db, "posts", four);
  CHECK(s.code == SqlCode::invalid);
  CHECK(s.message ==
        "plugin 'posts' database is at migration step 5 but the plugin knows "
        "only 4: "
        "refusing to touch a newer database");
  CHECK(snapshot(*t.db) == before);
  CHECK(migrate(*t.db, "posts", {}).code == SqlCode::invalid);
  CHECK(snapshot(*t.db) == before);
}

TEST_CASE("migrations: steps must be numbered 1..N in order", "[sql][migrations]") {
  TempDb t;
  const std::vector<std::vector<Migration>> bad = {
      {{2, "CREATE TABLE a (x)"}},
      {{1, "CREATE TABLE a (x)"}, {3, "CREATE TABLE b (x)"}},
      {{1, "CREATE TABLE a (x)"}, {1, "CREATE TABLE b (x)"}},
      {{2, "CREATE TABLE b (x)"}, {1, "CREATE TABLE a (x)"}},
  };
  for (const auto& steps : bad) {
    SqlStatus s = migrate(*t.db, "posts", steps);
    CHECK(s.code == SqlCode::invalid);
    CHECK(s.message.rfind("plugin 'posts' migration steps must be numbered 1..N", 0) == 0);
  }
  CHECK(tables(*t.db).empty());  // nothing was created, not even the record
  CHECK(migrate(*t.db, "posts", {}).ok());
}
