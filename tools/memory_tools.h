// The agent memory tools: memory_write {key, note}, memory_read {key}, memory_search {query, limit?} and
// memory_delete {key}, on memory::SessionStore's agent notes keyed by ToolContext::agent_id. Notes are
// written synced, so they survive the session, a restart and a crash once the tool has answered; every
// session of the same agent sees them, and no other agent does.
//
// The tools never touch another agent's notes, never exceed the limits below (an over-limit write is an
// error result, nothing is written), and return JSON text the model can read.
#pragma once

#include <cstddef>
#include <memory>

#include "base/status.h"
#include "memory/session_store.h"
#include "tools/tool_registry.h"

namespace agentserve::tools {

struct MemoryToolLimits {
  size_t max_key_bytes = 256;
  size_t max_note_bytes = 16 * 1024;
  size_t max_notes_per_agent = 1000;
  size_t max_search_results = 50;  // memory_search's limit defaults to 5 and is clamped to this
};

// Registers the four tools. `store` must outlive the registry and every copy of it.
Status register_memory_tools(ToolRegistry& registry, memory::SessionStore& store,
                             MemoryToolLimits limits = {});

}  // namespace agentserve::tools
