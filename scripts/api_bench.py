#!/usr/bin/env python3
"""Times the HTTP API of a real `sensorgate run` (issue 7 figures; standard library only).

For each run: a fresh directory and store, sensorgate started with an [api] section and an esp3
flow that reads registry = "api", then N devices onboarded in one POST /api/v1/devices/restore
(timed from the request to the response: parse, check, one redb transaction, registry swap), then
GET /api/v1/devices/{id} of random onboarded devices from several client threads (keep-alive
connections) for the latency percentiles. Prints one line per run and the medians.

    python3 scripts/api_bench.py --bin target/release/sensorgate --devices 10000 --runs 3

With --attach URL it only sends GETs to a running instance for --seconds (benches/api_coap_load.sh uses
that for GET latency while the CoAP load run goes on).
"""
import argparse
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

TOKEN = "bench-token-0123456789abcdef"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def devices(n):
    return [
        {
            "eurid": "%08x" % (0x05000000 + i),
            "eep": "a5-02-05",
            "friendly_id": "Temperature %d" % i,
            "location": "Building %d, room %d" % (i // 500, i % 500),
            "custom_tag": "floor-%d" % (i % 12),
            "fields": {"room": str(i % 500), "tenant": "bench"},
        }
        for i in range(n)
    ]


def request(conn, method, path, body=None):
    headers = {"Authorization": "Bearer " + TOKEN}
    if body is not None:
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    return response.status, data


def one_run(binary, n, readers, reads):
    with tempfile.TemporaryDirectory(prefix="sensorgate-api-bench-") as d:
        api_port, ws_port = free_port(), free_port()
        with open(os.path.join(d, "pipeline.toml"), "w") as f:
            f.write(f"""
[api]
listen = "127.0.0.1:{api_port}"
token_env = "SENSORGATE_API_TOKEN"
store = "data/registry.redb"

[sources.gateways]
type = "esp3_websocket"
listen = "127.0.0.1:{ws_port}"

[sinks.out]
type = "json_lines"
path = "out.jsonl"

[[flows]]
name = "enocean"
from = ["gateways"]
stages = [{{ type = "decode", codec = "esp3", registry = "api" }}]
to = ["out"]
""")
        env = dict(os.environ, SENSORGATE_API_TOKEN=TOKEN, SENSORGATE_LOG="warn")
        proc = subprocess.Popen([binary, "run", "--config", "pipeline.toml"], cwd=d, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 60
            while True:
                try:
                    c = http.client.HTTPConnection("127.0.0.1", api_port, timeout=5)
                    c.request("GET", "/ready")
                    if c.getresponse().status == 200:
                        break
                except OSError:
                    pass
                if time.time() > deadline or proc.poll() is not None:
                    sys.exit("sensorgate did not become ready")
                time.sleep(0.05)
            body = json.dumps(devices(n)).encode()
            conn = http.client.HTTPConnection("127.0.0.1", api_port, timeout=120)
            start = time.perf_counter()
            status, data = request(conn, "POST", "/api/v1/devices/restore?mode=merge", body)
            onboard = time.perf_counter() - start
            summary = json.loads(data)
            if status != 200 or summary.get("created") != n:
                sys.exit(f"restore failed: {status} {data[:300]!r}")

            latencies = []
            lock = threading.Lock()

            def reader(seed):
                rng = random.Random(seed)
                c = http.client.HTTPConnection("127.0.0.1", api_port, timeout=30)
                mine = []
                for _ in range(reads):
                    path = "/api/v1/devices/%08x" % (0x05000000 + rng.randrange(n))
                    t = time.perf_counter()
                    s, _ = request(c, "GET", path)
                    mine.append(time.perf_counter() - t)
                    if s != 200:
                        sys.exit(f"GET {path}: {s}")
                with lock:
                    latencies.extend(mine)

            threads = [threading.Thread(target=reader, args=(i,)) for i in range(readers)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - start
            latencies.sort()
            p50 = latencies[len(latencies) // 2]
            p99 = latencies[int(len(latencies) * 0.99)]
            rate = len(latencies) / elapsed
            return onboard, len(body), p50, p99, rate
        finally:
            proc.terminate()
            proc.wait(30)


def attach(base, seconds, readers, id_format, count, rate, route="devices"):
    """GETs of random devices (id_format % index) against a running API for `seconds`; at most
    `rate` per second in all when rate > 0 (paced, as a dashboard or an operator would call).
    `route` is `devices` (GET /api/v1/devices/{id}: the store) or `telemetry` (GET
    /api/v1/telemetry/{id}: the device's latest values, 404 until a record of it went by)."""
    host, port = base.split("//")[-1].split(":")
    latencies, lock = [], threading.Lock()
    found = [0]
    stop = time.perf_counter() + seconds

    def reader(seed):
        rng = random.Random(seed)
        c = http.client.HTTPConnection(host, int(port), timeout=30)
        mine = []
        hits = 0
        interval = readers / rate if rate > 0 else 0
        due = time.perf_counter()
        while time.perf_counter() < stop:
            if interval:
                due += interval
                pause = due - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
            path = f"/api/v1/{route}/" + id_format % rng.randrange(count)
            t = time.perf_counter()
            s, _ = request(c, "GET", path)
            mine.append(time.perf_counter() - t)
            hits += s == 200
            if s != 200 and not (route == "telemetry" and s == 404):
                sys.exit(f"GET {path}: {s}")
        with lock:
            latencies.extend(mine)
            found[0] += hits

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(readers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()
    print(f"GET /api/v1/{route}/{{id}} x{len(latencies)} ({found[0]} answered 200) in {seconds} s "
          f"from {readers} threads: "
          f"p50 {latencies[len(latencies) // 2] * 1000:.2f} ms, "
          f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.2f} ms, "
          f"{len(latencies) / seconds:.0f} req/s", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--attach", metavar="URL",
                   help="only GET load against a running API (http://127.0.0.1:PORT), for --seconds")
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--rate", type=float, default=0, help="with --attach: GETs per second in all (0: as fast as they answer)")
    p.add_argument("--id-format", default="%08x", help="device id from its index, with --attach")
    p.add_argument("--route", choices=["devices", "telemetry"], default="devices",
                   help="with --attach: GET /api/v1/devices/{id} or /api/v1/telemetry/{id} (latest values)")
    p.add_argument("--bin", default="target/release/sensorgate")
    p.add_argument("--devices", type=int, default=10000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--readers", type=int, default=8, help="client threads for the GET load")
    p.add_argument("--reads", type=int, default=2000, help="GETs per client thread")
    args = p.parse_args()
    if args.attach:
        attach(args.attach, args.seconds, args.readers, args.id_format, args.devices, args.rate,
               args.route)
        return
    results = []
    for run in range(args.runs):
        onboard, size, p50, p99, rate = one_run(args.bin, args.devices, args.readers, args.reads)
        results.append((onboard, p50, p99, rate))
        print(f"run {run + 1}: onboard {args.devices} devices ({size / 1e6:.2f} MB JSON) in "
              f"{onboard * 1000:.0f} ms; GET /api/v1/devices/{{id}} x{args.readers * args.reads} "
              f"from {args.readers} threads: p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms, "
              f"{rate:.0f} req/s", flush=True)
    med = lambda i: statistics.median(r[i] for r in results)
    print(f"median of {args.runs}: onboard {med(0) * 1000:.0f} ms "
          f"({args.devices / med(0):.0f} devices/s); GET p50 {med(1) * 1000:.2f} ms, "
          f"p99 {med(2) * 1000:.2f} ms, {med(3):.0f} req/s")


if __name__ == "__main__":
    main()
