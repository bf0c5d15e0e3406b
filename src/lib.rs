//! sensorgate: a stream-processing pipeline for IoT device data (see DESIGN.md).

pub mod codecs;
pub mod config;
pub mod metrics;
pub mod record;
pub mod sinks;
