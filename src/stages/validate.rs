//! The validate stage: checks each record's document (exactly what the sinks write: envelope, body
//! and measurements, see [`crate::document`]) against a JSON Schema (2020-12 unless the schema says
//! otherwise), compiled once when the flow starts. A record that fails goes to the dead-letter sink
//! with every error's instance path and message, and the document that failed.
//!
//! ```toml
//! { type = "validate", schema = "schemas/efento-measurements.schema.json" }
//! { type = "validate", schemas = { measurements = "schemas/efento-measurements.schema.json", device_info = "schemas/efento-device-info.schema.json" } }
//! ```
//!
//! With `schemas`, a record is checked against the schema of its kind; kinds not listed pass
//! (`unmatched = "pass"`, the default) or are rejected (`unmatched = "dead_letter"`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Stage;
use crate::metrics::{self, Counter};
use crate::record::{Kind, READINGS_FIELD, Record, rfc3339, shows_readings};

/// The most errors a dead letter lists (a document can break a schema in thousands of places).
pub const MAX_ERRORS: usize = 20;

/// `{ type = "validate", schema = "..." }` or `{ type = "validate", schemas = { kind = "..." } }`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateConfig {
    /// One schema for every record.
    #[serde(default)]
    pub schema: Option<PathBuf>,
    /// A schema per record kind (`measurements`, `device_info`, `config`, `telemetry`, `event`,
    /// `stats`, ...).
    #[serde(default)]
    pub schemas: BTreeMap<Kind, PathBuf>,
    /// With `schemas`: what happens to a record whose kind has no schema.
    #[serde(default)]
    pub unmatched: Unmatched,
}

/// `unmatched = "pass"` or `"dead_letter"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unmatched {
    #[default]
    Pass,
    DeadLetter,
}

impl ValidateConfig {
    /// Semantic problems, for `sensorgate validate`: every schema file must exist and compile.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        match (&self.schema, self.schemas.is_empty()) {
            (None, true) => out.push(
                "no schema: give schema = \"schemas/....schema.json\" or schemas = { measurements = \"...\" }".into(),
            ),
            (Some(_), false) => out.push(
                "give either schema (one for every record) or schemas (one per kind), not both".into(),
            ),
            _ => {}
        }
        for path in self.schema.iter().chain(self.schemas.values()) {
            if let Err(e) = compile(path) {
                out.push(e);
            }
        }
        out
    }
}

/// A compiled schema and where it came from.
pub struct Schema {
    path: Arc<str>,
    validator: jsonschema::Validator,
}

/// Reads and compiles a schema file; the error names the file and what is wrong with it.
pub fn compile(path: &Path) -> Result<Schema, String> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("schema {shown}: cannot read it: {e}"))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| {
        format!(
            "schema {shown}: not JSON: {e} (line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    let validator = jsonschema::validator_for(&value)
        .map_err(|e| format!("schema {shown}: does not compile: {e}"))?;
    Ok(Schema {
        path: shown.into(),
        validator,
    })
}

pub struct ValidateStage {
    flow: Arc<str>,
    /// One schema for all, or none when per kind.
    all: Option<Schema>,
    by_kind: Vec<(Kind, Schema)>,
    unmatched: Unmatched,
    passed: Counter,
    rejected: Counter,
}

impl ValidateStage {
    /// Compiles every schema; fails (naming the file) if one is missing or does not compile, so a flow
    /// never starts with a check it cannot make.
    pub fn new(flow: &str, config: &ValidateConfig) -> Result<Self, String> {
        let all = config.schema.as_deref().map(compile).transpose()?;
        let by_kind = config
            .schemas
            .iter()
            .map(|(kind, path)| compile(path).map(|s| (*kind, s)))
            .collect::<Result<_, _>>()?;
        let counter = |name: &str| metrics::counter(name, &[("flow", flow)]);
        Ok(ValidateStage {
            flow: flow.into(),
            all,
            by_kind,
            unmatched: config.unmatched,
            passed: counter("validate_passed_total"),
            rejected: counter("validate_rejected_total"),
        })
    }

    fn schema_for(&self, kind: Kind) -> Option<&Schema> {
        self.all.as_ref().or_else(|| {
            self.by_kind
                .iter()
                .find(|(k, _)| *k == kind)
                .map(|(_, s)| s)
        })
    }
}

/// The envelope fields [`crate::document::Document`] writes before the body, added to the body for
/// the time of a check (and taken out again): the body wins a name collision, as in the document.
fn add_envelope(record: &Record, body: &mut Map<String, Value>) -> Vec<&'static str> {
    let mut added = Vec::with_capacity(5);
    let mut add = |body: &mut Map<String, Value>, name: &'static str, value: Value| {
        if !body.contains_key(name) {
            body.insert(name.to_string(), value);
            added.push(name);
        }
    };
    add(body, "source", Value::String(record.source.to_string()));
    add(
        body,
        "kind",
        Value::String(record.kind.as_str().to_string()),
    );
    if let Some(device) = &record.device {
        add(body, "device", Value::String(device.clone()));
    }
    add(
        body,
        "received_at",
        Value::String(rfc3339(record.received_at)),
    );
    if shows_readings(record.kind, &record.body, &record.readings) {
        let rows = record
            .readings
            .iter()
            .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
            .collect();
        add(body, READINGS_FIELD, Value::Array(rows));
    }
    added
}

impl Stage for ValidateStage {
    fn name(&self) -> &'static str {
        "validate"
    }

    fn process(&mut self, mut record: Record, out: &mut Vec<Record>) {
        let Some(schema) = self.schema_for(record.kind) else {
            if self.unmatched == Unmatched::DeadLetter {
                self.rejected.inc();
                let reason = format!(
                    "no schema for records of kind {}; add one under schemas or set unmatched = \"pass\"",
                    record.kind
                );
                out.push(record.into_dead_letter(&self.flow, "validate", &reason));
            } else {
                out.push(record);
            }
            return;
        };
        // The document as one value without copying the body: moved in, checked, moved back.
        let mut body = std::mem::take(&mut record.body);
        let added = add_envelope(&record, &mut body);
        let document = Value::Object(body);
        if schema.validator.is_valid(&document) {
            let Value::Object(mut body) = document else {
                unreachable!("built as an object above")
            };
            for name in added.iter().rev() {
                body.shift_remove(*name);
            }
            record.body = body;
            self.passed.inc();
            out.push(record);
            return;
        }
        self.rejected.inc();
        let errors: Vec<Value> = schema
            .validator
            .iter_errors(&document)
            .take(MAX_ERRORS)
            .map(|e| {
                serde_json::json!({
                    "instance_path": e.instance_path().to_string(),
                    "schema_path": e.schema_path().to_string(),
                    "message": e.to_string(),
                })
            })
            .collect();
        let first = errors
            .first()
            .map(|e| {
                let at = e["instance_path"].as_str().unwrap_or_default();
                let message = e["message"].as_str().unwrap_or_default();
                format!("{} at {}", message, if at.is_empty() { "/" } else { at })
            })
            .unwrap_or_else(|| "invalid".into());
        let reason = format!(
            "document does not match schema {}: {first}{}",
            schema.path,
            if errors.len() > 1 {
                format!(" (and {} more)", errors.len() - 1)
            } else {
                String::new()
            }
        );
        let mut dead = record.into_dead_letter(&self.flow, "validate", &reason);
        dead.body.insert("errors".into(), Value::Array(errors));
        dead.body.insert("document".into(), document);
        out.push(dead);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Delivery, Origin, Outcome};
    use bytes::Bytes;

    const SCHEMA: &str = r#"{
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["kind", "source", "temperature"],
        "properties": {
            "kind": {"const": "telemetry"},
            "temperature": {"type": "number", "minimum": -40, "maximum": 85},
            "nested": {"type": "object", "properties": {"ok": {"type": "boolean"}}}
        }
    }"#;

    fn stage(dir: &Path, flow: &str) -> ValidateStage {
        let path = dir.join("t.schema.json");
        std::fs::write(&path, SCHEMA).unwrap();
        ValidateStage::new(
            flow,
            &ValidateConfig {
                schema: Some(path),
                schemas: BTreeMap::new(),
                unmatched: Unmatched::Pass,
            },
        )
        .unwrap()
    }

    fn record(body: Value) -> (Record, crate::record::DeliveryWatch) {
        let (delivery, watch) = Delivery::new();
        let mut r = Record::new(
            "src".into(),
            Origin::default(),
            Bytes::from_static(b"\xab"),
            delivery,
        );
        r.kind = Kind::Telemetry;
        r.body = body.as_object().unwrap().clone();
        (r, watch)
    }

    #[test]
    fn a_valid_record_passes_with_its_body_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let mut stage = stage(dir.path(), "validate-test-1");
        let mut out = Vec::new();
        let body = serde_json::json!({"temperature": 21.5, "nested": {"ok": true}});
        stage.process(record(body.clone()).0, &mut out);
        assert_eq!(out[0].kind, Kind::Telemetry);
        assert_eq!(
            Value::Object(out[0].body.clone()),
            body,
            "envelope taken out again, order kept"
        );
    }

    #[test]
    fn an_invalid_record_goes_to_dead_letter_with_every_instance_path() {
        let dir = tempfile::tempdir().unwrap();
        let mut stage = stage(dir.path(), "validate-test-2");
        let mut out = Vec::new();
        let (r, mut watch) =
            record(serde_json::json!({"temperature": 99, "nested": {"ok": "yes"}}));
        stage.process(r, &mut out);
        let dead = out.pop().unwrap();
        assert_eq!(dead.kind, Kind::DeadLetter);
        assert_eq!(dead.body["stage"], "validate");
        let paths: Vec<&str> = dead.body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["instance_path"].as_str().unwrap())
            .collect();
        assert!(paths.contains(&"/temperature"), "{paths:?}");
        assert!(paths.contains(&"/nested/ok"), "{paths:?}");
        assert!(dead.body["error"].as_str().unwrap().contains("and 1 more"));
        assert_eq!(dead.body["document"]["temperature"], 99);
        assert_eq!(dead.body["raw_hex"], "ab");
        dead.delivery.delivered();
        assert!(matches!(watch.try_recv(), Ok(Outcome::Rejected { .. })));
    }

    #[test]
    fn missing_or_broken_schemas_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.json");
        let err = compile(&missing).err().unwrap();
        assert!(
            err.contains("nope.json") && err.contains("cannot read"),
            "{err}"
        );
        let broken = dir.path().join("broken.json");
        std::fs::write(&broken, r#"{"type": "object", "minimum": "x"}"#).unwrap();
        let err = compile(&broken).err().unwrap();
        assert!(err.contains("does not compile"), "{err}");
        std::fs::write(&broken, "{").unwrap();
        assert!(compile(&broken).err().unwrap().contains("line 1"));
    }
}
