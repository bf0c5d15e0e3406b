//! Stages: plain functions over records, zero or more out per record in. They do no I/O of their own.
//! A stage that rejects a record turns it into a dead-letter record ([`Record::into_dead_letter`]);
//! the flow routes those to its dead-letter sink.

pub mod decode;
pub mod dedupe;
pub mod enrich;
pub mod validate;

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use crate::config::StageConfig;
use crate::record::Record;

/// The work a stage does before a batch (see [`Stage::prepare`]).
pub type Prepare<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// One step of a flow.
pub trait Stage: Send {
    /// The stage's name in dead letters, logs and metrics.
    fn name(&self) -> &'static str;
    /// The one exception to "no I/O": a stage that must ask an outside store about its records (a
    /// dedupe store shared by several instances) does so here, once for a whole batch, before
    /// `process` sees the batch's records one by one. `None`: nothing to ask.
    fn prepare<'a>(&'a mut self, batch: &'a [Record]) -> Option<Prepare<'a>> {
        let _ = batch;
        None
    }
    /// Takes one record and pushes what comes out of it (0 for a drop, many for a split). A stage that
    /// drops a record on purpose (a duplicate) settles it with `record.delivery.delivered()`; one dropped
    /// unsettled counts as failed, and its source answers "not stored".
    fn process(&mut self, record: Record, out: &mut Vec<Record>);
    /// Hands what the stage counts to the HTTP API's live view; the flow calls it about once a
    /// second while the pipeline has an API. The esp3 decode stage reports its telegram statistics.
    fn report(&mut self, flow: &std::sync::Arc<str>, live: &crate::live::Live) {
        let _ = (flow, live);
    }
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

/// Builds the stages of a flow from its config, in order. Fails, naming the stage, if one cannot
/// work at all (a schema that does not compile). Must run inside a tokio runtime when a stage talks
/// to an outside store (a dedupe stage with `backend = "redis"`).
/// `plugins` is the pipeline's plugin host (its `[plugins]` section), which decode stages use.
pub fn build(
    flow: &str,
    stages: &[StageConfig],
    plugins: Option<&std::sync::Arc<crate::codecs::wasm::Host>>,
) -> anyhow::Result<Vec<Box<dyn Stage>>> {
    build_with_registry(flow, stages, plugins, None)
}

/// [`build`] in a pipeline with an `[api]` section: `api_registry` is the API's device store, which
/// decode and enrich stages read when they say `registry = "api"`.
pub fn build_with_registry(
    flow: &str,
    stages: &[StageConfig],
    plugins: Option<&std::sync::Arc<crate::codecs::wasm::Host>>,
    api_registry: Option<&std::sync::Arc<crate::registry::Registry>>,
) -> anyhow::Result<Vec<Box<dyn Stage>>> {
    stages
        .iter()
        .enumerate()
        .map(|(index, s)| {
            Ok(match s {
                StageConfig::Decode(c) => Box::new(decode::DecodeStage::with_registry(
                    flow,
                    c,
                    plugins,
                    api_registry,
                )) as Box<dyn Stage>,
                StageConfig::DecodePlugin(c) => {
                    Box::new(decode::DecodeStage::vendor(flow, c, plugins))
                }
                StageConfig::Dedupe(c) => Box::new(dedupe::DedupeStage::new(flow, c)),
                StageConfig::Enrich(c) => {
                    Box::new(enrich::EnrichStage::with_registry(flow, c, api_registry))
                }
                StageConfig::Validate(c) => Box::new(
                    validate::ValidateStage::new(flow, c)
                        .map_err(|e| anyhow::anyhow!("flow `{flow}`, stage {}: {e}", index + 1))?,
                ),
            })
        })
        .collect()
}
