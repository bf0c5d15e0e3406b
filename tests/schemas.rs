//! The JSON Schemas in `schemas/` against what sensorgate really writes: every shared Efento and
//! EnOcean vector goes through the decode stage the way a pipeline runs it (a record per CoAP request,
//! a record per item of a gateway's ESP3 stream), each record that comes out becomes the document a
//! sink writes (`sensorgate::document::Document`), and that document must validate against the schema
//! of its kind. Mutated documents must not, so a schema that accepts anything fails here too.
//!
//! `SENSORGATE_SCHEMA_DUMP=DIR cargo test --test schemas` also writes every validated document to DIR
//! (one file each), which is how the files in `schemas/examples/` were taken.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use jsonschema::Validator;
use sensorgate::codecs::enocean::eep;
use sensorgate::codecs::enocean::esp3::{self, StreamItem, StreamParser};
use sensorgate::document::Document;
use sensorgate::record::{Delivery, Kind, Origin, Reading, ReadingValue, Record, rfc3339};
use sensorgate::sources::esp3_websocket::{aruba, rssi_of};
use sensorgate::stages::Stage;
use sensorgate::stages::decode::{DecodeConfig, DecodeStage};
use sensorgate::stages::validate::{
    self,
    fast::{self, RecordDocument, View},
};
use serde_json::{Value, json};

/// Every schema file the project ships (stems of `schemas/<stem>.schema.json`).
const SCHEMAS: [&str; 8] = [
    "efento-measurements",
    "efento-device-info",
    "efento-config",
    "enocean-telemetry",
    "enocean-signal",
    "enocean-event",
    "enocean-stats",
    "dead-letter",
];

/// When every record of the tests is received: fixed, so dumped documents are reproducible.
fn received_at() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(1_736_935_262_250)
}

const COAP_PEER: &str = "192.0.2.10:5683";
const GATEWAY_PEER: &str = "192.0.2.20:41234";
/// The gateway id a websocket source gives an Aruba AP: its MAC in lowercase hex.
const GATEWAY: &str = "aabbccddeeff";

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")
}

/// Every `schemas/*.schema.json` as (stem, schema); panics naming any file that is not JSON.
fn schema_files() -> BTreeMap<String, Value> {
    let dir = schemas_dir();
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".schema.json") else {
            continue;
        };
        let text = std::fs::read_to_string(&path).unwrap();
        let schema: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
        out.insert(stem.to_string(), schema);
    }
    out
}

/// Every schema compiled, by stem; panics listing every schema that does not compile.
fn validators() -> BTreeMap<String, Validator> {
    let mut out = BTreeMap::new();
    let mut failures = Vec::new();
    for (stem, schema) in schema_files() {
        match jsonschema::validator_for(&schema) {
            Ok(v) => {
                out.insert(stem, v);
            }
            Err(e) => failures.push(format!("{stem}.schema.json: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "schemas that do not compile:\n{}",
        failures.join("\n")
    );
    out
}

/// Every error of `doc` against `validator`, one line each: instance path and message.
fn errors(validator: &Validator, doc: &Value) -> Vec<String> {
    validator
        .iter_errors(doc)
        .map(|e| format!("at {:?}: {e}", e.instance_path().as_str()))
        .collect()
}

/// Which codec made a document; together with its kind it picks the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    Efento,
    Esp3,
}

/// The schema stem for a document of `codec` with this `kind`.
fn schema_for(codec: Codec, kind: &str) -> Option<&'static str> {
    Some(match (codec, kind) {
        (_, "dead_letter") => "dead-letter",
        (Codec::Efento, "measurements") => "efento-measurements",
        (Codec::Efento, "device_info") => "efento-device-info",
        (Codec::Efento, "config") => "efento-config",
        (Codec::Esp3, "telemetry") => "enocean-telemetry",
        (Codec::Esp3, "signal") => "enocean-signal",
        (Codec::Esp3, "event") => "enocean-event",
        (Codec::Esp3, "stats") => "enocean-stats",
        _ => return None,
    })
}

/// A document a sink would write, with where it came from.
struct Doc {
    /// The vector (or scenario) and the position of the record among those it gave.
    name: String,
    codec: Codec,
    kind: Kind,
    value: Value,
    /// The record the document was made of.
    record: Record,
}

fn doc_of(name: &str, codec: Codec, index: usize, record: &Record) -> Doc {
    let value = serde_json::to_value(Document(record))
        .unwrap_or_else(|e| panic!("{name}: document does not serialize: {e}"));
    Doc {
        name: format!("{name}#{index}"),
        codec,
        kind: record.kind,
        value,
        record: record.clone(),
    }
}

/// Validates every document against the schema of its kind; returns how many each schema took.
/// Panics with every error of every failing document (vector, instance path, message).
fn validate_all(docs: &[Doc]) -> BTreeMap<&'static str, usize> {
    let validators = validators();
    let dump = std::env::var_os("SENSORGATE_SCHEMA_DUMP").map(PathBuf::from);
    let mut counts = BTreeMap::new();
    let mut failures = Vec::new();
    for doc in docs {
        let Some(stem) = schema_for(doc.codec, doc.kind.as_str()) else {
            failures.push(format!(
                "{}: no schema for kind {:?} of codec {:?}",
                doc.name,
                doc.kind.as_str(),
                doc.codec
            ));
            continue;
        };
        if let Some(dir) = &dump {
            std::fs::create_dir_all(dir).unwrap();
            let file = format!("{stem}--{}.json", doc.name.replace(['#', '/'], "_"));
            let text = serde_json::to_string_pretty(&doc.value).unwrap();
            std::fs::write(dir.join(file), text + "\n").unwrap();
        }
        let Some(validator) = validators.get(stem) else {
            failures.push(format!(
                "{}: schemas/{stem}.schema.json is missing",
                doc.name
            ));
            continue;
        };
        let found = errors(validator, &doc.value);
        if found.is_empty() {
            *counts.entry(stem).or_insert(0) += 1;
        } else {
            failures.push(format!(
                "{} against {stem}.schema.json:\n    {}\n    document: {}",
                doc.name,
                found.join("\n    "),
                doc.value
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} document(s) do not match their schema:\n{}",
        failures.len(),
        docs.len(),
        failures.join("\n")
    );
    counts
}

/// The shared vectors of one protocol, sorted by file name.
fn vector_files(kind: &str) -> Vec<(String, Value)> {
    let dir = common::vectors_dir(kind);
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let v: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.file_stem().unwrap().to_string_lossy().into_owned(), v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

// ---------------------------------------------------------------------------------------------
// Efento: one record per CoAP request, as the CoAP source makes it, through `decode` codec efento.

fn efento_stage() -> DecodeStage {
    let config: DecodeConfig = serde_json::from_value(json!({ "codec": "efento" })).unwrap();
    DecodeStage::new("efento", &config)
}

/// A CoAP request's record: the source's default route for the path (`m` → measurements, ...).
fn coap_record(path: &str, payload: Vec<u8>) -> Record {
    let route = match path {
        "m" => "measurements",
        "i" => "device_info",
        "c" => "configuration",
        other => other,
    };
    let origin = Origin {
        peer: Some(COAP_PEER.parse::<SocketAddr>().unwrap()),
        path: Some(path.into()),
        route: Some(route.into()),
        ..Origin::default()
    };
    let mut record = Record::new(
        "efento".into(),
        origin,
        Bytes::from(payload),
        Delivery::detached(),
    );
    record.received_at = received_at();
    record
}

fn run_stage(stage: &mut DecodeStage, records: Vec<Record>) -> Vec<Record> {
    let mut out = Vec::new();
    for record in records {
        stage.process(record, &mut out);
    }
    out
}

/// The documents of every Efento vector a device sends (`/m`, `/i`, `/c`), through the decode stage.
/// (`/resp` and `/t-resp` are what the server sends back, not documents: the `/resp` ProtoConfigs are
/// checked against the config schema's `protoConfig` in their own test, `/t-resp` is 4 bytes.)
fn efento_documents() -> Vec<Doc> {
    let mut docs = Vec::new();
    let mut stage = efento_stage();
    for (name, vector) in vector_files("efento") {
        let endpoint = vector["endpoint"].as_str().unwrap();
        let Some(path) = endpoint
            .strip_prefix('/')
            .filter(|p| ["m", "i", "c"].contains(p))
        else {
            continue;
        };
        let payload = hex::decode(vector["hex"].as_str().unwrap()).unwrap();
        let out = run_stage(&mut stage, vec![coap_record(path, payload)]);
        assert_eq!(out.len(), 1, "{name}: one record per request");
        assert_ne!(out[0].kind, Kind::DeadLetter, "{name}: {:?}", out[0].body);
        docs.extend(
            out.iter()
                .enumerate()
                .map(|(i, r)| doc_of(&name, Codec::Efento, i, r)),
        );
    }
    docs
}

/// Frames the Efento decode stage refuses: each becomes a dead letter.
fn efento_dead_letters() -> Vec<Doc> {
    let cases: [(&str, &str, &str); 3] = [
        ("efento_not_protobuf", "m", "ffffffffff"),
        // A measurements frame whose serial number is 5 bytes instead of 6.
        ("efento_short_serial", "m", "0a05282c024156"),
        // A path the CoAP source has no route for.
        ("efento_unknown_route", "x", "0a06282c024156af"),
    ];
    let mut stage = efento_stage();
    let mut docs = Vec::new();
    for (name, path, hex) in cases {
        let out = run_stage(
            &mut stage,
            vec![coap_record(path, hex::decode(hex).unwrap())],
        );
        assert_eq!(out.len(), 1, "{name}");
        assert_eq!(out[0].kind, Kind::DeadLetter, "{name}: {:?}", out[0].body);
        docs.push(doc_of(name, Codec::Efento, 0, &out[0]));
    }
    docs
}

// ---------------------------------------------------------------------------------------------
// EnOcean: a gateway's ESP3 stream split into records as the websocket source does, through
// `decode` codec esp3 with a registry file that onboards the vector's devices.

/// A registry entry of a vector device.
struct Onboard<'a> {
    eurid: &'a str,
    eep: Option<&'a str>,
    /// (key, slf, rlc) of a secure device.
    security: Option<(&'a str, &'a str, &'a str)>,
}

fn registry_toml(devices: &[Onboard<'_>]) -> String {
    let mut text = String::new();
    for d in devices {
        text.push_str("[[devices]]\n");
        text.push_str(&format!("eurid = \"{}\"\n", d.eurid));
        if let Some(eep) = d.eep {
            text.push_str(&format!("eep = \"{eep}\"\n"));
        }
        text.push_str(&format!("friendly_id = \"Vector device {}\"\n", d.eurid));
        text.push_str("location = \"Test bench\"\ncustom_tag = \"schemas\"\n");
        if let Some((key, slf, rlc)) = d.security {
            text.push_str(&format!(
                "key = \"{key}\"\nslf = \"{slf}\"\nrlc = \"{rlc}\"\n"
            ));
        }
        text.push('\n');
    }
    text
}

/// The devices a vector implies (as tests/enocean_vectors.rs reads them): its sender with its EEP
/// and key, or every sender of `eep_by_sender`.
fn vector_devices(v: &Value) -> Vec<Onboard<'_>> {
    if let Some(map) = v["eep_by_sender"].as_object() {
        return map
            .iter()
            .map(|(id, eep)| Onboard {
                eurid: id,
                eep: eep.as_str(),
                security: None,
            })
            .collect();
    }
    let security = v.get("security").map(|s| {
        (
            s["key"].as_str().unwrap(),
            s["slf"].as_str().unwrap(),
            s["rlc"].as_str().unwrap(),
        )
    });
    vec![Onboard {
        eurid: v["sender"].as_str().unwrap(),
        eep: v["eep"].as_str(),
        security,
    }]
}

/// A decode stage for EnOcean whose registry file holds `devices`.
fn esp3_stage(dir: &tempfile::TempDir, devices: &[Onboard<'_>]) -> DecodeStage {
    let path = dir.path().join("devices.toml");
    std::fs::write(&path, registry_toml(devices)).unwrap();
    let config: DecodeConfig = serde_json::from_value(json!({
        "codec": "esp3",
        "registry": path,
        "stats_interval": "1h",
    }))
    .unwrap();
    DecodeStage::new("enocean", &config)
}

/// The records a websocket source makes of a gateway's bytes: one per ESP3 frame, and one per run
/// of skipped bytes (route `esp3_garbage` or `esp3_crc8d_mismatch`) for the dead-letter sink.
fn gateway_records(bytes: &[u8]) -> Vec<Record> {
    let mut parser = StreamParser::default();
    parser.push(bytes);
    let mut out = Vec::new();
    while let Some(item) = parser.next_item() {
        let (raw, route, rssi) = match item {
            StreamItem::Frame(frame) => {
                let rssi = rssi_of(&frame);
                (frame, "esp3".to_string(), rssi)
            }
            StreamItem::Skipped { bytes, reason } => {
                (bytes, format!("esp3_{}", reason.code()), None)
            }
        };
        let origin = Origin {
            peer: Some(GATEWAY_PEER.parse::<SocketAddr>().unwrap()),
            path: Some("/aruba".into()),
            route: Some(route.into()),
            gateway: Some(GATEWAY.into()),
            rssi,
            ..Origin::default()
        };
        let mut record = Record::new("gateways".into(), origin, raw, Delivery::detached());
        record.received_at = received_at();
        out.push(record);
    }
    out
}

/// Runs `bytes` through a fresh stage with `devices` onboarded, then lets the stage's timer fire
/// (an hour later, flushing): pending chains expire and the statistics records come out.
fn esp3_run(name: &str, devices: &[Onboard<'_>], bytes: &[u8], with_timer: bool) -> Vec<Doc> {
    let dir = tempfile::tempdir().unwrap();
    let mut stage = esp3_stage(&dir, devices);
    let mut out = run_stage(&mut stage, gateway_records(bytes));
    if with_timer {
        stage.on_timer(Instant::now() + Duration::from_secs(7200), true, &mut out);
    }
    out.iter()
        .enumerate()
        .map(|(i, r)| doc_of(name, Codec::Esp3, i, r))
        .collect()
}

/// Every shared EnOcean vector with the registry it implies, plus the same bytes from devices that
/// are not onboarded or misconfigured (the event documents), and a gateway's health report.
fn enocean_documents() -> Vec<Doc> {
    let mut docs = Vec::new();
    let vectors = vector_files("enocean");
    for (name, v) in &vectors {
        let bytes = hex::decode(v["esp3_hex"].as_str().unwrap()).unwrap();
        docs.extend(esp3_run(name, &vector_devices(v), &bytes, true));
        // Nobody onboarded: every telegram is an UNKNOWN_DEVICE event (a teach-in names its EEP).
        docs.extend(esp3_run(&format!("{name}+unknown"), &[], &bytes, true));
    }
    let vector = |wanted: &str| -> (String, Vec<u8>) {
        let (name, v) = vectors
            .iter()
            .find(|(n, _)| n.starts_with(wanted))
            .unwrap_or_else(|| panic!("no EnOcean vector {wanted}"));
        (
            name.clone(),
            hex::decode(v["esp3_hex"].as_str().unwrap()).unwrap(),
        )
    };
    let (name, temperature) = vector("06_");
    // An EEP no decoder knows, and an EEP that does not fit the telegram.
    for (suffix, eep) in [("unknown_eep", "a5-99-99"), ("wrong_eep", "d2-14-41")] {
        let devices = [Onboard {
            eurid: "0180a1b2",
            eep: Some(eep),
            security: None,
        }];
        docs.extend(esp3_run(
            &format!("{name}+{suffix}"),
            &devices,
            &temperature,
            false,
        ));
    }
    // A device onboarded as secure that sends in the clear.
    let secure_device = [Onboard {
        eurid: "0180a1b2",
        eep: Some("a5-02-05"),
        security: Some(("456E4F6365616E20476D62482E313300", "0x8b", "000000")),
    }];
    docs.extend(esp3_run(
        &format!("{name}+now_unsecure"),
        &secure_device,
        &temperature,
        false,
    ));
    let (name, secure) = vector("29_");
    let sender = |key: Option<&'static str>| Onboard {
        eurid: "01020304",
        eep: Some("a5-02-04"),
        security: key.map(|k| (k, "0x8b", "c0ffee")),
    };
    // No key in the registry, the wrong key, and the same telegram twice (a replay).
    docs.extend(esp3_run(
        &format!("{name}+no_key"),
        &[sender(None)],
        &secure,
        false,
    ));
    docs.extend(esp3_run(
        &format!("{name}+wrong_key"),
        &[sender(Some("00000000000000000000000000000000"))],
        &secure,
        false,
    ));
    let twice = [secure.clone(), secure].concat();
    docs.extend(esp3_run(
        &format!("{name}+replay"),
        &[sender(Some("456E4F6365616E20476D62482E313300"))],
        &twice,
        false,
    ));
    // The first part of a chained telegram whose second part never comes: CHAIN_INCOMPLETE.
    let (name, v) = vectors.iter().find(|(n, _)| n.starts_with("23_")).unwrap();
    let first = hex::decode(v["esp3_frames"][0].as_str().unwrap()).unwrap();
    docs.extend(esp3_run(
        &format!("{name}+first_part_only"),
        &vector_devices(v),
        &first,
        true,
    ));
    docs.extend(gateway_health_documents());
    docs
}

/// The event an Aruba AP's health report becomes in the websocket source (it passes decode as is).
fn gateway_health_documents() -> Vec<Doc> {
    let mut docs = Vec::new();
    let known = aruba::GatewayInfo {
        name: Some("ap-1".into()),
        hardware: Some("AP-505".into()),
        software: Some("8.8.0.0".into()),
        usb: vec![(
            "ENOCEAN_USB:deb480d77718bbbe5253896b9300acfd".into(),
            "healthy",
        )],
    };
    // The first message of a connection may say nothing about the AP yet.
    let unknown = aruba::GatewayInfo::default();
    let dir = tempfile::tempdir().unwrap();
    let mut stage = esp3_stage(&dir, &[]);
    for (name, info) in [("gateway_health", known), ("gateway_health_bare", unknown)] {
        let origin = Origin {
            peer: Some(GATEWAY_PEER.parse::<SocketAddr>().unwrap()),
            path: Some("/aruba".into()),
            route: Some("gateway_health".into()),
            gateway: Some(GATEWAY.into()),
            ..Origin::default()
        };
        let mut record = Record::new(
            "gateways".into(),
            origin,
            Bytes::new(),
            Delivery::detached(),
        );
        record.received_at = received_at();
        record.kind = Kind::Event;
        record.body = aruba::health_document(GATEWAY, &info, 1_736_935_262);
        let out = run_stage(&mut stage, vec![record]);
        assert_eq!(out.len(), 1, "{name}: passes decode unchanged");
        docs.push(doc_of(name, Codec::Esp3, 0, &out[0]));
    }
    docs
}

/// Sets `bits` of `payload` (offset counted from the MSB of the first byte, as the EEP tables count)
/// to `value`.
fn set_bits(payload: &mut [u8], bits: eep::Bits, value: u32) {
    let size = usize::from(bits.size);
    for i in 0..size {
        let bit = u8::from((value >> (size - 1 - i)) & 1 == 1);
        let pos = usize::from(bits.offset) + i;
        if let Some(byte) = payload.get_mut(pos / 8) {
            let shift = 7 - pos % 8;
            *byte = (*byte & !(1 << shift)) | (bit << shift);
        }
    }
}

/// An ESP3 RADIO_ERP1 frame as a gateway sends it: RSSI -69 dBm, not addressed.
fn erp1_frame(rorg: u8, payload: &[u8], sender: u32, status: u8) -> Vec<u8> {
    let mut data = vec![rorg];
    data.extend_from_slice(payload);
    data.extend_from_slice(&sender.to_be_bytes());
    data.push(status);
    esp3::encode(0x01, &data, &[1, 0xff, 0xff, 0xff, 0xff, 0x45, 0])
}

/// Telegrams of every built-in EEP: for each layout of each profile, `per_layout` pseudo-random
/// payloads with the layout's selector set and the LRN bit saying "data", from one onboarded device
/// per profile. Returns the documents and the profile ids.
fn every_eep_documents(per_layout: usize) -> (Vec<Doc>, Vec<&'static str>) {
    let profiles = eep::profiles();
    let ids: Vec<String> = (0..profiles.len())
        .map(|i| format!("{:08x}", 0x0500_0000 + i))
        .collect();
    let devices: Vec<Onboard<'_>> = profiles
        .iter()
        .zip(&ids)
        .map(|(p, id)| Onboard {
            eurid: id,
            eep: Some(p.id),
            security: None,
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut stage = esp3_stage(&dir, &devices);
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut random = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut out = Vec::new();
    for (index, profile) in profiles.iter().enumerate() {
        let sender = 0x0500_0000 + u32::try_from(index).unwrap();
        for layout in profile.layouts {
            for _ in 0..per_layout {
                let mut payload: Vec<u8> = (0..layout.len).map(|_| random() as u8).collect();
                let mut status = if random() & 1 == 0 { 0x20 } else { 0x30 };
                match profile.selector {
                    eep::Selector::Single => {}
                    eep::Selector::Bits { bits, .. } => set_bits(&mut payload, bits, layout.when),
                    eep::Selector::Status { mask, .. } => {
                        let when = u8::try_from(layout.when).unwrap_or(0);
                        status = (status & !mask) | ((when << mask.trailing_zeros()) & mask);
                    }
                }
                // LRN bit = 1: a data telegram, not a teach-in.
                match profile.rorg {
                    eep::RORG_4BS if payload.len() == 4 => payload[3] |= 0x08,
                    eep::RORG_1BS if payload.len() == 1 => payload[0] |= 0x08,
                    _ => {}
                }
                let frame = erp1_frame(profile.rorg, &payload, sender, status);
                out.extend(run_stage(&mut stage, gateway_records(&frame)));
            }
        }
    }
    stage.on_timer(Instant::now() + Duration::from_secs(7200), true, &mut out);
    let docs = out
        .iter()
        .enumerate()
        .map(|(i, r)| doc_of("every_eep", Codec::Esp3, i, r))
        .collect();
    (docs, profiles.iter().map(|p| p.id).collect())
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[test]
fn every_schema_compiles_has_metadata_and_a_valid_example() {
    let files = schema_files();
    let stems: Vec<&str> = files.keys().map(String::as_str).collect();
    let mut expected = SCHEMAS.to_vec();
    expected.sort_unstable();
    assert_eq!(stems, expected, "schemas/*.schema.json");
    let validators = validators();
    let mut failures = Vec::new();
    for (stem, schema) in &files {
        if schema["$schema"] != "https://json-schema.org/draft/2020-12/schema" {
            failures.push(format!("{stem}: $schema is not draft 2020-12"));
        }
        let id = format!("https://sensorgate.dev/schemas/{stem}.schema.json");
        if schema["$id"] != id.as_str() {
            failures.push(format!("{stem}: $id should be {id}"));
        }
        for field in ["title", "description"] {
            if schema[field].as_str().is_none_or(str::is_empty) {
                failures.push(format!("{stem}: no {field}"));
            }
        }
        if !schema["required"]
            .as_array()
            .is_some_and(|r| r.iter().any(|f| f == "kind"))
        {
            failures.push(format!("{stem}: kind is not required"));
        }
        let example_path = schemas_dir().join("examples").join(format!("{stem}.json"));
        let example: Value = match std::fs::read_to_string(&example_path) {
            Ok(text) => serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", example_path.display())),
            Err(e) => {
                failures.push(format!(
                    "{stem}: no example ({}: {e})",
                    example_path.display()
                ));
                continue;
            }
        };
        let found = errors(&validators[stem], &example);
        if !found.is_empty() {
            failures.push(format!(
                "examples/{stem}.json does not validate:\n    {}",
                found.join("\n    ")
            ));
        }
    }
    // Every example belongs to a schema.
    for entry in std::fs::read_dir(schemas_dir().join("examples")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let stem = name.strip_suffix(".json").unwrap_or(&name);
        if !files.contains_key(stem) {
            failures.push(format!("examples/{name} has no schemas/{stem}.schema.json"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_efento_vector_document_matches_its_schema() {
    let docs = efento_documents();
    let counts = validate_all(&docs);
    eprintln!("efento documents validated: {counts:?}");
    for (name, vector) in vector_files("efento") {
        if ["/m", "/i", "/c"].contains(&vector["endpoint"].as_str().unwrap_or("")) {
            let prefix = format!("{name}#");
            assert!(
                docs.iter().any(|d| d.name.starts_with(&prefix)),
                "{name}: no document"
            );
        }
    }
    // m00, m01, m03, m05, m06, m08; i00; c00.
    assert!(counts.get("efento-measurements") >= Some(&6), "{counts:?}");
    assert!(counts.get("efento-device-info") >= Some(&1), "{counts:?}");
    assert!(counts.get("efento-config") >= Some(&1), "{counts:?}");
}

#[test]
fn efento_server_responses_match_the_config_schemas_protoconfig() {
    // What the server sends in an ACK (`/resp` vectors) is a ProtoConfig too, without a serial:
    // the `protoConfig` definition of the config schema describes both directions.
    let mut schema = schema_files().remove("efento-config").unwrap();
    let defs = schema["$defs"].take();
    let protoconfig = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$defs": defs,
        "$ref": "#/$defs/protoConfig",
    });
    let validator = jsonschema::validator_for(&protoconfig).unwrap();
    let mut checked = 0;
    for (name, vector) in vector_files("efento") {
        if vector["endpoint"] != "/resp" {
            continue;
        }
        let payload = hex::decode(vector["hex"].as_str().unwrap()).unwrap();
        let doc = sensorgate::codecs::efento::response_to_json(&payload).unwrap();
        let found = errors(&validator, &doc);
        assert!(found.is_empty(), "{name}: {}", found.join("\n"));
        let mut unknown = doc.clone();
        unknown["configuration_requested"] = json!(true);
        assert!(
            !validator.is_valid(&unknown),
            "{name}: a field ProtoConfig does not have"
        );
        checked += 1;
    }
    assert!(checked >= 2, "only {checked} /resp vectors");
}

#[test]
fn every_enocean_vector_document_matches_its_schema() {
    let docs = enocean_documents();
    let counts = validate_all(&docs);
    eprintln!("enocean documents validated: {counts:?}");
    let vectors = vector_files("enocean");
    assert!(
        vectors.len() >= 21,
        "only {} EnOcean vectors",
        vectors.len()
    );
    for (name, _) in &vectors {
        let prefix = format!("{name}#");
        assert!(
            docs.iter().any(|d| d.name.starts_with(&prefix)),
            "{name}: no document"
        );
    }
    // 15 vectors give one telemetry document each, vector 28 two.
    assert!(counts.get("enocean-telemetry") >= Some(&17), "{counts:?}");
    // Vector 04.
    assert!(counts.get("enocean-signal") >= Some(&1), "{counts:?}");
    // FIRST_TIME_SEND per onboarded device, TEACH_IN (21, 29), UNKNOWN_DEVICE for every vector
    // again with nobody onboarded, the security and decoding failures, two gateway health reports.
    assert!(counts.get("enocean-event") >= Some(&60), "{counts:?}");
    // One per device heard (onboarded or not) and one per gateway, after every vector.
    assert!(counts.get("enocean-stats") >= Some(&80), "{counts:?}");
    // The bad CRC and garbage vectors (26, 27, 28), each twice.
    assert!(counts.get("dead-letter") >= Some(&6), "{counts:?}");
}

#[test]
fn dead_letters_of_the_decode_stage_match_the_dead_letter_schema() {
    let docs = efento_dead_letters();
    let counts = validate_all(&docs);
    assert_eq!(counts.get("dead-letter"), Some(&3), "{counts:?}");
    let validator = &validators()["dead-letter"];
    // What the validate stage adds to a dead letter: the errors, the document, when it was rejected.
    let mut rejected = docs[0].value.clone();
    let fields = rejected.as_object_mut().unwrap();
    fields.insert("stage".into(), json!("validate"));
    fields.insert("rejected_at".into(), json!("2025-01-15T10:01:02.300Z"));
    fields.insert(
        "errors".into(),
        json!([{ "instance_path": "/battery_ok", "schema_path": "/properties/battery_ok/type", "message": "\"yes\" is not of type \"boolean\"" }]),
    );
    fields.insert(
        "document".into(),
        json!({ "source": "efento", "kind": "measurements", "battery_ok": "yes" }),
    );
    let found = errors(validator, &rejected);
    assert!(found.is_empty(), "{}", found.join("\n"));
    // A sink's rejection, with every optional field and an IPv6 peer.
    let mut from_sink = docs[1].value.clone();
    let fields = from_sink.as_object_mut().unwrap();
    fields.insert("stage".into(), json!("sink:lake"));
    fields.insert("peer".into(), json!("[2001:db8::10]:5683"));
    fields.insert("gateway".into(), json!(GATEWAY));
    fields.insert("device".into(), json!("282C024156AF"));
    let found = errors(validator, &from_sink);
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// A change to a document: the value at a JSON pointer replaced or added (`Some`) or removed (`None`).
type Edit = (&'static str, Option<Value>);

/// A negative case: schema, the document to start from (by name), what the change is, the edits.
type Mutation = (&'static str, &'static str, &'static str, Vec<Edit>);

/// `doc` with each edit applied.
fn edited(doc: &Value, edits: &[Edit]) -> Value {
    let mut out = doc.clone();
    for (pointer, new) in edits {
        let (parent, last) = pointer.rsplit_once('/').unwrap();
        let target = out
            .pointer_mut(parent)
            .unwrap_or_else(|| panic!("{pointer}: no {parent:?} in {doc}"));
        match (target, new) {
            (Value::Object(map), Some(v)) => {
                map.insert(last.to_string(), v.clone());
            }
            (Value::Object(map), None) => {
                assert!(map.remove(last).is_some(), "{pointer}: not in {doc}");
            }
            (Value::Array(items), new) => {
                let i: usize = last.parse().unwrap();
                assert!(i < items.len(), "{pointer}: not in {doc}");
                match new {
                    Some(v) => items[i] = v.clone(),
                    None => {
                        items.remove(i);
                    }
                }
            }
            (other, _) => panic!("{pointer}: {parent:?} is {other}, not an object or array"),
        }
    }
    out
}

/// The negative cases: changes to vector documents that their schema must reject.
fn mutation_cases() -> Vec<Mutation> {
    let teach_in_entry = json!({"code": "TEACH_IN", "message": "Teach-in.", "data": [{"key": "teachIn", "value": true}]});
    let energy = json!({"key": "energy", "value": 56.0, "unit": "%"});
    #[rustfmt::skip]
    let cases = vec![
        ("efento-measurements", "m06_sensor_error_codes#0", "a boolean as a string", vec![("/battery_ok", Some(json!("true")))]),
        ("efento-measurements", "m06_sensor_error_codes#0", "serial dropped", vec![("/serial", None)]),
        ("efento-measurements", "m06_sensor_error_codes#0", "kind changed", vec![("/kind", Some(json!("measurement")))]),
        ("efento-measurements", "m06_sensor_error_codes#0", "device in lowercase", vec![("/device", Some(json!("282c02464b5c")))]),
        ("efento-measurements", "m06_sensor_error_codes#0", "received_at not RFC 3339", vec![("/received_at", Some(json!("2025-01-15 10:01:02")))]),
        ("efento-measurements", "m06_sensor_error_codes#0", "a number as a string", vec![("/measurements/0/value", Some(json!("11.5")))]),
        ("efento-measurements", "m06_sensor_error_codes#0", "a row's type renamed", vec![("/measurements/0/type", None), ("/measurements/0/kind", Some(json!("temperature")))]),
        ("efento-measurements", "m06_sensor_error_codes#0", "the wrong unit", vec![("/measurements/0/unit", Some(json!("°C")))]),
        ("efento-measurements", "m06_sensor_error_codes#0", "a float for an integer type", vec![("/measurements/3/value", Some(json!(40.5)))]),
        ("efento-measurements", "m06_sensor_error_codes#0", "a continuous row without raw", vec![("/measurements/0/raw", None)]),
        ("efento-measurements", "m06_sensor_error_codes#0", "an error row with a value", vec![("/measurements/2/value", Some(json!(0)))]),
        ("efento-measurements", "m06_sensor_error_codes#0", "transfer reason retries out of range", vec![("/extra/transfer_reason_decoded/retries", Some(json!(32)))]),
        ("efento-measurements", "m06_sensor_error_codes#0", "an unknown field in extra", vec![("/extra/period", Some(json!(60)))]),
        ("efento-measurements", "m03_co2_iaq_metadata#0", "a CO2 row without meta", vec![("/measurements/0/meta", None)]),
        ("efento-measurements", "m03_co2_iaq_metadata#0", "meta out of range", vec![("/measurements/0/meta", Some(json!(3)))]),
        ("efento-measurements", "m00_seed_open_close#0", "a binary state not in the list", vec![("/measurements/0/value", Some(json!("open")))]),
        ("efento-measurements", "m00_seed_open_close#0", "a binary row with a raw integer", vec![("/measurements/0/raw", Some(json!(1)))]),
        ("efento-measurements", "m06_sensor_error_codes#0", "metadata on a type without it", vec![("/measurements/0/meta", Some(json!(1)))]),
        ("efento-measurements", "m06_sensor_error_codes#0", "a type number on a known type", vec![("/measurements/0/type_code", Some(json!(1)))]),
        ("efento-measurements", "m06_sensor_error_codes#0", "an error row with a raw integer", vec![("/measurements/2/raw", Some(json!(1)))]),
        ("efento-device-info", "i00_seed_device_info#0", "a number as a string", vec![("/sw_version", Some(json!("1546")))]),
        ("efento-device-info", "i00_seed_device_info#0", "serial_number dropped", vec![("/serial_number", None)]),
        ("efento-device-info", "i00_seed_device_info#0", "an enum name changed", vec![("/modem/type", Some(json!("BC66")))]),
        ("efento-device-info", "i00_seed_device_info#0", "sw_version_str missing", vec![("/derived/sw_version_str", None)]),
        ("efento-device-info", "i00_seed_device_info#0", "a field renamed", vec![("/runtime_info/up_time", None), ("/runtime_info/uptime", Some(json!(4_665_786)))]),
        ("efento-config", "c00_seed_configuration#0", "an enum without its prefix", vec![("/channel_types/0", Some(json!("TEMPERATURE")))]),
        ("efento-config", "c00_seed_configuration#0", "a negative unsigned field", vec![("/measurement_period_base", Some(json!(-30)))]),
        ("efento-config", "c00_seed_configuration#0", "an unknown field in a rule", vec![("/rules/0/conditon", Some(json!("CONDITION_DISABLED")))]),
        ("efento-config", "c00_seed_configuration#0", "serial_number dropped", vec![("/serial_number", None)]),
        ("enocean-telemetry", "01_public_d2-14-41_multisensor#1", "a 7-digit sender", vec![("/raw/sender", Some(json!("4138bb4")))]),
        ("enocean-telemetry", "01_public_d2-14-41_multisensor#1", "an object as a value", vec![("/telemetry/data/0/value", Some(json!({"v": 23.9})))]),
        ("enocean-telemetry", "01_public_d2-14-41_multisensor#1", "value renamed", vec![("/telemetry/data/0/value", None), ("/telemetry/data/0/val", Some(json!(23.9)))]),
        ("enocean-telemetry", "01_public_d2-14-41_multisensor#1", "sensor dropped", vec![("/sensor", None)]),
        ("enocean-telemetry", "01_public_d2-14-41_multisensor#1", "rssi as a string", vec![("/raw/rssi", Some(json!("-77")))]),
        ("enocean-telemetry", "01_public_d2-14-41_multisensor#1", "egressTime as a number", vec![("/telemetry/meta/stats/0/egressTime", Some(json!(1_736_935_262.25)))]),
        ("enocean-telemetry", "01_public_d2-14-41_multisensor#1", "kind changed", vec![("/kind", Some(json!("signal")))]),
        ("enocean-telemetry", "01_public_d2-14-41_multisensor#1", "signal entries in telemetry", vec![("/telemetry/signal", Some(json!([energy])))]),
        ("enocean-signal", "04_public_signal_energy#1", "no signal entries", vec![("/telemetry/signal", Some(json!([])))]),
        ("enocean-signal", "04_public_signal_energy#1", "signalIdentifier not first", vec![("/telemetry/signal/0", None)]),
        ("enocean-signal", "04_public_signal_energy#1", "not a D0 telegram", vec![("/raw/rorg", Some(json!("a5")))]),
        ("enocean-signal", "04_public_signal_energy#1", "data entries in a signal", vec![("/telemetry/data", Some(json!([energy])))]),
        ("enocean-event", "21_a5_teach_in_variation2#1", "an unknown event code", vec![("/meta/events/health/0/code", Some(json!("TEACHIN")))]),
        ("enocean-event", "21_a5_teach_in_variation2#1", "an event without message", vec![("/meta/events/health/0/message", None)]),
        ("enocean-event", "21_a5_teach_in_variation2#1", "two events in one document", vec![("/meta/events/security", Some(json!([{"code": "RLC_REPLAY", "message": "Replay."}])))]),
        ("enocean-event", "21_a5_teach_in_variation2#1", "a code in the wrong list", vec![("/meta/events/health", Some(json!([]))), ("/meta/events/transcoding", Some(json!([teach_in_entry])))]),
        ("enocean-event", "21_a5_teach_in_variation2#1", "a teach-in without data", vec![("/meta/events/health/0/data", None)]),
        ("enocean-event", "21_a5_teach_in_variation2#1", "timestamp as a number", vec![("/meta/stats/timestamp", Some(json!(1_736_935_262)))]),
        ("enocean-event", "gateway_health#0", "an unknown USB health", vec![("/usb_info/0/usb_health", Some(json!("ok")))]),
        ("enocean-event", "gateway_health#0", "mac dropped", vec![("/gateway_info/mac", None)]),
        ("enocean-stats", "01_public_d2-14-41_multisensor#2", "a count as a string", vec![("/meta/stats/totalTelegramCount", Some(json!("1")))]),
        ("enocean-stats", "01_public_d2-14-41_multisensor#2", "the IoTC spelling corrected", vec![("/meta/stats/succesfullyProcessed", None), ("/meta/stats/successfullyProcessed", Some(json!(1)))]),
        ("enocean-stats", "01_public_d2-14-41_multisensor#2", "timestamp dropped", vec![("/timestamp", None)]),
        ("enocean-stats", "01_public_d2-14-41_multisensor#3", "duplicates dropped", vec![("/stats/duplicates", None)]),
        ("enocean-stats", "01_public_d2-14-41_multisensor#3", "lastSeen as a number", vec![("/stats/lastSeen", Some(json!(1_736_935_262)))]),
        ("dead-letter", "efento_short_serial#0", "a negative length", vec![("/raw_len", Some(json!(-1)))]),
        ("dead-letter", "efento_short_serial#0", "raw_hex in uppercase", vec![("/raw_hex", Some(json!("0A05282C024156")))]),
        ("dead-letter", "efento_short_serial#0", "error dropped", vec![("/error", None)]),
        ("dead-letter", "efento_short_serial#0", "an unknown stage", vec![("/stage", Some(json!("parse")))]),
        ("dead-letter", "efento_short_serial#0", "an unknown field", vec![("/reason", Some(json!("bad frame")))]),
        ("dead-letter", "efento_short_serial#0", "received_at as a number", vec![("/received_at", Some(json!(1_736_935_262_250_u64)))]),
        ("dead-letter", "efento_short_serial#0", "an errors entry without a message", vec![("/errors", Some(json!([{"instance_path": "", "schema_path": "/required"}])))]),
    ];
    cases
}

#[test]
fn schemas_reject_documents_whose_shape_changed() {
    let validators = validators();
    let mut docs = efento_documents();
    docs.extend(enocean_documents());
    docs.extend(efento_dead_letters());
    let find = |stem: &str, name: &str| -> Value {
        let doc = docs
            .iter()
            .find(|d| d.name == name)
            .unwrap_or_else(|| panic!("no document {name}"));
        assert_eq!(
            schema_for(doc.codec, doc.kind.as_str()),
            Some(stem),
            "{name}"
        );
        let found = errors(&validators[stem], &doc.value);
        assert!(
            found.is_empty(),
            "{name} must be valid to start with: {found:?}"
        );
        doc.value.clone()
    };
    let cases = mutation_cases();
    let mut per_schema: BTreeMap<&str, usize> = BTreeMap::new();
    let mut accepted = Vec::new();
    for (stem, name, why, edits) in &cases {
        let doc = edited(&find(stem, name), edits);
        eprintln!(
            "{stem}, {name} with {why}: {:?}",
            errors(&validators[*stem], &doc)
        );
        if validators[*stem].is_valid(&doc) {
            accepted.push(format!("{stem} accepts {name} with {why}: {edits:?}"));
        }
        *per_schema.entry(stem).or_insert(0) += 1;
    }
    assert!(
        accepted.is_empty(),
        "changed documents that a schema still accepts:\n{}",
        accepted.join("\n")
    );
    for stem in SCHEMAS {
        assert!(
            per_schema.get(stem) >= Some(&2),
            "{stem}: fewer than 2 negative cases"
        );
    }
}

#[test]
fn every_builtin_eep_gives_telemetry_the_schema_accepts() {
    // The vectors cover 15 profiles; the schemas must take what every built-in profile can give
    // (keys, units, meanings, value types), or a validate stage would reject good telemetry.
    let (docs, profiles) = every_eep_documents(24);
    let counts = validate_all(&docs);
    eprintln!("every EEP: documents validated: {counts:?}");
    let mut missing = Vec::new();
    for id in &profiles {
        let decoded = docs
            .iter()
            .any(|d| d.kind == Kind::Telemetry && d.value["sensor"]["eep"].as_str() == Some(id));
        if !decoded {
            missing.push(*id);
        }
    }
    assert!(missing.is_empty(), "no telemetry from profiles {missing:?}");
    assert!(profiles.len() >= 100, "only {} profiles", profiles.len());
    assert!(
        counts.get("enocean-telemetry") >= Some(&profiles.len()),
        "{counts:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The validate stage's fast validator (src/stages/validate/fast.rs) against `jsonschema`: the same
// verdict on every document, read as a `serde_json::Value` and read from the record without
// building its document. It must never accept what `jsonschema` rejects (a record it accepts is
// not checked again), and should not reject what it accepts (that costs a second check).

/// Every published schema as the validate stage compiles it, by stem.
fn stage_schemas() -> BTreeMap<String, validate::Schema> {
    SCHEMAS
        .iter()
        .map(|stem| {
            let path = schemas_dir().join(format!("{stem}.schema.json"));
            let schema = validate::compile(&path).unwrap_or_else(|e| panic!("{e}"));
            (stem.to_string(), schema)
        })
        .collect()
}

/// The reading a `measurements` row shows, if the row is exactly what [`Reading::to_json`] writes
/// for some reading.
fn reading_of(row: &Value) -> Option<Reading> {
    let map = row.as_object()?;
    let int = |name: &str| -> Option<Option<i64>> {
        match map.get(name) {
            None => Some(None),
            Some(v) => v.as_i64().map(Some),
        }
    };
    let reading = Reading {
        channel: match map.get("channel") {
            None => None,
            Some(v) => Some(u32::try_from(v.as_u64()?).ok()?),
        },
        key: map.get("type")?.as_str()?.to_string().into(),
        ts: map.get("ts")?.as_i64()?,
        value: match map.get("value")? {
            Value::Null => ReadingValue::Null,
            Value::Number(n) if n.is_f64() => ReadingValue::Float(n.as_f64()?),
            Value::Number(n) => ReadingValue::Int(n.as_i64()?),
            Value::String(s) => ReadingValue::Text(s.clone().into()),
            _ => return None,
        },
        unit: match map.get("unit")? {
            Value::Null => None,
            Value::String(s) => Some(s.clone().into()),
            _ => return None,
        },
        raw: int("raw")?,
        meta: int("meta")?,
        error_code: int("error_code")?,
        type_code: int("type_code")?,
    };
    (reading.to_json() == *row).then_some(reading)
}

/// A record whose document is `doc`, made from `template` (its origin, time and raw bytes): the
/// envelope fields a record can carry move out of the body, `measurements` becomes typed readings
/// when every row is a reading's; whatever cannot be carried stays in the body, where it wins over
/// the envelope as in any document. `None` when no record shows this document.
fn record_of_document(doc: &Value, template: &Record) -> Option<Record> {
    let mut record = template.clone();
    let mut body = doc.as_object()?.clone();
    record.readings.clear();
    record.device = None;
    if let Some(Value::String(source)) = body.get("source") {
        record.source = source.as_str().into();
        body.shift_remove("source");
    }
    if let Some(kind) = body
        .get("kind")
        .and_then(|k| serde_json::from_value::<Kind>(k.clone()).ok())
    {
        record.kind = kind;
        body.shift_remove("kind");
    }
    if let Some(Value::String(device)) = body.get("device") {
        record.device = Some(device.clone());
        body.shift_remove("device");
    }
    if body.get("received_at").and_then(Value::as_str) == Some(&rfc3339(record.received_at)) {
        body.shift_remove("received_at");
    }
    if let Some(rows) = body.get("measurements").and_then(Value::as_array)
        && let Some(readings) = rows.iter().map(reading_of).collect::<Option<Vec<_>>>()
        && (!readings.is_empty() || record.kind == Kind::Measurements)
    {
        record.readings = readings;
        body.shift_remove("measurements");
    }
    record.body = body;
    (serde_json::to_value(Document(&record)).ok()? == *doc).then_some(record)
}

/// The three verdicts on one document: `jsonschema`'s, the fast validator's through the value,
/// and through the record (when given). Returns `jsonschema`'s, or a line saying how they differ.
fn verdicts(
    schema: &validate::Schema,
    doc: &Value,
    record: Option<&Record>,
) -> Result<bool, String> {
    let fast = schema.fast().expect("a fast validator");
    let expected = schema.is_valid_document(doc);
    let by_value = fast.is_valid(doc);
    let by_record = record.map(|r| fast.is_valid_record(r));
    if by_value != expected || by_record.is_some_and(|v| v != expected) {
        return Err(format!(
            "jsonschema says {expected}, fast through the value {by_value}, through the record {by_record:?}: {doc}"
        ));
    }
    Ok(expected)
}

/// A small deterministic generator (xorshift), so that a failure names a case that comes back.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// The names a view's object shows, in order, with any name it shows twice.
fn names_of<V: View>(v: V) -> Vec<String> {
    let mut names = Vec::new();
    v.entries(|name, _| {
        names.push(name.to_string());
        true
    });
    assert_eq!(names.len(), v.len(), "len() counts every entry: {names:?}");
    names
}

/// The names of a record's document, in the order it is written.
fn document_names(record: &Record) -> Vec<String> {
    let text = serde_json::to_string(&Document(record)).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    doc.as_object().unwrap().keys().cloned().collect()
}

#[test]
fn published_schemas_that_get_a_fast_validator() {
    let fast: Vec<&str> = SCHEMAS
        .iter()
        .copied()
        .filter(|stem| stage_schemas()[*stem].fast().is_some())
        .collect();
    // efento-config uses unevaluatedProperties, which the fast validator does not implement.
    assert_eq!(
        fast,
        [
            "efento-measurements",
            "efento-device-info",
            "enocean-telemetry",
            "enocean-signal",
            "enocean-event",
            "enocean-stats",
            "dead-letter",
        ]
    );
}

#[test]
fn record_view_shows_exactly_the_document() {
    let mut docs = efento_documents();
    docs.extend(enocean_documents());
    docs.extend(efento_dead_letters());
    let mut with_readings = 0;
    for doc in &docs {
        let received_at = rfc3339(doc.record.received_at);
        let document = RecordDocument::new(&doc.record, &received_at);
        let shown = fast::to_value(document.view());
        assert_eq!(shown, doc.value, "{}", doc.name);
        assert_eq!(
            names_of(document.view()),
            document_names(&doc.record),
            "{}",
            doc.name
        );
        // In the same order, too.
        assert_eq!(
            serde_json::to_string(&shown).unwrap(),
            serde_json::to_string(&Document(&doc.record)).unwrap(),
            "{}",
            doc.name
        );
        with_readings += usize::from(!doc.record.readings.is_empty());
    }
    assert!(with_readings >= 5, "{with_readings} records with readings");
}

#[test]
fn fast_verdicts_equal_jsonschema_on_every_vector_document_and_mutation() {
    let schemas = stage_schemas();
    let mut docs = efento_documents();
    docs.extend(enocean_documents());
    docs.extend(efento_dead_letters());
    docs.extend(every_eep_documents(2).0);
    let mut failures = Vec::new();
    let mut checked = 0;
    for doc in &docs {
        let stem = schema_for(doc.codec, doc.kind.as_str()).unwrap();
        if schemas[stem].fast().is_none() {
            continue;
        }
        match verdicts(&schemas[stem], &doc.value, Some(&doc.record)) {
            Ok(true) => checked += 1,
            Ok(false) => failures.push(format!("{}: invalid to start with", doc.name)),
            Err(e) => failures.push(format!("{}: {e}", doc.name)),
        }
    }
    let mut through_records = 0;
    let mut mutations = 0;
    for (stem, name, why, edits) in mutation_cases() {
        if schemas[stem].fast().is_none() {
            continue;
        }
        let doc = docs.iter().find(|d| d.name == name).unwrap();
        let changed = edited(&doc.value, &edits);
        let record = record_of_document(&changed, &doc.record);
        through_records += usize::from(record.is_some());
        mutations += 1;
        match verdicts(&schemas[stem], &changed, record.as_ref()) {
            Ok(false) => {}
            Ok(true) => failures.push(format!("{name} with {why}: accepted by jsonschema")),
            Err(e) => failures.push(format!("{name} with {why}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked >= 300, "{checked} documents");
    assert!(mutations >= 50, "{mutations} mutations");
    // Most mutations are documents a record can show (the rest are checked as values only).
    assert!(
        through_records * 10 >= mutations * 8,
        "{through_records} of {mutations}"
    );
}

/// The units the Efento schema's type table names, and a few it does not.
fn efento_units(schema: &Value) -> Vec<Option<String>> {
    let mut units: Vec<Option<String>> = vec![None, Some("°C".into()), Some(String::new())];
    for row in schema["$defs"]["measurement"]["anyOf"].as_array().unwrap() {
        if let Some(unit) = row["properties"]["unit"]["const"].as_str()
            && !units.contains(&Some(unit.to_string()))
        {
            units.push(Some(unit.to_string()));
        }
    }
    units
}

#[test]
fn generated_efento_records_get_the_same_verdict_both_ways() {
    let schemas = stage_schemas();
    let schema = &schemas["efento-measurements"];
    let text = std::fs::read_to_string(schemas_dir().join("efento-measurements.schema.json"));
    let json_schema: Value = serde_json::from_str(&text.unwrap()).unwrap();
    let mut types: Vec<String> = json_schema["$defs"]["measurement"]["properties"]["type"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    types.extend(["bogus".to_string(), String::new(), "Temperature".into()]);
    let units = efento_units(&json_schema);
    let bases: Vec<Record> = efento_documents()
        .into_iter()
        .filter(|d| d.kind == Kind::Measurements)
        .map(|d| d.record)
        .collect();
    assert!(bases.len() >= 5, "{} measurement records", bases.len());
    let values = [
        ReadingValue::Null,
        ReadingValue::Int(0),
        ReadingValue::Int(-1),
        ReadingValue::Int(1),
        ReadingValue::Int(40),
        ReadingValue::Int(i64::MAX),
        ReadingValue::Int(i64::MIN),
        ReadingValue::Float(0.0),
        ReadingValue::Float(-0.0),
        ReadingValue::Float(-0.5),
        ReadingValue::Float(21.5),
        ReadingValue::Float(22.0),
        ReadingValue::Float(1e300),
        ReadingValue::Float(f64::NAN),
        ReadingValue::Float(f64::INFINITY),
        ReadingValue::Text("ok".into()),
        ReadingValue::Text("alarm".into()),
        ReadingValue::Text("water_detected".into()),
        ReadingValue::Text("no_water".into()),
        ReadingValue::Text("on".into()),
        ReadingValue::Text("off".into()),
        ReadingValue::Text("open".into()),
        ReadingValue::Text("".into()),
    ];
    let raws = [
        None,
        Some(0),
        Some(-5),
        Some(215),
        Some(i64::MAX),
        Some(i64::MIN),
    ];
    let metas = [None, Some(0), Some(1), Some(2), Some(3), Some(4), Some(-1)];
    let error_codes = [
        None,
        Some(8_355_840),
        Some(8_388_607),
        Some(8_355_839),
        Some(8_388_608),
        Some(0),
    ];
    let type_codes = [None, Some(1), Some(99)];
    let channels = [None, Some(0), Some(1), Some(3), Some(u32::MAX)];
    let stamps = [0, -1, 1_736_935_262, i64::MAX, i64::MIN];
    let body_values = [
        json!("measurements"),
        json!("telemetry"),
        json!("efento"),
        json!("2025-01-15T10:01:02.250Z"),
        json!(null),
        json!(true),
        json!("true"),
        json!(0),
        json!(-1),
        json!(1.5),
        json!(7.0),
        json!(4_294_967_295_u64),
        json!(4_294_967_296_u64),
        json!("282C024156AF"),
        json!("282c024156af"),
        json!([]),
        json!({}),
    ];
    let mut random = Random(0x2545_f491_4f6c_dd1d);
    let (mut valid, mut invalid) = (0, 0);
    let mut failures = Vec::new();
    for case in 0..8000 {
        let mut record = random.pick(&bases).clone();
        let changes = if random.below(2) == 0 {
            1
        } else {
            1 + random.below(3)
        };
        for _ in 0..changes {
            let n = record.readings.len();
            let what = random.below(24);
            if what < 14 && n > 0 {
                let i = random.below(n);
                let r = &mut record.readings[i];
                match what {
                    0 => r.key = random.pick(&types).clone().into(),
                    1 => r.unit = random.pick(&units).clone().map(Into::into),
                    2..=4 => r.value = random.pick(&values).clone(),
                    5 => r.raw = *random.pick(&raws),
                    6 => r.meta = *random.pick(&metas),
                    7 => r.error_code = *random.pick(&error_codes),
                    8 => r.type_code = *random.pick(&type_codes),
                    9 => r.channel = *random.pick(&channels),
                    10 => r.ts = *random.pick(&stamps),
                    // A sensor error as the codec writes it: no value, no raw integer.
                    11 => {
                        r.value = ReadingValue::Null;
                        r.raw = None;
                        r.meta = None;
                        r.error_code = Some(8_355_841);
                    }
                    // Another type with its own unit, the value kept.
                    12 => {
                        let row = random.below(40);
                        let table = &json_schema["$defs"]["measurement"]["anyOf"][row];
                        if let (Some(t), Some(unit)) = (
                            table["properties"]["type"]["const"].as_str(),
                            table["properties"]["unit"].get("const"),
                        ) {
                            r.key = t.to_string().into();
                            r.unit = unit.as_str().map(|u| u.to_string().into());
                        }
                    }
                    _ => {
                        let copy = r.clone();
                        record.readings.push(copy);
                    }
                }
            } else {
                let names: Vec<String> = record.body.keys().cloned().collect();
                match what {
                    14 if !names.is_empty() => {
                        let name = random.pick(&names).clone();
                        record.body.shift_remove(&name);
                    }
                    15..=17 if !names.is_empty() => {
                        let name = random.pick(&names).clone();
                        record.body.insert(name, random.pick(&body_values).clone());
                    }
                    18 => {
                        let name = *random.pick(&[
                            "kind",
                            "source",
                            "device",
                            "received_at",
                            "measurements",
                            "enriched",
                        ]);
                        record
                            .body
                            .insert(name.into(), random.pick(&body_values).clone());
                    }
                    19 => {
                        record.device = random
                            .pick(&[
                                None,
                                Some("282C024156AF"),
                                Some("bad"),
                                Some("282c024156af"),
                            ])
                            .map(String::from)
                    }
                    20 => {
                        record.kind =
                            *random.pick(&[Kind::Measurements, Kind::Telemetry, Kind::DeviceInfo])
                    }
                    21 => {
                        let secs = *random.pick(&[0_u64, 1_736_935_262, 253_402_300_800]);
                        let millis = *random.pick(&[0_u64, 1, 999]);
                        record.received_at =
                            std::time::UNIX_EPOCH + Duration::from_millis(secs * 1000 + millis);
                    }
                    22 => record.source = random.pick(&["", "efento", "é"]).to_string().into(),
                    _ => record.readings.truncate(random.below(n + 1)),
                }
            }
        }
        let doc = serde_json::to_value(Document(&record)).unwrap();
        let received_at = rfc3339(record.received_at);
        let document = RecordDocument::new(&record, &received_at);
        let shown = fast::to_value(document.view());
        if names_of(document.view()) != document_names(&record) {
            failures.push(format!(
                "case {case}: the view shows the names {:?}, the document {:?}",
                names_of(document.view()),
                document_names(&record)
            ));
        }
        if shown != doc {
            failures.push(format!(
                "case {case}: the view shows {shown}, the document is {doc}"
            ));
        }
        match verdicts(schema, &doc, Some(&record)) {
            Ok(true) => valid += 1,
            Ok(false) => invalid += 1,
            Err(e) => failures.push(format!("case {case}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 8000 cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("generated Efento records: {valid} valid, {invalid} invalid");
    assert!(
        valid >= 800 && invalid >= 800,
        "{valid} valid, {invalid} invalid"
    );
}

/// Every place in `doc` as a JSON pointer (the root excluded).
fn pointers(doc: &Value, at: &str, out: &mut Vec<String>) {
    match doc {
        Value::Object(map) => {
            for (k, v) in map {
                let here = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(here.clone());
                pointers(v, &here, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                let here = format!("{at}/{i}");
                out.push(here.clone());
                pointers(v, &here, out);
            }
        }
        _ => {}
    }
}

/// `doc` with one random change at a random place: a value replaced (by one of `pool`, or a number
/// nudged), removed, or an entry added.
fn mutated(doc: &Value, random: &mut Random, pool: &[Value]) -> Value {
    let mut out = doc.clone();
    let mut places = Vec::new();
    pointers(&out, "", &mut places);
    if places.is_empty() {
        return out;
    }
    let place = random.pick(&places).clone();
    let (parent, last) = place.rsplit_once('/').unwrap();
    let what = random.below(6);
    if what == 3 {
        match out.pointer_mut(parent).unwrap() {
            Value::Object(map) => {
                map.shift_remove(last);
            }
            Value::Array(items) => {
                items.remove(last.parse::<usize>().unwrap());
            }
            _ => {}
        }
        return out;
    }
    if what == 5 {
        if let Value::Object(map) = out.pointer_mut(parent).unwrap() {
            map.insert("zz_extra".into(), random.pick(pool).clone());
        }
        return out;
    }
    let target = out.pointer_mut(&place).unwrap();
    match what {
        2 => {
            if let Some(n) = target.as_f64() {
                *target = json!(*random.pick(&[n + 0.5, -n, n + 1.0, n * 1e20, n]));
                if random.below(2) == 0
                    && let Some(i) = target.as_f64()
                {
                    // The same number, written as a float.
                    *target = json!(i);
                }
            } else {
                *target = random.pick(pool).clone();
            }
        }
        4 => match target {
            Value::Object(map) => {
                map.insert("zz_extra".into(), random.pick(pool).clone());
            }
            Value::Array(items) => {
                let copy = items.first().cloned().unwrap_or(json!(1));
                items.push(copy);
            }
            other => *other = random.pick(pool).clone(),
        },
        _ => *target = random.pick(pool).clone(),
    }
    out
}

#[test]
fn generated_documents_of_every_schema_get_the_same_verdict_both_ways() {
    let schemas = stage_schemas();
    let mut docs = enocean_documents();
    docs.extend(every_eep_documents(2).0);
    docs.extend(efento_documents());
    docs.extend(efento_dead_letters());
    let pool = [
        json!(null),
        json!(true),
        json!(false),
        json!(0),
        json!(-1),
        json!(1.5),
        json!(255),
        json!(256),
        json!(4_294_967_296_u64),
        json!(""),
        json!("a5"),
        json!("d0"),
        json!("zz"),
        json!("0180a1b2"),
        json!("0x8b"),
        json!("1736935262.250000"),
        json!("2025-01-15T10:01:02.250Z"),
        json!("°C"),
        json!([]),
        json!([{"key": "temperature", "value": 21.5, "unit": "°C"}]),
        json!({}),
        json!({"gateway": null, "rssi": -70}),
    ];
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    let mut failures = Vec::new();
    let mut per_schema: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut through_records = 0;
    let cases = 12_000;
    for case in 0..cases {
        let doc = random.pick(&docs);
        let stem = schema_for(doc.codec, doc.kind.as_str()).unwrap();
        if schemas[stem].fast().is_none() {
            continue;
        }
        let mut changed = mutated(&doc.value, &mut random, &pool);
        if random.below(3) == 0 {
            changed = mutated(&changed, &mut random, &pool);
        }
        let record = record_of_document(&changed, &doc.record);
        through_records += usize::from(record.is_some());
        match verdicts(&schemas[stem], &changed, record.as_ref()) {
            Ok(v) => {
                let counts = per_schema.entry(stem).or_default();
                if v { counts.0 += 1 } else { counts.1 += 1 }
            }
            Err(e) => failures.push(format!("case {case} ({}): {e}", doc.name)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!(
        "generated documents (valid, invalid): {per_schema:?}, {through_records} through records"
    );
    let (valid, invalid) = per_schema["enocean-telemetry"];
    assert!(valid >= 200 && invalid >= 1000, "{per_schema:?}");
    assert!(through_records >= cases / 2, "{through_records}");
}

#[test]
fn the_load_generators_frames_pass_the_fast_path() {
    // What the stages bench and the load tests send: they must be accepted without a document.
    let schemas = stage_schemas();
    let schema = &schemas["efento-measurements"];
    let fast = schema.fast().unwrap();
    let mut stage = efento_stage();
    for i in 0..50 {
        let out = run_stage(
            &mut stage,
            vec![coap_record("m", sensorgate::loadgen::frame(i, i % 7))],
        );
        let doc = serde_json::to_value(Document(&out[0])).unwrap();
        assert!(schema.is_valid_document(&doc), "{doc}");
        assert!(fast.is_valid_record(&out[0]), "{doc}");
    }
}
