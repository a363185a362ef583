#include "server/http_server.h"

#include <pthread.h>

#include <chrono>
#include <condition_variable>
#include <string>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/strand.hpp>

#include "server/agent_response.h"
#include "server/http_connection.h"
#include "server/session_control.h"
#include "server/session_registry.h"
#include "server/ws_session.h"

namespace agentserve::server {

namespace beast = boost::beast;
namespace net = boost::asio;
using tcp = net::ip::tcp;

namespace {

std::string host_address(const std::string& host) {
  return host == "localhost" ? "127.0.0.1" : host;
}

}  // namespace

struct HttpServer::Impl {
  ServerContext context;
  net::io_context ioc;
  net::strand<net::io_context::executor_type> strand{net::make_strand(ioc)};
  tcp::acceptor acceptor{strand};
  net::signal_set signals{strand, SIGINT, SIGTERM};
  uint16_t port = 0;

  std::mutex mutex;
  std::condition_variable stop_cv;
  bool stop_requested = false;

  void do_accept() {
    acceptor.async_accept(net::make_strand(ioc), [this](beast::error_code ec, tcp::socket socket) {
      if (ec) {
        if (ec != net::error::operation_aborted) spdlog::warn("accept failed: {}", ec.message());
        if (!acceptor.is_open()) return;
      } else {
        std::make_shared<HttpConnection>(std::move(socket), context)->run();
      }
      do_accept();
    });
  }

  void request_stop() {
    {
      std::lock_guard lock(mutex);
      if (stop_requested) return;
      stop_requested = true;
    }
    stop_cv.notify_all();
    context.stopping = true;
    net::post(strand, [this] {
      beast::error_code ignored;
      acceptor.close(ignored);
      signals.cancel(ignored);
    });
    for (const auto& connection : live_connections()) connection->begin_shutdown();
  }

  std::vector<std::shared_ptr<WsSession>> live_connections() {
    std::vector<std::shared_ptr<WsSession>> live;
    std::lock_guard lock(context.connections_mutex);
    for (const auto& [ptr, weak] : context.connections)
      if (auto connection = weak.lock()) live.push_back(std::move(connection));
    return live;
  }

  // WebSocket responses plus chat completions still generating.
  size_t running_responses() {
    const size_t ws = context.sessions == nullptr ? 0 : context.sessions->running_sessions().size();
    std::lock_guard lock(context.completions_mutex);
    return ws + context.running_completions.size();
  }

  // Cancels every response (and resume warm-up) still running; their response.done says why. Returns how
  // many.
  size_t cancel_running(const std::string& reason) {
    size_t cancelled = 0;
    {
      // A chat completion's reply ends with finish_reason "cancelled" when its engine request finishes.
      std::lock_guard lock(context.completions_mutex);
      for (const engine::RequestId id : context.running_completions) context.engine->cancel(id);
      cancelled += context.running_completions.size();
    }
    if (context.sessions == nullptr) return cancelled;
    for (const auto& session : context.sessions->running_sessions()) {
      std::lock_guard lock(session->mutex);
      if (!session->running) continue;
      server::cancel_running(context, *session, reason);
      ++cancelled;
    }
    return cancelled;
  }

  // Sleeps until `done` or `deadline`; returns done().
  template <typename Done>
  static bool wait_until(std::chrono::steady_clock::time_point deadline, Done done) {
    while (!done()) {
      if (std::chrono::steady_clock::now() >= deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return true;
  }

  // The graceful stop once accepting has stopped: running responses get the grace period to finish (each
  // connection closes with 1001 once its sessions' responses ended and their events are written); what is
  // left is cancelled (its committed steps stay, so the session resumes), then every connection is closed.
  void drain() {
    using std::chrono::steady_clock;
    const auto grace_end = steady_clock::now() + context.options.shutdown_grace;
    if (!wait_until(grace_end, [this] { return running_responses() == 0; })) {
      const size_t cancelled = cancel_running("server_shutdown");
      spdlog::info("shutdown grace period over: cancelled {} running responses", cancelled);
      // Each loop reports response.done on its strand; the io threads are still running.
      wait_until(steady_clock::now() + std::chrono::seconds(5), [this] { return running_responses() == 0; });
    }
    for (const auto& connection : live_connections()) connection->finish_shutdown();
    // finish_shutdown cuts a connection whose close has not gone through within 2 s.
    wait_until(steady_clock::now() + std::chrono::seconds(3),
               [this] { return context.live_connections() == 0; });
  }
};

Status HttpServer::check_options(const ServerOptions& options) {
  if (options.io_threads < 1) return Status::invalid_argument("--io-threads must be at least 1");
  // A live event can echo a whole client message (conversation.item.created): a queue limit below one such
  // message would close a client that reads fine as soon as that event waits behind another.
  if (options.max_write_queue_bytes < options.max_message_bytes)
    return Status::invalid_argument("max_write_queue_bytes (" + std::to_string(options.max_write_queue_bytes) +
                                    ") must be at least max_message_bytes (" +
                                    std::to_string(options.max_message_bytes) + ")");
  beast::error_code ec;
  const auto address = net::ip::make_address(host_address(options.host), ec);
  if (ec) return Status::invalid_argument("'" + options.host + "' is not an IP address");
  if (!address.is_loopback() && !options.allow_remote)
    return Status::failed_precondition(
        "refusing to listen on " + options.host +
        ": without API keys (a later step) the server listens on loopback only");
  return Status::ok_status();
}

Result<std::unique_ptr<HttpServer>> HttpServer::start(const ServerOptions& options, engine::Engine& engine,
                                                      Metrics& metrics, std::string model_name) {
  AS_RETURN_IF_ERROR(check_options(options));
  beast::error_code ec;
  const std::string host = host_address(options.host);
  const auto address = net::ip::make_address(host, ec);
  auto impl = std::make_unique<Impl>();
  impl->context.options = options;
  impl->context.engine = &engine;
  impl->context.metrics = &metrics;
  impl->context.model_name = std::move(model_name);
  const tcp::endpoint endpoint{address, options.port};
  auto& acceptor = impl->acceptor;
  if (acceptor.open(endpoint.protocol(), ec); ec) return Status::io_error("socket: " + ec.message());
  if (acceptor.set_option(net::socket_base::reuse_address(true), ec); ec)
    return Status::io_error("reuse_address: " + ec.message());
  if (acceptor.bind(endpoint, ec); ec)
    return Status::io_error("bind " + host + ":" + std::to_string(options.port) + ": " + ec.message());
  if (acceptor.listen(net::socket_base::max_listen_connections, ec); ec)
    return Status::io_error("listen: " + ec.message());
  impl->port = acceptor.local_endpoint().port();
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpServer::~HttpServer() = default;

uint16_t HttpServer::port() const {
  return impl_->port;
}

ServerContext& HttpServer::context() {
  return impl_->context;
}

void HttpServer::shutdown() {
  impl_->request_stop();
}

void HttpServer::run() {
  Impl& s = *impl_;
  s.signals.async_wait([&s](beast::error_code ec, int signal) {
    if (ec) return;
    spdlog::info("signal {}: shutting down", signal);
    s.request_stop();
  });
  if (s.context.sessions != nullptr)
    s.context.sessions->on_erased(
        [context = &s.context](const std::shared_ptr<Session>& session) { release_deleted_session(*context, session); });
  net::dispatch(s.strand, [&s] { s.do_accept(); });
  std::vector<std::thread> threads;
  for (int i = 0; i < s.context.options.io_threads; ++i)
    threads.emplace_back([&s, i] {
      // Named so per-thread CPU time (/proc/PID/task/*/comm) tells transport from engine work.
      ::pthread_setname_np(::pthread_self(), ("as-io-" + std::to_string(i)).c_str());
      s.ioc.run();
    });
  {
    std::unique_lock lock(s.mutex);
    s.stop_cv.wait(lock, [&s] { return s.stop_requested; });
  }
  s.drain();
  s.ioc.stop();
  for (auto& t : threads) t.join();
  // The TTL sweep may outlive the server: it must not reach the engine through this context any more.
  if (s.context.sessions != nullptr) s.context.sessions->on_erased(nullptr);
}

}  // namespace agentserve::server
