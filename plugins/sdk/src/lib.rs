//! The guest SDK for sensorgate decoder plugins.
//!
//! A plugin is a `#![no_std]` `cdylib` crate built for `wasm32-wasip2` that implements [`Guest`]
//! and calls [`export!`]:
//!
//! ```ignore
//! #![no_std]
//! extern crate alloc;
//! use alloc::{string::ToString, vec, vec::Vec};
//! use sensorgate_plugin_sdk::*;
//!
//! struct Plugin;
//! impl Guest for Plugin {
//!     fn metadata() -> Metadata { metadata("my-plugin", "0.1.0", &["eep:a5-20-01"]) }
//!     fn decode(frame: Frame) -> Result<Output, DecodeError> { ... }
//! }
//! export!(Plugin);
//! ```
//!
//! The bindings are generated from `plugins/wit/decoder.wit`. The SDK also brings what a
//! `no_std` WebAssembly guest needs (an allocator, a panic handler that traps) so that the
//! component imports nothing but `host.log`: no WASI at all.
//!
//! Helpers follow the EnOcean fact sheet (`shared/protocols/enocean.md`): [`bits`] reads a field
//! by its EEP bit offset (counted from the MSB of the first data byte, DB3.7 for 4BS) and size;
//! [`scale`] is the linear rule of §6 (step first, rounded to 2 decimals).

#![cfg_attr(not(test), no_std)]

extern crate alloc;

use alloc::string::{String, ToString};
use alloc::vec::Vec;

/// The bindings generated from `plugins/wit/decoder.wit`.
pub mod bindings {
    wit_bindgen::generate!({
        world: "decoder",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "sensorgate_plugin_sdk::bindings",
        std_feature,
    });
}

pub use bindings::Guest;
pub use bindings::export;
pub use bindings::sensorgate::decoder::host::log as host_log;
pub use bindings::sensorgate::decoder::types::{
    DecodeError, Document, Frame, Level, Metadata, Output, Reading, Transport, Value,
};

#[cfg(all(target_arch = "wasm32", not(test)))]
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

/// The canonical ABI's allocation entry point. wit-bindgen leaves it to wasi-libc on
/// `wasm32-wasip2`, which a `no_std` guest does not link, so the SDK provides it.
///
/// # Safety
/// Called by the host only, as the component model's canonical ABI specifies.
#[cfg(all(target_arch = "wasm32", not(test)))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cabi_realloc(
    old_ptr: *mut u8,
    old_len: usize,
    align: usize,
    new_len: usize,
) -> *mut u8 {
    use alloc::alloc::{Layout, alloc, handle_alloc_error, realloc};
    if new_len == 0 {
        // A zero-sized allocation needs no memory, only an aligned non-null pointer.
        return align as *mut u8;
    }
    // SAFETY: the canonical ABI passes a power-of-two alignment and the previous allocation's
    // size and alignment with its pointer.
    unsafe {
        let ptr = if old_len == 0 {
            alloc(Layout::from_size_align_unchecked(new_len, align))
        } else {
            realloc(
                old_ptr,
                Layout::from_size_align_unchecked(old_len, align),
                new_len,
            )
        };
        if ptr.is_null() {
            handle_alloc_error(Layout::from_size_align_unchecked(new_len, align));
        }
        ptr
    }
}

/// `memcmp`, which `core` calls for slice comparisons and which wasi-libc would otherwise
/// provide. Volatile reads keep the optimizer from turning the loop back into a call to itself.
///
/// # Safety
/// `a` and `b` must be valid for reads of `n` bytes.
#[cfg(all(target_arch = "wasm32", not(test)))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: the caller guarantees both ranges are readable.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// `bcmp`: equality only, the same as [`memcmp`] for the caller's purpose.
///
/// # Safety
/// As [`memcmp`].
#[cfg(all(target_arch = "wasm32", not(test)))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract.
    unsafe { memcmp(a, b, n) }
}

/// A panic (including a failed allocation) traps: the host fails the frame and starts over with a
/// fresh instance. There is nowhere to print the message to.
#[cfg(all(target_arch = "wasm32", not(test)))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    core::arch::wasm32::unreachable()
}

/// The plugin's [`Metadata`] from string slices.
pub fn metadata(name: &str, version: &str, decodes: &[&str]) -> Metadata {
    Metadata {
        name: name.to_string(),
        version: version.to_string(),
        decodes: decodes.iter().map(|d| d.to_string()).collect(),
    }
}

/// Logs a line through the host (it adds the plugin's name).
pub fn log(level: Level, message: &str) {
    host_log(level, message);
}

/// Reads `size` bits (1..=32) at `offset` bits from the MSB of `data[0]`, as EEP specs number
/// them (4BS: offset 0 is DB3.7, offset 31 is DB0.0). `None` if the field does not fit.
pub fn bits(data: &[u8], offset: usize, size: usize) -> Option<u32> {
    if size == 0 || size > 32 {
        return None;
    }
    let end = offset + size;
    let first = offset / 8;
    let last = (end - 1) / 8;
    let mut acc: u64 = 0;
    for &byte in data.get(first..=last)? {
        acc = (acc << 8) | u64::from(byte);
    }
    let shift = (last + 1) * 8 - end;
    Some(((acc >> shift) & ((1u64 << size) - 1)) as u32)
}

/// The EnOcean linear scaling rule (fact sheet §6): `step = (scale_max - scale_min) /
/// (raw_max - raw_min)`, then `scale_min + (raw - raw_min) * step`, rounded half away from zero
/// to 2 decimals. Inverted ranges (raw 255..0) are written with `raw_min > raw_max`.
pub fn scale(raw: u32, raw_min: f64, raw_max: f64, scale_min: f64, scale_max: f64) -> f64 {
    let step = (scale_max - scale_min) / (raw_max - raw_min);
    round2(scale_min + (f64::from(raw) - raw_min) * step)
}

/// Rounds half away from zero to 2 decimals without `std` (no `f64::round` in `core`).
pub fn round2(v: f64) -> f64 {
    let scaled = v * 100.0;
    // Values past 2^52 have no fraction left to round.
    if !(scaled.abs() < 4_503_599_627_370_496.0) {
        return v;
    }
    let truncated = scaled as i64 as f64;
    let fraction = scaled - truncated;
    let rounded = if fraction >= 0.5 {
        truncated + 1.0
    } else if fraction <= -0.5 {
        truncated - 1.0
    } else {
        truncated
    };
    rounded / 100.0
}

impl Reading {
    /// A measured number with its unit: `{"key", "value": 19.92, "unit": "°C"}`.
    pub fn number(key: &str, value: f64, unit: &str) -> Reading {
        Reading {
            key: key.to_string(),
            value: Value::Float(value),
            unit: Some(unit.to_string()),
            meaning: None,
        }
    }

    /// An enumerated state: `{"key", "value": "open", "meaning": "Window opened"}`.
    pub fn state(key: &str, value: &str, meaning: &str) -> Reading {
        Reading {
            key: key.to_string(),
            value: Value::Text(value.to_string()),
            unit: None,
            meaning: Some(meaning.to_string()),
        }
    }

    /// A whole number, with an optional unit.
    pub fn int(key: &str, value: i64, unit: Option<&str>) -> Reading {
        Reading {
            key: key.to_string(),
            value: Value::Int(value),
            unit: unit.map(str::to_string),
            meaning: None,
        }
    }
}

/// The 4BS LRN bit (DB0.3, offset 28) as the built-in decoder reports it (the `learn` entry).
pub fn learn_4bs(data: &[u8]) -> Option<Reading> {
    Some(match bits(data, 28, 1)? {
        0 => Reading::state("learn", "pressed", "Teach-in telegram"),
        _ => Reading::state("learn", "notPressed", "Data telegram"),
    })
}

/// A `malformed` error saying which length the profile needs.
pub fn wrong_length(profile: &str, expected: usize, got: usize) -> DecodeError {
    let mut text = String::from(profile);
    text.push_str(": the payload has ");
    text.push_str(&got.to_string());
    text.push_str(" bytes but this message needs ");
    text.push_str(&expected.to_string());
    DecodeError::Malformed(text)
}

/// Checks a 4BS telegram: RORG A5 and four data bytes.
pub fn expect_4bs(frame: &Frame) -> Result<&[u8], DecodeError> {
    if frame.transport.rorg != 0xA5 {
        return Err(DecodeError::Unsupported(alloc::format!(
            "{}: RORG {:02x} is not 4BS (a5)",
            frame.profile,
            frame.transport.rorg
        )));
    }
    if frame.payload.len() != 4 {
        return Err(wrong_length(&frame.profile, 4, frame.payload.len()));
    }
    Ok(&frame.payload)
}

/// `Ok(Output::Readings(..))` for the common case.
pub fn readings(list: Vec<Reading>) -> Result<Output, DecodeError> {
    Ok(Output::Readings(list))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_count_from_the_msb_of_the_first_byte() {
        let data = [0b1010_0000, 0x80, 0x7f, 0x08];
        assert_eq!(bits(&data, 0, 1), Some(1));
        assert_eq!(bits(&data, 0, 3), Some(0b101));
        assert_eq!(bits(&data, 16, 8), Some(0x7f));
        assert_eq!(bits(&data, 28, 1), Some(1));
        assert_eq!(bits(&data, 12, 8), Some(0x07));
        assert_eq!(bits(&data, 30, 8), None);
    }

    #[test]
    fn scale_is_step_first_and_rounds_half_away_from_zero() {
        // A5-02-05 DB1 = 0x80, inverted 255..0 -> 0..40 °C (vector 06).
        assert_eq!(scale(0x80, 255.0, 0.0, 0.0, 40.0), 19.92);
        // D2-14-41 ACZ 305 -> -0.975 in f64 step form is -0.97499.. -> -0.97 (fact sheet §6).
        assert_eq!(scale(305, 0.0, 1000.0, -2.5, 2.5), -0.97);
        assert_eq!(round2(-0.125), -0.13);
        assert_eq!(round2(0.125), 0.13);
    }
}
