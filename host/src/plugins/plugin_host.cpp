#include "plugins/plugin_host.hpp"

#include <unistd.h>

#include <algorithm>
#include <boost/dll/shared_library.hpp>
#include <map>

#include "config/yaml_document.hpp"
#include "core/dispatcher.hpp"
#include "core/log.hpp"
#include "core/metrics.hpp"
#include "events/events.hpp"
#include "plugins/host_api.hpp"
#include "stores/migrations.hpp"
#include "stores/sqlite_database.hpp"

namespace gv::plugins {

namespace fs = std::filesystem;

struct PluginHost::Loaded {
  Manifest manifest;
  const gv_plugin_v1* descriptor = nullptr;
  void* state = nullptr;
  gv_host context;
  bool started = false;
};

namespace {

fs::path exe_dir() {
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  return ec ? fs::current_path() : exe.parent_path();
}

std::string where(const config::HostConfig& cfg, const config::PluginEntry& e) {
  std::string s = cfg.file.string();
  if (e.mark.line > 0) s += ":" + std::to_string(e.mark.line) + ":" + std::to_string(e.mark.column);
  return s;
}

// Boost.DLL loads with RTLD_LOCAL so plugins cannot see each other's
// symbols. The library object is leaked on purpose: a plugin is never
// unloaded, not even at exit, where its threads or thread_locals may live.
const gv_plugin_v1* load_entry(const fs::path& file, const std::string& expected_name,
                               std::string* error) {
  namespace dll = boost::dll;
  boost::dll::fs::error_code ec;
  auto* lib =
      new dll::shared_library(file, dll::load_mode::rtld_local | dll::load_mode::rtld_now, ec);
  if (ec || !lib->is_loaded()) {
    *error = "cannot load: " + ec.message();
    delete lib;
    return nullptr;
  }
  if (!lib->has(GV_ENTRY_SYMBOL)) {
    *error = std::string("no entry point ") + GV_ENTRY_SYMBOL + " exported";
    return nullptr;
  }
  auto entry = lib->get<const gv_plugin_v1*()>(GV_ENTRY_SYMBOL);
  const gv_plugin_v1* d = entry();
  if (!d || d->magic != GV_PLUGIN_MAGIC) {
    *error = "the entry point returned no Grapevine descriptor (bad magic)";
    return nullptr;
  }
  if (d->struct_size < kPluginV10Size || d->abi_major != GV_ABI_MAJOR ||
      d->abi_minor > GV_ABI_MINOR) {
    *error = "its descriptor says ABI " + std::to_string(d->abi_major) + "." +
             std::to_string(d->abi_minor) + " (size " + std::to_string(d->struct_size) +
             "), this host expects " + std::to_string(GV_ABI_MAJOR) + ".0 to " +
             std::to_string(GV_ABI_MAJOR) + "." + std::to_string(GV_ABI_MINOR) +
             " (size at least " + std::to_string(kPluginV10Size) + ")";
    return nullptr;
  }
  if (!d->create || !d->start || !d->stop || !d->destroy) {
    *error = "its descriptor lacks a lifecycle function";
    return nullptr;
  }
  if (!d->name || std::string(d->name) != expected_name) {
    *error = std::string("its descriptor names it '") + (d->name ? d->name : "") +
             "', its manifest '" + expected_name + "'";
    return nullptr;
  }
  return d;
}

}  // namespace

std::vector<fs::path> resolve_plugin_dirs(const std::vector<std::string>& dirs) {
  std::vector<fs::path> out;
  for (const auto& d : dirs) {
    if (d.rfind("$ORIGIN", 0) == 0)
      out.push_back((exe_dir().string() + d.substr(7)));
    else
      out.emplace_back(d);
  }
  for (auto& p : out) p = p.lexically_normal();
  return out;
}

std::vector<InstalledPlugin> list_installed(const std::vector<fs::path>& dirs) {
  std::vector<InstalledPlugin> found;
  for (const auto& dir : dirs) {
    std::error_code ec;
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(dir, ec))
      if (e.path().extension() == ".so") files.push_back(e.path());
    std::sort(files.begin(), files.end());
    for (const auto& f : files) {
      InstalledPlugin p;
      p.file = f;
      std::string error;
      if (!read_manifest(f, &p.manifest, &error))
        p.problem = error;
      else if (!check_abi(p.manifest, &error))
        p.problem = error;
      found.push_back(std::move(p));
    }
  }
  return found;
}

PluginHost::PluginHost(HostServices& services) : services_(services) {}

PluginHost::~PluginHost() {
  stop();
  for (auto it = loaded_.rbegin(); it != loaded_.rend(); ++it)
    if ((*it)->state) (*it)->descriptor->destroy((*it)->state);
}

bool PluginHost::prepare(const config::PluginEntry& entry, const std::vector<fs::path>& dirs,
                         Manifest* out, std::vector<config::Diagnostic>* problems) const {
  const config::HostConfig& cfg = *services_.config;
  auto problem = [&](std::string path, std::string message) {
    problems->push_back({cfg.file.string(), entry.mark, std::move(path), std::move(message)});
    return false;
  };
  fs::path file;
  for (const auto& dir : dirs) {
    std::error_code ec;
    if (fs::exists(dir / (entry.name + ".so"), ec)) {
      file = dir / (entry.name + ".so");
      break;
    }
  }
  std::string key = "plugins." + entry.name;
  if (file.empty()) {
    std::string searched;
    for (const auto& d : dirs) searched += (searched.empty() ? "" : ", ") + d.string();
    return problem(key, "no " + entry.name + ".so in the plugin directories (" + searched + ")");
  }
  std::string error;
  if (!read_manifest(file, out, &error)) return problem(key, file.string() + ": " + error);
  if (!check_abi(*out, &error)) return problem(key, error);
  if (out->name != entry.name)
    return problem(key,
                   file.string() + " is the plugin '" + out->name + "', not '" + entry.name + "'");
  auto schema = JsonSchema::compile(strict_schema(out->config_schema), &error);
  if (!schema)
    return problem(key, file.string() + ": the plugin's config schema is invalid: " + error);
  if (cfg.document) {
    size_t before = problems->size();
    config::validate_at(*cfg.document, "/plugins/" + entry.name + "/config", *schema, problems);
    return problems->size() == before;
  }
  bool ok = true;
  for (const auto& v : schema->validate(entry.config, 16)) {
    std::string path = key + ".config";
    for (char c : v.pointer) path += c == '/' ? '.' : c;
    ok = problem(path, v.message);
  }
  return ok;
}

void PluginHost::check(std::vector<config::Diagnostic>* errors) const {
  auto dirs = resolve_plugin_dirs(services_.config->plugin_dirs);
  std::vector<Manifest> manifests;
  for (const auto& entry : services_.config->plugins) {
    if (!entry.enabled) continue;
    Manifest m;
    if (prepare(entry, dirs, &m, errors)) manifests.push_back(m);
  }
  std::string error;
  if (!order_by_dependencies(manifests, &error))
    errors->push_back({services_.config->file.string(), {}, "plugins", error});
}

void PluginHost::fail(const config::PluginEntry& entry, const std::string& message,
                      std::vector<std::string>* errors) {
  ++services_.metrics->plugin_load_failures;
  if (entry.optional) {
    log::warn("optional plugin left out", {{"plugin", entry.name}, {"reason", message}});
    return;
  }
  errors->push_back(message);
}

bool PluginHost::load(std::vector<std::string>* errors) {
  const config::HostConfig& cfg = *services_.config;
  auto dirs = resolve_plugin_dirs(cfg.plugin_dirs);
  std::vector<Manifest> manifests;
  std::map<std::string, const config::PluginEntry*> entries;
  for (const auto& entry : cfg.plugins) {
    if (!entry.enabled) continue;
    entries[entry.name] = &entry;
    Manifest m;
    std::vector<config::Diagnostic> problems;
    if (prepare(entry, dirs, &m, &problems))
      manifests.push_back(std::move(m));
    else
      for (const auto& p : problems) fail(entry, p.to_string(), errors);
  }
  if (!errors->empty()) return false;
  std::string error;
  if (!order_by_dependencies(manifests, &error)) {
    errors->push_back(cfg.file.string() + ": " + error);
    return false;
  }
  for (const auto& m : manifests) {
    const config::PluginEntry& entry = *entries[m.name];
    if (!create(entry, m, &error))
      fail(entry, where(cfg, entry) + ": plugin " + m.name + " (" + m.file.string() + "): " + error,
           errors);
  }
  return errors->empty();
}

bool PluginHost::create(const config::PluginEntry& entry, const Manifest& manifest,
                        std::string* error) {
  for (const auto& dep : manifest.depends) {
    auto names = this->names();
    if (std::find(names.begin(), names.end(), dep) == names.end()) {
      *error = "its dependency '" + dep + "' failed to load";
      return false;
    }
  }
  const gv_plugin_v1* d = load_entry(manifest.file, manifest.name, error);
  if (!d) return false;
  auto p = std::make_unique<Loaded>();
  p->manifest = manifest;
  p->descriptor = d;
  p->context.plugin = manifest.name;
  p->context.services = &services_;
  p->context.abi_minor = d->abi_minor;
  std::string config = entry.config.dump();
  p->context.creating = true;
  gv_status rc =
      d->create(host_api(), &p->context, gv_str{config.data(), config.size()}, &p->state);
  p->context.creating = false;
  if (rc != GV_OK) {
    services_.registry->remove_plugin(manifest.name);
    *error = "create failed (status " + std::to_string(rc) + "); see the log above";
    return false;
  }
  if (!open_database(*p, error)) {
    services_.registry->remove_plugin(manifest.name);
    d->destroy(p->state);
    p->state = nullptr;
    return false;
  }
  log::info(
      "plugin loaded",
      {{"plugin", manifest.name}, {"version", manifest.version}, {"file", manifest.file.string()}});
  loaded_.push_back(std::move(p));
  return true;
}

// A plugin that declared migrations or subscriptions gets its database:
// data_dir/db/NAME.sqlite, migrated, with the host's event tables, and is
// registered with the events engine as a source and, if it subscribes, as
// a consumer.
bool PluginHost::open_database(Loaded& p, std::string* error) {
  gv_host& h = p.context;
  if (h.migrations.empty() && h.subscriptions.empty()) return true;
  const config::HostConfig& cfg = *services_.config;
  fs::path dir = cfg.data_dir / "db";
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    *error = "cannot create " + dir.string() + ": " + ec.message();
    return false;
  }
  stores::SqliteOptions options;
  options.synchronous = cfg.storage.synchronous;
  options.busy_timeout_ms = cfg.storage.busy_timeout_ms;
  options.reader_connections = cfg.storage.reader_connections;
  options.mmap_bytes = cfg.storage.sqlite_mmap_bytes;
  options.wal_bytes = cfg.storage.sqlite_wal_bytes;
  options.commit_wait = std::chrono::microseconds(cfg.storage.group_commit_wait_us);
  if (Dispatcher* d = services_.dispatcher) options.under_way = [d] { return d->before_write(); };
  options.run_completions = services_.run_job;
  fs::path file = dir / (h.plugin + ".sqlite");
  auto opened = stores::SqliteDatabase::open(file, options);
  if (!opened.ok()) {
    *error = "database " + file.string() + ": " + opened.status.message;
    return false;
  }
  h.db = std::move(opened.value);
  stores::SqlStatus st = stores::migrate(*h.db, h.plugin, h.migrations);
  if (!st.ok()) {
    *error = st.message;
    return false;
  }
  if (services_.events) {
    st = events::EventEngine::prepare_database(*h.db);
    if (!st.ok()) {
      *error = "database " + file.string() + ": " + st.message;
      return false;
    }
    services_.events->add_source(h.plugin, *h.db);
    if (!h.subscriptions.empty()) {
      std::vector<std::string> patterns;
      for (const auto& sub : h.subscriptions) patterns.push_back(sub.pattern);
      gv_host* host = &h;
      services_.events->add_consumer(
          h.plugin, *h.db, patterns,
          [host](const events::Envelope& e, int attempt, stores::SqlTransaction& tx) {
            gv_event_v1 raw{};
            raw.struct_size = sizeof raw;
            raw.id = {e.id.data(), e.id.size()};
            raw.type = {e.type.data(), e.type.size()};
            raw.key = {e.key.data(), e.key.size()};
            raw.time_ms = e.time_ms;
            raw.source = {e.source.data(), e.source.size()};
            raw.schema_version = static_cast<uint32_t>(e.schema_version);
            raw.payload_json = {e.payload.data(), e.payload.size()};
            raw.attempt = static_cast<uint32_t>(attempt);
            return deliver_event(host, raw, tx);
          });
    }
  }
  return true;
}

bool PluginHost::start(std::vector<std::string>* errors) {
  for (auto& p : loaded_) {
    if (p->descriptor->start(p->state) != GV_OK) {
      ++services_.metrics->plugin_load_failures;
      errors->push_back("plugin " + p->manifest.name + ": start failed; see the log above");
      return false;
    }
    p->started = true;
  }
  started_ = true;
  register_database_metrics();
  return true;
}

// Write and commit counters of each plugin's database: writes / commits is
// the mean group-commit size.
void PluginHost::register_database_metrics() {
  if (!services_.metrics) return;
  std::vector<std::pair<std::string, const stores::SqliteDatabase*>> dbs;
  for (const auto& p : loaded_)
    if (auto* db = dynamic_cast<const stores::SqliteDatabase*>(p->context.db.get()))
      dbs.emplace_back("plugin=\"" + Metrics::label_value(p->manifest.name) + "\"", db);
  if (dbs.empty()) return;
  auto family = [dbs](uint64_t stores::SqliteWriteStats::*field) {
    return [dbs, field] {
      Metrics::Samples out;
      for (const auto& [labels, db] : dbs)
        out.emplace_back(labels, static_cast<double>(db->write_stats().*field));
      return out;
    };
  };
  services_.metrics->add_family("grapevine_sqlite_writes_total",
                                "Write transactions run on a plugin's database.", "counter",
                                family(&stores::SqliteWriteStats::works));
  services_.metrics->add_family("grapevine_sqlite_commits_total",
                                "Commits of a plugin's database; writes / commits is the mean "
                                "group-commit size.",
                                "counter", family(&stores::SqliteWriteStats::commits));
  services_.metrics->add_family("grapevine_sqlite_wal_restarts_total",
                                "Times a plugin's database began its WAL anew once all of it "
                                "was copied into the file: past storage.sqlite_wal_bytes (a "
                                "start-over, whose file syncs the writes wait for), or after "
                                "the checkpointer caught up in a pause of the writes.",
                                "counter", family(&stores::SqliteWriteStats::wal_restarts));
}

void PluginHost::finish_writes() {
  for (const auto& p : loaded_)
    if (p->context.db) p->context.db->finish_writes();
}

void PluginHost::stop() {
  finish_writes();  // a plugin's queued work runs its code
  for (auto it = loaded_.rbegin(); it != loaded_.rend(); ++it) {
    if (!(*it)->started) continue;
    (*it)->descriptor->stop((*it)->state);
    (*it)->started = false;
  }
}

std::vector<std::string> PluginHost::names() const {
  std::vector<std::string> out;
  for (const auto& p : loaded_) out.push_back(p->manifest.name);
  return out;
}

}  // namespace gv::plugins
