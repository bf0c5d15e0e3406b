//! Sinks: each knows its destination, not where records came from. A sink drains one bounded channel
//! and settles every record's delivery token only once the record is durably stored.

pub mod jsonl;
pub mod parquet;
