#!/usr/bin/env bash
# The main job on a fresh machine: install what is missing, build, write the demo model (the `tiny` preset:
# random weights with Qwen3's real tokenizer), check its weights, show one generation, then serve it over
# WebSocket (/v1/ws) and HTTP on 127.0.0.1:${AGENTSERVE_PORT:-8080} until Ctrl-C, with sessions and KV tiers
# in the embedded RocksDB under ${AGENTSERVE_DATA_DIR:-data/demo}, and every output passing the example
# moderation webhook (examples/moderation_service.py, flagging the words in AGENTSERVE_DEMO_FLAG).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
build=${AGENTSERVE_BUILD_DIR:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"$(nproc)" --target agentserve agentserve_chat
bin=$build/server/agentserve
model=${AGENTSERVE_DEMO_MODEL:-models/demo-tiny}
[ -f "$model/config.json" ] || "$bin" make-model --preset tiny --out "$model"
"$bin" verify-weights --model "$model"
"$bin" generate --model "$model" --prompt "${1:-Hello from agentserve}" --max-tokens 16

# The example webhook on a free loopback port; it goes when the server goes.
secret=demo-secret
moderation_log=$(mktemp)
/usr/bin/python3 examples/moderation_service.py --port 0 --secret "$secret" \
  --flag "${AGENTSERVE_DEMO_FLAG:-forbidden}" >"$moderation_log" &
moderation_pid=$!
trap 'kill $moderation_pid 2>/dev/null; rm -f "$moderation_log"' EXIT
for _ in $(seq 50); do grep -q '^PORT ' "$moderation_log" && break; sleep 0.1; done
moderation_port=$(awk '/^PORT /{print $2}' "$moderation_log")
[ -n "$moderation_port" ] || { echo "demo: the moderation webhook did not start" >&2; exit 1; }

echo "serving $model; try: curl -s localhost:${AGENTSERVE_PORT:-8080}/v1/models (protocol: docs/protocol.md)"
"$bin" serve --model "$model" --port "${AGENTSERVE_PORT:-8080}" --data-dir "${AGENTSERVE_DATA_DIR:-data/demo}" \
  --kv-cache-mb 256 --moderation-url "http://127.0.0.1:$moderation_port/" --moderation-secret "$secret"
