// HttpServer: the one listening port of `agentserve serve`. It accepts TCP connections on N io threads
// (named as-io-N) and gives each to an HttpConnection (keep-alive HTTP routes, OpenAI chat completions,
// session REST; WebSocket upgrades on /v1/ws go on to a WsSession). run() blocks until SIGINT, SIGTERM or
// shutdown(): then it stops accepting, lets running responses finish within ServerOptions::shutdown_grace,
// cancels what is left (response.done status cancelled, status_details.reason "server_shutdown"), closes
// every WebSocket with 1001 once its last events are written, and returns.
//
// It must never listen on a non-loopback address unless ServerOptions::allow_remote (API keys configured),
// and never let a client end the process. Boost.Beast stays out of this header so only the transport's
// .cpp files compile it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "base/status.h"
#include "engine/engine.h"
#include "server/metrics.h"
#include "server/server_context.h"
#include "server/server_options.h"

namespace agentserve::server {

class HttpServer {
 public:
  // Binds and listens (port 0 picks a free port). `engine` and `metrics` must outlive the server, and the
  // engine must be destroyed after run() returned (its last callbacks post to the server's io context).
  static Result<std::unique_ptr<HttpServer>> start(const ServerOptions& options, engine::Engine& engine,
                                                   Metrics& metrics, std::string model_name);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // The checks start() makes before binding: io_threads >= 1, host an IP address (or "localhost") on
  // loopback.
  static Status check_options(const ServerOptions& options);

  uint16_t port() const;
  // The state connections share; `serve` sets auth and sessions here before run().
  ServerContext& context();
  // Serves on options.io_threads threads until a signal or shutdown(); returns after the graceful stop.
  void run();
  // Thread-safe; returns at once (run() does the waiting).
  void shutdown();

 private:
  struct Impl;
  explicit HttpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace agentserve::server
