//! Codecs: bytes in, typed documents out. No sockets, clocks or files here; the runtime hands them bytes.

pub mod efento;
pub mod enocean;
