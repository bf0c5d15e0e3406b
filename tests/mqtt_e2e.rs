//! The `mqtt` source and sink against a real Mosquitto broker, started by each test on a free
//! loopback port with its own configuration file; `mosquitto_pub` and `mosquitto_sub` are the
//! independent clients. Without mosquitto the tests skip, unless SENSORGATE_REQUIRE_PEERS=1.

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const SERIAL: &str = "282C024156AF";

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A mosquitto process of the test's own, on `port`, killed when dropped.
struct Broker {
    child: Child,
    port: u16,
    conf: PathBuf,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// Starts mosquitto with `extra` configuration lines; `None` when mosquitto is missing (and
    /// peers are not required).
    fn start(extra: &str) -> Option<Broker> {
        peer("mosquitto_pub")?;
        peer("mosquitto_sub")?;
        let dir = tempfile::tempdir().unwrap();
        let port = free_tcp_port();
        let conf = dir.path().join("mosquitto.conf");
        let anonymous = if extra.contains("allow_anonymous") {
            ""
        } else {
            "allow_anonymous true\n"
        };
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\n{anonymous}persistence false\nmax_queued_messages 0\n{extra}\n"
            ),
        )
        .unwrap();
        let child = spawn_mosquitto(&conf, port)?;
        Some(Broker {
            child,
            port,
            conf,
            _dir: dir,
        })
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and configuration.
    fn restart(&mut self) {
        self.stop();
        self.child = spawn_mosquitto(&self.conf, self.port).expect("mosquitto");
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn_mosquitto(conf: &Path, port: u16) -> Option<Child> {
    let program = peer("mosquitto").or_else(|| {
        let sbin = PathBuf::from("/usr/sbin/mosquitto");
        sbin.exists().then_some(sbin)
    });
    let Some(program) = program else {
        assert!(
            std::env::var("SENSORGATE_REQUIRE_PEERS").as_deref() != Ok("1"),
            "mosquitto is required (apt-get install mosquitto)"
        );
        return None;
    };
    let child = Command::new(program)
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mosquitto");
    let up = eventually(Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(up, "mosquitto did not listen on {port}");
    Some(child)
}

/// `mosquitto_pub -q 1` of a payload file to a topic, with extra arguments (TLS options).
fn publish(port: u16, topic: &str, payload: &[u8], dir: &Path, extra: &[&str]) {
    let file = dir.join(format!("payload-{}.bin", rand_suffix()));
    std::fs::write(&file, payload).unwrap();
    let out = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            topic,
            "-f",
        ])
        .arg(&file)
        .args(extra)
        .output()
        .expect("run mosquitto_pub");
    assert!(
        out.status.success(),
        "mosquitto_pub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `mosquitto_sub -v` reading `count` messages of `topic`, its output collected.
struct Subscriber {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Subscriber {
    fn start(port: u16, topic: &str, count: usize) -> Subscriber {
        let mut child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-v"])
            .args(["-t", topic, "-C", &count.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run mosquitto_sub");
        let output = Arc::new(Mutex::new(String::new()));
        let mut stdout = child.stdout.take().unwrap();
        let sink = output.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        // Let it subscribe before anything is published.
        std::thread::sleep(Duration::from_millis(300));
        Subscriber { child, output }
    }

    /// The `topic payload` lines received so far.
    fn lines(&self) -> Vec<(String, serde_json::Value)> {
        self.output
            .lock()
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(t, p)| {
                let doc = serde_json::from_str(p).unwrap_or_else(|e| panic!("{e}: {p}"));
                (t.to_string(), doc)
            })
            .collect()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `sensorgate run` in `dir` (its pipeline.toml written first), ready once its MQTT source logged
/// its connection.
struct Gate {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Gate {
    fn start(dir: &Path, toml: &str) -> Gate {
        Gate::start_env(dir, toml, &[])
    }

    fn start_env(dir: &Path, toml: &str, env: &[(&str, &str)]) -> Gate {
        std::fs::write(dir.join("pipeline.toml"), toml).unwrap();
        let (child, log) = spawn_run_env(dir, env);
        Gate { child, log }
    }

    fn start_connected(dir: &Path, toml: &str) -> Gate {
        let gate = Gate::start(dir, toml);
        gate.wait_connected(1);
        gate
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        self.log().matches("connected to the MQTT broker").count()
    }

    fn wait_connected(&self, n: usize) {
        let ok = eventually(Duration::from_secs(20), || self.connections() >= n);
        assert!(ok, "sensorgate did not connect; log:\n{}", self.log());
    }

    /// SIGTERM, and a clean exit within 15 s.
    fn terminate(&mut self) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let exited = eventually(Duration::from_secs(15), || {
            self.child.try_wait().unwrap().is_some()
        });
        assert!(exited, "no exit after SIGTERM; log:\n{}", self.log());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status}; log:\n{}", self.log());
    }

    fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL: no clean shutdown, no DISCONNECT
        let _ = self.child.wait();
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.kill();
    }
}

fn efento_frame() -> Vec<u8> {
    vector_bytes("efento", "m00_seed_open_close")
}

/// MQTT source on `url` (Efento frames on `efento/+/m`), decode, JSON lines out, dead letters apart.
fn source_pipeline(url: &str, client_id: &str, extra_sinks: &str, to: &str, tls: &str) -> String {
    format!(
        r#"
[sources.broker]
type = "mqtt"
url = "{url}"
client_id = "{client_id}"
reconnect_max = "1s"
subscriptions = [{{ topic = "efento/+/m", qos = 1, route = "measurements", device = 1 }}]
{tls}

[sinks.out]
type = "json_lines"
path = "out.jsonl"

[sinks.rejects]
type = "json_lines"
path = "rejects.jsonl"
{extra_sinks}

[[flows]]
name = "efento"
from = ["broker"]
stages = [{{ type = "decode", codec = "efento" }}]
to = [{to}]
dead_letter = "rejects"
"#
    )
}

/// An MQTT sink `copy` publishing to `url` (a dead port: it cannot confirm before `deadline`).
fn copy_sink(url: &str, deadline: &str) -> String {
    format!(
        "[sinks.copy]\ntype = \"mqtt\"\nurl = \"{url}\"\ndeadline = \"{deadline}\"\nreconnect_max = \"1s\"\n"
    )
}

/// Publishes the Efento seed frame on `efento/SERIAL/m` with QoS 1.
fn publish_frame(broker: &Broker, dir: &Path, extra: &[&str]) {
    let topic = format!("efento/{SERIAL}/m");
    publish(broker.port, &topic, &efento_frame(), dir, extra);
}

#[test]
fn a_qos1_message_from_mosquitto_pub_is_stored_and_acknowledged_once_stored() {
    let Some(broker) = Broker::start("") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let toml = source_pipeline(&broker.url(), "sg-basic", "", "\"out\"", "");
    let mut gate = Gate::start_connected(dir.path(), &toml);

    publish_frame(&broker, dir.path(), &[]);
    // Not an Efento frame: the decode stage dead-letters it, with the payload as raw_hex.
    publish(
        broker.port,
        "efento/BAD/m",
        b"not protobuf \xff",
        dir.path(),
        &[],
    );

    let out = dir.path().join("out.jsonl");
    let rejects = dir.path().join("rejects.jsonl");
    let arrived = eventually(Duration::from_secs(10), || {
        !json_lines(&out).is_empty() && !json_lines(&rejects).is_empty()
    });
    assert!(arrived, "nothing stored; log:\n{}", gate.log());
    let docs = json_lines(&out);
    assert_eq!(docs.len(), 1, "{docs:?}");
    assert_eq!(docs[0]["source"], "broker");
    assert_eq!(docs[0]["kind"], "measurements");
    assert_eq!(docs[0]["device"], SERIAL);
    let dead = json_lines(&rejects);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["path"], "efento/BAD/m");
    assert_eq!(dead[0]["raw_hex"], hex::encode(b"not protobuf \xff"));
    assert_eq!(dead[0]["stage"], "decode");

    // Both were acknowledged (the stored one and the dead-lettered one), at the latest while
    // stopping on SIGTERM: a restart with the same client id gets nothing again.
    gate.terminate();
    let gate = Gate::start_connected(dir.path(), &toml);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        json_lines(&out).len(),
        1,
        "redelivered; log:\n{}",
        gate.log()
    );
    assert_eq!(json_lines(&rejects).len(), 1);
}

/// Two flows from one MQTT source: `efento` writes every record to `out.jsonl` (to see what
/// arrived), `forward` dedupes (template key) and publishes to the `copy` sink at `copy_url`.
fn kill_pipeline(url: &str, copy_url: &str) -> String {
    let copy = copy_sink(copy_url, "60s");
    source_pipeline(url, "sg-kill", &copy, "\"out\"", "")
        + r#"
[[flows]]
name = "forward"
from = ["broker"]
stages = [
  { type = "dedupe", key = "{path}/{raw}", window = "1m" },
  { type = "decode", codec = "efento" },
]
to = ["copy"]
dead_letter = "rejects"
"#
}

#[test]
fn a_message_not_yet_stored_when_sensorgate_is_killed_is_redelivered_and_stored_once() {
    let Some(broker) = Broker::start("") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // `copy` cannot confirm: its broker is not there. The message reaches `out`, not `copy`.
    let dead = format!("mqtt://127.0.0.1:{}", free_tcp_port());
    let mut gate = Gate::start_connected(dir.path(), &kill_pipeline(&broker.url(), &dead));
    publish_frame(&broker, dir.path(), &[]);
    let out = dir.path().join("out.jsonl");
    let seen = eventually(Duration::from_secs(10), || json_lines(&out).len() == 1);
    assert!(seen, "the message did not arrive; log:\n{}", gate.log());
    // Not stored by `copy`, so not acknowledged. SIGKILL before it can be.
    std::thread::sleep(Duration::from_millis(300));
    gate.kill();

    // The same client id, `copy` now on the live broker: the broker sends the message again.
    let sub = Subscriber::start(broker.port, "sensor/#", 10);
    let second = kill_pipeline(&broker.url(), &broker.url());
    let mut gate = Gate::start_connected(dir.path(), &second);
    let again = eventually(Duration::from_secs(10), || {
        json_lines(&out).len() == 2 && sub.lines().len() == 1
    });
    assert!(again, "not redelivered; log:\n{}", gate.log());
    let docs = json_lines(&out);
    assert_eq!(docs[1]["device"], SERIAL);
    assert_eq!(docs[0]["measurements"], docs[1]["measurements"]);
    let (topic, doc) = &sub.lines()[0];
    assert_eq!(topic, &format!("sensor/{SERIAL}/telemetry"));
    assert_eq!(doc["device"], SERIAL);
    assert_eq!(doc["measurements"], docs[0]["measurements"]);

    // The sensor's gateway sends the same frame again: `efento` (no dedupe) takes it a third
    // time, `forward` drops it as a duplicate, so `copy` has it once.
    publish_frame(&broker, dir.path(), &[]);
    let third = eventually(Duration::from_secs(10), || json_lines(&out).len() == 3);
    assert!(third, "log:\n{}", gate.log());
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(sub.lines().len(), 1, "{:?}", sub.lines());

    // Everything was stored, so acknowledged: the next start gets nothing again.
    std::thread::sleep(Duration::from_millis(300));
    gate.kill();
    let gate = Gate::start_connected(dir.path(), &second);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(json_lines(&out).len(), 3, "log:\n{}", gate.log());
    assert_eq!(sub.lines().len(), 1, "{:?}", sub.lines());
}

#[test]
fn a_failed_record_is_not_acknowledged_and_comes_back_on_the_next_connection() {
    let Some(broker) = Broker::start("") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // `copy` fails every record after 1s while its broker is away; the source then reconnects and
    // the broker sends the message again, until `copy` can take it.
    let dead_port = free_tcp_port();
    let toml = source_pipeline(
        &broker.url(),
        "sg-fail",
        &copy_sink(&format!("mqtt://127.0.0.1:{dead_port}"), "1s"),
        "\"out\", \"copy\"",
        "",
    );
    let gate = Gate::start_connected(dir.path(), &toml);
    publish_frame(&broker, dir.path(), &[]);
    let out = dir.path().join("out.jsonl");
    let redelivered = eventually(Duration::from_secs(15), || json_lines(&out).len() >= 3);
    assert!(redelivered, "not sent again; log:\n{}", gate.log());
    assert!(gate.connections() >= 3, "log:\n{}", gate.log());
    for doc in json_lines(&out) {
        assert_eq!(doc["device"], SERIAL);
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in `dir`.
fn certificates(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    // Distinct names: OpenSSL (mosquitto) takes a certificate whose subject is its issuer's name for
    // a self-signed one.
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "sensorgate test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    for (name, san) in [("server", "127.0.0.1"), ("client", "sensorgate-client")] {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![san.to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &ca).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).unwrap();
    }
}

#[test]
fn tls_with_a_client_certificate_connects_and_without_one_is_refused() {
    let certs = tempfile::tempdir().unwrap();
    certificates(certs.path());
    let c = |f: &str| certs.path().join(f).display().to_string();
    let Some(broker) = Broker::start(&format!(
        "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
        c("ca.pem"),
        c("server.pem"),
        c("server-key.pem")
    )) else {
        return;
    };
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    let client_tls = [
        "--cafile",
        &c("ca.pem"),
        "--cert",
        &c("client.pem"),
        "--key",
        &c("client-key.pem"),
    ];

    let dir = tempfile::tempdir().unwrap();
    let tls = format!(
        "tls = {{ ca_file = \"{}\", cert_file = \"{}\", key_file = \"{}\" }}",
        c("ca.pem"),
        c("client.pem"),
        c("client-key.pem")
    );
    let toml = source_pipeline(&url, "sg-tls", "", "\"out\"", &tls);
    let gate = Gate::start_connected(dir.path(), &toml);
    publish_frame(&broker, dir.path(), &client_tls);
    let out = dir.path().join("out.jsonl");
    let arrived = eventually(Duration::from_secs(10), || json_lines(&out).len() == 1);
    assert!(arrived, "nothing over TLS; log:\n{}", gate.log());
    assert_eq!(json_lines(&out)[0]["device"], SERIAL);
    drop(gate);

    // The same without a client certificate: the broker refuses the handshake, nothing arrives.
    let dir = tempfile::tempdir().unwrap();
    let tls = format!("tls = {{ ca_file = \"{}\" }}", c("ca.pem"));
    let toml = source_pipeline(&url, "sg-tls-nocert", "", "\"out\"", &tls);
    let gate = Gate::start(dir.path(), &toml);
    let started = Instant::now();
    publish_frame(&broker, dir.path(), &client_tls);
    std::thread::sleep(Duration::from_secs(3).saturating_sub(started.elapsed()));
    assert_eq!(gate.connections(), 0, "log:\n{}", gate.log());
    assert!(
        gate.log().contains("cannot connect to the MQTT broker"),
        "log:\n{}",
        gate.log()
    );
    assert!(json_lines(&dir.path().join("out.jsonl")).is_empty());
}

/// CoAP source → decode → MQTT sink on the broker (deadline 1s, `extra` keys), dead letters apart.
fn sink_pipeline(url: &str, extra: &str) -> String {
    let sink = format!(
        "type = \"mqtt\"\nurl = \"{url}\"\nclient_id = \"sg-sink\"\ndeadline = \"1s\"\nreconnect_max = \"500ms\"\n{extra}"
    );
    efento_to_sink("ack_deadline = \"5s\"", "broker", &sink)
}

/// Starts [`sink_pipeline`] and waits until its sink is connected.
fn start_sink_pipeline(broker: &Broker, extra: &str) -> Running {
    peer("coap-client-notls").expect("coap-client-notls");
    let toml = sink_pipeline(&broker.url(), extra);
    let running = Running::start_pipeline(tempfile::tempdir().unwrap(), &toml);
    let connected = eventually(Duration::from_secs(10), || {
        running.log().contains("connected to the MQTT broker")
    });
    assert!(connected, "log:\n{}", running.log());
    running
}

/// Posts the Efento seed frame to the CoAP source; the answer's code.
fn post(running: &Running) -> String {
    let uri = format!("coap://{}/m", running.coap);
    coap_client("post", &uri, Some(&efento_frame()), running.dir.path())
        .expect("coap-client-notls")
        .0
}

#[test]
fn the_sink_publishes_on_the_iotconnect_layout_and_an_outage_answers_500_then_flow_resumes() {
    let Some(mut broker) = Broker::start("") else {
        return;
    };
    let running = start_sink_pipeline(&broker, "");

    let sub = Subscriber::start(broker.port, "sensor/#", 1);
    assert_eq!(post(&running), "2.01", "log:\n{}", running.log());
    assert!(eventually(Duration::from_secs(5), || sub.lines().len() == 1));
    let (topic, doc) = &sub.lines()[0];
    assert_eq!(topic, &format!("sensor/{SERIAL}/telemetry"));
    assert_efento_document(doc, SERIAL);
    drop(sub);

    // Broker away: the sensor hears 5.00 (not stored), within the sink's deadline.
    broker.stop();
    let started = Instant::now();
    assert_eq!(post(&running), "5.00", "log:\n{}", running.log());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    // Broker back: the same sensorgate process stores again.
    broker.restart();
    let sub = Subscriber::start(broker.port, "sensor/#", 1);
    let resumed = eventually(Duration::from_secs(15), || post(&running) == "2.01");
    assert!(resumed, "log:\n{}", running.log());
    assert!(eventually(Duration::from_secs(5), || !sub
        .lines()
        .is_empty()));
    assert_eq!(sub.lines()[0].0, format!("sensor/{SERIAL}/telemetry"));
}

#[test]
fn ready_is_503_while_the_sink_broker_is_away_and_200_while_it_is_connected() {
    let Some(mut broker) = Broker::start("") else {
        return;
    };
    broker.stop();
    let api = free_tcp_port();
    let toml = format!(
        "{}\n[api]\nlisten = \"127.0.0.1:{api}\"\ntoken_env = \"SG_READY_TOKEN\"\nstore = \"registry.redb\"\n",
        sink_pipeline(&broker.url(), "")
    );
    let running = Running::start_pipeline_env(
        tempfile::tempdir().unwrap(),
        &toml,
        &[("SG_READY_TOKEN", "ready-test-token-0123456789")],
    );

    // /ready until it answers `status`: the last answer.
    let ready_with = |status: u16| {
        let mut last = (0, String::new());
        let reached = eventually(Duration::from_secs(15), || {
            last = http_get(api, "/ready");
            last.0 == status
        });
        assert!(reached, "{last:?}; log:\n{}", running.log());
        last.1
    };

    // Started, listening, but the sink has no broker: not ready, and the body says which and why.
    let body = ready_with(503);
    let sink = ready_component(&body, "sink `broker`");
    assert_eq!(sink["up"], false, "{body}");
    assert!(!sink["detail"].as_str().unwrap().is_empty(), "{body}");
    assert_eq!(
        ready_component(&body, "source `efento`")["up"],
        true,
        "{body}"
    );
    let (_, metrics) = http_get(api, "/metrics");
    assert!(
        metrics.contains("component_up{component=\"sink `broker`\"} 0\n"),
        "{metrics}"
    );

    // The broker comes up: ready, without a restart; away again: not ready again.
    broker.restart();
    assert_eq!(
        ready_component(&ready_with(200), "sink `broker`")["up"],
        true
    );
    broker.stop();
    assert_eq!(
        ready_component(&ready_with(503), "sink `broker`")["up"],
        false
    );
}

#[test]
fn validate_names_bad_mqtt_keys_with_their_position() {
    let toml = r#"[sources.b]
type = "mqtt"
url = "mqtt://127.0.0.1:1883"
client_id = "x"
subscriptions = [{ topic = "a/+", qos = 1, devize = 1 }]

[sinks.m]
type = "mqtt"
host = "127.0.0.1"
topik = "x/{device}"

[sinks.n]
type = "mqtt"
host = "127.0.0.1"
topic = "x/{nope}"

[[flows]]
name = "f"
from = ["b"]
to = ["m", "n"]
"#;
    let text = validate_fails(toml);
    assert!(text.contains("pipeline.toml:5:44"), "{text}");
    assert!(text.contains("devize"), "{text}");
    assert!(text.contains("pipeline.toml:10:1"), "{text}");
    assert!(text.contains("did you mean `topic`?"), "{text}");
    assert!(text.contains("{nope}"), "{text}");
}

#[test]
fn username_and_password_are_sent_and_a_wrong_password_is_refused() {
    let Some(passwd) = peer("mosquitto_passwd") else {
        return;
    };
    let users = tempfile::tempdir().unwrap();
    let file = users.path().join("passwords");
    let made = Command::new(passwd)
        .args(["-b", "-c"])
        .arg(&file)
        .args(["gate", "s3cret"])
        .status()
        .unwrap();
    assert!(made.success());
    let conf = format!("allow_anonymous false\npassword_file {}\n", file.display());
    let Some(broker) = Broker::start(&conf) else {
        return;
    };
    let login = ["-u", "gate", "-P", "s3cret"];

    let dir = tempfile::tempdir().unwrap();
    let creds = "username = \"gate\"\npassword_env = \"SENSORGATE_TEST_MQTT_PASSWORD\"";
    let toml = source_pipeline(&broker.url(), "sg-user", "", "\"out\"", creds);
    let password = [("SENSORGATE_TEST_MQTT_PASSWORD", "s3cret")];
    let gate = Gate::start_env(dir.path(), &toml, &password);
    gate.wait_connected(1);
    publish_frame(&broker, dir.path(), &login);
    let out = dir.path().join("out.jsonl");
    let arrived = eventually(Duration::from_secs(10), || json_lines(&out).len() == 1);
    assert!(arrived, "log:\n{}", gate.log());
    drop(gate);

    let dir = tempfile::tempdir().unwrap();
    let creds = "username = \"gate\"\npassword = \"wrong\"";
    let toml = source_pipeline(&broker.url(), "sg-user-wrong", "", "\"out\"", creds);
    let gate = Gate::start(dir.path(), &toml);
    let refused = eventually(Duration::from_secs(10), || {
        gate.log().contains("cannot connect to the MQTT broker")
    });
    assert!(refused, "log:\n{}", gate.log());
    assert!(
        gate.log().contains("NotAuthorized") || gate.log().contains("BadUserNamePassword"),
        "log:\n{}",
        gate.log()
    );
    assert_eq!(gate.connections(), 0, "log:\n{}", gate.log());
}

#[test]
fn a_message_taken_just_before_sigterm_is_stored_once_across_the_restart() {
    let Some(broker) = Broker::start("") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let toml = source_pipeline(&broker.url(), "sg-term", "", "\"out\"", "");
    let mut gate = Gate::start_connected(dir.path(), &toml);
    // SIGTERM right behind the message: the stopping source still acknowledges what its flows
    // store, so the restart does not get it again (and if it came too late to be taken, the
    // restart gets it once).
    publish_frame(&broker, dir.path(), &[]);
    gate.terminate();
    let gate = Gate::start_connected(dir.path(), &toml);
    let out = dir.path().join("out.jsonl");
    let stored = eventually(Duration::from_secs(10), || json_lines(&out).len() == 1);
    assert!(stored, "log:\n{}", gate.log());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(json_lines(&out).len(), 1, "log:\n{}", gate.log());
}

#[test]
fn a_topic_template_with_qos_0_and_retain_reaches_a_later_subscriber() {
    let Some(broker) = Broker::start("") else {
        return;
    };
    let extra = "topic = \"sg/{source}/{device}/{kind}\"\nqos = 0\nretain = true";
    let running = start_sink_pipeline(&broker, extra);
    assert_eq!(post(&running), "2.01", "log:\n{}", running.log());
    // Subscribed only now: the broker hands over the retained message.
    let sub = Subscriber::start(broker.port, "sg/#", 1);
    assert!(eventually(Duration::from_secs(5), || sub.lines().len() == 1));
    let (topic, doc) = &sub.lines()[0];
    assert_eq!(topic, &format!("sg/efento/{SERIAL}/measurements"));
    assert_eq!(doc["device"], SERIAL);
}

/// A burst of QoS 1 messages with no in-flight limit at the broker, stored in groups, so acks
/// become due in bursts: each message is stored exactly once and the connection stays up. (The
/// overload that made the old ack path reconnect into a redelivery loop needs sustained load of
/// 15k/s and more; `benches/mqtt_kafka_load.sh` shows it, this test does not reproduce it.)
#[test]
fn a_burst_of_thousands_of_messages_is_stored_once_each_without_a_reconnect() {
    let Some(broker) = Broker::start("max_inflight_messages 0") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
[sources.broker]
type = "mqtt"
url = "{}"
client_id = "sg-burst"
subscriptions = [{{ topic = "burst/+", qos = 1, device = 1 }}]

[sinks.out]
type = "json_lines"
path = "out.jsonl"

[[flows]]
name = "burst"
from = ["broker"]
stages = [{{ type = "decode", codec = "json", json = {{ preset = "flespi" }} }}]
to = ["out"]
"#,
        broker.url()
    );
    let gate = Gate::start_connected(dir.path(), &toml);
    let n = 6000;
    let lines: String = (0..n)
        .map(|i| {
            format!(
                "{{\"ident\":\"d1\",\"timestamp\":{},\"v\":{i}}}\n",
                1_700_000_000 + i
            )
        })
        .collect();
    let mut publisher = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args(["-q", "1", "-t", "burst/d1", "-l"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mosquitto_pub");
    {
        use std::io::Write;
        let mut stdin = publisher.stdin.take().unwrap();
        stdin.write_all(lines.as_bytes()).unwrap();
    }
    let out = publisher.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = dir.path().join("out.jsonl");
    let all = eventually(Duration::from_secs(60), || json_lines(&file).len() >= n);
    assert!(
        all,
        "{} of {n}; log:\n{}",
        json_lines(&file).len(),
        gate.log()
    );
    std::thread::sleep(Duration::from_secs(2)); // room for redeliveries to show
    let docs = json_lines(&file);
    let distinct: std::collections::BTreeSet<String> = docs
        .iter()
        .map(|d| d["measurements"][0]["value"].to_string())
        .collect();
    assert_eq!(distinct.len(), n, "log:\n{}", gate.log());
    assert_eq!(docs.len(), n, "stored twice; log:\n{}", gate.log());
    assert!(!gate.log().contains("reconnecting"), "log:\n{}", gate.log());
}
