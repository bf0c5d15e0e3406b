//! Reassembly of chained telegrams: CDM (RORG 0x40) and SEC_CDM (RORG 0x33), fact sheet §2
//! "Chaining".
//!
//! ```text
//! first part (IDX 0): SEQ/IDX | LEN (2, BE; message length without the inner RORG) | inner RORG | chunk
//! next parts (IDX n): SEQ/IDX | chunk
//! SEC_CDM first part: SEQ/IDX | LEN | chunk          (no inner RORG; the message is a SEC_ENCAPS body)
//! ```
//!
//! SEQ is bits 7..6 of the SEQ/IDX byte, IDX bits 5..0. Parts are collected per (sender, chain RORG,
//! SEQ), in any order; a message is complete when the parts from IDX 0 on, without a gap, hold at
//! least LEN bytes. Dedupe receptions from several gateways before pushing (see
//! [`super::telegram::content_key`]); a repeated IDX is ignored here anyway.
//!
//! Memory is bounded: at most `max_pending` partial messages (the oldest is evicted to make room),
//! each at most 64 parts (IDX has 6 bits).

#![warn(missing_docs)]

use super::telegram::{Telegram, rorg};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Whether `rorg` is a chained telegram this module reassembles: CDM 0x40 or SEC_CDM 0x33 (§2).
pub fn is_chained(rorg: u8) -> bool {
    rorg == rorg::CDM || rorg == rorg::SEC_CDM
}

/// Why a part could not be used (fact sheet §2, Chaining).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The part's RORG is not a chained one.
    #[error("not_chained: RORG {rorg:#04x} is not CDM (0x40) or SEC_CDM (0x33)")]
    NotChained {
        /// The part's RORG.
        rorg: u8,
    },
    /// The part ends inside the SEQ/IDX byte or the first-part header.
    #[error("too_short: a chained part needs {needed} payload bytes, it has {available}")]
    TooShort {
        /// Bytes the header needs.
        needed: usize,
        /// Bytes the part has.
        available: usize,
    },
    /// LEN is 0.
    #[error("empty_message: the first chained part announces a message length of 0")]
    EmptyMessage,
    /// The inner RORG is CDM, SEC_CDM or ADT.
    #[error(
        "nested_chain: the first chained part announces inner RORG {inner_rorg:#04x}, which cannot be chained or encapsulated again"
    )]
    NestedChain {
        /// The announced inner RORG.
        inner_rorg: u8,
    },
}

impl ChainError {
    /// Short machine name for counters and dead letters.
    pub fn code(&self) -> &'static str {
        match self {
            ChainError::NotChained { .. } => "not_chained",
            ChainError::TooShort { .. } => "too_short",
            ChainError::EmptyMessage => "empty_message",
            ChainError::NestedChain { .. } => "nested_chain",
        }
    }
}

/// What pushing one part gave (fact sheet §2, Chaining).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainOutcome {
    /// Stored (or a repeat, ignored); the message is not complete yet.
    Pending,
    /// The whole message: `rorg` is the inner RORG (0x31 SEC_ENCAPS for SEC_CDM), `payload` the joined
    /// message cut to LEN, `chained` set; sender, status, destination, sub-telegram count and security
    /// level come from the first part (IDX 0), `dbm` is the best of the parts.
    Complete(Telegram),
    /// The part was malformed and was dropped.
    Error(ChainError),
}

/// A partial message dropped by [`Assembler::expire`] because its parts did not all arrive in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    /// Sender ID of the parts.
    pub sender: u32,
    /// SEQ (bits 7..6 of the SEQ/IDX byte).
    pub seq: u8,
    /// Message bytes collected (all parts, first chunk included).
    pub received: usize,
    /// LEN from the first part; `None` if the first part never arrived.
    pub expected: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    sender: u32,
    chain_rorg: u8,
    seq: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    len: usize,
    inner_rorg: u8,
}

#[derive(Debug)]
struct Partial {
    generation: u64,
    started: Instant,
    header: Option<Header>,
    /// Sorted by IDX, one chunk per IDX.
    chunks: Vec<(u8, Vec<u8>)>,
    /// Reception fields for the result: from IDX 0 once it arrived, else from the earliest part.
    template: Telegram,
    best_dbm: Option<i32>,
}

impl Partial {
    fn received(&self) -> usize {
        self.chunks.iter().map(|(_, c)| c.len()).sum()
    }

    /// The joined message if the parts from IDX 0 on, without a gap, hold LEN bytes.
    fn try_join(&self) -> Option<Vec<u8>> {
        let header = self.header?;
        let mut contiguous = 0;
        let mut parts = 0;
        for (expected_idx, (idx, chunk)) in self.chunks.iter().enumerate() {
            if usize::from(*idx) != expected_idx {
                break;
            }
            contiguous += chunk.len();
            parts += 1;
            if contiguous >= header.len {
                break;
            }
        }
        if contiguous < header.len {
            return None;
        }
        let mut joined = Vec::with_capacity(contiguous);
        for (_, chunk) in &self.chunks[..parts] {
            joined.extend_from_slice(chunk);
        }
        joined.truncate(header.len);
        Some(joined)
    }
}

/// The better (less negative) of two RSSI values.
fn best_dbm(a: Option<i32>, b: Option<i32>) -> Option<i32> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// One part, split per §2: SEQ, IDX, the first-part header (IDX 0) and the chunk.
struct Part<'a> {
    seq: u8,
    idx: u8,
    header: Option<Header>,
    chunk: &'a [u8],
}

fn split_part(chain_rorg: u8, payload: &[u8]) -> Result<Part<'_>, ChainError> {
    let Some(&seq_idx) = payload.first() else {
        return Err(ChainError::TooShort {
            needed: 1,
            available: 0,
        });
    };
    let seq = seq_idx >> 6;
    let idx = seq_idx & 0x3F;
    if idx != 0 {
        return Ok(Part {
            seq,
            idx,
            header: None,
            chunk: &payload[1..],
        });
    }
    let has_inner_rorg = chain_rorg == rorg::CDM;
    let header_len = 3 + usize::from(has_inner_rorg);
    if payload.len() < header_len {
        return Err(ChainError::TooShort {
            needed: header_len,
            available: payload.len(),
        });
    }
    let len = usize::from(u16::from_be_bytes([payload[1], payload[2]]));
    if len == 0 {
        return Err(ChainError::EmptyMessage);
    }
    let inner_rorg = if has_inner_rorg {
        payload[3]
    } else {
        rorg::SEC_ENCAPS
    };
    if is_chained(inner_rorg) || inner_rorg == rorg::ADT {
        return Err(ChainError::NestedChain { inner_rorg });
    }
    Ok(Part {
        seq,
        idx,
        header: Some(Header { len, inner_rorg }),
        chunk: &payload[header_len..],
    })
}

/// Collects chained parts per sender into whole telegrams (fact sheet §2, Chaining). No clock of its
/// own: the caller passes the reception time to [`Assembler::push`] and calls [`Assembler::expire`]
/// now and then (the fact sheet's receivers drop partials after about 3 s).
#[derive(Debug)]
pub struct Assembler {
    timeout: Duration,
    max_pending: usize,
    partials: HashMap<Key, Partial>,
    /// Partials in the order they were started, for eviction; entries whose generation no longer
    /// matches the map are stale and skipped.
    order: VecDeque<(Key, u64)>,
    next_generation: u64,
    evicted: u64,
}

impl Assembler {
    /// An assembler that drops partials older than `timeout` (on [`Assembler::expire`]) and holds at
    /// most `max_pending` of them (at least 1).
    pub fn new(timeout: Duration, max_pending: usize) -> Self {
        Assembler {
            timeout,
            max_pending: max_pending.max(1),
            partials: HashMap::new(),
            order: VecDeque::new(),
            next_generation: 0,
            evicted: 0,
        }
    }

    /// Partial messages held.
    pub fn pending(&self) -> usize {
        self.partials.len()
    }

    /// Partials dropped so far to stay within `max_pending`.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Adds one part (a telegram with RORG 0x40 or 0x33, as [`Telegram::from_packet`] gives it).
    pub fn push(&mut self, part: Telegram, now: Instant) -> ChainOutcome {
        if !is_chained(part.rorg) {
            return ChainOutcome::Error(ChainError::NotChained { rorg: part.rorg });
        }
        let split = match split_part(part.rorg, &part.payload) {
            Ok(split) => split,
            Err(e) => return ChainOutcome::Error(e),
        };
        let key = Key {
            sender: part.sender,
            chain_rorg: part.rorg,
            seq: split.seq,
        };
        let chunk = split.chunk.to_vec();
        let template = Telegram {
            payload: Vec::new(),
            ..part
        };

        if let Some(partial) = self.partials.get_mut(&key) {
            match partial
                .chunks
                .binary_search_by_key(&split.idx, |(idx, _)| *idx)
            {
                Ok(pos) => {
                    let same = partial.chunks[pos].1 == chunk && partial.header == split.header;
                    if same || split.idx != 0 {
                        return ChainOutcome::Pending;
                    }
                    // A different first part under the same SEQ: the sender started a new message
                    // (the old one lost a part). Start over.
                    self.remove(&key);
                }
                Err(pos) => {
                    partial.chunks.insert(pos, (split.idx, chunk));
                    partial.best_dbm = best_dbm(partial.best_dbm, template.dbm);
                    if split.header.is_some() {
                        partial.header = split.header;
                        partial.template = template;
                    }
                    return self.complete_if_ready(key);
                }
            }
        }

        self.make_room();
        let generation = self.next_generation;
        self.next_generation += 1;
        self.partials.insert(
            key,
            Partial {
                generation,
                started: now,
                header: split.header,
                chunks: vec![(split.idx, chunk)],
                best_dbm: template.dbm,
                template,
            },
        );
        self.order.push_back((key, generation));
        self.complete_if_ready(key)
    }

    fn complete_if_ready(&mut self, key: Key) -> ChainOutcome {
        let Some(partial) = self.partials.get(&key) else {
            return ChainOutcome::Pending;
        };
        let (Some(header), Some(joined)) = (partial.header, partial.try_join()) else {
            return ChainOutcome::Pending;
        };
        let Some(partial) = self.remove(&key) else {
            return ChainOutcome::Pending;
        };
        ChainOutcome::Complete(Telegram {
            rorg: header.inner_rorg,
            payload: joined,
            dbm: partial.best_dbm,
            chained: true,
            ..partial.template
        })
    }

    fn remove(&mut self, key: &Key) -> Option<Partial> {
        let removed = self.partials.remove(key);
        self.compact_order();
        removed
    }

    /// Keeps the order queue within a constant factor of the live partials.
    fn compact_order(&mut self) {
        if self.order.len() > 2 * self.partials.len() + 32 {
            let partials = &self.partials;
            self.order.retain(|(key, generation)| {
                partials.get(key).map(|p| p.generation) == Some(*generation)
            });
        }
    }

    /// Evicts the oldest partials until one more fits.
    fn make_room(&mut self) {
        while self.partials.len() >= self.max_pending {
            let Some((key, generation)) = self.order.pop_front() else {
                break;
            };
            if self.partials.get(&key).map(|p| p.generation) == Some(generation) {
                self.partials.remove(&key);
                self.evicted += 1;
            }
        }
    }

    /// Removes and returns the partials started more than `timeout` before `now`, ordered by sender
    /// and SEQ.
    pub fn expire(&mut self, now: Instant) -> Vec<Expired> {
        let timeout = self.timeout;
        let mut expired = Vec::new();
        self.partials.retain(|key, partial| {
            let keep = now.saturating_duration_since(partial.started) <= timeout;
            if !keep {
                expired.push(Expired {
                    sender: key.sender,
                    seq: key.seq,
                    received: partial.received(),
                    expected: partial.header.map(|h| h.len),
                });
            }
            keep
        });
        if !expired.is_empty() {
            self.compact_order();
            if self.partials.is_empty() {
                self.order.clear();
            }
        }
        expired.sort_by_key(|e| (e.sender, e.seq));
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::super::esp3::packet_type;
    use super::super::telegram::test_support::Rng;
    use super::*;

    fn part(rorg_byte: u8, sender: u32, payload: &[u8], dbm: Option<i32>) -> Telegram {
        Telegram {
            packet_type: packet_type::RADIO_ERP1,
            rorg: rorg_byte,
            payload: payload.to_vec(),
            sender,
            status: 0x80,
            sub_tel_num: Some(1),
            destination: Some(0xFFFF_FFFF),
            dbm,
            security_level: Some(0),
            adt: false,
            chained: false,
        }
    }

    fn complete(outcome: ChainOutcome) -> Telegram {
        match outcome {
            ChainOutcome::Complete(t) => t,
            other => panic!("expected Complete, got {other:?}"),
        }
    }

    #[test]
    fn three_parts_out_of_order_join_in_idx_order_and_keep_the_best_dbm() {
        let now = Instant::now();
        let mut a = Assembler::new(Duration::from_secs(3), 8);
        // SEQ 2, LEN 7, inner RORG D2.
        assert_eq!(
            a.push(part(0x40, 7, &[0x82, 1, 2, 3], Some(-60)), now),
            ChainOutcome::Pending
        );
        assert_eq!(
            a.push(part(0x40, 7, &[0x80, 0, 7, 0xD2, 0, 1], Some(-70)), now),
            ChainOutcome::Pending
        );
        let t = complete(a.push(part(0x40, 7, &[0x81, 9, 9], Some(-90)), now));
        assert_eq!(
            (t.rorg, t.payload.as_slice()),
            (0xD2, &[0, 1, 9, 9, 1, 2, 3][..])
        );
        assert_eq!(t.dbm, Some(-60));
        assert!(t.chained);
        assert_eq!(a.pending(), 0);
    }

    #[test]
    fn excess_bytes_are_cut_to_len_and_a_single_part_message_completes_at_once() {
        let mut a = Assembler::new(Duration::from_secs(3), 8);
        let t = complete(a.push(
            part(0x40, 1, &[0x40, 0, 2, 0xA5, 5, 6, 0, 0], None),
            Instant::now(),
        ));
        assert_eq!((t.rorg, t.payload.as_slice()), (0xA5, &[5, 6][..]));
        assert_eq!(a.pending(), 0);
    }

    #[test]
    fn a_gap_keeps_the_message_pending() {
        let now = Instant::now();
        let mut a = Assembler::new(Duration::from_secs(3), 8);
        assert_eq!(
            a.push(part(0x40, 1, &[0x40, 0, 4, 0xD2, 1, 2], None), now),
            ChainOutcome::Pending
        );
        // IDX 2 would make up the length, but IDX 1 is missing.
        assert_eq!(
            a.push(part(0x40, 1, &[0x42, 5, 6], None), now),
            ChainOutcome::Pending
        );
        let t = complete(a.push(part(0x40, 1, &[0x41, 3, 4], None), now));
        assert_eq!(t.payload, [1, 2, 3, 4]);
    }

    #[test]
    fn sec_cdm_has_no_inner_rorg_and_gives_a_sec_encaps_body() {
        let now = Instant::now();
        let mut a = Assembler::new(Duration::from_secs(3), 8);
        assert_eq!(
            a.push(part(0x33, 5, &[0xC0, 0, 5, 0xAA, 0xBB, 0xCC], None), now),
            ChainOutcome::Pending
        );
        let t = complete(a.push(part(0x33, 5, &[0xC1, 0xDD, 0xEE], None), now));
        assert_eq!(
            (t.rorg, t.payload.as_slice()),
            (0x31, &[0xAA, 0xBB, 0xCC, 0xDD, 0xEE][..])
        );
    }

    #[test]
    fn repeated_parts_are_ignored_and_senders_and_sequences_kept_apart() {
        let now = Instant::now();
        let mut a = Assembler::new(Duration::from_secs(3), 8);
        let first = part(0x40, 1, &[0x40, 0, 4, 0xD2, 1, 2], None);
        assert_eq!(a.push(first.clone(), now), ChainOutcome::Pending);
        assert_eq!(a.push(first, now), ChainOutcome::Pending);
        assert_eq!(
            a.push(part(0x40, 2, &[0x40, 0, 4, 0xD2, 7, 7], None), now),
            ChainOutcome::Pending
        );
        assert_eq!(
            a.push(part(0x40, 1, &[0x80, 0, 4, 0xD2, 8, 8], None), now),
            ChainOutcome::Pending
        );
        assert_eq!(a.pending(), 3);
        let t = complete(a.push(part(0x40, 1, &[0x41, 3, 4], None), now));
        assert_eq!((t.sender, t.payload.as_slice()), (1, &[1, 2, 3, 4][..]));
        assert_eq!(a.pending(), 2);
    }

    #[test]
    fn a_new_first_part_under_the_same_seq_starts_over() {
        let now = Instant::now();
        let mut a = Assembler::new(Duration::from_secs(3), 8);
        assert_eq!(
            a.push(part(0x40, 1, &[0x40, 0, 4, 0xD2, 1, 2], None), now),
            ChainOutcome::Pending
        );
        assert_eq!(
            a.push(part(0x40, 1, &[0x40, 0, 4, 0xD2, 5, 6], None), now),
            ChainOutcome::Pending
        );
        assert_eq!(a.pending(), 1);
        let t = complete(a.push(part(0x40, 1, &[0x41, 7, 8], None), now));
        assert_eq!(t.payload, [5, 6, 7, 8]);
    }

    #[test]
    fn expiry_after_the_timeout_reports_and_frees_partials() {
        let start = Instant::now();
        let mut a = Assembler::new(Duration::from_secs(3), 8);
        assert_eq!(
            a.push(part(0x40, 9, &[0x40, 0, 20, 0xD2, 1, 2, 3], None), start),
            ChainOutcome::Pending
        );
        assert_eq!(
            a.push(
                part(0x40, 3, &[0x42, 1], None),
                start + Duration::from_secs(2)
            ),
            ChainOutcome::Pending
        );
        assert!(a.expire(start + Duration::from_secs(3)).is_empty());
        let expired = a.expire(start + Duration::from_millis(3500));
        assert_eq!(
            expired,
            [Expired {
                sender: 9,
                seq: 1,
                received: 3,
                expected: Some(20)
            }]
        );
        assert_eq!(a.pending(), 1);
        let expired = a.expire(start + Duration::from_secs(6));
        assert_eq!(
            expired,
            [Expired {
                sender: 3,
                seq: 1,
                received: 1,
                expected: None
            }]
        );
        assert_eq!(a.pending(), 0);
        assert!(a.order.is_empty());
        // The late part of the expired message starts a new partial instead of completing.
        assert_eq!(
            a.push(
                part(0x40, 9, &[0x41, 4], None),
                start + Duration::from_secs(7)
            ),
            ChainOutcome::Pending
        );
    }

    #[test]
    fn a_flood_of_first_parts_stays_within_max_pending() {
        let now = Instant::now();
        let mut a = Assembler::new(Duration::from_secs(3), 100);
        for sender in 0..100_000u32 {
            assert_eq!(
                a.push(part(0x40, sender, &[0x40, 0, 50, 0xD2, 1], None), now),
                ChainOutcome::Pending
            );
            assert!(a.pending() <= 100);
            assert!(a.order.len() <= 2 * 100 + 32 + 1);
        }
        assert_eq!(a.pending(), 100);
        assert_eq!(a.evicted(), 100_000 - 100);
        // The newest survive: the last sender's message can still complete.
        let mut rest = vec![0x41];
        rest.extend(std::iter::repeat_n(0, 49));
        assert!(matches!(
            a.push(part(0x40, 99_999, &rest, None), now),
            ChainOutcome::Complete(_)
        ));
        assert_eq!(
            a.push(part(0x40, 0, &rest, None), now),
            ChainOutcome::Pending
        );
    }

    #[test]
    fn malformed_parts_are_errors() {
        let now = Instant::now();
        let mut a = Assembler::new(Duration::from_secs(3), 8);
        let cases = [
            (part(0xD2, 1, &[0x40, 0, 1, 0xD2, 1], None), "not_chained"),
            (part(0x40, 1, &[], None), "too_short"),
            (part(0x40, 1, &[0x40, 0, 1], None), "too_short"),
            (part(0x33, 1, &[0x40, 0], None), "too_short"),
            (part(0x40, 1, &[0x40, 0, 0, 0xD2], None), "empty_message"),
            (
                part(0x40, 1, &[0x40, 0, 2, 0x40, 1, 2], None),
                "nested_chain",
            ),
            (
                part(0x40, 1, &[0x40, 0, 2, 0xA6, 1, 2], None),
                "nested_chain",
            ),
        ];
        for (p, code) in cases {
            match a.push(p, now) {
                ChainOutcome::Error(e) => assert_eq!(e.code(), code),
                other => panic!("expected {code}, got {other:?}"),
            }
        }
        assert_eq!(a.pending(), 0);
    }

    #[test]
    fn random_parts_never_panic_and_stay_bounded() {
        let now = Instant::now();
        let mut rng = Rng(0xD1B5_4A32_D192_ED03);
        let mut a = Assembler::new(Duration::from_secs(3), 16);
        for i in 0..50_000u64 {
            let rorg_byte = if i % 2 == 0 { 0x40 } else { 0x33 };
            let sender = (rng.next() % 4) as u32;
            let payload = rng.bytes(16);
            let _ = a.push(
                part(rorg_byte, sender, &payload, None),
                now + Duration::from_millis(i),
            );
            assert!(a.pending() <= 16);
            if i % 1000 == 0 {
                a.expire(now + Duration::from_millis(i));
            }
        }
    }
}
