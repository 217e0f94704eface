// The C function table (gv_host_api_v1) the host hands every plugin.
#pragma once

#include <grapevine/abi.h>

#include <string>

#include "plugins/plugin_host.hpp"

// The host's per-plugin context behind the opaque gv_host.
struct gv_host {
  std::string plugin;
  gv::plugins::HostServices* services = nullptr;
  bool creating = false;  // operations may be registered only now
};

namespace gv::plugins {

const gv_host_api_v1* host_api();

}  // namespace gv::plugins
