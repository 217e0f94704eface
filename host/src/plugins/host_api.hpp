// The C function table (gv_host_api_v1) the host hands every plugin.
#pragma once

#include <grapevine/abi.h>

#include <cstddef>
#include <string>

#include "plugins/plugin_host.hpp"

// The host's per-plugin context behind the opaque gv_host.
struct gv_host {
  std::string plugin;
  gv::plugins::HostServices* services = nullptr;
  bool creating = false;  // operations may be registered only now
};

namespace gv::plugins {

// Sizes of the ABI 1.0 structs, frozen: a later minor appends members, and
// a plugin built against 1.0 must still load.
inline constexpr size_t kOperationV10Size = offsetof(gv_operation_v1, handler_ctx) + sizeof(void*);
inline constexpr size_t kPluginV10Size = offsetof(gv_plugin_v1, destroy) + sizeof(void*);

const gv_host_api_v1* host_api();

}  // namespace gv::plugins
