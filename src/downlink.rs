//! Pending Efento configuration per serial, delivered in the ACK of the device's next confirmable request
//! (efento.md §5: "once a device sends a message with ACK, the server will respond with the new
//! configuration"). The HTTP API of a later issue adds to the same queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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

    /// Queues a change for `serial` (hex, any case). Several changes before the device's next ACK are
    /// merged field by field: what the later change sets wins, lists included
    /// ([`efento::merge_config`]).
    pub fn enqueue(&self, serial: &str, change: ProtoConfig) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let key = serial.to_ascii_uppercase();
        match pending.get_mut(&key) {
            Some(existing) => efento::merge_config(existing, &change),
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
}
