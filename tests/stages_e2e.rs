//! The stages in a running pipeline, driven by libcoap's coap-client-notls: dedupe of a retrying Efento
//! sensor, enrich from a registry file edited while running, validate rejecting into the dead-letter
//! sink, and a sink refusing a record for good.

mod common;

use std::time::Duration;

use common::*;

const SERIAL: &str = "282C024156AF";

/// A pipeline: CoAP source on @PORT@, the given stages, JSON lines out (`out.jsonl`), dead letters
/// in `rejects.jsonl`. `extra` adds sink options to `out`.
fn pipeline(stages: &str, extra: &str) -> String {
    format!(
        r#"
[sources.efento]
type = "coap"
listen = "127.0.0.1:@PORT@"

[sinks.out]
type = "json_lines"
path = "out.jsonl"
{extra}

[sinks.rejects]
type = "json_lines"
path = "rejects.jsonl"

[[flows]]
name = "efento"
from = ["efento"]
stages = [{stages}]
to = ["out"]
dead_letter = "rejects"
"#
    )
}

/// Starts `pipeline(stages, extra)` in a fresh directory (coap-client-notls is required).
fn start(stages: &str, extra: &str) -> Running {
    peer("coap-client-notls").expect("coap-client-notls");
    Running::start_pipeline(tempfile::tempdir().unwrap(), &pipeline(stages, extra))
}

fn seed() -> Vec<u8> {
    vector_bytes("efento", "m00_seed_open_close")
}

fn post(running: &Running, payload: &[u8]) -> String {
    let uri = format!("coap://{}/m", running.coap);
    coap_client("post", &uri, Some(payload), running.dir.path())
        .expect("coap-client-notls")
        .0
}

/// The dead letters written, each checked against the published dead-letter schema.
fn dead_letters(running: &Running) -> Vec<serde_json::Value> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/dead-letter.schema.json");
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let docs = json_lines(&running.path("rejects.jsonl"));
    for doc in &docs {
        let errors: Vec<String> = validator
            .iter_errors(doc)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{errors:?} in {doc}");
    }
    docs
}

fn measurements(running: &Running) -> Vec<serde_json::Value> {
    json_lines(&running.path("out.jsonl"))
        .into_iter()
        .filter(|d| d["kind"] == "measurements")
        .collect()
}

#[test]
fn a_retry_with_a_new_message_id_is_stored_once_and_both_requests_get_201() {
    let running = start(
        r#"{ type = "dedupe", key = "efento", window = "1m" }, { type = "decode", codec = "efento" }"#,
        "",
    );
    let seed = seed();
    // Every coap-client run is a new CoAP message (new message id and token), as a sensor's retry is.
    assert_eq!(post(&running, &seed), "2.01", "log:\n{}", running.log());
    assert_eq!(post(&running, &seed), "2.01", "log:\n{}", running.log());
    let stored = measurements(&running);
    assert_eq!(stored.len(), 1, "stored once: {stored:?}");
    assert_eq!(stored[0]["device"], SERIAL);

    // Different data from the same sensor is not a duplicate.
    let other = vector_bytes("efento", "m01_temp_humidity_negative");
    assert_eq!(post(&running, &other), "2.01");
    assert_eq!(measurements(&running).len(), 2);
}

#[test]
fn a_window_that_expired_lets_the_same_frame_through_again() {
    let running = start(
        r#"{ type = "dedupe", key = "efento", window = "700ms" }, { type = "decode", codec = "efento" }"#,
        "",
    );
    let seed = seed();
    assert_eq!(post(&running, &seed), "2.01");
    std::thread::sleep(Duration::from_millis(900));
    assert_eq!(post(&running, &seed), "2.01");
    assert_eq!(
        measurements(&running).len(),
        2,
        "a new item after the window"
    );
}

#[test]
fn a_retry_after_the_first_copy_failed_is_stored_not_answered_from_dedupe() {
    // The default pipeline's Parquet lake, with dedupe in front: the first copy cannot be stored
    // (5.00); the sensor's retry must then be stored, not be taken for a copy of stored data.
    let dir = tempfile::tempdir().unwrap();
    let running = Running::start_pipeline(
        dir,
        r#"
[sources.efento]
type = "coap"
listen = "127.0.0.1:@PORT@"

[sinks.lake]
type = "parquet"
path = "lake"
commit_interval = "100ms"

[[flows]]
name = "efento"
from = ["efento"]
stages = [{ type = "dedupe", key = "efento", window = "1m" }, { type = "decode", codec = "efento" }]
to = ["lake"]
"#,
    );
    let lake = running.path("lake");
    std::fs::remove_dir_all(&lake).unwrap();
    std::fs::write(&lake, b"not a directory").unwrap();
    let seed = seed();
    assert_eq!(post(&running, &seed), "5.00", "log:\n{}", running.log());
    std::fs::remove_file(&lake).unwrap();
    std::fs::create_dir(&lake).unwrap();
    assert_eq!(post(&running, &seed), "2.01", "log:\n{}", running.log());
    // And now it is stored, the next copy is a duplicate.
    assert_eq!(post(&running, &seed), "2.01");
    let files: Vec<_> = walk(&lake)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    assert_eq!(
        files.len(),
        1,
        "one commit with the data, none for the copy: {files:?}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn enrich_follows_a_registry_file_edited_while_running() {
    peer("coap-client-notls").unwrap_or_else(|| panic!("coap-client-notls"));
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("devices.toml");
    std::fs::write(
        &registry,
        format!(
            "[[devices]]\nserial = \"{SERIAL}\"\nfriendly_id = \"Door 1\"\nlocation = \"Hall A\"\n[devices.fields]\nroom = \"101\"\n"
        ),
    )
    .unwrap();
    let running = Running::start_pipeline(
        dir,
        &pipeline(
            r#"{ type = "decode", codec = "efento" }, { type = "enrich", registry = "devices.toml", target = "meta", fields = { site = "plant-1" }, unknown = "dead_letter" }"#,
            "",
        ),
    );
    let seed = seed();
    assert_eq!(post(&running, &seed), "2.01", "log:\n{}", running.log());
    let first = measurements(&running).remove(0);
    assert_eq!(
        first["meta"],
        serde_json::json!({"site": "plant-1", "friendly_id": "Door 1", "location": "Hall A", "room": "101"})
    );

    // The device moves; the file is edited while sensorgate runs (no restart, no signal).
    std::thread::sleep(Duration::from_millis(1100)); // a new modification time, whatever the filesystem
    std::fs::write(
        &registry,
        format!(
            "[[devices]]\nserial = \"{SERIAL}\"\nfriendly_id = \"Door 1\"\nlocation = \"Hall B\"\n"
        ),
    )
    .unwrap();
    let moved = eventually(Duration::from_secs(10), || {
        assert_eq!(post(&running, &seed), "2.01");
        measurements(&running)
            .last()
            .is_some_and(|d| d["meta"]["location"] == "Hall B")
    });
    assert!(moved, "the edit never showed; log:\n{}", running.log());
    assert!(
        measurements(&running).last().unwrap()["meta"]
            .get("room")
            .is_none()
    );

    // Removed from the registry: with unknown = "dead_letter" its data is rejected (4.00), parked with
    // the reason.
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(&registry, "devices = []\n").unwrap();
    let rejected = eventually(Duration::from_secs(10), || post(&running, &seed) == "4.00");
    assert!(rejected, "log:\n{}", running.log());
    let dead = dead_letters(&running);
    let last = dead.last().unwrap();
    assert_eq!(last["stage"], "enrich");
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains("not in the registry")
    );
    assert_eq!(last["raw_hex"], hex::encode(&seed));
}

#[test]
fn a_record_violating_its_schema_lands_in_dead_letter_with_the_instance_path() {
    peer("coap-client-notls").unwrap_or_else(|| panic!("coap-client-notls"));
    let dir = tempfile::tempdir().unwrap();
    // A site rule on top of the decoder's shape: ok/alarm sensors must have reported within the
    // measurement period, and readings must carry a unit.
    std::fs::write(
        dir.path().join("strict.schema.json"),
        r#"{
          "$schema": "https://json-schema.org/draft/2020-12/schema",
          "type": "object",
          "required": ["kind", "device", "measurements"],
          "properties": {
            "measurements": {
              "type": "array",
              "items": {"type": "object", "required": ["unit"], "properties": {"unit": {"type": "string"}}}
            }
          }
        }"#,
    )
    .unwrap();
    let running = Running::start_pipeline(
        dir,
        &pipeline(
            r#"{ type = "decode", codec = "efento" }, { type = "validate", schema = "strict.schema.json" }"#,
            "",
        ),
    );
    let seed = seed();
    assert_eq!(post(&running, &seed), "4.00", "log:\n{}", running.log());
    assert!(measurements(&running).is_empty());
    let dead = dead_letters(&running);
    assert_eq!(dead.len(), 1);
    let dl = &dead[0];
    assert_eq!(dl["kind"], "dead_letter");
    assert_eq!(dl["stage"], "validate");
    assert_eq!(dl["flow"], "efento");
    assert_eq!(dl["device"], SERIAL);
    assert_eq!(dl["raw_hex"], hex::encode(&seed));
    let errors = dl["errors"].as_array().unwrap();
    assert!(!errors.is_empty());
    assert_eq!(errors[0]["instance_path"], "/measurements/0/unit");
    assert!(dl["error"].as_str().unwrap().contains("strict.schema.json"));
    assert_eq!(dl["document"]["device"], SERIAL, "the document that failed");
}

#[test]
fn a_record_a_sink_refuses_for_good_goes_to_dead_letter_and_is_answered_400() {
    let running = start(
        r#"{ type = "decode", codec = "efento" }"#,
        "max_record_bytes = 2000",
    );
    // 25 rows of the seed frame make a document over 2000 bytes; the one-channel frame does not.
    let seed = seed();
    assert_eq!(post(&running, &seed), "4.00", "log:\n{}", running.log());
    let dead = dead_letters(&running);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["stage"], "sink:out");
    assert!(
        dead[0]["error"]
            .as_str()
            .unwrap()
            .contains("over this sink's max_record_bytes (2000)")
    );
    assert_eq!(dead[0]["raw_hex"], hex::encode(&seed));
    assert!(measurements(&running).is_empty());

    let small = vector_bytes("efento", "m03_co2_iaq_metadata");
    assert_eq!(post(&running, &small), "2.01");
    assert_eq!(measurements(&running).len(), 1);
}

#[test]
fn a_flow_without_dead_letter_says_so_at_startup_and_answers_rejects_400() {
    peer("coap-client-notls").unwrap_or_else(|| panic!("coap-client-notls"));
    let running = Running::start_pipeline(
        tempfile::tempdir().unwrap(),
        r#"
[sources.efento]
type = "coap"
listen = "127.0.0.1:@PORT@"

[sinks.out]
type = "json_lines"
path = "out.jsonl"

[[flows]]
name = "efento"
from = ["efento"]
stages = [{ type = "decode", codec = "efento" }]
to = ["out"]
"#,
    );
    assert!(
        running.log().contains("flow has no dead_letter sink"),
        "log:\n{}",
        running.log()
    );
    assert_eq!(post(&running, b"\xff\xfe garbage"), "4.00");
    assert!(
        eventually(Duration::from_secs(5), || running
            .log()
            .contains("record rejected (no dead_letter sink configured)")),
        "log:\n{}",
        running.log()
    );
}

#[test]
fn the_published_schemas_pass_real_efento_frames_in_a_running_pipeline() {
    peer("coap-client-notls").unwrap_or_else(|| panic!("coap-client-notls"));
    let dir = tempfile::tempdir().unwrap();
    let schemas = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let stages = format!(
        r#"{{ type = "dedupe", key = "efento", window = "1m" }}, {{ type = "decode", codec = "efento" }}, {{ type = "enrich", fields = {{ site = "x" }} }}, {{ type = "validate", schemas = {{ measurements = "{m}", device_info = "{i}", config = "{c}" }}, unmatched = "dead_letter" }}"#,
        m = schemas.join("efento-measurements.schema.json").display(),
        i = schemas.join("efento-device-info.schema.json").display(),
        c = schemas.join("efento-config.schema.json").display(),
    );
    let running = Running::start_pipeline(dir, &pipeline(&stages, ""));
    for name in [
        "m00_seed_open_close",
        "m01_temp_humidity_negative",
        "m03_co2_iaq_metadata",
        "m06_sensor_error_codes",
    ] {
        let frame = vector_bytes("efento", name);
        assert_eq!(
            post(&running, &frame),
            "2.01",
            "{name}; log:\n{}",
            running.log()
        );
    }
    let uri = |path: &str| format!("coap://{}/{path}", running.coap);
    for (path, name) in [
        ("i", "i00_seed_device_info"),
        ("c", "c00_seed_configuration"),
    ] {
        let frame = vector_bytes("efento", name);
        let code = coap_client("post", &uri(path), Some(&frame), running.dir.path())
            .unwrap()
            .0;
        assert_eq!(code, "2.01", "{name}; log:\n{}", running.log());
    }
    assert!(dead_letters(&running).is_empty());
    assert_eq!(json_lines(&running.path("out.jsonl")).len(), 6);
}

#[test]
fn json_payloads_over_coap_become_one_record_per_item_and_dedupe_by_template() {
    // An IoTConnect D2C array (seed 003): a gateway and its child, retried as a device would.
    let running = start(
        r#"{ type = "decode", codec = "json", json = { preset = "iotconnect", units = { temperature = "degC" } } },
           { type = "dedupe", key = "{device}:{body.time}", window = "1m" }"#,
        "",
    );
    let payload = br#"[{"uniqueId": "gw01", "time": "2021-01-24T10:06:17.857Z", "data": {"uptime": 12}},
        {"uniqueId": "child7", "time": "2021-01-24T10:06:18.000Z", "data": {"temperature": 15.55, "gyroscope": {"x": -1.2}}}]"#;
    assert_eq!(post(&running, payload), "2.01", "log:\n{}", running.log());
    assert_eq!(
        post(&running, payload),
        "2.01",
        "the retry is answered as stored"
    );
    let stored = measurements(&running);
    assert_eq!(stored.len(), 2, "each item once: {stored:?}");
    let child = stored.iter().find(|d| d["device"] == "child7").unwrap();
    assert_eq!(child["gateway"], "gw01");
    assert_eq!(child["time"], "2021-01-24T10:06:18.000Z");
    let temperature = child["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["type"] == "temperature")
        .unwrap();
    assert_eq!(temperature["value"], 15.55);
    assert_eq!(temperature["unit"], "degC");

    // Not JSON: answered 4.00, kept in the dead letter with its bytes.
    assert_eq!(post(&running, b"uptime=12"), "4.00");
    let dead = dead_letters(&running);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["stage"], "decode");
    assert_eq!(dead[0]["raw_hex"], hex::encode(b"uptime=12"));
    assert!(
        dead[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("payload is not JSON"),
        "{}",
        dead[0]["error"]
    );
}
