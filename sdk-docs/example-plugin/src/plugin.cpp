// The example plugin: wires DAL, service and handlers, and exports itself.
#include <grapevine/sdk.hpp>

#include "greeter_service.hpp"
#include "greeting_store.hpp"
#include "handlers.hpp"

namespace hello {

class HelloPlugin : public grapevine::Plugin {
 public:
  explicit HelloPlugin(grapevine::PluginContext& ctx)
      : store_(ctx.dal()), service_(store_, ctx.service()) {
    register_handlers(ctx.registry(), service_);
    ctx.log().info("hello plugin ready");
  }

 private:
  GreetingStore store_;
  GreeterService service_;
};

}  // namespace hello

GRAPEVINE_PLUGIN(hello::HelloPlugin, "hello", "1.0.0", "",
                 R"({"type":"object",
                     "properties":{"greeting":{"type":"string","minLength":1,"maxLength":40,
                                               "description":"word the greeting starts with"}}})")
