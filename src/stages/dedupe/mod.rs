//! The dedupe stage: a record whose key was seen within the window is a duplicate. Duplicates are
//! counted (per gateway), never silently lost: their delivery tokens join the first copy's fate.
//!
//! With `merge` set, the first copy is held for that long so that copies relayed by other gateways
//! are folded into it (listed in `origin.receptions`, with their RSSI) before it moves on: one record
//! per radio telegram, however many gateways heard it.
//!
//! Memory is bounded: at most `max_entries` keys are remembered, the oldest forgotten first, and keys
//! older than the window are forgotten as records pass.
//!
//! A duplicate is settled the way its first copy is: delivered once the first copy is stored (so a
//! retrying Efento sensor hears 2.01 for data already stored), failed if it failed. A copy arriving
//! after its first copy FAILED is not a duplicate: it is let through as the new first copy, since
//! nothing of it was stored.
//!
//! With `backend = "redis"` several instances share what they have seen (see [`redis`]).

pub mod redis;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use self::redis::{Answer, RedisConfig, RedisStore};
use super::{Prepare, Stage};
use crate::codecs::Fnv1a;
use crate::codecs::efento;
use crate::codecs::enocean::{esp3, telegram};
use crate::config::HumanDuration;
use crate::metrics::{self, Counter};
use crate::record::{DeliveryHandle, Fate, Kind, Reception, Record};

/// `{ type = "dedupe", key = "esp3", window = "2s", merge = "100ms" }`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DedupeConfig {
    /// What makes two records the same item. `"esp3"`: the EnOcean radio telegram in an ESP3 frame
    /// (RORG, data, sender, status without the repeater bits), whichever gateway relayed it and however
    /// well. `"efento"`: an Efento frame's serial and its channels' timestamps and sample counts (a
    /// retry with a new CoAP message id is the same item). Or a template over the record such as
    /// `"{device}:{body.measured_at}"`, with the fields `{device}`, `{source}`, `{gateway}`, `{path}`,
    /// `{kind}`, `{raw}` and `{body.a.b}`.
    pub key: String,
    /// How long a key is remembered: a copy within this time of the first is a duplicate.
    #[serde(default = "default_window")]
    pub window: HumanDuration,
    /// The most keys remembered at once; the oldest are forgotten first. Bounds memory under a flood of
    /// distinct items (about 100 bytes per key).
    #[serde(default = "default_max_entries")]
    pub max_entries: usize,
    /// Collection window: the first copy is held this long so that copies relayed by other gateways are
    /// folded into it. `"0s"` (the default) passes the first copy on at once.
    #[serde(default = "default_merge")]
    pub merge: HumanDuration,
    /// Where seen keys are kept: `"memory"` (the default, this process only) or `"redis"` (shared by
    /// every instance using the same Redis and key prefix; configure it under `redis`).
    #[serde(default)]
    pub backend: Backend,
    /// The Redis store, for `backend = "redis"`.
    #[serde(default)]
    pub redis: Option<RedisConfig>,
}

/// Where a dedupe stage keeps what it has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    #[default]
    Memory,
    Redis,
}

fn default_window() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}

fn default_max_entries() -> usize {
    1_000_000
}

fn default_merge() -> HumanDuration {
    HumanDuration(Duration::ZERO)
}

impl DedupeConfig {
    /// Semantic problems, for `sensorgate validate`.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Err(e) = KeySpec::parse(&self.key) {
            out.push(e);
        }
        if self.window.get().is_zero() {
            out.push("window is 0: nothing would ever be a duplicate; use e.g. \"2s\"".into());
        }
        if self.merge.get() > self.window.get() {
            out.push(format!(
                "merge ({}) is longer than window ({}): copies would be forgotten while the first is held",
                self.merge, self.window
            ));
        }
        if self.max_entries == 0 {
            out.push(
                "max_entries is 0: nothing could be remembered; the default is 1000000".into(),
            );
        }
        match (self.backend, &self.redis) {
            (Backend::Redis, None) => out.push(
                "backend \"redis\" needs redis = { url = \"redis://127.0.0.1:6379\" }".into(),
            ),
            (Backend::Redis, Some(redis)) => out.extend(redis.problems()),
            (Backend::Memory, Some(_)) => out.push(
                "redis is set but backend is \"memory\"; add backend = \"redis\" or remove redis"
                    .into(),
            ),
            (Backend::Memory, None) => {}
        }
        out
    }
}

/// How a record's key is made.
#[derive(Debug, Clone, PartialEq)]
enum KeySpec {
    Esp3,
    Efento,
    Template(Vec<Part>),
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Device,
    Source,
    Gateway,
    Path,
    Kind,
    Raw,
    Body(Vec<String>),
}

impl KeySpec {
    fn parse(key: &str) -> Result<KeySpec, String> {
        match key {
            "esp3" => return Ok(KeySpec::Esp3),
            "efento" => return Ok(KeySpec::Efento),
            _ => {}
        }
        let mut parts = Vec::new();
        let mut rest = key;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let Some(close) = rest[open..].find('}') else {
                return Err(format!("key `{key}`: `{{` without a closing `}}`"));
            };
            let field = &rest[open + 1..open + close];
            parts.push(match field {
                "device" => Part::Device,
                "source" => Part::Source,
                "gateway" => Part::Gateway,
                "path" => Part::Path,
                "kind" => Part::Kind,
                "raw" => Part::Raw,
                f if f.starts_with("body.") && f.len() > 5 => {
                    Part::Body(f[5..].split('.').map(str::to_string).collect())
                }
                other => {
                    return Err(format!(
                        "key `{key}`: unknown field `{{{other}}}`; use device, source, gateway, path, kind, raw or body.<field>, or key = \"esp3\" or \"efento\""
                    ));
                }
            });
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        if !parts.iter().any(|p| !matches!(p, Part::Text(_))) {
            return Err(format!(
                "key `{key}` has no field: every record would have the same key; use e.g. \"{{device}}:{{body.measured_at}}\" or \"esp3\""
            ));
        }
        Ok(KeySpec::Template(parts))
    }

    /// The record's key as a 64-bit hash, or `None` when the record lacks a field of the key.
    fn key(&self, record: &Record) -> Option<u64> {
        match self {
            KeySpec::Esp3 => {
                let (packet, _) = esp3::parse_packet(&record.raw).ok()?;
                telegram::content_key(&packet)
            }
            KeySpec::Efento => {
                let route = record
                    .origin
                    .route
                    .as_deref()
                    .or(record.origin.path.as_deref())?;
                efento::dedupe_key(efento::Message::from_route(route)?, &record.raw)
            }
            KeySpec::Template(parts) => {
                // FNV-1a, so that every instance sharing a store computes the same key.
                let mut h = Fnv1a::new();
                for part in parts {
                    match part {
                        Part::Text(t) => h.write(t.as_bytes()),
                        Part::Device => h.write(record.device.as_deref()?.as_bytes()),
                        Part::Source => h.write(record.source.as_bytes()),
                        Part::Gateway => h.write(record.origin.gateway.as_deref()?.as_bytes()),
                        Part::Path => h.write(record.origin.path.as_deref()?.as_bytes()),
                        Part::Kind => h.write(record.kind.as_str().as_bytes()),
                        Part::Raw => h.write(&record.raw),
                        Part::Body(path) => {
                            let mut value = record.body.get(path.first()?)?;
                            for step in &path[1..] {
                                value = value.get(step)?;
                            }
                            match value {
                                Value::Null => return None,
                                Value::String(s) => h.write(s.as_bytes()),
                                other => h.write(other.to_string().as_bytes()),
                            }
                        }
                    }
                    // A separator (never in UTF-8), so that ("ab","c") and ("a","bc") differ.
                    h.write(&[0xff]);
                }
                Some(h.finish())
            }
        }
    }
}

/// What is remembered of a key.
struct Entry {
    first_seen: Instant,
    /// The first copy while it is held for merging.
    held: Option<usize>,
    /// The first copy's delivery once it has moved on.
    handle: DeliveryHandle,
}

pub struct DedupeStage {
    flow: Arc<str>,
    spec: KeySpec,
    window: Duration,
    merge: Duration,
    max_entries: usize,
    entries: HashMap<u64, Entry>,
    /// Keys in order of first sight, for eviction by age and count.
    order: VecDeque<(Instant, u64)>,
    /// First copies held for merging, in order of release: (release at, key, record).
    holding: VecDeque<(Instant, u64, Option<Record>)>,
    /// Index of `holding[0]` in the sequence of all held records (so entries can point into it).
    holding_base: usize,
    /// The shared store, with its answers for the batch being processed.
    store: Option<RedisStore>,
    answers: HashMap<u64, Answer>,
    unique: Counter,
    duplicates: Counter,
    unkeyed: Counter,
    evicted: Counter,
    retried: Counter,
    duplicates_by_gateway: HashMap<Arc<str>, Counter>,
}

impl DedupeStage {
    /// Builds the stage. With `backend = "redis"` this must run inside a tokio runtime (the store's
    /// connection and its update task live there).
    pub fn new(flow: &str, config: &DedupeConfig) -> Self {
        // `sensorgate validate` reports a bad key; an unparsable one here keys on the raw bytes.
        let spec = KeySpec::parse(&config.key).unwrap_or(KeySpec::Template(vec![Part::Raw]));
        let counter = |name: &str| metrics::counter(name, &[("flow", flow)]);
        let store = match (config.backend, &config.redis) {
            (Backend::Redis, Some(redis)) => {
                Some(RedisStore::new(flow, redis, config.window.get()))
            }
            _ => None,
        };
        DedupeStage {
            flow: flow.into(),
            spec,
            window: config.window.get(),
            merge: config.merge.get(),
            max_entries: config.max_entries.max(1),
            entries: HashMap::new(),
            order: VecDeque::new(),
            holding: VecDeque::new(),
            holding_base: 0,
            store,
            answers: HashMap::new(),
            unique: counter("dedupe_unique_total"),
            duplicates: counter("dedupe_duplicates_total"),
            unkeyed: counter("dedupe_unkeyed_total"),
            evicted: counter("dedupe_evicted_total"),
            retried: counter("dedupe_retried_after_failure_total"),
            duplicates_by_gateway: HashMap::new(),
        }
    }

    /// Keys remembered now (for tests and metrics).
    pub fn remembered(&self) -> usize {
        self.entries.len()
    }

    fn count_duplicate(&mut self, gateway: Option<&Arc<str>>) {
        self.duplicates.inc();
        if let Some(gateway) = gateway {
            let flow = &self.flow;
            self.duplicates_by_gateway
                .entry(gateway.clone())
                .or_insert_with(|| {
                    metrics::counter(
                        "dedupe_duplicates_by_gateway_total",
                        &[("flow", flow), ("gateway", gateway)],
                    )
                })
                .inc();
        }
    }

    /// Whether this process can answer for `key` by itself: it remembers the key, and its first copy
    /// did not fail (a failed first copy must be claimed again).
    fn known_here(&self, key: u64) -> bool {
        self.entries
            .get(&key)
            .is_some_and(|e| e.held.is_some() || e.handle.fate() != Fate::Failed)
    }

    /// Forgets keys older than the window, and the oldest beyond `max_entries`. A key whose first copy
    /// is still held is never forgotten before it is released.
    fn forget(&mut self, now: Instant, out: &mut Vec<Record>) {
        while let Some(&(seen, key)) = self.order.front() {
            let too_many = self.entries.len() > self.max_entries;
            if !too_many && now.duration_since(seen) < self.window {
                break;
            }
            self.order.pop_front();
            if let Some(entry) = self.entries.get(&key)
                && entry.first_seen == seen
            {
                if let Some(index) = entry.held {
                    // Evicted for space while held: let it go now rather than keep it unbounded.
                    self.release_index(index, out);
                }
                self.entries.remove(&key);
                if too_many {
                    self.evicted.inc();
                }
            }
        }
    }

    fn release_index(&mut self, index: usize, out: &mut Vec<Record>) {
        if let Some(slot) = index
            .checked_sub(self.holding_base)
            .and_then(|i| self.holding.get_mut(i))
            && let Some(record) = slot.2.take()
        {
            out.push(record);
        }
    }

    fn release_due(&mut self, now: Instant, flush: bool, out: &mut Vec<Record>) {
        while let Some((release_at, key, _)) = self.holding.front() {
            if !flush && *release_at > now {
                break;
            }
            let key = *key;
            let Some((_, _, record)) = self.holding.pop_front() else {
                break;
            };
            self.holding_base += 1;
            if let Some(record) = record {
                if let Some(entry) = self.entries.get_mut(&key) {
                    entry.held = None;
                    entry.handle = record.delivery.handle();
                }
                out.push(record);
            }
        }
    }

    /// A copy of a key this process remembers.
    fn duplicate(&mut self, key: u64, record: Record) -> Option<Record> {
        let entry = self.entries.get(&key)?;
        let held = entry.held;
        if held.is_none() && entry.handle.fate() == Fate::Failed {
            // Nothing of the first copy was stored: this copy is the item now.
            self.retried.inc();
            return Some(record);
        }
        let handle = entry.handle.clone();
        let gateway = record.origin.gateway.clone();
        self.count_duplicate(gateway.as_ref());
        let slot = held
            .and_then(|index| index.checked_sub(self.holding_base))
            .and_then(|i| self.holding.get_mut(i))
            .and_then(|slot| slot.2.as_mut());
        match slot {
            Some(first) => {
                first.origin.receptions.push(Reception {
                    gateway,
                    rssi: record.origin.rssi,
                    received_at: record.received_at,
                });
                first.delivery.absorb(record.delivery);
            }
            None => handle.absorb(record.delivery),
        }
        None
    }

    /// What the shared store said about a key this process does not know. Returns the record when it
    /// is a first copy.
    fn ask_store(&mut self, key: u64, now: Instant, record: Record) -> Option<Record> {
        let Some(store) = &self.store else {
            return Some(record);
        };
        // A record that reached the stage without a batch lookup (none happens in a flow) is treated as
        // the store being unreachable.
        // (Not removed: later copies in the same batch get the same answer.)
        let answer = self
            .answers
            .get(&key)
            .cloned()
            .unwrap_or(Answer::Unavailable("not looked up".into()));
        match answer {
            Answer::Claimed => {
                store.track(key, &record.delivery);
                Some(record)
            }
            Answer::Unavailable(reason) => {
                if store.fails_when_unavailable() {
                    record
                        .delivery
                        .failed(format!("dedupe store unavailable: {reason}"));
                    None
                } else {
                    Some(record)
                }
            }
            Answer::Stored => {
                self.count_duplicate(record.origin.gateway.as_ref());
                record.delivery.delivered();
                // Remember it here, so the next copies need no round trip.
                self.entries.insert(
                    key,
                    Entry {
                        first_seen: now,
                        held: None,
                        handle: DeliveryHandle::default(),
                    },
                );
                self.order.push_back((now, key));
                None
            }
            Answer::Pending => {
                self.count_duplicate(record.origin.gateway.as_ref());
                if record.delivery.is_watched() {
                    // Another instance is storing the first copy and may yet fail: the sender must
                    // not hear "stored" before it is. It will send again, and hear it then.
                    record.delivery.failed(
                        "the first copy is still being stored by another instance; send again",
                    );
                } else {
                    record.delivery.delivered();
                }
                None
            }
        }
    }
}

impl Stage for DedupeStage {
    fn name(&self) -> &'static str {
        "dedupe"
    }

    fn prepare<'a>(&'a mut self, batch: &'a [Record]) -> Option<Prepare<'a>> {
        let store = self.store.as_ref()?;
        let mut keys: Vec<(u64, bool)> = Vec::new();
        for record in batch {
            if record.kind == Kind::DeadLetter {
                continue;
            }
            if let Some(key) = self.spec.key(record)
                && !self.known_here(key)
                && !keys.iter().any(|(k, _)| *k == key)
            {
                keys.push((key, record.delivery.is_watched()));
            }
        }
        if keys.is_empty() {
            return None;
        }
        let store = store.clone();
        Some(Box::pin(async move {
            let answers = store.claim(&keys).await;
            self.answers.clear();
            self.answers
                .extend(keys.iter().map(|(k, _)| *k).zip(answers));
        }))
    }

    fn process(&mut self, record: Record, out: &mut Vec<Record>) {
        let now = Instant::now();
        self.forget(now, out);
        let Some(key) = self.spec.key(&record) else {
            self.unkeyed.inc();
            out.push(record);
            return;
        };
        let record = if self.entries.contains_key(&key) {
            match self.duplicate(key, record) {
                Some(retry) if self.store.is_some() => match self.ask_store(key, now, retry) {
                    Some(r) => r,
                    None => return,
                },
                Some(retry) => retry,
                None => return,
            }
        } else {
            match self.ask_store(key, now, record) {
                Some(r) => r,
                None => return,
            }
        };
        self.unique.inc();
        let mut entry = Entry {
            first_seen: now,
            held: None,
            handle: DeliveryHandle::default(),
        };
        if self.merge.is_zero() {
            entry.handle = record.delivery.handle();
            out.push(record);
        } else {
            entry.held = Some(self.holding_base + self.holding.len());
            self.holding
                .push_back((now + self.merge, key, Some(record)));
        }
        self.entries.insert(key, entry);
        self.order.push_back((now, key));
    }

    fn next_deadline(&self) -> Option<Instant> {
        let release = self.holding.front().map(|(at, _, _)| *at);
        // Forgetting old keys also runs on a quiet flow, so memory falls back when traffic stops.
        let forget = self.order.front().map(|(seen, _)| *seen + self.window);
        match (release, forget) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn on_timer(&mut self, now: Instant, flush: bool, out: &mut Vec<Record>) {
        self.release_due(now, flush, out);
        self.forget(now, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Delivery, Origin, Outcome};
    use bytes::Bytes;

    fn config(key: &str, window_ms: u64, merge_ms: u64, max_entries: usize) -> DedupeConfig {
        DedupeConfig {
            key: key.into(),
            window: HumanDuration(Duration::from_millis(window_ms)),
            max_entries,
            merge: HumanDuration(Duration::from_millis(merge_ms)),
            backend: Backend::Memory,
            redis: None,
        }
    }

    const FRAME: &str = "55000a0701eba5000080080180a1b20001ffffffff450051";

    /// The same telegram as FRAME heard with other optional data (subtel count, dBm).
    fn frame_heard_as(subtel: u8, dbm: u8) -> Bytes {
        let raw = hex::decode(FRAME).unwrap();
        let (p, _) = esp3::parse_packet(&raw).unwrap();
        let mut optional = p.optional.to_vec();
        optional[0] = subtel;
        optional[5] = dbm;
        Bytes::from(esp3::encode(p.packet_type, p.data, &optional))
    }

    fn record(raw: Bytes, gateway: &str, rssi: i32) -> (Record, crate::record::DeliveryWatch) {
        let (delivery, watch) = Delivery::new();
        let origin = Origin {
            gateway: Some(gateway.into()),
            rssi: Some(rssi),
            ..Origin::default()
        };
        (Record::new("gw".into(), origin, raw, delivery), watch)
    }

    #[test]
    fn keys_parse_or_name_the_problem() {
        assert_eq!(KeySpec::parse("esp3").unwrap(), KeySpec::Esp3);
        assert!(KeySpec::parse("{device}:{body.measured_at}").is_ok());
        assert!(
            KeySpec::parse("{nope}")
                .unwrap_err()
                .contains("unknown field")
        );
        assert!(KeySpec::parse("constant").unwrap_err().contains("no field"));
        assert!(KeySpec::parse("{device").unwrap_err().contains("closing"));
    }

    #[test]
    fn merge_folds_copies_from_other_gateways_into_the_first() {
        let mut stage = DedupeStage::new("dedupe-test-1", &config("esp3", 2000, 50, 100));
        let mut out = Vec::new();
        let (a, mut watch_a) = record(frame_heard_as(1, 0x45), "gw-a", -69);
        let (b, mut watch_b) = record(frame_heard_as(2, 0x50), "gw-b", -80);
        let (c, _) = record(frame_heard_as(1, 0x3a), "gw-c", -58);
        stage.process(a, &mut out);
        stage.process(b, &mut out);
        stage.process(c, &mut out);
        assert!(out.is_empty(), "held for the merge window");
        let deadline = stage.next_deadline().unwrap();
        stage.on_timer(deadline, false, &mut out);
        assert_eq!(out.len(), 1);
        let first = out.pop().unwrap();
        assert_eq!(first.origin.gateway.as_deref(), Some("gw-a"));
        let heard: Vec<_> = first
            .origin
            .receptions
            .iter()
            .map(|r| (r.gateway.as_deref().unwrap().to_string(), r.rssi))
            .collect();
        assert_eq!(
            heard,
            [
                ("gw-b".to_string(), Some(-80)),
                ("gw-c".to_string(), Some(-58))
            ]
        );
        assert_eq!(stage.duplicates.get(), 2);
        assert!(
            watch_b.try_recv().is_err(),
            "a copy is settled with the first"
        );
        first.delivery.delivered();
        assert!(matches!(
            watch_a.try_recv().unwrap(),
            Outcome::Delivered { .. }
        ));
        assert!(matches!(
            watch_b.try_recv().unwrap(),
            Outcome::Delivered { .. }
        ));
    }

    #[test]
    fn a_copy_after_release_is_dropped_and_joins_the_first_copys_fate() {
        let mut stage = DedupeStage::new("dedupe-test-2", &config("esp3", 2000, 0, 100));
        let mut out = Vec::new();
        let (a, _) = record(frame_heard_as(1, 0x45), "gw-a", -69);
        stage.process(a, &mut out);
        assert_eq!(out.len(), 1, "no merge window: passes at once");
        let (b, mut watch_b) = record(frame_heard_as(1, 0x45), "gw-b", -70);
        stage.process(b, &mut out);
        assert_eq!(out.len(), 1);
        assert!(watch_b.try_recv().is_err(), "first copy still in flight");
        out.pop().unwrap().delivery.failed("sink down");
        assert!(matches!(
            watch_b.try_recv().unwrap(),
            Outcome::Failed { .. }
        ));
    }

    #[test]
    fn a_copy_after_the_first_copy_failed_is_let_through_as_the_item() {
        let mut stage = DedupeStage::new("dedupe-test-6", &config("esp3", 60_000, 0, 100));
        let mut out = Vec::new();
        let (a, _) = record(frame_heard_as(1, 0x45), "gw-a", -69);
        stage.process(a, &mut out);
        out.pop().unwrap().delivery.failed("disk full");
        let (retry, mut watch) = record(frame_heard_as(1, 0x45), "gw-a", -69);
        stage.process(retry, &mut out);
        assert_eq!(
            out.len(),
            1,
            "nothing was stored: the retry is the item now"
        );
        assert_eq!(stage.retried.get(), 1);
        assert_eq!(stage.duplicates.get(), 0);
        // Stored this time: the next copy is a duplicate again, settled with it.
        let (copy, mut copy_watch) = record(frame_heard_as(2, 0x50), "gw-b", -80);
        stage.process(copy, &mut out);
        assert_eq!(out.len(), 1);
        out.pop().unwrap().delivery.delivered();
        assert!(matches!(watch.try_recv(), Ok(Outcome::Delivered { .. })));
        assert!(matches!(
            copy_watch.try_recv(),
            Ok(Outcome::Delivered { .. })
        ));
    }

    #[test]
    fn window_expiry_lets_the_same_item_through_again() {
        let mut stage = DedupeStage::new("dedupe-test-3", &config("esp3", 20, 0, 100));
        let mut out = Vec::new();
        stage.process(record(frame_heard_as(1, 0x45), "a", -1).0, &mut out);
        std::thread::sleep(Duration::from_millis(30));
        stage.process(record(frame_heard_as(1, 0x45), "a", -1).0, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(stage.duplicates.get(), 0);
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_distinct_items() {
        let mut stage = DedupeStage::new("dedupe-test-4", &config("{raw}", 60_000, 0, 1000));
        let mut out = Vec::new();
        for i in 0..10_000u32 {
            let (r, _) = record(Bytes::from(i.to_be_bytes().to_vec()), "a", -1);
            stage.process(r, &mut out);
        }
        assert_eq!(out.len(), 10_000);
        assert!(stage.remembered() <= 1001, "{}", stage.remembered());
        assert!(stage.order.len() <= 1001);
        assert_eq!(stage.evicted.get(), 9_000 - 1);
    }

    #[test]
    fn held_records_come_out_on_flush_and_unkeyed_records_pass() {
        let mut stage = DedupeStage::new("dedupe-test-5", &config("{device}", 2000, 1000, 100));
        let mut out = Vec::new();
        let (mut a, _) = record(Bytes::from_static(b"x"), "a", -1);
        a.device = Some("d1".into());
        stage.process(a, &mut out);
        let (b, _) = record(Bytes::from_static(b"y"), "a", -1);
        stage.process(b, &mut out);
        assert_eq!(out.len(), 1, "no device: no key, passes");
        assert_eq!(stage.unkeyed.get(), 1);
        stage.on_timer(Instant::now(), true, &mut out);
        assert_eq!(out.len(), 2);
    }
}
