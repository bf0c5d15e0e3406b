//! Vendor codec for flespi device messages (the JSON flespi publishes on
//! `flespi/message/gw/devices/{id}` and returns from `gw/devices/{id}/messages`; seed 004): flat
//! objects with dotted keys such as `battery.level`, `position.latitude`, `ident`, `timestamp`.
//!
//! A payload is one message, an array of messages or a REST answer `{"result": [...]}`. Each
//! message becomes one document for the device named by `ident` (or `device.id`):
//! `{"timestamp": <unix s>, "telemetry": {"data": [{"key", "value", "unit"?}]}, "meta": {...}}`.
//! Telemetry keys are the dotted names in lowerCamelCase (`battery.level` -> `batteryLevel`), in
//! the message's key order sorted by name; flespi's own bookkeeping (`channel.id`, `peer`,
//! `protocol.id`, ...) goes to `meta` under its original name.

#![no_std]
extern crate alloc;

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use sensorgate_plugin_sdk::*;
use serde_json::{Map, Value, json};

struct Flespi;

/// Keys that describe the message or the channel, not the device's state.
const META_KEYS: &[&str] = &[
    "channel.id",
    "device.id",
    "device.name",
    "device.type.id",
    "ident",
    "message.type",
    "peer",
    "protocol.id",
    "server.timestamp",
    "vendor.code",
];

/// Units of flespi's standard parameter names (flespi's parameter dictionary).
fn unit(key: &str) -> Option<&'static str> {
    Some(match key {
        "battery.level" | "gsm.signal.level" => "%",
        "battery.voltage" | "external.powersource.voltage" => "V",
        "position.latitude" | "position.longitude" | "position.direction" => "°",
        "position.altitude" => "m",
        "position.speed" => "km/h",
        _ => return None,
    })
}

/// `battery.charging.status` -> `batteryChargingStatus`.
fn camel(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        if c == '.' || c == '_' || c == '-' {
            upper = !out.is_empty();
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn document(message: &Map<String, Value>) -> Result<Document, DecodeError> {
    let device = match (message.get("ident"), message.get("device.id")) {
        (Some(Value::String(ident)), _) if !ident.is_empty() => ident.clone(),
        (_, Some(Value::Number(id))) => id.to_string(),
        _ => {
            return Err(DecodeError::Malformed(
                "flespi message without `ident` or `device.id`: cannot tell the device".to_string(),
            ));
        }
    };
    let mut data = Vec::new();
    let mut meta = Map::new();
    for (key, value) in message {
        if key == "timestamp" {
            continue;
        }
        if META_KEYS.contains(&key.as_str()) {
            meta.insert(key.clone(), value.clone());
            continue;
        }
        let mut entry = Map::new();
        entry.insert("key".to_string(), Value::String(camel(key)));
        entry.insert("value".to_string(), value.clone());
        if let Some(unit) = unit(key) {
            entry.insert("unit".to_string(), Value::String(unit.to_string()));
        }
        data.push(Value::Object(entry));
    }
    let timestamp = message.get("timestamp").cloned().unwrap_or(Value::Null);
    let body = json!({
        "timestamp": timestamp,
        "vendor": "flespi",
        "telemetry": { "data": data },
        "meta": meta,
    });
    Ok(Document {
        device,
        json: body.to_string(),
    })
}

impl Guest for Flespi {
    fn metadata() -> Metadata {
        metadata("flespi", "0.1.0", &["vendor:flespi"])
    }

    fn decode(frame: Frame) -> Result<Output, DecodeError> {
        let parsed: Value = serde_json::from_slice(&frame.payload)
            .map_err(|e| DecodeError::Malformed(alloc::format!("not JSON: {e}")))?;
        let messages = match parsed {
            Value::Object(mut map) => match map.remove("result") {
                Some(Value::Array(list)) => list,
                Some(other) => {
                    map.insert("result".to_string(), other);
                    alloc::vec![Value::Object(map)]
                }
                None => alloc::vec![Value::Object(map)],
            },
            Value::Array(list) => list,
            other => {
                return Err(DecodeError::Malformed(alloc::format!(
                    "a flespi message is a JSON object, got {}",
                    kind(&other)
                )));
            }
        };
        let mut documents = Vec::with_capacity(messages.len());
        for message in &messages {
            match message {
                Value::Object(map) => documents.push(document(map)?),
                other => {
                    return Err(DecodeError::Malformed(alloc::format!(
                        "a flespi message is a JSON object, got {}",
                        kind(other)
                    )));
                }
            }
        }
        Ok(Output::Documents(documents))
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

export!(Flespi);
