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
#define GV_ABI_MINOR 7
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
  GV_ERR_DENIED = 5,      /* the caller may not do this */
  GV_ERR_CONFLICT = 6     /* 1.1: a SQL constraint (unique, foreign key, check) */
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
  /* ABI 1.1 (check struct_size): */
  gv_str client_address; /* the peer's IP address ("" in process); for rate limits */
  gv_str session_id;     /* the access token's "sid" claim, "" when none */
} gv_request_v1;

/* Where a handler writes its answer; the host copies what it is given. */
typedef struct gv_response gv_response;

/* An operation handler. Runs on a host worker thread, where blocking is
 * allowed; only a GV_OP_QUICK one may run on an I/O thread. It must answer
 * through respond_json, respond_error or (1.6) respond_after_write before
 * returning GV_OK; any other return (or no answer) gives the client a 500
 * with the request id. */
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
  /* ---- ABI 1.3 (check struct_size) ---- */
  uint32_t flags; /* GV_OP_* */
  /* ---- ABI 1.4 (check struct_size) ---- */
  /* NULL, or what a 200 answer shows, as a template over the path's
   * parameters ("post:{postId}"): the host then keeps such answers in memory
   * (response_cache in host config) and serves a repeated request for the
   * same path and query from there, on the I/O thread, without calling the
   * handler. Only for HTTP GET operations with GV_ACCESS_ANYONE whose answer
   * depends on nothing but the path and query: not on the caller, not on
   * request headers, not on the time. The plugin marks the tag stale with
   * txn_invalidate in every write that changes what it shows. Over
   * WebSocket and in-process calls the handler always runs. */
  const char* cache_tag;
} gv_operation_v1;

/* gv_operation_v1.flags */
/* The handler runs inside the write transaction of the plugin's database
 * that groups concurrent requests (group commit), and its answer goes out
 * once that transaction has committed. Its sql_write calls become parts of
 * that transaction (each kept or undone alone, as before); no thread waits
 * for the commit, which makes short writing operations much cheaper under
 * load. Effects outside the plugin's database (pushes, cache, calls to
 * other plugins) happen before the commit, and the handler holds up the
 * group while it runs: for operations whose effect is their writes and
 * events. If the group's commit fails (or its work never began within the
 * busy timeout), the client gets 503, whatever the handler answered. */
#define GV_OP_GROUPED_WRITE 1u
/* ABI 1.7. The handler does not wait: it computes its answer from the
 * request alone (respond_json, respond_error, respond_header, or
 * respond_after_write, whose work runs in the group commit as usual).
 * The host may then run it on the network thread that read the request
 * instead of handing it to a worker and back, one thread hand-off less
 * per request; handlers of many connections run on that thread one after
 * another, so keep it to microseconds. While it runs there, the calls that
 * may wait return GV_ERR_DENIED and the host logs the refusal:
 * call_operation, sql_write, sql_read, cache_* and blob_*. Not with
 * GV_OP_GROUPED_WRITE (refused by register_operation). */
#define GV_OP_QUICK 2u

typedef struct gv_host gv_host; /* the host's per-plugin context, opaque */

/* ---- ABI 1.1: stores, events and jobs ---------------------------------- */

/* A SQL value: a parameter or a column. The same five types on every
 * backend (SQLite now, PostgreSQL later). Text is valid UTF-8 without NUL;
 * anything else goes as a blob. */
typedef enum gv_value_type {
  GV_VALUE_NULL = 0,
  GV_VALUE_INT = 1,  /* int64: .i */
  GV_VALUE_REAL = 2, /* double: .r */
  GV_VALUE_TEXT = 3, /* .s */
  GV_VALUE_BLOB = 4  /* .s, any bytes */
} gv_value_type;

typedef struct gv_value {
  int32_t type; /* gv_value_type */
  int64_t i;
  double r;
  gv_str s;
} gv_value;

/* An open transaction on the plugin's database; valid only during the
 * callback that received it, and only on that thread. */
typedef struct gv_txn gv_txn;

/* Work run inside a transaction. Return GV_OK to commit; anything else
 * rolls back. A failed statement fails the whole transaction (later
 * statements fail too, and it rolls back). */
typedef gv_status (*gv_txn_fn)(void* ctx, gv_txn* txn);

/* Receives one result row: column names and values, ncols of each, valid
 * only during the call. */
typedef void (*gv_row_fn)(void* ctx, size_t ncols, const gv_str* names, const gv_value* values);

/* One event, as a consumer sees it. Strings valid only during the call. */
typedef struct gv_event_v1 {
  uint32_t struct_size;
  gv_str id;       /* sortable unique id (ULID) */
  gv_str type;     /* "post.created" */
  gv_str key;      /* ordering key: events with one key arrive in order */
  int64_t time_ms; /* publish time, Unix milliseconds */
  gv_str source;   /* the publishing plugin */
  uint32_t schema_version;
  gv_str payload_json; /* a JSON object */
  uint32_t attempt;    /* 1 on first delivery, more on retries */
} gv_event_v1;

/* An event handler: runs inside a write transaction on the consuming
 * plugin's database, in which the host also records the event id, so its
 * effect happens once. GV_OK commits; anything else rolls back and the
 * event is retried with backoff, then parked as a dead letter. */
typedef gv_status (*gv_event_fn)(void* ctx, const gv_event_v1* event, gv_txn* txn);

typedef struct gv_subscription_v1 {
  uint32_t struct_size;
  const char* pattern; /* "post.created", "post.*" or "*" */
  gv_event_fn handler;
  void* handler_ctx; /* must outlive the host */
} gv_subscription_v1;

/* A scheduled job: runs on a worker thread, never overlapping itself.
 * Anything but GV_OK counts as a failed run in /metrics. */
typedef gv_status (*gv_job_fn)(void* ctx);

typedef struct gv_job_v1 {
  uint32_t struct_size;
  const char* name;    /* unique within the plugin; the host prefixes "plugin." */
  int64_t interval_ms; /* run every interval_ms; or 0 with cron */
  const char* cron;    /* 5-field cron, UTC ("0 3 * * *": 03:00 daily); NULL with interval_ms */
  gv_job_fn run;
  void* ctx; /* must outlive the host */
} gv_job_v1;

/* Receives one sorted-set member with its score. */
typedef void (*gv_member_fn)(void* ctx, gv_str member, double score);
/* Receives one key of a blob listing. */
typedef void (*gv_key_fn)(void* ctx, gv_str key);

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

  /* ---- ABI 1.1 (check struct_size before use) ---- */

  /* Adds migration step `step` (1, 2, 3 ... in order) of the plugin's
   * database; only during create. The host applies pending steps after
   * create, each in its own transaction, before start. */
  gv_status (*add_migration)(gv_host* host, int32_t step, gv_str sql);

  /* Runs work in a write (sql_write) or read-only snapshot (sql_read)
   * transaction on the plugin's own database. Returns work's status, or:
   * GV_ERR_UNAVAILABLE when the database stayed locked past the busy
   * timeout (answer 503), GV_ERR_CONFLICT for a constraint violation,
   * GV_ERR_INVALID for bad SQL or parameters, GV_ERR_INTERNAL for I/O
   * failures. On failure the reason reaches error_sink (may be NULL). */
  gv_status (*sql_write)(gv_host* host, gv_txn_fn work, void* ctx, gv_sink_fn error_sink,
                         void* error_ctx);
  gv_status (*sql_read)(gv_host* host, gv_txn_fn work, void* ctx, gv_sink_fn error_sink,
                        void* error_ctx);

  /* Runs one statement with params bound to $1..$N. Rows, if any, reach
   * on_row (may be NULL); *changes (may be NULL) receives the rows it
   * inserted, updated or deleted. */
  gv_status (*sql_run)(gv_txn* txn, gv_str sql, const gv_value* params, size_t nparams,
                       gv_row_fn on_row, void* row_ctx, int64_t* changes);

  /* Publishes an event inside the write transaction txn: it is stored in
   * the plugin's outbox in the same commit as the transaction's changes,
   * and delivered to subscribers once committed. type: [a-z0-9_] segments
   * separated by '.'; key: non-empty ordering key; payload: a JSON object.
   * The event id reaches id_sink (may be NULL). */
  gv_status (*publish)(gv_txn* txn, gv_str type, gv_str key, gv_str payload_json,
                       uint32_t schema_version, gv_sink_fn id_sink, void* id_ctx);

  /* Subscribes the plugin to events whose type matches pattern; only
   * during create. Handlers run on host threads, in order per key. */
  gv_status (*subscribe)(gv_host* host, const gv_subscription_v1* subscription);

  /* Adds a periodic job (only during create), or runs fn once after
   * delay_ms (any time after start). */
  gv_status (*add_job)(gv_host* host, const gv_job_v1* job);
  gv_status (*run_later)(gv_host* host, int64_t delay_ms, gv_job_fn fn, void* ctx);

  /* The cache, private to the plugin (keys are namespaced by the host).
   * ttl_ms 0: no expiry. cache_get: GV_ERR_NOT_FOUND when absent. */
  gv_status (*cache_get)(gv_host* host, gv_str key, gv_sink_fn sink, void* sink_ctx);
  gv_status (*cache_set)(gv_host* host, gv_str key, gv_str value, int64_t ttl_ms);
  gv_status (*cache_delete)(gv_host* host, gv_str key);
  /* Adds delta to the integer at key (created as 0 with ttl_ms). */
  gv_status (*cache_incr)(gv_host* host, gv_str key, int64_t delta, int64_t ttl_ms, int64_t* value);
  /* Sorted sets: add or update a member; remove one; range by rank (0 is
   * the lowest score; reverse: 0 is the highest; stop -1 = the end) or by
   * score (min..max inclusive, at most limit, 0 = no limit); keep only the
   * `keep` highest-scored members. */
  gv_status (*cache_zadd)(gv_host* host, gv_str key, gv_str member, double score);
  gv_status (*cache_zrem)(gv_host* host, gv_str key, gv_str member);
  gv_status (*cache_zrange)(gv_host* host, gv_str key, int64_t start, int64_t stop, int reverse,
                            gv_member_fn on_member, void* ctx);
  gv_status (*cache_zrange_by_score)(gv_host* host, gv_str key, double min, double max,
                                     size_t limit, int reverse, gv_member_fn on_member, void* ctx);
  gv_status (*cache_ztrim)(gv_host* host, gv_str key, size_t keep);

  /* The blob store, private to the plugin. Keys: 1..1024 bytes of UTF-8,
   * '/'-separated segments, no "." or ".." segment (GV_ERR_INVALID).
   * A put is atomic and durable. blob_get: GV_ERR_NOT_FOUND when absent.
   * blob_list: keys starting with prefix, after start_after, at most limit
   * (0 = 1000), ascending; *more is set to 1 when the listing was cut. */
  gv_status (*blob_put)(gv_host* host, gv_str key, gv_str bytes);
  gv_status (*blob_get)(gv_host* host, gv_str key, gv_sink_fn sink, void* sink_ctx);
  gv_status (*blob_delete)(gv_host* host, gv_str key);
  gv_status (*blob_list)(gv_host* host, gv_str prefix, gv_str start_after, size_t limit,
                         gv_key_fn on_key, void* ctx, int* more);

  /* Says why a transaction function or event handler is about to fail; the
   * host keeps the message with a parked event and in its log. */
  void (*txn_fail)(gv_txn* txn, gv_str message);

  /* Revokes access tokens before they expire, effective for the next call
   * on every transport: those whose "sid" claim is session_id (if not
   * empty), and those of user_id (if not empty) issued at or before
   * issued_before_s (Unix seconds). Kept in memory for the access-token
   * lifetime; a plugin re-asserts what it still needs after a restart. */
  gv_status (*revoke_tokens)(gv_host* host, gv_str session_id, gv_str user_id,
                             int64_t issued_before_s);

  /* ---- ABI 1.2 ---- */

  /* Adds an HTTP response header to the answer (call it before respond_json
   * or respond_error): Location for a 201, Retry-After for a 429 or 503,
   * Cache-Control, ETag, ... A name is 1..64 token characters, a value at
   * most 1024 bytes without control characters, at most 16 headers per
   * answer; the host's own (Content-Type, Content-Length, Connection,
   * Transfer-Encoding, Server, Date, X-Request-Id, Upgrade, X-Cache) are refused:
   * GV_ERR_INVALID, and the header is not sent. A plugin's Retry-After
   * replaces the host's default of 1 second. Over WebSocket and in-process
   * calls headers are dropped. */
  gv_status (*respond_header)(gv_response* response, gv_str name, gv_str value);

  /* ---- ABI 1.3 ---- */

  /* The configured lifetime of access tokens (auth.access_token_ttl_s), in
   * seconds: what sign_access_token uses for ttl_seconds 0. A plugin that
   * issues tokens reports it to clients (expires_in) and keeps revocations
   * that long. */
  int64_t (*access_token_ttl)(gv_host* host);

  /* ---- ABI 1.4 ---- */

  /* Marks the host's cached answers tagged `tag` (a cache_tag with its
   * parameters filled in: "post:42") stale once txn, a write transaction,
   * has committed; nothing happens if it rolls back. Tags are the calling
   * plugin's own: another plugin's "post:42" is a different tag. Refused in
   * a read transaction (GV_ERR_INVALID). */
  gv_status (*txn_invalidate)(gv_txn* txn, gv_str tag);
  /* The same at once, for changes outside the plugin's database. */
  gv_status (*invalidate)(gv_host* host, gv_str tag);

  /* ---- ABI 1.5 ---- */

  /* Runs one INSERT (or REPLACE) statement like sql_run without rows, and
   * gives in *id (may be NULL) the integer primary key the database
   * assigned to the row it inserted: SQLite's rowid (an INTEGER PRIMARY
   * KEY column; a PostgreSQL backend reads a SERIAL or IDENTITY column's
   * with lastval()); of several rows, the last; 0 when it inserted none
   * (ON CONFLICT DO NOTHING, or an upsert that updated). Costs less than
   * INSERT ... RETURNING, which SQLite runs through a temporary table.
   * Any other statement: GV_ERR_INVALID. */
  gv_status (*sql_insert)(gv_txn* txn, gv_str sql, const gv_value* params, size_t nparams,
                          int64_t* id);

  /* ---- ABI 1.6 ---- */

  /* Answers a request with a write: instead of respond_json, a handler that
   * has checked its input hands over work, and returns GV_OK. The host runs
   * work(ctx, txn, response) as one part of the plugin's grouped write
   * transaction (the group commit), on the thread writing the group, and
   * sends the answer work gives once the group has committed; so the
   * handler's parsing and checks run on a worker, in parallel, and only
   * the transaction holds up the group. work answers through respond_json
   * or respond_error on the response it receives, and returns GV_OK to keep
   * its writes; any other return undoes them (its answer, if it gave one,
   * still goes out: a 404, say; without one the client gets a 500, or 409
   * or 503 for a constraint or a busy database). If the group's commit
   * fails, the client gets 503 whatever work answered. Published events go
   * out with the commit, as in sql_write. In-process calls (call_operation)
   * run work in a write of their own, waiting for it. release(ctx) (may be
   * NULL) runs once work has run or never will. At most once per handler
   * call, and not with respond_json or respond_error: GV_ERR_INVALID (also
   * when the plugin has no database). */
  gv_status (*respond_after_write)(gv_host* host, gv_response* response,
                                   gv_status (*work)(void* ctx, gv_txn* txn, gv_response* r),
                                   void* ctx, void (*release)(void* ctx));
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
