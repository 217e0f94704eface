// Loading config/grapevine.yaml: YAML -> JSON (with positions) -> schema
// check -> HostConfig -> checks the schema cannot express -> overrides.
// Every step keeps going after an error, so one run reports them all.
#include "config/host_config.hpp"

#include <algorithm>
#include <limits>
#include <memory>
#include <set>
#include <tuple>

#include "config/yaml_document.hpp"
#include "core/json_schema.hpp"

namespace gv::config {

using nlohmann::json;

namespace {

// ------------------------------------------------------------------ schema

json integer(int64_t min, int64_t max) {
  return {{"type", "integer"}, {"minimum", min}, {"maximum", max}};
}

json text(int min_length = 1) { return {{"type", "string"}, {"minLength", min_length}}; }

json boolean() { return {{"type", "boolean"}}; }

json list_of(json item) { return {{"type", "array"}, {"items", std::move(item)}}; }

json section(json properties) {
  return {
      {"type", "object"}, {"additionalProperties", false}, {"properties", std::move(properties)}};
}

constexpr int64_t kHour_ms = 3600LL * 1000;
constexpr int64_t kDay_ms = 24 * kHour_ms;
constexpr int64_t kWeek_s = 7LL * 24 * 3600;

json make_schema() {
  json key = section({
      {"kid", text()},
      {"alg", {{"type", "string"}, {"enum", {"HS256", "EdDSA"}}}},
      // RFC 7518 3.2: an HS256 key must have at least 256 bits.
      {"secret", text(32)},
      {"secret_file", text()},
      {"generate", boolean()},
      {"public_key_file", text()},
      {"private_key_file", text()},
  });
  key["required"] = {"kid", "alg"};
  json plugin =
      section({{"enabled", boolean()}, {"optional", boolean()}, {"config", {{"type", "object"}}}});
  return section({
      {"server", section({{"listen", text()}, {"io_threads", integer(0, 1024)}})},
      {"limits", section({{"header_bytes", integer(512, 1 << 20)},
                          {"body_bytes", integer(1, 1LL << 32)},
                          {"request_timeout_ms", integer(1, kDay_ms)},
                          {"idle_timeout_ms", integer(1, kDay_ms)},
                          {"max_connections", integer(1, 1000000)},
                          {"json_depth", integer(1, 1024)}})},
      {"websocket", section({{"max_message_bytes", integer(1, 1LL << 30)},
                             {"send_queue_messages", integer(1, 1000000)},
                             {"max_in_flight", integer(1, 100000)},
                             {"ping_interval_ms", integer(100, kDay_ms)},
                             {"handshake_timeout_ms", integer(1, kDay_ms)},
                             {"allowed_origins", list_of(text())}})},
      {"workers", section({{"threads", integer(0, 1024)},
                           {"queue_limit", integer(1, 1000000)},
                           {"spare_threads", integer(0, 4096)}})},
      {"auth", section({{"issuer", text()},
                        {"audience", text()},
                        {"signing_kid", text(0)},
                        {"access_token_ttl_s", integer(1, kWeek_s)},
                        {"leeway_s", integer(0, 3600)},
                        {"verified_tokens", integer(0, 1000000)},
                        {"keys", list_of(key)}})},
      {"log",
       section({{"level", {{"type", "string"}, {"enum", {"debug", "info", "warn", "error"}}}},
                {"access", boolean()},
                {"flush_ms", integer(0, 10000)}})},
      {"storage",
       section({{"sqlite_synchronous", {{"type", "string"}, {"enum", {"NORMAL", "FULL"}}}},
                {"busy_timeout_ms", integer(0, kHour_ms)},
                {"reader_connections", integer(1, 64)},
                {"sqlite_mmap_bytes", integer(0, 1LL << 40)},
                {"sqlite_wal_bytes", integer(8 << 20, 1LL << 40)},
                {"group_commit_wait_us", integer(0, 10000)},
                {"cache_max_bytes", integer(1 << 16, 1LL << 40)}})},
      {"response_cache",
       section({{"max_bytes", integer(0, 1LL << 40)}, {"max_age_ms", integer(1, kDay_ms)}})},
      {"events",
       section(
           {{"broker", {{"type", "string"}, {"enum", {"auto", "in-process", "direct", "kafka"}}}},
            {"kafka",
             section({
                 {"bootstrap_servers", text()},
                 {"topic", text()},
                 {"create_topic", boolean()},
                 {"replication_factor", integer(0, 32)},
                 {"client_id", text(0)},
                 {"group_prefix", text(0)},
                 {"message_timeout_ms", integer(1000, kHour_ms)},
                 {"session_timeout_ms", integer(1000, kHour_ms)},
                 {"commit_interval_ms", integer(10, kHour_ms)},
                 {"properties",
                  {{"type", "object"},
                   {"additionalProperties", {{"type", {"string", "integer", "boolean"}}}}}},
             })},
            {"partitions", integer(1, 1024)},
            {"consumer_threads", integer(1, 64)},
            {"relay_batch", integer(1, 100000)},
            {"relay_linger_ms", integer(0, 1000)},
            {"max_attempts", integer(1, 1000)},
            {"retry_backoff_ms", integer(1, kHour_ms)},
            {"retry_backoff_max_ms", integer(1, kDay_ms)},
            {"consumed_retention_h", integer(1, 24 * 365)},
            {"log_retention_events", integer(0, 1LL << 40)}})},
      {"shutdown", section({{"grace_ms", integer(0, kHour_ms)}})},
      {"data_dir", text()},
      {"plugin_dirs", list_of(text())},
      {"plugins", {{"type", "object"}, {"additionalProperties", plugin}}},
  });
}

const JsonSchema& compiled_schema() {
  static const std::unique_ptr<JsonSchema> schema = [] {
    std::string error;
    auto s = JsonSchema::compile(host_config_schema(), &error);
    if (!s) throw std::logic_error("host config schema: " + error);
    return s;
  }();
  return *schema;
}

// ------------------------------------------------------------------ listen

// "HOST:PORT" or "[IPV6]:PORT" into host and port; "" or what is wrong.
std::string parse_listen(const std::string& s, std::string* host, uint16_t* port) {
  std::string h, p;
  if (!s.empty() && s[0] == '[') {
    size_t close = s.find(']');
    if (close == std::string::npos) return "missing ']' after the IPv6 address";
    h = s.substr(1, close - 1);
    if (s.compare(close + 1, 1, ":") != 0) return "expected [IPV6]:PORT, e.g. [::1]:8080";
    p = s.substr(close + 2);
  } else {
    size_t colon = s.rfind(':');
    if (colon == std::string::npos) return "expected HOST:PORT, e.g. 127.0.0.1:8080";
    h = s.substr(0, colon);
    if (h.find(':') != std::string::npos) return "an IPv6 address needs brackets, e.g. [::1]:8080";
    p = s.substr(colon + 1);
  }
  if (h.empty()) return "missing host before the port (0.0.0.0 is every interface)";
  if (h.find_first_of(" \t[]/") != std::string::npos) return "invalid host";
  if (p.empty() || p.size() > 5 || p.find_first_not_of("0123456789") != std::string::npos ||
      std::stoul(p) > 65535)
    return "port must be a number from 0 to 65535";
  *host = h;
  *port = static_cast<uint16_t>(std::stoul(p));
  return "";
}

// --------------------------------------------------------------- extraction

// Reads values by JSON pointer, taking only those of the right type and
// range: a wrong one has already been reported by the schema.
class Reader {
 public:
  Reader(const YamlDocument& doc, std::vector<Diagnostic>* errors) : doc_(doc), errors_(errors) {}

  const json* at(const std::string& pointer) const {
    const json::json_pointer p(pointer);
    return doc_.value.contains(p) ? &doc_.value.at(p) : nullptr;
  }

  template <class T>
  void number(const std::string& pointer, T* out) const {
    const json* v = at(pointer);
    if (!v || !v->is_number_integer()) return;
    if (!v->is_number_unsigned() && v->get<int64_t>() < 0) return;
    const uint64_t u = v->get<uint64_t>();
    if (u <= static_cast<uint64_t>(std::numeric_limits<T>::max())) *out = static_cast<T>(u);
  }

  template <class Duration>
  void duration(const std::string& pointer, Duration* out) const {
    typename Duration::rep count = out->count();
    number(pointer, &count);
    *out = Duration(count);
  }

  void text(const std::string& pointer, std::string* out) const {
    if (const json* v = at(pointer); v && v->is_string()) *out = v->get<std::string>();
  }

  void flag(const std::string& pointer, bool* out) const {
    if (const json* v = at(pointer); v && v->is_boolean()) *out = v->get<bool>();
  }

  void strings(const std::string& pointer, std::vector<std::string>* out) const {
    const json* v = at(pointer);
    if (!v || !v->is_array()) return;
    out->clear();
    for (const auto& e : *v)
      if (e.is_string()) out->push_back(e.get<std::string>());
  }

  void error(const std::string& pointer, std::string message) const {
    errors_->push_back(
        {doc_.file, doc_.mark_of(pointer), YamlDocument::dotted(pointer), std::move(message)});
  }

 private:
  const YamlDocument& doc_;
  std::vector<Diagnostic>* errors_;
};

void read_server(const Reader& r, ServerConfig* s) {
  std::string listen;
  r.text("/server/listen", &listen);
  if (!listen.empty()) {
    std::string problem = parse_listen(listen, &s->listen_host, &s->listen_port);
    if (!problem.empty()) r.error("/server/listen", problem);
  }
  r.number("/server/io_threads", &s->io_threads);
}

void read_limits(const Reader& r, LimitsConfig* l) {
  r.number("/limits/header_bytes", &l->header_bytes);
  r.number("/limits/body_bytes", &l->body_bytes);
  r.duration("/limits/request_timeout_ms", &l->request_timeout);
  r.duration("/limits/idle_timeout_ms", &l->idle_timeout);
  r.number("/limits/max_connections", &l->max_connections);
  r.number("/limits/json_depth", &l->json_depth);
}

void read_websocket(const Reader& r, WebSocketConfig* w) {
  r.number("/websocket/max_message_bytes", &w->max_message_bytes);
  r.number("/websocket/send_queue_messages", &w->send_queue_messages);
  r.number("/websocket/max_in_flight", &w->max_in_flight);
  r.duration("/websocket/ping_interval_ms", &w->ping_interval);
  r.duration("/websocket/handshake_timeout_ms", &w->handshake_timeout);
  r.strings("/websocket/allowed_origins", &w->allowed_origins);
}

// What the schema cannot say: which fields a key needs depends on its alg.
void check_key(const Reader& r, const std::string& p, const AuthKey& k) {
  auto has = [&](const char* field) { return r.at(p + field) != nullptr; };
  const bool secret = has("/secret"), file = has("/secret_file");
  const bool any_pem = has("/public_key_file") || has("/private_key_file");
  if (k.alg == "HS256") {
    if (secret == file) r.error(p, "an HS256 key needs exactly one of secret or secret_file");
    if (k.generate && !file) r.error(p + "/generate", "generate needs secret_file");
    if (any_pem) r.error(p, "an HS256 key takes secret or secret_file, not PEM files");
  } else if (k.alg == "EdDSA") {
    if (!has("/public_key_file")) r.error(p, "an EdDSA key needs public_key_file");
    if (secret || file || has("/generate"))
      r.error(p, "an EdDSA key takes PEM files, not secret, secret_file or generate");
  }
}

void read_key(const Reader& r, const std::string& p, AuthKey* k) {
  r.text(p + "/kid", &k->kid);
  r.text(p + "/alg", &k->alg);
  r.text(p + "/secret", &k->secret);
  r.text(p + "/secret_file", &k->secret_file);
  r.flag(p + "/generate", &k->generate);
  r.text(p + "/public_key_file", &k->public_key_file);
  r.text(p + "/private_key_file", &k->private_key_file);
  check_key(r, p, *k);
}

void read_auth(const Reader& r, AuthConfig* a) {
  r.text("/auth/issuer", &a->issuer);
  r.text("/auth/audience", &a->audience);
  r.text("/auth/signing_kid", &a->signing_kid);
  r.duration("/auth/access_token_ttl_s", &a->access_token_ttl);
  r.duration("/auth/leeway_s", &a->leeway);
  r.number("/auth/verified_tokens", &a->verified_tokens);
  const json* keys = r.at("/auth/keys");
  if (keys) {
    // The file's list replaces the default key; with it, a host signs only
    // if signing_kid says with which.
    a->keys.clear();
    if (!r.at("/auth/signing_kid")) a->signing_kid.clear();
  }
  std::set<std::string> kids;
  for (size_t i = 0; keys && keys->is_array() && i < keys->size(); ++i) {
    const std::string p = "/auth/keys/" + std::to_string(i);
    if (!(*keys)[i].is_object()) continue;
    AuthKey k;
    read_key(r, p, &k);
    if (!k.kid.empty() && !kids.insert(k.kid).second)
      r.error(p + "/kid", "duplicate kid '" + k.kid + "'");
    a->keys.push_back(std::move(k));
  }
  if (a->signing_kid.empty()) return;
  auto signer = std::find_if(a->keys.begin(), a->keys.end(),
                             [&](const AuthKey& k) { return k.kid == a->signing_kid; });
  if (signer == a->keys.end())
    r.error("/auth/signing_kid",
            "names no key in auth.keys (give the kid of one, or \"\" for a host that does not "
            "sign tokens)");
  else if (signer->alg == "EdDSA" && signer->private_key_file.empty())
    r.error("/auth/signing_kid", "the signing key needs private_key_file");
}

void read_plugins(const Reader& r, const YamlDocument& doc, std::vector<PluginEntry>* out) {
  const json* plugins = r.at("/plugins");
  if (!plugins || !plugins->is_object()) return;
  for (const auto& [name, v] : plugins->items()) {
    if (!v.is_object()) continue;
    const std::string p = "/plugins/" + pointer_token(name);
    PluginEntry e;
    e.name = name;
    e.mark = doc.mark_of(p);
    r.flag(p + "/enabled", &e.enabled);
    r.flag(p + "/optional", &e.optional);
    if (const json* c = r.at(p + "/config"); c && c->is_object()) e.config = *c;
    out->push_back(std::move(e));
  }
  // JSON objects are sorted by key; the file's order is kept instead.
  std::stable_sort(out->begin(), out->end(), [](const auto& a, const auto& b) {
    return std::tie(a.mark.line, a.mark.column) < std::tie(b.mark.line, b.mark.column);
  });
}

void read_kafka(const Reader& r, KafkaConfig* k) {
  r.text("/events/kafka/bootstrap_servers", &k->bootstrap_servers);
  r.text("/events/kafka/topic", &k->topic);
  r.flag("/events/kafka/create_topic", &k->create_topic);
  r.number("/events/kafka/replication_factor", &k->replication_factor);
  r.text("/events/kafka/client_id", &k->client_id);
  r.text("/events/kafka/group_prefix", &k->group_prefix);
  r.number("/events/kafka/message_timeout_ms", &k->message_timeout_ms);
  r.number("/events/kafka/session_timeout_ms", &k->session_timeout_ms);
  r.number("/events/kafka/commit_interval_ms", &k->commit_interval_ms);
  if (const json* props = r.at("/events/kafka/properties"); props && props->is_object()) {
    for (auto it = props->begin(); it != props->end(); ++it) {
      const json& v = it.value();
      if (v.is_string())
        k->properties.emplace_back(it.key(), v.get<std::string>());
      else if (v.is_boolean())
        k->properties.emplace_back(it.key(), v.get<bool>() ? "true" : "false");
      else if (v.is_number_integer())
        k->properties.emplace_back(it.key(), v.dump());
    }
  }
}

void read_config(const YamlDocument& doc, HostConfig* c, std::vector<Diagnostic>* errors) {
  Reader r(doc, errors);
  read_server(r, &c->server);
  read_limits(r, &c->limits);
  read_websocket(r, &c->websocket);
  r.number("/workers/threads", &c->workers.threads);
  r.number("/workers/queue_limit", &c->workers.queue_limit);
  r.number("/workers/spare_threads", &c->workers.spare_threads);
  read_auth(r, &c->auth);
  r.text("/log/level", &c->log.level);
  r.flag("/log/access", &c->log.access);
  r.duration("/log/flush_ms", &c->log.flush);
  r.duration("/shutdown/grace_ms", &c->shutdown_grace);
  r.text("/storage/sqlite_synchronous", &c->storage.synchronous);
  r.number("/storage/busy_timeout_ms", &c->storage.busy_timeout_ms);
  r.number("/storage/reader_connections", &c->storage.reader_connections);
  r.number("/storage/sqlite_mmap_bytes", &c->storage.sqlite_mmap_bytes);
  r.number("/storage/sqlite_wal_bytes", &c->storage.sqlite_wal_bytes);
  r.number("/storage/group_commit_wait_us", &c->storage.group_commit_wait_us);
  r.number("/storage/cache_max_bytes", &c->storage.cache_max_bytes);
  r.number("/response_cache/max_bytes", &c->response_cache.max_bytes);
  if (c->response_cache.max_bytes > 0 && c->response_cache.max_bytes < (1u << 16))
    r.error("/response_cache/max_bytes", "must be 0 (no cache) or at least 65536");
  r.duration("/response_cache/max_age_ms", &c->response_cache.max_age);
  r.text("/events/broker", &c->events.broker);
  read_kafka(r, &c->events.kafka);
  if (c->events.broker == "kafka" && c->events.kafka.bootstrap_servers.empty())
    r.error("/events/broker", "events.kafka.bootstrap_servers is required with broker: kafka");
  r.number("/events/partitions", &c->events.partitions);
  r.number("/events/consumer_threads", &c->events.consumer_threads);
  r.number("/events/relay_batch", &c->events.relay_batch);
  r.duration("/events/relay_linger_ms", &c->events.relay_linger);
  r.number("/events/max_attempts", &c->events.max_attempts);
  r.duration("/events/retry_backoff_ms", &c->events.retry_backoff);
  r.duration("/events/retry_backoff_max_ms", &c->events.retry_backoff_max);
  r.duration("/events/consumed_retention_h", &c->events.consumed_retention);
  r.number("/events/log_retention_events", &c->events.log_retention_events);
  std::string data_dir;
  r.text("/data_dir", &data_dir);
  if (!data_dir.empty()) c->data_dir = data_dir;
  r.strings("/plugin_dirs", &c->plugin_dirs);
  read_plugins(r, doc, &c->plugins);
}

// Schema diagnostics at a place the YAML layer already complained about
// (an unset !env leaves a null there) would only repeat it.
void validate_new(const YamlDocument& doc, size_t from, std::vector<Diagnostic>* errors) {
  std::set<std::string> known;
  for (size_t i = from; i < errors->size(); ++i) known.insert((*errors)[i].path);
  std::vector<Diagnostic> found;
  validate_at(doc, "", compiled_schema(), &found);
  for (auto& d : found)
    if (!known.count(d.path)) errors->push_back(std::move(d));
}

void apply_overrides(const Overrides& o, HostConfig* c, std::vector<Diagnostic>* errors) {
  if (!o.listen.empty()) {
    std::string problem = parse_listen(o.listen, &c->server.listen_host, &c->server.listen_port);
    if (!problem.empty()) errors->push_back({"command line", {}, "--listen", problem});
  }
  if (!o.data_dir.empty()) c->data_dir = o.data_dir;
}

}  // namespace

const json& host_config_schema() {
  static const json schema = make_schema();
  return schema;
}

bool load_host_config(const std::filesystem::path& file, const Overrides& overrides,
                      HostConfig* out, std::vector<Diagnostic>* errors) {
  const size_t before = errors->size();
  *out = HostConfig{};
  out->file = file;
  try {
    auto shared_doc = std::make_shared<YamlDocument>();
    YamlDocument& doc = *shared_doc;
    // A file that could not be parsed gives no object to go on with.
    if (!load_yaml(file, &doc, errors) && !doc.value.is_object()) return false;
    if (doc.value.is_null()) doc.value = json::object();  // empty file
    validate_new(doc, before, errors);
    read_config(doc, out, errors);
    std::stable_sort(errors->begin() + static_cast<std::ptrdiff_t>(before), errors->end(),
                     [](const Diagnostic& a, const Diagnostic& b) {
                       return std::tie(a.mark.line, a.mark.column) <
                              std::tie(b.mark.line, b.mark.column);
                     });
    apply_overrides(overrides, out, errors);
    out->document = std::move(shared_doc);
  } catch (const std::exception& e) {
    errors->push_back({file.string(), {}, "", e.what()});
  }
  return errors->size() == before;
}

}  // namespace gv::config
