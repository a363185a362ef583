#include "server/http_server.h"

#include <chrono>
#include <condition_variable>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/strand.hpp>

#include "server/ws_session.h"

namespace agentserve::server {

namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using nlohmann::json;

namespace {

http::response<http::string_body> make_response(http::status status, const char* content_type,
                                                std::string body) {
  http::response<http::string_body> res{status, 11};
  res.set(http::field::server, "agentserve");
  res.set(http::field::content_type, content_type);
  res.body() = std::move(body);
  return res;
}

http::response<http::string_body> json_error(http::status status, const char* code,
                                             const std::string& message) {
  const json body = {
      {"error",
       {{"type", "invalid_request_error"}, {"code", code}, {"message", message}, {"param", nullptr}}}};
  return make_response(status, "application/json", body.dump(-1, ' ', false, json::error_handler_t::replace));
}

std::string host_address(const std::string& host) {
  return host == "localhost" ? "127.0.0.1" : host;
}

std::string path_of(beast::string_view target) {
  const std::string t(target);
  return t.substr(0, t.find('?'));
}

http::response<http::string_body> route(ServerContext& context, const http::request<http::string_body>& req) {
  const std::string path = path_of(req.target());
  const bool known = path == "/healthz" || path == "/readyz" || path == "/metrics" || path == "/v1/models";
  if (!known) return json_error(http::status::not_found, "not_found", "no route for " + path);
  if (req.method() != http::verb::get)
    return json_error(http::status::method_not_allowed, "method_not_allowed", path + " takes GET");
  if (path == "/healthz") return make_response(http::status::ok, "text/plain", "ok\n");
  if (path == "/readyz") {
    if (context.engine == nullptr || context.stopping)
      return make_response(http::status::service_unavailable, "text/plain", "not ready\n");
    return make_response(http::status::ok, "text/plain", "ready\n");
  }
  if (path == "/metrics")
    return make_response(http::status::ok, "text/plain; version=0.0.4",
                         context.metrics->scrape(context.engine->counters()));
  const json models = {
      {"object", "list"},
      {"data",
       json::array(
           {{{"id", context.model_name}, {"object", "model"}, {"created", 0}, {"owned_by", "agentserve"}}})}};
  return make_response(http::status::ok, "application/json",
                       models.dump(-1, ' ', false, json::error_handler_t::replace));
}

// One plain HTTP exchange: read a request, answer it (or hand the socket to a WsSession), close.
class HttpConnection : public std::enable_shared_from_this<HttpConnection> {
 public:
  HttpConnection(tcp::socket&& socket, ServerContext& context)
      : stream_(std::move(socket)), context_(context) {}

  void run() {
    net::dispatch(stream_.get_executor(),
                  beast::bind_front_handler(&HttpConnection::do_read, shared_from_this()));
  }

 private:
  void do_read() {
    parser_.emplace();
    parser_->body_limit(context_.options.max_http_request_bytes);
    parser_->header_limit(
        static_cast<std::uint32_t>(std::min<size_t>(context_.options.max_http_request_bytes, 1 << 20)));
    stream_.expires_after(context_.options.handshake_timeout);
    http::async_read(stream_, buffer_, *parser_,
                     beast::bind_front_handler(&HttpConnection::on_read, shared_from_this()));
  }

  void on_read(beast::error_code ec, size_t) {
    if (ec == http::error::body_limit || ec == http::error::header_limit)
      return reply(
          json_error(http::status::payload_too_large, "request_too_large", "the request is too large"));
    if (ec) return;  // closed, timed out or malformed: nothing useful to answer
    http::request<http::string_body> req = parser_->release();
    if (websocket::is_upgrade(req)) {
      if (path_of(req.target()) != "/v1/ws")
        return reply(json_error(http::status::not_found, "not_found", "the WebSocket endpoint is /v1/ws"));
      std::make_shared<WsSession>(stream_.release_socket(), context_)->run(std::move(req));
      return;
    }
    reply(route(context_, req));
  }

  void reply(http::response<http::string_body> res) {
    res_ = std::move(res);
    res_.keep_alive(false);  // one request per connection keeps shutdown simple
    res_.prepare_payload();
    http::async_write(stream_, res_,
                      beast::bind_front_handler(&HttpConnection::on_write, shared_from_this()));
  }

  void on_write(beast::error_code, size_t) {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
  }

  beast::tcp_stream stream_;
  ServerContext& context_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http::response<http::string_body> res_;
};

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
    std::vector<std::weak_ptr<WsSession>> live;
    {
      std::lock_guard lock(context.connections_mutex);
      for (const auto& [ptr, weak] : context.connections) live.push_back(weak);
    }
    for (const auto& weak : live)
      if (auto connection = weak.lock()) connection->shutdown();
  }
};

Status HttpServer::check_options(const ServerOptions& options) {
  if (options.io_threads < 1) return Status::invalid_argument("--io-threads must be at least 1");
  beast::error_code ec;
  const auto address = net::ip::make_address(host_address(options.host), ec);
  if (ec) return Status::invalid_argument("'" + options.host + "' is not an IP address");
  if (!address.is_loopback())
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
  net::dispatch(s.strand, [&s] { s.do_accept(); });
  std::vector<std::thread> threads;
  for (int i = 0; i < s.context.options.io_threads; ++i) threads.emplace_back([&s] { s.ioc.run(); });
  {
    std::unique_lock lock(s.mutex);
    s.stop_cv.wait(lock, [&s] { return s.stop_requested; });
  }
  // Connections report their cancelled responses and close themselves; past the grace period we stop anyway.
  const auto deadline = std::chrono::steady_clock::now() + s.context.options.shutdown_grace;
  while (s.context.live_connections() > 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  s.ioc.stop();
  for (auto& t : threads) t.join();
}

}  // namespace agentserve::server
