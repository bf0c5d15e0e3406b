//! The dedupe stage's Redis backend against a real redis-server started here on a free port: the
//! claim protocol between two stages (as two instances would run them), and two `sensorgate run`
//! processes behind one Redis answering the same Efento frame once.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use sensorgate::config::HumanDuration;
use sensorgate::record::{Delivery, DeliveryWatch, Origin, Outcome, Record};
use sensorgate::stages::Stage;
use sensorgate::stages::dedupe::redis::{OnError, RedisConfig};
use sensorgate::stages::dedupe::{Backend, DedupeConfig, DedupeStage};

/// A redis-server of our own, killed when dropped.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Option<Redis> {
        let program = peer("redis-server")?;
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(program)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let redis = Redis { child, port };
        let client = redis::Client::open(redis.url()).unwrap();
        let ready = eventually(Duration::from_secs(10), || {
            client
                .get_connection()
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
        });
        assert!(ready, "redis-server did not start on port {port}");
        Some(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn get(&self, key: &str) -> Option<String> {
        let client = redis::Client::open(self.url()).unwrap();
        let mut c = client.get_connection().unwrap();
        redis::cmd("GET").arg(key).query(&mut c).unwrap()
    }

    fn keys(&self, pattern: &str) -> Vec<String> {
        let client = redis::Client::open(self.url()).unwrap();
        let mut c = client.get_connection().unwrap();
        redis::cmd("KEYS").arg(pattern).query(&mut c).unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(url: &str, prefix: &str, on_error: OnError) -> DedupeConfig {
    DedupeConfig {
        key: "{raw}".into(),
        window: HumanDuration(Duration::from_secs(60)),
        max_entries: 1000,
        merge: HumanDuration(Duration::ZERO),
        backend: Backend::Redis,
        redis: Some(RedisConfig {
            url: url.into(),
            prefix: prefix.into(),
            timeout: HumanDuration(Duration::from_millis(300)),
            on_error,
        }),
    }
}

fn watched(raw: &'static [u8]) -> (Record, DeliveryWatch) {
    let (delivery, watch) = Delivery::new();
    let record = Record::new(
        "s".into(),
        Origin::default(),
        Bytes::from_static(raw),
        delivery,
    );
    (record, watch)
}

fn detached(raw: &'static [u8]) -> Record {
    Record::new(
        "s".into(),
        Origin::default(),
        Bytes::from_static(raw),
        Delivery::detached(),
    )
}

/// What the flow runner does with a batch: the stage's lookup, then each record.
async fn run(stage: &mut DedupeStage, batch: Vec<Record>) -> Vec<Record> {
    if let Some(prepare) = stage.prepare(&batch) {
        prepare.await;
    }
    let mut out = Vec::new();
    for record in batch {
        stage.process(record, &mut out);
    }
    out
}

async fn wait_for(redis: &Redis, key_pattern: &str, value: Option<&str>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let keys = redis.keys(key_pattern);
        let now = keys.first().and_then(|k| redis.get(k));
        if now.as_deref() == value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{key_pattern}: still {now:?}, expected {value:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_agree_through_redis_and_a_failed_first_copy_is_released() {
    let Some(redis) = Redis::start() else { return };
    let prefix = "test:claims:";
    let mut a = DedupeStage::new("f", &config(&redis.url(), prefix, OnError::Pass));
    let mut b = DedupeStage::new("f", &config(&redis.url(), prefix, OnError::Pass));

    // A claims the item; it is on its way (pending) while B sees copies.
    let (first, mut first_watch) = watched(b"item-1");
    let mut passed = run(&mut a, vec![first]).await;
    assert_eq!(passed.len(), 1, "the first copy passes");
    let (copy, mut copy_watch) = watched(b"item-1");
    let gateway_copy = detached(b"item-1");
    assert!(run(&mut b, vec![copy, gateway_copy]).await.is_empty());
    match copy_watch.try_recv() {
        Ok(Outcome::Failed { reason }) => assert!(reason.contains("another instance"), "{reason}"),
        other => panic!("a waiting sender must not hear 'stored' yet: {other:?}"),
    }

    // Stored by A: the key says so, and B answers a later copy "stored" (dropped, delivered).
    passed.pop().unwrap().delivery.delivered();
    assert!(matches!(
        first_watch.try_recv(),
        Ok(Outcome::Delivered { .. })
    ));
    wait_for(&redis, "test:claims:f:*", Some("d")).await;
    let (later, mut later_watch) = watched(b"item-1");
    assert!(run(&mut b, vec![later]).await.is_empty());
    assert!(matches!(
        later_watch.try_recv(),
        Ok(Outcome::Delivered { .. })
    ));

    // A second item fails in A: its claim is released, and B stores the sender's retry.
    let (second, _) = watched(b"item-2");
    let mut passed = run(&mut a, vec![second]).await;
    assert_eq!(redis.keys("test:claims:f:*").len(), 2, "claimed");
    passed.pop().unwrap().delivery.failed("disk full");
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.keys("test:claims:f:*").len() != 1 {
        assert!(
            Instant::now() < deadline,
            "the failed claim was not released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (retry, _) = watched(b"item-2");
    assert_eq!(
        run(&mut b, vec![retry]).await.len(),
        1,
        "the retry is stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_passes_records_or_fails_them_as_configured() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut pass = DedupeStage::new("f-pass", &config(&url, "x:", OnError::Pass));
    let (r, _) = watched(b"item");
    assert_eq!(run(&mut pass, vec![r]).await.len(), 1, "at least once");

    let mut fail = DedupeStage::new("f-fail", &config(&url, "x:", OnError::Fail));
    let (r, mut watch) = watched(b"item");
    assert!(run(&mut fail, vec![r]).await.is_empty());
    match watch.try_recv() {
        Ok(Outcome::Failed { reason }) => {
            assert!(reason.contains("dedupe store unavailable"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn two_sensorgate_processes_behind_one_redis_store_a_retried_frame_once() {
    let Some(redis) = Redis::start() else { return };
    peer("coap-client-notls").expect("coap-client-notls");
    let pipeline = format!(
        r#"
[sources.efento]
type = "coap"
listen = "127.0.0.1:@PORT@"

[sinks.out]
type = "json_lines"
path = "out.jsonl"

[[flows]]
name = "efento"
from = ["efento"]
stages = [
  {{ type = "dedupe", key = "efento", window = "1m", backend = "redis", redis = {{ url = "{}" }} }},
  {{ type = "decode", codec = "efento" }},
]
to = ["out"]
"#,
        redis.url()
    );
    let a = Running::start_pipeline(tempfile::tempdir().unwrap(), &pipeline);
    let b = Running::start_pipeline(tempfile::tempdir().unwrap(), &pipeline);
    let seed = vector_bytes("efento", "m00_seed_open_close");
    let post = |running: &Running, payload: &[u8]| {
        let uri = format!("coap://{}/m", running.coap);
        coap_client("post", &uri, Some(payload), running.dir.path())
            .unwrap()
            .0
    };
    assert_eq!(post(&a, &seed), "2.01", "log:\n{}", a.log());
    // The sensor's retry reaches the other instance (a load balancer in front of both). A's claim
    // turns from "pending" to "done" in Redis just after its answer: a retry that lands in between
    // is told 5.00 (not stored: send again), as a sensor would be, and the next one gets 2.01.
    assert!(
        eventually(Duration::from_secs(5), || post(&b, &seed) == "2.01"),
        "log:\n{}",
        b.log()
    );
    assert_eq!(json_lines(&a.path("out.jsonl")).len(), 1);
    assert_eq!(
        json_lines(&b.path("out.jsonl")).len(),
        0,
        "stored once, by A"
    );
    // And B stores new data itself.
    let other = vector_bytes("efento", "m01_temp_humidity_negative");
    assert_eq!(post(&b, &other), "2.01");
    assert_eq!(json_lines(&b.path("out.jsonl")).len(), 1);
    assert_eq!(redis.keys("sensorgate:dedupe:efento:*").len(), 2);
}
