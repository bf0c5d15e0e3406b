//! Placeholder: being written (issue 3). Only the key type the registry needs until the security layer lands.

/// A 128-bit AES key; Debug prints "***".
#[derive(Clone, PartialEq, Eq)]
pub struct Key(pub [u8; 16]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Security level format byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slf(pub u8);
