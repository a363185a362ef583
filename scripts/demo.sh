#!/usr/bin/env bash
# The main job on a fresh machine: install what is missing, build, write the demo model (the `tiny` preset
# with Qwen3's real tokenizer, random weights) and run it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
build=${AGENTSERVE_BUILD_DIR:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DAGENTSERVE_TESTS=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target agentserve
model=${AGENTSERVE_DEMO_MODEL:-models/demo-tiny}
[ -f "$model/config.json" ] || "$build/server/agentserve" make-model --preset tiny --out "$model"
"$build/server/agentserve" verify-weights --model "$model"
exec "$build/server/agentserve" generate --model "$model" --prompt "${1:-Hello from agentserve}" --max-tokens 32
