// grapevine: the host binary. See `grapevine --help`.
#include <grapevine/abi.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <initializer_list>
#include <iostream>
#include <malloc.h>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

#include "auth/jwt.hpp"
#include "config/host_config.hpp"
#include "core/dispatcher.hpp"
#include "core/hub.hpp"
#include "core/log.hpp"
#include "core/metrics.hpp"
#include "core/registry.hpp"
#include "core/response_cache.hpp"
#include "core/scheduler.hpp"
#include "core/worker_pool.hpp"
#include "events/events.hpp"
#include "net/server.hpp"
#include "plugins/admin_ops.hpp"
#include "plugins/plugin_host.hpp"
#include "stores/local_blob_store.hpp"
#include "stores/memory_cache.hpp"

namespace {

constexpr const char* kUsage =
    R"(Usage: grapevine [OPTIONS]            run the server
       grapevine --check-config [OPTIONS]  report every config error, run nothing
       grapevine plugins [OPTIONS]         list installed plugins without running them
       grapevine --version

Options:
  --config FILE      configuration (default: $GRAPEVINE_CONFIG, else
                     /etc/grapevine/grapevine.yaml)
  --listen HOST:PORT listen here instead of server.listen (port 0: any free
                     port; the bound address is logged as "listening")
  --data-dir DIR     keep data here instead of data_dir
  --plugin-dir DIR   with 'plugins': look here (repeatable) instead of the
                     config's plugin_dirs
)";

struct Args {
  std::string command = "run";  // run, check, plugins, version, help
  std::string config;
  gv::config::Overrides overrides;
  std::vector<std::string> plugin_dirs;
};

bool parse_args(int argc, char** argv, Args* args, std::string* error) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](std::string* out) {
      if (i + 1 >= argc) {
        *error = a + " needs a value";
        return false;
      }
      *out = argv[++i];
      return true;
    };
    if (a == "plugins" && i == 1)
      args->command = "plugins";
    else if (a == "--check-config")
      args->command = "check";
    else if (a == "--version")
      args->command = "version";
    else if (a == "--help" || a == "-h")
      args->command = "help";
    else if (a == "--config") {
      if (!value(&args->config)) return false;
    } else if (a == "--listen") {
      if (!value(&args->overrides.listen)) return false;
    } else if (a == "--data-dir") {
      if (!value(&args->overrides.data_dir)) return false;
    } else if (a == "--plugin-dir") {
      std::string d;
      if (!value(&d)) return false;
      args->plugin_dirs.push_back(d);
    } else {
      *error = "unknown argument '" + a + "'";
      return false;
    }
  }
  if (args->config.empty()) {
    const char* env = std::getenv("GRAPEVINE_CONFIG");
    args->config = env && *env ? env : "/etc/grapevine/grapevine.yaml";
  }
  return true;
}

int list_plugins(const Args& args) {
  std::vector<std::string> dirs = args.plugin_dirs;
  if (dirs.empty()) {
    gv::config::HostConfig cfg;
    std::vector<gv::config::Diagnostic> errors;
    if (std::filesystem::exists(args.config) &&
        gv::config::load_host_config(args.config, args.overrides, &cfg, &errors))
      dirs = cfg.plugin_dirs;
    else
      dirs = gv::config::HostConfig{}.plugin_dirs;
  }
  auto found = gv::plugins::list_installed(gv::plugins::resolve_plugin_dirs(dirs));
  std::printf("%-16s %-10s %-6s %-24s %s\n", "NAME", "VERSION", "ABI", "DEPENDS", "PATH");
  for (const auto& p : found) {
    if (!p.problem.empty() && p.manifest.name.empty()) {
      std::printf("%-16s %-10s %-6s %-24s %s  (%s)\n", "-", "-", "-", "-", p.file.c_str(),
                  p.problem.c_str());
      continue;
    }
    std::string deps;
    for (const auto& d : p.manifest.depends) deps += (deps.empty() ? "" : ",") + d;
    std::string abi =
        std::to_string(p.manifest.abi_major) + "." + std::to_string(p.manifest.abi_minor);
    std::printf("%-16s %-10s %-6s %-24s %s%s%s\n", p.manifest.name.c_str(),
                p.manifest.version.c_str(), abi.c_str(), deps.empty() ? "-" : deps.c_str(),
                p.file.c_str(), p.problem.empty() ? "" : "  ",
                p.problem.empty() ? "" : ("(" + p.problem + ")").c_str());
  }
  if (found.empty()) std::printf("(no plugins found)\n");
  return 0;
}

// One Prometheus family per counter of source->stats(), read at each scrape.
template <class Stats>
struct StatFamily {
  const char* name;
  const char* help;
  const char* type;
  uint64_t Stats::*field;
};
template <class Stats, class Source>
void add_stat_families(gv::Metrics* metrics, Source* source,
                       std::initializer_list<StatFamily<Stats>> families) {
  for (const auto& f : families)
    metrics->add_family(f.name, f.help, f.type, [source, field = f.field] {
      return gv::Metrics::Samples{{"", static_cast<double>(source->stats().*field)}};
    });
}

void add_cache_metrics(gv::Metrics* metrics, gv::stores::Cache* cache) {
  using S = gv::stores::CacheStats;
  add_stat_families<S>(
      metrics, cache,
      {{"grapevine_cache_hits_total", "Cache reads that found their key.", "counter", &S::hits},
       {"grapevine_cache_misses_total", "Cache reads that did not.", "counter", &S::misses},
       {"grapevine_cache_evictions_total",
        "Live cache entries dropped to stay under the memory bound.", "counter", &S::evictions},
       {"grapevine_cache_bytes", "Memory the cache accounts for.", "gauge", &S::bytes_used}});
}

void add_response_cache_metrics(gv::Metrics* metrics, const gv::ResponseCache* cache) {
  using S = gv::ResponseCache::Stats;
  add_stat_families<S>(
      metrics, cache,
      {{"grapevine_response_cache_hits_total", "Requests answered from the response cache.",
        "counter", &S::hits},
       {"grapevine_response_cache_misses_total",
        "Requests of cacheable operations that ran the handler.", "counter", &S::misses},
       {"grapevine_response_cache_invalidations_total", "Tags plugins marked stale.", "counter",
        &S::invalidations},
       {"grapevine_response_cache_evictions_total",
        "Answers dropped to stay under response_cache.max_bytes.", "counter", &S::evictions},
       {"grapevine_response_cache_bytes", "Memory the response cache accounts for.", "gauge",
        &S::bytes}});
}

// The in-process broker's log (events.broker: in-process).
std::filesystem::path log_broker_file(const gv::config::HostConfig& cfg) {
  return cfg.data_dir / "broker" / "events.sqlite";
}

// Exit codes: 0 clean stop, 1 start-up failure, 2 bad config or arguments.
gv::events::KafkaBrokerOptions kafka_options(const gv::config::HostConfig& cfg) {
  const auto& k = cfg.events.kafka;
  gv::events::KafkaBrokerOptions o;
  o.bootstrap_servers = k.bootstrap_servers;
  o.topic = k.topic;
  o.partitions = cfg.events.partitions;
  o.replication_factor = k.replication_factor > 0 ? k.replication_factor : -1;
  o.create_topic = k.create_topic;
  o.client_id = k.client_id;
  if (o.client_id.empty()) {
    char name[256] = {};
    gethostname(name, sizeof name - 1);
    o.client_id = std::string("grapevine-") + (name[0] ? name : "host");
  }
  o.group_prefix = k.group_prefix;
  o.message_timeout_ms = k.message_timeout_ms;
  o.session_timeout_ms = k.session_timeout_ms;
  o.commit_interval_ms = k.commit_interval_ms;
  o.consumer_threads = cfg.events.consumer_threads;
  o.properties = k.properties;
  return o;
}

// The events part of /readyz: the broker's state and the backlogs.
nlohmann::json readiness(const gv::events::EventEngine& events) {
  gv::events::BrokerStats b = events.broker_stats();
  nlohmann::json broker = {{"kind", b.kind},
                           {"state", b.connected ? "connected" : "disconnected"},
                           {"consumer_lag", b.consumer_lag}};
  if (b.kind == "kafka") {
    broker["brokers_up"] = b.brokers_up;
    broker["brokers_known"] = b.brokers_known;
    broker["in_flight"] = b.in_flight;
    if (!b.last_error.empty()) broker["last_error"] = b.last_error;
  }
  return {{"events", {{"outbox_backlog", events.outbox_backlog()}, {"broker", broker}}}};
}

int run(const Args& args) {
  gv::config::HostConfig cfg;
  std::vector<gv::config::Diagnostic> problems;
  bool config_ok = gv::config::load_host_config(args.config, args.overrides, &cfg, &problems);
  // events.broker auto: the direct broker, the embedded dispatcher over the
  // outboxes; but a data folder that has the log broker's file (the default
  // before, or events.broker: in-process) keeps the log broker, whose file
  // may hold events not yet consumed that the direct broker would never
  // deliver. README: moving a data folder to direct.
  const bool broker_auto = cfg.events.broker == "auto";
  if (broker_auto) {
    std::error_code ec;
    cfg.events.broker = std::filesystem::exists(log_broker_file(cfg), ec) ? "in-process" : "direct";
  }
  if (cfg.events.broker == "kafka") {
    std::string error;
    if (!gv::events::check_kafka_options(kafka_options(cfg), &error)) {
      problems.push_back({cfg.file.string(), {}, "events.kafka", error});
      config_ok = false;
    }
  }
  // --check-config goes on to the plugin sections when the file parsed, so
  // one run reports every error; a real start stops here.
  bool check_plugins_anyway = args.command == "check" && cfg.document;
  if (!config_ok && !check_plugins_anyway) {
    for (const auto& p : problems) std::fprintf(stderr, "%s\n", p.to_string().c_str());
    std::fprintf(stderr, "grapevine: %zu config error(s); nothing was started\n", problems.size());
    return 2;
  }
  gv::log::set_level(gv::log::parse_level(cfg.log.level));
  if (broker_auto && cfg.events.broker == "in-process" && args.command != "check")
    gv::log::info("events.broker auto: the in-process log broker, as its log exists",
                  {{"file", log_broker_file(cfg).string()}});
  gv::Metrics metrics;
  gv::Registry registry;
  unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  gv::WorkerPool pool(cfg.workers.threads ? cfg.workers.threads : cores, cfg.workers.queue_limit,
                      cfg.workers.spare_threads);
  metrics.worker_queue_depth = [&pool] { return pool.depth(); };
  gv::Dispatcher dispatcher(pool, cfg.limits.json_depth);
  gv::Hub hub;

  std::unique_ptr<gv::auth::KeySet> keys;
  if (args.command != "check") {
    std::error_code ec;
    std::filesystem::create_directories(cfg.data_dir, ec);
    if (ec) {
      std::fprintf(stderr, "grapevine: data_dir %s: %s\n", cfg.data_dir.c_str(),
                   ec.message().c_str());
      return 1;
    }
    // Events still in the log broker's file would never be delivered by
    // the direct broker: refuse rather than lose them.
    const auto log_file = log_broker_file(cfg);
    if (cfg.events.broker == "direct" && std::filesystem::exists(log_file, ec)) {
      std::fprintf(stderr,
                   "grapevine: events.broker is direct, but %s (the in-process broker's log) "
                   "exists and may hold events not yet consumed. Stop client writes, run "
                   "with events.broker: in-process until /readyz shows consumer_lag 0 and "
                   "outbox_backlog 0, stop, remove the file, then start with direct.\n",
                   log_file.c_str());
      return 1;
    }
    if (!cfg.auth.keys.empty()) {
      std::string error;
      keys = gv::auth::KeySet::load(cfg.auth, cfg.data_dir, &error);
      if (!keys) {
        std::fprintf(stderr, "grapevine: %s\n", error.c_str());
        return 1;
      }
    }
  }
  gv::auth::Revocations revocations(cfg.auth.access_token_ttl + cfg.auth.leeway);
  dispatcher.set_revocations(&revocations);
  gv::plugins::HostServices services{&cfg, &registry, &dispatcher, &hub, &metrics, keys.get()};
  services.revocations = &revocations;
  services.run_job = [&pool](std::function<void()> job) {
    return pool.submit_first(std::move(job));
  };
  gv::ResponseCache response_cache(cfg.response_cache.max_bytes, cfg.response_cache.max_age);
  services.response_cache = &response_cache;
  gv::plugins::PluginHost plugins(services);

  if (args.command == "check") {
    plugins.check(&problems);
    for (const auto& p : problems) std::fprintf(stderr, "%s\n", p.to_string().c_str());
    if (!problems.empty()) {
      std::fprintf(stderr, "grapevine: %zu config error(s)\n", problems.size());
      return 2;
    }
    std::printf("%s: configuration is valid\n", args.config.c_str());
    return 0;
  }

  // The embedded stores, the events engine and the scheduler that plugins
  // reach through the host function table.
  gv::stores::MemoryCache cache(cfg.storage.cache_max_bytes);
  add_cache_metrics(&metrics, &cache);
  if (response_cache.enabled()) add_response_cache_metrics(&metrics, &response_cache);
  if (keys) {
    const gv::auth::KeySet* k = keys.get();
    metrics.add_family("grapevine_auth_verified_token_hits_total",
                       "Requests whose access token was found verified already "
                       "(auth.verified_tokens).",
                       "counter", [k] {
                         return gv::Metrics::Samples{
                             {"", static_cast<double>(k->verified_token_hits())}};
                       });
    metrics.add_family("grapevine_auth_verified_tokens", "Access tokens remembered as verified.",
                       "gauge", [k] {
                         return gv::Metrics::Samples{
                             {"", static_cast<double>(k->verified_tokens())}};
                       });
  }
  gv::stores::LocalBlobStore blobs(cfg.data_dir / "blobs");
  std::unique_ptr<gv::events::Broker> broker;
  if (cfg.events.broker == "kafka") {
    broker = gv::events::make_kafka_broker(kafka_options(cfg), &metrics);
  } else if (cfg.events.broker == "direct") {
    gv::events::DirectBrokerOptions direct;
    direct.partitions = cfg.events.partitions;
    direct.consumer_threads = cfg.events.consumer_threads;
    broker = gv::events::make_direct_broker(direct, &metrics);
  } else {
    gv::events::InProcessBrokerOptions broker_options;
    broker_options.file = log_broker_file(cfg);
    broker_options.partitions = cfg.events.partitions;
    broker_options.consumer_threads = cfg.events.consumer_threads;
    broker_options.busy_timeout_ms = cfg.storage.busy_timeout_ms;
    broker_options.synchronous = cfg.storage.synchronous;
    broker_options.mmap_bytes = cfg.storage.sqlite_mmap_bytes;
    broker_options.wal_bytes = cfg.storage.sqlite_wal_bytes;
    broker_options.retention_events = cfg.events.log_retention_events;
    broker = gv::events::make_in_process_broker(broker_options, &metrics);
  }
  gv::events::EngineOptions engine_options;
  engine_options.relay_batch = cfg.events.relay_batch;
  engine_options.relay_linger = cfg.events.relay_linger;
  engine_options.max_attempts = cfg.events.max_attempts;
  engine_options.retry_backoff = cfg.events.retry_backoff;
  engine_options.retry_backoff_max = cfg.events.retry_backoff_max;
  engine_options.consumed_retention = cfg.events.consumed_retention;
  gv::events::EventEngine events(*broker, engine_options, &metrics);
  gv::Scheduler scheduler(
      [&pool](std::function<void()> job) { return pool.try_submit(std::move(job)); }, &metrics);
  {
    gv::Scheduler::Job purge;
    purge.name = "host.cache_purge";
    purge.interval = std::chrono::seconds(1);
    purge.run = [&cache] { cache.purge_expired(10000); };
    std::string error;
    scheduler.add(std::move(purge), &error);
    gv::Scheduler::Job prune;
    prune.name = "host.events_prune";
    prune.interval = std::chrono::minutes(10);
    prune.run = [&events] { events.prune_consumed(); };
    scheduler.add(std::move(prune), &error);
  }
  services.cache = &cache;
  services.blobs = &blobs;
  services.events = &events;
  services.scheduler = &scheduler;

  std::vector<std::string> errors;
  std::string admin_error;
  if (!gv::plugins::register_admin_operations(&services, &admin_error))
    errors.push_back("admin operations: " + admin_error);
  bool started = errors.empty() && plugins.load(&errors) && plugins.start(&errors);
  if (started) {
    std::string error;
    if (!events.start(&error)) {
      errors.push_back("events: " + error);
      started = false;
    } else {
      scheduler.start();
    }
  }
  if (!started) {
    for (const auto& e : errors) {
      std::fprintf(stderr, "grapevine: %s\n", e.c_str());
      gv::log::error("start-up failed", {{"reason", e}});
    }
    events.stop();
    plugins.stop();
    return 1;
  }
  std::atomic<bool> ready{false};
  gv::net::Server server({&cfg, &registry, &dispatcher, &hub, &metrics, keys.get(),
                          &response_cache, [&ready] { return ready.load(); },
                          [&events] { return readiness(events); }});
  std::string error;
  if (!server.listen(&error)) {
    std::fprintf(stderr, "grapevine: %s\n", error.c_str());
    scheduler.stop();
    events.stop();
    plugins.stop();
    return 1;
  }
  ready = true;
  gv::log::start_batching(cfg.log.flush);
  gv::log::info("listening", {{"address", server.address()},
                              {"plugins", plugins.names()},
                              {"operations", registry.size()},
                              {"version", GRAPEVINE_VERSION}});
  gv::log::flush();  // whoever waits for "listening" sees it now
  server.run();
  scheduler.stop();  // no new job runs
  pool.stop();       // handlers still running past the grace finish first
  plugins.finish_writes();  // and the writes they queued (quick ones too), answered
  events.stop();     // the relay's last pass; consumers finish their event
  plugins.stop();
  gv::log::info("stopped");
  gv::log::stop_batching();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Worker threads free and allocate request buffers all the time; with
  // glibc's default threshold (128 KiB) each thread's heap is trimmed and
  // grown again over and over, and every trim (madvise) flushes the TLBs of
  // the other cores. Keep up to 16 MiB free per heap instead.
  mallopt(M_TRIM_THRESHOLD, 16 << 20);
  Args args;
  std::string error;
  if (!parse_args(argc, argv, &args, &error)) {
    std::fprintf(stderr, "grapevine: %s\n%s", error.c_str(), kUsage);
    return 2;
  }
  if (args.command == "help") {
    std::printf("%s", kUsage);
    return 0;
  }
  if (args.command == "version") {
    std::printf("grapevine %s (plugin ABI %d.%d)\n", GRAPEVINE_VERSION, GV_ABI_MAJOR, GV_ABI_MINOR);
    return 0;
  }
  if (args.command == "plugins") return list_plugins(args);
  return run(args);
}
