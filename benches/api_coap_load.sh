#!/usr/bin/env bash
# The data path with and without HTTP API load (BENCHMARKS.md, issue 7): the CoAP load pipeline with
# an [api] section and an enrich stage that reads registry = "api", its devices onboarded with one
# restore; then the CoAP load run twice, alone and with GET /api/v1/devices/{id} load beside it.
# Usage: benches/api_coap_load.sh [DEVICES] [SECONDS] [READERS]   e.g. benches/api_coap_load.sh 8000 10 4
set -euo pipefail
cd "$(dirname "$0")/.."
devices="${1:-8000}"
seconds="${2:-10}"
readers="${3:-4}"
cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-$PWD/target}/release/sensorgate"
work="$(mktemp -d)"
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
api_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
{
  echo "[api]"
  echo "listen = \"127.0.0.1:$api_port\""
  echo 'token_env = "SENSORGATE_API_TOKEN"'
  echo 'store = "data/registry.redb"'
  sed 's/  { type = "decode", codec = "efento" },/  { type = "decode", codec = "efento" },\n  { type = "enrich", registry = "api" },/' benches/coap_load.toml
} >"$work/pipeline.toml"
export SENSORGATE_API_TOKEN=bench-token-0123456789abcdef
(cd "$work" && exec "$bin" run) 2>"$work/server.log" &
server=$!
until curl -sf "http://127.0.0.1:$api_port/ready" >/dev/null; do sleep 0.1; done
# The simulated sensors' serials (4C47 + the device index), onboarded in one restore.
python3 -c "import json; print(json.dumps([{'serial': '4C47%08X' % i, 'friendly_id': 'sim %d' % i, 'location': 'hall %d' % (i % 7)} for i in range($devices)]))" \
  | curl -sf -X POST -H "Authorization: Bearer $SENSORGATE_API_TOKEN" --data-binary @- \
    "http://127.0.0.1:$api_port/api/v1/devices/restore"
echo
load() {
  "$bin" loadgen coap --target 127.0.0.1:5799 --devices "$devices" --sockets 512 \
    --duration "${seconds}s" --verify "$work/data/lake"
}
echo "== CoAP load alone"
load
echo "== CoAP load with $readers threads of GET /api/v1/devices/{id}"
python3 scripts/api_bench.py --attach "http://127.0.0.1:$api_port" --seconds "$seconds" \
  --readers "$readers" --devices "$devices" --id-format '4C47%08X' &
getter=$!
load
wait "$getter"
echo "== GET alone"
python3 scripts/api_bench.py --attach "http://127.0.0.1:$api_port" --seconds "$seconds" \
  --readers "$readers" --devices "$devices" --id-format '4C47%08X'
