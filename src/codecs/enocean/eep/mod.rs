//! Table-driven EnOcean Equipment Profile (EEP) decoding.
//!
//! Every built-in profile is static data returned by [`profiles()`] (see `table.rs`): for
//! each message layout, the fields in output order with their bit position (offset from the MSB of
//! the first payload byte, fact sheet `enocean.md` §2), size and [`Kind`]. One interpreter,
//! [`decode`], walks that table. Adding a profile means adding a table entry.
//!
//! Output follows the EnOcean IoT Connector's `data` entries (keys, units, meanings; fact sheet §5
//! and the vectors in `shared/vectors/enocean/`). Linear values use the step-first rule of fact
//! sheet §6 and are rounded to 2 decimals.
//!
//! Decoding allocates nothing except the [`DataPoint`]s it pushes, whose strings are all
//! `&'static` (borrowed `Cow`s).

use std::borrow::Cow;

use super::{DataPoint, Value};

mod table;
#[cfg(test)]
mod tests;

/// RORG of repeated-switch (RPS) telegrams.
pub const RORG_RPS: u8 = 0xF6;
/// RORG of 1-byte (1BS) telegrams.
pub const RORG_1BS: u8 = 0xD5;
/// RORG of 4-byte (4BS) telegrams.
pub const RORG_4BS: u8 = 0xA5;
/// RORG of variable-length (VLD) telegrams.
pub const RORG_VLD: u8 = 0xD2;

/// One equipment profile: its id, its RORG and the message layouts its devices send.
#[derive(Debug)]
pub struct Profile {
    /// Lowercase `rorg-func-type`, e.g. `"a5-02-05"`.
    pub id: &'static str,
    /// The profile's title in the EEP specification's words.
    pub title: &'static str,
    /// The RORG every telegram of this profile carries (F6, D5, A5, D2).
    pub rorg: u8,
    /// What picks the layout of a telegram.
    pub selector: Selector,
    /// The layouts; with [`Selector::Single`] exactly one.
    pub layouts: &'static [Layout],
}

/// What picks one of a profile's [`Layout`]s.
#[derive(Debug, Clone, Copy)]
pub enum Selector {
    /// The profile has one layout.
    Single,
    /// A payload field picks the layout, e.g. the D2-01 command id (bits 4..7) or the A5-13
    /// identifier (DB0.7..4).
    Bits { name: &'static str, bits: Bits },
    /// ERP1 STATUS bits pick the layout: the value is `(status & mask) >> mask.trailing_zeros()`.
    /// RPS rockers use NU (bit 4): N-message (1) or U-message (0), fact sheet §2.
    Status { name: &'static str, mask: u8 },
}

/// One message layout of a profile.
#[derive(Debug)]
pub struct Layout {
    /// The selector value this layout answers to (ignored with [`Selector::Single`]).
    pub when: u32,
    /// The exact payload length in bytes (data after the RORG, before the sender id).
    pub len: usize,
    /// The fields, in the order they are emitted.
    pub fields: &'static [Field],
}

/// A bit field: `offset` counts from the MSB of the first payload byte, `size` is 1..=32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bits {
    pub offset: u16,
    pub size: u8,
}

/// A shorthand for [`Bits`] in tables.
pub const fn bits(offset: u16, size: u8) -> Bits {
    Bits { offset, size }
}

/// When a field is emitted.
#[derive(Debug, Clone, Copy)]
pub enum Cond {
    Always,
    /// Only if the bits hold this value (e.g. "valid if SVA = 1", "ILL1 if RS = 0").
    Eq(Bits, u32),
    /// Only if the bits do not hold this value (e.g. "number of buttons, if any").
    Ne(Bits, u32),
}

/// One decoded entry of a layout.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// The IoTC key, lowerCamelCase.
    pub key: &'static str,
    pub bits: Bits,
    pub when: Cond,
    pub kind: Kind,
}

/// How a field's raw value becomes a [`Value`].
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Linear scaling (fact sheet §6): `step = (scale_max - scale_min) / (raw_max - raw_min)`,
    /// `value = scale_min + (raw - raw_min) * step`, rounded to 2 decimals; `Value::Float`.
    /// Raw values listed in `special` (error codes, over-range) are emitted as text instead.
    Linear {
        raw_min: f64,
        raw_max: f64,
        scale_min: f64,
        scale_max: f64,
        unit: &'static str,
        special: &'static [Choice],
    },
    /// Enumerated raw values or ranges -> text value and meaning. A raw value no choice covers is
    /// emitted as `Value::Int` with the meaning "Reserved value".
    Enum(&'static [Choice]),
    /// Bit patterns with don't-care bits (`raw & mask == value`), first match wins; unmatched as
    /// with [`Kind::Enum`].
    Pattern(&'static [Pattern]),
    /// The raw value as `Value::Int`, with an optional unit and a meaning for some raw ranges.
    Int {
        unit: Option<&'static str>,
        notes: &'static [Note],
    },
    /// The raw value as `Value::Float` (a measured quantity sent as an integer).
    Number { unit: &'static str },
    /// `raw / divisors[divisor field]` as `Value::Float`, rounded to 2 decimals (A5-12 DIV,
    /// D2-32 DIV, A5-09-05 scale multiplier).
    Divided {
        unit: Option<&'static str>,
        divisor: Bits,
        divisors: &'static [f64],
    },
}

/// A raw range `lo..=hi` and the text value and meaning it stands for.
#[derive(Debug, Clone, Copy)]
pub struct Choice {
    pub lo: u32,
    pub hi: u32,
    pub value: &'static str,
    pub meaning: &'static str,
}

/// A bit pattern: matches when `raw & mask == value`.
#[derive(Debug, Clone, Copy)]
pub struct Pattern {
    pub mask: u32,
    pub value: u32,
    pub text: &'static str,
    pub meaning: &'static str,
}

/// A meaning attached to the raw range `lo..=hi` of an [`Kind::Int`] field.
#[derive(Debug, Clone, Copy)]
pub struct Note {
    pub lo: u32,
    pub hi: u32,
    pub meaning: &'static str,
}

/// Why a telegram could not be decoded with a profile.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EepError {
    #[error(
        "EEP {profile} expects RORG {expected:#04x} but the telegram has RORG {got:#04x}: check the EEP configured for this sender"
    )]
    RorgMismatch {
        profile: &'static str,
        expected: u8,
        got: u8,
    },
    #[error(
        "EEP {profile}: the payload has {got} bytes but this message needs {expected}: check the EEP configured for this sender"
    )]
    PayloadLength {
        profile: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("EEP {profile}: {field} {value:#x} is not a message this decoder knows")]
    UnknownCommand {
        profile: &'static str,
        field: &'static str,
        value: u32,
    },
}

/// Finds a built-in profile. Case-insensitive; the six hex digits may be separated by `-`, `_`,
/// `.`, `:` or spaces, or not at all: `"A5-02-05"`, `"a5-02-05"`, `"a50205"`, `"A5_02_05"`.
pub fn lookup(eep: &str) -> Option<&'static Profile> {
    let mut digits = [0u8; 6];
    let mut n = 0;
    for c in eep.trim().bytes() {
        match c {
            b'-' | b'_' | b'.' | b':' | b' ' => {}
            c if c.is_ascii_hexdigit() => {
                *digits.get_mut(n)? = c.to_ascii_lowercase();
                n += 1;
            }
            _ => return None,
        }
    }
    if n != digits.len() {
        return None;
    }
    let [r1, r2, f1, f2, t1, t2] = digits;
    let id = [r1, r2, b'-', f1, f2, b'-', t1, t2];
    let id = std::str::from_utf8(&id).ok()?;
    let all = profiles();
    all.binary_search_by(|p| p.id.cmp(id))
        .ok()
        .and_then(|i| all.get(i))
}

/// Every built-in profile, as a slice sorted by id (ids are unique).
pub fn profiles() -> &'static [Profile] {
    table::PROFILES
}

/// Decodes one data telegram with `profile` and appends its entries to `out`, in the profile's
/// field order.
///
/// `rorg` is the telegram's RORG, `payload` the data bytes after the RORG and before the sender id
/// (4BS: DB3..DB0), `status` the ERP1 STATUS byte (bit 5 T21, bit 4 NU; fact sheet §2), which RPS
/// profiles need. Teach-in telegrams are not expected here; data telegrams of 4BS/1BS profiles
/// emit their `learn` entry. On error nothing is appended.
pub fn decode(
    profile: &Profile,
    rorg: u8,
    payload: &[u8],
    status: u8,
    out: &mut Vec<DataPoint>,
) -> Result<(), EepError> {
    if rorg != profile.rorg {
        return Err(EepError::RorgMismatch {
            profile: profile.id,
            expected: profile.rorg,
            got: rorg,
        });
    }
    let layout = select_layout(profile, payload, status)?;
    let length_error = EepError::PayloadLength {
        profile: profile.id,
        expected: layout.len,
        got: payload.len(),
    };
    if payload.len() != layout.len {
        return Err(length_error);
    }
    let mark = out.len();
    for field in layout.fields {
        if !field.when.holds(payload) {
            continue;
        }
        match field.decode(payload) {
            Some(point) => out.push(point),
            None => {
                out.truncate(mark);
                return Err(length_error);
            }
        }
    }
    Ok(())
}

fn select_layout(
    profile: &Profile,
    payload: &[u8],
    status: u8,
) -> Result<&'static Layout, EepError> {
    let (field, value) = match profile.selector {
        Selector::Single => {
            return profile.layouts.first().ok_or(EepError::UnknownCommand {
                profile: profile.id,
                field: "layout",
                value: 0,
            });
        }
        Selector::Bits { name, bits } => match read_bits(payload, bits) {
            Some(value) => (name, value),
            None => {
                let shortest = profile.layouts.iter().map(|l| l.len).min().unwrap_or(0);
                return Err(EepError::PayloadLength {
                    profile: profile.id,
                    expected: shortest,
                    got: payload.len(),
                });
            }
        },
        Selector::Status { name, mask } => (
            name,
            u32::from((status & mask) >> mask.trailing_zeros().min(7)),
        ),
    };
    profile
        .layouts
        .iter()
        .find(|l| l.when == value)
        .ok_or(EepError::UnknownCommand {
            profile: profile.id,
            field,
            value,
        })
}

/// Reads `bits` from `payload` (offset from the MSB of the first byte). `None` if the field does
/// not fit in the payload or its size is not 1..=32.
pub fn read_bits(payload: &[u8], bits: Bits) -> Option<u32> {
    let size = usize::from(bits.size);
    if size == 0 || size > 32 {
        return None;
    }
    let start = usize::from(bits.offset);
    let end = start + size;
    let first = start / 8;
    let last = (end - 1) / 8;
    let mut acc: u64 = 0;
    for &byte in payload.get(first..=last)? {
        acc = (acc << 8) | u64::from(byte);
    }
    let shift = (last + 1) * 8 - end;
    Some(((acc >> shift) & ((1u64 << size) - 1)) as u32)
}

/// Rounds half away from zero to 2 decimals (fact sheet §6).
pub fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// The linear rule of fact sheet §6, step first, then rounded to 2 decimals.
pub fn scale_linear(raw: f64, raw_min: f64, raw_max: f64, scale_min: f64, scale_max: f64) -> f64 {
    let step = (scale_max - scale_min) / (raw_max - raw_min);
    round2(scale_min + (raw - raw_min) * step)
}

impl Cond {
    fn holds(self, payload: &[u8]) -> bool {
        match self {
            Cond::Always => true,
            Cond::Eq(bits, value) => read_bits(payload, bits) == Some(value),
            Cond::Ne(bits, value) => read_bits(payload, bits).is_some_and(|raw| raw != value),
        }
    }
}

const RESERVED: &str = "Reserved value";

impl Field {
    fn decode(&self, payload: &[u8]) -> Option<DataPoint> {
        let raw = read_bits(payload, self.bits)?;
        let (value, unit, meaning) = match self.kind {
            Kind::Linear {
                raw_min,
                raw_max,
                scale_min,
                scale_max,
                unit,
                special,
            } => match find_choice(special, raw) {
                Some(c) => (text(c.value), None, Some(c.meaning)),
                None => (
                    Value::Float(scale_linear(
                        f64::from(raw),
                        raw_min,
                        raw_max,
                        scale_min,
                        scale_max,
                    )),
                    Some(unit),
                    None,
                ),
            },
            Kind::Enum(choices) => match find_choice(choices, raw) {
                Some(c) => (text(c.value), None, Some(c.meaning)),
                None => (Value::Int(i64::from(raw)), None, Some(RESERVED)),
            },
            Kind::Pattern(patterns) => match patterns.iter().find(|p| raw & p.mask == p.value) {
                Some(p) => (text(p.text), None, Some(p.meaning)),
                None => (Value::Int(i64::from(raw)), None, Some(RESERVED)),
            },
            Kind::Int { unit, notes } => (
                Value::Int(i64::from(raw)),
                unit,
                notes
                    .iter()
                    .find(|n| (n.lo..=n.hi).contains(&raw))
                    .map(|n| n.meaning),
            ),
            Kind::Number { unit } => (Value::Float(f64::from(raw)), Some(unit), None),
            Kind::Divided {
                unit,
                divisor,
                divisors,
            } => {
                let index = read_bits(payload, divisor)?;
                let div = divisors.get(index as usize).copied().unwrap_or(1.0);
                (Value::Float(round2(f64::from(raw) / div)), unit, None)
            }
        };
        Some(DataPoint {
            key: Cow::Borrowed(self.key),
            value,
            unit: unit.map(Cow::Borrowed),
            meaning: meaning.map(Cow::Borrowed),
        })
    }
}

fn find_choice(choices: &'static [Choice], raw: u32) -> Option<&'static Choice> {
    choices.iter().find(|c| (c.lo..=c.hi).contains(&raw))
}

fn text(s: &'static str) -> Value {
    Value::Text(Cow::Borrowed(s))
}
