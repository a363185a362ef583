#include "net/http_client.h"

#include <future>
#include <map>
#include <mutex>
#include <optional>

#include <openssl/ssl.h>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/ssl/host_name_verification.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

namespace agentserve::net {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using Strand = asio::strand<asio::io_context::executor_type>;

namespace {

// One kept-alive connection. Its strand is the executor of every operation on it, so a request that
// reuses it runs on the same strand as the one that opened it.
struct Connection {
  Connection(Strand strand, ssl::context* tls_context) : strand(strand) {
    if (tls_context != nullptr)
      secure.emplace(strand, *tls_context);
    else
      plain.emplace(strand);
  }
  beast::tcp_stream& tcp() { return secure ? beast::get_lowest_layer(*secure) : *plain; }
  // Runs `f` with whichever stream this connection has; the operations are templates on the stream type.
  template <typename F>
  void with_stream(F&& f) {
    if (secure)
      f(*secure);
    else
      f(*plain);
  }
  void close() {
    beast::error_code ignored;
    tcp().socket().shutdown(tcp::socket::shutdown_both, ignored);
    tcp().close();
  }

  Strand strand;
  std::optional<beast::tcp_stream> plain;
  std::optional<beast::ssl_stream<beast::tcp_stream>> secure;
  beast::flat_buffer buffer;
  Clock::time_point idle_since;
};

std::string pool_key(const Url& url) {
  return url.scheme + "://" + url.host_header();
}

bool has_line_break(std::string_view s) {
  return s.find_first_of("\r\n") != std::string_view::npos;
}

}  // namespace

struct HttpClient::Impl : std::enable_shared_from_this<HttpClient::Impl> {
  Impl(asio::io_context& io, HttpClientOptions options) : io(io), options(std::move(options)) {
    tls_context.set_verify_mode(ssl::verify_peer);
    beast::error_code ec;
    tls_context.set_default_verify_paths(ec);
    if (ec) tls_setup = Status::io_error("loading the system trust store: " + ec.message());
    if (!this->options.extra_ca_file.empty()) {
      tls_context.load_verify_file(this->options.extra_ca_file, ec);
      if (ec)
        tls_setup = Status::io_error("loading CA file " + this->options.extra_ca_file + ": " + ec.message());
    }
  }

  // An idle connection to `key` younger than the idle timeout, or null. Stale ones are closed on the way.
  std::unique_ptr<Connection> take_idle(const std::string& key) {
    std::lock_guard lock(mutex);
    auto it = idle.find(key);
    if (it == idle.end()) return nullptr;
    auto& list = it->second;
    const Clock::time_point oldest_usable = Clock::now() - options.idle_connection_timeout;
    while (!list.empty()) {
      std::unique_ptr<Connection> conn = std::move(list.back());
      list.pop_back();
      if (conn->idle_since >= oldest_usable) return conn;
      conn->close();
    }
    return nullptr;
  }

  void give_back(const std::string& key, std::unique_ptr<Connection> conn) {
    conn->idle_since = Clock::now();
    conn->tcp().expires_never();
    std::lock_guard lock(mutex);
    auto& list = idle[key];
    if (shut_down || static_cast<int>(list.size()) >= options.max_idle_connections_per_host) {
      conn->close();
      return;
    }
    list.push_back(std::move(conn));
  }

  asio::io_context& io;
  HttpClientOptions options;
  ssl::context tls_context{ssl::context::tls_client};
  Status tls_setup;

  std::mutex mutex;  // guards idle, pending, shut_down
  std::map<std::string, std::vector<std::unique_ptr<Connection>>> idle;
  struct Op;
  std::vector<std::weak_ptr<Op>> pending;
  bool shut_down = false;
};

// One request from start to its single callback. Every step runs on `strand`; a step starts at most one
// socket operation, plus the deadline timer while resolving, so the state below needs no lock.
struct HttpClient::Impl::Op : std::enable_shared_from_this<HttpClient::Impl::Op> {
  Op(std::shared_ptr<Impl> impl, Url url, HttpRequest request, http::request<http::string_body> message,
     Callback done, Strand strand, std::unique_ptr<Connection> reused)
      : impl(std::move(impl)),
        url(std::move(url)),
        max_response_bytes(request.max_response_bytes),
        deadline(Clock::now() + request.timeout),
        message(std::move(message)),
        done(std::move(done)),
        strand(strand),
        resolver(strand),
        timer(strand),
        conn(std::move(reused)),
        reused_connection(conn != nullptr) {}

  void start() {
    if (conn)
      send();
    else
      resolve();
  }

  // Runs on the strand; called by the client's destructor.
  void cancel() {
    if (finished) return;
    cancelled = true;
    resolver.cancel();
    timer.cancel();
    if (conn) conn->close();
  }

  void resolve() {
    timer.expires_at(deadline);
    timer.async_wait([self = shared_from_this()](beast::error_code ec) {
      if (ec) return;  // resolve finished first
      self->timed_out = true;
      self->resolver.cancel();
    });
    resolver.async_resolve(
        url.host, std::to_string(url.port),
        [self = shared_from_this()](beast::error_code ec, tcp::resolver::results_type results) {
          self->timer.cancel();
          if (ec) return self->fail(ec, "resolving " + self->url.host);
          self->connect(results);
        });
  }

  void connect(const tcp::resolver::results_type& results) {
    conn = std::make_unique<Connection>(strand, url.is_tls() ? &impl->tls_context : nullptr);
    conn->tcp().expires_at(deadline);
    conn->tcp().async_connect(results,
                              [self = shared_from_this()](beast::error_code ec, const tcp::endpoint&) {
                                if (ec) return self->fail(ec, "connecting to " + self->url.host_header());
                                if (self->conn->secure)
                                  self->handshake();
                                else
                                  self->send();
                              });
  }

  void handshake() {
    SSL* native = conn->secure->native_handle();
    // SNI: without it, name-based virtual hosts hand out the wrong certificate.
    if (!SSL_set_tlsext_host_name(native, url.host.c_str())) {
      return fail(beast::error_code(static_cast<int>(::ERR_get_error()), asio::error::get_ssl_category()),
                  "setting the TLS server name");
    }
    conn->secure->set_verify_callback(ssl::host_name_verification(url.host));
    conn->tcp().expires_at(deadline);
    conn->secure->async_handshake(ssl::stream_base::client,
                                  [self = shared_from_this()](beast::error_code ec) {
                                    if (ec)
                                      return self->fail(ec, "TLS handshake with " + self->url.host_header());
                                    self->send();
                                  });
  }

  void send() {
    parser.emplace();
    parser->body_limit(max_response_bytes);
    conn->tcp().expires_at(deadline);
    conn->with_stream([&](auto& stream) {
      http::async_write(stream, message, [self = shared_from_this()](beast::error_code ec, size_t) {
        if (ec) return self->retry_or_fail(ec, "sending the request");
        self->receive();
      });
    });
  }

  // The header first, so a declared Content-Length past the cap is refused before any of the body is read
  // (Beast 1.74's body_limit does not stop a Content-Length body read through async_read here).
  void receive() {
    conn->with_stream([&](auto& stream) {
      http::async_read_header(stream, conn->buffer, *parser,
                              [self = shared_from_this()](beast::error_code ec, size_t) {
                                if (ec) return self->retry_or_fail(ec, "reading the response header");
                                const auto length = self->parser->content_length();
                                if (length && *length > self->max_response_bytes)
                                  return self->fail(http::error::body_limit, "reading the response");
                                self->receive_body();
                              });
    });
  }

  void receive_body() {
    conn->with_stream([&](auto& stream) {
      http::async_read(stream, conn->buffer, *parser,
                       [self = shared_from_this()](beast::error_code ec, size_t) {
                         if (ec) return self->fail(ec, "reading the response body");
                         if (self->parser->get().body().size() > self->max_response_bytes)
                           return self->fail(http::error::body_limit, "reading the response body");
                         self->complete();
                       });
    });
  }

  // A kept-alive connection the server closed while it sat idle fails on first use; nothing of the request
  // was processed then, so it is sent once more on a fresh connection.
  void retry_or_fail(beast::error_code ec, const std::string& what) {
    const bool stale = ec == asio::error::eof || ec == http::error::end_of_stream ||
                       ec == asio::error::connection_reset || ec == asio::error::broken_pipe;
    if (reused_connection && stale && !parser->got_some() && !cancelled && Clock::now() < deadline) {
      reused_connection = false;
      conn->close();
      conn.reset();
      return resolve();
    }
    fail(ec, what);
  }

  void complete() {
    auto& res = parser->get();
    HttpResponse response;
    response.status = static_cast<int>(res.result_int());
    for (const auto& field : res) response.headers.emplace_back(field.name_string(), field.value());
    const bool keep_alive = res.keep_alive();
    response.body = std::move(res.body());
    if (keep_alive)
      impl->give_back(pool_key(url), std::move(conn));
    else
      conn->close();
    finish(std::move(response));
  }

  void fail(beast::error_code ec, const std::string& what) {
    if (conn) conn->close();
    if (cancelled) return finish(Status::cancelled("HTTP client shut down"));
    if (timed_out || ec == beast::error::timeout || Clock::now() >= deadline)
      return finish(
          Status::deadline_exceeded("HTTP request to " + url.host_header() + " timed out (" + what + ")"));
    if (ec == http::error::body_limit || ec == http::error::buffer_overflow ||
        ec == http::error::header_limit)
      return finish(Status::resource_exhausted("HTTP response from " + url.host_header() +
                                               " is larger than " + std::to_string(max_response_bytes) +
                                               " bytes"));
    finish(Status::io_error(what + ": " + ec.message()));
  }

  void finish(Result<HttpResponse> result) {
    if (finished) return;
    finished = true;
    Callback callback = std::move(done);
    callback(std::move(result));
  }

  std::shared_ptr<Impl> impl;
  Url url;
  size_t max_response_bytes;
  Clock::time_point deadline;
  http::request<http::string_body> message;
  Callback done;
  Strand strand;
  tcp::resolver resolver;
  asio::steady_timer timer;
  std::unique_ptr<Connection> conn;
  std::optional<http::response_parser<http::string_body>> parser;
  bool reused_connection;
  bool timed_out = false;
  bool cancelled = false;
  bool finished = false;
};

HttpClient::HttpClient(asio::io_context& io, HttpClientOptions options)
    : impl_(std::make_shared<Impl>(io, std::move(options))) {}

HttpClient::~HttpClient() {
  std::vector<std::weak_ptr<Impl::Op>> pending;
  {
    std::lock_guard lock(impl_->mutex);
    impl_->shut_down = true;
    pending.swap(impl_->pending);
    for (auto& [key, list] : impl_->idle)
      for (auto& conn : list) conn->close();
    impl_->idle.clear();
  }
  for (auto& weak : pending)
    if (auto op = weak.lock()) asio::post(op->strand, [op] { op->cancel(); });
}

void HttpClient::async_request(HttpRequest request, Callback done) {
  auto fail_now = [this, &done](Status status) {
    asio::post(impl_->io, [done = std::move(done), status = std::move(status)]() mutable { done(status); });
  };
  Result<Url> url = Url::parse(request.url);
  if (!url.ok()) return fail_now(url.status());
  if (url->is_tls() && !impl_->tls_setup.ok()) return fail_now(impl_->tls_setup);
  const http::verb verb = http::string_to_verb(request.method);
  if (verb == http::verb::unknown)
    return fail_now(Status::invalid_argument("unknown HTTP method " + request.method));

  http::request<http::string_body> message{verb, url->target, 11};
  for (const auto& [name, value] : request.headers) {
    // A line break in a header would let a caller (or a model filling a tool's headers) smuggle requests.
    if (name.empty() || has_line_break(name) || has_line_break(value) || name.find(':') != std::string::npos)
      return fail_now(Status::invalid_argument("bad HTTP header '" + name + "'"));
    message.set(name, value);
  }
  message.set(http::field::host, url->host_header());
  if (message.find(http::field::user_agent) == message.end())
    message.set(http::field::user_agent, "agentserve");
  message.keep_alive(true);
  message.body() = std::move(request.body);
  message.prepare_payload();

  std::unique_ptr<Connection> reused = impl_->take_idle(pool_key(*url));
  const Strand strand = reused ? reused->strand : asio::make_strand(impl_->io);
  auto op = std::make_shared<Impl::Op>(impl_, std::move(*url), std::move(request), std::move(message),
                                       std::move(done), strand, std::move(reused));
  {
    std::lock_guard lock(impl_->mutex);
    if (impl_->shut_down) {
      asio::post(strand, [op] { op->finish(Status::cancelled("HTTP client shut down")); });
      return;
    }
    // Forget finished requests now and then so the list stays as long as what is in flight.
    std::erase_if(impl_->pending, [](const std::weak_ptr<Impl::Op>& w) { return w.expired(); });
    impl_->pending.push_back(op);
  }
  asio::post(strand, [op] { op->start(); });
}

Result<HttpResponse> HttpClient::request(HttpRequest request) {
  if (impl_->io.get_executor().running_in_this_thread())
    return Status::failed_precondition("HttpClient::request called on an io thread; it would deadlock");
  // Shared, because set_value may still be returning on the io thread when get() has already woken up.
  auto promise = std::make_shared<std::promise<Result<HttpResponse>>>();
  std::future<Result<HttpResponse>> future = promise->get_future();
  async_request(std::move(request),
                [promise](Result<HttpResponse> result) { promise->set_value(std::move(result)); });
  return future.get();
}

}  // namespace agentserve::net
