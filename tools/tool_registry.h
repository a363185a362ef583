// ToolRegistry: every tool a session may call, by name: its description, JSON Schema parameters, where it
// runs (server: an executor in this process; client: the agent client runs it and sends the output back),
// whether decoding is constrained to its schema (strict), and its time limit. The server fills one registry
// with the built-ins (agent memory, clock, calculator) and the HTTP tools of the config; a session takes a
// cheap copy with its own client-side tools on top (with_client_tools), which shares the worker pool.
//
// Arguments are validated against the schema before anything runs. A server tool never blocks the caller:
// execute() runs it on the registry's worker threads and reports exactly once, a timeout, an exception or
// an oversized output becoming an error result (never a crash, never a missing answer). The registry never
// parses model output and never talks to a client; the agent loop does both.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/status.h"

namespace agentserve::tools {

enum class ToolExecution { kServer, kClient };

// Who is calling: the memory tools key notes by agent id; the HTTP tools may forward the tenant.
struct ToolContext {
  std::string tenant;
  std::string agent_id;
  std::string session_id;
  std::string call_id;
};

// What goes back to the model as the tool's <tool_response>. `code` says why a call failed when the
// registry or the tool knows (DeadlineExceeded for a timeout, ResourceExhausted for an oversized output,
// InvalidArgument for arguments that do not validate, Internal for an exception), for metrics and events.
struct ToolResult {
  std::string output;
  bool is_error = false;
  StatusCode code = StatusCode::kOk;

  static ToolResult success(std::string output) { return {std::move(output), false, StatusCode::kOk}; }
  static ToolResult error(StatusCode code, std::string message) { return {std::move(message), true, code}; }
};

// A server tool's body. It may throw; it runs on a worker thread and must respect no deadline itself (the
// registry abandons it after its timeout and drops its late answer).
using ToolFunction = std::function<ToolResult(const nlohmann::json& arguments, const ToolContext& context)>;

inline constexpr size_t kDefaultMaxResultBytes = size_t{1} << 20;

struct ToolSpec {
  std::string name;  // ^[A-Za-z0-9_-]{1,64}$
  std::string description;
  nlohmann::json parameters = nlohmann::json::object();  // JSON Schema of the arguments object
  bool strict = false;
  ToolExecution execution = ToolExecution::kClient;
  std::chrono::milliseconds timeout{10000};
  size_t max_result_bytes = kDefaultMaxResultBytes;  // a longer output becomes an error result
  ToolFunction run;                                  // set iff execution is kServer
};

struct ToolRegistryOptions {
  int worker_threads = 4;  // tools that block (HTTP, disk) each hold one while they run
};

// Called exactly once per execute(), never inside execute() itself: on a registry worker thread when the
// tool finished in time, else on the registry's deadline thread (timeouts, and arguments rejected before
// anything ran). It must be quick and must not block (post to your own executor); it may call execute().
using ToolDone = std::function<void(ToolResult)>;

class ToolExecutor;  // the worker pool and deadline thread, shared by a registry and its copies

class ToolRegistry {
 public:
  explicit ToolRegistry(ToolRegistryOptions options = {});
  // Copies share the executor and the specs; adding to one does not change the other. The executor stops
  // when the last copy goes: calls still pending get a Cancelled result, then it waits for the tools that
  // are running to return (a stuck tool delays that, not its callers). The last copy must not be dropped
  // on a registry thread (inside a tool or a done callback).
  ToolRegistry(const ToolRegistry&) = default;
  ToolRegistry& operator=(const ToolRegistry&) = default;
  ToolRegistry(ToolRegistry&&) = default;
  ToolRegistry& operator=(ToolRegistry&&) = default;
  ~ToolRegistry();

  // InvalidArgument for a bad name, a duplicate, parameters that are not an object schema of the supported
  // subset (json_schema_validator.h), a server tool without run, a client tool with run, or a timeout <= 0.
  Status add(ToolSpec spec);

  const ToolSpec* find(std::string_view name) const;  // nullptr when absent
  std::vector<const ToolSpec*> list() const;          // ascending name order

  // A copy with the session's client-side tools on top. InvalidArgument when one is not a client tool,
  // is invalid, or has the name of a tool already here (a client tool may not shadow a server tool).
  Result<ToolRegistry> with_client_tools(std::vector<ToolSpec> client_tools) const;

  // A tool declaration as a client sends it, in the flat Realtime/Responses form
  //   {"type":"function","name","description","parameters","strict","execution":"server"|"client"}
  // or the nested Chat Completions form {"type":"function","function":{...}} ("execution" may sit at
  // either level; default "client"). A declared server tool must name one registered here, and gets its
  // body, schema and timeout from the registered one. InvalidArgument otherwise.
  Result<ToolSpec> parse_declaration(const nlohmann::json& declaration) const;
  // A JSON array of declarations -> the copy with those client tools added (server ones must exist).
  Result<ToolRegistry> with_declared_tools(const nlohmann::json& declarations) const;

  // Validates `arguments` against spec.parameters, runs spec.run on a worker and calls `done` exactly once
  // (see ToolDone). The deadline (spec.timeout) counts from this call, queueing included; past it `done`
  // gets a DeadlineExceeded error even if the tool is still running, and the tool's late answer is dropped.
  // A client tool, or a spec without run, is an error result (the caller sends client calls out itself).
  void execute(const ToolSpec& spec, nlohmann::json arguments, ToolContext context, ToolDone done) const;
  // The same by name; an unknown name is a NotFound error result.
  void execute(std::string_view name, nlohmann::json arguments, ToolContext context, ToolDone done) const;

  // Calls not answered yet, over this registry and its copies (they share the executor): each holds one
  // deadline entry from execute() until its `done` is about to run, whether the tool finished or timed out.
  size_t pending_calls() const;

 private:
  std::shared_ptr<ToolExecutor> executor_;
  std::map<std::string, std::shared_ptr<const ToolSpec>, std::less<>> tools_;
};

// ^[A-Za-z0-9_-]{1,64}$
bool is_valid_tool_name(std::string_view name);

}  // namespace agentserve::tools
