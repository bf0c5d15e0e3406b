//! Every shared EnOcean vector through the whole decoder (ESP3, radio layer, chaining, security,
//! teach-in, signal, EEP tables, document), the way `sensorgate decode esp3` runs it.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use sensorgate::codecs::enocean::engine;
use sensorgate::codecs::enocean::secure::{Key, Slf};
use sensorgate::record::Kind;
use sensorgate::registry::{Device, Registry, Security};
use serde_json::Value;

fn vectors() -> Vec<(String, Value)> {
    let dir = common::vectors_dir("enocean");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            (p.file_name().unwrap().to_string_lossy().into_owned(), v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(
        out.len() >= 21,
        "expected every shared EnOcean vector, found {}",
        out.len()
    );
    out
}

fn device(id: &str, eep: Option<&str>, security: Option<Security>) -> Device {
    let eurid = u32::from_str_radix(id, 16).unwrap();
    Device {
        eurid,
        id: id.to_string(),
        eep: eep.map(str::to_string),
        friendly_id: format!("vector {id}"),
        location: "test".into(),
        custom_tag: String::new(),
        security,
        fields: Default::default(),
    }
}

/// The registry a vector implies: its sender with its EEP (and key), or each sender of `eep_by_sender`.
fn registry_for(v: &Value) -> Arc<Registry> {
    let mut devices = HashMap::new();
    if let Some(map) = v["eep_by_sender"].as_object() {
        for (id, eep) in map {
            let d = device(id, eep.as_str(), None);
            devices.insert(d.eurid, Arc::new(d));
        }
    } else if let Some(sender) = v["sender"].as_str() {
        let security = v.get("security").map(|s| Security {
            key: Key::from_hex(s["key"].as_str().unwrap()).unwrap(),
            slf: Slf(
                u8::from_str_radix(s["slf"].as_str().unwrap().trim_start_matches("0x"), 16)
                    .unwrap(),
            ),
            rlc: u32::from_str_radix(s["rlc"].as_str().unwrap(), 16).unwrap(),
        });
        let d = device(sender, v["eep"].as_str(), security);
        devices.insert(d.eurid, Arc::new(d));
    }
    Registry::from_devices(devices)
}

/// The `data` list a document shows: telemetry data, signal entries, or a teach-in event's data.
fn data_of(output: &engine::Output) -> Value {
    let body = &output.body;
    match output.kind {
        Kind::Telemetry => body["telemetry"]["data"].clone(),
        Kind::Signal => body["telemetry"]["signal"].clone(),
        Kind::Event => {
            let events = &body["meta"]["events"];
            let all: Vec<&Value> = ["security", "health", "transcoding"]
                .iter()
                .flat_map(|c| events[c].as_array().into_iter().flatten())
                .collect();
            assert_eq!(all.len(), 1, "one event: {body:#?}");
            assert_eq!(all[0]["code"], "TEACH_IN", "{body:#?}");
            all[0]["data"].clone()
        }
        other => panic!("unexpected kind {other}"),
    }
}

#[test]
fn every_shared_enocean_vector_decodes_as_expected() {
    let mut checked = 0;
    for (name, v) in vectors() {
        let hex = v["esp3_hex"].as_str().unwrap();
        let expected = &v["expected"];
        let result = engine::decode_hex(hex, registry_for(&v), None, None);
        if let Some(error) = expected["error"].as_str() {
            let e = result.expect_err(&name);
            assert!(e.starts_with(error), "{name}: {e}");
            checked += 1;
            continue;
        }
        let outputs = result.unwrap_or_else(|e| panic!("{name}: {e}"));
        if let Some(n) = v["expected_packet_count"].as_u64() {
            assert_eq!(outputs.len() as u64, n, "{name}");
        }
        let last = outputs
            .last()
            .unwrap_or_else(|| panic!("{name}: no document"));
        assert_eq!(data_of(last), expected["data"], "{name}");
        let raw = &last.body["raw"];
        assert_eq!(raw["rorg"], expected["rorg"], "{name}");
        assert_eq!(raw["rssi"], expected["rssi_dbm"], "{name}");
        assert_eq!(raw["sender"], v["sender"], "{name}");
        if expected["chained"] == true {
            assert_eq!(raw["chained"], true, "{name}");
        }
        if expected["adt"] == true {
            assert_eq!(raw["adt"], true, "{name}");
            assert_eq!(raw["destination"], expected["destination"], "{name}");
        }
        if let Some(rlc) = expected["rlc"].as_str() {
            assert_eq!(raw["rlc"], rlc, "{name}");
            assert_eq!(raw["secureRorg"], expected["secure_rorg"], "{name}");
        }
        if last.kind == Kind::Telemetry {
            let sensor = &last.body["sensor"];
            assert_eq!(sensor["id"], v["sender"], "{name}");
            assert_eq!(sensor["eep"], v["eep"], "{name}");
        }
        checked += 1;
    }
    assert!(checked >= 21);
}

#[test]
fn the_cli_prints_documents_and_one_line_errors() {
    let bin = env!("CARGO_BIN_EXE_sensorgate");
    let ok = std::process::Command::new(bin)
        .args([
            "decode",
            "esp3",
            "--eep",
            "a5-09-09",
            "55000a0701eba500005008051b03c90100ffffffff500090",
        ])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let doc: Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(doc["telemetry"]["data"][0]["value"], 627.45);
    assert_eq!(doc["raw"]["sender"], "051b03c9");

    let bad = std::process::Command::new(bin)
        .args([
            "decode",
            "esp3",
            "55000a0701eba5000080080180a1b20001ffffffff4500ae",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("crc8d_mismatch"), "{stderr}");

    let secure = std::process::Command::new(bin)
        .args([
            "decode",
            "esp3",
            "--key",
            "456E4F6365616E20476D62482E313300",
            "--rlc",
            "c0ffee",
            "55000e070140313eeac4a2dfeaf20e010203040001ffffffff4000d4",
        ])
        .output()
        .unwrap();
    assert!(
        secure.status.success(),
        "{}",
        String::from_utf8_lossy(&secure.stderr)
    );
    let doc: Value = serde_json::from_slice(&secure.stdout).unwrap();
    assert_eq!(doc["raw"]["rlc"], "c0ffee");

    let wrong_key = std::process::Command::new(bin)
        .args([
            "decode",
            "esp3",
            "--key",
            "00000000000000000000000000000000",
            "55000e070140313eeac4a2dfeaf20e010203040001ffffffff4000d4",
        ])
        .output()
        .unwrap();
    assert_eq!(wrong_key.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong_key.stderr).contains("MAC_VALIDATION_ERROR"));

    let list = std::process::Command::new(bin)
        .args(["decode", "esp3", "--list-eeps"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.lines().count() >= 60, "{text}");
    assert!(text.lines().any(|l| l.starts_with("d2-14-41\t")), "{text}");
}
