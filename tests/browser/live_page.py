"""Drives Debian's Chromium through ChromeDriver (the W3C WebDriver protocol, spoken here with the
standard library only) to check sensorgate's live page as a user's browser sees it.

    python3 live_page.py BASE_URL TOKEN

1. Opens BASE_URL/live without credentials: the page must show its login form.
2. Gives the token in the address (#token=...): the page must refresh itself, drop the token from
   the address, and list no device yet.
3. Prints "READY" and waits for a line on stdin (the test sends a telegram from the simulator then).
4. Waits up to 20 s, without reloading, for a device to appear with its values, and its gateway.
   The test compares what the page shows with what was sent.

Prints one JSON object per step on stdout; exits 0 when every check passed, 1 otherwise.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

CHROMIUM = os.environ.get("SENSORGATE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("SENSORGATE_CHROMEDRIVER", "/usr/bin/chromedriver")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebDriver:
    def __init__(self):
        self.port = free_port()
        self.profile = tempfile.mkdtemp(prefix="sensorgate-chromium-")
        self.process = subprocess.Popen(
            [CHROMEDRIVER, f"--port={self.port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 20
        while True:
            try:
                if self.call("GET", "/status")["ready"]:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise SystemExit("chromedriver did not start")
            time.sleep(0.1)
        # Flags from the machine notes: without the background-networking ones Chromium keeps
        # trying to reach Google's hosts, which this closed network refuses.
        args = [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={self.profile}",
        ]
        session = self.call("POST", "/session", {
            "capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            }}
        })
        self.session = session["sessionId"]

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.load(response)["value"]
        except urllib.error.HTTPError as e:
            raise SystemExit(f"webdriver {method} {path}: {e.code} {e.read().decode(errors='replace')}")

    def go(self, url):
        self.call("POST", f"/session/{self.session}/url", {"url": url})

    def script(self, source):
        return self.call("POST", f"/session/{self.session}/execute/sync", {"script": source, "args": []})

    def close(self):
        try:
            self.call("DELETE", f"/session/{self.session}")
        finally:
            self.process.terminate()
            self.process.wait(timeout=10)
            shutil.rmtree(self.profile, ignore_errors=True)


# What the page shows, read from its DOM the way a user reads the tables.
READ_PAGE = """
const rows = (id) => [...document.querySelectorAll('#' + id + ' tr')];
return {
  status: document.getElementById('status').textContent,
  refreshes: Number(document.getElementById('status').dataset.refreshes || 0),
  login_visible: !document.getElementById('login').hidden,
  address: location.href,
  devices: rows('devices').filter(tr => tr.dataset.device).map(tr => ({
    device: tr.dataset.device,
    cells: [...tr.children].map(td => td.textContent),
    values: Object.fromEntries([...tr.querySelectorAll('.value')].map(v => [v.dataset.key, v.textContent])),
  })),
  gateways: rows('gateways').filter(tr => tr.dataset.gateway).map(tr => ({
    gateway: tr.dataset.gateway,
    cells: [...tr.children].map(td => td.textContent),
  })),
};
"""


def wait_for(driver, check, seconds):
    deadline = time.time() + seconds
    while True:
        page = driver.script(READ_PAGE)
        if check(page):
            return page, True
        if time.time() > deadline:
            return page, False
        time.sleep(0.2)


def main():
    base, token = sys.argv[1:3]
    driver = WebDriver()
    ok = True
    try:
        driver.go(base + "/live")
        page, passed = wait_for(driver, lambda p: p["login_visible"], 10)
        print(json.dumps({"step": "without credentials", "passed": passed, "page": page}), flush=True)
        ok &= passed

        driver.go(base + "/live#token=" + token)
        page, passed = wait_for(
            driver, lambda p: p["refreshes"] >= 1 and not p["login_visible"], 10)
        passed = passed and "#" not in page["address"] and not page["devices"]
        print(json.dumps({"step": "with the token", "passed": passed, "page": page}), flush=True)
        ok &= passed
        before = page["refreshes"]

        print("READY", flush=True)
        sys.stdin.readline()

        page, passed = wait_for(
            driver,
            lambda p: any(d["values"] for d in p["devices"]) and p["gateways"],
            20,
        )
        passed = passed and page["refreshes"] > before
        print(json.dumps({"step": "after the telegram", "passed": passed, "page": page}), flush=True)
        ok &= passed
    finally:
        driver.close()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
