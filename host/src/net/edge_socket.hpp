// Internal to net/: the TCP socket HTTP sessions read from.
//
// Asio's epoll reactor reads speculatively: every read first calls recv(),
// and only when that says EAGAIN does it wait for the socket's next epoll
// edge. On a keep-alive connection that is one wasted system call per
// request: the read for the next request almost always finds nothing yet.
// The reactor can skip that call (it keeps a per-socket "exhausted" flag,
// cleared by the next edge), but Asio 1.81 sets the flag only at end of
// stream. EdgeSocket sets it whenever the kernel says, with the read
// itself, that nothing is left to read: the socket asks for TCP_INQ, so
// each recvmsg() also returns the bytes still queued, and that count is
// not zero after a FIN (which may come with the last data, its edge
// already spent). Any byte that arrives later raises a new edge (the
// socket is registered edge-triggered), which the reactor turns into the
// waiting read. A reset that arrives right behind data raises no further
// edge: the connection then ends at its request or idle timeout, not at
// once. The flag lives in the socket's reactor state, so it stays right
// when the socket is handed on to a WebSocket session.
//
// This leans on Asio's internals (reactor_op, the epoll reactor's
// start_op), so it is compiled only for the Asio it was checked against;
// elsewhere EdgeSocket is a plain socket and reads as Asio does. Where
// the kernel refuses TCP_INQ, no read is taken as exhausted.
#pragma once

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/version.hpp>
#include <cerrno>
#include <cstring>
#include <memory>
#include <utility>

#if BOOST_VERSION / 100 == 1081 && defined(BOOST_ASIO_HAS_EPOLL) && \
    !defined(BOOST_ASIO_HAS_IO_URING_AS_DEFAULT) && defined(TCP_INQ)
#define GV_EDGE_READS 1
#include <boost/asio/detail/bind_handler.hpp>
#include <boost/asio/detail/buffer_sequence_adapter.hpp>
#include <boost/asio/detail/handler_cont_helpers.hpp>
#include <boost/asio/detail/reactor.hpp>
#include <boost/asio/detail/reactor_op.hpp>
#include <boost/asio/detail/socket_ops.hpp>
#else
#define GV_EDGE_READS 0
#endif

namespace gv::net {

template <class Executor>
class EdgeSocket : public boost::asio::basic_stream_socket<boost::asio::ip::tcp, Executor> {
  using Base = boost::asio::basic_stream_socket<boost::asio::ip::tcp, Executor>;

 public:
  explicit EdgeSocket(Base&& socket) : Base(std::move(socket)) {
#if GV_EDGE_READS
    // Once per connection: use_service takes the context's service lock.
    reactor_ = &boost::asio::use_service<boost::asio::detail::reactor>(
        boost::asio::query(this->get_executor(), boost::asio::execution::context));
    int on = 1;
    inq_ = this->is_open() &&
           ::setsockopt(this->native_handle(), IPPROTO_TCP, TCP_INQ, &on, sizeof on) == 0;
#endif
  }

  // The socket itself, for handing it on (to a WebSocket stream, say).
  Base&& take_socket() { return static_cast<Base&&>(*this); }

  template <class MutableBuffers, class Handler>
  void async_read_some(const MutableBuffers& buffers, Handler&& handler) {
#if GV_EDGE_READS
    namespace asio = boost::asio;
    namespace detail = asio::detail;
    using Bufs = detail::buffer_sequence_adapter<asio::mutable_buffer, MutableBuffers>;
    auto& impl = this->impl_.get_implementation();
    // The handler is called from this socket's context, as Asio would, so
    // one bound to another context keeps the plain path (and its work
    // tracking).
    auto& own = asio::query(this->get_executor(), asio::execution::context);
    auto& theirs = asio::query(asio::get_associated_executor(handler, this->get_executor()),
                               asio::execution::context);
    bool plain = !inq_ || impl.socket_ == detail::invalid_socket || Bufs::all_empty(buffers) ||
                 &static_cast<asio::execution_context&>(own) !=
                     &static_cast<asio::execution_context&>(theirs) ||
                 asio::get_associated_cancellation_slot(handler).is_connected();
    boost::system::error_code ec;
    if (!plain && !(impl.state_ & detail::socket_ops::non_blocking))
      plain = !detail::socket_ops::set_internal_non_blocking(impl.socket_, impl.state_, true, ec);
    if (!plain) {
      bool continuation = boost_asio_handler_cont_helpers::is_continuation(handler);
      auto* op = new ReadOp<MutableBuffers, std::decay_t<Handler>>(
          impl.socket_, buffers, std::forward<Handler>(handler), this->get_executor());
      reactor_->start_op(detail::reactor::read_op, impl.socket_, impl.reactor_data_, op,
                         continuation, true);
      return;
    }
#endif
    Base::async_read_some(buffers, std::forward<Handler>(handler));
  }

 private:
#if GV_EDGE_READS
  // A read the reactor runs: like Asio's own, but with the kernel's count
  // of bytes left (TCP_INQ), and "exhausted" when that is zero.
  template <class MutableBuffers, class Handler>
  class ReadOp : public boost::asio::detail::reactor_op {
    using Bufs =
        boost::asio::detail::buffer_sequence_adapter<boost::asio::mutable_buffer, MutableBuffers>;

   public:
    ReadOp(boost::asio::detail::socket_type socket, const MutableBuffers& buffers, Handler handler,
           Executor executor)
        : reactor_op(boost::system::error_code(), &ReadOp::perform_read, &ReadOp::complete_read),
          socket_(socket),
          buffers_(buffers),
          handler_(std::move(handler)),
          executor_(std::move(executor)) {}

   private:
    static status perform_read(reactor_op* base) {
      auto* o = static_cast<ReadOp*>(base);
      Bufs bufs(o->buffers_);
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
      for (;;) {
        msghdr msg{};
        msg.msg_iov = bufs.buffers();
        msg.msg_iovlen = bufs.count();
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        ssize_t n = ::recvmsg(o->socket_, &msg, 0);
        if (n > 0) {
          o->bytes_transferred_ = static_cast<size_t>(n);
          int left = -1;
          for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
            if (c->cmsg_level == SOL_TCP && c->cmsg_type == TCP_CM_INQ)
              std::memcpy(&left, CMSG_DATA(c), sizeof left);
          return left == 0 ? done_and_exhausted : done;
        }
        if (n == 0) {
          o->ec_ = boost::asio::error::eof;
          return done_and_exhausted;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return not_done;
        o->ec_ = boost::system::error_code(errno, boost::asio::error::get_system_category());
        return done;
      }
    }

    // owner is null when the context is destroyed with the read pending.
    static void complete_read(void* owner, boost::asio::detail::scheduler_operation* base,
                              const boost::system::error_code&, std::size_t) {
      std::unique_ptr<ReadOp> o(static_cast<ReadOp*>(base));
      if (!owner) return;
      auto ec = o->ec_;
      auto n = o->bytes_transferred_;
      Handler handler(std::move(o->handler_));
      auto executor = boost::asio::get_associated_executor(handler, o->executor_);
      o.reset();
      // On the socket's context, so this calls the handler here.
      boost::asio::dispatch(executor, boost::asio::detail::bind_handler(std::move(handler), ec, n));
    }

    boost::asio::detail::socket_type socket_;
    MutableBuffers buffers_;
    Handler handler_;
    Executor executor_;
  };

  boost::asio::detail::reactor* reactor_ = nullptr;
  bool inq_ = false;
#endif
};

}  // namespace gv::net
