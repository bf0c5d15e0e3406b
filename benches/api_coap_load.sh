#!/usr/bin/env bash
# The data path with and without HTTP API load (BENCHMARKS.md, issue 7): the CoAP load pipeline with
# an [api] section and an enrich stage that reads registry = "api", its devices onboarded with one
# restore; then the CoAP load run three times, each on a fresh lake (the server restarts; the store
# keeps the devices): alone, beside paced GET load (RATE/s), and beside GET load as fast as READERS
# client threads get answers. ROUTE is `telemetry` (GET /api/v1/telemetry/{id}: each device's latest
# values, the default) or `devices` (GET /api/v1/devices/{id}: the store). Client, load generator and
# server share the machine.
# Usage: benches/api_coap_load.sh [DEVICES] [SECONDS] [READERS] [RATE] [ROUTE]   e.g. benches/api_coap_load.sh 8000 10 4 500 telemetry
set -euo pipefail
cd "$(dirname "$0")/.."
devices="${1:-8000}"
seconds="${2:-10}"
readers="${3:-4}"
rate="${4:-500}"
route="${5:-telemetry}"
cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-$PWD/target}/release/sensorgate"
work="$(mktemp -d)"
server=
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
api_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
api="http://127.0.0.1:$api_port"
{
  echo "[api]"
  echo "listen = \"127.0.0.1:$api_port\""
  echo 'token_env = "SENSORGATE_API_TOKEN"'
  echo 'store = "registry.redb"'
  sed 's/  { type = "decode", codec = "efento" },/  { type = "decode", codec = "efento" },\n  { type = "enrich", registry = "api" },/' benches/coap_load.toml
} >"$work/pipeline.toml"
export SENSORGATE_API_TOKEN=bench-token-0123456789abcdef
start() {
  rm -rf "$work/data"
  (cd "$work" && exec "$bin" run) 2>>"$work/server.log" &
  server=$!
  until curl -sf "$api/ready" >/dev/null; do sleep 0.1; done
}
stop() { kill -TERM "$server"; wait "$server" || true; }
cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$server/stat"; }
load() {
  local before after
  before=$(cpu)
  "$bin" loadgen coap --target 127.0.0.1:5799 --devices "$devices" --sockets 512 \
    --duration "${seconds}s" --verify "$work/data/lake"
  after=$(cpu)
  awk -v a="$before" -v b="$after" 'BEGIN {printf "server cpu: %.2f s\n", b - a}'
}
getter() {
  python3 scripts/api_bench.py --attach "$api" --seconds "$seconds" --readers "$readers" \
    --devices "$devices" --id-format '4C47%08X' --route "$route" "$@"
}
start
# The simulated sensors' serials (4C47 + the device index), onboarded in one restore.
python3 -c "import json; print(json.dumps([{'serial': '4C47%08X' % i, 'friendly_id': 'sim %d' % i, 'location': 'hall %d' % (i % 7)} for i in range($devices)]))" \
  | curl -sf -X POST -H "Authorization: Bearer $SENSORGATE_API_TOKEN" --data-binary @- "$api/api/v1/devices/restore"
echo
echo "== CoAP load alone"
load
stop
start
echo "== CoAP load beside $rate GET/s (paced, $readers threads)"
getter --rate "$rate" &
pid=$!
load
wait "$pid"
stop
start
echo "== CoAP load beside GET load as fast as $readers threads get answers"
getter &
pid=$!
load
wait "$pid"
echo "== GET alone, as fast as $readers threads get answers"
getter
stop
