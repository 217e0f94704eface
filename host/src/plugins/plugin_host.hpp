// Loads the plugins the config enables, and runs their lifecycle.
//
// Order of checks for each plugin, before any of its code runs: the file is
// found, its manifest is read from the file (not loaded), the ABI matches,
// the name matches, its config section fits its schema. Only then is it
// loaded (Boost.DLL, RTLD_LOCAL) and created. Plugins are created and
// started in dependency order, stopped in reverse, and never unloaded.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "auth/jwt.hpp"
#include "auth/revocations.hpp"
#include "config/host_config.hpp"
#include "core/dispatcher.hpp"
#include "core/hub.hpp"
#include "core/metrics.hpp"
#include "core/registry.hpp"
#include "core/response_cache.hpp"
#include "plugins/manifest.hpp"

namespace gv {
class Scheduler;
namespace stores {
class Cache;
class BlobStore;
}  // namespace stores
namespace events {
class EventEngine;
}
}  // namespace gv

namespace gv::plugins {

// What plugins reach through the host function table.
struct HostServices {
  const config::HostConfig* config = nullptr;
  Registry* registry = nullptr;
  Dispatcher* dispatcher = nullptr;
  Hub* hub = nullptr;
  Metrics* metrics = nullptr;
  const auth::KeySet* keys = nullptr;
  // ABI 1.1: shared stores (plugins' keys are namespaced), events, jobs.
  stores::Cache* cache = nullptr;
  stores::BlobStore* blobs = nullptr;
  events::EventEngine* events = nullptr;
  Scheduler* scheduler = nullptr;
  auth::Revocations* revocations = nullptr;
  ResponseCache* response_cache = nullptr;  // ABI 1.4: invalidations; may be null
  // Runs a job on the worker pool, ahead of queued requests; false if the
  // pool is stopping. Plugin databases run their group commits'
  // completions through it (SqliteOptions::run_completions); unset, on
  // the writing thread.
  std::function<bool(std::function<void()>)> run_job;
};

// plugin_dirs with "$ORIGIN" replaced by the folder of the running binary.
std::vector<std::filesystem::path> resolve_plugin_dirs(const std::vector<std::string>& dirs);

// Every *.so in dirs, with its manifest or the reason it is not a plugin.
struct InstalledPlugin {
  std::filesystem::path file;
  Manifest manifest;
  std::string problem;  // empty when it would load
};
std::vector<InstalledPlugin> list_installed(const std::vector<std::filesystem::path>& dirs);

class PluginHost {
 public:
  // services is shared with the plugins' host contexts and must outlive
  // this; members filled in after construction (stores, events, jobs) are
  // seen by load().
  explicit PluginHost(HostServices& services);
  ~PluginHost();

  // Checks and creates every enabled plugin. A failing required plugin is
  // an error (one line each in *errors, false returned); a failing optional
  // one is logged, counted in metrics, and left out.
  bool load(std::vector<std::string>* errors);
  bool start(std::vector<std::string>* errors);
  void stop();  // reverse order, after finish_writes(); idempotent
  // Waits until the writes queued on the plugins' databases have run and
  // their answers and events are handed on (SqlDatabase::finish_writes):
  // at shutdown, before the server and the event engine that those reach
  // go away.
  void finish_writes();

  std::vector<std::string> names() const;  // loaded, in start order

  // Checks manifests and config sections only (--check-config): runs no
  // plugin code. Appends diagnostics.
  void check(std::vector<config::Diagnostic>* errors) const;

  struct Loaded;

 private:
  void register_database_metrics();
  bool prepare(const config::PluginEntry& entry, const std::vector<std::filesystem::path>& dirs,
               Manifest* out, std::vector<config::Diagnostic>* problems) const;
  bool create(const config::PluginEntry& entry, const Manifest& manifest, std::string* error);
  bool open_database(Loaded& p, std::string* error);
  void fail(const config::PluginEntry& entry, const std::string& message,
            std::vector<std::string>* errors);

  HostServices& services_;
  std::vector<std::unique_ptr<Loaded>> loaded_;
  bool started_ = false;
};

}  // namespace gv::plugins
