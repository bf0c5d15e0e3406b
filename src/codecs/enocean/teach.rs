//! Teach-in telegrams, fact sheet §2 "Teach-in": 4BS (A5) variations 1-3, 1BS (D5) and UTE (D4).
//! Detected here, reported by the engine as events; RPS has no teach-in telegram.

#![warn(missing_docs)]

use super::{DataPoint, Value};
use std::borrow::Cow;

/// The UTE request kind, DB6 bits 5..4 (fact sheet §2 "Teach-in").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UteRequest {
    /// 00: teach-in.
    TeachIn,
    /// 01: teach-in deletion.
    Deletion,
    /// 10: teach-in or deletion.
    TeachInOrDeletion,
    /// 11: not used.
    NotUsed,
}

impl UteRequest {
    fn from_bits(bits: u8) -> Self {
        match bits & 0b11 {
            0b00 => UteRequest::TeachIn,
            0b01 => UteRequest::Deletion,
            0b10 => UteRequest::TeachInOrDeletion,
            _ => UteRequest::NotUsed,
        }
    }

    /// The IoTC-style value and meaning.
    fn value_and_meaning(self) -> (&'static str, &'static str) {
        match self {
            UteRequest::TeachIn => ("teachIn", "Teach-in request"),
            UteRequest::Deletion => ("deletion", "Teach-in deletion request"),
            UteRequest::TeachInOrDeletion => ("teachInOrDeletion", "Teach-in or deletion request"),
            UteRequest::NotUsed => ("notUsed", "Request type not used"),
        }
    }
}

/// A teach-in telegram (fact sheet §2 "Teach-in").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TeachIn {
    /// 4BS teach-in (LRN bit DB0.3 = 0). Variation 1 (DB0.7 = 0) carries no EEP. Variation 2
    /// (DB0.7 = 1) carries FUNC (bits 0..5), TYPE (bits 6..12) and the manufacturer ID (bits 13..23).
    /// Variation 3 is variation 2 with any of the bidirectional flags DB0.6..4 set; a variation-3
    /// query with all three flags clear cannot be told from variation 2 and is reported as 2.
    FourBs {
        /// 1, 2 or 3.
        variation: u8,
        /// "a5-02-05" (variations 2 and 3).
        eep: Option<String>,
        /// 11-bit manufacturer ID (variations 2 and 3).
        manufacturer: Option<u16>,
        /// Variation 3, DB0.6: the EEP is supported.
        eep_supported: bool,
        /// Variation 3, DB0.5: the sender ID was stored.
        learned: bool,
        /// Variation 3, DB0.4: a response (1), not a query (0).
        is_response: bool,
    },
    /// 1BS teach-in (LRN bit DB0.3 = 0). Carries no EEP.
    OneBs,
    /// UTE teach-in query (RORG D4, CMD 0), DB6..DB0.
    Ute {
        /// "d2-01-12" from DB0 (RORG), DB1 (FUNC), DB2 (TYPE).
        eep: String,
        /// 11 bits: DB3 bits 2..0 (MSB) and DB4 (LSB).
        manufacturer: u16,
        /// DB5: number of channels to teach in, 0xFF all.
        channels: u8,
        /// DB6 bits 5..4.
        request: UteRequest,
        /// DB6 bit 7: bidirectional communication.
        bidirectional: bool,
        /// Not DB6 bit 6 (which is set when no response is expected).
        response_expected: bool,
        /// DB6 bits 3..0: 0 = teach-in query (the only command reported).
        command: u8,
    },
}

fn eep_string(rorg: u8, func: u8, kind: u8) -> String {
    format!("{rorg:02x}-{func:02x}-{kind:02x}")
}

/// Whether a telegram is a teach-in (fact sheet §2 "Teach-in"): 4BS (A5, 4 bytes) or 1BS (D5,
/// 1 byte) with the LRN bit DB0.3 = 0, or a UTE (D4, 7 bytes) query (CMD 0). UTE responses, which
/// controllers send, are not reported. Any other input, including wrong lengths, gives `None`.
pub fn detect(rorg: u8, payload: &[u8]) -> Option<TeachIn> {
    match (rorg, payload) {
        (0xA5, &[db3, db2, db1, db0]) => {
            if db0 & 0x08 != 0 {
                return None;
            }
            if db0 & 0x80 == 0 {
                return Some(TeachIn::FourBs {
                    variation: 1,
                    eep: None,
                    manufacturer: None,
                    eep_supported: false,
                    learned: false,
                    is_response: false,
                });
            }
            let bits = u32::from_be_bytes([db3, db2, db1, db0]);
            let func = (bits >> 26) as u8 & 0x3F;
            let kind = (bits >> 19) as u8 & 0x7F;
            let manufacturer = (bits >> 8) as u16 & 0x7FF;
            let flags = db0 & 0x70;
            Some(TeachIn::FourBs {
                variation: if flags == 0 { 2 } else { 3 },
                eep: Some(eep_string(0xA5, func, kind)),
                manufacturer: Some(manufacturer),
                eep_supported: db0 & 0x40 != 0,
                learned: db0 & 0x20 != 0,
                is_response: db0 & 0x10 != 0,
            })
        }
        (0xD5, &[db0]) => (db0 & 0x08 == 0).then_some(TeachIn::OneBs),
        (0xD4, &[db6, db5, db4, db3, db2, db1, db0]) => {
            let command = db6 & 0x0F;
            if command != 0 {
                return None;
            }
            Some(TeachIn::Ute {
                eep: eep_string(db0, db1, db2),
                manufacturer: (u16::from(db3 & 0x07) << 8) | u16::from(db4),
                channels: db5,
                request: UteRequest::from_bits(db6 >> 4),
                bidirectional: db6 & 0x80 != 0,
                response_expected: db6 & 0x40 == 0,
                command,
            })
        }
        _ => None,
    }
}

fn manufacturer_point(manufacturer: u16) -> DataPoint {
    DataPoint::new(
        "manufacturerId",
        Value::Text(Cow::Owned(format!("0x{manufacturer:03x}"))),
    )
}

impl TeachIn {
    /// The EEP the telegram announces, if any ("a5-02-05").
    pub fn eep(&self) -> Option<&str> {
        match self {
            TeachIn::FourBs { eep, .. } => eep.as_deref(),
            TeachIn::OneBs => None,
            TeachIn::Ute { eep, .. } => Some(eep),
        }
    }

    /// The IoTC-style `data` list: `teachIn` true, then `eep` and `manufacturerId` ("0x" + 3 hex
    /// digits) when announced; variation 3 adds its flags, UTE its channel, request and
    /// communication fields.
    pub fn data_points(&self) -> Vec<DataPoint> {
        let mut out = vec![DataPoint::new("teachIn", Value::Bool(true))];
        if let Some(eep) = self.eep() {
            out.push(DataPoint::new(
                "eep",
                Value::Text(Cow::Owned(eep.to_owned())),
            ));
        }
        match self {
            TeachIn::FourBs {
                variation,
                manufacturer,
                eep_supported,
                learned,
                is_response,
                ..
            } => {
                if let Some(manufacturer) = manufacturer {
                    out.push(manufacturer_point(*manufacturer));
                }
                if *variation == 3 {
                    let (status, meaning) = if *is_response {
                        ("response", "Teach-in response")
                    } else {
                        ("query", "Teach-in query")
                    };
                    out.push(
                        DataPoint::new("teachInStatus", Value::Text(Cow::Borrowed(status)))
                            .with_meaning(meaning),
                    );
                    out.push(DataPoint::new("eepSupported", Value::Bool(*eep_supported)));
                    out.push(DataPoint::new("learned", Value::Bool(*learned)));
                }
            }
            TeachIn::OneBs => {}
            TeachIn::Ute {
                manufacturer,
                channels,
                request,
                bidirectional,
                response_expected,
                ..
            } => {
                out.push(manufacturer_point(*manufacturer));
                let channel_point = DataPoint::new("channels", Value::Int(i64::from(*channels)));
                out.push(if *channels == 0xFF {
                    channel_point.with_meaning("All channels")
                } else {
                    channel_point
                });
                let (value, meaning) = request.value_and_meaning();
                out.push(
                    DataPoint::new("request", Value::Text(Cow::Borrowed(value)))
                        .with_meaning(meaning),
                );
                out.push(DataPoint::new("bidirectional", Value::Bool(*bidirectional)));
                out.push(DataPoint::new(
                    "responseExpected",
                    Value::Bool(*response_expected),
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::telegram::test_support::Rng;
    use super::*;

    fn json(t: &TeachIn) -> serde_json::Value {
        serde_json::to_value(t.data_points()).unwrap()
    }

    #[test]
    fn variation_2_gives_eep_and_manufacturer() {
        let t = detect(0xA5, &[0x08, 0x28, 0x0D, 0x80]).unwrap();
        assert_eq!(
            json(&t),
            serde_json::json!([
                {"key": "teachIn", "value": true},
                {"key": "eep", "value": "a5-02-05"},
                {"key": "manufacturerId", "value": "0x00d"}
            ])
        );
        // The plaintext of the security known-answer test (vector 29).
        let t = detect(0xA5, &[0x08, 0x27, 0xFF, 0x80]).unwrap();
        assert_eq!(t.eep(), Some("a5-02-04"));
        assert!(matches!(
            t,
            TeachIn::FourBs {
                variation: 2,
                manufacturer: Some(0x7FF),
                ..
            }
        ));
        assert_eq!(json(&t)[2]["value"], "0x7ff");
    }

    #[test]
    fn variation_1_and_3_and_data_telegrams() {
        let t = detect(0xA5, &[0, 0, 0, 0x00]).unwrap();
        assert_eq!(t.eep(), None);
        assert_eq!(
            json(&t),
            serde_json::json!([{"key": "teachIn", "value": true}])
        );
        let t = detect(0xA5, &[0x08, 0x28, 0x0D, 0xF0]).unwrap();
        assert!(matches!(
            t,
            TeachIn::FourBs {
                variation: 3,
                eep_supported: true,
                learned: true,
                is_response: true,
                ..
            }
        ));
        assert_eq!(json(&t)[3]["value"], "response");
        assert_eq!(detect(0xA5, &[0x08, 0x28, 0x0D, 0x88]), None);
        assert_eq!(detect(0xA5, &[0x08, 0x28, 0x0D]), None);
    }

    #[test]
    fn one_byte_teach_in_is_lrn_bit_clear() {
        assert_eq!(detect(0xD5, &[0x00]), Some(TeachIn::OneBs));
        assert_eq!(detect(0xD5, &[0x09]), None);
        assert_eq!(detect(0xD5, &[0x00, 0x00]), None);
        assert_eq!(detect(0xF6, &[0x00]), None);
    }

    #[test]
    fn ute_query_is_parsed_field_by_field() {
        // DB6 = 1010 0000: bidirectional, response expected, request "either", CMD 0 (query).
        // DB5 = 2 channels, manufacturer 0x046 (DB4 = 0x46, DB3 = 0xF8 | 0), TYPE 12, FUNC 01, RORG D2.
        let t = detect(0xD4, &[0xA0, 0x02, 0x46, 0xF8, 0x12, 0x01, 0xD2]).unwrap();
        assert_eq!(
            t,
            TeachIn::Ute {
                eep: "d2-01-12".into(),
                manufacturer: 0x046,
                channels: 2,
                request: UteRequest::TeachInOrDeletion,
                bidirectional: true,
                response_expected: true,
                command: 0,
            }
        );
        assert_eq!(
            json(&t),
            serde_json::json!([
                {"key": "teachIn", "value": true},
                {"key": "eep", "value": "d2-01-12"},
                {"key": "manufacturerId", "value": "0x046"},
                {"key": "channels", "value": 2},
                {"key": "request", "value": "teachInOrDeletion", "meaning": "Teach-in or deletion request"},
                {"key": "bidirectional", "value": true},
                {"key": "responseExpected", "value": true}
            ])
        );
        let t = detect(0xD4, &[0x50, 0xFF, 0xFF, 0x07, 0x01, 0x02, 0xA5]).unwrap();
        assert!(matches!(
            &t,
            TeachIn::Ute {
                manufacturer: 0x7FF,
                request: UteRequest::Deletion,
                bidirectional: false,
                response_expected: false,
                ..
            }
        ));
        assert_eq!(json(&t)[3]["meaning"], "All channels");
        // A response (CMD 1) and a short telegram are not reported.
        assert_eq!(
            detect(0xD4, &[0x91, 0x02, 0x46, 0x00, 0x12, 0x01, 0xD2]),
            None
        );
        assert_eq!(detect(0xD4, &[0xA0, 0x02, 0x46, 0x00, 0x12, 0x01]), None);
    }

    #[test]
    fn random_payloads_never_panic() {
        let mut rng = Rng(0xF00D_CAFE_1234_5678);
        for i in 0..20_000u32 {
            let rorg = [0xA5, 0xD5, 0xD4, rng.next() as u8][(i % 4) as usize];
            let payload = rng.bytes(9);
            if let Some(t) = detect(rorg, &payload) {
                assert_eq!(t.data_points()[0].key, "teachIn");
            }
        }
    }
}
