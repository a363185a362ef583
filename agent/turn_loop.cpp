#include "agent/turn_loop.h"

#include <random>

#include "agent/prompt_tokens.h"
#include "tools/json_schema_validator.h"

namespace agentserve::agent {
namespace {

tools::ToolResult error_result(StatusCode code, std::string message) {
  tools::ToolResult result;
  result.output = std::move(message);
  result.is_error = true;
  result.code = code;
  return result;
}

}  // namespace

const char* turn_status_name(TurnStatus status) {
  switch (status) {
    case TurnStatus::kCompleted:
      return "completed";
    case TurnStatus::kCancelled:
      return "cancelled";
    case TurnStatus::kFailed:
      return "failed";
    case TurnStatus::kIncomplete:
      return "incomplete";
    case TurnStatus::kBlocked:
      return "blocked";
  }
  return "unknown";
}

std::shared_ptr<TurnLoop> TurnLoop::create(TurnGenerator& generator, TurnSink& sink, Executor post,
                                           TurnLoopOptions options, std::vector<Message> messages,
                                           std::vector<int32_t> previous_ids) {
  return std::shared_ptr<TurnLoop>(new TurnLoop(generator, sink, std::move(post), std::move(options),
                                                std::move(messages), std::move(previous_ids)));
}

TurnLoop::TurnLoop(TurnGenerator& generator, TurnSink& sink, Executor post, TurnLoopOptions options,
                   std::vector<Message> messages, std::vector<int32_t> previous_ids)
    : generator_(generator),
      sink_(sink),
      post_(std::move(post)),
      options_(std::move(options)),
      messages_(std::move(messages)),
      session_ids_(std::move(previous_ids)) {}

Status TurnLoop::start() {
  if (phase_ != Phase::kIdle) return Status::failed_precondition("the turn loop has already started");
  if (messages_.empty()) return Status::invalid_argument("the conversation has no messages");
  if (options_.max_steps < 1) return Status::invalid_argument("max_steps must be at least 1");
  const ToolChoice& choice = options_.tool_choice;
  if (choice.mode == ToolChoiceMode::kNamed && find_tool(choice.name) == nullptr)
    return Status::invalid_argument("tool_choice names \"" + choice.name +
                                    "\", which is not a tool of this session");
  if (choice.mode == ToolChoiceMode::kRequired && options_.tools.empty())
    return Status::invalid_argument("tool_choice is required but the session has no tools");
  const bool forced = choice.mode == ToolChoiceMode::kRequired || choice.mode == ToolChoiceMode::kNamed;
  if (forced && !options_.constraint_factory)
    return Status::failed_precondition(
        "tool_choice required/named needs constrained decoding, which is not "
        "configured for this loop");
  Status status = begin_step();
  if (!status.ok()) phase_ = Phase::kDone;
  return status;
}

const tools::ToolSpec* TurnLoop::find_tool(std::string_view name) const {
  for (const tools::ToolSpec& spec : options_.tools)
    if (spec.name == name) return &spec;
  return nullptr;
}

Json TurnLoop::render_tools() const {
  if (options_.tool_choice.mode == ToolChoiceMode::kNone || options_.tools.empty()) return nullptr;
  Json tools = Json::array();
  for (const tools::ToolSpec& spec : options_.tools) {
    Json function = Json::object();
    function["name"] = spec.name;
    function["description"] = spec.description;
    function["parameters"] = Json(spec.parameters);
    tools.push_back(Json{{"type", "function"}, {"function", std::move(function)}});
  }
  return tools;
}

Status TurnLoop::begin_step() {
  ChatTemplateOptions template_options;
  template_options.enable_thinking = options_.enable_thinking;
  AS_ASSIGN_OR_RETURN(RenderedPrompt rendered,
                      render_chat_with_literals(messages_, render_tools(), template_options));
  PromptTokens prompt = extend_prompt(generator_.tokenizer(), session_ids_, rendered);
  step_usage_ = StepUsage{};
  step_usage_.prompt_tokens = static_cast<int>(prompt.ids.size());
  step_usage_.reused_tokens = prompt.reused;

  engine::GenerationRequest request;
  request.prompt = prompt.ids;
  request.sampling = options_.sampling;
  request.cache_salt = options_.cache_salt;
  const ToolChoice& choice = options_.tool_choice;
  if (outcome_.steps == 0 &&
      (choice.mode == ToolChoiceMode::kRequired || choice.mode == ToolChoiceMode::kNamed)) {
    std::vector<const tools::ToolSpec*> allowed;
    for (const tools::ToolSpec& spec : options_.tools)
      if (choice.mode == ToolChoiceMode::kRequired || spec.name == choice.name) allowed.push_back(&spec);
    AS_ASSIGN_OR_RETURN(request.constraint, options_.constraint_factory(allowed));
  }
  const uint64_t token = ++step_token_;
  request.on_event = [self = shared_from_this(), token](const engine::GenerationEvent& event) {
    self->post_([self, token, event] { self->on_generation_event(token, event); });
  };

  session_ids_ = std::move(prompt.ids);
  parser_ = ToolCallParser();
  assistant_ = Message{};
  assistant_.role = Role::kAssistant;
  // Set even when empty: the parser has split off the reasoning already, and an absent one would make the
  // template look for a "</think>" inside the content and re-split it, rewriting history on every step.
  assistant_.reasoning_content = std::string();
  calls_.clear();
  call_errors_.clear();
  pending_.clear();
  outcome_.steps++;
  phase_ = Phase::kGenerating;
  AS_ASSIGN_OR_RETURN(request_id_, generator_.start(std::move(request)));
  return Status::ok_status();
}

void TurnLoop::on_generation_event(uint64_t step_token, const engine::GenerationEvent& event) {
  if (phase_ != Phase::kGenerating || step_token != step_token_) return;
  session_ids_.insert(session_ids_.end(), event.tokens.begin(), event.tokens.end());
  std::vector<TurnEvent> events;
  parser_.feed(event.text, events);
  handle_parser_events(events);
  if (event.finished) end_generation(event);
}

void TurnLoop::handle_parser_events(std::vector<TurnEvent>& events) {
  for (TurnEvent& event : events) {
    switch (event.kind) {
      case TurnEventKind::kReasoning:
        *assistant_.reasoning_content += event.text;
        sink_.on_reasoning_delta(event.text);
        break;
      case TurnEventKind::kContent:
        assistant_.content += event.text;
        sink_.on_text_delta(event.text);
        break;
      case TurnEventKind::kToolCall: {
        TurnToolCall call;
        call.call_id = new_call_id();
        call.name = std::move(event.call.name);
        call.arguments = std::move(event.call.arguments);
        if (const tools::ToolSpec* spec = find_tool(call.name)) call.execution = spec->execution;
        calls_.push_back(std::move(call));
        break;
      }
      case TurnEventKind::kError:
        call_errors_.emplace_back(Status::invalid_argument("malformed tool call: " + event.text),
                                  std::move(event.raw));
        break;
    }
  }
}

void TurnLoop::end_generation(const engine::GenerationEvent& event) {
  std::vector<TurnEvent> events;
  parser_.finish(events);
  handle_parser_events(events);

  const engine::Usage& usage = event.usage;
  outcome_.usage.prompt_tokens += usage.prompt_tokens;
  outcome_.usage.cached_tokens += usage.cached_tokens;
  outcome_.usage.completion_tokens += usage.completion_tokens;
  outcome_.usage.time_to_first_token_s += outcome_.steps == 1 ? usage.time_to_first_token_s : 0.0;
  outcome_.usage.total_time_s += usage.total_time_s;
  step_usage_.cached_tokens = usage.cached_tokens;
  step_usage_.recomputed_tokens = step_usage_.prompt_tokens - usage.cached_tokens;
  step_usage_.completion_tokens = usage.completion_tokens;
  outcome_.step_usage.push_back(step_usage_);

  if (event.finish_reason == engine::FinishReason::kError) return finish(TurnStatus::kFailed, event.error);
  if (event.finish_reason == engine::FinishReason::kCancelled) return finish(TurnStatus::kCancelled);
  if (options_.tool_choice.mode == ToolChoiceMode::kNone) {
    for (const TurnToolCall& call : calls_) {
      call_errors_.emplace_back(Status::failed_precondition("tool calls are disabled (tool_choice none), \"" +
                                                            call.name + "\" not run"),
                                python_json_dumps(Json{{"name", call.name}, {"arguments", call.arguments}}));
    }
    calls_.clear();
  }
  if (!call_errors_.empty()) {
    for (const auto& [error, raw] : call_errors_) sink_.on_tool_call_error(error, raw);
    return reject_step(call_errors_.front().first);
  }
  if (calls_.empty()) {
    messages_.push_back(assistant_);
    sink_.on_step_committed({outcome_.steps, {assistant_}});
    if (event.finish_reason == engine::FinishReason::kLength)
      return finish(TurnStatus::kIncomplete, Status::resource_exhausted("the answer reached max_tokens"));
    return finish(TurnStatus::kCompleted);
  }
  start_calls();
}

// A step whose calls cannot all be parsed runs none of them: its text is kept, and with retry_malformed the
// model sees the error once as a tool result and tries again.
void TurnLoop::reject_step(const Status& error) {
  messages_.push_back(assistant_);
  StepCommit commit{outcome_.steps, {assistant_}};
  const bool retry = options_.retry_malformed && !retried_ && outcome_.steps < options_.max_steps;
  if (!retry) {
    sink_.on_step_committed(commit);
    return finish(TurnStatus::kFailed, error);
  }
  retried_ = true;
  Message feedback;
  feedback.role = Role::kTool;
  feedback.content =
      "Error: " + error.message() +
      ". No tool was run. Reply with valid calls, each <tool_call>\n{\"name\": <function-name>, "
      "\"arguments\": <args-json-object>}\n</tool_call>, or answer without tools.";
  messages_.push_back(feedback);
  commit.messages.push_back(std::move(feedback));
  sink_.on_step_committed(commit);
  if (Status status = begin_step(); !status.ok()) finish(TurnStatus::kFailed, status);
}

void TurnLoop::start_calls() {
  phase_ = Phase::kApproving;
  for (TurnToolCall& call : calls_) pending_.push_back({std::move(call), std::nullopt, false});
  calls_.clear();
  // Calls that cannot run are answered now, to the model, and never reach the approval or the client.
  for (PendingCall& pending : pending_) {
    const tools::ToolSpec* spec = find_tool(pending.call.name);
    Status problem;
    if (spec == nullptr) {
      problem = Status::not_found("there is no tool named \"" + pending.call.name + "\"");
    } else if (spec->execution == tools::ToolExecution::kClient) {
      problem = tools::validate_json(spec->parameters, nlohmann::json(pending.call.arguments));
    }
    if (!problem.ok()) {
      sink_.on_tool_call_error(problem, python_json_dumps(pending.call.arguments));
      pending.result = error_result(problem.code(), problem.message());
      pending.approved = true;
    }
  }
  const uint64_t token = step_token_;
  for (std::size_t i = 0; i < pending_.size(); ++i) {
    if (pending_[i].approved) continue;
    if (!options_.approve) {
      pending_[i].approved = true;
      continue;
    }
    options_.approve(pending_[i].call, [self = shared_from_this(), token, i](Status decision) {
      self->post_([self, token, i, decision] {
        if (self->step_token_ == token) self->on_approval(i, decision);
      });
    });
  }
  on_approval(pending_.size(), Status::ok_status());
}

// index == pending_.size(): no new decision, just check whether every call is approved.
void TurnLoop::on_approval(std::size_t index, const Status& decision) {
  if (phase_ != Phase::kApproving) return;
  if (!decision.ok()) return finish(TurnStatus::kBlocked, decision);
  if (index < pending_.size()) pending_[index].approved = true;
  for (const PendingCall& pending : pending_)
    if (!pending.approved) return;
  dispatch_calls();
}

void TurnLoop::dispatch_calls() {
  for (const PendingCall& pending : pending_) {
    ToolCall call;
    call.name = pending.call.name;
    call.arguments = pending.call.arguments;
    assistant_.tool_calls.push_back(std::move(call));
  }
  messages_.push_back(assistant_);
  sink_.on_step_committed({outcome_.steps, {assistant_}});

  phase_ = Phase::kRunningTools;
  deadline_ = std::chrono::steady_clock::now() + options_.client_tool_timeout;
  const uint64_t token = step_token_;
  std::vector<std::string> client_ids;
  for (std::size_t i = 0; i < pending_.size(); ++i) {
    PendingCall& pending = pending_[i];
    if (pending.result) continue;
    sink_.on_tool_call(pending.call);
    if (pending.call.execution == tools::ToolExecution::kClient) {
      client_ids.push_back(pending.call.call_id);
      continue;
    }
    sink_.on_tool_started(pending.call);
    if (!options_.run_tool) {
      pending.result = error_result(StatusCode::kFailedPrecondition, "server tools are not available here");
      sink_.on_tool_completed(pending.call, *pending.result);
      continue;
    }
    tools::ToolContext context = options_.context;
    context.call_id = pending.call.call_id;
    options_.run_tool(*find_tool(pending.call.name), pending.call.arguments, context,
                      [self = shared_from_this(), token, i](tools::ToolResult result) {
                        self->post_([self, token, i, result = std::move(result)]() mutable {
                          if (self->step_token_ == token) self->resolve(i, std::move(result));
                        });
                      });
  }
  if (!client_ids.empty()) sink_.on_requires_action(client_ids, deadline_);
  for (const PendingCall& pending : pending_)
    if (!pending.result) return;
  finish_calls();
}

void TurnLoop::resolve(std::size_t index, tools::ToolResult result) {
  if (phase_ != Phase::kRunningTools || index >= pending_.size() || pending_[index].result) return;
  pending_[index].result = std::move(result);
  sink_.on_tool_completed(pending_[index].call, *pending_[index].result);
  for (const PendingCall& pending : pending_)
    if (!pending.result) return;
  finish_calls();
}

Status TurnLoop::submit_tool_output(std::string_view call_id, std::string output, bool is_error) {
  for (std::size_t i = 0; phase_ == Phase::kRunningTools && i < pending_.size(); ++i) {
    const PendingCall& pending = pending_[i];
    if (pending.call.call_id != call_id || pending.call.execution != tools::ToolExecution::kClient ||
        pending.result)
      continue;
    tools::ToolResult result;
    result.output = std::move(output);
    result.is_error = is_error;
    resolve(i, std::move(result));
    return Status::ok_status();
  }
  return Status::not_found("no client tool call \"" + std::string(call_id) + "\" is waiting for output");
}

int TurnLoop::expire_tool_calls() {
  std::vector<std::size_t> waiting;
  for (std::size_t i = 0; phase_ == Phase::kRunningTools && i < pending_.size(); ++i)
    if (pending_[i].call.execution == tools::ToolExecution::kClient && !pending_[i].result)
      waiting.push_back(i);
  const uint64_t token = step_token_;
  for (const std::size_t i : waiting) {
    if (step_token_ != token) break;  // the last one resolved started the next step
    resolve(
        i, error_result(StatusCode::kDeadlineExceeded, "the client did not return the output of \"" +
                                                           pending_[i].call.name + "\" before its deadline"));
  }
  return static_cast<int>(waiting.size());
}

std::string new_call_id() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id = "call_";
  for (int i = 0; i < 24; ++i) id += kHex[rng() % 16];
  return id;
}

std::string tool_result_content(const tools::ToolResult& result) {
  return result.is_error ? "Error: " + result.output : result.output;
}

void TurnLoop::finish_calls() {
  StepCommit commit{outcome_.steps, {}};
  for (const PendingCall& pending : pending_) {
    Message result;
    result.role = Role::kTool;
    result.content = tool_result_content(*pending.result);
    messages_.push_back(result);
    commit.messages.push_back(std::move(result));
  }
  sink_.on_step_committed(commit);
  if (outcome_.steps >= options_.max_steps)
    return finish(
        TurnStatus::kIncomplete,
        Status::resource_exhausted("max_steps (" + std::to_string(options_.max_steps) + ") reached"));
  if (Status status = begin_step(); !status.ok()) finish(TurnStatus::kFailed, status);
}

void TurnLoop::cancel() {
  if (phase_ == Phase::kDone) return;
  if (phase_ == Phase::kGenerating) generator_.cancel(request_id_);
  finish(TurnStatus::kCancelled);
}

void TurnLoop::finish(TurnStatus status, Status error) {
  phase_ = Phase::kDone;
  ++step_token_;  // late generator events, approvals and tool results are dropped
  outcome_.status = status;
  outcome_.error = std::move(error);
  outcome_.token_ids = session_ids_;
  sink_.on_done(outcome_);
}

}  // namespace agentserve::agent
