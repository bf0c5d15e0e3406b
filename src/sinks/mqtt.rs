//! MQTT sink: publishes every record's [document](crate::document) to a broker.
//!
//! **Topics.** `topic` is a template with `{device}`, `{kind}`, `{gateway}` and `{source}`. Without
//! one, the IoTConnect layout: `sensor/{device}/telemetry` for measurements, telemetry and raw
//! records, `sensor/{device}/meta/event`, `.../meta/stats`, `.../meta/info` (device info),
//! `.../meta/config`, `.../meta/signal`; a record without a device but with a gateway (a gateway's
//! statistics or events) goes to `gateway/{gateway}/meta/{kind}`, and the rest (dead letters,
//! records with neither) to `sensorgate/{source}/{kind}`. `/`, `+` and `#` inside a value become
//! `_`, so a value never adds a topic level or a wildcard. A record whose template needs a device or
//! gateway it does not have, or whose document is larger than `max_packet_size`, is refused for good
//! (dead letter).
//!
//! **Delivery.** With `qos = 1` (the default) a record is delivered when the broker's PUBACK for its
//! packet id arrives; with `qos = 0` once rumqttc has written it to the connection. The packet ids
//! come from rumqttc's `Outgoing::Publish(pkid)` events, which follow the order of the publishes
//! handed to it. When the connection breaks, the publishes not yet acknowledged are handed again to
//! the next connection (the broker may then see one twice: at least once). A record that is not
//! acknowledged within `deadline` of reaching the sink (broker away, or slow) is settled failed,
//! so its source hears "not stored" (CoAP 5.00, an MQTT message left unacknowledged).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::QoS;
use tokio::sync::mpsc::Receiver;
use tokio::time::Instant;

use super::SinkCounters;
use super::template::Part;
use crate::config::HumanDuration;
use crate::document::Document;
use crate::mqtt::{ConnEvent, Connection, mqtt_component_config};
use crate::record::{Delivery, Kind, Record};

mqtt_component_config! {
    /// `[sinks.NAME] type = "mqtt"`.
    pub struct MqttSinkConfig {
        /// The client id (default `sensorgate-NAME`).
        #[serde(default)]
        pub client_id: Option<String>,
        /// Topic template with `{device}`, `{kind}`, `{gateway}`, `{source}`; default: the IoTConnect
        /// layout (see the module docs).
        #[serde(default)]
        pub topic: Option<String>,
        /// 0 or 1 (default).
        #[serde(default = "default_qos")]
        pub qos: u8,
        /// Publish with the retain flag.
        #[serde(default)]
        pub retain: bool,
        /// How long a record may wait for its PUBACK (broker away included) before it fails.
        #[serde(default = "default_deadline")]
        pub deadline: HumanDuration,
        /// The most publishes waiting for their PUBACK at once.
        #[serde(default = "default_max_in_flight")]
        pub max_in_flight: u16,
    }
}

fn default_qos() -> u8 {
    1
}
fn default_deadline() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_max_in_flight() -> u16 {
    100
}

/// Checks a topic template: its placeholders, and that it is a topic one may publish to.
fn parse_template(template: &str) -> Result<Vec<Part>, String> {
    let parts = Part::parse("topic", template)?;
    let text = Part::sample(&parts);
    if text.contains(['+', '#', '}']) || !rumqttc::valid_topic(&text) || text.is_empty() {
        return Err(format!(
            "topic `{template}` is not a valid topic to publish to (no wildcards)"
        ));
    }
    Ok(parts)
}

impl MqttSinkConfig {
    pub fn problems(&self) -> Vec<String> {
        let mut out = self.broker().problems();
        if let Some(t) = &self.topic
            && let Err(e) = parse_template(t)
        {
            out.push(e);
        }
        if self.qos > 1 {
            out.push("qos must be 0 or 1".into());
        }
        if self.client_id.as_deref() == Some("") {
            out.push("client_id is empty".into());
        }
        if self.max_in_flight == 0 {
            out.push("max_in_flight must be at least 1".into());
        }
        if self.deadline.get().is_zero() {
            out.push("deadline must be longer than 0s".into());
        }
        out
    }
}

/// A document ready to publish, with its record's token.
struct Message {
    topic: String,
    payload: Bytes,
    delivery: Option<Delivery>,
    deadline: Instant,
    received_at: std::time::SystemTime,
}

/// The MQTT sink (see the module docs).
pub struct MqttSink {
    name: Arc<str>,
    config: MqttSinkConfig,
    template: Option<Vec<Part>>,
    options: rumqttc::MqttOptions,
    qos: QoS,
    counters: SinkCounters,
}

impl MqttSink {
    /// Checks the options (password, TLS files) so that a mistake shows at start.
    pub fn new(name: &str, config: &MqttSinkConfig) -> anyhow::Result<Self> {
        let client_id = config
            .client_id
            .clone()
            .unwrap_or_else(|| format!("sensorgate-{name}"));
        let mut options = config.broker().options(&client_id)?;
        options
            .set_clean_session(true)
            .set_inflight(config.max_in_flight.max(1));
        let template = config
            .topic
            .as_deref()
            .map(parse_template)
            .transpose()
            .map_err(anyhow::Error::msg)?;
        Ok(MqttSink {
            name: name.into(),
            config: config.clone(),
            template,
            options,
            qos: if config.qos == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            },
            counters: SinkCounters::new(name, "publish"),
        })
    }

    /// Reports the connection to the broker (down until the first CONNACK).
    pub fn with_probe(mut self, probe: crate::health::Probe) -> Self {
        self.counters.probe = probe;
        self
    }

    /// The topic of a record, or why it has none.
    fn topic(&self, record: &Record) -> Result<String, String> {
        let device = record.device.as_deref();
        let gateway = record.origin.gateway.as_deref();
        let default;
        let parts = match &self.template {
            Some(parts) => parts,
            None => {
                let layout = match (record.kind, device, gateway) {
                    (Kind::DeadLetter, _, _) => "sensorgate/{source}/{kind}",
                    (Kind::Event, Some(_), _) => "sensor/{device}/meta/event",
                    (Kind::Stats, Some(_), _) => "sensor/{device}/meta/stats",
                    (Kind::DeviceInfo, Some(_), _) => "sensor/{device}/meta/info",
                    (Kind::Config, Some(_), _) => "sensor/{device}/meta/config",
                    (Kind::Signal, Some(_), _) => "sensor/{device}/meta/signal",
                    (_, Some(_), _) => "sensor/{device}/telemetry",
                    (_, None, Some(_)) => "gateway/{gateway}/meta/{kind}",
                    (_, None, None) => "sensorgate/{source}/{kind}",
                };
                default = parse_template(layout)?;
                &default
            }
        };
        Part::render(parts, record, |c| match c {
            '/' | '+' | '#' | '\0' => '_',
            c => c,
        })
    }

    /// The message of a record; a record that can never be published is refused (dead letter).
    fn prepare(&self, mut record: Record, deadline: Instant) -> Option<Message> {
        let topic = match self.topic(&record) {
            Ok(t) => t,
            Err(reason) => {
                record.refuse(&self.name, &reason);
                return None;
            }
        };
        let payload = match serde_json::to_vec(&Document(&record)) {
            Ok(p) => p,
            Err(e) => {
                record.refuse(&self.name, &format!("cannot serialize the document: {e}"));
                return None;
            }
        };
        // Fixed header (5), topic length (2), packet id (2).
        let size = payload.len() + topic.len() + 9;
        if size > self.config.max_packet_size {
            let reason = format!(
                "the message is {size} bytes, over this sink's max_packet_size ({})",
                self.config.max_packet_size
            );
            record.refuse(&self.name, &reason);
            return None;
        }
        let delivery = std::mem::replace(&mut record.delivery, Delivery::detached());
        Some(Message {
            topic,
            payload: Bytes::from(payload),
            delivery: Some(delivery),
            deadline,
            received_at: record.received_at,
        })
    }

    fn settle_delivered(&self, message: Message) {
        if let Some(d) = message.delivery {
            d.delivered();
            self.counters
                .observe(message.received_at, std::time::SystemTime::now());
            self.counters.sent_events.inc();
            self.counters.sent_bytes.add(message.payload.len() as u64);
        }
    }

    fn settle_failed(&self, message: &mut Message, reason: &str) {
        if let Some(d) = message.delivery.take() {
            d.failed(reason);
            self.counters.failed_events.inc();
        }
    }

    /// Publishes until `rx` closes and every message is settled.
    pub async fn run(self, mut rx: Receiver<Record>) -> anyhow::Result<()> {
        let broker = self.config.broker();
        let mut backoff = broker.backoff();
        let limit = usize::from(self.config.max_in_flight.max(1));
        let capacity = limit + 16;
        let deadline = self.config.deadline.get();
        // Not yet handed to rumqttc (received while the broker is away, or over the in-flight limit).
        let mut waiting: VecDeque<Message> = VecDeque::new();
        // Handed to rumqttc, packet id not known yet (in the order handed).
        let mut unassigned: VecDeque<Message> = VecDeque::new();
        // Sent with QoS 1, waiting for the PUBACK.
        let mut inflight: HashMap<u16, Message> = HashMap::new();
        let mut conn = Some(Connection::open(self.options.clone(), capacity));
        let mut connected = false;
        let mut reconnect_at: Option<Instant> = None;
        let mut open = true;
        let mut batch = Vec::with_capacity(limit);
        loop {
            let now = Instant::now();
            self.expire(now, &mut waiting, &mut unassigned, &mut inflight);
            if connected && let Some(c) = &conn {
                while unassigned.len() + inflight.len() < limit
                    && let Some(message) = waiting.pop_front()
                {
                    let payload = message.payload.to_vec();
                    match c.client.try_publish(
                        message.topic.clone(),
                        self.qos,
                        self.config.retain,
                        payload,
                    ) {
                        Ok(()) => unassigned.push_back(message),
                        Err(e) => {
                            tracing::warn!(sink = %self.name, error = %e, "cannot hand a publish to the MQTT client");
                            waiting.push_front(message);
                            break;
                        }
                    }
                }
            }
            if !open && waiting.is_empty() && unassigned.is_empty() && inflight.is_empty() {
                return Ok(());
            }
            let timer = waiting
                .front()
                .map(|m| m.deadline)
                .into_iter()
                .chain(
                    unassigned
                        .iter()
                        .filter(|m| m.delivery.is_some())
                        .map(|m| m.deadline),
                )
                .chain(inflight.values().map(|m| m.deadline))
                .chain(reconnect_at)
                .min();
            let room = open && waiting.len() < limit;
            let mut down = None;
            tokio::select! {
                n = rx.recv_many(&mut batch, limit - waiting.len()), if room => {
                    if n == 0 {
                        open = false;
                    }
                    let deadline = Instant::now() + deadline;
                    for record in batch.drain(..) {
                        waiting.extend(self.prepare(record, deadline));
                    }
                }
                event = async { conn.as_mut().expect("guarded").events.recv().await }, if conn.is_some() => match event {
                    Some(ConnEvent::Up { .. }) => {
                        tracing::info!(sink = %self.name, "connected to the MQTT broker");
                        self.counters.probe.up();
                        connected = true;
                        backoff.reset();
                    }
                    Some(ConnEvent::Sent(pkid)) => {
                        // A packet id already in flight is rumqttc sending it again: not a new one.
                        if (pkid == 0 || !inflight.contains_key(&pkid))
                            && let Some(message) = unassigned.pop_front()
                        {
                            if pkid == 0 {
                                self.settle_delivered(message);
                            } else {
                                inflight.insert(pkid, message);
                            }
                        }
                    }
                    Some(ConnEvent::Acked(pkid)) => {
                        if let Some(message) = inflight.remove(&pkid) {
                            self.settle_delivered(message);
                        }
                    }
                    Some(ConnEvent::Message(_) | ConnEvent::SubscriptionRefused) => {}
                    Some(ConnEvent::Down(reason)) => down = Some(reason),
                    None => down = Some("the connection task ended".into()),
                },
                _ = sleep_until(timer) => {
                    if reconnect_at.is_some_and(|at| at <= Instant::now()) {
                        reconnect_at = None;
                        conn = Some(Connection::open(self.options.clone(), capacity));
                    }
                }
            }
            if let Some(reason) = down {
                self.counters.probe.down(&reason);
                if connected {
                    tracing::warn!(sink = %self.name, %reason, "MQTT connection lost; unacknowledged publishes go out again on the next connection");
                    self.counters.errors.inc();
                } else {
                    tracing::warn!(sink = %self.name, %reason, "cannot connect to the MQTT broker");
                }
                connected = false;
                conn = None;
                // Everything not acknowledged goes out again, in its order, on the next connection.
                let mut again: Vec<(u16, Message)> = inflight.drain().collect();
                again.sort_by_key(|(_, m)| m.deadline);
                let resend = again
                    .into_iter()
                    .map(|(_, m)| m)
                    .chain(unassigned.drain(..))
                    .filter(|m| m.delivery.is_some())
                    .collect::<Vec<_>>();
                for message in resend.into_iter().rev() {
                    waiting.push_front(message);
                }
                reconnect_at = Some(Instant::now() + backoff.next_wait());
            }
        }
    }

    /// Fails every message whose deadline has passed.
    fn expire(
        &self,
        now: Instant,
        waiting: &mut VecDeque<Message>,
        unassigned: &mut VecDeque<Message>,
        inflight: &mut HashMap<u16, Message>,
    ) {
        let reason = format!(
            "the MQTT broker did not acknowledge the record within {} (sink `{}`)",
            self.config.deadline, self.name
        );
        while waiting.front().is_some_and(|m| m.deadline <= now) {
            if let Some(mut m) = waiting.pop_front() {
                self.settle_failed(&mut m, &reason);
            }
        }
        // Kept as placeholders: the packet ids still arrive in this order.
        for m in unassigned.iter_mut().filter(|m| m.deadline <= now) {
            self.settle_failed(m, &reason);
        }
        inflight.retain(|_, m| {
            if m.deadline <= now {
                self.settle_failed(m, &reason);
                false
            } else {
                true
            }
        });
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Origin;

    fn sink(topic: Option<&str>) -> MqttSink {
        let mut text = String::from("host = \"127.0.0.1\"\n");
        if let Some(t) = topic {
            text.push_str(&format!("topic = \"{t}\"\n"));
        }
        let config: MqttSinkConfig = toml::from_str(&text).unwrap();
        assert!(config.problems().is_empty(), "{:?}", config.problems());
        MqttSink::new("out", &config).unwrap()
    }

    fn record(kind: Kind, device: Option<&str>, gateway: Option<&str>) -> Record {
        let origin = Origin {
            gateway: gateway.map(Arc::from),
            ..Origin::default()
        };
        let mut r = Record::new("efento".into(), origin, Bytes::new(), Delivery::detached());
        r.kind = kind;
        r.device = device.map(str::to_string);
        r
    }

    #[test]
    fn the_default_topics_follow_the_iotconnect_layout() {
        let s = sink(None);
        let t = |k, d, g| s.topic(&record(k, d, g)).unwrap();
        assert_eq!(
            t(Kind::Measurements, Some("282C"), None),
            "sensor/282C/telemetry"
        );
        assert_eq!(t(Kind::Event, Some("a/b+"), None), "sensor/a_b_/meta/event");
        assert_eq!(t(Kind::Stats, Some("d"), Some("gw")), "sensor/d/meta/stats");
        assert_eq!(t(Kind::Stats, None, Some("gw1")), "gateway/gw1/meta/stats");
        assert_eq!(t(Kind::Raw, None, None), "sensorgate/efento/raw");
        assert_eq!(
            t(Kind::DeadLetter, Some("d"), None),
            "sensorgate/efento/dead_letter"
        );
    }

    #[test]
    fn templates_fill_placeholders_and_need_their_fields() {
        let s = sink(Some("x/{source}/{device}/{kind}"));
        assert_eq!(
            s.topic(&record(Kind::Telemetry, Some("d1"), None)).unwrap(),
            "x/efento/d1/telemetry"
        );
        assert!(s.topic(&record(Kind::Telemetry, None, None)).is_err());
        assert!(parse_template("a/{nope}").is_err());
        assert!(parse_template("a/+/{device}").is_err());
        assert!(parse_template("a/{device").is_err());
    }
}
