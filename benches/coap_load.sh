#!/usr/bin/env bash
# End-to-end CoAP load benchmark (BENCHMARKS.md): builds the release binary, starts
# `sensorgate run` with benches/coap_load.toml in a scratch directory, runs the load generator
# against it, verifies that every acknowledged frame is in Parquet, and stops the server.
# Usage: benches/coap_load.sh [DEVICES] [DURATION] [PIPELINE]   e.g. benches/coap_load.sh 8000 10s
#        benches/coap_load.sh 8000 10s benches/coap_load_stages.toml   (every stage on)
set -euo pipefail
cd "$(dirname "$0")/.."
devices="${1:-8000}"
duration="${2:-10s}"
pipeline="${3:-benches/coap_load.toml}"
cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-$PWD/target}/release/sensorgate"
work="$(mktemp -d)"
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
cp "$pipeline" "$work/pipeline.toml"
cp -r schemas "$work/schemas"
# A registry of the simulated devices (serials 4C47 + the device index), for the enrich stage.
for ((i = 0; i < devices; i++)); do
  printf '[[devices]]\nserial = "4C47%08X"\nfriendly_id = "sim %d"\nlocation = "hall %d"\n' "$i" "$i" "$((i % 7))"
done >"$work/devices.toml"
(cd "$work" && exec "$bin" run) 2>"$work/server.log" &
server=$!
sleep 1
"$bin" loadgen coap --target 127.0.0.1:5799 --devices "$devices" --sockets 512 \
  --duration "$duration" --verify "$work/data/lake"
kill -TERM "$server"
wait "$server"
echo "files written: $(find "$work/data/lake" -name '*.parquet' | wc -l)"
