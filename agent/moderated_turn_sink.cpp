#include "agent/moderated_turn_sink.h"

#include <utility>

namespace agentserve::agent {

ModerationBlock moderation_block(ModerationKind kind, const ModerationVerdict& verdict, std::string action) {
  ModerationBlock block;
  block.kind = kind;
  block.categories = verdict.categories;
  block.failure = verdict.failure;
  block.detail = verdict.failure_detail;
  block.action = std::move(action);
  return block;
}

// Also what the loop sees in a denied approval.
Status moderation_block_status(const ModerationBlock& block) {
  std::string message = "blocked by moderation (" + std::string(moderation_kind_name(block.kind));
  if (block.failure != ModerationFailure::kNone) {
    message += ": check failed, " + std::string(moderation_failure_name(block.failure));
    if (!block.detail.empty()) message += " - " + block.detail;
  } else if (!block.categories.empty()) {
    message += ":";
    for (std::size_t i = 0; i < block.categories.size(); ++i)
      message += (i == 0 ? " " : ", ") + block.categories[i];
  }
  return Status::failed_precondition(message + ")");
}

KindChecker moderation_checker(ModerationClient& client, ModerationRequest base, bool fail_open) {
  return [&client, base = std::move(base), fail_open](ModerationKind kind, std::string text,
                                                      std::function<void(ModerationVerdict)> done) {
    ModerationRequest request = base;
    request.kind = kind;
    request.text = std::move(text);
    client.check(std::move(request), fail_open, std::move(done));
  };
}

Result<std::shared_ptr<ModeratedTurnSink>> ModeratedTurnSink::create(TurnSink& inner, Executor post,
                                                                     KindChecker checker,
                                                                     ModeratedTurnOptions options,
                                                                     BlockedCallback on_blocked) {
  if (options.gate.window_tokens == 0)
    return Status::invalid_argument("moderation window must be at least one token");
  if (!post || !checker) return Status::invalid_argument("moderated sink needs an executor and a checker");
  return std::shared_ptr<ModeratedTurnSink>(new ModeratedTurnSink(inner, std::move(post), std::move(checker),
                                                                  std::move(options), std::move(on_blocked)));
}

ModeratedTurnSink::ModeratedTurnSink(TurnSink& inner, Executor post, KindChecker checker,
                                     ModeratedTurnOptions options, BlockedCallback on_blocked)
    : inner_(inner),
      post_(std::move(post)),
      checker_(std::move(checker)),
      options_(options),
      on_blocked_(std::move(on_blocked)) {}

ModeratedTurnSink::~ModeratedTurnSink() = default;

ToolApproval ModeratedTurnSink::approval_hook(ToolApproval next) {
  if (!options_.check_tool_arguments) return next;
  std::weak_ptr<ModeratedTurnSink> weak = weak_from_this();
  return [weak, checker = checker_, post = post_, next](const TurnToolCall& call,
                                                        std::function<void(Status)> decide) {
    const Json checked{{"name", call.name}, {"arguments", call.arguments}};
    std::string text = checked.dump(-1, ' ', false, Json::error_handler_t::replace);
    checker(ModerationKind::kToolArguments, std::move(text),
            [weak, post, next, call, decide](ModerationVerdict verdict) {
              post([weak, next, call, decide, verdict] {
                if (verdict.allowed) {
                  if (next) return next(call, decide);
                  return decide(Status::ok_status());
                }
                ModerationBlock block = moderation_block(ModerationKind::kToolArguments, verdict, "blocked");
                const Status denial = moderation_block_status(block);
                if (auto self = weak.lock(); self && !self->denied_call_)
                  self->denied_call_ = std::move(block);
                decide(denial);
              });
            });
  };
}

ToolRunner ModeratedTurnSink::tool_runner_hook(ToolRunner inner) {
  if (!options_.check_tool_results || !inner) return inner;
  std::weak_ptr<ModeratedTurnSink> weak = weak_from_this();
  return [weak, checker = checker_, post = post_, inner](const tools::ToolSpec& spec, const Json& arguments,
                                                         const tools::ToolContext& context,
                                                         tools::ToolDone done) {
    inner(spec, arguments, context, [weak, checker, post, done](tools::ToolResult result) {
      std::string text = result.output;
      checker(ModerationKind::kToolResult, std::move(text),
              [weak, post, done, result](ModerationVerdict verdict) {
                if (verdict.allowed) return done(result);
                post([weak, done, verdict] {
                  ModerationBlock block = moderation_block(ModerationKind::kToolResult, verdict, "withheld");
                  if (auto self = weak.lock();
                      self && !self->blocked_ && !self->done_forwarded_ && self->on_blocked_)
                    self->on_blocked_(block);
                  // The model is told that a result existed and was withheld, never what it said.
                  done(tools::ToolResult::error(StatusCode::kFailedPrecondition,
                                                "the tool's output was withheld by moderation"));
                });
              });
    });
  };
}

void ModeratedTurnSink::wrap(TurnLoopOptions& options) {
  options.approve = approval_hook(std::move(options.approve));
  options.run_tool = tool_runner_hook(std::move(options.run_tool));
}

// Every entry from the loop: frees segments retired inside gate callbacks, and drops what comes after a block
// or after on_done was forwarded.
bool ModeratedTurnSink::accepting() {
  retired_.clear();
  return !blocked_ && !done_forwarded_;
}

void ModeratedTurnSink::on_text_delta(std::string_view delta) {
  if (accepting()) push_delta(ModerationKind::kOutputText, delta);
}

void ModeratedTurnSink::on_reasoning_delta(std::string_view delta) {
  if (!accepting()) return;
  if (options_.check_reasoning) return push_delta(ModerationKind::kReasoning, delta);
  enqueue([text = std::string(delta)](TurnSink& sink) { sink.on_reasoning_delta(text); });
}

void ModeratedTurnSink::on_tool_call(const TurnToolCall& call) {
  if (accepting()) enqueue([call](TurnSink& sink) { sink.on_tool_call(call); });
}

void ModeratedTurnSink::on_requires_action(std::span<const std::string> call_ids,
                                           std::chrono::steady_clock::time_point deadline) {
  if (!accepting()) return;
  enqueue([ids = std::vector<std::string>(call_ids.begin(), call_ids.end()), deadline](TurnSink& sink) {
    sink.on_requires_action(ids, deadline);
  });
}

void ModeratedTurnSink::on_tool_started(const TurnToolCall& call) {
  if (accepting()) enqueue([call](TurnSink& sink) { sink.on_tool_started(call); });
}

void ModeratedTurnSink::on_tool_completed(const TurnToolCall& call, const tools::ToolResult& result) {
  if (accepting()) enqueue([call, result](TurnSink& sink) { sink.on_tool_completed(call, result); });
}

// The raw text of a malformed call is model output the driver may show; it is checked like arguments.
void ModeratedTurnSink::on_tool_call_error(const Status& error, std::string_view raw) {
  if (!accepting()) return;
  const bool check = options_.check_tool_arguments && !raw.empty();
  enqueue([error, raw = std::string(raw)](TurnSink& sink) { sink.on_tool_call_error(error, raw); }, !check);
  if (!check) return;
  const uint64_t id = next_id_;
  std::weak_ptr<ModeratedTurnSink> weak = weak_from_this();
  checker_(ModerationKind::kToolArguments, std::string(raw),
           [weak, post = post_, id](ModerationVerdict verdict) {
             post([weak, id, verdict] {
               auto self = weak.lock();
               if (!self) return;
               if (!verdict.allowed)
                 return self->block(moderation_block(ModerationKind::kToolArguments, verdict, "blocked"));
               if (Segment* segment = self->find(id)) {
                 segment->complete = true;
                 self->pump();
               }
             });
           });
}

void ModeratedTurnSink::on_step_committed(const StepCommit& commit) {
  if (accepting()) enqueue([commit](TurnSink& sink) { sink.on_step_committed(commit); });
}

void ModeratedTurnSink::on_done(const TurnOutcome& outcome) {
  // No accepting(): on_done may arrive inside block() (the cancel), itself inside a gate callback.
  if (done_forwarded_) return;
  if (blocked_) return forward_blocked_done(outcome);
  if (outcome.status == TurnStatus::kCancelled) {
    // The driver cancelled: what is still held was never checked and is not wanted any more.
    for (auto& segment : segments_) retired_.push_back(std::move(segment));
    segments_.clear();
    return deliver_done(outcome);
  }
  loop_outcome_ = outcome;
  enqueue([this](TurnSink&) { deliver_done(*loop_outcome_); });
}

void ModeratedTurnSink::push_delta(ModerationKind kind, std::string_view delta) {
  if (delta.empty()) return;
  Segment* back = segments_.empty() ? nullptr : segments_.back().get();
  if (back == nullptr || !back->gate || back->closed || back->kind != kind) {
    close_open_gate();
    auto segment = std::make_unique<Segment>();
    segment->id = ++next_id_;
    segment->kind = kind;
    const uint64_t id = segment->id;
    // The gate lives in a segment this sink owns and drops its verdicts once destroyed, so `this` is alive
    // whenever these run.
    ModerationGateCallbacks callbacks;
    callbacks.on_release = [this, id](std::string_view text) {
      if (Segment* s = find(id)) {
        s->released += text;
        pump();
      }
    };
    callbacks.on_blocked = [this, kind](const ModerationVerdict& verdict) {
      block(moderation_block(kind, verdict, "blocked"));
    };
    callbacks.on_finished = [this, id] {
      if (Segment* s = find(id)) {
        s->complete = true;
        pump();
      }
    };
    ModerationChecker check = [checker = checker_, kind](std::string text,
                                                         std::function<void(ModerationVerdict)> done) {
      checker(kind, std::move(text), std::move(done));
    };
    // create() validated the window; checker and executor are set.
    segment->gate =
        std::move(ModerationGate::create(options_.gate, std::move(check), post_, std::move(callbacks)))
            .value();
    segments_.push_back(std::move(segment));
    back = segments_.back().get();
  }
  back->gate->push(delta);
}

void ModeratedTurnSink::close_open_gate() {
  if (segments_.empty()) return;
  Segment& back = *segments_.back();
  if (!back.gate || back.closed) return;
  back.closed = true;
  back.gate->finish();  // may complete the segment at once (nothing left to check) and pump
}

void ModeratedTurnSink::enqueue(std::function<void(TurnSink&)> event, bool ready) {
  close_open_gate();
  if (blocked_ || done_forwarded_) return;
  auto segment = std::make_unique<Segment>();
  segment->id = ++next_id_;
  segment->event = std::move(event);
  segment->complete = ready;
  segments_.push_back(std::move(segment));
  pump();
}

ModeratedTurnSink::Segment* ModeratedTurnSink::find(uint64_t id) {
  for (auto& segment : segments_)
    if (segment->id == id) return segment.get();
  return nullptr;
}

void ModeratedTurnSink::pump() {
  if (pumping_) return;
  pumping_ = true;
  while (!blocked_ && !done_forwarded_ && !segments_.empty()) {
    Segment& front = *segments_.front();
    if (front.gate && !front.released.empty()) {
      const std::string text = std::exchange(front.released, std::string());
      if (front.kind == ModerationKind::kReasoning)
        inner_.on_reasoning_delta(text);
      else
        inner_.on_text_delta(text);
    }
    if (!front.complete) break;
    std::unique_ptr<Segment> segment = std::move(segments_.front());
    segments_.pop_front();
    if (segment->event) segment->event(inner_);
    retired_.push_back(std::move(segment));
  }
  pumping_ = false;
}

void ModeratedTurnSink::block(ModerationBlock block) {
  if (blocked_ || done_forwarded_) return;
  blocked_ = std::move(block);
  for (auto& segment : segments_) retired_.push_back(std::move(segment));
  segments_.clear();
  if (loop_outcome_) return forward_blocked_done(*loop_outcome_);
  // The loop ends as cancelled; its on_done (now or later) is forwarded as blocked.
  if (cancel_) cancel_();
}

void ModeratedTurnSink::deliver_done(TurnOutcome outcome) {
  done_forwarded_ = true;
  if (outcome.status == TurnStatus::kBlocked && denied_call_ && on_blocked_) on_blocked_(*denied_call_);
  inner_.on_done(outcome);
}

void ModeratedTurnSink::forward_blocked_done(TurnOutcome outcome) {
  if (done_forwarded_) return;
  done_forwarded_ = true;
  outcome.status = TurnStatus::kBlocked;
  outcome.error = moderation_block_status(*blocked_);
  // The ids hold the blocked text; the next response renders the conversation afresh instead.
  outcome.token_ids.clear();
  if (on_blocked_) on_blocked_(*blocked_);
  inner_.on_done(outcome);
}

}  // namespace agentserve::agent
