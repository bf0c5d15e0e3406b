//! EnOcean: the serial protocol (ESP3), the radio protocol (ERP1, ERP2, addressing encapsulation,
//! chaining, signal telegrams, teach-in, security) and the equipment profiles (EEP), with no I/O.
//!
//! - [`esp3`]: framing, CRC8 and a resynchronising stream parser.
//! - [`telegram`]: an ESP3 radio packet (ERP1 or ERP2) as a [`telegram::Telegram`]: RORG, payload,
//!   sender, status, optional data; ADT decapsulation.
//! - [`chain`]: reassembly of chained telegrams (CDM 0x40, SEC_CDM 0x33) per sender.
//! - [`secure`]: VAES decryption, AES-CMAC check and the rolling-code window.
//! - [`signal`]: signal telegrams (RORG D0).
//! - [`teach`]: teach-in telegrams (4BS LRN, 1BS LRN, UTE), reported as events.
//! - [`eep`]: table-driven profile decoding.
//! - [`engine`]: the stateful decoder a flow runs: registry lookups, chaining, security, events and the
//!   IoTC-shaped document.

pub mod chain;
pub mod eep;
pub mod engine;
pub mod esp3;
pub mod secure;
pub mod signal;
pub mod teach;
pub mod telegram;

use std::borrow::Cow;

/// A value in a decoded `data` or `signal` entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    /// Already rounded as the profile says (scaled values: 2 decimals, step-first rule).
    Float(f64),
    Text(Cow<'static, str>),
    Bool(bool),
}

impl serde::Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Int(v) => s.serialize_i64(*v),
            Value::Float(v) => s.serialize_f64(*v),
            Value::Text(v) => s.serialize_str(v),
            Value::Bool(v) => s.serialize_bool(*v),
        }
    }
}

/// One entry of a telegram's `data` (or `signal`) list, in the EnOcean IoT Connector's shape:
/// `{"key": "temperature", "value": 23.9, "unit": "°C"}` or
/// `{"key": "contact", "value": "open", "meaning": "Window opened"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct DataPoint {
    pub key: Cow<'static, str>,
    pub value: Value,
    pub unit: Option<Cow<'static, str>>,
    pub meaning: Option<Cow<'static, str>>,
}

impl DataPoint {
    pub fn new(key: impl Into<Cow<'static, str>>, value: Value) -> Self {
        DataPoint {
            key: key.into(),
            value,
            unit: None,
            meaning: None,
        }
    }

    pub fn with_unit(mut self, unit: impl Into<Cow<'static, str>>) -> Self {
        self.unit = Some(unit.into());
        self
    }

    pub fn with_meaning(mut self, meaning: impl Into<Cow<'static, str>>) -> Self {
        self.meaning = Some(meaning.into());
        self
    }
}

impl serde::Serialize for DataPoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let len = 2 + usize::from(self.unit.is_some()) + usize::from(self.meaning.is_some());
        let mut map = s.serialize_map(Some(len))?;
        map.serialize_entry("key", &self.key)?;
        map.serialize_entry("value", &self.value)?;
        if let Some(unit) = &self.unit {
            map.serialize_entry("unit", unit)?;
        }
        if let Some(meaning) = &self.meaning {
            map.serialize_entry("meaning", meaning)?;
        }
        map.end()
    }
}

/// An EnOcean ID (EURID or sender address) as the IoTC prints it: 8 lowercase hex digits.
pub fn id_hex(id: u32) -> String {
    format!("{id:08x}")
}

/// Parses an ID written as 8 hex digits, with or without `0x`, colons or dashes.
pub fn parse_id(text: &str) -> Option<u32> {
    let digits: String = text
        .trim()
        .trim_start_matches("0x")
        .chars()
        .filter(|c| !matches!(c, ':' | '-'))
        .collect();
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    u32::from_str_radix(&digits, 16).ok()
}
