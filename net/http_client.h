// HttpClient: outbound HTTP/1.1 and HTTPS requests for the moderation webhook and the HTTP tools, on the
// caller's Asio io_context (the server's io threads). Connections are kept alive and reused per
// (scheme, host, port), a bounded number of idle ones per host; HTTPS goes through OpenSSL with the system
// trust store and host-name verification. Every request has a deadline covering resolve, connect, TLS,
// write and read, and a cap on the response size; the client never follows redirects (a 3xx is returned
// as it is, so an allowlist cannot be escaped).
//
// It must never block an io thread, never buffer more than max_response_bytes of a response, and never
// call a callback twice or not at all (deadline, error or shutdown all end in exactly one call).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <boost/asio/io_context.hpp>

#include "base/status.h"
#include "net/url.h"

namespace agentserve::net {

using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

struct HttpRequest {
  std::string method = "POST";
  std::string url;
  HttpHeaders headers;  // Host, Content-Length and Connection are set by the client
  std::string body;
  std::chrono::milliseconds timeout{5000};
  size_t max_response_bytes = size_t{1} << 20;
};

struct HttpResponse {
  int status = 0;
  HttpHeaders headers;
  std::string body;
};

struct HttpClientOptions {
  int max_idle_connections_per_host = 8;
  std::chrono::seconds idle_connection_timeout{30};
  // A PEM file of certificates trusted besides the system store (a private CA, or a test's self-signed
  // certificate). Empty: the system store only.
  std::string extra_ca_file;
};

// A callback may run after the client is destroyed (its Cancelled), so it must not capture the client.
// Errors given to callbacks: InvalidArgument (bad URL or method), DeadlineExceeded (timeout),
// IoError (resolve, connect, TLS or transport failure), ResourceExhausted (response past
// max_response_bytes), Cancelled (client shut down).
class HttpClient {
 public:
  using Callback = std::function<void(Result<HttpResponse>)>;

  HttpClient(boost::asio::io_context& io, HttpClientOptions options = {});
  ~HttpClient();  // ends pending requests with Cancelled
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // Starts the request; `done` runs once, on one of the io_context's threads.
  void async_request(HttpRequest request, Callback done);
  // Blocking helper for callers off the io threads (tool executors): waits for async_request. Must not be
  // called from a thread that runs this client's io_context.
  Result<HttpResponse> request(HttpRequest request);

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace agentserve::net
