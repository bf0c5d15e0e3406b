//! EEP A5-20-01, "HVAC Components: Battery Powered Actuator (BI-DIR)", the valve actuator's
//! telegrams to the controller (direction 1), e.g. Micropelt MVA-004 / Kieback&Peter MD10-FTL.
//! The built-in table has no A5-20 profile.
//!
//! Layout (EEP 2.6.x, A5-20-01 direction 1; the fact sheets do not cover A5-20, so the test
//! telegrams are constructed from this layout):
//! DB3 (0/8) CV current valve position 0..100 %; DB2.7 SO service on; DB2.6 ENIE energy input
//! enabled; DB2.5 ES energy storage sufficiently charged; DB2.4 BCAP battery to be changed soon;
//! DB2.3 CCO contact (cover) open; DB2.2 FTS temperature sensor out of range; DB2.1 DWO window
//! open detected; DB2.0 ACO actuator obstructed; DB1 (16/8) TMP 0..255 -> 0..40 °C; DB0.3 LRN.

#![no_std]
extern crate alloc;

use alloc::vec::Vec;
use sensorgate_plugin_sdk::*;

struct HvacValve;

/// One status flag of DB2: (offset, key, value and meaning for 0, value and meaning for 1).
type Flag = (usize, &'static str, [(&'static str, &'static str); 2]);

const FLAGS: &[Flag] = &[
    (
        8,
        "serviceOn",
        [("off", "Normal operation"), ("on", "Service mode")],
    ),
    (
        9,
        "energyInput",
        [
            ("disabled", "Energy input disabled"),
            ("enabled", "Energy input enabled"),
        ],
    ),
    (
        10,
        "energyStorage",
        [
            ("low", "Energy storage low"),
            ("charged", "Energy storage sufficiently charged"),
        ],
    ),
    (
        11,
        "batteryCapacity",
        [
            ("ok", "Battery ok"),
            ("changeSoon", "Change battery next days"),
        ],
    ),
    (
        12,
        "coverOpen",
        [
            ("false", "Contact cover closed"),
            ("true", "Contact cover open"),
        ],
    ),
    (
        13,
        "temperatureSensorFailure",
        [
            ("false", "Temperature sensor ok"),
            ("true", "Temperature sensor out of range"),
        ],
    ),
    (
        14,
        "windowOpen",
        [
            ("false", "No window open detected"),
            ("true", "Window open detected"),
        ],
    ),
    (
        15,
        "actuatorObstructed",
        [("false", "Actuator ok"), ("true", "Actuator obstructed")],
    ),
];

impl Guest for HvacValve {
    fn metadata() -> Metadata {
        metadata("hvac-valve", "0.1.0", &["eep:a5-20-01"])
    }

    fn decode(frame: Frame) -> Result<Output, DecodeError> {
        let data = expect_4bs(&frame)?;
        let field = |offset, size| bits(data, offset, size).unwrap_or(0);
        let position = field(0, 8);
        if position > 100 {
            return Err(DecodeError::Malformed(alloc::format!(
                "a5-20-01: valve position {position} % is out of range 0..100"
            )));
        }
        let mut out = Vec::with_capacity(FLAGS.len() + 3);
        out.push(Reading::int(
            "valvePosition",
            i64::from(position),
            Some("%"),
        ));
        for (offset, key, choices) in FLAGS {
            let (value, meaning) = choices[field(*offset, 1) as usize];
            out.push(Reading::state(key, value, meaning));
        }
        out.push(Reading::number(
            "temperature",
            scale(field(16, 8), 0.0, 255.0, 0.0, 40.0),
            "°C",
        ));
        out.extend(learn_4bs(data));
        readings(out)
    }
}

export!(HvacValve);
