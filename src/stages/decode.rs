//! The decode stage: runs a codec over a record's raw bytes and fills `device`, `kind` and `body`.
//! A frame the codec refuses becomes a dead-letter record carrying the codec's error and the raw bytes.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Stage;
use crate::codecs::efento;
use crate::metrics::{self, Counter};
use crate::record::Record;

/// `{ type = "decode", codec = "efento" }`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeConfig {
    /// Which codec reads the frames.
    pub codec: Codec,
}

/// The built-in codecs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    /// Efento NB-IoT protobuf frames; the message type comes from the CoAP route
    /// (`measurements`, `device_info`, `configuration`) or the path (`m`, `i`, `c`).
    Efento,
}

pub struct DecodeStage {
    flow: Arc<str>,
    codec: Codec,
    decoded: Counter,
    rejected: Counter,
}

impl DecodeStage {
    pub fn new(flow: &str, config: &DecodeConfig) -> Self {
        let codec = match config.codec {
            Codec::Efento => "efento",
        };
        DecodeStage {
            flow: flow.into(),
            codec: config.codec,
            decoded: metrics::counter("decoded_records_total", &[("flow", flow), ("codec", codec)]),
            rejected: metrics::counter(
                "component_errors_total",
                &[
                    ("component", flow),
                    ("stage", "decode"),
                    ("error", "decode"),
                ],
            ),
        }
    }

    /// Decodes in place; on failure returns the reason, and the record stays as it was received.
    fn decode_efento(&self, record: &mut Record) -> Result<(), String> {
        let route = record
            .origin
            .route
            .as_deref()
            .or(record.origin.path.as_deref())
            .unwrap_or("");
        let Some(message) = efento::Message::from_route(route) else {
            let reason = format!(
                "no Efento message is expected on route `{route}` (expected measurements, device_info or configuration)"
            );
            return Err(reason);
        };
        match efento::decode(message, &record.raw) {
            Ok(decoded) => {
                record.delivery.set_device(&decoded.serial);
                record.device = Some(decoded.serial);
                record.kind = decoded.kind;
                record.body = decoded.body;
                record.readings = decoded.readings;
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

impl Stage for DecodeStage {
    fn name(&self) -> &'static str {
        "decode"
    }

    fn process(&mut self, mut record: Record, out: &mut Vec<Record>) {
        let result = match self.codec {
            Codec::Efento => self.decode_efento(&mut record),
        };
        match result {
            Ok(()) => {
                self.decoded.inc();
                out.push(record);
            }
            Err(reason) => {
                self.rejected.inc();
                tracing::debug!(flow = %self.flow, source = %record.source, %reason, "frame rejected by decode");
                out.push(record.into_dead_letter(&self.flow, "decode", &reason));
            }
        }
    }
}
