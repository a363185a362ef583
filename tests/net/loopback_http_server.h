// A small blocking HTTP/1.1 server on 127.0.0.1 for the HTTP client's tests: one thread per connection,
// keep-alive honoured (TLS when given a certificate), and a few routes that misbehave on purpose. It counts
// accepted connections and requests so a test can see whether the client reused a connection or followed a
// redirect.
//   /echo            200, body = request body, x-method = request method
//   /slow?ms=N       waits N ms, then 200 "slow"
//   /big?n=N         200 with N bytes of 'x'
//   /redirect        302 to /echo
//   /close           200 with Connection: close
//   /drop            200 keep-alive, then the server closes the socket anyway (a stale pooled connection)
#pragma once

#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

namespace agentserve::testing {

class LoopbackHttpServer {
 public:
  // With `cert_pem` and `key_pem` (PEM files) every connection is TLS.
  explicit LoopbackHttpServer(const std::string& cert_pem = "", const std::string& key_pem = "")
      : acceptor_(io_, {boost::asio::ip::make_address("127.0.0.1"), 0}) {
    if (!cert_pem.empty()) {
      tls_.emplace(boost::asio::ssl::context::tls_server);
      tls_->use_certificate_chain_file(cert_pem);
      tls_->use_private_key_file(key_pem, boost::asio::ssl::context::pem);
    }
    port_ = acceptor_.local_endpoint().port();
    accept_thread_ = std::thread([this] { accept_loop(); });
  }
  ~LoopbackHttpServer() {
    stopping_ = true;
    ::shutdown(acceptor_.native_handle(), SHUT_RDWR);
    accept_thread_.join();
    std::vector<std::thread> threads;
    {
      std::lock_guard lock(mutex_);
      for (int fd : open_fds_) ::shutdown(fd, SHUT_RDWR);
      threads.swap(threads_);
    }
    for (auto& t : threads) t.join();
  }

  uint16_t port() const { return port_; }
  std::string url(const std::string& target) const {
    return (tls_ ? "https://127.0.0.1:" : "http://127.0.0.1:") + std::to_string(port_) + target;
  }
  int accepted() const { return accepted_.load(); }
  int requests() const { return requests_.load(); }

 private:
  using tcp = boost::asio::ip::tcp;

  void accept_loop() {
    while (!stopping_) {
      boost::system::error_code ec;
      tcp::socket socket(io_);
      acceptor_.accept(socket, ec);
      if (ec) return;
      ++accepted_;
      std::lock_guard lock(mutex_);
      open_fds_.push_back(socket.native_handle());
      threads_.emplace_back([this, s = std::move(socket)]() mutable {
        if (!tls_) return serve(s);
        boost::asio::ssl::stream<tcp::socket&> stream(s, *tls_);
        boost::system::error_code handshake_ec;
        stream.handshake(boost::asio::ssl::stream_base::server, handshake_ec);
        if (!handshake_ec) serve(stream);
        forget(s);
      });
    }
  }

  static std::string query_value(const std::string& target, const std::string& key) {
    const size_t at = target.find(key + "=");
    if (at == std::string::npos) return "";
    const size_t end = target.find('&', at);
    return target.substr(at + key.size() + 1,
                         end == std::string::npos ? std::string::npos : end - at - key.size() - 1);
  }

  void forget(tcp::socket& socket) {
    boost::system::error_code ignored;
    socket.shutdown(tcp::socket::shutdown_both, ignored);
    std::lock_guard lock(mutex_);
    std::erase(open_fds_, socket.native_handle());
  }

  template <typename Stream>
  void serve(Stream& socket) {
    namespace http = boost::beast::http;
    boost::beast::flat_buffer buffer;
    while (true) {
      http::request<http::string_body> req;
      boost::system::error_code ec;
      http::read(socket, buffer, req, ec);
      if (ec) break;
      ++requests_;
      const std::string target(req.target());
      const std::string path = target.substr(0, target.find('?'));
      http::response<http::string_body> res{http::status::ok, 11};
      res.keep_alive(req.keep_alive());
      bool drop_after = false;
      if (path == "/echo") {
        res.set("x-method", std::string(req.method_string()));
        res.body() = req.body();
      } else if (path == "/slow") {
        std::this_thread::sleep_for(std::chrono::milliseconds(std::stoi(query_value(target, "ms"))));
        res.body() = "slow";
      } else if (path == "/big") {
        res.body() = std::string(std::stoul(query_value(target, "n")), 'x');
      } else if (path == "/redirect") {
        res.result(http::status::found);
        res.set(http::field::location, "/echo");
      } else if (path == "/close") {
        res.keep_alive(false);
        res.body() = "bye";
      } else if (path == "/drop") {
        res.body() = "dropped";
        drop_after = true;
      } else {
        res.result(http::status::not_found);
      }
      res.prepare_payload();
      http::write(socket, res, ec);
      if (ec || !res.keep_alive() || drop_after) break;
    }
    if constexpr (std::is_same_v<Stream, tcp::socket>) forget(socket);
  }

  std::optional<boost::asio::ssl::context> tls_;
  boost::asio::io_context io_;
  tcp::acceptor acceptor_;
  uint16_t port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<int> accepted_{0};
  std::atomic<int> requests_{0};
  std::thread accept_thread_;
  std::mutex mutex_;
  std::vector<int> open_fds_;
  std::vector<std::thread> threads_;
};

}  // namespace agentserve::testing
