// bench_sqlite_write [seconds per run, default 2] [folder, default /tmp]
//                    [NORMAL|FULL: only that level] [N: only write() from N threads]
//
// Small write transactions per second, at synchronous=NORMAL and FULL:
// - reference: raw sqlite3, one thread, one single-row INSERT per
//   transaction (autocommit), WAL;
// - SqliteDatabase::write from 1, 4, 8 and 16 threads, each transaction one
//   business row plus one outbox row, with group commit (and, for
//   comparison, 16 threads with max_group_size = 1).
// Each run uses a fresh database in a temporary folder, removed at exit.
// Besides transactions/s and the ratio to the reference, it prints the CPU
// the process used per second (at most the number of cores), since a
// shared machine's other load shows there, and the mean group size.
#include <sqlite3.h>
#include <stdlib.h>
#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "stores/sqlite_database.hpp"

namespace fs = std::filesystem;
using gv::stores::SqliteDatabase;
using gv::stores::SqlStatus;
using gv::stores::SqlTransaction;
using Clock = std::chrono::steady_clock;

namespace {

const std::string kPayload(100, 'x');  // a small message body

// CPU seconds (user + system) the process has used so far.
double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  auto s = [](const timeval& t) { return double(t.tv_sec) + double(t.tv_usec) / 1e6; };
  return s(u.ru_utime) + s(u.ru_stime);
}

// Measures a run from construction to stop().
struct Meter {
  Clock::time_point start = Clock::now();
  double cpu_start = cpu_seconds();
  double elapsed = 0, cpu = 0;
  void stop() {
    elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    cpu = (cpu_seconds() - cpu_start) / elapsed;
  }
};

struct Run {
  double rate = 0;    // acknowledged transactions per second
  double cpu = 0;     // CPU seconds used per second
  double group = 0;   // mean works per commit
  long failures = 0;  // writes that did not return ok
};

bool ok(int rc, sqlite3* db, const char* what) {
  if (rc == SQLITE_OK || rc == SQLITE_DONE) return true;
  std::fprintf(stderr, "%s: %s\n", what, sqlite3_errmsg(db));
  return false;
}

// Raw sqlite3: one row per transaction, one thread.
Run reference(const fs::path& file, const std::string& synchronous, double seconds) {
  sqlite3* db = nullptr;
  if (!ok(sqlite3_open(file.c_str(), &db), db, "open")) return {};
  const std::string setup =
      "PRAGMA journal_mode=WAL; PRAGMA synchronous=" + synchronous +
      "; CREATE TABLE IF NOT EXISTS item (id INTEGER PRIMARY KEY, author INTEGER, "
      "body TEXT)";
  if (!ok(sqlite3_exec(db, setup.c_str(), nullptr, nullptr, nullptr), db, "setup")) return {};
  sqlite3_stmt* insert = nullptr;
  sqlite3_prepare_v2(db, "INSERT INTO item (author, body) VALUES (?1, ?2)", -1, &insert, nullptr);
  long done = 0;
  Meter meter;
  while (std::chrono::duration<double>(Clock::now() - meter.start).count() < seconds) {
    sqlite3_bind_int64(insert, 1, done % 1000);
    sqlite3_bind_text(insert, 2, kPayload.data(), static_cast<int>(kPayload.size()), SQLITE_STATIC);
    if (!ok(sqlite3_step(insert), db, "insert")) break;
    sqlite3_reset(insert);
    ++done;
  }
  meter.stop();
  sqlite3_finalize(insert);
  sqlite3_close(db);
  return {done / meter.elapsed, meter.cpu, 1, 0};
}

// SqliteDatabase::write from threads threads, each transaction a business
// row and an outbox row.
Run grouped(const fs::path& file, const std::string& synchronous, int threads, int max_group,
            double seconds) {
  auto opened = SqliteDatabase::open(
      file, {.synchronous = synchronous, .reader_connections = 1, .max_group_size = max_group});
  if (!opened.ok()) {
    std::fprintf(stderr, "open: %s\n", opened.status.message.c_str());
    return {};
  }
  SqliteDatabase& db = *opened.value;
  SqlStatus created = db.write([](SqlTransaction& tx) {
    return tx.exec_script(
        "CREATE TABLE item (id INTEGER PRIMARY KEY, author INTEGER, body TEXT);"
        "CREATE TABLE outbox (id INTEGER PRIMARY KEY, topic TEXT, item INTEGER, body TEXT)");
  });
  if (!created.ok()) {
    std::fprintf(stderr, "schema: %s\n", created.message.c_str());
    return {};
  }
  const auto before = db.write_stats();
  std::atomic<long> acked{0}, failures{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> pool;
  Meter meter;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      while (!stop.load(std::memory_order_relaxed)) {
        SqlStatus s = db.write([&](SqlTransaction& tx) {
          auto item = tx.query("INSERT INTO item (author, body) VALUES ($1, $2) RETURNING id",
                               {int64_t{t}, kPayload});
          if (!item.ok()) return item.status;
          return tx
              .exec("INSERT INTO outbox (topic, item, body) VALUES ($1, $2, $3)",
                    {"item.created", item.value.rows.at(0).at(0), kPayload})
              .status;
        });
        (s.ok() ? acked : failures).fetch_add(1, std::memory_order_relaxed);
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& th : pool) th.join();
  meter.stop();
  const auto after = db.write_stats();
  const auto commits = after.commits - before.commits;
  return {acked / meter.elapsed, meter.cpu,
          commits ? double(after.works - before.works) / double(commits) : 0.0, failures.load()};
}

void print(const char* label, const Run& run, double reference_rate) {
  std::printf("  %-46s %8.0f txn/s", label, run.rate);
  if (reference_rate > 0) std::printf(" %6.2fx", run.rate / reference_rate);
  std::printf("  cpu %.2f  %5.1f works/commit", run.cpu, run.group);
  if (run.failures) std::printf("  %ld failed", run.failures);
  std::printf("\n");
}

}  // namespace

int main(int argc, char** argv) {
  // bench_sqlite_write --reference FILE NORMAL|FULL SECONDS: only the raw
  // reference loop, on an existing file (bench/events runs it on the
  // plugin's own database); prints "reference_txn_per_s N".
  if (argc == 5 && std::string(argv[1]) == "--reference") {
    const Run run = reference(argv[2], argv[3], std::atof(argv[4]));
    std::printf("reference_txn_per_s %.0f\n", run.rate);
    return run.rate > 0 ? 0 : 1;
  }
  const double seconds = argc > 1 ? std::atof(argv[1]) : 2.0;
  std::string pattern =
      (argc > 2 ? std::string(argv[2]) : std::string("/tmp")) + "/gv-bench-sqlite-XXXXXX";
  const std::string only_level = argc > 3 ? argv[3] : "";
  const int only_threads = argc > 4 ? std::atoi(argv[4]) : 0;
  if (!::mkdtemp(pattern.data())) {
    std::perror("mkdtemp");
    return 1;
  }
  const fs::path dir = pattern;
  int file_number = 0;
  auto fresh = [&] { return dir / ("bench" + std::to_string(++file_number) + ".db"); };

  std::printf("%.1f s per run, folder %s, SQLite %s, %u hardware threads\n", seconds, dir.c_str(),
              sqlite3_libversion(), std::thread::hardware_concurrency());
  for (const std::string synchronous : {"NORMAL", "FULL"}) {
    if (!only_level.empty() && only_level != synchronous) continue;
    std::printf("\nsynchronous=%s\n", synchronous.c_str());
    double reference_rate = 0;
    if (!only_threads) {
      const Run run = reference(fresh(), synchronous, seconds);
      reference_rate = run.rate;
      print("reference: raw sqlite3, 1 thread, 1 row/txn", run, reference_rate);
    }
    struct Case {
      int threads, max_group;
    };
    for (Case c : {Case{1, 64}, Case{4, 64}, Case{8, 64}, Case{16, 64}, Case{16, 1}}) {
      if (only_threads && (c.threads != only_threads || c.max_group == 1)) continue;
      const Run run = grouped(fresh(), synchronous, c.threads, c.max_group, seconds);
      char label[80];
      std::snprintf(label, sizeof label, "write(), %2d thread%s, 2 rows/txn%s", c.threads,
                    c.threads == 1 ? "" : "s", c.max_group == 1 ? ", no grouping" : "");
      print(label, run, reference_rate);
    }
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
  return 0;
}
