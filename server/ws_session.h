// WsSession: one WebSocket connection on /v1/ws, on its own strand. It authenticates the upgrade (401 on a
// wrong or missing key), reads client events one text frame at a time, runs them against the tenant's
// sessions in the SessionRegistry, runs responses as agent turn loops (AgentResponse), and writes server
// events through a bounded queue with one write in flight. A session is not the connection's: a response's
// loop updates it under its own lock and emits its events through the registry, which forwards them to
// whichever connection is attached (this one, or the one that resumed it). A response whose client went
// away still finishes and commits its steps (a client call it waits for ends at its deadline).
//
// Backpressure: live frames waiting behind the write in flight are bounded by max_write_queue_bytes; past
// it the client is closed with 1008 (policy violation) and its sessions keep their events for a resume.
// Frames a resume replays are bounded by the replay window instead, so a client can always catch up.
//
// It must never block an io thread, never touch the socket off its strand, and never let client input
// end the process or the connection (only transport errors, limits on unread output and shutdown do).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <nlohmann/json.hpp>

#include "engine/engine.h"
#include "server/auth.h"
#include "server/metrics.h"
#include "server/agent_response.h"
#include "server/protocol.h"
#include "server/server_context.h"
#include "server/server_options.h"
#include "server/session_registry.h"

namespace agentserve::server {

class WsSession : public EventSink, public std::enable_shared_from_this<WsSession> {
 public:
  WsSession(boost::asio::ip::tcp::socket&& socket, ServerContext& context);
  ~WsSession() override;
  WsSession(const WsSession&) = delete;
  WsSession& operator=(const WsSession&) = delete;

  // Completes the WebSocket handshake of `upgrade` (already read by the HTTP side) and starts reading.
  void run(boost::beast::http::request<boost::beast::http::string_body> upgrade);
  // Graceful shutdown, from any thread. begin_shutdown: no new responses; the connection closes (1001) once
  // the responses of its sessions have ended and their last events are written. finish_shutdown (after the
  // grace period, once what was left is cancelled): close once the queue is flushed, whatever still runs,
  // and cut the socket if that has not happened within a few seconds.
  void begin_shutdown();
  void finish_shutdown();

  // EventSink: from any thread (under the session's lock); all hop to this connection's strand.
  void deliver_frame(std::string frame, bool carries_tokens) override;
  void deliver_replay(std::vector<std::string> frames) override;
  void taken_over(const std::string& session_id) override;

 private:
  void on_accept(boost::beast::error_code ec);
  void do_read();
  void on_read(boost::beast::error_code ec, size_t bytes);
  void handle_text(std::string_view text);

  void on_session_create(const ClientEvent& event);
  void on_session_resume(const ClientEvent& event);
  void on_session_update(const ClientEvent& event);
  void on_session_delete(const ClientEvent& event);
  void on_item_create(const ClientEvent& event);
  void on_response_create(const ClientEvent& event);
  void on_response_cancel(const ClientEvent& event);
  // The session an event names (session_id, among those this connection created or resumed) or the newest
  // of them; sends the error and returns null if none.
  std::shared_ptr<Session> find_session(const ClientEvent& event);
  // A function_call_output for the session's running response (its loop answers unknown call ids).
  void on_tool_output(const std::shared_ptr<Session>& session, const FunctionCallOutput& output,
                      const std::string& event_id);
  // Starts a response's turn loop on `session` (on this strand); caller holds session.mutex.
  Status start_agent_response(const std::shared_ptr<Session>& session, engine::SamplingParams sampling,
                              const std::string& event_id);
  // After a restart: a prefill-only request for the session's committed tokens; session.resumed reports
  // `replay_complete` (the resume's) when it ends. Caller holds session.mutex.
  Status start_warmup(const std::shared_ptr<Session>& session, bool replay_complete);
  // Timers on this connection's strand (client tool deadlines, idle pins); they outlive the connection.
  Scheduler scheduler();

  // A warm-up's engine events for `session`, posted to the strand of the connection that started it: its
  // finish emits session.resumed with what was restored from the tiers and what was recomputed.
  static void deliver(ServerContext& context, const std::shared_ptr<Session>& session,
                      const engine::GenerationEvent& event);

  using Clock = std::chrono::steady_clock;
  struct OutFrame {
    std::string bytes;
    bool replay = false;              // handed over by a resume (bounded by the replay window)
    std::optional<Clock::time_point> token_at;  // when the engine released the token(s) it carries
  };

  // Connection-level events (error, pong): seq 0, not kept for replay. Strand only.
  void send(nlohmann::json event);
  // Queues a frame; waiting live frames past max_write_queue_bytes (or replayed ones past what the replay
  // windows of this connection's sessions can hold) disconnect the client. Strand only.
  void queue_frame(OutFrame frame);
  // Bytes of one kind queued behind the write in flight.
  size_t waiting_bytes(bool replay) const;
  void send_error(ProtocolError error, const std::string& event_id = "");
  void do_write();
  void on_write(boost::beast::error_code ec, size_t bytes);
  // Shutdown: closes with 1001 once nothing more is to be written (and, before finish_shutdown, nothing of
  // this connection's sessions runs).
  void close_if_done();
  // Sends a close frame with `reason` once the write in flight (if any) completes; nothing is queued after.
  void start_close(const boost::beast::websocket::close_reason& reason);
  // A client that does not read: frames behind the write in flight are dropped (the sessions keep them
  // for a resume) and the connection closes with 1008, cut after handshake_timeout if the close cannot go.
  void disconnect_unread();
  void detach_sessions();
  void close_socket_after(std::chrono::steady_clock::duration delay);
  void drop();  // ends the connection now (transport error)
  bool any_running() const;

  ServerContext& context_;
  boost::beast::websocket::stream<boost::beast::tcp_stream> ws_;
  boost::beast::flat_buffer buffer_;
  std::deque<OutFrame> queue_;  // the front is being written while writing_
  size_t live_bytes_ = 0;       // queued live frames, the one in flight included
  size_t replay_bytes_ = 0;     // queued replayed frames, the one in flight included
  bool writing_ = false;
  bool closing_ = false;  // shutdown: no new responses; close once nothing runs and the queue is flushed
  bool forced_ = false;   // finish_shutdown: close once the queue is flushed, whatever runs
  bool closed_ = false;   // close started or connection dropped: nothing more is queued
  std::optional<boost::beast::websocket::close_reason> close_after_write_;
  std::atomic<int> frames_in_flight_{0};  // deliver_frame posted, not yet queued
  std::optional<Tenant> tenant_;  // set by run() once the upgrade is authenticated
  // Sessions this connection created or resumed, in that order (the newest is the default). Strand only.
  std::vector<std::shared_ptr<Session>> sessions_;
};

}  // namespace agentserve::server
