//! Placeholder: being written (issue 3). Only what the dedupe stage needs until the radio layer lands.

use super::esp3::{self, Packet};

/// Temporary: a hash of the ERP1 data with the repeater bits of the status masked.
pub fn content_key(packet: &Packet<'_>) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    if packet.packet_type != esp3::packet_type::RADIO_ERP1 || packet.data.len() < 6 {
        return None;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let (body, status) = packet.data.split_at(packet.data.len() - 1);
    body.hash(&mut h);
    (status[0] & 0xf0).hash(&mut h);
    Some(h.finish())
}
