// DAL of the example plugin: how many times each name was greeted, kept in
// the plugin's own SQL database. It touches its stores and nothing else.
#pragma once

#include <grapevine/sdk.hpp>

#include <string>

namespace hello {

class GreetingStore {
 public:
  explicit GreetingStore(const grapevine::DalContext& dal) : db_(dal.db()) {
    // Numbered steps, applied once each before start; never edit a
    // released one, add a step.
    dal.migration(1, "CREATE TABLE greetings (name TEXT PRIMARY KEY, count BIGINT NOT NULL)");
  }

  // Counts one more greeting of name and returns the new count. The
  // hello.greeted event is stored in the same commit as the count.
  int64_t record(const std::string& name) {
    return db_.write([&](grapevine::Tx& tx) {
      auto row = tx.query_one(
          "INSERT INTO greetings (name, count) VALUES ($1, 1) "
          "ON CONFLICT (name) DO UPDATE SET count = greetings.count + 1 RETURNING count",
          {name});
      int64_t count = (*row)["count"].as_int();
      tx.publish("hello.greeted", "name:" + name, {{"name", name}, {"count", count}});
      return count;
    });
  }

 private:
  grapevine::Database db_;
};

}  // namespace hello
