// The real Qwen3 tokenizer (AGENTSERVE_TOKENIZER_DIR), loaded once per test binary for the agent tests.
// Tests share the one instance, so nothing may change it; a load failure fails the test, never crashes it.
#pragma once

#include <doctest/doctest.h>

#include "engine/tokenizer.h"

namespace agentserve::agent::testing {

inline const engine::Tokenizer& qwen3_tokenizer() {
  static const engine::Tokenizer tokenizer = [] {
    auto loaded = engine::Tokenizer::load(AGENTSERVE_TOKENIZER_DIR);
    REQUIRE_MESSAGE(loaded.ok(), loaded.status().to_string());
    return std::move(*loaded);
  }();
  return tokenizer;
}

}  // namespace agentserve::agent::testing
