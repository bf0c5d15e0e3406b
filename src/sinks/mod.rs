//! Sinks: each knows its destination, not where records came from. A sink drains one bounded channel
//! and settles every record's delivery token only once the record is durably stored.

pub mod jsonl;
pub mod kafka;
pub mod mqtt;
pub mod parquet;
pub mod template;
pub mod thingworx;

use std::time::SystemTime;

use crate::health::Probe;
use crate::metrics::{self, Counter, Histogram};
use crate::record::{Delivery, Record};

/// The counters every sink keeps, under stable names labelled with the sink's name:
/// `component_sent_events_total` (records settled delivered), `component_sent_bytes_total` (bytes
/// stored), `component_failed_events_total` (records settled failed) and
/// `component_errors_total{error=...}` (failed writes or commits), and the histogram
/// `component_latency_seconds` of the time from a record's reception to its durable write here. The
/// sink's readiness probe travels with them (see [`crate::health`]).
#[derive(Clone, Debug)]
pub(crate) struct SinkCounters {
    pub sent_events: Counter,
    pub sent_bytes: Counter,
    pub failed_events: Counter,
    pub errors: Counter,
    pub latency: Histogram,
    pub probe: Probe,
}

impl SinkCounters {
    /// `error` labels what failed in `component_errors_total` (`"commit"`, `"write"`).
    pub fn new(sink: &str, error: &str) -> Self {
        let labels = [("component", sink)];
        SinkCounters {
            sent_events: metrics::counter("component_sent_events_total", &labels),
            sent_bytes: metrics::counter("component_sent_bytes_total", &labels),
            failed_events: metrics::counter("component_failed_events_total", &labels),
            errors: metrics::counter(
                "component_errors_total",
                &[("component", sink), ("error", error)],
            ),
            latency: metrics::histogram("component_latency_seconds", &labels),
            probe: Probe::detached(),
        }
    }

    /// One record received at `received_at` is durable now.
    pub fn observe(&self, received_at: SystemTime, now: SystemTime) {
        self.latency
            .observe(now.duration_since(received_at).unwrap_or_default());
    }

    /// Settles every record of a write that is now durable. Only the tokens are taken: the sources hear
    /// back before the records' memory is freed, which for a large commit takes a while.
    pub fn delivered<'a>(&self, records: impl IntoIterator<Item = &'a mut Record>) {
        let mut count = 0;
        let now = SystemTime::now();
        for record in records {
            take_delivery(record).delivered();
            self.observe(record.received_at, now);
            count += 1;
        }
        self.sent_events.add(count);
        self.probe.up();
    }

    /// Settles every record of a write that failed, each with the same reason.
    pub fn failed<'a>(&self, records: impl IntoIterator<Item = &'a mut Record>, reason: &str) {
        let mut count = 0;
        for record in records {
            take_delivery(record).failed(reason);
            count += 1;
        }
        self.failed_events.add(count);
    }
}

/// Takes a record's token out, leaving one that nobody waits for (settling or dropping it does nothing).
fn take_delivery(record: &mut Record) -> Delivery {
    std::mem::replace(&mut record.delivery, Delivery::detached())
}
