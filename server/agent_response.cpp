#include "server/agent_response.h"

#include <spdlog/spdlog.h>

#include "agent/chat_template.h"
#include "engine/engine.h"
#include "server/auth.h"
#include "server/metrics.h"
#include "server/server_moderation.h"
#include "tools/json_schema_validator.h"
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

// A server tool's declaration with its own `parameters` narrows the registered schema for this session.
Status narrow_server_tool(const json& declaration, tools::ToolSpec& spec) {
  const json& body = declaration.contains("function") ? declaration["function"] : declaration;
  const auto parameters = body.find("parameters");
  if (parameters == body.end() || parameters->is_null()) return Status::ok_status();
  if (!parameters->is_object())
    return Status::invalid_argument("tool " + spec.name + ": \"parameters\" must be a JSON Schema object");
  spec.parameters = *parameters;
  return Status::ok_status();
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
    if (spec.execution == tools::ToolExecution::kServer)
      AS_RETURN_IF_ERROR(narrow_server_tool(declaration, spec));
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
    // `spec` may hold the session's narrowed schema; running by name checks the registered one as well.
    options.run_tool = [registry = context.tools](const tools::ToolSpec& spec, const agent::Json& arguments,
                                                  const tools::ToolContext& tool_context,
                                                  tools::ToolDone done) {
      json args(arguments);
      if (Status valid = tools::validate_json(spec.parameters, args); !valid.ok())
        return done(
            tools::ToolResult::error(StatusCode::kInvalidArgument,
                                     "invalid arguments for tool " + spec.name + ": " + valid.message()));
      registry->execute(spec.name, std::move(args), tool_context, std::move(done));
    };
  }
  options.constraint_factory = context.tool_call_constraint;

  auto response =
      std::make_shared<AgentResponse>(context, session, std::move(response_id), post, std::move(schedule));
  response->open_calls_ = OpenToolCalls::of_last_step(s.messages, options.tools);
  // The forced first call belonged to the step that made these calls; the loop now continues from them.
  if (!response->open_calls_.empty()) options.tool_choice = {};
  AS_RETURN_IF_ERROR(response->moderate(options));
  response->options_ = std::move(options);
  if (response->open_calls_.empty()) response->make_loop(agent_messages(s.config, s.messages), s.tokens);
  return response;
}

void AgentResponse::make_loop(std::vector<agent::Message> messages, std::vector<int32_t> previous_ids) {
  loop_ = agent::TurnLoop::create(generator_, loop_sink(), post_, std::move(*options_), std::move(messages),
                                  std::move(previous_ids));
  options_.reset();
  if (moderated_)
    moderated_->set_cancel([weak = std::weak_ptr<agent::TurnLoop>(loop_)] {
      if (auto loop = weak.lock()) loop->cancel();
    });
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
        {"reason", moderation_block_reason(block)},
        {"categories", block.categories},
        {"action", block.action},
        {"detail", block.detail}});
}

Status AgentResponse::start() {
  if (context_.moderation != nullptr && context_.moderation->checks_input()) {
    // The user items added since the last committed step: what this response answers.
    std::vector<size_t> checked;
    std::string text;
    {
      std::lock_guard lock(session_->mutex);
      for (size_t i = session_->committed_messages; i < session_->messages.size(); ++i) {
        if (session_->messages[i].role != "user") continue;
        if (!text.empty()) text += "\n\n";
        text += session_->messages[i].content;
        checked.push_back(i);
      }
    }
    if (!checked.empty()) {
      phase_ = Phase::kCheckingInput;
      ModerationScope scope{&session_->tenant, session_->id, response_id_};
      context_.moderation->check(
          scope, agent::ModerationKind::kInput, std::move(text), post_,
          [self = shared_from_this(), checked](const agent::ModerationVerdict& verdict) {
            if (self->phase_ != Phase::kCheckingInput) return;  // cancelled meanwhile
            if (!verdict.allowed) return self->block_input(verdict, checked);
            if (Status begun = self->begin(); !begun.ok())
              self->finish_without_loop(agent::TurnStatus::kFailed, begun);
          });
      return Status::ok_status();
    }
  }
  return begin();
}

Status AgentResponse::begin() {
  if (!open_calls_.empty()) {
    phase_ = Phase::kAnsweringOpenCalls;
    announce_open_calls();
    return Status::ok_status();
  }
  phase_ = Phase::kLooping;
  return loop_->start();
}

void AgentResponse::block_input(const agent::ModerationVerdict& verdict, const std::vector<size_t>& checked) {
  const agent::ModerationBlock block =
      agent::moderation_block(agent::ModerationKind::kInput, verdict, "blocked");
  on_blocked(block);
  context_.moderation->count_blocked();
  {
    // The model never sees the refused items: they leave the session (none of them was committed).
    std::lock_guard lock(session_->mutex);
    for (auto it = checked.rbegin(); it != checked.rend(); ++it)
      if (*it >= session_->committed_messages && *it < session_->messages.size())
        session_->messages.erase(session_->messages.begin() + static_cast<std::ptrdiff_t>(*it));
  }
  finish_without_loop(agent::TurnStatus::kBlocked, agent::moderation_block_status(block));
}

void AgentResponse::finish_without_loop(agent::TurnStatus status, Status error) {
  phase_ = Phase::kDone;
  agent::TurnOutcome outcome;
  outcome.status = status;
  outcome.error = std::move(error);
  on_done(outcome);
}

void AgentResponse::announce_open_calls() {
  const std::vector<std::string> client_ids = open_calls_.announce(*this);
  if (client_ids.empty()) return answer_open_calls();
  const auto timeout = options_ ? options_->client_tool_timeout : std::chrono::milliseconds(60000);
  on_requires_action(client_ids, std::chrono::steady_clock::now() + timeout);
}

void AgentResponse::expire_open_calls() {
  open_calls_.expire(*this);
  answer_open_calls();
}

void AgentResponse::answer_open_calls() {
  if (phase_ != Phase::kAnsweringOpenCalls) return;
  phase_ = Phase::kLooping;
  ++deadline_epoch_;
  std::vector<agent::Message> messages;
  std::vector<int32_t> tokens;
  {
    // The results are committed like the loop's own (same form), so a restart from here resumes after them.
    std::lock_guard lock(session_->mutex);
    for (ConversationMessage& result : open_calls_.take_result_messages())
      session_->messages.push_back(std::move(result));
    if (!session_->deleted) commit_locked(0, session_->tokens);
    messages = agent_messages(session_->config, session_->messages);
    tokens = session_->tokens;
  }
  make_loop(std::move(messages), std::move(tokens));
  if (Status started = loop_->start(); !started.ok())
    finish_without_loop(agent::TurnStatus::kFailed, started);
}

void AgentResponse::submit_tool_output(FunctionCallOutput output, std::function<void(Status)> on_result) {
  post_([self = shared_from_this(), output = std::move(output), on_result = std::move(on_result)]() mutable {
    if (!self->awaited_ids_.contains(output.call_id))
      return on_result(
          Status::not_found("no client tool call \"" + output.call_id + "\" is waiting for output"));
    ServerModeration* moderation = self->context_.moderation;
    if (moderation == nullptr || !moderation->checks_tool_results())
      return on_result(self->deliver_tool_output(std::move(output)));
    ModerationScope scope{&self->session_->tenant, self->session_->id, self->response_id_};
    std::string text = output.output;
    moderation->check(scope, agent::ModerationKind::kToolResult, std::move(text), self->post_,
                      [self, output = std::move(output),
                       on_result = std::move(on_result)](const agent::ModerationVerdict& verdict) mutable {
                        if (!verdict.allowed) {
                          // As for a server tool's result: the model learns a result was withheld, never what
                          // it said.
                          self->on_blocked(agent::moderation_block(agent::ModerationKind::kToolResult,
                                                                   verdict, "withheld"));
                          output.output = "the tool's output was withheld by moderation";
                          output.is_error = true;
                        }
                        on_result(self->deliver_tool_output(std::move(output)));
                      });
  });
}

Status AgentResponse::deliver_tool_output(FunctionCallOutput output) {
  if (phase_ == Phase::kLooping)
    return loop_->submit_tool_output(output.call_id, std::move(output.output), output.is_error);
  if (phase_ == Phase::kAnsweringOpenCalls) {
    tools::ToolResult result;
    result.output = std::move(output.output);
    result.is_error = output.is_error;
    if (open_calls_.resolve_client(output.call_id, std::move(result), *this)) {
      if (open_calls_.all_answered()) answer_open_calls();
      return Status::ok_status();
    }
  }
  return Status::not_found("no client tool call \"" + output.call_id + "\" is waiting for output");
}

void AgentResponse::cancel() {
  post_([self = shared_from_this()] {
    switch (self->phase_) {
      case Phase::kLooping:
        return self->loop_->cancel();
      case Phase::kCheckingInput:
      case Phase::kAnsweringOpenCalls:
        return self->finish_without_loop(agent::TurnStatus::kCancelled);
      case Phase::kCreated:
      case Phase::kDone:
        return;
    }
  });
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
  if (pending_calls_message_) {
    // The step's message gets the call's id, so an open call keeps its id across a restart; the step is
    // committed once every call has one.
    std::lock_guard lock(session_->mutex);
    const size_t index = *pending_calls_message_;
    if (!session_->deleted && index < session_->messages.size() &&
        attach_call_id(session_->messages[index], call))
      flush_pending_calls_locked();
  }
  // Server calls are shown through tool.execution.started; only the client's own calls go out here.
  if (call.execution != tools::ToolExecution::kClient) return;
  emit(function_call_arguments_done_event(response_id_, call.call_id, call.name,
                                          arguments_text(call.arguments)));
}

void AgentResponse::on_requires_action(std::span<const std::string> call_ids,
                                       std::chrono::steady_clock::time_point deadline) {
  awaited_ids_.insert(call_ids.begin(), call_ids.end());
  {
    std::lock_guard lock(session_->mutex);
    if (!session_->deleted) {
      // Durable before the client hears of the calls: a restart from here still knows them.
      flush_pending_calls_locked();
      context_.sessions->emit(
          *session_,
          requires_action_event(response_id_, {call_ids.begin(), call_ids.end()}, to_unix_ms(deadline)));
      pin_while_idle(*session_,
                     phase_ == Phase::kAnsweringOpenCalls ? session_->tokens : generator_.tokens());
    }
  }
  const uint64_t epoch = ++deadline_epoch_;
  schedule_(deadline, [self = shared_from_this(), epoch] {
    if (self->deadline_epoch_ != epoch) return;
    if (self->phase_ == Phase::kAnsweringOpenCalls) return self->expire_open_calls();
    if (self->phase_ == Phase::kLooping) self->loop_->expire_tool_calls();
  });
}

void AgentResponse::on_tool_started(const agent::TurnToolCall& call) {
  emit(tool_execution_started_event(response_id_, call.call_id, call.name, arguments_text(call.arguments)));
}

void AgentResponse::on_tool_completed(const agent::TurnToolCall& call, const tools::ToolResult& result) {
  awaited_ids_.erase(call.call_id);
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
  flush_pending_calls_locked();
  for (const agent::Message& message : commit.messages)
    session_->messages.push_back(to_conversation(message));
  if (!commit.messages.empty() && session_->messages.back().role == "assistant" &&
      !session_->messages.back().tool_calls.empty()) {
    // Held until on_tool_call has attached every call's id (right after this, before any call runs).
    pending_calls_message_ = session_->messages.size() - 1;
    pending_calls_step_ = commit.step;
    return;
  }
  commit_locked(commit.step, generator_.tokens());
}

void AgentResponse::flush_pending_calls_locked() {
  if (!pending_calls_message_) return;
  pending_calls_message_.reset();
  commit_locked(pending_calls_step_, generator_.tokens());
}

void AgentResponse::commit_locked(int step, std::vector<int32_t> tokens) {
  if (Status committed = context_.sessions->commit_turn(*session_, std::move(tokens)); !committed.ok()) {
    spdlog::error("session {}: committing step {} of {}: {}", session_->id, step, response_id_,
                  committed.to_string());
    context_.sessions->emit(*session_, error_event(error_from_status(committed, "persist_failed")));
  } else {
    // Write-through: the turn's KV blocks go to disk durably too, so a kill -9 costs no recompute.
    (void)context_.engine->persist(session_->tokens, session_->tenant.cache_salt);
  }
}

void AgentResponse::on_done(const agent::TurnOutcome& outcome) {
  ++deadline_epoch_;
  phase_ = Phase::kDone;
  awaited_ids_.clear();
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
  flush_pending_calls_locked();
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
