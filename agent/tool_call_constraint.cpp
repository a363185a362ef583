#include "agent/tool_call_constraint.h"

#include <algorithm>

namespace agentserve::agent {
namespace {

bool is_eos(const std::vector<int32_t>& eos_ids, int32_t token) {
  return std::find(eos_ids.begin(), eos_ids.end(), token) != eos_ids.end();
}

void set_bit(std::span<uint32_t> mask, int32_t id) {
  if (id >= 0 && static_cast<size_t>(id) / 32 < mask.size()) mask[static_cast<size_t>(id) / 32] |= 1u << (id % 32);
}

}  // namespace

CompiledConstraint::CompiledConstraint(std::shared_ptr<const VocabularyIndex> index, Grammar grammar,
                                       std::vector<int32_t> eos_ids)
    : grammar_(std::make_shared<const Grammar>(std::move(grammar))),
      masks_(std::move(index)),
      eos_ids_(std::move(eos_ids)) {}

Result<std::shared_ptr<CompiledConstraint>> CompiledConstraint::for_grammar(
    std::shared_ptr<const VocabularyIndex> index, Grammar grammar, std::vector<int32_t> eos_ids) {
  if (!index) return Status::invalid_argument("constraint needs a vocabulary index");
  if (eos_ids.empty()) return Status::invalid_argument("constraint needs at least one end-of-sequence id");
  if (grammar.root < 0 || static_cast<size_t>(grammar.root) >= grammar.nodes.size())
    return Status::invalid_argument("grammar has no root");
  if (grammar.first_bytes.size() != grammar.nodes.size()) index_first_bytes(grammar);  // compile_* did it
  return std::shared_ptr<CompiledConstraint>(
      new CompiledConstraint(std::move(index), std::move(grammar), std::move(eos_ids)));
}

Result<std::shared_ptr<CompiledConstraint>> CompiledConstraint::for_json_schema(
    std::shared_ptr<const VocabularyIndex> index, const nlohmann::ordered_json& schema, std::vector<int32_t> eos_ids) {
  AS_ASSIGN_OR_RETURN(Grammar grammar, compile_json_schema(schema));
  return for_grammar(std::move(index), std::move(grammar), std::move(eos_ids));
}

Result<std::shared_ptr<CompiledConstraint>> CompiledConstraint::for_tool_calls(
    std::shared_ptr<const VocabularyIndex> index, std::span<const ToolSchema> tools,
    const ToolCallConstraintOptions& options, std::vector<int32_t> eos_ids) {
  if (options.max_calls < 1) return Status::invalid_argument("max_calls must be at least 1");
  Grammar g;
  GrammarNode calls;
  calls.kind = GrammarNodeKind::kAnyOf;
  for (const ToolSchema& tool : tools) {
    if (!options.only_tool.empty() && tool.name != options.only_tool) continue;
    auto arguments = add_json_schema(g, tool.parameters, options.schema);
    if (!arguments.ok()) {
      return Status::invalid_argument("tool \"" + tool.name + "\" parameters: " + arguments.status().message());
    }
    // The call object as the chat template writes it: name first, then arguments.
    GrammarNode call;
    call.kind = GrammarNodeKind::kObject;
    const auto quoted = [](const std::string& s) {
      return nlohmann::ordered_json(s).dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
    };
    call.properties.push_back({.key = "\"name\"", .value = g.add_literal(quoted(tool.name)), .required = true});
    call.properties.push_back({.key = "\"arguments\"", .value = *arguments, .required = true});
    calls.children.push_back(g.add(std::move(call)));
  }
  if (calls.children.empty()) {
    return Status::invalid_argument(options.only_tool.empty() ? "no tools to call"
                                                              : "no tool named \"" + options.only_tool + "\"");
  }
  if (options.max_string_length > 0) {
    for (GrammarNode& n : g.nodes) n.max_length = std::min(n.max_length, options.max_string_length);
  }
  GrammarNode block;
  block.kind = GrammarNodeKind::kSequence;
  const int open = g.add_literal("<tool_call>\n", true);
  const int body = g.add(std::move(calls));
  const int close = g.add_literal("\n</tool_call>", true);
  block.children = {open, body, close};
  GrammarNode repeat;
  repeat.kind = GrammarNodeKind::kRepeat;
  repeat.min_items = 1;
  repeat.max_items = options.max_calls;
  repeat.children = {g.add(std::move(block)), g.add_literal("\n")};
  g.root = g.add(std::move(repeat));
  return for_grammar(std::move(index), std::move(g), std::move(eos_ids));
}

std::shared_ptr<engine::TokenConstraint> CompiledConstraint::start() {
  return std::make_shared<GrammarConstraint>(shared_from_this());
}

GrammarConstraint::GrammarConstraint(std::shared_ptr<CompiledConstraint> compiled)
    : compiled_(std::move(compiled)), matcher_(compiled_->grammar()) {}

void GrammarConstraint::fill_allowed(std::span<uint32_t> mask) {
  if (complete_) {
    std::fill(mask.begin(), mask.end(), 0u);
    return;
  }
  if (failed_.ok()) failed_ = compiled_->masks().fill(matcher_, mask);
  if (!failed_.ok()) {
    // Over the parse budget: the engine ends a request only when accept() fails (an empty mask would end it
    // with a message that does not say why), so only end of sequence is allowed, and accept() answers it
    // with the reason.
    std::fill(mask.begin(), mask.end(), 0u);
    for (int32_t id : compiled_->eos_ids()) set_bit(mask, id);
    return;
  }
  for (const VocabularyIndex::Added& added : compiled_->masks().index().added()) {
    if (!is_eos(compiled_->eos_ids(), added.id) && matcher_.added_token_allowed(added.content))
      set_bit(mask, added.id);
  }
  if (matcher_.can_end()) {
    for (int32_t id : compiled_->eos_ids()) set_bit(mask, id);
  }
}

Status GrammarConstraint::accept(int32_t token) {
  if (complete_) return Status::failed_precondition("constrained text is complete; no token may follow");
  if (!failed_.ok()) return failed_;
  if (is_eos(compiled_->eos_ids(), token)) {
    if (!matcher_.can_end())
      return Status::invalid_argument("end of sequence before the constrained text is complete");
    complete_ = true;
    return {};
  }
  const std::string_view bytes = compiled_->masks().index().bytes_of(token);
  const bool added = std::any_of(compiled_->masks().index().added().begin(),
                                 compiled_->masks().index().added().end(),
                                 [&](const VocabularyIndex::Added& a) { return a.id == token; });
  if (bytes.empty() || (added && !matcher_.added_token_allowed(bytes)) || !matcher_.advance(bytes)) {
    if (matcher_.exhausted()) return failed_ = parse_budget_exhausted();
    return Status::invalid_argument("token " + std::to_string(token) + " does not fit the constraint here");
  }
  return {};
}

}  // namespace agentserve::agent
