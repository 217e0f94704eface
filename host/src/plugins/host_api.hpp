// The C function table (gv_host_api_v1) the host hands every plugin, and the
// host's side of the opaque handles in it.
#pragma once

#include <grapevine/abi.h>

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "plugins/plugin_host.hpp"
#include "stores/migrations.hpp"
#include "stores/sql.hpp"

// The host's per-plugin context behind the opaque gv_host.
struct gv_host {
  std::string plugin;
  gv::plugins::HostServices* services = nullptr;
  bool creating = false;  // operations, migrations, subscriptions, jobs only now
  // The ABI minor the plugin was built for (its descriptor's): what its
  // flags can mean.
  int abi_minor = GV_ABI_MINOR;

  // Declared during create (ABI 1.1).
  std::vector<gv::stores::Migration> migrations;
  struct Subscription {
    std::string pattern;
    gv_event_fn handler = nullptr;
    void* ctx = nullptr;
  };
  std::vector<Subscription> subscriptions;

  // The plugin's database: opened after create when it declared a migration
  // or a subscription; null otherwise.
  std::unique_ptr<gv::stores::SqlDatabase> db;
};

// An open transaction as a plugin holds it.
struct gv_txn {
  gv::stores::SqlTransaction* tx = nullptr;
  gv_host* host = nullptr;
  bool writable = false;
  int published = 0;                    // events published in it
  gv::stores::SqlStatus first_failure;  // of the statements run in it
  std::string plugin_error;             // what the plugin said with txn_fail
};

namespace gv::plugins {

// Sizes of the ABI 1.0 structs, frozen: a later minor appends members, and
// a plugin built against 1.0 must still load.
inline constexpr size_t kOperationV10Size = offsetof(gv_operation_v1, handler_ctx) + sizeof(void*);
inline constexpr size_t kPluginV10Size = offsetof(gv_plugin_v1, destroy) + sizeof(void*);

const gv_host_api_v1* host_api();

// Runs a plugin's subscriptions matching event inside tx (the consumer
// runner's transaction): the glue between the events engine and the ABI.
stores::SqlStatus deliver_event(gv_host* host, const gv_event_v1& event,
                                stores::SqlTransaction& tx);

}  // namespace gv::plugins
