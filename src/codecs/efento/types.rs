//! The measurement type table of the fact sheet (section 3.3): name, kind, scaling and unit of every
//! `MeasurementType`.

/// How the raw samples of a channel type become values (fact sheet section 3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// Continuous: `value = raw / divisor` (an integer when the divisor is 1).
    Divisor(u32),
    /// Continuous with a metadata remainder: `value = |raw| div m` with the sign restored, `meta = |raw| mod m`.
    Meta(u32),
    /// Binary (section 4.3): the sign of each event code is the state; the strings name the positive and
    /// the negative state.
    Binary {
        /// State of a positive event code (alarm, water detected, on).
        positive: &'static str,
        /// State of a negative event code (OK, no water, off).
        negative: &'static str,
    },
    /// No samples: an empty slot (`NO_SENSOR`).
    Empty,
}

/// One row of the measurement type table (fact sheet section 3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeInfo {
    /// Enum number.
    pub code: i32,
    /// Enum name in lowercase without the `MEASUREMENT_TYPE_` prefix, as the measurement rows print it.
    pub name: &'static str,
    /// How samples are scaled.
    pub scale: Scale,
    /// ASCII unit of the value, `None` for binary and unitless types.
    pub unit: Option<&'static str>,
}

impl TypeInfo {
    /// Whether the type is one of the binary types OK_ALARM, FLOODING, OUTPUT_CONTROL (section 3.3).
    pub fn is_binary(&self) -> bool {
        matches!(self.scale, Scale::Binary { .. })
    }
}

const fn c(code: i32, name: &'static str, divisor: u32, unit: &'static str) -> TypeInfo {
    TypeInfo {
        code,
        name,
        scale: Scale::Divisor(divisor),
        unit: Some(unit),
    }
}

const fn m(code: i32, name: &'static str, modulus: u32, unit: &'static str) -> TypeInfo {
    TypeInfo {
        code,
        name,
        scale: Scale::Meta(modulus),
        unit: Some(unit),
    }
}

const fn b(
    code: i32,
    name: &'static str,
    positive: &'static str,
    negative: &'static str,
) -> TypeInfo {
    TypeInfo {
        code,
        name,
        scale: Scale::Binary { positive, negative },
        unit: None,
    }
}

/// The whole table, indexed by enum number (section 3.3).
static TABLE: [TypeInfo; 44] = [
    TypeInfo {
        code: 0,
        name: "no_sensor",
        scale: Scale::Empty,
        unit: None,
    },
    c(1, "temperature", 10, "degC"),
    c(2, "humidity", 1, "%RH"),
    c(3, "atmospheric_pressure", 10, "hPa"),
    c(4, "differential_pressure", 1, "Pa"),
    b(5, "ok_alarm", "alarm", "ok"),
    m(6, "iaq", 3, "IAQ"),
    b(7, "flooding", "water_detected", "no_water"),
    c(8, "pulse_cnt", 1, "pulses"),
    c(9, "electricity_meter", 1, "Wh"),
    c(10, "water_meter", 1, "l"),
    c(11, "soil_moisture", 1, "kPa"),
    c(12, "co_gas", 1, "ppm"),
    c(13, "no2_gas", 1, "ppm"),
    c(14, "h2s_gas", 100, "ppm"),
    c(15, "ambient_light", 10, "lx"),
    c(16, "pm_1_0", 1, "ug/m3"),
    c(17, "pm_2_5", 1, "ug/m3"),
    c(18, "pm_10_0", 1, "ug/m3"),
    c(19, "noise_level", 10, "dB"),
    c(20, "nh3_gas", 1, "ppm"),
    c(21, "ch4_gas", 1, "ppm"),
    c(22, "high_pressure", 1, "kPa"),
    c(23, "distance_mm", 1, "mm"),
    m(24, "water_meter_acc_minor", 6, "l"),
    m(25, "water_meter_acc_major", 4, "hl"),
    m(26, "co2_gas", 3, "ppm"),
    c(27, "humidity_accurate", 10, "%RH"),
    m(28, "static_iaq", 3, "sIAQ"),
    m(29, "co2_equivalent", 3, "ppm"),
    m(30, "breath_voc", 3, "ppm"),
    // Reserved for modem sharing: no published scaling, so the raw value is kept.
    TypeInfo {
        code: 31,
        name: "shared_modem",
        scale: Scale::Divisor(1),
        unit: None,
    },
    c(32, "percentage", 100, "%"),
    c(33, "voltage", 10, "mV"),
    c(34, "current", 100, "mA"),
    m(35, "pulse_cnt_acc_minor", 6, "pulses"),
    m(36, "pulse_cnt_acc_major", 4, "kpulses"),
    m(37, "elec_meter_acc_minor", 6, "Wh"),
    m(38, "elec_meter_acc_major", 4, "kWh"),
    m(39, "pulse_cnt_acc_wide_minor", 6, "pulses"),
    m(40, "pulse_cnt_acc_wide_major", 4, "Mpulses"),
    c(41, "current_precise", 1000, "mA"),
    b(42, "output_control", "on", "off"),
    c(43, "resistance", 1, "ohm"),
];

/// Looks up a `MeasurementType` number in the table of section 3.3; `None` for numbers the table does not
/// know (newer firmware).
pub fn measurement_type(code: i32) -> Option<&'static TypeInfo> {
    usize::try_from(code).ok().and_then(|i| TABLE.get(i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codecs::efento::proto::MeasurementType;

    #[test]
    fn table_rows_match_enum_numbers_and_names() {
        for (i, info) in TABLE.iter().enumerate() {
            assert_eq!(info.code as usize, i);
            let ty = MeasurementType::try_from(info.code).expect("known enum value");
            let proto_name = ty.as_str_name().strip_prefix("MEASUREMENT_TYPE_").unwrap();
            assert_eq!(proto_name.to_ascii_lowercase(), info.name);
        }
        assert!(measurement_type(44).is_none());
        assert!(measurement_type(-1).is_none());
    }

    #[test]
    fn only_ok_alarm_flooding_and_output_control_are_binary() {
        let binary: Vec<i32> = TABLE
            .iter()
            .filter(|t| t.is_binary())
            .map(|t| t.code)
            .collect();
        assert_eq!(binary, vec![5, 7, 42]);
    }
}
