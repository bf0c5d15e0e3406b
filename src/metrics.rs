//! Counters, gauges and histograms for notable events. Every notable event is one place in the code
//! that logs it and counts it here under a stable name with labels
//! (`component_errors_total{component="lake",error="write"}`). The HTTP API (`[api]`) serves them at
//! `/metrics`; tests and the CLI read them too.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

type Labels = Vec<(String, String)>;
type Key = (String, Labels);

/// A gauge read when the metrics are rendered; `None` leaves the series out (what it measured is gone).
type GaugeFn = Arc<dyn Fn() -> Option<f64> + Send + Sync>;

enum Series {
    Counter(Arc<AtomicU64>),
    Gauge(GaugeFn),
    Histogram(Arc<HistogramInner>),
}

impl Series {
    fn kind(&self) -> &'static str {
        match self {
            Series::Counter(_) => "counter",
            Series::Gauge(_) => "gauge",
            Series::Histogram(_) => "histogram",
        }
    }
}

static SERIES: LazyLock<Mutex<BTreeMap<Key, Series>>> =
    LazyLock::new(|| Mutex::new(BTreeMap::new()));

fn key(name: &str, labels: &[(&str, &str)]) -> Key {
    (
        name.to_string(),
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn series() -> std::sync::MutexGuard<'static, BTreeMap<Key, Series>> {
    SERIES.lock().unwrap_or_else(|p| p.into_inner())
}

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

/// Returns the counter `name{labels}`, creating it at zero. A name registered as another kind
/// gets a counter of its own that is not rendered (a programming error, caught by the tests).
pub fn counter(name: &str, labels: &[(&str, &str)]) -> Counter {
    let mut map = series();
    match map
        .entry(key(name, labels))
        .or_insert_with(|| Series::Counter(Arc::default()))
    {
        Series::Counter(c) => Counter(c.clone()),
        _ => Counter(Arc::default()),
    }
}

/// Registers the gauge `name{labels}`, read by calling `read` at every render; a later registration
/// under the same name and labels replaces it (a restarted component).
pub fn gauge_fn(
    name: &str,
    labels: &[(&str, &str)],
    read: impl Fn() -> Option<f64> + Send + Sync + 'static,
) {
    series().insert(key(name, labels), Series::Gauge(Arc::new(read)));
}

/// Upper bounds (seconds) of the latency histograms' buckets: 1 ms to 30 s.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default)]
struct HistogramInner {
    /// Observations per bucket (not cumulative); the last one is above every bound (+Inf).
    buckets: [AtomicU64; BUCKETS.len() + 1],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// A handle on one labelled latency histogram (seconds, buckets from 1 ms to 30 s).
#[derive(Clone, Default)]
pub struct Histogram(Arc<HistogramInner>);

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.count())
            .finish()
    }
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS.len());
        self.0.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.0.count.fetch_add(1, Ordering::Relaxed);
        self.0.sum_micros.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub fn count(&self) -> u64 {
        self.0.count.load(Ordering::Relaxed)
    }
}

/// Returns the histogram `name{labels}` (by convention `..._seconds`), creating it empty.
pub fn histogram(name: &str, labels: &[(&str, &str)]) -> Histogram {
    let mut map = series();
    match map
        .entry(key(name, labels))
        .or_insert_with(|| Series::Histogram(Arc::default()))
    {
        Series::Histogram(h) => Histogram(h.clone()),
        _ => Histogram::default(),
    }
}

/// Every series in the Prometheus text exposition format (0.0.4), sorted by name: one
/// `# TYPE name kind` line per family, then its samples, label values escaped. Histograms give
/// their cumulative `_bucket{le=...}` lines, `_sum` and `_count`.
pub fn render() -> String {
    // Gauges are read outside the lock: a gauge may look at anything.
    let snapshot: Vec<(Key, Series)> = series()
        .iter()
        .map(|(k, s)| {
            let s = match s {
                Series::Counter(c) => Series::Counter(c.clone()),
                Series::Gauge(g) => Series::Gauge(g.clone()),
                Series::Histogram(h) => Series::Histogram(h.clone()),
            };
            (k.clone(), s)
        })
        .collect();
    let mut out = String::new();
    let mut family: Option<&str> = None;
    for ((name, labels), value) in &snapshot {
        // A gauge whose component is gone has no sample (and a family of none has no TYPE line).
        let gauge = match value {
            Series::Gauge(read) => match read() {
                Some(v) => Some(v),
                None => continue,
            },
            _ => None,
        };
        if family != Some(name.as_str()) {
            out.push_str(&format!("# TYPE {name} {}\n", value.kind()));
            family = Some(name);
        }
        match value {
            Series::Counter(c) => sample(
                &mut out,
                name,
                labels,
                None,
                &c.load(Ordering::Relaxed).to_string(),
            ),
            Series::Gauge(_) => {
                if let Some(v) = gauge {
                    sample(&mut out, name, labels, None, &v.to_string());
                }
            }
            Series::Histogram(h) => {
                let bucket = format!("{name}_bucket");
                let mut cumulative = 0;
                for (i, count) in h.buckets.iter().enumerate() {
                    cumulative += count.load(Ordering::Relaxed);
                    let le = BUCKETS.get(i).map_or("+Inf".to_string(), f64::to_string);
                    sample(
                        &mut out,
                        &bucket,
                        labels,
                        Some(&le),
                        &cumulative.to_string(),
                    );
                }
                let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
                sample(
                    &mut out,
                    &format!("{name}_sum"),
                    labels,
                    None,
                    &sum.to_string(),
                );
                // The count is the buckets' total, so that a scrape never sees them disagree.
                sample(
                    &mut out,
                    &format!("{name}_count"),
                    labels,
                    None,
                    &cumulative.to_string(),
                );
            }
        }
    }
    out
}

/// One sample line: `name{labels[,le="..."]} value`.
fn sample(out: &mut String, name: &str, labels: &Labels, le: Option<&str>, value: &str) {
    out.push_str(name);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        let extra = le.map(|le| ("le", le));
        for (i, (k, v)) in labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(extra)
            .enumerate()
        {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            escape_label_value(v, out);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(value);
    out.push('\n');
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

    #[test]
    fn histograms_are_cumulative_and_gauges_read_at_render() {
        let h = histogram("render_test_seconds", &[("component", "x")]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(20));
        h.observe(Duration::from_secs(60));
        gauge_fn("render_test_depth", &[("component", "x")], || Some(7.0));
        gauge_fn("render_test_gone", &[], || None);
        let text = render();
        assert!(
            text.contains("# TYPE render_test_seconds histogram\n"),
            "{text}"
        );
        assert!(
            text.contains("render_test_seconds_bucket{component=\"x\",le=\"0.001\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("render_test_seconds_bucket{component=\"x\",le=\"0.025\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("render_test_seconds_bucket{component=\"x\",le=\"30\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("render_test_seconds_bucket{component=\"x\",le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("render_test_seconds_count{component=\"x\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("render_test_seconds_sum{component=\"x\"} 60.0205\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE render_test_depth gauge\nrender_test_depth{component=\"x\"} 7\n"),
            "{text}"
        );
        assert!(!text.contains("render_test_gone"), "{text}");
    }
}
