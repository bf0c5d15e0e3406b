//! The `esp3_websocket` source against real websocket clients: websocat (a peer nobody here wrote),
//! tokio-tungstenite clients, the gateway simulator (library and binary), over ws, wss and mutual
//! TLS. Records are checked where the source hands them over (a bounded channel), because raw
//! records carry their bytes and gateway only there; one test runs the whole `sensorgate run`
//! process with a JSON lines sink.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use prost::Message as _;
use sensorgate::codecs::enocean::esp3;
use sensorgate::metrics;
use sensorgate::record::{Kind, Record};
use sensorgate::simulator::{self, SimulateArgs};
use sensorgate::sources::esp3_websocket::aruba::proto::{
    IotSbMessage, Meta, NbSerialData, NbTopic, Reporter, Telemetry,
};
use sensorgate::sources::esp3_websocket::{
    AccessToken, Esp3WebsocketConfig, Esp3WebsocketSource, TlsConfig,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// Vector 06 (A5-02-05 from 0180a1b2, dBm 0x45) and vector 15 (D5-00-01 from 0180a1bb, dBm 0x44).
const FRAME_06: &str = "55000a0701eba5000080080180a1b20001ffffffff450051";
const FRAME_15: &str = "55000707017ad5090180a1bb0001ffffffff440061";
/// Vector 26: vector 06 with its data CRC inverted.
const BAD_CRC8D: &str = "55000a0701eba5000080080180a1b20001ffffffff4500ae";

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

/// How long a test waits for something that should come at once before it fails (never asserted
/// as a duration: only a bound so a broken build fails instead of hanging).
const PATIENCE: Duration = Duration::from_secs(30);

/// A running source on a free loopback port, with the receiving end of its one flow.
struct Harness {
    addr: SocketAddr,
    rx: mpsc::Receiver<Record>,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    name: String,
}

impl Harness {
    async fn start(name: &str, config: Esp3WebsocketConfig, capacity: usize) -> Harness {
        let (tx, rx) = mpsc::channel(capacity);
        let source = Esp3WebsocketSource::bind(name, &config, vec![tx]).unwrap();
        let addr = source.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(source.run(shutdown.clone()));
        Harness {
            addr,
            rx,
            shutdown,
            task,
            name: name.to_string(),
        }
    }

    fn url(&self, query: &str) -> String {
        format!("ws://{}/aruba{query}", self.addr)
    }

    async fn next(&mut self) -> Record {
        tokio::time::timeout(PATIENCE, self.rx.recv())
            .await
            .expect("a record in time")
            .expect("the source is running")
    }

    async fn take(&mut self, n: usize) -> Vec<Record> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next().await);
        }
        out
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        metrics::counter(name, labels).get()
    }

    fn errors(&self, error: &str) -> u64 {
        errors(&self.name, error)
    }

    async fn stop(self) -> mpsc::Receiver<Record> {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
        self.rx
    }
}

/// `component_errors_total{component, error}`.
fn errors(component: &str, error: &str) -> u64 {
    metrics::counter(
        "component_errors_total",
        &[("component", component), ("error", error)],
    )
    .get()
}

fn config() -> Esp3WebsocketConfig {
    Esp3WebsocketConfig::new("127.0.0.1:0".parse().unwrap())
}

fn route(r: &Record) -> &str {
    r.origin.route.as_deref().unwrap_or("")
}

fn gateway(r: &Record) -> &str {
    r.origin.gateway.as_deref().unwrap_or("")
}

fn telemetry(token: &str, mac: [u8; 6], payload: &[u8]) -> Vec<u8> {
    Telemetry {
        meta: Meta {
            version: 1,
            access_token: Some(token.into()),
            nb_topic: Some(NbTopic::SerialDataNb as i32),
            sb_topic: None,
        },
        reporter: Reporter {
            name: Some("ap-test".into()),
            mac: Some(mac.to_vec().into()),
            hw_type: Some("AP-505".into()),
            sw_version: Some("8.8.0.0".into()),
            time: Some(1639039720),
        },
        nb_s_data: vec![NbSerialData {
            nb_serial_payload: Some(payload.to_vec().into()),
            nb_device_id: Some("ENOCEAN_USB:deb480d77718bbbe5253896b9300acfd".into()),
        }],
        ap_health: None,
    }
    .encode_to_vec()
}

/// The websocat binary: next to the test script's Python, in the project venv, or on PATH.
fn websocat() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(python) = std::env::var_os("SENSORGATE_PYTHON")
        && let Some(dir) = Path::new(&python).parent()
    {
        candidates.push(dir.join("websocat"));
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/websocat"));
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .or_else(|| common::peer("websocat"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocat_raw_gateway_frame_arrives_with_its_gateway_and_rssi_and_no_token_gets_401() {
    let Some(websocat) = websocat() else { return };
    let mut cfg = config();
    cfg.access_tokens = vec![AccessToken::new("s3cret")];
    let mut h = Harness::start("ws_websocat", cfg, 16).await;
    let dir = tempfile::tempdir().unwrap();
    let frame_file = dir.path().join("frame.bin");
    std::fs::write(&frame_file, unhex(FRAME_06)).unwrap();
    let url = h.url("?gateway=gw1");

    let run = |args: Vec<String>| {
        let websocat = websocat.clone();
        let frame_file = frame_file.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(websocat)
                .args(args)
                .stdin(std::fs::File::open(frame_file).unwrap())
                .output()
                .unwrap()
        })
    };
    // The URL goes before -H, whose values would otherwise swallow it.
    let out = run(vec![
        "--binary".into(),
        url.clone(),
        "-H".into(),
        "Authorization: Bearer s3cret".into(),
    ])
    .await
    .unwrap();
    common::assert_success(&out);
    let r = h.next().await;
    assert_eq!(&r.raw[..], &unhex(FRAME_06)[..]);
    assert_eq!(r.kind, Kind::Raw);
    assert_eq!(&*r.source, "ws_websocat");
    assert_eq!(gateway(&r), "gw1");
    assert_eq!(route(&r), "esp3");
    assert_eq!(r.origin.rssi, Some(-0x45));
    assert_eq!(r.origin.path.as_deref(), Some("/aruba"));
    assert!(r.origin.peer.is_some_and(|p| p.ip().is_loopback()));

    // The same without a token: the upgrade is refused, nothing is delivered.
    let refused_before = h.errors("access_token");
    let out = run(vec!["--binary".into(), url.clone()]).await.unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And with the token as a query parameter.
    let out = run(vec!["--binary".into(), format!("{url}&token=s3cret")])
        .await
        .unwrap();
    common::assert_success(&out);
    assert_eq!(&h.next().await.raw[..], &unhex(FRAME_06)[..]);
    // A refusal is counted when its connection task ends, which stopping the source waits for.
    let mut rx = h.stop().await;
    assert!(rx.try_recv().is_err(), "nothing from the refused upgrade");
    assert_eq!(errors("ws_websocat", "access_token"), refused_before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aruba_envelope_with_the_right_token_arrives_and_a_wrong_token_closes_1008() {
    let mut cfg = config();
    cfg.access_tokens = vec![AccessToken::new("other"), AccessToken::new("t0k3n")];
    let mut h = Harness::start("ws_aruba_token", cfg, 64).await;
    let mac = [0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff];

    let (mut ws, _) = tokio_tungstenite::connect_async(h.url("")).await.unwrap();
    ws.send(Message::text("")).await.unwrap(); // AOS 8.8's empty hello
    // Vector 28's stream: garbage, then two packets, split over two messages mid-packet.
    let stream = unhex(
        "0055ff1255000a0701eba5000080080180a1b20001ffffffff45005155000707017ad5090180a1bb0001ffffffff440061",
    );
    ws.send(Message::binary(telemetry("t0k3n", mac, &stream[..30])))
        .await
        .unwrap();
    ws.send(Message::binary(telemetry("t0k3n", mac, &stream[30..])))
        .await
        .unwrap();
    let records = h.take(4).await;
    let health = &records[0];
    assert_eq!(health.kind, Kind::Event);
    assert_eq!(route(health), "gateway_health");
    assert_eq!(gateway(health), "aabbccddeeff");
    assert_eq!(health.device, None);
    assert_eq!(
        serde_json::Value::Object(health.body.clone()),
        serde_json::json!({
            "gateway_info": {"mac": "aabbccddeeff", "softwareVersion": "8.8.0.0", "hardwareDescriptor": "AP-505"},
            "stats": {"timestamp": "1639039720"},
            "usb_info": []
        })
    );
    assert_eq!(route(&records[1]), "esp3_garbage");
    assert_eq!(&records[1].raw[..], &unhex("0055ff12")[..]);
    assert_eq!(&records[2].raw[..], &unhex(FRAME_06)[..]);
    assert_eq!(&records[3].raw[..], &unhex(FRAME_15)[..]);
    assert_eq!(records[3].origin.rssi, Some(-0x44));
    for r in &records[1..] {
        assert_eq!(gateway(r), "aabbccddeeff");
        assert_eq!(r.kind, Kind::Raw);
    }
    ws.close(None).await.unwrap();

    // A wrong token: a ConnectStatus tokenExpire, then close 1008, and the frame is not delivered.
    let refused_before = h.errors("access_token");
    let (mut ws, _) = tokio_tungstenite::connect_async(h.url("")).await.unwrap();
    ws.send(Message::binary(telemetry("wrong", mac, &unhex(FRAME_06))))
        .await
        .unwrap();
    let mut close = None;
    let mut status = None;
    while let Some(Ok(m)) = tokio::time::timeout(PATIENCE, ws.next()).await.unwrap() {
        match m {
            Message::Binary(b) => status = IotSbMessage::decode(b).unwrap().status,
            Message::Close(frame) => close = frame,
            _ => {}
        }
    }
    let close = close.expect("a close frame");
    assert_eq!(u16::from(close.code), 1008);
    assert_eq!(close.reason.as_str(), "invalid access token");
    assert_eq!(status.unwrap().connect_code, Some(1)); // tokenExpire
    assert_eq!(h.errors("access_token"), refused_before + 1);
    let mut rx = h.stop().await;
    assert!(rx.try_recv().is_err(), "the refused frame was delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_bad_crc_between_good_frames_are_skipped_as_records_and_the_connection_stays() {
    let mut h = Harness::start("ws_garbage", config(), 64).await;
    let garbage_before = h.counter(
        "esp3_skipped_total",
        &[("source", "ws_garbage"), ("reason", "garbage")],
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(h.url("?gateway=noisy"))
        .await
        .unwrap();
    let mut stream = unhex(FRAME_06);
    stream.extend(unhex("00ff12"));
    stream.extend(unhex(BAD_CRC8D));
    stream.extend(unhex(FRAME_15));
    ws.send(Message::binary(stream)).await.unwrap();
    let records = h.take(4).await;
    let routes: Vec<&str> = records.iter().map(route).collect();
    assert_eq!(
        routes,
        ["esp3", "esp3_garbage", "esp3_crc8d_mismatch", "esp3"]
    );
    assert_eq!(&records[0].raw[..], &unhex(FRAME_06)[..]);
    assert_eq!(&records[1].raw[..], &unhex("00ff12")[..]);
    assert_eq!(&records[2].raw[..], &unhex(BAD_CRC8D)[..]);
    assert_eq!(records[2].origin.rssi, None);
    assert_eq!(&records[3].raw[..], &unhex(FRAME_15)[..]);
    assert!(records.iter().all(|r| gateway(r) == "noisy"));
    assert_eq!(
        h.counter(
            "esp3_skipped_total",
            &[("source", "ws_garbage"), ("reason", "garbage")]
        ),
        garbage_before + 1
    );

    // Still open: a frame split over two messages is joined.
    let frame = unhex(FRAME_06);
    ws.send(Message::binary(frame[..5].to_vec())).await.unwrap();
    ws.send(Message::binary(frame[5..].to_vec())).await.unwrap();
    let r = h.next().await;
    assert_eq!(&r.raw[..], &frame[..]);
    // A packet cut short by the end of the connection is reported as garbage.
    ws.send(Message::binary(frame[..9].to_vec())).await.unwrap();
    ws.close(None).await.unwrap();
    let r = h.next().await;
    assert_eq!(route(&r), "esp3_garbage");
    assert_eq!(&r.raw[..], &frame[..9]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_path_gets_404_and_a_full_server_gets_503() {
    let mut cfg = config();
    cfg.max_connections = 1;
    let h = Harness::start("ws_limits", cfg, 16).await;
    let err = tokio_tungstenite::connect_async(format!("ws://{}/elsewhere", h.addr))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
    let (first, _) = tokio_tungstenite::connect_async(h.url("")).await.unwrap();
    let err = tokio_tungstenite::connect_async(h.url(""))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    drop(first);
    h.stop().await;
    let refused = metrics::counter(
        "websocket_connections_refused_total",
        &[("source", "ws_limits"), ("reason", "max_connections")],
    );
    assert_eq!(refused.get(), 1);
}

/// Reads until the server's close frame and returns its code and reason.
async fn close_of<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> (u16, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(Ok(m)) = tokio::time::timeout(PATIENCE, ws.next()).await.unwrap() {
        if let Message::Close(Some(frame)) = m {
            return (u16::from(frame.code), frame.reason.to_string());
        }
    }
    panic!("the connection ended without a close frame");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_gateways_are_closed_and_shutdown_closes_with_1001_after_delivering() {
    let mut cfg = config();
    cfg.idle_timeout = sensorgate::config::HumanDuration::from_millis(300);
    let h = Harness::start("ws_idle", cfg, 16).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(h.url("?gateway=quiet"))
        .await
        .unwrap();
    assert_eq!(close_of(&mut ws).await, (1001, "idle timeout".to_string()));
    drop(ws);
    // Counted when the connection task ends, which stopping the source waits for.
    h.stop().await;
    let closed = metrics::counter(
        "websocket_connections_closed_total",
        &[("source", "ws_idle"), ("reason", "idle_timeout")],
    );
    assert_eq!(closed.get(), 1);

    let mut h = Harness::start("ws_shutdown", config(), 16).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(h.url("?gateway=busy"))
        .await
        .unwrap();
    ws.send(Message::binary(unhex(FRAME_06))).await.unwrap();
    assert_eq!(&h.next().await.raw[..], &unhex(FRAME_06)[..]);
    h.shutdown.cancel();
    assert_eq!(
        close_of(&mut ws).await,
        (1001, "server shutting down".to_string())
    );
    h.stop().await;
}

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate, as PEM files.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa,
            KeyPair,
        };
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        write("ca.pem", ca.pem());

        let server_key = KeyPair::generate().unwrap();
        let mut server =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        write(
            "server.pem",
            server.signed_by(&server_key, &ca).unwrap().pem(),
        );
        write("server.key", server_key.serialize_pem());

        let client_key = KeyPair::generate().unwrap();
        let mut client = CertificateParams::new(vec!["gateway-1".to_string()]).unwrap();
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        write(
            "client.pem",
            client.signed_by(&client_key, &ca).unwrap().pem(),
        );
        write("client.key", client_key.serialize_pem());
        Pki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn tls(&self, client_ca: bool) -> TlsConfig {
        TlsConfig {
            cert: Some(self.path("server.pem").into()),
            key: Some(self.path("server.key").into()),
            client_ca: client_ca.then(|| self.path("ca.pem").into()),
        }
    }
}

fn sim_args(args: &[&str]) -> SimulateArgs {
    let mut all = vec!["--quiet"];
    all.extend_from_slice(args);
    SimulateArgs::parse_from(all).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_a_test_ca_and_mutual_tls_refuses_clients_without_a_certificate() {
    let pki = Pki::new();
    let mut cfg = config();
    cfg.tls = Some(pki.tls(false));
    let mut h = Harness::start("ws_tls", cfg, 64).await;
    let target = format!("wss://localhost:{}/aruba", h.addr.port());
    let ca = pki.path("ca.pem");
    let summary = simulator::simulate(&sim_args(&[
        "--target",
        &target,
        "--ca",
        &ca,
        "--gateways",
        "1",
        "--count",
        "5",
    ]))
    .await
    .unwrap();
    assert_eq!(summary.connection_errors, 0, "{:?}", summary.errors);
    let records = h.take(6).await; // the gateway event, then 5 frames
    assert_eq!(route(&records[0]), "gateway_health");
    assert!(records[1..].iter().all(|r| route(r) == "esp3"));
    // A client that does not trust the test CA cannot connect.
    let untrusted = simulator::simulate(&sim_args(&[
        "--target",
        &target,
        "--gateways",
        "1",
        "--count",
        "1",
    ]))
    .await
    .unwrap();
    assert_eq!(untrusted.connection_errors, 1);
    h.stop().await;

    // Mutual TLS: a client certificate issued by client_ca is required.
    let mut cfg = config();
    cfg.tls = Some(pki.tls(true));
    let mut h = Harness::start("ws_mtls", cfg, 64).await;
    let target = format!("wss://127.0.0.1:{}/aruba", h.addr.port());
    let without = simulator::simulate(&sim_args(&[
        "--target",
        &target,
        "--ca",
        &ca,
        "--gateways",
        "1",
        "--count",
        "1",
    ]))
    .await
    .unwrap();
    assert_eq!(without.connection_errors, 1);
    assert!(h.rx.try_recv().is_err());
    let (cert, key) = (pki.path("client.pem"), pki.path("client.key"));
    let with = simulator::simulate(&sim_args(&[
        "--target",
        &target,
        "--ca",
        &ca,
        "--client-cert",
        &cert,
        "--client-key",
        &key,
        "--gateways",
        "1",
        "--count",
        "3",
        "--mode",
        "raw",
    ]))
    .await
    .unwrap();
    assert_eq!(with.connection_errors, 0, "{:?}", with.errors);
    let records = h.take(3).await;
    assert!(records.iter().all(|r| gateway(r) == "sim-gw-0"));
    h.stop().await;
    assert_eq!(
        errors("ws_mtls", "handshake"),
        1,
        "the client without a certificate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_gateways_connected_at_once_each_deliver_their_frame() {
    const N: u32 = 1000;
    let mut h = Harness::start("ws_thousand", config(), 2048).await;
    let all_connected = Arc::new(tokio::sync::Barrier::new(N as usize + 1));
    let mut clients = Vec::new();
    for i in 0..N {
        let url = h.url(&format!("?gateway=g{i}"));
        let barrier = all_connected.clone();
        clients.push(tokio::spawn(async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            // Every connection is open before any frame is sent.
            barrier.wait().await;
            let sender = 0x0500_0000 | i;
            let mut data = vec![0xA5, 0, 0, (i % 256) as u8, 0x08];
            data.extend_from_slice(&sender.to_be_bytes());
            data.push(0);
            let frame = esp3::encode(1, &data, &[1, 0xff, 0xff, 0xff, 0xff, 0x50, 0]);
            ws.send(Message::binary(frame)).await.unwrap();
            ws.close(None).await.unwrap();
            while let Some(Ok(_)) = ws.next().await {}
        }));
    }
    tokio::time::timeout(PATIENCE, all_connected.wait())
        .await
        .expect("all connections open");
    let records = h.take(N as usize).await;
    for c in clients {
        c.await.unwrap();
    }
    let gateways: HashSet<&str> = records.iter().map(gateway).collect();
    assert_eq!(gateways.len(), N as usize);
    let senders: HashSet<Vec<u8>> = records
        .iter()
        .map(|r| esp3::parse_packet(&r.raw).unwrap().0.data[5..9].to_vec())
        .collect();
    assert_eq!(senders.len(), N as usize);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_flow_stops_reading_the_gateway_until_it_drains() {
    const MESSAGES: usize = 500;
    let mut h = Harness::start("ws_backpressure", config(), 1).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(h.url("?gateway=fast"))
        .await
        .unwrap();
    let messages_read = || {
        metrics::counter(
            "component_received_events_total",
            &[("component", "ws_backpressure")],
        )
        .get()
    };
    let frame = unhex(FRAME_06);
    let sender = tokio::spawn(async move {
        for _ in 0..MESSAGES {
            ws.feed(Message::binary(frame.clone())).await.unwrap();
        }
        ws.flush().await.unwrap();
        ws
    });
    // The gateway has written everything (into socket buffers); give a source that ignored
    // backpressure every chance to read it all.
    let mut ws = tokio::time::timeout(PATIENCE, sender)
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // One record sits in the queue and the connection waits to hand over the next one: it has read
    // at most one more message and no further.
    assert!(
        messages_read() <= 3,
        "{} messages read with nobody draining",
        messages_read()
    );
    assert!(h.rx.len() <= 1);
    // Draining lets every frame through.
    let records = h.take(MESSAGES).await;
    assert!(records.iter().all(|r| route(r) == "esp3"));
    assert_eq!(messages_read(), MESSAGES as u64);
    ws.close(None).await.unwrap();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_overlap_3_sends_each_distinct_telegram_through_three_gateways() {
    let h = Harness::start("ws_sim", config(), 4096).await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("manifest.jsonl");
    let summary = simulator::simulate(&sim_args(&[
        "--target",
        &h.url(""),
        "--gateways",
        "3",
        "--overlap",
        "3",
        "--count",
        "300",
        "--batch",
        "4",
        "--manifest",
        manifest.to_str().unwrap(),
    ]))
    .await
    .unwrap();
    assert_eq!(summary.connection_errors, 0, "{:?}", summary.errors);
    assert_eq!((summary.distinct, summary.receptions), (300, 900));
    let mut rx = h.stop().await;
    let mut records = Vec::new();
    while let Ok(r) = rx.try_recv() {
        records.push(r);
    }
    let frames: Vec<&Record> = records.iter().filter(|r| route(r) == "esp3").collect();
    assert_eq!(frames.len(), 900);
    let health = records
        .iter()
        .filter(|r| route(r) == "gateway_health")
        .count();
    assert_eq!(health, 3, "one gateway event per connection");
    assert_eq!(records.len(), 903, "nothing skipped");

    let mut per_gateway: BTreeMap<&str, usize> = BTreeMap::new();
    let mut rssi_per_gateway: BTreeMap<&str, BTreeSet<i32>> = BTreeMap::new();
    let mut received = BTreeMap::<Vec<u8>, usize>::new();
    for r in &frames {
        *per_gateway.entry(gateway(r)).or_default() += 1;
        rssi_per_gateway
            .entry(gateway(r))
            .or_default()
            .insert(r.origin.rssi.unwrap());
        let (packet, _) = esp3::parse_packet(&r.raw).unwrap();
        *received.entry(packet.data.to_vec()).or_default() += 1;
    }
    assert_eq!(
        per_gateway.keys().copied().collect::<Vec<_>>(),
        ["020000000000", "020000000001", "020000000002"]
    );
    assert!(per_gateway.values().all(|&n| n == 300));
    let rssis: BTreeSet<i32> = rssi_per_gateway
        .values()
        .map(|set| {
            assert_eq!(set.len(), 1, "a gateway reports one RSSI");
            *set.first().unwrap()
        })
        .collect();
    assert_eq!(rssis.len(), 3, "each gateway its own RSSI");

    // Exactly the manifest's telegrams, each received by all three gateways.
    let lines: Vec<serde_json::Value> = BufReader::new(std::fs::File::open(&manifest).unwrap())
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    assert_eq!(lines.len(), 300);
    let expected: BTreeMap<Vec<u8>, usize> = lines
        .iter()
        .map(|l| {
            let frame = unhex(l["frame"].as_str().unwrap());
            let (packet, _) = esp3::parse_packet(&frame).unwrap();
            let data = hex::encode(&packet.data[..packet.data.len() - 5]);
            assert_eq!(l["data"], data.as_str());
            assert_eq!(
                l["sender"],
                hex::encode(&packet.data[packet.data.len() - 5..packet.data.len() - 1]).as_str()
            );
            (packet.data.to_vec(), 3)
        })
        .collect();
    assert_eq!(expected.len(), 300, "the manifest's telegrams are distinct");
    assert_eq!(received, expected);
}

#[test]
fn pipeline_toml_takes_an_esp3_websocket_source_with_defaults_and_names_bad_tls() {
    let text = r#"
[sources.gw]
type = "esp3_websocket"
access_tokens = ["${GW_TOKEN}"]

[sinks.out]
type = "json_lines"
path = "out.jsonl"

[[flows]]
name = "enocean"
from = ["gw"]
to = ["out"]
"#;
    let env = |name: &str| (name == "GW_TOKEN").then(|| "from-env".to_string());
    let (config, _) = sensorgate::config::load_str("p.toml", text, &env).unwrap();
    let sensorgate::config::SourceKind::Esp3Websocket(gw) = &config.sources["gw"].kind else {
        panic!("gw is an esp3_websocket source");
    };
    assert_eq!(gw.listen, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(gw.path, "/aruba");
    assert_eq!(gw.max_connections, 10_000);
    assert_eq!(gw.max_message, 1 << 20);
    assert_eq!(gw.idle_timeout.get(), Duration::from_secs(300));
    assert_eq!(gw.max_frame, esp3::DEFAULT_MAX_FRAME);
    assert_eq!(format!("{:?}", gw.access_tokens), "[\"***\"]");

    let bad = text.replace(
        "access_tokens = [\"${GW_TOKEN}\"]",
        "tls = { cert = \"server.pem\" }\nmax_conections = 5",
    );
    let report = sensorgate::config::load_str("p.toml", &bad, &env).unwrap_err();
    let shown = report.to_string();
    assert!(shown.contains("max_conections"), "{shown}");
    let bad = text.replace(
        "access_tokens = [\"${GW_TOKEN}\"]",
        "tls = { cert = \"server.pem\" }",
    );
    let shown = sensorgate::config::load_str("p.toml", &bad, &env)
        .unwrap_err()
        .to_string();
    assert!(
        shown.contains("tls.cert is set but tls.key is not"),
        "{shown}"
    );
}

/// `sensorgate run` with the source in pipeline.toml, fed by `sensorgate simulate`: the topology
/// wiring and both commands, end to end. Raw records show in JSON lines only as their envelope, so
/// this counts them; the tests above check their content.
#[test]
fn sensorgate_run_and_simulate_binaries_deliver_every_reception() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        dir.path().join("pipeline.toml"),
        format!(
            r#"
[sources.gateways]
type = "esp3_websocket"
listen = "127.0.0.1:{port}"
access_tokens = ["${{GW_TOKEN}}"]

[sinks.out]
type = "json_lines"
path = "out.jsonl"
fsync = false

[[flows]]
name = "enocean"
from = ["gateways"]
to = ["out"]
"#
        ),
    )
    .unwrap();
    let mut child = common::sensorgate()
        .args(["run", "--config", "pipeline.toml"])
        .current_dir(dir.path())
        .env("GW_TOKEN", "e2e-token")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = (0..300).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(ready, "sensorgate did not listen on {port}");
    let out = common::sensorgate()
        .args([
            "simulate",
            "--target",
            &format!("ws://127.0.0.1:{port}/aruba"),
            "--gateways",
            "2",
            "--overlap",
            "2",
            "--count",
            "100",
            "--token",
            "e2e-token",
            "--quiet",
            "--json",
        ])
        .output()
        .unwrap();
    common::assert_success(&out);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["receptions"], 200);
    let refused = common::sensorgate()
        .args([
            "simulate",
            "--target",
            &format!("ws://127.0.0.1:{port}/aruba"),
            "--gateways",
            "1",
            "--count",
            "1",
            "--token",
            "wrong",
            "--quiet",
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stdout).contains("1008 invalid access token"),
        "{}",
        String::from_utf8_lossy(&refused.stdout)
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    let docs: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let raw = docs.iter().filter(|d| d["kind"] == "raw").count();
    let events: Vec<&serde_json::Value> = docs.iter().filter(|d| d["kind"] == "event").collect();
    assert_eq!(raw, 200);
    assert_eq!(events.len(), 2);
    assert!(
        events
            .iter()
            .all(|e| e["gateway_info"]["hardwareDescriptor"] == "AP-505")
    );
}
