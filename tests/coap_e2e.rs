//! End to end: a running `sensorgate run` with the default-style pipeline, real CoAP clients nobody here
//! wrote (libcoap's coap-client-notls, Python aiocoap) and a raw UDP socket, and the Parquet output read
//! back with the parquet crate and with DuckDB.

mod common;

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow::array::{Array, StringArray, TimestampMicrosecondArray};
use common::*;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use prost::Message as _;
use sensorgate::codecs::efento::proto::ProtoConfig;

const SEED_SERIAL: &str = "282C024156AF";
const POST: u8 = 0x02;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Every committed Parquet file under `dir` (hidden temp files excluded, as readers do).
fn parquet_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(parquet_files(&p));
        } else if p.extension().is_some_and(|x| x == "parquet")
            && !p.file_name().unwrap().to_string_lossy().starts_with('.')
        {
            out.push(p);
        }
    }
    out
}

/// (device, ts in unix seconds, text) of every row, read with the parquet crate.
fn parquet_rows(dir: &Path) -> Vec<(String, i64, Option<String>)> {
    let mut rows = Vec::new();
    for file in parquet_files(dir) {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&file).unwrap())
            .unwrap_or_else(|e| panic!("{} is not a readable Parquet file: {e}", file.display()))
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let device = batch.column_by_name("device").unwrap();
            let device = device.as_any().downcast_ref::<StringArray>().unwrap();
            let ts = batch.column_by_name("ts").unwrap();
            let ts = ts
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .unwrap();
            let text = batch.column_by_name("text").unwrap();
            let text = text.as_any().downcast_ref::<StringArray>().unwrap();
            for i in 0..batch.num_rows() {
                rows.push((
                    device.value(i).to_string(),
                    ts.value(i) / 1_000_000,
                    (!text.is_null(i)).then(|| text.value(i).to_string()),
                ));
            }
        }
    }
    rows
}

fn seed_rows(dir: &Path) -> Vec<(String, i64, Option<String>)> {
    parquet_rows(dir)
        .into_iter()
        .filter(|r| r.0 == SEED_SERIAL)
        .collect()
}

/// Runs a Python script (DuckDB, pyarrow) with the lake directory as its argument; returns its stdout.
fn python_on_lake(python: &Path, script: &str, lake: &Path) -> String {
    let out = Command::new(python)
        .args(["-c", script])
        .arg(lake)
        .output()
        .unwrap();
    assert_success(&out);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn seed_frame_from_coap_client_gets_201_with_current_time_and_25_rows_in_parquet() {
    let Some(_) = peer("coap-client-notls") else {
        return;
    };
    let running = Running::start("");
    let seed = vector_bytes("efento", "m00_seed_open_close");
    let uri = format!("coap://{}/m", running.coap);
    let (code, payload) = coap_client("post", &uri, Some(&seed), running.dir.path()).unwrap();
    assert_eq!(code, "2.01", "log:\n{}", running.log());

    let ack = ProtoConfig::decode(payload.as_slice()).expect("2.01 payload is a ProtoConfig");
    assert!(
        (i64::from(ack.current_time) - now()).abs() <= 5,
        "current_time {}",
        ack.current_time
    );

    // The 2.01 came after the commit, so the rows are readable right now.
    let rows = seed_rows(&running.path("lake"));
    assert_eq!(rows.len(), 25, "rows: {rows:?}");
    let expected_ts: Vec<i64> = (0..25).map(|k| 1_694_006_240 + 20 * k).collect();
    let mut ts: Vec<i64> = rows.iter().map(|r| r.1).collect();
    ts.sort();
    assert_eq!(ts, expected_ts);
    assert!(rows.iter().all(|r| r.2.as_deref() == Some("ok")));
    assert!(
        running.path("lake/dt=2023-09-06").is_dir(),
        "Hive partition by the reading's UTC date"
    );

    // And with DuckDB, the way a user queries it.
    let Some(python) = python() else { return };
    let script = r#"
import duckdb, sys
rows = duckdb.sql(f"""select count(*), min(epoch(ts))::bigint, max(epoch(ts))::bigint, count(distinct dt)
                      from read_parquet('{sys.argv[1]}/**/*.parquet', hive_partitioning=true)
                      where device = '282C024156AF' and key = 'ok_alarm' and text = 'ok'""").fetchall()
print(rows[0][0], rows[0][1], rows[0][2], rows[0][3])
"#;
    assert_eq!(
        python_on_lake(&python, script, &running.path("lake")),
        "25 1694006240 1694006720 1"
    );
}

#[test]
fn unwritable_lake_gets_500_and_a_retry_after_repair_gets_201_with_data_stored_once() {
    let running = Running::start("");
    let lake = running.path("lake");
    // Root ignores directory permissions, so make the lake unusable by putting a file where it was.
    std::fs::remove_dir_all(&lake).unwrap();
    std::fs::write(&lake, b"not a directory").unwrap();

    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let seed = vector_bytes("efento", "m00_seed_open_close");
    let first = con_post(&sock, running.coap, 0x0101, &[7], "m", &seed);
    assert_eq!(first.code, "5.00", "log:\n{}", running.log());
    assert_eq!(first.mid, 0x0101);
    assert_eq!(first.token, vec![7]);

    std::fs::remove_file(&lake).unwrap();
    std::fs::create_dir(&lake).unwrap();
    // The sensor sends the same data again later, as a new message.
    let second = con_post(&sock, running.coap, 0x0102, &[8], "m", &seed);
    assert_eq!(second.code, "2.01", "log:\n{}", running.log());
    assert_eq!(seed_rows(&lake).len(), 25, "stored once");
}

#[test]
fn retransmitted_con_gets_the_identical_ack_and_is_stored_once() {
    let running = Running::start("");
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let seed = vector_bytes("efento", "m00_seed_open_close");
    let request = coap_request(true, POST, 0x4242, &[1, 2, 3, 4], "m", &seed);
    // A retransmission while the first is still being stored, then one after the answer.
    sock.send_to(&request, running.coap).unwrap();
    let first =
        udp_exchange(&sock, running.coap, &request, Duration::from_secs(5)).expect("an answer");
    assert_eq!(parse_coap(&first).code, "2.01");
    let again = udp_exchange(&sock, running.coap, &request, Duration::from_secs(5))
        .expect("the cached answer");
    assert_eq!(again, first, "byte-identical ACK");
    // No third answer is on its way: the in-flight retransmission was absorbed.
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 2048];
    assert!(sock.recv_from(&mut buf).is_err(), "no further answer");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(seed_rows(&running.path("lake")).len(), 25);

    // A different frame that reuses the peer and message id (a rebooted sensor restarting its counter)
    // is a new request, not a retransmission: it is stored and answered on its own.
    let other = vector_bytes("efento", "m01_temp_humidity_negative");
    let reused = coap_request(true, POST, 0x4242, &[1, 2, 3, 4], "m", &other);
    let answer =
        udp_exchange(&sock, running.coap, &reused, Duration::from_secs(5)).expect("an answer");
    assert_eq!(parse_coap(&answer).code, "2.01");
    let rows = parquet_rows(&running.path("lake"));
    assert_eq!(
        rows.iter().filter(|r| r.0 == "282C0241A1B2").count(),
        12,
        "m01 stored"
    );
}

#[test]
fn aiocoap_client_gets_201_whose_payload_is_a_protoconfig_with_current_time() {
    let Some(python) = python() else { return };
    let running = Running::start("");
    let seed = running.path("seed.bin");
    std::fs::write(&seed, vector_bytes("efento", "m00_seed_open_close")).unwrap();
    let script = r#"
import asyncio, sys
from aiocoap import Context, Message, POST
async def main(uri, path):
    ctx = await Context.create_client_context()
    resp = await ctx.request(Message(code=POST, uri=uri, payload=open(path, "rb").read())).response
    print(str(resp.code).split()[0], resp.payload.hex())
    await ctx.shutdown()
asyncio.run(main(sys.argv[1], sys.argv[2]))
"#;
    let out = Command::new(python)
        .args([
            "-W",
            "ignore",
            "-c",
            script,
            &format!("coap://{}/m", running.coap),
        ])
        .arg(&seed)
        .output()
        .unwrap();
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (code, payload) = stdout.trim().split_once(' ').unwrap();
    assert_eq!(code, "2.01");
    let ack = ProtoConfig::decode(hex::decode(payload).unwrap().as_slice()).unwrap();
    assert!((i64::from(ack.current_time) - now()).abs() <= 5);
    assert_eq!(seed_rows(&running.path("lake")).len(), 25);
}

#[test]
fn garbage_payload_gets_400_and_lands_in_dead_letter_with_its_bytes() {
    let Some(_) = peer("coap-client-notls") else {
        return;
    };
    let running = Running::start("");
    let garbage = b"\xff\xfe this is not protobuf \x00\x01";
    let uri = format!("coap://{}/m", running.coap);
    let (code, _) = coap_client("post", &uri, Some(garbage), running.dir.path()).unwrap();
    assert_eq!(code, "4.00");
    // The same over a raw socket, to see the diagnostic payload.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let answer = con_post(&sock, running.coap, 0x0333, &[3], "m", garbage);
    assert_eq!(answer.code, "4.00");
    assert!(
        String::from_utf8_lossy(&answer.payload).contains("not an Efento"),
        "{:?}",
        answer.payload
    );

    let text = std::fs::read_to_string(running.path("rejects.jsonl")).expect("dead-letter file");
    assert_eq!(text.lines().count(), 2, "both rejects recorded: {text}");
    let line = text.lines().next().expect("one dead letter");
    let doc: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(doc["raw_hex"], hex::encode(garbage));
    assert_eq!(doc["stage"], "decode");
    assert_eq!(doc["kind"], "dead_letter");
    assert_eq!(doc["source"], "efento");
    assert!(!doc["error"].as_str().unwrap().is_empty());
    assert!(seed_rows(&running.path("lake")).is_empty());
}

#[test]
fn time_endpoint_answers_205_with_four_byte_big_endian_time_over_get_and_post() {
    let Some(_) = peer("coap-client-notls") else {
        return;
    };
    let running = Running::start("");
    let uri = format!("coap://{}/t", running.coap);
    for method in ["get", "post"] {
        let (code, payload) = coap_client(method, &uri, None, running.dir.path()).unwrap();
        assert_eq!(code, "2.05", "{method}");
        assert_eq!(payload.len(), 4, "{method}");
        let t = u32::from_be_bytes(payload.try_into().unwrap());
        assert!((i64::from(t) - now()).abs() <= 5, "{method}: {t}");
    }
    let (code, _) = coap_client(
        "get",
        &format!("coap://{}/nope", running.coap),
        None,
        running.dir.path(),
    )
    .unwrap();
    assert_eq!(code, "4.04");
    let (code, _) = coap_client(
        "get",
        &format!("coap://{}/m", running.coap),
        None,
        running.dir.path(),
    )
    .unwrap();
    assert_eq!(code, "4.05", "measurements take POST only");
}

#[test]
fn non_confirmable_measurements_are_stored_and_get_no_answer() {
    let running = Running::start("");
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let seed = vector_bytes("efento", "m00_seed_open_close");
    let answer = udp_exchange(
        &sock,
        running.coap,
        &coap_request(false, POST, 0x0700, &[], "m", &seed),
        Duration::from_millis(1500),
    );
    assert!(answer.is_none(), "a NON request gets no answer: {answer:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while seed_rows(&running.path("lake")).len() < 25 {
        assert!(
            Instant::now() < deadline,
            "NON frame never stored; log:\n{}",
            running.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(seed_rows(&running.path("lake")).len(), 25);
}

#[test]
fn unknown_critical_option_gets_402_unless_configured_as_vendor_option() {
    let seed = vector_bytes("efento", "m00_seed_open_close");
    let token_value: &[u8] = b"cloud-token-1";
    let request = coap_request_with(
        true,
        POST,
        0x0900,
        &[1],
        "m",
        &[(65001, token_value)],
        &seed,
    );
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();

    let strict = Running::start("");
    let answer = udp_exchange(&sock, strict.coap, &request, Duration::from_secs(5)).unwrap();
    assert_eq!(parse_coap(&answer).code, "4.02");
    assert!(seed_rows(&strict.path("lake")).is_empty());

    let lenient = Running::start("vendor_options = [65001]");
    let answer = udp_exchange(&sock, lenient.coap, &request, Duration::from_secs(5)).unwrap();
    assert_eq!(parse_coap(&answer).code, "2.01", "log:\n{}", lenient.log());

    let token = Running::start("cloud_token_option = 65001");
    let answer = udp_exchange(&sock, token.coap, &request, Duration::from_secs(5)).unwrap();
    assert_eq!(parse_coap(&answer).code, "2.01", "log:\n{}", token.log());
}

#[test]
fn overloaded_pipeline_answers_503_with_max_age() {
    // One request may wait at a time: a burst gets 5.03 with Max-Age for the rest.
    let running = Running::start("max_in_flight = 1\nbusy_max_age = \"7s\"");
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let seed = vector_bytes("efento", "m00_seed_open_close");
    for mid in 0..20u16 {
        sock.send_to(
            &coap_request(true, POST, 0x2000 + mid, &[], "m", &seed),
            running.coap,
        )
        .unwrap();
    }
    let mut codes = BTreeMap::new();
    let mut buf = [0u8; 2048];
    for _ in 0..20 {
        let (n, _) = sock
            .recv_from(&mut buf)
            .expect("every request gets an answer");
        let msg = parse_coap(&buf[..n]);
        if msg.code == "5.03" {
            assert!(
                msg.options.iter().any(|(n, v)| *n == 14 && v == &vec![7]),
                "Max-Age 7: {:?}",
                msg.options
            );
        }
        *codes.entry(msg.code).or_insert(0) += 1;
    }
    assert!(codes.get("5.03").copied().unwrap_or(0) > 0, "{codes:?}");
    assert!(codes.get("2.01").copied().unwrap_or(0) > 0, "{codes:?}");
}

#[test]
fn device_info_and_configuration_frames_are_acknowledged_and_stored_as_one_row_each() {
    let running = Running::start("");
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let info = vector_bytes("efento", "i00_seed_device_info");
    let config = vector_bytes("efento", "c00_seed_configuration");
    assert_eq!(
        con_post(&sock, running.coap, 0x0201, &[1], "i", &info).code,
        "2.01"
    );
    assert_eq!(
        con_post(&sock, running.coap, 0x0202, &[2], "c", &config).code,
        "2.01"
    );

    let Some(python) = python() else { return };
    let script = r#"
import duckdb, json, sys
rows = duckdb.sql(f"""select device, kind, key, text from read_parquet('{sys.argv[1]}/**/*.parquet', hive_partitioning=true)
                      order by kind""").fetchall()
for device, kind, key, text in rows:
    doc = json.loads(text)
    print(device, kind, key, doc.get("sw_version", doc.get("transmission_interval")))
"#;
    assert_eq!(
        python_on_lake(&python, script, &running.path("lake")),
        "282C0240FD34 config config 120\n282C024156AF device_info device_info 1546"
    );
}

#[test]
fn random_datagrams_never_stop_the_server() {
    let running = Running::start("");
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    // A deterministic stream of junk: random bytes, truncated headers, wild option deltas, bad versions.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let seed = vector_bytes("efento", "m00_seed_open_close");
    for i in 0..3000u32 {
        let len = (next() % 80) as usize;
        let mut junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 3 == 0 && len >= 4 {
            junk[0] = 0x40 | (junk[0] & 0x0F); // version 1 CON, random everything else
        }
        if i % 5 == 0 {
            junk = coap_request(
                i % 2 == 0,
                0x02,
                i as u16,
                &[],
                "m",
                &seed[..(i as usize % seed.len())],
            );
        }
        sock.send_to(&junk, running.coap).unwrap();
    }
    // Drain whatever came back, then check the server still does its job.
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 2048];
    while sock.recv_from(&mut buf).is_ok() {}
    let answer = con_post(&sock, running.coap, 0xfff0, &[9], "m", &seed);
    assert_eq!(answer.code, "2.01", "log:\n{}", running.log());
    assert!(!running.log().contains("panicked"), "{}", running.log());
}

#[test]
fn sinks_slower_than_the_ack_deadline_get_500_not_a_late_201() {
    let dir = tempfile::tempdir().unwrap();
    let running = Running::start_in(dir, "ack_deadline = \"300ms\"", "2s");
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let seed = vector_bytes("efento", "m00_seed_open_close");
    let started = Instant::now();
    let msg = con_post(&sock, running.coap, 0x0a0a, &[], "m", &seed);
    assert_eq!(msg.code, "5.00");
    assert!(String::from_utf8_lossy(&msg.payload).contains("deadline"));
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "answered at the deadline"
    );
}

#[test]
fn sigterm_under_load_keeps_every_acknowledged_frame_in_readable_parquet() {
    let mut running = Running::start("");
    let lake = running.path("lake");
    let target = running.coap.to_string();
    let lake_arg = lake.display().to_string();
    let load = std::thread::spawn(move || {
        sensorgate()
            .args([
                "loadgen",
                "coap",
                "--target",
                &target,
                "--devices",
                "64",
                "--sockets",
                "8",
                "--duration",
                "4s",
                "--timeout",
                "1s",
                "--quiet",
                "--json",
                "--verify",
                &lake_arg,
            ])
            .output()
            .unwrap()
    });
    std::thread::sleep(Duration::from_millis(1500));
    let status = running.terminate();
    assert!(
        status.success(),
        "clean exit on SIGTERM; log:\n{}",
        running.log()
    );
    let out = load.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    let verified = &summary["verified"];
    assert!(summary["created"].as_u64().unwrap() > 100, "{summary}");
    assert_eq!(verified["missing"], 0, "{summary}");
    assert_eq!(
        verified["acked_frames"], verified["stored_frames"],
        "{summary}"
    );
    // Every file that looks finished is a readable Parquet file (parquet_rows panics otherwise), and
    // whatever temp file exists is hidden and named as one.
    assert!(!parquet_rows(&lake).is_empty());
    for dir in std::fs::read_dir(&lake).unwrap().flatten() {
        for f in std::fs::read_dir(dir.path()).unwrap().flatten() {
            let name = f.file_name().to_string_lossy().to_string();
            assert!(
                name.ends_with(".parquet") && !name.starts_with('.')
                    || name.starts_with('.') && name.ends_with(".tmp"),
                "unexpected file {name}"
            );
        }
    }
}
