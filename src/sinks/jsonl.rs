//! JSON lines sink.
