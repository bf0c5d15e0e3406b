//! Kafka sink: produces every record's [document](crate::document) to a Kafka-protocol broker
//! (rdkafka, librdkafka underneath).
//!
//! **Messages.** The topic is `topic`, a template with `{device}`, `{kind}`, `{gateway}` and
//! `{source}` (default `sensorgate.{kind}`); characters a topic name may not hold become `_`. The key
//! is `key`, the same kind of template (default `{device}`, so the records of one device stay in
//! order on one partition). With `format = "document"` (the default) the value is the record's JSON
//! document; with `format = "raw"` it is the frame as received, its origin in headers (see
//! [`crate::kafka`]): what an ingest tier writes for a processing tier's Kafka source. Every message
//! carries the headers `source` (the source's name), `kind` and, when a schema is published for the
//! kind, `schema` (its file name, see `schemas/README.md`; `schemas = { kind = "file" }` overrides). A
//! record whose template needs a device or gateway it does not have is refused for good (dead
//! letter).
//!
//! **Producer.** `acks = all` with `enable.idempotence = true` (no duplicates or reordering on
//! retries), `compression` (none, gzip, snappy, lz4; default lz4), batching by `linger` and
//! `batch_size` (bytes). `properties` passes other librdkafka settings through, except the ones this
//! sink sets itself.
//!
//! **Delivery.** A record is delivered when its delivery report arrives (every in-sync replica has
//! it), failed on an error report. `deadline` is librdkafka's `message.timeout.ms`: a record the
//! broker has not taken within it (broker away included) fails, so a CoAP sensor hears 5.00 and an
//! MQTT message stays unacknowledged. librdkafka reconnects by itself: when the broker comes back,
//! flow resumes without a restart.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::mpsc::Receiver;
use tokio::task::JoinSet;

use super::SinkCounters;
use super::template::Part;
use crate::config::HumanDuration;
use crate::document::Document;
use crate::kafka::{self, Format};
use crate::record::{Delivery, Kind, Record};

/// Compression of the produced batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    #[default]
    Lz4,
}

impl Compression {
    fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
        }
    }
}

/// `[sinks.NAME] type = "kafka"`.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap brokers, `host:port` each.
    pub brokers: Vec<String>,
    /// Topic template (`{device}`, `{kind}`, `{gateway}`, `{source}`).
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Key template (same placeholders).
    #[serde(default = "default_key")]
    pub key: String,
    /// `document` (the JSON document) or `raw` (the frame as received, its origin in headers).
    #[serde(default)]
    pub format: Format,
    /// The client id (default `sensorgate-NAME`).
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub compression: Compression,
    /// How long librdkafka waits for more messages before sending a batch (`linger.ms`).
    #[serde(default = "default_linger")]
    pub linger: HumanDuration,
    /// The largest batch in bytes (`batch.size`).
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    /// How long a record may wait for its delivery report (`message.timeout.ms`).
    #[serde(default = "default_deadline")]
    pub deadline: HumanDuration,
    /// The `schema` header per kind (`measurements = "efento-measurements.schema.json"`); kinds not
    /// named here get the published schema of `schemas/README.md`, if any.
    #[serde(default)]
    pub schemas: BTreeMap<Kind, String>,
    /// Other librdkafka settings, passed through.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_topic() -> String {
    "sensorgate.{kind}".into()
}
fn default_key() -> String {
    "{device}".into()
}
fn default_linger() -> HumanDuration {
    HumanDuration(Duration::from_millis(5))
}
fn default_batch_size() -> u32 {
    1_000_000
}
fn default_deadline() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

/// The librdkafka settings this sink owns: `properties` may not set them.
const OWNED: &[(&str, &str)] = &[
    ("bootstrap.servers", "set it with `brokers`"),
    ("metadata.broker.list", "set it with `brokers`"),
    ("client.id", "set it with `client_id`"),
    (
        "acks",
        "the sink always asks for `all` (every in-sync replica)",
    ),
    (
        "request.required.acks",
        "the sink always asks for `all` (every in-sync replica)",
    ),
    (
        "enable.idempotence",
        "the sink always produces idempotently",
    ),
    ("compression.type", "set it with `compression`"),
    ("compression.codec", "set it with `compression`"),
    ("linger.ms", "set it with `linger`"),
    ("queue.buffering.max.ms", "set it with `linger`"),
    ("batch.size", "set it with `batch_size`"),
    ("message.timeout.ms", "set it with `deadline`"),
    ("delivery.timeout.ms", "set it with `deadline`"),
];

/// The schema published for a kind (`schemas/README.md`).
fn published_schema(kind: Kind) -> Option<&'static str> {
    Some(match kind {
        Kind::Measurements => "efento-measurements.schema.json",
        Kind::DeviceInfo => "efento-device-info.schema.json",
        Kind::Config => "efento-config.schema.json",
        Kind::Telemetry => "enocean-telemetry.schema.json",
        Kind::Signal => "enocean-signal.schema.json",
        Kind::Event => "enocean-event.schema.json",
        Kind::Stats => "enocean-stats.schema.json",
        Kind::DeadLetter => "dead-letter.schema.json",
        Kind::Raw => return None,
    })
}

fn topic_char(c: char) -> char {
    if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
        c
    } else {
        '_'
    }
}

fn parse_topic(template: &str) -> Result<Vec<Part>, String> {
    let parts = Part::parse("topic", template)?;
    let sample = Part::sample(&parts);
    if sample.is_empty() || sample.len() > 249 || sample.chars().any(|c| topic_char(c) != c) {
        return Err(format!(
            "topic `{template}` is not a valid Kafka topic name (letters, digits, `.`, `_`, `-`; at most 249)"
        ));
    }
    Ok(parts)
}

impl KafkaSinkConfig {
    pub fn problems(&self) -> Vec<String> {
        let mut out = kafka::broker_problems(&self.brokers);
        if let Err(e) = parse_topic(&self.topic) {
            out.push(e);
        }
        if let Err(e) = Part::parse("key", &self.key) {
            out.push(e);
        }
        if self.client_id.as_deref() == Some("") {
            out.push("client_id is empty".into());
        }
        if self.deadline.get() < Duration::from_millis(1) {
            out.push("deadline must be at least 1ms".into());
        }
        if self.batch_size == 0 {
            out.push("batch_size must be at least 1".into());
        }
        out.extend(kafka::property_problems(self.properties.keys(), OWNED));
        out
    }

    fn client_config(&self, name: &str) -> ClientConfig {
        let mut c = kafka::client_config(
            &self.brokers,
            self.client_id.as_deref(),
            name,
            &self.properties,
        );
        c.set("acks", "all")
            .set("enable.idempotence", "true")
            .set("compression.type", self.compression.as_str())
            .set("linger.ms", self.linger.get().as_millis().to_string())
            .set("batch.size", self.batch_size.to_string())
            .set(
                "message.timeout.ms",
                self.deadline.get().as_millis().max(1).to_string(),
            );
        c
    }
}

/// A task aborted when this handle goes.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The Kafka sink (see the module docs).
pub struct KafkaSink {
    name: Arc<str>,
    config: ClientConfig,
    producer: FutureProducer,
    /// The producer in use, for the broker watch (a replaced one is not kept alive by it).
    current: Arc<std::sync::Mutex<FutureProducer>>,
    topic: Vec<Part>,
    key: Vec<Part>,
    schemas: BTreeMap<Kind, String>,
    format: Format,
    counters: SinkCounters,
}

/// A record turned into a message.
struct Message {
    topic: String,
    key: String,
    payload: Bytes,
    kind: Kind,
    source: Arc<str>,
    /// `format = "raw"`: the frame's origin headers.
    origin: Option<OwnedHeaders>,
}

impl KafkaSink {
    /// Creates the producer (librdkafka checks the settings here); it connects in the background.
    pub fn new(name: &str, config: &KafkaSinkConfig) -> anyhow::Result<Self> {
        let problems = config.problems();
        if !problems.is_empty() {
            anyhow::bail!(problems.join("; "));
        }
        let client_config = config.client_config(name);
        let producer: FutureProducer = client_config
            .create()
            .context("creating the Kafka producer")?;
        Ok(KafkaSink {
            name: name.into(),
            config: client_config,
            current: Arc::new(std::sync::Mutex::new(producer.clone())),
            producer,
            topic: parse_topic(&config.topic).map_err(anyhow::Error::msg)?,
            key: Part::parse("key", &config.key).map_err(anyhow::Error::msg)?,
            schemas: config.schemas.clone(),
            format: config.format,
            counters: SinkCounters::new(name, "produce"),
        })
    }

    /// Reports whether the brokers answer (down until they first do, and after a failed delivery).
    pub fn with_probe(mut self, probe: crate::health::Probe) -> Self {
        self.counters.probe = probe;
        self
    }

    /// Asks the brokers for metadata every few seconds for the readiness probe: a producer with
    /// nothing to send would not notice otherwise. Ends when the returned handle is dropped.
    fn watch_brokers(&self) -> AbortOnDrop {
        let current = self.current.clone();
        let probe = self.counters.probe.clone();
        AbortOnDrop(tokio::spawn(async move {
            loop {
                let client = current.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let answer = tokio::task::spawn_blocking(move || {
                    client
                        .client()
                        .fetch_metadata(None, Duration::from_secs(3))
                        .map(|m| m.brokers().len())
                })
                .await;
                match answer {
                    Ok(Ok(_)) => probe.up(),
                    Ok(Err(e)) => probe.down(&format!("the Kafka brokers do not answer: {e}")),
                    Err(_) => return,
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }))
    }

    fn prepare(&self, record: &Record) -> Result<Message, String> {
        let topic = Part::render(&self.topic, record, topic_char)?;
        let key = Part::render(&self.key, record, |c| c)?;
        let (payload, origin) = match self.format {
            Format::Document => (
                serde_json::to_vec(&Document(record))
                    .map_err(|e| format!("cannot serialize the document: {e}"))?
                    .into(),
                None,
            ),
            Format::Raw if record.kind != Kind::Raw => {
                return Err(format!(
                    "format = \"raw\" writes frames as received, and this record is a decoded `{}` document (write decoded records with format = \"document\"; an ingest flow decodes with output = \"raw\")",
                    record.kind
                ));
            }
            Format::Raw if record.raw.is_empty() => {
                return Err("format = \"raw\": the record has no frame bytes".into());
            }
            Format::Raw => (
                record.raw.clone(),
                Some(kafka::add_frame_headers(record, OwnedHeaders::new())),
            ),
        };
        Ok(Message {
            topic,
            key,
            payload,
            kind: record.kind,
            source: record.source.clone(),
            origin,
        })
    }

    fn headers(&self, m: &Message) -> OwnedHeaders {
        let mut h = OwnedHeaders::new_with_capacity(3)
            .insert(Header {
                key: kafka::SOURCE,
                value: Some(&*m.source),
            })
            .insert(Header {
                key: kafka::KIND,
                value: Some(m.kind.as_str()),
            });
        if let Some(origin) = &m.origin {
            for header in origin.iter() {
                h = h.insert(header);
            }
            return h;
        }
        let schema = self
            .schemas
            .get(&m.kind)
            .map(String::as_str)
            .or_else(|| published_schema(m.kind));
        if let Some(schema) = schema {
            h = h.insert(Header {
                key: kafka::SCHEMA,
                value: Some(schema),
            });
        }
        h
    }

    /// Produces until `rx` closes and every record is settled.
    pub async fn run(mut self, mut rx: Receiver<Record>) -> anyhow::Result<()> {
        let mut pending: JoinSet<()> = JoinSet::new();
        let broken = Arc::new(AtomicBool::new(false));
        let _watch = self.watch_brokers();
        while let Some(mut record) = rx.recv().await {
            // Settled reports free their tasks.
            while pending.try_join_next().is_some() {}
            if broken.swap(false, Ordering::Relaxed) {
                self.replace_producer();
            }
            let message = match self.prepare(&record) {
                Ok(m) => m,
                Err(reason) => {
                    record.refuse(&self.name, &reason);
                    continue;
                }
            };
            let delivery = std::mem::replace(&mut record.delivery, Delivery::detached());
            let received_at = record.received_at;
            drop(record);
            let headers = self.headers(&message);
            let future = loop {
                let out = FutureRecord::to(&message.topic)
                    .key(&message.key)
                    .payload(&message.payload[..])
                    .headers(headers.clone());
                match self.producer.send_result(out) {
                    Ok(f) => break Ok(f),
                    Err((e, _)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                        // librdkafka's queue is full: wait for a report, then try again.
                        if pending.join_next().await.is_none() {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                    Err((e, _)) => break Err(e),
                }
            };
            let future = match future {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(sink = %self.name, error = %e, "cannot hand a message to the Kafka producer");
                    self.counters.errors.inc();
                    self.counters.failed_events.inc();
                    delivery.failed(format!("Kafka sink `{}`: {e}", self.name));
                    continue;
                }
            };
            let counters = self.counters.clone();
            let name = self.name.clone();
            let broken = broken.clone();
            let size = message.payload.len() as u64;
            pending.spawn(async move {
                match future.await {
                    Ok(Ok(_)) => {
                        delivery.delivered();
                        counters.observe(received_at, std::time::SystemTime::now());
                        counters.probe.up();
                        counters.sent_events.inc();
                        counters.sent_bytes.add(size);
                    }
                    Ok(Err((e, _))) => {
                        tracing::warn!(sink = %name, error = %e, "Kafka delivery failed");
                        counters.probe.down(&format!("a delivery failed: {e}"));
                        counters.errors.inc();
                        counters.failed_events.inc();
                        delivery.failed(format!("Kafka sink `{name}`: {e}"));
                        broken.store(true, Ordering::Relaxed);
                    }
                    Err(_) => {
                        counters.failed_events.inc();
                        delivery.failed(format!("Kafka sink `{name}`: the producer went away"));
                    }
                }
            });
        }
        while pending.join_next().await.is_some() {}
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5)))
            .await
            .ok();
        Ok(())
    }

    /// After a failed delivery, a new producer (a new producer id) for what follows. An idempotent
    /// producer whose messages timed out has to bump its epoch before it may send again, and a broker
    /// that restarted without its producer state (tansu with memory storage) never lets it: measured,
    /// every later record timed out until sensorgate restarted. The old producer is dropped off the
    /// runtime; its messages still in flight are settled by their own reports (or failed when it goes).
    fn replace_producer(&mut self) {
        match self.config.create::<FutureProducer>() {
            Ok(new) => {
                tracing::info!(sink = %self.name, "a delivery failed: producing through a new Kafka producer");
                *self.current.lock().unwrap_or_else(|p| p.into_inner()) = new.clone();
                let old = std::mem::replace(&mut self.producer, new);
                tokio::task::spawn_blocking(move || {
                    old.flush(Duration::from_secs(5)).ok();
                    drop(old);
                });
            }
            Err(e) => {
                tracing::warn!(sink = %self.name, error = %e, "cannot create a new Kafka producer; keeping the old one");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Origin, Outcome};
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Message as _;
    use rdkafka::mocking::MockCluster;

    fn record(kind: Kind, device: Option<&str>) -> (Record, crate::record::DeliveryWatch) {
        let (delivery, watch) = Delivery::new();
        let mut r = Record::new("efento".into(), Origin::default(), Bytes::new(), delivery);
        r.kind = kind;
        r.device = device.map(str::to_string);
        (r, watch)
    }

    #[test]
    fn raw_format_writes_frames_and_refuses_decoded_records() {
        let config: KafkaSinkConfig =
            toml::from_str("brokers = [\"127.0.0.1:9\"]\nformat = \"raw\"").unwrap();
        let sink = KafkaSink::new("k", &config).unwrap();
        let (mut frame, _w) = record(Kind::Raw, Some("282C"));
        frame.raw = Bytes::from_static(b"\x0a\x06");
        frame.origin.route = Some(Arc::from("measurements"));
        let m = sink.prepare(&frame).unwrap();
        assert_eq!(m.topic, "sensorgate.raw");
        assert_eq!(m.key, "282C");
        assert_eq!(&m.payload[..], b"\x0a\x06");
        let headers = sink.headers(&m);
        let meta = kafka::read_frame_headers(Some(&headers));
        assert_eq!(meta.kind.as_deref(), Some("raw"));
        assert_eq!(meta.origin.route.as_deref(), Some("measurements"));
        let (decoded, _w) = record(Kind::Measurements, Some("282C"));
        let e = sink.prepare(&decoded).err().unwrap();
        assert!(e.contains("decoded `measurements` document"), "{e}");
        let (empty, _w) = record(Kind::Raw, Some("282C"));
        assert!(
            sink.prepare(&empty)
                .err()
                .unwrap()
                .contains("no frame bytes")
        );
    }

    #[test]
    fn templates_and_properties_are_checked() {
        let config: KafkaSinkConfig = toml::from_str(
            "brokers = [\"h:1\", \"nohost\"]\ntopic = \"a/{kind}\"\nkey = \"{nope}\"\nproperties = { \"linger.ms\" = \"1\" }",
        )
        .unwrap();
        let p = config.problems().join("\n");
        assert!(p.contains("broker `nohost`"), "{p}");
        assert!(p.contains("not a valid Kafka topic"), "{p}");
        assert!(p.contains("{nope}"), "{p}");
        assert!(
            p.contains("`linger.ms` cannot be set through properties: set it with `linger`"),
            "{p}"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_record_is_delivered_on_its_report_and_one_without_a_key_is_refused() {
        let cluster = MockCluster::new(1).unwrap();
        cluster
            .create_topic("sensorgate.measurements", 2, 1)
            .unwrap();
        let brokers = cluster.bootstrap_servers();
        let config: KafkaSinkConfig =
            toml::from_str(&format!("brokers = [\"{brokers}\"]\nlinger = \"0s\"")).unwrap();
        let sink = KafkaSink::new("k", &config).unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let run = tokio::spawn(sink.run(rx));

        let (with_device, delivered) = record(Kind::Measurements, Some("282C024156AF"));
        let (without, refused) = record(Kind::Measurements, None);
        tx.send(with_device).await.unwrap();
        tx.send(without).await.unwrap();
        drop(tx);
        assert!(matches!(
            delivered.await.unwrap(),
            Outcome::Delivered { .. }
        ));
        assert!(matches!(refused.await.unwrap(), Outcome::Rejected { .. }));
        run.await.unwrap().unwrap();

        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "check")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&["sensorgate.measurements"]).unwrap();
        let m = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.key(), Some(&b"282C024156AF"[..]));
        let headers: Vec<(String, String)> = m
            .headers()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h.key.to_string(),
                    String::from_utf8_lossy(h.value.unwrap()).to_string(),
                )
            })
            .collect();
        assert_eq!(
            headers,
            [
                ("source".into(), "efento".into()),
                ("kind".into(), "measurements".into()),
                ("schema".into(), "efento-measurements.schema.json".into()),
            ]
        );
        let doc: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        assert_eq!(doc["device"], "282C024156AF");
    }
}
