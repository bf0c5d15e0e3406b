//! The enrich stage: looks the record's device up in the device registry and adds what the registry
//! knows of it (friendly id, location, tag, profile, user fields) under one key of the document,
//! together with static fields from the config. The registry file is reloaded when it changes, so an
//! edit shows in the next record without a restart.
//!
//! ```toml
//! { type = "enrich", registry = "devices.toml", target = "meta", fields = { site = "plant-1" }, unknown = "pass" }
//! ```
//!
//! A record whose device is not in the registry passes with the static fields only (`unknown =
//! "pass"`, the default) or goes to the dead-letter sink (`unknown = "dead_letter"`). Records without
//! a device (gateway events, dead letters) pass untouched.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Stage;
use crate::metrics::{self, Counter};
use crate::record::{Kind, Record};
use crate::registry::{self, Device, Devices, Registry};

/// `{ type = "enrich", registry = "devices.toml" }`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnrichConfig {
    /// The device registry file (the same format the esp3 decoder reads: `devices.toml`).
    #[serde(default)]
    pub registry: Option<PathBuf>,
    /// The document field the metadata goes under.
    #[serde(default = "default_target")]
    pub target: String,
    /// Static fields added to every record of the flow (a site, a tenant); a device's own fields of
    /// the same name win.
    #[serde(default)]
    pub fields: Map<String, Value>,
    /// What happens to a record whose device the registry does not list.
    #[serde(default)]
    pub unknown: Unknown,
}

fn default_target() -> String {
    "meta".into()
}

/// `unknown = "pass"` or `"dead_letter"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unknown {
    /// On it goes, with the static fields only.
    #[default]
    Pass,
    /// To the flow's dead-letter sink, with the reason.
    DeadLetter,
}

impl EnrichConfig {
    /// Semantic problems, for `sensorgate validate`.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        match &self.registry {
            Some(path) if registry::is_api(path) => {}
            Some(path) => {
                if let Err(e) = Registry::open(path) {
                    out.push(format!("registry: {e}"));
                }
            }
            None if self.fields.is_empty() => out.push(
                "nothing to add: give registry = \"devices.toml\" and/or fields = { site = \"...\" }"
                    .into(),
            ),
            None => {
                if self.unknown == Unknown::DeadLetter {
                    out.push(
                        "unknown = \"dead_letter\" without a registry would reject every record; add registry = \"devices.toml\"".into(),
                    );
                }
            }
        }
        if self.target.is_empty() {
            out.push("target is empty; name the field, e.g. target = \"meta\"".into());
        }
        out
    }
}

pub struct EnrichStage {
    flow: Arc<str>,
    registry: Option<Arc<Registry>>,
    /// The registry's devices as of `generation`.
    devices: Arc<Devices>,
    generation: u64,
    target: String,
    fields: Map<String, Value>,
    unknown: Unknown,
    enriched: Counter,
    unknown_devices: Counter,
}

impl EnrichStage {
    pub fn new(flow: &str, config: &EnrichConfig) -> Self {
        Self::with_registry(flow, config, None)
    }

    /// [`EnrichStage::new`] in a pipeline with an `[api]` section: `api_registry` is its device
    /// store, read when the stage says `registry = "api"`.
    pub fn with_registry(
        flow: &str,
        config: &EnrichConfig,
        api_registry: Option<&Arc<Registry>>,
    ) -> Self {
        let registry = config
            .registry
            .as_ref()
            .map(|path| registry::open_for_stage(flow, path, api_registry));
        let counter = |name: &str| metrics::counter(name, &[("flow", flow)]);
        EnrichStage {
            flow: flow.into(),
            devices: registry.as_ref().map(|r| r.snapshot()).unwrap_or_default(),
            generation: registry.as_ref().map_or(0, |r| r.generation()),
            registry,
            target: config.target.clone(),
            fields: config.fields.clone(),
            unknown: config.unknown,
            enriched: counter("enrich_enriched_total"),
            unknown_devices: counter("enrich_unknown_devices_total"),
        }
    }

    fn refresh(&mut self) {
        if let Some(registry) = &self.registry {
            let generation = registry.generation();
            if generation != self.generation {
                self.devices = registry.snapshot();
                self.generation = generation;
            }
        }
    }

    fn metadata(&self, device: Option<&Device>) -> Map<String, Value> {
        let mut meta = self.fields.clone();
        if let Some(d) = device {
            let text = |s: &str| Value::String(s.to_string());
            if !d.friendly_id.is_empty() {
                meta.insert("friendly_id".into(), text(&d.friendly_id));
            }
            if !d.location.is_empty() {
                meta.insert("location".into(), text(&d.location));
            }
            if !d.custom_tag.is_empty() {
                meta.insert("custom_tag".into(), text(&d.custom_tag));
            }
            if let Some(eep) = &d.eep {
                meta.insert("eep".into(), text(eep));
            }
            for (k, v) in &d.fields {
                meta.insert(k.clone(), v.clone());
            }
        }
        meta
    }
}

impl Stage for EnrichStage {
    fn name(&self) -> &'static str {
        "enrich"
    }

    fn process(&mut self, mut record: Record, out: &mut Vec<Record>) {
        let Some(id) = record.device.as_deref() else {
            out.push(record);
            return;
        };
        self.refresh();
        let device = self.devices.lookup(id).cloned();
        if device.is_none() && self.registry.is_some() {
            self.unknown_devices.inc();
            if self.unknown == Unknown::DeadLetter && record.kind != Kind::DeadLetter {
                let path = self
                    .registry
                    .as_ref()
                    .and_then(|r| r.path())
                    .map(|p| p.display().to_string())
                    // No file: the HTTP API's store (registry = "api").
                    .unwrap_or_else(|| "of the HTTP API (PUT /api/v1/devices/ID)".into());
                let reason = format!(
                    "device {id} is not in the registry {path}; onboard it there (or set unknown = \"pass\")"
                );
                out.push(record.into_dead_letter(&self.flow, "enrich", &reason));
                return;
            }
        }
        let meta = self.metadata(device.as_deref());
        if !meta.is_empty() {
            self.enriched.inc();
            record.body.insert(self.target.clone(), Value::Object(meta));
        }
        out.push(record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Delivery, Origin, Outcome};
    use bytes::Bytes;

    const REGISTRY: &str = r#"
[[devices]]
serial = "282C024156AF"
friendly_id = "Cold room 3"
location = "Warehouse B"
[devices.fields]
room = "3"
site = "north"

[[devices]]
eurid = "04138bb4"
eep = "d2-14-41"
friendly_id = "Multisensor 1"
"#;

    fn record(device: &str) -> (Record, crate::record::DeliveryWatch) {
        let (delivery, watch) = Delivery::new();
        let mut r = Record::new(
            "src".into(),
            Origin::default(),
            Bytes::from_static(b"\x01"),
            delivery,
        );
        r.device = Some(device.into());
        r.kind = Kind::Measurements;
        (r, watch)
    }

    fn config(dir: &std::path::Path, unknown: Unknown) -> EnrichConfig {
        let path = dir.join("devices.toml");
        std::fs::write(&path, REGISTRY).unwrap();
        let mut fields = Map::new();
        fields.insert("site".into(), "plant-1".into());
        EnrichConfig {
            registry: Some(path),
            target: "meta".into(),
            fields,
            unknown,
        }
    }

    #[test]
    fn known_devices_get_their_metadata_and_device_fields_win() {
        let dir = tempfile::tempdir().unwrap();
        let mut stage = EnrichStage::new("enrich-test-1", &config(dir.path(), Unknown::Pass));
        let mut out = Vec::new();
        stage.process(record("282c024156af").0, &mut out);
        stage.process(record("04138bb4").0, &mut out);
        let meta = &out[0].body["meta"];
        assert_eq!(meta["friendly_id"], "Cold room 3");
        assert_eq!(meta["location"], "Warehouse B");
        assert_eq!(meta["room"], "3");
        assert_eq!(meta["site"], "north", "the device's own field wins");
        assert_eq!(out[1].body["meta"]["eep"], "d2-14-41");
        assert_eq!(out[1].body["meta"]["site"], "plant-1");
    }

    #[test]
    fn unknown_devices_pass_with_static_fields_or_go_to_dead_letter() {
        let dir = tempfile::tempdir().unwrap();
        let mut stage = EnrichStage::new("enrich-test-2", &config(dir.path(), Unknown::Pass));
        let mut out = Vec::new();
        stage.process(record("AAAAAAAAAAAA").0, &mut out);
        assert_eq!(out[0].kind, Kind::Measurements);
        assert_eq!(out[0].body["meta"], serde_json::json!({"site": "plant-1"}));
        assert_eq!(stage.unknown_devices.get(), 1);

        let mut stage = EnrichStage::new("enrich-test-3", &config(dir.path(), Unknown::DeadLetter));
        let mut out = Vec::new();
        let (r, mut watch) = record("AAAAAAAAAAAA");
        stage.process(r, &mut out);
        let dead = out.pop().unwrap();
        assert_eq!(dead.kind, Kind::DeadLetter);
        assert_eq!(dead.body["stage"], "enrich");
        assert!(
            dead.body["error"]
                .as_str()
                .unwrap()
                .contains("AAAAAAAAAAAA is not in the registry")
        );
        dead.delivery.delivered();
        assert!(matches!(watch.try_recv(), Ok(Outcome::Rejected { .. })));
    }

    #[test]
    fn records_without_a_device_pass_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let mut stage = EnrichStage::new("enrich-test-4", &config(dir.path(), Unknown::DeadLetter));
        let mut out = Vec::new();
        let (mut r, _) = record("x");
        r.device = None;
        stage.process(r, &mut out);
        assert!(out[0].body.is_empty());
    }
}
