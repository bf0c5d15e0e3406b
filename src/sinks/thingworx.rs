//! ThingWorx sink: writes records to a PTC ThingWorx platform over its REST API
//! (`../shared/protocols/integrations.md` §1).
//!
//! **Requests.** Every request carries the application key in the `appKey` header (read at start
//! from the environment variable `app_key_env`, never logged, never in the URL), `Content-Type:
//! application/json` (ThingWorx's CSRF filter answers 403 without it) and `Accept:
//! application/json`. The thing is `thing`, a template with `{device}`, `{kind}`, `{gateway}`,
//! `{source}` (default `{device}`), percent-encoded as one path segment.
//!
//! * `mode = "properties"` (default): `PUT {url}/Things/{thing}/Properties/*` with one JSON object
//!   `{property: value}`. Each reading becomes the property named by its type (`temperature`); when
//!   readings of one type come from several channels of a request, the property is `{type}_{channel}`
//!   (`temperature_1`, `temperature_2`). With several readings for one property the latest (by
//!   reading time, then by arrival) wins: a property holds a current value. A record without readings
//!   has nothing to write as properties and is refused (dead letter).
//! * `mode = "service"`: `POST {url}/Things/{thing}/Services/{service}` with `body`, a JSON object
//!   template whose string values `"{measurements}"`, `"{documents}"` and `"{thing}"` are replaced by
//!   the readings in the Efento Gateway v2 shape (one item per record and reading time:
//!   `{"serial", "measured_at", "params": [{"channel", "type", "value", "unit"}]}`), the records'
//!   documents, and the thing name. Default body: `{"measurements": "{measurements}"}`, the shape of
//!   the Efento-to-ThingWorx seed.
//!
//! **Batching.** The sink takes up to `max_batch` records at once (waiting up to `linger` for more
//! after the first) and sends one request per thing. Requests go one at a time, in order.
//!
//! **Delivery.** A 2xx settles the request's records delivered. A 5xx, a connection error or a
//! timeout (`timeout` per request) is retried with doubling waits (100 ms up to 5 s) until
//! `deadline` after the records reached the sink; then they are settled failed (a CoAP sensor hears
//! 5.00, an MQTT message stays unacknowledged). Any other answer (4xx: a wrong appKey, an unknown
//! thing, service or property, a missing parameter) is not retried: the records are refused for good
//! and go to their flow's dead-letter sink with the status and the first KiB of the response text.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use serde_json::{Map, Value};
use tokio::sync::mpsc::Receiver;
use tokio::time::Instant;

use super::SinkCounters;
use super::template::Part;
use crate::config::HumanDuration;
use crate::document::Document;
use crate::mqtt::Backoff;
use crate::record::{Record, rfc3339};

/// What a request does with a thing.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `PUT .../Things/{thing}/Properties/*`.
    #[default]
    Properties,
    /// `POST .../Things/{thing}/Services/{service}`.
    Service,
}

/// `[sinks.NAME] type = "thingworx"`.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ThingworxConfig {
    /// The platform's base URL, up to and including `/Thingworx` (`https://host:8443/Thingworx`).
    pub url: String,
    /// The thing name template (`{device}`, `{kind}`, `{gateway}`, `{source}`).
    #[serde(default = "default_thing")]
    pub thing: String,
    /// `properties` (default) or `service`.
    #[serde(default)]
    pub mode: Mode,
    /// The service to call (`mode = "service"` only), e.g. `IngestEfento`.
    #[serde(default)]
    pub service: Option<String>,
    /// The service's JSON body template (`mode = "service"` only); see the module docs.
    #[serde(default)]
    pub body: Option<String>,
    /// The environment variable holding the application key (sent as the `appKey` header).
    #[serde(default = "default_app_key_env")]
    pub app_key_env: String,
    /// Longest wait for one request's answer.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// How long a record may take to be accepted (retries included) before it fails.
    #[serde(default = "default_deadline")]
    pub deadline: HumanDuration,
    /// The most records taken into one round of requests.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// How long to wait for more records after the first of a batch (0s: send what is there).
    #[serde(default = "default_linger")]
    pub linger: HumanDuration,
}

fn default_thing() -> String {
    "{device}".into()
}
fn default_app_key_env() -> String {
    "THINGWORX_APP_KEY".into()
}
fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_deadline() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_max_batch() -> usize {
    100
}
fn default_linger() -> HumanDuration {
    HumanDuration(Duration::from_millis(5))
}

const DEFAULT_BODY: &str = r#"{"measurements": "{measurements}"}"#;
const BODY_PLACEHOLDERS: &[&str] = &["{measurements}", "{documents}", "{thing}"];
/// How much of an error response is kept in the dead letter and the log.
const MAX_ERROR_TEXT: usize = 1024;

impl ThingworxConfig {
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Err(e) = self.base_url() {
            out.push(e);
        }
        if let Err(e) = Part::parse("thing", &self.thing) {
            out.push(e);
        }
        match (self.mode, &self.service) {
            (Mode::Service, None) => {
                out.push("mode = \"service\" needs `service`, the service to call".into())
            }
            (Mode::Service, Some(s)) if s.is_empty() || s.contains('/') => {
                out.push(format!("service `{s}` is not a service name"))
            }
            (Mode::Properties, Some(_)) => {
                out.push("`service` is only used with mode = \"service\"".into())
            }
            _ => {}
        }
        if self.body.is_some() && self.mode == Mode::Properties {
            out.push("`body` is only used with mode = \"service\"".into());
        }
        if let Some(b) = &self.body
            && let Err(e) = parse_body(b)
        {
            out.push(e);
        }
        if self.app_key_env.is_empty() {
            out.push(
                "app_key_env is empty: name the environment variable holding the appKey".into(),
            );
        }
        if self.max_batch == 0 {
            out.push("max_batch must be at least 1".into());
        }
        if self.timeout.get().is_zero() {
            out.push("timeout must be longer than 0s".into());
        }
        if self.deadline.get().is_zero() {
            out.push("deadline must be longer than 0s".into());
        }
        out
    }

    fn base_url(&self) -> Result<reqwest::Url, String> {
        let url = reqwest::Url::parse(&self.url).map_err(|e| format!("url `{}`: {e}", self.url))?;
        if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
            return Err(format!(
                "url `{}` is not an http(s) base URL such as \"https://host:8443/Thingworx\"",
                self.url
            ));
        }
        if url.query().is_some() {
            return Err(format!(
                "url `{}` has a query; the appKey goes in a header (app_key_env), not the URL",
                self.url
            ));
        }
        Ok(url)
    }
}

/// The body template as JSON; every placeholder-looking string must be a known placeholder.
fn parse_body(text: &str) -> Result<Map<String, Value>, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("body is not JSON: {e}"))?;
    let Value::Object(map) = value else {
        return Err("body must be a JSON object (its keys are the service's parameters)".into());
    };
    fn check(v: &Value) -> Result<(), String> {
        match v {
            Value::String(s)
                if s.starts_with('{') && s.ends_with('}') && !BODY_PLACEHOLDERS.contains(&&**s) =>
            {
                Err(format!(
                    "body: unknown placeholder `{s}` (known: {})",
                    BODY_PLACEHOLDERS.join(", ")
                ))
            }
            Value::Array(a) => a.iter().try_for_each(check),
            Value::Object(o) => o.values().try_for_each(check),
            _ => Ok(()),
        }
    }
    map.values().try_for_each(check)?;
    Ok(map)
}

/// The ThingWorx sink (see the module docs).
pub struct ThingworxSink {
    name: Arc<str>,
    config: ThingworxConfig,
    thing: Vec<Part>,
    body: Map<String, Value>,
    base: reqwest::Url,
    app_key: HeaderValue,
    client: reqwest::Client,
    counters: SinkCounters,
}

/// How one request ended.
enum Answer {
    Accepted,
    /// Worth another try (5xx, connection error, timeout), with what happened.
    Retry(String),
    /// Never worth another try (4xx and the like).
    Refused(String),
}

impl ThingworxSink {
    /// Checks the options and reads the application key, so that a mistake shows at start.
    pub fn new(name: &str, config: &ThingworxConfig) -> anyhow::Result<Self> {
        let key = std::env::var(&config.app_key_env).map_err(|_| {
            anyhow::anyhow!(
                "the environment variable {} (the ThingWorx application key) is not set",
                config.app_key_env
            )
        })?;
        Self::with_app_key(name, config, &key)
    }

    fn with_app_key(name: &str, config: &ThingworxConfig, key: &str) -> anyhow::Result<Self> {
        let problems = config.problems();
        if !problems.is_empty() {
            anyhow::bail!("{}", problems.join("; "));
        }
        let base = config.base_url().map_err(anyhow::Error::msg)?;
        let thing = Part::parse("thing", &config.thing).map_err(anyhow::Error::msg)?;
        let body = parse_body(config.body.as_deref().unwrap_or(DEFAULT_BODY))
            .map_err(anyhow::Error::msg)?;
        let mut app_key = HeaderValue::from_str(key.trim()).map_err(|_| {
            anyhow::anyhow!(
                "the environment variable {} does not hold a valid appKey",
                config.app_key_env
            )
        })?;
        app_key.set_sensitive(true);
        let client = reqwest::Client::builder()
            .timeout(config.timeout.get())
            .build()
            .context("building the HTTP client")?;
        Ok(ThingworxSink {
            name: name.into(),
            config: config.clone(),
            thing,
            body,
            base,
            app_key,
            client,
            counters: SinkCounters::new(name, "request"),
        })
    }

    /// Sends until `rx` closes.
    pub async fn run(self, mut rx: Receiver<Record>) -> anyhow::Result<()> {
        let reach = tokio::spawn(self.reach_server());
        let result = self.drain(&mut rx).await;
        reach.abort();
        result
    }

    /// Reports whether the server answers HTTP: checked with a GET of the base URL at start (any
    /// answer counts, even 401), again every 5 s while it does not, and by every request after.
    pub fn with_probe(mut self, probe: crate::health::Probe) -> Self {
        self.counters.probe = probe;
        self
    }

    fn reach_server(&self) -> impl std::future::Future<Output = ()> + use<> {
        let request = self
            .client
            .get(self.base.clone())
            .header("appKey", self.app_key.clone())
            .header(ACCEPT, "application/json");
        let probe = self.counters.probe.clone();
        let base = self.base.clone();
        async move {
            loop {
                let Some(request) = request.try_clone() else {
                    return;
                };
                match request.timeout(Duration::from_secs(5)).send().await {
                    Ok(_) => {
                        probe.up();
                        return;
                    }
                    Err(e) => probe.down(&format!("GET {base}: {}", error_chain(&e))),
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }

    async fn drain(&self, rx: &mut Receiver<Record>) -> anyhow::Result<()> {
        let max = self.config.max_batch;
        let mut batch = Vec::with_capacity(max);
        loop {
            if rx.recv_many(&mut batch, max).await == 0 {
                return Ok(());
            }
            let deadline = Instant::now() + self.config.deadline.get();
            let linger_until = Instant::now() + self.config.linger.get();
            while batch.len() < max {
                match tokio::time::timeout_at(linger_until, rx.recv()).await {
                    Ok(Some(record)) => batch.push(record),
                    Ok(None) | Err(_) => break,
                }
            }
            for (thing, records) in self.by_thing(batch.drain(..)) {
                self.send(&thing, records, deadline).await;
            }
        }
    }

    /// The records grouped by thing, in order of first appearance; a record without a thing name is
    /// refused.
    fn by_thing(&self, records: impl Iterator<Item = Record>) -> Vec<(String, Vec<Record>)> {
        let mut groups: Vec<(String, Vec<Record>)> = Vec::new();
        for record in records {
            match Part::render(&self.thing, &record, |c| c) {
                Ok(thing) => match groups.iter_mut().find(|(t, _)| *t == thing) {
                    Some((_, group)) => group.push(record),
                    None => groups.push((thing, vec![record])),
                },
                Err(reason) => record.refuse(&self.name, &reason),
            }
        }
        groups
    }

    /// One request for `records` to `thing`, retried until accepted, refused or past `deadline`.
    async fn send(&self, thing: &str, mut records: Vec<Record>, deadline: Instant) {
        let (method, url, body) = match self.config.mode {
            Mode::Properties => {
                let (with, without): (Vec<_>, Vec<_>) =
                    records.into_iter().partition(|r| !r.readings.is_empty());
                for record in without {
                    record.refuse(
                        &self.name,
                        "the record has no readings to write as properties",
                    );
                }
                if with.is_empty() {
                    return;
                }
                records = with;
                let url = self.url(thing, ["Properties", "*"]);
                (reqwest::Method::PUT, url, properties(&records))
            }
            Mode::Service => {
                let service = self.config.service.as_deref().unwrap_or_default();
                let url = self.url(thing, ["Services", service]);
                (
                    reqwest::Method::POST,
                    url,
                    self.service_body(thing, &records),
                )
            }
        };
        let body = match serde_json::to_vec(&body) {
            Ok(b) => b,
            Err(e) => {
                let reason = format!("cannot serialize the request body: {e}");
                for record in records {
                    record.refuse(&self.name, &reason);
                }
                return;
            }
        };
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let answer = match tokio::time::timeout_at(
                deadline,
                self.request(method.clone(), url.clone(), body.clone()),
            )
            .await
            {
                Ok(answer) => answer,
                Err(_) => Answer::Retry("no answer before the deadline".into()),
            };
            match answer {
                Answer::Accepted => {
                    self.counters.sent_bytes.add(body.len() as u64);
                    self.counters.delivered(records.iter_mut());
                    return;
                }
                Answer::Refused(reason) => {
                    self.counters.probe.up();
                    tracing::warn!(sink = %self.name, thing, %reason, records = records.len(), "ThingWorx refused a request; its records go to dead letter");
                    self.counters.errors.inc();
                    for record in records {
                        record.refuse(&self.name, &reason);
                    }
                    return;
                }
                Answer::Retry(reason) => {
                    self.counters.errors.inc();
                    self.counters.probe.down(&reason);
                    let wait = backoff.next_wait();
                    if Instant::now() + wait >= deadline {
                        tracing::warn!(sink = %self.name, thing, %reason, "ThingWorx did not accept the records within the deadline");
                        let reason = format!(
                            "ThingWorx did not accept the record within {} (sink `{}`): {reason}",
                            self.config.deadline, self.name
                        );
                        self.counters.failed(records.iter_mut(), &reason);
                        return;
                    }
                    tracing::warn!(sink = %self.name, thing, %reason, wait_ms = wait.as_millis() as u64, "ThingWorx request failed; retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    fn url(&self, thing: &str, rest: [&str; 2]) -> reqwest::Url {
        let mut url = self.base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments
                .pop_if_empty()
                .push("Things")
                .push(thing)
                .extend(rest);
        }
        url
    }

    async fn request(&self, method: reqwest::Method, url: reqwest::Url, body: Vec<u8>) -> Answer {
        let path = url.path().to_string();
        let sent = self
            .client
            .request(method.clone(), url)
            .header("appKey", self.app_key.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json")
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => return Answer::Retry(format!("{method} {path}: {}", error_chain(&e))),
        };
        let status = response.status();
        if status.is_success() {
            return Answer::Accepted;
        }
        let mut text = response.text().await.unwrap_or_default();
        if text.len() > MAX_ERROR_TEXT {
            let mut end = MAX_ERROR_TEXT;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        let reason = format!(
            "ThingWorx answered HTTP {} to {method} {path}: {}",
            status.as_u16(),
            text.trim()
        );
        if status.is_server_error() {
            Answer::Retry(reason)
        } else {
            Answer::Refused(reason)
        }
    }

    fn service_body(&self, thing: &str, records: &[Record]) -> Value {
        fn fill(v: &Value, thing: &str, records: &[Record]) -> Value {
            match v {
                Value::String(s) if s == "{measurements}" => {
                    Value::Array(records.iter().flat_map(gateway_v2_measurements).collect())
                }
                Value::String(s) if s == "{documents}" => Value::Array(
                    records
                        .iter()
                        .filter_map(|r| serde_json::to_value(Document(r)).ok())
                        .collect(),
                ),
                Value::String(s) if s == "{thing}" => Value::String(thing.to_string()),
                Value::Array(a) => {
                    Value::Array(a.iter().map(|v| fill(v, thing, records)).collect())
                }
                Value::Object(o) => Value::Object(
                    o.iter()
                        .map(|(k, v)| (k.clone(), fill(v, thing, records)))
                        .collect(),
                ),
                v => v.clone(),
            }
        }
        Value::Object(
            self.body
                .iter()
                .map(|(k, v)| (k.clone(), fill(v, thing, records)))
                .collect(),
        )
    }
}

/// The readings of all `records` as one `{property: value}` object (see the module docs).
fn properties(records: &[Record]) -> Value {
    let mut channels: HashMap<&str, HashSet<Option<u32>>> = HashMap::new();
    for reading in records.iter().flat_map(|r| &r.readings) {
        channels
            .entry(&reading.key)
            .or_default()
            .insert(reading.channel);
    }
    let mut latest: HashMap<String, i64> = HashMap::new();
    let mut out = Map::new();
    for reading in records.iter().flat_map(|r| &r.readings) {
        let name = match reading.channel {
            Some(c) if channels[&*reading.key].len() > 1 => format!("{}_{c}", reading.key),
            _ => reading.key.to_string(),
        };
        if latest.get(&name).is_some_and(|&ts| ts > reading.ts) {
            continue;
        }
        latest.insert(name.clone(), reading.ts);
        out.insert(
            name,
            serde_json::to_value(&reading.value).unwrap_or(Value::Null),
        );
    }
    Value::Object(out)
}

/// A record's readings as Efento Gateway v2 `measurements` items, one per reading time.
fn gateway_v2_measurements(record: &Record) -> Vec<Value> {
    let mut items: Vec<(i64, Vec<Value>)> = Vec::new();
    for reading in &record.readings {
        let mut param = Map::new();
        if let Some(c) = reading.channel {
            param.insert("channel".into(), c.into());
        }
        param.insert("type".into(), Value::String(reading.key.to_string()));
        param.insert(
            "value".into(),
            serde_json::to_value(&reading.value).unwrap_or(Value::Null),
        );
        if let Some(unit) = &reading.unit {
            param.insert("unit".into(), Value::String(unit.to_string()));
        }
        match items.iter_mut().find(|(ts, _)| *ts == reading.ts) {
            Some((_, params)) => params.push(Value::Object(param)),
            None => items.push((reading.ts, vec![Value::Object(param)])),
        }
    }
    items
        .into_iter()
        .map(|(ts, params)| {
            let at = SystemTime::UNIX_EPOCH + Duration::from_secs(ts.max(0) as u64);
            let mut item = Map::new();
            if let Some(device) = &record.device {
                item.insert("serial".into(), Value::String(device.clone()));
            }
            item.insert("measured_at".into(), Value::String(rfc3339(at)));
            item.insert("params".into(), Value::Array(params));
            Value::Object(item)
        })
        .collect()
}

/// An error with its causes ("error sending request: connection refused").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Delivery, Origin, Reading, ReadingValue};
    use bytes::Bytes;

    fn config(text: &str) -> ThingworxConfig {
        toml::from_str(&format!("url = \"http://127.0.0.1:1/Thingworx\"\n{text}")).unwrap()
    }

    fn reading(key: &'static str, channel: u32, ts: i64, value: f64) -> Reading {
        Reading {
            channel: Some(channel),
            key: key.into(),
            ts,
            value: ReadingValue::Float(value),
            unit: None,
            raw: None,
            meta: None,
            error_code: None,
            type_code: None,
        }
    }

    fn record(readings: Vec<Reading>) -> Record {
        let mut r = Record::new(
            "efento".into(),
            Origin::default(),
            Bytes::new(),
            Delivery::detached(),
        );
        r.device = Some("282C024156AF".into());
        r.readings = readings;
        r
    }

    #[test]
    fn properties_take_the_latest_value_and_name_channels_only_when_needed() {
        let records = [
            record(vec![
                reading("temperature", 1, 20, 21.5),
                reading("temperature", 2, 20, 19.0),
                reading("humidity", 3, 20, 40.0),
            ]),
            record(vec![
                reading("humidity", 3, 10, 99.0),
                reading("humidity", 3, 30, 41.0),
            ]),
        ];
        let props = properties(&records);
        assert_eq!(
            props,
            serde_json::json!({"temperature_1": 21.5, "temperature_2": 19.0, "humidity": 41.0})
        );
    }

    #[test]
    fn the_default_service_body_has_the_efento_gateway_shape() {
        let c = config("mode = \"service\"\nservice = \"IngestEfento\"");
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        let sink = ThingworxSink::with_app_key("twx", &c, "k").unwrap();
        let body = sink.service_body(
            "T",
            &[record(vec![
                reading("temperature", 1, 0, 21.5),
                reading("humidity", 2, 0, 40.0),
                reading("temperature", 1, 60, 22.0),
            ])],
        );
        assert_eq!(
            body,
            serde_json::json!({"measurements": [
                {"serial": "282C024156AF", "measured_at": rfc3339(SystemTime::UNIX_EPOCH),
                 "params": [{"channel": 1, "type": "temperature", "value": 21.5},
                            {"channel": 2, "type": "humidity", "value": 40.0}]},
                {"serial": "282C024156AF", "measured_at": rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(60)),
                 "params": [{"channel": 1, "type": "temperature", "value": 22.0}]}
            ]})
        );
        assert_eq!(
            sink.url("a b", ["Services", "IngestEfento"]).as_str(),
            "http://127.0.0.1:1/Thingworx/Things/a%20b/Services/IngestEfento"
        );
    }

    #[test]
    fn a_batch_is_grouped_by_thing_in_order_and_a_record_without_its_device_is_refused() {
        let sink =
            ThingworxSink::with_app_key("twx", &config("thing = \"EF-{device}\""), "k").unwrap();
        let mut other = record(vec![]);
        other.device = Some("B".into());
        let mut nameless = record(vec![]);
        nameless.device = None;
        let (delivery, mut watch) = Delivery::new();
        nameless.delivery = delivery;
        let records = vec![record(vec![]), other, nameless, record(vec![])];
        let groups = sink.by_thing(records.into_iter());
        let shape: Vec<(&str, usize)> = groups.iter().map(|(t, r)| (t.as_str(), r.len())).collect();
        assert_eq!(shape, [("EF-282C024156AF", 2), ("EF-B", 1)]);
        assert!(matches!(
            watch.try_recv(),
            Ok(crate::record::Outcome::Rejected { reason, .. }) if reason.contains("no device")
        ));
    }

    #[test]
    fn problems_name_the_mistake() {
        let p = |t: &str| config(t).problems().join("\n");
        assert!(p("mode = \"service\"").contains("needs `service`"));
        assert!(p("thing = \"{nope}\"").contains("unknown placeholder"));
        assert!(
            p("mode = \"service\"\nservice = \"S\"\nbody = '{\"m\": \"{x}\"}'").contains("`{x}`")
        );
        assert!(p("mode = \"service\"\nservice = \"S\"\nbody = '[1]'").contains("JSON object"));
        assert!(p("max_batch = 0").contains("max_batch"));
        assert!(
            toml::from_str::<ThingworxConfig>("url = \"http://h/Thingworx\"\nmode = \"put\"")
                .is_err()
        );
        let bad_url: ThingworxConfig = toml::from_str("url = \"ftp://h\"").unwrap();
        assert!(bad_url.problems()[0].contains("http(s)"));
    }
}
