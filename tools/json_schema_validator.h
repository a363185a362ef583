// JSON Schema validation of tool arguments, for the subset OpenAI strict mode accepts: type (one or a
// list), object (properties, required, additionalProperties as a bool or a schema), array (items, minItems,
// maxItems), enum, const, string (minLength, maxLength in code points, pattern as an unanchored ECMAScript
// search), number and integer (minimum, maximum, exclusiveMinimum, exclusiveMaximum, multipleOf), boolean,
// null, anyOf, and $ref to "#/$defs/<name>" (or "#" for recursion). Annotations (description, title,
// default, examples, format, $schema, $id, $comment, strict) are accepted and ignored.
//
// check_schema() rejects every other keyword by name, so a schema this module cannot enforce is refused
// when a tool is declared, never silently half-checked. Depth and size are bounded both for schemas and
// instances; nothing here recurses without a limit or throws to the caller.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "base/status.h"

namespace agentserve::tools {

inline constexpr int kMaxSchemaDepth = 32;        // nested schema objects
inline constexpr size_t kMaxSchemaNodes = 10000;  // schema objects in total, $defs included
inline constexpr int kMaxInstanceDepth = 64;      // nested arrays/objects in arguments
inline constexpr int kMaxRefExpansions = 64;      // $ref hops on one path (recursive schemas)
// Work budget of one validation: anyOf over recursive references can branch exponentially.
inline constexpr size_t kMaxValidationSteps = 1000000;

// Keywords that describe and never constrain (description, title, default, examples, format, $schema, $id,
// $comment, strict): the validator and the decoding grammar both ignore them.
bool is_schema_annotation(std::string_view key);

// The one $ref rule, shared with the grammar that constrains decoding (agent/json_schema_grammar.h) so a
// schema one accepts the other can read: "#" (the root) or "#/$defs/<name>" / "#/definitions/<name>" of the
// root; nothing remote, no other pointer. A $ref's siblings may only be annotations (and $defs/definitions):
// a reference is the whole schema at its place. The schema `ref` names, or nullptr. Templated over the
// json flavour (the grammar keeps key order with ordered_json).
template <typename Json>
const Json* resolve_schema_ref(const Json& root, std::string_view ref) {
  if (ref == "#") return &root;
  for (std::string_view prefix : {std::string_view("#/$defs/"), std::string_view("#/definitions/")}) {
    if (ref.substr(0, prefix.size()) != prefix) continue;
    if (!root.is_object()) return nullptr;
    auto defs = root.find(std::string(prefix.substr(2, prefix.size() - 3)));
    if (defs == root.end() || !defs->is_object()) return nullptr;
    auto it = defs->find(std::string(ref.substr(prefix.size())));
    return it == defs->end() ? nullptr : &*it;
  }
  return nullptr;
}

// OK when `schema` uses only the supported keywords with well-formed values, every $ref resolves and stands
// alone, no $ref reaches itself through $refs and anyOf options only (left recursion), and every pattern
// compiles. InvalidArgument naming the schema path ("/properties/a/type") otherwise.
Status check_schema(const nlohmann::json& schema);

// OK when `instance` conforms to `schema` (which must pass check_schema). InvalidArgument otherwise, the
// message naming the instance's JSON pointer and what was expected: "/items/2: expected integer, got
// string". Stops at the first error.
Status validate_json(const nlohmann::json& schema, const nlohmann::json& instance);

}  // namespace agentserve::tools
