//! Efento configuration changes per serial, delivered in the ACK of the device's next confirmable
//! request (efento.md §5: "once a device sends a message with ACK, the server will respond with the
//! new configuration"), and what became of each.
//!
//! A change is **pending** until a 2.01 to its device carries it, then **sent**, then **confirmed**
//! when the device shows it applied it: a configuration report (`/c`) whose fields equal every field
//! the change sets (one-shot requests such as `device_info_request` are not compared), or a
//! measurements frame whose `configuration_hash` differs from the one the device reported before the
//! change was sent. Several changes before the device's next ACK travel together, merged field by field.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message as _;
use serde_json::{Map, Value};

use crate::codecs::efento::{self, proto::ProtoConfig, proto::ProtoMeasurements};

/// Changes kept per serial once settled (the newest; older ones are forgotten).
const HISTORY: usize = 32;

/// Where a change is on its way to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for the device's next confirmable request.
    Pending,
    /// Carried by a 2.01 to the device.
    Sent,
    /// The device reported it applied it.
    Confirmed,
}

/// One queued change and its story.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Change {
    pub id: u64,
    pub serial: String,
    /// The fields the change sets, named as `/c` documents name them.
    pub fields: Map<String, Value>,
    pub status: Status,
    /// Unix milliseconds.
    pub queued_at: u64,
    pub sent_at: Option<u64>,
    pub confirmed_at: Option<u64>,
    /// What showed it: `configuration` (a `/c` report) or `configuration_hash` (a new hash in `/m`).
    pub confirmed_by: Option<&'static str>,
    /// The device's configuration hash when the change was sent, if one was seen.
    #[serde(skip)]
    hash_at_send: Option<u32>,
}

#[derive(Debug, Default)]
struct Inner {
    /// What the next ACK of a serial carries (merged).
    pending: HashMap<String, ProtoConfig>,
    /// Every serial's changes, oldest first.
    changes: HashMap<String, VecDeque<Change>>,
    /// The last configuration hash a serial with changes reported.
    hashes: HashMap<String, u32>,
    next_id: u64,
}

/// Configuration changes for devices. Cheap to clone; clones share the queue.
#[derive(Clone, Default, Debug)]
pub struct Downlinks {
    inner: Arc<Mutex<Inner>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The fields a change sets, as a `/c` document names them.
fn change_fields(change: &ProtoConfig) -> Map<String, Value> {
    match efento::response_to_json(&change.encode_to_vec()) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

/// Whether a field is compared with the device's report: not one-shot requests nor the time.
fn reported_field(name: &str) -> bool {
    !name.ends_with("_request") && name != "current_time"
}

impl Downlinks {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a change for `serial` (hex, any case) and returns its id. Several changes before the
    /// device's next ACK are merged field by field: what the later change sets wins, lists included
    /// ([`efento::merge_config`]).
    pub fn enqueue(&self, serial: &str, change: ProtoConfig) -> u64 {
        let key = serial.to_ascii_uppercase();
        let fields = change_fields(&change);
        let mut inner = self.lock();
        match inner.pending.get_mut(&key) {
            Some(existing) => efento::merge_config(existing, &change),
            None => {
                inner.pending.insert(key.clone(), change);
            }
        }
        inner.next_id += 1;
        let id = inner.next_id;
        let history = inner.changes.entry(key.clone()).or_default();
        history.push_back(Change {
            id,
            serial: key,
            fields,
            status: Status::Pending,
            queued_at: now_ms(),
            sent_at: None,
            confirmed_at: None,
            confirmed_by: None,
            hash_at_send: None,
        });
        while history.len() > HISTORY
            && history.front().is_some_and(|c| c.status != Status::Pending)
        {
            history.pop_front();
        }
        id
    }

    /// Whether a change waits for `serial`.
    pub fn is_pending(&self, serial: &str) -> bool {
        self.lock()
            .pending
            .contains_key(&serial.to_ascii_uppercase())
    }

    /// Takes what waits for `serial`, leaving nothing queued; its changes count as sent.
    pub fn take(&self, serial: &str) -> Option<ProtoConfig> {
        let mut inner = self.lock();
        if inner.pending.is_empty() {
            return None;
        }
        let key = serial.to_ascii_uppercase();
        let config = inner.pending.remove(&key)?;
        let hash = inner.hashes.get(&key).copied();
        let at = now_ms();
        for change in inner.changes.get_mut(&key).into_iter().flatten() {
            if change.status == Status::Pending {
                change.status = Status::Sent;
                change.sent_at = Some(at);
                change.hash_at_send = hash;
            }
        }
        Some(config)
    }

    /// The payload of a 2.01 to `device`: `current_time` plus whatever waits for it.
    pub fn ack_payload(&self, device: Option<&str>, now_unix: u32) -> Vec<u8> {
        let pending = device.and_then(|d| self.take(d));
        efento::encode_ack(now_unix, pending.as_ref())
    }

    /// A stored frame of `serial` on `route` (`measurements` or `configuration`): confirms the sent
    /// changes it shows applied (see the module docs). Cheap for serials without changes.
    pub fn observe(&self, serial: &str, route: &str, payload: &[u8]) {
        let key = serial.to_ascii_uppercase();
        if !self.lock().changes.contains_key(&key) {
            return;
        }
        match route {
            "measurements" => {
                let Ok(frame) = ProtoMeasurements::decode(payload) else {
                    return;
                };
                let hash = frame.configuration_hash;
                let mut inner = self.lock();
                let at = now_ms();
                for change in inner.changes.get_mut(&key).into_iter().flatten() {
                    if change.status == Status::Sent
                        && change.hash_at_send.is_some_and(|h| h != hash)
                    {
                        change.status = Status::Confirmed;
                        change.confirmed_at = Some(at);
                        change.confirmed_by = Some("configuration_hash");
                    }
                }
                inner.hashes.insert(key, hash);
            }
            "configuration" => {
                let Ok(Value::Object(report)) = efento::response_to_json(payload) else {
                    return;
                };
                let mut inner = self.lock();
                let at = now_ms();
                for change in inner.changes.get_mut(&key).into_iter().flatten() {
                    let compared: Vec<_> = change
                        .fields
                        .iter()
                        .filter(|(name, _)| reported_field(name))
                        .collect();
                    if change.status == Status::Sent
                        && !compared.is_empty()
                        && compared
                            .iter()
                            .all(|(name, v)| report.get(*name) == Some(*v))
                    {
                        change.status = Status::Confirmed;
                        change.confirmed_at = Some(at);
                        change.confirmed_by = Some("configuration");
                    }
                }
            }
            _ => {}
        }
    }

    /// The changes of `serial`, oldest first.
    pub fn changes(&self, serial: &str) -> Vec<Change> {
        self.lock()
            .changes
            .get(&serial.to_ascii_uppercase())
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// One change by id.
    pub fn change(&self, id: u64) -> Option<Change> {
        self.lock()
            .changes
            .values()
            .flatten()
            .find(|c| c.id == id)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codecs::efento::proto::ProtoRule;

    #[test]
    fn later_changes_replace_earlier_ones_lists_included() {
        let d = Downlinks::new();
        let rule = |mask| ProtoRule {
            channel_mask: mask,
            ..Default::default()
        };
        d.enqueue(
            "282c024156af",
            ProtoConfig {
                transmission_interval: 600,
                measurement_period_base: 60,
                rules: vec![rule(1), rule(2)],
                ..Default::default()
            },
        );
        d.enqueue(
            "282C024156AF",
            ProtoConfig {
                transmission_interval: 900,
                rules: vec![rule(4)],
                ..Default::default()
            },
        );
        let merged = d.take("282C024156AF").unwrap();
        assert_eq!(merged.transmission_interval, 900);
        assert_eq!(merged.measurement_period_base, 60, "untouched fields stay");
        assert_eq!(
            merged.rules,
            vec![rule(4)],
            "a list is replaced, not appended to"
        );
        assert!(d.take("282C024156AF").is_none());
    }

    fn frame(serial: &[u8], hash: u32) -> Vec<u8> {
        ProtoMeasurements {
            serial_number: serial.to_vec(),
            configuration_hash: hash,
            ..Default::default()
        }
        .encode_to_vec()
    }

    const SERIAL: [u8; 6] = [0x28, 0x2c, 0x02, 0x41, 0x56, 0xaf];

    #[test]
    fn a_change_is_pending_then_sent_then_confirmed_by_a_new_configuration_hash() {
        let d = Downlinks::new();
        let id = d.enqueue(
            "282c024156af",
            ProtoConfig {
                measurement_period_base: 120,
                ..Default::default()
            },
        );
        assert_eq!(d.change(id).unwrap().status, Status::Pending);
        assert_eq!(d.change(id).unwrap().fields["measurement_period_base"], 120);
        // The frame whose ACK carries the change, with the old hash.
        d.observe("282C024156AF", "measurements", &frame(&SERIAL, 7));
        assert!(d.take("282C024156AF").is_some());
        assert_eq!(d.change(id).unwrap().status, Status::Sent);
        d.observe("282C024156AF", "measurements", &frame(&SERIAL, 7));
        assert_eq!(d.change(id).unwrap().status, Status::Sent, "same hash");
        d.observe("282C024156AF", "measurements", &frame(&SERIAL, 8));
        let c = d.change(id).unwrap();
        assert_eq!(c.status, Status::Confirmed);
        assert_eq!(c.confirmed_by, Some("configuration_hash"));
        assert!(c.sent_at.is_some() && c.confirmed_at.is_some());
    }

    #[test]
    fn a_configuration_report_confirms_a_change_only_when_every_field_matches() {
        let d = Downlinks::new();
        let id = d.enqueue(
            "282C024156AF",
            ProtoConfig {
                transmission_interval: 600,
                device_info_request: true,
                ..Default::default()
            },
        );
        let report = |interval| {
            ProtoConfig {
                serial_number: SERIAL.to_vec(),
                transmission_interval: interval,
                ..Default::default()
            }
            .encode_to_vec()
        };
        // Not sent yet: a report does not confirm it.
        d.observe("282C024156AF", "configuration", &report(600));
        assert_eq!(d.change(id).unwrap().status, Status::Pending);
        d.take("282C024156AF");
        d.observe("282C024156AF", "configuration", &report(300));
        assert_eq!(d.change(id).unwrap().status, Status::Sent);
        d.observe("282C024156AF", "configuration", &report(600));
        let c = d.change(id).unwrap();
        assert_eq!(c.status, Status::Confirmed);
        assert_eq!(c.confirmed_by, Some("configuration"));
        // Another serial's changes are its own.
        assert!(d.changes("AABBCCDDEEFF").is_empty());
        assert_eq!(d.changes("282c024156af").len(), 1);
    }
}
