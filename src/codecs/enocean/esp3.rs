//! ESP3 framing (EnOcean Serial Protocol 3): `0x55 | data length (2, BE) | optional length | packet
//! type | CRC8H | data | optional | CRC8D`.
//!
//! Two readers: [`parse_packet`] for one frame that must start at the first byte (the CLI, vectors),
//! and [`StreamParser`] for a byte stream from a gateway, which resynchronises on garbage and bad
//! CRCs and reports what it skipped instead of failing.

use bytes::{Bytes, BytesMut};

/// The sync byte every packet starts with.
pub const SYNC: u8 = 0x55;
/// Sync plus the four header bytes plus CRC8H.
pub const HEADER_LEN: usize = 6;
/// The largest frame the stream parser accepts. A header that claims more is taken for a false sync:
/// radio packets are tens of bytes, and waiting for 64 KiB after a chance header match would swallow
/// the good packets behind it.
pub const DEFAULT_MAX_FRAME: usize = 1024;

/// ESP3 packet types this project handles by name.
pub mod packet_type {
    pub const RADIO_ERP1: u8 = 0x01;
    pub const RESPONSE: u8 = 0x02;
    pub const RADIO_SUB_TEL: u8 = 0x03;
    pub const EVENT: u8 = 0x04;
    pub const COMMON_COMMAND: u8 = 0x05;
    pub const SMART_ACK_COMMAND: u8 = 0x06;
    pub const REMOTE_MAN_COMMAND: u8 = 0x07;
    pub const RADIO_MESSAGE: u8 = 0x09;
    /// Decimal 10: the IoTC's "packet type 10".
    pub const RADIO_ERP2: u8 = 0x0A;
    pub const RADIO_802_15_4: u8 = 0x10;
    pub const COMMAND_2_4: u8 = 0x11;
}

const CRC8_TABLE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u8;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 0x80 != 0 {
                (c << 1) ^ 0x07
            } else {
                c << 1
            };
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-8 with polynomial 0x07, init 0, no reflection, no final XOR (ESP3's CRC8H and CRC8D).
pub fn crc8(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |crc, &b| CRC8_TABLE[(crc ^ b) as usize])
}

/// Why a frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("no_sync: the frame does not start with 0x55")]
    NoSync,
    #[error("truncated: the frame needs {needed} bytes, {available} given")]
    Truncated { needed: usize, available: usize },
    #[error("crc8h_mismatch: header CRC is {found:#04x}, the header gives {computed:#04x}")]
    Crc8hMismatch { found: u8, computed: u8 },
    #[error(
        "crc8d_mismatch: data CRC is {found:#04x}, data and optional data give {computed:#04x}"
    )]
    Crc8dMismatch { found: u8, computed: u8 },
}

impl FrameError {
    /// The short machine name (`crc8d_mismatch`, ...), as the vectors and counters spell it.
    pub fn code(&self) -> &'static str {
        match self {
            FrameError::NoSync => "no_sync",
            FrameError::Truncated { .. } => "truncated",
            FrameError::Crc8hMismatch { .. } => "crc8h_mismatch",
            FrameError::Crc8dMismatch { .. } => "crc8d_mismatch",
        }
    }
}

/// One ESP3 packet, borrowed from its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    pub packet_type: u8,
    pub data: &'a [u8],
    pub optional: &'a [u8],
}

/// Reads one packet from the start of `buf`. Returns it and the length of its frame.
pub fn parse_packet(buf: &[u8]) -> Result<(Packet<'_>, usize), FrameError> {
    if buf.first() != Some(&SYNC) {
        return Err(FrameError::NoSync);
    }
    if buf.len() < HEADER_LEN {
        return Err(FrameError::Truncated {
            needed: HEADER_LEN,
            available: buf.len(),
        });
    }
    let computed = crc8(&buf[1..5]);
    if computed != buf[5] {
        return Err(FrameError::Crc8hMismatch {
            found: buf[5],
            computed,
        });
    }
    let data_len = u16::from_be_bytes([buf[1], buf[2]]) as usize;
    let opt_len = buf[3] as usize;
    let total = frame_len(data_len, opt_len);
    if buf.len() < total {
        return Err(FrameError::Truncated {
            needed: total,
            available: buf.len(),
        });
    }
    let body = &buf[HEADER_LEN..total - 1];
    let computed = crc8(body);
    if computed != buf[total - 1] {
        return Err(FrameError::Crc8dMismatch {
            found: buf[total - 1],
            computed,
        });
    }
    Ok((
        Packet {
            packet_type: buf[4],
            data: &body[..data_len],
            optional: &body[data_len..],
        },
        total,
    ))
}

fn frame_len(data_len: usize, opt_len: usize) -> usize {
    HEADER_LEN + data_len + opt_len + 1
}

/// Reads back-to-back frames that must be exact (no garbage between them).
pub fn parse_packets(mut buf: &[u8]) -> Result<Vec<Packet<'_>>, FrameError> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let (packet, len) = parse_packet(buf)?;
        out.push(packet);
        buf = &buf[len..];
    }
    Ok(out)
}

/// Appends one frame to `out`.
pub fn encode_into(packet_type: u8, data: &[u8], optional: &[u8], out: &mut Vec<u8>) {
    let data_len = u16::try_from(data.len()).unwrap_or(u16::MAX);
    let data = &data[..data_len as usize];
    let opt_len = u8::try_from(optional.len()).unwrap_or(u8::MAX);
    let optional = &optional[..opt_len as usize];
    let start = out.len();
    out.push(SYNC);
    out.extend_from_slice(&data_len.to_be_bytes());
    out.push(opt_len);
    out.push(packet_type);
    let crc_h = crc8(&out[start + 1..start + 5]);
    out.push(crc_h);
    let body_start = out.len();
    out.extend_from_slice(data);
    out.extend_from_slice(optional);
    let crc_d = crc8(&out[body_start..]);
    out.push(crc_d);
}

/// One frame.
pub fn encode(packet_type: u8, data: &[u8], optional: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame_len(data.len(), optional.len()));
    encode_into(packet_type, data, optional, &mut out);
    out
}

/// Why the stream parser skipped bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Bytes that are not part of any frame (including a 0x55 whose header CRC does not match).
    Garbage,
    /// A whole frame whose header was good but whose data CRC was not.
    Crc8dMismatch,
}

impl SkipReason {
    pub fn code(self) -> &'static str {
        match self {
            SkipReason::Garbage => "garbage",
            SkipReason::Crc8dMismatch => "crc8d_mismatch",
        }
    }
}

/// What the stream parser yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamItem {
    /// A whole, CRC-checked frame (sync to CRC8D). [`parse_packet`] on it cannot fail.
    Frame(Bytes),
    /// Bytes that were skipped, and why (reported so they can go to dead letter).
    Skipped { bytes: Bytes, reason: SkipReason },
}

/// Running totals of a [`StreamParser`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    pub frames: u64,
    /// Bytes skipped as garbage (outside any frame).
    pub garbage_bytes: u64,
    /// 0x55 bytes that looked like a sync but whose header CRC did not match.
    pub crc8h_errors: u64,
    /// Frames dropped for a bad data CRC.
    pub crc8d_errors: u64,
}

/// A resynchronising ESP3 parser for one byte stream (one gateway's serial data). Push bytes as they
/// arrive, then take items until [`StreamParser::next_item`] gives `None`. Nothing here is fatal:
/// garbage and bad CRCs are skipped, counted and handed back as [`StreamItem::Skipped`].
#[derive(Debug)]
pub struct StreamParser {
    buf: BytesMut,
    garbage: BytesMut,
    max_frame: usize,
    stats: StreamStats,
}

impl Default for StreamParser {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

/// The longest run of garbage reported as one item.
const MAX_GARBAGE_RUN: usize = 4096;

impl StreamParser {
    pub fn new(max_frame: usize) -> Self {
        StreamParser {
            buf: BytesMut::new(),
            garbage: BytesMut::new(),
            max_frame: max_frame.max(HEADER_LEN + 1),
            stats: StreamStats::default(),
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    pub fn stats(&self) -> StreamStats {
        self.stats
    }

    /// Bytes held back because they may be the start of a frame still arriving.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    fn skip_garbage(&mut self, n: usize) {
        self.stats.garbage_bytes += n as u64;
        let bytes = self.buf.split_to(n);
        self.garbage.extend_from_slice(&bytes);
    }

    fn take_garbage(&mut self) -> Option<StreamItem> {
        if self.garbage.is_empty() {
            return None;
        }
        let n = self.garbage.len().min(MAX_GARBAGE_RUN);
        Some(StreamItem::Skipped {
            bytes: self.garbage.split_to(n).freeze(),
            reason: SkipReason::Garbage,
        })
    }

    /// The next frame or skipped run, or `None` when more bytes are needed.
    pub fn next_item(&mut self) -> Option<StreamItem> {
        loop {
            if self.garbage.len() >= MAX_GARBAGE_RUN {
                return self.take_garbage();
            }
            match self.buf.iter().position(|&b| b == SYNC) {
                None => {
                    let n = self.buf.len();
                    self.skip_garbage(n);
                    return self.take_garbage();
                }
                Some(0) => {}
                Some(i) => {
                    self.skip_garbage(i);
                    continue;
                }
            }
            if self.buf.len() < HEADER_LEN {
                return self.take_garbage();
            }
            let data_len = u16::from_be_bytes([self.buf[1], self.buf[2]]) as usize;
            let total = frame_len(data_len, self.buf[3] as usize);
            if crc8(&self.buf[1..5]) != self.buf[5] || total > self.max_frame {
                self.stats.crc8h_errors += 1;
                self.skip_garbage(1);
                continue;
            }
            // A good header: report the garbage before it first, so items come out in stream order.
            if let Some(garbage) = self.take_garbage() {
                return Some(garbage);
            }
            if self.buf.len() < total {
                return None;
            }
            let frame = self.buf.split_to(total).freeze();
            if crc8(&frame[HEADER_LEN..total - 1]) != frame[total - 1] {
                self.stats.crc8d_errors += 1;
                return Some(StreamItem::Skipped {
                    bytes: frame,
                    reason: SkipReason::Crc8dMismatch,
                });
            }
            self.stats.frames += 1;
            return Some(StreamItem::Frame(frame));
        }
    }

    /// Ends the stream: whatever is still held (a frame cut short) is handed back as garbage.
    pub fn finish(&mut self) -> Option<StreamItem> {
        let n = self.buf.len();
        self.skip_garbage(n);
        self.take_garbage()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    #[test]
    fn crc8_check_value() {
        assert_eq!(crc8(b"123456789"), 0xF4);
    }

    #[test]
    fn spec_example_packets_validate() {
        let common = unhex("5500010005700838");
        let (p, len) = parse_packet(&common).unwrap();
        assert_eq!((p.packet_type, p.data, len), (5, &[0x08][..], 8));
        let frame = unhex("55000f07012bd2dddddddddddddddddd008035c40003ffffffff4d0036");
        let (p, _) = parse_packet(&frame).unwrap();
        assert_eq!(p.packet_type, packet_type::RADIO_ERP1);
        assert_eq!(p.data.len(), 15);
        assert_eq!(p.optional, &unhex("03ffffffff4d00")[..]);
        assert_eq!(encode(p.packet_type, p.data, p.optional), frame);
    }

    #[test]
    fn single_frame_errors_are_named() {
        let bad_d = unhex("55000a0701eba5000080080180a1b20001ffffffff4500ae");
        assert_eq!(parse_packet(&bad_d).unwrap_err().code(), "crc8d_mismatch");
        let bad_h = unhex("55000a0701eaa5000080080180a1b20001ffffffff450051");
        assert_eq!(parse_packet(&bad_h).unwrap_err().code(), "crc8h_mismatch");
        assert_eq!(parse_packet(&[0x00]).unwrap_err(), FrameError::NoSync);
        assert!(matches!(
            parse_packet(&bad_d[..10]).unwrap_err(),
            FrameError::Truncated { .. }
        ));
    }

    #[test]
    fn stream_resyncs_over_garbage_and_split_pushes() {
        let stream = unhex(
            "0055ff1255000a0701eba5000080080180a1b20001ffffffff45005155000707017ad5090180a1bb0001ffffffff440061",
        );
        // Byte by byte, the way the worst gateway could deliver it.
        let mut parser = StreamParser::default();
        let mut items = Vec::new();
        for b in &stream {
            parser.push(&[*b]);
            while let Some(item) = parser.next_item() {
                items.push(item);
            }
        }
        let frames: Vec<_> = items
            .iter()
            .filter_map(|i| match i {
                StreamItem::Frame(f) => Some(f.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(frames.len(), 2);
        assert_eq!(
            frames[1][..],
            unhex("55000707017ad5090180a1bb0001ffffffff440061")[..]
        );
        let skipped: usize = items
            .iter()
            .map(|i| match i {
                StreamItem::Skipped { bytes, .. } => bytes.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(skipped, 4);
        assert_eq!(parser.stats().garbage_bytes, 4);
        assert_eq!(parser.stats().crc8h_errors, 1);
        assert_eq!(parser.pending(), 0);
    }

    #[test]
    fn bad_data_crc_skips_the_frame_and_keeps_the_next() {
        let mut stream = unhex("55000a0701eba5000080080180a1b20001ffffffff4500ae");
        stream.extend(unhex("55000707017ad5090180a1bb0001ffffffff440061"));
        let mut parser = StreamParser::default();
        parser.push(&stream);
        let first = parser.next_item().unwrap();
        assert!(matches!(
            first,
            StreamItem::Skipped {
                reason: SkipReason::Crc8dMismatch,
                ..
            }
        ));
        assert!(matches!(parser.next_item(), Some(StreamItem::Frame(_))));
        assert_eq!(parser.next_item(), None);
        assert_eq!(parser.stats().crc8d_errors, 1);
    }

    #[test]
    fn false_sync_with_huge_length_does_not_swallow_packets() {
        // 0x55 FF FF 00 01 + its (matching) header CRC claims a 64 KiB frame.
        let mut stream = vec![0x55, 0xff, 0xff, 0x00, 0x01];
        stream.push(crc8(&stream[1..5]));
        stream.extend(unhex("55000707017ad5090180a1bb0001ffffffff440061"));
        let mut parser = StreamParser::default();
        parser.push(&stream);
        assert!(matches!(
            parser.next_item(),
            Some(StreamItem::Skipped { .. })
        ));
        assert!(matches!(parser.next_item(), Some(StreamItem::Frame(_))));
    }

    #[test]
    fn a_cut_frame_waits_and_finish_reports_it() {
        let frame = unhex("55000707017ad5090180a1bb0001ffffffff440061");
        let mut parser = StreamParser::default();
        parser.push(&frame[..12]);
        assert_eq!(parser.next_item(), None);
        assert_eq!(parser.pending(), 12);
        assert!(matches!(
            parser.finish(),
            Some(StreamItem::Skipped {
                reason: SkipReason::Garbage,
                ..
            })
        ));
    }
}
