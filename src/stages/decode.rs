//! The decode stage: runs a codec over a record's raw bytes and fills `device`, `kind` and `body`.
//! A frame the codec refuses becomes a dead-letter record carrying the codec's error and the raw bytes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::Stage;
use crate::codecs::enocean::engine::{self, Engine, EngineOptions};
use crate::codecs::enocean::esp3;
use crate::codecs::wasm;
use crate::codecs::{efento, json};
use crate::config::HumanDuration;
use crate::metrics::{self, Counter};
use crate::record::{Kind, Record};
use crate::registry::{self, Registry};

/// `{ type = "decode", codec = "efento" }`,
/// `{ type = "decode", codec = "esp3", registry = "devices.toml", stats_interval = "10m" }` or
/// `{ type = "decode", codec = "plugin", plugin = "vendor:flespi" }` or
/// `{ type = "decode", codec = "json", json = { preset = "flespi" } }`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeConfig {
    /// Which codec reads the frames.
    pub codec: Codec,
    /// esp3: the device registry file (see `devices.toml`). Telegrams from devices not in it are
    /// reported as `UNKNOWN_DEVICE` events, not decoded. Reloaded when the file changes.
    #[serde(default)]
    pub registry: Option<PathBuf>,
    /// esp3: how often per-device and per-gateway statistics records are emitted; "0s" never.
    #[serde(default = "default_stats_interval")]
    pub stats_interval: HumanDuration,
    /// esp3: how long the parts of a chained telegram are waited for.
    #[serde(default = "default_chain_timeout")]
    pub chain_timeout: HumanDuration,
    /// esp3: how far ahead of the expected rolling code a secure telegram may be.
    #[serde(default = "default_rlc_window")]
    pub rlc_window: u32,
    /// json: how payload fields map to devices, times and readings (see [`json::JsonMapping`]).
    #[serde(default)]
    pub json: Option<json::JsonMapping>,
    /// `documents` (the default): decoded records. `raw`: the frame goes on undecoded, with only its
    /// device found (for an ingest tier writing raw frames keyed by device; see [`Output`]).
    #[serde(default)]
    pub output: Output,
}

/// What the decode stage passes on.
///
/// With `raw`, each frame goes on as it came (kind `raw`, its bytes and origin unchanged) with its
/// device set, and a frame the codec cannot read still goes to dead letter. Efento, json and plugin
/// frames are decoded to find the device (the first item's, for a payload of several). ESP3 frames
/// are not run through the EnOcean engine, which keeps state per device (chains, rolling codes) that
/// belongs to the processing tier: a radio telegram's device is its sender id, read from the frame;
/// other packets go on without a device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    #[default]
    Documents,
    Raw,
}

/// `{ type = "decode", codec = "plugin", plugin = "vendor:flespi" }`: a vendor codec plugin from
/// the `[plugins]` directory decodes the payload.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginDecodeConfig {
    /// Always `plugin`.
    pub codec: Codec,
    /// What the plugin decodes, as it declares it (`vendor:flespi`; see `sensorgate plugins list`).
    pub plugin: String,
}

impl PluginDecodeConfig {
    /// Semantic problems, for `sensorgate validate`.
    pub fn problems(&self) -> Vec<String> {
        let p = &self.plugin;
        if p.starts_with("vendor:") || p.starts_with("eep:") {
            Vec::new()
        } else {
            vec![format!(
                "plugin = \"{p}\" is not a profile; write vendor:NAME (e.g. vendor:flespi) or eep:RR-FF-TT"
            )]
        }
    }
}

fn default_stats_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}

fn default_chain_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(3))
}

fn default_rlc_window() -> u32 {
    crate::codecs::enocean::secure::DEFAULT_WINDOW
}

impl DecodeConfig {
    /// Semantic problems, for `sensorgate validate`.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.json.is_some() && self.codec != Codec::Json {
            out.push("json = { ... } is read by codec \"json\" only; remove it here".into());
        }
        match self.codec {
            Codec::Json => match &self.json {
                None => out.push(
                    "codec \"json\" needs json = { preset = \"flespi\" } (or iotconnect, aws_event), or json = { device = \"/pointer\", ... }".into(),
                ),
                Some(mapping) => {
                    if let Err(e) = mapping.resolve() {
                        out.push(format!("json: {e}"));
                    }
                }
            },
            Codec::Efento => {
                if self.registry.is_some() {
                    out.push("registry is read by codec \"esp3\" only; remove it here".into());
                }
            }
            Codec::Plugin => out.push(
                "codec \"plugin\" needs plugin = \"vendor:NAME\" (what the plugin declares it decodes; see `sensorgate plugins list`)".into(),
            ),
            Codec::Esp3 => match &self.registry {
                // Frames only get their sender id: no registry needed.
                None if self.output == Output::Raw => {}
                None => out.push(
                    "codec \"esp3\" needs registry = \"devices.toml\": without one every telegram is from an unknown device".into(),
                ),
                Some(path) if registry::is_api(path) => {}
                Some(path) => {
                    if let Err(e) = Registry::open(path) {
                        out.push(format!("registry: {e}"));
                    }
                }
            },
        }
        out
    }
}

/// The built-in codecs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    /// Efento NB-IoT protobuf frames; the message type comes from the CoAP route
    /// (`measurements`, `device_info`, `configuration`) or the path (`m`, `i`, `c`).
    Efento,
    /// EnOcean ESP3 frames from gateways (the `esp3_websocket` source): radio telegrams decoded
    /// with the device registry's EEPs, plus events and statistics, in the EnOcean IoT Connector's JSON.
    #[serde(alias = "enocean")]
    Esp3,
    /// A vendor codec plugin (`plugin = "vendor:NAME"`) from the `[plugins]` directory: the
    /// payload goes to the plugin, and each JSON document it returns becomes a telemetry record
    /// for the device it names. Any source's bytes will do.
    Plugin,
    /// JSON payloads (flespi, IoTConnect, an AWS IoT event, or a mapping of your own), one
    /// measurements record per item, by JSON pointers (`json = { ... }`).
    Json,
}

pub struct DecodeStage {
    flow: Arc<str>,
    codec: Codec,
    output: Output,
    decoded: Counter,
    rejected: Counter,
    enocean: Option<EnoceanState>,
    vendor: Option<VendorState>,
    /// json: the mapping, or why it cannot be used (then every payload is a dead letter saying so).
    json: Option<Result<json::Mapping, String>>,
}

/// The plugin codec's state: the flow's plugin instances and the profile to ask for.
struct VendorState {
    runner: Option<wasm::Runner>,
    profile: String,
}

/// The esp3 codec's state: the engine and when statistics are next due.
struct EnoceanState {
    engine: Engine,
    stats_interval: Option<Duration>,
    next_stats: Option<Instant>,
    next_chain_check: Option<Instant>,
    outputs: Vec<engine::Output>,
    /// The source of the records decoded last: what statistics and timed-out chains are reported as
    /// coming from (they come from no one frame). The flow's name until a record arrives.
    source: Option<Arc<str>>,
    /// Telegrams went by since the last [`Stage::report`].
    unreported: bool,
}

impl DecodeStage {
    pub fn new(flow: &str, config: &DecodeConfig) -> Self {
        Self::with_plugins(flow, config, None)
    }

    /// A vendor codec plugin's decode stage.
    pub fn vendor(
        flow: &str,
        config: &PluginDecodeConfig,
        plugins: Option<&Arc<wasm::Host>>,
    ) -> Self {
        let mut stage = Self::with_plugins(
            flow,
            &DecodeConfig {
                codec: Codec::Plugin,
                registry: None,
                stats_interval: default_stats_interval(),
                chain_timeout: default_chain_timeout(),
                rlc_window: default_rlc_window(),
                json: None,
                output: Output::Documents,
            },
            plugins,
        );
        if let Some(vendor) = stage.vendor.as_mut() {
            vendor.profile = config.plugin.clone();
        }
        stage
    }

    /// `plugins`: the pipeline's plugin host, if it has a `[plugins]` section; the esp3 codec
    /// decodes EEPs with them too.
    pub fn with_plugins(
        flow: &str,
        config: &DecodeConfig,
        plugins: Option<&Arc<wasm::Host>>,
    ) -> Self {
        Self::with_registry(flow, config, plugins, None)
    }

    /// [`DecodeStage::with_plugins`] in a pipeline with an `[api]` section: `api_registry` is its
    /// device store, read by the esp3 codec when the stage says `registry = "api"`.
    pub fn with_registry(
        flow: &str,
        config: &DecodeConfig,
        plugins: Option<&Arc<wasm::Host>>,
        api_registry: Option<&Arc<Registry>>,
    ) -> Self {
        let codec = match config.codec {
            Codec::Efento => "efento",
            Codec::Esp3 => "esp3",
            Codec::Plugin => "plugin",
            Codec::Json => "json",
        };
        let enocean =
            (config.codec == Codec::Esp3 && config.output == Output::Documents).then(|| {
                let registry = match &config.registry {
                    Some(path) => registry::open_for_stage(flow, path, api_registry),
                    None => Registry::empty(),
                };
                let options = EngineOptions {
                    chain_timeout: config.chain_timeout.get(),
                    rlc_window: config.rlc_window,
                    ..EngineOptions::default()
                };
                let stats_interval = Some(config.stats_interval.get()).filter(|d| !d.is_zero());
                let mut engine = Engine::new(registry, options);
                if let Some(host) = plugins {
                    engine = engine.with_plugins(wasm::Runner::new(host.clone()));
                }
                EnoceanState {
                    engine,
                    stats_interval,
                    next_stats: stats_interval.map(|d| Instant::now() + d),
                    next_chain_check: None,
                    outputs: Vec::new(),
                    source: None,
                    unreported: false,
                }
            });
        DecodeStage {
            flow: flow.into(),
            codec: config.codec,
            output: config.output,
            decoded: metrics::counter("decoded_records_total", &[("flow", flow), ("codec", codec)]),
            rejected: metrics::counter(
                "component_errors_total",
                &[
                    ("component", flow),
                    ("stage", "decode"),
                    ("error", "decode"),
                ],
            ),
            enocean,
            vendor: (config.codec == Codec::Plugin).then(|| VendorState {
                runner: plugins.map(|host| wasm::Runner::new(host.clone())),
                profile: String::new(),
            }),
            json: (config.codec == Codec::Json).then(|| match &config.json {
                Some(mapping) => mapping.resolve(),
                None => Err("codec \"json\" has no json = { ... } mapping".into()),
            }),
        }
    }

    /// Maps a JSON payload to its items: one record per item, sharing the frame's delivery token.
    fn process_json(&mut self, record: Record, out: &mut Vec<Record>) {
        let result = match &self.json {
            Some(Ok(mapping)) => {
                json::decode(mapping, &record.raw, record.received_at).map_err(|e| e.to_string())
            }
            Some(Err(e)) => Err(e.clone()),
            None => Err("no json mapping".into()),
        };
        let mut items = match result {
            Ok(items) => items,
            Err(reason) => {
                self.rejected.inc();
                tracing::debug!(flow = %self.flow, source = %record.source, %reason, "payload rejected by the json codec");
                out.push(record.into_dead_letter(&self.flow, "decode", &reason));
                return;
            }
        };
        self.decoded.inc();
        let with_item = |mut record: Record, item: json::Item| {
            record.delivery.set_device(&item.device);
            record.device = Some(item.device);
            record.kind = item.kind;
            record.body = item.body;
            record.readings = item.readings;
            record
        };
        let Some(last) = items.pop() else {
            record.delivery.delivered();
            return;
        };
        for item in items {
            out.push(with_item(record.clone(), item));
        }
        out.push(with_item(record, last));
    }

    /// Runs the vendor codec plugin over the payload: one record per document it returns.
    fn process_vendor(&mut self, record: Record, out: &mut Vec<Record>) {
        let Some(state) = self.vendor.as_mut() else {
            out.push(record);
            return;
        };
        let frame = wasm::FrameRef {
            payload: &record.raw,
            device: record.device.as_deref().unwrap_or(""),
            rorg: 0,
            status: 0,
            gateway: record.origin.gateway.as_deref(),
            route: record
                .origin
                .route
                .as_deref()
                .or(record.origin.path.as_deref()),
        };
        let result = match state.runner.as_mut() {
            None => Err(
                "codec \"plugin\" needs a [plugins] section with the plugin directory".to_string(),
            ),
            Some(runner) => match runner.decode_vendor(&state.profile, frame) {
                None => Err(format!(
                    "no plugin decodes {} (see `sensorgate plugins list`)",
                    state.profile
                )),
                Some(result) => result.map_err(|e| e.to_string()),
            },
        };
        match result {
            Ok(documents) => {
                self.decoded.inc();
                let mut outputs: Vec<engine::Output> = documents
                    .into_iter()
                    .map(|d| engine::Output {
                        kind: Kind::Telemetry,
                        device: Some(d.device)
                            .filter(|d| !d.is_empty())
                            .or_else(|| record.device.clone()),
                        gateway: None,
                        body: d.body,
                    })
                    .collect();
                emit(&mut outputs, record, out);
            }
            Err(reason) => {
                self.rejected.inc();
                tracing::debug!(flow = %self.flow, source = %record.source, %reason, "payload rejected by the plugin codec");
                out.push(record.into_dead_letter(&self.flow, "decode", &reason));
            }
        }
    }

    /// Runs the EnOcean engine over one frame. Records that are not raw frames (a gateway's health
    /// report, already a document) pass unchanged.
    fn process_esp3(&mut self, record: Record, out: &mut Vec<Record>) {
        let Some(state) = self.enocean.as_mut() else {
            out.push(record);
            return;
        };
        if record.kind != Kind::Raw {
            out.push(record);
            return;
        }
        state.unreported = true;
        if state.source.as_ref() != Some(&record.source) {
            state.source = Some(record.source.clone());
        }
        let others = record
            .origin
            .receptions
            .iter()
            .map(|r| (r.gateway.as_deref(), r.rssi))
            .collect();
        let reception = engine::Reception {
            gateway: record.origin.gateway.as_deref(),
            others,
            route: record.origin.route.as_deref(),
        };
        let now = Instant::now();
        let result = state.engine.decode(
            &record.raw,
            &reception,
            record.received_at,
            now,
            &mut state.outputs,
        );
        if state.engine.next_deadline(now).is_some() && state.next_chain_check.is_none() {
            state.next_chain_check = state.engine.next_deadline(now);
        }
        match result {
            Ok(()) => {
                self.decoded.inc();
                emit(&mut state.outputs, record, out);
            }
            Err(reason) => {
                self.rejected.inc();
                state.outputs.clear();
                let reason = reason.to_string();
                tracing::debug!(flow = %self.flow, source = %record.source, %reason, "frame rejected by decode");
                out.push(record.into_dead_letter(&self.flow, "decode", &reason));
            }
        }
    }

    /// Decodes in place; on failure returns the reason, and the record stays as it was received.
    fn decode_efento(&self, record: &mut Record) -> Result<(), String> {
        let route = record
            .origin
            .route
            .as_deref()
            .or(record.origin.path.as_deref())
            .unwrap_or("");
        let Some(message) = efento::Message::from_route(route) else {
            let reason = format!(
                "no Efento message is expected on route `{route}` (expected measurements, device_info or configuration)"
            );
            return Err(reason);
        };
        match efento::decode(message, &record.raw) {
            Ok(decoded) => {
                record.delivery.set_device(&decoded.serial);
                record.device = Some(decoded.serial);
                record.kind = decoded.kind;
                record.body = decoded.body;
                record.readings = decoded.readings;
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

impl DecodeStage {
    /// `output = "raw"`: the frame goes on undecoded, with its device (see [`Output`]).
    fn identify(&mut self, record: Record, out: &mut Vec<Record>) {
        if record.kind != Kind::Raw {
            out.push(record);
            return;
        }
        if self.codec == Codec::Esp3 {
            return self.identify_esp3(record, out);
        }
        // A share of the frame's delivery for the frame itself; the decoded outputs settle theirs.
        let frame = record.clone();
        let mut decoded = Vec::new();
        self.process_record(record, &mut decoded);
        let mut device = None;
        let mut rejected = None;
        for r in decoded {
            if r.kind == Kind::DeadLetter {
                rejected = Some(r);
                continue;
            }
            if device.is_none() {
                device = r.device.clone();
            }
            r.delivery.delivered();
        }
        if let Some(rejected) = rejected {
            frame.delivery.delivered();
            out.push(rejected);
            return;
        }
        let mut record = frame;
        if let Some(device) = device {
            record.delivery.set_device(&device);
            record.device = Some(device);
        }
        out.push(record);
    }

    fn identify_esp3(&mut self, mut record: Record, out: &mut Vec<Record>) {
        match esp3::parse_packet(&record.raw) {
            Ok((packet, len)) if len == record.raw.len() => {
                self.decoded.inc();
                if packet.packet_type == esp3::packet_type::RADIO_ERP1 && packet.data.len() >= 6 {
                    let at = packet.data.len() - 5;
                    let id = u32::from_be_bytes([
                        packet.data[at],
                        packet.data[at + 1],
                        packet.data[at + 2],
                        packet.data[at + 3],
                    ]);
                    let device = crate::codecs::enocean::id_hex(id);
                    record.delivery.set_device(&device);
                    record.device = Some(device);
                }
                out.push(record);
            }
            Ok((_, len)) => {
                self.rejected.inc();
                let reason = format!(
                    "trailing_bytes: the ESP3 frame is {len} bytes, {} were received",
                    record.raw.len()
                );
                out.push(record.into_dead_letter(&self.flow, "decode", &reason));
            }
            Err(e) => {
                self.rejected.inc();
                out.push(record.into_dead_letter(&self.flow, "decode", &e.to_string()));
            }
        }
    }

    fn process_record(&mut self, mut record: Record, out: &mut Vec<Record>) {
        let result = match self.codec {
            Codec::Efento => self.decode_efento(&mut record),
            Codec::Esp3 => return self.process_esp3(record, out),
            Codec::Plugin => return self.process_vendor(record, out),
            Codec::Json => return self.process_json(record, out),
        };
        match result {
            Ok(()) => {
                self.decoded.inc();
                out.push(record);
            }
            Err(reason) => {
                self.rejected.inc();
                tracing::debug!(flow = %self.flow, source = %record.source, %reason, "frame rejected by decode");
                out.push(record.into_dead_letter(&self.flow, "decode", &reason));
            }
        }
    }
}

/// Turns the engine's documents for one frame into records. The frame's record carries the first
/// document and its delivery token; further documents (an event next to the telemetry) are copies
/// sharing that token. A frame that gives nothing (a chained part waiting for the rest) settles as
/// delivered: its bytes live on in the whole telegram, or in the `CHAIN_INCOMPLETE` event.
fn emit(outputs: &mut Vec<engine::Output>, record: Record, out: &mut Vec<Record>) {
    let Some(last) = outputs.pop() else {
        record.delivery.delivered();
        return;
    };
    for output in outputs.drain(..) {
        out.push(with_output(record.clone(), output));
    }
    out.push(with_output(record, last));
}

fn with_output(mut record: Record, output: engine::Output) -> Record {
    if let Some(device) = &output.device {
        record.delivery.set_device(device);
    }
    record.device = output.device;
    record.kind = output.kind;
    record.body = output.body;
    record
}

impl Stage for DecodeStage {
    fn name(&self) -> &'static str {
        "decode"
    }

    fn process(&mut self, record: Record, out: &mut Vec<Record>) {
        match self.output {
            Output::Documents => self.process_record(record, out),
            Output::Raw => self.identify(record, out),
        }
    }

    fn report(&mut self, flow: &Arc<str>, live: &crate::live::Live) {
        let Some(state) = self.enocean.as_mut() else {
            return;
        };
        // Copies of numbers only, and only when telegrams went by since the last report.
        if !std::mem::take(&mut state.unreported) {
            return;
        }
        let engine = &state.engine;
        live.report_telegrams(
            flow,
            engine
                .device_stats()
                .iter()
                .map(|(id, c)| (*id, *c))
                .collect(),
            engine
                .gateway_stats()
                .iter()
                .map(|(g, c)| (g.clone(), *c))
                .collect(),
            engine.sensors(),
        );
    }

    fn next_deadline(&self) -> Option<Instant> {
        let state = self.enocean.as_ref()?;
        match (state.next_stats, state.next_chain_check) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn on_timer(&mut self, now: Instant, flush: bool, out: &mut Vec<Record>) {
        let Some(state) = self.enocean.as_mut() else {
            return;
        };
        let at = SystemTime::now();
        let mut outputs = Vec::new();
        if state.next_chain_check.is_some_and(|d| d <= now) || flush {
            state.engine.expire_chains(now, at, &mut outputs);
            state.next_chain_check = state.engine.next_deadline(now);
        }
        if state.next_stats.is_some_and(|d| d <= now) {
            state.engine.stats_records(at, &mut outputs);
            state.next_stats = state.stats_interval.map(|d| now + d);
        }
        for output in outputs {
            let origin = crate::record::Origin {
                gateway: output.gateway.as_deref().map(Arc::from),
                route: Some(Arc::from(output.kind.as_str())),
                ..Default::default()
            };
            let record = Record::new(
                state.source.clone().unwrap_or_else(|| self.flow.clone()),
                origin,
                bytes::Bytes::new(),
                crate::record::Delivery::detached(),
            );
            out.push(with_output(record, output));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Delivery, Origin, Outcome};
    use bytes::Bytes;

    fn raw_stage(codec: &str) -> DecodeStage {
        let config: DecodeConfig =
            toml::from_str(&format!("codec = \"{codec}\"\noutput = \"raw\"")).unwrap();
        assert!(config.problems().is_empty(), "{:?}", config.problems());
        DecodeStage::new("f", &config)
    }

    fn frame_record(raw: Vec<u8>, route: &str) -> (Record, crate::record::DeliveryWatch) {
        let (delivery, watch) = Delivery::new();
        let origin = Origin {
            route: Some(Arc::from(route)),
            ..Origin::default()
        };
        (
            Record::new(Arc::from("s"), origin, Bytes::from(raw), delivery),
            watch,
        )
    }

    #[test]
    fn raw_output_passes_the_frame_on_with_its_device_and_one_delivery() {
        let mut stage = raw_stage("efento");
        let frame = crate::loadgen::frame(5, 0);
        let (record, mut watch) = frame_record(frame.clone(), "measurements");
        let mut out = Vec::new();
        stage.process(record, &mut out);
        assert_eq!(out.len(), 1);
        let r = out.pop().unwrap();
        assert_eq!(r.kind, Kind::Raw);
        assert_eq!(r.device.as_deref(), Some("4C4700000005"));
        assert_eq!(&r.raw[..], &frame[..]);
        assert!(r.body.is_empty() && r.readings.is_empty());
        // The decoded copies settled their shares: the frame's delivery is the record's alone.
        assert!(
            watch.try_recv().is_err(),
            "settled before the frame was stored"
        );
        r.delivery.delivered();
        assert!(matches!(watch.try_recv(), Ok(Outcome::Delivered { .. })));
    }

    #[test]
    fn raw_output_still_sends_unreadable_frames_to_the_dead_letter() {
        let mut stage = raw_stage("efento");
        let (record, mut watch) = frame_record(vec![0xff, 0x00, 0x13], "measurements");
        let mut out = Vec::new();
        stage.process(record, &mut out);
        assert_eq!(out.len(), 1);
        let r = out.pop().unwrap();
        assert_eq!(r.kind, Kind::DeadLetter);
        assert_eq!(r.body["raw_hex"], "ff0013");
        r.delivery.delivered();
        assert!(matches!(watch.try_recv(), Ok(Outcome::Rejected { .. })));
    }

    #[test]
    fn raw_output_of_esp3_reads_the_sender_id_without_the_engine() {
        let mut stage = raw_stage("esp3");
        let data = [0xF6, 0x30, 0x01, 0x80, 0xA1, 0xB3, 0x30];
        let frame = esp3::encode(esp3::packet_type::RADIO_ERP1, &data, &[0x01, 0xff]);
        let (record, _watch) = frame_record(frame.clone(), "esp3");
        let mut out = Vec::new();
        stage.process(record, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].kind, Kind::Raw);
        assert_eq!(out[0].device.as_deref(), Some("0180a1b3"));
        // Not a radio telegram: no device, still passed on.
        let event = esp3::encode(esp3::packet_type::EVENT, &[0x02], &[]);
        let (record, _watch) = frame_record(event, "esp3");
        stage.process(record, &mut out);
        assert_eq!(out[1].kind, Kind::Raw);
        assert_eq!(out[1].device, None);
        // A broken frame, or one with bytes after it, is a dead letter.
        let mut broken = frame.clone();
        *broken.last_mut().unwrap() ^= 0xff;
        let mut trailing = frame;
        trailing.push(0);
        for bad in [broken, trailing] {
            let (record, _watch) = frame_record(bad, "esp3");
            stage.process(record, &mut out);
            assert_eq!(out.last().unwrap().kind, Kind::DeadLetter);
        }
    }
}
