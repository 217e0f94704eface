#include "stores/migrations.hpp"

#include <chrono>
#include <ctime>

namespace gv::stores {

namespace {

std::string utc_now() {
  const std::time_t t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&t, &tm);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return text;
}

std::string named(std::string_view plugin) { return "plugin '" + std::string(plugin) + "' "; }

SqlStatus check_numbering(std::string_view plugin, const std::vector<Migration>& steps) {
  for (size_t i = 0; i < steps.size(); ++i) {
    if (steps[i].step == static_cast<int>(i + 1)) continue;
    return SqlStatus::failure(
        SqlCode::invalid,
        named(plugin) + "migration steps must be numbered 1..N in order: " + "position " +
            std::to_string(i + 1) + " holds step " + std::to_string(steps[i].step));
  }
  return {};
}

SqlStatus newer_database(std::string_view plugin, int64_t recorded, size_t known) {
  return SqlStatus::failure(SqlCode::invalid,
                            named(plugin) + "database is at migration step " +
                                std::to_string(recorded) + " but the plugin knows only " +
                                std::to_string(known) + ": refusing to touch a newer database");
}

// The highest step recorded in gv_migrations (0 if none).
SqlResult<int64_t> recorded_step(SqlTransaction& tx) {
  auto rows = tx.query("SELECT max(step) FROM gv_migrations");
  if (!rows.ok()) return {rows.status};
  return {{}, sql_int(rows.value.rows.at(0).at(0)).value_or(0)};
}

// What one write transaction of the migration loop did.
struct Round {
  int64_t recorded = 0;  // the highest step recorded when it began
  int64_t applied = 0;   // the step it applied, 0 if none
};

// In one write transaction: creates the record table if needed, and
// applies and records the next pending step, if any.
SqlStatus apply_next(SqlTransaction& tx, std::string_view plugin,
                     const std::vector<Migration>& steps, Round& round) {
  auto created = tx.exec(
      "CREATE TABLE IF NOT EXISTS gv_migrations "
      "(step INTEGER PRIMARY KEY, applied_at TEXT)");
  if (!created.ok()) return created.status;
  auto recorded = recorded_step(tx);
  if (!recorded.ok()) return recorded.status;
  round.recorded = recorded.value;
  const auto known = static_cast<int64_t>(steps.size());
  if (round.recorded > known) return newer_database(plugin, round.recorded, steps.size());
  if (round.recorded == known) return {};
  round.applied = round.recorded + 1;
  if (SqlStatus s = tx.exec_script(steps[round.applied - 1].sql); !s.ok()) return s;
  return tx
      .exec("INSERT INTO gv_migrations (step, applied_at) VALUES ($1, $2)",
            {round.applied, utc_now()})
      .status;
}

}  // namespace

SqlStatus migrate(SqlDatabase& db, std::string_view plugin, const std::vector<Migration>& steps) {
  if (SqlStatus s = check_numbering(plugin, steps); !s.ok()) return s;

  // A read first: an up-to-date or newer database is settled without taking
  // the write lock, so it is left byte for byte as it was. A database
  // without gv_migrations fails this query and goes on to the write path.
  int64_t recorded = -1;
  db.read([&](SqlTransaction& tx) {
    auto r = recorded_step(tx);
    if (r.ok()) recorded = r.value;
    return r.status;
  });
  if (recorded > static_cast<int64_t>(steps.size()))
    return newer_database(plugin, recorded, steps.size());
  if (recorded == static_cast<int64_t>(steps.size())) return {};

  // One transaction per step, each re-reading the record, so a concurrent
  // migrator of the same database cannot make a step run twice.
  for (;;) {
    Round round;
    SqlStatus s =
        db.write([&](SqlTransaction& tx) { return apply_next(tx, plugin, steps, round); });
    if (!s.ok()) {
      if (round.recorded > static_cast<int64_t>(steps.size())) return s;
      s.message = round.applied > 0 ? named(plugin) + "migration step " +
                                          std::to_string(round.applied) + " failed: " + s.message
                                    : named(plugin) + "migrations failed: " + s.message;
      return s;
    }
    if (round.applied == 0) return {};
  }
}

}  // namespace gv::stores
