// The users plugin: wires DAL, service and handlers, and exports itself.
// See sdk-docs/plugins/users.md for operations, config and events.
#include <grapevine/sdk.hpp>

#include "handlers.hpp"
#include "users_service.hpp"
#include "users_store.hpp"

namespace users {

class UsersPlugin : public grapevine::Plugin {
 public:
  explicit UsersPlugin(grapevine::PluginContext& ctx)
      : store_(ctx.dal()), service_(store_, ctx.service()) {
    register_handlers(ctx.registry(), service_);
  }
  void start() override { service_.start(); }

 private:
  UsersStore store_;
  UsersService service_;
};

}  // namespace users

GRAPEVINE_PLUGIN(users::UsersPlugin, "users", "1.0.0", "",
                 R"json({"type":"object",
        "properties":{
          "admins":{"type":"array","maxItems":100,"default":[],
                    "items":{"type":"string","pattern":"^[A-Za-z0-9_]{3,30}$"},
                    "description":"usernames made admin at start and at registration"},
          "max_concurrent_hashes":{"type":"integer","minimum":1,"maximum":64,"default":2,
                    "description":"argon2 hashes running at once; each takes argon2_memory_kib"},
          "hash_wait_ms":{"type":"integer","minimum":0,"maximum":30000,"default":1000,
                    "description":"wait for a free hashing slot before answering 503"},
          "argon2_memory_kib":{"type":"integer","minimum":19456,"maximum":1048576,"default":19456,
                    "description":"argon2id memory cost per hash, KiB; OWASP minimum 19456"},
          "argon2_passes":{"type":"integer","minimum":2,"maximum":20,"default":2,
                    "description":"argon2id time cost, passes"},
          "login_per_ip_per_minute":{"type":"integer","minimum":1,"maximum":1000000,"default":10,
                    "description":"login attempts per client address per minute before 429"},
          "login_per_account_per_minute":{"type":"integer","minimum":1,"maximum":1000000,
                    "default":5,"description":"login attempts per login name per minute"},
          "register_per_ip_per_hour":{"type":"integer","minimum":1,"maximum":1000000,"default":20,
                    "description":"registrations per client address per hour"},
          "refresh_token_ttl_days":{"type":"integer","minimum":1,"maximum":365,"default":30,
                    "description":"lifetime of a refresh token, days"},
          "list_max_page":{"type":"integer","minimum":1,"maximum":1000,"default":100,
                    "description":"largest page of the admin user list"}}})json")
