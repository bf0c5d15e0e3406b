//! EnOcean security (fact sheet `protocols/enocean.md` §3, from "Security of EnOcean Radio Networks"
//! v1.9 with the newer SLF reading): VAES, AES-CMAC, the rolling-code (RLC) window and secure teach-in
//! (SEC_TI). Bytes in, typed values out; no I/O, no clock.
//!
//! An operation telegram after its RORG (0x30 SEC or 0x31 SEC_ENCAPS) is
//! `ENC_DATA ‖ [RLC if transmitted] ‖ CMAC`. The CMAC covers `RORG ‖ ENC_DATA ‖ RLC`, with the RLC
//! included even when it is not sent, so an implicit RLC is found by trying the candidates of the
//! window until one authenticates.
//!
//! Decisions where the fact sheet leaves room:
//! - **SLF bits 7..5** use the v2+ 3-bit RLC mode. It agrees with v1.9 (`RLC_ALGO` bits 7..6,
//!   `RLC_TX` bit 5) wherever v1.9 defines a value, so both readings are accepted at once: 0 none,
//!   2 16-bit implicit, 3 16-bit explicit (v1.9 `RLC_ALGO`=1 with `RLC_TX`; the v2 table leaves 3
//!   unlisted), 4 24-bit implicit, 5 24-bit explicit, 6 32-bit with 24 bits sent, 7 32-bit explicit
//!   (v1.9 marks `RLC_ALGO`=3 "n/a", so 6 and 7 only have the v2 meaning). Mode 1 (v1.9: no RLC yet
//!   "transmitted") means nothing in either reading and is refused as unsupported.
//! - **Mode 6** is a 32-bit counter of which the telegram carries the low 3 bytes; CMAC and VAES use
//!   all 4 bytes. The receiver restores the high byte from [`RlcState::next`]: first the nearest value
//!   at or after it, then (for the replay verdict) the one 2^24 earlier. The CMAC decides.
//! - **Explicit RLC**: accepted when it is `>= state.next` (any forward jump, the CMAC authenticates
//!   it); an authentic RLC below `state.next` is a replay. The state is not wrapped, so a counter that
//!   reaches the end of its width needs a new teach-in (the fact sheet's resync rule).
//! - **Implicit RLC** counts modulo its width (16, 24 or 32 bits).
//! - **PTM nibble rule** (fact sheet A.4.2): a SEC (0x30) telegram with a single ENC_DATA byte whose
//!   high nibble is 0 is a PTM switch telegram: only the low 4 bits of the VAES ciphertext are sent,
//!   and the plaintext is `(byte ⊕ keystream[0]) & 0x0F`. A one-byte SEC telegram from another device
//!   whose ciphertext happens to have a zero high nibble (1 in 16) therefore decrypts to its low nibble
//!   only; 1BS data (contact DB0.0, LRN DB0.3) lives there.
//! - **AES-CBC** (DATA_ENC 4, only for chained data) and unknown DATA_ENC values are refused as
//!   unsupported rather than guessed.

use std::collections::HashMap;
use std::fmt;

use aes::Aes128;
use aes::cipher::{BlockEncrypt, KeyInit, generic_array::GenericArray};
use cmac::{Cmac, Mac};

/// RORG of a secure telegram whose data has no RORG of its own (fact sheet §2/§3: SEC).
pub const RORG_SEC: u8 = 0x30;
/// RORG of a secure telegram that encrypts the inner RORG with the data (fact sheet §2/§3: SEC_ENCAPS).
pub const RORG_SEC_ENCAPS: u8 = 0x31;
/// RORG reported for a decrypted SEC telegram, whose data has no RORG (fact sheet §2: SECD).
pub const RORG_SECD: u8 = 0x32;
/// RORG of a secure teach-in telegram (fact sheet §3: SEC_TI).
pub const RORG_SEC_TI: u8 = 0x35;
/// The VAES public constant (fact sheet §3, "Encryption", variant 3).
pub const VAES_PUBLIC: [u8; 16] = [
    0x34, 0x10, 0xDE, 0x8F, 0x1A, 0xBA, 0x3E, 0xFF, 0x9F, 0x5A, 0x11, 0x71, 0x72, 0xEA, 0xCA, 0xBD,
];
/// How many rolling codes the receiver tries ahead of (and, for the replay verdict, behind) the
/// expected one (fact sheet §3, "Replay window": 128).
pub const DEFAULT_WINDOW: u32 = 128;
/// At most this many senders may have a half-received SEC_TI at once; the oldest is dropped first.
pub const MAX_PENDING_TEACH_INS: usize = 256;

const KEY_LEN: usize = 16;
const BLOCK_LEN: usize = 16;

/// A 128-bit AES key (fact sheet §3: AES-128 for VAES and CMAC); Debug prints "***".
#[derive(Clone, PartialEq, Eq)]
pub struct Key(pub [u8; 16]);

impl Key {
    /// Reads a key written as 32 hex digits, optionally with a `0x` prefix and surrounding spaces. The
    /// error never repeats the text, which may be a real key with a typo.
    pub fn from_hex(s: &str) -> Result<Key, SecureError> {
        let trimmed = s.trim();
        let digits = trimmed
            .strip_prefix("0x")
            .or_else(|| trimmed.strip_prefix("0X"))
            .unwrap_or(trimmed);
        if digits.len() != 2 * KEY_LEN {
            return Err(SecureError::BadKey(format!(
                "an AES-128 key is 32 hex digits, {} characters given",
                digits.chars().count()
            )));
        }
        let mut bytes = [0u8; KEY_LEN];
        hex::decode_to_slice(digits, &mut bytes).map_err(|_| {
            SecureError::BadKey("the key contains a character that is not a hex digit".into())
        })?;
        Ok(Key(bytes))
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The DATA_ENC field of an SLF (fact sheet §3, SLF table bits 2..0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encryption {
    /// 0: data sent in the clear (authenticated only).
    None,
    /// 3: VAES (variant 3).
    Vaes,
    /// 4: AES-CBC (variant 4); recognised but not supported by [`decrypt`].
    AesCbc,
    /// Any other value.
    Unknown(u8),
}

/// Security level format byte (fact sheet §3 SLF table, v2+ meaning for RLC bits 7..5, which agrees
/// with the v1.9 reading wherever v1.9 defines a value; see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slf(pub u8);

impl Slf {
    fn rlc_mode(self) -> u8 {
        self.0 >> 5
    }

    fn mac_algo(self) -> u8 {
        (self.0 >> 3) & 0b11
    }

    /// Width of the rolling code in bytes as it enters CMAC and VAES: 0, 2, 3 or 4 (SLF bits 7..5).
    pub fn rlc_bytes(self) -> usize {
        match self.rlc_mode() {
            2 | 3 => 2,
            4 | 5 => 3,
            6 | 7 => 4,
            _ => 0,
        }
    }

    /// Whether the telegram carries the rolling code (explicit RLC; modes 3, 5, 6, 7).
    pub fn rlc_transmitted(self) -> bool {
        matches!(self.rlc_mode(), 3 | 5 | 6 | 7)
    }

    /// How many RLC bytes the telegram carries: 0 (implicit or none), 2, 3 (mode 5, and mode 6, whose
    /// 32-bit counter is sent as its low 24 bits) or 4.
    pub fn rlc_sent_bytes(self) -> usize {
        match self.rlc_mode() {
            3 => 2,
            5 | 6 => 3,
            7 => 4,
            _ => 0,
        }
    }

    /// How many leading CMAC bytes the telegram carries: 0, 3 or 4 (SLF bits 4..3; value 3 is
    /// undefined and reported as 0 here, [`Slf::check`] refuses it).
    pub fn mac_bytes(self) -> usize {
        match self.mac_algo() {
            1 => 3,
            2 => 4,
            _ => 0,
        }
    }

    /// The data encryption (SLF bits 2..0).
    pub fn encryption(self) -> Encryption {
        match self.0 & 0b111 {
            0 => Encryption::None,
            3 => Encryption::Vaes,
            4 => Encryption::AesCbc,
            other => Encryption::Unknown(other),
        }
    }

    /// Refuses the RLC and MAC codes that neither SLF reading defines (RLC mode 1, MAC_ALGO 3).
    pub fn check(self) -> Result<(), SecureError> {
        if self.rlc_mode() == 1 {
            return Err(SecureError::Unsupported(format!(
                "SLF {:#04x}: RLC mode 1 is undefined",
                self.0
            )));
        }
        if self.mac_algo() == 3 {
            return Err(SecureError::Unsupported(format!(
                "SLF {:#04x}: MAC_ALGO 3 is undefined",
                self.0
            )));
        }
        Ok(())
    }

    /// [`Slf::check`] plus an encryption [`decrypt`] and [`encrypt`] can apply.
    fn check_crypt(self) -> Result<Encryption, SecureError> {
        self.check()?;
        match self.encryption() {
            enc @ (Encryption::None | Encryption::Vaes) => Ok(enc),
            Encryption::AesCbc => Err(SecureError::Unsupported(format!(
                "SLF {:#04x}: AES-CBC data encryption is not supported",
                self.0
            ))),
            Encryption::Unknown(v) => Err(SecureError::Unsupported(format!(
                "SLF {:#04x}: DATA_ENC {v} is undefined",
                self.0
            ))),
        }
    }
}

/// Per-device security state: the next rolling code expected (fact sheet §3, "Replay window": store
/// accepted + 1; persist per device).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RlcState {
    pub next: u32,
}

/// A decrypted secure telegram (fact sheet §2/§3): the inner RORG for SEC_ENCAPS, [`RORG_SECD`] (0x32)
/// for SEC, whose data has no RORG; the data; the rolling code that authenticated it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decrypted {
    pub rorg: u8,
    pub data: Vec<u8>,
    pub rlc: u32,
}

/// Why a secure telegram was refused (event names from the EnOcean IoT Connector's event table).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecureError {
    /// The CMAC does not match for any RLC in the window.
    #[error(
        "MAC_VALIDATION_ERROR: the CMAC matches no rolling code in the window (wrong key, corrupted telegram, a device far ahead of its stored RLC, or forgery)"
    )]
    MacValidation,
    /// The CMAC matches an RLC already used: an explicit RLC below the expected one, or an implicit
    /// RLC found only behind the window start.
    #[error(
        "RLC_REPLAY: rolling code {rlc:#x} was already used (expected {expected:#x} or later); replayed telegram"
    )]
    RlcReplay { rlc: u32, expected: u32 },
    /// A valid but unsupported security setting (undefined SLF codes, AES-CBC, PSK without key).
    #[error("unsupported secure telegram: {0}")]
    Unsupported(String),
    /// The bytes do not form a secure telegram (too short, bad SEC_TI header, wrong lengths).
    #[error("malformed secure telegram: {0}")]
    Malformed(String),
    /// A key that is not 16 bytes of hex. The message never contains the key text.
    #[error("bad AES key: {0}")]
    BadKey(String),
}

impl SecureError {
    /// The IoT Connector event name: `MAC_VALIDATION_ERROR`, `RLC_REPLAY`, and `EEP_DECODE_ERROR` for
    /// every other case (the connector's event table has no finer processing code; the Display text
    /// says what was wrong).
    pub fn event_code(&self) -> &'static str {
        match self {
            SecureError::MacValidation => "MAC_VALIDATION_ERROR",
            SecureError::RlcReplay { .. } => "RLC_REPLAY",
            SecureError::Unsupported(_) | SecureError::Malformed(_) | SecureError::BadKey(_) => {
                "EEP_DECODE_ERROR"
            }
        }
    }
}

/// The largest rolling code a counter of `width` bytes holds.
fn rlc_mask(width: usize) -> u32 {
    match width {
        0 => 0,
        1..=3 => (1u32 << (8 * width)) - 1,
        _ => u32::MAX,
    }
}

/// The last `width` (at most 4) bytes of `rlc`, MSB first (fact sheet §3, "RLC").
fn rlc_be(rlc: u32, width: usize) -> impl AsRef<[u8]> {
    let bytes = rlc.to_be_bytes();
    let start = 4 - width.min(4);
    RlcBytes { bytes, start }
}

struct RlcBytes {
    bytes: [u8; 4],
    start: usize,
}

impl AsRef<[u8]> for RlcBytes {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[self.start..]
    }
}

/// An unsigned big-endian number of at most 4 bytes.
fn be_uint(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0u32, |n, &b| (n << 8) | u32::from(b))
}

fn aes_cipher(key: &Key) -> Aes128 {
    Aes128::new(&GenericArray::from(key.0))
}

fn new_cmac(key: &Key) -> Cmac<Aes128> {
    <Cmac<Aes128> as KeyInit>::new(&GenericArray::from(key.0))
}

/// VAES (fact sheet §3, "Encryption", variant 3): keystream block 1 = AES_K(PUBLIC ⊕ (RLC ‖ 0…)),
/// block n = AES_K(input1 ⊕ keystream(n−1)); the output is `data ⊕ keystream`, same length, so the
/// same call encrypts and decrypts. `rlc_bytes` (clamped to 4) is how many low bytes of `rlc`, MSB
/// first, go into the first input block.
pub fn vaes(key: &Key, rlc: u32, rlc_bytes: usize, data: &[u8]) -> Vec<u8> {
    let cipher = aes_cipher(key);
    let mut input1 = VAES_PUBLIC;
    for (slot, b) in input1.iter_mut().zip(rlc_be(rlc, rlc_bytes).as_ref()) {
        *slot ^= b;
    }
    let mut out = Vec::with_capacity(data.len());
    let mut keystream = [0u8; BLOCK_LEN];
    for (n, chunk) in data.chunks(BLOCK_LEN).enumerate() {
        let mut block = input1;
        if n > 0 {
            for (slot, k) in block.iter_mut().zip(keystream) {
                *slot ^= k;
            }
        }
        let mut ga = GenericArray::from(block);
        cipher.encrypt_block(&mut ga);
        keystream = ga.into();
        out.extend(chunk.iter().zip(keystream).map(|(d, k)| d ^ k));
    }
    out
}

/// AES-CMAC (RFC 4493, K1/K2 subkeys) of `message` under `key` (fact sheet §3, "CMAC"); telegrams
/// carry its first 3 or 4 bytes.
pub fn cmac(key: &Key, message: &[u8]) -> [u8; 16] {
    let mut mac = new_cmac(key);
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// Whether `tag` is the leading part of CMAC(`RORG ‖ ENC_DATA ‖ RLC`), compared in constant time. An
/// empty tag (MAC_ALGO 0) authenticates nothing and matches every candidate.
fn tag_matches(key: &Key, rorg: u8, enc: &[u8], rlc: u32, width: usize, tag: &[u8]) -> bool {
    if tag.is_empty() {
        return true;
    }
    let mut mac = new_cmac(key);
    mac.update(&[rorg]);
    mac.update(enc);
    mac.update(rlc_be(rlc, width).as_ref());
    mac.verify_truncated_left(tag).is_ok()
}

fn check_operation_rorg(rorg: u8) -> Result<(), SecureError> {
    if rorg == RORG_SEC || rorg == RORG_SEC_ENCAPS {
        Ok(())
    } else {
        Err(SecureError::Unsupported(format!(
            "RORG {rorg:#04x} is not SEC (0x30) or SEC_ENCAPS (0x31)"
        )))
    }
}

/// The PTM nibble rule (fact sheet A.4.2): a one-byte SEC telegram whose value fits in 4 bits.
fn is_ptm_nibble(rorg: u8, bytes: &[u8]) -> bool {
    rorg == RORG_SEC && bytes.len() == 1 && bytes[0] & 0xF0 == 0
}

/// Checks and decrypts one secure telegram (fact sheet §3: operation telegram, CMAC coverage incl.
/// implicit RLC, VAES, replay window; PTM nibble rule from A.4.2). `rorg` is 0x30 or 0x31; `payload`
/// is the bytes after the RORG and before the sender id (ENC_DATA ‖ [RLC if transmitted] ‖ CMAC). On
/// success advances `state.next` to rlc + 1; on failure leaves it unchanged.
///
/// Implicit RLC: try state.next, +1, ... up to `window` ahead; if none matches, try up to `window`
/// values BEHIND state.next: a match there is RlcReplay, else MacValidation. The window is capped at
/// half the counter's range. Explicit RLC: see the module documentation. Without an RLC (mode 0) the
/// state is left alone and `rlc` is 0.
pub fn decrypt(
    rorg: u8,
    payload: &[u8],
    key: &Key,
    slf: Slf,
    state: &mut RlcState,
    window: u32,
) -> Result<Decrypted, SecureError> {
    check_operation_rorg(rorg)?;
    let encryption = slf.check_crypt()?;
    let overhead = slf.rlc_sent_bytes() + slf.mac_bytes();
    if payload.len() <= overhead {
        return Err(SecureError::Malformed(format!(
            "{} bytes after RORG {rorg:#04x}; SLF {:#04x} needs data plus {} RLC and {} CMAC bytes",
            payload.len(),
            slf.0,
            slf.rlc_sent_bytes(),
            slf.mac_bytes()
        )));
    }
    let (enc, trailer) = payload.split_at(payload.len() - overhead);
    let (rlc_field, tag) = trailer.split_at(slf.rlc_sent_bytes());
    let rlc = authenticate(rorg, enc, rlc_field, tag, key, slf, state.next, window)?;
    let next = next_state(slf, rlc)?;

    let width = slf.rlc_bytes();
    let plain = match encryption {
        Encryption::Vaes if is_ptm_nibble(rorg, enc) => {
            vec![vaes(key, rlc, width, enc)[0] & 0x0F]
        }
        Encryption::Vaes => vaes(key, rlc, width, enc),
        _ => enc.to_vec(),
    };
    let decrypted = if rorg == RORG_SEC_ENCAPS {
        // `enc` is non-empty (checked above) and VAES keeps the length.
        let (&inner, data) = plain.split_first().ok_or_else(|| {
            SecureError::Malformed("SEC_ENCAPS telegram without an inner RORG".into())
        })?;
        Decrypted {
            rorg: inner,
            data: data.to_vec(),
            rlc,
        }
    } else {
        Decrypted {
            rorg: RORG_SECD,
            data: plain,
            rlc,
        }
    };
    if let Some(next) = next {
        state.next = next;
    }
    Ok(decrypted)
}

/// The state after accepting `rlc`: None without an RLC; modulo the width for implicit counters; plain
/// + 1 for explicit ones, which are never wrapped (a wrapped explicit counter would reopen old values).
fn next_state(slf: Slf, rlc: u32) -> Result<Option<u32>, SecureError> {
    let width = slf.rlc_bytes();
    if width == 0 {
        return Ok(None);
    }
    if !slf.rlc_transmitted() {
        return Ok(Some(rlc.wrapping_add(1) & rlc_mask(width)));
    }
    rlc.checked_add(1).map(Some).ok_or_else(|| {
        SecureError::Unsupported(
            "the 32-bit rolling code is exhausted; teach the device in again".into(),
        )
    })
}

/// Finds the rolling code whose CMAC matches (fact sheet §3, "Replay window").
#[allow(clippy::too_many_arguments)]
fn authenticate(
    rorg: u8,
    enc: &[u8],
    rlc_field: &[u8],
    tag: &[u8],
    key: &Key,
    slf: Slf,
    expected: u32,
    window: u32,
) -> Result<u32, SecureError> {
    let width = slf.rlc_bytes();
    let matches = |rlc: u32| tag_matches(key, rorg, enc, rlc, width, tag);
    if width == 0 {
        return if matches(0) {
            Ok(0)
        } else {
            Err(SecureError::MacValidation)
        };
    }

    if slf.rlc_transmitted() {
        let sent = be_uint(rlc_field);
        let (forward, behind) = if rlc_field.len() >= width {
            if sent >= expected {
                (Some(sent), None)
            } else {
                (None, Some(sent))
            }
        } else {
            // Mode 6: only the low bytes are sent; the high byte comes from the state.
            let span = 1u32 << (8 * rlc_field.len());
            let same_epoch = (expected & !(span - 1)) | sent;
            if same_epoch >= expected {
                (Some(same_epoch), same_epoch.checked_sub(span))
            } else {
                (same_epoch.checked_add(span), Some(same_epoch))
            }
        };
        if let Some(rlc) = forward
            && matches(rlc)
        {
            return Ok(rlc);
        }
        if let Some(rlc) = behind
            && matches(rlc)
        {
            return Err(SecureError::RlcReplay { rlc, expected });
        }
        return Err(SecureError::MacValidation);
    }

    let mask = rlc_mask(width);
    let expected = expected & mask;
    let window = window.min(mask / 2);
    if let Some(rlc) = (0..=window)
        .map(|i| expected.wrapping_add(i) & mask)
        .find(|&rlc| matches(rlc))
    {
        return Ok(rlc);
    }
    if let Some(rlc) = (1..=window)
        .map(|i| expected.wrapping_sub(i) & mask)
        .find(|&rlc| matches(rlc))
    {
        return Err(SecureError::RlcReplay { rlc, expected });
    }
    Err(SecureError::MacValidation)
}

/// The inverse of [`decrypt`], for simulators and tests (fact sheet §3, operation telegram; PTM nibble
/// rule from A.4.2): builds the payload after the RORG, `ENC_DATA ‖ [RLC if transmitted] ‖ CMAC`.
/// SEC_ENCAPS (0x31) encrypts `inner_rorg ‖ data`; SEC (0x30) encrypts `data` alone and ignores
/// `inner_rorg`. One SEC data byte of at most 0x0F is sent as a PTM nibble.
pub fn encrypt(
    rorg: u8,
    inner_rorg: u8,
    data: &[u8],
    key: &Key,
    slf: Slf,
    rlc: u32,
) -> Result<Vec<u8>, SecureError> {
    check_operation_rorg(rorg)?;
    let encryption = slf.check_crypt()?;
    let width = slf.rlc_bytes();
    if rlc > rlc_mask(width) {
        return Err(SecureError::Malformed(format!(
            "rolling code {rlc:#x} does not fit the {width}-byte RLC of SLF {:#04x}",
            slf.0
        )));
    }
    let mut plain = Vec::with_capacity(data.len() + 1);
    if rorg == RORG_SEC_ENCAPS {
        plain.push(inner_rorg);
    }
    plain.extend_from_slice(data);
    if plain.is_empty() {
        return Err(SecureError::Malformed("a SEC telegram needs data".into()));
    }
    let mut out = match encryption {
        Encryption::Vaes if is_ptm_nibble(rorg, &plain) => {
            vec![vaes(key, rlc, width, &plain)[0] & 0x0F]
        }
        Encryption::Vaes => vaes(key, rlc, width, &plain),
        _ => plain,
    };
    let mut mac = new_cmac(key);
    mac.update(&[rorg]);
    mac.update(&out);
    mac.update(rlc_be(rlc, width).as_ref());
    let tag = mac.finalize().into_bytes();
    out.extend_from_slice(rlc_be(rlc, slf.rlc_sent_bytes()).as_ref());
    out.extend_from_slice(&tag[..slf.mac_bytes()]);
    Ok(out)
}

/// One SEC_TI (0x35) telegram (fact sheet §3, "SEC_TI payload"): the TEACH_IN_INFO fields and the
/// bytes after it. Debug shows the body's length only: it carries key material.
#[derive(Clone, PartialEq, Eq)]
pub struct TeachInPart {
    /// IDX, bits 7..6: this part's position.
    pub idx: u8,
    /// CNT, bits 5..4: how many parts the teach-in has.
    pub cnt: u8,
    /// PSK, bit 3: RLC ‖ KEY are VAES-encrypted with a pre-shared key.
    pub psk: bool,
    /// TYPE, bit 2: the sender is a PTM switch.
    pub ptm: bool,
    /// INFO, bits 1..0.
    pub info: u8,
    /// The bytes after TEACH_IN_INFO (IDX 0: SLF ‖ RLC ‖ first key part; later parts: the rest).
    pub body: Vec<u8>,
}

impl fmt::Debug for TeachInPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TeachInPart")
            .field("idx", &self.idx)
            .field("cnt", &self.cnt)
            .field("psk", &self.psk)
            .field("ptm", &self.ptm)
            .field("info", &self.info)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// Reads one SEC_TI part (fact sheet §3, "SEC_TI payload"): `payload` is the bytes after RORG 0x35
/// and before the sender id.
pub fn parse_teach_in_part(payload: &[u8]) -> Result<TeachInPart, SecureError> {
    let (&info, body) = payload
        .split_first()
        .ok_or_else(|| SecureError::Malformed("empty SEC_TI telegram".into()))?;
    let part = TeachInPart {
        idx: info >> 6,
        cnt: (info >> 4) & 0b11,
        psk: info & 0b1000 != 0,
        ptm: info & 0b100 != 0,
        info: info & 0b11,
        body: body.to_vec(),
    };
    if part.cnt == 0 || part.idx >= part.cnt {
        return Err(SecureError::Malformed(format!(
            "SEC_TI part IDX {} of CNT {}",
            part.idx, part.cnt
        )));
    }
    if part.body.is_empty() {
        return Err(SecureError::Malformed(format!(
            "SEC_TI part IDX {} carries no data",
            part.idx
        )));
    }
    Ok(part)
}

/// A completed secure teach-in (fact sheet §3, "SEC_TI payload"): the device's SLF, its rolling code
/// at teach-in, its key, and whether it is a PTM switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecureTeachIn {
    pub slf: Slf,
    pub rlc: u32,
    pub key: Key,
    pub ptm: bool,
}

impl SecureTeachIn {
    /// The state to store for the device: the window starts at the teach-in RLC (fact sheet §3,
    /// "Resync": a new SEC_TI resets the RLC).
    pub fn rlc_state(&self) -> RlcState {
        RlcState { next: self.rlc }
    }
}

struct PendingTeachIn {
    cnt: u8,
    psk: bool,
    ptm: bool,
    parts: Vec<Vec<u8>>,
    arrival: u64,
}

/// Joins the SEC_TI parts of each sender (fact sheet §3: IDX 0 carries SLF, RLC and the first key
/// part, the following IDX the rest). Parts must arrive in IDX order, as they are sent; a new IDX 0
/// restarts the sender's teach-in, a part out of order is dropped. There is no clock here: call
/// [`TeachInAssembler::forget`] for senders whose teach-in went stale. Debug shows counts only.
#[derive(Default)]
pub struct TeachInAssembler {
    pending: HashMap<u32, PendingTeachIn>,
    arrivals: u64,
}

impl fmt::Debug for TeachInAssembler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TeachInAssembler")
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl TeachInAssembler {
    /// An assembler with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many senders have a teach-in in progress.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Drops the half-received teach-in of `sender`, if any.
    pub fn forget(&mut self, sender: u32) {
        self.pending.remove(&sender);
    }

    /// Feeds one SEC_TI telegram of `sender` (`payload`: after RORG 0x35, before the sender id).
    /// Returns the teach-in once its last part arrived, `None` while parts are missing. `psk` is the
    /// sender's pre-shared key, needed when the teach-in sets PSK=1 (else
    /// [`SecureError::Unsupported`]).
    pub fn push(
        &mut self,
        sender: u32,
        payload: &[u8],
        psk: Option<&Key>,
    ) -> Result<Option<SecureTeachIn>, SecureError> {
        let part = parse_teach_in_part(payload)?;
        if part.idx == 0 {
            if part.cnt == 1 {
                self.pending.remove(&sender);
                return finish_teach_in(&part.body, part.psk, part.ptm, psk).map(Some);
            }
            self.start(sender, part);
            return Ok(None);
        }
        let Some(pending) = self.pending.get_mut(&sender) else {
            return Ok(None);
        };
        if usize::from(part.idx) != pending.parts.len() {
            return Ok(None);
        }
        if part.cnt != pending.cnt || part.psk != pending.psk || part.ptm != pending.ptm {
            self.pending.remove(&sender);
            return Err(SecureError::Malformed(format!(
                "SEC_TI part IDX {} does not match its IDX 0 (CNT, PSK or TYPE differ)",
                part.idx
            )));
        }
        pending.parts.push(part.body);
        if pending.parts.len() < usize::from(pending.cnt) {
            return Ok(None);
        }
        let Some(done) = self.pending.remove(&sender) else {
            return Ok(None);
        };
        let body = done.parts.concat();
        finish_teach_in(&body, done.psk, done.ptm, psk).map(Some)
    }

    fn start(&mut self, sender: u32, part: TeachInPart) {
        if !self.pending.contains_key(&sender) && self.pending.len() >= MAX_PENDING_TEACH_INS {
            let oldest = self
                .pending
                .iter()
                .min_by_key(|(_, p)| p.arrival)
                .map(|(&s, _)| s);
            if let Some(oldest) = oldest {
                self.pending.remove(&oldest);
            }
        }
        self.arrivals += 1;
        self.pending.insert(
            sender,
            PendingTeachIn {
                cnt: part.cnt,
                psk: part.psk,
                ptm: part.ptm,
                parts: vec![part.body],
                arrival: self.arrivals,
            },
        );
    }
}

/// Reads `SLF ‖ RLC ‖ KEY(16)` of a joined teach-in; RLC ‖ KEY are VAES-decrypted with RLC 0 and the
/// pre-shared key when PSK=1 (fact sheet §3). The RLC field has the SLF's full width; for mode 6 the
/// 3 sent bytes are accepted too.
fn finish_teach_in(
    body: &[u8],
    psk_used: bool,
    ptm: bool,
    psk: Option<&Key>,
) -> Result<SecureTeachIn, SecureError> {
    let (&slf_byte, rest) = body
        .split_first()
        .ok_or_else(|| SecureError::Malformed("SEC_TI without SLF".into()))?;
    let slf = Slf(slf_byte);
    slf.check()?;
    // Mode 6 may carry its 32-bit counter in full or as the 3 bytes it sends; other modes in full.
    let rlc_widths = if slf.rlc_transmitted() {
        [slf.rlc_bytes(), slf.rlc_sent_bytes()]
    } else {
        [slf.rlc_bytes(); 2]
    };
    let rlc_len = rlc_widths
        .into_iter()
        .find(|&n| rest.len() == n + KEY_LEN)
        .ok_or_else(|| {
            SecureError::Malformed(format!(
                "SEC_TI with SLF {slf_byte:#04x} has {} bytes after the SLF, expected {}-byte RLC and 16-byte key",
                rest.len(),
                slf.rlc_bytes()
            ))
        })?;
    let clear = if psk_used {
        let psk = psk.ok_or_else(|| {
            SecureError::Unsupported(
                "SEC_TI encrypted with a pre-shared key (PSK=1) and no PSK configured for the sender"
                    .into(),
            )
        })?;
        vaes(psk, 0, slf.rlc_bytes(), rest)
    } else {
        rest.to_vec()
    };
    let (rlc, key) = clear.split_at(rlc_len);
    let key: [u8; KEY_LEN] = key
        .try_into()
        .map_err(|_| SecureError::Malformed("SEC_TI key is not 16 bytes".into()))?;
    Ok(SecureTeachIn {
        slf,
        rlc: be_uint(rlc),
        key: Key(key),
        ptm,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codecs::enocean::esp3;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// "EnOcean GmbH.13\0", the key of fact sheet A.4.1 and A.4.2.
    fn key_a41() -> Key {
        Key::from_hex("456E4F6365616E20476D62482E313300").unwrap()
    }

    fn key_a43() -> Key {
        Key::from_hex("E50880CF67790D5D66AA7F3B7AD77A3F").unwrap()
    }

    fn a43_plain() -> Vec<u8> {
        (0u8..=0x1D).collect()
    }

    const A43_ENC: &str = "bb17c17a05caf5575de208302fb572a0fd3a4434a41096f102e60dc20d777a";

    // Vector 29 (shared/vectors/enocean/29_secure_sec_encaps_kat.json).
    const VECTOR_29_ESP3: &str = "55000e070140313eeac4a2dfeaf20e010203040001ffffffff4000d4";

    fn vector_29_payload() -> Vec<u8> {
        let frame = h(VECTOR_29_ESP3);
        let (packet, _) = esp3::parse_packet(&frame).unwrap();
        assert_eq!(packet.packet_type, esp3::packet_type::RADIO_ERP1);
        let data = packet.data;
        assert_eq!(data[0], RORG_SEC_ENCAPS);
        assert_eq!(&data[data.len() - 5..data.len() - 1], &h("01020304")[..]);
        data[1..data.len() - 5].to_vec()
    }

    #[test]
    fn a41_sec_encaps_vaes_and_cmac3_match_the_known_answer() {
        let key = key_a41();
        assert_eq!(vaes(&key, 0xC0FFEE, 3, &h("A50827FF80")), h("3EEAC4A2DF"));
        assert_eq!(cmac(&key, &h("313EEAC4A2DFC0FFEE"))[..3], h("EAF20E")[..]);
        let built = encrypt(0x31, 0xA5, &h("0827FF80"), &key, Slf(0x8B), 0xC0FFEE).unwrap();
        assert_eq!(built, h("3EEAC4A2DFEAF20E"));
    }

    #[test]
    fn a42_ptm_nibble_decrypts_to_09() {
        let key = key_a41();
        assert_eq!(vaes(&key, 0x3E2D00, 3, &[0x09]), vec![0xCE]);
        assert_eq!(cmac(&key, &h("300E3E2D00"))[..3], h("05E56D")[..]);
        let mut state = RlcState { next: 0x3E2D00 };
        let got = decrypt(
            0x30,
            &h("0E05E56D"),
            &key,
            Slf(0x8B),
            &mut state,
            DEFAULT_WINDOW,
        )
        .unwrap();
        assert_eq!(
            got,
            Decrypted {
                rorg: RORG_SECD,
                data: vec![0x09],
                rlc: 0x3E2D00
            }
        );
        assert_eq!(state.next, 0x3E2D01);
        let built = encrypt(0x30, 0, &[0x09], &key, Slf(0x8B), 0x3E2D00).unwrap();
        assert_eq!(built, h("0E05E56D"));
    }

    #[test]
    fn a43_multi_block_vaes_and_cmac4_match_the_known_answer() {
        let key = key_a43();
        let mut plain = vec![0xD1];
        plain.extend(a43_plain());
        let enc = vaes(&key, 0x01020304, 4, &plain);
        assert_eq!(enc, h(A43_ENC));
        assert_eq!(vaes(&key, 0x01020304, 4, &enc), plain);
        let mut msg = vec![0x31];
        msg.extend(&enc);
        msg.extend(h("01020304"));
        assert_eq!(cmac(&key, &msg)[..4], h("3B4C380F")[..]);
    }

    #[test]
    fn a43_decrypts_with_explicit_32_bit_rlc() {
        let key = key_a43();
        let payload = h(&format!("{A43_ENC}010203043b4c380f"));
        let mut state = RlcState { next: 0 };
        let got = decrypt(0x31, &payload, &key, Slf(0xF3), &mut state, DEFAULT_WINDOW).unwrap();
        assert_eq!(got.rorg, 0xD1);
        assert_eq!(got.data, a43_plain());
        assert_eq!(got.rlc, 0x01020304);
        assert_eq!(state.next, 0x01020305);
    }

    #[test]
    fn a43_decrypts_in_mode_6_with_24_of_32_bits_sent() {
        let key = key_a43();
        // SLF 0xD3: RLC mode 6, 4-byte CMAC, VAES. The telegram carries 020304.
        let payload = h(&format!("{A43_ENC}0203043b4c380f"));
        let mut state = RlcState { next: 0x0100_0000 };
        let got = decrypt(0x31, &payload, &key, Slf(0xD3), &mut state, DEFAULT_WINDOW).unwrap();
        assert_eq!(got.rlc, 0x01020304);
        assert_eq!(got.data, a43_plain());
        assert_eq!(state.next, 0x01020305);
        // The same telegram again: the restored value is behind the state.
        assert_eq!(
            decrypt(0x31, &payload, &key, Slf(0xD3), &mut state, DEFAULT_WINDOW),
            Err(SecureError::RlcReplay {
                rlc: 0x01020304,
                expected: 0x01020305
            })
        );
        // The high byte comes from the state: one epoch earlier the CMAC does not match.
        let mut early = RlcState { next: 0x0000_0010 };
        assert_eq!(
            decrypt(0x31, &payload, &key, Slf(0xD3), &mut early, DEFAULT_WINDOW),
            Err(SecureError::MacValidation)
        );
        assert_eq!(early.next, 0x10);
    }

    #[test]
    fn vector_29_esp3_frame_decrypts_to_a5_teach_in() {
        let payload = vector_29_payload();
        let key = Key::from_hex("456E4F6365616E20476D62482E313300").unwrap();
        let expected = Decrypted {
            rorg: 0xA5,
            data: h("0827FF80"),
            rlc: 0xC0FFEE,
        };
        for start in [0xC0FFEE, 0xC0FFEE - 1, 0xC0FFEE - 5, 0xC0FFEE - 128] {
            let mut state = RlcState { next: start };
            let got = decrypt(0x31, &payload, &key, Slf(0x8B), &mut state, DEFAULT_WINDOW);
            assert_eq!(got, Ok(expected.clone()), "state.next = {start:#x}");
            assert_eq!(state.next, 0xC0FFEF);
        }
    }

    #[test]
    fn vector_29_replayed_is_rlc_replay_and_state_is_kept() {
        let payload = vector_29_payload();
        let key = key_a41();
        let mut state = RlcState { next: 0xC0FFEE };
        decrypt(0x31, &payload, &key, Slf(0x8B), &mut state, DEFAULT_WINDOW).unwrap();
        let again = decrypt(0x31, &payload, &key, Slf(0x8B), &mut state, DEFAULT_WINDOW);
        assert_eq!(
            again,
            Err(SecureError::RlcReplay {
                rlc: 0xC0FFEE,
                expected: 0xC0FFEF
            })
        );
        assert_eq!(again.unwrap_err().event_code(), "RLC_REPLAY");
        assert_eq!(state.next, 0xC0FFEF);
    }

    #[test]
    fn flipped_bits_and_wrong_key_are_mac_validation_errors_and_state_is_kept() {
        let payload = vector_29_payload();
        let key = key_a41();
        for bit in 0..payload.len() * 8 {
            let mut bad = payload.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let mut state = RlcState { next: 0xC0FFEE };
            let got = decrypt(0x31, &bad, &key, Slf(0x8B), &mut state, DEFAULT_WINDOW);
            assert_eq!(got, Err(SecureError::MacValidation), "bit {bit}");
            assert_eq!(state.next, 0xC0FFEE);
        }
        let mut wrong = key.clone();
        wrong.0[15] ^= 1;
        let mut state = RlcState { next: 0xC0FFEE };
        let got = decrypt(
            0x31,
            &payload,
            &wrong,
            Slf(0x8B),
            &mut state,
            DEFAULT_WINDOW,
        );
        assert_eq!(got, Err(SecureError::MacValidation));
        assert_eq!(got.unwrap_err().event_code(), "MAC_VALIDATION_ERROR");
        assert_eq!(state.next, 0xC0FFEE);
    }

    #[test]
    fn implicit_rlc_beyond_the_window_is_a_mac_validation_error() {
        let payload = vector_29_payload();
        let key = key_a41();
        for start in [0xC0FFEE - 129, 0xC0FFEE - 1000, 0xC0FFEE + 129, 0] {
            let mut state = RlcState { next: start };
            let got = decrypt(0x31, &payload, &key, Slf(0x8B), &mut state, DEFAULT_WINDOW);
            assert_eq!(
                got,
                Err(SecureError::MacValidation),
                "state.next = {start:#x}"
            );
            assert_eq!(state.next, start);
        }
        // Just behind the window start, within the window: a replay.
        let mut state = RlcState {
            next: 0xC0FFEE + 128,
        };
        let got = decrypt(0x31, &payload, &key, Slf(0x8B), &mut state, DEFAULT_WINDOW);
        assert!(matches!(
            got,
            Err(SecureError::RlcReplay { rlc: 0xC0FFEE, .. })
        ));
        // A smaller window refuses what the default accepts.
        let mut state = RlcState {
            next: 0xC0FFEE - 10,
        };
        let got = decrypt(0x31, &payload, &key, Slf(0x8B), &mut state, 5);
        assert_eq!(got, Err(SecureError::MacValidation));
    }

    #[test]
    fn implicit_16_bit_rlc_wraps_around() {
        let key = key_a43();
        let slf = Slf(0x4B); // mode 2: 16-bit implicit, 3-byte CMAC, VAES
        let mut state = RlcState { next: 0xFFFE };
        for rlc in [0xFFFE, 0xFFFF, 0x0000, 0x0001] {
            let payload = encrypt(0x31, 0xD2, &[1, 2, 3], &key, slf, rlc).unwrap();
            let got = decrypt(0x31, &payload, &key, slf, &mut state, DEFAULT_WINDOW).unwrap();
            assert_eq!(got.rlc, rlc);
        }
        assert_eq!(state.next, 2);
    }

    #[test]
    fn round_trip_for_several_slfs_and_lengths() {
        let key = key_a43();
        // 0x8B 24 implicit/3; 0xF3 32 explicit/4; 0x4B 16 implicit/3; 0x73 16 explicit/4;
        // 0xB3 24 explicit/4; 0xD3 32 with 24 sent/4; 0x0B no RLC; 0x88 no encryption.
        for slf in [0x8B, 0xF3, 0x4B, 0x73, 0xB3, 0xD3, 0x0B, 0x88].map(Slf) {
            for len in 1..=20usize {
                let rlc = if slf.rlc_bytes() == 0 {
                    0
                } else {
                    0x1234 + len as u32
                };
                for (rorg, inner) in [(0x31, 0xD2), (0x30, 0x00)] {
                    // One SEC byte is a PTM nibble (see the module documentation).
                    let data: Vec<u8> = if rorg == 0x30 && len == 1 {
                        vec![0x0A]
                    } else {
                        (0..len as u8).map(|i| i.wrapping_mul(37) ^ 0x5A).collect()
                    };
                    let payload = encrypt(rorg, inner, &data, &key, slf, rlc).unwrap();
                    let overhead = slf.rlc_sent_bytes() + slf.mac_bytes();
                    let inner_len = usize::from(rorg == 0x31) + len;
                    assert_eq!(payload.len(), inner_len + overhead);
                    let mut state = RlcState { next: 0x1234 };
                    let got = decrypt(rorg, &payload, &key, slf, &mut state, DEFAULT_WINDOW);
                    let want_rorg = if rorg == 0x31 { inner } else { RORG_SECD };
                    let want_rlc = if slf.rlc_bytes() == 0 { 0 } else { rlc };
                    let want = Decrypted {
                        rorg: want_rorg,
                        data: data.clone(),
                        rlc: want_rlc,
                    };
                    assert_eq!(got, Ok(want), "slf {:#04x} len {len} rorg {rorg:#x}", slf.0);
                    let want_next = if slf.rlc_bytes() == 0 {
                        0x1234
                    } else {
                        rlc + 1
                    };
                    assert_eq!(state.next, want_next);
                }
            }
        }
    }

    #[test]
    fn explicit_rlc_accepts_forward_jumps_and_refuses_old_values() {
        let key = key_a41();
        let slf = Slf(0xF3);
        let mut state = RlcState { next: 100 };
        let telegram = |rlc| encrypt(0x31, 0xA5, &[1, 2, 3, 4], &key, slf, rlc).unwrap();
        let t100 = telegram(100);
        decrypt(0x31, &t100, &key, slf, &mut state, DEFAULT_WINDOW).unwrap();
        assert_eq!(state.next, 101);
        assert_eq!(
            decrypt(0x31, &t100, &key, slf, &mut state, DEFAULT_WINDOW),
            Err(SecureError::RlcReplay {
                rlc: 100,
                expected: 101
            })
        );
        assert_eq!(
            decrypt(0x31, &telegram(50), &key, slf, &mut state, DEFAULT_WINDOW),
            Err(SecureError::RlcReplay {
                rlc: 50,
                expected: 101
            })
        );
        assert_eq!(state.next, 101);
        // Far beyond any window: explicit values are authenticated, not searched.
        let jump = telegram(1_000_000);
        let got = decrypt(0x31, &jump, &key, slf, &mut state, DEFAULT_WINDOW).unwrap();
        assert_eq!(got.rlc, 1_000_000);
        assert_eq!(state.next, 1_000_001);
        // A forged old RLC with a wrong CMAC is a MAC error, not a replay.
        let mut forged = telegram(10);
        let last = forged.len() - 1;
        forged[last] ^= 0x80;
        assert_eq!(
            decrypt(0x31, &forged, &key, slf, &mut state, DEFAULT_WINDOW),
            Err(SecureError::MacValidation)
        );
    }

    #[test]
    fn explicit_rlc_at_the_end_of_32_bits_is_refused_without_panicking() {
        let key = key_a41();
        let slf = Slf(0xF3);
        let payload = encrypt(0x31, 0xA5, &[1], &key, slf, u32::MAX).unwrap();
        let mut state = RlcState { next: 5 };
        let got = decrypt(0x31, &payload, &key, slf, &mut state, DEFAULT_WINDOW);
        assert!(matches!(got, Err(SecureError::Unsupported(_))));
        assert_eq!(state.next, 5);
    }

    #[test]
    fn slf_fields_follow_the_fact_sheet_table() {
        let s = Slf(0x8B);
        assert_eq!(
            (s.rlc_bytes(), s.rlc_transmitted(), s.mac_bytes()),
            (3, false, 3)
        );
        assert_eq!(s.encryption(), Encryption::Vaes);
        let s = Slf(0xF3);
        assert_eq!(
            (s.rlc_bytes(), s.rlc_transmitted(), s.mac_bytes()),
            (4, true, 4)
        );
        let s = Slf(0xD3);
        assert_eq!((s.rlc_bytes(), s.rlc_sent_bytes()), (4, 3));
        assert_eq!(Slf(0x73).rlc_sent_bytes(), 2);
        assert_eq!(Slf(0x04).encryption(), Encryption::AesCbc);
        assert_eq!(Slf(0x07).encryption(), Encryption::Unknown(7));
        assert!(Slf(0x2B).check().is_err());
        assert!(Slf(0x9B).check().is_err());
        let mut state = RlcState { next: 0 };
        for slf in [0x2B, 0x9B, 0x8C, 0x8F] {
            let got = decrypt(0x31, &[0; 10], &key_a41(), Slf(slf), &mut state, 128);
            assert!(matches!(got, Err(SecureError::Unsupported(_))), "{slf:#x}");
            assert_eq!(got.unwrap_err().event_code(), "EEP_DECODE_ERROR");
        }
    }

    #[test]
    fn key_debug_hides_the_key_and_from_hex_checks_its_input() {
        let key = key_a41();
        assert_eq!(format!("{key:?}"), "***");
        assert_eq!(
            Key::from_hex(" 0x456E4F6365616E20476D62482E313300 "),
            Ok(key.clone())
        );
        let teach_in = SecureTeachIn {
            slf: Slf(0x8B),
            rlc: 1,
            key,
            ptm: false,
        };
        assert!(!format!("{teach_in:?}").contains("456"));
        let err = Key::from_hex("456E4F6365616E20476D62482E3133ZZ").unwrap_err();
        assert!(matches!(err, SecureError::BadKey(_)));
        assert!(!err.to_string().contains("456E"));
        assert!(Key::from_hex("00").is_err());
        assert!(Key::from_hex("ééééééééééééééééé").is_err());
    }

    /// SEC_TI parts as a device would send them: IDX 0 carries TEACH_IN_INFO ‖ SLF ‖ RLC ‖ 8 key
    /// bytes, IDX 1 the rest of the key.
    fn teach_in_parts(info_flags: u8, slf: u8, rlc_key: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let split = rlc_key.len() - 8;
        let mut first = vec![0x20 | info_flags, slf];
        first.extend(&rlc_key[..split]);
        let mut second = vec![0x60 | info_flags];
        second.extend(&rlc_key[split..]);
        (first, second)
    }

    #[test]
    fn sec_ti_two_parts_yield_the_teach_in() {
        let key = key_a43();
        let mut rlc_key = h("C0FFEE");
        rlc_key.extend(key.0);
        let (first, second) = teach_in_parts(0b0100, 0x8B, &rlc_key);
        let mut asm = TeachInAssembler::new();
        assert_eq!(asm.push(0x0102_0304, &first, None), Ok(None));
        assert_eq!(asm.pending(), 1);
        let got = asm.push(0x0102_0304, &second, None).unwrap().unwrap();
        assert_eq!(
            got,
            SecureTeachIn {
                slf: Slf(0x8B),
                rlc: 0xC0FFEE,
                key,
                ptm: true
            }
        );
        assert_eq!(got.rlc_state(), RlcState { next: 0xC0FFEE });
        assert_eq!(asm.pending(), 0);
        // A repeated last part after completion is ignored.
        assert_eq!(asm.push(0x0102_0304, &second, None), Ok(None));
    }

    #[test]
    fn sec_ti_parts_of_different_senders_do_not_mix() {
        let mut rlc_key_a = h("000001");
        rlc_key_a.extend([0xAA; 16]);
        let mut rlc_key_b = h("000002");
        rlc_key_b.extend([0xBB; 16]);
        let (a1, a2) = teach_in_parts(0, 0x8B, &rlc_key_a);
        let (b1, b2) = teach_in_parts(0, 0x8B, &rlc_key_b);
        let mut asm = TeachInAssembler::new();
        assert_eq!(asm.push(1, &a1, None), Ok(None));
        assert_eq!(asm.push(2, &b1, None), Ok(None));
        // Part 1 without its part 0 is dropped.
        assert_eq!(asm.push(3, &a2, None), Ok(None));
        let b = asm.push(2, &b2, None).unwrap().unwrap();
        let a = asm.push(1, &a2, None).unwrap().unwrap();
        assert_eq!((a.rlc, a.key.0), (1, [0xAA; 16]));
        assert_eq!((b.rlc, b.key.0), (2, [0xBB; 16]));
        assert!(!a.ptm);
    }

    #[test]
    fn sec_ti_with_psk_needs_the_pre_shared_key() {
        let psk = key_a41();
        let device_key = key_a43();
        let mut rlc_key = h("00000010");
        rlc_key.extend(device_key.0);
        let encrypted = vaes(&psk, 0, 4, &rlc_key);
        let (first, second) = teach_in_parts(0b1000, 0xF3, &encrypted);
        let mut asm = TeachInAssembler::new();
        asm.push(7, &first, None).unwrap();
        let got = asm.push(7, &second, None);
        assert!(matches!(got, Err(SecureError::Unsupported(_))));
        asm.push(7, &first, Some(&psk)).unwrap();
        let got = asm.push(7, &second, Some(&psk)).unwrap().unwrap();
        assert_eq!((got.slf, got.rlc, got.key), (Slf(0xF3), 0x10, device_key));
    }

    #[test]
    fn sec_ti_single_part_and_bad_headers() {
        let mut one = vec![0x10, 0x8B]; // IDX 0, CNT 1
        one.extend(h("000005"));
        one.extend([0x11; 16]);
        let mut asm = TeachInAssembler::new();
        let got = asm.push(9, &one, None).unwrap().unwrap();
        assert_eq!(got.rlc, 5);
        assert!(asm.push(9, &[], None).is_err());
        assert!(asm.push(9, &[0x00, 0x8B], None).is_err()); // CNT 0
        assert!(asm.push(9, &[0x50, 0x8B], None).is_err()); // IDX 1 of CNT 1
        assert!(asm.push(9, &[0x20], None).is_err()); // no body
        assert!(matches!(
            asm.push(9, &[0x10, 0x8B, 1, 2, 3], None),
            Err(SecureError::Malformed(_))
        ));
        // An implicit 24-bit SLF needs its 3 RLC bytes even though operation telegrams omit them.
        let mut no_rlc = vec![0x10, 0x8B];
        no_rlc.extend([0x11; 16]);
        assert!(matches!(
            asm.push(9, &no_rlc, None),
            Err(SecureError::Malformed(_))
        ));
        // Mode 6 accepts the full 4-byte counter and the 3 bytes it sends.
        for rlc in [&[0u8, 0, 0, 7][..], &[0, 0, 7][..]] {
            let mut mode6 = vec![0x10, 0xD3];
            mode6.extend(rlc);
            mode6.extend([0x11; 16]);
            assert_eq!(asm.push(9, &mode6, None).unwrap().unwrap().rlc, 7);
        }
        let part = parse_teach_in_part(&one).unwrap();
        assert!(!format!("{part:?}").contains("17"));
    }

    #[test]
    fn sec_ti_pending_senders_are_bounded() {
        let mut asm = TeachInAssembler::new();
        for sender in 0..(MAX_PENDING_TEACH_INS as u32 + 10) {
            asm.push(sender, &[0x20, 0x8B, 0, 0, 1], None).unwrap();
        }
        assert_eq!(asm.pending(), MAX_PENDING_TEACH_INS);
        asm.forget(MAX_PENDING_TEACH_INS as u32 + 9);
        assert_eq!(asm.pending(), MAX_PENDING_TEACH_INS - 1);
    }

    /// A small xorshift generator: deterministic bytes without a dependency.
    fn noise(seed: &mut u64) -> u8 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        (*seed >> 24) as u8
    }

    #[test]
    fn truncated_and_random_inputs_never_panic() {
        let key = key_a41();
        let full = vector_29_payload();
        for len in 0..full.len() {
            let mut state = RlcState { next: 0xC0FFEE };
            let got = decrypt(0x31, &full[..len], &key, Slf(0x8B), &mut state, 128);
            assert!(got.is_err());
            assert_eq!(state.next, 0xC0FFEE);
        }
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut asm = TeachInAssembler::new();
        for _ in 0..3000 {
            let len = usize::from(noise(&mut seed) % 24);
            let bytes: Vec<u8> = (0..len).map(|_| noise(&mut seed)).collect();
            let slf = Slf(noise(&mut seed));
            let rorg = 0x30 + (noise(&mut seed) & 1);
            let next = u32::from_be_bytes([0, noise(&mut seed), noise(&mut seed), 0xF0]);
            let mut state = RlcState { next };
            let _ = decrypt(rorg, &bytes, &key, slf, &mut state, 8);
            let _ = decrypt(noise(&mut seed), &bytes, &key, slf, &mut state, 8);
            let _ = encrypt(rorg, 0xA5, &bytes, &key, slf, next);
            let _ = asm.push(u32::from(noise(&mut seed) % 4), &bytes, Some(&key));
            let _ = parse_teach_in_part(&bytes);
            let _ = vaes(&key, next, usize::from(noise(&mut seed)), &bytes);
        }
        // A huge window is capped at half the 16-bit counter range.
        let mut state = RlcState { next: u32::MAX };
        let got = decrypt(0x31, &full, &key, Slf(0x4B), &mut state, u32::MAX);
        assert_eq!(got, Err(SecureError::MacValidation));
    }
}
