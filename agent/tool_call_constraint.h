// Constraints the engine applies while sampling (engine::TokenConstraint) for the agent's structured outputs:
// tool calls in Qwen3's form for tool_choice required / named and strict tools,
//   <tool_call>\n{"name": "<one of the tools>", "arguments": <that tool's parameters>}\n</tool_call>
// (several calls joined by "\n" when allowed) then end of sequence, and for response_format json_schema a
// JSON value of the schema then end of sequence. A CompiledConstraint holds the grammar and the mask cache
// and is shared by the requests that use the same tools or schema; start() gives each request its own
// matcher. The constraint starts at the first generated token: a prompt that wants reasoning first must
// close it in the prompt (the empty think block of enable_thinking=false). It never allows an end-of-sequence
// token before the text is whole, nor any token after it, except to end a request whose schema went over
// the parse budget (token_mask.h): then accept() of that EOS returns ResourceExhausted, which ends the
// request with that error.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "agent/json_schema_grammar.h"
#include "agent/token_mask.h"
#include "engine/request.h"
#include "nlohmann/json.hpp"

namespace agentserve::agent {

struct ToolSchema {
  std::string name;
  nlohmann::ordered_json parameters;  // a JSON Schema of the supported subset; an object for function tools
};

struct ToolCallConstraintOptions {
  // Empty: any of the tools (tool_choice required); else exactly this one (tool_choice {name}).
  std::string only_tool;
  int max_calls = 1;  // calls in one turn, at least 1
  // > 0: no string in the arguments is longer (characters), whatever the schema says. For models that
  // ramble (the random-weight demo model): every call then ends within a bounded number of tokens.
  int max_string_length = 0;
  JsonSchemaGrammarOptions schema;  // how the tools' parameter schemas compile
};

class CompiledConstraint : public std::enable_shared_from_this<CompiledConstraint> {
 public:
  static Result<std::shared_ptr<CompiledConstraint>> for_tool_calls(std::shared_ptr<const VocabularyIndex> index,
                                                                     std::span<const ToolSchema> tools,
                                                                     const ToolCallConstraintOptions& options,
                                                                     std::vector<int32_t> eos_ids);
  static Result<std::shared_ptr<CompiledConstraint>> for_json_schema(std::shared_ptr<const VocabularyIndex> index,
                                                                     const nlohmann::ordered_json& schema,
                                                                     std::vector<int32_t> eos_ids);
  static Result<std::shared_ptr<CompiledConstraint>> for_grammar(std::shared_ptr<const VocabularyIndex> index,
                                                                 Grammar grammar, std::vector<int32_t> eos_ids);

  // A fresh constraint for one request, at the start of the text.
  std::shared_ptr<engine::TokenConstraint> start();

  const std::shared_ptr<const Grammar>& grammar() const { return grammar_; }
  MaskBuilder& masks() { return masks_; }
  const std::vector<int32_t>& eos_ids() const { return eos_ids_; }

 private:
  CompiledConstraint(std::shared_ptr<const VocabularyIndex> index, Grammar grammar, std::vector<int32_t> eos_ids);

  std::shared_ptr<const Grammar> grammar_;
  MaskBuilder masks_;
  std::vector<int32_t> eos_ids_;
};

// One request's constraint: the grammar's text, then one of the EOS ids.
class GrammarConstraint : public engine::TokenConstraint {
 public:
  explicit GrammarConstraint(std::shared_ptr<CompiledConstraint> compiled);

  void fill_allowed(std::span<uint32_t> mask) override;
  Status accept(int32_t token) override;
  bool is_complete() const override { return complete_; }

  const GrammarMatcher& matcher() const { return matcher_; }

 private:
  std::shared_ptr<CompiledConstraint> compiled_;
  GrammarMatcher matcher_;
  bool complete_ = false;
  // Not OK once the matcher or a mask went over the parse budget (token_mask.h): the request then ends
  // with this error at its next token.
  Status failed_;
};

}  // namespace agentserve::agent
