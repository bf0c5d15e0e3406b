//! Efento NB-IoT codec: the protobuf payloads of Efento's CoAP sensors in, JSON documents out, and the
//! payloads the server sends back (fact sheet `shared/protocols/efento.md`).
//!
//! No I/O happens here: the CoAP source hands in the payload bytes and the route name of the request path,
//! and sends back what [`encode_ack`] or [`time_payload`] return.
//!
//! Decisions on points the fact sheet leaves open:
//! * The serial number must be exactly 6 bytes in every frame (`/m`, `/i`, `/c`); anything else is a
//!   [`DecodeError`], so random bytes that happen to parse as protobuf are not taken for a device.
//! * Binary channels use the merged expansion of section 4.3 with the grid step = `measurement_period_base`.
//!   A base of 0 has no grid, so such a channel gives one row per event time. A frame may expand to at most
//!   [`MAX_BINARY_POINTS`] binary rows in all; a larger range is refused.
//! * Continuous channels with a type number the table does not know still give rows: the raw value,
//!   `type` "unknown", `type_code` = the number, unit null.
//! * `next_transmission_at` 0 (absent) is reported as null.

mod json;
pub mod measurements;
pub mod types;

use std::fmt;

use prost::Message as _;
use serde_json::{Map, Value};

use crate::record::{Kind, Reading};

/// The prost types generated from `proto/efento/*.proto` (fact sheet sections 3.1 to 3.8).
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

/// Most binary rows one measurements frame may expand to (section 4.3); a hostile frame cannot make the
/// decoder allocate more.
pub const MAX_BINARY_POINTS: usize = 50_000;

/// Length of an Efento serial number in bytes (section 3.1).
pub const SERIAL_LEN: usize = 6;

/// Which Efento message a payload is, from the route name a source assigns to a CoAP path (section 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// ProtoMeasurements, sent to `/m` (section 3.1).
    Measurements,
    /// ProtoDeviceInfo, sent to `/i` (section 3.4).
    DeviceInfo,
    /// ProtoConfig, sent to `/c` (section 3.5).
    Configuration,
}

impl Message {
    /// "measurements" | "m" → Measurements, "device_info" | "i" → DeviceInfo, "configuration" | "c" →
    /// Configuration; else None (section 1, default paths).
    pub fn from_route(route: &str) -> Option<Message> {
        match route {
            "measurements" | "m" => Some(Message::Measurements),
            "device_info" | "i" => Some(Message::DeviceInfo),
            "configuration" | "c" => Some(Message::Configuration),
            _ => None,
        }
    }

    /// The protobuf message name of the payload (section 3).
    pub fn proto_name(self) -> &'static str {
        match self {
            Message::Measurements => "ProtoMeasurements",
            Message::DeviceInfo => "ProtoDeviceInfo",
            Message::Configuration => "ProtoConfig",
        }
    }

    /// The record kind a decoded payload gets.
    pub fn kind(self) -> Kind {
        match self {
            Message::Measurements => Kind::Measurements,
            Message::DeviceInfo => Kind::DeviceInfo,
            Message::Configuration => Kind::Config,
        }
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Message::Measurements => "measurements",
            Message::DeviceInfo => "device info",
            Message::Configuration => "configuration",
        })
    }
}

/// A decoded Efento payload (sections 3.1, 3.4, 3.5 and 4).
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The device serial number as uppercase hex, e.g. "282C024156AF".
    pub serial: String,
    /// Measurements, DeviceInfo or Config.
    pub kind: Kind,
    /// The document: the measurements document for `/m` (without its rows), the protobuf JSON mapping
    /// for `/i` and `/c`.
    pub body: Map<String, Value>,
    /// The rows of `/m`, typed (empty for `/i` and `/c`); [`Decoded::document`] shows them as
    /// `measurements`.
    pub readings: Vec<Reading>,
}

impl Decoded {
    /// The whole document as JSON, rows included, in the shape of the shared vectors.
    pub fn document(&self) -> Map<String, Value> {
        crate::record::document_value(self.kind, &self.body, &self.readings)
    }
}

/// Why a payload could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not a valid protobuf encoding of the expected message (section 2).
    #[error("not an Efento {message} frame: {cause}")]
    Protobuf {
        /// The message the payload was read as.
        message: Message,
        /// What prost found wrong.
        cause: prost::DecodeError,
    },
    /// The frame carries no serial number (sections 3.1, 3.4, 3.5).
    #[error("Efento {message} frame has no serial number")]
    MissingSerial {
        /// The message the payload was read as.
        message: Message,
    },
    /// The serial number is not 6 bytes long (sections 3.1, 3.4, 3.5).
    #[error("Efento {message} frame has a {len}-byte serial number, expected 6")]
    BadSerial {
        /// The message the payload was read as.
        message: Message,
        /// Length of the serial number field.
        len: usize,
    },
    /// The binary channels of a measurements frame would expand to too many rows (section 4.3).
    #[error("binary channel {channel} expands to more than {limit} points in one frame")]
    TooManyPoints {
        /// 1-based channel number.
        channel: usize,
        /// The limit, [`MAX_BINARY_POINTS`].
        limit: usize,
    },
    /// A sample time does not fit in 64 bits (hostile period values, section 4.2).
    #[error("channel {channel}: sample time out of range")]
    TimeOutOfRange {
        /// 1-based channel number.
        channel: usize,
    },
    /// The hex text given to [`decode_hex`] is not hex.
    #[error("bad hex payload: {0}")]
    Hex(#[from] hex::FromHexError),
    /// The path given to [`decode_hex`] is not one of m, i, c (or their long names) or resp.
    #[error("unknown Efento path {0:?} (expected m, i, c or resp)")]
    UnknownPath(String),
}

/// The serial number bytes as uppercase hex, checked to be 6 bytes (section 3.1).
fn serial_hex(bytes: &[u8], message: Message) -> Result<String, DecodeError> {
    match bytes.len() {
        0 => Err(DecodeError::MissingSerial { message }),
        SERIAL_LEN => Ok(hex::encode_upper(bytes)),
        len => Err(DecodeError::BadSerial { message, len }),
    }
}

/// Decodes one payload (sections 3 and 4): `/m` into the measurements document (section 4), `/i` and `/c`
/// into the protobuf JSON mapping, `/i` with `derived.sw_version_str` added (section 3.4).
pub fn decode(message: Message, payload: &[u8]) -> Result<Decoded, DecodeError> {
    match message {
        Message::Measurements => measurements::decode(payload),
        Message::DeviceInfo | Message::Configuration => {
            let msg = json::decode(message.proto_name(), payload)
                .map_err(|cause| DecodeError::Protobuf { message, cause })?;
            let serial = serial_hex(&json::bytes_field(&msg, "serial_number"), message)?;
            let mut body = json::message_to_json(&msg);
            if message == Message::DeviceInfo {
                let mut derived = Map::new();
                let sw = json::u32_field(&msg, "sw_version");
                if sw != 0 {
                    derived.insert("sw_version_str".into(), Value::String(sw_version_str(sw)));
                }
                body.insert("derived".into(), Value::Object(derived));
            }
            Ok(Decoded {
                serial,
                kind: message.kind(),
                body,
                readings: Vec::new(),
            })
        }
    }
}

/// The firmware version as "MM.mm" from `sw_version` (section 3.4: high byte major, low byte minor;
/// 1546 → "06.10").
pub fn sw_version_str(sw_version: u32) -> String {
    format!("{:02}.{:02}", (sw_version >> 8) & 0xFF, sw_version & 0xFF)
}

/// For the CLI `sensorgate decode efento --path m|i|c <HEX>`: hex text (spaces allowed) → the document as JSON
/// (sections 3 and 4). `path` also takes the long route names of [`Message::from_route`], and `resp` (or `r`)
/// renders a server→device ProtoConfig with [`response_to_json`].
pub fn decode_hex(path: &str, hex: &str) -> Result<Value, DecodeError> {
    let compact: String = hex.chars().filter(|c| !c.is_whitespace()).collect();
    let bytes = hex::decode(&compact)?;
    match path {
        "resp" | "r" => response_to_json(&bytes),
        _ => {
            let message = Message::from_route(path)
                .ok_or_else(|| DecodeError::UnknownPath(path.to_owned()))?;
            decode(message, &bytes).map(|d| Value::Object(d.document()))
        }
    }
}

/// The ACK payload (section 5): a serialized ProtoConfig with `current_time` set and any pending server-side
/// config merged in. Fields only a device sends (configuration errors and hash, their timestamps, serial
/// number, channel types, payload split info) are cleared from `pending` so a configuration copied from a
/// device upload is not echoed back.
pub fn encode_ack(current_time: u32, pending: Option<&proto::ProtoConfig>) -> Vec<u8> {
    let mut config = pending.cloned().unwrap_or_default();
    config.configuration_errors.clear();
    config.configuration_hash = 0;
    config.serial_number.clear();
    config.channel_types.clear();
    config.configuration_error_timestamp = 0;
    config.configuration_hash_timestamp = 0;
    config.payload_split_info = 0;
    config.current_time = current_time;
    config.encode_to_vec()
}

/// Merges a later server-side configuration change into an earlier one that still waits for its device
/// (section 5): every field the later change sets replaces the earlier value, repeated fields (rules,
/// calendars, DNS servers, ...) included, instead of being appended as plain protobuf merging would.
/// proto3 has no presence for scalars, so a later change cannot reset a field to 0 or false.
pub fn merge_config(earlier: &mut proto::ProtoConfig, later: &proto::ProtoConfig) {
    use prost::Message as _;
    let descriptor = json::message_descriptor("ProtoConfig");
    let decoded = (
        prost_reflect::DynamicMessage::decode(
            descriptor.clone(),
            earlier.encode_to_vec().as_slice(),
        ),
        prost_reflect::DynamicMessage::decode(descriptor, later.encode_to_vec().as_slice()),
    );
    let merged = match decoded {
        (Ok(mut base), Ok(change)) => {
            for (field, value) in change.fields() {
                base.set_field(&field, value.clone());
            }
            proto::ProtoConfig::decode(base.encode_to_vec().as_slice()).ok()
        }
        _ => None,
    };
    // Both sides were encoded by prost from the same descriptors, so the fallback is unreachable in
    // practice; taking the later change whole is the safe reading of "later wins".
    *earlier = merged.unwrap_or_else(|| later.clone());
}

/// A configuration change written as JSON, the way `/c` documents name ProtoConfig's fields
/// (`{"measurement_period_base": 120, "transmission_interval": 600}`; protobuf's JSON names such as
/// `measurementPeriodBase` are accepted too). Unknown fields and wrong types are errors that say
/// which.
pub fn config_from_json(value: &Value) -> Result<proto::ProtoConfig, String> {
    let descriptor = json::message_descriptor("ProtoConfig");
    let message = prost_reflect::DynamicMessage::deserialize(descriptor, value)
        .map_err(|e| format!("not a ProtoConfig change: {e}"))?;
    proto::ProtoConfig::decode(message.encode_to_vec().as_slice())
        .map_err(|e| format!("not a ProtoConfig change: {e}"))
}

/// The `/t` answer (section 5): the unix time as 4 bytes, big-endian (vector r03).
pub fn time_payload(unix_time: u32) -> [u8; 4] {
    unix_time.to_be_bytes()
}

/// A server→device ProtoConfig payload rendered as JSON (section 5), the same mapping as `/c`; no serial is
/// required. For the `/resp` vectors and for diagnostics.
pub fn response_to_json(payload: &[u8]) -> Result<Value, DecodeError> {
    let msg = json::decode("ProtoConfig", payload).map_err(|cause| DecodeError::Protobuf {
        message: Message::Configuration,
        cause,
    })?;
    Ok(Value::Object(json::message_to_json(&msg)))
}

#[cfg(test)]
mod tests;

/// A key for "the same data sent again" (a sensor retrying with a new CoAP message id): for a
/// measurements frame the serial plus, per channel, its type, first timestamp and number of samples
/// (fact sheet sections 3.1–3.2), so a later frame that adds samples is not mistaken for a copy; for
/// the other messages the payload itself. Stable across processes ([`crate::codecs::Fnv1a`]). `None`
/// when the frame does not parse (decode then rejects it with the reason).
pub fn dedupe_key(message: Message, payload: &[u8]) -> Option<u64> {
    use prost::Message as _;
    let mut h = crate::codecs::Fnv1a::new();
    h.write(message.proto_name().as_bytes());
    match message {
        Message::Measurements => {
            let frame = proto::ProtoMeasurements::decode(payload).ok()?;
            h.write(&frame.serial_number);
            for ch in &frame.channels {
                h.write(&ch.r#type.to_be_bytes());
                h.write(&ch.timestamp.to_be_bytes());
                h.write(&(ch.sample_offsets.len() as u64).to_be_bytes());
            }
        }
        Message::DeviceInfo | Message::Configuration => h.write(payload),
    }
    Some(h.finish())
}
