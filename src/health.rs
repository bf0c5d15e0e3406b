//! Whether each component a pipeline depends on can do its work now: a source listening or connected
//! to its broker, a sink connected to its broker or server, or able to write its files. The HTTP
//! API's `/ready` answers 200 only while every component is up, and lists each with what it last
//! reported; `/metrics` has `component_up{component=...}` (1 or 0) for each.
//!
//! A component holds a [`Probe`] and reports transitions with [`Probe::up`] and [`Probe::down`];
//! only changes are logged. A component built outside a pipeline (tests, `sensorgate test`) gets a
//! detached probe that nobody reads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::metrics;

/// What one component last reported.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ComponentState {
    pub component: String,
    pub up: bool,
    /// Why it is down (or what it is connected to), as the component said it.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

struct ProbeInner {
    name: String,
    up: AtomicBool,
    detail: Mutex<String>,
}

/// One component's end: see the module docs.
#[derive(Clone)]
pub struct Probe(Arc<ProbeInner>);

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("name", &self.0.name)
            .field("up", &self.is_up())
            .finish()
    }
}

impl Default for Probe {
    fn default() -> Self {
        Probe::detached()
    }
}

impl Probe {
    fn new(name: &str, up: bool, detail: &str) -> Probe {
        Probe(Arc::new(ProbeInner {
            name: name.to_string(),
            up: AtomicBool::new(up),
            detail: Mutex::new(detail.to_string()),
        }))
    }

    /// A probe that is not part of any pipeline's readiness.
    pub fn detached() -> Probe {
        Probe::new("", true, "")
    }

    fn set(&self, up: bool, detail: &str) {
        let was = self.0.up.swap(up, Ordering::AcqRel);
        let mut current = self.0.detail.lock().unwrap_or_else(|p| p.into_inner());
        if *current != detail {
            *current = detail.to_string();
        }
        drop(current);
        if was != up && !self.0.name.is_empty() {
            if up {
                tracing::info!(component = %self.0.name, "component ready");
            } else {
                tracing::info!(component = %self.0.name, reason = detail, "component not ready");
            }
        }
    }

    /// The component can do its work (connected, listening, writing).
    pub fn up(&self) {
        // Cheap when nothing changes: sinks call this on every delivery.
        if !self.is_up() {
            self.set(true, "");
        }
    }

    /// The component cannot do its work now, and why.
    pub fn down(&self, reason: &str) {
        self.set(false, reason);
    }

    pub fn is_up(&self) -> bool {
        self.0.up.load(Ordering::Acquire)
    }

    fn detail(&self) -> String {
        self.0
            .detail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn state(&self) -> ComponentState {
        ComponentState {
            component: self.0.name.clone(),
            up: self.is_up(),
            detail: self.detail(),
        }
    }
}

/// Every probe of one pipeline.
#[derive(Default)]
pub struct Health {
    probes: Mutex<Vec<Probe>>,
}

impl Health {
    pub fn new() -> Arc<Health> {
        Arc::new(Health::default())
    }

    /// A probe for `component` (e.g. ``sink `lake` ``), up from the start or down with `pending`
    /// until the component reports (e.g. `"connecting to the broker"`).
    pub fn probe(&self, component: &str, pending: Option<&str>) -> Probe {
        let probe = Probe::new(component, pending.is_none(), pending.unwrap_or(""));
        let weak = Arc::downgrade(&probe.0);
        metrics::gauge_fn("component_up", &[("component", component)], move || {
            weak.upgrade().map(|p| {
                if p.up.load(Ordering::Acquire) {
                    1.0
                } else {
                    0.0
                }
            })
        });
        self.probes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(probe.clone());
        probe
    }

    /// Each component's state, in the order they were registered.
    pub fn report(&self) -> Vec<ComponentState> {
        self.probes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(Probe::state)
            .collect()
    }

    pub fn all_up(&self) -> bool {
        self.probes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .all(Probe::is_up)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pipeline_is_up_only_while_every_component_is() {
        let health = Health::new();
        let files = health.probe("sink `health-test-files`", None);
        let broker = health.probe("sink `health-test-broker`", Some("connecting"));
        assert!(files.is_up());
        assert!(!health.all_up());
        assert_eq!(health.report()[1].detail, "connecting");
        broker.up();
        assert!(health.all_up());
        assert_eq!(health.report()[1].detail, "");
        broker.down("connection refused");
        assert!(!health.all_up());
        assert_eq!(
            health.report()[1],
            ComponentState {
                component: "sink `health-test-broker`".into(),
                up: false,
                detail: "connection refused".into()
            }
        );
        let text = metrics::render();
        assert!(
            text.contains("component_up{component=\"sink `health-test-broker`\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("component_up{component=\"sink `health-test-files`\"} 1\n"),
            "{text}"
        );
        drop((files, broker, health));
        assert!(!metrics::render().contains("health-test-files"));
    }
}
