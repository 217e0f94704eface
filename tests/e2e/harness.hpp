// End-to-end test harness: runs the real grapevine binary on port 0 with a
// temporary data folder, and talks to it over HTTP and WebSocket.
#pragma once

#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace gvtest {

using json = nlohmann::json;
namespace fs = std::filesystem;

// A fresh folder, removed with everything in it.
struct TempDir {
  TempDir();
  ~TempDir();
  fs::path path;
};

struct HttpResult {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
  json json_body() const;  // parsed body; discarded value when not JSON
  std::string header(const std::string& lower_name) const;
};

using Headers = std::vector<std::pair<std::string, std::string>>;

// One HTTP request on a new connection.
HttpResult http(int port, const std::string& method, const std::string& target,
                const std::string& body = "", const Headers& headers = {});

// The secret the harness config gives the HS256 key "main".
inline const std::string kTestSecret = "test-secret-test-secret-test-secret-0123";

// A token signed with kTestSecret; payload gets defaults for what it lacks
// (sub "alice", iss/aud "grapevine", exp in an hour, typ at+jwt).
std::string make_token(json payload = json::object(), json header = json::object(),
                       const std::string& secret = kTestSecret);
std::string base64url(const std::string& bytes);

// The config the harness starts grapevine with (JSON is valid YAML).
json default_config(const fs::path& data_dir);

class Host {
 public:
  struct Options {
    std::optional<json> config;  // default_config() when empty
    std::vector<std::pair<std::string, std::string>> env;
    std::vector<std::string> args;  // extra command-line arguments
  };
  explicit Host(Options options);
  Host() : Host(Options{}) {}
  ~Host();

  bool started() const { return port_ > 0; }
  int port() const { return port_; }
  int pid() const { return pid_; }  // the host's process id; -1 when it is not running
  TempDir& dir() { return *dir_; }
  std::string output() const;  // everything it printed so far

  HttpResult request(const std::string& method, const std::string& target,
                     const std::string& body = "", const Headers& headers = {}) {
    return http(port_, method, target, body, headers);
  }
  // Sends SIGTERM and waits (up to timeout) for the exit code; -1 on timeout.
  int terminate(std::chrono::milliseconds timeout = std::chrono::seconds(20));
  // SIGKILL, as a crash or the OOM killer would; waits for the exit.
  void kill_now();
  // Waits for the process to exit by itself; its exit code, -1 on timeout.
  int wait(std::chrono::milliseconds timeout = std::chrono::seconds(20));

 private:
  std::unique_ptr<TempDir> dir_;
  int pid_ = -1;
  int port_ = 0;
  int exit_code_ = -1;
};

// Runs grapevine with args to completion; returns its exit code and puts
// stdout and stderr in *output.
int run_grapevine(const std::vector<std::string>& args, std::string* output,
                  const std::vector<std::pair<std::string, std::string>>& env = {});

fs::path grapevine_binary();
fs::path build_plugin_dir();  // the in-tree plugins (hello, ...)
fs::path test_plugin_dir();   // testkit, bad_abi, not_a_plugin, ...

// grapevine-kafka-mock in a child process: an in-memory Kafka cluster
// (librdkafka's mock cluster) that several hosts share. Stopped with the
// object.
class KafkaMock {
 public:
  // brokers: how many; topics: "name:partitions" created at start.
  explicit KafkaMock(int brokers = 1, const std::vector<std::string>& topics = {});
  ~KafkaMock();
  bool started() const { return !bootstrap_.empty(); }
  const std::string& bootstrap() const { return bootstrap_; }
  // Sends one command ("down all", "up 1", "errors produce 5 TRANSPORT")
  // and returns the mock's answer line ("ok ..." or "error: ...").
  std::string command(const std::string& line);

 private:
  int pid_ = -1;
  int in_ = -1;   // its stdin
  int out_ = -1;  // its stdout
  std::string buffered_;
  std::string bootstrap_;
  std::string read_line(std::chrono::milliseconds timeout);
};

fs::path kafka_mock_binary();

// Runs a command line through /bin/sh; returns its exit code and puts
// stdout in *out (stderr goes to the test's stderr).
int run_command(const std::string& command_line, std::string* out);

// One keep-alive HTTP connection for many requests (tests that send
// thousands). request() throws std::runtime_error when the connection
// fails or the server closes it, as when the host is killed.
class HttpClient {
 public:
  explicit HttpClient(int port);
  ~HttpClient();
  HttpResult request(const std::string& method, const std::string& target,
                     const std::string& body = "", const Headers& headers = {});
  // Shuts the connection down from any thread: a request() blocked on it
  // (a server that never answers) then throws.
  void abort();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Polls pred every 20 ms until it holds or timeout passes; returns pred's
// last value.
template <class F>
bool eventually(F&& pred, std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return pred();
}

// A raw TCP connection, for tests that misbehave at the byte level.
class RawConnection {
 public:
  explicit RawConnection(int port);
  ~RawConnection();
  void send(const std::string& bytes);
  // Reads until the peer closes or the timeout passes; *closed says which.
  std::string read_until_closed(std::chrono::milliseconds timeout, bool* closed);

 private:
  int fd_ = -1;
};

class WebSocket {
 public:
  // Connects to ws://127.0.0.1:port/target; throws on failure, with the
  // HTTP status of a refused upgrade in what().
  WebSocket(int port, const std::string& target = "/ws", const Headers& headers = {});
  ~WebSocket();
  void send(const std::string& text);
  void send_json(const json& j) { send(j.dump()); }
  // The next text message; nullopt on timeout or close.
  std::optional<std::string> receive(std::chrono::milliseconds timeout = std::chrono::seconds(10));
  std::optional<json> receive_json(std::chrono::milliseconds timeout = std::chrono::seconds(10));
  // Sends an op and returns the reply with that id, skipping pushes.
  json call(const std::string& op, const json& data = json::object());
  // The close code the server sent, once receive() saw the close.
  int close_code() const;
  bool is_open() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace gvtest
