//! `sensorgate loadgen mqtt`: simulated devices that publish QoS 1 JSON telemetry to an MQTT broker,
//! and a Kafka consumer that reads back what a pipeline (sensorgate, or any other) produced from it,
//! to measure the whole path: broker in, pipeline, broker out.
//!
//! Every message carries its device (`ident`), a per-device sequence number (`seq`) and the wall-clock
//! time it was handed to the MQTT client (`timestamp`, Unix seconds with microseconds), in the flespi
//! shape the json codec's `flespi` preset decodes. The consumer finds device, seq and send time again in
//! each Kafka value (see [`stamp_of`] for the shapes it understands), so latency is
//! `consume time - send time` on the same clock, and (device, seq) tells missing and duplicated
//! messages apart.
//!
//! The consumer is assigned every partition of the topic from the beginning instead of joining a
//! consumer group: no group join (seconds on tansu) delays the first messages, and values sent before
//! this run started are recognized by their time and counted apart (`stale`), never as duplicates.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::percentile_ms;
use crate::config::duration::parse_duration;

/// Arguments of `sensorgate loadgen mqtt`.
#[derive(Debug, Clone, clap::Args)]
pub struct MqttLoadArgs {
    /// The MQTT broker to publish to (plain TCP).
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub broker: SocketAddr,
    /// Topic of each device's messages; `{id}` is the device number.
    #[arg(long, default_value = "bench/devices/{id}/telemetry")]
    pub mqtt_topic: String,
    /// The Kafka-protocol broker(s) the pipeline produces to (bootstrap `host:port` list).
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub kafka: String,
    /// The Kafka topic to read back (it must exist before the run).
    #[arg(long, default_value = "bench.measurements")]
    pub kafka_topic: String,
    /// Simulated devices; their messages go round-robin over the connections.
    #[arg(long, default_value_t = 100)]
    pub devices: u32,
    /// MQTT connections the devices share (each one is a client with its own inflight window).
    #[arg(long, default_value_t = 4)]
    pub connections: u32,
    /// Messages per second, over all connections; 0: as fast as the inflight windows let.
    #[arg(long, default_value_t = 0)]
    pub rate: u32,
    /// Unacknowledged QoS 1 publishes per connection before the client waits for PUBACKs.
    #[arg(long, default_value_t = 1000)]
    pub inflight: u16,
    /// How long to publish ("10s", "1m").
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Consumption before this much time from the start is left out of the steady rate.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// After publishing, how long to wait at most for the pipeline to deliver the rest.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub drain: Duration,
    /// After publishing, stop waiting once nothing new was consumed for this long.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub settle: Duration,
    /// No progress lines on stderr (for scripts).
    #[arg(long)]
    pub quiet: bool,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The summary of a run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Summary {
    pub devices: u32,
    pub connections: u32,
    /// The asked rate (0: as fast as possible).
    pub rate: u32,
    /// How long the loader published.
    pub publish_seconds: f64,
    pub published: u64,
    /// Publishes the broker acknowledged (PUBACK).
    pub acked: u64,
    pub published_per_s: f64,
    /// Kafka messages of this run (sent after it started) that carried a device, seq and time.
    pub consumed: u64,
    /// Distinct (device, seq) among them that this run published.
    pub unique: u64,
    /// Published but never consumed.
    pub missing: u64,
    /// Consumed more than once (counted once per extra copy).
    pub duplicates: u64,
    /// Values from before this run, or for a (device, seq) this run never published.
    pub stale: u64,
    /// Values without a device, seq or time the loader understands.
    pub unparsed: u64,
    /// Distinct messages consumed per second between the warm-up and the end of publishing.
    pub consumed_per_s: f64,
    pub window_seconds: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// MQTT connection errors (each makes rumqttc reconnect).
    pub connection_errors: u64,
}

/// Device, sequence number and send time found in a consumed value.
#[derive(Debug, Clone, PartialEq)]
pub struct Stamp {
    pub device: String,
    pub seq: u64,
    /// Unix time in microseconds.
    pub sent_us: i64,
}

/// The loader's device names: what goes into `ident` and what [`device_index`] reads back.
pub fn device_name(id: u32) -> String {
    format!("dev-{id}")
}

/// The device number of a [`device_name`].
pub fn device_index(name: &str) -> Option<u32> {
    name.strip_prefix("dev-")?.parse().ok()
}

/// A message as the loader publishes it: flespi-like, flat, with dotted parameter names.
pub fn payload(device: u32, seq: u64, sent: SystemTime) -> String {
    let sent_us = unix_us(sent);
    format!(
        "{{\"ident\":\"{}\",\"timestamp\":{}.{:06},\"seq\":{},\"battery.level\":{},\"temperature\":{:.1}}}",
        device_name(device),
        sent_us.div_euclid(1_000_000),
        sent_us.rem_euclid(1_000_000),
        seq,
        50 + (u64::from(device) + seq) % 50,
        18.0 + ((u64::from(device) * 7 + seq) % 80) as f64 / 10.0,
    )
}

fn unix_us(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    }
}

/// Finds device, seq and send time in a consumed Kafka value. Understood shapes, first match wins:
/// - the published payload itself (top-level `ident`, `seq`, `timestamp`), as a pipeline that
///   forwards the MQTT payload (Node-RED's MQTT in to Kafka out) writes it;
/// - a sensorgate document: `device`, and `seq`/`timestamp` copied under `fields` by the json
///   codec's `keep`, or else the `seq` reading in `measurements` and the document's `time`
///   (RFC 3339, milliseconds only).
pub fn stamp_of(value: &[u8]) -> Option<Stamp> {
    let doc: Value = serde_json::from_slice(value).ok()?;
    let device = doc
        .get("ident")
        .or_else(|| doc.get("device"))?
        .as_str()?
        .to_string();
    let fields = doc.get("fields");
    let field = |name: &str| doc.get(name).or_else(|| fields.and_then(|f| f.get(name)));
    let seq = match field("seq") {
        Some(v) => v.as_u64()?,
        None => reading(&doc, "seq")?.as_u64()?,
    };
    let sent_us = match field("timestamp") {
        Some(v) => seconds_to_us(v.as_f64()?)?,
        None => {
            let text = doc.get("time")?.as_str()?;
            chrono::DateTime::parse_from_rfc3339(text)
                .ok()?
                .timestamp_micros()
        }
    };
    Some(Stamp {
        device,
        seq,
        sent_us,
    })
}

/// The value of the reading of type `name` in a document's `measurements`.
fn reading<'a>(doc: &'a Value, name: &str) -> Option<&'a Value> {
    doc.get("measurements")?
        .as_array()?
        .iter()
        .find(|r| r.get("type").and_then(Value::as_str) == Some(name))?
        .get("value")
}

fn seconds_to_us(seconds: f64) -> Option<i64> {
    (seconds.is_finite() && seconds >= 0.0).then(|| (seconds * 1e6).round() as i64)
}

/// One consumed value of this run.
#[derive(Debug, Clone, PartialEq)]
pub struct Consumed {
    pub device: u32,
    pub seq: u64,
    /// When it was consumed, in microseconds since the run started.
    pub at_us: u64,
    /// Consume time minus send time.
    pub latency_us: u64,
}

/// How the consumed values compare with what was published.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delivery {
    pub unique: u64,
    pub missing: u64,
    pub duplicates: u64,
    /// Consumed (device, seq) that were never published.
    pub foreign: u64,
}

/// Counts unique, missing and duplicated messages: device `d` published seqs `0..published[d]`.
pub fn count_delivery(published: &[u64], consumed: &[Consumed]) -> Delivery {
    let mut seen: HashMap<(u32, u64), u32> = HashMap::with_capacity(consumed.len());
    let mut out = Delivery::default();
    for c in consumed {
        let sent = published.get(c.device as usize).copied().unwrap_or(0);
        if c.seq >= sent {
            out.foreign += 1;
            continue;
        }
        let n = seen.entry((c.device, c.seq)).or_default();
        *n += 1;
        if *n > 1 {
            out.duplicates += 1;
        }
    }
    out.unique = seen.len() as u64;
    out.missing = published.iter().sum::<u64>().saturating_sub(out.unique);
    out
}

/// Distinct messages per second consumed in `[from_us, to_us)` since the start (a copy of a message
/// consumed before does not count), and the window in seconds.
pub fn steady_rate(consumed: &[Consumed], from_us: u64, to_us: u64) -> (f64, f64) {
    if to_us <= from_us {
        return (0.0, 0.0);
    }
    let mut seen = std::collections::HashSet::with_capacity(consumed.len());
    let n = consumed
        .iter()
        .filter(|c| seen.insert((c.device, c.seq)) && c.at_us >= from_us && c.at_us < to_us)
        .count();
    let seconds = (to_us - from_us) as f64 / 1e6;
    (n as f64 / seconds, seconds)
}

/// What the consumer task collected.
#[derive(Default)]
struct Readback {
    consumed: Vec<Consumed>,
    stale: u64,
    unparsed: u64,
}

#[derive(Default)]
struct Tally {
    published: AtomicU64,
    acked: AtomicU64,
    consumed: AtomicU64,
    connection_errors: AtomicU64,
}

pub async fn run_mqtt(args: MqttLoadArgs) -> anyhow::Result<()> {
    let summary = run_mqtt_load(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!("{}", summary_text(&summary));
    }
    Ok(())
}

/// The summary as the lines a person reads.
pub fn summary_text(s: &Summary) -> String {
    format!(
        "devices {}  connections {}  rate {}  published {} in {:.1}s ({:.0}/s)  PUBACKed {}  connection errors {}\n\
         consumed {}  unique {}  missing {}  duplicates {}  stale {}  unparsed {}\n\
         distinct consumed per second {:.0} (over {:.1}s)  latency p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        s.devices,
        s.connections,
        if s.rate == 0 {
            "max".to_string()
        } else {
            s.rate.to_string()
        },
        s.published,
        s.publish_seconds,
        s.published_per_s,
        s.acked,
        s.connection_errors,
        s.consumed,
        s.unique,
        s.missing,
        s.duplicates,
        s.stale,
        s.unparsed,
        s.consumed_per_s,
        s.window_seconds,
        s.p50_ms,
        s.p90_ms,
        s.p99_ms,
        s.max_ms,
    )
}

/// Runs the load and the read-back and returns the summary (without printing).
pub async fn run_mqtt_load(args: &MqttLoadArgs) -> anyhow::Result<Summary> {
    anyhow::ensure!(args.devices > 0, "--devices must be at least 1");
    anyhow::ensure!(args.inflight > 0, "--inflight must be at least 1");
    let connections = args.connections.clamp(1, args.devices);
    let tally = Arc::new(Tally::default());
    let started_wall = SystemTime::now();
    let started = Instant::now();

    let consumer = kafka_consumer(args).await?;
    let stop_consumer = CancellationToken::new();
    let reader = tokio::spawn(read_back(
        consumer,
        unix_us(started_wall),
        started,
        tally.clone(),
        stop_consumer.clone(),
    ));

    let deadline = started + args.duration;
    let publishing = Arc::new(AtomicBool::new(true));
    let mut publishers = Vec::new();
    for c in 0..connections {
        let devices: Vec<u32> = (0..args.devices).filter(|d| d % connections == c).collect();
        let rate = f64::from(args.rate) / f64::from(connections);
        publishers.push(tokio::spawn(publish(
            args.clone(),
            c,
            devices,
            rate,
            deadline,
            tally.clone(),
        )));
    }

    let progress = (!args.quiet).then(|| {
        let tally = tally.clone();
        let publishing = publishing.clone();
        tokio::spawn(async move {
            let mut last = (0, 0);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let p = tally.published.load(Ordering::Relaxed);
                let k = tally.consumed.load(Ordering::Relaxed);
                eprintln!(
                    "{:>4}s {} published {}/s, PUBACKed {}, consumed {}/s",
                    started.elapsed().as_secs(),
                    if publishing.load(Ordering::Relaxed) {
                        "publishing"
                    } else {
                        "draining  "
                    },
                    p - last.0,
                    tally.acked.load(Ordering::Relaxed),
                    k - last.1
                );
                last = (p, k);
            }
        })
    });

    let mut published = vec![0u64; args.devices as usize];
    let mut publish_end = Duration::ZERO;
    for p in publishers {
        let (counts, stopped) = p.await.context("publisher task")??;
        for (device, count) in counts {
            published[device as usize] = count;
        }
        publish_end = publish_end.max(stopped.duration_since(started));
    }
    publishing.store(false, Ordering::Relaxed);
    let total: u64 = published.iter().sum();

    // Wait for the pipeline to deliver the rest: until every message came back, nothing new came for
    // `settle`, or `drain` is over.
    let drain_end = Instant::now() + args.drain;
    let mut last_count = tally.consumed.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    while Instant::now() < drain_end {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = tally.consumed.load(Ordering::Relaxed);
        if now >= total {
            break;
        }
        if now != last_count {
            last_count = now;
            last_change = Instant::now();
        } else if last_change.elapsed() >= args.settle {
            break;
        }
    }
    stop_consumer.cancel();
    let readback = reader.await.context("consumer task")??;
    if let Some(p) = progress {
        p.abort();
    }

    let delivery = count_delivery(&published, &readback.consumed);
    let (consumed_per_s, window_seconds) = steady_rate(
        &readback.consumed,
        args.warmup.as_micros() as u64,
        publish_end.as_micros() as u64,
    );
    let mut latencies: Vec<u32> = readback
        .consumed
        .iter()
        .map(|c| c.latency_us.min(u64::from(u32::MAX)) as u32)
        .collect();
    latencies.sort_unstable();
    let publish_seconds = publish_end.as_secs_f64();
    Ok(Summary {
        devices: args.devices,
        connections,
        rate: args.rate,
        publish_seconds,
        published: total,
        acked: tally.acked.load(Ordering::Relaxed),
        published_per_s: if publish_seconds > 0.0 {
            total as f64 / publish_seconds
        } else {
            0.0
        },
        consumed: readback.consumed.len() as u64,
        unique: delivery.unique,
        missing: delivery.missing,
        duplicates: delivery.duplicates,
        stale: readback.stale + delivery.foreign,
        unparsed: readback.unparsed,
        consumed_per_s,
        window_seconds,
        p50_ms: percentile_ms(&latencies, 0.50),
        p90_ms: percentile_ms(&latencies, 0.90),
        p99_ms: percentile_ms(&latencies, 0.99),
        max_ms: latencies.last().map_or(0.0, |v| f64::from(*v) / 1000.0),
        connection_errors: tally.connection_errors.load(Ordering::Relaxed),
    })
}

/// A consumer assigned every partition of the topic from the beginning.
async fn kafka_consumer(args: &MqttLoadArgs) -> anyhow::Result<StreamConsumer> {
    let group = format!(
        "sensorgate-loadgen-{}-{}",
        std::process::id(),
        unix_us(SystemTime::now())
    );
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.kafka)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .create()
        .context("creating the Kafka consumer")?;
    let topic = args.kafka_topic.clone();
    // fetch_metadata blocks: keep it off the runtime's workers.
    let (consumer, partitions) = tokio::task::spawn_blocking(move || {
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .with_context(|| format!("reading the metadata of Kafka topic {topic}"))?;
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map_or(0, |t| t.partitions().len());
        anyhow::Ok((consumer, partitions))
    })
    .await??;
    anyhow::ensure!(
        partitions > 0,
        "Kafka topic {} has no partitions: create it before the run (tansu topic create ...)",
        args.kafka_topic
    );
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(&args.kafka_topic, p as i32, Offset::Beginning)?;
    }
    consumer
        .assign(&list)
        .context("assigning the Kafka partitions")?;
    Ok(consumer)
}

async fn read_back(
    consumer: StreamConsumer,
    run_started_us: i64,
    started: Instant,
    tally: Arc<Tally>,
    stop: CancellationToken,
) -> anyhow::Result<Readback> {
    let mut out = Readback::default();
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => break,
            m = consumer.recv() => m,
        };
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "Kafka consumer error");
                continue;
            }
        };
        let at = started.elapsed();
        let now_us = unix_us(SystemTime::now());
        let stamp = message.payload().and_then(stamp_of);
        let Some(stamp) = stamp else {
            out.unparsed += 1;
            continue;
        };
        let device = device_index(&stamp.device);
        match device {
            Some(device) if stamp.sent_us >= run_started_us => {
                out.consumed.push(Consumed {
                    device,
                    seq: stamp.seq,
                    at_us: at.as_micros() as u64,
                    latency_us: now_us.saturating_sub(stamp.sent_us).max(0) as u64,
                });
                tally.consumed.fetch_add(1, Ordering::Relaxed);
            }
            _ => out.stale += 1,
        }
    }
    Ok(out)
}

/// One MQTT connection's devices publishing until `deadline`; returns each device's message count
/// and when publishing stopped, once the broker acknowledged them all (or the drain time is over).
async fn publish(
    args: MqttLoadArgs,
    connection: u32,
    devices: Vec<u32>,
    rate: f64,
    deadline: Instant,
    tally: Arc<Tally>,
) -> anyhow::Result<(Vec<(u32, u64)>, Instant)> {
    let client_id = format!("sensorgate-loadgen-{}-{connection}", std::process::id());
    let mut options = MqttOptions::new(client_id, args.broker.ip().to_string(), args.broker.port());
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_inflight(args.inflight)
        .set_max_packet_size(1 << 16, 1 << 16);
    let (client, mut eventloop) = AsyncClient::new(options, 256);
    let acked = Arc::new(AtomicU64::new(0));
    let connected = CancellationToken::new();
    let stop = CancellationToken::new();
    // Set once DISCONNECT is queued: the broker closing the socket then is no error.
    let closing = Arc::new(AtomicBool::new(false));
    let driver = {
        let (tally, acked, connected, stop, closing) = (
            tally.clone(),
            acked.clone(),
            connected.clone(),
            stop.clone(),
            closing.clone(),
        );
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => break,
                    e = eventloop.poll() => e,
                };
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => connected.cancel(),
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                        tally.acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) if closing.load(Ordering::Relaxed) => break,
                    Err(e) => {
                        tally.connection_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, connection, "MQTT connection error");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        })
    };
    tokio::time::timeout(Duration::from_secs(10), connected.cancelled())
        .await
        .with_context(|| format!("no CONNACK from the MQTT broker {}", args.broker))?;

    let topics: Vec<String> = devices
        .iter()
        .map(|d| args.mqtt_topic.replace("{id}", &d.to_string()))
        .collect();
    let mut next_seq = vec![0u64; devices.len()];
    let start = Instant::now();
    let mut slot = 0usize;
    let mut count = 0u64;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if rate > 0.0 {
            let due = (now.duration_since(start).as_secs_f64() * rate) as u64;
            if count >= due {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        }
        let seq = next_seq[slot];
        let body = payload(devices[slot], seq, SystemTime::now());
        client
            .publish(&topics[slot], QoS::AtLeastOnce, false, body)
            .await
            .context("publishing to the MQTT client")?;
        next_seq[slot] += 1;
        count += 1;
        tally.published.fetch_add(1, Ordering::Relaxed);
        slot = (slot + 1) % devices.len();
    }
    let stopped = Instant::now();
    // Wait for the broker's PUBACKs of what is still in flight.
    let ack_deadline = Instant::now() + args.drain;
    while acked.load(Ordering::Relaxed) < count && Instant::now() < ack_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    closing.store(true, Ordering::Relaxed);
    let _ = client.try_disconnect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.cancel();
    let _ = driver.await;
    Ok((devices.into_iter().zip(next_seq).collect(), stopped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumed(device: u32, seq: u64, at_us: u64) -> Consumed {
        Consumed {
            device,
            seq,
            at_us,
            latency_us: 1000,
        }
    }

    #[test]
    fn payload_is_read_back_with_its_device_seq_and_microsecond_time() {
        let sent = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        let text = payload(17, 42, sent);
        let doc: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(doc["ident"], "dev-17");
        assert!(doc["battery.level"].is_u64());
        assert!(doc["temperature"].is_f64());
        assert_eq!(
            stamp_of(text.as_bytes()),
            Some(Stamp {
                device: "dev-17".into(),
                seq: 42,
                sent_us: 1_700_000_000_123_456,
            })
        );
    }

    #[test]
    fn send_time_keeps_leading_zeros_of_the_fraction() {
        let sent = UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_042);
        let text = payload(1, 0, sent);
        assert!(text.contains("\"timestamp\":1700000000.000042"), "{text}");
    }

    #[test]
    fn sensorgate_document_with_kept_fields_gives_the_exact_send_time() {
        let doc = br#"{"source":"bench","kind":"measurements","device":"dev-3","received_at":"2023-11-14T22:13:20.200Z",
            "time":"2023-11-14T22:13:20.123Z","fields":{"seq":7,"timestamp":1700000000.123456},
            "measurements":[{"type":"seq","ts":1700000000,"value":7,"unit":null}]}"#;
        assert_eq!(
            stamp_of(doc),
            Some(Stamp {
                device: "dev-3".into(),
                seq: 7,
                sent_us: 1_700_000_000_123_456,
            })
        );
    }

    #[test]
    fn sensorgate_document_without_kept_fields_falls_back_to_the_seq_reading_and_time() {
        let doc = br#"{"source":"bench","kind":"measurements","device":"dev-3","received_at":"2023-11-14T22:13:20.200Z",
            "time":"2023-11-14T22:13:20.123Z",
            "measurements":[{"type":"battery.level","ts":1700000000,"value":80,"unit":null},
                            {"type":"seq","ts":1700000000,"value":9,"unit":null}]}"#;
        assert_eq!(
            stamp_of(doc),
            Some(Stamp {
                device: "dev-3".into(),
                seq: 9,
                sent_us: 1_700_000_000_123_000,
            })
        );
    }

    #[test]
    fn values_without_device_seq_or_time_are_not_understood() {
        assert_eq!(stamp_of(b"not json"), None);
        assert_eq!(stamp_of(br#"{"seq":1,"timestamp":1700000000.5}"#), None);
        assert_eq!(
            stamp_of(br#"{"ident":"dev-1","timestamp":1700000000.5}"#),
            None
        );
        assert_eq!(stamp_of(br#"{"ident":"dev-1","seq":1}"#), None);
        assert_eq!(
            stamp_of(br#"{"ident":"dev-1","seq":-1,"timestamp":1}"#),
            None
        );
    }

    #[test]
    fn device_names_round_trip() {
        assert_eq!(device_index(&device_name(12345)), Some(12345));
        assert_eq!(device_index("sensor-1"), None);
    }

    #[test]
    fn delivery_counts_missing_duplicated_and_foreign_messages() {
        // Device 0 published seqs 0..3, device 1 seqs 0..2.
        let published = [3, 2];
        let got = [
            consumed(0, 0, 10),
            consumed(0, 1, 11),
            consumed(0, 1, 12), // a duplicate
            consumed(1, 0, 13),
            consumed(1, 5, 14), // never published
            consumed(7, 0, 15), // an unknown device
        ];
        assert_eq!(
            count_delivery(&published, &got),
            Delivery {
                unique: 3,
                missing: 2,
                duplicates: 1,
                foreign: 2,
            }
        );
    }

    #[test]
    fn steady_rate_counts_distinct_messages_in_the_window() {
        let mut got: Vec<Consumed> = (0..100).map(|i| consumed(0, i, i * 100_000)).collect();
        // Copies of messages already consumed, inside the window: not counted.
        got.extend((0..10).map(|i| consumed(0, i, 3_000_000 + i)));
        // Consumed at 0.0s, 0.1s, ... 9.9s; the window [2s, 7s) holds 50 of them.
        let (rate, seconds) = steady_rate(&got, 2_000_000, 7_000_000);
        assert_eq!(seconds, 5.0);
        assert_eq!(rate, 10.0);
        assert_eq!(steady_rate(&got, 7_000_000, 2_000_000), (0.0, 0.0));
    }
}
