//! The `pipeline.toml` model: named `[sources.*]`, `[sinks.*]` and `[[flows]]`, each component a
//! variant picked by its `type` key, unknown keys refused, durations as `"2s"`, secrets as `"${VAR}"`.
//!
//! Loading collects every problem it can find (syntax, unknown keys and types, bad values, undefined or
//! unused references) as a [`Diagnostic`] with line, column and a hint, instead of stopping at the first.
//! Each component is deserialized on its own from the spanned TOML tree, so one bad sink does not hide
//! the problems of the next, and every serde error keeps the position of the key or value it is about.

pub mod duration;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use serde::de::IntoDeserializer;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

pub use duration::HumanDuration;

use crate::api::config::ApiConfig;
use crate::codecs::wasm::PluginsConfig;
use crate::sinks::jsonl::JsonLinesConfig;
use crate::sinks::kafka::KafkaSinkConfig;
use crate::sinks::mqtt::MqttSinkConfig;
use crate::sinks::parquet::ParquetConfig;
use crate::sinks::thingworx::ThingworxConfig;
use crate::sources::coap::CoapConfig;
use crate::sources::esp3_websocket::Esp3WebsocketConfig;
use crate::sources::kafka::KafkaSourceConfig;
use crate::sources::mqtt::MqttSourceConfig;
use crate::stages::decode::{DecodeConfig, PluginDecodeConfig};
use crate::stages::dedupe::DedupeConfig;
use crate::stages::enrich::EnrichConfig;
use crate::stages::validate::ValidateConfig;

/// Default capacity of the bounded queue in front of a flow or a sink.
pub const DEFAULT_QUEUE: usize = 16_384;

/// A whole pipeline, checked: every reference resolves.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub sources: BTreeMap<String, SourceConfig>,
    pub sinks: BTreeMap<String, SinkConfig>,
    pub flows: Vec<FlowConfig>,
    /// `[plugins]`: the decoder plugin directory and its limits.
    pub plugins: Option<PluginsConfig>,
    /// `[api]`: the HTTP API and its device store.
    pub api: Option<ApiConfig>,
}

/// A source: where frames come from.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub kind: SourceKind,
}

/// The source kinds, by their `type` key.
#[derive(Debug, Clone)]
pub enum SourceKind {
    /// `type = "coap"`: a CoAP server (Efento NB-IoT sensors).
    Coap(CoapConfig),
    /// `type = "esp3_websocket"`: a websocket server for EnOcean gateways (Aruba APs, raw ESP3).
    Esp3Websocket(Esp3WebsocketConfig),
    /// `type = "mqtt"`: subscriptions on an MQTT broker, acknowledged once stored.
    Mqtt(MqttSourceConfig),
    /// `type = "kafka"`: topics read in a consumer group, offsets committed once stored.
    Kafka(Box<KafkaSourceConfig>),
}

/// A sink: where records end up.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Capacity of the sink's input queue (`queue = 4096`).
    pub queue: usize,
    pub kind: SinkKind,
}

/// The sink kinds, by their `type` key.
#[derive(Debug, Clone)]
pub enum SinkKind {
    /// `type = "parquet"`: Hive-partitioned Parquet files.
    Parquet(ParquetConfig),
    /// `type = "json_lines"`: one JSON document per line, in a file or on stdout.
    JsonLines(JsonLinesConfig),
    /// `type = "mqtt"`: publishes documents to an MQTT broker.
    Mqtt(Box<MqttSinkConfig>),
    /// `type = "thingworx"`: writes to a PTC ThingWorx platform's REST API.
    Thingworx(Box<ThingworxConfig>),
    /// `type = "kafka"`: produces documents to a Kafka-protocol broker.
    Kafka(Box<KafkaSinkConfig>),
}

/// A flow: records from some sources, through a chain of stages, into some sinks.
#[derive(Debug, Clone)]
pub struct FlowConfig {
    pub name: String,
    pub from: Vec<String>,
    pub stages: Vec<StageConfig>,
    pub to: Vec<String>,
    /// Where rejected records go (with the error and their raw bytes).
    pub dead_letter: Option<String>,
    /// Capacity of the flow's input queue.
    pub queue: usize,
}

/// A stage of a flow, by its `type` key.
#[derive(Debug, Clone)]
pub enum StageConfig {
    /// `{ type = "decode", codec = "efento" }`
    Decode(DecodeConfig),
    /// `{ type = "decode", codec = "plugin", plugin = "vendor:flespi" }`
    DecodePlugin(PluginDecodeConfig),
    /// `{ type = "dedupe", key = "esp3", window = "2s", merge = "100ms" }`
    Dedupe(DedupeConfig),
    /// `{ type = "enrich", registry = "devices.toml", target = "meta" }`
    Enrich(EnrichConfig),
    /// `{ type = "validate", schema = "schemas/efento-measurements.schema.json" }`
    Validate(ValidateConfig),
}

impl SourceKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            SourceKind::Coap(_) => "coap",
            SourceKind::Esp3Websocket(_) => "esp3_websocket",
            SourceKind::Mqtt(_) => "mqtt",
            SourceKind::Kafka(_) => "kafka",
        }
    }
}

impl SinkKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            SinkKind::Parquet(_) => "parquet",
            SinkKind::JsonLines(_) => "json_lines",
            SinkKind::Mqtt(_) => "mqtt",
            SinkKind::Thingworx(_) => "thingworx",
            SinkKind::Kafka(_) => "kafka",
        }
    }
}

const SOURCE_TYPES: &[&str] = &["coap", "esp3_websocket", "mqtt", "kafka"];
const SINK_TYPES: &[&str] = &["parquet", "json_lines", "mqtt", "thingworx", "kafka"];
const STAGE_TYPES: &[&str] = &["decode", "dedupe", "enrich", "validate"];
const TOP_KEYS: &[&str] = &["sources", "sinks", "flows", "plugins", "api"];
const FLOW_KEYS: &[&str] = &["name", "from", "stages", "to", "dead_letter", "queue"];

/// The tables of an array of tables (`array`, each an `item`); anything else goes to `report` as
/// (span, message, hint). Shared by the pipeline loader and the `sensorgate test` file loader.
pub(crate) fn array_of_tables<'a>(
    value: Spanned<DeValue<'a>>,
    array: &str,
    item: &str,
    hint: &str,
    mut report: impl FnMut(Range<usize>, String, Option<String>),
) -> Vec<Spanned<DeTable<'a>>> {
    let span = value.span();
    let items = match value.into_inner() {
        DeValue::Array(items) => items,
        other => {
            let found = other.type_str();
            report(
                span,
                format!("{array} must be an array of tables, found {found}"),
                Some(hint.into()),
            );
            return Vec::new();
        }
    };
    let mut tables = Vec::new();
    for entry in items {
        let entry_span = entry.span();
        match entry.into_inner() {
            DeValue::Table(t) => tables.push(Spanned::new(entry_span, t)),
            other => {
                let found = other.type_str();
                report(
                    entry_span,
                    format!("{item} must be a table, found {found}"),
                    Some(hint.into()),
                );
            }
        }
    }
    tables
}

/// Whether a decode stage's table says `codec = "plugin"`.
fn is_plugin_codec(table: &DeTable<'_>) -> bool {
    table
        .get("codec")
        .is_some_and(|v| matches!(v.get_ref(), DeValue::String(s) if s == "plugin"))
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

/// One problem in a config file, with where it is and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// 1-based line and column (in characters) of the offending key or value.
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub hint: Option<String>,
}

/// Every finding of a load, sorted by position. A load succeeds when none of them is an error.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub file: String,
    pub diagnostics: Vec<Diagnostic>,
    /// The lines of the file, to quote the offending one.
    lines: Vec<String>,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }
    pub fn warnings(&self) -> usize {
        self.diagnostics.len() - self.errors()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.diagnostics {
            let level = match d.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            writeln!(
                f,
                "{}:{}:{}: {level}: {}",
                self.file, d.line, d.column, d.message
            )?;
            if let Some(text) = self.lines.get(d.line.saturating_sub(1)) {
                writeln!(f, "   | {text}")?;
                let pad: String = text
                    .chars()
                    .take(d.column.saturating_sub(1))
                    .map(|c| if c == '\t' { '\t' } else { ' ' })
                    .collect();
                writeln!(f, "   | {pad}^")?;
            }
            if let Some(hint) = &d.hint {
                writeln!(f, "   = hint: {hint}")?;
            }
        }
        Ok(())
    }
}

/// Reads and checks a pipeline file. `Err` carries the report when the file has errors (or cannot be read).
pub fn load_file(path: &Path) -> Result<(PipelineConfig, Report), Report> {
    load_file_with(path, Checks::Run)
}

/// What a pipeline is loaded for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checks {
    /// `sensorgate run` and `validate`: everything.
    Run,
    /// `sensorgate test`, which runs flows without the HTTP API: the `[api]` section's credential
    /// variables need not be set.
    Test,
}

/// [`load_file`] for a purpose.
pub fn load_file_with(path: &Path, checks: Checks) -> Result<(PipelineConfig, Report), Report> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => load_str_with(&file, &text, &|name| std::env::var(name).ok(), checks),
        Err(e) => Err(Report {
            file: file.clone(),
            diagnostics: vec![Diagnostic {
                severity: Severity::Error,
                line: 1,
                column: 1,
                message: format!("cannot read {file}: {e}"),
                hint: Some(
                    "pass the pipeline file with --config FILE, or run from the directory that holds pipeline.toml"
                        .into(),
                ),
            }],
            lines: Vec::new(),
        }),
    }
}

/// Checks a pipeline given as text; `env` resolves `${VAR}` references.
pub fn load_str(
    file: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(PipelineConfig, Report), Report> {
    load_str_with(file, text, env, Checks::Run)
}

/// [`load_str`] for a purpose.
pub fn load_str_with(
    file: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    checks: Checks,
) -> Result<(PipelineConfig, Report), Report> {
    let mut loader = Loader {
        text,
        env,
        diagnostics: Vec::new(),
        has_plugins: false,
        has_api: false,
        checks,
    };
    let config = loader.load();
    let mut diagnostics = loader.diagnostics;
    diagnostics.sort_by_key(|d| (d.line, d.column));
    diagnostics.dedup();
    let report = Report {
        file: file.to_string(),
        diagnostics,
        lines: text.lines().map(str::to_string).collect(),
    };
    match config {
        Some(config) if report.errors() == 0 => Ok((config, report)),
        _ => Err(report),
    }
}

struct Loader<'a> {
    text: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
    diagnostics: Vec<Diagnostic>,
    /// Whether the file has a `[plugins]` section (decode stages with codec "plugin" need one).
    has_plugins: bool,
    /// Whether the file has an `[api]` section (stages with `registry = "api"` need one).
    has_api: bool,
    checks: Checks,
}

/// `[section.NAME]` tables: the name, where it is written, and the table with its span.
type NamedTables<'a> = Vec<(String, Range<usize>, Spanned<DeTable<'a>>)>;

/// A name used in a flow, with where it was written.
struct Reference {
    name: String,
    span: Range<usize>,
}

impl<'a> Loader<'a> {
    fn position(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    fn report(
        &mut self,
        severity: Severity,
        span: Range<usize>,
        message: String,
        hint: Option<String>,
    ) {
        let (line, column) = self.position(span.start);
        self.diagnostics.push(Diagnostic {
            severity,
            line,
            column,
            message,
            hint,
        });
    }

    fn error(&mut self, span: Range<usize>, message: impl Into<String>, hint: Option<String>) {
        self.report(Severity::Error, span, message.into(), hint);
    }

    fn warn(&mut self, span: Range<usize>, message: impl Into<String>, hint: Option<String>) {
        self.report(Severity::Warning, span, message.into(), hint);
    }

    /// Reports a serde error from deserializing one component, with a hint for the usual mistakes.
    fn serde_error(&mut self, fallback: Range<usize>, what: &str, err: toml::de::Error) {
        let span = err.span().unwrap_or(fallback);
        let message = err.message().trim().to_string();
        let hint = hint_for(&message);
        self.error(span, format!("{what}: {message}"), hint);
    }

    fn load(&mut self) -> Option<PipelineConfig> {
        let (root, errors) = DeTable::parse_recoverable(self.text);
        for e in &errors {
            let span = e.span().unwrap_or(0..0);
            self.error(
                span,
                format!("TOML syntax: {}", e.message().trim()),
                Some("check quotes, brackets and `key = value` pairs on this line".into()),
            );
        }
        if !errors.is_empty() {
            return None;
        }
        let root_span = root.span();
        let mut root = root.into_inner();
        root.make_owned();
        let root_has_api = root.contains_key("api");

        for (key, _) in root.iter() {
            if !TOP_KEYS.contains(&key.get_ref().as_ref()) {
                let k = key.get_ref().to_string();
                self.error(
                    key.span(),
                    format!("unknown section `{k}`"),
                    Some(suggest(&k, TOP_KEYS, "sections")),
                );
            }
        }

        let mut sources = BTreeMap::new();
        let mut source_spans = BTreeMap::new();
        if let Some(table) = self.named_tables(&mut root, "sources") {
            for (name, span, table) in table {
                if let Some(kind) = self.source(&name, span.clone(), table) {
                    sources.insert(name.clone(), SourceConfig { kind });
                }
                source_spans.insert(name, span);
            }
        }
        let mut sinks = BTreeMap::new();
        let mut sink_spans = BTreeMap::new();
        if let Some(table) = self.named_tables(&mut root, "sinks") {
            for (name, span, table) in table {
                if let Some(sink) = self.sink(&name, span.clone(), table) {
                    sinks.insert(name.clone(), sink);
                }
                sink_spans.insert(name, span);
            }
        }

        let plugins = self.plugins(&mut root);
        self.has_plugins = plugins.is_some();
        let api = self.api(&mut root);
        self.has_api = root_has_api;

        let mut flows = Vec::new();
        let mut used_sources = BTreeSet::new();
        let mut used_sinks = BTreeSet::new();
        let mut flow_names: BTreeMap<String, Range<usize>> = BTreeMap::new();
        match root.remove("flows") {
            None => self.error(
                root_span.start..root_span.start,
                "no flows: nothing connects sources to sinks",
                Some("add a [[flows]] table with name, from, stages and to".into()),
            ),
            Some(v) => {
                let hint = "write each flow as a [[flows]] table";
                for table in self.tables_of("a flow", "`flows`", v, hint) {
                    let item_span = table.span();
                    let Some((flow, refs)) = self.flow(item_span.clone(), table.into_inner())
                    else {
                        continue;
                    };
                    if let Some(first) = flow_names.get(&flow.name) {
                        let (l, c) = self.position(first.start);
                        self.error(
                            item_span.clone(),
                            format!("flow name `{}` is used twice", flow.name),
                            Some(format!(
                                "the first one is at line {l}, column {c}; give each flow its own name"
                            )),
                        );
                    }
                    flow_names.insert(flow.name.clone(), item_span);
                    self.check_refs(&flow, &refs, &source_spans, &sink_spans);
                    used_sources.extend(flow.from.iter().cloned());
                    used_sinks.extend(flow.to.iter().cloned());
                    used_sinks.extend(flow.dead_letter.iter().cloned());
                    flows.push(flow);
                }
            }
        }

        for (name, span) in &source_spans {
            if !used_sources.contains(name) {
                self.warn(
                    span.clone(),
                    format!("source `{name}` is not read by any flow; it will not be started"),
                    Some(format!(
                        "add \"{name}\" to a flow's `from`, or remove the source"
                    )),
                );
            }
        }
        for (name, span) in &sink_spans {
            if !used_sinks.contains(name) {
                self.warn(
                    span.clone(),
                    format!("sink `{name}` is not written by any flow"),
                    Some(format!(
                        "add \"{name}\" to a flow's `to` or `dead_letter`, or remove the sink"
                    )),
                );
            }
        }

        Some(PipelineConfig {
            sources,
            sinks,
            flows,
            plugins,
            api,
        })
    }

    /// `[api]`: the table, checked (the address parses, the credentials' variables are set, the
    /// seed file loads).
    fn api(&mut self, root: &mut DeTable<'a>) -> Option<ApiConfig> {
        let env = self.env;
        let credentials = self.checks == Checks::Run;
        self.section(
            root,
            "api",
            "write it as [api] with listen = \"127.0.0.1:8080\"",
            |c: &ApiConfig| {
                let mut problems = c.problems(env);
                if !credentials {
                    problems.retain(|(key, ..)| !matches!(*key, "token_env" | "basic_env"));
                }
                problems
            },
        )
    }

    /// A top-level table such as `[api]` or `[plugins]`, deserialized; each of its `problems` is
    /// reported at the key it names (the table's header if none).
    fn section<T: serde::de::DeserializeOwned>(
        &mut self,
        root: &mut DeTable<'a>,
        name: &str,
        hint: &str,
        problems: impl FnOnce(&T) -> Vec<(&'static str, String, String)>,
    ) -> Option<T> {
        let value = root.remove(name)?;
        let span = value.span();
        let table = match value.into_inner() {
            DeValue::Table(t) => t,
            other => {
                self.error(
                    span,
                    format!("`{name}` must be a table, found {}", other.type_str()),
                    Some(hint.into()),
                );
                return None;
            }
        };
        let spans: Vec<(String, Range<usize>)> = table
            .iter()
            .map(|(k, v)| (k.get_ref().to_string(), v.span()))
            .collect();
        let what = format!("[{name}]");
        let config: T = self.deserialize(&what, Spanned::new(span.clone(), table))?;
        for (key, message, hint) in problems(&config) {
            let at = spans
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, s)| s.clone())
                .unwrap_or_else(|| span.clone());
            self.error(at, format!("{what}: {message}"), Some(hint));
        }
        Some(config)
    }

    /// A stage's `registry = "api"` needs the `[api]` section.
    fn check_api_registry(&mut self, what: &str, span: Range<usize>, registry: Option<&Path>) {
        if !self.has_api && registry.is_some_and(crate::registry::is_api) {
            self.error(
                span,
                format!("{what}: registry = \"api\" but the file has no [api] section"),
                Some("add [api] with listen, token_env and store, or name a registry file such as \"devices.toml\"".into()),
            );
        }
    }

    /// `[plugins]`: the table, checked (the directory exists, limits in range).
    fn plugins(&mut self, root: &mut DeTable<'a>) -> Option<PluginsConfig> {
        self.section(
            root,
            "plugins",
            "write it as [plugins] with dir = \"plugins/dist\"",
            PluginsConfig::problems,
        )
    }

    /// `[sources.NAME]` tables: (name, span of the name, table with its span).
    fn named_tables(&mut self, root: &mut DeTable<'a>, section: &str) -> Option<NamedTables<'a>> {
        let value = root.remove(section)?;
        let span = value.span();
        match value.into_inner() {
            DeValue::Table(table) => {
                let mut out = Vec::new();
                for (key, value) in table {
                    let name = key.get_ref().to_string();
                    let value_span = value.span();
                    match value.into_inner() {
                        DeValue::Table(t) => {
                            out.push((name, key.span(), Spanned::new(value_span, t)));
                        }
                        other => self.error(
                            key.span(),
                            format!(
                                "`{section}.{name}` must be a table, found {}",
                                other.type_str()
                            ),
                            Some(format!("write it as [{section}.{name}] with a `type` key")),
                        ),
                    }
                }
                Some(out)
            }
            other => {
                self.error(
                    span,
                    format!("`{section}` must be a table, found {}", other.type_str()),
                    Some(format!("write each one as [{section}.NAME]")),
                );
                None
            }
        }
    }

    /// The tables of an array of tables (`[[flows]]`, `stages = [{ .. }]`); anything else is reported.
    fn tables_of(
        &mut self,
        item: &str,
        array: &str,
        value: Spanned<DeValue<'a>>,
        hint: &str,
    ) -> Vec<Spanned<DeTable<'a>>> {
        array_of_tables(value, array, item, hint, |span, message, hint| {
            self.error(span, message, hint)
        })
    }

    /// Removes `type` from a component table and returns it with its span.
    fn take_type(
        &mut self,
        what: &str,
        name_span: Range<usize>,
        table: &mut Spanned<DeTable<'a>>,
        known: &[&str],
    ) -> Option<(String, Range<usize>)> {
        match table.get_mut().remove("type") {
            None => {
                self.error(
                    name_span,
                    format!("{what} has no `type`"),
                    Some(format!(
                        "add type = \"...\" with one of: {}",
                        known.join(", ")
                    )),
                );
                None
            }
            Some(v) => {
                let span = v.span();
                match v.get_ref().as_str() {
                    Some(t) if known.contains(&t) => Some((t.to_string(), span)),
                    Some(t) => {
                        let t = t.to_string();
                        self.error(
                            span,
                            format!("{what} has unknown type `{t}`"),
                            Some(suggest(&t, known, "types")),
                        );
                        None
                    }
                    None => {
                        self.error(
                            span,
                            format!("{what}: `type` must be a string"),
                            Some(format!("one of: {}", known.join(", "))),
                        );
                        None
                    }
                }
            }
        }
    }

    /// Removes an optional positive integer key shared by every component kind (e.g. `queue`).
    fn queue(&mut self, what: &str, value: Option<Spanned<DeValue<'a>>>) -> usize {
        let Some(v) = value else {
            return DEFAULT_QUEUE;
        };
        let span = v.span();
        match v
            .get_ref()
            .as_integer()
            .and_then(|i| usize::from_str_radix(i.as_str(), i.radix()).ok())
        {
            Some(n) if (1..=10_000_000).contains(&n) => n,
            _ => {
                self.error(
                    span,
                    format!("{what}: `queue` must be a whole number between 1 and 10000000"),
                    Some(format!("the default is {DEFAULT_QUEUE}")),
                );
                DEFAULT_QUEUE
            }
        }
    }

    fn deserialize<T: for<'de> Deserialize<'de>>(
        &mut self,
        what: &str,
        table: Spanned<DeTable<'a>>,
    ) -> Option<T> {
        let span = table.span();
        let mut table = table;
        self.substitute_env(table.get_mut());
        match T::deserialize(table.into_deserializer()) {
            Ok(v) => Some(v),
            Err(e) => {
                self.serde_error(span, what, e);
                None
            }
        }
    }

    fn source(
        &mut self,
        name: &str,
        name_span: Range<usize>,
        mut table: Spanned<DeTable<'a>>,
    ) -> Option<SourceKind> {
        let what = format!("source `{name}`");
        let (kind, _) = self.take_type(&what, name_span.clone(), &mut table, SOURCE_TYPES)?;
        match kind.as_str() {
            "coap" => {
                let config: CoapConfig = self.deserialize(&what, table)?;
                for problem in config.problems() {
                    self.error(name_span.clone(), format!("{what}: {problem}"), None);
                }
                Some(SourceKind::Coap(config))
            }
            "esp3_websocket" => {
                let config: Esp3WebsocketConfig = self.deserialize(&what, table)?;
                for problem in config.problems() {
                    self.error(name_span.clone(), format!("{what}: {problem}"), None);
                }
                Some(SourceKind::Esp3Websocket(config))
            }
            "mqtt" => {
                let config: MqttSourceConfig = self.deserialize(&what, table)?;
                for problem in config.problems() {
                    self.error(name_span.clone(), format!("{what}: {problem}"), None);
                }
                Some(SourceKind::Mqtt(config))
            }
            "kafka" => {
                let config: KafkaSourceConfig = self.deserialize(&what, table)?;
                for problem in config.problems() {
                    self.error(name_span.clone(), format!("{what}: {problem}"), None);
                }
                Some(SourceKind::Kafka(Box::new(config)))
            }
            _ => None,
        }
    }

    fn sink(
        &mut self,
        name: &str,
        name_span: Range<usize>,
        mut table: Spanned<DeTable<'a>>,
    ) -> Option<SinkConfig> {
        let what = format!("sink `{name}`");
        let (kind, _) = self.take_type(&what, name_span.clone(), &mut table, SINK_TYPES)?;
        let queue = self.queue(&what, table.get_mut().remove("queue"));
        let kind = match kind.as_str() {
            "parquet" => self.deserialize(&what, table).map(SinkKind::Parquet),
            "json_lines" => self.deserialize(&what, table).map(SinkKind::JsonLines),
            "mqtt" => {
                let config: MqttSinkConfig = self.deserialize(&what, table)?;
                for problem in config.problems() {
                    self.error(name_span.clone(), format!("{what}: {problem}"), None);
                }
                Some(SinkKind::Mqtt(Box::new(config)))
            }
            "thingworx" => {
                let config: ThingworxConfig = self.deserialize(&what, table)?;
                for problem in config.problems() {
                    self.error(name_span.clone(), format!("{what}: {problem}"), None);
                }
                Some(SinkKind::Thingworx(Box::new(config)))
            }
            "kafka" => {
                let config: KafkaSinkConfig = self.deserialize(&what, table)?;
                for problem in config.problems() {
                    self.error(name_span.clone(), format!("{what}: {problem}"), None);
                }
                Some(SinkKind::Kafka(Box::new(config)))
            }
            _ => None,
        }?;
        Some(SinkConfig { queue, kind })
    }

    fn flow(
        &mut self,
        span: Range<usize>,
        mut table: DeTable<'a>,
    ) -> Option<(FlowConfig, Vec<(&'static str, Reference)>)> {
        self.substitute_env(&mut table);
        for (key, _) in table.iter() {
            let k = key.get_ref().to_string();
            if !FLOW_KEYS.contains(&k.as_str()) {
                self.error(
                    key.span(),
                    format!("unknown key `{k}` in a flow"),
                    Some(suggest(&k, FLOW_KEYS, "keys")),
                );
            }
        }
        let name = match table.remove("name") {
            Some(v) => match v.get_ref().as_str() {
                Some(s) if !s.is_empty() => s.to_string(),
                _ => {
                    self.error(v.span(), "a flow's `name` must be a non-empty string", None);
                    return None;
                }
            },
            None => {
                self.error(
                    span.clone(),
                    "a flow has no `name`",
                    Some(
                        "add name = \"...\"; names appear in logs, metrics and dead letters".into(),
                    ),
                );
                return None;
            }
        };
        let what = format!("flow `{name}`");
        let mut refs = Vec::new();
        let from = self.name_list(&what, "from", &span, &mut table, true, &mut refs);
        let to = self.name_list(&what, "to", &span, &mut table, true, &mut refs);
        let dead_letter = match table.remove("dead_letter") {
            None => None,
            Some(v) => match v.get_ref().as_str() {
                Some(s) => {
                    refs.push((
                        "dead_letter",
                        Reference {
                            name: s.to_string(),
                            span: v.span(),
                        },
                    ));
                    Some(s.to_string())
                }
                None => {
                    self.error(
                        v.span(),
                        format!("{what}: `dead_letter` must be a sink name"),
                        None,
                    );
                    None
                }
            },
        };
        let queue = self.queue(&what, table.remove("queue"));
        let mut stages = Vec::new();
        if let Some(v) = table.remove("stages") {
            let hint = "write stages as { type = \"decode\", codec = \"efento\" }";
            for stage in self.tables_of(&format!("{what}: a stage"), "`stages`", v, hint) {
                stages.extend(self.stage(&what, stage));
            }
        }
        Some((
            FlowConfig {
                name,
                from,
                stages,
                to,
                dead_letter,
                queue,
            },
            refs,
        ))
    }

    fn name_list(
        &mut self,
        what: &str,
        key: &'static str,
        flow_span: &Range<usize>,
        table: &mut DeTable<'a>,
        required: bool,
        refs: &mut Vec<(&'static str, Reference)>,
    ) -> Vec<String> {
        let Some(v) = table.remove(key) else {
            if required {
                self.error(
                    flow_span.clone(),
                    format!("{what} has no `{key}`"),
                    Some(format!("add {key} = [\"...\"]")),
                );
            }
            return Vec::new();
        };
        let span = v.span();
        let mut out = Vec::new();
        match v.into_inner() {
            DeValue::String(s) => {
                refs.push((
                    key,
                    Reference {
                        name: s.to_string(),
                        span,
                    },
                ));
                out.push(s.to_string());
            }
            DeValue::Array(items) => {
                for item in items {
                    let item_span = item.span();
                    match item.get_ref().as_str() {
                        Some(s) => {
                            refs.push((
                                key,
                                Reference {
                                    name: s.to_string(),
                                    span: item_span,
                                },
                            ));
                            out.push(s.to_string());
                        }
                        None => self.error(
                            item_span,
                            format!("{what}: `{key}` must list names as strings"),
                            None,
                        ),
                    }
                }
                if out.is_empty() && required {
                    self.error(span, format!("{what}: `{key}` is empty"), None);
                }
            }
            other => self.error(
                span,
                format!(
                    "{what}: `{key}` must be a list of names, found {}",
                    other.type_str()
                ),
                Some(format!("write {key} = [\"name\"]")),
            ),
        }
        out
    }

    fn stage(&mut self, flow: &str, mut table: Spanned<DeTable<'a>>) -> Option<StageConfig> {
        let span = table.span();
        let what = format!("{flow}: stage");
        let (kind, _) = self.take_type(&what, span.clone(), &mut table, STAGE_TYPES)?;
        match kind.as_str() {
            "decode" if is_plugin_codec(table.get_ref()) => {
                let config: PluginDecodeConfig =
                    self.deserialize(&format!("{what} `decode`"), table)?;
                for problem in config.problems() {
                    self.error(span.clone(), format!("{what} `decode`: {problem}"), None);
                }
                if !self.has_plugins {
                    self.error(
                        span.clone(),
                        format!("{what} `decode`: codec \"plugin\" but the file has no [plugins] section"),
                        Some("add [plugins] with dir = \"plugins/dist\" (the folder of .wasm files)".into()),
                    );
                }
                Some(StageConfig::DecodePlugin(config))
            }
            "decode" => {
                let config: DecodeConfig = self.deserialize(&format!("{what} `decode`"), table)?;
                for problem in config.problems() {
                    self.error(span.clone(), format!("{what} `decode`: {problem}"), None);
                }
                self.check_api_registry(
                    &format!("{what} `decode`"),
                    span.clone(),
                    config.registry.as_deref(),
                );
                Some(StageConfig::Decode(config))
            }
            "dedupe" => {
                let config: DedupeConfig = self.deserialize(&format!("{what} `dedupe`"), table)?;
                for problem in config.problems() {
                    self.error(span.clone(), format!("{what} `dedupe`: {problem}"), None);
                }
                Some(StageConfig::Dedupe(config))
            }
            "enrich" => {
                let config: EnrichConfig = self.deserialize(&format!("{what} `enrich`"), table)?;
                for problem in config.problems() {
                    self.error(span.clone(), format!("{what} `enrich`: {problem}"), None);
                }
                self.check_api_registry(
                    &format!("{what} `enrich`"),
                    span.clone(),
                    config.registry.as_deref(),
                );
                Some(StageConfig::Enrich(config))
            }
            "validate" => {
                let config: ValidateConfig =
                    self.deserialize(&format!("{what} `validate`"), table)?;
                for problem in config.problems() {
                    self.error(span.clone(), format!("{what} `validate`: {problem}"), None);
                }
                Some(StageConfig::Validate(config))
            }
            _ => None,
        }
    }

    fn check_refs(
        &mut self,
        flow: &FlowConfig,
        refs: &[(&'static str, Reference)],
        sources: &BTreeMap<String, Range<usize>>,
        sinks: &BTreeMap<String, Range<usize>>,
    ) {
        for (key, r) in refs {
            let (known, kind) = if *key == "from" {
                (sources, "source")
            } else {
                (sinks, "sink")
            };
            if !known.contains_key(&r.name) {
                let names: Vec<&str> = known.keys().map(String::as_str).collect();
                let hint = if names.is_empty() {
                    format!("define it as a [{kind}s.{}] table", r.name)
                } else {
                    suggest(&r.name, &names, &format!("{kind}s"))
                };
                self.error(
                    r.span.clone(),
                    format!(
                        "flow `{}` refers to {kind} `{}`, which is not defined",
                        flow.name, r.name
                    ),
                    Some(hint),
                );
            }
        }
        if let Some(dl) = &flow.dead_letter
            && flow.to.contains(dl)
        {
            let span = refs
                .iter()
                .find(|(k, _)| *k == "dead_letter")
                .map(|(_, r)| r.span.clone())
                .unwrap_or(0..0);
            self.warn(
                span,
                format!(
                    "flow `{}` writes rejects into `{dl}`, which also takes its good records",
                    flow.name
                ),
                Some("use a separate sink for dead letters so rejects are easy to find".into()),
            );
        }
        let mut seen = BTreeSet::new();
        for (key, r) in refs {
            if !seen.insert((*key, r.name.clone())) {
                self.warn(
                    r.span.clone(),
                    format!("flow `{}` lists `{}` twice in `{key}`", flow.name, r.name),
                    Some("each record would be written twice; list it once".into()),
                );
            }
        }
    }

    /// Replaces `${VAR}` in every string value with the environment's value; `$${` writes a literal `${`.
    fn substitute_env(&mut self, table: &mut DeTable<'a>) {
        let mut problems = Vec::new();
        for (_, value) in table.iter_mut() {
            substitute_value(value, self.env, &mut problems);
        }
        for (span, message, hint) in problems {
            self.error(span, message, Some(hint));
        }
    }
}

type Problem = (Range<usize>, String, String);

fn substitute_value(
    value: &mut Spanned<DeValue<'_>>,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    let span = value.span();
    match value.get_mut() {
        DeValue::String(s) if s.contains('$') => match expand_env(s, env) {
            Ok(expanded) => *s = expanded.into(),
            Err((message, hint)) => problems.push((span, message, hint)),
        },
        DeValue::Array(items) => {
            for item in items.iter_mut() {
                substitute_value(item, env, problems);
            }
        }
        DeValue::Table(t) => {
            for (_, v) in t.iter_mut() {
                substitute_value(v, env, problems);
            }
        }
        _ => {}
    }
}

/// Expands `${VAR}` (and `$${` as a literal `${`) in one string value.
pub fn expand_env(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, (String, String)> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if rest.starts_with("$${") {
            out.push_str("${");
            rest = &rest[3..];
        } else if let Some(body) = rest.strip_prefix("${") {
            let Some(end) = body.find('}') else {
                return Err((
                    format!("unclosed `${{` in \"{text}\""),
                    "write environment references as ${NAME}".into(),
                ));
            };
            let name = &body[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err((
                    format!("`${{{name}}}` is not a valid environment variable name"),
                    "use letters, digits and underscores, e.g. ${MQTT_PASSWORD}".into(),
                ));
            }
            match env(name) {
                Some(v) => out.push_str(&v),
                None => {
                    return Err((
                        format!("environment variable `{name}` is not set"),
                        format!(
                            "export {name}=... before starting, or write $${{ for a literal ${{"
                        ),
                    ));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Turns common serde messages into advice: the closest known name for a typo.
fn hint_for(message: &str) -> Option<String> {
    // serde: "unknown field `lisen`, expected one of `listen`, `paths`, ..."
    // serde: "unknown variant `mesurements`, expected one of `measurements`, ..."
    let unknown = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("unknown variant `"))?;
    let typo = &unknown[..unknown.find('`')?];
    let expected: Vec<&str> = unknown
        .split('`')
        .skip(1)
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s)
        .collect();
    if expected.is_empty() {
        return Some("remove it".into());
    }
    Some(suggest(typo, &expected, "values"))
}

/// "did you mean `x`?" when a known name is close, else the list of known names.
pub fn suggest(typo: &str, known: &[&str], what: &str) -> String {
    let best = known
        .iter()
        .map(|k| (edit_distance(&typo.to_lowercase(), &k.to_lowercase()), *k))
        .min();
    match best {
        Some((d, k)) if d <= 2.max(typo.len() / 3) => format!("did you mean `{k}`?"),
        _ => format!("known {what}: {}", known.join(", ")),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn env_references_expand_and_escape() {
        let env = |n: &str| (n == "PW").then(|| "s3cret".to_string());
        assert_eq!(expand_env("a${PW}b", &env).unwrap(), "as3cretb");
        assert_eq!(expand_env("$${PW}", &env).unwrap(), "${PW}");
        assert_eq!(expand_env("cost $5", &env).unwrap(), "cost $5");
        assert!(expand_env("${NOPE}", &env).unwrap_err().0.contains("NOPE"));
        assert!(expand_env("${PW", &env).is_err());
    }

    #[test]
    fn suggests_the_closest_name() {
        assert_eq!(
            suggest("lisen", &["listen", "paths"], "keys"),
            "did you mean `listen`?"
        );
        assert!(suggest("zzzzzz", &["listen", "paths"], "keys").starts_with("known keys"));
    }

    const GOOD: &str = r#"
[sources.efento]
type = "coap"
listen = "127.0.0.1:5683"

[sinks.lake]
type = "parquet"
path = "data"
queue = 10

[[flows]]
name = "efento"
from = ["efento"]
stages = [{ type = "decode", codec = "efento" }]
to = ["lake"]
"#;

    #[test]
    fn a_good_pipeline_loads_with_defaults_and_shared_keys() {
        let (config, report) = load_str("p.toml", GOOD, &no_env).unwrap();
        assert_eq!(report.errors(), 0);
        assert_eq!(config.sinks["lake"].queue, 10);
        assert_eq!(config.flows[0].queue, DEFAULT_QUEUE);
        assert_eq!(config.flows[0].stages.len(), 1);
        let SourceKind::Coap(coap) = &config.sources["efento"].kind else {
            panic!("efento is a coap source");
        };
        assert_eq!(
            coap.ack_deadline.get(),
            std::time::Duration::from_millis(1500)
        );
        assert_eq!(coap.paths.len(), 4);
    }

    #[test]
    fn every_problem_is_reported_not_just_the_first() {
        let text = GOOD
            .replace("listen =", "lisen =")
            .replace("codec = \"efento\"", "codec = \"efentoo\"")
            + "\n[[flows]]\nname = \"efento\"\nfrom = [\"nowhere\"]\nto = [\"lake\"]\n";
        let report = load_str("p.toml", &text, &no_env).unwrap_err();
        let messages: Vec<&str> = report
            .diagnostics
            .iter()
            .map(|d| d.message.as_str())
            .collect();
        assert!(messages.iter().any(|m| m.contains("lisen")), "{messages:?}");
        assert!(
            messages.iter().any(|m| m.contains("efentoo")),
            "{messages:?}"
        );
        assert!(
            messages.iter().any(|m| m.contains("used twice")),
            "{messages:?}"
        );
        assert!(
            messages.iter().any(|m| m.contains("`nowhere`")),
            "{messages:?}"
        );
        assert_eq!(report.errors(), 4, "{report}");
    }

    #[test]
    fn unknown_section_and_missing_type_are_errors_with_hints() {
        let text = format!("{GOOD}\n[sinkz.x]\ntype = \"parquet\"\n[sinks.y]\npath = \"p\"\n");
        let report = load_str("p.toml", &text, &no_env).unwrap_err();
        let shown = report.to_string();
        assert!(shown.contains("unknown section `sinkz`"), "{shown}");
        assert!(shown.contains("did you mean `sinks`?"), "{shown}");
        assert!(shown.contains("sink `y` has no `type`"), "{shown}");
    }

    #[test]
    fn syntax_error_has_a_position() {
        let r = load_str("p.toml", "[sources.a]\ntype = \"coap\n", &no_env).unwrap_err();
        assert_eq!(r.errors(), 1);
        assert_eq!(r.diagnostics[0].line, 2);
    }
}
