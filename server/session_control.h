// Session control: what happens to a session's running work when it is cancelled or deleted, the parts that
// need the engine (which the SessionRegistry never calls). One place for every path that ends a session's
// work: a delete over WebSocket or HTTP, the TTL sweep, and the graceful stop.
//
// It must never block: engine calls here only queue for the engine thread, and a cancelled response reports
// its end on its own executor.
#pragma once

#include <memory>
#include <string>

#include "server/server_context.h"
#include "server/session_registry.h"

namespace agentserve::server {

// Cancels the session's running response (its response.done carries `reason` as status_details) or its
// resume's KV warm-up. Nothing when nothing runs. Caller holds session.mutex.
void cancel_running(ServerContext& context, Session& session, const std::string& reason);

// After SessionRegistry::erase: cancels what still runs in the session (its events stop at session.deleted;
// the tenant's slot frees when the loop ends), ends its KV pin, and drops its KV blocks except the prefix
// another live session of the tenant starts with.
void release_deleted_session(ServerContext& context, const std::shared_ptr<Session>& session);

}  // namespace agentserve::server
