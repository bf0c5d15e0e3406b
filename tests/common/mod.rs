//! Shared helpers for the integration tests: start `sensorgate run` on free loopback ports, find the
//! real peers the tests talk to (coap-client-notls, Python with aiocoap/pyarrow/duckdb), read back.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn sensorgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sensorgate"))
}

/// The shared vectors: ../shared/vectors when present, else the copies under tests/fixtures.
pub fn vectors_dir(kind: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = root.join("../shared/vectors").join(kind);
    if shared.is_dir() {
        shared
    } else {
        root.join("tests/fixtures").join(kind)
    }
}

pub fn vector(kind: &str, name: &str) -> serde_json::Value {
    let path = vectors_dir(kind).join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn vector_bytes(kind: &str, name: &str) -> Vec<u8> {
    hex::decode(vector(kind, name)["hex"].as_str().unwrap()).unwrap()
}

/// A real peer program, or `None` (the test then skips) unless SENSORGATE_REQUIRE_PEERS=1,
/// which the project's test script sets so that a missing peer fails instead of skipping.
pub fn peer(program: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        require_or_skip(&format!("`{program}` is not installed"));
    }
    found
}

/// The Python that has aiocoap, pyarrow and duckdb (the test script makes it), or `None`.
pub fn python() -> Option<PathBuf> {
    let candidate = std::env::var_os("SENSORGATE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    python_with(candidate, "aiocoap, pyarrow, duckdb, pytz")
}

/// `python` if it can import `modules` (`"a, b"`), or `None` (a failure when peers are required).
pub fn python_with(python: PathBuf, modules: &str) -> Option<PathBuf> {
    let ok = Command::new(&python)
        .args(["-c", &format!("import {modules}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        require_or_skip(&format!(
            "{} lacks {modules} (run scripts/test.sh)",
            python.display()
        ));
        return None;
    }
    Some(python)
}

pub fn require_or_skip(why: &str) {
    if std::env::var("SENSORGATE_REQUIRE_PEERS").is_ok_and(|v| v == "1") {
        panic!("{why}, and SENSORGATE_REQUIRE_PEERS=1");
    }
    eprintln!("SKIPPED: {why}; run scripts/test.sh to install the peers");
}

/// Fails the test with the command's stderr unless it exited 0.
pub fn assert_success(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A device registry with an A5-02-05 and an A5-04-01 sensor (the senders of vectors 06 and 07).
pub const ENOCEAN_DEVICES: &str = r#"
[[devices]]
eurid = "0180a1b2"
eep = "a5-02-05"
friendly_id = "Temperature 1"
location = "Room 221"

[[devices]]
eurid = "0180a1b3"
eep = "a5-04-01"
friendly_id = "Climate 1"
location = "Room 222"
"#;

pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `sensorgate run` with `pipeline.toml` in `dir`; its log (stderr) is collected as it comes.
pub fn spawn_run(dir: &Path) -> (Child, Arc<Mutex<String>>) {
    spawn_run_env(dir, &[])
}

/// [`spawn_run`] with extra environment variables.
pub fn spawn_run_env(dir: &Path, env: &[(&str, &str)]) -> (Child, Arc<Mutex<String>>) {
    let mut child = sensorgate()
        .args(["run", "--config", "pipeline.toml"])
        .current_dir(dir)
        .env("SENSORGATE_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sensorgate");
    let log = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut l = sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    (child, log)
}

/// A `sensorgate run` child process with its own directory; killed when dropped.
pub struct Running {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub coap: SocketAddr,
    pub log: Arc<Mutex<String>>,
}

/// The default-style pipeline on a free port, writing under `dir`.
pub fn pipeline_toml(port: u16, extra_coap: &str, commit_interval: &str) -> String {
    let lake =
        format!("type = \"parquet\"\npath = \"lake\"\ncommit_interval = \"{commit_interval}\"");
    efento_to_sink(extra_coap, "lake", &lake).replace("@PORT@", &port.to_string())
}

impl Running {
    pub fn start(extra_coap: &str) -> Running {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, extra_coap, "100ms")
    }

    pub fn start_in(dir: tempfile::TempDir, extra_coap: &str, commit_interval: &str) -> Running {
        let port = free_udp_port();
        let toml = pipeline_toml(port, extra_coap, commit_interval);
        Self::start_toml(dir, port, &toml, &[])
    }

    /// Starts a pipeline of one's own: `@PORT@` in `template` becomes the CoAP source's free port.
    pub fn start_pipeline(dir: tempfile::TempDir, template: &str) -> Running {
        Self::start_pipeline_env(dir, template, &[])
    }

    /// [`Running::start_pipeline`] with extra environment variables for sensorgate.
    pub fn start_pipeline_env(
        dir: tempfile::TempDir,
        template: &str,
        env: &[(&str, &str)],
    ) -> Running {
        let port = free_udp_port();
        let toml = template.replace("@PORT@", &port.to_string());
        Self::start_toml(dir, port, &toml, env)
    }

    fn start_toml(dir: tempfile::TempDir, port: u16, toml: &str, env: &[(&str, &str)]) -> Running {
        std::fs::write(dir.path().join("pipeline.toml"), toml).unwrap();
        let (child, log) = spawn_run_env(dir.path(), env);
        let coap: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let running = Running {
            child,
            dir,
            coap,
            log,
        };
        running.wait_ready();
        running
    }

    /// Waits until the server answers a CoAP ping (CON, code 0.00) with a reset.
    fn wait_ready(&self) {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut buf = [0u8; 64];
        while Instant::now() < deadline {
            let _ = sock.send_to(&[0x40, 0x00, 0x12, 0x34], self.coap);
            if let Ok((n, _)) = sock.recv_from(&mut buf)
                && n >= 4
                && buf[0] >> 4 == 0x7
            {
                return;
            }
        }
        panic!("sensorgate did not start; log:\n{}", self.log());
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "no exit after SIGTERM; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw CoAP exchange over UDP: sends `request` and returns the first answer (or None on timeout).
pub fn udp_exchange(
    sock: &UdpSocket,
    to: SocketAddr,
    request: &[u8],
    wait: Duration,
) -> Option<Vec<u8>> {
    sock.set_read_timeout(Some(wait)).unwrap();
    sock.send_to(request, to).unwrap();
    let mut buf = vec![0u8; 2048];
    match sock.recv_from(&mut buf) {
        Ok((n, _)) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

/// Sends a confirmable POST from `sock` and returns the parsed answer (panics if none comes in 5 s).
pub fn con_post(
    sock: &UdpSocket,
    to: SocketAddr,
    mid: u16,
    token: &[u8],
    path: &str,
    payload: &[u8],
) -> CoapMessage {
    let request = coap_request(true, 0x02, mid, token, path, payload);
    let answer =
        udp_exchange(sock, to, &request, Duration::from_secs(5)).expect("an answer within 5 s");
    parse_coap(&answer)
}

/// A CoAP request built by hand (RFC 7252 §3): version 1, type, code, message id, token, Uri-Path
/// segments and any extra options (sorted by number), payload.
pub fn coap_request(
    confirmable: bool,
    code: u8,
    mid: u16,
    token: &[u8],
    path: &str,
    payload: &[u8],
) -> Vec<u8> {
    coap_request_with(confirmable, code, mid, token, path, &[], payload)
}

pub fn coap_request_with(
    confirmable: bool,
    code: u8,
    mid: u16,
    token: &[u8],
    path: &str,
    extra: &[(u16, &[u8])],
    payload: &[u8],
) -> Vec<u8> {
    let t = if confirmable { 0 } else { 1 };
    let mut out = vec![0x40 | (t << 4) | token.len() as u8, code];
    out.extend_from_slice(&mid.to_be_bytes());
    out.extend_from_slice(token);
    let mut options: Vec<(u16, &[u8])> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| (11u16, s.as_bytes()))
        .collect();
    options.extend_from_slice(extra);
    options.sort_by_key(|(n, _)| *n);
    let nibble = |v: u16| -> (u8, Vec<u8>) {
        if v < 13 {
            (v as u8, vec![])
        } else if v < 269 {
            (13, vec![(v - 13) as u8])
        } else {
            (14, (v - 269).to_be_bytes().to_vec())
        }
    };
    let mut last = 0u16;
    for (number, value) in options {
        let (d, dext) = nibble(number - last);
        let (l, lext) = nibble(value.len() as u16);
        out.push((d << 4) | l);
        out.extend(dext);
        out.extend(lext);
        out.extend_from_slice(value);
        last = number;
    }
    if !payload.is_empty() {
        out.push(0xFF);
        out.extend_from_slice(payload);
    }
    out
}

/// (type, code "c.dd", message id, token, options as (number, value), payload) of a CoAP message.
pub struct CoapMessage {
    pub ty: u8,
    pub code: String,
    pub mid: u16,
    pub token: Vec<u8>,
    pub options: Vec<(u16, Vec<u8>)>,
    pub payload: Vec<u8>,
}

pub fn parse_coap(msg: &[u8]) -> CoapMessage {
    let tkl = (msg[0] & 0x0F) as usize;
    let mut i = 4 + tkl;
    let mut options = Vec::new();
    let mut number = 0u16;
    let mut payload = Vec::new();
    let ext = |nibble: u8, i: &mut usize| -> u16 {
        match nibble {
            13 => {
                *i += 1;
                u16::from(msg[*i - 1]) + 13
            }
            14 => {
                *i += 2;
                u16::from_be_bytes([msg[*i - 2], msg[*i - 1]]) + 269
            }
            n => u16::from(n),
        }
    };
    while i < msg.len() {
        let b = msg[i];
        i += 1;
        if b == 0xFF {
            payload = msg[i..].to_vec();
            break;
        }
        number += ext(b >> 4, &mut i);
        let len = ext(b & 0x0F, &mut i) as usize;
        options.push((number, msg[i..i + len].to_vec()));
        i += len;
    }
    CoapMessage {
        ty: (msg[0] >> 4) & 0x3,
        code: format!("{}.{:02}", msg[1] >> 5, msg[1] & 0x1F),
        mid: u16::from_be_bytes([msg[2], msg[3]]),
        token: msg[4..4 + tkl].to_vec(),
        options,
        payload,
    }
}

/// Compares a decoded document with a vector's `expected`: every expected key must be present and
/// equal (numbers within 1e-9); extra keys in `actual` objects are allowed only at the top level.
pub fn assert_matches(
    expected: &serde_json::Value,
    actual: &serde_json::Value,
    path: &str,
    top: bool,
) {
    use serde_json::Value;
    match (expected, actual) {
        (Value::Number(e), Value::Number(a)) => {
            let (e, a) = (e.as_f64().unwrap(), a.as_f64().unwrap());
            assert!((e - a).abs() <= 1e-9, "{path}: expected {e}, got {a}");
        }
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                let av = a
                    .get(k)
                    .unwrap_or_else(|| panic!("{path}.{k}: missing in {actual}"));
                assert_matches(ev, av, &format!("{path}.{k}"), false);
            }
            if !top {
                for k in a.keys() {
                    assert!(e.contains_key(k), "{path}.{k}: not expected (got {actual})");
                }
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            assert_eq!(
                e.len(),
                a.len(),
                "{path}: {} items expected, got {}",
                e.len(),
                a.len()
            );
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                assert_matches(ev, av, &format!("{path}[{i}]"), false);
            }
        }
        (e, a) => assert_eq!(e, a, "{path}"),
    }
}

/// Runs coap-client-notls and returns (code, payload) of the answer, e.g. ("2.01", bytes).
pub fn coap_client(
    method: &str,
    uri: &str,
    payload: Option<&[u8]>,
    dir: &Path,
) -> Option<(String, Vec<u8>)> {
    let client = peer("coap-client-notls")?;
    let out_file = dir.join(format!("answer-{}.bin", rand_suffix()));
    let mut cmd = Command::new(client);
    cmd.args(["-m", method, "-v", "7", "-B", "5", "-o"])
        .arg(&out_file);
    if let Some(p) = payload {
        let in_file = dir.join(format!("request-{}.bin", rand_suffix()));
        std::fs::write(&in_file, p).unwrap();
        cmd.arg("-f").arg(&in_file);
    }
    cmd.arg(uri);
    let output = cmd.output().expect("run coap-client-notls");
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    // coap-client exits 0 whatever the code; its log line of the answer reads "v:1 t:ACK c:2.01 i:..."
    let code = text
        .lines()
        .find(|l| l.contains("t:ACK c:"))
        .and_then(|l| l.split("c:").nth(1))
        .and_then(|c| c.split_whitespace().next())
        .unwrap_or_else(|| panic!("no ACK from the server; coap-client said:\n{text}"))
        .to_string();
    let payload = std::fs::read(&out_file).unwrap_or_default();
    Some((code, payload))
}

pub fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The JSON documents of a JSON lines file (none if it does not exist yet).
pub fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Polls `check` until it holds or `timeout` passes; returns whether it held.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `sensorgate validate` on `toml` (as `pipeline.toml` in a fresh directory), asserts that it
/// fails, and returns what it printed.
pub fn validate_fails(toml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pipeline.toml"), toml).unwrap();
    let out = sensorgate()
        .args(["validate", "pipeline.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    text
}

/// A pipeline of one sink: Efento frames over CoAP (on `@PORT@`, with `source` keys added), decoded,
/// to the sink `[sinks.NAME]` given as TOML lines; dead letters in `rejects.jsonl`.
pub fn efento_to_sink(source: &str, name: &str, sink: &str) -> String {
    format!(
        r#"
[sources.efento]
type = "coap"
listen = "127.0.0.1:@PORT@"
{source}

[sinks.{name}]
{sink}

[sinks.rejects]
type = "json_lines"
path = "rejects.jsonl"

[[flows]]
name = "efento"
from = ["efento"]
stages = [{{ type = "decode", codec = "efento" }}]
to = ["{name}"]
dead_letter = "rejects"
"#
    )
}

/// Posts the Efento seed frame to the pipeline's CoAP source with coap-client-notls; the answer's code.
pub fn post_efento_seed(running: &Running) -> String {
    let uri = format!("coap://{}/m", running.coap);
    let frame = vector_bytes("efento", "m00_seed_open_close");
    coap_client("post", &uri, Some(&frame), running.dir.path())
        .expect("coap-client-notls")
        .0
}

/// The outage check of a sink: with its peer stopped a post hears 5.00 within `answer_within`; after
/// `restart` the same sensorgate process answers 2.01 again within `resume_within`.
pub fn assert_outage_then_resume<P>(
    running: &Running,
    peer: &mut P,
    stop: impl FnOnce(&mut P),
    restart: impl FnOnce(&mut P),
    answer_within: Duration,
    resume_within: Duration,
) {
    stop(peer);
    let started = Instant::now();
    assert_eq!(post_efento_seed(running), "5.00", "log:\n{}", running.log());
    assert!(started.elapsed() < answer_within, "{:?}", started.elapsed());
    restart(peer);
    let resumed = eventually(resume_within, || post_efento_seed(running) == "2.01");
    assert!(resumed, "log:\n{}", running.log());
}

/// A sink's copy of the Efento seed's document: the envelope and its readings.
pub fn assert_efento_document(doc: &serde_json::Value, serial: &str) {
    assert_eq!(doc["source"], "efento", "{doc}");
    assert_eq!(doc["kind"], "measurements", "{doc}");
    assert_eq!(doc["device"], serial, "{doc}");
    assert!(
        doc["measurements"]
            .as_array()
            .is_some_and(|m| !m.is_empty()),
        "{doc}"
    );
}

/// `GET path` on 127.0.0.1:`port` over a plain TCP connection: (status, body); (0, "") when
/// nothing answers.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The component `name` in a `/ready` body.
pub fn ready_component(body: &str, name: &str) -> serde_json::Value {
    let ready: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    ready["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["component"].as_str().unwrap().starts_with(name))
        .unwrap_or_else(|| panic!("no {name} in {body}"))
        .clone()
}
