// Runs operations: checks who may call, builds and validates the input,
// calls the plugin's handler on a worker thread (a quick one on the calling
// network thread), and turns whatever happens into a Reply. The same path
// serves HTTP, WebSocket and in-process calls.
#pragma once

#include <atomic>
#include <functional>
#include <memory>

#include "auth/revocations.hpp"
#include "core/call.hpp"
#include "core/metrics.hpp"
#include "core/worker_pool.hpp"

namespace gv {

class Dispatcher {
 public:
  Dispatcher(WorkerPool& pool, unsigned json_depth) : pool_(pool), json_depth_(json_depth) {}

  // Tokens revoked before they expire (logout); checked on every call.
  void set_revocations(const auth::Revocations* r) { revocations_ = r; }
  // True when identity's token was revoked (its session ended, or every
  // token of its user issued until some time).
  bool revoked(const auth::Identity& identity) const {
    return revocations_ && revocations_->revoked(identity);
  }

  // Queues call on the worker pool; done runs there with the reply. False
  // when the queue is full: nothing was queued and done is never called.
  // A quick operation's handler runs on this thread instead, in a
  // NoWaitRegion (core/blocking.hpp), unless the queue's worth of calls
  // is under way; done may then run before submit returns.
  bool submit(std::shared_ptr<Call> call, std::function<void(Reply)> done);

  // Runs call on this thread (a worker, or a handler making a nested call).
  Reply run(Call& call) const;

  // Calls queued or running now; shutdown waits for this to reach zero.
  int64_t in_flight() const { return in_flight_.load(); }
  // Of those, the ones whose handler has not returned yet: they may still
  // queue a write (a group commit waits for them, commit_wait).
  int64_t before_write() const { return before_write_.load(std::memory_order_relaxed); }

  static constexpr int kMaxCallDepth = 8;

 private:
  // Who may call, the input built and validated: a reply when refused.
  std::optional<Reply> prepare(Call& call) const;
  std::optional<Reply> check_access(const Call& call) const;
  std::optional<Reply> build_input(Call& call) const;
  // What a handler is given besides the call, as text. Built before a
  // grouped handler joins its group, so that the group's leader, which runs
  // the group's handlers one after another, spends no time on it.
  struct Invocation {
    std::string input, user_id, roles, session_id;
  };
  static Invocation invocation_of(const Call& call);
  // check_body false: the plugin's answer is returned even if its body is
  // not JSON, for the caller to check (checked_body) off the writing
  // thread of a grouped write.
  Reply invoke(Call& call, const Invocation& given, bool check_body = true) const;
  Reply checked_body(const Call& call, Reply reply) const;
  // The answer to an operation whose handler failed (rc), did not answer,
  // or answered with a body that is not JSON; logged.
  Reply failed(const Call& call, gv_status rc, bool answered) const;
  Reply invoke(Call& call) const { return invoke(call, invocation_of(call)); }

  WorkerPool& pool_;
  unsigned json_depth_;
  std::atomic<int64_t> in_flight_{0};
  std::atomic<int64_t> before_write_{0};
  const auth::Revocations* revocations_ = nullptr;
};

}  // namespace gv
