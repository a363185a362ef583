#include "tools/tool_registry.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

#include "tools/json_schema_validator.h"

namespace agentserve::tools {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

struct ToolCall;
using DeadlineMap = std::multimap<Clock::time_point, std::shared_ptr<ToolCall>>;

// One execute(): whichever of the worker (the tool's answer) and the deadline thread (timeout, an answer
// decided up front, shutdown) claims it first reports; `reported` makes that exactly once.
struct ToolCall {
  std::string name;
  ToolFunction run;
  json arguments;
  ToolContext context;
  size_t max_result_bytes = kDefaultMaxResultBytes;
  Clock::time_point deadline;
  std::optional<ToolResult> decided;  // reported at once by the deadline thread, nothing runs
  ToolDone done;
  std::atomic<bool> reported{false};
  // Its entry in ToolExecutor::deadlines_ while it has one, so a call that finishes early takes it out at
  // once instead of leaving it until its timeout. Guarded by the executor's mutex.
  std::optional<DeadlineMap::iterator> deadline_entry;

  // True for the one side that may report; the other side's answer is dropped.
  bool claim() { return !reported.exchange(true); }
  // Only after a successful claim().
  void answer(ToolResult result) {
    ToolDone callback = std::move(done);
    if (callback) callback(std::move(result));
  }
  void report(ToolResult result) {
    if (claim()) answer(std::move(result));
  }
};

// Workers run tool bodies; a separate deadline thread enforces timeouts, so a pool full of stuck tools
// still answers every caller on time.
class ToolExecutor {
 public:
  explicit ToolExecutor(int n_workers) {
    deadline_thread_ = std::thread([this] { deadline_main(); });
    for (int i = 0; i < std::max(1, n_workers); ++i) workers_.emplace_back([this] { worker_main(); });
  }

  ~ToolExecutor() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    work_cv_.notify_all();
    deadline_cv_.notify_all();
    // The deadline thread reports every outstanding call (as Cancelled) before it exits; then the workers
    // finish the tool they are in, whose answers are dropped.
    deadline_thread_.join();
    for (auto& w : workers_) w.join();
  }

  void submit(std::shared_ptr<ToolCall> call) {
    {
      std::lock_guard lock(mu_);
      call->deadline_entry = deadlines_.emplace(call->deadline, call);
      if (!call->decided) work_.push_back(std::move(call));
    }
    work_cv_.notify_one();
    deadline_cv_.notify_one();
  }

  size_t pending_calls() {
    std::lock_guard lock(mu_);
    return deadlines_.size();
  }

 private:
  static ToolResult run_guarded(ToolCall& call) {
    ToolResult result;
    try {
      result = call.run(call.arguments, call.context);
    } catch (const std::exception& e) {
      return ToolResult::error(StatusCode::kInternal, "tool " + call.name + " failed: " + e.what());
    } catch (...) {
      return ToolResult::error(StatusCode::kInternal,
                               "tool " + call.name + " failed with an unknown exception");
    }
    if (result.output.size() > call.max_result_bytes) {
      return ToolResult::error(StatusCode::kResourceExhausted,
                               "tool " + call.name + " returned " + std::to_string(result.output.size()) +
                                   " bytes, over its limit of " + std::to_string(call.max_result_bytes) +
                                   " bytes");
    }
    if (result.is_error && result.code == StatusCode::kOk) result.code = StatusCode::kInternal;
    return result;
  }

  void worker_main() {
    for (;;) {
      std::shared_ptr<ToolCall> call;
      {
        std::unique_lock lock(mu_);
        work_cv_.wait(lock, [&] { return stop_ || !work_.empty(); });
        if (stop_) return;
        call = std::move(work_.front());
        work_.pop_front();
      }
      if (call->reported.load()) continue;  // timed out while queued: do not start it
      ToolResult result = run_guarded(*call);
      if (!call->claim()) continue;  // the deadline thread answered first
      // Claimed, so the deadline thread will not report it; its entry goes now, not at its timeout (a busy
      // server with long timeouts would otherwise hold every finished call until then). Before `done`, so a
      // caller that got its answer sees the call gone from pending_calls().
      {
        std::lock_guard lock(mu_);
        if (call->deadline_entry) {
          deadlines_.erase(*call->deadline_entry);
          call->deadline_entry.reset();
        }
      }
      call->answer(std::move(result));
    }
  }

  void deadline_main() {
    std::unique_lock lock(mu_);
    for (;;) {
      if (stop_) break;
      if (deadlines_.empty()) {
        deadline_cv_.wait(lock);
        continue;
      }
      auto first = deadlines_.begin();
      if (first->first > Clock::now()) {
        deadline_cv_.wait_until(lock, first->first);
        continue;
      }
      std::shared_ptr<ToolCall> call = std::move(first->second);
      deadlines_.erase(first);
      call->deadline_entry.reset();
      lock.unlock();
      if (call->decided) {
        call->report(std::move(*call->decided));
      } else if (!call->reported.load()) {
        call->report(ToolResult::error(StatusCode::kDeadlineExceeded, "tool " + call->name + " timed out"));
      }
      lock.lock();
    }
    for (auto& [when, call] : deadlines_) call->deadline_entry.reset();
    DeadlineMap pending = std::move(deadlines_);
    deadlines_.clear();
    lock.unlock();
    for (auto& [when, call] : pending) {
      if (call->decided) {
        call->report(std::move(*call->decided));
      } else {
        call->report(
            ToolResult::error(StatusCode::kCancelled, "tool " + call->name + " cancelled: shutting down"));
      }
    }
  }

  std::mutex mu_;
  std::condition_variable work_cv_;
  std::condition_variable deadline_cv_;
  std::deque<std::shared_ptr<ToolCall>> work_;
  DeadlineMap deadlines_;  // every call not yet answered, by deadline
  bool stop_ = false;
  std::vector<std::thread> workers_;
  std::thread deadline_thread_;
};

bool is_valid_tool_name(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name) {
    const bool ok =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

ToolRegistry::ToolRegistry(ToolRegistryOptions options)
    : executor_(std::make_shared<ToolExecutor>(options.worker_threads)) {}

ToolRegistry::~ToolRegistry() = default;

Status ToolRegistry::add(ToolSpec spec) {
  if (!is_valid_tool_name(spec.name)) {
    return Status::invalid_argument("tool name \"" + spec.name + "\" must match ^[A-Za-z0-9_-]{1,64}$");
  }
  const std::string where = "tool " + spec.name + ": ";
  if (auto it = tools_.find(spec.name); it != tools_.end()) {
    const bool shadows =
        it->second->execution == ToolExecution::kServer && spec.execution == ToolExecution::kClient;
    return Status::invalid_argument(where + (shadows
                                                 ? "a client tool may not shadow the server tool of that name"
                                                 : "already registered"));
  }
  if (!spec.parameters.is_object())
    return Status::invalid_argument(where + "parameters must be a JSON Schema object");
  if (auto t = spec.parameters.find("type"); t != spec.parameters.end() && *t != "object") {
    return Status::invalid_argument(
        where + "parameters must be an object schema (\"type\": \"object\"), got " + t->dump());
  }
  AS_RETURN_IF_ERROR(check_schema(spec.parameters).with_context(where + "parameters"));
  if (spec.execution == ToolExecution::kServer && !spec.run)
    return Status::invalid_argument(where + "a server tool needs run");
  if (spec.execution == ToolExecution::kClient && spec.run)
    return Status::invalid_argument(where + "a client tool has no run");
  if (spec.timeout <= std::chrono::milliseconds::zero())
    return Status::invalid_argument(where + "timeout must be positive");
  std::string name = spec.name;
  tools_.emplace(std::move(name), std::make_shared<const ToolSpec>(std::move(spec)));
  return Status::ok_status();
}

const ToolSpec* ToolRegistry::find(std::string_view name) const {
  auto it = tools_.find(name);
  return it == tools_.end() ? nullptr : it->second.get();
}

std::vector<const ToolSpec*> ToolRegistry::list() const {
  std::vector<const ToolSpec*> out;
  out.reserve(tools_.size());
  for (const auto& [name, spec] : tools_) out.push_back(spec.get());
  return out;
}

Result<ToolRegistry> ToolRegistry::with_client_tools(std::vector<ToolSpec> client_tools) const {
  ToolRegistry copy = *this;
  for (auto& spec : client_tools) {
    if (spec.execution != ToolExecution::kClient) {
      return Status::invalid_argument("tool " + spec.name + ": a session may add only client tools");
    }
    AS_RETURN_IF_ERROR(copy.add(std::move(spec)));
  }
  return copy;
}

namespace {

Result<ToolExecution> parse_execution(const json& body, const json& outer) {
  const json* value = nullptr;
  if (auto it = body.find("execution"); it != body.end()) value = &*it;
  if (auto it = outer.find("execution"); value == nullptr && it != outer.end()) value = &*it;
  if (value == nullptr) return ToolExecution::kClient;
  if (*value == "server") return ToolExecution::kServer;
  if (*value == "client") return ToolExecution::kClient;
  return Status::invalid_argument("tool execution must be \"server\" or \"client\", got " + value->dump());
}

}  // namespace

Result<ToolSpec> ToolRegistry::parse_declaration(const json& declaration) const {
  if (!declaration.is_object()) return Status::invalid_argument("a tool declaration must be a JSON object");
  if (auto t = declaration.find("type"); t == declaration.end() || *t != "function") {
    return Status::invalid_argument("a tool declaration needs \"type\": \"function\"");
  }
  const json* body = &declaration;
  if (auto f = declaration.find("function"); f != declaration.end()) {
    if (!f->is_object()) return Status::invalid_argument("tool declaration: \"function\" must be an object");
    body = &*f;
  }
  auto name = body->find("name");
  if (name == body->end() || !name->is_string())
    return Status::invalid_argument("tool declaration: \"name\" must be a string");
  const std::string tool_name = name->get<std::string>();
  AS_ASSIGN_OR_RETURN(ToolExecution execution, parse_execution(*body, declaration));

  if (execution == ToolExecution::kServer) {
    const ToolSpec* registered = find(tool_name);
    if (registered == nullptr || registered->execution != ToolExecution::kServer) {
      return Status::invalid_argument("tool " + tool_name + ": no server tool of that name is registered");
    }
    return *registered;
  }

  ToolSpec spec;
  spec.name = tool_name;
  spec.execution = ToolExecution::kClient;
  spec.parameters = json{{"type", "object"}, {"properties", json::object()}};
  if (auto d = body->find("description"); d != body->end()) {
    if (!d->is_string())
      return Status::invalid_argument("tool " + tool_name + ": \"description\" must be a string");
    spec.description = d->get<std::string>();
  }
  if (auto p = body->find("parameters"); p != body->end() && !p->is_null()) spec.parameters = *p;
  if (auto s = body->find("strict"); s != body->end() && !s->is_null()) {
    if (!s->is_boolean())
      return Status::invalid_argument("tool " + tool_name + ": \"strict\" must be a boolean");
    spec.strict = s->get<bool>();
  }
  if (auto t = body->find("timeout_ms"); t != body->end()) {
    if (!t->is_number_integer() || t->get<int64_t>() <= 0) {
      return Status::invalid_argument("tool " + tool_name + ": \"timeout_ms\" must be a positive integer");
    }
    spec.timeout = std::chrono::milliseconds(t->get<int64_t>());
  }
  return spec;
}

Result<ToolRegistry> ToolRegistry::with_declared_tools(const json& declarations) const {
  if (!declarations.is_array()) return Status::invalid_argument("tools must be a JSON array");
  std::vector<ToolSpec> client_tools;
  for (const auto& declaration : declarations) {
    AS_ASSIGN_OR_RETURN(ToolSpec spec, parse_declaration(declaration));
    if (spec.execution == ToolExecution::kClient) client_tools.push_back(std::move(spec));
  }
  return with_client_tools(std::move(client_tools));
}

void ToolRegistry::execute(const ToolSpec& spec, json arguments, ToolContext context, ToolDone done) const {
  auto call = std::make_shared<ToolCall>();
  call->name = spec.name;
  call->context = std::move(context);
  call->done = std::move(done);
  call->max_result_bytes = spec.max_result_bytes;
  call->deadline = Clock::now() + spec.timeout;
  if (spec.execution != ToolExecution::kServer || !spec.run) {
    call->decided =
        ToolResult::error(StatusCode::kFailedPrecondition, "tool " + spec.name + " is not a server tool");
  } else if (Status s = validate_json(spec.parameters, arguments); !s.ok()) {
    call->decided = ToolResult::error(StatusCode::kInvalidArgument,
                                      "invalid arguments for tool " + spec.name + ": " + s.message());
  } else {
    call->run = spec.run;
    call->arguments = std::move(arguments);
  }
  if (call->decided) call->deadline = Clock::now();
  executor_->submit(std::move(call));
}

size_t ToolRegistry::pending_calls() const { return executor_->pending_calls(); }

void ToolRegistry::execute(std::string_view name, json arguments, ToolContext context, ToolDone done) const {
  if (const ToolSpec* spec = find(name)) {
    execute(*spec, std::move(arguments), std::move(context), std::move(done));
    return;
  }
  auto call = std::make_shared<ToolCall>();
  call->name = std::string(name);
  call->done = std::move(done);
  call->deadline = Clock::now();
  call->decided = ToolResult::error(StatusCode::kNotFound, "no tool named " + call->name);
  executor_->submit(std::move(call));
}

}  // namespace agentserve::tools
