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
  CHECK(error_of(R"({"type": "object", "additionalProperties": true})").find("additionalProperties") !=
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
