//! EnOcean decode throughput.
//!
//! - `parse_and_eep`: ESP3 frame → CRC-checked packet → radio telegram → EEP data points (the issue's
//!   "ESP3 parse + EEP decode" figure; goal 2M telegrams/s on one core). A mix of the shared vectors'
//!   profiles: D2-14-41 (8 fields), A5-09-09, A5-04-01, F6-02-01, D5-00-01.
//! - `engine_document`: the same frames through the whole engine (registry lookup, statistics, the
//!   IoT Connector JSON document), as the decode stage runs it.
//!
//! Run: `cargo bench --bench enocean_decode -- --warm-up-time 1 --measurement-time 5`

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sensorgate::codecs::enocean::engine::{Engine, EngineOptions, Reception};
use sensorgate::codecs::enocean::telegram::Telegram;
use sensorgate::codecs::enocean::{eep, esp3};
use sensorgate::registry::{Device, Registry};

/// (frame, EEP) from the shared vectors 01, 02, 07, 03, 15.
const FRAMES: &[(&str, &str)] = &[
    (
        "55000f07012bd29fce800863b502a62004138bb48000ffffffff4d0025",
        "d2-14-41",
    ),
    (
        "55000a0701eba500005008051b03c90100ffffffff500090",
        "a5-09-09",
    ),
    (
        "55000a0701eba5007d8c0a0180a1b30001ffffffff50004d",
        "a5-04-01",
    ),
    ("55000707017af600feee14ab2000ffffffff4700ad", "f6-02-01"),
    ("55000707017ad5090180a1bb0001ffffffff440061", "d5-00-01"),
];

fn frames() -> Vec<(Vec<u8>, &'static eep::Profile)> {
    FRAMES
        .iter()
        .map(|(hex, id)| {
            let profile = eep::lookup(id).expect("built-in profile");
            (hex::decode(hex).expect("hex"), profile)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let frames = frames();
    let mut group = c.benchmark_group("enocean_decode");
    group.throughput(Throughput::Elements(frames.len() as u64));
    group.bench_function("parse_and_eep", |b| {
        let mut points = Vec::with_capacity(16);
        b.iter(|| {
            for (frame, profile) in &frames {
                let (packet, _) = esp3::parse_packet(black_box(frame)).expect("frame");
                let telegram = Telegram::from_packet(&packet).expect("telegram");
                points.clear();
                eep::decode(
                    profile,
                    telegram.rorg,
                    &telegram.payload,
                    telegram.status,
                    &mut points,
                )
                .expect("decodes");
                black_box(&points);
            }
        })
    });

    let mut devices = HashMap::new();
    for (hex, id) in FRAMES {
        let frame = hex::decode(hex).expect("hex");
        let (packet, _) = esp3::parse_packet(&frame).expect("frame");
        let sender = Telegram::from_packet(&packet).expect("telegram").sender;
        let device = Device {
            eurid: sender,
            id: format!("{sender:08x}"),
            eep: Some(id.to_string()),
            friendly_id: "bench".into(),
            location: "bench".into(),
            custom_tag: String::new(),
            security: None,
            fields: Default::default(),
        };
        devices.insert(sender, Arc::new(device));
    }
    let mut engine = Engine::new(Registry::from_devices(devices), EngineOptions::default());
    let reception = Reception {
        gateway: Some("aabbccddeeff"),
        ..Reception::default()
    };
    group.bench_function("engine_document", |b| {
        let mut out = Vec::with_capacity(4);
        b.iter(|| {
            for (frame, _) in &frames {
                engine
                    .decode(
                        black_box(frame),
                        &reception,
                        SystemTime::now(),
                        Instant::now(),
                        &mut out,
                    )
                    .expect("decodes");
                out.clear();
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
