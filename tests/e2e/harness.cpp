#include "harness.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/hmac.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace gvtest {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
namespace websocket = beast::websocket;
using tcp = asio::ip::tcp;

TempDir::TempDir() {
  std::random_device rd;
  path = fs::temp_directory_path() /
         ("grapevine-test-" + std::to_string(getpid()) + "-" + std::to_string(rd()));
  fs::create_directories(path);
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path, ec);
}

json HttpResult::json_body() const { return json::parse(body, nullptr, false); }

std::string HttpResult::header(const std::string& name) const {
  auto it = headers.find(name);
  return it == headers.end() ? std::string() : it->second;
}

HttpResult http(int port, const std::string& method, const std::string& target,
                const std::string& body, const Headers& headers) {
  asio::io_context ioc;
  beast::tcp_stream stream(ioc);
  stream.connect(
      tcp::endpoint(asio::ip::make_address("127.0.0.1"), static_cast<unsigned short>(port)));
  bhttp::request<bhttp::string_body> req(bhttp::string_to_verb(method), target, 11);
  req.set(bhttp::field::host, "127.0.0.1");
  if (req.method() == bhttp::verb::unknown) req.method_string(method);
  bool has_type = false;
  for (const auto& [k, v] : headers) {
    req.set(k, v);
    has_type |= beast::iequals(k, "content-type");
  }
  req.body() = body;
  if (!body.empty() && !has_type) req.set(bhttp::field::content_type, "application/json");
  req.prepare_payload();
  // A server may answer early and close while the body is still being sent
  // (413 for an oversize body): the write then fails with a broken pipe or
  // a reset, but the answer is already in the socket. Read it before
  // reporting the write's error.
  beast::error_code write_error;
  bhttp::write(stream, req, write_error);
  beast::flat_buffer buffer;
  bhttp::response_parser<bhttp::string_body> parser;
  parser.body_limit(64 * 1024 * 1024);
  parser.skip(method == "HEAD");
  beast::error_code read_error;
  bhttp::read(stream, buffer, parser, read_error);
  if (read_error) throw beast::system_error(write_error ? write_error : read_error);
  auto& res = parser.get();
  HttpResult out;
  out.status = res.result_int();
  for (const auto& f : res) {
    std::string name(f.name_string());
    for (auto& c : name) c = static_cast<char>(std::tolower(c));
    out.headers[name] = std::string(f.value());
  }
  out.body = res.body();
  beast::error_code ec;
  stream.socket().shutdown(tcp::socket::shutdown_both, ec);
  return out;
}

struct HttpClient::Impl {
  asio::io_context ioc;
  beast::tcp_stream stream{ioc};
  beast::flat_buffer buffer;
};

HttpClient::HttpClient(int port) : impl_(std::make_unique<Impl>()) {
  impl_->stream.connect(
      tcp::endpoint(asio::ip::make_address("127.0.0.1"), static_cast<unsigned short>(port)));
}

HttpClient::~HttpClient() {
  beast::error_code ec;
  impl_->stream.socket().shutdown(tcp::socket::shutdown_both, ec);
}

void HttpClient::abort() { ::shutdown(impl_->stream.socket().native_handle(), SHUT_RDWR); }

HttpResult HttpClient::request(const std::string& method, const std::string& target,
                               const std::string& body, const Headers& headers) {
  bhttp::request<bhttp::string_body> req(bhttp::string_to_verb(method), target, 11);
  req.set(bhttp::field::host, "127.0.0.1");
  for (const auto& [k, v] : headers) req.set(k, v);
  req.body() = body;
  if (!body.empty()) req.set(bhttp::field::content_type, "application/json");
  req.prepare_payload();
  beast::error_code ec;
  bhttp::write(impl_->stream, req, ec);
  if (ec) throw std::runtime_error("write: " + ec.message());
  bhttp::response_parser<bhttp::string_body> parser;
  parser.body_limit(64 * 1024 * 1024);
  bhttp::read(impl_->stream, impl_->buffer, parser, ec);
  if (ec) throw std::runtime_error("read: " + ec.message());
  HttpResult out;
  out.status = parser.get().result_int();
  for (const auto& f : parser.get()) {
    std::string name(f.name_string());
    for (auto& c : name) c = static_cast<char>(std::tolower(c));
    out.headers[name] = std::string(f.value());
  }
  out.body = parser.get().body();
  return out;
}

std::string base64url(const std::string& bytes) {
  static const char* table = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    uint32_t v = (uint8_t(bytes[i]) << 16) | (uint8_t(bytes[i + 1]) << 8) | uint8_t(bytes[i + 2]);
    for (int s = 18; s >= 0; s -= 6) out += table[(v >> s) & 63];
  }
  if (i + 1 == bytes.size()) {
    uint32_t v = uint8_t(bytes[i]) << 16;
    out += table[(v >> 18) & 63];
    out += table[(v >> 12) & 63];
  } else if (i + 2 == bytes.size()) {
    uint32_t v = (uint8_t(bytes[i]) << 16) | (uint8_t(bytes[i + 1]) << 8);
    out += table[(v >> 18) & 63];
    out += table[(v >> 12) & 63];
    out += table[(v >> 6) & 63];
  }
  return out;
}

std::string make_token(json payload, json header, const std::string& secret) {
  auto now = std::chrono::duration_cast<std::chrono::seconds>(
                 std::chrono::system_clock::now().time_since_epoch())
                 .count();
  json h = {{"alg", "HS256"}, {"typ", "at+jwt"}, {"kid", "main"}};
  for (auto it = header.begin(); it != header.end(); ++it)
    if (it.value().is_null())
      h.erase(it.key());
    else
      h[it.key()] = it.value();
  json p = {{"sub", "alice"}, {"iss", "grapevine"}, {"aud", "grapevine"},
            {"iat", now},     {"exp", now + 3600},  {"roles", json::array({"user"})}};
  for (auto it = payload.begin(); it != payload.end(); ++it)
    if (it.value().is_null())
      p.erase(it.key());
    else
      p[it.key()] = it.value();
  std::string signing_input = base64url(h.dump()) + "." + base64url(p.dump());
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(signing_input.data()), signing_input.size(), mac,
       &len);
  return signing_input + "." + base64url(std::string(reinterpret_cast<char*>(mac), len));
}

fs::path grapevine_binary() { return GRAPEVINE_BINARY; }
fs::path build_plugin_dir() {
  if (const char* dir = std::getenv("GRAPEVINE_TEST_PLUGIN_DIR")) return dir;
  return GRAPEVINE_BUILD_PLUGIN_DIR;
}
fs::path test_plugin_dir() { return GRAPEVINE_TEST_PLUGIN_DIR; }

json default_config(const fs::path& data_dir) {
  return {
      {"server", {{"listen", "127.0.0.1:0"}, {"io_threads", 2}}},
      {"workers", {{"threads", 2}, {"queue_limit", 64}}},
      {"data_dir", data_dir.string()},
      {"plugin_dirs", {build_plugin_dir().string(), test_plugin_dir().string()}},
      {"shutdown", {{"grace_ms", 10000}}},
      {"auth",
       {{"issuer", "grapevine"},
        {"audience", "grapevine"},
        {"signing_kid", "main"},
        {"keys", json::array({{{"kid", "main"}, {"alg", "HS256"}, {"secret", kTestSecret}}})}}},
      {"plugins", {{"hello", {{"config", {{"greeting", "Hi"}}}}}, {"testkit", json::object()}}}};
}

namespace {

int spawn(const std::vector<std::string>& args, const fs::path& output,
          const std::vector<std::pair<std::string, std::string>>& env) {
  pid_t pid = fork();
  if (pid != 0) return pid;
  int fd = ::open(output.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  dup2(fd, 1);
  dup2(fd, 2);
  for (const auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
  std::vector<char*> argv;
  std::string bin = grapevine_binary().string();
  argv.push_back(bin.data());
  std::vector<std::string> copy = args;
  for (auto& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  execv(bin.c_str(), argv.data());
  _exit(127);
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int wait_for(int pid, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return -1;
}

}  // namespace

Host::Host(Options options) : dir_(std::make_unique<TempDir>()) {
  json config = options.config ? *options.config : default_config(dir_->path / "data");
  fs::path config_file = dir_->path / "grapevine.yaml";
  std::ofstream(config_file) << config.dump(2) << "\n";
  std::vector<std::string> args = {"--config", config_file.string()};
  args.insert(args.end(), options.args.begin(), options.args.end());
  pid_ = spawn(args, dir_->path / "output.log", options.env);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < deadline) {
    std::string out = output();
    size_t at = out.find("\"msg\":\"listening\"");
    if (at != std::string::npos) {
      size_t addr = out.find("\"address\":\"127.0.0.1:", at);
      if (addr != std::string::npos) {
        port_ = std::stoi(out.substr(addr + 21));
        return;
      }
    }
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      pid_ = -1;
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

Host::~Host() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
}

std::string Host::output() const { return read_file(dir_->path / "output.log"); }

int Host::terminate(std::chrono::milliseconds timeout) {
  if (pid_ > 0) kill(pid_, SIGTERM);
  return wait(timeout);
}

void Host::kill_now() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  int status = 0;
  waitpid(pid_, &status, 0);
  exit_code_ = 128 + SIGKILL;
  pid_ = -1;
}

int Host::wait(std::chrono::milliseconds timeout) {
  if (pid_ <= 0) return exit_code_;
  int code = wait_for(pid_, timeout);
  if (code >= 0) {
    exit_code_ = code;
    pid_ = -1;
  }
  return code;
}

int run_grapevine(const std::vector<std::string>& args, std::string* output,
                  const std::vector<std::pair<std::string, std::string>>& env) {
  TempDir dir;
  int pid = spawn(args, dir.path / "out.log", env);
  int code = wait_for(pid, std::chrono::seconds(30));
  if (code < 0) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
  *output = read_file(dir.path / "out.log");
  return code;
}

fs::path kafka_mock_binary() { return GRAPEVINE_KAFKA_MOCK; }

KafkaMock::KafkaMock(int brokers, const std::vector<std::string>& topics) {
  int to_child[2], from_child[2];
  if (pipe(to_child) != 0 || pipe(from_child) != 0) return;
  std::vector<std::string> args = {kafka_mock_binary().string(), "--brokers",
                                   std::to_string(brokers)};
  for (const auto& t : topics) {
    args.push_back("--topic");
    args.push_back(t);
  }
  pid_ = fork();
  if (pid_ == 0) {
    dup2(to_child[0], 0);
    dup2(from_child[1], 1);
    close(to_child[1]);
    close(from_child[0]);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(to_child[0]);
  close(from_child[1]);
  in_ = to_child[1];
  out_ = from_child[0];
  std::string first = read_line(std::chrono::seconds(10));
  if (first.rfind("bootstrap ", 0) == 0) bootstrap_ = first.substr(10);
}

KafkaMock::~KafkaMock() {
  if (in_ >= 0) {
    ssize_t ignored = ::write(in_, "quit\n", 5);
    (void)ignored;
    close(in_);
  }
  if (pid_ > 0 && wait_for(pid_, std::chrono::seconds(5)) < 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  if (out_ >= 0) close(out_);
}

std::string KafkaMock::read_line(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    size_t nl = buffered_.find('\n');
    if (nl != std::string::npos) {
      std::string line = buffered_.substr(0, nl);
      buffered_.erase(0, nl + 1);
      return line;
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0 || out_ < 0) return "";
    pollfd p{out_, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    char buf[4096];
    ssize_t n = ::read(out_, buf, sizeof buf);
    if (n <= 0) return "";
    buffered_.append(buf, static_cast<size_t>(n));
  }
}

std::string KafkaMock::command(const std::string& line) {
  std::string l = line + "\n";
  if (in_ < 0 || ::write(in_, l.data(), l.size()) != static_cast<ssize_t>(l.size()))
    return "error: the mock is gone";
  return read_line(std::chrono::seconds(10));
}

int run_command(const std::string& command_line, std::string* out) {
  FILE* f = popen(command_line.c_str(), "r");
  if (!f) return -1;
  char buf[4096];
  out->clear();
  for (size_t n; (n = fread(buf, 1, sizeof buf, f)) > 0;) out->append(buf, n);
  int status = pclose(f);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

RawConnection::RawConnection(int port) {
  fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
    throw std::runtime_error("connect failed");
}

RawConnection::~RawConnection() {
  if (fd_ >= 0) ::close(fd_);
}

void RawConnection::send(const std::string& bytes) {
  if (::write(fd_, bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size()))
    throw std::runtime_error("write failed");
}

std::string RawConnection::read_until_closed(std::chrono::milliseconds timeout, bool* closed) {
  std::string got;
  *closed = false;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd p{fd_, POLLIN, 0};
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (::poll(&p, 1, static_cast<int>(std::max<int64_t>(left.count(), 0))) <= 0) break;
    char buf[4096];
    ssize_t n = ::read(fd_, buf, sizeof buf);
    if (n <= 0) {
      *closed = true;
      break;
    }
    got.append(buf, static_cast<size_t>(n));
  }
  return got;
}

struct WebSocket::Impl {
  asio::io_context ioc;
  websocket::stream<tcp::socket> ws{ioc};
  beast::flat_buffer buffer;
  int close_code = 0;
  bool open = false;
  int next_id = 1;
};

WebSocket::WebSocket(int port, const std::string& target, const Headers& headers)
    : impl_(std::make_unique<Impl>()) {
  impl_->ws.next_layer().connect(
      tcp::endpoint(asio::ip::make_address("127.0.0.1"), static_cast<unsigned short>(port)));
  impl_->ws.set_option(websocket::stream_base::decorator([headers](websocket::request_type& req) {
    for (const auto& [k, v] : headers) req.set(k, v);
  }));
  websocket::response_type res;
  beast::error_code ec;
  impl_->ws.handshake(res, "127.0.0.1", target, ec);
  if (ec) throw std::runtime_error("upgrade refused: " + std::to_string(res.result_int()));
  impl_->ws.read_message_max(64 * 1024 * 1024);
  impl_->open = true;
}

WebSocket::~WebSocket() {
  if (impl_ && impl_->open) {
    beast::error_code ec;
    impl_->ws.next_layer().close(ec);
  }
}

void WebSocket::send(const std::string& text) {
  impl_->ws.text(true);
  impl_->ws.write(asio::buffer(text));
}

std::optional<std::string> WebSocket::receive(std::chrono::milliseconds timeout) {
  if (!impl_->open) return std::nullopt;
  // An asynchronous read run for at most timeout: a synchronous one cannot
  // time out (Asio polls again after SO_RCVTIMEO).
  beast::error_code ec;
  bool done = false;
  impl_->buffer.clear();
  impl_->ws.async_read(impl_->buffer, [&](beast::error_code e, size_t) {
    ec = e;
    done = true;
  });
  impl_->ioc.restart();
  impl_->ioc.run_for(timeout);
  if (!done) {
    beast::error_code ignored;
    impl_->ws.next_layer().cancel(ignored);
    impl_->ioc.restart();
    impl_->ioc.run();
    impl_->open = false;  // a cancelled read leaves the stream unusable
    return std::nullopt;
  }
  if (ec) {
    // The close frame's code is kept even when replying to it fails
    // because the server already dropped the connection.
    impl_->close_code = impl_->ws.reason().code;
    impl_->open = false;
    return std::nullopt;
  }
  return beast::buffers_to_string(impl_->buffer.data());
}

std::optional<json> WebSocket::receive_json(std::chrono::milliseconds timeout) {
  auto text = receive(timeout);
  if (!text) return std::nullopt;
  return json::parse(*text);
}

json WebSocket::call(const std::string& op, const json& data) {
  std::string id = std::to_string(impl_->next_id++);
  send_json({{"op", op}, {"id", id}, {"data", data}});
  while (auto msg = receive_json()) {
    if (msg->contains("id") && (*msg)["id"] == id) return *msg;
  }
  throw std::runtime_error("no reply to " + op);
}

int WebSocket::close_code() const { return impl_->close_code; }
bool WebSocket::is_open() const { return impl_->open; }

}  // namespace gvtest
