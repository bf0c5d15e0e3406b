//! A hostile test plugin: `decode` returns results the host must refuse, chosen by the first
//! payload byte: 0 a reading whose value is NaN, 1 a key of 100 000 characters, 2 a document that
//! is not JSON, 3 a string that is not UTF-8 (the canonical ABI itself refuses it), 4 documents
//! from an EnOcean profile (which must give readings).

#![no_std]
extern crate alloc;

use alloc::{string::String, vec, vec::Vec};
use sensorgate_plugin_sdk::*;

struct Malformed;

impl Guest for Malformed {
    fn metadata() -> Metadata {
        metadata(
            "hostile-malformed",
            "0.1.0",
            &["eep:a5-3f-04", "vendor:hostile-malformed"],
        )
    }

    fn decode(frame: Frame) -> Result<Output, DecodeError> {
        let document = |json: String| Document {
            device: String::from("hostile"),
            json,
        };
        match frame.payload.first().copied().unwrap_or(0) {
            0 => readings(vec![Reading::number("temperature", f64::NAN, "°C")]),
            1 => {
                let key: String = core::iter::repeat_n('k', 100_000).collect();
                readings(vec![Reading::int(&key, 1, None)])
            }
            2 => Ok(Output::Documents(vec![document(String::from(
                "{\"temperature\": 21.5",
            ))])),
            3 => {
                let bytes: Vec<u8> = vec![b'k', 0xFF, 0xFE];
                // SAFETY: deliberately not UTF-8; this plugin exists to check that the host
                // refuses it instead of trusting the guest.
                let key = unsafe { String::from_utf8_unchecked(bytes) };
                readings(vec![Reading::int(&key, 1, None)])
            }
            _ => Ok(Output::Documents(vec![document(String::from("{}"))])),
        }
    }
}

export!(Malformed);
