#include "server/session_control.h"

#include <algorithm>
#include <mutex>
#include <vector>

#include "server/agent_response.h"

namespace agentserve::server {

namespace {

// The longest prefix of `tokens` that `other` starts with too.
int shared_prefix(const std::vector<int32_t>& tokens, const std::vector<int32_t>& other) {
  const size_t n = std::min(tokens.size(), other.size());
  size_t i = 0;
  while (i < n && tokens[i] == other[i]) ++i;
  return static_cast<int>(i);
}

}  // namespace

void cancel_running(ServerContext& context, Session& session, const std::string& reason) {
  if (!session.running) return;
  if (session.running->agent) {
    session.cancel_reason = reason;
    session.running->agent->cancel();
  } else {
    // A warm-up: its finished event clears session.running.
    context.engine->cancel(session.running->request_id);
  }
}

void release_deleted_session(ServerContext& context, const std::shared_ptr<Session>& session) {
  std::vector<int32_t> tokens;
  {
    std::lock_guard lock(session->mutex);
    cancel_running(context, *session, "session_deleted");
    tokens = session->tokens;
    // An idle pin's expiry timer must not act on a later pin of the same id.
    ++session->pin_epoch;
  }
  context.engine->unpin(session->id);
  if (tokens.empty()) return;
  int keep = 0;
  for (const auto& other : context.sessions->tenant_sessions(session->tenant.name, session.get())) {
    std::lock_guard lock(other->mutex);
    keep = std::max(keep, shared_prefix(tokens, other->tokens));
  }
  context.engine->discard(std::move(tokens), session->tenant.cache_salt, keep);
}

}  // namespace agentserve::server
