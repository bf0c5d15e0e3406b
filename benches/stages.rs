//! Per-record cost of the stages that follow decode (issue 4's figures: goal under 1 µs each for a
//! typical document), each measured on records the real decode stage made:
//!
//! - `dedupe_memory`: the in-memory dedupe stage, key "esp3" over EnOcean frames, half of them copies
//!   from a second gateway (the mix a site with overlapping gateways sends); and key "efento" over
//!   Efento frames, all distinct.
//! - `enrich`: a registry of 10,000 devices, metadata added under `meta`.
//! - `validate`: the published schemas (`schemas/`) on an EnOcean telemetry document and on an Efento
//!   measurements document of 8 readings (the load generator's frame).
//!
//! Run: `cargo bench --bench stages -- --warm-up-time 1 --measurement-time 5`

use std::path::Path;
use std::time::Duration;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use sensorgate::config::HumanDuration;
use sensorgate::record::{Delivery, Origin, Record};
use sensorgate::stages::Stage;
use sensorgate::stages::decode::{Codec, DecodeConfig, DecodeStage};
use sensorgate::stages::dedupe::{Backend, DedupeConfig, DedupeStage};
use sensorgate::stages::enrich::{EnrichConfig, EnrichStage, Unknown};
use sensorgate::stages::validate::{ValidateConfig, ValidateStage};

const BATCH: usize = 1000;
/// An A5-02-05 telegram (shared vector 06); the sender is in the bench registry.
const ENOCEAN: &str = "55000a0701eba5000080080180a1b20001ffffffff450051";

fn raw(bytes: Vec<u8>, route: &str, gateway: &str) -> Record {
    let origin = Origin {
        route: Some(route.into()),
        path: Some(route.into()),
        gateway: Some(gateway.into()),
        ..Origin::default()
    };
    Record::new(
        "bench".into(),
        origin,
        Bytes::from(bytes),
        Delivery::detached(),
    )
}

/// The same A5 telegram with a different data byte per `i`: distinct telegrams of one sender.
fn enocean_frame(i: u32) -> Vec<u8> {
    let mut bytes = hex::decode(ENOCEAN).expect("hex");
    let (p, _) = sensorgate::codecs::enocean::esp3::parse_packet(&bytes).expect("frame");
    let mut data = p.data.to_vec();
    data[1] = (i & 0xff) as u8;
    data[2] = ((i >> 8) & 0xff) as u8;
    bytes = sensorgate::codecs::enocean::esp3::encode(p.packet_type, &data, p.optional);
    bytes
}

fn registry(dir: &Path) -> std::path::PathBuf {
    let mut text = String::from(
        "[[devices]]\neurid = \"0180a1b2\"\neep = \"a5-02-05\"\nfriendly_id = \"Room 12\"\nlocation = \"Floor 2\"\n[devices.fields]\nroom = \"12\"\n",
    );
    for i in 0..10_000u32 {
        text.push_str(&format!(
            "[[devices]]\nserial = \"4C47{i:08X}\"\nfriendly_id = \"Sensor {i}\"\nlocation = \"Hall {}\"\n",
            i % 7
        ));
    }
    let path = dir.join("devices.toml");
    std::fs::write(&path, text).expect("registry");
    path
}

fn decoded(stage: &mut DecodeStage, record: Record) -> Record {
    let mut out = Vec::new();
    stage.process(record, &mut out);
    out.into_iter()
        .find(|r| r.kind != sensorgate::record::Kind::Event)
        .expect("a decoded record")
}

/// Times one stage over a batch of `BATCH` records (cloned outside the timing).
fn per_record(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    stage: &mut dyn Stage,
    input: &[Record],
) {
    group.bench_function(name, |b| {
        b.iter_batched(
            || input.to_vec(),
            // The records are returned, so their drop (a sink's work) falls outside the timing.
            |batch| {
                let mut out = Vec::with_capacity(BATCH);
                for r in batch {
                    stage.process(r, &mut out);
                }
                out
            },
            BatchSize::LargeInput,
        )
    });
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let devices = registry(dir.path());
    let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");

    let mut esp3 = DecodeStage::new(
        "bench-decode-esp3",
        &DecodeConfig {
            codec: Codec::Esp3,
            registry: Some(devices.clone()),
            stats_interval: HumanDuration(Duration::ZERO),
            chain_timeout: HumanDuration(Duration::from_secs(3)),
            rlc_window: 128,
            json: None,
            output: Default::default(),
        },
    );
    let mut efento = DecodeStage::new(
        "bench-decode-efento",
        &DecodeConfig {
            codec: Codec::Efento,
            registry: None,
            stats_interval: HumanDuration(Duration::ZERO),
            chain_timeout: HumanDuration(Duration::from_secs(3)),
            rlc_window: 128,
            json: None,
            output: Default::default(),
        },
    );
    // Half the receptions are the same telegram from a second gateway.
    let enocean_raw: Vec<Record> = (0..BATCH as u32)
        .map(|i| {
            raw(
                enocean_frame(i / 2),
                "esp3",
                if i % 2 == 0 { "gw-a" } else { "gw-b" },
            )
        })
        .collect();
    let efento_raw: Vec<Record> = (0..BATCH as u32)
        .map(|i| raw(sensorgate::loadgen::frame(i, i), "measurements", "-"))
        .collect();
    let telemetry = decoded(&mut esp3, raw(enocean_frame(7), "esp3", "gw-a"));
    let measurements = decoded(
        &mut efento,
        raw(sensorgate::loadgen::frame(3, 1), "measurements", "-"),
    );

    let mut group = c.benchmark_group("stages");
    group.throughput(Throughput::Elements(BATCH as u64));

    let dedupe = |key: &str, flow: &str| {
        DedupeStage::new(
            flow,
            &DedupeConfig {
                key: key.into(),
                window: HumanDuration(Duration::from_secs(2)),
                max_entries: 1_000_000,
                merge: HumanDuration(Duration::ZERO),
                backend: Backend::Memory,
                redis: None,
            },
        )
    };
    for (name, key, input) in [
        ("dedupe_memory_esp3_half_copies", "esp3", &enocean_raw),
        ("dedupe_memory_efento_distinct", "efento", &efento_raw),
    ] {
        per_record(&mut group, name, &mut dedupe(key, name), input);
    }

    let mut enrich = EnrichStage::new(
        "bench-enrich",
        &EnrichConfig {
            registry: Some(devices.clone()),
            target: "meta".into(),
            fields: serde_json::json!({"site": "plant-1"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            unknown: Unknown::Pass,
        },
    );
    for (name, doc) in [
        ("enrich_enocean", &telemetry),
        ("enrich_efento", &measurements),
    ] {
        per_record(&mut group, name, &mut enrich, &vec![doc.clone(); BATCH]);
    }

    for (name, schema, doc) in [
        (
            "validate_enocean_telemetry",
            "enocean-telemetry.schema.json",
            &telemetry,
        ),
        (
            "validate_efento_measurements",
            "efento-measurements.schema.json",
            &measurements,
        ),
        // The stage's own share: the document built and taken apart again around a check of
        // nothing (the empty schema accepts everything).
        ("validate_efento_empty_schema", "", &measurements),
    ] {
        let schema = if schema.is_empty() {
            let path = dir.path().join("empty.schema.json");
            std::fs::write(&path, "{}").expect("write the empty schema");
            path
        } else {
            schemas.join(schema)
        };
        let mut stage = ValidateStage::new(
            name,
            &ValidateConfig {
                schema: Some(schema),
                schemas: Default::default(),
                unmatched: Default::default(),
            },
        )
        .expect("the published schema compiles");
        // It must pass, or the bench would measure the error path.
        let mut out = Vec::new();
        stage.process(doc.clone(), &mut out);
        assert_eq!(
            out[0].kind,
            doc.kind,
            "{name}: {:?}",
            out[0].body.get("error")
        );
        per_record(&mut group, name, &mut stage, &vec![doc.clone(); BATCH]);
    }

    group.finish();

    // What a flow adds per record when the HTTP API's live view is on (nobody tapping).
    let mut group = c.benchmark_group("live");
    group.throughput(Throughput::Elements(1));
    let live = sensorgate::live::Live::new(10);
    let flow: std::sync::Arc<str> = std::sync::Arc::from("bench");
    for (name, doc) in [
        ("observe_enocean", &telemetry),
        ("observe_efento", &measurements),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| live.observe(&flow, std::hint::black_box(doc)));
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
