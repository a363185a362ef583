#!/usr/bin/env bash
# The main job on a fresh machine: install what is missing, build, write the demo model (the `tiny` preset:
# random weights with Qwen3's real tokenizer), check its weights, show one generation, then serve it over
# WebSocket (/v1/ws) and HTTP on 127.0.0.1:${AGENTSERVE_PORT:-8080} until Ctrl-C, with its KV tiers in the
# embedded RocksDB under ${AGENTSERVE_DATA_DIR:-data/demo}.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
build=${AGENTSERVE_BUILD_DIR:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"$(nproc)" --target agentserve
bin=$build/server/agentserve
model=${AGENTSERVE_DEMO_MODEL:-models/demo-tiny}
[ -f "$model/config.json" ] || "$bin" make-model --preset tiny --out "$model"
"$bin" verify-weights --model "$model"
"$bin" generate --model "$model" --prompt "${1:-Hello from agentserve}" --max-tokens 16
echo "serving $model; try: curl -s localhost:${AGENTSERVE_PORT:-8080}/v1/models (protocol: docs/protocol.md)"
exec "$bin" serve --model "$model" --port "${AGENTSERVE_PORT:-8080}" --data-dir "${AGENTSERVE_DATA_DIR:-data/demo}" --kv-cache-mb 256
