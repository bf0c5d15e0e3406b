//! The HTTP API of a running `sensorgate run`, over real HTTP: a device onboarded through the API
//! decodes from its next telegram on (the esp3 decode and enrich stages read `registry = "api"`),
//! the store survives a restart, the device routes refuse missing or wrong credentials, the OpenAPI
//! document validates (openapi-spec-validator) and lists every route, and `/metrics` parses as
//! Prometheus text (prometheus_client) with counters that match what was sent.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::SinkExt;
use sensorgate::codecs::enocean::esp3;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "e2e-token-0123456789abcdef";
const BASIC: &str = "ops:correct-horse-battery";

/// Vector 06: an A5-02-05 temperature telegram (19.92 °C) from 0180a1b2.
const TELEGRAM: &str = "a5000080080180a1b200";
const SENDER: &str = "0180a1b2";

/// A `sensorgate run` with the API; killed when dropped.
struct Api {
    child: Child,
    log: Arc<Mutex<String>>,
    base: String,
    gateways: SocketAddr,
    coap: SocketAddr,
    client: reqwest::Client,
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pipeline(api_port: u16, ws_port: u16, coap_port: u16) -> String {
    format!(
        r#"
[sources.efento]
type = "coap"
listen = "127.0.0.1:{coap_port}"

[[flows]]
name = "efento"
from = ["efento"]
stages = [{{ type = "decode", codec = "efento" }}]
to = ["telemetry"]
dead_letter = "rejects"

[api]
listen = "127.0.0.1:{api_port}"
token_env = "SENSORGATE_API_TOKEN"
basic_env = "SENSORGATE_API_BASIC"
store = "data/registry.redb"
seed = "devices.toml"

[sources.gateways]
type = "esp3_websocket"
listen = "127.0.0.1:{ws_port}"

[sinks.telemetry]
type = "json_lines"
path = "telemetry.jsonl"
fsync = false

[sinks.rejects]
type = "json_lines"
path = "rejects.jsonl"
fsync = false

[[flows]]
name = "enocean"
from = ["gateways"]
stages = [
  {{ type = "decode", codec = "esp3", registry = "api", stats_interval = "0s" }},
  {{ type = "enrich", registry = "api", target = "device" }},
]
to = ["telemetry"]
dead_letter = "rejects"
"#
    )
}

impl Api {
    /// Starts sensorgate in `dir` (a pipeline.toml is written on first start) and waits for /ready.
    async fn start(dir: &Path) -> Api {
        let pipeline_path = dir.join("pipeline.toml");
        if !pipeline_path.exists() {
            let toml = pipeline(
                common::free_tcp_port(),
                common::free_tcp_port(),
                common::free_udp_port(),
            );
            std::fs::write(&pipeline_path, toml).unwrap();
            // The seed holds another device: the one under test is onboarded through the API.
            std::fs::write(
                dir.join("devices.toml"),
                "[[devices]]\neurid = \"0180a1b3\"\neep = \"a5-04-01\"\nfriendly_id = \"Climate 1\"\n",
            )
            .unwrap();
        }
        let text = std::fs::read_to_string(&pipeline_path).unwrap();
        let port = |key: &str, section: &str| -> u16 {
            let at = text.find(section).unwrap();
            let line = text[at..].lines().find(|l| l.starts_with(key)).unwrap();
            line.rsplit(':')
                .next()
                .unwrap()
                .trim_end_matches('"')
                .parse()
                .unwrap()
        };
        let api_port = port("listen", "[api]");
        let ws_port = port("listen", "[sources.gateways]");
        let coap_port = port("listen", "[sources.efento]");
        let (child, log) = common::spawn_run_env(
            dir,
            &[
                ("SENSORGATE_API_TOKEN", TOKEN),
                ("SENSORGATE_API_BASIC", BASIC),
            ],
        );
        let api = Api {
            child,
            log,
            base: format!("http://127.0.0.1:{api_port}"),
            gateways: format!("127.0.0.1:{ws_port}").parse().unwrap(),
            coap: format!("127.0.0.1:{coap_port}").parse().unwrap(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        };
        for _ in 0..300 {
            if let Ok(r) = api.client.get(api.url("/ready")).send().await
                && r.status() == 200
            {
                assert_eq!(r.json::<Value>().await.unwrap()["ready"], true);
                return api;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the API never became ready; log:\n{}", api.log());
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn authed(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(TOKEN)
    }

    /// An authenticated GET: the status and the JSON body (null if it is not JSON).
    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .authed(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json::<Value>().await.unwrap_or(Value::Null))
    }

    async fn terminate(mut self) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        for _ in 0..300 {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no exit after SIGTERM; log:\n{}", self.log());
    }

    /// Sends `count` ESP3 frames of `telegram` as one gateway over ws (raw ESP3 mode).
    async fn send_telegrams(&self, telegram: &str, count: usize) {
        let data = hex::decode(telegram).unwrap();
        let url = format!("ws://{}/aruba?gateway=gw-e2e", self.gateways);
        let (mut ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connect");
        for _ in 0..count {
            let frame = esp3::encode(0x01, &data, &[1, 0xff, 0xff, 0xff, 0xff, 0x45, 0]);
            ws.send(Message::binary(frame)).await.unwrap();
        }
        ws.close(None).await.unwrap();
    }
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

async fn wait_for(what: &str, api: &Api, mut done: impl FnMut() -> bool) {
    for _ in 0..300 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}; log:\n{}", api.log());
}

fn telemetry_of(dir: &Path, sender: &str) -> Vec<Value> {
    lines(&dir.join("telemetry.jsonl"))
        .into_iter()
        .filter(|l| l["telemetry"].is_object() && l["raw"]["sender"] == sender)
        .collect()
}

/// The test venv's Python with `modules`, or None (a failure when peers are required).
fn python_with(modules: &str) -> Option<PathBuf> {
    let candidate = std::env::var_os("SENSORGATE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    common::python_with(candidate, modules)
}

fn run_python(python: &Path, script: &str, stdin: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    common::assert_success(&out);
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_onboarded_over_the_api_decodes_at_once_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(dir.path()).await;

    // Not onboarded yet: the telegram is an UNKNOWN_DEVICE event, no telemetry.
    api.send_telegrams(TELEGRAM, 1).await;
    wait_for("the unknown-device event", &api, || {
        std::fs::read_to_string(dir.path().join("telemetry.jsonl"))
            .unwrap_or_default()
            .contains("UNKNOWN_DEVICE")
    })
    .await;
    assert!(telemetry_of(dir.path(), SENDER).is_empty());

    let put = api
        .authed(
            reqwest::Method::PUT,
            &format!("/api/v1/devices/{}", SENDER.to_uppercase()),
        )
        .json(&json!({
            "eep": "A5-02-05",
            "friendly_id": "Temperature 1",
            "location": "Room 221",
            "key": "456E4F6365616E20476D62482E313300",
            "fields": { "room": "221" }
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    let onboarded: Value = put.json().await.unwrap();
    assert_eq!(onboarded["eurid"], SENDER);
    assert_eq!(onboarded["eep"], "a5-02-05");
    assert_eq!(onboarded["security"], true);
    assert!(onboarded.get("key").is_none(), "{onboarded}");

    // The telegram is a plain one: the key goes again (security: false) before it is sent. Then it
    // decodes and is enriched right after the PUT, with no reload to wait for.
    let security_off = api
        .authed(reqwest::Method::PUT, &format!("/api/v1/devices/{SENDER}"))
        .json(&json!({
            "eep": "a5-02-05",
            "friendly_id": "Temperature 1",
            "location": "Room 221",
            "security": false,
            "fields": { "room": "221" }
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(security_off.status(), 200);
    api.send_telegrams(TELEGRAM, 1).await;
    wait_for("telemetry of the onboarded device", &api, || {
        !telemetry_of(dir.path(), SENDER).is_empty()
    })
    .await;
    let doc = &telemetry_of(dir.path(), SENDER)[0];
    assert_eq!(doc["telemetry"]["data"][0]["value"], 19.92, "{doc}");
    assert_eq!(doc["device"]["friendly_id"], "Temperature 1", "{doc}");
    assert_eq!(doc["device"]["room"], "221", "{doc}");

    // The seed's device is in the store too.
    let listed: Value = api
        .authed(reqwest::Method::GET, "/api/v1/devices")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["eurid"].as_str())
        .collect();
    assert_eq!(ids, ["0180a1b2", "0180a1b3"]);

    // Restart with the seed gone: the store alone still has both devices, and decodes.
    api.terminate().await;
    std::fs::write(dir.path().join("devices.toml"), "").unwrap();
    std::fs::remove_file(dir.path().join("telemetry.jsonl")).unwrap();
    let api = Api::start(dir.path()).await;
    let device: Value = api
        .authed(reqwest::Method::GET, &format!("/api/v1/devices/{SENDER}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(device["location"], "Room 221");
    assert_eq!(device["security"], false);
    api.send_telegrams(TELEGRAM, 1).await;
    wait_for("telemetry after the restart", &api, || {
        !telemetry_of(dir.path(), SENDER).is_empty()
    })
    .await;

    // Removed: the next telegram is unknown again.
    let deleted = api
        .authed(
            reqwest::Method::DELETE,
            &format!("/api/v1/devices/{SENDER}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let gone = api
        .authed(reqwest::Method::GET, &format!("/api/v1/devices/{SENDER}"))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    assert!(
        gone.json::<Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains(SENDER)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_routes_refuse_missing_or_wrong_credentials_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(dir.path()).await;
    let cases: [(&str, Option<String>); 5] = [
        ("no header", None),
        ("wrong token", Some(format!("Bearer {TOKEN}x"))),
        ("empty token", Some("Bearer ".into())),
        ("wrong basic", Some(format!("Basic {}", b64("ops:wrong")))),
        ("token as basic", Some(format!("Basic {}", b64(TOKEN)))),
    ];
    for (what, header) in cases {
        for (method, path) in [
            (reqwest::Method::GET, "/api/v1/devices"),
            (reqwest::Method::PUT, "/api/v1/devices/0180a1b2"),
            (reqwest::Method::GET, "/api/v1/devices/backup"),
            (reqwest::Method::POST, "/api/v1/devices/restore"),
        ] {
            let mut request = api
                .client
                .request(method.clone(), api.url(path))
                .json(&json!({}));
            if let Some(h) = &header {
                request = request.header("authorization", h);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401, "{what}: {method} {path}");
            let body: Value = response.json().await.unwrap();
            assert!(body["error"].is_string(), "{what}: {body}");
        }
    }
    let basic = api
        .client
        .get(api.url("/api/v1/devices"))
        .basic_auth("ops", Some("correct-horse-battery"))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 200);
    for open in ["/health", "/ready", "/metrics", "/openapi.json", "/docs"] {
        let r = api.client.get(api.url(open)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{open} needs no credentials");
    }

    let bad = api
        .authed(reqwest::Method::PUT, "/api/v1/devices/0180a1b2")
        .json(&json!({ "eep": "a5-02" }))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let error = bad.json::<Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(error.contains("RORG-FUNC-TYPE"), "{error}");
    let typo = api
        .authed(reqwest::Method::PUT, "/api/v1/devices/0180a1b2")
        .header("content-type", "application/json")
        .body(r#"{"friendly": "x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(typo.status(), 400);
    assert!(typo.text().await.unwrap().contains("friendly"));
    let restore = api
        .authed(reqwest::Method::POST, "/api/v1/devices/restore?mode=wipe")
        .json(&json!([]))
        .send()
        .await
        .unwrap();
    assert_eq!(restore.status(), 400);
    let unknown = api
        .authed(reqwest::Method::GET, "/api/v1/devices/ffffffff")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert!(unknown.json::<Value>().await.unwrap()["error"].is_string());
}

fn b64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_validates_and_every_route_in_it_answers() {
    let Some(python) = python_with("openapi_spec_validator") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(dir.path()).await;
    let text = api
        .client
        .get(api.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let verdict = run_python(
        &python,
        "import json, sys\nfrom openapi_spec_validator import validate\nvalidate(json.load(sys.stdin))\nprint('valid')",
        text.as_bytes(),
    );
    assert_eq!(verdict.trim(), "valid");

    let document: Value = serde_json::from_str(&text).unwrap();
    let mut listed = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in ["get", "put", "post", "delete"] {
            if item.get(method).is_some() {
                listed.push(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    listed.sort();
    // Each documented operation is served (not the 404 of an unknown route, not a 405), in an
    // order that leaves the device there for the next call.
    let order = [
        "PUT /api/v1/devices/{id}",
        "GET /api/v1/devices/{id}",
        "GET /api/v1/devices",
        "GET /api/v1/devices/backup",
        "POST /api/v1/devices/restore",
        "DELETE /api/v1/devices/{id}",
        "GET /health",
        "GET /ready",
        "GET /metrics",
        "GET /openapi.json",
        "GET /docs",
        "GET /live",
        "GET /api/v1/telemetry",
        "GET /api/v1/telemetry/{id}",
        "GET /api/v1/gateways",
        "GET /api/v1/gateways/connected",
        "GET /api/v1/statistics/devices",
        "GET /api/v1/statistics/devices/{id}",
        "GET /api/v1/statistics/gateways",
        "POST /api/v1/downlinks/{id}",
        "GET /api/v1/downlinks/{id}",
    ];
    // Every route is one of those, or the tap, a stream: `sensorgate_tap_streams_the_records_going_by`
    // reads it.
    let mut expected: Vec<&str> = order.iter().copied().chain(["GET /api/v1/tap"]).collect();
    expected.sort();
    assert_eq!(listed, expected);

    // A record of a device goes by first, so that its telemetry exists.
    api.send_telegrams(TELEGRAM, 1).await;
    wait_for("a telemetry record", &api, || {
        !lines(&dir.path().join("telemetry.jsonl")).is_empty()
    })
    .await;
    // Its telegram statistics reach the API with the decode stage's next report (every second).
    let mut counted = false;
    for _ in 0..50 {
        if api
            .get(&format!("/api/v1/statistics/devices/{SENDER}"))
            .await
            .0
            == 200
        {
            counted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(counted, "no statistics of {SENDER}; log:\n{}", api.log());

    for operation in order {
        let (method, path) = operation.split_once(' ').unwrap();
        let id = if path.starts_with("/api/v1/telemetry") || path.starts_with("/api/v1/statistics")
        {
            SENDER
        } else if path.starts_with("/api/v1/downlinks") {
            "282C024156AF"
        } else {
            "room-7-meter"
        };
        let body = match path {
            "/api/v1/devices/restore" => json!([{ "id": "room-7-meter", "location": "restored" }]),
            "/api/v1/downlinks/{id}" => json!({ "transmission_interval": 600 }),
            _ => json!({ "location": "hall" }),
        };
        let path = path.replace("{id}", id);
        let response = api
            .authed(method.parse().unwrap(), &path)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{operation}: {} {}",
            response.status(),
            response.text().await.unwrap()
        );
    }
    let docs = api.client.get(api.url("/docs")).send().await.unwrap();
    assert!(docs.text().await.unwrap().contains("openapi.json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_count_what_was_sent() {
    let Some(python) = python_with("prometheus_client") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(dir.path()).await;
    // The seed's A5-04-01 sensor (vector 07), so that every frame decodes to telemetry.
    const SENT: usize = 7;
    for id in ["meter-1", "meter-2"] {
        let put = api
            .authed(reqwest::Method::PUT, &format!("/api/v1/devices/{id}"))
            .json(&json!({ "location": "basement" }))
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 201);
    }
    api.send_telegrams("a5007d8c0a0180a1b300", SENT).await;
    wait_for("every telegram written", &api, || {
        telemetry_of(dir.path(), "0180a1b3").len() == SENT
    })
    .await;
    let text = api
        .client
        .get(api.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The reference parser: every family with its type, every sample with its labels.
    let parsed = run_python(
        &python,
        r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.setdefault(s.name, []).append({"type": family.type, "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#,
        text.as_bytes(),
    );
    let families: Value = serde_json::from_str(&parsed).unwrap();
    let sample = |name: &str, key: &str, value: &str| -> f64 {
        let samples = families[name]
            .as_array()
            .unwrap_or_else(|| panic!("no {name} in\n{text}"));
        let s = samples
            .iter()
            .find(|s| s["labels"][key] == value)
            .unwrap_or_else(|| panic!("no {name}{{{key}=\"{value}\"}} in\n{text}"));
        assert_eq!(s["type"], "counter");
        s["value"].as_f64().unwrap()
    };
    assert_eq!(
        sample("component_received_events_total", "component", "gateways"),
        SENT as f64
    );
    assert_eq!(
        sample("esp3_frames_total", "source", "gateways"),
        SENT as f64
    );
    let enriched = lines(&dir.path().join("telemetry.jsonl"))
        .iter()
        .filter(|l| l["device"]["friendly_id"] == "Climate 1")
        .count();
    assert!(
        enriched >= SENT,
        "every telemetry record was enriched from the API's store"
    );
    assert_eq!(
        sample("enrich_enriched_total", "flow", "enocean"),
        enriched as f64
    );
    assert_eq!(
        sample("api_device_changes_total", "change", "onboarded"),
        2.0
    );
    assert!(text.contains("# TYPE esp3_frames_total counter"), "{text}");

    // Gauges and histograms, as the reference parser reads them.
    let typed = |name: &str, key: &str, value: &str, kind: &str| -> f64 {
        let s = families[name]
            .as_array()
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
            .iter()
            .find(|s| s["labels"][key] == value)
            .unwrap_or_else(|| panic!("no {name}{{{key}=\"{value}\"}} in\n{text}"))
            .clone();
        assert_eq!(s["type"], kind, "{name}");
        s["value"].as_f64().unwrap()
    };
    // Every record the telemetry sink stored has its reception-to-durable latency observed.
    let stored = sample("component_sent_events_total", "component", "telemetry");
    assert!(stored >= SENT as f64);
    assert_eq!(
        typed(
            "component_latency_seconds_count",
            "component",
            "telemetry",
            "histogram"
        ),
        stored
    );
    let in_bucket = families["component_latency_seconds_bucket"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["labels"]["component"] == "telemetry" && s["labels"]["le"] == "+Inf")
        .unwrap()["value"]
        .as_f64()
        .unwrap();
    assert_eq!(in_bucket, stored);
    assert!(
        typed(
            "component_latency_seconds_sum",
            "component",
            "telemetry",
            "histogram"
        ) > 0.0
    );
    // Queue depths and readiness per component.
    assert_eq!(
        typed("queue_depth", "component", "flow `enocean`", "gauge"),
        0.0
    );
    assert_eq!(
        typed("queue_depth", "component", "sink `telemetry`", "gauge"),
        0.0
    );
    assert_eq!(
        typed("component_up", "component", "sink `telemetry`", "gauge"),
        1.0
    );
}

/// coap-client-notls posting `payload` to `path` of the pipeline's CoAP source: (code, answer).
async fn coap_post(api: &Api, path: &str, payload: Vec<u8>, dir: &Path) -> (String, Vec<u8>) {
    let uri = format!("coap://{}/{path}", api.coap);
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        common::coap_client("post", &uri, Some(&payload), &dir).expect("coap-client-notls")
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_change_queued_over_the_api_rides_in_the_next_ack_and_is_confirmed() {
    use prost::Message as _;
    use sensorgate::codecs::efento::proto::ProtoConfig;
    if common::peer("coap-client-notls").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(dir.path()).await;
    let serial = "282C024156AF";
    let post = |path: &str, body: Value| api.authed(reqwest::Method::POST, path).json(&body).send();
    for (path, body, why) in [
        (
            "/api/v1/downlinks/nope",
            json!({ "transmission_interval": 600 }),
            "not an Efento serial",
        ),
        (
            "/api/v1/downlinks/282C024156AF",
            json!({ "no_such_field": 1 }),
            "no_such_field",
        ),
        (
            "/api/v1/downlinks/282C024156AF",
            json!([1]),
            "a JSON object",
        ),
    ] {
        let r = post(path, body).await.unwrap();
        assert_eq!(r.status(), 400, "{path}");
        let text = r.text().await.unwrap();
        assert!(text.contains(why), "{text}");
    }
    let r = post(
        "/api/v1/downlinks/282c024156af",
        json!({ "measurement_period_base": 120 }),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 202);
    let queued: Value = r.json().await.unwrap();
    assert_eq!(queued["status"], "pending", "{queued}");
    assert_eq!(queued["fields"]["measurement_period_base"], 120, "{queued}");
    let status = || async {
        let r = api
            .authed(reqwest::Method::GET, "/api/v1/downlinks/282C024156AF")
            .send()
            .await
            .unwrap();
        let changes: Value = r.json().await.unwrap();
        changes[0].clone()
    };

    // The sensor's next confirmable /m: its ACK carries the new period.
    let frame = common::vector_bytes("efento", "m00_seed_open_close");
    let (code, answer) = coap_post(&api, "m", frame, dir.path()).await;
    assert_eq!(code, "2.01", "log:\n{}", api.log());
    let ack = ProtoConfig::decode(answer.as_slice()).unwrap();
    assert_eq!(ack.measurement_period_base, 120);
    assert!(ack.current_time > 0);
    assert_eq!(status().await["status"], "sent");

    // Its latest values are on the API now.
    let r = api
        .authed(
            reqwest::Method::GET,
            &format!("/api/v1/telemetry/{}", serial.to_lowercase()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let view: Value = r.json().await.unwrap();
    assert_eq!(view["device"], serial, "{view}");
    assert_eq!(view["records"], 1, "{view}");
    assert!(!view["latest"].as_object().unwrap().is_empty(), "{view}");

    // Its configuration report with the old period leaves the change sent; with the new, confirmed.
    let report = |period: u32| {
        ProtoConfig {
            serial_number: hex::decode(serial).unwrap(),
            measurement_period_base: period,
            ..Default::default()
        }
        .encode_to_vec()
    };
    let (code, _) = coap_post(&api, "c", report(60), dir.path()).await;
    assert_eq!(code, "2.01");
    assert_eq!(status().await["status"], "sent");
    let (code, _) = coap_post(&api, "c", report(120), dir.path()).await;
    assert_eq!(code, "2.01");
    let change = status().await;
    assert_eq!(change["status"], "confirmed", "{change}");
    assert_eq!(change["confirmed_by"], "configuration", "{change}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensorgate_tap_streams_the_records_going_by() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(dir.path()).await;
    // Refused without the token.
    let out = common::sensorgate()
        .args(["tap", "--api", &api.base, "--token-env", "NO_SUCH_VARIABLE"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{out:?}"
    );

    let mut tap = common::sensorgate()
        .args(["tap", "enocean", "--api", &api.base])
        .env("SENSORGATE_API_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = tap.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    // Telegrams until the tap (subscribed once its request arrived) shows one.
    let mut seen = None;
    for _ in 0..50 {
        api.send_telegrams(TELEGRAM, 1).await;
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            seen = Some(line);
            break;
        }
    }
    let _ = tap.kill();
    let _ = tap.wait();
    let line = seen.unwrap_or_else(|| panic!("the tap showed nothing; log:\n{}", api.log()));
    let doc: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(doc["source"], "gateways", "{doc}");
    assert_eq!(doc["device"], SENDER, "{doc}");
}

/// The live page in a real browser (Debian's Chromium, driven through ChromeDriver by
/// `tests/browser/live_page.py`): it asks for credentials without them, refreshes itself with the
/// token from its address, and shows a telegram sent by `sensorgate simulate` (device, last values,
/// gateway, RSSI, and the gateway's counters) without being reloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_page_shows_a_telegram_from_the_simulator_in_a_real_browser() {
    use std::io::{BufRead, BufReader, Write};
    if common::peer("chromedriver").is_none() || common::peer("chromium").is_none() {
        common::require_or_skip(
            "chromium and chromedriver (apt-get install chromium chromium-driver)",
        );
        return;
    }
    let python = std::env::var_os("SENSORGATE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pipeline.toml"),
        pipeline(
            common::free_tcp_port(),
            common::free_tcp_port(),
            common::free_udp_port(),
        ),
    )
    .unwrap();
    // The simulated population's registry is the API store's seed: its device decodes.
    let out = common::sensorgate()
        .args([
            "simulate",
            "--target",
            "ws://127.0.0.1:1/aruba",
            "--devices",
            "1",
            "--seed",
            "7",
        ])
        .args(["--registry-out", "devices.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    common::assert_success(&out);
    let api = Api::start(dir.path()).await;

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/live_page.py");
    let mut browser = Command::new(&python)
        .arg(&script)
        .args([&api.base, TOKEN])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the browser script");
    let mut stdin = browser.stdin.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = browser.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut steps: Vec<Value> = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(90))
            .unwrap_or_else(|_| panic!("the browser script did not get ready: {steps:#?}"));
        if line == "READY" {
            break;
        }
        steps.push(serde_json::from_str(&line).unwrap());
    }
    assert_eq!(steps.len(), 2, "{steps:#?}");
    assert!(steps.iter().all(|s| s["passed"] == true), "{steps:#?}");

    // One telegram from one simulated gateway, while the page is open.
    let out = common::sensorgate()
        .args([
            "simulate",
            "--target",
            &format!("ws://{}/aruba", api.gateways),
        ])
        .args([
            "--mode",
            "raw",
            "--gateways",
            "1",
            "--devices",
            "1",
            "--seed",
            "7",
        ])
        .args(["--count", "1", "--quiet", "--manifest", "manifest.jsonl"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    common::assert_success(&out);
    writeln!(stdin, "sent").unwrap();
    drop(stdin);
    let last: Value = rx
        .recv_timeout(Duration::from_secs(60))
        .map(|l| serde_json::from_str(&l).unwrap())
        .expect("the browser script's last step");
    let status = browser.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut browser.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        status.success() && last["passed"] == true,
        "{last:#}\n{stderr}\nlog:\n{}",
        api.log()
    );

    // What the page shows is what was sent, as the API reports it.
    let manifest = lines(&dir.path().join("manifest.jsonl"));
    let sender = manifest[0]["sender"].as_str().unwrap().to_ascii_lowercase();
    let page = &last["page"];
    let row = page["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"].as_str().unwrap().to_ascii_lowercase() == sender)
        .unwrap_or_else(|| panic!("no row for {sender}: {page:#}"));
    let id = row["device"].as_str().unwrap();
    let (_, view) = api.get(&format!("/api/v1/telemetry/{id}")).await;
    let cells = row["cells"].as_array().unwrap();
    assert_eq!(cells[2], "sim-gw-0", "{row:#}");
    assert_eq!(cells[3], format!("{} dBm", view["rssi"]), "{row:#}");
    let latest = view["latest"].as_object().unwrap();
    assert!(!latest.is_empty(), "{view:#}");
    let shown = row["values"].as_object().unwrap();
    assert_eq!(
        shown.keys().collect::<Vec<_>>(),
        latest.keys().collect::<Vec<_>>(),
        "{row:#}"
    );
    for (key, latest) in latest {
        let text = shown[key].as_str().unwrap();
        let number = text.split_whitespace().nth(1).unwrap();
        match latest["value"].as_f64() {
            Some(v) => assert!(
                (number.parse::<f64>().unwrap() - v).abs() < 1e-3,
                "{key}: {text} vs {latest}"
            ),
            None => assert!(
                text.contains(&latest["value"].as_str().unwrap_or_default().to_string()),
                "{key}: {text}"
            ),
        }
    }
    let gateway = page["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["gateway"] == "sim-gw-0")
        .unwrap_or_else(|| panic!("no gateway row: {page:#}"));
    let (_, gateways) = api.get("/api/v1/gateways").await;
    assert_eq!(gateways[0]["gateway"], "sim-gw-0");
    assert_eq!(
        gateway["cells"][2],
        gateways[0]["records"].to_string(),
        "{gateway:#}"
    );
    assert_eq!(gateway["cells"][3], "1", "one device heard: {gateway:#}");
}

/// Telegram statistics per device and per gateway in the EnOcean IoT Connector's shape, and the
/// gateways connected now, over real HTTP while a gateway stays connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegram_statistics_in_the_iotc_shape_and_the_connected_gateways() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(dir.path()).await;
    assert_eq!(api.get("/api/v1/gateways/connected").await.1, json!([]));

    // One raw gateway that stays connected: 3 telegrams of the seed's A5-04-01 sensor (vector 07),
    // 2 of a sender no registry knows.
    let url = format!("ws://{}/aruba?gateway=gw-stats", api.gateways);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let frame = |telegram: &str| {
        Message::binary(esp3::encode(
            0x01,
            &hex::decode(telegram).unwrap(),
            &[1, 0xff, 0xff, 0xff, 0xff, 0x45, 0],
        ))
    };
    for _ in 0..3 {
        ws.send(frame("a5007d8c0a0180a1b300")).await.unwrap();
    }
    for _ in 0..2 {
        ws.send(frame(TELEGRAM)).await.unwrap();
    }
    let mut devices = Value::Null;
    for _ in 0..50 {
        devices = api.get("/api/v1/statistics/devices").await.1;
        let total: u64 = devices
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|d| d["stats"]["totalTelegramCount"].as_u64().unwrap())
                    .sum()
            })
            .unwrap_or(0);
        if total == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let of = |id: &str| {
        devices
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["device"]["sourceEurid"] == id)
            .unwrap_or_else(|| panic!("no {id} in {devices:#}"))
            .clone()
    };
    let known = of("0180a1b3");
    assert_eq!(known["device"]["friendlyID"], "Climate 1", "{known:#}");
    assert_eq!(known["device"]["eep"], "a5-04-01", "{known:#}");
    assert_eq!(known["device"]["activeFlag"], "true");
    assert_eq!(known["stats"]["totalTelegramCount"], 3, "{known:#}");
    assert_eq!(known["stats"]["succesfullyProcessed"], 3, "{known:#}");
    assert_eq!(known["stats"]["notProcessed"], 0, "{known:#}");
    let unknown = of(SENDER);
    assert_eq!(unknown["device"]["activeFlag"], "false");
    assert_eq!(unknown["stats"]["totalTelegramCount"], 2, "{unknown:#}");
    assert_eq!(unknown["stats"]["notProcessed"], 2, "{unknown:#}");
    let last_seen: u64 = known["stats"]["lastSeen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(last_seen) < 60, "{last_seen} vs {now}");

    let (status, one) = api.get("/api/v1/statistics/devices/0180A1B3").await;
    assert_eq!(status, 200);
    assert_eq!(one, json!([known]));
    assert_eq!(api.get("/api/v1/statistics/devices/01020304").await.0, 404);
    assert_eq!(api.get("/api/v1/statistics/devices/not-an-id").await.0, 400);

    let (_, gateways) = api.get("/api/v1/statistics/gateways").await;
    assert_eq!(gateways[0]["device"]["mac"], "gw-stats", "{gateways:#}");
    assert_eq!(
        gateways[0]["stats"]["totalTelegramCount"], 5,
        "{gateways:#}"
    );
    assert_eq!(
        gateways[0]["stats"]["succesfullyProcessed"], 3,
        "{gateways:#}"
    );

    let (_, connected) = api.get("/api/v1/gateways/connected").await;
    assert_eq!(connected.as_array().unwrap().len(), 1, "{connected:#}");
    assert_eq!(connected[0]["gateway"], "gw-stats");
    assert_eq!(connected[0]["source"], "gateways");
    assert_eq!(connected[0]["mode"], "raw");
    assert_eq!(connected[0]["tls"], false);
    assert_eq!(connected[0]["messages"], 5, "{connected:#}");

    // Disconnected: no longer listed.
    ws.close(None).await.unwrap();
    drop(ws);
    let mut gone = false;
    for _ in 0..50 {
        if api.get("/api/v1/gateways/connected").await.1 == json!([]) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the closed connection is still listed");
}
