//! Builds a running pipeline from its config: sinks first, then flows, then sources; stops them in the
//! reverse order so that every record already taken is finished before files are closed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::codecs::wasm;
use crate::config::{FlowConfig, PipelineConfig, SinkKind, SourceKind};
use crate::downlink::Downlinks;
use crate::metrics::{self, Counter};
use crate::record::{DeadLetterRoute, Kind, Record};
use crate::sinks::jsonl::JsonLinesSink;
use crate::sinks::kafka::KafkaSink;
use crate::sinks::mqtt::MqttSink;
use crate::sinks::parquet::ParquetSink;
use crate::sinks::thingworx::ThingworxSink;
use crate::sources::coap::CoapSource;
use crate::sources::esp3_websocket::Esp3WebsocketSource;
use crate::sources::kafka::KafkaSource;
use crate::sources::mqtt::MqttSource;
use crate::stages::{self, Stage};

type Task = (String, JoinHandle<anyhow::Result<()>>);

/// A started pipeline.
pub struct Pipeline {
    shutdown: CancellationToken,
    sources: Vec<Task>,
    flows: Vec<Task>,
    sinks: Vec<Task>,
    addresses: BTreeMap<String, SocketAddr>,
    api_addr: Option<SocketAddr>,
    downlinks: Downlinks,
}

/// `queue_depth{component=...}`: the records waiting in a component's input channel. The gauge
/// holds the channel weakly, so that it never keeps a finished component's input open.
fn queue_depth_gauge(component: &str, tx: &mpsc::Sender<Record>) {
    let weak = tx.downgrade();
    metrics::gauge_fn("queue_depth", &[("component", component)], move || {
        weak.upgrade()
            .map(|tx| (tx.max_capacity() - tx.capacity()) as f64)
    });
}

impl Pipeline {
    /// Starts every component. Fails (with the component's name) if a sink cannot open its destination
    /// or a source cannot bind its address.
    pub async fn start(config: PipelineConfig) -> anyhow::Result<Pipeline> {
        let shutdown = CancellationToken::new();
        let downlinks = Downlinks::new();
        let health = crate::health::Health::new();
        // Whatever started stops again if a later component fails to start.
        let started = shutdown.clone().drop_guard();

        // The API first: its store is the registry of stages that say registry = "api", and
        // /health answers while the rest starts (/ready only once it runs).
        let mut api_task = None;
        let mut api_addr = None;
        let mut api_ready = None;
        let mut api_registry = None;
        let mut live = None;
        if let Some(c) = &config.api {
            let api = crate::api::Api::open(c, shutdown.clone())
                .await
                .context("[api]")?
                .with_downlinks(downlinks.clone())
                .with_health(health.clone());
            api_addr = Some(api.local_addr()?);
            api_ready = Some(api.readiness());
            api_registry = Some(api.registry());
            live = Some(api.live());
            api_task = Some((
                "api".to_string(),
                spawn_component("api", &shutdown, api.serve_apart()),
            ));
        }

        let mut sink_senders: BTreeMap<String, mpsc::Sender<Record>> = BTreeMap::new();
        let mut sinks = Vec::new();
        for (name, sink) in &config.sinks {
            let (tx, rx) = mpsc::channel(sink.queue);
            let component = format!("sink `{name}`");
            queue_depth_gauge(&component, &tx);
            let handle = match &sink.kind {
                SinkKind::Parquet(c) => {
                    let s = ParquetSink::new(name, c)
                        .with_context(|| component.clone())?
                        .with_probe(health.probe(&component, None));
                    spawn_component(name, &shutdown, s.run(rx))
                }
                SinkKind::JsonLines(c) => {
                    let s = JsonLinesSink::new(name, c)
                        .with_context(|| component.clone())?
                        .with_probe(health.probe(&component, None));
                    spawn_component(name, &shutdown, s.run(rx))
                }
                SinkKind::Mqtt(c) => {
                    let s = MqttSink::new(name, c)
                        .with_context(|| component.clone())?
                        .with_probe(health.probe(&component, Some("connecting to the broker")));
                    spawn_component(name, &shutdown, s.run(rx))
                }
                SinkKind::Thingworx(c) => {
                    let s = ThingworxSink::new(name, c)
                        .with_context(|| component.clone())?
                        .with_probe(health.probe(&component, Some("checking the server")));
                    spawn_component(name, &shutdown, s.run(rx))
                }
                SinkKind::Kafka(c) => {
                    let s = KafkaSink::new(name, c)
                        .with_context(|| component.clone())?
                        .with_probe(health.probe(&component, Some("connecting to the brokers")));
                    spawn_component(name, &shutdown, s.run(rx))
                }
            };
            sink_senders.insert(name.clone(), tx);
            sinks.push((format!("sink `{name}`"), handle));
        }

        // Compiling plugins can take a while on a cold cache: off the runtime's workers.
        let plugins = match config.plugins.clone() {
            Some(c) => {
                let host = tokio::task::spawn_blocking(move || wasm::Host::open(&c))
                    .await
                    .context("loading plugins")?
                    .context("[plugins]")?;
                host.watch();
                Some(host)
            }
            None => None,
        };
        let mut flow_inputs: BTreeMap<String, Vec<mpsc::Sender<Record>>> = BTreeMap::new();
        let mut flows = Vec::new();
        for flow in &config.flows {
            let (tx, rx) = mpsc::channel(flow.queue);
            queue_depth_gauge(&format!("flow `{}`", flow.name), &tx);
            for source in &flow.from {
                flow_inputs
                    .entry(source.clone())
                    .or_default()
                    .push(tx.clone());
            }
            let runner =
                FlowRunner::new(flow, &sink_senders, plugins.as_ref(), api_registry.as_ref())?
                    .with_live(live.clone());
            flows.push((
                format!("flow `{}`", flow.name),
                spawn_component(&flow.name, &shutdown, runner.run(rx)),
            ));
        }
        // Flows hold the only sink senders now: a sink ends when every flow feeding it has ended.
        drop(sink_senders);

        let mut sources = Vec::new();
        let mut addresses = BTreeMap::new();
        for (name, source) in &config.sources {
            let Some(inputs) = flow_inputs.remove(name) else {
                tracing::warn!(source = %name, "source is not read by any flow; not started");
                continue;
            };
            // Each kind is built (bound, where it listens); what follows is the same for all.
            let token = shutdown.child_token();
            let built: anyhow::Result<(Option<SocketAddr>, SourceTask)> = match &source.kind {
                SourceKind::Coap(c) => CoapSource::bind(name, c, inputs, downlinks.clone())
                    .and_then(|s| {
                        Ok((Some(s.local_addr()?), Box::pin(s.run(token)) as SourceTask))
                    }),
                SourceKind::Mqtt(c) => MqttSource::new(name, c, inputs)
                    .map(|s| {
                        let probe = health.probe(
                            &format!("source `{name}`"),
                            Some("connecting to the broker"),
                        );
                        (None, Box::pin(s.with_probe(probe).run(token)) as SourceTask)
                    })
                    .map_err(|e| e.context(format!("source `{name}`"))),
                SourceKind::Kafka(c) => KafkaSource::new(name, c, inputs)
                    .map(|s| (None, Box::pin(s.run(token)) as SourceTask))
                    .map_err(|e| e.context(format!("source `{name}`"))),
                SourceKind::Esp3Websocket(c) => Esp3WebsocketSource::bind(name, c, inputs)
                    .map(|s| s.with_live(live.clone()))
                    .and_then(|s| {
                        Ok((Some(s.local_addr()?), Box::pin(s.run(token)) as SourceTask))
                    }),
            };
            let (address, task) = match built {
                Ok(built) => built,
                Err(e) => {
                    shutdown.cancel(); // stop the sources already started
                    return Err(e);
                }
            };
            if let Some(address) = address {
                addresses.insert(name.clone(), address);
                // Bound: listening from here on.
                health.probe(&format!("source `{name}` ({address})"), None);
            }
            sources.push((
                format!("source `{name}`"),
                spawn_component(name, &shutdown, task),
            ));
        }

        sources.extend(api_task);
        if let Some(ready) = api_ready {
            ready.store(true, std::sync::atomic::Ordering::Release);
        }
        started.disarm();
        Ok(Pipeline {
            shutdown,
            sources,
            flows,
            sinks,
            addresses,
            api_addr,
            downlinks,
        })
    }

    /// The bound address of the HTTP API, if the pipeline has an `[api]` section.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api_addr
    }

    /// The bound address of a source (useful with port 0).
    pub fn local_addr(&self, source: &str) -> Option<SocketAddr> {
        self.addresses.get(source).copied()
    }

    /// The queue of pending Efento configuration changes, delivered in the next ACK to each device.
    pub fn downlinks(&self) -> &Downlinks {
        &self.downlinks
    }

    /// A token that stops the pipeline when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops reading, finishes every record already taken, closes the sinks. Returns the first error.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.join().await
    }

    /// Waits for every component to finish (after the shutdown token is cancelled, or a component failed).
    pub async fn join(self) -> anyhow::Result<()> {
        let mut first_error = None;
        for (name, handle) in self.sources.into_iter().chain(self.flows).chain(self.sinks) {
            let result = match handle.await {
                Ok(r) => r,
                Err(e) => Err(anyhow::anyhow!("task panicked: {e}")),
            };
            if let Err(e) = result {
                tracing::error!(component = %name, error = %format!("{e:#}"), "component failed");
                first_error.get_or_insert(e.context(name));
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Runs a component; if it ends before a shutdown was asked for (an error, a panic, or a closed input
/// it should never see), the whole pipeline is stopped rather than left running half-blind.
/// A started source's work, whatever its kind.
type SourceTask = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>;

fn spawn_component<F>(
    name: &str,
    shutdown: &CancellationToken,
    component: F,
) -> JoinHandle<anyhow::Result<()>>
where
    F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let name = name.to_string();
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let result = match tokio::spawn(component).await {
            Ok(r) => r,
            Err(e) => Err(anyhow::anyhow!("panicked: {e}")),
        };
        if !shutdown.is_cancelled() {
            match &result {
                Err(e) => {
                    tracing::error!(component = %name, error = %format!("{e:#}"), "component failed; stopping the pipeline")
                }
                Ok(()) => {
                    tracing::error!(component = %name, "component stopped unexpectedly; stopping the pipeline")
                }
            }
            shutdown.cancel();
        }
        result
    })
}

/// How often a flow's stages report to the API's live view.
const REPORT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// One flow at run time: its stages, and where its records go.
struct FlowRunner {
    stages: Vec<Box<dyn Stage>>,
    router: Router,
    /// A reusable buffer for what a stage pushes.
    scratch: Vec<Record>,
}

/// Where a flow's records go: good ones to every `to` sink, rejects to the dead-letter sink.
struct Router {
    name: Arc<str>,
    to: Vec<(String, mpsc::Sender<Record>)>,
    dead_letter: Option<mpsc::Sender<Record>>,
    /// The dead-letter sink as records carry it to the `to` sinks, for what those refuse.
    refusals: Option<Arc<DeadLetterRoute>>,
    rejected_without_dead_letter: Counter,
    dead_lettered: Counter,
    /// The HTTP API's live view, which sees every record on its way to the sinks.
    live: Option<Arc<crate::live::Live>>,
}

impl FlowRunner {
    fn with_live(mut self, live: Option<Arc<crate::live::Live>>) -> Self {
        self.router.live = live;
        self
    }

    fn new(
        flow: &FlowConfig,
        sinks: &BTreeMap<String, mpsc::Sender<Record>>,
        plugins: Option<&Arc<wasm::Host>>,
        api_registry: Option<&Arc<crate::registry::Registry>>,
    ) -> anyhow::Result<Self> {
        let to = flow
            .to
            .iter()
            .filter_map(|s| sinks.get(s).map(|tx| (s.clone(), tx.clone())))
            .collect();
        let dead_letter = flow
            .dead_letter
            .as_ref()
            .and_then(|s| sinks.get(s).cloned());
        if dead_letter.is_none() {
            tracing::warn!(flow = %flow.name, "flow has no dead_letter sink: rejected records are only logged and counted");
        }
        let name: Arc<str> = flow.name.as_str().into();
        let refusals = dead_letter.as_ref().map(|tx| {
            Arc::new(DeadLetterRoute {
                flow: name.clone(),
                tx: tx.clone(),
            })
        });
        let router = Router {
            name,
            to,
            dead_letter,
            refusals,
            rejected_without_dead_letter: metrics::counter(
                "component_discarded_events_total",
                &[
                    ("component", &flow.name),
                    ("reason", "rejected_without_dead_letter"),
                ],
            ),
            dead_lettered: metrics::counter("dead_lettered_records_total", &[("flow", &flow.name)]),
            live: None,
        };
        Ok(FlowRunner {
            stages: stages::build_with_registry(&flow.name, &flow.stages, plugins, api_registry)?,
            router,
            scratch: Vec::new(),
        })
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Record>) -> anyhow::Result<()> {
        let mut batch = Vec::with_capacity(256);
        // With an API, the stages report what they count to its live view once a second.
        let mut next_report = self.router.live.is_some().then(Instant::now);
        loop {
            if let Some(due) = next_report
                && due <= Instant::now()
            {
                self.report();
                next_report = Some(due + REPORT_INTERVAL);
            }
            let deadline = self.next_deadline().into_iter().chain(next_report).min();
            let received = tokio::select! {
                n = rx.recv_many(&mut batch, 256) => n,
                _ = sleep_until(deadline), if deadline.is_some() => {
                    self.fire_timers(false).await;
                    continue;
                }
            };
            if received == 0 {
                break;
            }
            self.run_stages(0, &mut batch).await;
            // Under a steady stream the receive branch is always ready: timers must not starve.
            if self.next_deadline().is_some_and(|d| d <= Instant::now()) {
                self.fire_timers(false).await;
            }
        }
        // The input has ended: release whatever the stages still hold.
        self.fire_timers(true).await;
        self.report();
        tracing::debug!(flow = %self.router.name, "flow drained");
        Ok(())
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.stages.iter().filter_map(|s| s.next_deadline()).min()
    }

    fn report(&mut self) {
        if let Some(live) = &self.router.live {
            for stage in &mut self.stages {
                stage.report(&self.router.name, live);
            }
        }
    }

    async fn fire_timers(&mut self, flush: bool) {
        let now = Instant::now();
        for index in 0..self.stages.len() {
            let due = flush || self.stages[index].next_deadline().is_some_and(|d| d <= now);
            if !due {
                continue;
            }
            let mut released = Vec::new();
            self.stages[index].on_timer(now, flush, &mut released);
            if !released.is_empty() {
                self.run_stages(index + 1, &mut released).await;
            }
        }
    }

    /// Runs records through the stages from `first` on, then routes what comes out. `current` is
    /// left empty (and reusable).
    async fn run_stages(&mut self, first: usize, current: &mut Vec<Record>) {
        let mut next = std::mem::take(&mut self.scratch);
        for stage in self.stages[first..].iter_mut() {
            if let Some(prepare) = stage.prepare(current) {
                prepare.await;
            }
            for r in current.drain(..) {
                if r.kind == Kind::DeadLetter {
                    next.push(r);
                } else {
                    stage.process(r, &mut next);
                }
            }
            std::mem::swap(current, &mut next);
        }
        for r in current.drain(..) {
            self.router.route(r).await;
        }
        self.scratch = next;
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline.into()).await;
    }
}

impl Router {
    async fn route(&self, mut record: Record) {
        if record.kind == Kind::DeadLetter {
            self.dead_lettered.inc();
            match &self.dead_letter {
                Some(tx) => {
                    // A closed sink drops the record, and its unsettled token tells the source "failed".
                    let _ = tx.send(record).await;
                }
                None => {
                    self.rejected_without_dead_letter.inc();
                    tracing::warn!(flow = %self.name, error = ?record.body.get("error"), raw_hex = ?record.body.get("raw_hex"), "record rejected (no dead_letter sink configured)");
                    record.delivery.delivered();
                }
            }
            return;
        }
        if let Some(live) = &self.live {
            live.observe(&self.name, &record);
        }
        let Some(((_, last), rest)) = self.to.split_last() else {
            record.delivery.delivered();
            return;
        };
        record.dead_letter.clone_from(&self.refusals);
        for (_, tx) in rest {
            let _ = tx.send(record.clone()).await;
        }
        let _ = last.send(record).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_component_that_fails_or_ends_early_stops_the_pipeline() {
        let shutdown = CancellationToken::new();
        let failed = spawn_component("broken", &shutdown, async { anyhow::bail!("disk gone") });
        assert!(failed.await.unwrap().is_err());
        assert!(shutdown.is_cancelled(), "an error stops everything");

        let shutdown = CancellationToken::new();
        let ended = spawn_component("quitter", &shutdown, async { Ok(()) });
        ended.await.unwrap().unwrap();
        assert!(
            shutdown.is_cancelled(),
            "ending before a shutdown was asked for stops everything"
        );

        let shutdown = CancellationToken::new();
        let panicked = spawn_component("panicky", &shutdown, async { boom() });
        let result = panicked.await.unwrap();
        assert!(result.unwrap_err().to_string().contains("panicked"));
        assert!(shutdown.is_cancelled());
    }

    #[tokio::test]
    async fn a_component_ending_after_shutdown_is_normal() {
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let component = spawn_component("sink", &shutdown, async move {
            token.cancelled().await;
            Ok(())
        });
        shutdown.cancel();
        component.await.unwrap().unwrap();
    }

    fn boom() -> anyhow::Result<()> {
        panic!("boom")
    }
}
