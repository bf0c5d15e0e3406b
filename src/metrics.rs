//! Counters for notable events. Every notable event is one place in the code that logs it and counts it
//! here under a stable name with labels (`component_errors_total{component="lake",error="write"}`).
//! The HTTP API (`[api]`) serves them at `/metrics`; tests and the CLI read them too.

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

/// Every counter in the Prometheus text exposition format (0.0.4), sorted by name: one
/// `# TYPE name counter` line per family, then its samples, label values escaped.
pub fn render() -> String {
    let map = COUNTERS.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = String::new();
    let mut family: Option<&str> = None;
    for ((name, labels), value) in map.iter() {
        if family != Some(name.as_str()) {
            out.push_str(&format!("# TYPE {name} counter\n"));
            family = Some(name);
        }
        out.push_str(name);
        if !labels.is_empty() {
            out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(k);
                out.push_str("=\"");
                escape_label_value(v, &mut out);
                out.push('"');
            }
            out.push('}');
        }
        out.push_str(&format!(" {}\n", value.load(Ordering::Relaxed)));
    }
    out
}

/// A label value as the text format writes it: backslash, double quote and line feed escaped.
fn escape_label_value(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_typed_once_and_label_values_escaped() {
        counter("render_test_total", &[("path", "a\"b\\c\nd")]).add(3);
        counter("render_test_total", &[("path", "plain")]).inc();
        let text = render();
        assert_eq!(
            text.matches("# TYPE render_test_total counter\n").count(),
            1,
            "{text}"
        );
        assert!(
            text.contains("render_test_total{path=\"a\\\"b\\\\c\\nd\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("render_test_total{path=\"plain\"} 1\n"),
            "{text}"
        );
        let type_line = text.find("# TYPE render_test_total").unwrap();
        let first_sample = text.find("render_test_total{").unwrap();
        assert!(type_line < first_sample);
    }
}
