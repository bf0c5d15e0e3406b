//! Decoding A5-02-05 telegrams with the parity plugin (`plugins/parity-a5-02-05`, a WebAssembly
//! component run by wasmtime) against the built-in table decoder, on the same 256 telegrams (every
//! DB1 value):
//!
//! - `eep/*`: one profile decode call (`eep::decode` vs `Runner::decode_eep`), the plugin's
//!   whole cost: frame lowering, fuel, the guest, lifting and checking the readings;
//! - `engine/*`: one ESP3 frame through the EnOcean engine (parse, registry, document), which is
//!   what a flow pays per telegram.
//!
//! Needs the built plugin: `plugins/build.sh` (scripts/test.sh runs it first).
//! Run: `cargo bench --bench plugins`.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sensorgate::codecs::enocean::eep;
use sensorgate::codecs::enocean::engine::{Engine, EngineOptions, Reception};
use sensorgate::codecs::enocean::esp3;
use sensorgate::codecs::wasm::{FrameRef, Host, PluginsConfig, Prefer, Runner};
use sensorgate::registry::{Device, Registry};

fn payloads() -> Vec<[u8; 4]> {
    (0..=255u8).map(|db1| [0x00, 0x00, db1, 0x08]).collect()
}

fn host(prefer: Prefer) -> Arc<Host> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/dist");
    assert!(
        dir.join("parity-a5-02-05.wasm").is_file(),
        "plugins/dist/parity-a5-02-05.wasm is missing: run plugins/build.sh"
    );
    let mut config = PluginsConfig::for_dir(&dir);
    config.prefer = prefer;
    let host = Host::open(&config).expect("plugins load");
    assert!(host.plugins().find("eep:a5-02-05").is_some());
    host
}

fn engine(plugins: Option<Runner>) -> Engine {
    let device = Device {
        eurid: 0,
        id: String::new(),
        eep: Some("a5-02-05".into()),
        friendly_id: String::new(),
        location: String::new(),
        custom_tag: String::new(),
        security: None,
        fields: Default::default(),
    };
    let options = EngineOptions {
        default_device: Some(device),
        report_first_send: false,
        ..EngineOptions::default()
    };
    let engine = Engine::new(Registry::empty(), options);
    match plugins {
        Some(runner) => engine.with_plugins(runner),
        None => engine,
    }
}

fn bench(c: &mut Criterion) {
    let payloads = payloads();
    let profile = eep::lookup("a5-02-05").unwrap();
    let mut group = c.benchmark_group("plugins_a5-02-05");
    group.throughput(Throughput::Elements(payloads.len() as u64));

    group.bench_function("eep/builtin", |b| {
        let mut out = Vec::with_capacity(4);
        b.iter(|| {
            for p in &payloads {
                out.clear();
                eep::decode(profile, 0xA5, black_box(p), 0, &mut out).unwrap();
                black_box(&out);
            }
        })
    });

    let mut runner = Runner::new(host(Prefer::Plugin));
    group.bench_function("eep/plugin", |b| {
        b.iter(|| {
            for p in &payloads {
                let frame = FrameRef {
                    payload: black_box(p),
                    device: "0180a1b2",
                    rorg: 0xA5,
                    status: 0,
                    gateway: None,
                    route: None,
                };
                let points = runner.decode_eep("a5-02-05", frame).unwrap().unwrap();
                black_box(points);
            }
        })
    });

    let per_plugin =
        |name: &str| sensorgate::metrics::counter(name, &[("plugin", "parity-a5-02-05")]).get();
    let calls = per_plugin("plugin_calls_total");
    if let Some(fuel) = per_plugin("plugin_fuel_used_total").checked_div(calls) {
        eprintln!("parity-a5-02-05: {fuel} fuel per call on average over {calls} calls");
    }

    let frames: Vec<Vec<u8>> = payloads
        .iter()
        .map(|p| {
            let mut erp1 = vec![0xA5];
            erp1.extend_from_slice(p);
            erp1.extend_from_slice(&[0x01, 0x80, 0xa1, 0xb2, 0x00]);
            esp3::encode(0x01, &erp1, &[1, 0xff, 0xff, 0xff, 0xff, 0x45, 0])
        })
        .collect();
    let reception = Reception {
        gateway: Some("gw1"),
        ..Reception::default()
    };
    for (name, plugins) in [
        ("engine/builtin", None),
        ("engine/plugin", Some(Runner::new(host(Prefer::Plugin)))),
    ] {
        let mut engine = engine(plugins);
        let mut out = Vec::with_capacity(4);
        group.bench_function(name, |b| {
            b.iter(|| {
                let (at, now) = (SystemTime::now(), Instant::now());
                for f in &frames {
                    out.clear();
                    engine
                        .decode(black_box(f), &reception, at, now, &mut out)
                        .unwrap();
                    black_box(&out);
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
