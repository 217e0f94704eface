// grapevine-kafka-mock: a Kafka cluster for tests and local development.
//
// It runs librdkafka's mock cluster (rdkafka_mock.h: a real Kafka protocol
// server, in memory) in this process, prints its bootstrap address, and
// takes commands on standard input so that tests (and people) can take
// brokers down and inject errors while several grapevine hosts use it.
//
//   grapevine-kafka-mock [--brokers N] [--topic NAME:PARTITIONS]...
//
// First line on stdout: "bootstrap HOST:PORT,HOST:PORT,..."; then one line
// per command: "ok ..." or "error: ...". Commands (one per line):
//   down ID|all        the broker(s) close their connections and refuse new ones
//   up ID|all          accept connections again
//   rtt ID|all MS      add MS milliseconds to every response
//   errors API COUNT CODE
//                      the next COUNT requests of API (produce, fetch,
//                      metadata, offset_commit, join_group, ... or a number)
//                      fail with Kafka error CODE (a number or a name such as
//                      NOT_LEADER_FOR_PARTITION; TRANSPORT closes the connection)
//   topic NAME PARTITIONS
//                      creates a topic
//   brokers            prints the broker ids
//   quit               stops the cluster (so does end of input)
// Data lives in memory only: it is gone when the program exits.
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace {

const char* kUsage =
    "usage: grapevine-kafka-mock [--brokers N] [--topic NAME:PARTITIONS]...\n"
    "Starts an in-memory Kafka cluster (librdkafka's mock cluster), prints\n"
    "'bootstrap ADDRESSES' and reads commands on stdin:\n"
    "  down ID|all, up ID|all, rtt ID|all MS, errors API COUNT CODE,\n"
    "  topic NAME PARTITIONS, brokers, quit\n";

// Kafka protocol API keys by name (the ones a test is likely to disturb).
const std::map<std::string, int16_t> kApis = {
    {"produce", 0},        {"fetch", 1},        {"list_offsets", 2},   {"metadata", 3},
    {"offset_commit", 8},  {"offset_fetch", 9}, {"find_coordinator", 10},
    {"join_group", 11},    {"heartbeat", 12},   {"leave_group", 13},  {"sync_group", 14},
    {"api_versions", 18},  {"create_topics", 19}, {"init_producer_id", 22},
};

bool parse_int(const std::string& s, long* out) {
  if (s.empty()) return false;
  char* end = nullptr;
  long v = std::strtol(s.c_str(), &end, 10);
  if (*end != '\0') return false;
  *out = v;
  return true;
}

// A Kafka error code by number or by name (librdkafka's names without the
// RD_KAFKA_RESP_ERR_ prefix; TRANSPORT is librdkafka's "_TRANSPORT").
bool parse_error(const std::string& s, rd_kafka_resp_err_t* out) {
  long n;
  if (parse_int(s, &n)) {
    *out = static_cast<rd_kafka_resp_err_t>(n);
    return true;
  }
  const rd_kafka_err_desc* descs = nullptr;
  size_t count = 0;
  rd_kafka_get_err_descs(&descs, &count);
  for (size_t i = 0; i < count; ++i) {
    if (!descs[i].name) continue;
    std::string name = descs[i].name;
    if (name == s || (name.size() > 1 && name[0] == '_' && name.substr(1) == s)) {
      *out = descs[i].code;
      return true;
    }
  }
  return false;
}

struct Mock {
  rd_kafka_t* rk = nullptr;
  rd_kafka_mock_cluster_t* cluster = nullptr;
  int brokers = 1;

  // Broker ids are 1..brokers.
  bool each_broker(const std::string& which, std::string* error,
                   const std::function<rd_kafka_resp_err_t(int32_t)>& f) {
    std::vector<int32_t> ids;
    long id;
    if (which == "all") {
      for (int32_t i = 1; i <= brokers; ++i) ids.push_back(i);
    } else if (parse_int(which, &id) && id >= 1 && id <= brokers) {
      ids.push_back(static_cast<int32_t>(id));
    } else {
      *error = "no broker " + which + " (ids are 1.." + std::to_string(brokers) + " or all)";
      return false;
    }
    for (int32_t i : ids) {
      rd_kafka_resp_err_t err = f(i);
      if (err) {
        *error = "broker " + std::to_string(i) + ": " + rd_kafka_err2str(err);
        return false;
      }
    }
    return true;
  }

  // One command line; the answer to print.
  std::string run(const std::string& line, bool* quit) {
    std::istringstream in(line);
    std::vector<std::string> w;
    for (std::string s; in >> s;) w.push_back(s);
    if (w.empty()) return "";
    std::string error;
    const std::string& cmd = w[0];
    if (cmd == "quit" || cmd == "exit") {
      *quit = true;
      return "ok bye";
    }
    if (cmd == "brokers") {
      std::string ids;
      for (int i = 1; i <= brokers; ++i) ids += (i > 1 ? " " : "") + std::to_string(i);
      return "ok " + ids;
    }
    if ((cmd == "down" || cmd == "up") && w.size() == 2) {
      bool down = cmd == "down";
      if (!each_broker(w[1], &error, [&](int32_t id) {
            return down ? rd_kafka_mock_broker_set_down(cluster, id)
                        : rd_kafka_mock_broker_set_up(cluster, id);
          }))
        return "error: " + error;
      return "ok " + cmd + " " + w[1];
    }
    if (cmd == "rtt" && w.size() == 3) {
      long ms;
      if (!parse_int(w[2], &ms) || ms < 0) return "error: rtt takes milliseconds >= 0";
      if (!each_broker(w[1], &error, [&](int32_t id) {
            return rd_kafka_mock_broker_set_rtt(cluster, id, static_cast<int>(ms));
          }))
        return "error: " + error;
      return "ok rtt " + w[1] + " " + w[2];
    }
    if (cmd == "errors" && w.size() == 4) {
      long api = -1, count = 0;
      if (auto it = kApis.find(w[1]); it != kApis.end()) api = it->second;
      else if (!parse_int(w[1], &api) || api < 0) return "error: unknown API " + w[1];
      if (!parse_int(w[2], &count) || count < 1 || count > 100000)
        return "error: COUNT is 1..100000";
      rd_kafka_resp_err_t code;
      if (!parse_error(w[3], &code)) return "error: unknown error code " + w[3];
      std::vector<rd_kafka_resp_err_t> codes(static_cast<size_t>(count), code);
      rd_kafka_mock_push_request_errors_array(cluster, static_cast<int16_t>(api), codes.size(),
                                              codes.data());
      return "ok errors " + w[1] + " " + w[2] + " " + rd_kafka_err2name(code);
    }
    if (cmd == "topic" && w.size() == 3) {
      long partitions;
      if (!parse_int(w[2], &partitions) || partitions < 1 || partitions > 10000)
        return "error: PARTITIONS is 1..10000";
      rd_kafka_resp_err_t err = rd_kafka_mock_topic_create(
          cluster, w[1].c_str(), static_cast<int>(partitions), std::min(brokers, 3));
      if (err) return std::string("error: ") + rd_kafka_err2str(err);
      return "ok topic " + w[1] + " " + w[2];
    }
    return "error: unknown command '" + line + "' (down, up, rtt, errors, topic, brokers, quit)";
  }
};

}  // namespace

int main(int argc, char** argv) {
  Mock mock;
  std::vector<std::pair<std::string, int>> topics;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    long n;
    if (a == "--help" || a == "-h") {
      std::printf("%s", kUsage);
      return 0;
    } else if (a == "--brokers" && i + 1 < argc && parse_int(argv[i + 1], &n) && n >= 1 &&
               n <= 64) {
      mock.brokers = static_cast<int>(n);
      ++i;
    } else if (a == "--topic" && i + 1 < argc) {
      std::string t = argv[++i];
      auto colon = t.rfind(':');
      if (colon == std::string::npos || colon == 0 ||
          !parse_int(t.substr(colon + 1), &n) || n < 1 || n > 10000) {
        std::fprintf(stderr, "grapevine-kafka-mock: --topic takes NAME:PARTITIONS, not %s\n%s",
                     t.c_str(), kUsage);
        return 2;
      }
      topics.emplace_back(t.substr(0, colon), static_cast<int>(n));
    } else {
      std::fprintf(stderr, "grapevine-kafka-mock: bad argument %s\n%s", a.c_str(), kUsage);
      return 2;
    }
  }

  // The mock cluster needs a client handle to run on; it does no work.
  char errstr[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof errstr);
  mock.rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
  if (!mock.rk) {
    std::fprintf(stderr, "grapevine-kafka-mock: %s\n", errstr);
    return 1;
  }
  mock.cluster = rd_kafka_mock_cluster_new(mock.rk, mock.brokers);
  if (!mock.cluster) {
    std::fprintf(stderr, "grapevine-kafka-mock: cannot start the mock cluster\n");
    rd_kafka_destroy(mock.rk);
    return 1;
  }
  for (auto& [name, partitions] : topics) {
    if (rd_kafka_resp_err_t err = rd_kafka_mock_topic_create(mock.cluster, name.c_str(),
                                                             partitions, std::min(mock.brokers, 3))) {
      std::fprintf(stderr, "grapevine-kafka-mock: topic %s: %s\n", name.c_str(),
                   rd_kafka_err2str(err));
      return 1;
    }
  }
  std::printf("bootstrap %s\n", rd_kafka_mock_cluster_bootstraps(mock.cluster));
  std::fflush(stdout);

  bool quit = false;
  for (std::string line; !quit && std::getline(std::cin, line);) {
    std::string answer = mock.run(line, &quit);
    if (answer.empty()) continue;
    std::printf("%s\n", answer.c_str());
    std::fflush(stdout);
  }
  rd_kafka_mock_cluster_destroy(mock.cluster);
  rd_kafka_destroy(mock.rk);
  return 0;
}
