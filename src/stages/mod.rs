//! Stages: plain functions over records, zero or more out per record in. They do no I/O of their own.
//! A stage that rejects a record turns it into a dead-letter record ([`Record::into_dead_letter`]);
//! the flow routes those to its dead-letter sink.

pub mod decode;
pub mod dedupe;

use std::time::Instant;

use crate::config::StageConfig;
use crate::record::Record;

/// One step of a flow.
pub trait Stage: Send {
    /// The stage's name in dead letters, logs and metrics.
    fn name(&self) -> &'static str;
    /// Takes one record and pushes what comes out of it (0 for a drop, many for a split). A stage that
    /// drops a record on purpose (a duplicate) settles it with `record.delivery.delivered()`; one dropped
    /// unsettled counts as failed, and its source answers "not stored".
    fn process(&mut self, record: Record, out: &mut Vec<Record>);
    /// When the stage next needs [`Stage::on_timer`] (held records to release, statistics to emit).
    fn next_deadline(&self) -> Option<Instant> {
        None
    }
    /// Called once `next_deadline` has passed, and with `flush` set when the flow's input has ended
    /// (then everything held must come out). What it pushes runs through the stages after this one.
    fn on_timer(&mut self, now: Instant, flush: bool, out: &mut Vec<Record>) {
        let _ = (now, flush, out);
    }
}

/// Builds the stages of a flow from its config, in order.
pub fn build(flow: &str, stages: &[StageConfig]) -> Vec<Box<dyn Stage>> {
    stages
        .iter()
        .map(|s| match s {
            StageConfig::Decode(c) => Box::new(decode::DecodeStage::new(flow, c)) as Box<dyn Stage>,
            StageConfig::Dedupe(c) => Box::new(dedupe::DedupeStage::new(flow, c)),
        })
        .collect()
}
