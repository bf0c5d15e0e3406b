use prost::Message as _;
use serde_json::{Value, json};

use super::measurements::{BinaryPoint, effective_factor, expand_binary};
use super::proto::{MeasurementType, ProtoChannel, ProtoConfig, ProtoMeasurements};
use super::*;

/// The public seed `/m` frame (vector m00).
const SEED_M: &str =
    "0a06282c024156af10011814220d080510e0f7e1a7062a0301c10728acffe1a7063014380c40014877820100";

fn seed() -> Vec<u8> {
    hex::decode(SEED_M).unwrap()
}

fn frame(base: u32, factor: u32, channels: Vec<ProtoChannel>) -> ProtoMeasurements {
    ProtoMeasurements {
        serial_number: vec![0x28, 0x2C, 0x02, 0x41, 0x56, 0xAF],
        battery_status: true,
        measurement_period_base: base,
        measurement_period_factor: factor,
        channels,
        ..Default::default()
    }
}

fn channel(ty: MeasurementType, timestamp: i32, start: i32, offsets: &[i32]) -> ProtoChannel {
    ProtoChannel {
        r#type: ty as i32,
        timestamp,
        start_point: start,
        sample_offsets: offsets.to_vec(),
    }
}

fn measurements_of(f: &ProtoMeasurements) -> Vec<Value> {
    let d = decode(Message::Measurements, &f.encode_to_vec()).unwrap();
    d.document()["measurements"].as_array().unwrap().clone()
}

fn ts_values(rows: &[Value]) -> Vec<(i64, Value)> {
    rows.iter()
        .map(|r| (r["ts"].as_i64().unwrap(), r["value"].clone()))
        .collect()
}

#[test]
fn seed_frame_gives_25_ok_rows_every_20_s() {
    let d = decode(Message::Measurements, &seed()).unwrap();
    assert_eq!(d.serial, "282C024156AF");
    assert_eq!(d.kind, Kind::Measurements);
    let doc = d.document();
    let rows = doc["measurements"].as_array().unwrap();
    assert_eq!(rows.len(), 25);
    for (k, row) in rows.iter().enumerate() {
        assert_eq!(row["ts"], json!(1_694_006_240 + 20 * k as i64));
        assert_eq!(row["value"], "ok");
        assert_eq!(row["unit"], Value::Null);
        assert_eq!(row["channel"], 1);
    }
    assert_eq!(d.body["signal"], 12);
    assert_eq!(d.body["extra"]["transfer_reason_decoded"]["retries"], 2);
    assert_eq!(
        d.body["extra"]["transfer_reason_decoded"]["bluetooth"],
        true
    );
    // The explicit empty cloud token (82 01 00) is not reported.
    assert!(d.body.get("cloud_token").is_none());
}

#[test]
fn sint32_fields_are_zigzag_and_negative_values_scale() {
    // A negative sint32 is a small zigzag varint on the wire: -1 → 0x01, -53 → 105 (0x69).
    let ch = channel(
        MeasurementType::Temperature,
        1_736_935_200,
        -53,
        &[0, 5, -8],
    );
    let bytes = ch.encode_to_vec();
    assert!(bytes.windows(2).any(|w| w == [0x20, 0x69]), "{bytes:02x?}");
    let rows = measurements_of(&frame(60, 5, vec![ch]));
    let raws: Vec<i64> = rows.iter().map(|r| r["raw"].as_i64().unwrap()).collect();
    assert_eq!(raws, vec![-53, -48, -61]);
    let values: Vec<f64> = rows.iter().map(|r| r["value"].as_f64().unwrap()).collect();
    assert_eq!(values, vec![-5.3, -4.8, -6.1]);
    assert_eq!(rows[1]["ts"], 1_736_935_200 + 300);
    assert_eq!(rows[0]["unit"], "degC");
}

#[test]
fn negative_meta_values_keep_their_sign_and_remainder() {
    // Water major: value = |raw| div 4 (sign restored), meta = |raw| mod 4.
    let ch = channel(MeasurementType::WaterMeterAccMajor, 1000, 0, &[-9, 9]);
    let rows = measurements_of(&frame(60, 1, vec![ch]));
    assert_eq!(rows[0]["value"], -2);
    assert_eq!(rows[0]["meta"], 1);
    assert_eq!(rows[1]["value"], 2);
    assert_eq!(rows[1]["meta"], 1);
    assert_eq!(rows[1]["unit"], "hl");
}

#[test]
fn offsets_just_outside_the_error_range_are_values() {
    let ch = channel(
        MeasurementType::PulseCnt,
        1000,
        0,
        &[8_355_839, 8_355_840, 8_388_607, 8_388_608],
    );
    let rows = measurements_of(&frame(60, 1, vec![ch]));
    assert_eq!(rows[0]["value"], 8_355_839);
    assert_eq!(rows[1]["value"], Value::Null);
    assert_eq!(rows[1]["error_code"], 8_355_840);
    assert!(rows[1].get("raw").is_none());
    assert_eq!(rows[2]["error_code"], 8_388_607);
    assert_eq!(rows[3]["value"], 8_388_608);
}

#[test]
fn merged_binary_expansion_keeps_off_grid_changes() {
    // Vector m08's channel: ok, alarm at +699, ok at +1499, end at +1680, grid step 60.
    let mut budget = 1000;
    let points = expand_binary(1_738_400_000, 60, &[-1, 700, -1500, -1681], &mut budget).unwrap();
    assert_eq!(points.len(), 31);
    assert_eq!(budget, 1000 - 31);
    let at = |ts: i64| points.iter().find(|p| p.ts == 1_738_400_000 + ts).copied();
    assert_eq!(at(660).map(|p| p.positive), Some(false));
    assert_eq!(at(699).map(|p| p.positive), Some(true)); // off-grid change
    assert_eq!(at(720).map(|p| p.positive), Some(true));
    assert_eq!(at(1499).map(|p| p.positive), Some(false)); // off-grid change
    assert_eq!(at(1680).map(|p| p.positive), Some(false));
    assert!(points.windows(2).all(|w| w[0].ts < w[1].ts));
}

#[test]
fn binary_range_shorter_than_the_step_gives_the_events() {
    // The .proto example: [1, -9, 13] with a 60 s step → alarm, ok at +8, alarm at +12.
    let mut budget = 100;
    let points = expand_binary(1_606_391_700, 60, &[1, -9, 13], &mut budget).unwrap();
    let expected = [(0, true), (8, false), (12, true)].map(|(dt, positive)| BinaryPoint {
        ts: 1_606_391_700 + dt,
        positive,
    });
    assert_eq!(points, expected);
}

#[test]
fn binary_grid_points_before_the_first_event_are_skipped_and_unsorted_events_are_ordered() {
    let mut budget = 100;
    // Events at +30 (alarm) and +5 (ok), given out of order; step 10.
    let points = expand_binary(100, 10, &[31, -6], &mut budget).unwrap();
    let got: Vec<(i64, bool)> = points.iter().map(|p| (p.ts, p.positive)).collect();
    assert_eq!(
        got,
        vec![(105, false), (110, false), (120, false), (130, true)]
    );
}

#[test]
fn binary_channel_with_zero_base_gives_one_row_per_event() {
    let mut budget = 100;
    let points = expand_binary(100, 0, &[-1, 5, -9], &mut budget).unwrap();
    let got: Vec<i64> = points.iter().map(|p| p.ts).collect();
    assert_eq!(got, vec![100, 104, 108]);
}

#[test]
fn factor_zero_means_14_with_a_binary_channel_and_1_without() {
    let temp = channel(MeasurementType::Temperature, 1000, 200, &[0, 1]);
    let flood = channel(MeasurementType::Flooding, 1000, 0, &[-1, -61]);
    assert_eq!(effective_factor(0, std::slice::from_ref(&temp)), 1);
    assert_eq!(effective_factor(0, &[temp.clone(), flood.clone()]), 14);
    assert_eq!(effective_factor(3, &[temp.clone(), flood.clone()]), 3);

    let d = decode(
        Message::Measurements,
        &frame(60, 0, vec![temp.clone(), flood]).encode_to_vec(),
    )
    .unwrap();
    assert_eq!(d.body["measurement_period_s"], 840);
    assert_eq!(d.body["extra"]["effective_factor"], 14);
    let doc = d.document();
    let rows = doc["measurements"].as_array().unwrap();
    assert_eq!(rows[1]["ts"], 1000 + 840); // continuous step base*14
    assert_eq!(rows[3]["ts"], 1000 + 60); // binary step base
    assert_eq!(rows[3]["value"], "no_water");

    let d = decode(
        Message::Measurements,
        &frame(60, 0, vec![temp]).encode_to_vec(),
    )
    .unwrap();
    assert_eq!(d.body["measurement_period_s"], 60);
}

#[test]
fn unpacked_sample_offsets_are_accepted() {
    // ProtoChannel with type 1, timestamp 1000, start 100 and offsets 0, -1, 2 as separate varints (wire
    // type 0, tag 0x28) instead of one packed field.
    let mut ch = vec![0x08, 0x01, 0x10, 0xE8, 0x07, 0x20, 0xC8, 0x01];
    ch.extend_from_slice(&[0x28, 0x00, 0x28, 0x01, 0x28, 0x04]);
    let mut payload = vec![
        0x0A, 0x06, 0x28, 0x2C, 0x02, 0x41, 0x56, 0xAF, 0x18, 0x3C, 0x40, 0x01,
    ];
    payload.push(0x22);
    payload.push(ch.len() as u8);
    payload.extend_from_slice(&ch);
    let d = decode(Message::Measurements, &payload).unwrap();
    let doc = d.document();
    let rows = doc["measurements"].as_array().unwrap();
    assert_eq!(
        ts_values(rows),
        vec![(1000, json!(10.0)), (1060, json!(9.9)), (1120, json!(10.2))]
    );
}

#[test]
fn empty_slots_keep_their_channel_number_and_give_no_rows() {
    let f = frame(
        60,
        1,
        vec![
            ProtoChannel::default(),
            channel(MeasurementType::Humidity, 1000, 50, &[0]),
        ],
    );
    let rows = measurements_of(&f);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["channel"], 2);
    assert_eq!(rows[0]["value"], 50);
}

#[test]
fn unknown_type_numbers_keep_raw_values() {
    let mut ch = channel(MeasurementType::Temperature, 1000, 7, &[1]);
    ch.r#type = 99;
    let rows = measurements_of(&frame(60, 1, vec![ch]));
    assert_eq!(rows[0]["type"], "unknown");
    assert_eq!(rows[0]["type_code"], 99);
    assert_eq!(rows[0]["value"], 8);
    assert_eq!(rows[0]["unit"], Value::Null);
}

#[test]
fn garbage_bytes_are_decode_errors_not_panics() {
    for bad in [
        &[0xFF_u8; 12][..],
        &[0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F],
        b"hello, world",
        &[0x22, 0x05, 0x08],
    ] {
        for m in [
            Message::Measurements,
            Message::DeviceInfo,
            Message::Configuration,
        ] {
            assert!(decode(m, bad).is_err(), "{m:?} {bad:02x?}");
        }
    }
    // Pseudo-random inputs: whatever they decode to, nothing panics.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for len in 0..3000 {
        let bytes: Vec<u8> = (0..len % 97)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for m in [
            Message::Measurements,
            Message::DeviceInfo,
            Message::Configuration,
        ] {
            let _ = decode(m, &bytes);
        }
        let _ = response_to_json(&bytes);
    }
}

#[test]
fn empty_payload_has_no_serial() {
    let err = decode(Message::Measurements, &[]).unwrap_err();
    assert!(matches!(err, DecodeError::MissingSerial { .. }), "{err}");
}

#[test]
fn serial_of_wrong_length_is_refused() {
    let mut f = frame(60, 1, vec![]);
    f.serial_number = vec![1, 2, 3];
    let err = decode(Message::Measurements, &f.encode_to_vec()).unwrap_err();
    assert!(
        matches!(err, DecodeError::BadSerial { len: 3, .. }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "Efento measurements frame has a 3-byte serial number, expected 6"
    );
}

#[test]
fn truncated_frame_is_an_error() {
    let full = seed();
    // Cut inside the trailing cloud token field (82 01 | 00) and inside the channel.
    let err = decode(Message::Measurements, &full[..full.len() - 1]).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("not an Efento measurements frame: "),
        "{err}"
    );
    assert!(decode(Message::Measurements, &full[..20]).is_err());
    // Every prefix decodes or fails, none panics.
    for n in 0..full.len() {
        let _ = decode(Message::Measurements, &full[..n]);
    }
}

#[test]
fn huge_binary_range_is_refused_without_allocating_it() {
    let ch = channel(MeasurementType::OkAlarm, 0, 0, &[-1, i32::MAX]);
    let f = frame(1, 1, vec![ch]);
    let err = decode(Message::Measurements, &f.encode_to_vec()).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::TooManyPoints {
                channel: 1,
                limit: MAX_BINARY_POINTS
            }
        ),
        "{err}"
    );
    // The budget is shared by all binary channels of a frame.
    let half = channel(MeasurementType::OkAlarm, 0, 0, &[-1, -30_000]);
    let f = frame(1, 1, vec![half.clone(), half]);
    let err = decode(Message::Measurements, &f.encode_to_vec()).unwrap_err();
    assert!(
        matches!(err, DecodeError::TooManyPoints { channel: 2, .. }),
        "{err}"
    );
}

#[test]
fn huge_periods_are_an_error_not_an_overflow() {
    let ch = channel(MeasurementType::Temperature, i32::MAX, 0, &[0, 1, 2]);
    let f = frame(u32::MAX, u32::MAX, vec![ch]);
    let err = decode(Message::Measurements, &f.encode_to_vec()).unwrap_err();
    assert!(
        matches!(err, DecodeError::TimeOutOfRange { channel: 1 }),
        "{err}"
    );
}

#[test]
fn battery_level_gives_voltage_and_power_source() {
    let mut f = frame(60, 1, vec![]);
    f.battery_level = 2474;
    f.cloud_token = "token".into();
    let d = decode(Message::Measurements, &f.encode_to_vec()).unwrap();
    assert_eq!(
        d.body["battery_level"],
        json!({"raw": 2474, "voltage_v": 4.12, "power_source": "external"})
    );
    assert_eq!(d.body["cloud_token"], "token");
    f.battery_level = 65_526;
    let d = decode(Message::Measurements, &f.encode_to_vec()).unwrap();
    assert_eq!(d.body["battery_level"]["voltage_v"], Value::Null);
    assert_eq!(d.body["battery_level"]["power_source"], "battery");
}

#[test]
fn next_transmission_absent_is_null() {
    let d = decode(Message::Measurements, &frame(60, 1, vec![]).encode_to_vec()).unwrap();
    assert_eq!(d.body["next_transmission_at"], Value::Null);
    assert_eq!(d.document()["measurements"], json!([]));
    assert!(d.readings.is_empty());
}

#[test]
fn ack_with_device_info_request_matches_efento_sample_bytes() {
    let pending = ProtoConfig {
        device_info_request: true,
        ..Default::default()
    };
    assert_eq!(
        hex::encode(encode_ack(1_736_935_260, Some(&pending))),
        "300140dc8e9ebc06"
    );
    assert_eq!(hex::encode(encode_ack(1_736_935_260, None)), "40dc8e9ebc06");
}

#[test]
fn ack_does_not_echo_device_only_fields() {
    let pending = ProtoConfig {
        serial_number: vec![1, 2, 3, 4, 5, 6],
        configuration_hash: 7,
        transmission_interval: 600,
        current_time: 5,
        ..Default::default()
    };
    let back = ProtoConfig::decode(&encode_ack(99, Some(&pending))[..]).unwrap();
    assert_eq!(
        back,
        ProtoConfig {
            transmission_interval: 600,
            current_time: 99,
            ..Default::default()
        }
    );
}

#[test]
fn time_payload_is_big_endian() {
    assert_eq!(time_payload(1_736_935_260), [0x67, 0x87, 0x87, 0x5C]);
}

#[test]
fn routes_map_to_messages() {
    assert_eq!(Message::from_route("m"), Some(Message::Measurements));
    assert_eq!(
        Message::from_route("measurements"),
        Some(Message::Measurements)
    );
    assert_eq!(Message::from_route("i"), Some(Message::DeviceInfo));
    assert_eq!(
        Message::from_route("device_info"),
        Some(Message::DeviceInfo)
    );
    assert_eq!(Message::from_route("c"), Some(Message::Configuration));
    assert_eq!(
        Message::from_route("configuration"),
        Some(Message::Configuration)
    );
    assert_eq!(Message::from_route("t"), None);
    assert_eq!(Message::from_route("M"), None);
}

#[test]
fn decode_hex_accepts_spaces_and_rejects_bad_input() {
    let spaced: String = SEED_M
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(" ");
    let v = decode_hex("m", &spaced).unwrap();
    assert_eq!(v["serial"], "282C024156AF");
    assert_eq!(
        decode_hex("resp", "98 01 01").unwrap(),
        json!({"configuration_request": true})
    );
    assert!(matches!(decode_hex("m", "0g"), Err(DecodeError::Hex(_))));
    assert!(matches!(
        decode_hex("x", "00"),
        Err(DecodeError::UnknownPath(_))
    ));
}

#[test]
fn device_info_renders_serial_as_hex_and_version_string() {
    let info = super::proto::ProtoDeviceInfo {
        serial_number: vec![0x28, 0x2C, 0x02, 0x41, 0x56, 0xAF],
        sw_version: 0x0702,
        ..Default::default()
    };
    let d = decode(Message::DeviceInfo, &info.encode_to_vec()).unwrap();
    assert_eq!(d.kind, Kind::DeviceInfo);
    assert_eq!(
        Value::Object(d.body),
        json!({"serial_number": "282C024156AF", "sw_version": 1794,
               "derived": {"sw_version_str": "07.02"}})
    );
    assert_eq!(sw_version_str(1546), "06.10");
}

#[test]
fn unknown_enum_values_render_as_numbers() {
    let cfg = ProtoConfig {
        serial_number: vec![0; 6],
        channel_types: vec![1, 77],
        ..Default::default()
    };
    let d = decode(Message::Configuration, &cfg.encode_to_vec()).unwrap();
    assert_eq!(d.kind, Kind::Config);
    assert_eq!(
        d.body["channel_types"],
        json!(["MEASUREMENT_TYPE_TEMPERATURE", 77])
    );
}
