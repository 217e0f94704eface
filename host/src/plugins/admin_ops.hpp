// The host's own operations for operators (role admin): dead letters and
// their replay, scheduled jobs and running one now. They live in the same
// registry as plugin operations, so they work over HTTP, /ws and the
// OpenAPI document like any other.
#pragma once

#include "plugins/plugin_host.hpp"

namespace gv::plugins {

// Registers admin.events.dead_letters, admin.events.replay, admin.jobs.list
// and admin.jobs.run under the owner "host". services must outlive the
// registry's use of them.
bool register_admin_operations(HostServices* services, std::string* error);

}  // namespace gv::plugins
