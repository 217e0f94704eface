// The host's configuration: what config/grapevine.yaml holds, after
// validation, defaults and command-line overrides.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "config/diagnostic.hpp"

namespace gv::config {

struct YamlDocument;

struct ServerConfig {
  std::string listen_host = "127.0.0.1";
  uint16_t listen_port = 8080;
  unsigned io_threads = 0;  // 0: one per core
};

struct LimitsConfig {
  size_t header_bytes = 8 * 1024;
  size_t body_bytes = 1024 * 1024;
  std::chrono::milliseconds request_timeout{30000};
  std::chrono::milliseconds idle_timeout{60000};
  size_t max_connections = 10000;
  unsigned json_depth = 32;
};

struct WebSocketConfig {
  size_t max_message_bytes = 64 * 1024;
  size_t send_queue_messages = 256;
  size_t max_in_flight = 32;                       // operations one socket may have running
  std::chrono::milliseconds ping_interval{30000};  // dead peer after 2x
  std::chrono::milliseconds handshake_timeout{10000};
  std::vector<std::string> allowed_origins;  // "*" allows any
};

struct WorkersConfig {
  unsigned threads = 0;  // 0: one per core
  size_t queue_limit = 1024;
  unsigned spare_threads = 64;  // run requests while workers wait for a group commit
};

struct AuthKey {
  std::string kid;
  std::string alg;               // "HS256" or "EdDSA"
  std::string secret;            // HS256: the shared secret
  std::string secret_file;       // HS256: file holding it (made if absent and generate)
  bool generate = false;         // HS256: create secret_file with a random key
  std::string public_key_file;   // EdDSA: PEM
  std::string private_key_file;  // EdDSA: PEM, only on hosts that sign
};

struct AuthConfig {
  std::string issuer = "grapevine";
  std::string audience = "grapevine";
  // Empty: this host does not sign. "main" by default, "" when the file
  // gives auth.keys but no signing_kid.
  std::string signing_kid = "main";
  std::chrono::seconds access_token_ttl{900};
  std::chrono::seconds leeway{30};
  size_t verified_tokens = 4096;  // tokens remembered as verified; 0 = verify every time
  // As in config/grapevine.yaml: without auth.keys, one HS256 key made in
  // data_dir on first start. auth.keys in a file replaces this list.
  std::vector<AuthKey> keys{AuthKey{"main", "HS256", "", "jwt-main.key", true, "", ""}};
};

struct LogConfig {
  std::string level = "info";  // debug, info, warn, error
  bool access = true;          // one line per request
  // Lines are written in batches at most this often (0: each at once).
  std::chrono::milliseconds flush{100};
};

// The embedded stores (SQLite files, the in-process cache, local blobs).
struct StorageConfig {
  std::string synchronous = "NORMAL";  // NORMAL or FULL
  int busy_timeout_ms = 5000;
  int reader_connections = 4;
  int64_t sqlite_mmap_bytes = 256 << 20;  // PRAGMA mmap_size of every connection
  int64_t sqlite_wal_bytes = 256 << 20;   // SqliteOptions::wal_bytes
  int group_commit_wait_us = 1000;        // SqliteOptions::commit_wait
  size_t cache_max_bytes = 64u << 20;
};

// Answers of cacheable GET operations kept in memory (core/response_cache.hpp).
struct ResponseCacheConfig {
  size_t max_bytes = 64u << 20;  // 0: off
  std::chrono::milliseconds max_age{60000};
};

// events.kafka: used when events.broker is "kafka".
struct KafkaConfig {
  std::string bootstrap_servers;
  std::string topic = "grapevine.events";
  bool create_topic = true;
  int replication_factor = 0;  // 0: the cluster's default
  std::string client_id;       // empty: "grapevine-" + host name
  std::string group_prefix = "grapevine.";
  int message_timeout_ms = 300000;
  int session_timeout_ms = 10000;
  int commit_interval_ms = 1000;
  std::vector<std::pair<std::string, std::string>> properties;  // librdkafka's names
};

struct EventsConfig {
  // "auto" (direct, or in-process where its log exists: see main.cpp),
  // "in-process" (a log), "direct" or "kafka"
  std::string broker = "auto";
  KafkaConfig kafka;
  int partitions = 8;
  int consumer_threads = 2;
  int relay_batch = 500;
  std::chrono::milliseconds relay_linger{5};
  int max_attempts = 5;
  std::chrono::milliseconds retry_backoff{200};
  std::chrono::milliseconds retry_backoff_max{30000};
  std::chrono::hours consumed_retention{24 * 7};
  int64_t log_retention_events = 100000;
};

struct PluginEntry {
  std::string name;
  bool enabled = true;
  bool optional = false;  // a failure to load is logged, not fatal
  nlohmann::json config = nlohmann::json::object();
  Mark mark;  // where the plugin's section starts, for diagnostics
};

struct HostConfig {
  std::filesystem::path file;  // the YAML it came from
  ServerConfig server;
  LimitsConfig limits;
  WebSocketConfig websocket;
  WorkersConfig workers;
  AuthConfig auth;
  LogConfig log;
  StorageConfig storage;
  ResponseCacheConfig response_cache;
  EventsConfig events;
  std::chrono::milliseconds shutdown_grace{10000};
  std::filesystem::path data_dir = "data";
  // "$ORIGIN" at the start stands for the folder of the grapevine binary.
  std::vector<std::string> plugin_dirs = {"$ORIGIN/../lib/grapevine/plugins"};
  std::vector<PluginEntry> plugins;  // in file order
  // The parsed file, so plugin sections can be checked later with the
  // line of every value.
  std::shared_ptr<const YamlDocument> document;
};

// Command-line values that win over the file.
struct Overrides {
  std::string listen;  // "HOST:PORT", port 0 allowed
  std::string data_dir;
};

// Reads, validates and applies overrides. Every problem found goes into
// errors (file, line, key path, message); returns false when there is any.
// Plugin sections are checked later, against each plugin's own schema.
bool load_host_config(const std::filesystem::path& file, const Overrides& overrides,
                      HostConfig* out, std::vector<Diagnostic>* errors);

// The JSON Schema of the host's own keys (plugin sections excluded).
const nlohmann::json& host_config_schema();

}  // namespace gv::config
