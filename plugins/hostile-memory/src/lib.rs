//! A hostile test plugin: `decode` allocates a megabyte at a time and keeps it, without end.
//! The host's memory cap must stop it.

#![no_std]
extern crate alloc;

use alloc::{vec, vec::Vec};
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
            hoard.push(core::hint::black_box(vec![0xAB; 1 << 20]));
        }
    }
}

export!(MemoryBomb);
