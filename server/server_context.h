// ServerContext: what every connection of one server shares: options, the engine, metrics, auth, the
// session registry, and the table of live connections that shutdown walks. Owned by HttpServer; outlives
// every connection. Plain pointers to things owned by `serve`, which outlive the server.
//
// It must never own the engine or the stores, and holds no Beast types (only the transport .cpp files
// include Beast).
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "server/server_options.h"

namespace agentserve::engine {
class Engine;
}

namespace agentserve::server {

class Auth;
class Metrics;
class SessionRegistry;
class WsSession;

struct ServerContext {
  ServerOptions options;
  engine::Engine* engine = nullptr;  // set once the model is loaded (/readyz)
  Metrics* metrics = nullptr;
  std::string model_name;
  // Auth and sessions: always set by `serve` before run(); WsSession and the REST routes use them.
  Auth* auth = nullptr;
  SessionRegistry* sessions = nullptr;

  std::atomic<bool> stopping{false};
  std::mutex connections_mutex;
  std::unordered_map<WsSession*, std::weak_ptr<WsSession>> connections;

  size_t live_connections();
};

}  // namespace agentserve::server
