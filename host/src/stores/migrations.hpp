// Per-plugin schema migrations: numbered steps of SQL, applied in order at
// start-up and recorded in the plugin's own database, so a second start
// changes nothing and an older plugin never touches a newer database.
//
// The record is the table gv_migrations(step INTEGER PRIMARY KEY,
// applied_at TEXT), applied_at an ISO 8601 UTC time. Each pending step runs
// in its own write transaction together with its record, so a crash or a
// failing step leaves the database at the last step that completed. Steps
// use portable SQL (see sql.hpp) and may hold several statements separated
// by ';'. Never edit a released step: add a new one.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "stores/sql.hpp"

namespace gv::stores {

struct Migration {
  int step = 0;     // 1..N, in order
  std::string sql;  // one or more statements
};

// Brings db up to the last of steps. Returns ok when every step is applied
// (including when nothing was pending). Fails, naming plugin, with:
// - invalid, touching nothing, if steps are not numbered 1..N in order, or
//   if the database records a step beyond N (it belongs to a newer plugin);
// - the failing statement's code if a step fails: that step is rolled back,
//   the steps before it stay applied, the later ones are not run;
// - busy or io if the database cannot be written.
SqlStatus migrate(SqlDatabase& db, std::string_view plugin, const std::vector<Migration>& steps);

}  // namespace gv::stores
