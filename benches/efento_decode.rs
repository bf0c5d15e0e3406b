//! Efento `/m` decode throughput: payload bytes → measurements document (vector m00, the public seed frame
//! with 25 binary rows, and vector m01, 12 continuous rows). The main figures include dropping the document,
//! as a pipeline does once its sinks are done; `*_without_drop` leaves the drop out of the timing.
//!
//! Run: `cargo bench --bench efento_decode -- --warm-up-time 1 --measurement-time 5`

use std::hint::black_box;

// The sensorgate binary runs on mimalloc (src/main.rs); measure the codec with the same allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sensorgate::codecs::efento::{Message, decode};
use sensorgate::document::to_json_line;
use sensorgate::record::{Delivery, Origin, Record};

/// Vector m00: the seed frame (one OK_ALARM channel expanding to 25 rows).
const M00: &str =
    "0a06282c024156af10011814220d080510e0f7e1a7062a0301c10728acffe1a7063014380c40014877820100";
/// Vector m01: temperature and humidity, 6 samples each.
const M01: &str = "0a06282c0241a1b21001183c2212080110a08e9ebc0620692a06000a0f2152702213080210a08e9ebc0620ae012a0600020608030d28b0aa9ebc06381940054803";

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("efento_decode");
    group.throughput(Throughput::Elements(1));
    for (name, hex) in [("m00_seed_open_close", M00), ("m01_temp_humidity", M01)] {
        let payload = hex::decode(hex).expect("valid hex");
        assert!(decode(Message::Measurements, &payload).is_ok());
        group.bench_function(name, |b| {
            b.iter(|| decode(Message::Measurements, black_box(&payload)).expect("decodes"))
        });
        group.bench_function(format!("{name}_without_drop"), |b| {
            b.iter_with_large_drop(|| {
                decode(Message::Measurements, black_box(&payload)).expect("decodes")
            })
        });
    }
    // The whole way to a sink's bytes: decode, then the JSON line a json_lines sink writes.
    let payload = hex::decode(M00).expect("valid hex");
    group.bench_function("m00_seed_open_close_to_json_line", |b| {
        let mut line = Vec::with_capacity(4096);
        b.iter(|| {
            let decoded = decode(Message::Measurements, black_box(&payload)).expect("decodes");
            let mut record = Record::new(
                "efento".into(),
                Origin::default(),
                Bytes::new(),
                Delivery::detached(),
            );
            record.kind = decoded.kind;
            record.device = Some(decoded.serial);
            record.body = decoded.body;
            record.readings = decoded.readings;
            line.clear();
            to_json_line(&record, &mut line);
            record.delivery.delivered();
            line.len()
        })
    });
    group.finish();
}

criterion_group!(benches, bench_decode);
criterion_main!(benches);
