//! Sources: each knows its transport, not the payload format. A source turns what it receives into
//! records, pushes them into its flows' bounded queues, and answers its peer from the delivery outcome.

pub mod coap;
pub mod esp3_websocket;
pub mod mqtt;
