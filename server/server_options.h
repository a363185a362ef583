// ServerOptions: every knob of the WebSocket/HTTP transport with its documented default, and the limit on
// everything a client controls (bytes per message, sessions per connection, items per session, max_tokens,
// queued outgoing bytes). `agentserve serve` fills it from the command line in one place. It must never
// hold runtime state; the server reads it once at start.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

namespace agentserve::server {

struct ServerOptions {
  // Without API keys the server refuses any address but loopback; `serve` sets allow_remote when keys are
  // configured.
  std::string host = "127.0.0.1";
  bool allow_remote = false;
  uint16_t port = 8080;  // 0 = any free port (the bound port is printed and returned by HttpServer::port())
  int io_threads = 2;

  // A WebSocket text message up to this size is processed. A larger one, up to kHardMessageFactor times
  // this, gets a `message_too_large` error event and the connection goes on; past that the connection is
  // closed with WebSocket status 1009 (the frame is never buffered whole).
  size_t max_message_bytes = size_t{1} << 20;
  static constexpr size_t kHardMessageFactor = 4;
  // Arrays and objects nested deeper than this in a client event get a `json_too_deep` error event (checked
  // before parsing, so a hostile message never reaches a recursive walk).
  int max_json_depth = 64;
  // HTTP request head + body limit for the plain HTTP routes.
  size_t max_http_request_bytes = size_t{64} << 10;
  // Outgoing bytes queued for one connection (one write in flight, the rest waits). A client that does not
  // read while its queue passes this is disconnected; its running response still finishes.
  size_t max_write_queue_bytes = size_t{8} << 20;

  int max_sessions_per_connection = 16;
  int max_items_per_session = 1024;
  size_t max_content_bytes = size_t{256} << 10;  // one message's content
  int default_max_tokens = 1024;                 // session.sampling.max_tokens when the client gives none
  int max_tokens_limit = 32768;                  // the largest max_tokens a client may ask for

  std::chrono::seconds handshake_timeout{10};  // TCP accept -> WebSocket upgrade done, and HTTP request read
  std::chrono::seconds idle_timeout{300};      // no frame from the client (Beast pings it at half of this)
  // SIGTERM/SIGINT: how long running responses may go on to finish before the rest are cancelled.
  std::chrono::seconds shutdown_grace{10};

  // Sessions (SessionRegistry): the last events kept per session for session.resume, bounded both ways;
  // how long an idle session lives (0 = until deleted); how long an idle session's KV stays pinned.
  size_t replay_max_events = 1024;
  size_t replay_max_bytes = size_t{4} << 20;
  std::chrono::seconds session_ttl{0};
  std::chrono::seconds session_sweep_interval{60};
  std::chrono::seconds idle_pin_window{300};

  // Compiled tool-call constraints (tool_choice required / named) kept, one per distinct tool set; each can
  // hold ~10 MB of cached token masks on Qwen3's vocabulary.
  size_t constraint_cache_entries = 16;  // kDefaultConstraintCacheEntries (server/constraint_cache.h)
};

}  // namespace agentserve::server
