//! A radio telegram out of an ESP3 packet: RADIO_ERP1 (0x01) and RADIO_ERP2 (0x0A), with addressing
//! encapsulation (ADT, RORG A6) taken off.
//!
//! Follows the fact sheet `protocols/enocean.md`: §1 (RADIO_ERP1 optional data, RADIO_ERP2 optional
//! data, the ERP2 telegram layout, address-control and telegram-type tables) and §2 (ERP1 telegram,
//! STATUS byte, ADT).
//!
//! One borrowed parse ([`RadioView`]) serves both the owned [`Telegram`] and the allocation-free
//! [`content_key`], so the key can never disagree with what the decoder reads.

#![warn(missing_docs)]

use super::esp3::{Packet, packet_type};
use crate::codecs::Fnv1a;

/// RORG values this module and its neighbours name (fact sheet §2, RORG table).
pub mod rorg {
    /// RPS, repeated switch communication.
    pub const RPS: u8 = 0xF6;
    /// 1BS, one-byte communication.
    pub const BS1: u8 = 0xD5;
    /// 4BS, four-byte communication.
    pub const BS4: u8 = 0xA5;
    /// VLD, variable-length data.
    pub const VLD: u8 = 0xD2;
    /// MSC, manufacturer-specific communication.
    pub const MSC: u8 = 0xD1;
    /// UTE, universal teach-in.
    pub const UTE: u8 = 0xD4;
    /// ADT, addressing destination telegram (encapsulation).
    pub const ADT: u8 = 0xA6;
    /// SIGNAL telegram.
    pub const SIGNAL: u8 = 0xD0;
    /// SYS_EX, remote management.
    pub const SYS_EX: u8 = 0xC5;
    /// SEC, secure telegram without inner RORG.
    pub const SEC: u8 = 0x30;
    /// SEC_ENCAPS, secure telegram with encapsulated RORG.
    pub const SEC_ENCAPS: u8 = 0x31;
    /// SECD, a decrypted secure telegram (host-side result).
    pub const SECD: u8 = 0x32;
    /// SEC_CDM, chained secure message.
    pub const SEC_CDM: u8 = 0x33;
    /// SEC_TI, secure teach-in.
    pub const SEC_TI: u8 = 0x35;
    /// CDM, chained data message.
    pub const CDM: u8 = 0x40;
}

/// The broadcast destination ID (fact sheet §1, RADIO_ERP1 optional data).
pub const BROADCAST: u32 = 0xFFFF_FFFF;

/// One radio telegram as received (fact sheet §1 and §2). ERP1 and ERP2 telegrams end up in the same
/// shape; an ADT telegram is stored decapsulated, with `adt` set and the destination it carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Telegram {
    /// The ESP3 packet type it came in: 0x01 RADIO_ERP1 or 0x0A RADIO_ERP2 (§1).
    pub packet_type: u8,
    /// The RORG; for ADT the inner RORG (§2, ADT).
    pub rorg: u8,
    /// Data bytes after the RORG and before the sender ID. ADT: the inner data without the
    /// destination. ERP2: the DATA field, without the ERP2 optional data and CRC.
    pub payload: Vec<u8>,
    /// Sender (originator) ID; a 24-bit ERP2 originator is zero-extended.
    pub sender: u32,
    /// The ERP1 STATUS byte (§2: bit 7 hash type, bit 5 T21, bit 4 NU, bits 3..0 repeater count);
    /// 0 for ERP2, which has no STATUS byte.
    pub status: u8,
    /// Number of subtelegrams received (optional data byte 0).
    pub sub_tel_num: Option<u8>,
    /// The ADT destination (or the ERP2 header destination); else the optional-data destination.
    /// [`BROADCAST`] (FFFFFFFF) means not addressed. ERP2 without a destination is broadcast.
    pub destination: Option<u32>,
    /// Best RSSI in dBm, negative (optional byte 0x4D gives −77). `None` if absent or 0xFF.
    pub dbm: Option<i32>,
    /// Security level from the ERP1 optional data (or the third ERP2 optional byte).
    pub security_level: Option<u8>,
    /// The telegram was addressed-encapsulated (RORG A6) on air.
    pub adt: bool,
    /// Reassembled from chained (CDM / SEC_CDM) parts by [`super::chain::Assembler`].
    pub chained: bool,
}

/// What a radio packet uses that this reader does not handle (fact sheet §1 ERP2 tables, §2 ADT).
/// Carries no heap data, so [`content_key`] stays allocation-free on bad input too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unsupported {
    /// ERP2 address control 011: 48-bit originator IDs do not fit the 32-bit sender.
    #[error("ERP2 address control 011 (48-bit originator ID)")]
    Erp2Originator48Bit,
    /// ERP2 address control 100..111 (reserved).
    #[error("ERP2 address control {0:#05b} is reserved")]
    Erp2AddressControl(u8),
    /// ERP2 telegram type 1011..1110 (reserved).
    #[error("ERP2 telegram type {0:#06b} is reserved")]
    Erp2TelegramType(u8),
    /// ERP2 extended telegram type above 0x07 (not in the fact sheet table).
    #[error("ERP2 extended telegram type {0:#04x} is not known")]
    Erp2ExtendedType(u8),
    /// An ADT telegram whose inner RORG is ADT again.
    #[error("an ADT telegram nested inside another ADT telegram")]
    NestedAdt,
}

/// Why an ESP3 packet gives no telegram (fact sheet §1 packet types and ERP2 layout, §2 ERP1 layout).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TelegramError {
    /// The packet type is not RADIO_ERP1 or RADIO_ERP2.
    #[error(
        "not_radio: ESP3 packet type {packet_type:#04x} is not a radio telegram (expected 0x01 RADIO_ERP1 or 0x0a RADIO_ERP2)"
    )]
    NotRadio {
        /// The ESP3 packet type.
        packet_type: u8,
    },
    /// The packet ends before a field the layout needs.
    #[error("too_short: {what} needs {needed} bytes, the packet has {available}")]
    TooShort {
        /// The part of the layout that is cut.
        what: &'static str,
        /// Bytes it needs.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// A valid but unhandled or reserved layout.
    #[error("unsupported: {0}")]
    Unsupported(Unsupported),
}

impl TelegramError {
    /// Short machine name (`not_radio`, `too_short`, `unsupported`) for counters and dead letters.
    pub fn code(&self) -> &'static str {
        match self {
            TelegramError::NotRadio { .. } => "not_radio",
            TelegramError::TooShort { .. } => "too_short",
            TelegramError::Unsupported(_) => "unsupported",
        }
    }
}

/// The over-the-air part of a radio packet, borrowed: what every gateway hearing the telegram
/// receives identically (fact sheet §1 ERP2 layout, §2 ERP1 layout and ADT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RadioView<'a> {
    packet_type: u8,
    rorg: u8,
    payload: &'a [u8],
    sender: u32,
    status: u8,
    /// A destination carried in the telegram itself (ADT or ERP2 header), not the optional data.
    air_destination: Option<u32>,
    adt: bool,
}

fn too_short(what: &'static str, needed: usize, available: usize) -> TelegramError {
    TelegramError::TooShort {
        what,
        needed,
        available,
    }
}

fn be_u32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b))
}

/// ERP1 (§2): `RORG | DATA | SENDER(4) | STATUS`, then ADT decapsulation.
fn parse_erp1(data: &[u8]) -> Result<RadioView<'_>, TelegramError> {
    // RORG, at least one data byte, sender, status.
    const MIN: usize = 1 + 1 + 4 + 1;
    if data.len() < MIN {
        return Err(too_short("an ERP1 telegram", MIN, data.len()));
    }
    let (rorg_byte, rest) = (data[0], &data[1..]);
    let (payload, tail) = rest.split_at(rest.len() - 5);
    let sender = be_u32(&tail[..4]);
    let status = tail[4];
    let mut view = RadioView {
        packet_type: packet_type::RADIO_ERP1,
        rorg: rorg_byte,
        payload,
        sender,
        status,
        air_destination: None,
        adt: false,
    };
    if rorg_byte == rorg::ADT {
        // inner RORG, at least one inner data byte, destination.
        const ADT_MIN: usize = 1 + 1 + 4;
        if payload.len() < ADT_MIN {
            return Err(too_short(
                "an ADT payload (inner RORG, data, destination)",
                ADT_MIN,
                payload.len(),
            ));
        }
        let inner_rorg = payload[0];
        if inner_rorg == rorg::ADT {
            return Err(TelegramError::Unsupported(Unsupported::NestedAdt));
        }
        let (inner, destination) = payload[1..].split_at(payload.len() - 1 - 4);
        view.rorg = inner_rorg;
        view.payload = inner;
        view.air_destination = Some(be_u32(destination));
        view.adt = true;
    }
    Ok(view)
}

/// ERP2 telegram type (HEADER bits 3..0) to RORG, fact sheet §1 table. `None`: reserved.
fn erp2_type_rorg(telegram_type: u8) -> Option<u8> {
    Some(match telegram_type {
        0b0000 => rorg::RPS,
        0b0001 => rorg::BS1,
        0b0010 => rorg::BS4,
        0b0011 => rorg::SIGNAL,
        0b0100 => rorg::VLD,
        0b0101 => rorg::UTE,
        0b0110 => rorg::MSC,
        0b0111 => rorg::SEC,
        0b1000 => rorg::SEC_ENCAPS,
        0b1001 => rorg::SEC_TI,
        0b1010 => 0xB3,
        _ => return None,
    })
}

/// ERP2 extended telegram type byte to RORG, fact sheet §1 table (enocean-js).
fn erp2_ext_type_rorg(ext_type: u8) -> Option<u8> {
    Some(match ext_type {
        0x00 => rorg::SYS_EX,
        0x01 => 0xC6,
        0x02 => 0xC7,
        0x03 => rorg::CDM,
        0x04 => rorg::SECD,
        0x05 => 0xB0,
        0x06 => 0xB1,
        0x07 => 0xB2,
        _ => return None,
    })
}

/// ERP2 (§1): `HEADER | [EXT_HEADER] | [EXT_TELEGRAM_TYPE] | ORIGINATOR | [DESTINATION] | DATA |
/// [OPTIONAL_DATA] | CRC`, without the LENGTH byte. The trailing ERP2 CRC is dropped unchecked (its
/// coverage is not verified; ESP3's CRC8D already protects the serial hop). The ERP2 optional data
/// and the repeater count of the extended header are not kept.
fn parse_erp2(data: &[u8]) -> Result<RadioView<'_>, TelegramError> {
    let Some(&header) = data.first() else {
        return Err(too_short("an ERP2 header", 1, 0));
    };
    let address_control = header >> 5;
    let has_ext_header = header & 0x10 != 0;
    let telegram_type = header & 0x0F;
    let mut pos = 1;
    let mut optional_len = 0;
    if has_ext_header {
        let Some(&ext) = data.get(pos) else {
            return Err(too_short("an ERP2 extended header", pos + 1, data.len()));
        };
        optional_len = usize::from(ext & 0x0F);
        pos += 1;
    }
    let rorg_byte = if telegram_type == 0b1111 {
        let Some(&ext_type) = data.get(pos) else {
            return Err(too_short(
                "an ERP2 extended telegram type",
                pos + 1,
                data.len(),
            ));
        };
        pos += 1;
        erp2_ext_type_rorg(ext_type).ok_or(TelegramError::Unsupported(
            Unsupported::Erp2ExtendedType(ext_type),
        ))?
    } else {
        erp2_type_rorg(telegram_type).ok_or(TelegramError::Unsupported(
            Unsupported::Erp2TelegramType(telegram_type),
        ))?
    };
    let (originator_len, destination_len) = match address_control {
        0b000 => (3, 0),
        0b001 => (4, 0),
        0b010 => (4, 4),
        0b011 => {
            return Err(TelegramError::Unsupported(Unsupported::Erp2Originator48Bit));
        }
        other => {
            return Err(TelegramError::Unsupported(Unsupported::Erp2AddressControl(
                other,
            )));
        }
    };
    // At least one data byte, then the optional data and the CRC.
    let needed = pos + originator_len + destination_len + 1 + optional_len + 1;
    if data.len() < needed {
        return Err(too_short("this ERP2 telegram", needed, data.len()));
    }
    let sender = be_u32(&data[pos..pos + originator_len]);
    pos += originator_len;
    let air_destination = if destination_len == 0 {
        BROADCAST
    } else {
        be_u32(&data[pos..pos + destination_len])
    };
    pos += destination_len;
    let payload = &data[pos..data.len() - 1 - optional_len];
    Ok(RadioView {
        packet_type: packet_type::RADIO_ERP2,
        rorg: rorg_byte,
        payload,
        sender,
        status: 0,
        air_destination: Some(air_destination),
        adt: false,
    })
}

fn parse_view<'a>(packet: &Packet<'a>) -> Result<RadioView<'a>, TelegramError> {
    match packet.packet_type {
        packet_type::RADIO_ERP1 => parse_erp1(packet.data),
        packet_type::RADIO_ERP2 => parse_erp2(packet.data),
        other => Err(TelegramError::NotRadio { packet_type: other }),
    }
}

/// The received-side fields of the ESP3 optional data (fact sheet §1).
#[derive(Debug, Clone, Copy, Default)]
struct OptionalFields {
    sub_tel_num: Option<u8>,
    destination: Option<u32>,
    dbm: Option<i32>,
    security_level: Option<u8>,
}

/// dBm as the optional data carries it (a positive number, 0xFF when sending) to a negative value.
fn dbm_from_byte(byte: u8) -> Option<i32> {
    (byte != 0xFF).then(|| -i32::from(byte))
}

/// RADIO_ERP1: `SubTelNum | Destination(4) | dBm | SecurityLevel`; RADIO_ERP2: `SubTelNum | dBm |
/// [SecurityLevel]`. Gateways that send fewer bytes get the missing fields as `None`.
fn optional_fields(packet_type_byte: u8, optional: &[u8]) -> OptionalFields {
    let get = |i: usize| optional.get(i).copied();
    if packet_type_byte == packet_type::RADIO_ERP2 {
        OptionalFields {
            sub_tel_num: get(0),
            destination: None,
            dbm: get(1).and_then(dbm_from_byte),
            security_level: get(2),
        }
    } else {
        OptionalFields {
            sub_tel_num: get(0),
            destination: optional.get(1..5).map(be_u32),
            dbm: get(5).and_then(dbm_from_byte),
            security_level: get(6),
        }
    }
}

impl Telegram {
    /// Reads a RADIO_ERP1 or RADIO_ERP2 packet (fact sheet §1, §2), taking off ADT (A6)
    /// encapsulation. ERP2 packets may carry 2 or 3 optional bytes.
    pub fn from_packet(packet: &Packet<'_>) -> Result<Telegram, TelegramError> {
        let view = parse_view(packet)?;
        let optional = optional_fields(packet.packet_type, packet.optional);
        Ok(Telegram {
            packet_type: view.packet_type,
            rorg: view.rorg,
            payload: view.payload.to_vec(),
            sender: view.sender,
            status: view.status,
            sub_tel_num: optional.sub_tel_num,
            destination: view.air_destination.or(optional.destination),
            dbm: optional.dbm,
            security_level: optional.security_level,
            adt: view.adt,
            chained: false,
        })
    }

    /// The IoTC `raw.data` string (fact sheet §2): RORG ‖ payload in lowercase hex. For an ADT
    /// telegram this is the decapsulated inner RORG ‖ inner data, without A6 and the destination.
    pub fn raw_data_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(2 + 2 * self.payload.len());
        for &b in std::iter::once(&self.rorg).chain(&self.payload) {
            out.push(char::from(DIGITS[usize::from(b >> 4)]));
            out.push(char::from(DIGITS[usize::from(b & 0x0F)]));
        }
        out
    }

    /// STATUS bits 3..0 (fact sheet §2): 0 original, 1 or 2 hops, 0xF "do not repeat". Always 0 for
    /// ERP2, whose repeater count (extended header) is not kept.
    pub fn repeater_count(&self) -> u8 {
        self.status & 0x0F
    }
}

/// A key for the same radio telegram heard by several gateways: a 64-bit FNV-1a hash of what every
/// gateway hears identically (fact sheet §1/§2): packet type, RORG, payload, sender, STATUS without
/// the repeater-count bits 3..0, and a destination carried on air (ADT or ERP2 header). Sub-telegram
/// count, dBm, security level and the optional-data destination are left out. `None` for non-radio
/// packets and bytes [`Telegram::from_packet`] rejects. Allocation-free.
///
/// The hash is fixed (FNV-1a with its standard constants), so keys are stable across processes and
/// builds of this version; a later version may change what goes into the key.
pub fn content_key(packet: &Packet<'_>) -> Option<u64> {
    let view = parse_view(packet).ok()?;
    let mut h = Fnv1a::new();
    h.write(&[view.packet_type, view.rorg, u8::from(view.adt)]);
    // The length keeps payload and sender apart in the byte stream.
    h.write(
        &u32::try_from(view.payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    h.write(view.payload);
    h.write(&view.sender.to_be_bytes());
    h.write(&[view.status & 0xF0]);
    match view.air_destination {
        Some(destination) => {
            h.write(&[1]);
            h.write(&destination.to_be_bytes());
        }
        None => h.write(&[0]),
    }
    Some(h.finish())
}

/// The RSSI (negative dBm) from a radio packet's optional data (fact sheet §1: ERP1 byte 5, ERP2
/// byte 1), without parsing the telegram. `None` for non-radio packets, missing bytes or 0xFF.
pub fn packet_dbm(packet: &Packet<'_>) -> Option<i32> {
    match packet.packet_type {
        packet_type::RADIO_ERP1 | packet_type::RADIO_ERP2 => {
            optional_fields(packet.packet_type, packet.optional).dbm
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn erp2(data: &[u8], optional: &[u8]) -> Result<Telegram, TelegramError> {
        Telegram::from_packet(&Packet {
            packet_type: packet_type::RADIO_ERP2,
            data,
            optional,
        })
    }

    fn erp1(data: &[u8], optional: &[u8]) -> Result<Telegram, TelegramError> {
        Telegram::from_packet(&Packet {
            packet_type: packet_type::RADIO_ERP1,
            data,
            optional,
        })
    }

    #[test]
    fn erp2_32_bit_originator_4bs_with_two_optional_bytes() {
        // HEADER 001 0 0010: 32-bit originator, no ext header, 4BS; then ID, 4 data bytes, CRC.
        let t = erp2(
            &[0x22, 0x01, 0x02, 0x03, 0x04, 0x0A, 0x0B, 0x0C, 0x08, 0x99],
            &[1, 0x40],
        )
        .unwrap();
        assert_eq!(t.packet_type, packet_type::RADIO_ERP2);
        assert_eq!(t.rorg, rorg::BS4);
        assert_eq!(t.sender, 0x0102_0304);
        assert_eq!(t.payload, [0x0A, 0x0B, 0x0C, 0x08]);
        assert_eq!((t.status, t.sub_tel_num, t.dbm), (0, Some(1), Some(-64)));
        assert_eq!(t.security_level, None);
        assert_eq!(t.destination, Some(BROADCAST));
        assert!(!t.adt);
    }

    #[test]
    fn erp2_24_bit_originator_rps_with_three_optional_bytes() {
        // HEADER 000 0 0000: 24-bit originator, RPS.
        let t = erp2(&[0x00, 0xAB, 0xCD, 0xEF, 0x30, 0x00], &[2, 0x50, 0]).unwrap();
        assert_eq!(
            (t.rorg, t.sender, t.payload.as_slice()),
            (rorg::RPS, 0x00AB_CDEF, &[0x30][..])
        );
        assert_eq!((t.dbm, t.security_level), (Some(-80), Some(0)));
    }

    #[test]
    fn erp2_destination_ext_header_and_optional_data_are_split_off() {
        // HEADER 010 1 0100: 32-bit originator + destination, ext header, VLD.
        // EXT_HEADER: repeater 1, 2 bytes of ERP2 optional data.
        let data = [
            0x54, 0x12, 0x11, 0x22, 0x33, 0x44, 0xAA, 0xBB, 0xCC, 0xDD, 0x01, 0x02, 0x03, 0xE1,
            0xE2, 0x77,
        ];
        let t = erp2(&data, &[1, 0x30]).unwrap();
        assert_eq!(t.rorg, rorg::VLD);
        assert_eq!(t.sender, 0x1122_3344);
        assert_eq!(t.destination, Some(0xAABB_CCDD));
        assert_eq!(t.payload, [0x01, 0x02, 0x03]);
    }

    #[test]
    fn erp2_extended_telegram_type_maps_to_rorg() {
        for (ext_type, expected) in [
            (0x00, 0xC5),
            (0x01, 0xC6),
            (0x02, 0xC7),
            (0x03, 0x40),
            (0x04, 0x32),
            (0x05, 0xB0),
            (0x06, 0xB1),
            (0x07, 0xB2),
        ] {
            // HEADER 001 0 1111, ext type, ID, one data byte, CRC.
            let t = erp2(&[0x2F, ext_type, 1, 2, 3, 4, 0x55, 0], &[1, 0x40]).unwrap();
            assert_eq!(t.rorg, expected, "ext type {ext_type:#04x}");
            assert_eq!(t.payload, [0x55]);
        }
        let err = erp2(&[0x2F, 0x08, 1, 2, 3, 4, 0x55, 0], &[]).unwrap_err();
        assert_eq!(err.code(), "unsupported");
    }

    #[test]
    fn erp2_every_plain_telegram_type_maps_to_the_fact_sheet_rorg() {
        let expected = [
            0xF6, 0xD5, 0xA5, 0xD0, 0xD2, 0xD4, 0xD1, 0x30, 0x31, 0x35, 0xB3,
        ];
        for (telegram_type, rorg_byte) in expected.into_iter().enumerate() {
            let header = 0x20 | telegram_type as u8;
            let t = erp2(&[header, 1, 2, 3, 4, 0x10, 0], &[]).unwrap();
            assert_eq!(t.rorg, rorg_byte);
        }
        for reserved in 0x0B..=0x0E {
            assert_eq!(
                erp2(&[0x20 | reserved, 1, 2, 3, 4, 0x10, 0], &[])
                    .unwrap_err()
                    .code(),
                "unsupported"
            );
        }
    }

    #[test]
    fn erp2_48_bit_and_reserved_address_controls_are_unsupported() {
        let data = [0x62, 1, 2, 3, 4, 5, 6, 0x08, 0];
        assert!(matches!(
            erp2(&data, &[]),
            Err(TelegramError::Unsupported(Unsupported::Erp2Originator48Bit))
        ));
        for control in 4u8..8 {
            let data = [control << 5 | 0x02, 1, 2, 3, 4, 5, 6, 0x08, 0];
            assert_eq!(erp2(&data, &[]).unwrap_err().code(), "unsupported");
        }
    }

    #[test]
    fn erp2_short_inputs_are_too_short() {
        for data in [
            &[][..],
            &[0x30][..],                         // ext header announced, missing
            &[0x2F][..],                         // ext type announced, missing
            &[0x22, 1, 2, 3, 4][..],             // no data, no CRC
            &[0x22, 1, 2, 3, 4, 0][..],          // CRC only
            &[0x32, 0x05, 1, 2, 3, 4, 9, 9][..], // 5 optional bytes announced, not there
        ] {
            assert_eq!(
                erp2(data, &[]).unwrap_err().code(),
                "too_short",
                "{data:02x?}"
            );
        }
    }

    #[test]
    fn erp1_short_and_non_radio_inputs_are_errors() {
        assert_eq!(
            erp1(&[0xF6, 1, 2, 3, 4, 0], &[]).unwrap_err().code(),
            "too_short"
        );
        assert_eq!(erp1(&[], &[]).unwrap_err().code(), "too_short");
        // ADT with too little room for inner RORG, data and destination.
        assert_eq!(
            erp1(&[0xA6, 0xA5, 1, 2, 3, 4, 1, 2, 3, 4, 0], &[])
                .unwrap_err()
                .code(),
            "too_short"
        );
        let nested = [0xA6, 0xA6, 0x00, 1, 2, 3, 4, 9, 9, 9, 9, 0];
        assert_eq!(erp1(&nested, &[]).unwrap_err().code(), "unsupported");
        let p = Packet {
            packet_type: packet_type::RESPONSE,
            data: &[0],
            optional: &[],
        };
        assert_eq!(
            Telegram::from_packet(&p),
            Err(TelegramError::NotRadio { packet_type: 2 })
        );
        assert_eq!(content_key(&p), None);
        assert_eq!(packet_dbm(&p), None);
    }

    #[test]
    fn missing_or_send_side_optional_data_gives_none() {
        let t = erp1(&[0xF6, 0x30, 1, 2, 3, 4, 0x30], &[]).unwrap();
        assert_eq!(
            (t.sub_tel_num, t.destination, t.dbm, t.security_level),
            (None, None, None, None)
        );
        let t = erp1(
            &[0xF6, 0x30, 1, 2, 3, 4, 0x30],
            &[3, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0],
        )
        .unwrap();
        assert_eq!((t.destination, t.dbm), (Some(BROADCAST), None));
        assert_eq!(t.repeater_count(), 0);
    }

    #[test]
    fn repeater_count_is_status_low_nibble() {
        let t = erp1(&[0xF6, 0x30, 1, 2, 3, 4, 0x3F], &[]).unwrap();
        assert_eq!(t.repeater_count(), 0x0F);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = test_support::Rng(0x9E37_79B9_7F4A_7C15);
        for i in 0..20_000u32 {
            let data = rng.bytes(40);
            let optional = rng.bytes(10);
            let packet_type_byte = match i % 3 {
                0 => packet_type::RADIO_ERP1,
                1 => packet_type::RADIO_ERP2,
                _ => rng.next() as u8,
            };
            let p = Packet {
                packet_type: packet_type_byte,
                data: &data,
                optional: &optional,
            };
            let parsed = Telegram::from_packet(&p);
            assert_eq!(parsed.is_ok(), content_key(&p).is_some());
            let _ = packet_dbm(&p);
            if let Ok(t) = parsed {
                assert_eq!(t.raw_data_hex().len(), 2 + 2 * t.payload.len());
            }
        }
    }
}

/// Shared by the tests of the EnOcean radio modules.
#[cfg(test)]
pub(crate) mod test_support {
    /// xorshift64*: deterministic bytes for the no-panic loops.
    pub(crate) struct Rng(pub u64);

    impl Rng {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        pub fn bytes(&mut self, max_len: usize) -> Vec<u8> {
            let len = (self.next() % (max_len as u64 + 1)) as usize;
            (0..len).map(|_| self.next() as u8).collect()
        }
    }
}

/// Tests against the shared vectors (`vectors/enocean/*.json`): telegram fields, chaining, signal and
/// teach-in data lists.
#[cfg(test)]
mod vector_tests {
    use super::super::{DataPoint, Value, chain, esp3, signal, teach};
    use super::*;
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    /// The shared vectors, or the copies in `tests/fixtures/enocean/` when `../shared` is absent.
    fn vectors_dir() -> PathBuf {
        let shared = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/vectors/enocean"
        ));
        if shared.is_dir() {
            return shared.to_path_buf();
        }
        Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/enocean"
        ))
        .to_path_buf()
    }

    /// The vector whose file name starts with `prefix` (e.g. "01_").
    fn vector(prefix: &str) -> serde_json::Value {
        let dir = vectors_dir();
        let entry = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
            .filter_map(Result::ok)
            .find(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .unwrap_or_else(|| panic!("no vector {prefix}* in {}", dir.display()));
        serde_json::from_slice(&std::fs::read(entry.path()).unwrap()).unwrap()
    }

    fn frames(v: &serde_json::Value) -> Vec<Vec<u8>> {
        match v["esp3_frames"].as_array() {
            Some(list) => list
                .iter()
                .map(|f| hex::decode(f.as_str().unwrap()).unwrap())
                .collect(),
            None => vec![hex::decode(v["esp3_hex"].as_str().unwrap()).unwrap()],
        }
    }

    fn telegram_of(frame: &[u8]) -> Telegram {
        let (packet, _) = esp3::parse_packet(frame).unwrap();
        Telegram::from_packet(&packet).unwrap()
    }

    fn expected_id(v: &serde_json::Value, field: &str) -> u32 {
        u32::from_str_radix(v[field].as_str().unwrap(), 16).unwrap()
    }

    fn expected_data(v: &serde_json::Value) -> serde_json::Value {
        v["expected"]["data"].clone()
    }

    fn as_json(points: &[DataPoint]) -> serde_json::Value {
        serde_json::to_value(points).unwrap()
    }

    #[test]
    fn public_and_spec_vectors_give_the_expected_telegram_fields() {
        for (prefix, raw, status) in [
            ("01_", "d29fce800863b502a620", 0x80),
            ("02_", "a500005008", 0x01),
            ("03_", "f600", 0x20),
            ("04_", "d00638", 0x80),
            ("05_", "d2dddddddddddddddddd", 0x00),
        ] {
            let v = vector(prefix);
            let t = telegram_of(&frames(&v)[0]);
            let expected = &v["expected"];
            assert_eq!(
                format!("{:02x}", t.rorg),
                expected["rorg"].as_str().unwrap(),
                "{prefix}"
            );
            assert_eq!(t.sender, expected_id(&v, "sender"), "{prefix}");
            assert_eq!(
                t.dbm,
                expected["rssi_dbm"].as_i64().map(|d| d as i32),
                "{prefix}"
            );
            assert_eq!(t.raw_data_hex(), raw, "{prefix}");
            assert_eq!(t.status, status, "{prefix}");
            assert_eq!(t.destination, Some(BROADCAST), "{prefix}");
            assert_eq!(t.packet_type, packet_type::RADIO_ERP1);
            assert!(!t.adt && !t.chained);
        }
        let t = telegram_of(&frames(&vector("02_"))[0]);
        assert_eq!(t.repeater_count(), 1);
    }

    #[test]
    fn adt_vector_is_decapsulated() {
        let v = vector("24_");
        let t = telegram_of(&frames(&v)[0]);
        assert_eq!(t.rorg, rorg::BS4);
        assert_eq!(t.payload, [0x00, 0x00, 0x80, 0x08]);
        assert!(t.adt);
        assert_eq!(t.destination, Some(0x0102_0304));
        assert_eq!(t.sender, 0x0180_A1B2);
        assert_eq!(t.dbm, Some(-69));
        assert_eq!(t.raw_data_hex(), "a500008008");
    }

    #[test]
    fn content_key_ignores_reception_details_but_not_content() {
        let frame = &frames(&vector("01_"))[0];
        let (packet, _) = esp3::parse_packet(frame).unwrap();
        let key = content_key(&packet).unwrap();
        // Another gateway: other subtelegram count, dBm, security level, destination, repeater bits.
        let mut data = packet.data.to_vec();
        *data.last_mut().unwrap() = 0x82;
        let other = Packet {
            packet_type: packet.packet_type,
            data: &data,
            optional: &[3, 0x01, 0x02, 0x03, 0x04, 0x30, 2],
        };
        assert_eq!(content_key(&other), Some(key));
        assert_eq!(packet_dbm(&other), Some(-48));
        assert_eq!(packet_dbm(&packet), Some(-77));

        let mut changed_payload = packet.data.to_vec();
        changed_payload[3] ^= 1;
        let mut changed_sender = packet.data.to_vec();
        changed_sender[12] ^= 1;
        let mut changed_status_high = packet.data.to_vec();
        *changed_status_high.last_mut().unwrap() = 0x00;
        for data in [&changed_payload, &changed_sender, &changed_status_high] {
            let p = Packet { data, ..packet };
            assert_ne!(content_key(&p), Some(key));
        }
    }

    #[test]
    fn chained_vector_reassembles_to_vector_01_in_either_order() {
        let plain = telegram_of(&frames(&vector("01_"))[0]);
        let parts: Vec<Telegram> = frames(&vector("23_"))
            .iter()
            .map(|f| telegram_of(f))
            .collect();
        assert!(parts.iter().all(|p| chain::is_chained(p.rorg)));
        let now = Instant::now();
        for order in [[0, 1], [1, 0]] {
            let mut assembler = chain::Assembler::new(Duration::from_secs(3), 16);
            assert!(matches!(
                assembler.push(parts[order[0]].clone(), now),
                chain::ChainOutcome::Pending
            ));
            assert_eq!(assembler.pending(), 1);
            let chain::ChainOutcome::Complete(t) = assembler.push(parts[order[1]].clone(), now)
            else {
                panic!("order {order:?} did not complete");
            };
            assert_eq!(
                (t.rorg, &t.payload, t.sender),
                (plain.rorg, &plain.payload, plain.sender)
            );
            assert_eq!(t.raw_data_hex(), "d29fce800863b502a620");
            assert!(t.chained);
            assert_eq!(t.dbm, Some(-77));
            assert_eq!(assembler.pending(), 0);
        }
    }

    #[test]
    fn signal_vector_gives_the_iotc_signal_list() {
        let v = vector("04_");
        let t = telegram_of(&frames(&v)[0]);
        assert_eq!(t.rorg, rorg::SIGNAL);
        let points = signal::decode(&t.payload).unwrap();
        assert_eq!(as_json(&points), expected_data(&v));
        assert_eq!(points[1].value, Value::Float(56.0));
    }

    #[test]
    fn teach_in_vector_gives_the_expected_list() {
        let v = vector("21_");
        let t = telegram_of(&frames(&v)[0]);
        let teach_in = teach::detect(t.rorg, &t.payload).unwrap();
        assert_eq!(teach_in.eep(), Some("a5-02-05"));
        assert_eq!(as_json(&teach_in.data_points()), expected_data(&v));
    }

    #[test]
    fn data_telegrams_of_the_vectors_are_not_teach_ins() {
        for prefix in ["01_", "02_", "03_", "04_", "24_"] {
            let t = telegram_of(&frames(&vector(prefix))[0]);
            assert_eq!(teach::detect(t.rorg, &t.payload), None, "{prefix}");
        }
    }
}
