#include "tools/json_schema_validator.h"

#include <doctest/doctest.h>

#include <chrono>
#include <string>

namespace agentserve::tools {
namespace {

using json = nlohmann::json;

std::string error_of(const json& schema, const json& instance) {
  REQUIRE_MESSAGE(check_schema(schema).ok(), check_schema(schema).to_string());
  Status s = validate_json(schema, instance);
  return s.ok() ? std::string("OK") : s.message();
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

const json kOrder = json::parse(R"({
  "type": "object",
  "properties": {
    "id": {"type": "integer", "minimum": 1},
    "customer": {"type": "object",
                 "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 5},
                                "email": {"type": ["string", "null"], "pattern": "^[^@]+@[^@]+$"}},
                 "required": ["name", "email"], "additionalProperties": false},
    "items": {"type": "array", "minItems": 1, "maxItems": 3,
              "items": {"$ref": "#/$defs/item"}},
    "status": {"enum": ["new", "paid"]},
    "version": {"const": 2},
    "discount": {"anyOf": [{"type": "null"}, {"type": "number", "exclusiveMinimum": 0, "maximum": 0.5}]},
    "flag": {"type": "boolean", "description": "annotations are ignored", "default": false}
  },
  "required": ["id", "items"],
  "additionalProperties": false,
  "$defs": {"item": {"type": "object",
                     "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "multipleOf": 2}},
                     "required": ["sku", "qty"], "additionalProperties": false}}
})");

json valid_order() {
  return json::parse(R"({"id": 3, "customer": {"name": "Zoë", "email": "z@x.io"},
    "items": [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 4.0}], "status": "paid", "version": 2,
    "discount": 0.25, "flag": true})");
}

TEST_CASE("a valid instance of a nested schema with refs, enums and anyOf passes") {
  CHECK(error_of(kOrder, valid_order()) == "OK");
  json with_null = valid_order();
  with_null["customer"]["email"] = nullptr;
  with_null["discount"] = nullptr;
  CHECK(error_of(kOrder, with_null) == "OK");
}

TEST_CASE("each violation names the instance path and what was expected") {
  struct Case {
    const char* pointer;
    json value;
    const char* expected;
  };
  const Case cases[] = {
      {"/id", "3", "/id: expected integer, got string"},
      {"/id", 2.5, "/id: expected integer, got number"},
      {"/id", 0, "/id: expected a number >= 1"},
      {"/customer/name", "", "/customer/name: expected at least 1 characters"},
      {"/customer/name", "Zoëlla", "/customer/name: expected at most 5 characters, got 6"},
      {"/customer/email", "not-an-email", "/customer/email: expected a string matching"},
      {"/customer/email", 5, "/customer/email: expected string or null, got integer"},
      {"/items/1/qty", 3, "/items/1/qty: expected a multiple of 2"},
      {"/items/1/sku", true, "/items/1/sku: expected string, got boolean"},
      {"/status", "shipped", "/status: expected one of [\"new\",\"paid\"], got \"shipped\""},
      {"/version", 3, "/version: expected 2, got 3"},
      {"/discount", 0, "/discount: matches none of anyOf: [0] /discount: expected null, got integer; [1] "},
      {"/discount", 0.9, "expected a number <= 0.5"},
  };
  for (const auto& c : cases) {
    json instance = valid_order();
    instance[json::json_pointer(c.pointer)] = c.value;
    const std::string message = error_of(kOrder, instance);
    CHECK_MESSAGE(contains(message, c.expected), (std::string(c.pointer) + " -> " + message));
  }
}

TEST_CASE("objects: missing required, extra properties and array bounds are errors") {
  json missing = valid_order();
  missing.erase("items");
  CHECK(contains(error_of(kOrder, missing), "(root): missing required property \"items\""));
  json extra = valid_order();
  extra["customer"]["phone"] = "1";
  CHECK(contains(error_of(kOrder, extra), "/customer/phone: property is not allowed"));
  json empty_items = valid_order();
  empty_items["items"] = json::array();
  CHECK(contains(error_of(kOrder, empty_items), "/items: expected at least 1 items, got 0"));
  json many = valid_order();
  many["items"] = json::array({many["items"][0], many["items"][0], many["items"][0], many["items"][0]});
  CHECK(contains(error_of(kOrder, many), "/items: expected at most 3 items, got 4"));
  CHECK(contains(error_of(kOrder, json::array()), "(root): expected object, got array"));
}

TEST_CASE("additionalProperties as a schema validates the extra properties") {
  const json schema = {{"type", "object"}, {"additionalProperties", {{"type", "integer"}}}};
  CHECK(error_of(schema, {{"a", 1}, {"b", 2}}) == "OK");
  CHECK(contains(error_of(schema, {{"a", 1}, {"b", "x"}}), "/b: expected integer"));
}

TEST_CASE("keys with / and ~ are escaped in the JSON pointer") {
  const json schema = {{"type", "object"}, {"properties", {{"a/b~c", {{"type", "string"}}}}}};
  CHECK(contains(error_of(schema, {{"a/b~c", 1}}), "/a~1b~0c: expected string"));
}

TEST_CASE("a recursive schema validates a tree and stops at the depth limit") {
  const json tree = {
      {"type", "object"},
      {"properties",
       {{"value", {{"type", "integer"}}}, {"children", {{"type", "array"}, {"items", {{"$ref", "#"}}}}}}},
      {"required", {"value"}}};
  json ok = {{"value", 1}, {"children", {{{"value", 2}}, {{"value", 3}, {"children", {{{"value", 4}}}}}}}};
  CHECK(error_of(tree, ok) == "OK");
  json bad = ok;
  bad["children"][1]["children"][0]["value"] = "four";
  CHECK(contains(error_of(tree, bad), "/children/1/children/0/value: expected integer"));

  json deep = {{"value", 0}};
  for (int i = 0; i < 200; ++i) deep = {{"value", i}, {"children", json::array({deep})}};
  CHECK(contains(error_of(tree, deep), "nested deeper than"));
}

TEST_CASE("self-referencing and exponentially branching schemas end with an error, not a hang") {
  // check_schema refuses both (left recursion); validate_json must still end on them if called anyway.
  const json loop = {{"$defs", {{"a", {{"$ref", "#/$defs/a"}}}}}, {"$ref", "#/$defs/a"}};
  CHECK(contains(validate_json(loop, 1).message(), "nest too deeply"));
  const json branching = {{"anyOf", json::array({{{"$ref", "#"}}, {{"$ref", "#"}}, {{"type", "string"}}})}};
  const auto start = std::chrono::steady_clock::now();
  Status s = validate_json(branching, 5);
  CHECK_FALSE(s.ok());
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(10));
}

TEST_CASE("check_schema refuses left recursion by path and cycle, and accepts recursion under a value") {
  struct Case {
    json schema;
    const char* path;
    const char* cycle;
  };
  const Case cases[] = {
      {{{"$defs", {{"a", {{"$ref", "#/$defs/a"}}}}}, {"$ref", "#/$defs/a"}}, "schema /$defs/a/$ref:",
       "#/$defs/a -> #/$defs/a"},
      {{{"anyOf", json::array({{{"$ref", "#"}}, {{"$ref", "#"}}, {{"type", "string"}}})}}, "schema /anyOf/0/$ref:",
       "#"},
      {json::parse(R"({"$defs": {"a": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/b"}]},
                                 "b": {"anyOf": [{"$ref": "#/$defs/a"}, {"type": "integer"}]}},
                       "type": "object", "properties": {"x": {"$ref": "#/$defs/a"}}})"),
       "schema /$defs/b/anyOf/0/$ref:", "#/$defs/a -> #/$defs/b -> #/$defs/a"},
  };
  for (const auto& c : cases) {
    const std::string message = check_schema(c.schema).message();
    CHECK_MESSAGE(contains(message, c.path), message);
    CHECK_MESSAGE(contains(message, "left recursion"), message);
    CHECK_MESSAGE(contains(message, c.cycle), message);
  }
  // A value (here an array's items or a property) consumes a character before the reference comes back.
  CHECK(check_schema(json::parse(R"({"$defs": {"n": {"anyOf": [{"type": "string"},
      {"type": "array", "items": {"$ref": "#/$defs/n"}},
      {"type": "object", "properties": {"kids": {"$ref": "#/$defs/n"}}}]}}, "$ref": "#/$defs/n"})"))
            .ok());
  CHECK(check_schema(json::parse(R"({"type": "object", "properties": {"next": {"$ref": "#"}}})")).ok());
  // Two references to one definition are not a cycle.
  CHECK(check_schema(json::parse(R"({"$defs": {"s": {"type": "string"}},
      "anyOf": [{"$ref": "#/$defs/s"}, {"$ref": "#/$defs/s"}]})"))
            .ok());
}

TEST_CASE("a $ref stands alone: a constraining keyword beside it is refused, annotations are not") {
  const json defs = {{"s", {{"type", "string"}}}};
  const std::string message =
      check_schema({{"$defs", defs}, {"type", "object"},
                    {"properties", {{"a", {{"$ref", "#/$defs/s"}, {"maxLength", 3}}}}}})
          .message();
  CHECK_MESSAGE(contains(message, "schema /properties/a/maxLength: a $ref stands alone"), message);
  CHECK(check_schema({{"$defs", defs},
                      {"type", "object"},
                      {"properties", {{"a", {{"$ref", "#/$defs/s"}, {"description", "d"}, {"title", "t"}}}}}})
            .ok());
  CHECK(check_schema({{"$defs", defs}, {"$ref", "#/$defs/s"}}).ok());  // the root's $defs beside its $ref
}

TEST_CASE("a long string is refused by a pattern rather than risking the stack") {
  const json schema = {{"type", "string"}, {"pattern", "^a*$"}};
  CHECK(error_of(schema, std::string(1000, 'a')) == "OK");
  CHECK(contains(error_of(schema, std::string(5000, 'a')), "too long to match a pattern"));
}

TEST_CASE("check_schema rejects unsupported keywords and malformed values by schema path") {
  struct Case {
    json schema;
    const char* expected;
  };
  const Case cases[] = {
      {{{"type", "object"}, {"properties", {{"a", {{"oneOf", json::array({json::object()})}}}}}},
       "schema /properties/a/oneOf: unsupported keyword 'oneOf'"},
      {{{"type", "objekt"}}, "schema /type: unknown type"},
      {{{"type", json::array()}}, "schema /type"},
      {{{"$ref", "#/$defs/missing"}}, "unresolved reference"},
      {{{"$ref", "http://example.com/s.json"}}, "unresolved reference"},
      {{{"pattern", "([a-z"}}, "pattern does not compile"},
      {{{"items", json::array({json::object()})}}, "tuple-form items"},
      {{{"minItems", -1}}, "/minItems: expected a non-negative integer"},
      {{{"maximum", "10"}}, "/maximum: expected a number"},
      {{{"multipleOf", 0}}, "/multipleOf: expected a positive number"},
      {{{"enum", json::array()}}, "/enum: expected a non-empty array"},
      {{{"required", {1}}}, "/required"},
      {{{"anyOf", json::object()}}, "/anyOf"},
      {json(3), "a schema must be an object or a boolean"},
      {{{"not", json::object()}}, "unsupported keyword 'not'"},
  };
  for (const auto& c : cases) {
    Status s = check_schema(c.schema);
    CHECK_MESSAGE(contains(s.message(), c.expected), c.schema.dump(), " -> ", s.message());
  }
  CHECK(check_schema(kOrder).ok());
  CHECK(check_schema(json::object()).ok());
}

TEST_CASE("check_schema bounds depth and size") {
  json deep = {{"type", "string"}};
  for (int i = 0; i < 40; ++i) deep = {{"type", "array"}, {"items", deep}};
  CHECK(contains(check_schema(deep).message(), "nested deeper than"));
  json wide = {{"type", "object"}, {"properties", json::object()}};
  for (int i = 0; i < 10001; ++i) wide["properties"][std::to_string(i)] = {{"type", "string"}};
  CHECK(contains(check_schema(wide).message(), "more than 10000 schemas"));
}

TEST_CASE("integers: 2.0 is an integer, 2.5 is not, and unsigned values compare right") {
  const json schema = {{"type", "integer"}, {"minimum", 0}, {"maximum", 1e20}};
  CHECK(error_of(schema, 2.0) == "OK");
  CHECK(contains(error_of(schema, 2.5), "expected integer, got number"));
  CHECK(error_of(schema, json(uint64_t{18000000000000000000ull})) == "OK");
  CHECK(contains(error_of(schema, -1), "expected a number >= 0"));
  CHECK(error_of({{"type", "number"}}, 7) == "OK");
  CHECK(contains(error_of({{"type", "null"}}, false), "expected null, got boolean"));
  CHECK(contains(error_of(json(false), 1), "no value is allowed here"));
  CHECK(error_of(json(true), json::array()) == "OK");
}

}  // namespace
}  // namespace agentserve::tools
