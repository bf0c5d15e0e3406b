//! ESP3 over websocket: EnOcean gateways (Aruba APs with an EnOcean USB stick, or anything that can
//! stream a stick's bytes) connect to this server and send the stick's ESP3 byte stream.
//!
//! Two kinds of gateway, told apart per connection by the upgrade URL:
//! - **raw** (`ws://host:8080/aruba?gateway=NAME`): every binary message is a piece of the ESP3
//!   stream, the gateway id is NAME. With `access_tokens` set, the upgrade must carry one of them as
//!   `?token=` or `Authorization: Bearer`; otherwise it is refused with HTTP 401.
//! - **Aruba** (no `gateway` in the query): every binary message is one `aruba_telemetry.Telemetry`
//!   protobuf (enocean.md §7); the gateway id is the AP's MAC as 12 lowercase hex digits. Its
//!   `meta.access_token` is checked on every message; a wrong one gets a ConnectStatus `tokenExpire`
//!   southbound message and the connection is closed with code 1008 "invalid access token".
//!
//! The bytes go through one resynchronising [`StreamParser`] per (connection, USB device), so a
//! packet split over two messages is joined and garbage between packets is skipped. Each frame
//! becomes a raw record (route `esp3`, gateway, peer, path, RSSI from the optional data); skipped
//! bytes become raw records routed `esp3_garbage` or `esp3_crc8d_mismatch`, for the decode stage
//! to dead-letter. An AP's first message and its health reports (its keep-alive) become a gateway
//! event (route `gateway_health`) in the EnOcean IoT Connector's gateway meta shape.
//!
//! Backpressure: a connection hands each record to its flows (awaiting room in each bounded queue)
//! before it reads the next message, so a gateway is read no faster than its flows drain; TCP flow
//! control then slows the gateway down. Nothing here buffers without bound.

pub mod aruba;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use prost::Message as _;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message, http};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::codecs::enocean::esp3::{self, SkipReason, StreamItem, StreamParser, packet_type};
use crate::config::HumanDuration;
use crate::metrics::{self, Counter};
use crate::record::{Delivery, Kind, Origin, Record};

use aruba::proto::Telemetry;

/// `[sources.NAME] type = "esp3_websocket"`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Esp3WebsocketConfig {
    /// TCP address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// URL path gateways connect to (the EnOcean IoT Connector uses "/aruba"). An upgrade to any other
    /// path is answered HTTP 404.
    #[serde(default = "default_path")]
    pub path: String,
    /// Tokens a gateway may present: an Aruba AP in `meta.access_token` of every message (the
    /// transport profile's `accessToken`), a raw gateway as `?token=` or `Authorization: Bearer`.
    /// Use `"${VAR}"` to keep them out of the file. Empty: no check (a warning at startup).
    #[serde(default)]
    pub access_tokens: Vec<AccessToken>,
    /// Serve `wss://`. Without this table the source speaks plain `ws://`.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Most gateway connections at once; past this, an upgrade is answered HTTP 503.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Largest websocket message accepted, in bytes; a larger one closes the connection (code 1009).
    #[serde(default = "default_max_message")]
    pub max_message: usize,
    /// A gateway silent this long (no message, no ping) is disconnected. Aruba APs send a health
    /// report about every 120 s, so keep it well above that.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// Longest time from TCP accept to a finished TLS and websocket handshake.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: HumanDuration,
    /// Largest ESP3 frame the stream parser accepts, in bytes; a header claiming more is taken for
    /// a false sync and skipped (radio packets are tens of bytes).
    #[serde(default = "default_max_frame")]
    pub max_frame: usize,
}

/// `tls = { cert = "...", key = "...", client_ca = "..." }`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the server certificate chain (leaf first).
    pub cert: Option<PathBuf>,
    /// PEM file with the certificate's private key.
    pub key: Option<PathBuf>,
    /// PEM file with the CA(s) that issue gateway certificates. When set, every gateway must present
    /// a client certificate issued by one of them (mutual TLS); a handshake without one fails.
    pub client_ca: Option<PathBuf>,
}

/// An access token: compared in constant time, never printed.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct AccessToken(String);

impl AccessToken {
    pub fn new(token: impl Into<String>) -> Self {
        AccessToken(token.into())
    }

    fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}
fn default_path() -> String {
    "/aruba".into()
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_message() -> usize {
    1 << 20
}
fn default_idle_timeout() -> HumanDuration {
    HumanDuration::from_secs(300)
}
fn default_handshake_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_max_frame() -> usize {
    esp3::DEFAULT_MAX_FRAME
}

impl Esp3WebsocketConfig {
    /// A config with every default, listening on `listen` (for tests and embedding).
    pub fn new(listen: SocketAddr) -> Self {
        Esp3WebsocketConfig {
            listen,
            path: default_path(),
            access_tokens: Vec::new(),
            tls: None,
            max_connections: default_max_connections(),
            max_message: default_max_message(),
            idle_timeout: default_idle_timeout(),
            handshake_timeout: default_handshake_timeout(),
            max_frame: default_max_frame(),
        }
    }

    /// Values that parse but cannot work, each said with its fix.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.path.starts_with('/') {
            out.push(format!(
                "path `{}` must start with `/`, e.g. \"/aruba\"",
                self.path
            ));
        }
        if self.path.contains('?') || self.path.contains('#') {
            out.push(format!(
                "path `{}` must not hold a query or fragment; gateways add `?gateway=NAME` themselves",
                self.path
            ));
        }
        if self.access_tokens.iter().any(|t| t.0.is_empty()) {
            out.push("access_tokens holds an empty token (an unset ${VAR}?); remove it or set the variable".into());
        }
        if self.max_connections == 0 {
            out.push(
                "max_connections is 0: every gateway would be refused; the default is 10000".into(),
            );
        }
        if self.max_message < 64 {
            out.push(format!(
                "max_message is {} bytes: too small for any gateway message; the default is 1048576",
                self.max_message
            ));
        }
        if self.idle_timeout.get().is_zero() {
            out.push(
                "idle_timeout is 0: every gateway would be disconnected at once; use e.g. \"5m\""
                    .into(),
            );
        }
        if self.handshake_timeout.get().is_zero() {
            out.push("handshake_timeout is 0: no handshake could finish; use e.g. \"10s\"".into());
        }
        if self.max_frame < esp3::HEADER_LEN + 1 {
            out.push(format!(
                "max_frame is {}: an ESP3 frame takes at least {} bytes; the default is {}",
                self.max_frame,
                esp3::HEADER_LEN + 1,
                esp3::DEFAULT_MAX_FRAME
            ));
        }
        if let Some(tls) = &self.tls {
            match (&tls.cert, &tls.key) {
                (None, None) => out.push(
                    "tls needs `cert` and `key` (PEM files); remove the tls table to serve plain ws://"
                        .into(),
                ),
                (Some(_), None) => out.push(
                    "tls.cert is set but tls.key is not: give the PEM file with the certificate's private key".into(),
                ),
                (None, Some(_)) => out.push(
                    "tls.key is set but tls.cert is not: give the PEM file with the certificate chain".into(),
                ),
                (Some(_), Some(_)) => {}
            }
            let files = [
                ("cert", &tls.cert),
                ("key", &tls.key),
                ("client_ca", &tls.client_ca),
            ];
            for (key, path) in files {
                if let Some(path) = path
                    && !path.is_file()
                {
                    out.push(format!(
                        "tls.{key}: {} does not exist or is not a file",
                        path.display()
                    ));
                }
            }
        }
        out
    }
}

/// How a connection's gateway sends its bytes.
#[derive(Debug, Clone)]
enum Mode {
    /// Binary messages are the ESP3 stream itself; the gateway named itself in the URL.
    Raw { gateway: Arc<str> },
    /// Binary messages are `aruba_telemetry.Telemetry` protobufs.
    Aruba,
}

/// Why an upgrade was refused, with the HTTP answer it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    NotFound { path: String },
    BadRequest(String),
    Unauthorized { gateway: String, why: &'static str },
    Busy,
}

impl Refusal {
    fn status(&self) -> http::StatusCode {
        match self {
            Refusal::NotFound { .. } => http::StatusCode::NOT_FOUND,
            Refusal::BadRequest(_) => http::StatusCode::BAD_REQUEST,
            Refusal::Unauthorized { .. } => http::StatusCode::UNAUTHORIZED,
            Refusal::Busy => http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Refusal::NotFound { .. } => "not_found",
            Refusal::BadRequest(_) => "bad_request",
            Refusal::Unauthorized { .. } => "access_token",
            Refusal::Busy => "max_connections",
        }
    }

    fn body(&self, expected_path: &str) -> String {
        match self {
            Refusal::NotFound { path } => {
                format!("no websocket endpoint at {path}; gateways connect to {expected_path}\n")
            }
            Refusal::BadRequest(why) => format!("{why}\n"),
            Refusal::Unauthorized { why, .. } => format!(
                "{why}: send one of the configured access tokens as ?token=TOKEN or Authorization: Bearer TOKEN\n"
            ),
            Refusal::Busy => "too many gateway connections; try again later\n".into(),
        }
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The gateway closed it (close frame or end of stream).
    PeerClosed,
    Idle,
    Shutdown,
    AccessToken,
    BadEnvelope,
    TooLarge,
    /// A read or protocol error (reset, bad framing).
    Error,
    /// A flow of this source has stopped; nothing could be stored.
    FlowClosed,
}

impl Ending {
    fn label(self) -> &'static str {
        match self {
            Ending::PeerClosed => "peer_closed",
            Ending::Idle => "idle_timeout",
            Ending::Shutdown => "shutdown",
            Ending::AccessToken => "access_token",
            Ending::BadEnvelope => "bad_envelope",
            Ending::TooLarge => "message_too_large",
            Ending::Error => "error",
            Ending::FlowClosed => "flow_closed",
        }
    }

    /// The close frame the server sends for it, if the server closes.
    fn close_frame(self) -> Option<CloseFrame> {
        let (code, reason) = match self {
            Ending::PeerClosed | Ending::Error => return None,
            Ending::Idle => (CloseCode::Away, "idle timeout"),
            Ending::Shutdown => (CloseCode::Away, "server shutting down"),
            Ending::AccessToken => (CloseCode::Policy, "invalid access token"),
            Ending::BadEnvelope => (
                CloseCode::Unsupported,
                "not an aruba_telemetry.Telemetry message; raw ESP3 needs ?gateway=NAME in the URL",
            ),
            Ending::TooLarge => (CloseCode::Size, "message too large"),
            Ending::FlowClosed => (CloseCode::Error, "pipeline stopped"),
        };
        Some(CloseFrame {
            code,
            reason: reason.into(),
        })
    }
}

/// Every notable event of the source: each one is logged and counted here, and only here.
struct Events {
    source: Arc<str>,
    accepted: Counter,
    refused: HashMap<&'static str, Counter>,
    handshake_failed: Counter,
    accept_failed: Counter,
    closed: HashMap<&'static str, Counter>,
    bad_token: Counter,
    bad_envelope: Counter,
    messages: Counter,
    bytes: Counter,
    text_messages: Counter,
    frames: Counter,
    skipped_garbage: Counter,
    skipped_crc8d: Counter,
    skipped_bytes: Counter,
    health_reports: Counter,
    streams_reset: Counter,
}

const REFUSAL_LABELS: [&str; 4] = [
    "not_found",
    "bad_request",
    "access_token",
    "max_connections",
];
const ENDING_LABELS: [&str; 8] = [
    "peer_closed",
    "idle_timeout",
    "shutdown",
    "access_token",
    "bad_envelope",
    "message_too_large",
    "error",
    "flow_closed",
];

impl Events {
    fn new(source: &str) -> Self {
        let by_label = |name: &str, labels: &[&'static str]| {
            labels
                .iter()
                .map(|l| {
                    (
                        *l,
                        metrics::counter(name, &[("source", source), ("reason", l)]),
                    )
                })
                .collect()
        };
        let error = |e: &str| {
            metrics::counter(
                "component_errors_total",
                &[("component", source), ("error", e)],
            )
        };
        let skipped = |reason: &str| {
            metrics::counter(
                "esp3_skipped_total",
                &[("source", source), ("reason", reason)],
            )
        };
        Events {
            source: source.into(),
            accepted: metrics::counter(
                "websocket_connections_accepted_total",
                &[("source", source)],
            ),
            refused: by_label("websocket_connections_refused_total", &REFUSAL_LABELS),
            handshake_failed: error("handshake"),
            accept_failed: error("accept"),
            closed: by_label("websocket_connections_closed_total", &ENDING_LABELS),
            bad_token: error("access_token"),
            bad_envelope: error("aruba_envelope"),
            messages: metrics::counter("component_received_events_total", &[("component", source)]),
            bytes: metrics::counter("component_received_bytes_total", &[("component", source)]),
            text_messages: metrics::counter("websocket_text_messages_total", &[("source", source)]),
            frames: metrics::counter("esp3_frames_total", &[("source", source)]),
            skipped_garbage: skipped("garbage"),
            skipped_crc8d: skipped("crc8d_mismatch"),
            skipped_bytes: metrics::counter("esp3_skipped_bytes_total", &[("source", source)]),
            health_reports: metrics::counter("gateway_health_reports_total", &[("source", source)]),
            streams_reset: error("too_many_serial_devices"),
        }
    }

    fn accepted(&self, peer: SocketAddr, mode: &Mode, tls: bool) {
        self.accepted.inc();
        match mode {
            Mode::Raw { gateway } => {
                tracing::info!(source = %self.source, %peer, %gateway, tls, "raw ESP3 gateway connected")
            }
            Mode::Aruba => {
                tracing::info!(source = %self.source, %peer, tls, "Aruba gateway connected")
            }
        }
    }

    fn refused(&self, peer: SocketAddr, refusal: &Refusal) {
        if let Some(c) = self.refused.get(refusal.label()) {
            c.inc();
        }
        match refusal {
            Refusal::Unauthorized { gateway, why } => {
                self.bad_token.inc();
                tracing::warn!(source = %self.source, %peer, %gateway, "gateway refused (HTTP 401): {why}");
            }
            Refusal::NotFound { path } => {
                tracing::warn!(source = %self.source, %peer, %path, "upgrade to an unknown path refused (HTTP 404)")
            }
            Refusal::BadRequest(why) => {
                tracing::warn!(source = %self.source, %peer, "upgrade refused (HTTP 400): {why}")
            }
            Refusal::Busy => {
                tracing::warn!(source = %self.source, %peer, "upgrade refused (HTTP 503): max_connections reached")
            }
        }
    }

    fn handshake_failed(&self, peer: SocketAddr, stage: &str, error: &dyn std::fmt::Display) {
        self.handshake_failed.inc();
        tracing::info!(source = %self.source, %peer, %stage, %error, "handshake failed");
    }

    fn accept_failed(&self, error: &std::io::Error) {
        self.accept_failed.inc();
        tracing::warn!(source = %self.source, %error, "cannot accept a connection");
    }

    fn bad_token(&self, peer: SocketAddr, gateway: Option<&str>) {
        self.bad_token.inc();
        tracing::warn!(source = %self.source, %peer, gateway = gateway.unwrap_or("?"), "invalid access token in an Aruba message; closing the connection (1008)");
    }

    fn bad_envelope(&self, peer: SocketAddr, len: usize, error: &dyn std::fmt::Display) {
        self.bad_envelope.inc();
        tracing::warn!(source = %self.source, %peer, len, %error, "binary message is not an aruba_telemetry.Telemetry; closing the connection (1003)");
    }

    fn message(&self, len: usize) {
        self.messages.inc();
        self.bytes.add(len as u64);
    }

    fn text(&self, peer: SocketAddr, len: usize) {
        self.text_messages.inc();
        tracing::debug!(source = %self.source, %peer, len, "text message ignored");
    }

    fn frame(&self) {
        self.frames.inc();
    }

    fn skipped(&self, peer: SocketAddr, gateway: &str, reason: SkipReason, len: usize) {
        match reason {
            SkipReason::Garbage => self.skipped_garbage.inc(),
            SkipReason::Crc8dMismatch => self.skipped_crc8d.inc(),
        }
        self.skipped_bytes.add(len as u64);
        tracing::debug!(source = %self.source, %peer, %gateway, reason = reason.code(), len, "ESP3 bytes skipped");
    }

    fn health(&self, peer: SocketAddr, gateway: &str) {
        self.health_reports.inc();
        tracing::debug!(source = %self.source, %peer, %gateway, "gateway health report");
    }

    fn streams_reset(&self, peer: SocketAddr, limit: usize) {
        self.streams_reset.inc();
        tracing::warn!(source = %self.source, %peer, limit, "more serial devices on one connection than allowed; their partial packets were dropped");
    }

    fn closed(&self, peer: SocketAddr, gateway: Option<&str>, ending: Ending, stats: &ConnStats) {
        if let Some(c) = self.closed.get(ending.label()) {
            c.inc();
        }
        let gateway = gateway.unwrap_or("?");
        let reason = ending.label();
        match ending {
            Ending::PeerClosed | Ending::Shutdown => {
                tracing::info!(source = %self.source, %peer, %gateway, %reason, messages = stats.messages, frames = stats.frames, skipped = stats.skipped, "gateway disconnected")
            }
            _ => {
                tracing::warn!(source = %self.source, %peer, %gateway, %reason, messages = stats.messages, frames = stats.frames, skipped = stats.skipped, "gateway disconnected")
            }
        }
    }
}

/// What a connection did, for its closing log line.
#[derive(Debug, Default)]
struct ConnStats {
    messages: u64,
    frames: u64,
    skipped: u64,
}

/// Everything the accept loop and the connection tasks share.
struct Shared {
    name: Arc<str>,
    path: Arc<str>,
    tokens: Vec<AccessToken>,
    tls: Option<TlsAcceptor>,
    flows: Vec<mpsc::Sender<Record>>,
    connections: AtomicUsize,
    max_connections: usize,
    idle_timeout: Duration,
    handshake_timeout: Duration,
    max_frame: usize,
    ws_config: WebSocketConfig,
    routes: Routes,
    events: Events,
    /// The HTTP API's live view: the gateways connected now.
    live: Option<Arc<crate::live::Live>>,
}

/// The route names records carry, shared instead of allocated per record.
struct Routes {
    frame: Arc<str>,
    garbage: Arc<str>,
    crc8d: Arc<str>,
    health: Arc<str>,
}

impl Routes {
    fn new() -> Self {
        Routes {
            frame: "esp3".into(),
            garbage: format!("esp3_{}", SkipReason::Garbage.code()).into(),
            crc8d: format!("esp3_{}", SkipReason::Crc8dMismatch.code()).into(),
            health: "gateway_health".into(),
        }
    }

    /// A stream item's bytes, its route and, for a frame, the RSSI the frame carries.
    fn of_item(&self, item: StreamItem) -> (Bytes, Arc<str>, Option<i32>) {
        match item {
            StreamItem::Frame(frame) => {
                let rssi = rssi_of(&frame);
                (frame, self.frame.clone(), rssi)
            }
            StreamItem::Skipped { bytes, reason } => {
                let route = match reason {
                    SkipReason::Garbage => self.garbage.clone(),
                    SkipReason::Crc8dMismatch => self.crc8d.clone(),
                };
                (bytes, route, None)
            }
        }
    }
}

/// The records a raw gateway's bytes become, as a connection of [`Esp3WebsocketSource`] makes them
/// but without a socket (no peer, nothing counted): for `sensorgate test`. The bytes are one whole
/// connection: one [`StreamParser`] splits them, and bytes left over at the end (a frame cut short)
/// are reported as garbage, as when a gateway disconnects mid-frame.
pub fn gateway_records(
    source: &str,
    config: &Esp3WebsocketConfig,
    gateway: &str,
    bytes: &[u8],
) -> Vec<Record> {
    let routes = Routes::new();
    let source: Arc<str> = source.into();
    let path: Arc<str> = config.path.as_str().into();
    let gateway: Arc<str> = gateway.into();
    let mut parser = StreamParser::new(config.max_frame);
    parser.push(bytes);
    let mut items: Vec<StreamItem> = std::iter::from_fn(|| parser.next_item()).collect();
    items.extend(parser.finish());
    items
        .into_iter()
        .map(|item| {
            let (raw, route, rssi) = routes.of_item(item);
            let origin = record_origin(&path, None, &gateway, route, rssi);
            Record::new(source.clone(), origin, raw, Delivery::detached())
        })
        .collect()
}

/// A bound websocket server, ready to run.
pub struct Esp3WebsocketSource {
    listener: TcpListener,
    shared: Arc<Shared>,
}

/// Most parallel serial streams (USB devices) tracked on one Aruba connection.
const MAX_STREAMS_PER_CONNECTION: usize = 64;
/// How long a closing connection waits for the gateway's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// The kernel's queue of connections not yet accepted (a fleet reconnecting after an outage).
const LISTEN_BACKLOG: i32 = 4096;

impl Esp3WebsocketSource {
    /// Binds the listening socket and loads the TLS files, so an address in use or a bad certificate
    /// fails at start, not later. Must be called inside a tokio runtime.
    pub fn bind(
        name: &str,
        config: &Esp3WebsocketConfig,
        flows: Vec<mpsc::Sender<Record>>,
    ) -> anyhow::Result<Esp3WebsocketSource> {
        use anyhow::Context as _;
        let problems = config.problems();
        if !problems.is_empty() {
            anyhow::bail!("source `{name}`: {}", problems.join("; "));
        }
        let tls = match &config.tls {
            Some(TlsConfig {
                cert: Some(cert),
                key: Some(key),
                client_ca,
            }) => Some(TlsAcceptor::from(
                tls::server_config(cert, key, client_ca.as_deref())
                    .with_context(|| format!("source `{name}`: TLS"))?,
            )),
            _ => None,
        };
        let listener = bind_tcp(config.listen)
            .with_context(|| format!("source `{name}`: cannot listen on {}", config.listen))?;
        if config.access_tokens.is_empty() {
            tracing::warn!(source = %name, "access_tokens is empty: any gateway that reaches this port may send data");
        }
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(8 * 1024)
            .write_buffer_size(0)
            .max_message_size(Some(config.max_message))
            .max_frame_size(Some(config.max_message));
        Ok(Esp3WebsocketSource {
            listener,
            shared: Arc::new(Shared {
                name: name.into(),
                path: config.path.as_str().into(),
                tokens: config.access_tokens.clone(),
                tls,
                flows,
                connections: AtomicUsize::new(0),
                max_connections: config.max_connections,
                idle_timeout: config.idle_timeout.get(),
                handshake_timeout: config.handshake_timeout.get(),
                max_frame: config.max_frame,
                ws_config,
                routes: Routes::new(),
                events: Events::new(name),
                live: None,
            }),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Lists each connected gateway in the API's live view while it is connected.
    pub fn with_live(mut self, live: Option<Arc<crate::live::Live>>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.live = live;
        }
        self
    }

    /// Serves until `shutdown`; then stops accepting, closes every connection with code 1001 and
    /// waits for the records already read to be handed to the flows.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let tracker = TaskTracker::new();
        let shared = self.shared;
        tracing::info!(
            source = %shared.name,
            listen = %self.listener.local_addr()?,
            path = %shared.path,
            tls = shared.tls.is_some(),
            "ESP3 websocket source listening"
        );
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.listener.accept() => r,
            };
            match accepted {
                Ok((tcp, peer)) => {
                    let shared = shared.clone();
                    let shutdown = shutdown.clone();
                    tracker.spawn(async move { shared.connection(tcp, peer, shutdown).await });
                }
                Err(e) => {
                    // Out of file descriptors, usually: wait a little instead of spinning.
                    shared.events.accept_failed(&e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        drop(self.listener);
        tracker.close();
        tracker.wait().await;
        tracing::info!(source = %shared.name, "ESP3 websocket source stopped");
        Ok(())
    }
}

fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// A held connection slot; freed when dropped.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shared {
    /// One TCP connection, from accept to close.
    async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        shutdown: CancellationToken,
    ) {
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => self.upgrade(tcp, peer, false, &shutdown).await,
            Some(acceptor) => {
                let handshake = tokio::time::timeout(self.handshake_timeout, acceptor.accept(tcp));
                let stream = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = handshake => r,
                };
                match stream {
                    Ok(Ok(stream)) => self.upgrade(stream, peer, true, &shutdown).await,
                    Ok(Err(e)) => self.events.handshake_failed(peer, "tls", &e),
                    Err(_) => self.events.handshake_failed(peer, "tls", &"timed out"),
                }
            }
        }
    }

    /// The websocket upgrade (path, mode, token, capacity), then the session.
    async fn upgrade<S>(&self, stream: S, peer: SocketAddr, tls: bool, shutdown: &CancellationToken)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut decision: Option<Result<(Mode, Slot<'_>), Refusal>> = None;
        // The error type is tungstenite's HTTP response, not ours to shrink.
        #[allow(clippy::result_large_err)]
        let callback = |request: &http::Request<()>, response: http::Response<()>| {
            let admitted = self.admit(request).and_then(|mode| match self.reserve() {
                Some(slot) => Ok((mode, slot)),
                None => Err(Refusal::Busy),
            });
            match admitted {
                Ok(ok) => {
                    decision = Some(Ok(ok));
                    Ok(response)
                }
                Err(refusal) => {
                    let mut answer = http::Response::new(Some(refusal.body(&self.path)));
                    *answer.status_mut() = refusal.status();
                    answer.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/plain; charset=utf-8"),
                    );
                    decision = Some(Err(refusal));
                    Err(answer)
                }
            }
        };
        let handshake = tokio::time::timeout(
            self.handshake_timeout,
            tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(self.ws_config)),
        );
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = handshake => r,
        };
        match (result, decision) {
            (_, Some(Err(refusal))) => self.events.refused(peer, &refusal),
            (Ok(Ok(ws)), Some(Ok((mode, _slot)))) => {
                self.events.accepted(peer, &mode, tls);
                self.session(ws, peer, mode, tls, shutdown).await;
            }
            (Ok(Ok(_)), None) => {} // unreachable: the callback runs before a successful upgrade
            (Ok(Err(e)), _) => self.events.handshake_failed(peer, "websocket", &e),
            (Err(_), _) => self
                .events
                .handshake_failed(peer, "websocket", &"timed out"),
        }
    }

    /// Decides an upgrade request: the path, the gateway mode and, for raw gateways, the token.
    fn admit(&self, request: &http::Request<()>) -> Result<Mode, Refusal> {
        let uri = request.uri();
        if uri.path() != &*self.path {
            return Err(Refusal::NotFound {
                path: uri.path().chars().take(200).collect(),
            });
        }
        let mut gateway = None;
        let mut token = None;
        for pair in uri.query().unwrap_or("").split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "gateway" => gateway = Some(percent_decode(value)),
                "token" => token = Some(percent_decode(value)),
                _ => {}
            }
        }
        let Some(gateway) = gateway else {
            return Ok(Mode::Aruba);
        };
        let gateway = match gateway {
            Some(g) if !g.is_empty() && g.len() <= 128 && !g.chars().any(char::is_control) => g,
            _ => {
                return Err(Refusal::BadRequest(
                    "`gateway` must be 1 to 128 printable characters (percent-encoded UTF-8)"
                        .into(),
                ));
            }
        };
        if !self.tokens.is_empty() {
            let bearer = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    let (scheme, rest) = v.trim().split_once(' ')?;
                    scheme
                        .eq_ignore_ascii_case("bearer")
                        .then(|| rest.trim().to_string())
                });
            let presented = token.flatten().or(bearer);
            let why = match presented {
                None => Some("no access token"),
                Some(t) if !self.token_ok(&t) => Some("invalid access token"),
                Some(_) => None,
            };
            if let Some(why) = why {
                return Err(Refusal::Unauthorized { gateway, why });
            }
        }
        Ok(Mode::Raw {
            gateway: gateway.into(),
        })
    }

    fn token_ok(&self, presented: &str) -> bool {
        // Every token is compared, so the time taken does not tell which one came close.
        self.tokens
            .iter()
            .fold(false, |ok, t| t.matches(presented) | ok)
    }

    fn reserve(&self) -> Option<Slot<'_>> {
        let before = self.connections.fetch_add(1, Ordering::Relaxed);
        let slot = Slot(&self.connections);
        (before < self.max_connections).then_some(slot)
    }

    /// A websocket session: read, turn into records, hand them to the flows, until it ends.
    async fn session<S>(
        &self,
        mut ws: WebSocketStream<S>,
        peer: SocketAddr,
        mode: Mode,
        tls: bool,
        shutdown: &CancellationToken,
    ) where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut conn = Connection::new(self, peer, mode);
        let listed = self.live.as_ref().map(|live| {
            let kind = match conn.mode {
                Mode::Raw { .. } => "raw",
                Mode::Aruba => "aruba",
            };
            live.connect(&self.name, peer, kind, tls, conn.gateway())
        });
        let mut named = conn.gateway().is_some();
        let mut records = Vec::new();
        let mut last_activity = Instant::now();
        // One timer for the connection, re-armed only when it fires: resetting it per message would
        // cost a timer-wheel update per message.
        let idle = tokio::time::sleep(self.idle_timeout);
        tokio::pin!(idle);
        let ending = loop {
            let message = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ending::Shutdown,
                m = ws.next() => m,
                _ = &mut idle => {
                    let deadline = last_activity + self.idle_timeout;
                    if Instant::now() >= deadline {
                        break Ending::Idle;
                    }
                    idle.as_mut().reset(deadline);
                    continue;
                }
            };
            last_activity = Instant::now();
            let outcome = match message {
                None => Err(Ending::PeerClosed),
                Some(Err(
                    tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed,
                )) => Err(Ending::PeerClosed),
                Some(Err(tungstenite::Error::Capacity(_))) => Err(Ending::TooLarge),
                Some(Err(e)) => {
                    tracing::debug!(source = %self.name, %peer, error = %e, "websocket read error");
                    Err(Ending::Error)
                }
                Some(Ok(Message::Binary(bytes))) => {
                    let outcome = conn.binary(bytes, &mut records);
                    if let Some(listed) = &listed {
                        listed.message();
                        // An Aruba AP names itself (its MAC) in its messages.
                        if !named && let Some(gateway) = conn.gateway() {
                            listed.set_gateway(gateway);
                            named = true;
                        }
                    }
                    outcome
                }
                Some(Ok(Message::Text(text))) => {
                    self.events.text(peer, text.len());
                    Ok(())
                }
                // Pings are answered by tungstenite (the pong goes out with the next read); a close
                // frame is answered the same way, and the stream then ends.
                Some(Ok(
                    Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_),
                )) => Ok(()),
            };
            // Records of a message that ended the connection (a bad token) are never among them:
            // the message is refused whole.
            if !self.deliver(&mut records).await {
                break Ending::FlowClosed;
            }
            if let Err(ending) = outcome {
                break ending;
            }
        };
        if ending != Ending::FlowClosed {
            conn.finish(&mut records);
            let _ = self.deliver(&mut records).await;
        }
        if ending == Ending::AccessToken {
            let refusal = aruba::token_refused_message("invalid access token");
            let _ = ws.send(Message::Binary(refusal.into())).await;
        }
        if let Some(frame) = ending.close_frame() {
            let closing = async {
                let _ = ws.close(Some(frame)).await;
                // Wait for the gateway's close frame; what it still sends is not processed.
                while let Some(Ok(_)) = ws.next().await {}
            };
            let _ = tokio::time::timeout(CLOSE_GRACE, closing).await;
        }
        self.events
            .closed(peer, conn.gateway(), ending, &conn.stats);
    }

    /// Hands each record to every flow, waiting for room (this is the backpressure). False when a
    /// flow has stopped.
    async fn deliver(&self, records: &mut Vec<Record>) -> bool {
        let Some((last, rest)) = self.flows.split_last() else {
            records.drain(..).for_each(|r| r.delivery.delivered());
            return true;
        };
        for record in records.drain(..) {
            for flow in rest {
                if flow.send(record.clone()).await.is_err() {
                    return false;
                }
            }
            if last.send(record).await.is_err() {
                return false;
            }
        }
        true
    }
}

/// The per-connection state: parsers, what is known of the gateway, counters.
struct Connection<'a> {
    shared: &'a Shared,
    peer: SocketAddr,
    mode: Mode,
    /// The raw gateway's stream.
    raw_parser: StreamParser,
    /// Aruba: one stream per (gateway, USB device).
    streams: HashMap<(Arc<str>, String), StreamParser>,
    /// Aruba: the gateway id of the last message, and its MAC as sent (to reuse the id).
    aruba_gateway: Option<(Bytes, Arc<str>)>,
    info: aruba::GatewayInfo,
    first_message: bool,
    stats: ConnStats,
}

impl<'a> Connection<'a> {
    fn new(shared: &'a Shared, peer: SocketAddr, mode: Mode) -> Self {
        Connection {
            shared,
            peer,
            mode,
            raw_parser: StreamParser::new(shared.max_frame),
            streams: HashMap::new(),
            aruba_gateway: None,
            info: aruba::GatewayInfo::default(),
            first_message: true,
            stats: ConnStats::default(),
        }
    }

    fn gateway(&self) -> Option<&str> {
        match &self.mode {
            Mode::Raw { gateway } => Some(gateway),
            Mode::Aruba => self.aruba_gateway.as_ref().map(|(_, g)| &**g),
        }
    }

    /// One binary message: its records go to `out`. `Err` ends the connection.
    fn binary(&mut self, message: Bytes, out: &mut Vec<Record>) -> Result<(), Ending> {
        self.shared.events.message(message.len());
        self.stats.messages += 1;
        match &self.mode {
            Mode::Raw { gateway } => {
                let gateway = gateway.clone();
                self.raw_parser.push(&message);
                drain(
                    self.shared,
                    self.peer,
                    &gateway,
                    &mut self.raw_parser,
                    &mut self.stats,
                    out,
                );
                Ok(())
            }
            Mode::Aruba => self.aruba(message, out),
        }
    }

    fn aruba(&mut self, message: Bytes, out: &mut Vec<Record>) -> Result<(), Ending> {
        let events = &self.shared.events;
        let telemetry = match Telemetry::decode(message.clone()) {
            Ok(t) => t,
            Err(e) => {
                events.bad_envelope(self.peer, message.len(), &e);
                return Err(Ending::BadEnvelope);
            }
        };
        let gateway = self.aruba_gateway_id(&telemetry);
        if !self.shared.tokens.is_empty() {
            let ok = telemetry
                .meta
                .access_token
                .as_deref()
                .is_some_and(|t| self.shared.token_ok(t));
            if !ok {
                events.bad_token(self.peer, Some(&gateway));
                return Err(Ending::AccessToken);
            }
        }
        self.info.update(&telemetry);
        if self.first_message || aruba::is_health_update(&telemetry) {
            self.first_message = false;
            events.health(self.peer, &gateway);
            let now = SystemTime::now();
            let unix = telemetry.reporter.time.unwrap_or_else(|| {
                now.duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
            });
            let origin = self.origin(&gateway, self.shared.routes.health.clone(), None);
            let mut record = Record::new(
                self.shared.name.clone(),
                origin,
                message,
                Delivery::detached(),
            );
            record.received_at = now;
            record.kind = Kind::Event;
            record.body = aruba::health_document(&gateway, &self.info, unix);
            out.push(record);
        }
        for serial in telemetry.nb_s_data {
            let Some(payload) = serial.nb_serial_payload.filter(|p| !p.is_empty()) else {
                continue;
            };
            let device = serial.nb_device_id.unwrap_or_default();
            let key = (gateway.clone(), device);
            if !self.streams.contains_key(&key) && self.streams.len() >= MAX_STREAMS_PER_CONNECTION
            {
                events.streams_reset(self.peer, MAX_STREAMS_PER_CONNECTION);
                self.streams.clear();
            }
            let max_frame = self.shared.max_frame;
            let parser = self
                .streams
                .entry(key)
                .or_insert_with(|| StreamParser::new(max_frame));
            parser.push(&payload);
            drain(
                self.shared,
                self.peer,
                &gateway,
                parser,
                &mut self.stats,
                out,
            );
        }
        Ok(())
    }

    /// The gateway id of an Aruba message, reusing the last one while the MAC stays the same.
    fn aruba_gateway_id(&mut self, telemetry: &Telemetry) -> Arc<str> {
        let mac = telemetry.reporter.mac.clone().unwrap_or_default();
        if let Some((last_mac, id)) = &self.aruba_gateway
            && *last_mac == mac
            && (!mac.is_empty() || telemetry.reporter.name.is_none())
        {
            return id.clone();
        }
        let id: Arc<str> = aruba::gateway_id(&telemetry.reporter)
            .unwrap_or_else(|| self.peer.ip().to_string())
            .into();
        self.aruba_gateway = Some((mac, id.clone()));
        id
    }

    fn origin(&self, gateway: &Arc<str>, route: Arc<str>, rssi: Option<i32>) -> Origin {
        record_origin(&self.shared.path, Some(self.peer), gateway, route, rssi)
    }

    /// The connection ended: bytes still held (a packet cut short) are reported as garbage.
    fn finish(&mut self, out: &mut Vec<Record>) {
        let mut parsers: Vec<(Arc<str>, StreamParser)> = self
            .streams
            .drain()
            .map(|((gateway, _), p)| (gateway, p))
            .collect();
        if let Mode::Raw { gateway } = &self.mode {
            let parser = std::mem::replace(
                &mut self.raw_parser,
                StreamParser::new(self.shared.max_frame),
            );
            parsers.push((gateway.clone(), parser));
        }
        for (gateway, mut parser) in parsers {
            if let Some(item) = parser.finish() {
                out.push(item_record(
                    self.shared,
                    self.peer,
                    &gateway,
                    item,
                    &mut self.stats,
                ));
            }
        }
    }
}

fn record_origin(
    path: &Arc<str>,
    peer: Option<SocketAddr>,
    gateway: &Arc<str>,
    route: Arc<str>,
    rssi: Option<i32>,
) -> Origin {
    Origin {
        peer,
        path: Some(path.clone()),
        route: Some(route),
        gateway: Some(gateway.clone()),
        rssi,
        token: None,
        receptions: Vec::new(),
    }
}

/// Takes every finished item out of a parser as records.
fn drain(
    shared: &Shared,
    peer: SocketAddr,
    gateway: &Arc<str>,
    parser: &mut StreamParser,
    stats: &mut ConnStats,
    out: &mut Vec<Record>,
) {
    while let Some(item) = parser.next_item() {
        out.push(item_record(shared, peer, gateway, item, stats));
    }
}

fn item_record(
    shared: &Shared,
    peer: SocketAddr,
    gateway: &Arc<str>,
    item: StreamItem,
    stats: &mut ConnStats,
) -> Record {
    match &item {
        StreamItem::Frame(_) => {
            shared.events.frame();
            stats.frames += 1;
        }
        StreamItem::Skipped { bytes, reason } => {
            shared.events.skipped(peer, gateway, *reason, bytes.len());
            stats.skipped += 1;
        }
    }
    let (raw, route, rssi) = shared.routes.of_item(item);
    let origin = record_origin(&shared.path, Some(peer), gateway, route, rssi);
    Record::new(shared.name.clone(), origin, raw, Delivery::detached())
}

/// The received signal strength in dBm from a radio packet's optional data (ESP3 §2.1, enocean.md §1):
/// RADIO_ERP1 byte 5, RADIO_ERP2 byte 1, sent as a positive number. 0xFF (not given), another packet
/// type or too short optional data give `None`.
pub fn rssi_of(frame: &[u8]) -> Option<i32> {
    let (packet, _) = esp3::parse_packet(frame).ok()?;
    let at = match packet.packet_type {
        packet_type::RADIO_ERP1 => 5,
        packet_type::RADIO_ERP2 => 1,
        _ => return None,
    };
    match packet.optional.get(at) {
        Some(&0xFF) | None => None,
        Some(&dbm) => Some(-i32::from(dbm)),
    }
}

/// Decodes `%XX` escapes and `+` (as a space). `None` when the result is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rssi_comes_from_the_optional_data_of_radio_packets() {
        // Vector 06: RADIO_ERP1 with optional data 01 ffffffff 45 00: dBm 0x45 = 69.
        let erp1 = hex::decode("55000a0701eba5000080080180a1b20001ffffffff450051").unwrap();
        assert_eq!(rssi_of(&erp1), Some(-69));
        let not_given = esp3::encode(
            1,
            &[0xf6, 0x00, 1, 2, 3, 4, 0x20],
            &[1, 0xff, 0xff, 0xff, 0xff, 0xff, 0],
        );
        assert_eq!(rssi_of(&not_given), None);
        let erp2 = esp3::encode(
            packet_type::RADIO_ERP2,
            &[0x21, 1, 2, 3, 4, 0x08, 0x00],
            &[1, 0x50],
        );
        assert_eq!(rssi_of(&erp2), Some(-80));
        let common = hex::decode("5500010005700838").unwrap();
        assert_eq!(rssi_of(&common), None);
        let short_optional = esp3::encode(1, &[0xf6, 0x00, 1, 2, 3, 4, 0x20], &[1]);
        assert_eq!(rssi_of(&short_optional), None);
    }

    #[test]
    fn percent_decoding_handles_escapes_plus_and_broken_input() {
        assert_eq!(percent_decode("gw%201+x").as_deref(), Some("gw 1 x"));
        assert_eq!(percent_decode("a%2").as_deref(), Some("a%2"));
        assert_eq!(percent_decode("%zz").as_deref(), Some("%zz"));
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(percent_decode("%").as_deref(), Some("%"));
    }

    #[test]
    fn access_tokens_compare_exactly_and_never_print() {
        let t = AccessToken::new("s3cret");
        assert!(t.matches("s3cret"));
        assert!(!t.matches("s3cre"));
        assert!(!t.matches("s3creT"));
        assert_eq!(format!("{t:?}"), "\"***\"");
    }

    #[test]
    fn problems_name_each_bad_value() {
        let mut c = Esp3WebsocketConfig::new("127.0.0.1:0".parse().unwrap());
        assert!(c.problems().is_empty());
        c.path = "aruba".into();
        c.max_connections = 0;
        c.tls = Some(TlsConfig {
            cert: Some("/nonexistent/cert.pem".into()),
            key: None,
            client_ca: None,
        });
        c.access_tokens = vec![AccessToken::new("")];
        let problems = c.problems().join("\n");
        assert!(problems.contains("must start with `/`"), "{problems}");
        assert!(problems.contains("max_connections is 0"), "{problems}");
        assert!(
            problems.contains("tls.cert is set but tls.key is not"),
            "{problems}"
        );
        assert!(
            problems.contains("tls.cert: /nonexistent/cert.pem does not exist"),
            "{problems}"
        );
        assert!(problems.contains("empty token"), "{problems}");
    }

    #[test]
    fn gateway_records_split_a_stream_like_a_connection_does() {
        let config = Esp3WebsocketConfig::new("127.0.0.1:0".parse().unwrap());
        // garbage, a frame (RSSI -69), then the first 4 bytes of another frame
        let bytes = hex::decode("0055ff1255000a0701eba5000080080180a1b20001ffffffff45005155000a07")
            .unwrap();
        let records = gateway_records("gateways", &config, "gw-1", &bytes);
        let routes: Vec<&str> = records
            .iter()
            .map(|r| r.origin.route.as_deref().unwrap_or(""))
            .collect();
        assert_eq!(routes, ["esp3_garbage", "esp3", "esp3_garbage"]);
        assert_eq!(records[0].raw.as_ref(), &bytes[..4]);
        assert_eq!(records[2].raw.as_ref(), &bytes[bytes.len() - 4..]);
        assert_eq!(records[1].origin.rssi, Some(-69));
        for record in &records {
            assert_eq!(record.origin.gateway.as_deref(), Some("gw-1"));
            assert_eq!(record.origin.path.as_deref(), Some("/aruba"));
            assert!(record.origin.peer.is_none());
            assert_eq!(&*record.source, "gateways");
        }
    }
}
