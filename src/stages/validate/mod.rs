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
//!
//! A schema that [`fast::FastValidator`] understands is also compiled into it: a record it accepts
//! passes without its document being built (a view of the record is checked instead). A record it
//! rejects, or any record of a schema it does not understand, is checked as before, by `jsonschema`
//! on the built document, which gives the dead letter's errors and is trusted over the fast verdict
//! (a disagreement is counted in `validate_fast_path_disagreements_total{flow}` and logged once; a
//! panic of the fast validator, a bug too, leaves the verdict to `jsonschema` and is counted in
//! `validate_fast_path_panics_total{flow}`).

pub mod fast;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Stage;
use crate::metrics::{self, Counter};
use crate::record::{
    Kind, READINGS_FIELD, Reading, ReadingValue, Record, shows_readings, write_rfc3339,
};

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
    /// The same schema compiled for verdicts on a record's view, when it only uses what
    /// [`fast`] implements.
    fast: Option<fast::FastValidator>,
}

impl Schema {
    /// The fast validator of the schema, if it has one (see [`fast`]).
    pub fn fast(&self) -> Option<&fast::FastValidator> {
        self.fast.as_ref()
    }

    /// `jsonschema`'s verdict on a built document, as the stage asks it.
    pub fn is_valid_document(&self, document: &Value) -> bool {
        self.validator.is_valid(document)
    }
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
    // The `regex` engine matches patterns several times faster than `fancy-regex`, the default;
    // a schema whose patterns need what only the latter has (look-around, back-references)
    // compiles with it.
    let validator = jsonschema::options()
        .with_pattern_options(jsonschema::PatternOptions::regex())
        .build(&value)
        .or_else(|_| jsonschema::validator_for(&value))
        .map_err(|e| format!("schema {shown}: does not compile: {e}"))?;
    Ok(Schema {
        path: shown.into(),
        validator,
        fast: fast::FastValidator::compile(&value),
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
    /// Records the fast validator rejected and `jsonschema` accepted (a bug in [`fast`]).
    disagreements: Counter,
    /// Whether a disagreement was logged already (once per stage is enough to find it).
    disagreement_logged: bool,
    /// Checks where the fast validator panicked (a bug in [`fast`]); jsonschema decided them.
    fast_panics: Counter,
    scratch: Scratch,
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
            disagreements: counter("validate_fast_path_disagreements_total"),
            fast_panics: counter("validate_fast_path_panics_total"),
            disagreement_logged: false,
            scratch: Scratch::default(),
        })
    }
}

/// The schema a record of `kind` is checked against: the one for all, or its kind's.
fn schema_for<'a>(
    all: &'a Option<Schema>,
    by_kind: &'a [(Kind, Schema)],
    kind: Kind,
) -> Option<&'a Schema> {
    all.as_ref()
        .or_else(|| by_kind.iter().find(|(k, _)| *k == kind).map(|(_, s)| s))
}

/// The most reading objects kept for reuse (a frame with more builds the rest each time).
const MAX_KEPT_ROWS: usize = 1024;

/// What the stage reuses from one check to the next, so that building the document to check costs
/// next to no allocation: the envelope's names and texts, and the JSON objects of readings.
#[derive(Default)]
struct Scratch {
    /// Envelope entries taken out of the last document: name and value, their buffers reused.
    envelope: Vec<(String, Value)>,
    /// Reading objects of earlier documents, refilled in place when their shape fits.
    rows: Vec<Value>,
    /// The record's `received_at` as its document writes it, for the fast validator's view.
    received_at: String,
}

fn set_text(slot: &mut Value, text: &str) {
    match slot {
        Value::String(s) => {
            s.clear();
            s.push_str(text);
        }
        other => *other = Value::String(text.to_string()),
    }
}

/// Whether `row` is an object with exactly the fields [`Reading::to_json`] gives `r`, in order.
fn fits(row: &Value, r: &Reading) -> bool {
    let Value::Object(map) = row else {
        return false;
    };
    let optional = [
        ("channel", r.channel.is_some()),
        ("type", true),
        ("ts", true),
        ("value", true),
        ("unit", true),
        ("raw", r.raw.is_some()),
        ("meta", r.meta.is_some()),
        ("error_code", r.error_code.is_some()),
        ("type_code", r.type_code.is_some()),
    ];
    let mut names = optional.iter().filter(|(_, on)| *on).map(|(name, _)| *name);
    map.keys().all(|k| names.next() == Some(k.as_str())) && names.next().is_none()
}

/// Overwrites `row` with `r` when it has the same fields (set in place, as `to_json` would build
/// it, without hashing or allocating); otherwise builds it anew.
fn refill(row: &mut Value, r: &Reading) {
    if !fits(row, r) {
        *row = r.to_json();
        return;
    }
    let Value::Object(map) = row else {
        unreachable!("fits() saw an object")
    };
    let mut slots = map.values_mut();
    let mut next = || slots.next().expect("fits() counted the fields");
    if let Some(channel) = r.channel {
        *next() = Value::from(channel);
    }
    set_text(next(), &r.key);
    *next() = Value::from(r.ts);
    let value = next();
    match &r.value {
        ReadingValue::Null => *value = Value::Null,
        ReadingValue::Int(v) => *value = Value::from(*v),
        ReadingValue::Float(v) => *value = Value::from(*v),
        ReadingValue::Text(t) => set_text(value, t),
    }
    match &r.unit {
        Some(unit) => set_text(next(), unit),
        None => *next() = Value::Null,
    }
    for v in [r.raw, r.meta, r.error_code, r.type_code]
        .into_iter()
        .flatten()
    {
        *next() = Value::from(v);
    }
}

impl Scratch {
    /// Adds the envelope fields [`crate::document::Document`] writes before the body, for the
    /// time of a check (see [`Scratch::take_back`]): the body wins a name collision, as in the
    /// document. Returns the names added.
    fn add_envelope(&mut self, record: &Record, body: &mut Map<String, Value>) -> Added {
        let mut added = Added::default();
        let mut add =
            |body: &mut Map<String, Value>, name: &'static str, text: &dyn Fn(&mut String)| {
                if body.contains_key(name) {
                    return;
                }
                let (mut key, mut value) = self
                    .envelope
                    .pop()
                    .unwrap_or_else(|| (String::new(), Value::String(String::new())));
                key.clear();
                key.push_str(name);
                if !value.is_string() {
                    value = Value::String(String::new());
                }
                if let Value::String(s) = &mut value {
                    s.clear();
                    text(s);
                }
                body.insert(key, value);
                added.push(name);
            };
        add(body, "source", &|s| s.push_str(&record.source));
        add(body, "kind", &|s| s.push_str(record.kind.as_str()));
        if let Some(device) = &record.device {
            add(body, "device", &|s| s.push_str(device));
        }
        add(body, "received_at", &|s| {
            write_rfc3339(record.received_at, s)
        });
        if shows_readings(record.kind, &record.body, &record.readings) {
            let mut rows = std::mem::take(&mut self.rows);
            let spare = rows.split_off(record.readings.len().min(rows.len()));
            for (i, r) in record.readings.iter().enumerate() {
                match rows.get_mut(i) {
                    Some(row) => refill(row, r),
                    None => rows.push(r.to_json()),
                }
            }
            self.rows = spare;
            body.insert(READINGS_FIELD.to_string(), Value::Array(rows));
            added.push(READINGS_FIELD);
        }
        added
    }

    /// Takes the `added` envelope fields out of a checked body again (they were inserted last, so
    /// nothing shifts), keeping their buffers for the next check.
    fn take_back(&mut self, body: &mut Map<String, Value>, added: &Added) {
        for name in added.names[..added.len].iter().rev() {
            let Some((key, value)) = body.shift_remove_entry(*name) else {
                continue;
            };
            match value {
                Value::Array(mut rows) if key == READINGS_FIELD => {
                    rows.append(&mut self.rows);
                    rows.truncate(MAX_KEPT_ROWS);
                    self.rows = rows;
                }
                value => self.envelope.push((key, value)),
            }
        }
    }
}

/// The names [`Scratch::add_envelope`] added to a body: at most the five envelope fields.
#[derive(Default)]
struct Added {
    names: [&'static str; 5],
    len: usize,
}

impl Added {
    fn push(&mut self, name: &'static str) {
        self.names[self.len] = name;
        self.len += 1;
    }
}

impl Stage for ValidateStage {
    fn name(&self) -> &'static str {
        "validate"
    }

    fn process(&mut self, mut record: Record, out: &mut Vec<Record>) {
        let Some(schema) = schema_for(&self.all, &self.by_kind, record.kind) else {
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
        let fast_rejected = match &schema.fast {
            Some(fast) => {
                let time = &mut self.scratch.received_at;
                time.clear();
                write_rfc3339(record.received_at, time);
                let document = fast::RecordDocument::new(&record, time);
                // Input never takes the process down: a panic in the fast validator (a bug) leaves
                // the verdict to jsonschema, and is counted and logged once.
                let verdict = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    fast.is_valid(document.view())
                }));
                match verdict {
                    Ok(true) => {
                        self.passed.inc();
                        out.push(record);
                        return;
                    }
                    Ok(false) => true,
                    Err(_) => {
                        self.fast_panics.inc();
                        if !self.disagreement_logged {
                            self.disagreement_logged = true;
                            tracing::error!(flow = %self.flow, schema = %schema.path, "the fast validator panicked; jsonschema decides (a bug in stages/validate/fast.rs; counted in validate_fast_path_panics_total)");
                        }
                        false
                    }
                }
            }
            None => false,
        };
        // The document as one value without copying the body: moved in, checked, moved back.
        let mut body = std::mem::take(&mut record.body);
        let added = self.scratch.add_envelope(&record, &mut body);
        let document = Value::Object(body);
        if schema.validator.is_valid(&document) {
            if fast_rejected {
                self.disagreements.inc();
                if !self.disagreement_logged {
                    self.disagreement_logged = true;
                    tracing::warn!(
                        flow = %self.flow,
                        schema = %schema.path,
                        %document,
                        "the fast validator rejected a document that jsonschema accepts; the record passes (a bug in stages/validate/fast.rs to report with this document; logged once per stage, counted in validate_fast_path_disagreements_total)"
                    );
                }
            }
            let Value::Object(mut body) = document else {
                unreachable!("built as an object above")
            };
            self.scratch.take_back(&mut body, &added);
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
    use serde_json::json;

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
    fn reused_buffers_never_show_an_earlier_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.schema.json");
        std::fs::write(
            &path,
            r#"{"properties": {
                "source": {"const": "src"},
                "measurements": {"items": {"properties": {"value": {"type": ["number", "null"]}}}}
            }}"#,
        )
        .unwrap();
        let mut stage = ValidateStage::new(
            "validate-test-rows",
            &ValidateConfig {
                schema: Some(path),
                schemas: BTreeMap::new(),
                unmatched: Unmatched::Pass,
            },
        )
        .unwrap();
        // Every reading its own time, so that a row not refilled shows.
        let clock = std::cell::Cell::new(1_736_935_262);
        let reading = |channel: Option<u32>, value: ReadingValue| Reading {
            channel,
            key: "temperature".into(),
            ts: clock.replace(clock.get() + 60),
            value,
            unit: Some("degC".into()),
            raw: Some(215),
            meta: None,
            error_code: None,
            type_code: None,
        };
        let error_row = Reading {
            value: ReadingValue::Null,
            raw: None,
            error_code: Some(8_355_841),
            ..reading(Some(2), ReadingValue::Null)
        };
        let metered = Reading {
            key: "co2_gas".into(),
            meta: Some(1),
            unit: Some("ppm".into()),
            ..reading(Some(3), ReadingValue::Int(812))
        };
        let text = reading(Some(1), ReadingValue::Text("ok".into()));
        let text = || text.clone();
        let float = |v: f64| reading(Some(1), ReadingValue::Float(v));
        // (readings, a body of its own, passes)
        let cases: Vec<(Vec<Reading>, Value, bool)> = vec![
            (vec![float(21.5), float(22.0)], json!({}), true),
            (
                vec![error_row.clone(), text(), metered.clone()],
                json!({}),
                false,
            ),
            (
                vec![reading(None, ReadingValue::Int(7))],
                json!({"x": 1}),
                true,
            ),
            (
                vec![error_row.clone(), float(1.0), metered.clone()],
                json!({}),
                true,
            ),
            (vec![float(3.0)], json!({"source": "other"}), false),
            (vec![], json!({}), true),
            (
                vec![metered.clone(), error_row.clone(), float(-4.5), float(9.0)],
                json!({}),
                true,
            ),
            // The same shapes again: every row refilled in place, the last with a state.
            (
                vec![
                    Reading {
                        value: ReadingValue::Int(900),
                        ..metered.clone()
                    },
                    error_row.clone(),
                    float(-1.0),
                    float(2.0),
                ],
                json!({}),
                true,
            ),
            (
                vec![metered, error_row, float(1.0), text()],
                json!({}),
                false,
            ),
        ];
        for (i, (readings, body, passes)) in cases.into_iter().enumerate() {
            let (mut r, _watch) = record(body.clone());
            r.kind = Kind::Measurements;
            r.device = Some(format!("DEV{i}"));
            r.readings = readings;
            let expected = serde_json::to_value(crate::document::Document(&r)).unwrap();
            let mut out = Vec::new();
            stage.process(r, &mut out);
            let got = out.pop().unwrap();
            if passes {
                assert_eq!(got.kind, Kind::Measurements, "case {i}: {:?}", got.body);
                assert_eq!(
                    Value::Object(got.body.clone()),
                    body,
                    "case {i}: body as it was"
                );
                let document = serde_json::to_value(crate::document::Document(&got)).unwrap();
                assert_eq!(document, expected, "case {i}");
            } else {
                assert_eq!(got.kind, Kind::DeadLetter, "case {i}");
                assert_eq!(
                    got.body["document"], expected,
                    "case {i}: the document checked"
                );
            }
        }
    }

    #[test]
    fn patterns_with_look_around_compile_and_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("look.schema.json");
        // Look-ahead is beyond the fast engine: the schema still compiles, with the other one.
        std::fs::write(
            &path,
            r#"{"properties": {"tag": {"type": "string", "pattern": "^(?!test-)[a-z-]+$"}}}"#,
        )
        .unwrap();
        let schema = compile(&path).unwrap();
        assert!(
            schema
                .validator
                .is_valid(&serde_json::json!({"tag": "plant-one"}))
        );
        assert!(
            !schema
                .validator
                .is_valid(&serde_json::json!({"tag": "test-one"}))
        );
        std::fs::write(
            &path,
            r#"{"properties": {"id": {"pattern": "^[0-9a-f]{8}$"}}}"#,
        )
        .unwrap();
        let schema = compile(&path).unwrap();
        assert!(
            schema
                .validator
                .is_valid(&serde_json::json!({"id": "0590aa01"}))
        );
        assert!(
            !schema
                .validator
                .is_valid(&serde_json::json!({"id": "0590AA01"}))
        );
        std::fs::write(&path, r#"{"pattern": "(unclosed"}"#).unwrap();
        let err = compile(&path).err().unwrap();
        assert!(err.contains("does not compile"), "{err}");
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
    fn a_fast_rejection_that_jsonschema_overrules_passes_and_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut stage = stage(dir.path(), "validate-test-disagreement");
        assert!(
            stage.all.as_ref().unwrap().fast.is_some(),
            "the test schema is fast"
        );
        // A fast validator that rejects everything stands in for a bug in it.
        stage.all.as_mut().unwrap().fast = fast::FastValidator::compile(&json!(false));
        let disagreements = metrics::counter(
            "validate_fast_path_disagreements_total",
            &[("flow", "validate-test-disagreement")],
        );
        let body = json!({"temperature": 21.5});
        for _ in 0..2 {
            let mut out = Vec::new();
            stage.process(record(body.clone()).0, &mut out);
            assert_eq!(out[0].kind, Kind::Telemetry, "{:?}", out[0].body);
            assert_eq!(Value::Object(out[0].body.clone()), body);
        }
        assert_eq!(disagreements.get(), 2);
        assert!(stage.disagreement_logged);
        // A document both reject is a dead letter, and no disagreement.
        let mut out = Vec::new();
        stage.process(record(json!({"temperature": 99})).0, &mut out);
        assert_eq!(out[0].kind, Kind::DeadLetter);
        assert_eq!(disagreements.get(), 2);
    }

    #[test]
    fn a_panic_in_the_fast_validator_leaves_the_verdict_to_jsonschema() {
        let dir = tempfile::tempdir().unwrap();
        let mut stage = stage(dir.path(), "validate-test-fast-panic");
        stage.all.as_mut().unwrap().fast = Some(fast::FastValidator::broken());
        let panics = metrics::counter(
            "validate_fast_path_panics_total",
            &[("flow", "validate-test-fast-panic")],
        );
        let mut out = Vec::new();
        stage.process(record(json!({"temperature": 21.5})).0, &mut out);
        stage.process(record(json!({"temperature": 99})).0, &mut out);
        assert_eq!(out[0].kind, Kind::Telemetry, "{:?}", out[0].body);
        assert_eq!(out[1].kind, Kind::DeadLetter, "{:?}", out[1].body);
        assert_eq!(panics.get(), 2);
    }

    #[test]
    fn records_the_fast_validator_accepts_pass_unchanged_and_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut stage = stage(dir.path(), "validate-test-fast-pass");
        let passed = metrics::counter(
            "validate_passed_total",
            &[("flow", "validate-test-fast-pass")],
        );
        let (mut r, _watch) = record(json!({"temperature": 21.5, "nested": {"ok": true}}));
        r.device = Some("dev".into());
        r.readings = vec![Reading {
            channel: Some(1),
            key: "temperature".into(),
            ts: 1,
            value: ReadingValue::Float(21.5),
            unit: None,
            raw: None,
            meta: None,
            error_code: None,
            type_code: None,
        }];
        let before = r.clone();
        assert!(
            stage
                .all
                .as_ref()
                .unwrap()
                .fast
                .as_ref()
                .unwrap()
                .is_valid_record(&r)
        );
        let mut out = Vec::new();
        stage.process(r, &mut out);
        assert_eq!(out[0].body, before.body);
        assert_eq!(out[0].readings, before.readings);
        assert_eq!(passed.get(), 1);
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
