//! What the operator sees of the data going by (the HTTP API's latest-telemetry, device and gateway
//! views, and `sensorgate tap`): per device, the last value and time of each reading key, when it
//! was last heard, through which gateway and how loud, and its last few records in brief; per
//! gateway, when it was last heard and how many records it relayed; and a feed of every record's
//! document for whoever listens.
//!
//! A flow hands each record it routes to its sinks to [`Live::observe`]. That is on the data path,
//! so it only copies numbers and short strings under one short lock; a document is serialized for
//! the feed only while someone is subscribed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::codecs::enocean::engine::Counts;
use crate::codecs::enocean::id_hex;
use crate::document::Document;
use crate::record::{Kind, Reading, ReadingValue, Record};
use crate::registry::Devices;

/// Documents the feed holds for a slow listener before it skips ahead.
const FEED_CAPACITY: usize = 1024;

/// The last value of one reading key.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Latest {
    pub value: Value,
    /// Unix seconds of the reading (the device's time, or the time of reception).
    pub ts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

/// One record, in brief.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Brief {
    /// Unix milliseconds of reception.
    pub received_at: u64,
    pub kind: Kind,
    pub source: Arc<str>,
    /// Readings or data points it carried.
    pub values: usize,
}

/// What is known about one device.
#[derive(Debug, Clone, Serialize, Default)]
pub struct DeviceView {
    pub device: String,
    /// Unix milliseconds.
    pub last_seen: u64,
    pub records: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rssi: Option<i32>,
    /// By reading key (`temperature`, or `temperature/2` for channel 2 of a device with channels).
    pub latest: BTreeMap<String, Latest>,
    /// The newest last.
    pub recent: VecDeque<Brief>,
}

/// What is known about one gateway.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct GatewayView {
    pub gateway: String,
    pub last_seen: u64,
    pub records: u64,
    /// Distinct devices heard through it.
    pub devices: usize,
}

#[derive(Default)]
struct Inner {
    devices: HashMap<String, DeviceView>,
    gateways: HashMap<Arc<str>, (GatewayView, std::collections::HashSet<String>)>,
}

/// One esp3 decode stage's telegram statistics, as it last reported them.
struct FlowTelegrams {
    devices: Vec<(u32, Counts)>,
    gateways: Vec<(String, Counts)>,
    /// The registry the stage decodes with: the devices' names for the statistics.
    sensors: Arc<Devices>,
}

/// A gateway connected to a source now.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Connection {
    pub source: Arc<str>,
    /// The gateway's name (`?gateway=`) or MAC (Aruba), once known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    pub peer: String,
    /// `raw` or `aruba`.
    pub mode: &'static str,
    pub tls: bool,
    /// Unix milliseconds.
    pub connected_at: u64,
    /// Websocket messages received on this connection.
    pub messages: u64,
}

/// A connection's entry in the live view: removed when dropped (the connection ended).
pub struct ConnectionGuard {
    live: Arc<Live>,
    id: u64,
    messages: Arc<AtomicU64>,
}

impl ConnectionGuard {
    /// One more message received.
    pub fn message(&self) {
        self.messages.fetch_add(1, Ordering::Relaxed);
    }

    /// The gateway's name, once known (an Aruba AP names itself in its first message).
    pub fn set_gateway(&self, gateway: &str) {
        let mut connections = self.live.connections();
        if let Some((c, _)) = connections.get_mut(&self.id)
            && c.gateway.as_deref() != Some(gateway)
        {
            c.gateway = Some(gateway.to_string());
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.live.connections().remove(&self.id);
    }
}

/// The live view of a pipeline (see the module docs). Shared by its flows and the API.
pub struct Live {
    inner: Mutex<Inner>,
    /// By flow.
    telegrams: Mutex<HashMap<Arc<str>, FlowTelegrams>>,
    /// By connection number; messages counted in the guards.
    connections: Mutex<HashMap<u64, (Connection, Arc<AtomicU64>)>>,
    next_connection: AtomicU64,
    recent: usize,
    /// (flow, document as JSON text).
    feed: broadcast::Sender<(Arc<str>, Arc<str>)>,
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn reading_value(v: &ReadingValue) -> Value {
    match v {
        ReadingValue::Null => Value::Null,
        ReadingValue::Int(i) => Value::from(*i),
        ReadingValue::Float(f) => Value::from(*f),
        ReadingValue::Text(t) => Value::from(t.as_ref()),
    }
}

fn reading_key(r: &Reading) -> String {
    match r.channel {
        Some(channel) => format!("{}/{channel}", r.key),
        None => r.key.to_string(),
    }
}

impl Live {
    /// Keeps the last `recent` records of each device in brief.
    pub fn new(recent: usize) -> Arc<Live> {
        Arc::new(Live {
            inner: Mutex::new(Inner::default()),
            telegrams: Mutex::new(HashMap::new()),
            connections: Mutex::new(HashMap::new()),
            next_connection: AtomicU64::new(0),
            recent,
            feed: broadcast::channel(FEED_CAPACITY).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes note of a record of `flow` on its way to the sinks.
    pub fn observe(&self, flow: &Arc<str>, record: &Record) {
        if self.feed.receiver_count() > 0
            && let Ok(text) = serde_json::to_string(&Document(record))
        {
            let _ = self.feed.send((flow.clone(), Arc::from(text)));
        }
        let Some(device) = record.device.as_deref() else {
            return;
        };
        let at = millis(record.received_at);
        let received_s = (at / 1000) as i64;
        let mut inner = self.lock();
        if let Some(gateway) = &record.origin.gateway {
            let (view, heard) = inner.gateways.entry(gateway.clone()).or_default();
            if view.gateway.is_empty() {
                view.gateway = gateway.to_string();
            }
            view.last_seen = view.last_seen.max(at);
            view.records += 1;
            if !heard.contains(device) {
                heard.insert(device.to_string());
                view.devices = heard.len();
            }
        }
        let view = match inner.devices.get_mut(device) {
            Some(view) => view,
            None => inner
                .devices
                .entry(device.to_string())
                .or_insert_with(|| DeviceView {
                    device: device.to_string(),
                    ..DeviceView::default()
                }),
        };
        view.last_seen = view.last_seen.max(at);
        view.records += 1;
        if record.origin.gateway.is_some() {
            view.gateway.clone_from(&record.origin.gateway);
            view.rssi = record.origin.rssi;
        }
        let mut values = 0;
        for r in &record.readings {
            values += 1;
            let key = reading_key(r);
            if view.latest.get(&key).is_some_and(|l| l.ts > r.ts) {
                continue;
            }
            view.latest.insert(
                key,
                Latest {
                    value: reading_value(&r.value),
                    ts: r.ts,
                    unit: r.unit.as_deref().map(str::to_string),
                },
            );
        }
        // Documents that carry their data points as JSON (EnOcean telemetry: telemetry.data).
        if let Some(Value::Array(points)) = record.body.get("telemetry").and_then(|t| t.get("data"))
        {
            for point in points {
                let (Some(Value::String(key)), Some(value)) =
                    (point.get("key"), point.get("value"))
                else {
                    continue;
                };
                values += 1;
                view.latest.insert(
                    key.clone(),
                    Latest {
                        value: value.clone(),
                        ts: received_s,
                        unit: point
                            .get("unit")
                            .and_then(Value::as_str)
                            .map(str::to_string),
                    },
                );
            }
        }
        if self.recent > 0 {
            if view.recent.len() == self.recent {
                view.recent.pop_front();
            }
            view.recent.push_back(Brief {
                received_at: at,
                kind: record.kind,
                source: record.source.clone(),
                values,
            });
        }
    }

    /// One device's view.
    pub fn device(&self, device: &str) -> Option<DeviceView> {
        self.lock().devices.get(device).cloned()
    }

    /// Every device heard (or the `limit` most recently heard), most recently heard first, without
    /// their recent records.
    pub fn devices(&self, limit: Option<usize>) -> Vec<DeviceView> {
        let inner = self.lock();
        let mut order: Vec<&DeviceView> = inner.devices.values().collect();
        let newest_first = |a: &&DeviceView, b: &&DeviceView| {
            b.last_seen.cmp(&a.last_seen).then(a.device.cmp(&b.device))
        };
        if let Some(limit) = limit.filter(|l| *l < order.len()) {
            // Only the first `limit` are copied and sorted.
            order.select_nth_unstable_by(limit, newest_first);
            order.truncate(limit);
        }
        order.sort_by(newest_first);
        order
            .into_iter()
            .map(|d| DeviceView {
                recent: VecDeque::new(),
                ..d.clone()
            })
            .collect()
    }

    fn connections(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Connection, Arc<AtomicU64>)>> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes note of a gateway connection to `source`; it is listed until the guard is dropped.
    pub fn connect(
        self: &Arc<Self>,
        source: &Arc<str>,
        peer: std::net::SocketAddr,
        mode: &'static str,
        tls: bool,
        gateway: Option<&str>,
    ) -> ConnectionGuard {
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let messages = Arc::new(AtomicU64::new(0));
        let connection = Connection {
            source: source.clone(),
            gateway: gateway.map(str::to_string),
            peer: peer.to_string(),
            mode,
            tls,
            connected_at: millis(SystemTime::now()),
            messages: 0,
        };
        self.connections()
            .insert(id, (connection, messages.clone()));
        ConnectionGuard {
            live: self.clone(),
            id,
            messages,
        }
    }

    /// The gateways connected now, longest connected first.
    pub fn connected(&self) -> Vec<Connection> {
        let mut out: Vec<(u64, Connection)> = self
            .connections()
            .iter()
            .map(|(id, (c, messages))| {
                let mut c = c.clone();
                c.messages = messages.load(Ordering::Relaxed);
                (*id, c)
            })
            .collect();
        out.sort_by_key(|(id, _)| *id);
        out.into_iter().map(|(_, c)| c).collect()
    }

    /// An esp3 decode stage's telegram statistics (replacing what it reported before).
    pub fn report_telegrams(
        &self,
        flow: &Arc<str>,
        devices: Vec<(u32, Counts)>,
        gateways: Vec<(String, Counts)>,
        sensors: Arc<Devices>,
    ) {
        self.telegrams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                flow.clone(),
                FlowTelegrams {
                    devices,
                    gateways,
                    sensors,
                },
            );
    }

    /// Telegram statistics per EnOcean device in the IoTC's shape (`[{device, stats}]`, by sender),
    /// summed over the flows that decode it; `only` picks one sender.
    pub fn device_statistics(&self, only: Option<u32>) -> Vec<Value> {
        let telegrams = self.telegrams.lock().unwrap_or_else(|p| p.into_inner());
        let mut merged: BTreeMap<u32, (Counts, Option<Arc<crate::registry::Device>>)> =
            BTreeMap::new();
        for flow in telegrams.values() {
            for (id, counts) in &flow.devices {
                if only.is_some_and(|o| o != *id) {
                    continue;
                }
                let entry = merged.entry(*id).or_default();
                add_counts(&mut entry.0, counts);
                if entry.1.is_none() {
                    entry.1 = flow.sensors.get(id).cloned();
                }
            }
        }
        merged
            .into_iter()
            .map(|(id, (counts, device))| {
                let mut about = serde_json::Map::new();
                about.insert("sourceEurid".into(), Value::from(id_hex(id)));
                about.insert("destinationEurid".into(), Value::from("ffffffff"));
                if let Some(d) = device {
                    about.insert("friendlyID".into(), Value::from(d.friendly_id.as_str()));
                    about.insert("location".into(), Value::from(d.location.as_str()));
                    about.insert("customTag".into(), Value::from(d.custom_tag.as_str()));
                    if let Some(eep) = &d.eep {
                        about.insert("eep".into(), Value::from(eep.as_str()));
                    }
                    about.insert("activeFlag".into(), Value::from("true"));
                } else {
                    about.insert("activeFlag".into(), Value::from("false"));
                }
                serde_json::json!({ "device": about, "stats": counts.json() })
            })
            .collect()
    }

    /// Telegram statistics per gateway in the IoTC's shape (`[{device: {mac}, stats}]`), with the
    /// copies it relayed of telegrams another gateway relayed first (`duplicates`).
    pub fn gateway_statistics(&self) -> Vec<Value> {
        let telegrams = self.telegrams.lock().unwrap_or_else(|p| p.into_inner());
        let mut merged: BTreeMap<&str, Counts> = BTreeMap::new();
        for flow in telegrams.values() {
            for (gateway, counts) in &flow.gateways {
                add_counts(merged.entry(gateway.as_str()).or_default(), counts);
            }
        }
        merged
            .into_iter()
            .map(|(gateway, counts)| {
                let mut stats = counts.json();
                stats["duplicates"] = Value::from(counts.duplicates);
                serde_json::json!({ "device": { "mac": gateway }, "stats": stats })
            })
            .collect()
    }

    /// Every gateway heard, by name.
    pub fn gateways(&self) -> Vec<GatewayView> {
        let inner = self.lock();
        let mut out: Vec<GatewayView> = inner.gateways.values().map(|(g, _)| g.clone()).collect();
        out.sort_by(|a, b| a.gateway.cmp(&b.gateway));
        out
    }

    /// Every record's flow and document from now on, as JSON text. A listener that falls more
    /// than [`FEED_CAPACITY`] documents behind skips ahead (and learns how many it missed).
    pub fn subscribe(&self) -> broadcast::Receiver<(Arc<str>, Arc<str>)> {
        self.feed.subscribe()
    }
}

fn add_counts(into: &mut Counts, counts: &Counts) {
    into.total += counts.total;
    into.processed += counts.processed;
    into.not_processed += counts.not_processed;
    into.duplicates += counts.duplicates;
    into.last_seen = into.last_seen.max(counts.last_seen);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Delivery, Origin};
    use bytes::Bytes;
    use std::borrow::Cow;
    use std::time::Duration;

    fn reading(key: &'static str, channel: Option<u32>, ts: i64, v: f64) -> Reading {
        Reading {
            channel,
            key: Cow::Borrowed(key),
            ts,
            value: ReadingValue::Float(v),
            unit: Some(Cow::Borrowed("°C")),
            raw: None,
            meta: None,
            error_code: None,
            type_code: None,
        }
    }

    fn flow() -> Arc<str> {
        Arc::from("f")
    }

    fn record(device: &str, gateway: Option<&str>, at_s: u64) -> Record {
        let origin = Origin {
            gateway: gateway.map(Arc::from),
            rssi: gateway.map(|_| -70),
            ..Origin::default()
        };
        let mut r = Record::new(Arc::from("s"), origin, Bytes::new(), Delivery::detached());
        r.device = Some(device.to_string());
        r.kind = Kind::Measurements;
        r.received_at = UNIX_EPOCH + Duration::from_secs(at_s);
        r
    }

    #[test]
    fn the_newest_reading_of_each_key_wins_whatever_the_order_records_come_in() {
        let live = Live::new(2);
        let mut a = record("282C", None, 100);
        a.readings = vec![
            reading("temperature", Some(1), 50, 21.0),
            reading("temperature", Some(1), 60, 21.5),
            reading("humidity", Some(2), 60, 40.0),
        ];
        let mut late = record("282C", None, 101);
        late.readings = vec![reading("temperature", Some(1), 40, 19.0)];
        live.observe(&flow(), &a);
        live.observe(&flow(), &late);
        live.observe(&flow(), &record("282C", None, 102));
        let view = live.device("282C").unwrap();
        assert_eq!(view.records, 3);
        assert_eq!(view.last_seen, 102_000);
        assert_eq!(view.latest["temperature/1"].value, 21.5);
        assert_eq!(view.latest["temperature/1"].ts, 60);
        assert_eq!(view.latest["humidity/2"].value, 40.0);
        assert_eq!(view.recent.len(), 2, "only the last two");
        assert_eq!(view.recent[0].values, 1);
        assert!(live.device("other").is_none());
    }

    #[test]
    fn enocean_data_points_and_gateways_are_tracked() {
        let live = Live::new(0);
        let mut t = record("0180a1b2", Some("ap-1"), 10);
        t.kind = Kind::Telemetry;
        t.body.insert(
            "telemetry".into(),
            serde_json::json!({"data": [
                {"key": "temperature", "value": 19.92, "unit": "°C"},
                {"key": "learn", "value": "notPressed"},
                {"value": 3},
            ]}),
        );
        live.observe(&flow(), &t);
        live.observe(&flow(), &record("0180a1b3", Some("ap-1"), 11));
        live.observe(&flow(), &record("0180a1b2", Some("ap-2"), 12));
        let view = live.device("0180a1b2").unwrap();
        assert_eq!(view.latest["temperature"].value, 19.92);
        assert_eq!(view.latest["temperature"].unit.as_deref(), Some("°C"));
        assert_eq!(view.latest["learn"].value, "notPressed");
        assert_eq!(view.latest.len(), 2);
        assert_eq!(view.gateway.as_deref(), Some("ap-2"));
        assert_eq!(view.rssi, Some(-70));
        let gateways = live.gateways();
        assert_eq!(gateways.len(), 2);
        assert_eq!(
            (
                gateways[0].gateway.as_str(),
                gateways[0].records,
                gateways[0].devices
            ),
            ("ap-1", 2, 2)
        );
        let devices = live.devices(None);
        assert_eq!(devices[0].device, "0180a1b2", "most recently heard first");
    }

    #[test]
    fn the_feed_carries_documents_only_to_listeners() {
        let live = Live::new(0);
        live.observe(&flow(), &record("a", None, 1));
        let mut rx = live.subscribe();
        live.observe(&flow(), &record("b", None, 2));
        let (flow, text) = rx.try_recv().unwrap();
        assert_eq!(&*flow, "f");
        let doc: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(doc["device"], "b");
        assert!(
            rx.try_recv().is_err(),
            "nothing from before the subscription"
        );
    }
}
