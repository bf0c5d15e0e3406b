//! What the Kafka sink and the Kafka source share: broker lists, the message formats, and the
//! headers that carry a raw frame's origin from an ingest tier to a processing tier.
//!
//! **Formats.** `document` (the default): the value is the record's JSON document. `raw`: the value
//! is the frame exactly as the device or gateway sent it, and the headers say where it came from:
//!
//! | header | value |
//! |---|---|
//! | `source` | the ingest tier's source name |
//! | `kind` | `raw` |
//! | `received_at_ms` | when the ingest tier received it, Unix milliseconds |
//! | `device` | the device, when known (see the decode stage's `output = "raw"`) |
//! | `gateway`, `rssi` | the gateway that relayed it and the signal strength (EnOcean) |
//! | `route`, `path` | what the source's configuration says arrives there, and the request path or topic (Efento: `measurements`, `m`) |
//! | `peer` | the device's or gateway's address |
//! | `token` | a device token carried in a transport option |
//!
//! A processing tier's Kafka source in `raw` format rebuilds the record from these, so that its
//! decode stage sees the frame as the ingest tier's source made it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::ClientConfig;
use rdkafka::message::{Header, Headers, OwnedHeaders};

use crate::record::{Origin, Record};

/// What a message's value holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The record's JSON document.
    #[default]
    Document,
    /// The frame as received, its origin in the headers.
    Raw,
}

pub const SOURCE: &str = "source";
pub const KIND: &str = "kind";
pub const SCHEMA: &str = "schema";
pub const RECEIVED_AT: &str = "received_at_ms";
pub const DEVICE: &str = "device";
pub const GATEWAY: &str = "gateway";
pub const RSSI: &str = "rssi";
pub const ROUTE: &str = "route";
pub const PATH: &str = "path";
pub const PEER: &str = "peer";
pub const TOKEN: &str = "token";

/// Problems with a list of bootstrap brokers.
pub fn broker_problems(brokers: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    if brokers.is_empty() {
        out.push("brokers is empty: give at least one `host:port`".into());
    }
    for b in brokers {
        if b.rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            out.push(format!("broker `{b}` is not `host:port`"));
        }
    }
    out
}

/// Problems with `properties` that try to set what the component sets itself (`owned`: the
/// librdkafka name and how to set it instead).
pub fn property_problems<'a>(
    keys: impl Iterator<Item = &'a String>,
    owned: &[(&str, &str)],
) -> Vec<String> {
    keys.filter_map(|key| {
        owned
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, by)| format!("properties: `{key}` cannot be set through properties: {by}"))
    })
    .collect()
}

/// A librdkafka configuration with `properties` first, then the brokers and the client id
/// (`sensorgate-NAME` unless given), which `properties` may not set (see [`property_problems`]).
pub fn client_config(
    brokers: &[String],
    client_id: Option<&str>,
    name: &str,
    properties: &BTreeMap<String, String>,
) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in properties {
        c.set(k, v);
    }
    let client_id = client_id.map_or_else(|| format!("sensorgate-{name}"), str::to_string);
    c.set("bootstrap.servers", brokers.join(","))
        .set("client.id", client_id);
    c
}

/// Adds the origin headers of a raw frame (see the module docs).
pub fn add_frame_headers(record: &Record, mut h: OwnedHeaders) -> OwnedHeaders {
    let millis = record
        .received_at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        .to_string();
    h = h.insert(Header {
        key: RECEIVED_AT,
        value: Some(&millis),
    });
    let o = &record.origin;
    let rssi = o.rssi.map(|r| r.to_string());
    let peer = o.peer.map(|p| p.to_string());
    let optional = [
        (DEVICE, record.device.as_deref()),
        (GATEWAY, o.gateway.as_deref()),
        (RSSI, rssi.as_deref()),
        (ROUTE, o.route.as_deref()),
        (PATH, o.path.as_deref()),
        (PEER, peer.as_deref()),
        (TOKEN, o.token.as_deref()),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            h = h.insert(Header {
                key,
                value: Some(value),
            });
        }
    }
    h
}

/// The latest time a record may carry from a message: 9999-12-31T23:59:59.999Z.
const LATEST_MS: i64 = 253_402_300_799_999;

/// A time in Unix milliseconds from a message (its timestamp or `received_at_ms`), if it is one a
/// document can show: from 1970 to the year 9999. Anything else is not believed.
pub fn unix_millis(ms: i64) -> Option<SystemTime> {
    u64::try_from(ms)
        .ok()
        .filter(|_| ms <= LATEST_MS)
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
}

/// What a raw frame's headers say about it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FrameMeta {
    pub source: Option<String>,
    pub kind: Option<String>,
    pub device: Option<String>,
    pub received_at: Option<SystemTime>,
    pub origin: Origin,
}

/// Reads the headers of a raw frame. Headers this does not know, and values that are not what
/// their name says (a non-numeric `rssi`), are ignored.
pub fn read_frame_headers<H: Headers>(headers: Option<&H>) -> FrameMeta {
    let mut meta = FrameMeta::default();
    let Some(headers) = headers else {
        return meta;
    };
    for header in headers.iter() {
        let Some(value) = header.value.and_then(|v| std::str::from_utf8(v).ok()) else {
            continue;
        };
        match header.key {
            SOURCE => meta.source = Some(value.to_string()),
            KIND => meta.kind = Some(value.to_string()),
            DEVICE if !value.is_empty() => meta.device = Some(value.to_string()),
            RECEIVED_AT => meta.received_at = value.parse::<i64>().ok().and_then(unix_millis),
            GATEWAY => meta.origin.gateway = Some(Arc::from(value)),
            RSSI => meta.origin.rssi = value.parse().ok(),
            ROUTE => meta.origin.route = Some(Arc::from(value)),
            PATH => meta.origin.path = Some(Arc::from(value)),
            PEER => meta.origin.peer = value.parse::<SocketAddr>().ok(),
            TOKEN => meta.origin.token = Some(value.to_string()),
            _ => {}
        }
    }
    meta
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Delivery;
    use bytes::Bytes;

    #[test]
    fn frame_headers_carry_the_origin_there_and_back() {
        let origin = Origin {
            peer: Some("192.0.2.7:5683".parse().unwrap()),
            path: Some(Arc::from("m")),
            route: Some(Arc::from("measurements")),
            gateway: Some(Arc::from("ap-1")),
            rssi: Some(-71),
            token: Some("t0k".into()),
            receptions: Vec::new(),
        };
        let mut record = Record::new(
            Arc::from("efento"),
            origin.clone(),
            Bytes::from_static(b"\x01\x02"),
            Delivery::detached(),
        );
        record.device = Some("282C02415AF6".into());
        record.received_at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let headers = add_frame_headers(
            &record,
            OwnedHeaders::new()
                .insert(Header {
                    key: SOURCE,
                    value: Some("efento"),
                })
                .insert(Header {
                    key: KIND,
                    value: Some("raw"),
                }),
        );
        let meta = read_frame_headers(Some(&headers));
        assert_eq!(meta.source.as_deref(), Some("efento"));
        assert_eq!(meta.kind.as_deref(), Some("raw"));
        assert_eq!(meta.device.as_deref(), Some("282C02415AF6"));
        assert_eq!(meta.received_at, Some(record.received_at));
        assert_eq!(meta.origin.peer, origin.peer);
        assert_eq!(meta.origin.path, origin.path);
        assert_eq!(meta.origin.route, origin.route);
        assert_eq!(meta.origin.gateway, origin.gateway);
        assert_eq!(meta.origin.rssi, origin.rssi);
        assert_eq!(meta.origin.token, origin.token);
    }

    #[test]
    fn odd_header_values_are_ignored() {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: RSSI,
                value: Some("loud"),
            })
            .insert(Header {
                key: RECEIVED_AT,
                value: Some("yesterday"),
            })
            .insert(Header {
                key: DEVICE,
                value: Some(&[0xff_u8, 0xfe][..]),
            })
            .insert(Header::<&str> {
                key: PATH,
                value: None,
            });
        let meta = read_frame_headers(Some(&headers));
        assert_eq!(meta, FrameMeta::default());
        for far in ["99999999999999999", "-5", "253402300800000"] {
            let h = OwnedHeaders::new().insert(Header {
                key: RECEIVED_AT,
                value: Some(far),
            });
            assert_eq!(read_frame_headers(Some(&h)).received_at, None, "{far}");
        }
        assert_eq!(
            read_frame_headers::<OwnedHeaders>(None),
            FrameMeta::default()
        );
    }

    #[test]
    fn broker_lists_are_checked() {
        assert!(broker_problems(&["127.0.0.1:9092".into()]).is_empty());
        assert_eq!(broker_problems(&[]).len(), 1);
        let p = broker_problems(&["kafka".into(), ":9092".into(), "h:99999".into()]);
        assert_eq!(p.len(), 3, "{p:?}");
    }
}
