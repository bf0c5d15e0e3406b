//! The built-in profile table, sorted by id.
//!
//! Primary source: fact sheet `shared/protocols/enocean.md` §5 and the vectors. Where the fact
//! sheet is silent the layout follows the public EEP 2.6.x specification; entries marked
//! `EEP 2.6.x from memory: verify` are the ones not cross-checked against a written table.
//!
//! Output conventions: the `learn` entry comes last for 4BS/1BS profiles (vectors 06, 07, 09, 11,
//! 15), except A5-09-09 where the public IoTC sample puts it before `powerFailureDetected`.

use super::{
    Bits, Choice, Cond, Field, Kind, Layout, Note, Pattern, Profile, RORG_1BS, RORG_4BS, RORG_RPS,
    RORG_VLD, Selector, bits,
};

// ---------------------------------------------------------------------------------------------
// Table-building helpers (all const, evaluated at compile time).

const fn one(raw: u32, value: &'static str, meaning: &'static str) -> Choice {
    Choice {
        lo: raw,
        hi: raw,
        value,
        meaning,
    }
}

const fn span(lo: u32, hi: u32, value: &'static str, meaning: &'static str) -> Choice {
    Choice {
        lo,
        hi,
        value,
        meaning,
    }
}

const fn note(lo: u32, hi: u32, meaning: &'static str) -> Note {
    Note { lo, hi, meaning }
}

const fn pattern(mask: u32, value: u32, text: &'static str, meaning: &'static str) -> Pattern {
    Pattern {
        mask,
        value,
        text,
        meaning,
    }
}

#[allow(clippy::too_many_arguments)]
const fn linear(
    key: &'static str,
    offset: u16,
    size: u8,
    raw_min: f64,
    raw_max: f64,
    scale_min: f64,
    scale_max: f64,
    unit: &'static str,
) -> Field {
    Field {
        key,
        bits: bits(offset, size),
        when: Cond::Always,
        kind: Kind::Linear {
            raw_min,
            raw_max,
            scale_min,
            scale_max,
            unit,
            special: &[],
        },
    }
}

const fn choice(key: &'static str, offset: u16, size: u8, choices: &'static [Choice]) -> Field {
    Field {
        key,
        bits: bits(offset, size),
        when: Cond::Always,
        kind: Kind::Enum(choices),
    }
}

const fn int(
    key: &'static str,
    offset: u16,
    size: u8,
    unit: Option<&'static str>,
    notes: &'static [Note],
) -> Field {
    Field {
        key,
        bits: bits(offset, size),
        when: Cond::Always,
        kind: Kind::Int { unit, notes },
    }
}

const fn number(key: &'static str, offset: u16, size: u8, unit: &'static str) -> Field {
    Field {
        key,
        bits: bits(offset, size),
        when: Cond::Always,
        kind: Kind::Number { unit },
    }
}

const fn divided(
    key: &'static str,
    offset: u16,
    size: u8,
    unit: Option<&'static str>,
    divisor: Bits,
    divisors: &'static [f64],
) -> Field {
    Field {
        key,
        bits: bits(offset, size),
        when: Cond::Always,
        kind: Kind::Divided {
            unit,
            divisor,
            divisors,
        },
    }
}

impl Field {
    /// Emits the field only if `bits` hold `value`.
    const fn if_eq(mut self, offset: u16, size: u8, value: u32) -> Field {
        self.when = Cond::Eq(bits(offset, size), value);
        self
    }

    /// Emits the field only if `bits` do not hold `value`.
    const fn if_ne(mut self, offset: u16, size: u8, value: u32) -> Field {
        self.when = Cond::Ne(bits(offset, size), value);
        self
    }

    /// Raw values of a linear field that are codes, not measurements.
    const fn special(mut self, codes: &'static [Choice]) -> Field {
        if let Kind::Linear {
            raw_min,
            raw_max,
            scale_min,
            scale_max,
            unit,
            ..
        } = self.kind
        {
            self.kind = Kind::Linear {
                raw_min,
                raw_max,
                scale_min,
                scale_max,
                unit,
                special: codes,
            };
        }
        self
    }
}

const fn layout(len: usize, fields: &'static [Field]) -> Layout {
    Layout {
        when: 0,
        len,
        fields,
    }
}

const fn variant(when: u32, len: usize, fields: &'static [Field]) -> Layout {
    Layout { when, len, fields }
}

const fn profile(
    id: &'static str,
    title: &'static str,
    rorg: u8,
    layouts: &'static [Layout],
) -> Profile {
    Profile {
        id,
        title,
        rorg,
        selector: Selector::Single,
        layouts,
    }
}

const fn selected(
    id: &'static str,
    title: &'static str,
    rorg: u8,
    selector: Selector,
    layouts: &'static [Layout],
) -> Profile {
    Profile {
        id,
        title,
        rorg,
        selector,
        layouts,
    }
}

// ---------------------------------------------------------------------------------------------
// Fields shared by many profiles.

const LEARN_CHOICES: &[Choice] = &[
    one(0, "pressed", "Teach-in telegram"),
    one(1, "notPressed", "Data telegram"),
];
/// 4BS LRN bit DB0.3 (fact sheet §2).
const LEARN: Field = choice("learn", 28, 1, LEARN_CHOICES);
/// 1BS LRN bit DB0.3.
const LEARN_1BS: Field = choice("learn", 4, 1, LEARN_CHOICES);

/// Supply voltage DB3, 0..250 -> 0..5.0 V (251..255 error codes).
const SUPPLY_250: Field = linear("supplyVoltage", 0, 8, 0.0, 250.0, 0.0, 5.0, "V");
/// Supply voltage DB3, 0..255 -> 0..5.1 V.
const SUPPLY_255: Field = linear("supplyVoltage", 0, 8, 0.0, 255.0, 0.0, 5.1, "V");

/// 4BS temperature DB1, inverted 255..0 (A5-02, A5-10).
const fn temp_db1_inverted(scale_min: f64, scale_max: f64) -> Field {
    linear("temperature", 16, 8, 255.0, 0.0, scale_min, scale_max, "°C")
}

const PIR_ON_OFF: &[Choice] = &[
    span(0, 127, "off", "PIR off (0..127)"),
    span(128, 255, "on", "PIR on (128..255)"),
];
const PIR_MOTION: Field = choice(
    "pirStatus",
    24,
    1,
    &[
        one(0, "uncertain", "Uncertain of occupancy status"),
        one(1, "motion", "Motion detected"),
    ],
);
const POWER_FAILURE_CHOICES: &[Choice] = &[
    one(0, "False", "Power failure not detected"),
    one(1, "True", "Power failure detected"),
];

/// A5-10 fan speed DB3 (fact sheet §5).
const FAN_SPEED: Field = choice(
    "fanSpeed",
    0,
    8,
    &[
        span(0, 144, "stage3", "Stage 3"),
        span(145, 164, "stage2", "Stage 2"),
        span(165, 189, "stage1", "Stage 1"),
        span(190, 209, "stage0", "Stage 0"),
        span(210, 255, "auto", "Stage Auto"),
    ],
);
/// A5-10-01..0D set point DB2, raw 0..255 (no unit: the scale is the device's).
const SET_POINT_DB2: Field = int("setPoint", 8, 8, None, &[]);
/// A5-10-10..12 set point DB3.
const SET_POINT_DB3: Field = int("setPoint", 0, 8, None, &[]);
/// A5-10-01..0D temperature DB1, 255..0 -> 0..40 °C.
const TEMP_A5_10: Field = temp_db1_inverted(0.0, 40.0);
/// A5-10-10..14 humidity DB2 and temperature DB1, both 0..250, not inverted.
const HUM_A5_10_1X: Field = linear("humidity", 8, 8, 0.0, 250.0, 0.0, 100.0, "%");
const TEMP_A5_10_1X: Field = linear("temperature", 16, 8, 0.0, 250.0, 0.0, 40.0, "°C");
const OCCUPANCY_BUTTON: Field = choice(
    "occupancyButton",
    31,
    1,
    &[
        one(0, "pressed", "Button pressed"),
        one(1, "released", "Button released"),
    ],
);
const SLIDE_SWITCH: Field = choice(
    "slideSwitch",
    31,
    1,
    &[
        one(0, "positionI", "Position I / Night / Off"),
        one(1, "positionO", "Position O / Day / On"),
    ],
);

/// A5-12 meter value DB3..DB1 divided by DIV (DB0.1..0).
const METER_DIVISORS: &[f64] = &[1.0, 10.0, 100.0, 1000.0];
const fn meter(key: &'static str, unit: Option<&'static str>, data_type: u32) -> Field {
    divided(key, 0, 24, unit, bits(30, 2), METER_DIVISORS).if_eq(29, 1, data_type)
}
const TARIFF: Field = int("tariff", 24, 4, None, &[]);

/// A5-14 contact DB0.0 and vibration DB0.1.
const CONTACT_A5_14: Field = choice(
    "contact",
    31,
    1,
    &[
        one(0, "closed", "Contact closed"),
        one(1, "open", "Contact open"),
    ],
);
const VIBRATION_CHOICES: &[Choice] = &[
    one(0, "notDetected", "No vibration detected"),
    one(1, "detected", "Vibration detected"),
];
const VIBRATION_DB0_1: Field = choice("vibration", 30, 1, VIBRATION_CHOICES);
const ILLUMINATION_A5_14: Field = linear("illumination", 8, 8, 0.0, 250.0, 0.0, 1000.0, "lx")
    .special(&[one(251, "overRange", "Over range")]);
const WINDOW_A5_14: Field = choice(
    "contact",
    29,
    2,
    &[
        one(0, "closed", "Window closed"),
        one(1, "tilted", "Window tilted"),
        one(3, "open", "Window opened"),
    ],
);

/// RPS rocker (F6-02, F6-03): N-message (NU = 1) and U-message (NU = 0) layouts.
const ROCKER_ACTIONS: &[Choice] = &[
    one(0, "AI", "Button AI"),
    // "AO" with the letter O: the IoTC's value, kept as is (vector 18).
    one(1, "AO", "Button A0"),
    one(2, "BI", "Button BI"),
    one(3, "BO", "Button B0"),
];
const ENERGY_BOW: Field = choice(
    "energybow",
    3,
    1,
    &[
        one(0, "released", "Energy Bow released"),
        one(1, "pressed", "Energy Bow pressed"),
    ],
);
const ROCKER_LAYOUTS: &[Layout] = &[
    variant(
        1,
        1,
        &[
            choice("rocker1stAction", 0, 3, ROCKER_ACTIONS),
            ENERGY_BOW,
            choice("rocker2ndAction", 4, 3, ROCKER_ACTIONS).if_eq(7, 1, 1),
        ],
    ),
    variant(
        0,
        1,
        &[
            choice(
                "buttonsPressed",
                0,
                3,
                &[one(3, "threeOrFour", "3 or 4 buttons pressed")],
            )
            .if_ne(0, 3, 0),
            ENERGY_BOW,
        ],
    ),
];
const NU: Selector = Selector::Status {
    name: "NU",
    mask: 0x10,
};

/// D2-01 status response (CMD 4) and measurement response (CMD 7), fact sheet §5.
const CHANNEL_D2_01: Field = int("channel", 11, 5, None, &[note(0x1F, 0x1F, "Input channel")]);
const D2_01_LAYOUTS: &[Layout] = &[
    variant(
        4,
        3,
        &[
            choice(
                "command",
                4,
                4,
                &[one(4, "0x4", "Actuator Status Response")],
            ),
            CHANNEL_D2_01,
            int(
                "outputValue",
                17,
                7,
                Some("%"),
                &[
                    note(0, 0, "OFF"),
                    note(1, 100, "ON"),
                    note(0x7F, 0x7F, "Output value not valid or not set"),
                ],
            ),
            choice(
                "localControl",
                16,
                1,
                &[
                    one(0, "disabled", "Local control disabled"),
                    one(1, "enabled", "Local control enabled"),
                ],
            ),
            choice(
                "overCurrentSwitchOff",
                8,
                1,
                &[
                    one(0, "ready", "ready / not supported"),
                    one(1, "executed", "executed"),
                ],
            ),
            choice(
                "errorLevel",
                9,
                2,
                &[
                    one(0, "hardwareOk", "Hardware OK"),
                    one(1, "hardwareWarning", "Hardware warning"),
                    one(2, "hardwareFailure", "Hardware failure"),
                    one(3, "notSupported", "not supported"),
                ],
            ),
            choice(
                "powerFailureDetected",
                1,
                1,
                &[one(0, "False", "not detected"), one(1, "True", "detected")],
            ),
        ],
    ),
    variant(
        7,
        6,
        &[
            choice(
                "command",
                4,
                4,
                &[one(7, "0x7", "Actuator Measurement Response")],
            ),
            CHANNEL_D2_01,
            number("energy", 16, 32, "Ws").if_eq(8, 3, 0),
            number("energy", 16, 32, "Wh").if_eq(8, 3, 1),
            number("energy", 16, 32, "kWh").if_eq(8, 3, 2),
            number("power", 16, 32, "W").if_eq(8, 3, 3),
            number("power", 16, 32, "kW").if_eq(8, 3, 4),
        ],
    ),
];
const D2_01_COMMAND: Selector = Selector::Bits {
    name: "command",
    bits: bits(4, 4),
};
const fn d2_01(id: &'static str, title: &'static str) -> Profile {
    selected(id, title, RORG_VLD, D2_01_COMMAND, D2_01_LAYOUTS)
}

/// D2-14-40/41 multisensor (fact sheet §5, kipe EEP.xml, IoTC sample).
const TEN_BIT_CODES: &[Choice] = &[
    one(1021, "outOfRangeNegative", "Out of range negative"),
    one(1022, "outOfRangePositive", "Out of range positive"),
    one(1023, "error", "Error"),
];
const fn acceleration(key: &'static str, offset: u16) -> Field {
    linear(key, offset, 10, 0.0, 1000.0, -2.5, 2.5, "g").special(TEN_BIT_CODES)
}
const D2_14_4X_COMMON: [Field; 7] = [
    linear("temperature", 0, 10, 0.0, 1000.0, -40.0, 60.0, "°C").special(TEN_BIT_CODES),
    linear("humidity", 10, 8, 0.0, 200.0, 0.0, 100.0, "%").special(&[one(255, "error", "Error")]),
    linear("illumination", 18, 17, 0.0, 100000.0, 0.0, 100000.0, "lx")
        .special(&[one(131071, "error", "Error")]),
    choice(
        "accelerationStatus",
        35,
        2,
        &[
            one(0, "heartbeat", "Heartbeat"),
            one(1, "threshold1", "Threshold 1 exceeded"),
            one(2, "threshold2", "Threshold 2 exceeded"),
        ],
    ),
    acceleration("accelerationX", 37),
    acceleration("accelerationY", 47),
    acceleration("accelerationZ", 57),
];

/// D2-32 A.C. current clamp: PF bit 0, DIV bit 1 (x/1, x/10), 12-bit channels from bit 8.
const CLAMP_POWER_FAIL: Field = choice("powerFailureDetected", 0, 1, POWER_FAILURE_CHOICES);
const fn clamp_channel(key: &'static str, offset: u16) -> Field {
    divided(key, offset, 12, Some("A"), bits(1, 1), &[1.0, 10.0])
}

/// A5-13-01/02: the weather station sends identifier 1 (weather) and 2 (sun intensity) telegrams
/// from the same ID (fact sheet §5).
const A5_13_LAYOUTS: &[Layout] = &[
    variant(
        1,
        4,
        &[
            linear("dawn", 0, 8, 0.0, 255.0, 0.0, 999.0, "lx"),
            linear("temperature", 8, 8, 0.0, 255.0, -40.0, 80.0, "°C"),
            linear("windSpeed", 16, 8, 0.0, 255.0, 0.0, 70.0, "m/s"),
            choice(
                "dayNight",
                29,
                1,
                &[one(0, "day", "Day"), one(1, "night", "Night")],
            ),
            choice(
                "rain",
                30,
                1,
                &[one(0, "noRain", "No rain"), one(1, "rain", "Rain")],
            ),
            LEARN,
        ],
    ),
    variant(
        2,
        4,
        &[
            linear("sunWest", 0, 8, 0.0, 255.0, 0.0, 150.0, "klx"),
            linear("sunSouth", 8, 8, 0.0, 255.0, 0.0, 150.0, "klx"),
            linear("sunEast", 16, 8, 0.0, 255.0, 0.0, 150.0, "klx"),
            choice(
                "hemisphere",
                29,
                1,
                &[one(0, "north", "North"), one(1, "south", "South")],
            ),
            LEARN,
        ],
    ),
];
const A5_13_IDENTIFIER: Selector = Selector::Bits {
    name: "identifier",
    bits: bits(24, 4),
};

// ---------------------------------------------------------------------------------------------
// The table. Keep it sorted by id (a test checks).

#[rustfmt::skip]
pub(super) static PROFILES: &[Profile] = &[
    // --- 4BS: A5-02 temperature sensors, DB1 255..0 (fact sheet §5) ---
    profile("a5-02-01", "Temperature Sensor Range -40 °C to 0 °C", RORG_4BS, &[layout(4, &[temp_db1_inverted(-40.0, 0.0), LEARN])]),
    profile("a5-02-02", "Temperature Sensor Range -30 °C to +10 °C", RORG_4BS, &[layout(4, &[temp_db1_inverted(-30.0, 10.0), LEARN])]),
    profile("a5-02-03", "Temperature Sensor Range -20 °C to +20 °C", RORG_4BS, &[layout(4, &[temp_db1_inverted(-20.0, 20.0), LEARN])]),
    profile("a5-02-04", "Temperature Sensor Range -10 °C to +30 °C", RORG_4BS, &[layout(4, &[temp_db1_inverted(-10.0, 30.0), LEARN])]),
    profile("a5-02-05", "Temperature Sensor Range 0 °C to +40 °C", RORG_4BS, &[layout(4, &[temp_db1_inverted(0.0, 40.0), LEARN])]),
    profile("a5-02-06", "Temperature Sensor Range +10 °C to +50 °C", RORG_4BS, &[layout(4, &[temp_db1_inverted(10.0, 50.0), LEARN])]),
    profile("a5-02-07", "Temperature Sensor Range +20 °C to +60 °C", RORG_4BS, &[layout(4, &[temp_db1_inverted(20.0, 60.0), LEARN])]),
    profile("a5-02-08", "Temperature Sensor Range +30 °C to +70 °C", RORG_4BS, &[layout(4, &[temp_db1_inverted(30.0, 70.0), LEARN])]),
    profile("a5-02-09", "Temperature Sensor Range +40 °C to +80 °C", RORG_4BS, &[layout(4, &[temp_db1_inverted(40.0, 80.0), LEARN])]),
    profile("a5-02-0a", "Temperature Sensor Range +50 °C to +90 °C", RORG_4BS, &[layout(4, &[temp_db1_inverted(50.0, 90.0), LEARN])]),
    profile("a5-02-0b", "Temperature Sensor Range +60 °C to +100 °C", RORG_4BS, &[layout(4, &[temp_db1_inverted(60.0, 100.0), LEARN])]),
    profile("a5-02-10", "Temperature Sensor Range -60 °C to +20 °C", RORG_4BS, &[layout(4, &[temp_db1_inverted(-60.0, 20.0), LEARN])]),
    profile("a5-02-11", "Temperature Sensor Range -50 °C to +30 °C", RORG_4BS, &[layout(4, &[temp_db1_inverted(-50.0, 30.0), LEARN])]),
    profile("a5-02-12", "Temperature Sensor Range -40 °C to +40 °C", RORG_4BS, &[layout(4, &[temp_db1_inverted(-40.0, 40.0), LEARN])]),
    profile("a5-02-13", "Temperature Sensor Range -30 °C to +50 °C", RORG_4BS, &[layout(4, &[temp_db1_inverted(-30.0, 50.0), LEARN])]),
    profile("a5-02-14", "Temperature Sensor Range -20 °C to +60 °C", RORG_4BS, &[layout(4, &[temp_db1_inverted(-20.0, 60.0), LEARN])]),
    profile("a5-02-15", "Temperature Sensor Range -10 °C to +70 °C", RORG_4BS, &[layout(4, &[temp_db1_inverted(-10.0, 70.0), LEARN])]),
    profile("a5-02-16", "Temperature Sensor Range 0 °C to +80 °C", RORG_4BS, &[layout(4, &[temp_db1_inverted(0.0, 80.0), LEARN])]),
    profile("a5-02-17", "Temperature Sensor Range +10 °C to +90 °C", RORG_4BS, &[layout(4, &[temp_db1_inverted(10.0, 90.0), LEARN])]),
    profile("a5-02-18", "Temperature Sensor Range +20 °C to +100 °C", RORG_4BS, &[layout(4, &[temp_db1_inverted(20.0, 100.0), LEARN])]),
    profile("a5-02-19", "Temperature Sensor Range +30 °C to +110 °C", RORG_4BS, &[layout(4, &[temp_db1_inverted(30.0, 110.0), LEARN])]),
    profile("a5-02-1a", "Temperature Sensor Range +40 °C to +120 °C", RORG_4BS, &[layout(4, &[temp_db1_inverted(40.0, 120.0), LEARN])]),
    profile("a5-02-1b", "Temperature Sensor Range +50 °C to +130 °C", RORG_4BS, &[layout(4, &[temp_db1_inverted(50.0, 130.0), LEARN])]),
    profile("a5-02-20", "10 Bit Temperature Sensor Range -10 °C to +41.2 °C", RORG_4BS, &[layout(4, &[linear("temperature", 14, 10, 1023.0, 0.0, -10.0, 41.2, "°C"), LEARN])]),
    profile("a5-02-30", "10 Bit Temperature Sensor Range -40 °C to +62.3 °C", RORG_4BS, &[layout(4, &[linear("temperature", 14, 10, 1023.0, 0.0, -40.0, 62.3, "°C"), LEARN])]),
    // --- A5-04 temperature and humidity ---
    // Temperature only when TSN (DB0.1) says the sensor is available.
    profile("a5-04-01", "Temperature and Humidity Sensor, Range 0 °C to +40 °C and 0% to 100%", RORG_4BS, &[layout(4, &[
        linear("humidity", 8, 8, 0.0, 250.0, 0.0, 100.0, "%"),
        linear("temperature", 16, 8, 0.0, 250.0, 0.0, 40.0, "°C").if_eq(30, 1, 1),
        choice("temperatureAvailability", 30, 1, &[one(0, "notAvailable", "T-sensor not available"), one(1, "available", "T-sensor available")]),
        LEARN,
    ])]),
    profile("a5-04-02", "Temperature and Humidity Sensor, Range -20 °C to +60 °C and 0% to 100%", RORG_4BS, &[layout(4, &[
        linear("humidity", 8, 8, 0.0, 250.0, 0.0, 100.0, "%"),
        linear("temperature", 16, 8, 0.0, 250.0, -20.0, 60.0, "°C").if_eq(30, 1, 1),
        choice("temperatureAvailability", 30, 1, &[one(0, "notAvailable", "T-sensor not available"), one(1, "available", "T-sensor available")]),
        LEARN,
    ])]),
    profile("a5-04-03", "Temperature and Humidity Sensor, Range -20 °C to +60 °C 10bit-measurement and 0% to 100%", RORG_4BS, &[layout(4, &[
        linear("humidity", 0, 8, 0.0, 255.0, 0.0, 100.0, "%"),
        linear("temperature", 14, 10, 0.0, 1023.0, -20.0, 60.0, "°C"),
        choice("telegramType", 31, 1, &[one(0, "heartbeat", "Heartbeat"), one(1, "event", "Event triggered")]),
        LEARN,
    ])]),
    // --- A5-06 light sensors: RS (DB0.0) picks ILL1 (DB1) or ILL2 (DB2) ---
    profile("a5-06-01", "Light Sensor, Range 300 lx to 60.000 lx", RORG_4BS, &[layout(4, &[
        SUPPLY_255,
        linear("illumination", 16, 8, 0.0, 255.0, 600.0, 60000.0, "lx").if_eq(31, 1, 0),
        linear("illumination", 8, 8, 0.0, 255.0, 300.0, 30000.0, "lx").if_eq(31, 1, 1),
        LEARN,
    ])]),
    profile("a5-06-02", "Light Sensor, Range 0 lx to 1.020 lx", RORG_4BS, &[layout(4, &[
        SUPPLY_255,
        linear("illumination", 16, 8, 0.0, 255.0, 0.0, 1020.0, "lx").if_eq(31, 1, 0),
        linear("illumination", 8, 8, 0.0, 255.0, 0.0, 510.0, "lx").if_eq(31, 1, 1),
        LEARN,
    ])]),
    profile("a5-06-03", "Light Sensor, 10-bit measurement (1 lx resolution) with range 0 lx to 1000 lx", RORG_4BS, &[layout(4, &[
        SUPPLY_250,
        linear("illumination", 8, 10, 0.0, 1000.0, 0.0, 1000.0, "lx").special(&[one(1001, "overRange", "Over range")]),
        LEARN,
    ])]),
    // --- A5-07 occupancy ---
    profile("a5-07-01", "Occupancy Sensor with Supply voltage monitor", RORG_4BS, &[layout(4, &[
        SUPPLY_250.if_eq(31, 1, 1),
        choice("pirStatus", 16, 8, PIR_ON_OFF),
        LEARN,
    ])]),
    profile("a5-07-02", "Occupancy with Supply voltage monitor", RORG_4BS, &[layout(4, &[SUPPLY_250, PIR_MOTION, LEARN])]),
    profile("a5-07-03", "Occupancy with Supply voltage monitor and 10-bit illumination measurement", RORG_4BS, &[layout(4, &[
        SUPPLY_250,
        linear("illumination", 8, 10, 0.0, 1000.0, 0.0, 1000.0, "lx").special(&[one(1001, "overRange", "Over range")]),
        PIR_MOTION,
        LEARN,
    ])]),
    // --- A5-08 light, temperature and occupancy ---
    profile("a5-08-01", "Light, Temperature and Occupancy Sensor, Range 0 lx to 510 lx, 0 °C to +51 °C", RORG_4BS, &[layout(4, &[
        SUPPLY_255,
        linear("illumination", 8, 8, 0.0, 255.0, 0.0, 510.0, "lx"),
        linear("temperature", 16, 8, 0.0, 255.0, 0.0, 51.0, "°C"),
        choice("pirStatus", 30, 1, &[one(0, "on", "PIR on"), one(1, "off", "PIR off")]),
        OCCUPANCY_BUTTON,
        LEARN,
    ])]),
    profile("a5-08-02", "Light, Temperature and Occupancy Sensor, Range 0 lx to 1020 lx, 0 °C to +51 °C", RORG_4BS, &[layout(4, &[
        SUPPLY_255,
        linear("illumination", 8, 8, 0.0, 255.0, 0.0, 1020.0, "lx"),
        linear("temperature", 16, 8, 0.0, 255.0, 0.0, 51.0, "°C"),
        choice("pirStatus", 30, 1, &[one(0, "on", "PIR on"), one(1, "off", "PIR off")]),
        OCCUPANCY_BUTTON,
        LEARN,
    ])]),
    profile("a5-08-03", "Light, Temperature and Occupancy Sensor, Range 0 lx to 1530 lx, -30 °C to +50 °C", RORG_4BS, &[layout(4, &[
        SUPPLY_255,
        linear("illumination", 8, 8, 0.0, 255.0, 0.0, 1530.0, "lx"),
        linear("temperature", 16, 8, 0.0, 255.0, -30.0, 50.0, "°C"),
        choice("pirStatus", 30, 1, &[one(0, "on", "PIR on"), one(1, "off", "PIR off")]),
        OCCUPANCY_BUTTON,
        LEARN,
    ])]),
    // --- A5-09 gas sensors ---
    // EEP 2.6.x from memory: verify (A5-09-02 layout).
    profile("a5-09-02", "CO-Sensor 0 ppm to 1000 ppm, Temperature Sensor", RORG_4BS, &[layout(4, &[
        SUPPLY_255,
        linear("co", 8, 8, 0.0, 255.0, 0.0, 1020.0, "ppm"),
        linear("temperature", 16, 8, 0.0, 255.0, 0.0, 51.0, "°C").if_eq(30, 1, 1),
        LEARN,
    ])]),
    profile("a5-09-04", "CO2 Sensor", RORG_4BS, &[layout(4, &[
        linear("humidity", 0, 8, 0.0, 200.0, 0.0, 100.0, "%").if_eq(29, 1, 1),
        linear("co2", 8, 8, 0.0, 255.0, 0.0, 2550.0, "ppm"),
        linear("temperature", 16, 8, 0.0, 255.0, 0.0, 51.0, "°C").if_eq(30, 1, 1),
        LEARN,
    ])]),
    profile("a5-09-05", "VOC Sensor", RORG_4BS, &[layout(4, &[
        // Scale multiplier DB0.1..0: x0.01, x0.1, x1, x10 (as divisors 100, 10, 1, 0.1).
        divided("vocConcentration", 0, 16, Some("ppb"), bits(30, 2), &[100.0, 10.0, 1.0, 0.1]),
        choice("vocIdentification", 16, 8, VOC_IDS),
        LEARN,
    ])]),
    // EEP 2.6.x from memory: verify (A5-09-08 = A5-09-09 without power-failure detection).
    profile("a5-09-08", "Pure CO2 Sensor", RORG_4BS, &[layout(4, &[
        linear("co2", 16, 8, 0.0, 255.0, 0.0, 2000.0, "ppm"),
        LEARN,
    ])]),
    profile("a5-09-09", "Pure CO2 Sensor with Power Failure Detection", RORG_4BS, &[layout(4, &[
        linear("co2", 16, 8, 0.0, 255.0, 0.0, 2000.0, "ppm"),
        LEARN,
        choice("powerFailureDetected", 29, 1, POWER_FAILURE_CHOICES),
    ])]),
    // --- A5-10 room operating panels (01, 03, 05, 06, 10, 12 per fact sheet; the others are
    // the same fields in the combinations the EEP titles name; EEP 2.6.x from memory: verify) ---
    profile("a5-10-01", "Temperature Sensor, Set Point, Fan Speed and Occupancy Control", RORG_4BS, &[layout(4, &[FAN_SPEED, SET_POINT_DB2, TEMP_A5_10, OCCUPANCY_BUTTON, LEARN])]),
    profile("a5-10-02", "Temperature Sensor, Set Point, Fan Speed and Day/Night Control", RORG_4BS, &[layout(4, &[FAN_SPEED, SET_POINT_DB2, TEMP_A5_10, SLIDE_SWITCH, LEARN])]),
    profile("a5-10-03", "Temperature Sensor, Set Point Control", RORG_4BS, &[layout(4, &[SET_POINT_DB2, TEMP_A5_10, LEARN])]),
    profile("a5-10-04", "Temperature Sensor, Set Point and Fan Speed Control", RORG_4BS, &[layout(4, &[FAN_SPEED, SET_POINT_DB2, TEMP_A5_10, LEARN])]),
    profile("a5-10-05", "Temperature Sensor, Set Point and Occupancy Control", RORG_4BS, &[layout(4, &[SET_POINT_DB2, TEMP_A5_10, OCCUPANCY_BUTTON, LEARN])]),
    profile("a5-10-06", "Temperature Sensor, Set Point and Day/Night Control", RORG_4BS, &[layout(4, &[SET_POINT_DB2, TEMP_A5_10, SLIDE_SWITCH, LEARN])]),
    profile("a5-10-07", "Temperature Sensor, Fan Speed Control", RORG_4BS, &[layout(4, &[FAN_SPEED, TEMP_A5_10, LEARN])]),
    profile("a5-10-08", "Temperature Sensor, Fan Speed and Occupancy Control", RORG_4BS, &[layout(4, &[FAN_SPEED, TEMP_A5_10, OCCUPANCY_BUTTON, LEARN])]),
    profile("a5-10-09", "Temperature Sensor, Fan Speed and Day/Night Control", RORG_4BS, &[layout(4, &[FAN_SPEED, TEMP_A5_10, SLIDE_SWITCH, LEARN])]),
    profile("a5-10-0c", "Temperature Sensor and Occupancy Control", RORG_4BS, &[layout(4, &[TEMP_A5_10, OCCUPANCY_BUTTON, LEARN])]),
    profile("a5-10-0d", "Temperature Sensor and Day/Night Control", RORG_4BS, &[layout(4, &[TEMP_A5_10, SLIDE_SWITCH, LEARN])]),
    profile("a5-10-10", "Temperature and Humidity Sensor, Set Point and Occupancy Control", RORG_4BS, &[layout(4, &[SET_POINT_DB3, HUM_A5_10_1X, TEMP_A5_10_1X, OCCUPANCY_BUTTON, LEARN])]),
    profile("a5-10-11", "Temperature and Humidity Sensor, Set Point and Day/Night Control", RORG_4BS, &[layout(4, &[SET_POINT_DB3, HUM_A5_10_1X, TEMP_A5_10_1X, SLIDE_SWITCH, LEARN])]),
    profile("a5-10-12", "Temperature and Humidity Sensor and Set Point", RORG_4BS, &[layout(4, &[SET_POINT_DB3, HUM_A5_10_1X, TEMP_A5_10_1X, LEARN])]),
    profile("a5-10-13", "Temperature and Humidity Sensor, Occupancy Control", RORG_4BS, &[layout(4, &[HUM_A5_10_1X, TEMP_A5_10_1X, OCCUPANCY_BUTTON, LEARN])]),
    profile("a5-10-14", "Temperature and Humidity Sensor, Day/Night Control", RORG_4BS, &[layout(4, &[HUM_A5_10_1X, TEMP_A5_10_1X, SLIDE_SWITCH, LEARN])]),
    // --- A5-12 automated meter reading: DT (DB0.2) picks the quantity, DIV (DB0.1..0) divides ---
    profile("a5-12-00", "Counter", RORG_4BS, &[layout(4, &[
        meter("counter", None, 0),
        meter("counterRate", Some("1/s"), 1),
        int("channel", 24, 4, None, &[]),
        LEARN,
    ])]),
    profile("a5-12-01", "Electricity", RORG_4BS, &[layout(4, &[
        meter("energy", Some("kWh"), 0),
        meter("power", Some("W"), 1),
        TARIFF,
        LEARN,
    ])]),
    profile("a5-12-02", "Gas", RORG_4BS, &[layout(4, &[
        meter("volume", Some("m³"), 0),
        meter("flowRate", Some("l/s"), 1),
        TARIFF,
        LEARN,
    ])]),
    profile("a5-12-03", "Water", RORG_4BS, &[layout(4, &[
        meter("volume", Some("m³"), 0),
        meter("flowRate", Some("l/s"), 1),
        TARIFF,
        LEARN,
    ])]),
    // --- A5-13 environmental applications (identifier DB0.7..4 picks the message) ---
    selected("a5-13-01", "Weather Station", RORG_4BS, A5_13_IDENTIFIER, A5_13_LAYOUTS),
    selected("a5-13-02", "Sun Intensity", RORG_4BS, A5_13_IDENTIFIER, A5_13_LAYOUTS),
    // --- A5-14 multi-function sensors ---
    profile("a5-14-01", "Single Input Contact (Window/Door), Supply voltage monitor", RORG_4BS, &[layout(4, &[SUPPLY_250, CONTACT_A5_14, LEARN])]),
    profile("a5-14-02", "Single Input Contact (Window/Door), Supply voltage monitor and Illumination", RORG_4BS, &[layout(4, &[SUPPLY_250, ILLUMINATION_A5_14, CONTACT_A5_14, LEARN])]),
    profile("a5-14-03", "Single Input Contact (Window/Door), Supply voltage monitor and Vibration", RORG_4BS, &[layout(4, &[SUPPLY_250, VIBRATION_DB0_1, CONTACT_A5_14, LEARN])]),
    profile("a5-14-04", "Single Input Contact (Window/Door), Supply voltage monitor, Vibration and Illumination", RORG_4BS, &[layout(4, &[SUPPLY_250, ILLUMINATION_A5_14, VIBRATION_DB0_1, CONTACT_A5_14, LEARN])]),
    profile("a5-14-05", "Vibration/Tilt, Supply voltage monitor", RORG_4BS, &[layout(4, &[SUPPLY_250, VIBRATION_DB0_1, LEARN])]),
    profile("a5-14-06", "Vibration/Tilt, Illumination and Supply voltage monitor", RORG_4BS, &[layout(4, &[SUPPLY_250, ILLUMINATION_A5_14, VIBRATION_DB0_1, LEARN])]),
    profile("a5-14-09", "Window/Door-Sensor with States Open/Closed/Tilt, Supply voltage monitor", RORG_4BS, &[layout(4, &[SUPPLY_250, WINDOW_A5_14, LEARN])]),
    profile("a5-14-0a", "Window/Door-Sensor with States Open/Closed/Tilt, Supply voltage monitor and Vibration", RORG_4BS, &[layout(4, &[SUPPLY_250, WINDOW_A5_14, choice("vibration", 31, 1, VIBRATION_CHOICES), LEARN])]),
    // --- VLD: D2-01 electronic switches and dimmers (same command set for every TYPE) ---
    d2_01("d2-01-00", "Electronic switches and dimmers with Energy Measurement and Local Control, type 0x00"),
    d2_01("d2-01-01", "Electronic switches and dimmers with Energy Measurement and Local Control, type 0x01"),
    d2_01("d2-01-02", "Electronic switches and dimmers with Energy Measurement and Local Control, type 0x02"),
    d2_01("d2-01-03", "Electronic switches and dimmers with Energy Measurement and Local Control, type 0x03"),
    d2_01("d2-01-04", "Electronic switches and dimmers with Energy Measurement and Local Control, type 0x04"),
    d2_01("d2-01-05", "Electronic switches and dimmers with Energy Measurement and Local Control, type 0x05"),
    d2_01("d2-01-06", "Electronic switches and dimmers with Energy Measurement and Local Control, type 0x06"),
    d2_01("d2-01-07", "Electronic switches and dimmers with Energy Measurement and Local Control, type 0x07"),
    d2_01("d2-01-08", "Electronic switches and dimmers with Energy Measurement and Local Control, type 0x08"),
    d2_01("d2-01-09", "Electronic switches and dimmers with Energy Measurement and Local Control, type 0x09"),
    d2_01("d2-01-0a", "Electronic switches and dimmers with Energy Measurement and Local Control, type 0x0A"),
    d2_01("d2-01-0b", "Electronic switches and dimmers with Energy Measurement and Local Control, type 0x0B"),
    d2_01("d2-01-0c", "Electronic switches and dimmers with Energy Measurement and Local Control, type 0x0C"),
    d2_01("d2-01-0d", "Electronic switches and dimmers with Energy Measurement and Local Control, type 0x0D"),
    d2_01("d2-01-0e", "Electronic switches and dimmers with Energy Measurement and Local Control, type 0x0E"),
    d2_01("d2-01-0f", "Electronic switches and dimmers with Energy Measurement and Local Control, type 0x0F"),
    d2_01("d2-01-10", "Electronic switches and dimmers with Energy Measurement and Local Control, type 0x10"),
    d2_01("d2-01-11", "Electronic switches and dimmers with Energy Measurement and Local Control, type 0x11"),
    d2_01("d2-01-12", "Electronic switches and dimmers with Energy Measurement and Local Control, type 0x12"),
    // --- D2-14 multisensors ---
    profile("d2-14-40", "Indoor Temperature, Humidity, XYZ Acceleration, Illumination Sensor", RORG_VLD, &[layout(9, &D2_14_4X_COMMON)]),
    profile("d2-14-41", "Indoor Temperature, Humidity, XYZ Acceleration, Illumination Sensor and Magnet Contact", RORG_VLD, &[layout(9, &[
        D2_14_4X_COMMON[0],
        D2_14_4X_COMMON[1],
        D2_14_4X_COMMON[2],
        D2_14_4X_COMMON[3],
        D2_14_4X_COMMON[4],
        D2_14_4X_COMMON[5],
        D2_14_4X_COMMON[6],
        choice("contact", 67, 1, &[one(0, "open", "Window opened"), one(1, "closed", "Window closed")]),
    ])]),
    // --- D2-32 A.C. current clamps ---
    profile("d2-32-00", "A.C. Current Clamp, 1 channel", RORG_VLD, &[layout(3, &[CLAMP_POWER_FAIL, clamp_channel("current1", 8)])]),
    profile("d2-32-01", "A.C. Current Clamp, 2 channels", RORG_VLD, &[layout(4, &[CLAMP_POWER_FAIL, clamp_channel("current1", 8), clamp_channel("current2", 20)])]),
    profile("d2-32-02", "A.C. Current Clamp, 3 channels", RORG_VLD, &[layout(6, &[CLAMP_POWER_FAIL, clamp_channel("current1", 8), clamp_channel("current2", 20), clamp_channel("current3", 32)])]),
    // --- 1BS ---
    profile("d5-00-01", "Single Input Contact", RORG_1BS, &[layout(1, &[
        choice("contact", 7, 1, &[one(0, "open", "Open"), one(1, "closed", "Closed")]),
        LEARN_1BS,
    ])]),
    // --- RPS ---
    profile("f6-01-01", "Push Button", RORG_RPS, &[layout(1, &[
        choice("pushButton", 3, 1, &[one(0, "released", "Released"), one(1, "pressed", "Pressed")]),
    ])]),
    selected("f6-02-01", "Light and Blind Control - Application Style 1", RORG_RPS, NU, ROCKER_LAYOUTS),
    selected("f6-02-02", "Light and Blind Control - Application Style 2", RORG_RPS, NU, ROCKER_LAYOUTS),
    // EEP 2.6.x from memory: verify (F6-03 rockers share the F6-02 message layout).
    selected("f6-03-01", "Light and Blind Control - Application Style 1 (F6-03)", RORG_RPS, NU, ROCKER_LAYOUTS),
    selected("f6-03-02", "Light and Blind Control - Application Style 2 (F6-03)", RORG_RPS, NU, ROCKER_LAYOUTS),
    selected("f6-04-01", "Key Card Activated Switch", RORG_RPS, NU, &[
        variant(1, 1, &[choice("keyCard", 0, 8, &[one(0x70, "inserted", "Key card inserted")])]),
        variant(0, 1, &[choice("keyCard", 0, 8, &[one(0x00, "takenOut", "Key card taken out")])]),
    ]),
    profile("f6-05-01", "Liquid Leakage Sensor (mechanic harvester)", RORG_RPS, &[layout(1, &[
        choice("waterSensor", 0, 8, &[one(0x11, "waterDetected", "Water detected")]),
    ])]),
    // EEP 2.6.x from memory: verify (smoke detector codes 0x00 / 0x10 / 0x30).
    profile("f6-05-02", "Smoke Detector", RORG_RPS, &[layout(1, &[
        choice("smokeAlarm", 0, 8, &[
            one(0x00, "off", "Smoke alarm off"),
            one(0x10, "on", "Smoke alarm on"),
            one(0x30, "energyLow", "Energy low"),
        ]),
    ])]),
    profile("f6-10-00", "Window Handle", RORG_RPS, &[layout(1, &[
        Field {
            key: "windowHandle",
            bits: bits(0, 4),
            when: Cond::Always,
            kind: Kind::Pattern(&[
                pattern(0b1111, 0b1111, "closed", "Handle down (0b1111xxxx)"),
                pattern(0b1111, 0b1101, "tilted", "Handle up (0b1101xxxx)"),
                // The IoTC's meaning text, nine pattern digits included.
                pattern(0b1101, 0b1100, "open", "Handle horizontal (0b11x0xxxx)"),
            ]),
        },
    ])]),
];

/// A5-09-05 VOC identification (DB1).
const VOC_IDS: &[Choice] = &[
    one(0, "vocTotal", "VOCT (total)"),
    one(1, "formaldehyde", "Formaldehyde"),
    one(2, "benzene", "Benzene"),
    one(3, "styrene", "Styrene"),
    one(4, "toluene", "Toluene"),
    one(5, "tetrachloroethylene", "Tetrachloroethylene"),
    one(6, "xylene", "Xylene"),
    one(7, "nHexane", "n-Hexane"),
    one(8, "nOctane", "n-Octane"),
    one(9, "cyclopentane", "Cyclopentane"),
    one(10, "methanol", "Methanol"),
    one(11, "ethanol", "Ethanol"),
    one(12, "pentanol", "1-Pentanol"),
    one(13, "acetone", "Acetone"),
    one(14, "ethyleneOxide", "Ethylene Oxide"),
    one(15, "acetaldehyde", "Acetaldehyde"),
    one(16, "aceticAcid", "Acetic Acid"),
    one(17, "propionicAcid", "Propionic Acid"),
    one(18, "valericAcid", "Valeric Acid"),
    one(19, "butyricAcid", "Butyric Acid"),
    one(20, "ammonia", "Ammonia"),
    one(22, "hydrogenSulfide", "Hydrogen Sulfide"),
    one(23, "dimethylsulfide", "Dimethylsulfide"),
    one(24, "butanol", "2-Butanol (butyl Alcohol)"),
    one(25, "methylpropanol", "2-Methylpropanol"),
    one(26, "diethylEther", "Diethyl ether"),
    one(255, "ozone", "Ozone"),
];
