/* Grapevine plugin ABI.
 *
 * The only contract between the grapevine host and a plugin. Plain C: no C++
 * standard-library type, no exception and no host-library type crosses it,
 * so a plugin built with another compiler or in another language keeps
 * loading. Buffers are (pointer, length) pairs; the callee never keeps a
 * pointer it was handed past the call unless a comment says so.
 *
 * Versioning: a plugin built against ABI major M loads into a host of the
 * same major whose minor is at least the plugin's. Structs carry their size
 * first so a later minor can append members; always read `struct_size`
 * before touching a member that a newer minor added.
 *
 * Two things a plugin file must have:
 *   1. A manifest in the ELF section GV_MANIFEST_SECTION: NUL-separated
 *      "key=value" strings (see GV_MANIFEST below). The host reads it from
 *      the file without loading it, so a plugin for another ABI is refused
 *      before any of its code (static constructors included) runs.
 *   2. The exported function GV_ENTRY_SYMBOL returning gv_plugin_v1.
 * The C++ SDK's GRAPEVINE_PLUGIN macro writes both.
 */
#ifndef GRAPEVINE_ABI_H
#define GRAPEVINE_ABI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GV_ABI_MAJOR 1
#define GV_ABI_MINOR 0
#define GV_PLUGIN_MAGIC 0x47525056u /* "GRPV" */

#define GV_MANIFEST_SECTION ".grapevine_plugin"
#define GV_MANIFEST_MAGIC "grapevine-plugin"
#define GV_ENTRY_SYMBOL "grapevine_plugin_entry_v1"

#define GV_STRINGIFY_(x) #x
#define GV_STRINGIFY(x) GV_STRINGIFY_(x)

#if defined(__GNUC__)
#define GV_EXPORT __attribute__((visibility("default")))
#else
#define GV_EXPORT
#endif

/* Result codes of host and plugin functions. */
typedef enum gv_status {
  GV_OK = 0,
  GV_ERR_INVALID = 1,     /* bad argument */
  GV_ERR_NOT_FOUND = 2,   /* no such operation, user, channel ... */
  GV_ERR_INTERNAL = 3,    /* the callee failed; it logged why */
  GV_ERR_UNAVAILABLE = 4, /* overloaded or shutting down; retry later */
  GV_ERR_DENIED = 5       /* the caller may not do this */
} gv_status;

/* A borrowed byte string; not NUL-terminated unless a comment says so. */
typedef struct gv_str {
  const char* data;
  size_t len;
} gv_str;

/* Receives a byte string the callee produced; valid only during the call. */
typedef void (*gv_sink_fn)(void* sink_ctx, const char* data, size_t len);

typedef enum gv_log_level {
  GV_LOG_DEBUG = 0,
  GV_LOG_INFO = 1,
  GV_LOG_WARN = 2,
  GV_LOG_ERROR = 3
} gv_log_level;

/* Who may call an operation. */
typedef enum gv_access {
  GV_ACCESS_ANYONE = 0,    /* no token needed; a valid one still identifies */
  GV_ACCESS_SIGNED_IN = 1, /* any valid access token */
  GV_ACCESS_ROLE = 2       /* a valid token carrying gv_operation_v1.role */
} gv_access;

/* One incoming call of an operation, whatever the transport. Opaque to
 * plugins except through these members and the host functions. */
typedef struct gv_request_v1 {
  uint32_t struct_size;
  gv_str operation;       /* "posts.create" */
  gv_str request_id;      /* for logs and error bodies */
  gv_str input_json;      /* validated input: body, path and query parameters */
  gv_str user_id;         /* empty when anonymous */
  gv_str roles;           /* comma-separated, e.g. "user,moderator" */
  uint64_t connection_id; /* WebSocket connection, 0 over HTTP */
  /* Looks a request header up, case-insensitively (HTTP only). Returns 1 and
   * sets *value when present, 0 otherwise. */
  int (*header)(const struct gv_request_v1* req, const char* name, gv_str* value);
  void* host_data; /* the host's; do not touch */
} gv_request_v1;

/* Where a handler writes its answer; the host copies what it is given. */
typedef struct gv_response gv_response;

/* An operation handler. Runs on a host worker thread, never on an I/O
 * thread, so blocking is allowed. It must answer through respond_json or
 * respond_error before returning GV_OK; any other return (or no answer)
 * gives the client a 500 with the request id. */
typedef gv_status (*gv_handler_fn)(void* handler_ctx, const gv_request_v1* request,
                                   gv_response* response);

typedef struct gv_operation_v1 {
  uint32_t struct_size;
  const char* name;         /* "plugin.verb", unique in the host */
  const char* http_method;  /* "GET", "POST", ...; NULL: WebSocket/in-process only */
  const char* http_path;    /* "/api/v1/posts/{postId}"; NULL with http_method */
  const char* input_schema; /* JSON Schema of the input object; NULL: {} only */
  const char* summary;      /* one line for the OpenAPI document */
  gv_access access;
  const char* role; /* with GV_ACCESS_ROLE */
  gv_handler_fn handler;
  void* handler_ctx; /* passed back to handler; must outlive the host */
} gv_operation_v1;

typedef struct gv_host gv_host; /* the host's per-plugin context, opaque */

/* What the host offers a plugin. Valid from create until destroy returns. */
typedef struct gv_host_api_v1 {
  uint32_t struct_size;
  uint16_t abi_major;
  uint16_t abi_minor;

  void (*log)(gv_host* host, gv_log_level level, gv_str message);

  /* Registers an operation; only during create. Copies every string. */
  gv_status (*register_operation)(gv_host* host, const gv_operation_v1* op);

  /* Answers a request. status is the HTTP status (2xx for respond_json). */
  void (*respond_json)(gv_response* response, int status, gv_str json);
  /* code: a short snake_case word ("not_found"); message: for humans. */
  void (*respond_error)(gv_response* response, int status, gv_str code, gv_str message);

  /* Calls another plugin's operation in process as `caller` (pass the
   * incoming request to act as its user, or NULL to act as the system with
   * every right). The answer's status and JSON body reach sink before
   * call_operation returns; the JSON is the error body for status >= 400. */
  gv_status (*call_operation)(gv_host* host, const gv_request_v1* caller, gv_str operation,
                              gv_str input_json, int* status, gv_sink_fn sink, void* sink_ctx);

  /* Sends {"event":event,"data":data_json} to every socket of a user or of
   * a channel's subscribers. Never blocks; a socket whose send queue is
   * full is closed. */
  gv_status (*push_to_user)(gv_host* host, gv_str user_id, gv_str event, gv_str data_json);
  gv_status (*push_to_channel)(gv_host* host, gv_str channel, gv_str event, gv_str data_json);
  /* Subscribes or unsubscribes a WebSocket connection to a channel. */
  gv_status (*join_channel)(gv_host* host, uint64_t connection_id, gv_str channel);
  gv_status (*leave_channel)(gv_host* host, uint64_t connection_id, gv_str channel);

  /* Signs an access token for user_id with roles (comma-separated), using
   * the host's configured signing key; ttl_seconds 0 means the configured
   * access-token lifetime. extra_claims_json: a JSON object merged into the
   * claims (may be empty). The token reaches sink. */
  gv_status (*sign_access_token)(gv_host* host, gv_str user_id, gv_str roles, int64_t ttl_seconds,
                                 gv_str extra_claims_json, gv_sink_fn sink, void* sink_ctx);
} gv_host_api_v1;

/* What a plugin exports. Lifecycle: create (register operations), start in
 * dependency order once every plugin is created, stop in reverse order at
 * shutdown, destroy. A plugin is never unloaded while the host runs. */
typedef struct gv_plugin_v1 {
  uint32_t magic; /* GV_PLUGIN_MAGIC */
  uint32_t struct_size;
  uint16_t abi_major;
  uint16_t abi_minor;
  const char* name;
  const char* version;
  /* config_json: the plugin's validated config section as JSON. On success
   * *state is passed to every later call. */
  gv_status (*create)(const gv_host_api_v1* api, gv_host* host, gv_str config_json, void** state);
  gv_status (*start)(void* state);
  void (*stop)(void* state);
  void (*destroy)(void* state);
} gv_plugin_v1;

typedef const gv_plugin_v1* (*gv_entry_fn)(void);

/* The manifest as a string literal, for GV_MANIFEST_SECTION:
 * name, version: string literals; depends: comma-separated plugin names;
 * config_schema: a JSON Schema of the plugin's config section. */
#define GV_MANIFEST(name, version, depends, config_schema)                   \
  GV_MANIFEST_MAGIC "\0abi=" GV_STRINGIFY(GV_ABI_MAJOR) "." GV_STRINGIFY(    \
      GV_ABI_MINOR) "\0name=" name "\0version=" version "\0depends=" depends \
                    "\0config_schema=" config_schema

#ifdef __cplusplus
}
#endif

#endif /* GRAPEVINE_ABI_H */
