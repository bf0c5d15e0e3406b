//! A hostile test plugin: `decode` allocates a megabyte at a time and keeps it, without end.
//! The host's memory cap must stop it. The megabytes are reserved, not written, so the plugin
//! reaches the cap long before its fuel runs out.

#![no_std]
extern crate alloc;

use alloc::vec::Vec;
use sensorgate_plugin_sdk::*;

struct MemoryBomb;

impl Guest for MemoryBomb {
    fn metadata() -> Metadata {
        metadata(
            "hostile-memory",
            "0.1.0",
            &["eep:a5-3f-02", "vendor:hostile-memory"],
        )
    }

    fn decode(_frame: Frame) -> Result<Output, DecodeError> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut block: Vec<u8> = Vec::with_capacity(1 << 20);
            block.push(0xAB);
            hoard.push(core::hint::black_box(block));
        }
    }
}

export!(MemoryBomb);
