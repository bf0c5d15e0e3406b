//! A hostile test plugin: `decode` logs a line through the host, then panics (a trap).

#![no_std]
extern crate alloc;

use sensorgate_plugin_sdk::*;

struct Trap;

impl Guest for Trap {
    fn metadata() -> Metadata {
        metadata(
            "hostile-trap",
            "0.1.0",
            &["eep:a5-3f-03", "vendor:hostile-trap"],
        )
    }

    fn decode(frame: Frame) -> Result<Output, DecodeError> {
        log(Level::Warn, "hostile-trap: about to panic");
        let index = frame.payload.len() + 7;
        // An out-of-bounds index: a panic, which the SDK turns into a trap.
        let byte = frame.payload[core::hint::black_box(index)];
        readings(alloc::vec![Reading::int("never", i64::from(byte), None)])
    }
}

export!(Trap);
