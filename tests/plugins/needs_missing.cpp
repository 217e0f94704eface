// A plugin whose dependency is not installed.
#include <grapevine/sdk.hpp>

struct NeedsMissing : grapevine::Plugin {
  explicit NeedsMissing(grapevine::PluginContext&) {}
};

GRAPEVINE_PLUGIN(NeedsMissing, "needs_missing", "0.0.1", "nowhere_to_be_found", "{}")
