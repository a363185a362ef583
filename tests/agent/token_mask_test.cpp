#include "agent/token_mask.h"

#include <doctest/doctest.h>

#include <future>
#include <random>

#include "agent/tool_call_constraint.h"
#include "engine/engine.h"
#include "tests/agent/qwen3_tokenizer.h"
#include "tests/agent/schema_instances.h"
#include "tests/agent/tiny_engine.h"
#include "tests/engine/test_models.h"
#include "tools/json_schema_validator.h"

namespace agentserve::agent {
namespace {

using testing::dumps;
using testing::json;
using testing::qwen3_tokenizer;
using testing::random_instance;
using testing::typical_tool_schemas;

std::shared_ptr<const VocabularyIndex> qwen3_index() {
  static const auto index = std::make_shared<const VocabularyIndex>(qwen3_tokenizer(), 151936);
  return index;
}

int32_t im_end() {
  return *qwen3_tokenizer().token_to_id("<|im_end|>");
}

std::vector<ToolSchema> demo_tools() {
  const auto schemas = typical_tool_schemas();
  return {{"get_weather", schemas[0]}, {"http_request", schemas[5]}, {"place_order", schemas[6]}};
}

TEST_CASE("the vocabulary trie holds every plain token once and no added token") {
  const auto& index = *qwen3_index();
  std::vector<int> seen(static_cast<size_t>(index.vocab_size()), 0);
  for (const auto& node : index.nodes())
    for (int32_t id : index.tokens_at(node)) ++seen[static_cast<size_t>(id)];
  int plain = 0;
  for (int32_t id = 0; id < qwen3_tokenizer().vocab_size(); ++id) {
    const bool added = qwen3_tokenizer().is_added(id);
    CHECK(seen[static_cast<size_t>(id)] == (added ? 0 : 1));
    plain += added ? 0 : 1;
  }
  CHECK(plain > 150000);
  CHECK(index.added().size() == static_cast<size_t>(qwen3_tokenizer().vocab_size() - plain));
}

TEST_CASE("the trie walk's mask equals trying every token on the matcher, at random states") {
  std::mt19937 rng(4);
  const auto schemas = typical_tool_schemas();
  MaskBuilder builder(qwen3_index());
  std::vector<uint32_t> fast(qwen3_index()->mask_words()), ref(fast.size());
  for (size_t s : {0u, 5u, 6u, 7u, 9u}) {
    auto grammar = compile_json_schema(schemas[s]);
    REQUIRE(grammar.ok());
    auto g = std::make_shared<const Grammar>(std::move(*grammar));
    const std::string text = dumps(random_instance(schemas[s], schemas[s], rng), schemas[s], schemas[s]);
    for (int k = 0; k < 3; ++k) {
      GrammarMatcher m(g);
      REQUIRE(m.advance(text.substr(0, rng() % text.size())));
      REQUIRE(builder.fill(m, fast).ok());
      MaskBuilder::fill_reference(*qwen3_index(), m, ref);
      CHECK_MESSAGE(fast == ref, text);
      REQUIRE(builder.fill(m, fast).ok());  // from the cache this time
      CHECK(fast == ref);
    }
  }
  CHECK(builder.cache_hits() >= 15);
}

TEST_CASE("the string-body shortcut's mask equals the plain trie walk's, limited strings and odd states too") {
  // States are taken after every kind of byte a string body can hold: escapes (\n, \", \u00e9), UTF-8 lead
  // bytes (é, 日本), quotes; strings get random maxLength limits, and an anyOf of strings keeps two stacks in
  // strings at once.
  std::mt19937 rng(11);
  auto schemas = typical_tool_schemas();
  schemas.push_back(json::parse(R"({"type": "object", "properties": {"a": {"anyOf": [{"type": "string"},
      {"type": "string", "maxLength": 3}, {"type": "integer"}]}, "b": {"type": "array", "items": {"type":
      "string"}}}, "required": ["a", "b"], "additionalProperties": false})"));
  std::vector<uint32_t> fast(qwen3_index()->mask_words()), walked(fast.size()), ref(fast.size());
  int compared = 0, after_escape = 0, after_lead_byte = 0, limited = 0, referenced = 0;
  for (size_t s = 0; s < schemas.size(); ++s) {
    for (int variant = 0; variant < 2; ++variant) {
      auto grammar = compile_json_schema(schemas[s]);
      REQUIRE(grammar.ok());
      if (variant == 1)
        for (GrammarNode& n : grammar->nodes)
          if (n.kind == GrammarNodeKind::kString) n.max_length = static_cast<int>(rng() % 10);
      auto g = std::make_shared<const Grammar>(std::move(*grammar));
      MaskBuilder builder(qwen3_index());
      const std::string text = dumps(random_instance(schemas[s], schemas[s], rng), schemas[s], schemas[s]);
      GrammarMatcher m(g);
      for (size_t i = 0; i < text.size(); ++i) {
        const uint8_t prev = i > 0 ? static_cast<uint8_t>(text[i - 1]) : 0;
        const bool odd = prev == '\\' || prev >= 0xC0 || prev == '"';
        if (odd || rng() % 8 == 0) {
          REQUIRE(builder.fill(m, fast).ok());
          REQUIRE(builder.fill_by_walk(m, walked).ok());
          REQUIRE_MESSAGE(fast == walked, text.substr(0, i));
          ++compared;
          after_escape += prev == '\\';
          after_lead_byte += prev >= 0xC0;
          limited += variant;
          if (rng() % 16 == 0) {
            MaskBuilder::fill_reference(*qwen3_index(), m, ref);
            CHECK(fast == ref);
            ++referenced;
          }
        }
        if (!m.advance(text.substr(i, 1))) break;  // a string over its random limit: the text ends here
      }
    }
  }
  CHECK(compared > 200);
  CHECK(after_escape > 5);
  CHECK(after_lead_byte > 5);
  CHECK(limited > 50);
  CHECK(referenced > 5);
}

std::string decode(const std::vector<int32_t>& ids) {
  return qwen3_tokenizer().decode(ids);
}

TEST_CASE("the tool-call constraint accepts the template's text token by token and then only EOS") {
  auto compiled = CompiledConstraint::for_tool_calls(qwen3_index(), demo_tools(), {.max_calls = 2}, {im_end()});
  REQUIRE_MESSAGE(compiled.ok(), compiled.status().to_string());
  const std::string text =
      "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"location\": \"Paris\", \"unit\": \"celsius\"}}\n"
      "</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"location\": \"日本\", \"unit\": "
      "\"fahrenheit\"}}\n</tool_call>";
  auto constraint = (*compiled)->start();
  std::vector<uint32_t> mask(qwen3_index()->mask_words());
  const auto allowed = [&](int32_t id) { return (mask[static_cast<size_t>(id) / 32] >> (id % 32)) & 1u; };
  const auto ids = qwen3_tokenizer().encode(text);
  CHECK(ids.front() == *qwen3_tokenizer().token_to_id("<tool_call>"));  // the added token opens the call
  std::vector<int32_t> prefix;
  for (int32_t id : ids) {
    constraint->fill_allowed(mask);
    const std::string so_far = decode(prefix);
    CHECK(allowed(im_end()) == (so_far.size() > 12 && so_far.ends_with("</tool_call>")));  // after call 1
    prefix.push_back(id);
    REQUIRE_MESSAGE(allowed(id), qwen3_tokenizer().id_to_token(id));
    REQUIRE(constraint->accept(id).ok());
  }
  constraint->fill_allowed(mask);
  int n_allowed = 0;
  for (uint32_t w : mask) n_allowed += __builtin_popcount(w);
  CHECK(n_allowed == 1);
  CHECK(allowed(im_end()));
  CHECK_FALSE(constraint->is_complete());
  REQUIRE(constraint->accept(im_end()).ok());
  CHECK(constraint->is_complete());

  auto named = CompiledConstraint::for_tool_calls(qwen3_index(), demo_tools(), {.only_tool = "place_order"},
                                                  {im_end()});
  REQUIRE(named.ok());
  auto c = (*named)->start();
  for (int32_t id : qwen3_tokenizer().encode("<tool_call>\n{\"name\": \""))
    REQUIRE(c->accept(id).ok());
  CHECK_FALSE(c->accept(qwen3_tokenizer().encode("get")[0]).ok());  // only place_order may be named
  CHECK_FALSE(CompiledConstraint::for_tool_calls(qwen3_index(), demo_tools(), {.only_tool = "nope"}, {im_end()})
                  .ok());
}

TEST_CASE("special tokens are allowed only where the constraint spells them") {
  auto compiled = CompiledConstraint::for_tool_calls(qwen3_index(), demo_tools(), {}, {im_end()});
  REQUIRE(compiled.ok());
  auto constraint = (*compiled)->start();
  std::vector<uint32_t> mask(qwen3_index()->mask_words());
  const auto allowed = [&](const char* token) {
    const int32_t id = *qwen3_tokenizer().token_to_id(token);
    return ((mask[static_cast<size_t>(id) / 32] >> (id % 32)) & 1u) != 0;
  };
  constraint->fill_allowed(mask);
  CHECK(allowed("<tool_call>"));
  CHECK_FALSE(allowed("</tool_call>"));
  CHECK_FALSE(allowed("<think>"));
  for (int32_t id : qwen3_tokenizer().encode("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"location\": \""))
    REQUIRE(constraint->accept(id).ok());
  constraint->fill_allowed(mask);  // inside a JSON string: any text, but no added token
  CHECK_FALSE(allowed("<tool_call>"));
  CHECK_FALSE(allowed("</tool_call>"));
  CHECK_FALSE(allowed("<|im_end|>"));
  CHECK_FALSE(allowed("<|im_start|>"));
}

struct Generated {
  std::vector<int32_t> tokens;
  engine::FinishReason reason = engine::FinishReason::kNone;
};

Generated generate(engine::Engine& e, std::vector<int32_t> prompt, engine::SamplingParams params,
                   std::shared_ptr<engine::TokenConstraint> constraint) {
  auto done = std::make_shared<std::promise<void>>();
  auto out = std::make_shared<Generated>();
  engine::GenerationRequest request{.prompt = std::move(prompt), .sampling = params};
  request.constraint = std::move(constraint);
  request.on_event = [done, out](const engine::GenerationEvent& event) {
    out->tokens.insert(out->tokens.end(), event.tokens.begin(), event.tokens.end());
    if (event.finished) {
      out->reason = event.finish_reason;
      done->set_value();
    }
  };
  auto future = done->get_future();
  REQUIRE(e.submit(std::move(request)).ok());
  future.wait();
  return *out;
}

TEST_CASE("the random tiny model, constrained, always emits tool calls that parse and validate") {
  const std::unique_ptr<engine::Engine> e = testing::open_tiny_engine();
  const auto tools = demo_tools();
  auto compiled = CompiledConstraint::for_tool_calls(qwen3_index(), tools,
                                                     {.max_calls = 2, .max_string_length = 12}, {im_end()});
  REQUIRE(compiled.ok());
  std::mt19937 rng(6);
  int finished = 0;
  for (int run = 0; run < 12; ++run) {
    engine::SamplingParams params;
    params.max_tokens = 400;
    params.temperature = run % 3 == 0 ? 0.0 : 1.0;
    params.seed = static_cast<uint64_t>(run);
    const Generated g = generate(*e, engine::testing::random_ids(rng, 8), params, (*compiled)->start());
    REQUIRE(!g.tokens.empty());
    if (g.reason != engine::FinishReason::kStop) {
      CHECK(g.reason == engine::FinishReason::kLength);
      continue;
    }
    ++finished;
    CHECK(g.tokens.back() == im_end());
    std::string text = decode(std::vector<int32_t>(g.tokens.begin(), g.tokens.end() - 1));
    // Calls joined by "\n", each "<tool_call>\n" + JSON + "\n</tool_call>".
    int calls = 0;
    while (!text.empty()) {
      REQUIRE(text.rfind("<tool_call>\n", 0) == 0);
      const size_t end = text.find("\n</tool_call>");
      REQUIRE(end != std::string::npos);
      const json call = json::parse(text.substr(12, end - 12), nullptr, false);
      REQUIRE_MESSAGE(!call.is_discarded(), text);
      const auto tool = std::find_if(tools.begin(), tools.end(),
                                     [&](const ToolSchema& t) { return t.name == call["name"]; });
      REQUIRE(tool != tools.end());
      const Status valid = tools::validate_json(tool->parameters, call["arguments"]);
      CHECK_MESSAGE(valid.ok(), (text + ": " + valid.to_string()));
      text = text.substr(end + 13);
      if (!text.empty() && text[0] == '\n') text = text.substr(1);
      ++calls;
    }
    CHECK(calls >= 1);
    CHECK(calls <= 2);
  }
  CHECK(finished >= 10);
}

}  // namespace
}  // namespace agentserve::agent
