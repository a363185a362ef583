// Test helpers for constrained decoding: random documents valid under a JSON schema of the supported subset
// and Python json.dumps-style text (", " and ": " separators, or compact). Checking a document against its
// schema is left to tools::validate_json, the validator real tool arguments go through, so the tests hold
// the grammar to the same rules rather than to a second, test-only reading of JSON Schema.
#pragma once

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace agentserve::agent::testing {

using json = nlohmann::ordered_json;

inline const json& resolve(const json& schema, const json& root) {
  if (schema.is_object() && schema.contains("$ref")) {
    const std::string ref = schema["$ref"].get<std::string>();
    const std::string defs = ref.rfind("#/$defs/", 0) == 0 ? "$defs" : "definitions";
    return resolve(root[defs][ref.substr(ref.find('/', 2) + 1)], root);
  }
  return schema;
}

inline std::string random_string(std::mt19937& rng) {
  static const std::vector<std::string> pieces = {"a", "Z", "0", " ", "\"", "\\", "/", "\n", "\t", "é", "日本",
                                                  "🙂", "{", "}", ",", ":", "</tool_call>", "\x01", "xyz"};
  std::string s;
  const int n = static_cast<int>(rng() % 6);
  for (int i = 0; i < n; ++i) s += pieces[rng() % pieces.size()];
  return s;
}

inline json random_instance(const json& schema_in, const json& root, std::mt19937& rng, int depth = 0) {
  const json& schema = resolve(schema_in, root);
  if (schema.contains("const")) return schema["const"];
  if (schema.contains("enum")) return schema["enum"][rng() % schema["enum"].size()];
  if (schema.contains("anyOf")) return random_instance(schema["anyOf"][rng() % schema["anyOf"].size()], root, rng, depth);
  std::string type;
  if (schema["type"].is_array()) {
    type = schema["type"][rng() % schema["type"].size()].get<std::string>();
  } else {
    type = schema["type"].get<std::string>();
  }
  if (type == "null") return nullptr;
  if (type == "boolean") return rng() % 2 == 0;
  if (type == "integer") return static_cast<int64_t>(rng() % 2001) - 1000;
  if (type == "number") {
    if (rng() % 3 == 0) return static_cast<int64_t>(rng() % 100);
    return (static_cast<double>(rng() % 20001) - 10000.0) / 8.0;
  }
  if (type == "string") return random_string(rng);
  if (type == "array") {
    const int lo = schema.value("minItems", 0);
    const int hi = std::min(schema.value("maxItems", lo + 3), lo + (depth > 3 ? 0 : 3));
    json out = json::array();
    const int n = lo + static_cast<int>(rng() % static_cast<unsigned>(hi - lo + 1));
    for (int i = 0; i < n; ++i) out.push_back(random_instance(schema["items"], root, rng, depth + 1));
    return out;
  }
  json out = json::object();
  const json required = schema.value("required", json::array());
  const json props = schema.value("properties", json::object());
  for (auto it = props.begin(); it != props.end(); ++it) {
    const bool req = std::find(required.begin(), required.end(), it.key()) != required.end();
    if (req || rng() % 2 == 0) out[it.key()] = random_instance(it.value(), root, rng, depth + 1);
  }
  return out;
}

// json.dumps(value) with the schema's key order for objects (what the grammar emits); `compact` uses "," ":".
inline std::string dumps(const json& value, const json& schema_in, const json& root, bool compact = false) {
  const json& schema = resolve(schema_in, root);
  const std::string comma = compact ? "," : ", ", colon = compact ? ":" : ": ";
  if (value.is_array()) {
    std::string s = "[";
    for (size_t i = 0; i < value.size(); ++i) {
      const json& items = schema.contains("items") ? schema["items"] : schema;
      s += (i ? comma : "") + dumps(value[i], items, root, compact);
    }
    return s + "]";
  }
  if (value.is_object()) {
    // anyOf / type lists: find the branch that describes objects.
    const json* obj = &schema;
    if (schema.contains("anyOf")) {
      for (const json& option : schema["anyOf"])
        if (resolve(option, root).contains("properties")) obj = &resolve(option, root);
    }
    std::string s = "{";
    bool first = true;
    for (auto it = (*obj)["properties"].begin(); it != (*obj)["properties"].end(); ++it) {
      if (!value.contains(it.key())) continue;
      s += (first ? "" : comma) + json(it.key()).dump() + colon + dumps(value[it.key()], it.value(), root, compact);
      first = false;
    }
    return s + "}";
  }
  return value.dump();
}

// Ten schemas of the kind tools declare, from flat to nested; the grammar and mask tests run them all.
inline std::vector<json> typical_tool_schemas() {
  return {
      json::parse(R"({"type": "object", "properties": {"location": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["location", "unit"], "additionalProperties": false})"),
      json::parse(R"({"type": "object", "properties": {"query": {"type": "string"}, "max_results": {"type": "integer"}}, "required": ["query"], "additionalProperties": false})"),
      json::parse(R"({"type": "object", "properties": {"key": {"type": "string"}, "value": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 4}}, "required": ["key", "value", "tags"], "additionalProperties": false})"),
      json::parse(R"({"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"], "additionalProperties": false})"),
      json::parse(R"({"type": "object", "properties": {}, "required": [], "additionalProperties": false})"),
      json::parse(R"({"type": "object", "properties": {"url": {"type": "string"}, "method": {"type": "string", "enum": ["GET", "POST"]}, "body": {"type": ["string", "null"]}, "timeout_s": {"type": "number"}}, "required": ["url", "method", "body", "timeout_s"], "additionalProperties": false})"),
      json::parse(R"({"type": "object", "properties": {"items": {"type": "array", "minItems": 1, "maxItems": 3, "items": {"type": "object", "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}, "gift": {"type": "boolean"}}, "required": ["sku", "qty", "gift"], "additionalProperties": false}}}, "required": ["items"], "additionalProperties": false})"),
      json::parse(R"({"type": "object", "properties": {"target": {"anyOf": [{"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"], "additionalProperties": false}, {"type": "integer"}]}, "mode": {"const": "fast"}}, "required": ["target", "mode"], "additionalProperties": false})"),
      json::parse(R"({"$defs": {"node": {"type": "object", "properties": {"name": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}}, "required": ["name", "children"], "additionalProperties": false}}, "type": "object", "properties": {"tree": {"$ref": "#/$defs/node"}}, "required": ["tree"], "additionalProperties": false})"),
      json::parse(R"({"type": "object", "properties": {"id": {"type": "integer"}, "score": {"type": "number"}, "flag": {"type": "boolean"}, "note": {"type": "null"}, "level": {"enum": [1, 2, "high", null]}}, "required": ["id", "score", "flag", "note", "level"], "additionalProperties": false})"),
  };
}

}  // namespace agentserve::agent::testing
