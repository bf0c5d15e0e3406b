//! The JSON document every text sink writes (JSON lines now; MQTT and Kafka later).
//!
//! A record is serialized once, straight from its fields and body, without building an intermediate
//! `serde_json::Value`:
//!
//! ```json
//! {"source":"efento","kind":"measurements","device":"282C024156AF","received_at":"2023-09-06T10:00:00.123Z", ...body fields}
//! ```
//!
//! The envelope fields come first: `source`, `kind`, `device` (only when the record has one) and
//! `received_at` (RFC 3339, milliseconds, UTC). Then every body field, in the body's order.
//!
//! **Name collisions: the body wins.** An envelope field is left out when the body already has a field of
//! that name, so every name appears exactly once and no decoded data is ever hidden. Dead-letter bodies
//! carry their own `source`, `device` and `received_at` (the same values), which are then written once,
//! in the body's position.

use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::record::{READINGS_FIELD, Record, rfc3339, shows_readings};

/// A record seen as its JSON document (see the module docs for the shape and the collision rule).
pub struct Document<'a>(pub &'a Record);

impl Serialize for Document<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let record = self.0;
        let body = &record.body;
        let write_source = !body.contains_key("source");
        let write_kind = !body.contains_key("kind");
        let write_device = record.device.is_some() && !body.contains_key("device");
        let write_received_at = !body.contains_key("received_at");
        let write_readings = shows_readings(record.kind, body, &record.readings);
        let envelope_len = [
            write_source,
            write_kind,
            write_device,
            write_received_at,
            write_readings,
        ]
        .into_iter()
        .filter(|&w| w)
        .count();

        let mut map = serializer.serialize_map(Some(envelope_len + body.len()))?;
        if write_source {
            map.serialize_entry("source", &*record.source)?;
        }
        if write_kind {
            map.serialize_entry("kind", record.kind.as_str())?;
        }
        if write_device && let Some(device) = &record.device {
            map.serialize_entry("device", device)?;
        }
        if write_received_at {
            map.serialize_entry("received_at", &rfc3339(record.received_at))?;
        }
        for (name, value) in body {
            map.serialize_entry(name, value)?;
        }
        if write_readings {
            map.serialize_entry(READINGS_FIELD, &record.readings)?;
        }
        map.end()
    }
}

/// Appends the record's document and a `'\n'` to `out`.
pub fn to_json_line(record: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    if let Err(error) = serde_json::to_writer(&mut *out, &Document(record)) {
        // Unreachable with serde_json's own `Value` (writing to a Vec cannot fail and every Value
        // serializes), but a half-written line must never reach a file: replace it with a short
        // document that says what happened instead of panicking.
        out.truncate(start);
        let fallback = serde_json::json!({
            "source": &*record.source,
            "kind": record.kind.as_str(),
            "received_at": rfc3339(record.received_at),
            "error": format!("document could not be serialized: {error}"),
        });
        out.extend_from_slice(fallback.to_string().as_bytes());
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use bytes::Bytes;
    use serde_json::{Value, json};

    use super::*;
    use crate::record::{Delivery, Kind, Origin};

    fn record_at(secs: u64) -> Record {
        let mut record = Record::new(
            "efento".into(),
            Origin::default(),
            Bytes::from_static(b"\x0a\x01"),
            Delivery::detached(),
        );
        record.received_at = SystemTime::UNIX_EPOCH + Duration::from_millis(secs * 1000 + 123);
        record
    }

    fn line_of(record: &Record) -> (String, Value) {
        let mut out = Vec::new();
        to_json_line(record, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with('\n'));
        assert_eq!(text.matches('\n').count(), 1, "one line: {text}");
        let value = serde_json::from_str(text.trim_end()).unwrap();
        (text, value)
    }

    #[test]
    fn typed_readings_are_written_as_measurements_in_the_vector_shape() {
        use crate::record::{Reading, ReadingValue};
        use std::borrow::Cow;
        let mut record = record_at(1_694_006_240);
        record.kind = Kind::Measurements;
        record.body.insert("serial".into(), json!("282C024156AF"));
        let reading = |value, raw, error_code| Reading {
            channel: Some(1),
            key: Cow::Borrowed("temperature"),
            ts: 1_606_391_700,
            value,
            unit: Some(Cow::Borrowed("degC")),
            raw,
            meta: None,
            error_code,
            type_code: None,
        };
        record.readings = vec![
            reading(ReadingValue::Float(11.5), Some(115), None),
            reading(ReadingValue::Null, None, Some(8_388_557)),
        ];
        let mut line = Vec::new();
        to_json_line(&record, &mut line);
        let doc: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            doc["measurements"],
            json!([
                {"channel": 1, "type": "temperature", "ts": 1_606_391_700, "value": 11.5, "unit": "degC", "raw": 115},
                {"channel": 1, "type": "temperature", "ts": 1_606_391_700, "value": null, "unit": "degC", "error_code": 8_388_557}
            ])
        );
        assert_eq!(doc["serial"], "282C024156AF");

        record.readings.clear();
        let mut line = Vec::new();
        to_json_line(&record, &mut line);
        let doc: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            doc["measurements"],
            json!([]),
            "a measurements record always shows its rows"
        );
    }

    #[test]
    fn document_has_envelope_first_then_body() {
        let mut record = record_at(1_693_994_400);
        record.device = Some("282C024156AF".into());
        record.kind = Kind::Measurements;
        record.body.insert("battery_ok".into(), json!(true));
        record
            .body
            .insert("measurements".into(), json!([{"type": "temperature"}]));
        let (text, value) = line_of(&record);
        assert!(
            text.starts_with(
                r#"{"source":"efento","kind":"measurements","device":"282C024156AF","received_at":"2023-09-06T10:00:00.123Z","#
            ),
            "{text}"
        );
        assert_eq!(value["battery_ok"], true);
        assert_eq!(value["measurements"][0]["type"], "temperature");
    }

    #[test]
    fn document_without_device_has_no_device_field() {
        let record = record_at(0);
        let (_, value) = line_of(&record);
        assert!(value.get("device").is_none());
        assert_eq!(value["received_at"], "1970-01-01T00:00:00.123Z");
    }

    #[test]
    fn dead_letter_document_keeps_raw_hex_and_writes_each_name_once() {
        let mut record = record_at(1_693_994_400);
        record.device = Some("282C024156AF".into());
        let record = record.into_dead_letter("efento", "decode", "bad frame");
        let (text, value) = line_of(&record);
        assert_eq!(value["kind"], "dead_letter");
        assert_eq!(value["raw_hex"], "0a01");
        assert_eq!(value["raw_len"], 2);
        assert_eq!(value["error"], "bad frame");
        for name in ["source", "device", "received_at", "kind"] {
            assert_eq!(
                text.matches(&format!("\"{name}\":")).count(),
                1,
                "{name} once in {text}"
            );
        }
        assert_eq!(value["received_at"], "2023-09-06T10:00:00.123Z");
    }

    #[test]
    fn body_field_wins_over_colliding_envelope_field() {
        let mut record = record_at(5);
        record.kind = Kind::Telemetry;
        record.device = Some("envelope-device".into());
        record.body.insert("kind".into(), json!("payload-kind"));
        record.body.insert("source".into(), json!({"nested": 1}));
        record.body.insert("device".into(), json!("body-device"));
        record.body.insert("received_at".into(), json!(42));
        let (text, value) = line_of(&record);
        assert_eq!(value["kind"], "payload-kind");
        assert_eq!(value["source"]["nested"], 1);
        assert_eq!(value["device"], "body-device");
        assert_eq!(value["received_at"], 42);
        assert_eq!(value.as_object().unwrap().len(), 4);
        for name in ["source", "device", "received_at", "kind"] {
            assert_eq!(text.matches(&format!("\"{name}\":")).count(), 1, "{text}");
        }
    }

    #[test]
    fn json_line_appends_to_existing_buffer() {
        let record = record_at(0);
        let mut out = b"previous\n".to_vec();
        to_json_line(&record, &mut out);
        to_json_line(&record, &mut out);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], "previous");
        assert_eq!(lines[1], lines[2]);
    }
}
