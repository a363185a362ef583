#include "server/agent_response.h"

#include <spdlog/spdlog.h>

#include "agent/chat_template.h"
#include "engine/engine.h"
#include "server/auth.h"
#include "server/metrics.h"
#include "server/server_moderation.h"
#include "tools/tool_registry.h"

namespace agentserve::server {

using nlohmann::json;

namespace {

int64_t to_unix_ms(std::chrono::steady_clock::time_point when) {
  const auto now_steady = std::chrono::steady_clock::now();
  const auto now_system = std::chrono::system_clock::now();
  const auto at =
      now_system + std::chrono::duration_cast<std::chrono::system_clock::duration>(when - now_steady);
  return std::chrono::duration_cast<std::chrono::milliseconds>(at.time_since_epoch()).count();
}

std::string arguments_text(const agent::Json& arguments) {
  return agent::python_json_dumps(arguments);
}

ConversationMessage to_conversation(const agent::Message& message) {
  ConversationMessage out{std::string(agent::role_name(message.role)), message.content};
  out.reasoning_content = message.reasoning_content;
  for (const agent::ToolCall& call : message.tool_calls)
    out.tool_calls.push_back({{"name", call.name}, {"arguments", call.arguments}});
  return out;
}

}  // namespace

Result<std::vector<tools::ToolSpec>> session_tools(const ServerContext& context,
                                                   const SessionConfig& config) {
  std::vector<tools::ToolSpec> specs;
  if (!config.tools.is_array() || config.tools.empty()) return specs;
  if (context.tools == nullptr) return Status::failed_precondition("this server has no tool registry");
  // with_declared_tools checks the set as a whole (duplicates, a client tool shadowing a server tool);
  // parse_declaration then gives the specs in the order they are rendered.
  AS_RETURN_IF_ERROR(context.tools->with_declared_tools(config.tools).status());
  for (const json& declaration : config.tools) {
    AS_ASSIGN_OR_RETURN(tools::ToolSpec spec, context.tools->parse_declaration(declaration));
    specs.push_back(std::move(spec));
  }
  return specs;
}

Result<agent::ToolChoice> session_tool_choice(const SessionConfig& config,
                                              const std::vector<tools::ToolSpec>& tools) {
  agent::ToolChoice choice;
  const json& value = config.tool_choice;
  if (value.is_string()) {
    const std::string& mode = value.get_ref<const std::string&>();
    if (mode == "none") choice.mode = agent::ToolChoiceMode::kNone;
    if (mode == "required") choice.mode = agent::ToolChoiceMode::kRequired;
    if (choice.mode == agent::ToolChoiceMode::kRequired && tools.empty())
      return Status::invalid_argument("tool_choice is \"required\" but the session declares no tools");
    return choice;
  }
  const json& fn = value.contains("function") ? value["function"] : value;
  choice.mode = agent::ToolChoiceMode::kNamed;
  choice.name = fn.value("name", "");
  for (const tools::ToolSpec& spec : tools)
    if (spec.name == choice.name) return choice;
  return Status::invalid_argument("tool_choice names \"" + choice.name + "\", which is not a declared tool");
}

std::vector<agent::Message> agent_messages(const SessionConfig& config,
                                           const std::vector<ConversationMessage>& messages) {
  std::vector<agent::Message> out;
  if (!config.instructions.empty())
    out.push_back({agent::Role::kSystem, config.instructions, std::nullopt, {}});
  for (const ConversationMessage& m : messages) {
    agent::Message message;
    message.role = m.role == "system"      ? agent::Role::kSystem
                   : m.role == "assistant" ? agent::Role::kAssistant
                   : m.role == "tool"      ? agent::Role::kTool
                                           : agent::Role::kUser;
    message.content = m.content;
    message.reasoning_content = m.reasoning_content;
    for (const auto& call : m.tool_calls)
      message.tool_calls.push_back(
          {call.value("name", ""), call.contains("arguments") ? call["arguments"] : agent::Json::object()});
    out.push_back(std::move(message));
  }
  return out;
}

Result<engine::RequestId> AgentResponse::RecordingGenerator::start(engine::GenerationRequest request) {
  {
    std::lock_guard lock(recorded_->mutex);
    recorded_->tokens = request.prompt;
  }
  request.on_event = [recorded = recorded_,
                      inner = std::move(request.on_event)](const engine::GenerationEvent& event) {
    {
      std::lock_guard lock(recorded->mutex);
      recorded->tokens.insert(recorded->tokens.end(), event.tokens.begin(), event.tokens.end());
    }
    inner(event);
  };
  return engine_.submit(std::move(request));
}

std::vector<int32_t> AgentResponse::RecordingGenerator::tokens() const {
  std::lock_guard lock(recorded_->mutex);
  return recorded_->tokens;
}

AgentResponse::AgentResponse(ServerContext& context, std::shared_ptr<Session> session,
                             std::string response_id, agent::Executor post, Scheduler schedule)
    : context_(context),
      session_(std::move(session)),
      response_id_(std::move(response_id)),
      post_(std::move(post)),
      schedule_(std::move(schedule)),
      generator_(*context.engine) {}

Result<std::shared_ptr<AgentResponse>> AgentResponse::create(ServerContext& context,
                                                             std::shared_ptr<Session> session,
                                                             std::string response_id,
                                                             engine::SamplingParams sampling,
                                                             agent::Executor post, Scheduler schedule) {
  Session& s = *session;
  agent::TurnLoopOptions options;
  AS_ASSIGN_OR_RETURN(options.tools, session_tools(context, s.config));
  AS_ASSIGN_OR_RETURN(options.tool_choice, session_tool_choice(s.config, options.tools));
  options.enable_thinking = s.config.enable_thinking;
  options.max_steps = s.config.max_steps;
  options.client_tool_timeout = std::chrono::milliseconds(s.config.client_tool_timeout_ms);
  options.sampling = std::move(sampling);
  options.cache_salt = s.tenant.cache_salt;
  options.context = {s.tenant.name, s.config.agent_id.empty() ? s.id : s.config.agent_id, s.id, ""};
  if (context.tools != nullptr) {
    options.run_tool = [registry = context.tools](const tools::ToolSpec& spec, const agent::Json& arguments,
                                                  const tools::ToolContext& tool_context,
                                                  tools::ToolDone done) {
      registry->execute(spec, json(arguments), tool_context, std::move(done));
    };
  }
  options.constraint_factory = context.tool_call_constraint;

  auto response =
      std::make_shared<AgentResponse>(context, session, std::move(response_id), post, std::move(schedule));
  agent::TurnSink* sink = response.get();
  AS_RETURN_IF_ERROR(response->moderate(options));
  if (response->moderated_) sink = response->moderated_.get();
  response->loop_ = agent::TurnLoop::create(response->generator_, *sink, std::move(post), std::move(options),
                                            agent_messages(s.config, s.messages), s.tokens);
  if (response->moderated_)
    response->moderated_->set_cancel([weak = std::weak_ptr<agent::TurnLoop>(response->loop_)] {
      if (auto loop = weak.lock()) loop->cancel();
    });
  return response;
}

// The one place a response meets moderation: with it configured, the loop talks to the moderated sink, which
// holds text back until it is checked and forwards to this one; its approve/run_tool hooks check tools.
Status AgentResponse::moderate(agent::TurnLoopOptions& options) {
  if (context_.moderation == nullptr) return Status::ok_status();
  ModerationScope scope{&session_->tenant, session_->id, response_id_};
  AS_ASSIGN_OR_RETURN(moderated_, context_.moderation->wrap_turn(
                                      *this, post_, scope, options,
                                      [weak = weak_from_this()](const agent::ModerationBlock& block) {
                                        if (auto self = weak.lock()) self->on_blocked(block);
                                      }));
  return Status::ok_status();
}

void AgentResponse::on_blocked(const agent::ModerationBlock& block) {
  emit({{"type", "moderation.blocked"},
        {"response_id", response_id_},
        {"kind", agent::moderation_kind_name(block.kind)},
        {"categories", block.categories},
        {"action", block.action},
        {"detail", block.detail}});
}

Status AgentResponse::start() {
  return loop_->start();
}

void AgentResponse::submit_tool_output(FunctionCallOutput output, std::function<void(Status)> on_result) {
  post_([self = shared_from_this(), output = std::move(output), on_result = std::move(on_result)]() mutable {
    on_result(self->loop_->submit_tool_output(output.call_id, std::move(output.output), output.is_error));
  });
}

void AgentResponse::cancel() {
  post_([self = shared_from_this()] { self->loop_->cancel(); });
}

void AgentResponse::emit(json event) {
  std::lock_guard lock(session_->mutex);
  if (!session_->deleted) context_.sessions->emit(*session_, std::move(event));
}

void AgentResponse::on_text_delta(std::string_view delta) {
  text_ += delta;
  emit(text_delta_event(response_id_, std::string(delta)));
}

void AgentResponse::on_reasoning_delta(std::string_view delta) {
  emit(reasoning_delta_event(response_id_, std::string(delta)));
}

void AgentResponse::on_tool_call(const agent::TurnToolCall& call) {
  // Server calls are shown through tool.execution.started; only the client's own calls go out here.
  if (call.execution != tools::ToolExecution::kClient) return;
  emit(function_call_arguments_done_event(response_id_, call.call_id, call.name,
                                          arguments_text(call.arguments)));
}

void AgentResponse::on_requires_action(std::span<const std::string> call_ids,
                                       std::chrono::steady_clock::time_point deadline) {
  {
    std::lock_guard lock(session_->mutex);
    if (!session_->deleted) {
      context_.sessions->emit(
          *session_,
          requires_action_event(response_id_, {call_ids.begin(), call_ids.end()}, to_unix_ms(deadline)));
      pin_while_idle(*session_, generator_.tokens());
    }
  }
  const uint64_t epoch = ++deadline_epoch_;
  schedule_(deadline, [self = shared_from_this(), epoch] {
    if (self->deadline_epoch_ == epoch) self->loop_->expire_tool_calls();
  });
}

void AgentResponse::on_tool_started(const agent::TurnToolCall& call) {
  emit(tool_execution_started_event(response_id_, call.call_id, call.name, arguments_text(call.arguments)));
}

void AgentResponse::on_tool_completed(const agent::TurnToolCall& call, const tools::ToolResult& result) {
  emit(tool_execution_completed_event(response_id_, call.call_id, call.name, result.output, result.is_error,
                                      result.is_error ? status_code_name(result.code) : ""));
}

void AgentResponse::on_tool_call_error(const Status& error, std::string_view raw) {
  json event = error_event({"server_error", "malformed_tool_call", error.message(), "", ""});
  event["response_id"] = response_id_;
  event["error"]["raw"] = std::string(raw);
  emit(std::move(event));
}

void AgentResponse::on_step_committed(const agent::StepCommit& commit) {
  std::lock_guard lock(session_->mutex);
  if (session_->deleted) return;
  for (const agent::Message& message : commit.messages)
    session_->messages.push_back(to_conversation(message));
  if (Status committed = context_.sessions->commit_turn(*session_, generator_.tokens()); !committed.ok()) {
    spdlog::error("session {}: committing step {} of {}: {}", session_->id, commit.step, response_id_,
                  committed.to_string());
    context_.sessions->emit(*session_, error_event(error_from_status(committed, "persist_failed")));
  } else {
    // Write-through: the turn's KV blocks go to disk durably too, so a kill -9 costs no recompute.
    (void)context_.engine->persist(session_->tokens, session_->tenant.cache_salt);
  }
}

void AgentResponse::on_done(const agent::TurnOutcome& outcome) {
  ++deadline_epoch_;
  const std::string_view status = agent::turn_status_name(outcome.status);
  std::optional<ProtocolError> error;
  if (outcome.status != agent::TurnStatus::kCompleted && outcome.status != agent::TurnStatus::kCancelled) {
    const char* code = outcome.status == agent::TurnStatus::kIncomplete ? "incomplete"
                       : outcome.status == agent::TurnStatus::kBlocked  ? "blocked"
                                                                        : "turn_failed";
    error = error_from_status(outcome.error, code);
  }
  std::vector<StepUsageReport> steps;
  int billed = 0;
  for (const agent::StepUsage& u : outcome.step_usage) {
    steps.push_back(
        {u.prompt_tokens, u.reused_tokens, u.cached_tokens, u.recomputed_tokens, u.completion_tokens});
    billed += u.recomputed_tokens + u.completion_tokens;
  }
  context_.auth->end_response(session_->tenant, billed);
  context_.metrics->record_response(status, outcome.usage);

  std::lock_guard lock(session_->mutex);
  // The loop is inside this call: it is released on the executor once the call has returned.
  if (session_->running && session_->running->agent.get() == this) {
    post_([keep = std::move(session_->running->agent)] {});
    session_->running.reset();
  }
  if (session_->deleted) return;
  if (!outcome.token_ids.empty()) session_->tokens = outcome.token_ids;
  if (Status saved = context_.sessions->save_metadata(*session_); !saved.ok())
    spdlog::warn("session {}: saving metadata: {}", session_->id, saved.to_string());
  context_.sessions->emit(*session_, text_done_event(response_id_, text_));
  context_.sessions->emit(*session_, response_done_event(session_->id, response_id_, status, outcome.usage,
                                                         error, outcome.steps, steps));
  pin_while_idle(*session_, session_->tokens);
}

void AgentResponse::pin_while_idle(Session& session, std::vector<int32_t> tokens) {
  const auto window = context_.options.idle_pin_window;
  if (window.count() <= 0 || tokens.empty()) return;
  const uint64_t epoch = ++session.pin_epoch;
  context_.engine->pin(session.id, std::move(tokens), session.tenant.cache_salt);
  schedule_(std::chrono::steady_clock::now() + window, [session = session_, engine = context_.engine, epoch] {
    std::lock_guard lock(session->mutex);
    if (session->pin_epoch == epoch) engine->unpin(session->id);
  });
}

}  // namespace agentserve::server
