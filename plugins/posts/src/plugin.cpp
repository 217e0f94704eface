// The posts plugin: wires DAL, service and handlers, and exports itself.
#include <grapevine/sdk.hpp>

#include "handlers.hpp"
#include "posts_service.hpp"
#include "posts_store.hpp"

namespace posts {

class PostsPlugin : public grapevine::Plugin {
 public:
  explicit PostsPlugin(grapevine::PluginContext& ctx)
      : store_(ctx.dal()), service_(store_, ctx.service()) {
    register_handlers(ctx.registry(), service_);
  }

 private:
  PostsStore store_;
  PostsService service_;
};

}  // namespace posts

GRAPEVINE_PLUGIN(posts::PostsPlugin, "posts", "1.0.0", "",
                 R"json({"type":"object","properties":{
  "max_text_chars":{"type":"integer","minimum":1,"maximum":100000,"default":500,
    "description":"longest post text, in characters (Unicode code points)"},
  "default_page_size":{"type":"integer","minimum":1,"maximum":1000,"default":20,
    "description":"items in a list page when the client gives no limit"},
  "max_page_size":{"type":"integer","minimum":1,"maximum":1000,"default":100,
    "description":"largest limit a client may ask for in a list page"},
  "idempotency_ttl_s":{"type":"integer","minimum":60,"maximum":604800,"default":86400,
    "description":"seconds an Idempotency-Key is remembered per author"},
  "max_idempotency_key_chars":{"type":"integer","minimum":8,"maximum":1024,"default":128,
    "description":"longest Idempotency-Key accepted"},
  "purge_interval_s":{"type":"integer","minimum":1,"maximum":86400,"default":600,
    "description":"how often expired idempotency keys are purged, in seconds"}}})json")
