//! Signal telegrams (RORG D0), fact sheet §4 (MID table) and the IoTC signal output of seed 001
//! (`{"key": "signalIdentifier", "value": "0x6", "meaning": "Energy status of device"}`,
//! `{"key": "energy", "value": 56.0, "unit": "%"}`).
//!
//! The payload is `MID | data`. Lengths are checked strictly: a MID whose data layout the fact sheet
//! gives must carry exactly that many bytes, and a MID without data must carry none. MIDs whose data
//! layout the fact sheet does not give (0x0B, 0x0C, 0x11) and unknown MIDs report their bytes as
//! `data` (hex).

#![warn(missing_docs)]

use super::{DataPoint, Value};
use std::borrow::Cow;

/// Why a signal telegram could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    /// No MID byte.
    #[error("empty: a signal telegram needs at least the MID byte")]
    Empty,
    /// The data length does not match the MID's layout (fact sheet §4 table).
    #[error(
        "wrong_length: signal MID {mid:#04x} carries {expected} data bytes, this one has {found}"
    )]
    WrongLength {
        /// The MID.
        mid: u8,
        /// Data bytes the MID carries.
        expected: usize,
        /// Data bytes present.
        found: usize,
    },
    /// A value outside the range the fact sheet gives.
    #[error("out_of_range: signal MID {mid:#04x} value {value} is outside {min}..={max}")]
    OutOfRange {
        /// The MID.
        mid: u8,
        /// The raw value.
        value: u8,
        /// Lowest valid value.
        min: u8,
        /// Highest valid value.
        max: u8,
    },
}

impl SignalError {
    /// Short machine name for counters and dead letters.
    pub fn code(&self) -> &'static str {
        match self {
            SignalError::Empty => "empty",
            SignalError::WrongLength { .. } => "wrong_length",
            SignalError::OutOfRange { .. } => "out_of_range",
        }
    }
}

/// The meaning of a signal MID (fact sheet §4 table), worded as the IoTC words MID 0x06.
pub fn mid_meaning(mid: u8) -> Option<&'static str> {
    Some(match mid {
        0x01 => "Smart Ack: mailbox empty",
        0x02 => "Smart Ack: mailbox does not exist",
        0x03 => "Smart Ack: reset",
        0x04 => "Trigger signal message",
        0x05 => "Device acknowledge",
        0x06 => "Energy status of device",
        0x07 => "Revision of device",
        0x08 => "Heartbeat",
        0x09 => "RX window open",
        0x0A => "RX channel quality",
        0x0B => "Duty-cycle limit",
        0x0C => "Device changed",
        0x0D => "Harvester energy delivery",
        0x0E => "TX mode off",
        0x0F => "TX mode on",
        0x10 => "Backup battery status",
        0x11 => "Learn mode status",
        0x12 => "Product ID",
        _ => return None,
    })
}

fn hex_text(bytes: &[u8]) -> Value {
    Value::Text(Cow::Owned(hex::encode(bytes)))
}

fn expect_len(mid: u8, data: &[u8], expected: usize) -> Result<(), SignalError> {
    if data.len() == expected {
        Ok(())
    } else {
        Err(SignalError::WrongLength {
            mid,
            expected,
            found: data.len(),
        })
    }
}

/// A one-byte percentage (MID 0x06 energy, 0x10 backup battery): 0..100 %.
fn percent(mid: u8, key: &'static str, data: &[u8]) -> Result<DataPoint, SignalError> {
    expect_len(mid, data, 1)?;
    let value = data[0];
    if value > 100 {
        return Err(SignalError::OutOfRange {
            mid,
            value,
            min: 0,
            max: 100,
        });
    }
    Ok(DataPoint::new(key, Value::Float(f64::from(value))).with_unit("%"))
}

fn dotted_version(bytes: &[u8]) -> Value {
    let parts: Vec<String> = bytes.iter().map(u8::to_string).collect();
    Value::Text(Cow::Owned(parts.join(".")))
}

/// "0x" + lowercase hex without leading zeros, as the IoTC prints the signal identifier ("0x6").
fn short_hex(value: u8) -> Value {
    Value::Text(Cow::Owned(format!("{value:#x}")))
}

/// Decodes a signal telegram's payload (the bytes after RORG D0) into the IoTC `signal` list: the
/// `signalIdentifier` entry first, then the MID's data (fact sheet §4).
pub fn decode(payload: &[u8]) -> Result<Vec<DataPoint>, SignalError> {
    let (&mid, data) = payload.split_first().ok_or(SignalError::Empty)?;
    let identifier = DataPoint::new("signalIdentifier", short_hex(mid))
        .with_meaning(mid_meaning(mid).unwrap_or("Unknown signal"));
    let mut out = vec![identifier];
    match mid {
        0x01 | 0x02 | 0x03 | 0x05 | 0x08 | 0x09 | 0x0E | 0x0F => expect_len(mid, data, 0)?,
        0x04 => {
            expect_len(mid, data, 1)?;
            let requested = match data[0] {
                1 => 0x06,
                2 => 0x07,
                3 => 0x0A,
                4 => 0x0D,
                value => {
                    return Err(SignalError::OutOfRange {
                        mid,
                        value,
                        min: 1,
                        max: 4,
                    });
                }
            };
            let meaning = mid_meaning(requested).unwrap_or("Unknown signal");
            out.push(DataPoint::new("requestedSignal", short_hex(requested)).with_meaning(meaning));
        }
        0x06 => out.push(percent(mid, "energy", data)?),
        0x10 => out.push(percent(mid, "backupBattery", data)?),
        0x07 => {
            expect_len(mid, data, 8)?;
            out.push(DataPoint::new(
                "softwareVersion",
                dotted_version(&data[..4]),
            ));
            out.push(DataPoint::new(
                "hardwareVersion",
                dotted_version(&data[4..]),
            ));
        }
        0x0A => {
            // Fact sheet §4: EURID(4), worst dBm, best dBm, subtelegram count / repeater level. The
            // split of the last byte is not confirmed, so it is reported raw.
            expect_len(mid, data, 7)?;
            out.push(DataPoint::new("gatewayId", hex_text(&data[..4])));
            out.push(DataPoint::new("worstRssi", Value::Int(-i64::from(data[4]))).with_unit("dBm"));
            out.push(DataPoint::new("bestRssi", Value::Int(-i64::from(data[5]))).with_unit("dBm"));
            out.push(DataPoint::new(
                "subtelegramRepeaterInfo",
                Value::Int(i64::from(data[6])),
            ));
        }
        0x0D => {
            expect_len(mid, data, 1)?;
            // Fact sheet §4 gives the ends (0 very good, 4 very bad); the steps between are
            // labelled in order.
            let (value, meaning) = match data[0] {
                0 => ("veryGood", "Very good"),
                1 => ("good", "Good"),
                2 => ("average", "Average"),
                3 => ("bad", "Bad"),
                4 => ("veryBad", "Very bad"),
                value => {
                    return Err(SignalError::OutOfRange {
                        mid,
                        value,
                        min: 0,
                        max: 4,
                    });
                }
            };
            out.push(
                DataPoint::new("energyDelivery", Value::Text(Cow::Borrowed(value)))
                    .with_meaning(meaning),
            );
        }
        0x12 => {
            expect_len(mid, data, 6)?;
            let manufacturer = u16::from_be_bytes([data[0], data[1]]);
            out.push(DataPoint::new(
                "manufacturerId",
                Value::Text(Cow::Owned(format!("0x{manufacturer:03x}"))),
            ));
            out.push(DataPoint::new(
                "productId",
                Value::Text(Cow::Owned(format!("0x{}", hex::encode(&data[2..])))),
            ));
        }
        // 0x0B, 0x0C, 0x11 and unknown MIDs: no layout in the fact sheet.
        _ => {
            if !data.is_empty() {
                out.push(DataPoint::new("data", hex_text(data)));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::telegram::test_support::Rng;
    use super::*;

    fn json(payload: &[u8]) -> serde_json::Value {
        serde_json::to_value(decode(payload).unwrap()).unwrap()
    }

    #[test]
    fn energy_status_matches_the_iotc_output() {
        assert_eq!(
            json(&[0x06, 0x38]),
            serde_json::json!([
                {"key": "signalIdentifier", "value": "0x6", "meaning": "Energy status of device"},
                {"key": "energy", "value": 56.0, "unit": "%"}
            ])
        );
    }

    #[test]
    fn mids_without_data_give_only_the_identifier() {
        assert_eq!(
            json(&[0x08]),
            serde_json::json!([{"key": "signalIdentifier", "value": "0x8", "meaning": "Heartbeat"}])
        );
        assert_eq!(decode(&[0x08, 0]).unwrap_err().code(), "wrong_length");
    }

    #[test]
    fn data_carrying_mids_decode() {
        assert_eq!(
            json(&[0x10, 100])[1],
            serde_json::json!({"key": "backupBattery", "value": 100.0, "unit": "%"})
        );
        let rev = json(&[0x07, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(rev[1]["value"], "1.2.3.4");
        assert_eq!(rev[2]["value"], "5.6.7.8");
        let quality = json(&[0x0A, 0x04, 0x13, 0x8B, 0xB4, 90, 60, 0x21]);
        assert_eq!(quality[1]["value"], "04138bb4");
        assert_eq!(
            (quality[2]["value"].as_i64(), quality[3]["value"].as_i64()),
            (Some(-90), Some(-60))
        );
        assert_eq!(
            json(&[0x0D, 4])[1],
            serde_json::json!({"key": "energyDelivery", "value": "veryBad", "meaning": "Very bad"})
        );
        let product = json(&[0x12, 0x00, 0x0D, 0x01, 0x02, 0x03, 0x04]);
        assert_eq!(
            (product[1]["value"].as_str(), product[2]["value"].as_str()),
            (Some("0x00d"), Some("0x01020304"))
        );
        let trigger = json(&[0x04, 2]);
        assert_eq!(
            trigger[1],
            serde_json::json!({"key": "requestedSignal", "value": "0x7", "meaning": "Revision of device"})
        );
        assert_eq!(json(&[0x12, 0, 0, 0, 0, 0, 0])[0]["value"], "0x12");
    }

    #[test]
    fn unknown_and_layoutless_mids_report_their_bytes() {
        assert_eq!(
            json(&[0x7F, 0xAB, 0x01]),
            serde_json::json!([
                {"key": "signalIdentifier", "value": "0x7f", "meaning": "Unknown signal"},
                {"key": "data", "value": "ab01"}
            ])
        );
        assert_eq!(json(&[0x11, 0x01])[1]["value"], "01");
        assert_eq!(mid_meaning(0x13), None);
    }

    #[test]
    fn wrong_lengths_and_ranges_are_errors() {
        assert_eq!(decode(&[]), Err(SignalError::Empty));
        for payload in [
            &[0x06][..],
            &[0x06, 1, 2],
            &[0x07, 1],
            &[0x0A, 1, 2, 3],
            &[0x12, 0],
            &[0x04],
        ] {
            assert_eq!(
                decode(payload).unwrap_err().code(),
                "wrong_length",
                "{payload:02x?}"
            );
        }
        for payload in [&[0x06, 101][..], &[0x10, 255], &[0x0D, 5], &[0x04, 0]] {
            assert_eq!(
                decode(payload).unwrap_err().code(),
                "out_of_range",
                "{payload:02x?}"
            );
        }
    }

    #[test]
    fn random_payloads_never_panic() {
        let mut rng = Rng(0x0123_4567_89AB_CDEF);
        for _ in 0..20_000 {
            let mut payload = rng.bytes(10);
            if let Some(mid) = payload.first_mut() {
                *mid %= 0x14;
            }
            if let Ok(points) = decode(&payload) {
                assert_eq!(points[0].key, "signalIdentifier");
            }
        }
    }
}
