//! The record that flows through a pipeline, and its delivery token.
//!
//! A source makes a [`Record`] per frame it receives. Stages add to its `body` in place; every sink the
//! record reaches serializes it once. The [`Delivery`] token travels with the record and tells the source,
//! exactly once, whether every sink durably took it ([`Outcome::Delivered`]), whether it was rejected and
//! parked in a dead-letter sink ([`Outcome::Rejected`]), or whether it could not be stored
//! ([`Outcome::Failed`]). Only then may the source acknowledge the device or broker.

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use serde_json::{Map, Value};
use tokio::sync::oneshot;

/// What a record holds once decoded. Sinks use it to pick a topic, a table or a layout.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Not decoded yet: only `raw` is meaningful.
    Raw,
    /// Time series readings (Efento `/m`).
    Measurements,
    /// Device self-description (Efento `/i`).
    DeviceInfo,
    /// Device configuration report (Efento `/c`).
    Config,
    /// Generic telemetry (EnOcean, MQTT payloads).
    Telemetry,
    /// Radio or link signal reports.
    Signal,
    /// Something that happened (teach-in, security errors, ...).
    Event,
    /// Periodic counters of a device or gateway.
    Stats,
    /// A rejected record on its way to a dead-letter sink; the body is the dead-letter envelope.
    DeadLetter,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Raw => "raw",
            Kind::Measurements => "measurements",
            Kind::DeviceInfo => "device_info",
            Kind::Config => "config",
            Kind::Telemetry => "telemetry",
            Kind::Signal => "signal",
            Kind::Event => "event",
            Kind::Stats => "stats",
            Kind::DeadLetter => "dead_letter",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Transport facts about where a frame came from. A source fills what it knows; the rest stays empty.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Origin {
    /// The peer's address (CoAP client, websocket gateway, broker).
    pub peer: Option<SocketAddr>,
    /// Request path (CoAP Uri-Path joined with `/`) or topic.
    pub path: Option<Arc<str>>,
    /// What the source's configuration says arrives on that path (`measurements`, `device_info`, ...).
    pub route: Option<Arc<str>>,
    /// The gateway that relayed the frame, if any.
    pub gateway: Option<Arc<str>>,
    /// Received signal strength in dBm, if the transport reports it.
    pub rssi: Option<i32>,
    /// A device token carried in a transport option (Efento cloud token as a CoAP option).
    pub token: Option<String>,
    /// Other receptions of the same item folded into this record by a dedupe stage in merge mode
    /// (the same radio telegram heard by several gateways). This record's own gateway is not repeated.
    pub receptions: Vec<Reception>,
}

/// One more reception of an item: who relayed it, how well, and when.
#[derive(Debug, Clone, PartialEq)]
pub struct Reception {
    pub gateway: Option<Arc<str>>,
    pub rssi: Option<i32>,
    pub received_at: SystemTime,
}

/// The unit of data in a pipeline (see DESIGN.md, "The record").
#[derive(Debug, Clone)]
pub struct Record {
    /// Name of the source in pipeline.toml.
    pub source: Arc<str>,
    pub received_at: SystemTime,
    pub origin: Origin,
    /// The frame as received.
    pub raw: Bytes,
    /// Set by decode: Efento serial, EnOcean sender id, MQTT device id.
    pub device: Option<String>,
    pub kind: Kind,
    /// The decoded document that sinks write.
    pub body: Map<String, Value>,
    /// The readings of a time-series record, typed. A codec that yields many rows per frame fills these
    /// instead of a JSON array in `body`; the document form shows them as `measurements` (see
    /// [`Reading`]), and the Parquet sink writes them without going through JSON.
    pub readings: Vec<Reading>,
    pub delivery: Delivery,
    /// Where a sink sends this record if it refuses it for good (the flow's dead-letter sink). Set by
    /// the flow as the record leaves it; see [`Record::refuse`].
    pub dead_letter: Option<Arc<DeadLetterRoute>>,
}

/// A flow's dead-letter sink, as a record carries it to the sinks it reaches.
#[derive(Debug, Clone)]
pub struct DeadLetterRoute {
    pub flow: Arc<str>,
    pub tx: tokio::sync::mpsc::Sender<Record>,
}

/// One reading of a time series: the row every telemetry kind shares (Parquet's long form, the
/// `measurements` entries of a document: `{channel, type, ts, value, unit, raw?, meta?, error_code?,
/// type_code?}`).
///
/// Typed because frames expand to many rows (an Efento binary channel gives one per grid point):
/// building a JSON map per row cost more than everything else in decoding (BENCHMARKS.md).
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// 1-based channel or slot, if the device has channels.
    pub channel: Option<u32>,
    /// What is measured (`temperature`, `ok_alarm`, ...).
    pub key: Cow<'static, str>,
    /// Unix time of the reading, in seconds.
    pub ts: i64,
    pub value: ReadingValue,
    pub unit: Option<Cow<'static, str>>,
    /// The raw integer the value was scaled from.
    pub raw: Option<i64>,
    /// A metadata remainder sent with the value (e.g. a calibration status).
    pub meta: Option<i64>,
    /// A sensor error code sent instead of a value (then `value` is null).
    pub error_code: Option<i64>,
    /// The numeric type of a reading whose type the decoder does not know (`key` is then "unknown").
    pub type_code: Option<i64>,
}

/// The value of a [`Reading`].
#[derive(Debug, Clone, PartialEq)]
pub enum ReadingValue {
    Null,
    Int(i64),
    Float(f64),
    /// A state such as "ok" or "alarm".
    Text(Cow<'static, str>),
}

impl serde::Serialize for ReadingValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ReadingValue::Null => s.serialize_unit(),
            ReadingValue::Int(v) => s.serialize_i64(*v),
            ReadingValue::Float(v) => s.serialize_f64(*v),
            ReadingValue::Text(v) => s.serialize_str(v),
        }
    }
}

impl serde::Serialize for Reading {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let optional = [self.raw, self.meta, self.error_code, self.type_code];
        let len = 4 + usize::from(self.channel.is_some()) + optional.iter().flatten().count();
        let mut map = s.serialize_map(Some(len))?;
        if let Some(channel) = self.channel {
            map.serialize_entry("channel", &channel)?;
        }
        map.serialize_entry("type", &self.key)?;
        map.serialize_entry("ts", &self.ts)?;
        map.serialize_entry("value", &self.value)?;
        map.serialize_entry("unit", &self.unit)?;
        for (name, v) in ["raw", "meta", "error_code", "type_code"]
            .iter()
            .zip(optional)
        {
            if let Some(v) = v {
                map.serialize_entry(name, &v)?;
            }
        }
        map.end()
    }
}

impl Reading {
    /// The reading as a JSON object, the same as its serialization, built directly (no serializer
    /// in between: schema validation builds one per reading on the data path).
    pub fn to_json(&self) -> Value {
        let mut map = Map::with_capacity(9);
        if let Some(channel) = self.channel {
            map.insert("channel".into(), Value::from(channel));
        }
        map.insert("type".into(), Value::String(self.key.to_string()));
        map.insert("ts".into(), Value::from(self.ts));
        let value = match &self.value {
            ReadingValue::Null => Value::Null,
            ReadingValue::Int(v) => Value::from(*v),
            // A float JSON cannot hold (NaN) serializes as null too.
            ReadingValue::Float(v) => Value::from(*v),
            ReadingValue::Text(v) => Value::String(v.to_string()),
        };
        map.insert("value".into(), value);
        map.insert(
            "unit".into(),
            self.unit
                .as_ref()
                .map_or(Value::Null, |u| Value::String(u.to_string())),
        );
        let optional = [self.raw, self.meta, self.error_code, self.type_code];
        for (name, v) in ["raw", "meta", "error_code", "type_code"]
            .iter()
            .zip(optional)
        {
            if let Some(v) = v {
                map.insert((*name).into(), Value::from(v));
            }
        }
        Value::Object(map)
    }
}

/// The readings as the JSON array a document shows under [`READINGS_FIELD`].
pub fn readings_json(readings: &[Reading]) -> Value {
    Value::Array(readings.iter().map(Reading::to_json).collect())
}

/// The field under which a document shows a record's [`Reading`]s.
pub const READINGS_FIELD: &str = "measurements";

/// Whether a document shows `measurements`: when there are readings, and always for a measurements
/// record (an empty frame shows `[]`), unless the body already has that field.
pub fn shows_readings(kind: Kind, body: &Map<String, Value>, readings: &[Reading]) -> bool {
    (!readings.is_empty() || kind == Kind::Measurements) && !body.contains_key(READINGS_FIELD)
}

/// `body` with the readings added as `measurements`: the whole document as one JSON object, for
/// what needs it as a value (the CLI, schema validation) rather than serialized.
pub fn document_value(
    kind: Kind,
    body: &Map<String, Value>,
    readings: &[Reading],
) -> Map<String, Value> {
    let mut doc = body.clone();
    if shows_readings(kind, body, readings) {
        doc.insert(READINGS_FIELD.to_string(), readings_json(readings));
    }
    doc
}

impl Record {
    /// A record as a source makes it: raw bytes, no body yet.
    pub fn new(source: Arc<str>, origin: Origin, raw: Bytes, delivery: Delivery) -> Self {
        Record {
            source,
            received_at: SystemTime::now(),
            origin,
            raw,
            device: None,
            kind: Kind::Raw,
            body: Map::new(),
            readings: Vec::new(),
            delivery,
            dead_letter: None,
        }
    }

    /// Turns this record into a dead-letter record: the body becomes the dead-letter envelope
    /// (error, stage, flow, source, time, raw bytes) and the delivery token remembers the rejection,
    /// so the source answers "rejected" (CoAP 4.00) once the dead-letter sink has stored it.
    pub fn into_dead_letter(mut self, flow: &str, stage: &str, error: &str) -> Record {
        self.delivery.reject(error);
        self.dead_letter = None;
        let mut body = Map::new();
        body.insert("error".into(), Value::String(error.to_string()));
        body.insert("stage".into(), Value::String(stage.to_string()));
        body.insert("flow".into(), Value::String(flow.to_string()));
        body.insert("source".into(), Value::String(self.source.to_string()));
        if let Some(path) = &self.origin.path {
            body.insert("path".into(), Value::String(path.to_string()));
        }
        if let Some(peer) = &self.origin.peer {
            body.insert("peer".into(), Value::String(peer.to_string()));
        }
        if let Some(gateway) = &self.origin.gateway {
            body.insert("gateway".into(), Value::String(gateway.to_string()));
        }
        if let Some(device) = &self.device {
            body.insert("device".into(), Value::String(device.clone()));
        }
        body.insert(
            "received_at".into(),
            Value::String(rfc3339(self.received_at)),
        );
        body.insert(
            "rejected_at".into(),
            Value::String(rfc3339(SystemTime::now())),
        );
        body.insert("raw_hex".into(), Value::String(hex::encode(&self.raw)));
        body.insert("raw_len".into(), Value::from(self.raw.len()));
        self.body = body;
        self.readings.clear();
        self.kind = Kind::DeadLetter;
        self
    }
}

impl Record {
    /// A sink refuses this record for good (it can never take it: too large, a 4xx from a server).
    /// The record goes to its flow's dead-letter sink with the reason, as stage `sink:NAME`; without
    /// one it is logged and counted, and its source hears "rejected" either way (never "stored").
    /// The dead letter is sent from a task of its own, so a sink that is also its flow's dead-letter
    /// sink cannot block on its own queue.
    pub fn refuse(mut self, sink: &str, reason: &str) {
        let stage = format!("sink:{sink}");
        match self.dead_letter.take() {
            Some(route) => {
                let dead = self.into_dead_letter(&route.flow, &stage, reason);
                crate::metrics::counter("dead_lettered_records_total", &[("flow", &route.flow)])
                    .inc();
                let tx = route.tx.clone();
                match tx.try_send(dead) {
                    Ok(()) => {}
                    Err(tokio::sync::mpsc::error::TrySendError::Full(dead)) => {
                        tokio::spawn(async move {
                            // A closed dead-letter sink drops it, and the source hears "failed".
                            let _ = tx.send(dead).await;
                        });
                    }
                    Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
            None => {
                crate::metrics::counter(
                    "component_discarded_events_total",
                    &[
                        ("component", sink),
                        ("reason", "refused_without_dead_letter"),
                    ],
                )
                .inc();
                tracing::warn!(sink, reason, source = %self.source, device = ?self.device, raw_hex = %hex::encode(&self.raw), "record refused by the sink (its flow has no dead_letter sink)");
                self.delivery.reject(reason);
                self.delivery.delivered();
            }
        }
    }
}

/// RFC 3339 UTC with milliseconds, the way every document of the project prints times.
pub fn rfc3339(t: SystemTime) -> String {
    let mut out = String::with_capacity(24);
    write_rfc3339(t, &mut out);
    out
}

/// Appends `t` as [`rfc3339`] does (UTC, milliseconds, `Z`) to `out`, without allocating when it
/// has room: every document carries one, so the data path formats a lot of them.
pub fn write_rfc3339(t: SystemTime, out: &mut String) {
    /// 10000-01-01T00:00:00Z: four-digit years only on the fast path.
    const YEAR_10000: u64 = 253_402_300_800;
    let since = t.duration_since(std::time::UNIX_EPOCH).ok();
    let Some(since) = since.filter(|d| d.as_secs() < YEAR_10000) else {
        // Before 1970 or after 9999: chrono's own conversion from SystemTime panics far out of
        // range, so go through its checked constructor.
        let (secs, nanos) = match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => (i64::try_from(d.as_secs()).ok(), d.subsec_nanos()),
            Err(e) => {
                let d = e.duration();
                match (i64::try_from(d.as_secs()), d.subsec_nanos()) {
                    (Ok(s), 0) => (Some(-s), 0),
                    (Ok(s), n) => (Some(-s - 1), 1_000_000_000 - n),
                    (Err(_), _) => (None, 0),
                }
            }
        };
        match secs.and_then(|s| chrono::DateTime::<chrono::Utc>::from_timestamp(s, nanos)) {
            Some(at) => out.push_str(&at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            None => out.push_str(if secs.is_some_and(|s| s < 0) {
                "-262143-01-01T00:00:00.000Z"
            } else {
                "+262142-12-31T23:59:59.999Z"
            }),
        }
        return;
    };
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let of_day = secs % 86_400;
    let mut digits = |value: u64, width: usize, then: Option<char>| {
        let mut buf = [b'0'; 4];
        let mut v = value;
        for slot in buf[..width].iter_mut().rev() {
            *slot = b'0' + (v % 10) as u8;
            v /= 10;
        }
        out.extend(buf[..width].iter().map(|&b| char::from(b)));
        if let Some(c) = then {
            out.push(c);
        }
    };
    digits(year, 4, Some('-'));
    digits(month, 2, Some('-'));
    digits(day, 2, Some('T'));
    digits(of_day / 3600, 2, Some(':'));
    digits(of_day / 60 % 60, 2, Some(':'));
    digits(of_day % 60, 2, Some('.'));
    digits(u64::from(since.subsec_millis()), 3, Some('Z'));
}

/// The proleptic Gregorian (year, month, day) of a count of days since 1970-01-01, by the
/// era-of-400-years method (each era has 146,097 days and starts on March 1st).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// What the source of a record learns once every part of it is settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every sink it reached has durably taken it (or it was dropped on purpose, e.g. a duplicate).
    Delivered { device: Option<String> },
    /// A stage rejected it and the dead-letter sink stored it (or the flow has none and logged it).
    Rejected {
        reason: String,
        device: Option<String>,
    },
    /// A sink could not store it, or it was lost before any sink took it. The sender should retry.
    Failed { reason: String },
}

#[derive(Default)]
struct State {
    failed: Option<String>,
    rejected: Option<String>,
    device: Option<String>,
    tx: Option<oneshot::Sender<Outcome>>,
    /// Tokens of records merged into this one (duplicates): they share its fate.
    followers: Vec<Delivery>,
    /// Where handles read the outcome once it is known (made by the first [`Delivery::handle`]).
    fate: Option<Arc<AtomicU8>>,
    /// Told the outcome once it is known (e.g. a shared dedupe store marking the key stored).
    watchers: Vec<SettleCallback>,
    /// Where the time from the token's creation to the outcome goes ([`Delivery::timed`]).
    timer: Option<(std::time::Instant, crate::metrics::Histogram)>,
}

type SettleCallback = Box<dyn FnOnce(&Outcome) + Send>;

struct Shared {
    state: Mutex<State>,
}

impl Drop for Shared {
    // The last part of a record settled: tell the source.
    fn drop(&mut self) {
        let state = match self.state.get_mut() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(tx) = state.tx.take() {
            let outcome = if let Some(reason) = state.failed.take() {
                Outcome::Failed { reason }
            } else if let Some(reason) = state.rejected.take() {
                Outcome::Rejected {
                    reason,
                    device: state.device.take(),
                }
            } else {
                Outcome::Delivered {
                    device: state.device.take(),
                }
            };
            settle_followers(std::mem::take(&mut state.followers), &outcome);
            if let Some(fate) = &state.fate {
                fate.store(Fate::of(&outcome) as u8, Ordering::Release);
            }
            for watcher in std::mem::take(&mut state.watchers) {
                watcher(&outcome);
            }
            if let Some((started, histogram)) = state.timer.take() {
                histogram.observe(started.elapsed());
            }
            let _ = tx.send(outcome);
        }
    }
}

/// How a record went, as far as a [`DeliveryHandle`] can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Fate {
    /// Still on its way.
    Pending = 0,
    Delivered = 1,
    Rejected = 2,
    Failed = 3,
    /// Nobody tracks it (a detached token): it counts as delivered.
    Untracked = 4,
}

impl Fate {
    fn of(outcome: &Outcome) -> Fate {
        match outcome {
            Outcome::Delivered { .. } => Fate::Delivered,
            Outcome::Rejected { .. } => Fate::Rejected,
            Outcome::Failed { .. } => Fate::Failed,
        }
    }

    fn from_u8(v: u8) -> Fate {
        match v {
            1 => Fate::Delivered,
            2 => Fate::Rejected,
            3 => Fate::Failed,
            4 => Fate::Untracked,
            _ => Fate::Pending,
        }
    }
}

fn settle_followers(followers: Vec<Delivery>, outcome: &Outcome) {
    for follower in followers {
        match outcome {
            Outcome::Failed { reason } => follower.failed(reason.clone()),
            // A duplicate of a record that was stored, or parked in dead letter, needs no storing itself.
            Outcome::Delivered { .. } | Outcome::Rejected { .. } => follower.delivered(),
        }
    }
}

/// A share of a record's delivery. Every clone is one part that must be settled, by
/// [`Delivery::delivered`] or [`Delivery::failed`]; a part dropped unsettled counts as failed, so a
/// record lost on the way can never look delivered. When the last part is settled, the source's
/// [`DeliveryWatch`] gets the [`Outcome`].
pub struct Delivery {
    shared: Option<Arc<Shared>>,
    settled: bool,
}

/// The source's end of a delivery token.
pub type DeliveryWatch = oneshot::Receiver<Outcome>;

impl Delivery {
    /// A token whose outcome the source waits for.
    pub fn new() -> (Delivery, DeliveryWatch) {
        Self::with_timer(None)
    }

    fn with_timer(
        timer: Option<(std::time::Instant, crate::metrics::Histogram)>,
    ) -> (Delivery, DeliveryWatch) {
        let (tx, rx) = oneshot::channel();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                tx: Some(tx),
                timer,
                ..State::default()
            }),
        });
        (
            Delivery {
                shared: Some(shared),
                settled: false,
            },
            rx,
        )
    }

    /// [`Delivery::new`], with the time from now to the outcome observed in `histogram` (a source's
    /// acknowledgement latency).
    pub fn timed(histogram: &crate::metrics::Histogram) -> (Delivery, DeliveryWatch) {
        Self::with_timer(Some((std::time::Instant::now(), histogram.clone())))
    }

    /// A token nobody waits for (e.g. a non-confirmable CoAP request, or tests).
    pub fn detached() -> Delivery {
        Delivery {
            shared: None,
            settled: false,
        }
    }

    fn with_state(&self, f: impl FnOnce(&mut State)) {
        if let Some(shared) = &self.shared {
            let mut guard = match shared.state.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            f(&mut guard);
        }
    }

    /// This part was durably taken by its sink.
    pub fn delivered(mut self) {
        self.settled = true;
    }

    /// This part could not be stored; the whole record counts as failed.
    pub fn failed(mut self, reason: impl Into<String>) {
        self.settled = true;
        let reason = reason.into();
        self.with_state(|s| {
            s.failed.get_or_insert(reason);
        });
    }

    /// Marks the record as rejected (on its way to dead letter). It still needs to be settled.
    pub fn reject(&self, reason: &str) {
        self.with_state(|s| {
            s.rejected.get_or_insert_with(|| reason.to_string());
        });
    }

    /// Tells the source which device the record came from (known only after decode).
    pub fn set_device(&self, device: &str) {
        self.with_state(|s| {
            if s.device.is_none() {
                s.device = Some(device.to_string());
            }
        });
    }

    /// Makes `other` (the token of a duplicate folded into this record) share this record's fate: it is
    /// settled as delivered when this record is, failed when this record fails. The duplicate's source
    /// thus learns "stored" only once the first copy is stored, never before.
    pub fn absorb(&self, other: Delivery) {
        match &self.shared {
            Some(shared) => {
                let mut guard = match shared.state.lock() {
                    Ok(g) => g,
                    Err(poisoned) => poisoned.into_inner(),
                };
                guard.followers.push(other);
            }
            // Nobody waits for this record, so nothing will report its fate: the duplicate is
            // settled now, as a dropped duplicate always was.
            None => other.delivered(),
        }
    }

    /// A handle that lets a later duplicate join this record's fate while the record is still on its way
    /// (see [`DeliveryHandle::absorb`]), and tells how it went afterwards ([`DeliveryHandle::fate`]),
    /// without holding the record's delivery open.
    pub fn handle(&self) -> DeliveryHandle {
        let Some(shared) = &self.shared else {
            return DeliveryHandle::default();
        };
        let mut fate = None;
        self.with_state(|s| {
            fate = Some(
                s.fate
                    .get_or_insert_with(|| Arc::new(AtomicU8::new(Fate::Pending as u8)))
                    .clone(),
            );
        });
        DeliveryHandle {
            shared: Some(Arc::downgrade(shared)),
            fate,
        }
    }

    /// Calls `f` with the outcome once the record is settled. Returns false (and never calls `f`) for
    /// a detached token, whose outcome nobody learns.
    pub fn on_settle(&self, f: impl FnOnce(&Outcome) + Send + 'static) -> bool {
        let mut f = Some(f);
        self.with_state(|s| {
            if let Some(f) = f.take() {
                s.watchers.push(Box::new(f));
            }
        });
        f.is_none()
    }

    /// Whether a source waits for this token.
    pub fn is_watched(&self) -> bool {
        self.shared.is_some()
    }
}

/// A weak reference to a record's delivery, kept by a dedupe stage after the record moved on.
#[derive(Debug, Clone, Default)]
pub struct DeliveryHandle {
    shared: Option<std::sync::Weak<Shared>>,
    fate: Option<Arc<AtomicU8>>,
}

impl DeliveryHandle {
    /// How the record went so far: [`Fate::Untracked`] for a detached token.
    pub fn fate(&self) -> Fate {
        match &self.fate {
            Some(fate) => Fate::from_u8(fate.load(Ordering::Acquire)),
            None => Fate::Untracked,
        }
    }

    /// The fate of a record whose delivery is gone: it is being written in the last part's drop,
    /// which takes a moment after the last strong reference went away.
    fn settled_fate(&self) -> Fate {
        for _ in 0..10_000 {
            match self.fate() {
                Fate::Pending => std::thread::yield_now(),
                fate => return fate,
            }
        }
        self.fate()
    }

    /// If the record is still on its way, `other` shares its fate (as with [`Delivery::absorb`]).
    /// If it has been settled already, `other` is settled the same way: delivered after a delivered or
    /// rejected first copy, failed after a failed one (a dedupe stage lets such a copy through instead,
    /// see [`DeliveryHandle::fate`]).
    pub fn absorb(&self, other: Delivery) {
        match self.shared.as_ref().and_then(std::sync::Weak::upgrade) {
            Some(shared) => {
                let mut guard = match shared.state.lock() {
                    Ok(g) => g,
                    Err(poisoned) => poisoned.into_inner(),
                };
                guard.followers.push(other);
            }
            None => match self.settled_fate() {
                Fate::Failed => other.failed("the first copy failed"),
                _ => other.delivered(),
            },
        }
    }
}

impl Clone for Delivery {
    fn clone(&self) -> Self {
        Delivery {
            shared: self.shared.clone(),
            settled: false,
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if !self.settled {
            self.with_state(|s| {
                s.failed
                    .get_or_insert_with(|| "dropped before a sink stored it".to_string());
            });
        }
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Shared")
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("watched", &self.shared.is_some())
            .field("settled", &self.settled)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_formatted_as_chrono_formats_them() {
        use std::time::{Duration, UNIX_EPOCH};
        let chrono = |t: SystemTime| {
            chrono::DateTime::<chrono::Utc>::from(t)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut times: Vec<SystemTime> = [
            0,
            951_782_400, // 2000-02-29
            4_107_542_399,
            253_402_300_799,
            253_402_300_800,
        ]
        .iter()
        .map(|s| UNIX_EPOCH + Duration::from_millis(s * 1000 + 999))
        .collect();
        times.push(UNIX_EPOCH - Duration::from_millis(1500));
        for _ in 0..20_000 {
            // xorshift: times spread over years 1970 to about 10400, to the nanosecond
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = Duration::new(seed % 265_000_000_000, (seed >> 32) as u32 % 1_000_000_000);
            times.push(UNIX_EPOCH + at);
        }
        for t in times {
            assert_eq!(rfc3339(t), chrono(t), "{t:?}");
        }
    }

    #[test]
    fn times_beyond_what_chrono_holds_are_formatted_without_panicking() {
        use std::time::{Duration, UNIX_EPOCH};
        // About year 3 million: a timestamp from a Kafka header or a device can say anything.
        let far = UNIX_EPOCH + Duration::from_millis(99_999_999_999_999_999);
        assert_eq!(rfc3339(far), "+262142-12-31T23:59:59.999Z");
        let before = UNIX_EPOCH - Duration::from_secs(9_000_000_000_000_000);
        assert_eq!(rfc3339(before), "-262143-01-01T00:00:00.000Z");
    }

    #[test]
    fn a_reading_built_as_json_is_its_serialization() {
        let base = Reading {
            channel: Some(2),
            key: "co2_gas".into(),
            ts: 1_736_935_262,
            value: ReadingValue::Int(812),
            unit: Some("ppm".into()),
            raw: Some(2436),
            meta: Some(0),
            error_code: None,
            type_code: None,
        };
        let variants = [
            base.clone(),
            Reading {
                channel: None,
                value: ReadingValue::Float(21.5),
                meta: None,
                ..base.clone()
            },
            Reading {
                value: ReadingValue::Float(f64::NAN),
                ..base.clone()
            },
            Reading {
                key: "ok_alarm".into(),
                value: ReadingValue::Text("alarm".into()),
                unit: None,
                raw: None,
                meta: None,
                ..base.clone()
            },
            Reading {
                key: "unknown".into(),
                value: ReadingValue::Null,
                raw: None,
                meta: None,
                error_code: Some(8_355_841),
                type_code: Some(99),
                ..base.clone()
            },
        ];
        for reading in &variants {
            let built = reading.to_json();
            assert_eq!(built, serde_json::to_value(reading).unwrap());
            // The same order of keys too, as sinks write them.
            assert_eq!(
                built.to_string(),
                serde_json::to_string(reading).unwrap(),
                "{reading:?}"
            );
        }
        assert_eq!(
            readings_json(&variants).as_array().map(Vec::len),
            Some(variants.len())
        );
    }

    #[test]
    fn a_timed_token_observes_its_latency_once_when_the_last_part_settles() {
        let histogram = crate::metrics::Histogram::default();
        let (d, mut rx) = Delivery::timed(&histogram);
        let d2 = d.clone();
        d.delivered();
        assert_eq!(histogram.count(), 0, "one part still open");
        d2.failed("sink down");
        assert_eq!(histogram.count(), 1);
        assert!(matches!(rx.try_recv(), Ok(Outcome::Failed { .. })));
    }

    #[test]
    fn all_parts_delivered_gives_delivered() {
        let (d, mut rx) = Delivery::new();
        let d2 = d.clone();
        d.set_device("282C024156AF");
        d.delivered();
        assert!(rx.try_recv().is_err(), "one part still open");
        d2.delivered();
        assert_eq!(
            rx.try_recv().unwrap(),
            Outcome::Delivered {
                device: Some("282C024156AF".into())
            }
        );
    }

    #[test]
    fn one_failed_part_fails_the_record() {
        let (d, mut rx) = Delivery::new();
        let d2 = d.clone();
        d.failed("disk full");
        d2.delivered();
        assert_eq!(
            rx.try_recv().unwrap(),
            Outcome::Failed {
                reason: "disk full".into()
            }
        );
    }

    #[test]
    fn absorbed_duplicate_shares_the_fate_of_the_first_copy() {
        let (first, mut first_rx) = Delivery::new();
        let (dup, mut dup_rx) = Delivery::new();
        first.absorb(dup);
        assert!(
            dup_rx.try_recv().is_err(),
            "not before the first copy is stored"
        );
        first.delivered();
        assert!(matches!(
            first_rx.try_recv().unwrap(),
            Outcome::Delivered { .. }
        ));
        assert!(matches!(
            dup_rx.try_recv().unwrap(),
            Outcome::Delivered { .. }
        ));

        let (first, _first_rx) = Delivery::new();
        let (dup, mut dup_rx) = Delivery::new();
        first.absorb(dup);
        first.failed("disk full");
        assert_eq!(
            dup_rx.try_recv().unwrap(),
            Outcome::Failed {
                reason: "disk full".into()
            }
        );

        let (dup, mut dup_rx) = Delivery::new();
        Delivery::detached().absorb(dup);
        assert!(matches!(
            dup_rx.try_recv().unwrap(),
            Outcome::Delivered { .. }
        ));
    }

    #[test]
    fn dropped_unsettled_part_counts_as_failed() {
        let (d, mut rx) = Delivery::new();
        drop(d);
        assert!(matches!(rx.try_recv().unwrap(), Outcome::Failed { .. }));
    }

    #[test]
    fn dead_lettered_record_is_rejected_with_reason_and_raw_bytes() {
        let (d, mut rx) = Delivery::new();
        let rec = Record::new(
            "efento".into(),
            Origin::default(),
            Bytes::from_static(b"\xde\xad"),
            d,
        );
        let dl = rec.into_dead_letter("f", "decode", "bad frame");
        assert_eq!(dl.kind, Kind::DeadLetter);
        assert_eq!(dl.body["raw_hex"], "dead");
        assert_eq!(dl.body["stage"], "decode");
        dl.delivery.delivered();
        assert_eq!(
            rx.try_recv().unwrap(),
            Outcome::Rejected {
                reason: "bad frame".into(),
                device: None
            }
        );
    }
}
