#include "agent/json_schema_grammar.h"

#include <doctest/doctest.h>

#include <random>

#include "agent/token_mask.h"
#include "tests/agent/schema_instances.h"
#include "tools/json_schema_validator.h"

namespace agentserve::agent {
namespace {

using testing::dumps;
using testing::json;
using testing::random_instance;
using testing::typical_tool_schemas;

std::shared_ptr<const Grammar> compile(const json& schema) {
  auto g = compile_json_schema(schema);
  REQUIRE_MESSAGE(g.ok(), g.status().to_string());
  return std::make_shared<const Grammar>(std::move(*g));
}

// Whole document accepted: every byte taken and the end reached.
bool accepts_document(const std::shared_ptr<const Grammar>& g, const std::string& text) {
  GrammarMatcher m(g);
  return m.advance(text) && m.can_end();
}

TEST_CASE("random valid instances of typical tool schemas are accepted, in json.dumps and compact form") {
  std::mt19937 rng(1);
  for (const json& schema : typical_tool_schemas()) {
    const Status checked = tools::check_schema(schema);
    REQUIRE_MESSAGE(checked.ok(), checked.to_string());
    auto g = compile(schema);
    for (int i = 0; i < 60; ++i) {
      const json value = random_instance(schema, schema, rng);
      const Status valid = tools::validate_json(schema, value);
      REQUIRE_MESSAGE(valid.ok(), (value.dump() + ": " + valid.to_string()));
      const std::string text = dumps(value, schema, schema);
      CHECK_MESSAGE(accepts_document(g, text), text);
      CHECK_MESSAGE(accepts_document(g, dumps(value, schema, schema, true)), text);
    }
  }
}

TEST_CASE("no proper prefix of a document is whole, and a byte too many is refused") {
  std::mt19937 rng(2);
  for (const json& schema : typical_tool_schemas()) {
    auto g = compile(schema);
    const std::string text = dumps(random_instance(schema, schema, rng), schema, schema);
    GrammarMatcher m(g);
    for (size_t i = 0; i < text.size(); ++i) {
      CHECK_FALSE(m.can_end());
      REQUIRE(m.advance(text.substr(i, 1)));
    }
    CHECK(m.can_end());
    for (const char* extra : {"}", " ", ",", "0", "\""}) CHECK_FALSE(m.accepts(extra));
  }
}

// Byte-level mutations: whatever the grammar accepts as a whole document must parse and validate.
TEST_CASE("mutated documents are accepted only when they still parse and validate") {
  std::mt19937 rng(3);
  const std::string alphabet = "{}[]\",: 0123456789.-eEtrufalsn\\abc";
  int rejected = 0;
  for (const json& schema : typical_tool_schemas()) {
    auto g = compile(schema);
    for (int i = 0; i < 150; ++i) {
      std::string text = dumps(random_instance(schema, schema, rng), schema, schema);
      const size_t at = rng() % text.size();
      switch (rng() % 3) {
        case 0:
          text.erase(at, 1);
          break;
        case 1:
          text.insert(at, 1, alphabet[rng() % alphabet.size()]);
          break;
        default:
          text[at] = alphabet[rng() % alphabet.size()];
      }
      if (accepts_document(g, text)) {
        const json parsed = json::parse(text, nullptr, false);
        REQUIRE_MESSAGE(!parsed.is_discarded(), text);
        const Status valid = tools::validate_json(schema, parsed);
        CHECK_MESSAGE(valid.ok(), (text + ": " + valid.to_string()));
      } else {
        ++rejected;
      }
    }
  }
  CHECK(rejected > 1000);
}

TEST_CASE("semantically invalid documents are refused") {
  const json weather = typical_tool_schemas()[0];
  auto g = compile(weather);
  CHECK(accepts_document(g, R"({"location": "Paris", "unit": "celsius"})"));
  CHECK_FALSE(accepts_document(g, R"({"location": "Paris"})"));                             // missing required
  CHECK_FALSE(accepts_document(g, R"({"location": "Paris", "unit": "kelvin"})"));           // not in enum
  CHECK_FALSE(accepts_document(g, R"({"location": 3, "unit": "celsius"})"));                // wrong type
  CHECK_FALSE(accepts_document(g, R"({"location": "P", "unit": "celsius", "x": 1})"));      // extra key
  CHECK_FALSE(accepts_document(g, R"({"unit": "celsius", "location": "Paris"})"));          // key order
  CHECK_FALSE(accepts_document(g, "{\"location\": \"a\x01\", \"unit\": \"celsius\"}"));     // control char
  CHECK_FALSE(accepts_document(g, "{\"location\": \"\\ud800\", \"unit\": \"celsius\"}"));   // lone surrogate
  CHECK_FALSE(accepts_document(g, "{\"location\": \"\xC3\", \"unit\": \"celsius\"}"));      // broken UTF-8
  CHECK(accepts_document(g, "{\"location\": \"\\u00e9\xE6\x97\xA5\", \"unit\": \"celsius\"}"));
  // The schema-level refusals are the tools validator's too; key order is the grammar's own rule.
  for (const char* bad : {R"({"location": "Paris"})", R"({"location": "Paris", "unit": "kelvin"})",
                          R"({"location": 3, "unit": "celsius"})",
                          R"({"location": "P", "unit": "celsius", "x": 1})"})
    CHECK_FALSE_MESSAGE(tools::validate_json(weather, json::parse(bad)).ok(), bad);
  CHECK(tools::validate_json(weather, json::parse(R"({"unit": "celsius", "location": "Paris"})")).ok());

  auto numbers = compile(typical_tool_schemas()[9]);
  const auto doc = [](const std::string& id, const std::string& score) {
    return R"({"id": )" + id + R"(, "score": )" + score + R"(, "flag": true, "note": null, "level": "high"})";
  };
  CHECK(accepts_document(numbers, doc("-12", "1.5e+3")));
  CHECK(accepts_document(numbers, doc("0", "-0.25")));
  CHECK_FALSE(accepts_document(numbers, doc("1.5", "1")));   // integer with a fraction
  CHECK_FALSE(tools::validate_json(typical_tool_schemas()[9], json::parse(doc("1.5", "1"))).ok());
  CHECK_FALSE(accepts_document(numbers, doc("01", "1")));    // leading zero
  CHECK_FALSE(accepts_document(numbers, doc("1", "1.")));    // point without digits
  CHECK_FALSE(accepts_document(numbers, doc("1", "1e")));    // exponent without digits
  CHECK_FALSE(accepts_document(numbers, doc(std::string(kMaxIntegerDigits + 1, '7'), "1")));
}

TEST_CASE("maxLength counts characters: escapes and multi-byte characters are one each") {
  auto g = compile(json::parse(R"({"type": "string", "maxLength": 3})"));
  CHECK(accepts_document(g, R"("abc")"));
  CHECK(accepts_document(g, "\"\\n\xE6\x97\xA5\\u00e9\""));
  CHECK_FALSE(accepts_document(g, R"("abcd")"));
  CHECK(accepts_document(g, R"("")"));
}

TEST_CASE("unsupported keywords and bad schemas are InvalidArgument naming the keyword and path") {
  const auto error_of = [](const std::string& text) {
    auto g = compile_json_schema(json::parse(text));
    REQUIRE_FALSE(g.ok());
    CHECK(g.status().code() == StatusCode::kInvalidArgument);
    return g.status().message();
  };
  const std::string pattern = error_of(
      R"({"type": "object", "properties": {"a": {"type": "string", "pattern": "x+"}}, "required": ["a"]})");
  CHECK(pattern.find("pattern") != std::string::npos);
  CHECK(pattern.find("#/properties/a") != std::string::npos);
  CHECK(error_of(R"({"type": "object", "additionalProperties": 3})").find("additionalProperties") !=
        std::string::npos);
  CHECK(error_of(R"({"type": "object", "properties": {}, "required": ["ghost"]})").find("ghost") !=
        std::string::npos);
  CHECK(error_of(R"({"type": "array"})").find("items") != std::string::npos);
  CHECK(error_of(R"({"$ref": "#/$defs/missing"})").find("missing") != std::string::npos);
  CHECK(error_of(R"({"type": "tuple"})").find("tuple") != std::string::npos);
  CHECK(error_of(R"({"enum": [{"a": 1}]})").find("enum") != std::string::npos);
  CHECK(error_of(R"({"oneOf": [{"type": "string"}]})").find("oneOf") != std::string::npos);
  CHECK(error_of(R"([1, 2])").find("#") != std::string::npos);
}

TEST_CASE("skip_unenforced_keywords compiles value bounds away but keeps the shape and what it can enforce") {
  const json schema = json::parse(R"({"type": "object", "properties": {
      "name": {"type": "string", "minLength": 2, "maxLength": 4, "pattern": "^[a-z]+$"},
      "count": {"type": "integer", "minimum": 1, "maximum": 9},
      "tags": {"type": "array", "items": {"type": "string", "format": "email"}, "maxItems": 1}},
    "required": ["name", "count", "tags"], "additionalProperties": false})");
  CHECK_FALSE(compile_json_schema(schema).ok());
  auto compiled = compile_json_schema(schema, {.skip_unenforced_keywords = true});
  REQUIRE_MESSAGE(compiled.ok(), compiled.status().to_string());
  const auto g = std::make_shared<const Grammar>(std::move(*compiled));
  CHECK(accepts_document(g, R"({"name": "a", "count": 42, "tags": ["x"]})"));  // bounds left to validation
  CHECK_FALSE(accepts_document(g, R"({"name": "abcde", "count": 1, "tags": []})"));        // maxLength kept
  CHECK_FALSE(accepts_document(g, R"({"name": "ab", "count": 1, "tags": ["x", "y"]})"));   // maxItems kept
  CHECK_FALSE(accepts_document(g, R"({"name": "ab", "count": "1", "tags": []})"));         // types kept
  CHECK_FALSE(compile_json_schema(json::parse(R"({"oneOf": [{"type": "string"}]})"),
                                  {.skip_unenforced_keywords = true})
                  .ok());
}

TEST_CASE("a $ref to \"#\" names the root, as the tools validator reads it") {
  const json tree = json::parse(R"({"type": "object", "properties": {"value": {"type": "integer"},
      "children": {"type": "array", "items": {"$ref": "#"}}}, "required": ["value"], "additionalProperties": false})");
  REQUIRE(tools::check_schema(nlohmann::json::parse(tree.dump())).ok());
  auto g = compile(tree);
  for (const char* doc : {R"({"value": 1, "children": [{"value": 2}, {"value": 3, "children": []}]})",
                          R"({"value": 1, "children": [{"children": []}]})", R"({"value": 1, "children": [3]})"}) {
    const bool valid = tools::validate_json(nlohmann::json::parse(tree.dump()), nlohmann::json::parse(doc)).ok();
    CHECK_MESSAGE(accepts_document(g, doc) == valid, doc);
  }
  CHECK(accepts_document(g, R"({"value": 1, "children": [{"value": 2}, {"value": 3, "children": []}]})"));
}

TEST_CASE("left recursion is refused at compile time, naming the $ref's path and the cycle, as check_schema does") {
  struct Case {
    const char* schema;
    const char* path;
    const char* cycle;
  };
  const Case cases[] = {
      {R"({"$defs": {"a": {"anyOf": [{"$ref": "#/$defs/a"}, {"type": "string"}]}}, "$ref": "#/$defs/a"})",
       "at #/$defs/a/anyOf/0", "#/$defs/a -> #/$defs/a"},
      {R"({"anyOf": [{"type": "string"}, {"$ref": "#"}]})", "at #/anyOf/1", "# -> #"},
      {R"({"type": "object", "properties": {"x": {"$ref": "#/$defs/a"}}, "$defs": {
          "a": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/b"}]},
          "b": {"anyOf": [{"$ref": "#/$defs/a"}, {"type": "integer"}]}}})",
       "at #/$defs/b/anyOf/0", "#/$defs/a -> #/$defs/b -> #/$defs/a"},
  };
  for (const Case& c : cases) {
    auto g = compile_json_schema(json::parse(c.schema));
    REQUIRE_FALSE(g.ok());
    const std::string message = g.status().message();
    CHECK_MESSAGE(message.find("left recursion") != std::string::npos, message);
    CHECK_MESSAGE(message.find(c.path) != std::string::npos, message);
    CHECK_MESSAGE(message.find(c.cycle) != std::string::npos, message);
    const Status checked = tools::check_schema(nlohmann::json::parse(c.schema));
    CHECK_MESSAGE(checked.message().find("left recursion") != std::string::npos, checked.to_string());
  }
  // Recursion under a value (an array's items, a property) consumes a character first: accepted by both.
  for (const json& ok : {testing::typical_tool_schemas()[8],
                         json::parse(R"({"$defs": {"s": {"type": "string"}},
                                         "anyOf": [{"$ref": "#/$defs/s"}, {"$ref": "#/$defs/s"}]})")}) {
    CHECK(compile_json_schema(ok).ok());
    CHECK(tools::check_schema(nlohmann::json::parse(ok.dump())).ok());
  }
}

TEST_CASE("a keyword beside $ref is refused by the grammar and check_schema alike; annotations are not") {
  const json narrowed = json::parse(R"({"$defs": {"s": {"type": "string"}}, "type": "object",
      "properties": {"a": {"$ref": "#/$defs/s", "maxLength": 3}}, "required": ["a"], "additionalProperties": false})");
  for (bool skip : {false, true}) {
    auto g = compile_json_schema(narrowed, {.skip_unenforced_keywords = skip});
    REQUIRE_FALSE(g.ok());
    CHECK(g.status().message().find("\"maxLength\" beside $ref at #/properties/a") != std::string::npos);
  }
  CHECK(tools::check_schema(nlohmann::json::parse(narrowed.dump())).message().find("$ref stands alone") !=
        std::string::npos);
  json annotated = narrowed;
  annotated["properties"]["a"].erase("maxLength");
  annotated["properties"]["a"]["description"] = "a name";
  annotated["properties"]["a"]["format"] = "hostname";  // an annotation to both, not a constraint
  CHECK(compile_json_schema(annotated).ok());
  CHECK(tools::check_schema(nlohmann::json::parse(annotated.dump())).ok());
}

TEST_CASE("additionalProperties true or a schema compiles, as check_schema accepts it: only listed keys are produced") {
  for (const char* extra : {"true", R"({"type": "integer"})"}) {
    const std::string text = std::string(R"({"type": "object", "properties": {"a": {"type": "string"}},
        "required": ["a"], "additionalProperties": )") + extra + "}";
    REQUIRE(tools::check_schema(nlohmann::json::parse(text)).ok());
    auto g = compile(json::parse(text));
    CHECK(accepts_document(g, R"({"a": "x"})"));
    CHECK_FALSE(accepts_document(g, R"({"a": "x", "b": 1})"));
  }
}

TEST_CASE("a recursive $ref nests to the stack limit without crashing") {
  auto g = compile(typical_tool_schemas()[8]);
  std::string deep = R"({"name": "x", "children": []})";
  for (int i = 0; i < 100; ++i) deep = R"({"name": "x", "children": [)" + deep + "]}";
  const std::string doc = R"({"tree": )" + deep + "}";
  CHECK_FALSE(accepts_document(g, doc));  // deeper than the matcher's stack limit: refused, not a crash
  CHECK(accepts_document(g, R"({"tree": {"name": "a", "children": [{"name": "b", "children": []}]}})"));
}

}  // namespace
}  // namespace agentserve::agent
