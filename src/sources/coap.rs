//! CoAP source (RFC 7252 over UDP, coap-lite for the message codec) for Efento NB-IoT sensors.
//!
//! The contract with the device (efento.md §1, §5, §6): a confirmable request gets a piggybacked ACK
//! carrying its token, and the ACK's code says what happened to the data:
//! 2.01 once every sink stored it (payload: a ProtoConfig with `current_time` and any pending change),
//! 4.00 when it cannot be decoded (it went to the dead-letter sink), 5.00 when storing failed or took
//! longer than `ack_deadline` (the sensor sends it again later), 5.03 with Max-Age when the pipeline is
//! full. Retransmissions (same peer and message id within EXCHANGE_LIFETIME) get the cached answer and
//! are not processed twice. Non-confirmable requests are processed and get no answer.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::HumanDuration;
use crate::downlink::Downlinks;
use crate::metrics::{self, Counter, Histogram};
use crate::record::{Delivery, DeliveryWatch, Origin, Outcome, Record};

/// `[sources.NAME] type = "coap"`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CoapConfig {
    /// UDP address to listen on, e.g. "0.0.0.0:5683".
    pub listen: SocketAddr,
    /// What arrives on each path (Uri-Path options joined with "/"):
    /// `measurements`, `device_info`, `configuration` (POST) or `time` (GET or POST).
    /// Default: m = measurements, i = device_info, c = configuration, t = time.
    #[serde(default = "default_paths")]
    pub paths: BTreeMap<String, Route>,
    /// Longest wait for the sinks before a confirmable request is answered 5.00. Keep it under the
    /// device's ACK timeout (2 s for Efento), or the device retransmits.
    #[serde(default = "default_ack_deadline")]
    pub ack_deadline: HumanDuration,
    /// Max-Age of a 5.03 answer when the pipeline is full: when the device may try again.
    #[serde(default = "default_busy_max_age")]
    pub busy_max_age: HumanDuration,
    /// How long an answer is kept for retransmissions (RFC 7252 EXCHANGE_LIFETIME, 247 s).
    #[serde(default = "default_exchange_lifetime")]
    pub exchange_lifetime: HumanDuration,
    /// Most exchanges remembered for retransmissions; past this the oldest answered ones go first
    /// (requests still waiting for their sinks are never forgotten). Size it as request rate × 45 s
    /// (MAX_TRANSMIT_SPAN, the window in which a device retransmits); an entry takes about 150 bytes.
    #[serde(default = "default_exchange_cache")]
    pub exchange_cache: usize,
    /// Largest request payload accepted, in bytes; a larger one gets 4.13 (Efento frames are 44 to a
    /// few hundred bytes).
    #[serde(default = "default_max_payload")]
    pub max_payload: usize,
    /// Most requests waiting for their sinks at once; past this, new ones get 5.03.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Vendor option numbers to accept (odd numbers are critical: unknown ones get 4.02 Bad Option).
    #[serde(default)]
    pub vendor_options: Vec<u16>,
    /// Option number that carries the Efento cloud token (ProtoConfig field 40, 1..64999), if used.
    /// Its value is kept in the record's origin; the number is accepted like a vendor option.
    #[serde(default)]
    pub cloud_token_option: Option<u16>,
    /// UDP receive buffer to ask the kernel for, in bytes (bursts of many devices need several MiB).
    #[serde(default = "default_receive_buffer")]
    pub receive_buffer: usize,
    /// What a 2.01 carries: `efento_config` (ProtoConfig with current_time and pending changes) or `none`.
    #[serde(default)]
    pub ack_payload: AckPayload,
}

impl CoapConfig {
    /// Values that parse but cannot work, each said with its fix.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.ack_deadline.get().is_zero() {
            out.push(
                "ack_deadline is 0: every confirmable request would get 5.00; use e.g. \"1.5s\""
                    .into(),
            );
        }
        if self.max_in_flight == 0 {
            out.push(
                "max_in_flight is 0: every request would get 5.03; the default is 65536".into(),
            );
        }
        if self.exchange_cache == 0 {
            out.push("exchange_cache is 0: retransmissions could not be recognised; the default is 500000".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for path in self.paths.keys() {
            if !seen.insert(path.trim_matches('/')) {
                out.push(format!(
                    "path `{path}` is listed twice (leading and trailing `/` do not count)"
                ));
            }
        }
        out
    }
}

/// What a path is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    Measurements,
    DeviceInfo,
    Configuration,
    /// Answered by the source itself: 2.05 with the 4-byte big-endian unix time.
    Time,
}

impl Route {
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Measurements => "measurements",
            Route::DeviceInfo => "device_info",
            Route::Configuration => "configuration",
            Route::Time => "time",
        }
    }
}

/// The payload of a 2.01.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AckPayload {
    #[default]
    EfentoConfig,
    None,
}

fn default_paths() -> BTreeMap<String, Route> {
    [
        ("m", Route::Measurements),
        ("i", Route::DeviceInfo),
        ("c", Route::Configuration),
        ("t", Route::Time),
    ]
    .into_iter()
    .map(|(p, r)| (p.to_string(), r))
    .collect()
}
fn default_ack_deadline() -> HumanDuration {
    HumanDuration::from_millis(1500)
}
fn default_busy_max_age() -> HumanDuration {
    HumanDuration::from_secs(5)
}
fn default_exchange_lifetime() -> HumanDuration {
    HumanDuration::from_secs(247)
}
fn default_exchange_cache() -> usize {
    500_000
}
fn default_max_payload() -> usize {
    4096
}
fn default_max_in_flight() -> usize {
    65_536
}
fn default_receive_buffer() -> usize {
    4 << 20
}

/// Option numbers (RFC 7252, 7641, 7959, 7967) this server handles or may ignore. The critical ones it
/// does not implement (If-Match, If-None-Match, OSCORE, Proxy-Uri, Proxy-Scheme) are left out, so a
/// request that depends on them gets 4.02 Bad Option instead of being served wrongly.
const KNOWN_OPTIONS: &[u16] = &[3, 4, 6, 7, 8, 11, 12, 14, 15, 17, 20, 23, 27, 28, 60, 258];

type ExchangeKey = (SocketAddr, u16);

/// What an exchange is remembered as.
enum Exchange {
    /// The request is with the pipeline; a retransmission is ignored (the answer is on its way).
    Pending,
    /// The answer sent, to send again on retransmission.
    Answered(Bytes),
    /// A non-confirmable request already processed.
    Silent,
}

/// A retransmission is the same datagram again (RFC 7252 §4.5), so the datagram's hash tells a
/// retransmission from a new request that reuses the (peer, message id) pair: a rebooted device
/// restarting its counter, or another device behind the same NAT mapping.
struct Entry {
    at: Instant,
    datagram_hash: u64,
    exchange: Exchange,
}

/// What a datagram is to the exchange cache.
enum Seen {
    New,
    /// A retransmission; `Some` is the answer to send again.
    Again(Option<Bytes>),
}

fn datagram_hash(datagram: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    datagram.hash(&mut h);
    h.finish()
}

/// Answers remembered for retransmissions, bounded by age and count. Requests still waiting for their
/// sinks are never evicted by count (there are at most `max_in_flight` of them).
struct Exchanges {
    map: HashMap<ExchangeKey, Entry>,
    order: VecDeque<(ExchangeKey, Instant)>,
    lifetime: Duration,
    capacity: usize,
}

impl Exchanges {
    fn new(lifetime: Duration, capacity: usize) -> Self {
        Exchanges {
            map: HashMap::new(),
            order: VecDeque::new(),
            lifetime,
            capacity: capacity.max(1),
        }
    }

    fn evict(&mut self, now: Instant) {
        // One pass at most: a waiting entry moved to the back is looked at again next time.
        let mut budget = self.order.len();
        while let Some((key, at)) = self.order.front().copied() {
            if budget == 0 {
                break;
            }
            budget -= 1;
            let expired = now.duration_since(at) >= self.lifetime;
            if !expired && self.map.len() < self.capacity {
                break;
            }
            self.order.pop_front();
            let waiting = match self.map.get(&key) {
                Some(e) if e.at == at => matches!(e.exchange, Exchange::Pending),
                _ => continue, // replaced by a newer entry for the same key
            };
            if waiting && !expired {
                // Still with the sinks: forgetting it would let a retransmission in twice.
                self.order.push_back((key, at));
            } else {
                self.map.remove(&key);
            }
        }
    }

    /// Looks a datagram up; a new one is remembered (as waiting if confirmable, as seen if not).
    fn check(
        &mut self,
        key: ExchangeKey,
        datagram: &[u8],
        confirmable: bool,
        now: Instant,
    ) -> Seen {
        self.evict(now);
        let hash = datagram_hash(datagram);
        if let Some(entry) = self.map.get(&key)
            && entry.datagram_hash == hash
        {
            return Seen::Again(match &entry.exchange {
                Exchange::Answered(bytes) => Some(bytes.clone()),
                Exchange::Pending | Exchange::Silent => None,
            });
        }
        let exchange = if confirmable {
            Exchange::Pending
        } else {
            Exchange::Silent
        };
        let entry = Entry {
            at: now,
            datagram_hash: hash,
            exchange,
        };
        self.map.insert(key, entry);
        self.order.push_back((key, now));
        Seen::New
    }

    fn answer(&mut self, key: ExchangeKey, bytes: Bytes) {
        if let Some(e) = self.map.get_mut(&key) {
            e.exchange = Exchange::Answered(bytes);
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

/// What an answer needs of its request: type, message id, token. Waiting tasks keep only this, not
/// the whole parsed message with its options and payload.
struct RequestHeader {
    confirmable: bool,
    mid: u16,
    token: Vec<u8>,
}

impl RequestHeader {
    fn of(packet: &Packet) -> Self {
        RequestHeader {
            confirmable: packet.header.get_type() == MessageType::Confirmable,
            mid: packet.header.message_id,
            token: packet.get_token().to_vec(),
        }
    }
}

struct Counters {
    received: Counter,
    retransmissions: Counter,
    malformed: Counter,
    created: Counter,
    rejected: Counter,
    failed: Counter,
    timed_out: Counter,
    busy: Counter,
    non_dropped: Counter,
    bad_option: Counter,
    /// From a confirmable request's arrival to its outcome (the answer waits for it).
    ack_latency: Histogram,
}

impl Counters {
    fn new(source: &str) -> Self {
        let code =
            |c: &str| metrics::counter("coap_responses_total", &[("source", source), ("code", c)]);
        Counters {
            received: metrics::counter("component_received_events_total", &[("component", source)]),
            retransmissions: metrics::counter("coap_retransmissions_total", &[("source", source)]),
            malformed: metrics::counter(
                "component_errors_total",
                &[("component", source), ("error", "malformed_coap")],
            ),
            created: code("2.01"),
            rejected: code("4.00"),
            failed: code("5.00"),
            timed_out: metrics::counter("coap_ack_deadline_missed_total", &[("source", source)]),
            busy: code("5.03"),
            non_dropped: metrics::counter(
                "component_discarded_events_total",
                &[
                    ("component", source),
                    ("reason", "pipeline_full_non_confirmable"),
                ],
            ),
            bad_option: code("4.02"),
            ack_latency: metrics::histogram("source_ack_latency_seconds", &[("component", source)]),
        }
    }
}

/// Everything the receive loop and the answer tasks share.
struct Shared {
    name: Arc<str>,
    socket: UdpSocket,
    /// The exchange cache in shards: each stays small, so growing one (a rehash) never stalls
    /// every request at once, and answer tasks rarely wait on the receive loop's lock.
    exchanges: Box<[Mutex<Exchanges>]>,
    in_flight: AtomicUsize,
    /// Message ids of the NON answers this server sends (RFC 7252 §4.4: the sender picks them).
    next_mid: AtomicU16,
    downlinks: Downlinks,
    config: CoapConfig,
    counters: Counters,
}

/// A bound CoAP server, ready to run.
pub struct CoapSource {
    shared: Arc<Shared>,
    flows: Vec<mpsc::Sender<Record>>,
    routes: RouteTable,
}

impl CoapSource {
    /// Binds the UDP socket (so an address in use fails at start, not later).
    pub fn bind(
        name: &str,
        config: &CoapConfig,
        flows: Vec<mpsc::Sender<Record>>,
        downlinks: Downlinks,
    ) -> anyhow::Result<CoapSource> {
        let socket = bind_udp(config.listen, config.receive_buffer, name)?;
        let routes = route_table(config);
        Ok(CoapSource {
            shared: Arc::new(Shared {
                name: name.into(),
                socket,
                exchanges: (0..EXCHANGE_SHARDS)
                    .map(|_| {
                        Mutex::new(Exchanges::new(
                            config.exchange_lifetime.get(),
                            config.exchange_cache.div_ceil(EXCHANGE_SHARDS),
                        ))
                    })
                    .collect(),
                in_flight: AtomicUsize::new(0),
                next_mid: AtomicU16::new(rand::random()),
                downlinks,
                config: config.clone(),
                counters: Counters::new(name),
            }),
            flows,
            routes,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.shared.socket.local_addr()
    }

    /// Serves until `shutdown`; then stops reading and waits for every request already taken to be
    /// answered (their records finish in the pipeline).
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let tracker = TaskTracker::new();
        let mut buf = vec![0u8; 65_536];
        tracing::info!(source = %self.shared.name, listen = %self.local_addr()?, "CoAP source listening");
        loop {
            let (n, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.shared.socket.recv_from(&mut buf) => match r {
                    Ok(v) => v,
                    Err(e) => {
                        // ICMP port-unreachable from an earlier answer shows up here on some systems.
                        tracing::debug!(source = %self.shared.name, error = %e, "UDP receive error");
                        continue;
                    }
                },
            };
            self.handle_datagram(&buf[..n], peer, &tracker).await;
        }
        drop(self.flows);
        tracker.close();
        tracker.wait().await;
        tracing::info!(source = %self.shared.name, "CoAP source stopped");
        Ok(())
    }

    async fn handle_datagram(&self, datagram: &[u8], peer: SocketAddr, tracker: &TaskTracker) {
        let shared = &self.shared;
        let packet = match Packet::from_bytes(datagram) {
            Ok(p) => p,
            Err(e) => {
                shared.counters.malformed.inc();
                tracing::debug!(source = %shared.name, %peer, error = ?e, "malformed CoAP message");
                // A confirmable message we cannot parse is rejected with a reset (RFC 7252 §4.2).
                if datagram.len() >= 4 && (datagram[0] >> 4) & 0x3 == 0 {
                    let mid = u16::from_be_bytes([datagram[2], datagram[3]]);
                    send(shared, &reset(mid), peer).await;
                }
                return;
            }
        };
        if packet.header.get_version() != 1 {
            shared.counters.malformed.inc();
            return; // RFC 7252 §3: messages of an unknown version are silently ignored
        }
        let mid = packet.header.message_id;
        let confirmable = match packet.header.get_type() {
            MessageType::Confirmable => true,
            MessageType::NonConfirmable => false,
            MessageType::Acknowledgement | MessageType::Reset => return,
        };
        if packet.header.code == MessageClass::Empty {
            if confirmable {
                send(shared, &reset(mid), peer).await; // CoAP ping
            }
            return;
        }
        let MessageClass::Request(method) = packet.header.code else {
            return; // a response sent to a server: nothing to do
        };
        shared.counters.received.inc();

        let key = (peer, mid);
        let seen = shared
            .exchanges_for(&key)
            .check(key, datagram, confirmable, Instant::now());
        if let Seen::Again(again) = seen {
            shared.counters.retransmissions.inc();
            if let Some(bytes) = again {
                send(shared, &bytes, peer).await;
            }
            return;
        }
        let request = RequestHeader::of(&packet);
        if packet.payload.len() > shared.config.max_payload {
            let text = format!("payload over {} bytes", shared.config.max_payload);
            let code = ResponseType::RequestEntityTooLarge;
            self.answer_now(&request, key, code, text.as_bytes(), confirmable)
                .await;
            return;
        }

        // Options: refuse unknown critical ones (odd numbers), keep the cloud token.
        let mut token_option = None;
        for (number, values) in packet.options() {
            let number = *number;
            if Some(number) == shared.config.cloud_token_option {
                token_option = values
                    .front()
                    .map(|v| String::from_utf8_lossy(v).into_owned());
                continue;
            }
            let known =
                KNOWN_OPTIONS.contains(&number) || shared.config.vendor_options.contains(&number);
            if !known && number % 2 == 1 {
                shared.counters.bad_option.inc();
                let text = format!(
                    "unknown critical option {number}; add it to vendor_options to accept it"
                );
                self.answer_now(
                    &request,
                    key,
                    ResponseType::BadOption,
                    text.as_bytes(),
                    confirmable,
                )
                .await;
                return;
            }
        }
        if let Some(block1) = packet.get_first_option(CoapOption::Block1) {
            // Efento splits large configurations at the application level (payload_split_info);
            // a multi-block upload is refused with a clear reason instead of being stored half.
            let more = block1.last().is_some_and(|b| b & 0x08 != 0);
            let num = block1
                .iter()
                .fold(0u32, |acc, b| (acc << 8) | u32::from(*b))
                >> 4;
            if more || num != 0 {
                self.answer_now(
                    &request,
                    key,
                    ResponseType::RequestEntityTooLarge,
                    b"block-wise transfer is not supported; send the payload in one datagram",
                    confirmable,
                )
                .await;
                return;
            }
        }

        let path = packet
            .get_option(CoapOption::UriPath)
            .map(|segments| {
                segments
                    .iter()
                    .map(|s| String::from_utf8_lossy(s))
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .unwrap_or_default();
        let Some((route, arc_path, arc_route)) = self.routes.get(&path) else {
            let text = format!("no route for path `{path}`");
            self.answer_now(
                &request,
                key,
                ResponseType::NotFound,
                text.as_bytes(),
                confirmable,
            )
            .await;
            return;
        };

        match (route, method) {
            (Route::Time, RequestType::Get | RequestType::Post) => {
                let payload = crate::codecs::efento::time_payload(unix_now());
                // A time request is pointless without an answer, so a NON one gets a NON answer.
                self.answer_now(&request, key, ResponseType::Content, &payload, true)
                    .await;
            }
            (Route::Time, _) => {
                self.answer_now(
                    &request,
                    key,
                    ResponseType::MethodNotAllowed,
                    b"use GET or POST",
                    confirmable,
                )
                .await;
            }
            (_, RequestType::Post) => {
                let mut origin = request_origin(arc_path, arc_route);
                origin.peer = Some(peer);
                origin.token = token_option;
                self.accept_data(packet, request, key, origin, tracker)
                    .await;
            }
            _ => {
                self.answer_now(
                    &request,
                    key,
                    ResponseType::MethodNotAllowed,
                    b"use POST",
                    confirmable,
                )
                .await;
            }
        }
    }

    /// Hands a data request to its flows and arranges its answer.
    async fn accept_data(
        &self,
        mut packet: Packet,
        request: RequestHeader,
        key: ExchangeKey,
        origin: Origin,
        tracker: &TaskTracker,
    ) {
        let shared = &self.shared;
        let confirmable = request.confirmable;
        let busy = shared.in_flight.load(Ordering::Relaxed) >= shared.config.max_in_flight;
        // Reserve a slot in every flow first, so a record goes to all of them or to none.
        let mut permits = Vec::with_capacity(self.flows.len());
        let mut closed = false;
        if !busy {
            for flow in &self.flows {
                match flow.try_reserve() {
                    Ok(p) => permits.push(p),
                    Err(mpsc::error::TrySendError::Full(())) => break,
                    Err(mpsc::error::TrySendError::Closed(())) => {
                        closed = true;
                        break;
                    }
                }
            }
        }
        if closed {
            // A flow that ended cannot store anything: say so, instead of "try later" forever.
            drop(permits);
            tracing::error!(source = %shared.name, "a flow of this source has stopped; answering 5.00");
            shared.counters.failed.inc();
            let text: &[u8] = b"pipeline stopped";
            self.answer_now(
                &request,
                key,
                ResponseType::InternalServerError,
                text,
                confirmable,
            )
            .await;
            return;
        }
        if busy || permits.len() < self.flows.len() || self.flows.is_empty() {
            drop(permits);
            if confirmable {
                shared.counters.busy.inc();
                let max_age = shared
                    .config
                    .busy_max_age
                    .get()
                    .as_secs()
                    .clamp(1, u32::MAX.into());
                let bytes = shared.response(
                    &request,
                    ResponseType::ServiceUnavailable,
                    b"pipeline is full, try again later",
                    Some(max_age as u32),
                );
                shared.exchanges_for(&key).answer(key, bytes.clone());
                send(shared, &bytes, key.0).await;
            } else {
                shared.counters.non_dropped.inc();
                tracing::warn!(source = %shared.name, peer = %key.0, "pipeline full: non-confirmable request dropped (the device will not retry it)");
            }
            return;
        }

        let raw = Bytes::from(std::mem::take(&mut packet.payload));
        let (delivery, watch) = if confirmable {
            let (d, w) = Delivery::timed(&shared.counters.ack_latency);
            (d, Some(w))
        } else {
            (Delivery::detached(), None)
        };
        // What the answer needs to confirm configuration changes (see `Downlinks::observe`).
        let report = (origin.route.clone(), raw.clone());
        let record = Record::new(shared.name.clone(), origin, raw, delivery);
        let mut permits = permits.into_iter();
        if let Some(last) = permits.next_back() {
            for permit in permits {
                permit.send(record.clone());
            }
            last.send(record);
        }

        if let Some(watch) = watch {
            shared.in_flight.fetch_add(1, Ordering::Relaxed);
            let shared = self.shared.clone();
            tracker.spawn(async move {
                let bytes = answer_for(&shared, &request, watch, report).await;
                shared.exchanges_for(&key).answer(key, bytes.clone());
                shared.in_flight.fetch_sub(1, Ordering::Relaxed);
                send(&shared, &bytes, key.0).await;
            });
        }
    }

    /// Answers right away (errors, time): caches the answer for retransmissions and sends it.
    async fn answer_now(
        &self,
        request: &RequestHeader,
        key: ExchangeKey,
        code: ResponseType,
        payload: &[u8],
        respond: bool,
    ) {
        if !respond {
            return;
        }
        let bytes = self.shared.response(request, code, payload, None);
        self.shared.exchanges_for(&key).answer(key, bytes.clone());
        send(&self.shared, &bytes, key.0).await;
    }

    /// How many exchanges are remembered right now (for tests of the bound).
    pub fn remembered_exchanges(&self) -> usize {
        self.shared
            .exchanges
            .iter()
            .map(|shard| shard.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

/// Each configured path (no leading or trailing `/`, the way Uri-Path options join) with its route,
/// and both as the shared names records carry.
type RouteTable = HashMap<String, (Route, Arc<str>, Arc<str>)>;

fn route_table(config: &CoapConfig) -> RouteTable {
    config
        .paths
        .iter()
        .map(|(path, route)| {
            let path = path.trim_matches('/').to_string();
            let arc_path: Arc<str> = path.as_str().into();
            (path, (*route, arc_path, Arc::from(route.as_str())))
        })
        .collect()
}

fn request_origin(path: &Arc<str>, route: &Arc<str>) -> Origin {
    Origin {
        path: Some(path.clone()),
        route: Some(route.clone()),
        ..Origin::default()
    }
}

/// The record a POST of `payload` to `path` becomes, as [`CoapSource`] makes it but without a socket
/// (no peer, no answer): for `sensorgate test`. `Err` says why the source would not hand that request
/// to its flows (no route, the time route, a payload over `max_payload`).
pub fn request_record(
    source: &str,
    config: &CoapConfig,
    path: &str,
    payload: Bytes,
) -> Result<Record, String> {
    let path = path.trim_matches('/');
    let routes = route_table(config);
    let Some((route, arc_path, arc_route)) = routes.get(path) else {
        let mut known: Vec<&str> = routes.keys().map(String::as_str).collect();
        known.sort_unstable();
        return Err(format!(
            "source `{source}` has no route for path `{path}` (its paths: {})",
            known.join(", ")
        ));
    };
    if *route == Route::Time {
        return Err(format!(
            "path `{path}` is the time route: the source answers it itself and makes no record"
        ));
    }
    if payload.len() > config.max_payload {
        return Err(format!(
            "the payload has {} bytes, over max_payload ({}): the source answers 4.13 and makes no record",
            payload.len(),
            config.max_payload
        ));
    }
    let origin = request_origin(arc_path, arc_route);
    Ok(Record::new(
        source.into(),
        origin,
        payload,
        Delivery::detached(),
    ))
}

/// Waits for the record's outcome (at most `ack_deadline`) and builds the ACK.
/// `report`: the request's route and payload, which may show the device applied a change.
async fn answer_for(
    shared: &Shared,
    request: &RequestHeader,
    watch: DeliveryWatch,
    report: (Option<Arc<str>>, Bytes),
) -> Bytes {
    let outcome = tokio::time::timeout(shared.config.ack_deadline.get(), watch).await;
    let c = &shared.counters;
    match outcome {
        Ok(Ok(Outcome::Delivered { device })) => {
            c.created.inc();
            let payload = match shared.config.ack_payload {
                AckPayload::EfentoConfig => {
                    if let (Some(device), (Some(route), payload)) = (&device, &report) {
                        shared.downlinks.observe(device, route, payload);
                    }
                    shared.downlinks.ack_payload(device.as_deref(), unix_now())
                }
                AckPayload::None => Vec::new(),
            };
            shared.response(request, ResponseType::Created, &payload, None)
        }
        Ok(Ok(Outcome::Rejected { reason, .. })) => {
            c.rejected.inc();
            shared.response(request, ResponseType::BadRequest, diagnostic(&reason), None)
        }
        Ok(Ok(Outcome::Failed { reason })) => {
            c.failed.inc();
            tracing::warn!(source = %shared.name, %reason, "answering 5.00: not stored");
            shared.response(
                request,
                ResponseType::InternalServerError,
                diagnostic(&reason),
                None,
            )
        }
        Ok(Err(_)) => {
            c.failed.inc();
            shared.response(
                request,
                ResponseType::InternalServerError,
                b"record lost before it was stored",
                None,
            )
        }
        Err(_) => {
            c.failed.inc();
            c.timed_out.inc();
            tracing::warn!(source = %shared.name, deadline = %shared.config.ack_deadline, "answering 5.00: sinks did not confirm within the ACK deadline");
            shared.response(
                request,
                ResponseType::InternalServerError,
                b"not stored within the ACK deadline",
                None,
            )
        }
    }
}

/// A diagnostic payload (RFC 7252 §5.5.2) short enough for a constrained device.
fn diagnostic(reason: &str) -> &[u8] {
    let mut end = reason.len().min(120);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason.as_bytes()[..end]
}

/// Shards of the exchange cache (a power of two).
const EXCHANGE_SHARDS: usize = 64;

impl Shared {
    fn exchanges_for(&self, key: &ExchangeKey) -> std::sync::MutexGuard<'_, Exchanges> {
        let (peer, mid) = key;
        let spread = usize::from(*mid) ^ usize::from(peer.port()).rotate_left(6);
        self.exchanges[spread % EXCHANGE_SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// A piggybacked answer: an ACK with the request's message id for a CON request, a NON with a
    /// message id of our own for a NON one; the request's token either way.
    fn response(
        &self,
        request: &RequestHeader,
        code: ResponseType,
        payload: &[u8],
        max_age: Option<u32>,
    ) -> Bytes {
        let mid = if request.confirmable {
            request.mid
        } else {
            self.next_mid.fetch_add(1, Ordering::Relaxed)
        };
        response_bytes(request, mid, code, payload, max_age)
    }
}

fn response_bytes(
    request: &RequestHeader,
    mid: u16,
    code: ResponseType,
    payload: &[u8],
    max_age: Option<u32>,
) -> Bytes {
    let mut response = Packet::new();
    response.header.set_type(if request.confirmable {
        MessageType::Acknowledgement
    } else {
        MessageType::NonConfirmable
    });
    response.header.message_id = mid;
    response.header.code = MessageClass::Response(code);
    response.set_token(request.token.clone());
    if let Some(age) = max_age {
        response.add_option(CoapOption::MaxAge, encode_uint(age));
    }
    response.payload = payload.to_vec();
    match response.to_bytes() {
        Ok(b) => Bytes::from(b),
        // Only a payload over the datagram limit can fail here; answer without it rather than not at all.
        Err(_) => {
            response.payload.clear();
            Bytes::from(response.to_bytes().unwrap_or_default())
        }
    }
}

fn reset(mid: u16) -> Bytes {
    // Version 1, type RST (3), token length 0, code 0.00, message id.
    let [hi, lo] = mid.to_be_bytes();
    Bytes::from(vec![0x70, 0x00, hi, lo])
}

/// CoAP uint option encoding: big-endian without leading zero bytes.
fn encode_uint(v: u32) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    bytes[skip..].to_vec()
}

async fn send(shared: &Shared, bytes: &[u8], peer: SocketAddr) {
    if let Err(e) = shared.socket.send_to(bytes, peer).await {
        tracing::debug!(source = %shared.name, %peer, error = %e, "UDP send failed");
    }
}

fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

/// Binds a UDP socket with a large receive buffer (bursts of many devices otherwise overflow the
/// kernel's default ~212 KiB and are dropped before any code runs; integrations.md §4).
fn bind_udp(addr: SocketAddr, receive_buffer: usize, name: &str) -> anyhow::Result<UdpSocket> {
    use anyhow::Context as _;
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .context("creating the UDP socket")?;
    if let Err(e) = socket.set_recv_buffer_size(receive_buffer) {
        tracing::warn!(source = name, error = %e, "could not set the UDP receive buffer");
    }
    socket.bind(&addr.into()).with_context(|| {
        format!("source `{name}`: cannot listen on UDP {addr} (in use, or a privileged port?)")
    })?;
    socket.set_nonblocking(true)?;
    let granted = socket.recv_buffer_size().unwrap_or(0);
    if granted < receive_buffer {
        tracing::warn!(
            source = name,
            asked = receive_buffer,
            granted,
            "the kernel granted a smaller UDP receive buffer (raise net.core.rmem_max)"
        );
    }
    Ok(UdpSocket::from_std(socket.into())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16, mid: u16) -> ExchangeKey {
        (SocketAddr::from(([127, 0, 0, 1], port)), mid)
    }

    fn is_again(seen: Seen) -> bool {
        matches!(seen, Seen::Again(_))
    }

    #[test]
    fn request_record_takes_its_route_from_the_paths_like_a_request() {
        let mut config: CoapConfig = toml::from_str("listen = \"127.0.0.1:0\"").unwrap();
        let record = request_record("efento", &config, "/m/", Bytes::from_static(b"\x0a")).unwrap();
        assert_eq!(record.origin.path.as_deref(), Some("m"));
        assert_eq!(record.origin.route.as_deref(), Some("measurements"));
        assert!(record.origin.peer.is_none());
        let no_route = request_record("efento", &config, "x", Bytes::new()).unwrap_err();
        assert!(no_route.contains("its paths: c, i, m, t"), "{no_route}");
        assert!(request_record("efento", &config, "t", Bytes::new()).is_err());
        config.max_payload = 1;
        let too_big = request_record("efento", &config, "m", Bytes::from_static(b"ab"));
        assert!(too_big.unwrap_err().contains("4.13"));
    }

    #[test]
    fn exchange_cache_stays_within_its_bound() {
        let mut ex = Exchanges::new(Duration::from_secs(247), 100);
        let now = Instant::now();
        for i in 0..10_000u16 {
            ex.check(key(1000, i), b"frame", false, now);
        }
        assert!(ex.len() <= 101, "{} entries", ex.len());
        assert!(
            is_again(ex.check(key(1000, 9_999), b"frame", false, now)),
            "newest kept"
        );
        assert!(
            !is_again(ex.check(key(1000, 0), b"frame", false, now)),
            "oldest evicted"
        );
    }

    #[test]
    fn exchange_cache_never_evicts_a_request_still_waiting_for_its_sinks() {
        let mut ex = Exchanges::new(Duration::from_secs(247), 10);
        let now = Instant::now();
        ex.check(key(1, 1), b"waiting", true, now);
        for i in 0..1_000u16 {
            let k = key(2, i);
            ex.check(k, b"x", true, now);
            ex.answer(k, Bytes::from_static(b"ack"));
        }
        assert!(matches!(
            ex.check(key(1, 1), b"waiting", true, now),
            Seen::Again(None)
        ));
        assert!(ex.len() <= 12, "{} entries", ex.len());
    }

    #[test]
    fn exchange_cache_forgets_after_lifetime() {
        let mut ex = Exchanges::new(Duration::from_secs(10), 100);
        let t0 = Instant::now();
        ex.check(key(1, 1), b"x", true, t0);
        ex.answer(key(1, 1), Bytes::from_static(b"ack"));
        let later = t0 + Duration::from_secs(9);
        assert!(matches!(
            ex.check(key(1, 1), b"x", true, later),
            Seen::Again(Some(_))
        ));
        assert!(!is_again(ex.check(
            key(1, 1),
            b"x",
            true,
            t0 + Duration::from_secs(11)
        )));
    }

    #[test]
    fn a_new_request_reusing_peer_and_message_id_is_not_taken_for_a_retransmission() {
        let mut ex = Exchanges::new(Duration::from_secs(247), 100);
        let now = Instant::now();
        ex.check(key(1, 7), b"frame one", true, now);
        ex.answer(key(1, 7), Bytes::from_static(b"ack one"));
        assert!(!is_again(ex.check(key(1, 7), b"frame two", true, now)));
        // and now the second one is the remembered exchange
        assert!(matches!(
            ex.check(key(1, 7), b"frame two", true, now),
            Seen::Again(None)
        ));
    }

    #[test]
    fn uint_options_drop_leading_zero_bytes() {
        assert_eq!(encode_uint(5), vec![5]);
        assert_eq!(encode_uint(300), vec![1, 44]);
        assert_eq!(encode_uint(0), Vec::<u8>::new());
    }

    #[test]
    fn response_echoes_message_id_and_token() {
        let mut req = Packet::new();
        req.header.set_type(MessageType::Confirmable);
        req.header.message_id = 0x1234;
        req.header.code = MessageClass::Request(RequestType::Post);
        req.set_token(vec![1, 2, 3]);
        let header = RequestHeader::of(&req);
        let bytes = response_bytes(
            &header,
            0x1234,
            ResponseType::ServiceUnavailable,
            b"busy",
            Some(5),
        );
        let resp = Packet::from_bytes(&bytes).unwrap();
        assert_eq!(resp.header.get_type(), MessageType::Acknowledgement);
        assert_eq!(resp.header.message_id, 0x1234);
        assert_eq!(resp.get_token(), &[1, 2, 3]);
        assert_eq!(
            resp.header.code,
            MessageClass::Response(ResponseType::ServiceUnavailable)
        );
        assert_eq!(resp.get_first_option(CoapOption::MaxAge), Some(&vec![5]));
        assert_eq!(resp.payload, b"busy");
    }
}
