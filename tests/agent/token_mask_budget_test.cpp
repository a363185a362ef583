// The token mask on recursive schemas: the work per generated token is counted (live parse stacks, frames a
// mask's trie walk steps) and bounded, masks stay exact where the budget holds, and a schema that goes over
// it ends the constraint with ResourceExhausted instead of stalling the engine thread.
#include <doctest/doctest.h>

#include <future>
#include <random>

#include "agent/token_mask.h"
#include "agent/tool_call_constraint.h"
#include "tests/agent/qwen3_tokenizer.h"
#include "tests/agent/recursive_schemas.h"
#include "tests/agent/schema_instances.h"
#include "tests/agent/tiny_engine.h"
#include "tools/json_schema_validator.h"

namespace agentserve::agent {
namespace {

using testing::json;
using testing::qwen3_tokenizer;

std::shared_ptr<const VocabularyIndex> qwen3_index() {
  static const auto index = std::make_shared<const VocabularyIndex>(qwen3_tokenizer(), 151936);
  return index;
}

int32_t im_end() {
  return *qwen3_tokenizer().token_to_id("<|im_end|>");
}

bool allowed(const std::vector<uint32_t>& mask, int32_t id) {
  return (mask[static_cast<size_t>(id) / 32] >> (id % 32) & 1u) != 0;
}

std::shared_ptr<CompiledConstraint> compile(const json& schema) {
  auto compiled = CompiledConstraint::for_json_schema(qwen3_index(), schema, {im_end()});
  REQUIRE_MESSAGE(compiled.ok(), compiled.status().to_string());
  return *compiled;
}

const GrammarMatcher& matcher_of(const std::shared_ptr<engine::TokenConstraint>& constraint) {
  return static_cast<const GrammarConstraint&>(*constraint).matcher();
}

TEST_CASE("a deep tree value is masked with one live stack and bounded walks, each mask equal to the reference") {
  auto compiled = compile(testing::tree_schema());
  const std::string text = testing::deep_tree_text(24);
  auto constraint = compiled->start();
  std::vector<uint32_t> mask(qwen3_index()->mask_words()), ref(mask.size());
  size_t max_stacks = 0, max_walk = 0, compared = 0;
  for (int32_t id : qwen3_tokenizer().encode(text)) {
    constraint->fill_allowed(mask);
    max_stacks = std::max(max_stacks, matcher_of(constraint).state().ends.size());
    max_walk = std::max(max_walk, compiled->masks().last_walk_frames());
    REQUIRE(allowed(mask, id));
    // Exact: the tokens the mask allows are those that keep the text a prefix of the grammar.
    MaskBuilder::fill_reference(*qwen3_index(), matcher_of(constraint), ref);
    for (const VocabularyIndex::Added& a : qwen3_index()->added()) {  // added tokens and EOS: fill_allowed's
      const size_t w = static_cast<size_t>(a.id) / 32;
      mask[w] &= ~(1u << (a.id % 32));
    }
    CHECK(mask == ref);
    ++compared;
    REQUIRE(constraint->accept(id).ok());
  }
  CHECK(compared > 60);
  // Only the anyOf option that can take the next byte is forked into: one stack all along.
  CHECK(max_stacks == 1);
  CHECK(max_walk < kMaxMaskWalkFrames / 16);
  constraint->fill_allowed(mask);
  CHECK(allowed(mask, im_end()));
  CHECK(tools::validate_json(nlohmann::json::parse(testing::tree_schema().dump()), nlohmann::json::parse(text)).ok());
}

TEST_CASE("random values the validator accepts under the tree schema are allowed token by token") {
  const json schema = testing::tree_schema();
  const nlohmann::json plain = nlohmann::json::parse(schema.dump());
  auto compiled = compile(schema);
  std::mt19937 rng(5);
  std::vector<uint32_t> mask(qwen3_index()->mask_words());
  int values = 0;
  for (int i = 0; i < 40; ++i) {
    const json value = testing::random_instance(schema, schema, rng);
    const std::string text = testing::dumps(value, schema, schema);
    if (text.find("</tool_call>") != std::string::npos) continue;  // the added token; not this test's point
    REQUIRE(tools::validate_json(plain, nlohmann::json::parse(text)).ok());
    auto constraint = compiled->start();
    for (int32_t id : qwen3_tokenizer().encode(text)) {
      constraint->fill_allowed(mask);
      REQUIRE_MESSAGE(allowed(mask, id), text);
      REQUIRE(matcher_of(constraint).state().ends.size() <= 2);
      REQUIRE(constraint->accept(id).ok());
    }
    constraint->fill_allowed(mask);
    CHECK_MESSAGE(allowed(mask, im_end()), text);
    ++values;
  }
  CHECK(values > 30);
}

TEST_CASE("object branches that share keys over recursion end in ResourceExhausted, with counted work bounded") {
  // Each level's object is read under both object branches until its third key, so the stacks double with
  // every level; without the budget a mask step took seconds at depth 15 and grew fourfold every 3 levels.
  auto compiled = compile(testing::three_way_schema());
  auto constraint = compiled->start();
  std::vector<uint32_t> mask(qwen3_index()->mask_words());
  Status ended;
  size_t steps = 0;
  for (int32_t id : qwen3_tokenizer().encode(testing::deep_three_way_text(15))) {
    constraint->fill_allowed(mask);
    ++steps;
    CHECK(compiled->masks().last_walk_frames() <= kMaxMaskWalkFrames);
    CHECK(matcher_of(constraint).state().ends.size() <= kMaxLiveStacks);
    if (!allowed(mask, id)) {
      // Over the budget the mask allows only end of sequence, and accepting it reports why.
      CHECK(allowed(mask, im_end()));
      ended = constraint->accept(im_end());
      break;
    }
    ended = constraint->accept(id);
    if (!ended.ok()) break;
  }
  CHECK(ended.code() == StatusCode::kResourceExhausted);
  CHECK(ended.message().find("ambiguous") != std::string::npos);
  CHECK(steps > 20);  // shallower levels were constrained normally before the budget ran out
  // Once failed, it stays failed: every later token gets the same error.
  CHECK(constraint->accept(im_end()).code() == StatusCode::kResourceExhausted);
  // The same schema at a shallow depth is fine.
  auto shallow = compiled->start();
  for (int32_t id : qwen3_tokenizer().encode(testing::deep_three_way_text(4))) {
    shallow->fill_allowed(mask);
    REQUIRE(allowed(mask, id));
    REQUIRE(shallow->accept(id).ok());
  }
  shallow->fill_allowed(mask);
  CHECK(allowed(mask, im_end()));
}

TEST_CASE("wide schemas are not ambiguous: 1,000 optional properties, or 1,000 tools, are constrained exactly") {
  // Every optional property (or tool name) is an option when a key (or the name) starts: the stacks fork
  // that wide for a byte or two, then all but one die.
  json properties = json::object();
  for (int i = 0; i < 1000; ++i) properties[std::string("p").append(std::to_string(i))] = {{"type", "string"}};
  const json wide = {{"type", "object"}, {"properties", properties}};
  std::vector<uint32_t> mask(qwen3_index()->mask_words());
  const auto feed = [&](const std::shared_ptr<engine::TokenConstraint>& constraint, const std::string& text) {
    for (int32_t id : qwen3_tokenizer().encode(text)) {
      constraint->fill_allowed(mask);
      REQUIRE_MESSAGE(allowed(mask, id), qwen3_tokenizer().id_to_token(id));
      REQUIRE(constraint->accept(id).ok());
    }
    constraint->fill_allowed(mask);
    CHECK(allowed(mask, im_end()));
  };
  feed(compile(wide)->start(), R"({"p7": "y", "p999": "x"})");

  std::vector<ToolSchema> tools;
  for (int i = 0; i < 1000; ++i) tools.push_back({"tool_" + std::to_string(i), wide});
  auto calls = CompiledConstraint::for_tool_calls(qwen3_index(), tools, {}, {im_end()});
  REQUIRE_MESSAGE(calls.ok(), calls.status().to_string());
  feed((*calls)->start(), "<tool_call>\n{\"name\": \"tool_998\", \"arguments\": {\"p3\": \"z\"}}\n</tool_call>");
}

TEST_CASE("the engine ends a request whose constraint went over the budget with that error") {
  auto compiled = compile(testing::three_way_schema());
  auto constraint = compiled->start();
  std::vector<uint32_t> mask(qwen3_index()->mask_words());
  // Take it to the first step that goes over the budget (a mask or an accept); the engine goes on from there.
  for (int32_t id : qwen3_tokenizer().encode(testing::deep_three_way_text(15))) {
    constraint->fill_allowed(mask);
    if (!allowed(mask, id) || !constraint->accept(id).ok()) break;
  }
  const std::unique_ptr<engine::Engine> e = testing::open_tiny_engine();
  auto finished = std::make_shared<std::promise<engine::GenerationEvent>>();
  engine::GenerationRequest request{.prompt = {1, 2, 3}};
  request.sampling.max_tokens = 8;
  request.constraint = constraint;
  request.on_event = [finished](const engine::GenerationEvent& event) {
    if (event.finished) finished->set_value(event);
  };
  auto future = finished->get_future();
  REQUIRE(e->submit(std::move(request)).ok());
  const engine::GenerationEvent last = future.get();
  CHECK(last.finish_reason == engine::FinishReason::kError);
  CHECK(last.error.code() == StatusCode::kResourceExhausted);
  CHECK_MESSAGE(last.error.message().find("too ambiguous") != std::string::npos, last.error.to_string());
}

TEST_CASE("a hand-built grammar that forks without consuming is refused as exhausted, not expanded") {
  // anyOf{self, self, "x"}: 3^32 expansions to the anyOf nesting limit without the fork budget. Schemas
  // cannot build this (compile refuses left recursion); hand-built grammars still must not hang.
  Grammar g;
  GrammarNode any;
  any.kind = GrammarNodeKind::kAnyOf;
  g.add(std::move(any));
  const int x = g.add_literal("x");
  g.nodes[0].children = {0, 0, x};
  g.root = 0;
  index_first_bytes(g);
  GrammarMatcher m(std::make_shared<const Grammar>(std::move(g)));
  CHECK_FALSE(m.advance("x"));
  CHECK(m.exhausted());
  CHECK_FALSE(m.advance("y"));  // refused by the grammar: "y" is not a first byte of anything
  CHECK_FALSE(m.exhausted());
}

}  // namespace
}  // namespace agentserve::agent
