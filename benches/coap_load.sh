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
# CPU seconds the server has used so far (user + system clock ticks from /proc).
cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$server/stat"; }
before=$(cpu)
"$bin" loadgen coap --target 127.0.0.1:5799 --devices "$devices" --sockets 512 \
  --duration "$duration" --verify "$work/data/lake" | tee "$work/loadgen.out"
after=$(cpu)
# Robust against a busy machine, where frames/s is not: the server's CPU per acknowledged frame.
acked=$(sed -n 's/^verify: \([0-9]*\) frames acknowledged.*/\1/p' "$work/loadgen.out")
if [ -n "$acked" ] && [ "$acked" -gt 0 ]; then
  awk -v a="$before" -v b="$after" -v n="$acked" \
    'BEGIN {printf "server cpu: %.2f s, %.1f us per acknowledged frame\n", b - a, (b - a) * 1e6 / n}'
fi
kill -TERM "$server"
wait "$server"
echo "files written: $(find "$work/data/lake" -name '*.parquet' | wc -l)"
