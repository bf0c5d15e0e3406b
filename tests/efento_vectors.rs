//! Every Efento test vector (`shared/vectors/efento`, copied to `tests/fixtures/efento`) checked against the
//! codec: `/m` documents key by key and row by row, `/i`, `/c` and `/resp` as whole JSON documents, `/t-resp`
//! as the 4-byte time answer.

use std::path::{Path, PathBuf};

use sensorgate::codecs::efento::{self, Message};
use serde_json::{Map, Value};

const FLOAT_TOLERANCE: f64 = 1e-9;

/// The shared vector folder when the checkout sits next to it, else the copy in `tests/fixtures`.
fn vector_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = root.join("../shared/vectors/efento");
    if shared.is_dir() {
        shared
    } else {
        root.join("tests/fixtures/efento")
    }
}

fn vector_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// JSON equality with numbers compared as f64 within [`FLOAT_TOLERANCE`] and objects compared key set and all.
fn same(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Number(e), Value::Number(a)) => match (e.as_f64(), a.as_f64()) {
            (Some(e), Some(a)) => (e - a).abs() <= FLOAT_TOLERANCE,
            _ => false,
        },
        (Value::Array(e), Value::Array(a)) => {
            e.len() == a.len() && e.iter().zip(a).all(|(e, a)| same(e, a))
        }
        (Value::Object(e), Value::Object(a)) => {
            e.len() == a.len()
                && e.iter()
                    .all(|(k, ev)| a.get(k).is_some_and(|av| same(ev, av)))
        }
        _ => expected == actual,
    }
}

fn check(ok: bool, what: &str, expected: &Value, actual: Option<&Value>) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what}: expected {expected}, got {}",
            actual.unwrap_or(&Value::Null)
        ))
    }
}

fn check_measurements(
    expected: &Map<String, Value>,
    actual: &Map<String, Value>,
) -> Result<(), String> {
    for (key, exp) in expected {
        let act = actual.get(key);
        match key.as_str() {
            "measurements" => {
                let exp_rows = exp
                    .as_array()
                    .ok_or("expected measurements is not an array")?;
                let act_rows = act
                    .and_then(Value::as_array)
                    .ok_or("decoded document has no measurements array")?;
                if exp_rows.len() != act_rows.len() {
                    return Err(format!(
                        "measurements: expected {} rows, got {}",
                        exp_rows.len(),
                        act_rows.len()
                    ));
                }
                for (i, (e, a)) in exp_rows.iter().zip(act_rows).enumerate() {
                    let (e, a) = (
                        e.as_object().unwrap(),
                        a.as_object().ok_or("row is not an object")?,
                    );
                    let mut ek: Vec<&String> = e.keys().collect();
                    let mut ak: Vec<&String> = a.keys().collect();
                    ek.sort();
                    ak.sort();
                    if ek != ak {
                        return Err(format!("measurements[{i}]: keys {ek:?} != {ak:?}"));
                    }
                    for (k, ev) in e {
                        check(
                            same(ev, &a[k]),
                            &format!("measurements[{i}].{k}"),
                            ev,
                            a.get(k),
                        )?;
                    }
                }
            }
            "extra" => {
                let e = exp.as_object().ok_or("expected extra is not an object")?;
                let a = act
                    .and_then(Value::as_object)
                    .ok_or("decoded document has no extra object")?;
                let mut ek: Vec<&String> = e.keys().collect();
                let mut ak: Vec<&String> = a.keys().collect();
                ek.sort();
                ak.sort();
                if ek != ak {
                    return Err(format!("extra: keys {ek:?} != {ak:?}"));
                }
                for (k, ev) in e {
                    check(same(ev, &a[k]), &format!("extra.{k}"), ev, a.get(k))?;
                }
            }
            _ => check(act.is_some_and(|a| same(exp, a)), key, exp, act)?,
        }
    }
    Ok(())
}

/// Checks one vector file; `Err` says what differs.
fn check_vector(vector: &Value) -> Result<(), String> {
    let endpoint = vector["endpoint"].as_str().ok_or("no endpoint")?;
    let hex = vector["hex"].as_str().ok_or("no hex")?;
    let expected = &vector["expected"];
    let payload = hex::decode(hex).map_err(|e| format!("bad hex in vector: {e}"))?;
    match endpoint {
        "/m" => {
            let decoded =
                efento::decode(Message::Measurements, &payload).map_err(|e| e.to_string())?;
            let exp = expected.as_object().ok_or("expected is not an object")?;
            if decoded.kind != sensorgate::record::Kind::Measurements {
                return Err(format!("kind {:?}", decoded.kind));
            }
            check(
                exp["serial"].as_str() == Some(decoded.serial.as_str()),
                "Decoded.serial",
                &exp["serial"],
                Some(&Value::String(decoded.serial.clone())),
            )?;
            check_measurements(exp, &decoded.document())?;
            // The CLI path gives the same document.
            let via_hex = efento::decode_hex("m", hex).map_err(|e| e.to_string())?;
            check(
                via_hex == Value::Object(decoded.document()),
                "decode_hex",
                &Value::Null,
                None,
            )
        }
        "/i" | "/c" => {
            let message = if endpoint == "/i" {
                Message::DeviceInfo
            } else {
                Message::Configuration
            };
            let decoded = efento::decode(message, &payload).map_err(|e| e.to_string())?;
            let actual = Value::Object(decoded.document());
            check(same(expected, &actual), "document", expected, Some(&actual))?;
            let serial = expected["serial_number"]
                .as_str()
                .ok_or("no serial_number")?;
            check(
                decoded.serial == serial,
                "Decoded.serial",
                &expected["serial_number"],
                None,
            )
        }
        "/resp" => {
            let actual = efento::response_to_json(&payload).map_err(|e| e.to_string())?;
            check(same(expected, &actual), "document", expected, Some(&actual))
        }
        "/t-resp" => {
            let t = expected["unix_time"].as_u64().ok_or("no unix_time")?;
            let t = u32::try_from(t).map_err(|e| e.to_string())?;
            check(
                efento::time_payload(t)[..] == payload[..],
                "time payload",
                &Value::String(hex.to_owned()),
                Some(&Value::String(hex::encode(efento::time_payload(t)))),
            )
        }
        other => Err(format!("endpoint {other:?} is not covered by this test")),
    }
}

#[test]
fn every_efento_vector_decodes_to_its_expected_document() {
    let dir = vector_dir();
    let mut seen = 0;
    let mut failures = Vec::new();
    for path in vector_files(&dir) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let outcome = serde_json::from_str::<Value>(&text)
            .map_err(|e| format!("not JSON: {e}"))
            .and_then(|v| check_vector(&v));
        if let Err(why) = outcome {
            failures.push(format!("{name}: {why}"));
        }
        seen += 1;
    }
    assert!(
        failures.is_empty(),
        "{} vector(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(seen >= 11, "only {seen} vectors in {}", dir.display());
}

#[test]
fn ack_with_device_info_request_reproduces_vector_r01() {
    let pending = efento::proto::ProtoConfig {
        device_info_request: true,
        ..Default::default()
    };
    assert_eq!(
        hex::encode(efento::encode_ack(1_736_935_260, Some(&pending))),
        "300140dc8e9ebc06"
    );
}

#[test]
fn fixture_copies_match_the_shared_vectors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = root.join("../shared/vectors/efento");
    if !shared.is_dir() {
        return; // clean checkout: the fixtures are the only copy
    }
    let fixtures = root.join("tests/fixtures/efento");
    for path in vector_files(&shared) {
        let copy = fixtures.join(path.file_name().unwrap());
        let original = std::fs::read(&path).unwrap();
        let copied = std::fs::read(&copy).unwrap_or_default();
        assert!(
            original == copied,
            "{} differs from {}",
            copy.display(),
            path.display()
        );
    }
}
