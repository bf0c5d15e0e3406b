//! EEP A5-02-05, temperature sensor 0 °C to +40 °C, as a plugin: the same profile the built-in
//! table has, so that outputs and speed can be compared (tests/plugins_e2e.rs, benches/plugins.rs).
//! Fact sheet §5: temperature DB1 (offset 16, 8 bits), raw 255..0 -> 0..40 °C; LRN DB0.3.

#![no_std]
extern crate alloc;

use alloc::vec;
use sensorgate_plugin_sdk::*;

struct Parity;

impl Guest for Parity {
    fn metadata() -> Metadata {
        metadata("parity-a5-02-05", "0.1.0", &["eep:a5-02-05"])
    }

    fn decode(frame: Frame) -> Result<Output, DecodeError> {
        let data = expect_4bs(&frame)?;
        let raw = bits(data, 16, 8).unwrap_or(0);
        let learn = learn_4bs(data).ok_or_else(|| wrong_length(&frame.profile, 4, data.len()))?;
        readings(vec![
            Reading::number("temperature", scale(raw, 255.0, 0.0, 0.0, 40.0), "°C"),
            learn,
        ])
    }
}

export!(Parity);
