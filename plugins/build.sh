#!/usr/bin/env bash
# Builds the SDK's plugins for wasm32-wasip2 (release) and copies them to plugins/dist/, where the
# tests, benches and the example pipeline find them. Installs the target with rustup if missing.
set -euo pipefail
cd "$(dirname "$0")"
# The plugins are a workspace of their own: their own target directory (below the caller's, if set).
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
  export CARGO_TARGET_DIR="$CARGO_TARGET_DIR/plugins"
else
  export CARGO_TARGET_DIR="$PWD/target"
fi
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  echo "==> rustup target add wasm32-wasip2"
  rustup target add wasm32-wasip2
fi
cargo build --release --locked --target wasm32-wasip2 --workspace
mkdir -p dist
for wasm in "$CARGO_TARGET_DIR"/wasm32-wasip2/release/*.wasm; do
  name=$(basename "$wasm" .wasm)
  cp "$wasm" "dist/${name//_/-}.wasm"
done
ls -l dist/*.wasm
