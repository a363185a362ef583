// TurnGenerator: the turn loop's view of the model, one streaming generation at a time. The Engine-backed
// implementation is what the server uses; tests substitute a scripted one that "generates" given text, so
// the loop's logic is exercised without depending on what a random-weight model happens to say.
//
// Contract (the engine's): start() either fails (nothing runs, no callback) or calls request.on_event one or
// more times, on any thread, the last with finished set; cancel() of a finished or unknown id does nothing.
// A generator never blocks the caller of start() or cancel() on the model.
#pragma once

#include "base/status.h"
#include "engine/engine.h"
#include "engine/request.h"
#include "engine/tokenizer.h"

namespace agentserve::agent {

class TurnGenerator {
 public:
  virtual ~TurnGenerator() = default;
  virtual Result<engine::RequestId> start(engine::GenerationRequest request) = 0;
  virtual void cancel(engine::RequestId id) = 0;
  virtual const engine::Tokenizer& tokenizer() const = 0;
};

// The engine itself; it must outlive the generator.
class EngineTurnGenerator final : public TurnGenerator {
 public:
  explicit EngineTurnGenerator(engine::Engine& engine) : engine_(engine) {}
  Result<engine::RequestId> start(engine::GenerationRequest request) override {
    return engine_.submit(std::move(request));
  }
  void cancel(engine::RequestId id) override { engine_.cancel(id); }
  const engine::Tokenizer& tokenizer() const override { return engine_.tokenizer(); }

 private:
  engine::Engine& engine_;
};

}  // namespace agentserve::agent
