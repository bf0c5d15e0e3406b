//! A hostile test plugin: `decode` never returns. The host's fuel budget must stop it.

#![no_std]
extern crate alloc;

use sensorgate_plugin_sdk::*;

struct Loop;

impl Guest for Loop {
    fn metadata() -> Metadata {
        metadata(
            "hostile-loop",
            "0.1.0",
            &["eep:a5-3f-01", "vendor:hostile-loop"],
        )
    }

    fn decode(frame: Frame) -> Result<Output, DecodeError> {
        let mut spin = frame.payload.len() as u64;
        loop {
            spin = core::hint::black_box(spin.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

export!(Loop);
