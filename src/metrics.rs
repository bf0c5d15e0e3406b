//! Counters for notable events. Every notable event is one place in the code that logs it and counts it
//! here under a stable name with labels (`component_errors_total{component="lake",error="write"}`).
//! Issue "Operating it" exposes them over HTTP; for now they are read by tests and the CLI.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

type Key = (String, Vec<(String, String)>);

static COUNTERS: LazyLock<Mutex<BTreeMap<Key, Arc<AtomicU64>>>> =
    LazyLock::new(|| Mutex::new(BTreeMap::new()));

/// A handle on one labelled counter; cheap to clone and to increment. Look it up once, keep it.
#[derive(Clone, Debug)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Returns the counter `name{labels}`, creating it at zero.
pub fn counter(name: &str, labels: &[(&str, &str)]) -> Counter {
    let key = (
        name.to_string(),
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    let mut map = COUNTERS.lock().unwrap_or_else(|p| p.into_inner());
    Counter(map.entry(key).or_default().clone())
}

/// Every counter in Prometheus text form, sorted by name.
pub fn render() -> String {
    let map = COUNTERS.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = String::new();
    for ((name, labels), value) in map.iter() {
        out.push_str(name);
        if !labels.is_empty() {
            out.push('{');
            let parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            out.push_str(&parts.join(","));
            out.push('}');
        }
        out.push_str(&format!(" {}\n", value.load(Ordering::Relaxed)));
    }
    out
}
