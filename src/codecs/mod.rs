//! Codecs: bytes in, typed documents out. No sockets, clocks or files here; the runtime hands them bytes.

pub mod efento;
pub mod enocean;
pub mod json;
pub mod wasm;

/// FNV-1a, 64 bit: small, allocation-free and the same in every process and build, so keys made with
/// it can be shared between instances (a dedupe store).
#[derive(Debug, Clone, Copy)]
pub struct Fnv1a(u64);

impl Fnv1a {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    pub fn new() -> Self {
        Fnv1a(Self::OFFSET)
    }

    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(Self::PRIME);
        }
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// Lets `Hash` values (wasmtime's compatibility hash) feed the same hash as bytes do.
impl std::hash::Hasher for Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        Fnv1a::write(self, bytes);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl Default for Fnv1a {
    fn default() -> Self {
        Self::new()
    }
}
