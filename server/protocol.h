// The WebSocket protocol's data layer (docs/protocol.md is the normative spec): parsing and validating a
// client event from one JSON text frame, building each server event (the agent turn loop's included), and
// the `error` event every bad input gets. Pure functions over strings and JSON: no sockets, no engine calls,
// no server state. A parse never throws and never trusts a field's presence or type; every rejection names the field in `param`.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/status.h"
#include "engine/request.h"
#include "engine/sampling_params.h"
#include "server/server_options.h"

namespace agentserve::server {

// What the `error` event carries: {type, code, message, param, event_id}. `event_id` is the client event's
// own event_id when it sent one, so a client can match the error to its request.
struct ProtocolError {
  std::string type = "invalid_request_error";  // or "server_error"
  std::string code;
  std::string message;
  std::string param;  // the offending field (dotted path), empty when none applies
  std::string event_id;
};

enum class ClientEventType {
  kSessionCreate,
  kSessionResume,
  kSessionUpdate,
  kSessionDelete,
  kConversationItemCreate,
  kResponseCreate,
  kResponseCancel,
  kPing,
};

// One conversation item as the session keeps and persists it. Clients add system/user/assistant messages;
// the turn loop adds assistant steps with their calls and reasoning, and tool results.
struct ConversationMessage {
  std::string role;  // system | user | assistant | tool
  std::string content;
  std::optional<std::string> reasoning_content;  // assistant steps of the turn loop
  // Assistant only: [{"name", "arguments"}], key order as generated (it is rendered back into the prompt).
  nlohmann::ordered_json tool_calls = nlohmann::ordered_json::array();
};

// conversation.item.create {"type": "function_call_output", "call_id", "output", "is_error"?}.
struct FunctionCallOutput {
  std::string call_id;
  std::string output;
  bool is_error = false;
};

struct SessionConfig {
  std::string agent_id;
  std::string instructions;  // rendered as the system message
  engine::SamplingParams sampling;
  // Tool declarations as sent (flat or nested form; checked against the server's ToolRegistry by the
  // session), tool_choice (auto | none | required | {"type":"function","name"}), thinking, and the
  // turn loop's generations per response.
  nlohmann::json tools = nlohmann::json::array();
  nlohmann::json tool_choice = "auto";
  // Off by default: a plain chat client then sees only output text; true renders Qwen3's thinking mode
  // and streams the reasoning as response.reasoning.delta.
  bool enable_thinking = false;
  int max_steps = 8;
  // How long the loop waits for a client tool's function_call_output before it is an error result.
  int client_tool_timeout_ms = 60000;
};

inline constexpr size_t kMaxTools = 128;
inline constexpr int kMaxSteps = 64;
inline constexpr int kMaxClientToolTimeoutMs = 3600 * 1000;

// One parsed client event; only the fields of its type are meaningful.
struct ClientEvent {
  ClientEventType type = ClientEventType::kPing;
  std::string event_id;
  std::string session_id;    // optional on every session-scoped event: default is the newest session
  SessionConfig session;     // session.create
  // session.update: the `session` object as sent (validated); its fields are applied over the session's.
  nlohmann::json session_update = nlohmann::json::object();
  uint64_t last_seq = 0;  // session.resume: the last seq the client has seen (0 = none)
  ConversationMessage item;  // conversation.item.create of a message
  std::optional<FunctionCallOutput> tool_output;  // conversation.item.create of a function_call_output
  // response.create: response.sampling fields override the session's for this response only.
  nlohmann::json sampling_override = nlohmann::json::object();
  std::string response_id;  // response.cancel (optional: default is the running response)
};

using ParseResult = std::variant<ClientEvent, ProtocolError>;

// Parses one text frame. `vocab_size` bounds sampling values that name tokens; `options` bounds sizes and
// nesting depth (json_too_deep).
ParseResult parse_client_event(std::string_view text, const ServerOptions& options, int vocab_size);
// Whether arrays and objects in `text` nest deeper than `max_depth`, counted by brackets outside strings in
// one pass (whether or not the text is valid JSON).
bool json_nesting_exceeds(std::string_view text, int max_depth);

// Applies a `sampling` object's fields (temperature, top_p, top_k, min_p, max_tokens, seed, stop,
// presence_penalty, frequency_penalty, repetition_penalty) onto `params`, then validates the result
// (engine::SamplingParams::validate, and max_tokens <= options.max_tokens_limit). `param_prefix` names
// the object in errors ("session.sampling").
std::optional<ProtocolError> apply_sampling(const nlohmann::json& sampling, const std::string& param_prefix,
                                            const ServerOptions& options, int vocab_size,
                                            engine::SamplingParams& params);

// Applies a `session` object's fields (agent_id, instructions, sampling, tools, tool_choice, enable_thinking,
// max_steps, client_tool_timeout_ms) onto
// `config`, validating each; `param_prefix` names the object in errors ("session").
std::optional<ProtocolError> apply_session_fields(const nlohmann::json& session, const std::string& param_prefix,
                                                  const ServerOptions& options, int vocab_size,
                                                  SessionConfig& config);
// The inverse: every field of `config` in the shape apply_session_fields reads.
nlohmann::json session_config_json(const SessionConfig& config);
nlohmann::json sampling_json(const engine::SamplingParams& sampling);

// A random id with the given prefix ("s_", "r_", "item_", "evt_"): prefix + 24 hex digits.
std::string make_id(std::string_view prefix);

// Server events without the envelope fields event_id and seq (ws_session stamps those when it sends).
nlohmann::json error_event(const ProtocolError& error);
nlohmann::json session_created_event(const std::string& session_id, const SessionConfig& config);
nlohmann::json session_deleted_event(const std::string& session_id);
nlohmann::json session_updated_event(const nlohmann::json& session);
// What a resume restored: committed turns, KV tokens loaded instead of computed, tokens computed again,
// whether user items after the last committed turn were lost in a crash, and whether every event after the
// client's last_seq could be replayed.
struct ResumeReport {
  uint32_t turns = 0;
  int restored_tokens = 0;
  int recomputed_tokens = 0;
  bool lost_unfinished_turn = false;
  bool replay_complete = true;
};
nlohmann::json session_resumed_event(const nlohmann::json& session, const ResumeReport& report);
nlohmann::json item_created_event(const std::string& session_id, const std::string& item_id,
                                  const ConversationMessage& item);
nlohmann::json response_created_event(const std::string& session_id, const std::string& response_id);
nlohmann::json text_delta_event(const std::string& response_id, const std::string& delta);
nlohmann::json text_done_event(const std::string& response_id, const std::string& text);
// The agent turn loop's events (docs/protocol.md shows each).
nlohmann::json reasoning_delta_event(const std::string& response_id, const std::string& delta);
// A client-side call for the client to run: arguments as a JSON text that parses and validates.
nlohmann::json function_call_arguments_done_event(const std::string& response_id, const std::string& call_id,
                                                  const std::string& name, const std::string& arguments);
nlohmann::json requires_action_event(const std::string& response_id, const std::vector<std::string>& call_ids,
                                     int64_t deadline_unix_ms);
nlohmann::json tool_execution_started_event(const std::string& response_id, const std::string& call_id,
                                            const std::string& name, const std::string& arguments);
nlohmann::json tool_execution_completed_event(const std::string& response_id, const std::string& call_id,
                                              const std::string& name, const std::string& output, bool is_error,
                                              std::string_view error_code);
// status: completed | cancelled | failed | incomplete | blocked; `error` is set for all but completed and
// cancelled. What the turn loop adds to response.done: generations run and each one's usage (prompt, reused, cached,
// recomputed, completion tokens).
struct StepUsageReport {
  int prompt_tokens = 0;
  int reused_tokens = 0;
  int cached_tokens = 0;
  int recomputed_tokens = 0;
  int completion_tokens = 0;
};
nlohmann::json response_done_event(const std::string& session_id, const std::string& response_id,
                                   std::string_view status, const engine::Usage& usage,
                                   const std::optional<ProtocolError>& error, int steps,
                                   const std::vector<StepUsageReport>& step_usage);
nlohmann::json pong_event(const std::string& client_event_id);

// The response.done status for an engine finish: kStop -> completed, kLength -> incomplete,
// kCancelled -> cancelled, kError/kNone -> failed.
std::string_view response_status(engine::FinishReason reason);

// A Status from the engine or a limit, as the error a client sees (InvalidArgument/OutOfRange ->
// invalid_request_error, ResourceExhausted -> server_busy_error, others server_error).
ProtocolError error_from_status(const Status& status, std::string code, std::string param = "");

}  // namespace agentserve::server
