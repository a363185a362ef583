// JSON Schema -> grammar: compiles the schema subset OpenAI's strict mode accepts into a small tree of
// grammar nodes that the byte-level matcher (agent/token_mask.h) walks. The grammar describes the exact
// text a model is expected to emit, the way Python's json.dumps writes it: ", " and ": " separators
// (the compact "," and ":" are tolerated), no other whitespace, non-ASCII left unescaped (escapes accepted).
// It must never accept a document that does not parse as JSON or does not validate against the schema, and
// never crash on a schema from a user: anything outside the subset is InvalidArgument naming the keyword and
// its JSON-pointer path.
//
// Supported: type (one or a list, e.g. ["string", "null"]), object (properties, required,
// additionalProperties of any value or absent: no other keys are ever produced), array (items, minItems,
// maxItems), enum and const of scalars, string (maxLength), number, integer, boolean, null, anyOf, $ref to "#",
// "#/$defs/.." or "#/definitions/.." (resolved by tools::resolve_schema_ref, the validator's own resolver; a
// $ref stands alone, and one that reaches itself before any character, left recursion, is refused with its
// cycle: both also refused by tools::check_schema), and annotations (description, title, default, examples,
// strict, $schema) ignored.
// Key order: properties are emitted in the schema's order; a property not listed in required may be left
// out. Numbers and integers are capped in length (see kMaxIntegerDigits) so a model cannot loop in one.
#pragma once

#include <array>
#include <climits>
#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"
#include "nlohmann/json.hpp"

namespace agentserve::agent {

enum class GrammarNodeKind : uint8_t {
  kLiteral,   // exactly `literal`
  kString,    // a JSON string
  kNumber,    // a JSON number
  kInteger,   // a JSON number without fraction or exponent
  kObject,    // '{' properties in order '}'
  kArray,     // '[' item (", " item)* ']'
  kAnyOf,     // one of `children`
  kSequence,  // `children` one after the other
  kRepeat,    // children[0], then (children[1] children[0]) up to max_items times in all
};

struct GrammarProperty {
  std::string key;  // the key as emitted, quotes included: "\"name\""
  int value = -1;   // node index
  bool required = true;
};

struct GrammarNode {
  GrammarNodeKind kind = GrammarNodeKind::kLiteral;
  std::string literal;                     // kLiteral
  bool added_tokens = false;               // kLiteral: a tokenizer's added tokens (<tool_call>) may spell it
  std::vector<GrammarProperty> properties;  // kObject
  std::vector<int> children;               // kAnyOf, kSequence, kRepeat; kArray: {items}
  int min_items = 0;                       // kArray, kRepeat
  int max_items = INT_MAX;                 // kArray, kRepeat
  int max_length = INT_MAX;                // kString: characters (code points; an escape counts as one)
};

inline constexpr int kMaxIntegerDigits = 16;   // digits before the point
inline constexpr int kMaxFractionDigits = 16;  // digits after it
inline constexpr int kMaxExponentDigits = 2;  // so a number always fits a double (parsers refuse 1e618)

struct Grammar {
  std::vector<GrammarNode> nodes;
  int root = -1;
  // Per node, the bytes its text may start with (a 256-bit set), so the matcher forks only into the anyOf
  // options that can take the next byte rather than copying its stack into every option and dropping most.
  // Filled by index_first_bytes(); valid only while its size equals nodes.size() (the matcher then forks
  // into every option, which is slower, never wrong).
  std::vector<std::array<uint64_t, 4>> first_bytes;

  bool may_start_with(int node, uint8_t byte) const {
    return first_bytes.size() != nodes.size() ||
           (first_bytes[static_cast<size_t>(node)][byte / 64] >> (byte % 64) & 1u) != 0;
  }

  int add(GrammarNode node) {
    nodes.push_back(std::move(node));
    return static_cast<int>(nodes.size()) - 1;
  }
  int add_literal(std::string text, bool added_tokens = false) {
    GrammarNode n;
    n.literal = std::move(text);
    n.added_tokens = added_tokens;
    return add(std::move(n));
  }
};

struct JsonSchemaGrammarOptions {
  // Keywords that only narrow values the grammar already produces (minLength, minimum, maximum, the
  // exclusive bounds, multipleOf, pattern, format) are skipped instead of refused. For callers that
  // validate the finished document against the full schema anyway (tool calls: the ToolRegistry).
  bool skip_unenforced_keywords = false;
};

// Computes grammar.first_bytes for the nodes as they are now. compile_json_schema and the constraints
// (agent/tool_call_constraint.h) call it once the grammar is whole.
void index_first_bytes(Grammar& grammar);

// Adds the nodes for `schema` to `grammar` and returns the index of its root (the grammar's root is left
// as it was, so several schemas can share one grammar).
Result<int> add_json_schema(Grammar& grammar, const nlohmann::ordered_json& schema,
                            const JsonSchemaGrammarOptions& options = {});

// A grammar whose root is `schema`.
Result<Grammar> compile_json_schema(const nlohmann::ordered_json& schema,
                                    const JsonSchemaGrammarOptions& options = {});

}  // namespace agentserve::agent
