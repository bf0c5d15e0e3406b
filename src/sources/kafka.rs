//! Kafka source: reads topics as a member of a consumer group (rdkafka, librdkafka underneath) and
//! turns every message into a record. It is the processing tier's half of the scale-out story in
//! DESIGN.md: ingest instances write raw frames keyed by device (the Kafka sink with
//! `format = "raw"`), and several processing instances share them in one group, so each device's
//! frames reach one instance, in order.
//!
//! **Formats.** `format = "raw"`: the value is a frame, its origin in the headers the Kafka sink
//! writes (see [`crate::kafka`]), so that the decode stage sees it as the ingest tier's source made
//! it; `route` overrides the route header. `format = "document"`: the value is a JSON document (what
//! the Kafka sink writes by default); its `kind`, `device` and `received_at` become the record's,
//! the other fields its body. A value that is not a JSON object goes to dead letter.
//!
//! **Offsets.** A message's offset is committed only once its record is settled: delivered (every
//! sink took it) or rejected (the dead-letter sink took it). Records settle in any order; per
//! partition, the committed offset is the end of the settled run from the start, so nothing after an
//! unsettled record is committed (librdkafka commits the stored offsets every `commit_interval`,
//! when partitions are taken away, and at shutdown). A restart or another group member therefore
//! reads again every message whose record was not settled: delivery is at least once (exactly once
//! while the group is stable and no sink fails; a dedupe stage drops the copies otherwise).
//!
//! **A record that fails** (a sink could not store it): its partition is paused, and after a
//! backoff (`retry_min` doubling to `retry_max` while records keep failing) read again from that
//! message; the records after it that were already on their way are read again too (at least
//! once). Other partitions go on.
//!
//! **Rebalancing.** When the group takes partitions away, the source waits up to `revoke_wait` for
//! their records on the way to settle, so that their offsets are committed before another member
//! starts on them; records still unsettled then are read again by the new owner.
//!
//! **Back-pressure.** At most `max_in_flight` records are on their way at once; a full flow queue
//! stops reading too. librdkafka's heartbeats keep the membership alive meanwhile, but a rebalance
//! waits for the source to read again, and a wait past `max.poll.interval.ms` (5 min; a sink that
//! hangs rather than fails) makes librdkafka leave the group: other members then read the records
//! again.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Headers, Message as _};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use serde_json::{Map, Value};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::config::HumanDuration;
use crate::kafka::{self, Format};
use crate::metrics::{self, Counter, Histogram};
use crate::mqtt::Backoff;
use crate::record::{Delivery, Kind, Origin, Outcome, Record};

/// `[sources.NAME] type = "kafka"`.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Bootstrap brokers, `host:port` each.
    pub brokers: Vec<String>,
    /// The topics to read (a name starting with `^` is a regular expression).
    pub topics: Vec<String>,
    /// The consumer group: instances with the same group share the topics' partitions.
    pub group_id: String,
    /// The client id (default `sensorgate-NAME`).
    #[serde(default)]
    pub client_id: Option<String>,
    /// `raw` (frames with their origin in headers) or `document` (JSON documents).
    #[serde(default)]
    pub format: Format,
    /// Where a group without committed offsets starts (and where it goes on when its committed
    /// offset is no longer kept by the broker): `earliest` or `latest`.
    #[serde(default)]
    pub start: Start,
    /// The route of every record (what the decode stage reads it as), instead of the `route` header.
    #[serde(default)]
    pub route: Option<String>,
    /// Records on their way at once, at most.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// How often settled offsets are committed.
    #[serde(default = "default_commit_interval")]
    pub commit_interval: HumanDuration,
    /// The first wait before a failed record's partition is read again.
    #[serde(default = "default_retry_min")]
    pub retry_min: HumanDuration,
    /// The longest such wait.
    #[serde(default = "default_retry_max")]
    pub retry_max: HumanDuration,
    /// How long records of partitions the group takes away may take to settle.
    #[serde(default = "default_revoke_wait")]
    pub revoke_wait: HumanDuration,
    /// Other librdkafka settings, passed through.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// Where a new consumer group starts reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    /// From the oldest message the broker keeps.
    #[default]
    Earliest,
    /// From messages produced after the group joined.
    Latest,
}

fn default_max_in_flight() -> usize {
    10_000
}
fn default_commit_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}
fn default_retry_min() -> HumanDuration {
    HumanDuration(Duration::from_millis(500))
}
fn default_retry_max() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_revoke_wait() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

/// The librdkafka settings this source owns.
const OWNED: &[(&str, &str)] = &[
    ("bootstrap.servers", "set it with `brokers`"),
    ("metadata.broker.list", "set it with `brokers`"),
    ("group.id", "set it with `group_id`"),
    ("client.id", "set it with `client_id`"),
    ("auto.offset.reset", "set it with `start`"),
    ("auto.commit.interval.ms", "set it with `commit_interval`"),
    (
        "enable.auto.commit",
        "the source commits the offsets of settled records itself",
    ),
    (
        "enable.auto.offset.store",
        "the source stores the offsets of settled records itself",
    ),
];

/// How long a stopping source waits for its records to settle, to commit their offsets.
const DRAIN_TIME: Duration = Duration::from_secs(10);

impl KafkaSourceConfig {
    pub fn problems(&self) -> Vec<String> {
        let mut out = kafka::broker_problems(&self.brokers);
        if self.topics.is_empty() {
            out.push("topics is empty: name at least one topic".into());
        }
        for t in &self.topics {
            let valid = t.starts_with('^')
                || (!t.is_empty()
                    && t.len() <= 249
                    && t.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')));
            if !valid {
                out.push(format!(
                    "topic `{t}` is not a valid Kafka topic name (letters, digits, `.`, `_`, `-`; or a regular expression starting with `^`)"
                ));
            }
        }
        if self.group_id.is_empty() {
            out.push("group_id is empty: instances that share the work share a group id".into());
        }
        if self.client_id.as_deref() == Some("") {
            out.push("client_id is empty".into());
        }
        if self.max_in_flight == 0 {
            out.push("max_in_flight must be at least 1".into());
        }
        if self.commit_interval.get() < Duration::from_millis(1) {
            out.push("commit_interval must be at least 1ms".into());
        }
        if self.retry_min.get() > self.retry_max.get() {
            out.push("retry_min is longer than retry_max".into());
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
        c.set("group.id", &self.group_id)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.commit.interval.ms",
                self.commit_interval.get().as_millis().max(1).to_string(),
            )
            .set(
                "auto.offset.reset",
                match self.start {
                    Start::Earliest => "earliest",
                    Start::Latest => "latest",
                },
            );
        c
    }
}

/// A topic and partition.
type Tp = (Arc<str>, i32);

/// What is on its way, per partition: shared by the source's task, the records' settle callbacks
/// (run wherever a record settles) and the rebalance callbacks (run inside the consumer's poll).
#[derive(Default)]
struct Tracker {
    parts: HashMap<Tp, Part>,
    /// Entries in every partition's `pending`.
    in_flight: usize,
    /// Numbers the epochs of entries: a settle callback whose entry was dropped (a rewind, a
    /// revocation) finds no entry of its epoch, and is ignored.
    next_epoch: u64,
}

#[derive(Default)]
struct Part {
    /// The epoch of messages read from now on.
    epoch: u64,
    /// Messages on their way, by offset.
    pending: VecDeque<Entry>,
    /// A record at this offset failed: the partition is paused and will be read again from here.
    rewind: Option<i64>,
}

struct Entry {
    offset: i64,
    epoch: u64,
    settled: bool,
}

impl Tracker {
    fn new_epoch(&mut self) -> u64 {
        self.next_epoch += 1;
        self.next_epoch
    }

    fn part(&mut self, tp: &Tp) -> &mut Part {
        if !self.parts.contains_key(tp) {
            let epoch = self.new_epoch();
            self.parts.insert(
                tp.clone(),
                Part {
                    epoch,
                    ..Part::default()
                },
            );
        }
        self.parts.get_mut(tp).expect("inserted")
    }

    /// A message read: on its way from now on, in the partition's current epoch (returned).
    fn push(&mut self, tp: &Tp, offset: i64) -> u64 {
        let part = self.part(tp);
        let epoch = part.epoch;
        part.pending.push_back(Entry {
            offset,
            epoch,
            settled: false,
        });
        self.in_flight += 1;
        epoch
    }

    /// A settled record: returns the offset to store (the next to read), if the settled run from
    /// the start grew; or, for a failed record, that the partition must be read again.
    fn settle(&mut self, tp: &Tp, offset: i64, epoch: u64, failed: bool) -> Settled {
        let Some(part) = self.parts.get_mut(tp) else {
            return Settled::Nothing;
        };
        let Ok(index) = part.pending.binary_search_by_key(&offset, |e| e.offset) else {
            return Settled::Nothing;
        };
        if part.pending[index].epoch != epoch {
            return Settled::Nothing;
        }
        if failed {
            let dropped = part.pending.len() - index;
            part.pending.truncate(index);
            self.in_flight -= dropped;
            let first = part.rewind.is_none();
            part.rewind = Some(part.rewind.map_or(offset, |o| o.min(offset)));
            return Settled::Rewind { first };
        }
        part.pending[index].settled = true;
        let mut next = None;
        while part.pending.front().is_some_and(|e| e.settled) {
            let e = part.pending.pop_front().expect("a front");
            next = Some(e.offset + 1);
            self.in_flight -= 1;
        }
        next.map_or(Settled::Nothing, Settled::Store)
    }

    /// Forgets partitions the group took away.
    fn remove(&mut self, tps: &[Tp]) {
        for tp in tps {
            if let Some(part) = self.parts.remove(tp) {
                self.in_flight -= part.pending.len();
            }
        }
    }
}

#[derive(Debug, PartialEq)]
enum Settled {
    Nothing,
    Store(i64),
    Rewind { first: bool },
}

/// What the settle callbacks and the rebalance callbacks share with the source's task.
struct Shared {
    tracker: Mutex<Tracker>,
    /// Signalled when records settle (room for more, or a drain may be done).
    settled: Notify,
    /// A record stored since the last failure: the next failure waits `retry_min` again.
    stored_since_failure: AtomicBool,
    /// The source has drained and is leaving the group.
    closing: AtomicBool,
    revoke_wait: Duration,
    name: Arc<str>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tracker> {
        match self.tracker.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// The consumer's context: keeps the tracker in step with the group's assignment.
struct GroupContext {
    shared: Arc<Shared>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        if self.shared.closing.load(Ordering::Relaxed) {
            return; // drained already; nothing more can be stored
        }
        let tps: Vec<Tp> = tpl
            .elements()
            .iter()
            .map(|e| (Arc::from(e.topic()), e.partition()))
            .collect();
        // Runs inside the consumer's poll, on the source's task: wait off the runtime's workers.
        let wait = || self.wait_for(&tps);
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
            _ => wait(),
        }
        self.shared.lock().remove(&tps);
        tracing::info!(source = %self.shared.name, partitions = tps.len(), "partitions taken away by the group");
    }

    fn post_rebalance(
        &self,
        consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                {
                    let mut tracker = self.shared.lock();
                    for e in tpl.elements() {
                        let tp = (Arc::from(e.topic()), e.partition());
                        tracker.part(&tp);
                    }
                }
                // librdkafka keeps an application's pause across unassignment: a partition paused
                // for a rewind, taken away and given back, would never be read again.
                if let Err(e) = consumer.resume(tpl) {
                    tracing::warn!(source = %self.shared.name, error = %e, "cannot resume assigned partitions");
                }
                tracing::info!(source = %self.shared.name, partitions = tpl.count(), "partitions assigned by the group");
            }
            Rebalance::Error(e) => {
                tracing::warn!(source = %self.shared.name, error = %e, "consumer group rebalance failed")
            }
            Rebalance::Revoke(_) => {}
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            // Nothing stored since the last commit is reported as an error too.
            if !matches!(
                e.rdkafka_error_code(),
                Some(rdkafka::types::RDKafkaErrorCode::NoOffset)
            ) {
                tracing::warn!(source = %self.shared.name, error = %e, "committing offsets failed; they are committed with the next ones");
            }
        }
    }
}

impl GroupContext {
    /// Waits, up to `revoke_wait`, until the partitions' records are settled (or failed: those are
    /// read again by the next owner anyway).
    fn wait_for(&self, tps: &[Tp]) {
        let deadline = Instant::now() + self.shared.revoke_wait;
        loop {
            let open: usize = {
                let tracker = self.shared.lock();
                tps.iter()
                    .filter_map(|tp| tracker.parts.get(tp))
                    .filter(|p| p.rewind.is_none())
                    .map(|p| p.pending.len())
                    .sum()
            };
            if open == 0 {
                return;
            }
            if Instant::now() >= deadline {
                tracing::warn!(source = %self.shared.name, unsettled = open, "partitions taken away with records still on their way; the next owner reads them again");
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

type GroupConsumer = StreamConsumer<GroupContext>;

#[derive(Clone)]
struct Counters {
    received: Counter,
    committed: Counter,
    rewinds: Counter,
    /// From a message's arrival to its outcome (its offset is stored after it).
    ack_latency: Histogram,
}

/// The Kafka source (see the module docs).
pub struct KafkaSource {
    name: Arc<str>,
    config: KafkaSourceConfig,
    consumer: Arc<GroupConsumer>,
    shared: Arc<Shared>,
    flows: Vec<mpsc::Sender<Record>>,
    counters: Counters,
}

impl KafkaSource {
    /// Creates the consumer and subscribes (librdkafka joins the group in the background).
    pub fn new(
        name: &str,
        config: &KafkaSourceConfig,
        flows: Vec<mpsc::Sender<Record>>,
    ) -> anyhow::Result<Self> {
        let problems = config.problems();
        if !problems.is_empty() {
            anyhow::bail!(problems.join("; "));
        }
        let shared = Arc::new(Shared {
            tracker: Mutex::new(Tracker::default()),
            settled: Notify::new(),
            stored_since_failure: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            revoke_wait: config.revoke_wait.get(),
            name: name.into(),
        });
        let consumer: GroupConsumer = config
            .client_config(name)
            .create_with_context(GroupContext {
                shared: shared.clone(),
            })
            .map_err(|e| anyhow::anyhow!("creating the Kafka consumer: {e}"))?;
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| anyhow::anyhow!("subscribing to {topics:?}: {e}"))?;
        let labels = [("component", name)];
        let source = [("source", name)];
        Ok(KafkaSource {
            name: name.into(),
            config: config.clone(),
            consumer: Arc::new(consumer),
            shared,
            flows,
            counters: Counters {
                received: metrics::counter("component_received_events_total", &labels),
                committed: metrics::counter("kafka_offsets_stored_total", &source),
                rewinds: metrics::counter("kafka_rewinds_total", &source),
                ack_latency: metrics::histogram("source_ack_latency_seconds", &labels),
            },
        })
    }

    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut backoff = Backoff::new(self.config.retry_min.get(), self.config.retry_max.get());
        let (rewind_tx, mut rewind_rx) = mpsc::unbounded_channel::<Tp>();
        // Paused partitions and when they are read again.
        let mut rewinds: BTreeMap<Tp, tokio::time::Instant> = BTreeMap::new();
        let max_in_flight = self.config.max_in_flight;
        let consumer = self.consumer.clone();
        loop {
            let next_rewind = rewinds.values().min().copied();
            let full = self.shared.lock().in_flight >= max_in_flight;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(tp) = rewind_rx.recv() => {
                    // Taken away (or read again) since: nothing to pause.
                    let rewinding = self.shared.lock().parts.get(&tp).is_some_and(|p| p.rewind.is_some());
                    if !rewinding || rewinds.contains_key(&tp) {
                        continue;
                    }
                    if self.shared.stored_since_failure.swap(false, Ordering::Relaxed) {
                        backoff.reset();
                    }
                    let wait = backoff.next_wait();
                    self.counters.rewinds.inc();
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition(&tp.0, tp.1);
                    if let Err(e) = consumer.pause(&tpl) {
                        tracing::warn!(source = %self.name, error = %e, "cannot pause a partition");
                    }
                    tracing::warn!(source = %self.name, topic = %tp.0, partition = tp.1, ?wait, "a record was not stored: its partition is read again from it after a wait");
                    rewinds.insert(tp, tokio::time::Instant::now() + wait);
                }
                _ = sleep_until(next_rewind), if next_rewind.is_some() => {
                    let now = tokio::time::Instant::now();
                    let due: Vec<Tp> = rewinds.iter().filter(|(_, at)| **at <= now).map(|(tp, _)| tp.clone()).collect();
                    for tp in due {
                        rewinds.remove(&tp);
                        self.rewind(&tp, &rewind_tx);
                    }
                }
                _ = self.shared.settled.notified(), if full => {}
                message = consumer.recv(), if !full => match message {
                    Ok(message) => {
                        self.counters.received.inc();
                        if !self.dispatch(&message, &rewind_tx, &shutdown).await {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(source = %self.name, error = %e, "Kafka consumer error");
                    }
                },
            }
        }
        drop(consumer);
        self.flows.clear();
        self.drain().await;
        Ok(())
    }

    /// Reads a failed record's partition again from that record: seek back, then resume.
    fn rewind(&self, tp: &Tp, rewind_tx: &mpsc::UnboundedSender<Tp>) {
        let offset = self.shared.lock().parts.get(tp).and_then(|p| p.rewind);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&tp.0, tp.1);
        if let Some(offset) = offset {
            if let Err(e) =
                self.consumer
                    .seek(&tp.0, tp.1, Offset::Offset(offset), Duration::from_secs(5))
            {
                // Resuming now would read on after the failed record: stay paused, try again.
                tracing::warn!(source = %self.name, error = %e, "cannot seek back to a failed record; trying again after a wait");
                let _ = rewind_tx.send(tp.clone());
                return;
            }
            let mut tracker = self.shared.lock();
            let epoch = tracker.new_epoch();
            if let Some(part) = tracker.parts.get_mut(tp) {
                part.epoch = epoch;
                part.rewind = None;
            }
        }
        // Also when the partition was taken away and given back meanwhile: never leave it paused.
        if let Err(e) = self.consumer.resume(&tpl) {
            tracing::warn!(source = %self.name, error = %e, "cannot resume a partition");
        }
    }

    /// Makes the record of a message, registers it, and hands it to every flow. False on shutdown
    /// or when a flow stopped.
    async fn dispatch(
        &self,
        message: &BorrowedMessage<'_>,
        rewind_tx: &mpsc::UnboundedSender<Tp>,
        shutdown: &CancellationToken,
    ) -> bool {
        let tp: Tp = (Arc::from(message.topic()), message.partition());
        let offset = message.offset();
        let epoch = {
            let mut tracker = self.shared.lock();
            let part = tracker.part(&tp);
            // Read ahead before a pause took effect: it is read again after the rewind.
            if part.rewind.is_some_and(|o| offset >= o) {
                return true;
            }
            if part.pending.back().is_some_and(|e| e.offset >= offset) {
                // A message at or before one on its way (a seek back): those entries are read again.
                let keep = part.pending.partition_point(|e| e.offset < offset);
                let dropped = part.pending.len() - keep;
                part.pending.truncate(keep);
                tracker.in_flight -= dropped;
            }
            tracker.push(&tp, offset)
        };
        let (delivery, _watch) = Delivery::timed(&self.counters.ack_latency);
        let shared = Arc::downgrade(&self.shared);
        let consumer = Arc::downgrade(&self.consumer);
        let rewind_tx = rewind_tx.clone();
        let committed = self.counters.committed.clone();
        let settle_tp = tp.clone();
        delivery.on_settle(move |outcome| {
            settled(
                &shared, &consumer, &settle_tp, offset, epoch, outcome, &rewind_tx, &committed,
            )
        });
        let record = self.record(message, delivery);
        super::hand_to_flows(&self.flows, record, shutdown).await
    }

    fn record(&self, message: &BorrowedMessage<'_>, delivery: Delivery) -> Record {
        let key = message
            .key()
            .and_then(|k| std::str::from_utf8(k).ok())
            .filter(|k| !k.is_empty());
        let sent_at = message.timestamp().to_millis().and_then(kafka::unix_millis);
        message_record(
            &self.name,
            &self.config,
            Message {
                topic: message.topic(),
                payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
                key,
                sent_at,
                headers: message.headers(),
            },
            delivery,
        )
    }

    /// At shutdown: waits up to [`DRAIN_TIME`] for the records on their way, commits the offsets of
    /// those settled, and leaves the group.
    async fn drain(self) {
        let deadline = tokio::time::Instant::now() + DRAIN_TIME;
        loop {
            let notified = self.shared.settled.notified();
            let open = self.shared.lock().in_flight;
            if open == 0 {
                break;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::info!(source = %self.name, unsettled = open, "stopping with records on their way; their messages are read again on the next start");
                    break;
                }
            }
        }
        // From here no offset is stored: forget what is still on its way.
        self.shared.closing.store(true, Ordering::Relaxed);
        {
            let mut tracker = self.shared.lock();
            let all: Vec<Tp> = tracker.parts.keys().cloned().collect();
            tracker.remove(&all);
        }
        let KafkaSource { consumer, name, .. } = self;
        // Committing waits for the broker, and dropping the consumer closes it (leaving the group).
        let _ = tokio::task::spawn_blocking(move || {
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) => tracing::info!(source = %name, "offsets of settled records committed; leaving the group"),
                Err(e) if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::NoOffset) => {}
                Err(e) => tracing::warn!(source = %name, error = %e, "cannot commit offsets at shutdown; their messages are read again"),
            }
            consumer.unsubscribe();
            drop(consumer);
        })
        .await;
    }
}

/// What a record is made from: a message as it was read.
pub struct Message<'a, H> {
    pub topic: &'a str,
    pub payload: Bytes,
    pub key: Option<&'a str>,
    /// The message's timestamp.
    pub sent_at: Option<SystemTime>,
    pub headers: Option<&'a H>,
}

/// The record of a message (see the module docs for the formats).
pub fn message_record<H: Headers>(
    source: &Arc<str>,
    config: &KafkaSourceConfig,
    message: Message<'_, H>,
    delivery: Delivery,
) -> Record {
    let topic: Arc<str> = Arc::from(message.topic);
    let route = config.route.as_deref().map(Arc::from);
    match config.format {
        Format::Raw => {
            let meta = kafka::read_frame_headers(message.headers);
            let mut origin = meta.origin;
            origin.path = origin.path.or_else(|| Some(topic.clone()));
            origin.route = route.or(origin.route).or(Some(topic));
            let mut record = Record::new(source.clone(), origin, message.payload, delivery);
            if let Some(at) = meta.received_at.or(message.sent_at) {
                record.received_at = at;
            }
            record.device = meta.device.or_else(|| message.key.map(str::to_string));
            if let Some(device) = &record.device {
                record.delivery.set_device(device);
            }
            record
        }
        Format::Document => {
            let origin = Origin {
                path: Some(topic.clone()),
                route: route.or(Some(topic)),
                ..Origin::default()
            };
            let mut record = Record::new(source.clone(), origin, message.payload, delivery);
            if let Some(at) = message.sent_at {
                record.received_at = at;
            }
            match document_record(&mut record) {
                Ok(()) => record,
                Err(reason) => record.into_dead_letter(source, "source", &reason),
            }
        }
    }
}

/// The record a message on `topic` becomes, without headers (for `sensorgate test`).
pub fn topic_record(
    source: &str,
    config: &KafkaSourceConfig,
    topic: &str,
    payload: Bytes,
) -> Record {
    message_record::<rdkafka::message::OwnedHeaders>(
        &Arc::from(source),
        config,
        Message {
            topic,
            payload,
            key: None,
            sent_at: None,
            headers: None,
        },
        Delivery::detached(),
    )
}

/// A record settled: stores the offset it completes, or asks for its partition to be read again.
#[allow(clippy::too_many_arguments)]
fn settled(
    shared: &Weak<Shared>,
    consumer: &Weak<GroupConsumer>,
    tp: &Tp,
    offset: i64,
    epoch: u64,
    outcome: &Outcome,
    rewind_tx: &mpsc::UnboundedSender<Tp>,
    committed: &Counter,
) {
    let Some(shared) = shared.upgrade() else {
        return;
    };
    // Declared before the lock, so dropped after it: if this is the last reference, closing the
    // consumer runs its rebalance callback, which takes the lock.
    let consumer = consumer.upgrade();
    let failed = matches!(outcome, Outcome::Failed { .. });
    let mut tracker = shared.lock();
    match tracker.settle(tp, offset, epoch, failed) {
        Settled::Nothing => {}
        Settled::Store(next) => {
            shared.stored_since_failure.store(true, Ordering::Relaxed);
            committed.inc();
            if let Some(consumer) = &consumer {
                let mut tpl = TopicPartitionList::new();
                if tpl
                    .add_partition_offset(&tp.0, tp.1, Offset::Offset(next))
                    .is_ok()
                    && let Err(e) = consumer.store_offsets(&tpl)
                {
                    // The partition was taken away meanwhile: its next owner reads it again.
                    tracing::debug!(source = %shared.name, error = %e, "cannot store an offset");
                }
            }
        }
        Settled::Rewind { first } => {
            if first {
                let _ = rewind_tx.send(tp.clone());
            }
        }
    }
    drop(tracker);
    // Only the source's task waits, one wait at a time: a permit keeps a wake-up that comes
    // between its check and its wait.
    shared.settled.notify_one();
}

/// Fills a record from the JSON document in its raw bytes: `kind`, `device` and `received_at`
/// become the record's; every other field is the body.
fn document_record(record: &mut Record) -> Result<(), String> {
    let mut body: Map<String, Value> = match serde_json::from_slice(&record.raw) {
        Ok(Value::Object(map)) => map,
        Ok(other) => {
            return Err(format!(
                "the message is JSON but not an object (a {})",
                json_type(&other)
            ));
        }
        Err(e) => return Err(format!("the message is not a JSON document: {e}")),
    };
    record.kind = match body.remove("kind") {
        Some(Value::String(k)) => serde_json::from_value(Value::String(k.clone()))
            .map_err(|_| format!("unknown kind `{k}`"))?,
        Some(_) => return Err("`kind` is not a string".into()),
        None => Kind::Telemetry,
    };
    if record.kind == Kind::Raw || record.kind == Kind::DeadLetter {
        return Err(format!(
            "a `{}` document cannot be read as a record (read raw frames with format = \"raw\")",
            record.kind
        ));
    }
    if let Some(Value::String(device)) = body.remove("device") {
        record.delivery.set_device(&device);
        record.device = Some(device);
    }
    if let Some(Value::String(at)) = body.get("received_at")
        && let Ok(at) = chrono::DateTime::parse_from_rfc3339(at)
    {
        record.received_at = at.into();
        body.remove("received_at");
    }
    body.remove("source");
    record.body = body;
    Ok(())
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp() -> Tp {
        (Arc::from("t"), 0)
    }

    fn push(tracker: &mut Tracker, offset: i64) -> u64 {
        tracker.push(&tp(), offset)
    }

    #[test]
    fn offsets_are_stored_only_for_the_settled_run_from_the_start() {
        let mut t = Tracker::default();
        let g = push(&mut t, 10);
        push(&mut t, 11);
        push(&mut t, 13); // offsets may have gaps
        assert_eq!(t.settle(&tp(), 11, g, false), Settled::Nothing);
        assert_eq!(t.settle(&tp(), 13, g, false), Settled::Nothing);
        assert_eq!(t.in_flight, 3);
        assert_eq!(t.settle(&tp(), 10, g, false), Settled::Store(14));
        assert_eq!(t.in_flight, 0);
    }

    #[test]
    fn a_failure_drops_what_follows_and_asks_once_for_a_rewind() {
        let mut t = Tracker::default();
        let g = push(&mut t, 0);
        push(&mut t, 1);
        push(&mut t, 2);
        push(&mut t, 3);
        assert_eq!(t.settle(&tp(), 2, g, true), Settled::Rewind { first: true });
        assert_eq!(t.in_flight, 2);
        // A later record's outcome no longer counts: it is read again.
        assert_eq!(t.settle(&tp(), 3, g, false), Settled::Nothing);
        // An earlier failure moves the rewind back, without a second request.
        assert_eq!(
            t.settle(&tp(), 1, g, true),
            Settled::Rewind { first: false }
        );
        assert_eq!(t.parts[&tp()].rewind, Some(1));
        assert_eq!(t.settle(&tp(), 0, g, false), Settled::Store(1));
        assert_eq!(t.in_flight, 0);
    }

    #[test]
    fn outcomes_of_an_older_epoch_are_ignored() {
        let mut t = Tracker::default();
        let old = push(&mut t, 5);
        assert_eq!(
            t.settle(&tp(), 5, old, true),
            Settled::Rewind { first: true }
        );
        // The rewind: a new epoch reads offset 5 again.
        let epoch = t.new_epoch();
        let part = t.parts.get_mut(&tp()).unwrap();
        part.epoch = epoch;
        part.rewind = None;
        let new = push(&mut t, 5);
        assert_ne!(old, new);
        assert_eq!(t.settle(&tp(), 5, old, false), Settled::Nothing);
        assert_eq!(t.settle(&tp(), 5, new, false), Settled::Store(6));
    }

    #[test]
    fn removed_partitions_free_their_room() {
        let mut t = Tracker::default();
        let g = push(&mut t, 0);
        push(&mut t, 1);
        t.remove(&[tp()]);
        assert_eq!(t.in_flight, 0);
        assert_eq!(t.settle(&tp(), 0, g, false), Settled::Nothing);
    }

    #[test]
    fn documents_become_records_and_other_values_are_refused() {
        let doc = br#"{"source":"efento","kind":"measurements","device":"282C","received_at":"2024-01-02T03:04:05.678Z","battery":"ok"}"#;
        let mut r = Record::new(
            Arc::from("k"),
            Origin::default(),
            Bytes::from_static(doc),
            Delivery::detached(),
        );
        document_record(&mut r).unwrap();
        assert_eq!(r.kind, Kind::Measurements);
        assert_eq!(r.device.as_deref(), Some("282C"));
        assert_eq!(
            crate::record::rfc3339(r.received_at),
            "2024-01-02T03:04:05.678Z"
        );
        assert_eq!(r.body.len(), 1);
        assert_eq!(r.body["battery"], "ok");
        for (bad, why) in [
            (&b"[1]"[..], "not an object (a array)"),
            (b"nope", "not a JSON document"),
            (br#"{"kind":"weird"}"#, "unknown kind `weird`"),
            (br#"{"kind":"raw"}"#, "format = \"raw\""),
        ] {
            let mut r = Record::new(
                Arc::from("k"),
                Origin::default(),
                Bytes::from_static(bad),
                Delivery::detached(),
            );
            let e = document_record(&mut r).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn bad_configurations_are_problems() {
        let config: KafkaSourceConfig = toml::from_str(
            r#"
brokers = ["nohost"]
topics = ["ok", "not ok", "^sensorgate\\..*"]
group_id = ""
max_in_flight = 0
retry_min = "1m"
retry_max = "1s"
properties = { "enable.auto.commit" = "false", "fetch.min.bytes" = "1" }
"#,
        )
        .unwrap();
        let p = config.problems().join("\n");
        for want in [
            "broker `nohost`",
            "topic `not ok`",
            "group_id is empty",
            "max_in_flight",
            "retry_min is longer",
            "`enable.auto.commit` cannot be set",
        ] {
            assert!(p.contains(want), "{want}: {p}");
        }
        assert_eq!(config.problems().len(), 6, "{p}");
    }
}
