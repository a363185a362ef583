// The random tiny model (tests/engine/test_models.h: preset tiny, f32, seed 7) in a real Engine with 2
// compute threads and 64 MiB of KV cache, for the agent tests that go through the engine. A model that does
// not open fails the test; the answers are gibberish, so tests may assert only on structure.
#pragma once

#include <doctest/doctest.h>

#include <memory>

#include "engine/engine.h"
#include "tests/engine/test_models.h"

namespace agentserve::agent::testing {

inline std::unique_ptr<engine::Engine> open_tiny_engine() {
  engine::EngineOptions options;
  options.model_dir = engine::testing::test_model_dir("tiny", engine::DType::kF32, 7);
  options.n_threads = 2;
  options.kv_cache_bytes = size_t{64} << 20;
  auto opened = engine::Engine::open(options);
  REQUIRE_MESSAGE(opened.ok(), opened.status().to_string());
  return std::move(opened).value();
}

}  // namespace agentserve::agent::testing
