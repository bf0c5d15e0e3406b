//! Parquet sink: a Hive-partitioned lake of long-form readings, committed atomically in groups.
//!
//! # Layout
//!
//! ```text
//! {path}/dt=YYYY-MM-DD/part-{unix_ms}-{seq:06}-{instance}.parquet
//! ```
//!
//! `dt` is the UTC date of each row's `ts`; it lives only in the path, never in the file schema, so
//! readers (DuckDB, pyarrow, polars) never see a duplicate column. `seq` counts files in this process and
//! `instance` is random per process and tells processes apart, so names never collide (a pid would not:
//! in a container every run is pid 1).
//!
//! # Commit
//!
//! Records are collected into a batch. A batch is committed when it is non-empty and its oldest record
//! has waited `commit_interval`, or it holds `max_file_rows` rows or `max_file_bytes` estimated bytes,
//! or the input closed. A commit writes one file per partition it touches: each first as a hidden
//! `.part-*.parquet.tmp` next to its final name, then the footer is written, the file fsynced, renamed,
//! and the directory fsynced. Only then are the records of the commit settled as delivered. If any
//! step fails, the commit's files are removed and every record of it is settled as failed; the next
//! batch starts afresh (directories are created on every commit), so the sink recovers by itself.
//!
//! While one commit runs on the blocking pool, the next batch keeps filling; at most one commit is in
//! flight. When the next batch is full before the commit ends, the sink stops receiving and the bounded
//! channel pushes back on the sources.
//!
//! A record's rows never span two commits, so a file can exceed `max_file_rows` by the rows of the one
//! record that crossed the limit.
//!
//! # Rows (the long form)
//!
//! One row per reading, whatever the telemetry kind (see [`schema`]):
//! * a body with an array `measurements` (Efento: `{channel, type, ts, value, unit, raw?, meta?,
//!   error_code?}`) or `data` (EnOcean: `{key, value, unit?, meaning?}`) gives one row per entry. The
//!   row's `ts` is the entry's `ts`, else the body's `ts`, else `received_at` (unix seconds or RFC 3339;
//!   anything else or a time outside years 1..=9999 falls back too). A numeric `value` goes to
//!   `value`, a string to `text`; for `data` entries with a non-string value, `meaning` goes to `text`.
//!   A missing key is written as the empty string. A record whose array is empty has no rows and is
//!   settled with the next commit.
//! * any other record (device info, configuration, dead letter, ...) gives one row with `key` = the kind
//!   name, `ts` = `received_at` and `text` = the body as JSON.
//!
//! Rows are sorted by (`device`, `ts`) within a file, declared as the file's sorting columns.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use arrow::array::{
    ArrayRef, Float64Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::{KeyValue, SortingColumn};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use serde_json::{Map, Value};
use tokio::sync::mpsc::Receiver;
use tokio::task::JoinHandle;

use super::SinkCounters;
use crate::config::HumanDuration;
use crate::metrics::{self, Counter};
use crate::record::{Kind, Reading, ReadingValue, Record};

/// `[sinks.NAME] type = "parquet"`: readings as Parquet files in a Hive-partitioned directory tree.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetConfig {
    /// Root directory of the lake; partitions `dt=YYYY-MM-DD/` are created below it.
    /// One sink (and one sensorgate process) per root: leftover temporary files are removed at start.
    pub path: PathBuf,
    /// The longest a record waits before its file is committed (group commit); a file holds at most this
    /// much time's worth of records. Default `"250ms"`.
    #[serde(default = "default_commit_interval")]
    pub commit_interval: HumanDuration,
    /// Commit earlier when the pending rows reach this many. Default 1 000 000.
    #[serde(default = "default_max_file_rows")]
    pub max_file_rows: usize,
    /// Commit earlier when the pending rows reach this many bytes (estimated, uncompressed).
    /// Default 134 217 728 (128 MiB).
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
    /// `"zstd"` (level 3, the default) or `"none"`.
    #[serde(default)]
    pub compression: ParquetCompression,
    /// Fsync each file and its directory before the records count as delivered. Default true; turning it
    /// off trades the guarantee across power loss for speed.
    #[serde(default = "default_fsync")]
    pub fsync: bool,
}

fn default_commit_interval() -> HumanDuration {
    HumanDuration::from_millis(250)
}
fn default_max_file_rows() -> usize {
    1_000_000
}
fn default_max_file_bytes() -> u64 {
    128 * 1024 * 1024
}
fn default_fsync() -> bool {
    true
}

/// Compression of the Parquet column chunks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum ParquetCompression {
    /// Zstandard, level 3.
    #[default]
    #[serde(rename = "zstd")]
    Zstd,
    /// No compression.
    #[serde(rename = "none")]
    Uncompressed,
}

/// Parquet key-value metadata naming the version of [`schema`] a file was written with.
pub const SCHEMA_VERSION_KEY: &str = "sensorgate.schema_version";
/// The current value of [`SCHEMA_VERSION_KEY`].
pub const SCHEMA_VERSION: &str = "1";

/// The Arrow schema of the long form: one row per reading, shared by every telemetry kind.
///
/// | column | type | null | meaning |
/// |---|---|---|---|
/// | `ts` | Timestamp(µs, UTC) | no | when the reading was taken |
/// | `device` | Utf8 | yes | Efento serial, EnOcean sender id, ... |
/// | `source` | Utf8 | no | source name in pipeline.toml |
/// | `kind` | Utf8 | no | record kind (`measurements`, `telemetry`, `device_info`, ...) |
/// | `key` | Utf8 | no | measurement type (`temperature`, `ok_alarm`), or the kind for whole records |
/// | `channel` | Int32 | yes | device channel |
/// | `value` | Float64 | yes | numeric reading |
/// | `text` | Utf8 | yes | string reading (`ok`, `alarm`), or the body as JSON for whole records |
/// | `unit` | Utf8 | yes | unit of `value` |
/// | `meta` | Int64 | yes | reading metadata (Efento remainder) |
/// | `error_code` | Int64 | yes | sensor error code (then `value` is null) |
/// | `gateway` | Utf8 | yes | gateway that relayed the frame |
/// | `rssi` | Int32 | yes | received signal strength, dBm |
/// | `received_at` | Timestamp(µs, UTC) | no | when sensorgate received the frame |
pub fn schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        let timestamp = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        Arc::new(Schema::new(vec![
            Field::new("ts", timestamp.clone(), false),
            Field::new("device", DataType::Utf8, true),
            Field::new("source", DataType::Utf8, false),
            Field::new("kind", DataType::Utf8, false),
            Field::new("key", DataType::Utf8, false),
            Field::new("channel", DataType::Int32, true),
            Field::new("value", DataType::Float64, true),
            Field::new("text", DataType::Utf8, true),
            Field::new("unit", DataType::Utf8, true),
            Field::new("meta", DataType::Int64, true),
            Field::new("error_code", DataType::Int64, true),
            Field::new("gateway", DataType::Utf8, true),
            Field::new("rssi", DataType::Int32, true),
            Field::new("received_at", timestamp, false),
        ]))
    });
    SCHEMA.clone()
}

const COLUMN_TS: i32 = 0;
const COLUMN_DEVICE: i32 = 1;

/// Records taken from the channel at a time.
const RECEIVE_CHUNK: usize = 1024;

/// Counts files across every Parquet sink of the process, so two sinks never pick the same name.
static FILE_SEQ: AtomicU64 = AtomicU64::new(0);

/// The Parquet sink (see the module docs).
pub struct ParquetSink {
    committer: Arc<Committer>,
    commit_interval: Duration,
    max_file_rows: usize,
    max_file_bytes: u64,
}

impl ParquetSink {
    /// Creates the root dir if missing and removes leftover `.part-*.parquet.tmp` files (never-committed
    /// data whose records were never acknowledged). Errors name the path.
    pub fn new(name: &str, config: &ParquetConfig) -> anyhow::Result<ParquetSink> {
        if config.max_file_rows == 0 {
            bail!("sink `{name}`: max_file_rows must be at least 1");
        }
        if config.max_file_bytes == 0 {
            bail!("sink `{name}`: max_file_bytes must be at least 1");
        }
        let root = &config.path;
        fs::create_dir_all(root).with_context(|| {
            format!(
                "sink `{name}`: cannot create the Parquet root directory {}",
                root.display()
            )
        })?;
        let removed = remove_leftover_temp_files(root)
            .with_context(|| format!("sink `{name}`: cannot clean {}", root.display()))?;
        if removed > 0 {
            tracing::info!(
                sink = name,
                path = %root.display(),
                removed,
                "removed uncommitted temporary Parquet files left by an earlier run"
            );
        }

        let compression = match config.compression {
            ParquetCompression::Zstd => Compression::ZSTD(ZstdLevel::try_new(3)?),
            ParquetCompression::Uncompressed => Compression::UNCOMPRESSED,
        };
        let properties = WriterProperties::builder()
            .set_compression(compression)
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_sorting_columns(Some(vec![
                SortingColumn {
                    column_idx: COLUMN_DEVICE,
                    descending: false,
                    nulls_first: true,
                },
                SortingColumn {
                    column_idx: COLUMN_TS,
                    descending: false,
                    nulls_first: false,
                },
            ]))
            .set_key_value_metadata(Some(vec![KeyValue::new(
                SCHEMA_VERSION_KEY.to_string(),
                SCHEMA_VERSION.to_string(),
            )]))
            .build();

        let committer = Committer {
            name: name.into(),
            root: root.clone(),
            fsync: config.fsync,
            properties,
            counters: SinkCounters::new(name, "commit"),
            sent_rows: metrics::counter("component_sent_rows_total", &[("component", name)]),
        };
        Ok(ParquetSink {
            committer: Arc::new(committer),
            commit_interval: config.commit_interval.get(),
            max_file_rows: config.max_file_rows,
            max_file_bytes: config.max_file_bytes,
        })
    }

    /// Reports whether commits succeed (down after a failed one, up after the next good one).
    pub fn with_probe(mut self, probe: crate::health::Probe) -> Self {
        if let Some(committer) = Arc::get_mut(&mut self.committer) {
            committer.counters.probe = probe;
        }
        self
    }

    /// Drains `rx` until it closes; commits the last batch before returning.
    pub async fn run(self, mut rx: Receiver<Record>) -> anyhow::Result<()> {
        let mut batch = Batch::default();
        // Received but not yet in a batch: only non-empty while the batch is full.
        let mut inbox: VecDeque<Record> = VecDeque::new();
        let mut received = Vec::with_capacity(RECEIVE_CHUNK);
        let mut in_flight: Option<JoinHandle<()>> = None;
        let mut input_open = true;

        loop {
            while !self.is_full(&batch) {
                match inbox.pop_front() {
                    Some(record) => batch.push(record),
                    None => break,
                }
            }
            let deadline = batch.started.map(|t| t + self.commit_interval);
            let due = !batch.pending.is_empty()
                && (self.is_full(&batch)
                    || !input_open
                    || deadline.is_some_and(|d| Instant::now() >= d));
            if due && in_flight.is_none() {
                let committer = self.committer.clone();
                let full = std::mem::take(&mut batch);
                in_flight = Some(tokio::task::spawn_blocking(move || committer.commit(full)));
                continue;
            }
            if !input_open && batch.pending.is_empty() && inbox.is_empty() && in_flight.is_none() {
                return Ok(());
            }

            let may_receive = input_open && inbox.is_empty() && !self.is_full(&batch);
            let wait_for_deadline = !due && in_flight.is_none();
            tokio::select! {
                joined = wait_commit(&mut in_flight), if in_flight.is_some() => {
                    in_flight = None;
                    if let Err(error) = joined {
                        // Its records were dropped unsettled, so their sources already learn "failed".
                        tracing::error!(sink = %self.committer.name, %error, "parquet commit task ended abnormally");
                        self.committer.counters.errors.inc();
                    }
                }
                count = rx.recv_many(&mut received, RECEIVE_CHUNK), if may_receive => {
                    if count == 0 {
                        input_open = false;
                    }
                    inbox.extend(received.drain(..));
                }
                _ = sleep_until(deadline), if wait_for_deadline && deadline.is_some() => {}
            }
        }
    }

    fn is_full(&self, batch: &Batch) -> bool {
        batch.rows >= self.max_file_rows || batch.bytes >= self.max_file_bytes
    }
}

async fn wait_commit(in_flight: &mut Option<JoinHandle<()>>) -> Result<(), tokio::task::JoinError> {
    match in_flight {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// A record waiting for its commit, with what its rows need that is costly to compute twice.
struct Pending {
    record: Record,
    /// The body as JSON, for a record written as one whole row.
    body_json: Option<String>,
}

/// The records of the next commit and their estimated size.
#[derive(Default)]
struct Batch {
    pending: Vec<Pending>,
    rows: usize,
    bytes: u64,
    started: Option<Instant>,
}

impl Batch {
    fn push(&mut self, record: Record) {
        let common = ROW_FIXED_BYTES
            + record.source.len()
            + record.kind.as_str().len()
            + record.device.as_ref().map_or(0, String::len)
            + record.origin.gateway.as_ref().map_or(0, |g| g.len());
        let (rows, bytes, body_json) = match readings(&record) {
            Readings::Typed(readings) => {
                let mut bytes = readings.len() * common;
                for r in readings {
                    bytes += r.key.len() + r.unit.as_ref().map_or(0, |u| u.len());
                    if let ReadingValue::Text(t) = &r.value {
                        bytes += t.len();
                    }
                }
                (readings.len(), bytes, None)
            }
            Readings::Entries { entries, key_field } => {
                let mut bytes = entries.len() * common;
                for entry in entries {
                    bytes += entry_text_bytes(entry, key_field);
                }
                (entries.len(), bytes, None)
            }
            Readings::Whole => {
                let json = body_to_json(&record.body);
                (1, common + json.len(), Some(json))
            }
        };
        self.rows += rows;
        self.bytes = self.bytes.saturating_add(bytes as u64);
        self.started.get_or_insert_with(Instant::now);
        self.pending.push(Pending { record, body_json });
    }
}

/// Arrow bytes of a row without its strings: fixed-width columns, string offsets, validity bits.
const ROW_FIXED_BYTES: usize = 8 * 5 + 4 * 2 + 4 * 7 + 2;

fn entry_text_bytes(entry: &Value, key_field: &str) -> usize {
    let Some(entry) = entry.as_object() else {
        return 16;
    };
    let len = |name: &str| match entry.get(name) {
        Some(Value::String(s)) => s.len(),
        // A number has its own fixed-width column (or is a short text for a key or unit).
        Some(Value::Null | Value::Number(_)) | None => 0,
        Some(_) => 16,
    };
    len(key_field) + len("unit") + len("value") + len("meaning")
}

fn body_to_json(body: &Map<String, Value>) -> String {
    serde_json::to_string(body)
        .unwrap_or_else(|error| format!("{{\"error\":\"body not serializable: {error}\"}}"))
}

/// How a record becomes rows.
enum Readings<'a> {
    /// One row per typed reading (a decoded time series, e.g. Efento `/m`).
    Typed(&'a [Reading]),
    /// One row per entry; `key_field` names the entry field that holds the row's key.
    Entries {
        entries: &'a [Value],
        key_field: &'static str,
    },
    /// One row holding the whole body as JSON.
    Whole,
}

fn readings(record: &Record) -> Readings<'_> {
    if !record.readings.is_empty() {
        Readings::Typed(&record.readings)
    } else if let Some(Value::Array(entries)) = record.body.get("measurements") {
        Readings::Entries {
            entries,
            key_field: "type",
        }
    } else if let Some(Value::Array(entries)) = record.body.get("data") {
        Readings::Entries {
            entries,
            key_field: "key",
        }
    } else if let Some(entries) = telemetry_entries(record) {
        Readings::Entries {
            entries,
            key_field: "key",
        }
    } else if record.kind == Kind::Measurements {
        Readings::Typed(&[]) // a measurements frame without rows: nothing to write
    } else {
        Readings::Whole
    }
}

/// The EnOcean IoT Connector's `telemetry.data` (or, for a signal telegram, `telemetry.signal`) list.
fn telemetry_entries(record: &Record) -> Option<&[Value]> {
    let telemetry = record.body.get("telemetry")?;
    ["data", "signal"]
        .iter()
        .find_map(|list| match telemetry.get(list) {
            Some(Value::Array(entries)) if !entries.is_empty() => Some(entries.as_slice()),
            _ => None,
        })
}

/// One reading, borrowing from its record.
struct Row<'a> {
    /// Index of the record in the commit.
    record: usize,
    ts: i64,
    key: Cow<'a, str>,
    channel: Option<i32>,
    value: Option<f64>,
    text: Option<Cow<'a, str>>,
    unit: Option<Cow<'a, str>>,
    meta: Option<i64>,
    error_code: Option<i64>,
}

const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;
/// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z: the times whose `dt=` has four year digits.
const MIN_TS_MICROS: i64 = -62_135_596_800 * MICROS_PER_SECOND;
const MAX_TS_MICROS: i64 = 253_402_300_800 * MICROS_PER_SECOND - 1;

fn micros_since_epoch(t: SystemTime) -> i64 {
    let micros = match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_micros()).map_or(i64::MIN, |m| -m),
    };
    micros.clamp(MIN_TS_MICROS, MAX_TS_MICROS)
}

/// A reading time: unix seconds (integer or fractional) or an RFC 3339 string, within years 1..=9999.
fn ts_micros(value: &Value) -> Option<i64> {
    let micros = match value {
        Value::Number(n) => {
            if let Some(secs) = n.as_i64() {
                secs.checked_mul(MICROS_PER_SECOND)?
            } else {
                let micros = (n.as_f64()? * MICROS_PER_SECOND as f64).round();
                if !(MIN_TS_MICROS as f64..=MAX_TS_MICROS as f64).contains(&micros) {
                    return None;
                }
                micros as i64
            }
        }
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .ok()?
            .timestamp_micros(),
        _ => return None,
    };
    (MIN_TS_MICROS..=MAX_TS_MICROS)
        .contains(&micros)
        .then_some(micros)
}

/// An integer, also from a float with no fractional part (some encoders write `3.0`).
fn integer(value: Option<&Value>) -> Option<i64> {
    let n = value?.as_number()?;
    n.as_i64().or_else(|| {
        let f = n.as_f64()?;
        (f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64).then_some(f as i64)
    })
}

/// A string as it is; any other non-null value as its JSON text.
fn text(value: Option<&Value>) -> Option<Cow<'_, str>> {
    match value? {
        Value::Null => None,
        Value::String(s) => Some(Cow::Borrowed(s)),
        other => Some(Cow::Owned(other.to_string())),
    }
}

/// Every row of a commit, in record order.
fn rows_of<'a>(pending: &'a [Pending], received_at: &[i64], count: usize) -> Vec<Row<'a>> {
    let mut rows = Vec::with_capacity(count);
    for (index, item) in pending.iter().enumerate() {
        let record = &item.record;
        match readings(record) {
            Readings::Typed(readings) => {
                rows.extend(
                    readings
                        .iter()
                        .map(|r| reading_row(index, r, received_at[index])),
                );
            }
            Readings::Entries { entries, key_field } => {
                let record_ts = record
                    .body
                    .get("ts")
                    .and_then(ts_micros)
                    .unwrap_or(received_at[index]);
                rows.extend(
                    entries
                        .iter()
                        .map(|entry| entry_row(index, entry, key_field, record_ts)),
                );
            }
            Readings::Whole => rows.push(Row {
                record: index,
                ts: received_at[index],
                key: Cow::Borrowed(record.kind.as_str()),
                channel: None,
                value: None,
                text: Some(match &item.body_json {
                    Some(json) => Cow::Borrowed(json.as_str()),
                    None => Cow::Owned(body_to_json(&record.body)),
                }),
                unit: None,
                meta: None,
                error_code: None,
            }),
        }
    }
    rows
}

fn reading_row(record: usize, r: &Reading, received_at: i64) -> Row<'_> {
    let (value, text) = match &r.value {
        ReadingValue::Null => (None, None),
        ReadingValue::Int(v) => (Some(*v as f64), None),
        ReadingValue::Float(v) => (Some(*v), None),
        ReadingValue::Text(t) => (None, Some(Cow::Borrowed(t.as_ref()))),
    };
    let ts =
        r.ts.checked_mul(MICROS_PER_SECOND)
            .filter(|t| (MIN_TS_MICROS..=MAX_TS_MICROS).contains(t))
            .unwrap_or(received_at);
    Row {
        record,
        ts,
        key: Cow::Borrowed(r.key.as_ref()),
        channel: r.channel.and_then(|c| i32::try_from(c).ok()),
        value,
        text,
        unit: r.unit.as_deref().map(Cow::Borrowed),
        meta: r.meta,
        error_code: r.error_code,
    }
}

fn entry_row<'a>(record: usize, entry: &'a Value, key_field: &str, record_ts: i64) -> Row<'a> {
    let Some(fields) = entry.as_object() else {
        // Not an object: keep what it says rather than dropping it.
        return Row {
            record,
            ts: record_ts,
            key: Cow::Borrowed(""),
            channel: None,
            value: entry.as_f64(),
            text: if entry.is_number() {
                None
            } else {
                text(Some(entry))
            },
            unit: None,
            meta: None,
            error_code: None,
        };
    };
    // One pass over the entry's fields instead of a lookup per column.
    let mut row = Row {
        record,
        ts: record_ts,
        key: Cow::Borrowed(""),
        channel: None,
        value: None,
        text: None,
        unit: None,
        meta: None,
        error_code: None,
    };
    let mut meaning = None;
    for (name, field) in fields {
        match name.as_str() {
            "ts" => {
                if let Some(ts) = ts_micros(field) {
                    row.ts = ts;
                }
            }
            "value" => match field {
                Value::Number(n) => row.value = n.as_f64(),
                other => row.text = text(Some(other)),
            },
            "unit" => row.unit = text(Some(field)),
            "channel" => row.channel = integer(Some(field)).and_then(|c| i32::try_from(c).ok()),
            "meta" => row.meta = integer(Some(field)),
            "error_code" => row.error_code = integer(Some(field)),
            "meaning" => meaning = Some(field),
            name if name == key_field => {
                if let Some(key) = text(Some(field)) {
                    row.key = key;
                }
            }
            _ => {}
        }
    }
    if row.text.is_none() && key_field == "key" {
        row.text = text(meaning);
    }
    row
}

/// Each record's device as its rank in sorted order (no device first), so rows sort on integers.
fn device_ranks(pending: &[Pending]) -> Vec<u32> {
    let mut by_device: Vec<(Option<&str>, usize)> = pending
        .iter()
        .enumerate()
        .map(|(i, p)| (p.record.device.as_deref(), i))
        .collect();
    by_device.sort_unstable();
    let mut ranks = vec![0; pending.len()];
    let mut rank = 0;
    for (k, &(device, i)) in by_device.iter().enumerate() {
        if k > 0 && by_device[k - 1].0 != device {
            rank += 1;
        }
        ranks[i] = rank;
    }
    ranks
}

fn partition_dir(root: &Path, day: i64) -> PathBuf {
    let date = chrono::DateTime::from_timestamp(day * 86_400, 0)
        .map(|t| t.date_naive().format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "invalid".into());
    root.join(format!("dt={date}"))
}

/// Builds the Arrow batch of `order` (indices into `rows`).
fn build_batch(
    rows: &[Row<'_>],
    order: &[usize],
    pending: &[Pending],
    received_at: &[i64],
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let n = order.len();
    let mut ts = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut device = StringBuilder::with_capacity(n, n * 12);
    let mut source = StringBuilder::with_capacity(n, n * 8);
    let mut kind = StringBuilder::with_capacity(n, n * 12);
    let mut key = StringBuilder::with_capacity(n, n * 12);
    let mut channel = Int32Builder::with_capacity(n);
    let mut value = Float64Builder::with_capacity(n);
    let mut text = StringBuilder::with_capacity(n, n * 2);
    let mut unit = StringBuilder::with_capacity(n, n * 4);
    let mut meta = Int64Builder::with_capacity(n);
    let mut error_code = Int64Builder::with_capacity(n);
    let mut gateway = StringBuilder::with_capacity(n, 0);
    let mut rssi = Int32Builder::with_capacity(n);
    let mut received = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");

    for &i in order {
        let row = &rows[i];
        let record = &pending[row.record].record;
        ts.append_value(row.ts);
        device.append_option(record.device.as_deref());
        source.append_value(&*record.source);
        kind.append_value(record.kind.as_str());
        key.append_value(&row.key);
        channel.append_option(row.channel);
        value.append_option(row.value);
        text.append_option(row.text.as_deref());
        unit.append_option(row.unit.as_deref());
        meta.append_option(row.meta);
        error_code.append_option(row.error_code);
        gateway.append_option(record.origin.gateway.as_deref());
        rssi.append_option(record.origin.rssi);
        received.append_value(received_at[row.record]);
    }

    let columns: Vec<ArrayRef> = vec![
        Arc::new(ts.finish()),
        Arc::new(device.finish()),
        Arc::new(source.finish()),
        Arc::new(kind.finish()),
        Arc::new(key.finish()),
        Arc::new(channel.finish()),
        Arc::new(value.finish()),
        Arc::new(text.finish()),
        Arc::new(unit.finish()),
        Arc::new(meta.finish()),
        Arc::new(error_code.finish()),
        Arc::new(gateway.finish()),
        Arc::new(rssi.finish()),
        Arc::new(received.finish()),
    ];
    RecordBatch::try_new(schema(), columns)
}

/// Writes commits; shared with the blocking task that runs each one.
struct Committer {
    name: Arc<str>,
    root: PathBuf,
    fsync: bool,
    properties: WriterProperties,
    counters: SinkCounters,
    sent_rows: Counter,
}

/// A failed commit step: what failed and in which directory.
#[derive(Debug)]
struct CommitError {
    dir: PathBuf,
    step: &'static str,
    error: String,
}

impl std::fmt::Display for CommitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "parquet commit to {} failed: {}: {}",
            self.dir.display(),
            self.step,
            self.error
        )
    }
}

impl CommitError {
    fn new(dir: &Path, step: &'static str, error: impl std::fmt::Display) -> Self {
        CommitError {
            dir: dir.to_path_buf(),
            step,
            error: error.to_string(),
        }
    }
}

/// A written file on its way to its final name.
struct PartFile {
    dir: PathBuf,
    temp: PathBuf,
    path: PathBuf,
}

/// What a successful commit stored.
struct Stored {
    rows: usize,
    bytes: u64,
}

impl Committer {
    /// Stores the records and settles every one of them: delivered once durable, failed otherwise.
    fn commit(&self, batch: Batch) {
        let Batch {
            mut pending, rows, ..
        } = batch;
        let records = pending.len();
        let started = Instant::now();
        match self.store(&pending, rows) {
            Ok(stored) => {
                tracing::debug!(sink = %self.name, records, rows = stored.rows, bytes = stored.bytes, elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "parquet commit");
                self.sent_rows.add(stored.rows as u64);
                self.counters.sent_bytes.add(stored.bytes);
                self.counters
                    .delivered(pending.iter_mut().map(|p| &mut p.record));
            }
            Err(error) => {
                tracing::warn!(
                    sink = %self.name,
                    path = %error.dir.display(),
                    step = error.step,
                    error = %error.error,
                    records,
                    "parquet commit failed; its records are settled as failed"
                );
                self.counters.errors.inc();
                let reason = error.to_string();
                self.counters.probe.down(&reason);
                self.counters
                    .failed(pending.iter_mut().map(|p| &mut p.record), &reason);
            }
        }
    }

    fn store(&self, pending: &[Pending], row_count: usize) -> Result<Stored, CommitError> {
        let received_at: Vec<i64> = pending
            .iter()
            .map(|p| micros_since_epoch(p.record.received_at))
            .collect();
        let rows = rows_of(pending, &received_at, row_count);
        if rows.is_empty() {
            return Ok(Stored { rows: 0, bytes: 0 });
        }
        // By partition, then (device, ts); ties keep arrival order (channel order within a record).
        // Sorting integer keys is several times faster than comparing rows through their records.
        let device_rank = device_ranks(pending);
        let mut keys: Vec<(i64, u32, i64, usize)> = rows
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let day = row.ts.div_euclid(MICROS_PER_DAY);
                (day, device_rank[row.record], row.ts, i)
            })
            .collect();
        keys.sort_unstable();
        let order: Vec<usize> = keys.into_iter().map(|key| key.3).collect();

        let mut parts: Vec<PartFile> = Vec::new();
        let mut bytes = 0;
        for day_rows in order.chunk_by(|&a, &b| {
            rows[a].ts.div_euclid(MICROS_PER_DAY) == rows[b].ts.div_euclid(MICROS_PER_DAY)
        }) {
            let day = rows[day_rows[0]].ts.div_euclid(MICROS_PER_DAY);
            let dir = partition_dir(&self.root, day);
            let written = build_batch(&rows, day_rows, pending, &received_at)
                .map_err(|e| CommitError::new(&dir, "build Arrow batch", e))
                .and_then(|batch| self.write_part(&dir, &batch));
            match written {
                Ok((part, size)) => {
                    parts.push(part);
                    bytes += size;
                }
                Err(error) => {
                    remove_parts(&parts, false);
                    return Err(error);
                }
            }
        }
        self.publish(&parts)?;
        Ok(Stored {
            rows: rows.len(),
            bytes,
        })
    }

    /// Writes one partition's rows to a new temporary file, footer included and fsynced.
    fn write_part(&self, dir: &Path, batch: &RecordBatch) -> Result<(PartFile, u64), CommitError> {
        if !dir.is_dir() {
            fs::create_dir_all(dir).map_err(|e| CommitError::new(dir, "create directory", e))?;
            // A new partition's directory entry must survive a crash too, or its files vanish with it.
            if self.fsync
                && let Some(parent) = dir.parent()
            {
                File::open(parent)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| CommitError::new(dir, "fsync parent directory", e))?;
            }
        }
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let seq = FILE_SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("part-{unix_ms}-{seq:06}-{}.parquet", *INSTANCE);
        let part = PartFile {
            dir: dir.to_path_buf(),
            temp: dir.join(format!(".{name}.tmp")),
            path: dir.join(name),
        };
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&part.temp)
            .map_err(|e| CommitError::new(dir, "create temporary file", e))?;
        match self.write_file(file, batch) {
            Ok(size) => Ok((part, size)),
            Err((step, error)) => {
                let _ = fs::remove_file(&part.temp);
                Err(CommitError::new(dir, step, error))
            }
        }
    }

    fn write_file(&self, file: File, batch: &RecordBatch) -> Result<u64, (&'static str, String)> {
        let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(self.properties.clone()))
            .map_err(|e| ("start Parquet file", e.to_string()))?;
        writer
            .write(batch)
            .map_err(|e| ("write Parquet rows", e.to_string()))?;
        // `finish` is `close` without giving up the file: it writes the footer and flushes the
        // writer's buffer to the file, which is then fsynced through the same handle.
        writer
            .finish()
            .map_err(|e| ("write Parquet footer", e.to_string()))?;
        if self.fsync {
            writer
                .inner()
                .sync_all()
                .map_err(|e| ("fsync file", e.to_string()))?;
        }
        Ok(writer.bytes_written() as u64)
    }

    /// Renames every written file to its final name, then fsyncs their directories. On failure, removes
    /// every file of the commit, published or not, so that a failed record is nowhere in the lake.
    fn publish(&self, parts: &[PartFile]) -> Result<(), CommitError> {
        for (done, part) in parts.iter().enumerate() {
            if let Err(error) = fs::rename(&part.temp, &part.path) {
                remove_parts(&parts[..done], true);
                remove_parts(&parts[done..], false);
                return Err(CommitError::new(&part.dir, "rename", error));
            }
        }
        if self.fsync {
            let mut synced: Vec<&Path> = Vec::new();
            for part in parts {
                if synced.contains(&part.dir.as_path()) {
                    continue;
                }
                if let Err(error) = File::open(&part.dir).and_then(|d| d.sync_all()) {
                    remove_parts(parts, true);
                    return Err(CommitError::new(&part.dir, "fsync directory", error));
                }
                synced.push(&part.dir);
            }
        }
        Ok(())
    }
}

/// Best-effort clean-up after a failed commit: the temporary files, or the published ones.
fn remove_parts(parts: &[PartFile], published: bool) {
    for part in parts {
        let path = if published { &part.path } else { &part.temp };
        if let Err(error) = fs::remove_file(path)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), %error, "cannot remove a file of a failed parquet commit");
        }
    }
}

/// This process's part of every file name: random, so that two runs never pick the same name.
static INSTANCE: LazyLock<String> = LazyLock::new(|| format!("{:08x}", rand::random::<u32>()));

/// Whether `name` is a temporary file of this sink, and of which process instance.
fn temp_file_instance(name: &str) -> Option<&str> {
    let stem = name.strip_prefix(".part-")?.strip_suffix(".parquet.tmp")?;
    Some(stem.rsplit('-').next().unwrap_or(""))
}

/// Removes `.part-*.parquet.tmp` in the root and its `dt=` partitions, except those of this very process
/// (another sink of it may be writing them). Returns how many were removed.
fn remove_leftover_temp_files(root: &Path) -> std::io::Result<usize> {
    let own = INSTANCE.as_str();
    let mut removed = 0;
    let mut dirs = vec![root.to_path_buf()];
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with("dt=") && entry.file_type()?.is_dir() {
            dirs.push(entry.path());
        }
    }
    for dir in dirs {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let Some(instance) = temp_file_instance(&name) else {
                continue;
            };
            if instance == own || !entry.file_type()?.is_file() {
                continue;
            }
            fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests;
