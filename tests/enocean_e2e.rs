//! EnOcean end to end through a running `sensorgate run`: gateways over wss (a CA and server
//! certificate generated here with rcgen) push ESP3 telegrams; the flow dedupes across gateways,
//! decodes with the registry and writes JSON lines and Parquet; statistics count the duplicates.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use rustls_pki_types::pem::PemObject;
use sensorgate::codecs::enocean::esp3;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// A CA, and a server certificate for 127.0.0.1 signed by it, as PEM files in `dir`.
fn certificates(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()]).unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server-key.pem"), key.serialize_pem()).unwrap();
}

const DEVICES: &str = common::ENOCEAN_DEVICES;

struct Pipeline {
    child: std::process::Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    log: Arc<std::sync::Mutex<String>>,
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Pipeline {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    std::fs::write(dir.path().join("devices.toml"), DEVICES).unwrap();
    let port = common::free_tcp_port();
    let toml = format!(
        r#"
[sources.gateways]
type = "esp3_websocket"
listen = "127.0.0.1:{port}"
access_tokens = ["s3cret"]
tls = {{ cert = "server.pem", key = "server-key.pem" }}

[sinks.telemetry]
type = "json_lines"
path = "telemetry.jsonl"
fsync = false

[sinks.lake]
type = "parquet"
path = "lake"
commit_interval = "100ms"

[sinks.rejects]
type = "json_lines"
path = "rejects.jsonl"
fsync = false

[[flows]]
name = "enocean"
from = ["gateways"]
stages = [
  {{ type = "dedupe", key = "esp3", window = "5s", merge = "300ms" }},
  {{ type = "decode", codec = "esp3", registry = "devices.toml", stats_interval = "1s" }},
]
to = ["telemetry", "lake"]
dead_letter = "rejects"
"#
    );
    std::fs::write(dir.path().join("pipeline.toml"), toml).unwrap();
    let (child, log) = common::spawn_run(dir.path());
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "no listener; log:\n{}",
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Pipeline {
        child,
        dir,
        addr,
        log,
    }
}

/// An ERP1 frame as a gateway hears it, with its own dBm.
fn frame(data: &[u8], dbm: u8) -> Vec<u8> {
    esp3::encode(0x01, data, &[1, 0xff, 0xff, 0xff, 0xff, dbm, 0])
}

/// Each gateway connects over wss (raw ESP3 mode) and sends `messages`.
async fn send_as_gateways(addr: SocketAddr, ca: &Path, gateways: &[(&str, Vec<Vec<u8>>)]) {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_tungstenite::Connector::Rustls(Arc::new(config));
    for (gateway, messages) in gateways {
        let url = format!(
            "wss://127.0.0.1:{}/aruba?gateway={gateway}&token=s3cret",
            addr.port()
        );
        let (mut ws, _) = tokio_tungstenite::connect_async_tls_with_config(
            url,
            None,
            false,
            Some(connector.clone()),
        )
        .await
        .expect("wss connect");
        for m in messages {
            ws.send(Message::binary(m.clone())).await.unwrap();
        }
        ws.close(None).await.unwrap();
    }
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn wait_for(what: &str, p: &Pipeline, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; log:\n{}",
            p.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_over_wss_give_each_telegram_once_with_all_gateways_listed() {
    let p = start();
    // Vector 06 (A5-02-05, 19.92 °C) and vector 07 (A5-04-01), each heard by three gateways with
    // different RSSI; gw-c also sends garbage and a frame with a bad CRC between them.
    let t1 = hex::decode("a5000080080180a1b200").unwrap();
    let t2 = hex::decode("a5007d8c0a0180a1b300").unwrap();
    let mut bad_crc = frame(&t2, 0x30);
    let n = bad_crc.len();
    bad_crc[n - 1] ^= 0xff;
    let gw_c = vec![
        frame(&t1, 0x50),
        b"\x00\x13garbage".to_vec(),
        bad_crc,
        frame(&t2, 0x52),
    ];
    let gateways = [
        ("gw-a", vec![frame(&t1, 0x45), frame(&t2, 0x46)]),
        ("gw-b", vec![frame(&t1, 0x48), frame(&t2, 0x49)]),
        ("gw-c", gw_c),
    ];
    send_as_gateways(p.addr, &p.dir.path().join("ca.pem"), &gateways).await;

    let telemetry_path = p.dir.path().join("telemetry.jsonl");
    let telemetry = |kind: &str| {
        lines(&telemetry_path)
            .into_iter()
            .filter(|l| l["telemetry"].is_object() && l["raw"]["sender"] == kind)
            .collect::<Vec<_>>()
    };
    wait_for("both telegrams", &p, || {
        !telemetry("0180a1b2").is_empty() && !telemetry("0180a1b3").is_empty()
    });
    // Stats come every second: wait for one that has seen all three gateways' receptions.
    wait_for("gateway statistics", &p, || {
        lines(&telemetry_path)
            .iter()
            .any(|l| l["gateway_info"]["mac"] == "gw-c" && l["stats"]["totalTelegramCount"] == 4)
    });
    let t1_docs = telemetry("0180a1b2");
    assert_eq!(t1_docs.len(), 1, "each telegram once: {t1_docs:#?}");
    let doc = &t1_docs[0];
    assert_eq!(doc["telemetry"]["data"][0]["value"], 19.92);
    assert_eq!(doc["sensor"]["friendlyId"], "Temperature 1");
    let mut heard: Vec<(String, i64)> = doc["raw"]["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["gateway"].as_str().unwrap().to_string(),
                g["rssi"].as_i64().unwrap(),
            )
        })
        .collect();
    heard.sort();
    assert_eq!(
        heard,
        [
            ("gw-a".into(), -0x45),
            ("gw-b".into(), -0x48),
            ("gw-c".into(), -0x50)
        ]
    );
    assert_eq!(telemetry("0180a1b3").len(), 1);

    let all = lines(&telemetry_path);
    let events: Vec<_> = all
        .iter()
        .filter_map(|l| l["meta"]["events"]["health"][0]["code"].as_str())
        .collect();
    assert_eq!(
        events.iter().filter(|c| **c == "FIRST_TIME_SEND").count(),
        2,
        "{events:?}"
    );
    let latest_stats = |gateway: &str| {
        all.iter()
            .rev()
            .find(|l| l["gateway_info"]["mac"] == gateway)
            .map(|l| l["stats"].clone())
            .unwrap()
    };
    // gw-a relayed both telegrams first; gw-b's copies were duplicates; gw-c's too, plus the two
    // things it sent that were not telegrams.
    let a = latest_stats("gw-a");
    assert_eq!(
        (a["succesfullyProcessed"].as_u64(), a["duplicates"].as_u64()),
        (Some(2), Some(0))
    );
    let b = latest_stats("gw-b");
    assert_eq!(b["duplicates"], 2);
    let c = latest_stats("gw-c");
    assert_eq!(
        (c["duplicates"].as_u64(), c["notProcessed"].as_u64()),
        (Some(2), Some(2))
    );

    // The garbage and the bad frame are in dead letter, with their bytes and reasons.
    let rejects = lines(&p.dir.path().join("rejects.jsonl"));
    let reasons: Vec<&str> = rejects.iter().filter_map(|r| r["error"].as_str()).collect();
    assert!(
        reasons.iter().any(|r| r.starts_with("garbage")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.starts_with("crc8d_mismatch")),
        "{reasons:?}"
    );
    assert!(
        rejects
            .iter()
            .all(|r| r["raw_hex"].as_str().is_some_and(|h| !h.is_empty()))
    );

    // Parquet holds the readings once each, with the first gateway.
    if let Some(python) = common::python() {
        let script = "import duckdb,sys\nprint(duckdb.sql(\"select count(*) from read_parquet('lake/**/*.parquet') where device='0180a1b2' and key='temperature' and gateway='gw-a'\").fetchall()[0][0])";
        let out = Command::new(python)
            .args(["-c", script])
            .current_dir(p.dir.path())
            .output()
            .unwrap();
        common::assert_success(&out);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_device_is_an_event_and_a_registry_edit_is_picked_up_without_restart() {
    let p = start();
    let ca = p.dir.path().join("ca.pem");
    let unknown = hex::decode("a5000080080999000100").unwrap();
    send_as_gateways(p.addr, &ca, &[("gw-a", vec![frame(&unknown, 0x40)])]).await;
    let path = p.dir.path().join("telemetry.jsonl");
    wait_for("the UNKNOWN_DEVICE event", &p, || {
        lines(&path)
            .iter()
            .any(|l| l["meta"]["events"]["health"][0]["code"] == "UNKNOWN_DEVICE")
    });
    std::fs::write(
        p.dir.path().join("devices.toml"),
        format!("{DEVICES}\n[[devices]]\neurid = \"09990001\"\neep = \"a5-02-05\"\nfriendly_id = \"late\"\n"),
    )
    .unwrap();
    // The registry is polled every second; a telegram with new content after that decodes.
    std::thread::sleep(Duration::from_millis(1500));
    let changed = hex::decode("a5000070080999000100").unwrap();
    send_as_gateways(p.addr, &ca, &[("gw-a", vec![frame(&changed, 0x40)])]).await;
    wait_for("the onboarded device's telemetry", &p, || {
        lines(&path)
            .iter()
            .any(|l| l["sensor"]["friendlyId"] == "late" && l["telemetry"].is_object())
    });
}
