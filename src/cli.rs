//! What the command line does beyond parsing arguments, kept in the library so it is tested.

use std::path::Path;

use serde_json::Value;

use crate::codecs::enocean::engine;
use crate::codecs::enocean::secure::{Key, Slf};
use crate::registry::{self, Device, Registry, Security};

/// `sensorgate decode esp3`: the documents of the frames in `hex`, one object for one telegram, an
/// array for several. Senders are looked up in the registry file if given; the others are decoded
/// with `eep` and `key` when given (the data is shown raw without an EEP).
pub fn decode_esp3(
    hex: &str,
    registry_file: Option<&Path>,
    eep: Option<&str>,
    key: Option<&str>,
    slf: &str,
    rlc: &str,
) -> Result<Value, String> {
    let registry = match registry_file {
        Some(path) => Registry::open(path).map_err(|e| e.to_string())?,
        None => Registry::empty(),
    };
    let eep = match eep {
        Some(text) => Some(registry::normalize_eep(text).ok_or_else(|| {
            format!("--eep {text}: not an EEP; write it as RORG-FUNC-TYPE, e.g. a5-02-05")
        })?),
        None => None,
    };
    let security = match key {
        Some(key) => {
            let key = Key::from_hex(key).map_err(|_| "--key must be 32 hex digits (AES-128)")?;
            let slf = registry::hex_u32(slf)
                .and_then(|v| u8::try_from(v).ok())
                .ok_or_else(|| format!("--slf {slf}: one byte in hex, e.g. 0x8b"))?;
            let rlc =
                registry::hex_u32(rlc).ok_or_else(|| format!("--rlc {rlc}: hex, e.g. c0ffee"))?;
            Some(Security {
                key,
                slf: Slf(slf),
                rlc,
            })
        }
        None => None,
    };
    let default_device =
        (eep.is_some() || security.is_some() || registry_file.is_none()).then(|| Device {
            eurid: 0,
            id: String::new(),
            eep,
            friendly_id: String::new(),
            location: String::new(),
            custom_tag: String::new(),
            security,
            fields: Default::default(),
        });
    let outputs = engine::decode_hex(hex, registry, default_device)?;
    let mut docs: Vec<Value> = outputs.into_iter().map(|o| Value::Object(o.body)).collect();
    match docs.len() {
        0 => Err("no complete telegram (a chained telegram still missing parts?)".into()),
        1 => Ok(docs.remove(0)),
        _ => Ok(Value::Array(docs)),
    }
}
