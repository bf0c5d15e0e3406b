use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type, TimestampMicrosecondType};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::*;
use crate::record::{Delivery, DeliveryWatch, Kind, Origin, Outcome};

/// 2023-09-06T10:00:00Z
const T0: i64 = 1_693_994_400;

fn config(path: &Path) -> ParquetConfig {
    ParquetConfig {
        path: path.to_path_buf(),
        commit_interval: HumanDuration::from_millis(50),
        max_file_rows: 1_000_000,
        max_file_bytes: 128 << 20,
        compression: ParquetCompression::Zstd,
        fsync: true,
    }
}

fn record_with(kind: Kind, device: Option<&str>, body: Value) -> (Record, DeliveryWatch) {
    let (delivery, watch) = Delivery::new();
    let origin = Origin {
        gateway: Some("gw-1".into()),
        rssi: Some(-71),
        ..Origin::default()
    };
    let mut record = Record::new(
        "efento".into(),
        origin,
        Bytes::from_static(b"\x0a"),
        delivery,
    );
    record.received_at = UNIX_EPOCH + Duration::from_secs(T0 as u64 + 3600);
    record.device = device.map(str::to_string);
    record.kind = kind;
    let Value::Object(body) = body else {
        panic!("body must be an object")
    };
    record.body = body;
    (record, watch)
}

/// An Efento-like measurements record: two temperature readings and one ok/alarm reading.
fn efento(device: &str, ts: i64) -> (Record, DeliveryWatch) {
    record_with(
        Kind::Measurements,
        Some(device),
        json!({
            "serial": device,
            "battery_ok": true,
            "measurements": [
                {"channel": 1, "type": "temperature", "ts": ts, "value": 21.5, "unit": "degC", "raw": 215},
                {"channel": 1, "type": "temperature", "ts": ts + 60, "value": -3.25, "unit": "degC", "raw": -33},
                {"channel": 2, "type": "ok_alarm", "ts": ts, "value": "ok", "unit": null},
            ]
        }),
    )
}

async fn outcome(watch: DeliveryWatch) -> Outcome {
    tokio::time::timeout(Duration::from_secs(20), watch)
        .await
        .expect("settled in time")
        .expect("settled, not dropped")
}

async fn assert_delivered(watch: DeliveryWatch) {
    let got = outcome(watch).await;
    assert!(matches!(got, Outcome::Delivered { .. }), "{got:?}");
}

/// Every file below `root`, relative to it, sorted.
fn files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                out.push(path.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

fn parquet_files(root: &Path) -> Vec<PathBuf> {
    let all = files(root);
    assert!(
        all.iter().all(|f| !f.to_string_lossy().contains(".tmp")),
        "temporary file left: {all:?}"
    );
    all
}

/// A row read back, in file order.
#[derive(Debug, Clone, PartialEq)]
struct ReadRow {
    ts: i64,
    device: Option<String>,
    source: String,
    kind: String,
    key: String,
    channel: Option<i32>,
    value: Option<f64>,
    text: Option<String>,
    unit: Option<String>,
    meta: Option<i64>,
    error_code: Option<i64>,
    gateway: Option<String>,
    rssi: Option<i32>,
    received_at: i64,
}

fn read_file(path: &Path) -> Vec<ReadRow> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(fs::File::open(path).unwrap()).unwrap();
    assert_eq!(builder.schema().fields(), schema().fields());
    let mut rows = Vec::new();
    for batch in builder.with_batch_size(8192).build().unwrap() {
        let batch = batch.unwrap();
        let string = |name: &str, i: usize| {
            let col = batch.column_by_name(name).unwrap().as_string::<i32>();
            col.is_valid(i).then(|| col.value(i).to_string())
        };
        let ts = batch.column(0).as_primitive::<TimestampMicrosecondType>();
        let received = batch.column(13).as_primitive::<TimestampMicrosecondType>();
        let channel = batch.column(5).as_primitive::<Int32Type>();
        let value = batch.column(6).as_primitive::<Float64Type>();
        let meta = batch.column(9).as_primitive::<Int64Type>();
        let error_code = batch.column(10).as_primitive::<Int64Type>();
        let rssi = batch.column(12).as_primitive::<Int32Type>();
        for i in 0..batch.num_rows() {
            rows.push(ReadRow {
                ts: ts.value(i),
                device: string("device", i),
                source: string("source", i).unwrap(),
                kind: string("kind", i).unwrap(),
                key: string("key", i).unwrap(),
                channel: channel.is_valid(i).then(|| channel.value(i)),
                value: value.is_valid(i).then(|| value.value(i)),
                text: string("text", i),
                unit: string("unit", i),
                meta: meta.is_valid(i).then(|| meta.value(i)),
                error_code: error_code.is_valid(i).then(|| error_code.value(i)),
                gateway: string("gateway", i),
                rssi: rssi.is_valid(i).then(|| rssi.value(i)),
                received_at: received.value(i),
            });
        }
    }
    rows
}

fn read_all(root: &Path) -> Vec<ReadRow> {
    parquet_files(root)
        .iter()
        .flat_map(|f| read_file(&root.join(f)))
        .collect()
}

fn micros(secs: i64) -> i64 {
    secs * 1_000_000
}

#[tokio::test]
async fn parquet_records_are_delivered_only_after_file_is_renamed_and_readable() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake");
    let mut config = config(&root);
    config.commit_interval = HumanDuration::from_secs(1);
    let sink = ParquetSink::new("pq-delivered", &config).unwrap();
    let (tx, rx) = mpsc::channel(16);
    let task = tokio::spawn(sink.run(rx));

    let (record, mut watch) = efento("282C024156AF", T0);
    let received_at = micros_since_epoch(record.received_at);
    tx.send(record).await.unwrap();
    // Well inside the commit interval: nothing is committed, so nothing may be settled.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(watch.try_recv().is_err(), "settled before its commit");
    assert!(
        files(&root)
            .iter()
            .all(|f| !f.to_string_lossy().ends_with(".parquet"))
    );

    let got = tokio::time::timeout(Duration::from_secs(20), &mut watch)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(got, Outcome::Delivered { .. }), "{got:?}");
    // Settled means: renamed to its final name, complete, and readable.
    let committed = parquet_files(&root);
    assert_eq!(committed.len(), 1, "{committed:?}");
    let file = &committed[0];
    assert_eq!(file.parent().unwrap(), Path::new("dt=2023-09-06"));
    let name = file.file_name().unwrap().to_string_lossy();
    assert!(
        name.starts_with("part-") && name.ends_with(&format!("-{}.parquet", *super::INSTANCE)),
        "{name}"
    );

    let rows = read_file(&root.join(file));
    assert_eq!(rows.len(), 3);
    // Sorted by (device, ts); equal times keep arrival (channel) order.
    assert_eq!(rows[0].ts, micros(T0));
    assert_eq!(rows[0].key, "temperature");
    assert_eq!(rows[0].value, Some(21.5));
    assert_eq!(rows[0].text, None);
    assert_eq!(rows[0].unit.as_deref(), Some("degC"));
    assert_eq!(rows[0].channel, Some(1));
    assert_eq!(rows[1].ts, micros(T0));
    assert_eq!(rows[1].key, "ok_alarm");
    assert_eq!(rows[1].value, None);
    assert_eq!(rows[1].text.as_deref(), Some("ok"));
    assert_eq!(rows[1].unit, None);
    assert_eq!(rows[1].channel, Some(2));
    assert_eq!(rows[2].ts, micros(T0 + 60));
    assert_eq!(rows[2].value, Some(-3.25));
    for row in &rows {
        assert_eq!(row.device.as_deref(), Some("282C024156AF"));
        assert_eq!(row.source, "efento");
        assert_eq!(row.kind, "measurements");
        assert_eq!(row.gateway.as_deref(), Some("gw-1"));
        assert_eq!(row.rssi, Some(-71));
        assert_eq!(row.received_at, received_at);
        assert_eq!((row.meta, row.error_code), (None, None));
    }

    // The file says what it is: schema version, sorting columns, zstd.
    let reader =
        ParquetRecordBatchReaderBuilder::try_new(fs::File::open(root.join(file)).unwrap()).unwrap();
    let metadata = reader.metadata();
    let kv = metadata.file_metadata().key_value_metadata().unwrap();
    assert!(
        kv.iter()
            .any(|kv| kv.key == SCHEMA_VERSION_KEY && kv.value.as_deref() == Some("1"))
    );
    let row_group = metadata.row_group(0);
    let sorting = row_group.sorting_columns().unwrap();
    assert_eq!(
        sorting.iter().map(|c| c.column_idx).collect::<Vec<_>>(),
        vec![COLUMN_DEVICE, COLUMN_TS]
    );
    assert!(matches!(
        row_group.column(6).compression(),
        Compression::ZSTD(_)
    ));
    assert!(row_group.column(0).statistics().is_some());

    drop(tx);
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn parquet_commit_failure_fails_records_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake");
    let health = crate::health::Health::new();
    let sink = ParquetSink::new("pq-failure", &config(&root))
        .unwrap()
        .with_probe(health.probe("sink `pq-failure`", None));
    let errors = metrics::counter(
        "component_errors_total",
        &[("component", "pq-failure"), ("error", "commit")],
    );
    let (tx, rx) = mpsc::channel(16);
    let task = tokio::spawn(sink.run(rx));

    // Permissions do not stop root, so make the root unusable: a regular file where the directory was.
    fs::remove_dir(&root).unwrap();
    fs::write(&root, b"not a directory").unwrap();
    let (first, first_watch) = efento("282C024156AF", T0);
    let (second, second_watch) = efento("282C024156B0", T0);
    tx.send(first).await.unwrap();
    tx.send(second).await.unwrap();
    for watch in [first_watch, second_watch] {
        match outcome(watch).await {
            Outcome::Failed { reason } => {
                let partition = root.join("dt=2023-09-06");
                assert!(
                    reason.starts_with(&format!(
                        "parquet commit to {} failed: ",
                        partition.display()
                    )),
                    "{reason}"
                );
                assert!(reason.contains("create directory"), "{reason}");
            }
            other => panic!("expected failed, got {other:?}"),
        }
    }
    let failed_commits = errors.get();
    assert!(failed_commits >= 1);
    // Not ready while it cannot commit, with the reason.
    let state = &health.report()[0];
    assert!(
        !state.up && state.detail.contains("create directory"),
        "{state:?}"
    );

    // The sink is still running; once the directory is back, new records are stored.
    fs::remove_file(&root).unwrap();
    fs::create_dir(&root).unwrap();
    let (third, third_watch) = efento("282C024156AF", T0);
    tx.send(third).await.unwrap();
    assert_delivered(third_watch).await;
    assert_eq!(read_all(&root).len(), 3);
    assert_eq!(errors.get(), failed_commits);
    assert!(health.all_up(), "{:?}", health.report());

    drop(tx);
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn parquet_write_failure_in_one_partition_leaves_no_file_of_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake");
    let mut config = config(&root);
    // Only the shutdown commits, so both records are in one commit.
    config.commit_interval = HumanDuration::from_secs(3600);
    let sink = ParquetSink::new("pq-partial", &config).unwrap();
    // The second day's partition cannot be created: a file is in the way.
    fs::write(root.join("dt=2023-09-07"), b"in the way").unwrap();
    let (tx, rx) = mpsc::channel(16);
    let task = tokio::spawn(sink.run(rx));
    let (day_one, watch_one) = efento("A", T0);
    let (day_two, watch_two) = efento("B", T0 + 86_400);
    tx.send(day_one).await.unwrap();
    tx.send(day_two).await.unwrap();
    drop(tx);
    task.await.unwrap().unwrap();
    // Both were in one commit, so both fail, and the first day's file is gone too.
    assert!(matches!(outcome(watch_one).await, Outcome::Failed { .. }));
    assert!(matches!(outcome(watch_two).await, Outcome::Failed { .. }));
    assert_eq!(files(&root), vec![PathBuf::from("dt=2023-09-07")]);
}

#[test]
fn parquet_leftover_temp_files_are_removed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let partition = root.join("dt=2023-09-06");
    fs::create_dir_all(&partition).unwrap();
    let leftovers = [
        partition.join(".part-1693994400000-000003-4242.parquet.tmp"),
        root.join(".part-1693994400000-000004-4242.parquet.tmp"),
    ];
    for path in &leftovers {
        fs::write(path, b"PAR1 no footer").unwrap();
    }
    let kept = [
        partition.join("part-1693994400000-000001-4242.parquet"),
        root.join("notes.tmp"),
        root.join("other").join(".part-1-000001-4242.parquet.tmp"),
    ];
    fs::create_dir_all(root.join("other")).unwrap();
    for path in &kept {
        fs::write(path, b"x").unwrap();
    }

    ParquetSink::new("pq-leftovers", &config(root)).unwrap();
    for path in &leftovers {
        assert!(!path.exists(), "{} not removed", path.display());
    }
    for path in &kept {
        assert!(path.exists(), "{} removed", path.display());
    }
}

#[test]
fn parquet_new_creates_the_root_or_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("a/b/lake");
    ParquetSink::new("pq-new", &config(&root)).unwrap();
    assert!(root.is_dir());

    let blocked = dir.path().join("file");
    fs::write(&blocked, b"x").unwrap();
    let error = ParquetSink::new("pq-new", &config(&blocked.join("lake")))
        .err()
        .expect("refused");
    assert!(
        format!("{error:#}").contains(&blocked.join("lake").display().to_string()),
        "{error:#}"
    );
}

#[tokio::test]
async fn parquet_rolls_by_rows() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake");
    let mut config = config(&root);
    config.commit_interval = HumanDuration::from_secs(3600);
    config.max_file_rows = 6;
    config.compression = ParquetCompression::Uncompressed;
    config.fsync = false;
    let sink = ParquetSink::new("pq-rolls", &config).unwrap();
    let (tx, rx) = mpsc::channel(4);
    let task = tokio::spawn(sink.run(rx));
    let mut watches = Vec::new();
    for n in 0..10 {
        let (record, watch) = efento(&format!("DEV{:02}", n % 3), T0 + n * 600);
        tx.send(record).await.unwrap();
        watches.push(watch);
    }
    // With an hour-long interval, only the row limit commits these before shutdown.
    for watch in watches.drain(..8) {
        assert_delivered(watch).await;
    }
    drop(tx);
    task.await.unwrap().unwrap();
    for watch in watches {
        assert_delivered(watch).await;
    }

    let committed = parquet_files(&root);
    assert_eq!(committed.len(), 5, "{committed:?}");
    let mut all = Vec::new();
    for file in &committed {
        let rows = read_file(&root.join(file));
        assert_eq!(rows.len(), 6, "{}", file.display());
        let keys: Vec<_> = rows.iter().map(|r| (r.device.clone(), r.ts)).collect();
        assert!(keys.is_sorted(), "{keys:?}");
        all.extend(rows);
    }
    assert_eq!(all.len(), 30);
    let mut readings: Vec<_> = all
        .iter()
        .map(|r| (r.device.clone().unwrap(), r.ts, r.key.clone()))
        .collect();
    readings.sort();
    readings.dedup();
    assert_eq!(readings.len(), 30, "every reading once");
}

#[tokio::test]
async fn parquet_rolls_by_estimated_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake");
    let mut config = config(&root);
    config.commit_interval = HumanDuration::from_secs(3600);
    config.max_file_bytes = 1;
    config.fsync = false;
    let sink = ParquetSink::new("pq-bytes", &config).unwrap();
    let (tx, rx) = mpsc::channel(4);
    let task = tokio::spawn(sink.run(rx));
    let mut watches = Vec::new();
    for n in 0..3 {
        let (record, watch) = efento("DEV", T0 + n);
        tx.send(record).await.unwrap();
        watches.push(watch);
    }
    for watch in watches {
        assert_delivered(watch).await;
    }
    drop(tx);
    task.await.unwrap().unwrap();
    assert_eq!(parquet_files(&root).len(), 3);
}

#[tokio::test]
async fn parquet_non_measurement_record_becomes_one_json_row() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake");
    let sink = ParquetSink::new("pq-whole", &config(&root)).unwrap();
    let (tx, rx) = mpsc::channel(4);
    let task = tokio::spawn(sink.run(rx));
    let body = json!({"serial": "282C024156AF", "sw_version": 1794, "memory_usage": [1, 2, 3]});
    let (info, info_watch) = record_with(Kind::DeviceInfo, Some("282C024156AF"), body.clone());
    let info_received = micros_since_epoch(info.received_at);
    let (raw, raw_watch) = record_with(Kind::Raw, None, json!({}));
    let dead = raw.into_dead_letter("efento", "decode", "truncated protobuf");
    tx.send(info).await.unwrap();
    tx.send(dead).await.unwrap();
    drop(tx);
    task.await.unwrap().unwrap();
    assert_delivered(info_watch).await;
    assert!(matches!(outcome(raw_watch).await, Outcome::Rejected { .. }));

    let rows = read_all(&root);
    assert_eq!(rows.len(), 2);
    // No device sorts first.
    let dead_row = &rows[0];
    assert_eq!(dead_row.key, "dead_letter");
    assert_eq!(dead_row.device, None);
    let dead_body: Value = serde_json::from_str(dead_row.text.as_deref().unwrap()).unwrap();
    assert_eq!(dead_body["raw_hex"], "0a");
    assert_eq!(dead_body["error"], "truncated protobuf");

    let info_row = &rows[1];
    assert_eq!(info_row.key, "device_info");
    assert_eq!(info_row.kind, "device_info");
    assert_eq!(info_row.ts, info_received);
    assert_eq!(info_row.received_at, info_received);
    assert_eq!(
        (info_row.value, info_row.channel, info_row.unit.as_deref()),
        (None, None, None)
    );
    let info_body: Value = serde_json::from_str(info_row.text.as_deref().unwrap()).unwrap();
    assert_eq!(info_body, body);
}

#[tokio::test]
async fn parquet_shutdown_commits_pending_records() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake");
    let mut config = config(&root);
    config.commit_interval = HumanDuration::from_secs(3600);
    let sink = ParquetSink::new("pq-shutdown", &config).unwrap();
    let (tx, rx) = mpsc::channel(4);
    let task = tokio::spawn(sink.run(rx));
    let (first, first_watch) = efento("A", T0);
    let (second, second_watch) = efento("B", T0);
    tx.send(first).await.unwrap();
    tx.send(second).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        parquet_files(&root).is_empty(),
        "committed before the interval"
    );
    drop(tx);
    task.await.unwrap().unwrap();
    assert_delivered(first_watch).await;
    assert_delivered(second_watch).await;
    assert_eq!(read_all(&root).len(), 6);
}

#[tokio::test]
async fn parquet_malformed_and_empty_readings_never_lose_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake");
    let sink = ParquetSink::new("pq-malformed", &config(&root)).unwrap();
    let (tx, rx) = mpsc::channel(8);
    let task = tokio::spawn(sink.run(rx));
    let (odd, odd_watch) = record_with(
        Kind::Measurements,
        Some("ODD"),
        json!({"measurements": [
            {"channel": 1, "type": "temperature", "ts": "yesterday", "value": 20.0},
            {"channel": 99999999999u64, "type": 7, "ts": 1e30, "value": {"x": 1}, "unit": 5},
            {"type": "co2", "ts": T0, "value": null, "error_code": 8355840, "meta": 12.0},
            {"type": "humidity", "ts": T0 as f64 + 0.5, "value": 55},
            "not an entry",
            42,
        ]}),
    );
    let received = micros_since_epoch(odd.received_at);
    let (empty, empty_watch) = record_with(
        Kind::Measurements,
        Some("EMPTY"),
        json!({"measurements": []}),
    );
    tx.send(odd).await.unwrap();
    tx.send(empty).await.unwrap();
    drop(tx);
    task.await.unwrap().unwrap();
    assert_delivered(odd_watch).await;
    assert_delivered(empty_watch).await;

    let rows = read_all(&root);
    assert_eq!(rows.len(), 6);
    let by_key = |key: &str| {
        rows.iter()
            .filter(|r| r.key == key)
            .cloned()
            .collect::<Vec<_>>()
    };
    let temperature = &by_key("temperature")[0];
    assert_eq!((temperature.ts, temperature.value), (received, Some(20.0)));
    let seven = &by_key("7")[0];
    assert_eq!(seven.ts, received);
    assert_eq!(seven.channel, None);
    assert_eq!(seven.text.as_deref(), Some("{\"x\":1}"));
    assert_eq!(seven.unit.as_deref(), Some("5"));
    let co2 = &by_key("co2")[0];
    assert_eq!((co2.value, co2.text.as_deref()), (None, None));
    assert_eq!((co2.error_code, co2.meta), (Some(8_355_840), Some(12)));
    let humidity = &by_key("humidity")[0];
    assert_eq!(humidity.ts, micros(T0) + 500_000);
    assert_eq!(humidity.value, Some(55.0));
    let keyless = by_key("");
    assert_eq!(keyless.len(), 2);
    assert!(
        keyless
            .iter()
            .any(|r| r.text.as_deref() == Some("not an entry"))
    );
    assert!(keyless.iter().any(|r| r.value == Some(42.0)));
}

#[tokio::test]
async fn parquet_data_entries_use_body_time_and_meaning() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake");
    let sink = ParquetSink::new("pq-data", &config(&root)).unwrap();
    let (tx, rx) = mpsc::channel(4);
    let task = tokio::spawn(sink.run(rx));
    let (telegram, watch) = record_with(
        Kind::Telemetry,
        Some("0501A2B3"),
        json!({"ts": "2023-09-07T00:00:01Z", "data": [
            {"key": "temperature", "value": 22.4, "unit": "°C"},
            {"key": "window", "value": 2, "meaning": "tilted"},
            {"key": "state", "value": "open"},
        ]}),
    );
    // Readings from two days go to two partitions, one file each.
    let (efento_rec, efento_watch) = efento("282C024156AF", T0);
    tx.send(telegram).await.unwrap();
    tx.send(efento_rec).await.unwrap();
    drop(tx);
    task.await.unwrap().unwrap();
    assert_delivered(watch).await;
    assert_delivered(efento_watch).await;

    let committed = parquet_files(&root);
    let dirs: Vec<_> = committed
        .iter()
        .map(|f| f.parent().unwrap().to_path_buf())
        .collect();
    assert_eq!(
        dirs,
        vec![
            PathBuf::from("dt=2023-09-06"),
            PathBuf::from("dt=2023-09-07")
        ]
    );
    let rows = read_file(&root.join(&committed[1]));
    assert_eq!(rows.len(), 3);
    let ts = micros(T0 - 10 * 3600 + 86_400 + 1);
    assert!(rows.iter().all(|r| r.ts == ts && r.kind == "telemetry"));
    assert_eq!(rows[0].key, "temperature");
    assert_eq!(
        (rows[0].value, rows[0].unit.as_deref()),
        (Some(22.4), Some("°C"))
    );
    assert_eq!(
        (rows[1].value, rows[1].text.as_deref()),
        (Some(2.0), Some("tilted"))
    );
    assert_eq!(
        (rows[2].value, rows[2].text.as_deref()),
        (None, Some("open"))
    );
}

#[test]
fn parquet_config_defaults_and_rejects_unknown_fields() {
    let config: ParquetConfig = toml::from_str("path = \"data/\"").unwrap();
    assert_eq!(config.commit_interval, HumanDuration::from_millis(250));
    assert_eq!(config.max_file_rows, 1_000_000);
    assert_eq!(config.max_file_bytes, 128 * 1024 * 1024);
    assert_eq!(config.compression, ParquetCompression::Zstd);
    assert!(config.fsync);
    let config: ParquetConfig = toml::from_str(
        "path = \"d\"\ncommit_interval = \"2s\"\ncompression = \"none\"\nfsync = false",
    )
    .unwrap();
    assert_eq!(config.commit_interval, HumanDuration::from_secs(2));
    assert_eq!(config.compression, ParquetCompression::Uncompressed);
    let error = toml::from_str::<ParquetConfig>("path = \"d\"\ncompresion = \"none\"").unwrap_err();
    assert!(error.to_string().contains("compresion"), "{error}");
}

#[test]
fn reading_times_accept_unix_seconds_and_rfc3339_within_four_digit_years() {
    assert_eq!(ts_micros(&json!(T0)), Some(micros(T0)));
    assert_eq!(ts_micros(&json!(1.25)), Some(1_250_000));
    assert_eq!(
        ts_micros(&json!("2023-09-06T12:00:00+02:00")),
        Some(micros(T0))
    );
    assert_eq!(ts_micros(&json!(-1)), Some(-1_000_000));
    assert_eq!(ts_micros(&json!(i64::MAX)), None);
    assert_eq!(ts_micros(&json!(u64::MAX)), None);
    assert_eq!(ts_micros(&json!(300_000_000_000i64)), None);
    assert_eq!(ts_micros(&json!("soon")), None);
    assert_eq!(ts_micros(&json!(null)), None);
    assert_eq!(
        partition_dir(Path::new("r"), -1),
        Path::new("r/dt=1969-12-31")
    );
    assert_eq!(
        micros_since_epoch(SystemTime::UNIX_EPOCH + Duration::from_secs(T0 as u64)),
        micros(T0)
    );
}

/// Throughput of one commit of 400k rows (Efento-like records of 25 readings each, 50 devices).
/// `cargo test --release --lib parquet_commit_throughput -- --ignored --nocapture`
#[test]
#[ignore = "measurement; run in release"]
fn parquet_commit_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let sink = ParquetSink::new("pq-bench", &config(dir.path())).unwrap();
    let mut records = Vec::new();
    let mut watches = Vec::new();
    for n in 0..16_000i64 {
        let device = format!("282C0241{:04X}", n % 50);
        let ts = T0 + (n / 50) * 300;
        let measurements: Vec<Value> = (0..25)
            .map(|k| {
                if k % 5 == 4 {
                    json!({"channel": 3, "type": "ok_alarm", "ts": ts + k * 60, "value": "ok", "unit": null})
                } else {
                    json!({"channel": 1 + k % 2, "type": "temperature", "ts": ts + k * 60, "value": 20.0 + (k as f64) / 10.0, "unit": "degC"})
                }
            })
            .collect();
        let (record, watch) = record_with(
            Kind::Measurements,
            Some(&device),
            json!({"serial": device, "measurements": measurements}),
        );
        records.push(record);
        watches.push(watch);
    }
    // What the sink's task does as records arrive: estimate their size.
    let started = std::time::Instant::now();
    let mut batch = Batch::default();
    for record in records {
        batch.push(record);
    }
    let batching = started.elapsed();
    assert_eq!(batch.rows, 400_000);
    let estimated_bytes = batch.bytes;
    let started = std::time::Instant::now();
    sink.committer.commit(batch);
    let elapsed = started.elapsed();
    for mut watch in watches {
        assert!(matches!(watch.try_recv(), Ok(Outcome::Delivered { .. })));
    }
    let bytes: u64 = parquet_files(dir.path())
        .iter()
        .map(|f| fs::metadata(dir.path().join(f)).unwrap().len())
        .sum();
    println!(
        "batching 16000 records: {:.3} s; commit of 400000 rows: {:.3} s, {:.0} rows/s, {} files, {} bytes on disk (estimated {} uncompressed)",
        batching.as_secs_f64(),
        elapsed.as_secs_f64(),
        400_000.0 / elapsed.as_secs_f64(),
        parquet_files(dir.path()).len(),
        bytes,
        estimated_bytes,
    );
}

#[tokio::test]
async fn parquet_typed_readings_become_rows_without_json() {
    use crate::record::{Reading, ReadingValue};
    use std::borrow::Cow;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake");
    let sink = ParquetSink::new("pq-typed", &config(&root)).unwrap();
    let (tx, rx) = mpsc::channel(4);
    let task = tokio::spawn(sink.run(rx));

    let reading = |ts: i64, value: ReadingValue| Reading {
        channel: Some(1),
        key: Cow::Borrowed("temperature"),
        ts,
        value,
        unit: Some(Cow::Borrowed("degC")),
        raw: None,
        meta: Some(2),
        error_code: None,
        type_code: None,
    };
    let (mut record, watch) = record_with(Kind::Measurements, Some("A"), json!({"serial": "A"}));
    record.readings = vec![
        reading(T0, ReadingValue::Float(21.5)),
        reading(T0 + 60, ReadingValue::Int(22)),
        reading(T0 + 120, ReadingValue::Text(Cow::Borrowed("ok"))),
        Reading {
            error_code: Some(8_388_557),
            ..reading(T0 + 180, ReadingValue::Null)
        },
        // A time no date partition can hold falls back to the reception time rather than being lost.
        reading(i64::MAX, ReadingValue::Float(1.0)),
    ];
    // An empty measurements record has nothing to write and is still settled.
    let (empty, empty_watch) = record_with(Kind::Measurements, Some("B"), json!({"serial": "B"}));
    tx.send(record).await.unwrap();
    tx.send(empty).await.unwrap();
    assert_delivered(watch).await;
    assert_delivered(empty_watch).await;
    drop(tx);
    task.await.unwrap().unwrap();

    let mut rows = read_all(&root);
    rows.sort_by_key(|r| r.ts);
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert!(
        rows.iter()
            .all(|r| r.device.as_deref() == Some("A") && r.key == "temperature")
    );
    assert_eq!(rows[0].value, Some(21.5));
    assert_eq!(rows[1].value, Some(22.0));
    assert_eq!((rows[2].value, rows[2].text.as_deref()), (None, Some("ok")));
    assert_eq!((rows[3].value, rows[3].error_code), (None, Some(8_388_557)));
    assert_eq!(rows[0].meta, Some(2));
    assert_eq!(rows[0].unit.as_deref(), Some("degC"));
    assert_eq!(rows[0].channel, Some(1));
    assert_eq!(
        rows[4].ts,
        micros(T0 + 3600),
        "out-of-range time falls back to received_at"
    );
}
