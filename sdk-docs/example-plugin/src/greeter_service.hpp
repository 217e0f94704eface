// Service of the example plugin: the rules, over the DAL, with the host's
// services (pushes to sockets, channels, calls to other operations).
#pragma once

#include <grapevine/sdk.hpp>

#include <string>

#include "greeting_store.hpp"

namespace hello {

inline constexpr const char* kAnnouncements = "hello.announcements";

class GreeterService {
 public:
  GreeterService(GreetingStore& store, grapevine::ServiceContext ctx)
      : store_(store), ctx_(ctx), greeting_(ctx.config().value("greeting", std::string("Hello"))) {}

  grapevine::json greet(const std::string& name) {
    int64_t count = store_.record(name);
    return {{"message", greeting_ + ", " + name + "!"}, {"count", count}};
  }

  // Greets through the operation registry, as another plugin would.
  grapevine::json greet_via_registry(const std::string& name, const grapevine::Request& as) {
    grapevine::CallResult r = ctx_.call("hello.greet", {{"name", name}}, as);
    if (!r.ok()) throw grapevine::Error(r.status, "upstream", "hello.greet failed");
    return {{"via", "hello.greet"}, {"result", r.body}};
  }

  void subscribe(const grapevine::Request& request) {
    if (request.connection_id() == 0)
      throw grapevine::Error::bad_request("subscribe over the WebSocket at /ws");
    ctx_.join_channel(request.connection_id(), kAnnouncements);
  }

  void announce(const std::string& text, std::string_view from) {
    ctx_.push_to_channel(kAnnouncements, "hello.announcement", {{"text", text}, {"from", from}});
  }

  void poke(std::string_view user_id, const std::string& text) {
    ctx_.push_to_user(user_id, "hello.poke", {{"text", text}});
  }

 private:
  GreetingStore& store_;
  grapevine::ServiceContext ctx_;
  std::string greeting_;
};

}  // namespace hello
