#!/usr/bin/env bash
# Cold start with 20 plugins in the plugin directory, without and with the compiled-code cache:
# the time `sensorgate plugins list --timing` takes to load them all (compile or deserialize,
# instantiate, call metadata()), which is what `sensorgate run` does at start.
#
# The 20 components are the 7 plugins of plugins/dist plus 13 copies of them, each made distinct by
# a custom section appended to the component (so each has its own cache entry, as 20 different
# plugins would; the copies declare what the originals do, which `plugins list` reports as errors).
#
# Usage: benches/plugins_cold_start.sh [ROUNDS]   (needs plugins/build.sh and a release build)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
bin=${SENSORGATE_BIN:-${CARGO_TARGET_DIR:-target}/release/sensorgate}
[ -x "$bin" ] || { echo "no $bin: cargo build --release first" >&2; exit 1; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
python3 - "$dir" plugins/dist <<'PY'
import pathlib, sys
out, dist = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
originals = sorted(dist.glob("*.wasm"))
def leb(n):
    b = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        b.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(b)
for i in range(20):
    src = originals[i % len(originals)]
    data = src.read_bytes()
    if i >= len(originals):
        name, payload = b"sensorgate-bench", str(i).encode()
        body = leb(len(name)) + name + payload
        data += b"\x00" + leb(len(body)) + body
    (out / f"{i:02d}-{src.name}").write_bytes(data)
PY
echo "20 plugins in $dir ($(du -sh "$dir" | cut -f1)), $rounds rounds"
for r in $(seq "$rounds"); do
  rm -rf "$dir/.cache"
  echo "round $r, no cache:     $("$bin" plugins list "$dir" --timing --no-cache 2>/dev/null | tail -1)"
  echo "round $r, cache empty:  $("$bin" plugins list "$dir" --timing 2>/dev/null | tail -1)"
  echo "round $r, cache filled: $("$bin" plugins list "$dir" --timing 2>/dev/null | tail -1)"
done
