//! sensorgate: a stream-processing pipeline for IoT device data (see DESIGN.md).
//!
//! `sources` turn frames into [`record::Record`]s, flows run them through `stages`, `sinks` store them,
//! and every record's delivery token tells its source when it is safe to acknowledge.

// The OpenAPI document is one large `json!` literal.
#![recursion_limit = "256"]

pub mod api;
pub mod cli;
pub mod codecs;
pub mod config;
pub mod document;
pub mod downlink;
pub mod graph;
pub mod health;
pub mod kafka;
pub mod live;
pub mod loadgen;
pub mod metrics;
pub mod mqtt;
pub mod record;
pub mod registry;
pub mod simulator;
pub mod sinks;
pub mod sources;
pub mod stages;
pub mod testing;
pub mod topology;
