#!/usr/bin/env bash
# End-to-end EnOcean load benchmark (BENCHMARKS.md): builds the release binary, starts `sensorgate run`
# with benches/enocean_load.toml, runs the gateway simulator (Aruba envelope over ws) against it, then
# checks the Parquet lake: every distinct telegram the simulator sent is there exactly once (per-device
# telegram counts equal the manifest's), and reports the server's peak RSS.
# Usage: benches/enocean_load.sh [GATEWAYS] [OVERLAP] [RATE] [DURATION] [BATCH]
#   e.g. benches/enocean_load.sh 200 3 33000 10s 10
set -euo pipefail
cd "$(dirname "$0")/.."
gateways="${1:-200}"
overlap="${2:-3}"
rate="${3:-33000}"
duration="${4:-10s}"
batch="${5:-10}"
devices=2000
cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-$PWD/target}/release/sensorgate"
python="${SENSORGATE_PYTHON:-$PWD/.venv/bin/python}"
work="$(mktemp -d)"
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
cp benches/enocean_load.toml "$work/pipeline.toml"
"$bin" simulate --registry-out "$work/devices.toml" --devices "$devices" --target ws://unused
(cd "$work" && exec "$bin" run) 2>"$work/server.log" &
server=$!
sleep 1
"$bin" simulate --target ws://127.0.0.1:8799/aruba --gateways "$gateways" --overlap "$overlap" \
  --devices "$devices" --rate "$rate" --duration "$duration" --batch "$batch" \
  --manifest "$work/manifest.jsonl"
sleep 1
rss_kb=$(awk '/VmHWM/ {print $2}' "/proc/$server/status")
kill -TERM "$server"
wait "$server"
echo "server peak RSS: $((rss_kb / 1024)) MiB"
"$python" - "$work" <<'PY'
import collections, json, sys, duckdb
work = sys.argv[1]
sent = collections.Counter(json.loads(l)["sender"] for l in open(f"{work}/manifest.jsonl"))
# One row per telegram: 4BS/1BS telegrams carry `learn`, the D2-14-41 multisensor `accelerationStatus`.
rows = duckdb.sql(f"""select device, count(*) from read_parquet('{work}/data/lake/**/*.parquet')
                      where key in ('learn', 'accelerationStatus') group by device""").fetchall()
stored = collections.Counter(dict(rows))
missing = sum((sent - stored).values())
extra = sum((stored - sent).values())
print(f"distinct telegrams sent: {sum(sent.values())}, stored: {sum(stored.values())}, missing: {missing}, duplicates: {extra}")
sys.exit(1 if missing or extra else 0)
PY
