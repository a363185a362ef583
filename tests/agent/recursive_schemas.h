// Recursive schemas for the constrained-decoding tests and the token-mask bench: a tree whose node is an
// anyOf of a string, an array of nodes and an object of nodes, a 3-way one whose two object branches share
// their first key (so a prefix is read under both until a later key tells them apart), and deep values of
// each, spelled the way json.dumps writes them.
#pragma once

#include <string>

#include "nlohmann/json.hpp"

namespace agentserve::agent::testing {

inline nlohmann::ordered_json tree_schema() {
  return nlohmann::ordered_json::parse(R"({"$defs": {"node": {"anyOf": [
      {"type": "string"},
      {"type": "array", "items": {"$ref": "#/$defs/node"}},
      {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}]}},
    "$ref": "#/$defs/node"})");
}

inline nlohmann::ordered_json three_way_schema() {
  return nlohmann::ordered_json::parse(R"({"$defs": {"node": {"anyOf": [
      {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 3},
      {"type": "object", "properties": {"name": {"type": "string"}, "first": {"$ref": "#/$defs/node"},
                                        "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
       "required": ["name"], "additionalProperties": false},
      {"type": "object", "properties": {"name": {"type": "string"}, "first": {"$ref": "#/$defs/node"},
                                        "left": {"$ref": "#/$defs/node"}, "right": {"$ref": "#/$defs/node"}},
       "required": ["name"], "additionalProperties": false}]}},
    "$ref": "#/$defs/node"})");
}

// A value of tree_schema() nested `depth` levels: arrays and {"kids": [...]} objects in turn, strings at the
// leaves.
inline std::string deep_tree_text(int depth) {
  std::string text = "\"leaf\"";
  for (int d = 1; d <= depth; ++d) {
    std::string outer = d % 2 == 1 ? "[" : "{\"kids\": [";
    outer.append(text).append(d % 2 == 1 ? ", \"x\"]" : "]}");
    text.swap(outer);
  }
  return text;
}

// A value of three_way_schema() nested `depth` levels through "first", so every level's object is read under
// both object branches until its "kids" / "left" key.
inline std::string deep_three_way_text(int depth) {
  std::string text = "[]";
  for (int d = 1; d <= depth; ++d) {
    std::string outer = d % 3 == 0 ? "[" : d % 3 == 1 ? "{\"name\": \"n\", \"first\": " : "{\"name\": \"m\", \"first\": ";
    outer.append(text).append(d % 3 == 0 ? "]" : d % 3 == 1 ? ", \"kids\": [[]]}" : ", \"left\": [], \"right\": []}");
    text.swap(outer);
  }
  return text;
}

}  // namespace agentserve::agent::testing
