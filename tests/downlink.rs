//! The library side of downlinks: a configuration change queued for a serial travels in the 2.01 of
//! that device's next confirmable request, exactly once, next to current_time.

mod common;

use std::net::UdpSocket;

use common::*;
use prost::Message as _;
use sensorgate::codecs::efento::proto::ProtoConfig;
use sensorgate::downlink::Status;
use sensorgate::topology::Pipeline;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_configuration_rides_in_the_next_ack_of_that_device_only_once() {
    let dir = tempfile::tempdir().unwrap();
    let toml = pipeline_toml(0, "", "50ms").replace(
        "path = \"lake\"",
        &format!("path = \"{}\"", dir.path().join("lake").display()),
    );
    let toml = toml.replace(
        "path = \"rejects.jsonl\"",
        &format!("path = \"{}\"", dir.path().join("rejects.jsonl").display()),
    );
    let (config, _) = sensorgate::config::load_str("test.toml", &toml, &|_| None).unwrap();
    let pipeline = Pipeline::start(config).await.unwrap();
    let addr = pipeline.local_addr("efento").unwrap();

    let id = pipeline.downlinks().enqueue(
        "282c024156af",
        ProtoConfig {
            transmission_interval: 600,
            device_info_request: true,
            ..Default::default()
        },
    );
    assert!(pipeline.downlinks().is_pending("282C024156AF"));
    let status = |id| pipeline.downlinks().change(id).unwrap().status;
    assert_eq!(status(id), Status::Pending);

    let seed = vector_bytes("efento", "m00_seed_open_close");
    let other = vector_bytes("efento", "m01_temp_humidity_negative");
    let exchange = move |mid: u16, payload: Vec<u8>| {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let msg = con_post(&sock, addr, mid, &[1], "m", &payload);
        assert_eq!(msg.code, "2.01");
        ProtoConfig::decode(msg.payload.as_slice()).unwrap()
    };

    // Another device's ACK carries only the time.
    let o = other.clone();
    let ack = tokio::task::spawn_blocking(move || exchange(1, o))
        .await
        .unwrap();
    assert_eq!(ack.transmission_interval, 0);
    assert!(ack.current_time > 0);

    let s = seed.clone();
    let ack = tokio::task::spawn_blocking(move || exchange(2, s))
        .await
        .unwrap();
    assert_eq!(ack.transmission_interval, 600);
    assert!(ack.device_info_request);
    assert!(ack.current_time > 0);
    assert!(!pipeline.downlinks().is_pending("282C024156AF"));
    assert_eq!(status(id), Status::Sent);

    let ack = tokio::task::spawn_blocking(move || exchange(3, seed))
        .await
        .unwrap();
    assert_eq!(ack.transmission_interval, 0, "delivered once");

    // The device's configuration report: the old interval leaves the change sent, the new one
    // confirms it (the one-shot device_info_request is not part of a report).
    let serial = hex::decode("282C024156AF").unwrap();
    let report = move |mid: u16, interval: u32| {
        let payload = ProtoConfig {
            serial_number: serial.clone(),
            transmission_interval: interval,
            ..Default::default()
        }
        .encode_to_vec();
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        con_post(&sock, addr, mid, &[1], "c", &payload).code
    };
    let r = report.clone();
    let code = tokio::task::spawn_blocking(move || r(4, 300))
        .await
        .unwrap();
    assert_eq!(code, "2.01");
    assert_eq!(status(id), Status::Sent);
    let code = tokio::task::spawn_blocking(move || report(5, 600))
        .await
        .unwrap();
    assert_eq!(code, "2.01");
    let change = pipeline.downlinks().change(id).unwrap();
    assert_eq!(change.status, Status::Confirmed);
    assert_eq!(change.confirmed_by, Some("configuration"));
    pipeline.stop().await.unwrap();
}
