//! The `json` codec: JSON payloads from brokers and platforms (flespi messages, IoTConnect D2C
//! arrays, an AWS-IoT style event envelope) mapped to sensorgate's readings by configuration
//! instead of code.
//!
//! A payload holds one item or an array of items (or, with `items`, an array or object found by a
//! JSON pointer). Each item becomes one document of kind `measurements`: its device from the
//! `device` pointer, its time from the `time` pointer (RFC 3339 text or Unix seconds, with a
//! fraction or not), and one reading per field of the `readings` object. Nested objects are
//! flattened with dots (`{"gyroscope": {"x": -1.2}}` gives `gyroscope.x`), as flespi names its
//! parameters already (`battery.level`); array elements get their index (`cells.0`).
//!
//! ```toml
//! { type = "decode", codec = "json", json = { preset = "flespi" } }
//! { type = "decode", codec = "json", json = { device = "/uniqueId", time = "/time", readings = "/data" } }
//! ```
//!
//! Numbers stay numbers (integers as integers), text stays text, `true`/`false` become the text
//! `"true"`/`"false"` (a state, like an Efento binary channel) and `null` a null value.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::record::{Kind, Reading, ReadingValue, rfc3339};

/// Field mappings that users already know, by platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// flespi messages (`flespi/message/gw/devices/+`): flat objects with dotted keys, the device's
    /// `ident`, Unix `timestamp`; flespi's own bookkeeping fields are kept aside, not readings.
    Flespi,
    /// IoTConnect D2C: `[{uniqueId, time, data}]`; with several items the first is the gateway and
    /// the others its children (each document names the gateway).
    Iotconnect,
    /// An AWS IoT style event envelope: `{deviceId, timestamp, event: {...}}`.
    AwsEvent,
}

/// `json = { ... }` of a decode stage with `codec = "json"`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JsonMapping {
    /// Starts from a platform's mapping; the fields below override it.
    #[serde(default)]
    pub preset: Option<Preset>,
    /// JSON pointer to the items: an array (one document per element) or an object (one). Empty:
    /// the payload itself, where an array is a list of items.
    #[serde(default)]
    pub items: Option<String>,
    /// JSON pointer, within an item, to the device id (text or number).
    #[serde(default)]
    pub device: Option<String>,
    /// JSON pointer to the item's time: RFC 3339 text or Unix seconds. Without it, or when an item
    /// has none, the time the frame was received.
    #[serde(default)]
    pub time: Option<String>,
    /// JSON pointer to the object whose fields are the readings; empty: the item itself.
    #[serde(default)]
    pub readings: Option<String>,
    /// Field names (flattened) that are not readings. The device and time fields never are.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Item fields copied into the document under `fields` as they are: name = JSON pointer.
    #[serde(default)]
    pub keep: BTreeMap<String, String>,
    /// Units of readings, by name (`temperature = "degC"`).
    #[serde(default)]
    pub units: BTreeMap<String, String>,
    /// With several items, the first is the gateway of the others (IoTConnect): every document
    /// gets `gateway`, and the first one is the gateway's own.
    #[serde(default)]
    pub first_is_gateway: Option<bool>,
}

/// A mapping with its preset applied: what the codec runs with.
#[derive(Debug, Clone)]
pub struct Mapping {
    items: Pointer,
    device: Pointer,
    time: Option<Pointer>,
    readings: Pointer,
    exclude: Vec<String>,
    /// `exclude` plus the device and time fields, for when the item is the readings object.
    item_exclude: Vec<String>,
    keep: Vec<(String, Pointer)>,
    units: BTreeMap<String, String>,
    first_is_gateway: bool,
}

/// A JSON pointer split into its unescaped tokens once, when the mapping is resolved, so that a
/// lookup per payload allocates nothing (`Value::pointer` unescapes each token on every call).
/// Displays as written.
#[derive(Debug, Clone)]
struct Pointer {
    text: String,
    tokens: Vec<String>,
}

impl Pointer {
    /// `text` is "" (the whole value) or starts with '/' (checked by [`JsonMapping::resolve`]).
    fn new(text: String) -> Pointer {
        let tokens = text
            .split('/')
            .skip(1)
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect();
        Pointer { text, tokens }
    }

    /// What `value.pointer(text)` finds (the same rules for array indexes: no sign, no leading zero).
    fn get<'a>(&self, value: &'a Value) -> Option<&'a Value> {
        self.tokens.iter().try_fold(value, |at, token| match at {
            Value::Object(map) => map.get(token),
            Value::Array(list) => {
                if token.starts_with('+') || (token.starts_with('0') && token.len() > 1) {
                    return None;
                }
                token.parse::<usize>().ok().and_then(|i| list.get(i))
            }
            _ => None,
        })
    }

    fn is_empty(&self) -> bool {
        self.text.is_empty()
    }
}

impl std::fmt::Display for Pointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// flespi's fields about the message rather than the device's telemetry.
const FLESPI_ASIDE: &[&str] = &[
    "channel.id",
    "device.id",
    "device.name",
    "device.type.id",
    "peer",
    "protocol.id",
    "server.timestamp",
];

/// What a preset sets.
struct PresetFields {
    device: &'static str,
    time: Option<&'static str>,
    readings: &'static str,
    exclude: &'static [&'static str],
    keep: &'static [(&'static str, &'static str)],
    first_is_gateway: bool,
}

impl PresetFields {
    const NONE: PresetFields = PresetFields {
        device: "",
        time: None,
        readings: "",
        exclude: &[],
        keep: &[],
        first_is_gateway: false,
    };
}

impl JsonMapping {
    /// The mapping with its preset applied, or what is missing.
    pub fn resolve(&self) -> Result<Mapping, String> {
        let preset = match self.preset {
            Some(Preset::Flespi) => PresetFields {
                device: "/ident",
                time: Some("/timestamp"),
                readings: "",
                exclude: FLESPI_ASIDE,
                keep: &[
                    ("device_id", "/device.id"),
                    ("device_name", "/device.name"),
                    ("channel_id", "/channel.id"),
                    ("protocol_id", "/protocol.id"),
                ],
                first_is_gateway: false,
            },
            Some(Preset::Iotconnect) => PresetFields {
                device: "/uniqueId",
                time: Some("/time"),
                readings: "/data",
                first_is_gateway: true,
                ..PresetFields::NONE
            },
            Some(Preset::AwsEvent) => PresetFields {
                device: "/deviceId",
                time: Some("/timestamp"),
                readings: "/event",
                ..PresetFields::NONE
            },
            None => PresetFields::NONE,
        };
        let PresetFields {
            device,
            time,
            readings,
            exclude,
            keep,
            first_is_gateway: gateway,
        } = preset;
        let device = self.device.clone().unwrap_or_else(|| device.to_string());
        if device.is_empty() {
            return Err(
                "no device: give device = \"/pointer/to/the/id\" or a preset (flespi, iotconnect, aws_event)"
                    .into(),
            );
        }
        let pointers = [
            Some(&device),
            self.time.as_ref(),
            self.readings.as_ref(),
            self.items.as_ref(),
        ];
        for p in pointers.into_iter().flatten().chain(self.keep.values()) {
            if !p.is_empty() && !p.starts_with('/') {
                return Err(format!(
                    "`{p}` is not a JSON pointer: write \"/{p}\" (pointers start with /, and \"\" is the whole item)"
                ));
            }
        }
        let mut exclude: Vec<String> = exclude.iter().map(|s| s.to_string()).collect();
        exclude.extend(self.exclude.iter().cloned());
        let mut keep: BTreeMap<String, String> = keep
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        keep.extend(self.keep.clone());
        let time = self.time.clone().or(time.map(str::to_string));
        let mut item_exclude = exclude.clone();
        item_exclude.push(field_name(&device));
        if let Some(t) = &time {
            item_exclude.push(field_name(t));
        }
        Ok(Mapping {
            items: Pointer::new(self.items.clone().unwrap_or_default()),
            device: Pointer::new(device),
            time: time.map(Pointer::new),
            readings: Pointer::new(
                self.readings
                    .clone()
                    .unwrap_or_else(|| readings.to_string()),
            ),
            exclude,
            item_exclude,
            keep: keep
                .into_iter()
                .map(|(name, p)| (name, Pointer::new(p)))
                .collect(),
            units: self.units.clone(),
            first_is_gateway: self.first_is_gateway.unwrap_or(gateway),
        })
    }
}

/// One item of a payload, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub device: String,
    pub kind: Kind,
    pub body: Map<String, Value>,
    pub readings: Vec<Reading>,
}

/// Everything that makes a payload unusable, as the dead letter says it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JsonError {
    #[error("payload is not JSON: {0}")]
    NotJson(String),
    #[error("no items at {0}")]
    NoItems(String),
    #[error("item {index}: {reason}")]
    Item { index: usize, reason: String },
}

/// The last part of a pointer, unescaped: the field's own name.
fn field_name(pointer: &str) -> String {
    pointer
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .replace("~1", "/")
        .replace("~0", "~")
}

fn time_of(value: &Value) -> Option<SystemTime> {
    match value {
        Value::String(text) => chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .and_then(|t| {
                let nanos = t.timestamp_nanos_opt()?;
                u64::try_from(nanos)
                    .ok()
                    .map(|n| UNIX_EPOCH + Duration::from_nanos(n))
            }),
        Value::Number(n) => n
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0 && *s < 253_402_300_800.0)
            .map(|s| UNIX_EPOCH + Duration::from_secs_f64(s)),
        _ => None,
    }
}

/// Which flattened names are not readings, and the units of those that are.
struct Names<'a> {
    exclude: &'a [String],
    units: &'a BTreeMap<String, String>,
}

/// Adds the readings of `value` under `name` (flattened) to `out`.
fn flatten(name: &mut String, value: &Value, ts: i64, mapping: &Names<'_>, out: &mut Vec<Reading>) {
    let len = name.len();
    let mut nested = |name: &mut String, key: &str, v: &Value| {
        if !name.is_empty() {
            name.push('.');
        }
        name.push_str(key);
        flatten(name, v, ts, mapping, out);
        name.truncate(len);
    };
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                nested(name, key, v);
            }
            return;
        }
        Value::Array(list) => {
            for (i, v) in list.iter().enumerate() {
                nested(name, &i.to_string(), v);
            }
            return;
        }
        _ => {}
    }
    if mapping.exclude.iter().any(|e| e == name) {
        return;
    }
    let value = match value {
        Value::Null => ReadingValue::Null,
        Value::Bool(b) => ReadingValue::Text(if *b { "true" } else { "false" }.into()),
        Value::Number(n) => match n.as_i64() {
            Some(i) => ReadingValue::Int(i),
            None => ReadingValue::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => ReadingValue::Text(s.clone().into()),
        Value::Object(_) | Value::Array(_) => unreachable!("flattened above"),
    };
    out.push(Reading {
        channel: None,
        key: name.clone().into(),
        ts,
        value,
        unit: mapping.units.get(name.as_str()).map(|u| u.clone().into()),
        raw: None,
        meta: None,
        error_code: None,
        type_code: None,
    });
}

/// Decodes a payload into its items. `received_at` stands in for an item without a time.
pub fn decode(
    mapping: &Mapping,
    payload: &[u8],
    received_at: SystemTime,
) -> Result<Vec<Item>, JsonError> {
    let root: Value =
        serde_json::from_slice(payload).map_err(|e| JsonError::NotJson(e.to_string()))?;
    let at = mapping
        .items
        .get(&root)
        .ok_or_else(|| JsonError::NoItems(mapping.items.to_string()))?;
    let items: Vec<&Value> = match at {
        Value::Array(list) => list.iter().collect(),
        other => vec![other],
    };
    if items.is_empty() {
        return Err(JsonError::NoItems(format!(
            "{} (an empty array)",
            if mapping.items.is_empty() {
                "the payload"
            } else {
                &mapping.items.text
            }
        )));
    }
    let mut out = Vec::with_capacity(items.len());
    let mut gateway: Option<String> = None;
    for (index, item) in items.into_iter().enumerate() {
        let fail = |reason: String| JsonError::Item { index, reason };
        if !item.is_object() {
            return Err(fail(format!("not an object but {}", type_name(item))));
        }
        let device = match mapping.device.get(item) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(other) => {
                return Err(fail(format!(
                    "the device id at {} is {}, not text or a number",
                    mapping.device,
                    type_name(other)
                )));
            }
            None => return Err(fail(format!("no device id at {}", mapping.device))),
        };
        let time = match mapping.time.as_ref().and_then(|p| p.get(item)) {
            Some(v) => time_of(v).ok_or_else(|| {
                fail(format!("the time {v} is neither RFC 3339 nor Unix seconds"))
            })?,
            None => received_at,
        };
        let ts = time
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let source = mapping
            .readings
            .get(item)
            .ok_or_else(|| fail(format!("no readings object at {}", mapping.readings)))?;
        if !source.is_object() {
            return Err(fail(format!(
                "the readings at {} are {}, not an object",
                mapping.readings,
                type_name(source)
            )));
        }
        let mut readings = Vec::new();
        // When the item is the readings object, its id and time fields are not readings.
        let exclude = if mapping.readings.is_empty() {
            &mapping.item_exclude
        } else {
            &mapping.exclude
        };
        let names = Names {
            exclude,
            units: &mapping.units,
        };
        flatten(&mut String::new(), source, ts, &names, &mut readings);
        let mut body = Map::new();
        body.insert("time".into(), Value::String(rfc3339(time)));
        if mapping.first_is_gateway {
            let gw = gateway.get_or_insert_with(|| device.clone());
            body.insert("gateway".into(), Value::String(gw.clone()));
        }
        let kept: Map<String, Value> = mapping
            .keep
            .iter()
            .filter_map(|(name, p)| p.get(item).map(|v| (name.clone(), v.clone())))
            .collect();
        if !kept.is_empty() {
            body.insert("fields".into(), Value::Object(kept));
        }
        out.push(Item {
            device,
            kind: Kind::Measurements,
            body,
            readings,
        });
    }
    Ok(out)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_split_pointer_finds_what_value_pointer_finds() {
        let doc = json!({
            "a": { "b/c": [10, { "d~e": "x" }], "": 5 },
            "list": [[1, 2], { "0": "zero" }],
            "dotted.key": true
        });
        for p in [
            "",
            "/a",
            "/a/b~1c",
            "/a/b~1c/0",
            "/a/b~1c/1/d~0e",
            "/a/",
            "/list/0/1",
            "/list/00",
            "/list/+1",
            "/list/1/0",
            "/list/2",
            "/dotted.key",
            "/missing",
            "/a/b~1c/x",
            "/list/-1",
        ] {
            assert_eq!(Pointer::new(p.to_string()).get(&doc), doc.pointer(p), "{p}");
        }
    }

    fn mapping(config: Value) -> Mapping {
        serde_json::from_value::<JsonMapping>(config)
            .unwrap()
            .resolve()
            .unwrap()
    }

    fn values(item: &Item) -> BTreeMap<String, ReadingValue> {
        item.readings
            .iter()
            .map(|r| (r.key.to_string(), r.value.clone()))
            .collect()
    }

    /// The message of seed 004 (flespi_mqtt_api_usecase_00), with a made-up peer.
    const FLESPI: &str = r#"{
      "battery.charging.status": false, "battery.level": 70, "battery.voltage": 4.09,
      "channel.id": 1190401, "device.id": 5539228, "device.name": "scooterMobi010",
      "device.type.id": 1272, "gsm.signal.level": 90, "ident": "015136001986400",
      "lock.status": true, "message.type": "H0", "peer": "192.0.2.7:40110", "protocol.id": 200,
      "server.timestamp": 1706905170.17258, "timestamp": 1706905170.17258, "vendor.code": "OM"
    }"#;

    #[test]
    fn a_flespi_message_becomes_readings_of_its_ident() {
        let m = mapping(json!({"preset": "flespi", "units": {"battery.voltage": "V"}}));
        let items = decode(&m, FLESPI.as_bytes(), UNIX_EPOCH).unwrap();
        assert_eq!(items.len(), 1);
        let item = &items[0];
        assert_eq!(item.device, "015136001986400");
        assert_eq!(item.body["time"], "2024-02-02T20:19:30.172Z");
        assert_eq!(item.body["fields"]["device_id"], 5539228);
        assert_eq!(item.body["fields"]["device_name"], "scooterMobi010");
        let v = values(item);
        assert_eq!(
            v.keys().collect::<Vec<_>>(),
            [
                "battery.charging.status",
                "battery.level",
                "battery.voltage",
                "gsm.signal.level",
                "lock.status",
                "message.type",
                "vendor.code"
            ],
            "ident, timestamp and flespi's own fields are not readings"
        );
        assert_eq!(v["battery.level"], ReadingValue::Int(70));
        assert_eq!(v["battery.voltage"], ReadingValue::Float(4.09));
        assert_eq!(v["lock.status"], ReadingValue::Text("true".into()));
        let volts = item
            .readings
            .iter()
            .find(|r| r.key == "battery.voltage")
            .unwrap();
        assert_eq!(volts.unit.as_deref(), Some("V"));
        assert!(item.readings.iter().all(|r| r.ts == 1_706_905_170));
    }

    #[test]
    fn an_iotconnect_gateway_array_gives_one_document_per_device_naming_the_gateway() {
        let m = mapping(json!({"preset": "iotconnect"}));
        let payload = json!([
            {"uniqueId": "gw01", "time": "2021-01-24T10:06:17.857Z", "data": {"uptime": 12}},
            {"uniqueId": "child7", "time": "2021-01-24T10:06:18.000Z",
             "data": {"temperature": 15.55, "gyroscope": {"x": -1.2, "y": 0}, "cells": [3, 4]}}
        ]);
        let items = decode(&m, payload.to_string().as_bytes(), UNIX_EPOCH).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].device, "gw01");
        assert_eq!(items[0].body["gateway"], "gw01");
        assert_eq!(items[1].device, "child7");
        assert_eq!(items[1].body["gateway"], "gw01");
        assert_eq!(items[1].body["time"], "2021-01-24T10:06:18.000Z");
        let v = values(&items[1]);
        assert_eq!(v["temperature"], ReadingValue::Float(15.55));
        assert_eq!(v["gyroscope.x"], ReadingValue::Float(-1.2));
        assert_eq!(v["gyroscope.y"], ReadingValue::Int(0));
        assert_eq!(v["cells.1"], ReadingValue::Int(4));
        assert_eq!(v.len(), 5);
    }

    #[test]
    fn an_item_without_a_time_takes_the_reception_time() {
        let m = mapping(json!({"device": "/id"}));
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_250);
        let items = decode(&m, br#"{"id": 42, "t": 1}"#, at).unwrap();
        assert_eq!(items[0].device, "42");
        assert_eq!(items[0].body["time"], "2023-11-14T22:13:20.250Z");
        assert_eq!(values(&items[0]).keys().collect::<Vec<_>>(), ["t"]);
    }

    #[test]
    fn bad_payloads_say_what_is_wrong_and_where() {
        let m = mapping(json!({"preset": "iotconnect"}));
        let cases: &[(&[u8], &str)] = &[
            (b"{\"uniqueId\": ", "payload is not JSON"),
            (b"[]", "no items at the payload (an empty array)"),
            (b"[7]", "item 0: not an object but a number"),
            (
                br#"[{"time": "2021-01-24T10:06:17Z", "data": {}}]"#,
                "item 0: no device id at /uniqueId",
            ),
            (
                br#"[{"uniqueId": ["a"], "data": {}}]"#,
                "item 0: the device id at /uniqueId is an array",
            ),
            (
                br#"[{"uniqueId": "a", "time": "yesterday", "data": {}}]"#,
                "item 0: the time \"yesterday\" is neither",
            ),
            (
                br#"[{"uniqueId": "a", "data": 5}]"#,
                "item 0: the readings at /data are a number",
            ),
            (
                br#"[{"uniqueId": "a", "data": {}}, {"uniqueId": "b"}]"#,
                "item 1: no readings object at /data",
            ),
        ];
        for (payload, expected) in cases {
            let err = decode(&m, payload, UNIX_EPOCH).unwrap_err().to_string();
            assert!(
                err.starts_with(expected),
                "{err:?} for {:?}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    #[test]
    fn mappings_without_a_device_or_with_a_bad_pointer_are_refused() {
        let err = serde_json::from_value::<JsonMapping>(json!({"time": "/t"}))
            .unwrap()
            .resolve()
            .unwrap_err();
        assert!(err.contains("no device"), "{err}");
        let err = serde_json::from_value::<JsonMapping>(json!({"device": "ident"}))
            .unwrap()
            .resolve()
            .unwrap_err();
        assert!(err.contains("write \"/ident\""), "{err}");
    }
}
