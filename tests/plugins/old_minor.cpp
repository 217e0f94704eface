// A plugin built for ABI 1.6, written against the C ABI by hand: before
// GV_OP_QUICK (1.7), the flag value 2 meant nothing, and this
// one's operation leaves it set. The host must not read it as quick: the
// handler may wait, so it runs on a worker. GET /api/v1/oldminor/thread
// answers the name of the thread it ran on.
#include <grapevine/abi.h>
#include <pthread.h>

#include <string>

extern "C" {
__attribute__((section(GV_MANIFEST_SECTION), used)) const char grapevine_plugin_manifest[] =
    GV_MANIFEST_MAGIC "\0abi=1.6\0name=oldminor\0version=1.0.0\0depends=\0config_schema={}";
}

namespace {

const gv_host_api_v1* host_api = nullptr;

gv_status thread_name(void*, const gv_request_v1*, gv_response* response) {
  char name[16] = {};
  pthread_getname_np(pthread_self(), name, sizeof name);
  std::string body = std::string("{\"thread\":\"") + name + "\"}";
  host_api->respond_json(response, 200, gv_str{body.data(), body.size()});
  return GV_OK;
}

gv_status create(const gv_host_api_v1* api, gv_host* host, gv_str, void** state) {
  host_api = api;
  gv_operation_v1 op{};
  op.struct_size = sizeof op;  // 1.7 added no member, only the flag
  op.name = "oldminor.thread";
  op.http_method = "GET";
  op.http_path = "/api/v1/oldminor/thread";
  op.summary = "The thread the handler ran on";
  op.access = GV_ACCESS_ANYONE;
  op.handler = &thread_name;
  op.flags = 2u;  // undefined in 1.6
  *state = nullptr;
  return api->register_operation(host, &op);
}

gv_status start(void*) { return GV_OK; }
void stop(void*) {}
void destroy(void*) {}

const gv_plugin_v1 descriptor = {
    GV_PLUGIN_MAGIC, sizeof(gv_plugin_v1), 1, 6, "oldminor", "1.0.0", &create, &start, &stop,
    &destroy};

}  // namespace

extern "C" GV_EXPORT const gv_plugin_v1* grapevine_plugin_entry_v1(void) { return &descriptor; }
