//! What the `mqtt` source and the `mqtt` sink share: the broker address, credentials and TLS keys of
//! the configuration, and a connection driven by its own task.
//!
//! A [`Connection`] owns one rumqttc event loop, polled without pause by a task of its own that hands
//! the events the components care about to them over a channel. When the connection breaks the task
//! reports [`ConnEvent::Down`] and ends; the component then waits out its backoff and makes a new
//! connection (a fresh client and event loop), so nothing queued inside rumqttc for the old one is
//! ever sent untracked.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, Transport};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::config::HumanDuration;

/// The broker keys the source and the sink share, as a struct of their own.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerConfig {
    pub url: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_env: Option<String>,
    pub tls: Option<TlsConfig>,
    pub keep_alive: HumanDuration,
    pub reconnect_min: HumanDuration,
    pub reconnect_max: HumanDuration,
    pub max_packet_size: usize,
}

/// Defines a component's configuration struct with the broker keys (serde's `flatten` does not go
/// with `deny_unknown_fields`, so the keys are written into each struct) and its `broker()`.
macro_rules! mqtt_component_config {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* pub $field:ident : $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// `mqtt://host:port` (plain TCP, port 1883 by default) or `mqtts://host:port` (TLS, 8883).
            #[serde(default)]
            pub url: Option<String>,
            /// The broker's host, instead of `url`.
            #[serde(default)]
            pub host: Option<String>,
            /// The broker's port with `host` (default 1883, or 8883 with `tls`).
            #[serde(default)]
            pub port: Option<u16>,
            #[serde(default)]
            pub username: Option<String>,
            /// The password itself (write `"${MQTT_PASSWORD}"` to take it from the environment).
            #[serde(default)]
            pub password: Option<String>,
            /// The name of the environment variable that holds the password, read at start.
            #[serde(default)]
            pub password_env: Option<String>,
            /// TLS: the broker's CA and, for brokers that want one (AWS IoT), the client certificate
            /// and key.
            #[serde(default)]
            pub tls: Option<$crate::mqtt::TlsConfig>,
            /// MQTT keep alive (ping interval).
            #[serde(default = "crate::mqtt::default_keep_alive")]
            pub keep_alive: $crate::config::HumanDuration,
            /// The first wait before reconnecting after the connection broke; it doubles up to
            /// `reconnect_max`.
            #[serde(default = "crate::mqtt::default_reconnect_min")]
            pub reconnect_min: $crate::config::HumanDuration,
            #[serde(default = "crate::mqtt::default_reconnect_max")]
            pub reconnect_max: $crate::config::HumanDuration,
            /// The largest packet sent or taken, in bytes (rumqttc's default is only 10 KiB).
            #[serde(default = "crate::mqtt::default_max_packet_size")]
            pub max_packet_size: usize,
            $($(#[$fmeta])* pub $field: $ty,)*
        }

        impl $name {
            /// The broker keys of this component.
            pub fn broker(&self) -> $crate::mqtt::BrokerConfig {
                $crate::mqtt::BrokerConfig {
                    url: self.url.clone(),
                    host: self.host.clone(),
                    port: self.port,
                    username: self.username.clone(),
                    password: self.password.clone(),
                    password_env: self.password_env.clone(),
                    tls: self.tls.clone(),
                    keep_alive: self.keep_alive,
                    reconnect_min: self.reconnect_min,
                    reconnect_max: self.reconnect_max,
                    max_packet_size: self.max_packet_size,
                }
            }
        }
    };
}
pub(crate) use mqtt_component_config;

/// `tls = { ca_file = "...", cert_file = "...", key_file = "..." }`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA(s) that signed the broker's certificate. Without it, the Mozilla roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client certificate (chain), with `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client's private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

pub(crate) fn default_keep_alive() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
pub(crate) fn default_reconnect_min() -> HumanDuration {
    HumanDuration(Duration::from_millis(100))
}
pub(crate) fn default_reconnect_max() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
pub(crate) fn default_max_packet_size() -> usize {
    1 << 20
}

/// Where to connect: host, port and whether TLS is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl BrokerConfig {
    /// Problems the loader reports with the component's position.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Err(e) = self.address() {
            out.push(e);
        }
        if self.password.is_some() && self.password_env.is_some() {
            out.push("give `password` or `password_env`, not both".into());
        }
        if (self.password.is_some() || self.password_env.is_some()) && self.username.is_none() {
            out.push("a password needs a `username`".into());
        }
        if let Some(tls) = &self.tls
            && tls.cert_file.is_some() != tls.key_file.is_some()
        {
            out.push("tls: give both `cert_file` and `key_file` for a client certificate".into());
        }
        if self.keep_alive.get() < Duration::from_secs(1) {
            out.push("keep_alive must be at least 1s".into());
        }
        if self.reconnect_min.get() > self.reconnect_max.get() {
            out.push("reconnect_min is longer than reconnect_max".into());
        }
        if self.max_packet_size < 64 {
            out.push("max_packet_size is too small (at least 64 bytes)".into());
        }
        out
    }

    /// The broker's address from `url`, or `host` and `port`.
    pub fn address(&self) -> Result<Address, String> {
        match (&self.url, &self.host) {
            (Some(_), Some(_)) => Err("give `url` or `host`, not both".into()),
            (None, None) => {
                Err("no broker: add url = \"mqtt://host:1883\" or host = \"...\"".into())
            }
            (None, Some(host)) if host.is_empty() => Err("`host` is empty".into()),
            (None, Some(host)) => {
                let tls = self.tls.is_some();
                let port = self.port.unwrap_or(if tls { 8883 } else { 1883 });
                Ok(Address {
                    host: host.clone(),
                    port,
                    tls,
                })
            }
            (Some(url), None) => {
                if self.port.is_some() {
                    return Err("`port` goes into the `url`".into());
                }
                parse_url(url, self.tls.is_some())
            }
        }
    }

    /// The password from `password` or the environment variable `password_env`.
    fn password(&self) -> anyhow::Result<Option<String>> {
        if let Some(p) = &self.password {
            return Ok(Some(p.clone()));
        }
        match &self.password_env {
            Some(var) => std::env::var(var)
                .map(Some)
                .with_context(|| format!("password_env: environment variable `{var}` is not set")),
            None => Ok(None),
        }
    }

    /// rumqttc options for a client id; reads the password and the TLS files (errors name them).
    pub fn options(&self, client_id: &str) -> anyhow::Result<MqttOptions> {
        let address = self.address().map_err(anyhow::Error::msg)?;
        let mut options = MqttOptions::new(client_id, address.host, address.port);
        options
            .set_keep_alive(self.keep_alive.get())
            .set_max_packet_size(self.max_packet_size, self.max_packet_size);
        if let Some(user) = &self.username {
            options.set_credentials(user.clone(), self.password()?.unwrap_or_default());
        }
        if address.tls {
            let tls = self.tls.clone().unwrap_or_default();
            let config = client_tls(&tls)?;
            options.set_transport(Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(Arc::new(config)),
            ));
        }
        Ok(options)
    }

    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.reconnect_min.get(), self.reconnect_max.get())
    }
}

fn parse_url(url: &str, tls_keys: bool) -> Result<Address, String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        format!("url `{url}` has no scheme; write mqtt://host:port or mqtts://host:port")
    })?;
    let tls = match scheme {
        "mqtt" | "tcp" => tls_keys,
        "mqtts" | "ssl" | "tls" => true,
        other => {
            return Err(format!(
                "url scheme `{other}` is not supported (mqtt or mqtts)"
            ));
        }
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("url `{url}`: `{port}` is not a port number"))?;
            (host, port)
        }
        _ => (rest, if tls { 8883 } else { 1883 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains('/') {
        return Err(format!("url `{url}` has no host (write mqtt://host:port)"));
    }
    Ok(Address {
        host: host.to_string(),
        port,
        tls,
    })
}

/// A rustls client configuration (ring provider) with the CA file or the Mozilla roots, and the
/// client certificate if given.
fn client_tls(tls: &TlsConfig) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            let certs = read_certs(path)?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                anyhow::bail!("tls.ca_file {}: no usable CA certificate", path.display());
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("tls: no protocol versions")?
        .with_root_certificates(roots);
    let config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("tls.key_file {}: no private key", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .context("tls: the client certificate and key do not fit together")?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(config)
}

fn read_certs(path: &std::path::Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not a PEM certificate file", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{}: no certificate in it", path.display());
    }
    Ok(certs)
}

/// Doubling waits between reconnects.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Waits from `min`, doubling up to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// What a connection's task reports.
#[derive(Debug)]
pub enum ConnEvent {
    /// CONNACK accepted.
    Up { session_present: bool },
    /// A message from a subscription.
    Message(Publish),
    /// A publish of ours went out with this packet id (0 for QoS 0).
    Sent(u16),
    /// The broker acknowledged our QoS 1 publish with this packet id.
    Acked(u16),
    /// The broker refused a subscription (its filter).
    SubscriptionRefused,
    /// The connection broke (or never came up); the task has ended.
    Down(String),
}

/// One connection to the broker: a client for requests, the task that polls its event loop, and
/// the task that hands it acknowledgements in order.
pub struct Connection {
    pub client: AsyncClient,
    pub events: mpsc::Receiver<ConnEvent>,
    task: tokio::task::JoinHandle<()>,
    acks: mpsc::UnboundedSender<AckRequest>,
    ack_task: tokio::task::JoinHandle<()>,
}

/// What the ack task sends, in order.
enum AckRequest {
    Ack(Publish),
    Disconnect,
}

/// Events buffered between the event loop and its reader. The event loop must keep running while
/// the reader is busy (a source waiting for room in its flows): it answers the broker's pings, and
/// a connection without them is dropped, which makes the broker send every unacknowledged message
/// again. QoS 1 messages are bounded by the broker's in-flight window; QoS 0 messages beyond this
/// many are dropped (at most once) and counted.
const EVENT_BUFFER: usize = 65_536;

impl Connection {
    /// Starts connecting; `capacity` bounds rumqttc's request channel.
    pub fn open(options: MqttOptions, capacity: usize) -> Connection {
        let client_id = options.client_id();
        let (client, event_loop) = AsyncClient::new(options, capacity);
        let (tx, events) = mpsc::channel(EVENT_BUFFER);
        let dropped = crate::metrics::counter("mqtt_qos0_dropped_total", &[("client", &client_id)]);
        let task = tokio::spawn(drive(event_loop, tx, dropped));
        // Acks wait here, never in the reader: rumqttc's request channel may be full for a moment
        // (a burst of records stored at once), and a failed ack would mean a reconnect and the
        // broker sending everything unacknowledged again.
        let (acks, mut queue) = mpsc::unbounded_channel::<AckRequest>();
        let sender = client.clone();
        let ack_task = tokio::spawn(async move {
            while let Some(request) = queue.recv().await {
                let sent = match request {
                    AckRequest::Ack(publish) => sender.ack(&publish).await,
                    AckRequest::Disconnect => sender.disconnect().await,
                };
                if sent.is_err() {
                    return; // the event loop is gone; so is the connection
                }
            }
        });
        Connection {
            client,
            events,
            task,
            acks,
            ack_task,
        }
    }

    /// Acknowledges a QoS 1 message (after those acknowledged before it). False when the
    /// connection is gone.
    pub fn ack(&self, publish: Publish) -> bool {
        self.acks.send(AckRequest::Ack(publish)).is_ok()
    }

    /// Sends DISCONNECT after every ack asked for before.
    pub fn disconnect(&self) -> bool {
        self.acks.send(AckRequest::Disconnect).is_ok()
    }
}

impl Drop for Connection {
    // Dropping the event loop closes the socket without DISCONNECT: a persistent session stays, and
    // the broker sends its unacknowledged messages again on the next connection.
    fn drop(&mut self) {
        self.task.abort();
        self.ack_task.abort();
    }
}

async fn drive(
    mut event_loop: EventLoop,
    tx: mpsc::Sender<ConnEvent>,
    qos0_dropped: crate::metrics::Counter,
) {
    loop {
        let event = match event_loop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => ConnEvent::Up {
                session_present: ack.session_present,
            },
            Ok(Event::Incoming(Packet::Publish(p))) => ConnEvent::Message(p),
            Ok(Event::Incoming(Packet::PubAck(ack))) => ConnEvent::Acked(ack.pkid),
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    ConnEvent::SubscriptionRefused
                } else {
                    continue;
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => ConnEvent::Sent(pkid),
            Ok(_) => continue,
            Err(e) => {
                let _ = tx.send(ConnEvent::Down(e.to_string())).await;
                return;
            }
        };
        // Never wait while there is room; when the buffer is full, drop QoS 0 messages (their
        // sender asked for at most once) and wait for the reader with anything else.
        let event = match tx.try_send(event) {
            Ok(()) => continue,
            Err(mpsc::error::TrySendError::Closed(_)) => return,
            Err(mpsc::error::TrySendError::Full(ConnEvent::Message(p)))
                if p.qos == rumqttc::QoS::AtMostOnce =>
            {
                qos0_dropped.inc();
                continue;
            }
            Err(mpsc::error::TrySendError::Full(event)) => event,
        };
        if tx.send(event).await.is_err() {
            return;
        }
    }
}

/// Whether `topic` matches `filter` (with `+` and `#`, and `$share/GROUP/` stripped), and the topic
/// levels the wildcards stand for, in order (`#` gives the rest of the topic as one capture).
pub fn match_topic<'t>(filter: &str, topic: &'t str) -> Option<Vec<&'t str>> {
    let filter = match filter.strip_prefix("$share/") {
        Some(rest) => rest.split_once('/').map(|(_, f)| f).unwrap_or(""),
        None => filter,
    };
    // Wildcards at the first level do not match topics starting with `$` (MQTT-4.7.2-1).
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return None;
    }
    let mut captures = Vec::new();
    let mut levels = topic.split('/');
    let mut consumed = 0usize;
    for part in filter.split('/') {
        if part == "#" {
            let rest = topic.get(consumed..).unwrap_or("");
            captures.push(rest);
            return Some(captures);
        }
        let level = levels.next()?;
        consumed += level.len() + 1;
        match part {
            "+" => captures.push(level),
            exact if exact == level => {}
            _ => return None,
        }
    }
    levels.next().is_none().then_some(captures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_match_filters_with_captures() {
        assert_eq!(
            match_topic(
                "flespi/message/gw/devices/+",
                "flespi/message/gw/devices/1234"
            ),
            Some(vec!["1234"])
        );
        assert_eq!(match_topic("a/+/c", "a/b/d"), None);
        assert_eq!(match_topic("a/+", "a/b/c"), None);
        assert_eq!(match_topic("a/#", "a/b/c"), Some(vec!["b/c"]));
        assert_eq!(match_topic("a/#", "a"), Some(vec![""]));
        assert_eq!(match_topic("+/x/+", "s/x/t"), Some(vec!["s", "t"]));
        assert_eq!(match_topic("#", "$SYS/x"), None);
        assert_eq!(match_topic("$share/g/a/+", "a/b"), Some(vec!["b"]));
        assert_eq!(match_topic("a/b", "a/b"), Some(vec![]));
    }

    #[test]
    fn urls_give_host_port_and_tls() {
        let a = parse_url("mqtt://127.0.0.1:1884", false).unwrap();
        assert_eq!((a.host.as_str(), a.port, a.tls), ("127.0.0.1", 1884, false));
        let a = parse_url("mqtts://mqtt.flespi.io", false).unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.tls),
            ("mqtt.flespi.io", 8883, true)
        );
        assert!(parse_url("http://x:1", false).is_err());
        assert!(parse_url("mqtt://:1", false).is_err());
        assert!(parse_url("x:1", false).is_err());
    }
}
