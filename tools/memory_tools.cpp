#include "tools/memory_tools.h"

#include <algorithm>
#include <cctype>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace agentserve::tools {
namespace {

using json = nlohmann::json;

struct MemoryState {
  memory::SessionStore& store;
  MemoryToolLimits limits;
  // Serialises count-then-write so concurrent writes cannot take an agent past max_notes_per_agent.
  std::mutex write_mu;
};

ToolResult from_status(const Status& s) {
  return ToolResult::error(s.code(), s.message());
}

Status check_agent(const ToolContext& context) {
  if (context.agent_id.empty())
    return Status::failed_precondition("the memory tools need an agent id on the session");
  if (context.agent_id.size() > memory::kMaxStoreIdBytes)
    return Status::invalid_argument("agent id too long");
  return Status::ok_status();
}

Status check_key(const MemoryState& state, const std::string& key) {
  if (key.empty()) return Status::invalid_argument("key must not be empty");
  if (key.size() > state.limits.max_key_bytes) {
    return Status::invalid_argument("key of " + std::to_string(key.size()) + " bytes is over the limit of " +
                                    std::to_string(state.limits.max_key_bytes));
  }
  return Status::ok_status();
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// Words of the query: runs of letters and digits (bytes >= 0x80 count as letters, so UTF-8 words stay
// whole), lower-cased.
std::vector<std::string> query_terms(std::string_view query) {
  std::vector<std::string> terms;
  std::string current;
  for (char c : query) {
    const auto u = static_cast<unsigned char>(c);
    if (std::isalnum(u) || u >= 0x80) {
      current += static_cast<char>(std::tolower(u));
    } else if (!current.empty()) {
      terms.push_back(std::move(current));
      current.clear();
    }
  }
  if (!current.empty()) terms.push_back(std::move(current));
  std::sort(terms.begin(), terms.end());
  terms.erase(std::unique(terms.begin(), terms.end()), terms.end());
  return terms;
}

size_t count_occurrences(std::string_view text, std::string_view term) {
  size_t n = 0;
  for (size_t pos = text.find(term); pos != std::string_view::npos; pos = text.find(term, pos + term.size()))
    ++n;
  return n;
}

// A key hit weighs three note hits (keys are what the agent chose to name the fact by); the whole query
// as a phrase adds a bonus so exact matches rank first.
size_t score_note(const memory::AgentNote& note, const std::vector<std::string>& terms,
                  const std::string& phrase) {
  const std::string key = lower(note.key);
  const std::string text = lower(note.note);
  size_t score = 0;
  for (const auto& term : terms) score += 3 * count_occurrences(key, term) + count_occurrences(text, term);
  if (score > 0 && (key.find(phrase) != std::string::npos || text.find(phrase) != std::string::npos))
    score += 5;
  return score;
}

ToolResult memory_write(MemoryState& state, const json& args, const ToolContext& context) {
  const std::string key = args.at("key").get<std::string>();
  const std::string note = args.at("note").get<std::string>();
  if (Status s = check_agent(context); !s.ok()) return from_status(s);
  if (Status s = check_key(state, key); !s.ok()) return from_status(s);
  if (note.size() > state.limits.max_note_bytes) {
    return ToolResult::error(StatusCode::kInvalidArgument, "note of " + std::to_string(note.size()) +
                                                               " bytes is over the limit of " +
                                                               std::to_string(state.limits.max_note_bytes));
  }
  std::lock_guard lock(state.write_mu);
  auto existing = state.store.get_note(context.agent_id, key);
  if (!existing.ok() && existing.status().code() != StatusCode::kNotFound)
    return from_status(existing.status());
  if (!existing.ok()) {
    auto notes = state.store.list_notes(context.agent_id);
    if (!notes.ok()) return from_status(notes.status());
    if (notes->size() >= state.limits.max_notes_per_agent) {
      return ToolResult::error(
          StatusCode::kResourceExhausted,
          "this agent already has " + std::to_string(notes->size()) + " notes, the limit; delete one first");
    }
  }
  if (Status s = state.store.put_note(context.agent_id, key, note); !s.ok()) return from_status(s);
  return ToolResult::success(json{{"ok", true}, {"key", key}, {"replaced", existing.ok()}}.dump());
}

ToolResult memory_read(MemoryState& state, const json& args, const ToolContext& context) {
  const std::string key = args.at("key").get<std::string>();
  if (Status s = check_agent(context); !s.ok()) return from_status(s);
  if (Status s = check_key(state, key); !s.ok()) return from_status(s);
  auto note = state.store.get_note(context.agent_id, key);
  if (!note.ok()) {
    if (note.status().code() == StatusCode::kNotFound) {
      return ToolResult::error(StatusCode::kNotFound, "no note with key " + json(key).dump());
    }
    return from_status(note.status());
  }
  return ToolResult::success(json{{"key", key}, {"note", *note}}.dump());
}

ToolResult memory_search(MemoryState& state, const json& args, const ToolContext& context) {
  const std::string query = args.at("query").get<std::string>();
  size_t limit = 5;
  if (auto it = args.find("limit"); it != args.end() && it->is_number()) {
    limit = static_cast<size_t>(
        std::clamp<double>(it->get<double>(), 1, static_cast<double>(state.limits.max_search_results)));
  }
  if (Status s = check_agent(context); !s.ok()) return from_status(s);
  const std::vector<std::string> terms = query_terms(query);
  if (terms.empty())
    return ToolResult::error(StatusCode::kInvalidArgument, "query has no words to search for");
  auto notes = state.store.list_notes(context.agent_id);
  if (!notes.ok()) return from_status(notes.status());

  const std::string phrase = lower(query);
  std::vector<std::pair<size_t, const memory::AgentNote*>> hits;
  for (const auto& note : *notes) {
    if (size_t score = score_note(note, terms, phrase); score > 0) hits.emplace_back(score, &note);
  }
  // Notes come in key order, so a stable sort by score keeps ties in key order.
  std::stable_sort(hits.begin(), hits.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  if (hits.size() > limit) hits.resize(limit);
  json results = json::array();
  for (const auto& [score, note] : hits)
    results.push_back({{"key", note->key}, {"note", note->note}, {"score", score}});
  return ToolResult::success(json{{"results", std::move(results)}}.dump());
}

ToolResult memory_delete(MemoryState& state, const json& args, const ToolContext& context) {
  const std::string key = args.at("key").get<std::string>();
  if (Status s = check_agent(context); !s.ok()) return from_status(s);
  if (Status s = check_key(state, key); !s.ok()) return from_status(s);
  std::lock_guard lock(state.write_mu);
  auto existing = state.store.get_note(context.agent_id, key);
  if (!existing.ok() && existing.status().code() != StatusCode::kNotFound)
    return from_status(existing.status());
  if (existing.ok()) {
    if (Status s = state.store.delete_note(context.agent_id, key); !s.ok()) return from_status(s);
  }
  return ToolResult::success(json{{"ok", true}, {"key", key}, {"deleted", existing.ok()}}.dump());
}

json key_property(const MemoryToolLimits& limits) {
  return {{"type", "string"},
          {"minLength", 1},
          {"maxLength", limits.max_key_bytes},
          {"description", "A short name for the note, e.g. \"user_name\""}};
}

ToolSpec memory_spec(std::shared_ptr<MemoryState> state, std::string name, std::string description,
                     json properties, json required,
                     ToolResult (*body)(MemoryState&, const json&, const ToolContext&)) {
  ToolSpec spec;
  spec.name = std::move(name);
  spec.description = std::move(description);
  spec.parameters = {{"type", "object"},
                     {"properties", std::move(properties)},
                     {"required", std::move(required)},
                     {"additionalProperties", false}};
  // Strict (constrained decoding) only when every property is required, as OpenAI strict mode demands.
  spec.strict = spec.parameters["required"].size() == spec.parameters["properties"].size();
  spec.execution = ToolExecution::kServer;
  spec.timeout = std::chrono::milliseconds(5000);
  spec.run = [state = std::move(state), body](const json& args, const ToolContext& context) {
    return body(*state, args, context);
  };
  return spec;
}

}  // namespace

Status register_memory_tools(ToolRegistry& registry, memory::SessionStore& store, MemoryToolLimits limits) {
  auto state = std::make_shared<MemoryState>(store, limits);
  const json key = key_property(limits);
  AS_RETURN_IF_ERROR(registry.add(memory_spec(
      state, "memory_write", "Save a note in your long-term memory under a key (replaces an existing note).",
      {{"key", key}, {"note", {{"type", "string"}, {"description", "The text to remember"}}}},
      {"key", "note"}, memory_write)));
  AS_RETURN_IF_ERROR(registry.add(memory_spec(state, "memory_read", "Read the note saved under a key.",
                                              {{"key", key}}, {"key"}, memory_read)));
  AS_RETURN_IF_ERROR(registry.add(
      memory_spec(state, "memory_search", "Search your notes by keywords; the best matches come first.",
                  {{"query", {{"type", "string"}, {"description", "Words to look for in keys and notes"}}},
                   {"limit", {{"type", "integer"}, {"minimum", 1}, {"maximum", limits.max_search_results}}}},
                  {"query"}, memory_search)));
  AS_RETURN_IF_ERROR(registry.add(memory_spec(state, "memory_delete", "Delete the note saved under a key.",
                                              {{"key", key}}, {"key"}, memory_delete)));
  return Status::ok_status();
}

}  // namespace agentserve::tools
