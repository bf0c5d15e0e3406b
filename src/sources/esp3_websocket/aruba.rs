//! The Aruba IoT websocket envelope (enocean.md §7): each binary message from an AP is one
//! `aruba_telemetry.Telemetry` protobuf whose `nbSData` entries carry the raw serial bytes of the
//! AP's USB devices. No I/O here: bytes in, gateway facts and documents out.

use prost::Message as _;
use serde_json::{Map, Value, json};

/// The prost types generated from `proto/aruba/aruba_telemetry.proto`.
#[allow(clippy::doc_lazy_continuation, clippy::enum_variant_names)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/aruba_telemetry.rs"));
}

use proto::{
    ConnectCode, ConnectStatus, HealthStatus, IotSbMessage, Meta, NbTopic, Reporter, SbTopic,
    Telemetry,
};

/// The gateway id of an AP: its MAC as 12 lowercase hex digits (`aabbccddeeff`). An AP that sends
/// no MAC is named by its reporter name instead; `None` when it sends neither.
pub fn gateway_id(reporter: &Reporter) -> Option<String> {
    match reporter.mac.as_deref() {
        Some(mac) if !mac.is_empty() => Some(hex::encode(mac)),
        _ => reporter.name.clone().filter(|n| !n.is_empty()),
    }
}

/// Whether a message is the AP's periodic health report (its keep-alive).
pub fn is_health_update(telemetry: &Telemetry) -> bool {
    telemetry.ap_health.is_some() || telemetry.meta.nb_topic == Some(NbTopic::ApHealthUpdate as i32)
}

/// What is remembered of an AP across the messages of one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayInfo {
    pub name: Option<String>,
    pub hardware: Option<String>,
    pub software: Option<String>,
    /// The USB devices of the last health report: (identifier, health).
    pub usb: Vec<(String, &'static str)>,
}

impl GatewayInfo {
    /// Takes what this message says about the AP; fields it leaves out keep their earlier value.
    pub fn update(&mut self, telemetry: &Telemetry) {
        let reporter = &telemetry.reporter;
        // Compared first: most messages repeat what is known, and cloning would allocate each time.
        let keep = |new: &Option<String>, old: &mut Option<String>| {
            if let Some(v) = new.as_ref().filter(|v| !v.is_empty())
                && old.as_deref() != Some(v.as_str())
            {
                *old = Some(v.clone());
            }
        };
        keep(&reporter.name, &mut self.name);
        keep(&reporter.hw_type, &mut self.hardware);
        keep(&reporter.sw_version, &mut self.software);
        if let Some(health) = &telemetry.ap_health {
            self.usb = health
                .usb
                .iter()
                .map(|u| {
                    (
                        u.identifier.clone().unwrap_or_default(),
                        health_name(u.health),
                    )
                })
                .collect();
        }
    }
}

fn health_name(code: Option<i32>) -> &'static str {
    match code.map(HealthStatus::try_from) {
        Some(Ok(HealthStatus::Healthy)) => "healthy",
        Some(Ok(HealthStatus::Degraded)) => "degraded",
        Some(Ok(HealthStatus::Unavailable)) => "unavailable",
        Some(Err(_)) | None => "unknown",
    }
}

/// The gateway meta event in the EnOcean IoT Connector's shape:
/// `{"gateway_info":{"mac","softwareVersion","hardwareDescriptor"},"stats":{"timestamp"},"usb_info":[{"usb_identifier","usb_health"}]}`,
/// the timestamp in unix seconds as a string.
pub fn health_document(gateway: &str, info: &GatewayInfo, unix_seconds: u64) -> Map<String, Value> {
    let usb: Vec<Value> = info
        .usb
        .iter()
        .map(|(id, health)| json!({"usb_identifier": id, "usb_health": health}))
        .collect();
    let mut body = Map::new();
    body.insert(
        "gateway_info".into(),
        json!({
            "mac": gateway,
            "softwareVersion": info.software,
            "hardwareDescriptor": info.hardware,
        }),
    );
    body.insert(
        "stats".into(),
        json!({"timestamp": unix_seconds.to_string()}),
    );
    body.insert("usb_info".into(), Value::Array(usb));
    body
}

/// The southbound answer that tells an AP its token was refused (ConnectStatus `tokenExpire`),
/// sent just before the connection is closed.
pub fn token_refused_message(description: &str) -> Vec<u8> {
    IotSbMessage {
        meta: Meta {
            version: 1,
            access_token: None,
            nb_topic: None,
            sb_topic: Some(SbTopic::SbStatus as i32),
        },
        status: Some(ConnectStatus {
            connect_code: Some(ConnectCode::TokenExpire as i32),
            connect_description: Some(description.to_string()),
        }),
        sb_s_data: Vec::new(),
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{ApHealthUpdate, NbSerialData, UsbDevice};

    fn telemetry() -> Telemetry {
        Telemetry {
            meta: Meta {
                version: 1,
                access_token: Some("t0k3n".into()),
                nb_topic: Some(NbTopic::SerialDataNb as i32),
                sb_topic: None,
            },
            reporter: Reporter {
                name: Some("ap-1".into()),
                mac: Some(vec![0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff].into()),
                hw_type: Some("AP-505".into()),
                sw_version: Some("8.8.0.0".into()),
                time: None,
            },
            nb_s_data: vec![NbSerialData {
                nb_serial_payload: Some(vec![0x55].into()),
                nb_device_id: Some("ENOCEAN_USB:1".into()),
            }],
            ap_health: None,
        }
    }

    #[test]
    fn envelope_round_trips_and_names_the_gateway_by_mac() {
        let bytes = telemetry().encode_to_vec();
        let back = Telemetry::decode(bytes.as_slice()).unwrap();
        assert_eq!(back.meta.access_token.as_deref(), Some("t0k3n"));
        assert_eq!(gateway_id(&back.reporter).as_deref(), Some("aabbccddeeff"));
        assert!(!is_health_update(&back));
        let mut nameless = back.reporter.clone();
        nameless.mac = None;
        assert_eq!(gateway_id(&nameless).as_deref(), Some("ap-1"));
        nameless.name = None;
        assert_eq!(gateway_id(&nameless), None);
    }

    #[test]
    fn health_update_gives_the_iotc_gateway_meta_document() {
        let mut t = telemetry();
        t.ap_health = Some(ApHealthUpdate {
            ap_status: Some(HealthStatus::Healthy as i32),
            usb: vec![UsbDevice {
                identifier: Some("ENOCEAN_USB:deb480d77718bbbe5253896b9300acfd".into()),
                health: Some(HealthStatus::Healthy as i32),
            }],
        });
        assert!(is_health_update(&t));
        let mut info = GatewayInfo::default();
        info.update(&t);
        let doc = Value::Object(health_document("aabbccddeeff", &info, 1639039720));
        assert_eq!(
            doc,
            json!({
                "gateway_info": {"mac": "aabbccddeeff", "softwareVersion": "8.8.0.0", "hardwareDescriptor": "AP-505"},
                "stats": {"timestamp": "1639039720"},
                "usb_info": [{"usb_identifier": "ENOCEAN_USB:deb480d77718bbbe5253896b9300acfd", "usb_health": "healthy"}]
            })
        );
        // A later message without reporter details keeps what was learned.
        let mut bare = telemetry();
        bare.reporter.hw_type = None;
        info.update(&bare);
        assert_eq!(info.hardware.as_deref(), Some("AP-505"));
        assert_eq!(info.usb.len(), 1);
    }

    #[test]
    fn token_refusal_is_a_connect_status_token_expire() {
        let msg =
            IotSbMessage::decode(token_refused_message("invalid access token").as_slice()).unwrap();
        assert_eq!(msg.meta.sb_topic, Some(SbTopic::SbStatus as i32));
        let status = msg.status.unwrap();
        assert_eq!(status.connect_code, Some(ConnectCode::TokenExpire as i32));
        assert_eq!(
            status.connect_description.as_deref(),
            Some("invalid access token")
        );
    }
}
