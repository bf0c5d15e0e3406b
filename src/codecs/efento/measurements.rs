//! The measurements frame (`/m`, ProtoMeasurements) turned into the measurements document
//! (fact sheet sections 3.1, 3.2, 3.3 and 4.1 to 4.4).

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::proto::{ProtoChannel, ProtoMeasurements};
use super::types::{Scale, TypeInfo, measurement_type};
use super::{DecodeError, MAX_BINARY_POINTS};
use crate::record::{Reading, ReadingValue};

/// First sample offset of the sensor error range (section 4.2, 0x7F8000).
pub const ERROR_CODE_MIN: i32 = 8_355_840;
/// Last sample offset of the sensor error range (section 4.2, 0x7FFFFF).
pub const ERROR_CODE_MAX: i32 = 8_388_607;

/// Effective measurement period factor (section 4.1): the frame's factor when non-zero; otherwise (5.xx
/// firmware) 14 when any channel is binary and 1 when all channels are continuous.
pub fn effective_factor(factor: u32, channels: &[ProtoChannel]) -> u32 {
    if factor != 0 {
        factor
    } else if channels
        .iter()
        .any(|ch| measurement_type(ch.r#type).is_some_and(TypeInfo::is_binary))
    {
        14
    } else {
        1
    }
}

/// One point of an expanded binary channel (section 4.3): unix time and whether the state is the positive
/// one (alarm, water detected, on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BinaryPoint {
    pub ts: i64,
    pub positive: bool,
}

/// The binary channel would expand to more points than the remaining budget allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooManyPoints;

/// The merged expansion of a binary channel (section 4.3).
///
/// Every non-zero offset `o` is an event at `timestamp + |o| - 1` with state `o > 0`. The points are the grid
/// `timestamp + k * step` up to the last event, united with the exact event times; each point takes the state of
/// the latest event at or before it, and points before the first event are skipped. Events at the same time keep
/// their order in the frame (the later one wins). A `step` of 0 has no grid, so only the event times are used.
/// `budget` is the number of points still allowed for this frame; it is reduced by the points produced.
pub(crate) fn expand_binary(
    timestamp: i32,
    step: u32,
    offsets: &[i32],
    budget: &mut usize,
) -> Result<Vec<BinaryPoint>, TooManyPoints> {
    let t0 = i64::from(timestamp);
    let mut events: Vec<BinaryPoint> = offsets
        .iter()
        .filter(|&&o| o != 0)
        .map(|&o| BinaryPoint {
            ts: t0 + i64::from(o).abs() - 1,
            positive: o > 0,
        })
        .collect();
    let Some(last) = events.iter().map(|e| e.ts).max() else {
        return Ok(Vec::new());
    };
    if !events.is_sorted_by_key(|e| e.ts) {
        events.sort_by_key(|e| e.ts); // stable: equal times keep frame order
    }
    // last >= t0 because every |o| >= 1, so the span is never negative.
    let span = u64::try_from(last - t0).unwrap_or(0);
    let grid_points = if step == 0 {
        0
    } else {
        span / u64::from(step) + 1
    };
    let upper_bound = grid_points.saturating_add(events.len() as u64);
    if upper_bound > *budget as u64 {
        return Err(TooManyPoints);
    }
    let mut points = Vec::with_capacity(upper_bound as usize);
    let mut next_event = 0;
    let mut k = 0u64;
    let mut state: Option<bool> = None;
    loop {
        let grid_t = (k < grid_points).then(|| t0 + (k * u64::from(step)) as i64);
        let event_t = events.get(next_event).map(|e| e.ts);
        let t = match (grid_t, event_t) {
            (Some(g), Some(e)) => g.min(e),
            (Some(g), None) => g,
            (None, Some(e)) => e,
            (None, None) => break,
        };
        while let Some(e) = events.get(next_event).filter(|e| e.ts <= t) {
            state = Some(e.positive);
            next_event += 1;
        }
        if grid_t == Some(t) {
            k += 1;
        }
        if let Some(positive) = state {
            points.push(BinaryPoint { ts: t, positive });
        }
    }
    *budget -= points.len();
    Ok(points)
}

/// Decodes a `/m` payload into the measurements document (see [`super::decode`]).
pub(crate) fn decode(payload: &[u8]) -> Result<super::Decoded, DecodeError> {
    use prost::Message as _;
    let frame = ProtoMeasurements::decode(payload).map_err(|cause| DecodeError::Protobuf {
        message: super::Message::Measurements,
        cause,
    })?;
    let serial = super::serial_hex(&frame.serial_number, super::Message::Measurements)?;
    let base = frame.measurement_period_base;
    let factor = effective_factor(frame.measurement_period_factor, &frame.channels);
    let period = u64::from(base) * u64::from(factor);
    let readings = rows(&frame, base, period)?;
    let body = document(&frame, &serial, factor, period);
    Ok(super::Decoded {
        serial,
        kind: crate::record::Kind::Measurements,
        body,
        readings,
    })
}

fn key(k: &'static str) -> String {
    String::from(k)
}

/// Builds the measurements document of a decoded frame (sections 3.1 and 4.1 to 4.4).
///
/// The maps are built from key-ordered arrays: collecting sorted entries into a map is cheaper than inserting
/// them one by one.
fn document(
    frame: &ProtoMeasurements,
    serial: &str,
    factor: u32,
    period: u64,
) -> Map<String, Value> {
    let base = frame.measurement_period_base;

    let mut extra: Map<String, Value> = [
        (
            key("configuration_hash"),
            Value::from(frame.configuration_hash),
        ),
        (key("effective_factor"), Value::from(factor)),
        (key("measurement_period_base"), Value::from(base)),
        (
            key("measurement_period_factor"),
            Value::from(frame.measurement_period_factor),
        ),
        (key("transfer_reason"), Value::from(frame.transfer_reason)),
        (
            key("transfer_reason_decoded"),
            transfer_reason(frame.transfer_reason),
        ),
    ]
    .into_iter()
    .collect();
    if frame.extended_configuration_hash != 0 {
        extra.insert(
            key("extended_configuration_hash"),
            Value::from(frame.extended_configuration_hash),
        );
    }

    let next_transmission_at = match frame.next_transmission_at {
        0 => Value::Null,
        t => Value::from(t),
    };
    let mut body: Map<String, Value> = [
        (key("battery_ok"), Value::Bool(frame.battery_status)),
        (key("extra"), Value::Object(extra)),
        (key("measurement_period_s"), Value::from(period)),
        (key("next_transmission_at"), next_transmission_at),
        (key("serial"), Value::String(serial.to_owned())),
        (key("signal"), Value::from(frame.signal)),
    ]
    .into_iter()
    .collect();
    if !frame.cloud_token.is_empty() {
        body.insert(key("cloud_token"), Value::String(frame.cloud_token.clone()));
    }
    if frame.battery_level != 0 {
        body.insert(key("battery_level"), battery_level(frame.battery_level));
    }
    body
}

/// The transfer reason bit mask of section 3.1, field by field.
fn transfer_reason(v: u32) -> Value {
    let bit = |n: u32| Value::Bool(v & (1 << n) != 0);
    let m: Map<String, Value> = [
        (key("before_shutdown"), bit(23)),
        (key("bluetooth"), bit(2)),
        (key("button"), bit(1)),
        (key("enclosure_tamper"), bit(22)),
        (key("first_after_reset"), bit(0)),
        (key("limit_end"), bit(20)),
        (key("pin_tamper"), bit(21)),
        (key("retries"), Value::from((v >> 3) & 0x1F)),
        (key("rules_mask"), Value::from((v >> 8) & 0xFFF)),
    ]
    .into_iter()
    .collect();
    Value::Object(m)
}

/// Field 18 of section 3.1: `level / 6` is the voltage in 0.01 V (65526..=65531: not measured),
/// `level % 6` the power source.
fn battery_level(level: u32) -> Value {
    let mut m = Map::new();
    m.insert(key("raw"), Value::from(level));
    let voltage = if (65_526..=65_531).contains(&level) {
        Value::Null
    } else {
        Value::from(f64::from(level / 6) / 100.0)
    };
    m.insert(key("voltage_v"), voltage);
    let source = match level % 6 {
        0 => "battery",
        1 => "rechargeable",
        2 => "external",
        _ => "reserved",
    };
    m.insert(key("power_source"), Value::String(source.to_owned()));
    Value::Object(m)
}

/// All measurement rows of the frame, sorted by (channel, ts).
fn rows(frame: &ProtoMeasurements, base: u32, period: u64) -> Result<Vec<Reading>, DecodeError> {
    let mut budget = MAX_BINARY_POINTS;
    // Binary channels are expanded first so the row vector can be sized exactly.
    let mut expanded: Vec<Option<Vec<BinaryPoint>>> = Vec::with_capacity(frame.channels.len());
    let mut total = 0usize;
    for (slot, ch) in frame.channels.iter().enumerate() {
        let info = measurement_type(ch.r#type);
        if info.is_some_and(TypeInfo::is_binary) {
            let points = expand_binary(ch.timestamp, base, &ch.sample_offsets, &mut budget)
                .map_err(|TooManyPoints| DecodeError::TooManyPoints {
                    channel: slot + 1,
                    limit: MAX_BINARY_POINTS,
                })?;
            total += points.len();
            expanded.push(Some(points));
        } else {
            if !matches!(info.map(|i| i.scale), Some(Scale::Empty)) {
                total += ch.sample_offsets.len();
            }
            expanded.push(None);
        }
    }

    let mut out = Vec::with_capacity(total);
    for (slot, (ch, points)) in frame.channels.iter().zip(expanded).enumerate() {
        let channel = u32::try_from(slot + 1).unwrap_or(u32::MAX);
        match (measurement_type(ch.r#type), points) {
            (Some(info), Some(points)) => binary(&points, channel, info, &mut out),
            (Some(info), None) if info.scale == Scale::Empty => {}
            (info, _) => continuous(ch, channel, info, period, &mut out)?,
        }
    }
    Ok(out)
}

/// Rows of an expanded binary channel (section 4.3): the state name as the value, unit null.
fn binary(points: &[BinaryPoint], channel: u32, info: &TypeInfo, out: &mut Vec<Reading>) {
    let Scale::Binary { positive, negative } = info.scale else {
        return;
    };
    out.extend(points.iter().map(|p| Reading {
        channel: Some(channel),
        key: Cow::Borrowed(info.name),
        ts: p.ts,
        value: ReadingValue::Text(Cow::Borrowed(if p.positive { positive } else { negative })),
        unit: None,
        raw: None,
        meta: None,
        error_code: None,
        type_code: None,
    }));
}

/// Rows of a continuous channel (section 4.2). `info` is `None` for a type number the table does not know:
/// those rows keep the raw value, `type` "unknown" and the number in `type_code`.
fn continuous(
    ch: &ProtoChannel,
    channel: u32,
    info: Option<&TypeInfo>,
    period: u64,
    out: &mut Vec<Reading>,
) -> Result<(), DecodeError> {
    let (name, scale, unit) = match info {
        Some(i) => (i.name, i.scale, i.unit),
        None => ("unknown", Scale::Divisor(1), None),
    };
    let type_code = info.is_none().then_some(i64::from(ch.r#type));
    let t0 = i128::from(ch.timestamp);
    let start = i64::from(ch.start_point);
    for (i, &off) in ch.sample_offsets.iter().enumerate() {
        let ts = t0 + i as i128 * i128::from(period);
        let ts = i64::try_from(ts).map_err(|_| DecodeError::TimeOutOfRange {
            channel: channel as usize,
        })?;
        let mut reading = Reading {
            channel: Some(channel),
            key: Cow::Borrowed(name),
            ts,
            value: ReadingValue::Null,
            unit: unit.map(Cow::Borrowed),
            raw: None,
            meta: None,
            error_code: None,
            type_code,
        };
        if (ERROR_CODE_MIN..=ERROR_CODE_MAX).contains(&off) {
            // An error keeps its time slot; start_point is not added (section 4.2).
            reading.error_code = Some(i64::from(off));
            out.push(reading);
            continue;
        }
        let raw = start + i64::from(off);
        reading.raw = Some(raw);
        reading.value = match scale {
            Scale::Divisor(1) => ReadingValue::Int(raw),
            Scale::Divisor(d) => ReadingValue::Float(raw as f64 / f64::from(d)),
            Scale::Meta(m) => {
                let m = i64::from(m);
                let magnitude = raw.abs();
                reading.meta = Some(magnitude % m);
                ReadingValue::Int(if raw < 0 {
                    -(magnitude / m)
                } else {
                    magnitude / m
                })
            }
            Scale::Binary { .. } | Scale::Empty => ReadingValue::Null,
        };
        out.push(reading);
    }
    Ok(())
}
