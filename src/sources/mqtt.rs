//! MQTT source: subscribes to topics on a broker and turns every message into a record.
//!
//! **Acknowledgement.** A QoS 1 message is acknowledged (PUBACK) only once its record is settled
//! delivered (every sink took it) or rejected (the dead-letter sink took it). Acks go out in the
//! order the messages came in (MQTT-4.6.0-2): the outcomes are awaited in a FIFO, so a message that
//! is stored before an earlier one waits for it. With the default persistent session (fixed
//! `client_id`, `clean_session = false`) the broker keeps every unacknowledged message and sends it
//! again after a restart or reconnect (with `dup` set): delivery is at least once, and a dedupe stage
//! (e.g. `key = "{path}{raw}"`) makes it once.
//!
//! **A record that fails** (a sink could not store it) is not acknowledged. Acks must stay in order,
//! so nothing after it can be acknowledged on that connection either: the source drops the
//! connection (without DISCONNECT, so the session stays), waits its reconnect backoff (growing while
//! records keep failing, back to `reconnect_min` once one is stored) and connects
//! again, and the broker sends every unacknowledged message again. Outcomes of messages from an
//! older connection are ignored, since a PUBACK on a new connection would not match them.
//!
//! QoS 0 messages are never acknowledged; their records carry a token nobody waits for.
//!
//! **Stopping.** On shutdown the source takes no more messages, acknowledges in order those whose
//! records get stored within 10 s, and disconnects (the session stays).
//!
//! **Back-pressure.** A message is handed to every flow, waiting for room. Meanwhile the connection's
//! event loop keeps running (it answers the broker's pings, so the connection stays up) and buffers
//! what arrives: the broker sends at most its in-flight window of unacknowledged QoS 1 messages
//! (mosquitto: `max_inflight_messages`, 20 by default), so nothing more piles up. QoS 0 messages
//! beyond 65,536 buffered are dropped and counted (`mqtt_qos0_dropped_total`). Acks go to the
//! connection's own ack task, in order, so a burst of stored records never fails an ack.
//!
//! **Origin.** `origin.path` is the topic; `origin.route` the subscription's `route` (if set) or the
//! topic; a subscription's `device = N` takes the N-th wildcard level of the topic (1-based) as the
//! record's device, and `gateway = N` as its gateway.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{Publish, QoS, SubscribeFilter};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::health::Probe;
use crate::metrics::{self, Counter, Histogram};
use crate::mqtt::{ConnEvent, Connection, match_topic, mqtt_component_config};
use crate::record::{Delivery, DeliveryWatch, Origin, Outcome, Record};

mqtt_component_config! {
    /// `[sources.NAME] type = "mqtt"`.
    pub struct MqttSourceConfig {
        /// The client id. Fixed, so that the broker keeps the session across restarts.
        pub client_id: String,
        /// The topics to take.
        pub subscriptions: Vec<Subscription>,
        /// Start with a fresh session each time (unacknowledged messages are then lost on restart).
        #[serde(default)]
        pub clean_session: bool,
    }
}

/// `{ topic = "flespi/message/gw/devices/+", qos = 1, device = 1 }`.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// A topic filter, with `+` and `#` wildcards.
    pub topic: String,
    /// 0 (at most once, never acknowledged) or 1 (at least once, acknowledged once stored).
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// What arrives on these topics, for the decode stage (e.g. `measurements` for Efento frames).
    /// Default: the topic itself.
    #[serde(default)]
    pub route: Option<String>,
    /// The wildcard level (1-based, in the order of the filter's `+` and `#`) that is the device id.
    #[serde(default)]
    pub device: Option<usize>,
    /// The wildcard level that is the gateway id.
    #[serde(default)]
    pub gateway: Option<usize>,
}

/// How long a stopping source waits for the records it handed to its flows, to acknowledge them.
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// rumqttc's request channel (acks and subscribes): far above what a broker keeps in flight.
const REQUEST_CAPACITY: usize = 1024;

fn default_qos() -> u8 {
    1
}

impl MqttSourceConfig {
    pub fn problems(&self) -> Vec<String> {
        let mut out = self.broker().problems();
        if self.client_id.is_empty() {
            out.push("client_id is empty".into());
        }
        if self.subscriptions.is_empty() {
            out.push("no subscriptions: add subscriptions = [{ topic = \"a/+\", qos = 1 }]".into());
        }
        for s in &self.subscriptions {
            if !rumqttc::valid_filter(&s.topic) {
                out.push(format!("`{}` is not a valid topic filter", s.topic));
            }
            if s.qos > 1 {
                out.push(format!("`{}`: qos must be 0 or 1", s.topic));
            }
            let wildcards = s
                .topic
                .split('/')
                .filter(|l| *l == "+" || *l == "#")
                .count();
            for (key, level) in [("device", s.device), ("gateway", s.gateway)] {
                if let Some(n) = level
                    && (n == 0 || n > wildcards)
                {
                    out.push(format!(
                        "`{}`: {key} = {n}, but the filter has {wildcards} wildcard level(s) (counted from 1)",
                        s.topic
                    ));
                }
            }
        }
        out
    }
}

#[derive(Clone, Debug)]
struct Counters {
    received: Counter,
    acked: Counter,
    unacked: Counter,
    reconnects: Counter,
    /// From a QoS 1 message's arrival to its outcome (the ack waits for it).
    ack_latency: Histogram,
    probe: Probe,
}

/// The MQTT source (see the module docs).
pub struct MqttSource {
    name: Arc<str>,
    config: MqttSourceConfig,
    options: rumqttc::MqttOptions,
    flows: Vec<mpsc::Sender<Record>>,
    subscriptions: Vec<(Subscription, Option<Arc<str>>)>,
    counters: Counters,
}

/// A QoS 1 message waiting for its outcome before it is acknowledged.
struct Pending {
    publish: Publish,
    watch: DeliveryWatch,
    connection: u64,
}

impl MqttSource {
    /// Reports the connection to the broker (down until the first CONNACK).
    pub fn with_probe(mut self, probe: Probe) -> Self {
        self.counters.probe = probe;
        self
    }

    /// Checks the options (password, TLS files) so that a mistake shows at start.
    pub fn new(
        name: &str,
        config: &MqttSourceConfig,
        flows: Vec<mpsc::Sender<Record>>,
    ) -> anyhow::Result<Self> {
        let mut options = config.broker().options(&config.client_id)?;
        options
            .set_clean_session(config.clean_session)
            .set_manual_acks(true);
        let labels = [("component", name)];
        let source = [("source", name)];
        Ok(MqttSource {
            name: name.into(),
            config: config.clone(),
            options,
            flows,
            subscriptions: config
                .subscriptions
                .iter()
                .map(|s| (s.clone(), s.route.as_deref().map(Arc::from)))
                .collect(),
            counters: Counters {
                received: metrics::counter("component_received_events_total", &labels),
                acked: metrics::counter("mqtt_acked_messages_total", &source),
                unacked: metrics::counter("mqtt_unacked_messages_total", &source),
                reconnects: metrics::counter("mqtt_reconnects_total", &source),
                ack_latency: metrics::histogram("source_ack_latency_seconds", &labels),
                probe: Probe::detached(),
            },
        })
    }

    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let broker = self.config.broker();
        let mut backoff = broker.backoff();
        // A record failed and nothing has been stored since.
        let mut failing = false;
        let mut fifo: VecDeque<Pending> = VecDeque::new();
        // Counts connections; a pending message belongs to the one it came on.
        let mut connection_id = 0u64;
        let mut conn = Connection::open(self.options.clone(), REQUEST_CAPACITY);
        let mut live = false;
        let mut subscribed = false;
        loop {
            // Drop outcomes that belong to an older connection: their acks would be meaningless.
            while fifo.front().is_some_and(|p| p.connection != connection_id) {
                fifo.pop_front();
            }
            let has_front = !fifo.is_empty();
            let front = fifo.front_mut().map(|p| &mut p.watch);
            let reconnect = tokio::select! {
                _ = shutdown.cancelled() => {
                    // Let the flows end once they have drained; acknowledge what they store.
                    self.flows.clear();
                    self.drain(fifo, conn, connection_id).await;
                    return Ok(());
                }
                outcome = async { front.expect("guarded").await }, if has_front => {
                    let pending = fifo.pop_front().expect("a front");
                    match outcome {
                        Ok(Outcome::Delivered { .. } | Outcome::Rejected { .. }) => {
                            // In order, through the connection's ack task (never waits here).
                            if conn.ack(pending.publish) {
                                self.counters.acked.inc();
                                // Records get stored again: back to the shortest wait.
                                if failing {
                                    failing = false;
                                    backoff.reset();
                                }
                                false
                            } else {
                                tracing::warn!(source = %self.name, "the connection is gone before its PUBACK; reconnecting");
                                true
                            }
                        }
                        Ok(Outcome::Failed { reason }) => {
                            self.counters.unacked.inc();
                            tracing::warn!(source = %self.name, topic = %pending.publish.topic, %reason, "a record was not stored: its message stays unacknowledged; reconnecting so the broker sends it again");
                            failing = true;
                            true
                        }
                        Err(_) => {
                            self.counters.unacked.inc();
                            tracing::warn!(source = %self.name, topic = %pending.publish.topic, "a record was lost before it was settled; reconnecting so the broker sends it again");
                            failing = true;
                            true
                        }
                    }
                }
                event = conn.events.recv() => match event {
                    Some(ConnEvent::Up { session_present }) => {
                        self.counters.probe.up();
                        connection_id += 1;
                        live = true;
                        // After a broken connection, start the waits again; while records keep
                        // failing, keep them growing (each failure reconnects).
                        if !failing {
                            backoff.reset();
                        }
                        tracing::info!(source = %self.name, session_present, "connected to the MQTT broker");
                        // Subscribe on the first connection of the process (the configuration may
                        // have changed) and whenever the broker lost the session; not on every
                        // reconnect, since a broker sends retained messages again on a subscribe.
                        if !session_present || !subscribed {
                            subscribed = true;
                            let filters = self.subscriptions.iter().map(|(s, _)| {
                                let qos = if s.qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce };
                                SubscribeFilter::new(s.topic.clone(), qos)
                            });
                            if let Err(e) = conn.client.try_subscribe_many(filters) {
                                tracing::warn!(source = %self.name, error = %e, "cannot subscribe; reconnecting");
                            }
                        }
                        false
                    }
                    Some(ConnEvent::Message(publish)) => {
                        self.counters.received.inc();
                        match self.dispatch(publish, connection_id, &shutdown).await {
                            Some(Some(pending)) => { fifo.push_back(pending); false }
                            Some(None) => false,
                            None => {
                                self.flows.clear();
                                self.drain(fifo, conn, connection_id).await;
                                return Ok(());
                            }
                        }
                    }
                    Some(ConnEvent::SubscriptionRefused) => {
                        tracing::error!(source = %self.name, "the broker refused a subscription (check the topic filters and the client's permissions)");
                        false
                    }
                    Some(ConnEvent::Sent(_) | ConnEvent::Acked(_)) => false,
                    Some(ConnEvent::Down(reason)) => {
                        self.counters.probe.down(&reason);
                        if live {
                            tracing::warn!(source = %self.name, %reason, "MQTT connection lost");
                        } else {
                            tracing::warn!(source = %self.name, %reason, "cannot connect to the MQTT broker");
                        }
                        true
                    }
                    None => true,
                },
            };
            if reconnect {
                // Drop the connection (no DISCONNECT: the session and its unacked messages stay).
                drop(conn);
                live = false;
                connection_id += 1;
                self.counters.reconnects.inc();
                let wait = backoff.next_wait();
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(wait) => {}
                }
                conn = Connection::open(self.options.clone(), REQUEST_CAPACITY);
            }
        }
    }

    /// At shutdown: acknowledges, in order, the messages whose records get stored within
    /// [`DRAIN_TIME`], then disconnects. Messages arriving meanwhile are not taken (the broker keeps
    /// them), and nothing after an unstored record is acknowledged.
    async fn drain(&self, mut fifo: VecDeque<Pending>, mut conn: Connection, connection_id: u64) {
        let deadline = tokio::time::Instant::now() + DRAIN_TIME;
        fifo.retain(|p| p.connection == connection_id);
        'acks: while let Some(pending) = fifo.pop_front() {
            let mut watch = pending.watch;
            let outcome = loop {
                tokio::select! {
                    outcome = &mut watch => break outcome,
                    _ = tokio::time::sleep_until(deadline) => break 'acks,
                    event = conn.events.recv() => match event {
                        Some(ConnEvent::Down(_)) | None => return,
                        Some(_) => {}
                    },
                }
            };
            match outcome {
                Ok(Outcome::Delivered { .. } | Outcome::Rejected { .. }) => {
                    if !conn.ack(pending.publish) {
                        break;
                    }
                    self.counters.acked.inc();
                }
                _ => break,
            }
        }
        if fifo.is_empty() {
            tracing::info!(source = %self.name, "every stored message acknowledged; disconnecting");
        } else {
            tracing::info!(source = %self.name, unacknowledged = fifo.len(), "disconnecting; the broker sends the messages not acknowledged again on the next start");
        }
        // DISCONNECT goes out after the acks (requests are sent in order); the session stays.
        if conn.disconnect() {
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while let Some(event) = conn.events.recv().await {
                    if matches!(event, ConnEvent::Down(_)) {
                        break;
                    }
                }
            })
            .await;
        }
    }

    /// Makes the record of a message and hands it to every flow (waiting for room: the broker then
    /// waits too). `None` on shutdown; `Some(None)` for a message that needs no ack.
    async fn dispatch(
        &self,
        publish: Publish,
        connection: u64,
        shutdown: &CancellationToken,
    ) -> Option<Option<Pending>> {
        let (delivery, pending) = if publish.qos == QoS::AtMostOnce {
            (Delivery::detached(), None)
        } else {
            let (d, w) = Delivery::timed(&self.counters.ack_latency);
            (d, Some(w))
        };
        let record = message_record(
            &self.name,
            &self.subscriptions,
            &publish.topic,
            Bytes::clone(&publish.payload),
            delivery,
        );
        // A flow that stopped stops the pipeline; the message stays unacknowledged.
        if !super::hand_to_flows(&self.flows, record, shutdown).await {
            return None;
        }
        Some(pending.map(|watch| Pending {
            publish,
            watch,
            connection,
        }))
    }
}

/// The record of a message on `topic` (see the module docs for its origin and device).
fn message_record(
    source: &Arc<str>,
    subscriptions: &[(Subscription, Option<Arc<str>>)],
    topic: &str,
    payload: Bytes,
    delivery: Delivery,
) -> Record {
    let path: Arc<str> = Arc::from(topic);
    let mut origin = Origin {
        path: Some(path.clone()),
        route: Some(path),
        ..Origin::default()
    };
    let mut device = None;
    let matched = subscriptions
        .iter()
        .find_map(|(s, route)| match_topic(&s.topic, topic).map(|c| (s, route, c)));
    if let Some((sub, route, captures)) = matched {
        if let Some(route) = route {
            origin.route = Some(route.clone());
        }
        let level = |n: Option<usize>| {
            n.and_then(|n| captures.get(n.wrapping_sub(1)))
                .filter(|c| !c.is_empty())
                .map(|c| c.to_string())
        };
        device = level(sub.device);
        origin.gateway = level(sub.gateway).map(Arc::from);
    }
    if let Some(device) = &device {
        delivery.set_device(device);
    }
    let mut record = Record::new(source.clone(), origin, payload, delivery);
    record.device = device;
    record
}

/// The record a message on `topic` becomes, as the source would make it (for `sensorgate test`).
pub fn topic_record(
    source: &str,
    config: &MqttSourceConfig,
    topic: &str,
    payload: Bytes,
) -> Record {
    let subscriptions: Vec<_> = config
        .subscriptions
        .iter()
        .map(|s| (s.clone(), s.route.as_deref().map(Arc::from)))
        .collect();
    message_record(
        &Arc::from(source),
        &subscriptions,
        topic,
        payload,
        Delivery::detached(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_record_carries_topic_route_and_captured_device() {
        let config: MqttSourceConfig = toml::from_str(
            r#"
url = "mqtt://127.0.0.1:1883"
client_id = "c1"
subscriptions = [
  { topic = "efento/+/m", route = "measurements", device = 1 },
  { topic = "flespi/message/gw/devices/+", qos = 0, device = 1 },
  { topic = "gw/+/dev/+", gateway = 1, device = 2 },
]
"#,
        )
        .unwrap();
        assert!(config.problems().is_empty(), "{:?}", config.problems());
        let r = topic_record("m", &config, "efento/282C/m", Bytes::from_static(b"x"));
        assert_eq!(r.origin.path.as_deref(), Some("efento/282C/m"));
        assert_eq!(r.origin.route.as_deref(), Some("measurements"));
        assert_eq!(r.device.as_deref(), Some("282C"));
        let r = topic_record("m", &config, "flespi/message/gw/devices/77", Bytes::new());
        assert_eq!(
            r.origin.route.as_deref(),
            Some("flespi/message/gw/devices/77")
        );
        assert_eq!(r.device.as_deref(), Some("77"));
        let r = topic_record("m", &config, "gw/g1/dev/d9", Bytes::new());
        assert_eq!(r.origin.gateway.as_deref(), Some("g1"));
        assert_eq!(r.device.as_deref(), Some("d9"));
        let r = topic_record("m", &config, "other", Bytes::new());
        assert_eq!(r.device, None);
    }

    #[test]
    fn bad_subscriptions_are_problems() {
        let config: MqttSourceConfig = toml::from_str(
            r#"
host = "127.0.0.1"
client_id = "c1"
subscriptions = [{ topic = "a/#/b", qos = 2, device = 3 }]
"#,
        )
        .unwrap();
        let problems = config.problems().join("\n");
        assert!(problems.contains("not a valid topic filter"), "{problems}");
        assert!(problems.contains("qos must be 0 or 1"), "{problems}");
        assert!(problems.contains("device = 3"), "{problems}");
    }
}
