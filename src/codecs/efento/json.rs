//! Protobuf JSON rendering of ProtoDeviceInfo and ProtoConfig (fact sheet sections 3.4 to 3.6 and 5), through
//! prost-reflect and the descriptor set that `build.rs` writes.
//!
//! The mapping: proto field names in snake_case, fields at their default value left out, enums as their value
//! names (numbers for values the descriptor does not know), bytes fields as uppercase hex (the serial number),
//! 64-bit integers as JSON numbers.

use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor, Value as Reflect};
use serde_json::{Map, Value};

static DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/efento_descriptor.bin"));

/// The Efento descriptor pool, decoded once. The bytes are produced by `build.rs` from the same .proto files as
/// the prost types, so failing to decode them is a build defect, not an input error.
static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(DESCRIPTOR_SET)
        .expect("efento_descriptor.bin written by build.rs is valid")
});

/// The descriptor of a top-level Efento message, e.g. `ProtoConfig`.
pub(crate) fn message_descriptor(name: &str) -> MessageDescriptor {
    POOL.get_message_by_name(name)
        .unwrap_or_else(|| panic!("message {name} is missing from the Efento descriptor set"))
}

/// Decodes `payload` as the named message.
pub(crate) fn decode(name: &str, payload: &[u8]) -> Result<DynamicMessage, prost::DecodeError> {
    DynamicMessage::decode(message_descriptor(name), payload)
}

/// The JSON object of a message: every set field, by proto name.
pub(crate) fn message_to_json(msg: &DynamicMessage) -> Map<String, Value> {
    let mut out = Map::new();
    for (field, value) in msg.fields() {
        out.insert(field.name().to_owned(), value_to_json(value, &field.kind()));
    }
    out
}

fn value_to_json(value: &Reflect, kind: &Kind) -> Value {
    match value {
        Reflect::Bool(b) => Value::Bool(*b),
        Reflect::I32(n) => Value::from(*n),
        Reflect::I64(n) => Value::from(*n),
        Reflect::U32(n) => Value::from(*n),
        Reflect::U64(n) => Value::from(*n),
        Reflect::F32(f) => Value::from(f64::from(*f)),
        Reflect::F64(f) => Value::from(*f),
        Reflect::String(s) => Value::String(s.clone()),
        Reflect::Bytes(b) => Value::String(hex::encode_upper(b)),
        Reflect::EnumNumber(n) => kind
            .as_enum()
            .and_then(|e| e.get_value(*n))
            .map_or_else(|| Value::from(*n), |v| Value::String(v.name().to_owned())),
        Reflect::Message(m) => Value::Object(message_to_json(m)),
        Reflect::List(items) => {
            Value::Array(items.iter().map(|v| value_to_json(v, kind)).collect())
        }
        Reflect::Map(entries) => {
            let value_kind = kind
                .as_message()
                .map(|entry| entry.map_entry_value_field().kind());
            let mut out = Map::new();
            for (k, v) in entries {
                let key = match k {
                    prost_reflect::MapKey::Bool(b) => b.to_string(),
                    prost_reflect::MapKey::I32(n) => n.to_string(),
                    prost_reflect::MapKey::I64(n) => n.to_string(),
                    prost_reflect::MapKey::U32(n) => n.to_string(),
                    prost_reflect::MapKey::U64(n) => n.to_string(),
                    prost_reflect::MapKey::String(s) => s.clone(),
                };
                let v = match &value_kind {
                    Some(vk) => value_to_json(v, vk),
                    None => Value::Null,
                };
                out.insert(key, v);
            }
            Value::Object(out)
        }
    }
}

/// The bytes of a `bytes` field of a decoded message, empty when unset.
pub(crate) fn bytes_field(msg: &DynamicMessage, name: &str) -> Vec<u8> {
    msg.get_field_by_name(name)
        .and_then(|v| v.as_bytes().map(|b| b.to_vec()))
        .unwrap_or_default()
}

/// The value of a `uint32` field of a decoded message, 0 when unset.
pub(crate) fn u32_field(msg: &DynamicMessage, name: &str) -> u32 {
    msg.get_field_by_name(name)
        .and_then(|v| v.as_u32())
        .unwrap_or(0)
}
