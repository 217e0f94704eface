// Internal to net/: the TCP socket HTTP sessions read from.
//
// Asio's epoll reactor reads speculatively: every read first calls recv(),
// and only when that says EAGAIN does it wait for the socket's next epoll
// edge. On a keep-alive connection that is one wasted system call per
// request: the read for the next request almost always finds nothing yet.
// The reactor can skip that call (it keeps a per-socket "exhausted" flag,
// cleared by the next edge), but Asio 1.81 sets the flag only at end of
// stream. EdgeSocket sets it, as nginx does under epoll, whenever a read
// returns less than the room it was given: the kernel's receive queue was
// empty then, and any byte that arrives later raises a new edge (the
// socket is registered edge-triggered), which the reactor turns into the
// waiting read. The flag lives in the socket's reactor state, so it stays
// right when the socket is moved on to a WebSocket session.
//
// This leans on Asio's internals (reactor_op, the epoll reactor's
// start_op), so it is compiled only for the Asio it was checked against;
// elsewhere EdgeSocket is a plain socket and reads as Asio does.
#pragma once

#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/version.hpp>
#include <memory>
#include <type_traits>
#include <utility>

#if BOOST_VERSION / 100 == 1081 && defined(BOOST_ASIO_HAS_EPOLL) && \
    !defined(BOOST_ASIO_HAS_IO_URING_AS_DEFAULT) && !defined(BOOST_ASIO_DISABLE_EPOLL)
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
#endif
  }

  // The socket itself, for handing it on (to a WebSocket stream, say).
  Base&& release() { return static_cast<Base&&>(*this); }

  template <class MutableBuffers, class Handler>
  void async_read_some(const MutableBuffers& buffers, Handler&& handler) {
#if GV_EDGE_READS
    namespace detail = boost::asio::detail;
    auto& impl = this->impl_.get_implementation();
    bool plain = impl.socket_ == detail::invalid_socket || boost::asio::buffer_size(buffers) == 0 ||
                 boost::asio::get_associated_cancellation_slot(handler).is_connected();
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
  // A read the reactor runs: like Asio's own, but a short read reports the
  // socket exhausted.
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
      namespace socket_ops = boost::asio::detail::socket_ops;
      auto* o = static_cast<ReadOp*>(base);
      Bufs bufs(o->buffers_);
      size_t room = bufs.total_size();
      bool finished =
          Bufs::is_single_buffer
              ? socket_ops::non_blocking_recv1(o->socket_, Bufs::first(o->buffers_).data(),
                                               Bufs::first(o->buffers_).size(), 0, true, o->ec_,
                                               o->bytes_transferred_)
              : socket_ops::non_blocking_recv(o->socket_, bufs.buffers(), bufs.count(), 0, true,
                                              o->ec_, o->bytes_transferred_);
      if (!finished) return not_done;
      // End of stream, an error, or less than asked for: the receive queue
      // is empty until the next edge.
      return o->ec_ || o->bytes_transferred_ < room ? done_and_exhausted : done;
    }

    // owner is null when the context is destroyed with the read pending.
    static void complete_read(void* owner, boost::asio::detail::scheduler_operation* base,
                              const boost::system::error_code&, std::size_t) {
      std::unique_ptr<ReadOp> o(static_cast<ReadOp*>(base));
      if (!owner) return;
      auto ec = o->ec_;
      auto n = o->bytes_transferred_;
      Executor o_executor = o->executor_;
      Handler handler(std::move(o->handler_));
      auto executor = boost::asio::get_associated_executor(handler, o->executor_);
      o.reset();
      // The reactor runs this on the socket's own context, so a handler
      // bound to that context (the usual case) is called here, as Asio does.
      if constexpr (std::is_same_v<decltype(executor), Executor>) {
        if (executor == o_executor) return std::move(handler)(ec, n);
      }
      boost::asio::dispatch(executor, boost::asio::detail::bind_handler(std::move(handler), ec, n));
    }

    boost::asio::detail::socket_type socket_;
    MutableBuffers buffers_;
    Handler handler_;
    Executor executor_;
  };

  boost::asio::detail::reactor* reactor_ = nullptr;
#endif
};

}  // namespace gv::net
