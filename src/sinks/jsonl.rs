//! JSON lines sink: one [document](crate::document) per line, appended to a file or written to stdout.
//!
//! Group flush: the sink takes every record available right now (up to [`MAX_GROUP`]), writes their
//! lines in one go, flushes (and fsyncs if configured), and only then settles them all delivered. The
//! file I/O runs on the blocking pool. If a write fails, the whole group is settled failed with the
//! reason, the file is closed, and the next group reopens it. A reopened file that does not end in a
//! newline (a write cut short) gets one first, so a torn line never swallows the next document.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::mpsc::Receiver;

use super::SinkCounters;
use crate::document::to_json_line;
use crate::record::Record;

/// The most records written and flushed as one group.
pub const MAX_GROUP: usize = 4096;

/// `[sinks.NAME] type = "json_lines"`: one JSON document per line.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct JsonLinesConfig {
    /// The file to append to (parent directories are created), or `"-"` for standard output.
    pub path: String,
    /// Fsync the file after each group of lines before they count as delivered. Default true: a dead
    /// letter answered 4.00 is never sent again by its device, so it must survive a power loss. With
    /// false, a line counts as delivered once written and flushed to the operating system. Not used
    /// for stdout.
    #[serde(default = "default_fsync")]
    pub fsync: bool,
    /// The longest document (in bytes, without the newline) this sink takes. A longer one is refused
    /// for good: it goes to its flow's dead-letter sink with the reason instead. Unset: no limit.
    #[serde(default)]
    pub max_record_bytes: Option<usize>,
}

fn default_fsync() -> bool {
    true
}

/// The JSON lines sink (see the module docs).
pub struct JsonLinesSink {
    writer: LineWriter,
}

impl JsonLinesSink {
    /// Reports whether writes succeed (down after a failed write, up after the next good one).
    pub fn with_probe(mut self, probe: crate::health::Probe) -> Self {
        self.writer.counters.probe = probe;
        self
    }

    /// Opens the file (creating it and its parent directories) so that a wrong path shows at start.
    /// Errors name the path.
    pub fn new(name: &str, config: &JsonLinesConfig) -> anyhow::Result<Self> {
        let target = match config.path.as_str() {
            "" => {
                anyhow::bail!("sink `{name}`: path is empty; give a file path or \"-\" for stdout")
            }
            "-" => Target::Stdout,
            path => Target::File {
                path: PathBuf::from(path),
                file: None,
            },
        };
        let mut writer = LineWriter {
            name: name.into(),
            target,
            fsync: config.fsync,
            max_record_bytes: config.max_record_bytes,
            buffer: Vec::new(),
            counters: SinkCounters::new(name, "write"),
        };
        if let Target::File { path, file } = &mut writer.target {
            *file = Some(open_for_append(path).with_context(|| {
                format!(
                    "sink `{name}`: cannot open {} for appending",
                    path.display()
                )
            })?);
        }
        Ok(JsonLinesSink { writer })
    }

    /// Drains `rx` until it closes, writing each group before taking the next.
    pub async fn run(self, mut rx: Receiver<Record>) -> anyhow::Result<()> {
        let mut writer = self.writer;
        let mut group = Vec::with_capacity(MAX_GROUP);
        while rx.recv_many(&mut group, MAX_GROUP).await > 0 {
            let records = std::mem::take(&mut group);
            let task = tokio::task::spawn_blocking(move || {
                let emptied = writer.write_group(records);
                (writer, emptied)
            });
            match task.await {
                Ok((back, emptied)) => {
                    writer = back;
                    group = emptied;
                }
                Err(error) => anyhow::bail!("json lines writer task ended abnormally: {error}"),
            }
        }
        Ok(())
    }
}

enum Target {
    Stdout,
    File { path: PathBuf, file: Option<File> },
}

/// The blocking half: owns the file and a reusable line buffer.
struct LineWriter {
    name: Arc<str>,
    target: Target,
    fsync: bool,
    max_record_bytes: Option<usize>,
    buffer: Vec<u8>,
    counters: SinkCounters,
}

impl LineWriter {
    /// Writes and flushes the group, settles every record, and hands back the emptied vector.
    fn write_group(&mut self, mut records: Vec<Record>) -> Vec<Record> {
        self.buffer.clear();
        match self.max_record_bytes {
            None => {
                for record in &records {
                    to_json_line(record, &mut self.buffer);
                }
            }
            Some(max) => self.refuse_oversized(&mut records, max),
        }
        match self.write_buffer() {
            Ok(()) => {
                self.counters.sent_bytes.add(self.buffer.len() as u64);
                self.counters.delivered(records.iter_mut());
            }
            Err(error) => {
                let reason = format!("json lines write to {} failed: {error}", self.describe());
                tracing::warn!(sink = %self.name, path = %self.describe(), %error, records = records.len(), "json lines write failed; its records are settled as failed");
                self.counters.errors.inc();
                self.counters.probe.down(&reason);
                self.counters.failed(records.iter_mut(), &reason);
            }
        }
        records.clear();
        // One unusually large group should not pin its memory for the life of the sink.
        if self.buffer.capacity() > 16 << 20 {
            self.buffer = Vec::new();
        }
        records
    }

    /// Writes the lines of `records` that fit `max` and refuses the others (removing them).
    fn refuse_oversized(&mut self, records: &mut Vec<Record>, max: usize) {
        let mut index = 0;
        while index < records.len() {
            let start = self.buffer.len();
            to_json_line(&records[index], &mut self.buffer);
            let len = self.buffer.len() - start - 1;
            if len <= max {
                index += 1;
                continue;
            }
            self.buffer.truncate(start);
            let record = records.remove(index);
            let reason =
                format!("document is {len} bytes, over this sink's max_record_bytes ({max})");
            record.refuse(&self.name, &reason);
        }
    }

    fn write_buffer(&mut self) -> io::Result<()> {
        match &mut self.target {
            Target::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(&self.buffer)?;
                out.flush()
            }
            Target::File { path, file } => {
                let open = match file {
                    Some(open) => open,
                    None => file.insert(open_for_append(path)?),
                };
                let written = open
                    .write_all(&self.buffer)
                    .and_then(|()| if self.fsync { open.sync_data() } else { Ok(()) });
                if written.is_err() {
                    // Reopen next time: the handle may be what is broken.
                    *file = None;
                }
                written
            }
        }
    }

    fn describe(&self) -> String {
        match &self.target {
            Target::Stdout => "stdout".into(),
            Target::File { path, .. } => path.display().to_string(),
        }
    }
}

/// Opens `path` for appending, creating it and its parents, and makes sure the next write starts a line.
fn open_for_append(path: &std::path::Path) -> io::Result<File> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)?;
    }
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)?;
    if file.metadata()?.is_file() && file.seek(SeekFrom::End(0))? > 0 {
        file.seek(SeekFrom::End(-1))?;
        let mut last = [0u8];
        file.read_exact(&mut last)?;
        if last[0] != b'\n' {
            file.write_all(b"\n")?;
        }
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use serde_json::{Value, json};
    use tokio::sync::mpsc;

    use super::*;
    use crate::record::{Delivery, DeliveryWatch, Kind, Origin, Outcome};

    fn record(device: &str, n: i64) -> (Record, DeliveryWatch) {
        let (delivery, watch) = Delivery::new();
        let mut record = Record::new(
            "efento".into(),
            Origin::default(),
            Bytes::from_static(b"\x01"),
            delivery,
        );
        record.device = Some(device.into());
        record.kind = Kind::Measurements;
        record.body.insert("n".into(), json!(n));
        (record, watch)
    }

    async fn outcome(watch: DeliveryWatch) -> Outcome {
        tokio::time::timeout(Duration::from_secs(10), watch)
            .await
            .expect("settled in time")
            .expect("settled, not dropped")
    }

    #[tokio::test]
    async fn jsonl_writes_one_document_per_line_and_settles_after_flush() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/deeper/out.jsonl");
        let config = JsonLinesConfig {
            path: path.to_str().unwrap().into(),
            fsync: true,
            max_record_bytes: None,
        };
        let sink = JsonLinesSink::new("jsonl-lines", &config).unwrap();
        let (tx, rx) = mpsc::channel(16);
        let task = tokio::spawn(sink.run(rx));

        for n in 0..3 {
            let (record, watch) = record("282C024156AF", n);
            tx.send(record).await.unwrap();
            assert_eq!(
                outcome(watch).await,
                Outcome::Delivered { device: None },
                "record {n}"
            );
            // Settled means already in the file.
            let text = fs::read_to_string(&path).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), n as usize + 1);
            let doc: Value = serde_json::from_str(lines[n as usize]).unwrap();
            assert_eq!(doc["n"], n);
            assert_eq!(doc["device"], "282C024156AF");
            assert_eq!(doc["kind"], "measurements");
        }

        // A burst is written as groups; every record is settled and lands on its own line.
        let mut watches = Vec::new();
        for n in 3..103 {
            let (record, watch) = record("282C024156AF", n);
            tx.send(record).await.unwrap();
            watches.push(watch);
        }
        drop(tx);
        task.await.unwrap().unwrap();
        for watch in watches {
            assert!(matches!(outcome(watch).await, Outcome::Delivered { .. }));
        }
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.ends_with('\n'));
        let numbers: Vec<i64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["n"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        assert_eq!(numbers, (0..103).collect::<Vec<_>>());
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn jsonl_failure_settles_failed() {
        // /dev/full opens fine and fails every write with ENOSPC, like a full disk.
        let config = JsonLinesConfig {
            path: "/dev/full".into(),
            fsync: false,
            max_record_bytes: None,
        };
        let sink = JsonLinesSink::new("jsonl-full", &config).unwrap();
        let errors = crate::metrics::counter(
            "component_errors_total",
            &[("component", "jsonl-full"), ("error", "write")],
        );
        let (tx, rx) = mpsc::channel(16);
        let task = tokio::spawn(sink.run(rx));
        // The sink keeps going after a failure (reopening the file) and fails the next group too.
        for n in 0..2 {
            let (record, watch) = record("A", n);
            tx.send(record).await.unwrap();
            match outcome(watch).await {
                Outcome::Failed { reason } => {
                    assert!(
                        reason.contains("json lines write to /dev/full failed"),
                        "{reason}"
                    );
                }
                other => panic!("expected failed, got {other:?}"),
            }
        }
        assert_eq!(errors.get(), 2);
        drop(tx);
        task.await.unwrap().unwrap();
    }

    #[test]
    fn jsonl_new_names_an_unusable_path() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-dir");
        fs::write(&blocker, b"x").unwrap();
        let path = blocker.join("out.jsonl");
        let config = JsonLinesConfig {
            path: path.to_str().unwrap().into(),
            fsync: false,
            max_record_bytes: None,
        };
        let error = JsonLinesSink::new("jsonl-bad", &config)
            .err()
            .expect("refused");
        assert!(
            format!("{error:#}").contains(&path.display().to_string()),
            "{error:#}"
        );
    }

    #[tokio::test]
    async fn jsonl_appends_after_a_torn_last_line_on_a_new_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        fs::write(&path, b"{\"old\":1}\n{\"torn\":").unwrap();
        let config = JsonLinesConfig {
            path: path.to_str().unwrap().into(),
            fsync: false,
            max_record_bytes: None,
        };
        let sink = JsonLinesSink::new("jsonl-torn", &config).unwrap();
        let (tx, rx) = mpsc::channel(4);
        let (record, watch) = record("A", 7);
        tx.send(record).await.unwrap();
        drop(tx);
        sink.run(rx).await.unwrap();
        assert!(matches!(outcome(watch).await, Outcome::Delivered { .. }));
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0], "{\"old\":1}");
        assert_eq!(lines[1], "{\"torn\":");
        assert_eq!(serde_json::from_str::<Value>(lines[2]).unwrap()["n"], 7);
    }

    #[test]
    fn jsonl_config_defaults_and_rejects_unknown_fields() {
        let config: JsonLinesConfig = toml::from_str("path = \"-\"").unwrap();
        assert_eq!(config.path, "-");
        assert!(config.fsync, "durable by default");
        let error = toml::from_str::<JsonLinesConfig>("path = \"-\"\nfsynk = true").unwrap_err();
        assert!(error.to_string().contains("fsynk"), "{error}");
    }
}
