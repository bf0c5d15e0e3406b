//! Pending Efento configuration per serial, delivered in the ACK of the device's next confirmable request
//! (efento.md §5: "once a device sends a message with ACK, the server will respond with the new
//! configuration"). The HTTP API of a later issue adds to the same queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prost::Message as _;

use crate::codecs::efento::{self, proto::ProtoConfig};

/// Configuration changes waiting for their devices. Cheap to clone; clones share the queue.
#[derive(Clone, Default, Debug)]
pub struct Downlinks {
    pending: Arc<Mutex<HashMap<String, ProtoConfig>>>,
}

impl Downlinks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues a change for `serial` (uppercase hex). Several changes before the device's next ACK are
    /// merged the protobuf way: later scalar fields win, repeated fields append.
    pub fn enqueue(&self, serial: &str, change: ProtoConfig) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let key = serial.to_ascii_uppercase();
        match pending.get_mut(&key) {
            Some(existing) => {
                // Merging encoded bytes into a message is total for messages prost itself encoded.
                if existing.merge(change.encode_to_vec().as_slice()).is_err() {
                    *existing = change;
                }
            }
            None => {
                pending.insert(key, change);
            }
        }
    }

    /// Whether a change waits for `serial`.
    pub fn is_pending(&self, serial: &str) -> bool {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.contains_key(&serial.to_ascii_uppercase())
    }

    /// Takes what waits for `serial`, leaving nothing queued.
    pub fn take(&self, serial: &str) -> Option<ProtoConfig> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.is_empty() {
            return None;
        }
        pending.remove(&serial.to_ascii_uppercase())
    }

    /// The payload of a 2.01 to `device`: `current_time` plus whatever waits for it.
    pub fn ack_payload(&self, device: Option<&str>, now_unix: u32) -> Vec<u8> {
        let pending = device.and_then(|d| self.take(d));
        efento::encode_ack(now_unix, pending.as_ref())
    }
}
