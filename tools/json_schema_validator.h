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

#include <nlohmann/json.hpp>

#include "base/status.h"

namespace agentserve::tools {

inline constexpr int kMaxSchemaDepth = 32;        // nested schema objects
inline constexpr size_t kMaxSchemaNodes = 10000;  // schema objects in total, $defs included
inline constexpr int kMaxInstanceDepth = 64;      // nested arrays/objects in arguments
inline constexpr int kMaxRefExpansions = 64;      // $ref hops on one path (recursive schemas)

// OK when `schema` uses only the supported keywords with well-formed values, every $ref resolves, and
// every pattern compiles. InvalidArgument naming the schema path ("/properties/a/type") otherwise.
Status check_schema(const nlohmann::json& schema);

// OK when `instance` conforms to `schema` (which must pass check_schema). InvalidArgument otherwise, the
// message naming the instance's JSON pointer and what was expected: "/items/2: expected integer, got
// string". Stops at the first error.
Status validate_json(const nlohmann::json& schema, const nlohmann::json& instance);

}  // namespace agentserve::tools
