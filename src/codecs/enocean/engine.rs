//! The stateful EnOcean decoder a flow runs: one ESP3 frame in, zero or more documents out.
//!
//! It looks the sender up in the device registry, reassembles chained telegrams, checks and decrypts
//! secure ones (rolling code per device), recognises teach-in and signal telegrams, decodes the rest
//! with the device's EEP, keeps per-device and per-gateway statistics, and raises the EnOcean IoT
//! Connector's events (`FIRST_TIME_SEND`, `EEP_NOT_FOUND_ERROR`, `EEP_DECODE_ERROR`,
//! `MAC_VALIDATION_ERROR`, `RLC_REPLAY`, `DEVICE_SEND_NOW_UNSECURE`, plus `UNKNOWN_DEVICE`,
//! `TEACH_IN`, `SECURE_TEACH_IN`, `SECURE_KEY_MISSING` and `CHAIN_INCOMPLETE`).
//!
//! Documents follow the IoTC's JSON (seed 001): telemetry is `{sensor, telemetry {data, signal,
//! meta {stats}}, raw {...}}`, events `{sensor, meta {events {security, health, transcoding}, stats}}`,
//! statistics `{sensor, meta {stats}}` and `{gateway_info, stats}`. No I/O: the caller hands in the
//! frame, the receptions and the time.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use super::chain::{self, Assembler, ChainOutcome};
use super::eep::{self, Profile};
use super::esp3::{self, packet_type};
use super::secure::{self, RlcState};
use super::telegram::Telegram;
use super::{DataPoint, id_hex, signal, teach};
use crate::codecs::wasm;
use crate::record::Kind;
use crate::registry::{Device, Devices, Registry};

/// Settings of an [`Engine`].
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// How long the parts of a chained telegram are waited for.
    pub chain_timeout: Duration,
    /// At most this many chained telegrams are reassembled at once.
    pub max_chains: usize,
    /// How far ahead of the expected rolling code a secure telegram may be.
    pub rlc_window: u32,
    /// Decode senders that are not in the registry as this device (the CLI's `--eep`/`--key`).
    pub default_device: Option<Device>,
    /// Raise `FIRST_TIME_SEND` for a device's first telegram since start.
    pub report_first_send: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            chain_timeout: Duration::from_secs(3),
            max_chains: 10_000,
            rlc_window: secure::DEFAULT_WINDOW,
            default_device: None,
            report_first_send: true,
        }
    }
}

/// Where and how a frame was received.
#[derive(Debug, Clone, Default)]
pub struct Reception<'a> {
    /// The gateway that relayed it first.
    pub gateway: Option<&'a str>,
    /// Other gateways that heard the same telegram, with their RSSI (dBm), folded in by dedupe.
    pub others: Vec<(Option<&'a str>, Option<i32>)>,
    /// The transport's route: `esp3` for a frame, `esp3_garbage` / `esp3_crc8d_mismatch` for bytes a
    /// source had to skip.
    pub route: Option<&'a str>,
}

/// One document out of the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub kind: Kind,
    /// The sender id (8 hex digits) or, for gateway statistics, none.
    pub device: Option<String>,
    pub gateway: Option<String>,
    pub body: Map<String, Value>,
}

/// Why a frame produced no document at all: the caller sends it to dead letter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameRejected {
    #[error("{0}")]
    Frame(#[from] esp3::FrameError),
    #[error("{0}")]
    Telegram(#[from] super::telegram::TelegramError),
    #[error("ESP3 packet type {packet_type:#04x} ({name}) carries no radio telegram")]
    NotRadio { packet_type: u8, name: &'static str },
    #[error("{0}")]
    Skipped(String),
    #[error("chained telegram: {0}")]
    Chain(String),
    /// A decoder plugin trapped, ran out of fuel or memory, or returned output the host refused.
    #[error("{0}")]
    Plugin(String),
}

/// The most senders with statistics of their own.
pub const MAX_TRACKED_DEVICES: usize = 100_000;

/// Telegram counters, as the IoTC's `TelegramStatistics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: u64,
    pub processed: u64,
    pub not_processed: u64,
    /// Copies of telegrams this gateway relayed that another gateway had relayed first.
    pub duplicates: u64,
    /// Unix seconds of the last telegram.
    pub last_seen: u64,
}

impl Counts {
    /// The IoTC's `TelegramStatistics` (its spelling of `succesfullyProcessed` included).
    pub fn json(&self) -> Value {
        json!({
            "lastSeen": self.last_seen.to_string(),
            "notProcessed": self.not_processed,
            "succesfullyProcessed": self.processed,
            "totalTelegramCount": self.total,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    Security,
    Health,
    Transcoding,
}

pub struct Engine {
    registry: Arc<Registry>,
    devices: Arc<Devices>,
    generation: u64,
    options: EngineOptions,
    profiles: HashMap<u32, Option<&'static Profile>>,
    chains: Assembler,
    rlc: HashMap<u32, RlcState>,
    seen: HashSet<u32>,
    device_stats: HashMap<u32, Counts>,
    gateway_stats: HashMap<String, Counts>,
    /// Decoder plugins for EEPs the table lacks (or replaces, with `prefer = "plugin"`).
    plugins: Option<wasm::Runner>,
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn packet_type_name(t: u8) -> &'static str {
    match t {
        packet_type::RESPONSE => "RESPONSE",
        packet_type::RADIO_SUB_TEL => "RADIO_SUB_TEL",
        packet_type::EVENT => "EVENT",
        packet_type::COMMON_COMMAND => "COMMON_COMMAND",
        packet_type::SMART_ACK_COMMAND => "SMART_ACK_COMMAND",
        packet_type::REMOTE_MAN_COMMAND => "REMOTE_MAN_COMMAND",
        packet_type::RADIO_MESSAGE => "RADIO_MESSAGE",
        packet_type::RADIO_802_15_4 => "RADIO_802_15_4",
        packet_type::COMMAND_2_4 => "COMMAND_2_4",
        0x80..=0xff => "manufacturer specific",
        _ => "unknown",
    }
}

fn sensor_json(device: Option<&Device>, sender: u32) -> Value {
    match device {
        Some(d) => json!({
            "friendlyId": d.friendly_id,
            "id": d.id,
            "location": d.location,
            "eep": d.eep,
            "customTag": d.custom_tag,
        }),
        None => json!({ "id": id_hex(sender) }),
    }
}

impl Engine {
    pub fn new(registry: Arc<Registry>, options: EngineOptions) -> Engine {
        let devices = registry.snapshot();
        let generation = registry.generation();
        Engine {
            chains: Assembler::new(options.chain_timeout, options.max_chains),
            registry,
            devices,
            generation,
            options,
            profiles: HashMap::new(),
            rlc: HashMap::new(),
            seen: HashSet::new(),
            device_stats: HashMap::new(),
            gateway_stats: HashMap::new(),
            plugins: None,
        }
    }

    /// Decodes EEPs with these plugins too: those the built-in table lacks, and with
    /// `prefer = "plugin"` also those it has.
    pub fn with_plugins(mut self, runner: wasm::Runner) -> Engine {
        self.plugins = Some(runner);
        self
    }

    fn refresh_registry(&mut self) {
        let generation = self.registry.generation();
        if generation != self.generation {
            self.generation = generation;
            self.devices = self.registry.snapshot();
            self.profiles.clear();
            // A key or rolling code changed in the file starts over from the file's value.
            self.rlc
                .retain(|id, _| self.devices.get(id).is_some_and(|d| d.security.is_some()));
        }
    }

    fn device(&self, sender: u32) -> Option<Arc<Device>> {
        match self.devices.get(&sender) {
            Some(d) => Some(d.clone()),
            None => self.options.default_device.as_ref().map(|d| {
                let mut d = d.clone();
                d.eurid = sender;
                d.id = id_hex(sender);
                Arc::new(d)
            }),
        }
    }

    fn profile(&mut self, device: &Device) -> Option<&'static Profile> {
        *self
            .profiles
            .entry(device.eurid)
            .or_insert_with(|| device.eep.as_deref().and_then(eep::lookup))
    }

    /// Runs the plugin for the device's EEP, if one decodes it and the built-in table does not
    /// (or the plugin is preferred). `None`: the built-in table decodes it (or nobody).
    fn decode_with_plugin(
        &mut self,
        device: &Device,
        telegram: &Telegram,
        reception: &Reception<'_>,
    ) -> Option<Result<Vec<DataPoint>, wasm::Failure>> {
        let eep = device.eep.as_deref()?;
        let builtin = self.profile(device).is_some();
        let runner = self.plugins.as_mut()?;
        if (builtin && runner.prefer() == wasm::Prefer::Builtin) || !runner.decodes_eep(eep) {
            return None;
        }
        let frame = wasm::FrameRef {
            payload: &telegram.payload,
            device: &device.id,
            rorg: telegram.rorg,
            status: telegram.status,
            gateway: reception.gateway,
            route: reception.route,
        };
        runner.decode_eep(eep, frame)
    }

    /// Per-device statistics (for the stats records and the API).
    pub fn device_stats(&self) -> &HashMap<u32, Counts> {
        &self.device_stats
    }

    /// Per-gateway statistics.
    pub fn gateway_stats(&self) -> &HashMap<String, Counts> {
        &self.gateway_stats
    }

    /// The registry's devices as the engine sees them now.
    pub fn sensors(&self) -> Arc<Devices> {
        self.devices.clone()
    }

    fn count_gateways(&mut self, reception: &Reception<'_>, now: u64, processed: bool) {
        let first = reception.gateway.map(|g| (g, false));
        let others = reception
            .others
            .iter()
            .filter_map(|(g, _)| g.map(|g| (g, true)));
        for (gateway, duplicate) in first.into_iter().chain(others) {
            let counts = self.gateway_stats.entry(gateway.to_string()).or_default();
            counts.total += 1;
            counts.last_seen = now;
            if duplicate {
                counts.duplicates += 1;
            } else if processed {
                counts.processed += 1;
            } else {
                counts.not_processed += 1;
            }
        }
    }

    fn count_device(&mut self, sender: u32, now: u64, processed: bool) -> Counts {
        // Senders heard but not onboarded are tracked up to a bound, so that random ids (noise, an
        // attack) cannot grow memory without end.
        if !self.device_stats.contains_key(&sender)
            && self.device_stats.len() >= MAX_TRACKED_DEVICES
            && !self.devices.contains_key(&sender)
        {
            return Counts::default();
        }
        let counts = self.device_stats.entry(sender).or_default();
        counts.total += 1;
        counts.last_seen = now;
        if processed {
            counts.processed += 1;
        } else {
            counts.not_processed += 1;
        }
        *counts
    }

    /// Decodes one ESP3 frame. `Err` means the frame gives no document and belongs in dead letter;
    /// everything else (including security failures and unknown devices) comes out as documents.
    pub fn decode(
        &mut self,
        frame: &[u8],
        reception: &Reception<'_>,
        at: SystemTime,
        now: Instant,
        out: &mut Vec<Output>,
    ) -> Result<(), FrameRejected> {
        self.refresh_registry();
        let unix = unix_seconds(at);
        let result = self.decode_inner(frame, reception, unix, now, out);
        let processed = result.as_ref().is_ok_and(|p| *p);
        self.count_gateways(reception, unix as u64, processed);
        result.map(|_| ())
    }

    /// Returns whether the telegram was processed (decoded into telemetry or a teach-in).
    fn decode_inner(
        &mut self,
        frame: &[u8],
        reception: &Reception<'_>,
        unix: f64,
        now: Instant,
        out: &mut Vec<Output>,
    ) -> Result<bool, FrameRejected> {
        match reception.route {
            Some("esp3_garbage") => {
                return Err(FrameRejected::Skipped(format!(
                    "garbage: {} bytes between ESP3 frames skipped",
                    frame.len()
                )));
            }
            Some("esp3_crc8d_mismatch") => {
                return Err(FrameRejected::Skipped(format!(
                    "crc8d_mismatch: ESP3 frame of {} bytes with a bad data CRC skipped",
                    frame.len()
                )));
            }
            _ => {}
        }
        let (packet, _) = esp3::parse_packet(frame)?;
        if packet.packet_type != packet_type::RADIO_ERP1
            && packet.packet_type != packet_type::RADIO_ERP2
        {
            return Err(FrameRejected::NotRadio {
                packet_type: packet.packet_type,
                name: packet_type_name(packet.packet_type),
            });
        }
        let telegram = Telegram::from_packet(&packet)?;
        let sender = telegram.sender;
        let Some(device) = self.device(sender) else {
            // A teach-in from an unknown device says what it is: worth telling whoever onboards it.
            let teach_in = teach::detect(telegram.rorg, &telegram.payload);
            let message = match teach_in.as_ref().and_then(|t| t.eep()) {
                Some(eep) => format!(
                    "Telegram from device with id={} that is not in the device registry; it announces EEP {eep} in a teach-in.",
                    id_hex(sender)
                ),
                None => format!(
                    "Telegram from device with id={} that is not in the device registry; not decoded.",
                    id_hex(sender)
                ),
            };
            let data = teach_in.map(|t| t.data_points()).unwrap_or_default();
            return Ok(self.refuse(
                out,
                None,
                sender,
                Category::Health,
                "UNKNOWN_DEVICE",
                message,
                &data,
                unix,
                Some(&telegram),
            ));
        };

        if self.options.report_first_send && self.seen.insert(sender) {
            let message = format!("First time send of device with id={}.", device.id);
            out.push(self.event(
                Some(&device),
                sender,
                Category::Health,
                "FIRST_TIME_SEND",
                message,
                &[],
                unix,
                None,
            ));
        }

        let mut telegram = telegram;
        if chain::is_chained(telegram.rorg) {
            match self.chains.push(telegram, now) {
                ChainOutcome::Pending => return Ok(false),
                ChainOutcome::Complete(whole) => telegram = whole,
                ChainOutcome::Error(e) => return Err(FrameRejected::Chain(e.to_string())),
            }
        }

        let mut secure_info: Option<SecureInfo> = None;
        match telegram.rorg {
            0x30 | 0x31 => {
                let Some(security) = device.security.as_ref() else {
                    return Ok(self.refuse(out, Some(&device),
                        sender,
                        Category::Security,
                        "SECURE_KEY_MISSING",
                        format!(
                            "Secure telegram from device with id={} but the registry holds no key for it.",
                            device.id
                        ),
                        &[],
                        unix,
                        Some(&telegram)));
                };
                let state = self
                    .rlc
                    .entry(sender)
                    .or_insert(RlcState { next: security.rlc });
                match secure::decrypt(
                    telegram.rorg,
                    &telegram.payload,
                    &security.key,
                    security.slf,
                    state,
                    self.options.rlc_window,
                ) {
                    Ok(plain) => {
                        secure_info = Some((telegram.rorg, plain.rlc, security.slf));
                        telegram.rorg = plain.rorg;
                        telegram.payload = plain.data;
                    }
                    Err(e) => {
                        return Ok(self.refuse(
                            out,
                            Some(&device),
                            sender,
                            Category::Security,
                            e.event_code(),
                            format!("Secure telegram from device with id={}: {e}.", device.id),
                            &[],
                            unix,
                            Some(&telegram),
                        ));
                    }
                }
            }
            0x35 => {
                // Secure teach-in: the key in the registry stays authoritative; the event tells the
                // operator the device (re)announced itself.
                self.count_device(sender, unix as u64, true);
                out.push(self.event(
                    Some(&device),
                    sender,
                    Category::Security,
                    "SECURE_TEACH_IN",
                    format!(
                        "Secure teach-in telegram from device with id={}.",
                        device.id
                    ),
                    &[],
                    unix,
                    Some(&telegram),
                ));
                return Ok(true);
            }
            rorg if device.security.is_some() && rorg != 0xD0 => {
                return Ok(self.refuse(out, Some(&device),
                    sender,
                    Category::Security,
                    "DEVICE_SEND_NOW_UNSECURE",
                    format!(
                        "Device with id={} is onboarded as secure but sent a non-secure telegram (RORG {rorg:02x}); not decoded.",
                        device.id
                    ),
                    &[],
                    unix,
                    Some(&telegram)));
            }
            _ => {}
        }

        if let Some(teach_in) = teach::detect(telegram.rorg, &telegram.payload) {
            self.count_device(sender, unix as u64, true);
            let mut event = self.event(
                Some(&device),
                sender,
                Category::Health,
                "TEACH_IN",
                format!("Teach-in telegram from device with id={}.", device.id),
                &teach_in.data_points(),
                unix,
                Some(&telegram),
            );
            if let (Some(info), Some(Value::Object(raw))) = (secure_info, event.body.get_mut("raw"))
            {
                add_secure_info(raw, info);
            }
            out.push(event);
            return Ok(true);
        }

        let mut data = Vec::new();
        let mut signal = Vec::new();
        if telegram.rorg == 0xD0 {
            match signal::decode(&telegram.payload) {
                Ok(points) => signal = points,
                Err(e) => {
                    return Ok(self.refuse(
                        out,
                        Some(&device),
                        sender,
                        Category::Transcoding,
                        "EEP_DECODE_ERROR",
                        format!("Signal telegram from device with id={}: {e}.", device.id),
                        &[],
                        unix,
                        Some(&telegram),
                    ));
                }
            }
        } else if device.eep.is_none() {
            data.push(DataPoint::new(
                "raw",
                super::Value::Text(hex::encode(&telegram.payload).into()),
            ));
        } else if let Some(result) = self.decode_with_plugin(&device, &telegram, reception) {
            match result {
                Ok(points) => data = points,
                Err(failure) if failure.reason.is_decode_error() => {
                    let eep = device.eep.as_deref().unwrap_or_default();
                    let reason = format!("({failure})");
                    return Ok(self.decode_error(out, &device, eep, &reason, unix, &telegram));
                }
                Err(failure) => {
                    // The plugin misbehaved, not the device: the frame goes to dead letter with
                    // its bytes, so it can be decoded again once the plugin is fixed.
                    self.count_device(sender, unix as u64, false);
                    return Err(FrameRejected::Plugin(format!(
                        "EEP {} of device with id={}: {failure}",
                        device.eep.as_deref().unwrap_or_default(),
                        device.id
                    )));
                }
            }
        } else {
            let Some(profile) = self.profile(&device) else {
                let eep = device.eep.clone().unwrap_or_default();
                return Ok(self.refuse(
                    out,
                    Some(&device),
                    sender,
                    Category::Transcoding,
                    "EEP_NOT_FOUND_ERROR",
                    format!(
                        "EEP {eep} of device with id={} is not known to sensorgate.",
                        device.id
                    ),
                    &[],
                    unix,
                    Some(&telegram),
                ));
            };
            if let Err(e) = eep::decode(
                profile,
                telegram.rorg,
                &telegram.payload,
                telegram.status,
                &mut data,
            ) {
                let reason = format!(": {e}");
                return Ok(self.decode_error(out, &device, profile.id, &reason, unix, &telegram));
            }
        }

        let counts = self.count_device(sender, unix as u64, true);
        let mut stats = counts.json();
        if let Some(map) = stats.as_object_mut() {
            map.remove("lastSeen");
            map.insert("egressTime".into(), Value::String(format!("{unix:.6}")));
        }
        let mut raw = raw_json(&telegram, unix, reception);
        if let (Some(info), Some(raw)) = (secure_info, raw.as_object_mut()) {
            add_secure_info(raw, info);
        }
        let mut body = Map::new();
        body.insert("sensor".into(), sensor_json(Some(&device), sender));
        body.insert(
            "telemetry".into(),
            json!({ "data": data, "signal": signal, "meta": { "stats": [stats] } }),
        );
        body.insert("raw".into(), raw);
        out.push(Output {
            kind: if telegram.rorg == 0xD0 {
                Kind::Signal
            } else {
                Kind::Telemetry
            },
            device: Some(device.id.clone()),
            gateway: reception.gateway.map(str::to_string),
            body,
        });
        Ok(true)
    }

    /// `EEP_DECODE_ERROR`: the telegram does not fit the device's profile (`reason` follows the
    /// EEP in the message).
    fn decode_error(
        &mut self,
        out: &mut Vec<Output>,
        device: &Device,
        eep: &str,
        reason: &str,
        unix: f64,
        telegram: &Telegram,
    ) -> bool {
        let message = format!(
            "Telegram from device with id={} could not be decoded with EEP {eep}{reason}.",
            device.id
        );
        self.refuse(
            out,
            Some(device),
            telegram.sender,
            Category::Transcoding,
            "EEP_DECODE_ERROR",
            message,
            &[],
            unix,
            Some(telegram),
        )
    }

    /// The telegram is not processed: counts it so for the sender and reports why as an event.
    /// Returns `false` (not processed) for the caller to pass on.
    #[allow(clippy::too_many_arguments)]
    fn refuse(
        &mut self,
        out: &mut Vec<Output>,
        device: Option<&Device>,
        sender: u32,
        category: Category,
        code: &str,
        message: String,
        data: &[DataPoint],
        unix: f64,
        telegram: Option<&Telegram>,
    ) -> bool {
        self.count_device(sender, unix as u64, false);
        out.push(self.event(
            device, sender, category, code, message, data, unix, telegram,
        ));
        false
    }

    #[allow(clippy::too_many_arguments)]
    fn event(
        &self,
        device: Option<&Device>,
        sender: u32,
        category: Category,
        code: &str,
        message: String,
        data: &[DataPoint],
        unix: f64,
        telegram: Option<&Telegram>,
    ) -> Output {
        let mut entry = json!({ "code": code, "message": message });
        if !data.is_empty()
            && let Some(entry) = entry.as_object_mut()
        {
            entry.insert("data".into(), json!(data));
        }
        let mut events = json!({ "security": [], "health": [], "transcoding": [] });
        let list = match category {
            Category::Security => "security",
            Category::Health => "health",
            Category::Transcoding => "transcoding",
        };
        if let Some(list) = events.get_mut(list).and_then(Value::as_array_mut) {
            list.push(entry);
        }
        let mut body = Map::new();
        body.insert("sensor".into(), sensor_json(device, sender));
        body.insert(
            "meta".into(),
            json!({ "events": events, "stats": { "timestamp": (unix as u64).to_string() } }),
        );
        if let Some(t) = telegram {
            body.insert(
                "raw".into(),
                json!({
                    "data": t.raw_data_hex(),
                    "sender": id_hex(t.sender),
                    "status": format!("{:02x}", t.status),
                    "rssi": t.dbm,
                    "rorg": format!("{:02x}", t.rorg),
                }),
            );
        }
        Output {
            kind: Kind::Event,
            device: Some(id_hex(sender)),
            gateway: None,
            body,
        }
    }

    /// When [`Engine::on_timer`] is next needed (a chained telegram may time out), if ever.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        (self.chains.pending() > 0).then(|| now + self.options.chain_timeout / 2)
    }

    /// Drops chained telegrams whose parts stopped coming, reporting each as an event.
    pub fn expire_chains(&mut self, now: Instant, at: SystemTime, out: &mut Vec<Output>) {
        let unix = unix_seconds(at);
        for expired in self.chains.expire(now) {
            let device = self.device(expired.sender);
            if let Some(counts) = self.device_stats.get_mut(&expired.sender) {
                counts.not_processed += 1;
            }
            out.push(self.event(
                device.as_deref(),
                expired.sender,
                Category::Transcoding,
                "CHAIN_INCOMPLETE",
                format!(
                    "Chained telegram {} from device with id={} timed out with {} of {} bytes.",
                    expired.seq,
                    id_hex(expired.sender),
                    expired.received,
                    expired
                        .expected
                        .map_or_else(|| "?".to_string(), |n| n.to_string())
                ),
                &[],
                unix,
                None,
            ));
        }
    }

    /// The statistics records: one per device, one per gateway (the IoTC's `meta/stats`).
    pub fn stats_records(&self, at: SystemTime, out: &mut Vec<Output>) {
        let unix = unix_seconds(at) as u64;
        let mut devices: Vec<_> = self.device_stats.iter().collect();
        devices.sort_by_key(|(id, _)| **id);
        for (&id, counts) in devices {
            let device = self.devices.get(&id).map(|d| d.as_ref());
            let mut body = Map::new();
            body.insert("sensor".into(), sensor_json(device, id));
            body.insert("meta".into(), json!({ "stats": counts.json() }));
            body.insert("timestamp".into(), Value::String(unix.to_string()));
            out.push(Output {
                kind: Kind::Stats,
                device: Some(id_hex(id)),
                gateway: None,
                body,
            });
        }
        let mut gateways: Vec<_> = self.gateway_stats.iter().collect();
        gateways.sort_by(|a, b| a.0.cmp(b.0));
        for (gateway, counts) in gateways {
            let mut stats = counts.json();
            if let Some(map) = stats.as_object_mut() {
                map.insert("duplicates".into(), Value::from(counts.duplicates));
            }
            let mut body = Map::new();
            body.insert("gateway_info".into(), json!({ "mac": gateway }));
            body.insert("stats".into(), stats);
            body.insert("timestamp".into(), Value::String(unix.to_string()));
            out.push(Output {
                kind: Kind::Stats,
                device: None,
                gateway: Some(gateway.clone()),
                body,
            });
        }
    }
}

/// What a secure telegram was: its RORG before decryption, its rolling code, its security level format.
type SecureInfo = (u8, u32, secure::Slf);

fn add_secure_info(raw: &mut Map<String, Value>, (secure_rorg, rlc, slf): SecureInfo) {
    raw.insert(
        "secureRorg".into(),
        Value::String(format!("{secure_rorg:02x}")),
    );
    raw.insert("rlc".into(), Value::String(format!("{rlc:06x}")));
    raw.insert("slf".into(), Value::String(format!("{:#04x}", slf.0)));
}

fn raw_json(t: &Telegram, unix: f64, reception: &Reception<'_>) -> Value {
    let mut gateways = Vec::with_capacity(1 + reception.others.len());
    if let Some(g) = reception.gateway {
        gateways.push(json!({ "gateway": g, "rssi": t.dbm }));
    }
    for (g, rssi) in &reception.others {
        gateways.push(json!({ "gateway": g, "rssi": rssi }));
    }
    let mut raw = json!({
        "data": t.raw_data_hex(),
        "sender": id_hex(t.sender),
        "status": format!("{:02x}", t.status),
        "subTelNum": t.sub_tel_num,
        "destination": id_hex(t.destination.unwrap_or(u32::MAX)),
        "rssi": t.dbm,
        "securityLevel": t.security_level,
        "timestamp": format!("{unix:.6}"),
        "gateway": reception.gateway,
        "gateways": gateways,
        "rorg": format!("{:02x}", t.rorg),
    });
    if let Some(raw) = raw.as_object_mut() {
        if t.chained {
            raw.insert("chained".into(), Value::Bool(true));
        }
        if t.adt {
            raw.insert("adt".into(), Value::Bool(true));
        }
    }
    raw
}

/// Event codes that are reports, not failures (the CLI exits 0 on them).
const INFORMATIONAL_EVENTS: &[&str] = &["FIRST_TIME_SEND", "TEACH_IN", "SECURE_TEACH_IN"];

/// The first failure event among `outputs`, as `CODE: message`.
pub fn first_error(outputs: &[Output]) -> Option<String> {
    outputs
        .iter()
        .filter(|o| o.kind == Kind::Event)
        .find_map(|o| {
            let events = o.body.get("meta")?.get("events")?.as_object()?;
            events
                .values()
                .filter_map(Value::as_array)
                .flatten()
                .find_map(|e| {
                    let code = e.get("code")?.as_str()?;
                    (!INFORMATIONAL_EVENTS.contains(&code)).then(|| {
                        let message = e.get("message").and_then(Value::as_str).unwrap_or("");
                        format!("{code}: {message}")
                    })
                })
        })
}

/// Decodes ESP3 bytes given as hex (one or more frames, back to back; leading garbage is skipped the
/// way a gateway stream would be) for the CLI. Senders not in `registry` are decoded as
/// `default_device` when given. Returns every document, or the first error as one line.
pub fn decode_hex(
    text: &str,
    registry: Arc<Registry>,
    default_device: Option<Device>,
    plugins: Option<wasm::Runner>,
) -> Result<Vec<Output>, String> {
    let cleaned: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let bytes = hex::decode(&cleaned).map_err(|e| format!("not hex: {e}"))?;
    // Exact frames first, so that a single bad frame is named (crc8h_mismatch, ...); a stream
    // with garbage in front goes through the resynchronising parser instead.
    let frames: Vec<Vec<u8>> = match esp3::parse_packets(&bytes) {
        Ok(_) => {
            let mut frames = Vec::new();
            let mut rest = &bytes[..];
            while let Ok((_, len)) = esp3::parse_packet(rest) {
                frames.push(rest[..len].to_vec());
                rest = &rest[len..];
            }
            frames
        }
        Err(esp3::FrameError::NoSync) => {
            let mut parser = esp3::StreamParser::default();
            parser.push(&bytes);
            let mut frames = Vec::new();
            while let Some(item) = parser.next_item() {
                if let esp3::StreamItem::Frame(f) = item {
                    frames.push(f.to_vec());
                }
            }
            if frames.is_empty() {
                return Err("no ESP3 frame found (no 0x55 sync with a valid header)".into());
            }
            frames
        }
        Err(e) => return Err(e.to_string()),
    };
    let options = EngineOptions {
        default_device,
        report_first_send: false,
        ..EngineOptions::default()
    };
    let mut engine = Engine::new(registry, options);
    if let Some(runner) = plugins {
        engine = engine.with_plugins(runner);
    }
    let mut out = Vec::new();
    let now = Instant::now();
    for frame in &frames {
        engine
            .decode(
                frame,
                &Reception::default(),
                SystemTime::now(),
                now,
                &mut out,
            )
            .map_err(|e| e.to_string())?;
    }
    if let Some(error) = first_error(&out) {
        return Err(error);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codecs::enocean::secure::{Key, Slf};
    use crate::registry::Security;

    const KEY: &str = "456E4F6365616E20476D62482E313300";

    fn frame(rorg: u8, payload: &[u8], sender: u32, dbm: u8) -> Vec<u8> {
        let mut data = vec![rorg];
        data.extend_from_slice(payload);
        data.extend_from_slice(&sender.to_be_bytes());
        data.push(0x00);
        esp3::encode(0x01, &data, &[1, 0xff, 0xff, 0xff, 0xff, dbm, 0])
    }

    fn device(eurid: u32, eep: Option<&str>, secure: bool) -> (u32, Arc<Device>) {
        let security = secure.then(|| Security {
            key: Key::from_hex(KEY).unwrap(),
            slf: Slf(0x8b),
            rlc: 0x100,
        });
        let d = Device {
            eurid,
            id: id_hex(eurid),
            eep: eep.map(str::to_string),
            friendly_id: format!("dev {eurid:x}"),
            location: "lab".into(),
            custom_tag: "t".into(),
            security,
            fields: Default::default(),
        };
        (eurid, Arc::new(d))
    }

    fn engine() -> Engine {
        let devices = [
            device(0x0180a1b2, Some("a5-02-05"), false),
            device(0x0180a1b3, Some("a5-99-99"), false),
            device(0x0180a1b4, Some("d2-14-41"), false),
            device(0x01020304, Some("a5-02-05"), true),
        ]
        .into_iter()
        .collect::<std::collections::HashMap<_, _>>();
        Engine::new(Registry::from_devices(devices), EngineOptions::default())
    }

    fn run(engine: &mut Engine, frame: &[u8], gateway: &str) -> Vec<Output> {
        let mut out = Vec::new();
        let reception = Reception {
            gateway: Some(gateway),
            ..Reception::default()
        };
        engine
            .decode(
                frame,
                &reception,
                SystemTime::now(),
                Instant::now(),
                &mut out,
            )
            .unwrap();
        out
    }

    fn codes(out: &[Output]) -> Vec<String> {
        out.iter()
            .filter(|o| o.kind == Kind::Event)
            .flat_map(|o| {
                let events = o.body["meta"]["events"].as_object().unwrap().clone();
                events
                    .into_values()
                    .flat_map(|l| l.as_array().unwrap().clone())
                    .map(|e| e["code"].as_str().unwrap().to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn secure_frame(rlc: u32) -> Vec<u8> {
        let key = Key::from_hex(KEY).unwrap();
        let payload =
            secure::encrypt(0x31, 0xa5, &[0x00, 0x00, 0x80, 0x08], &key, Slf(0x8b), rlc).unwrap();
        frame(0x31, &payload, 0x01020304, 0x40)
    }

    #[test]
    fn first_telegram_raises_first_time_send_then_telemetry_only() {
        let mut e = engine();
        let f = frame(0xa5, &[0, 0, 0x80, 0x08], 0x0180a1b2, 0x45);
        let out = run(&mut e, &f, "gw1");
        assert_eq!(codes(&out), ["FIRST_TIME_SEND"]);
        let telemetry = out.last().unwrap();
        assert_eq!(telemetry.kind, Kind::Telemetry);
        assert_eq!(telemetry.body["sensor"]["friendlyId"], "dev 180a1b2");
        assert_eq!(telemetry.body["telemetry"]["data"][0]["value"], 19.92);
        assert_eq!(telemetry.body["raw"]["gateway"], "gw1");
        let again = run(&mut e, &f, "gw1");
        assert_eq!(again.len(), 1);
        assert_eq!(
            again[0].body["telemetry"]["meta"]["stats"][0]["totalTelegramCount"],
            2
        );
    }

    #[test]
    fn unknown_devices_and_unknown_eeps_are_events_not_guesses() {
        let mut e = engine();
        let out = run(
            &mut e,
            &frame(0xa5, &[0, 0, 0x80, 0x08], 0x0999_0001, 0x45),
            "gw1",
        );
        assert_eq!(codes(&out), ["UNKNOWN_DEVICE"]);
        assert!(out.iter().all(|o| o.kind == Kind::Event));
        let teach_in = run(
            &mut e,
            &frame(0xa5, &[0x08, 0x28, 0x0d, 0x80], 0x0999_0002, 0x45),
            "gw1",
        );
        let message = teach_in[0].body["meta"]["events"]["health"][0]["message"]
            .as_str()
            .unwrap();
        assert!(message.contains("a5-02-05"), "{message}");
        let out = run(
            &mut e,
            &frame(0xa5, &[0, 0, 0x80, 0x08], 0x0180a1b3, 0x45),
            "gw1",
        );
        assert_eq!(codes(&out), ["FIRST_TIME_SEND", "EEP_NOT_FOUND_ERROR"]);
        let out = run(&mut e, &frame(0xd2, &[0x01], 0x0180a1b4, 0x45), "gw1");
        assert_eq!(codes(&out), ["FIRST_TIME_SEND", "EEP_DECODE_ERROR"]);
    }

    #[test]
    fn secure_device_decodes_then_replay_and_flipped_bit_are_security_events() {
        let mut e = engine();
        let good = secure_frame(0x105);
        let out = run(&mut e, &good, "gw1");
        let telemetry = out.last().unwrap();
        assert_eq!(telemetry.kind, Kind::Telemetry, "{out:#?}");
        assert_eq!(telemetry.body["telemetry"]["data"][0]["value"], 19.92);
        assert_eq!(telemetry.body["raw"]["rlc"], "000105");
        assert_eq!(codes(&run(&mut e, &good, "gw1")), ["RLC_REPLAY"]);
        let mut flipped = secure_frame(0x106);
        flipped[8] ^= 0x01; // a data byte, then fix the CRC so only the CMAC can tell
        let n = flipped.len();
        flipped[n - 1] = esp3::crc8(&flipped[6..n - 1]);
        assert_eq!(
            codes(&run(&mut e, &flipped, "gw1")),
            ["MAC_VALIDATION_ERROR"]
        );
        assert_eq!(
            run(&mut e, &secure_frame(0x106), "gw1")
                .last()
                .unwrap()
                .kind,
            Kind::Telemetry,
            "a failure does not move the rolling code"
        );
        let plain = frame(0xa5, &[0, 0, 0x80, 0x08], 0x01020304, 0x45);
        assert_eq!(
            codes(&run(&mut e, &plain, "gw1")),
            ["DEVICE_SEND_NOW_UNSECURE"]
        );
    }

    #[test]
    fn statistics_count_per_device_and_per_gateway_with_duplicates() {
        let mut e = engine();
        let f = frame(0xa5, &[0, 0, 0x80, 0x08], 0x0180a1b2, 0x45);
        let mut out = Vec::new();
        let reception = Reception {
            gateway: Some("gw1"),
            others: vec![(Some("gw2"), Some(-70)), (Some("gw3"), Some(-80))],
            route: Some("esp3"),
        };
        e.decode(&f, &reception, SystemTime::now(), Instant::now(), &mut out)
            .unwrap();
        let raw = &out.last().unwrap().body["raw"];
        assert_eq!(raw["gateways"].as_array().unwrap().len(), 3);
        let garbage = Reception {
            gateway: Some("gw2"),
            route: Some("esp3_garbage"),
            ..Reception::default()
        };
        assert!(
            e.decode(b"xx", &garbage, SystemTime::now(), Instant::now(), &mut out)
                .is_err()
        );
        assert_eq!(e.gateway_stats()["gw1"].processed, 1);
        assert_eq!(e.gateway_stats()["gw2"].duplicates, 1);
        assert_eq!(e.gateway_stats()["gw2"].not_processed, 1);
        assert_eq!(e.gateway_stats()["gw3"].total, 1);
        let mut stats = Vec::new();
        e.stats_records(SystemTime::now(), &mut stats);
        assert_eq!(stats.len(), 4, "one device, three gateways");
        assert!(stats.iter().all(|s| s.kind == Kind::Stats));
        assert_eq!(stats[0].body["meta"]["stats"]["succesfullyProcessed"], 1);
        assert_eq!(stats[2].body["stats"]["duplicates"], 1);
    }

    #[test]
    fn a_chain_that_never_completes_becomes_an_event() {
        let mut e = engine();
        let first = frame(
            0x40,
            &[0x40, 0x00, 0x09, 0xd2, 0x9f, 0xce, 0x80],
            0x0180a1b4,
            0x4d,
        );
        let out = run(&mut e, &first, "gw1");
        assert_eq!(codes(&out), ["FIRST_TIME_SEND"], "the part waits");
        let mut expired = Vec::new();
        e.expire_chains(
            Instant::now() + Duration::from_secs(10),
            SystemTime::now(),
            &mut expired,
        );
        assert_eq!(codes(&expired), ["CHAIN_INCOMPLETE"]);
    }

    #[test]
    fn random_frames_never_panic() {
        let mut e = engine();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 20) as usize;
            let rorg = [
                0xa5, 0xd2, 0xf6, 0xd5, 0x40, 0x31, 0x30, 0x35, 0xd0, 0xd4, 0xa6,
            ][(seed >> 8) as usize % 11];
            let payload: Vec<u8> = (0..len).map(|i| (seed >> (i % 8 * 8)) as u8).collect();
            let sender =
                [0x0180a1b2, 0x0180a1b4, 0x01020304, 0x0999_0001][(seed >> 16) as usize % 4];
            let f = frame(rorg, &payload, sender, 0x45);
            let mut out = Vec::new();
            let _ = e.decode(
                &f,
                &Reception::default(),
                SystemTime::now(),
                Instant::now(),
                &mut out,
            );
        }
    }
}
