//! Decoder plugins end to end: the real plugins from `plugins/` (built by `plugins/build.sh` into
//! `plugins/dist/`) loaded by a running pipeline. EnOcean telegrams arrive over a websocket as a
//! gateway sends them; vendor JSON arrives over CoAP. Documents are read back from JSON lines
//! sinks, dead letters from the flow's dead-letter sink, counters from the metrics registry (the
//! hostile-plugin test runs the pipeline in this process for that).
//!
//! Without the built plugins these tests skip, and fail under SENSORGATE_REQUIRE_PEERS=1 (the
//! test script builds them first).

mod common;

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::SinkExt as _;
use sensorgate::codecs::enocean::esp3;
use sensorgate::metrics;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// The built plugins, or `None` (skip) unless SENSORGATE_REQUIRE_PEERS=1.
fn dist() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/dist");
    let names = [
        "hvac-valve",
        "flespi",
        "parity-a5-02-05",
        "hostile-loop",
        "hostile-memory",
        "hostile-trap",
        "hostile-malformed",
    ];
    let missing: Vec<&str> = names
        .into_iter()
        .filter(|n| !dir.join(format!("{n}.wasm")).is_file())
        .collect();
    if missing.is_empty() {
        return Some(dir);
    }
    let why = format!(
        "plugins {missing:?} are not built in {} (run plugins/build.sh)",
        dir.display()
    );
    if std::env::var("SENSORGATE_REQUIRE_PEERS").is_ok_and(|v| v == "1") {
        panic!("{why}, and SENSORGATE_REQUIRE_PEERS=1");
    }
    eprintln!("SKIPPED: {why}");
    None
}

/// Copies the named plugins from `dist` into `dir/plugins`.
fn install(dist: &Path, dir: &Path, names: &[&str]) {
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    for name in names {
        let file = format!("{name}.wasm");
        std::fs::copy(dist.join(&file), plugins.join(&file)).unwrap();
    }
}

/// An ERP1 4BS telegram (RORG A5) from `sender`, as ESP3, heard at -60 dBm.
fn telegram_4bs(data: [u8; 4], sender: u32) -> Vec<u8> {
    let mut erp1 = vec![0xA5];
    erp1.extend_from_slice(&data);
    erp1.extend_from_slice(&sender.to_be_bytes());
    erp1.push(0x00);
    esp3::encode(0x01, &erp1, &[1, 0xff, 0xff, 0xff, 0xff, 60, 0])
}

fn vector_frame(name: &str) -> Vec<u8> {
    let v = common::vector("enocean", name);
    hex::decode(v["esp3_hex"].as_str().unwrap()).unwrap()
}

/// Sends each frame as one binary message of a raw-ESP3 gateway connection.
async fn send(port: u16, frames: &[Vec<u8>]) {
    let url = format!("ws://127.0.0.1:{port}/aruba?gateway=gw1");
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket connect");
    for frame in frames {
        ws.send(Message::binary(frame.clone())).await.unwrap();
    }
    ws.close(None).await.unwrap();
}

fn wait_listening(port: u16, log: &dyn Fn() -> String) {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "no listener; log:\n{}", log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Documents of one device in a JSON lines file.
fn of_device(path: &Path, id: &str) -> Vec<Value> {
    common::json_lines(path)
        .into_iter()
        .filter(|d| d["device"] == id)
        .collect()
}

fn telemetry_data(docs: &[Value]) -> Vec<Value> {
    docs.iter()
        .filter(|d| d["kind"] == "telemetry")
        .map(|d| d["telemetry"]["data"].clone())
        .collect()
}

const PATIENCE: Duration = Duration::from_secs(30);

/// A pipeline with an EnOcean flow (websocket source on `ws_port`) and a vendor flow (CoAP source on
/// @PORT@, codec plugin vendor:flespi), both into telemetry.jsonl, rejects into rejects.jsonl.
fn pipeline(ws_port: u16, prefer: &str, watch: &str) -> String {
    format!(
        r#"
[plugins]
dir = "plugins"
prefer = "{prefer}"
watch = "{watch}"

[sources.gateways]
type = "esp3_websocket"
listen = "127.0.0.1:{ws_port}"

[sources.vendor]
type = "coap"
listen = "127.0.0.1:@PORT@"
max_payload = 8192

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
stages = [{{ type = "decode", codec = "esp3", registry = "devices.toml", stats_interval = "0s" }}]
to = ["telemetry"]
dead_letter = "rejects"

[[flows]]
name = "flespi"
from = ["vendor"]
stages = [{{ type = "decode", codec = "plugin", plugin = "vendor:flespi" }}]
to = ["telemetry"]
dead_letter = "rejects"
"#
    )
}

/// The registry of vectors 06 and 07, and a valve (A5-20-01, no built-in profile).
fn devices() -> String {
    let valve = "[[devices]]\neurid = \"0180a1c0\"\neep = \"a5-20-01\"\nfriendly_id = \"Valve 1\"\nlocation = \"Room 101\"\n";
    format!("{valve}{}", common::ENOCEAN_DEVICES)
}

fn start(dist: &Path, plugins: &[&str], prefer: &str) -> (common::Running, u16) {
    let dir = tempfile::tempdir().unwrap();
    install(dist, dir.path(), plugins);
    std::fs::write(dir.path().join("devices.toml"), devices()).unwrap();
    let ws_port = common::free_tcp_port();
    let running = common::Running::start_pipeline(dir, &pipeline(ws_port, prefer, "200ms"));
    wait_listening(ws_port, &|| running.log());
    (running, ws_port)
}

fn reading(key: &str, value: Value, unit: Option<&str>, meaning: Option<&str>) -> Value {
    let mut r = json!({ "key": key, "value": value });
    if let Some(u) = unit {
        r["unit"] = json!(u);
    }
    if let Some(m) = meaning {
        r["meaning"] = json!(m);
    }
    r
}

fn flag(key: &str, value: &str, meaning: &str) -> Value {
    reading(key, json!(value), None, Some(meaning))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hvac_valve_and_parity_plugins_decode_telegrams_in_a_running_pipeline_next_to_builtin_profiles()
 {
    let Some(dist) = dist() else { return };
    let (running, ws_port) = start(&dist, &["hvac-valve", "parity-a5-02-05"], "plugin");
    // A5-20-01 has no built-in profile: two telegrams constructed from the EEP layout.
    let valve_a = telegram_4bs([0x32, 0x62, 0x80, 0x08], 0x0180_a1c0);
    let valve_b = telegram_4bs([0x64, 0x91, 0xFF, 0x08], 0x0180_a1c0);
    send(
        ws_port,
        &[
            valve_a,
            vector_frame("06_a5-02-05_temperature"),
            vector_frame("07_a5-04-01_temp_humidity"),
            valve_b,
        ],
    )
    .await;
    let telemetry = running.path("telemetry.jsonl");
    assert!(
        common::eventually(PATIENCE, || {
            telemetry_data(&of_device(&telemetry, "0180a1c0")).len() == 2
                && !telemetry_data(&of_device(&telemetry, "0180a1b3")).is_empty()
                && !telemetry_data(&of_device(&telemetry, "0180a1b2")).is_empty()
        }),
        "documents missing; log:\n{}",
        running.log()
    );
    let valve = telemetry_data(&of_device(&telemetry, "0180a1c0"));
    assert_eq!(
        valve[0],
        json!([
            reading("valvePosition", json!(50), Some("%"), None),
            flag("serviceOn", "off", "Normal operation"),
            flag("energyInput", "enabled", "Energy input enabled"),
            flag(
                "energyStorage",
                "charged",
                "Energy storage sufficiently charged"
            ),
            flag("batteryCapacity", "ok", "Battery ok"),
            flag("coverOpen", "false", "Contact cover closed"),
            flag("temperatureSensorFailure", "false", "Temperature sensor ok"),
            flag("windowOpen", "true", "Window open detected"),
            flag("actuatorObstructed", "false", "Actuator ok"),
            reading("temperature", json!(20.08), Some("°C"), None),
            flag("learn", "notPressed", "Data telegram"),
        ])
    );
    assert_eq!(
        valve[1][0],
        reading("valvePosition", json!(100), Some("%"), None)
    );
    assert_eq!(valve[1][1], flag("serviceOn", "on", "Service mode"));
    assert_eq!(
        valve[1][4],
        flag("batteryCapacity", "changeSoon", "Change battery next days")
    );
    assert_eq!(
        valve[1][8],
        flag("actuatorObstructed", "true", "Actuator obstructed")
    );
    assert_eq!(
        valve[1][9],
        reading("temperature", json!(40.0), Some("°C"), None)
    );
    // The same document shape as a built-in profile's: sensor from the registry, raw telegram.
    let docs = of_device(&telemetry, "0180a1c0");
    let doc = docs.iter().find(|d| d["kind"] == "telemetry").unwrap();
    assert_eq!(doc["sensor"]["eep"], "a5-20-01");
    assert_eq!(doc["sensor"]["friendlyId"], "Valve 1");
    assert_eq!(doc["raw"]["rorg"], "a5");
    // With prefer = "plugin" the parity plugin decodes A5-02-05: the vector's expected data.
    let expected_06 =
        common::vector("enocean", "06_a5-02-05_temperature")["expected"]["data"].clone();
    assert_eq!(
        telemetry_data(&of_device(&telemetry, "0180a1b2"))[0],
        expected_06
    );
    // A5-04-01 has no plugin: the built-in table still decodes it.
    let expected_07 =
        common::vector("enocean", "07_a5-04-01_temp_humidity")["expected"]["data"].clone();
    assert_eq!(
        telemetry_data(&of_device(&telemetry, "0180a1b3"))[0],
        expected_07
    );
    assert!(common::json_lines(&running.path("rejects.jsonl")).is_empty());
}

/// A flespi device message (seed 004), as flespi publishes it.
const FLESPI_MESSAGE: &str = r#"{
  "battery.charging.status":false,
  "battery.level":70,
  "battery.voltage":4.09,
  "channel.id":1190401,
  "device.id":5539228,
  "device.name":"scooterMobi010",
  "device.type.id":1272,
  "gsm.signal.level":90,
  "ident":"015136001986400",
  "lock.status":true,
  "message.type":"H0",
  "peer": "203.0.113.7:40311",
  "protocol.id":200,
  "server.timestamp":1706905170.17258,
  "timestamp":1706905170.17258,
  "vendor.code":"OM"
}"#;

/// flespi's REST answer with a position message (seed 004, `gw/devices/{id}/messages`).
const FLESPI_REST: &str = r#"{"result": [
  {"battery.level": 90, "device.id": 5537057, "ident": "866000000000001", "timestamp": 1706760540.344204},
  {"device.id": 5537057, "ident": "866000000000001", "position.altitude": 398.7, "position.latitude": -17.724326,
   "position.longitude": -63.171542, "position.satellites": 11, "position.valid": true, "timestamp": 1706760559}
]}"#;

fn post(running: &common::Running, mid: u16, payload: &[u8]) -> String {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let answer = common::con_post(&sock, running.coap, mid, &[mid as u8], "m", payload);
    answer.code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flespi_messages_posted_over_coap_become_telemetry_documents_and_bad_json_a_dead_letter() {
    let Some(dist) = dist() else { return };
    let (running, _) = start(&dist, &["flespi"], "builtin");
    assert_eq!(post(&running, 1, FLESPI_MESSAGE.as_bytes()), "2.01");
    assert_eq!(post(&running, 2, FLESPI_REST.as_bytes()), "2.01");
    let bad = br#"{"ident": "015136001986400", "battery.level": "#;
    post(&running, 3, bad);
    let telemetry = running.path("telemetry.jsonl");
    let rejects = running.path("rejects.jsonl");
    assert!(
        common::eventually(PATIENCE, || {
            common::json_lines(&telemetry).len() == 3 && !common::json_lines(&rejects).is_empty()
        }),
        "documents missing; log:\n{}",
        running.log()
    );
    let scooter = of_device(&telemetry, "015136001986400");
    assert_eq!(scooter.len(), 1);
    let doc = &scooter[0];
    assert_eq!(doc["kind"], "telemetry");
    assert_eq!(doc["source"], "vendor");
    assert_eq!(doc["vendor"], "flespi");
    assert_eq!(doc["timestamp"], json!(1706905170.17258));
    let data = doc["telemetry"]["data"].as_array().unwrap();
    let entry = |key: &str| {
        data.iter()
            .find(|e| e["key"] == key)
            .unwrap_or_else(|| panic!("{key} missing in {doc}"))
            .clone()
    };
    assert_eq!(
        entry("batteryLevel"),
        json!({"key": "batteryLevel", "value": 70, "unit": "%"})
    );
    assert_eq!(entry("batteryVoltage")["unit"], "V");
    assert_eq!(entry("lockStatus")["value"], true);
    assert_eq!(entry("gsmSignalLevel")["value"], 90);
    assert_eq!(data.len(), 5, "only device state in data: {doc}");
    assert_eq!(doc["meta"]["device.name"], "scooterMobi010");
    assert_eq!(doc["meta"]["channel.id"], 1190401);

    let rest = of_device(&telemetry, "866000000000001");
    assert_eq!(rest.len(), 2);
    let position = rest
        .iter()
        .find(|d| d["timestamp"] == 1706760559)
        .expect("the position message");
    let data = position["telemetry"]["data"].as_array().unwrap();
    assert!(data.contains(&json!({"key": "positionLatitude", "value": -17.724326, "unit": "°"})));
    assert!(data.contains(&json!({"key": "positionAltitude", "value": 398.7, "unit": "m"})));

    let dead = common::json_lines(&rejects);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["flow"], "flespi");
    assert_eq!(dead[0]["stage"], "decode");
    assert_eq!(dead[0]["raw_hex"], hex::encode(bad));
    let error = dead[0]["error"].as_str().unwrap();
    assert!(
        error.contains("plugin flespi (vendor:flespi): malformed: not JSON"),
        "{error}"
    );
}

/// Removes what depends on the moment of decoding (egress time, reception time).
fn timeless(mut doc: Value) -> Value {
    if let Value::Array(docs) = doc {
        return Value::Array(docs.into_iter().map(timeless).collect());
    }
    if let Some(raw) = doc.get_mut("raw").and_then(Value::as_object_mut) {
        raw.remove("timestamp");
    }
    if let Some(stats) = doc
        .pointer_mut("/telemetry/meta/stats")
        .and_then(Value::as_array_mut)
    {
        for s in stats {
            if let Some(s) = s.as_object_mut() {
                s.remove("egressTime");
            }
        }
    }
    doc
}

fn decode_cli(frame_hex: &str, plugins: Option<&Path>) -> Value {
    let prefer = sensorgate::codecs::wasm::Prefer::Plugin;
    let doc = sensorgate::cli::decode_esp3(
        frame_hex,
        None,
        Some("a5-02-05"),
        None,
        "0x8b",
        "0",
        plugins,
        prefer,
    )
    .unwrap_or_else(|e| panic!("{frame_hex}: {e}"));
    timeless(doc)
}

#[test]
fn parity_plugin_and_builtin_decoder_give_identical_documents() {
    let Some(dist) = dist() else { return };
    let dir = tempfile::tempdir().unwrap();
    install(&dist, dir.path(), &["parity-a5-02-05"]);
    let plugins = dir.path().join("plugins");
    // The shared vectors of A5-02-05: plain and ADT-wrapped.
    for name in ["06_a5-02-05_temperature", "24_adt_wrapped_a5-02-05"] {
        let hex = common::vector("enocean", name)["esp3_hex"]
            .as_str()
            .unwrap()
            .to_string();
        let builtin = decode_cli(&hex, None);
        let plugin = decode_cli(&hex, Some(&plugins));
        assert_eq!(plugin, builtin, "{name}");
        let expected = common::vector("enocean", name)["expected"]["data"].clone();
        assert_eq!(plugin["telemetry"]["data"], expected, "{name}");
    }
    // And every temperature byte, data and teach-in bit patterns that are data telegrams.
    let mut frames = String::new();
    for db1 in 0..=255u8 {
        for db0 in [0x08u8, 0x0A, 0x0F] {
            frames.push_str(&hex::encode(telegram_4bs(
                [0x00, 0x00, db1, db0],
                0x0180_a1b2,
            )));
        }
    }
    let builtin = decode_cli(&frames, None);
    let plugin = decode_cli(&frames, Some(&plugins));
    assert_eq!(builtin.as_array().map(Vec::len), Some(768));
    assert_eq!(plugin, builtin);
}

/// A frame of a hostile device: a 4BS telegram whose DB3 picks the malformed plugin's case.
fn hostile(sender: u32, db3: u8) -> Vec<u8> {
    telegram_4bs([db3, 0x00, 0x00, 0x08], sender)
}

fn traps(plugin: &str, reason: &str) -> u64 {
    metrics::counter(
        "plugin_traps_total",
        &[("plugin", plugin), ("reason", reason)],
    )
    .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_fail_only_their_own_records_into_dead_letter_and_are_counted() {
    let Some(dist) = dist() else { return };
    let dir = tempfile::tempdir().unwrap();
    install(
        &dist,
        dir.path(),
        &[
            "hostile-loop",
            "hostile-memory",
            "hostile-trap",
            "hostile-malformed",
            "hvac-valve",
        ],
    );
    let devices = r#"
[[devices]]
eurid = "0000f001"
eep = "a5-3f-01"
[[devices]]
eurid = "0000f002"
eep = "a5-3f-02"
[[devices]]
eurid = "0000f003"
eep = "a5-3f-03"
[[devices]]
eurid = "0000f004"
eep = "a5-3f-04"
[[devices]]
eurid = "0180a1b3"
eep = "a5-04-01"
[[devices]]
eurid = "0180a1c0"
eep = "a5-20-01"
"#;
    std::fs::write(dir.path().join("devices.toml"), devices).unwrap();
    let ws_port = common::free_tcp_port();
    let base = dir.path().display().to_string();
    let toml = pipeline(ws_port, "builtin", "0s")
        .replace("@PORT@", "0")
        .replace("\"plugins\"", &format!("\"{base}/plugins\""))
        .replace("\"devices.toml\"", &format!("\"{base}/devices.toml\""))
        .replace(
            "\"telemetry.jsonl\"",
            &format!("\"{base}/telemetry.jsonl\""),
        )
        .replace("\"rejects.jsonl\"", &format!("\"{base}/rejects.jsonl\""));
    let (config, _) = sensorgate::config::load_str("pipeline.toml", &toml, &|_| None)
        .unwrap_or_else(|r| panic!("{r}"));
    let pipeline = sensorgate::topology::Pipeline::start(config).await.unwrap();
    wait_listening(ws_port, &String::new);

    let good = vector_frame("07_a5-04-01_temp_humidity");
    let valve = telegram_4bs([0x32, 0x62, 0x80, 0x08], 0x0180_a1c0);
    // Each hostile frame between good ones, then every hostile plugin once more: its instance was
    // recreated and fails the same way, and the good devices keep being served.
    let hostile_frames = [
        (hostile(0xf001, 0), "out_of_fuel", "hostile-loop"),
        (hostile(0xf002, 0), "memory", "hostile-memory"),
        (hostile(0xf003, 0), "trap", "hostile-trap"),
        (hostile(0xf004, 0), "bad_output", "hostile-malformed"),
        (hostile(0xf004, 1), "bad_output", "hostile-malformed"),
        (hostile(0xf004, 2), "bad_output", "hostile-malformed"),
        (hostile(0xf004, 3), "trap", "hostile-malformed"),
    ];
    let mut frames = Vec::new();
    for _round in 0..2 {
        for (frame, _, _) in &hostile_frames {
            frames.push(frame.clone());
            frames.push(good.clone());
            frames.push(valve.clone());
        }
    }
    send(ws_port, &frames).await;

    let telemetry = dir.path().join("telemetry.jsonl");
    let rejects = dir.path().join("rejects.jsonl");
    let good_count = frames.iter().filter(|f| **f == good).count();
    let hostile_count = frames.len() - 2 * good_count;
    assert!(
        common::eventually(PATIENCE, || {
            telemetry_data(&of_device(&telemetry, "0180a1b3")).len() == good_count
                && telemetry_data(&of_device(&telemetry, "0180a1c0")).len() == good_count
                && common::json_lines(&rejects).len() == hostile_count
        }),
        "telemetry {} / rejects {} of {good_count} / {hostile_count}",
        common::json_lines(&telemetry).len(),
        common::json_lines(&rejects).len()
    );
    let dead = common::json_lines(&rejects);
    for (frame, reason, plugin) in &hostile_frames {
        let raw = hex::encode(frame);
        let entry = dead
            .iter()
            .find(|d| d["raw_hex"] == raw)
            .unwrap_or_else(|| panic!("{plugin} frame {raw} not in dead letter: {dead:?}"));
        let error = entry["error"].as_str().unwrap();
        assert!(
            error.contains(&format!("plugin {plugin} (")) && error.contains(reason),
            "{plugin}: {error}"
        );
        assert_eq!(entry["flow"], "enocean");
        assert_eq!(entry["stage"], "decode");
    }
    assert_eq!(traps("hostile-loop", "out_of_fuel"), 2);
    assert_eq!(traps("hostile-memory", "memory"), 2);
    assert_eq!(traps("hostile-trap", "trap"), 2);
    assert_eq!(traps("hostile-malformed", "bad_output"), 6);
    assert_eq!(traps("hostile-malformed", "trap"), 2);
    assert_eq!(traps("hvac-valve", "trap"), 0);
    let calls = |plugin: &str| metrics::counter("plugin_calls_total", &[("plugin", plugin)]).get();
    assert_eq!(calls("hvac-valve"), good_count as u64);
    assert_eq!(calls("hostile-loop"), 2);
    let fuel = metrics::counter("plugin_fuel_used_total", &[("plugin", "hostile-loop")]).get();
    assert!(
        fuel >= 2 * 9_000_000,
        "an endless loop uses its whole budget: {fuel}"
    );
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasm_file_copied_into_the_plugin_directory_is_decodable_and_a_changed_one_replaces_it_without_a_restart()
 {
    let Some(dist) = dist() else { return };
    let (running, ws_port) = start(&dist, &[], "builtin");
    let valve = telegram_4bs([0x32, 0x62, 0x80, 0x08], 0x0180_a1c0);
    let telemetry = running.path("telemetry.jsonl");
    send(ws_port, std::slice::from_ref(&valve)).await;
    assert!(
        common::eventually(PATIENCE, || {
            of_device(&telemetry, "0180a1c0")
                .iter()
                .any(|d| d.to_string().contains("EEP_NOT_FOUND_ERROR"))
        }),
        "no EEP_NOT_FOUND_ERROR before the plugin is there; log:\n{}",
        running.log()
    );
    // Copied under a temporary name and renamed, as a deployment would; the watcher sees it.
    let target = running.path("plugins/hvac-valve.wasm");
    let partial = running.path("plugins/hvac-valve.wasm.part");
    std::fs::copy(dist.join("hvac-valve.wasm"), &partial).unwrap();
    std::fs::rename(&partial, &target).unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        send(ws_port, std::slice::from_ref(&valve)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        if !telemetry_data(&of_device(&telemetry, "0180a1c0")).is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the copied plugin was not picked up; log:\n{}",
            running.log()
        );
    }
    let data = &telemetry_data(&of_device(&telemetry, "0180a1c0"))[0];
    assert_eq!(
        data[0],
        reading("valvePosition", json!(50), Some("%"), None)
    );
    assert!(running.log().contains("plugin loaded"));

    // A changed file replaces what the old one declared: the same name now holds a plugin for
    // another profile, so A5-20-01 is unknown again.
    let not_found = |telemetry: &Path| {
        of_device(telemetry, "0180a1c0")
            .iter()
            .filter(|d| d.to_string().contains("EEP_NOT_FOUND_ERROR"))
            .count()
    };
    let before = not_found(&telemetry);
    std::fs::copy(dist.join("parity-a5-02-05.wasm"), &partial).unwrap();
    std::fs::rename(&partial, &target).unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        send(ws_port, std::slice::from_ref(&valve)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        if not_found(&telemetry) > before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the changed plugin file was not picked up; log:\n{}",
            running.log()
        );
    }
}

#[test]
fn plugins_list_names_each_plugin_what_it_decodes_and_files_that_do_not_load() {
    let Some(dist) = dist() else { return };
    let dir = tempfile::tempdir().unwrap();
    install(&dist, dir.path(), &["hvac-valve", "flespi"]);
    let plugins = dir.path().join("plugins");
    let out = common::sensorgate()
        .args(["plugins", "list", "--timing"])
        .arg(&plugins)
        .output()
        .unwrap();
    common::assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} not listed:\n{text}"))
            .to_string()
    };
    assert!(line("hvac-valve\t0.1.0\teep:a5-20-01\t").contains("hvac-valve.wasm"));
    assert!(line("flespi\t0.1.0\tvendor:flespi\t").contains("flespi.wasm"));
    assert!(text.contains("loaded 2 plugins (0 errors)"), "{text}");
    // The first run compiled and cached; the second loads from the cache.
    assert!(line("flespi").contains("(compiled)"), "{text}");
    let again = common::sensorgate()
        .args(["plugins", "list", "--timing"])
        .arg(&plugins)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("(cache)"));

    std::fs::write(plugins.join("broken.wasm"), b"\0asm not really").unwrap();
    let out = common::sensorgate()
        .args(["plugins", "list"])
        .arg(&plugins)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.starts_with("error\t")
            && l.contains("broken.wasm")
            && l.contains("not a valid component")),
        "{text}"
    );
    assert!(
        text.contains("hvac-valve\t"),
        "the others still load:\n{text}"
    );
}

#[test]
fn decode_plugin_and_decode_esp3_with_plugin_run_plugins_from_the_command_line() {
    let Some(dist) = dist() else { return };
    let out = common::sensorgate()
        .args(["decode", "plugin", "--plugin"])
        .arg(&dist)
        .args(["--profile", "vendor:flespi", FLESPI_MESSAGE])
        .output()
        .unwrap();
    common::assert_success(&out);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["device"], "015136001986400");
    assert_eq!(doc["vendor"], "flespi");

    let valve = hex::encode(telegram_4bs([0x32, 0x62, 0x80, 0x08], 0x0180_a1c0));
    let out = common::sensorgate()
        .args(["decode", "esp3", "--eep", "a5-20-01", "--plugin"])
        .arg(&dist)
        .arg(&valve)
        .output()
        .unwrap();
    common::assert_success(&out);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["telemetry"]["data"][0]["key"], "valvePosition");

    // Without --plugin the EEP is unknown, and a hostile plugin's failure is an error, not a crash.
    let out = common::sensorgate()
        .args(["decode", "esp3", "--eep", "a5-20-01", &valve])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("EEP_NOT_FOUND_ERROR"));
    let out = common::sensorgate()
        .args(["decode", "esp3", "--eep", "a5-3f-03", "--plugin"])
        .arg(&dist)
        .arg(&valve)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("plugin hostile-trap (eep:a5-3f-03): trap")
    );
}

#[test]
fn a_plugin_codec_without_a_plugins_section_is_a_config_error_with_its_position() {
    let toml = r#"
[sources.vendor]
type = "coap"
listen = "127.0.0.1:5683"

[sinks.out]
type = "json_lines"
path = "out.jsonl"

[[flows]]
name = "flespi"
from = ["vendor"]
stages = [{ type = "decode", codec = "plugin", plugin = "flespi" }]
to = ["out"]
"#;
    let report =
        sensorgate::config::load_str("pipeline.toml", toml, &|_| None).expect_err("errors");
    let text = report.to_string();
    assert!(text.contains("pipeline.toml:13:11: error"), "{text}");
    assert!(text.contains("no [plugins] section"), "{text}");
    assert!(
        text.contains("plugin = \"flespi\" is not a profile"),
        "{text}"
    );

    let with_plugins = format!("[plugins]\ndir = \"/nonexistent/plugins\"\nmemory_mib = 0\n{toml}");
    let text = sensorgate::config::load_str("pipeline.toml", &with_plugins, &|_| None)
        .expect_err("errors")
        .to_string();
    assert!(text.contains("pipeline.toml:2:7: error: [plugins]: plugin directory /nonexistent/plugins does not exist"), "{text}");
    assert!(
        text.contains("pipeline.toml:3:14: error: [plugins]: memory_mib = 0 is out of range"),
        "{text}"
    );
}
