//! `sensorgate test`: unit tests for a pipeline's flows, in the spirit of `vector test`.
//!
//! A test file holds `[[tests]]` and either names the pipeline it tests (`pipeline = "pipeline.toml"`,
//! relative to the test file) or holds the pipeline's own `[sources.*]`, `[sinks.*]` and `[[flows]]`.
//! Each test feeds inputs (payload bytes, as a CoAP request or a gateway's ESP3 stream would bring
//! them) through one flow's real stages and compares the documents that reach each sink with the
//! expected ones. No socket is opened and no sink is started. The format is described in README.md,
//! "Testing a pipeline: sensorgate test".
//!
//! Loading checks everything it can before anything runs (unknown flows, sources and sinks, bad hex,
//! keys that do not belong) and reports each problem with its line, column and a hint, the way
//! `sensorgate validate` does.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use serde::Deserialize;
use serde::de::IntoDeserializer;
use serde_json::Value;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::config::{
    self, Diagnostic, FlowConfig, PipelineConfig, Report, Severity, SourceKind, StageConfig,
};
use crate::document::Document;
use crate::record::{Kind, Record};
use crate::registry::Registry;
use crate::sources::{coap, esp3_websocket, kafka, mqtt};
use crate::stages::decode::Codec;
use crate::stages::{self, Stage};

/// Where `sensorgate test` looks when it is given no file.
pub const DEFAULT_DIR: &str = "examples/tests";

/// The name `at` uses for a flow's dead-letter sink, whatever that sink is called.
pub const DEAD_LETTER: &str = "dead_letter";

/// Keys of a test file that are not part of the pipeline.
const TEST_KEYS: &[&str] = &["tests", "pipeline", "registry"];
/// Keys a pipeline may have at the top level.
const PIPELINE_KEYS: &[&str] = &["sources", "sinks", "flows", "plugins", "api"];
/// Lines of an actual document shown under a failure.
const SHOWN_DOCUMENT_LINES: usize = 60;
/// Characters of one value shown in a mismatch line.
const SHOWN_VALUE_CHARS: usize = 120;

/// A test file, loaded and checked against the pipeline it tests.
pub struct TestFile {
    /// The file as it was named, for messages.
    pub shown: String,
    pub tests: Vec<TestCase>,
}

/// One `[[tests]]` entry, ready to run.
pub struct TestCase {
    pub name: String,
    /// The flow under test, with the test's registry (if any) put into its esp3 decode stages and into
    /// every stage that reads the API's store (`registry = "api"`).
    flow: FlowConfig,
    /// The sink name rejected records arrive under: the flow's `dead_letter`, or `dead_letter`.
    dead_letter: String,
    /// The records of each input, in order.
    inputs: Vec<Vec<Record>>,
    expected: Vec<Expected>,
    /// Sinks that must receive nothing.
    no_output_at: Vec<String>,
    /// Every document that arrives must be expected.
    exhaustive: bool,
    /// The pipeline's `[plugins]`, loaded afresh for each run.
    plugins: Option<crate::codecs::wasm::PluginsConfig>,
}

/// One `[[tests.outputs]]` entry.
struct Expected {
    /// The sink, resolved (`dead_letter` becomes the flow's dead-letter sink).
    at: String,
    kind: Option<Kind>,
    device: Option<String>,
    document: Option<Value>,
    exact: bool,
    count: Option<usize>,
}

// ---------------------------------------------------------------------------------------------------
// The file format, as written. `Spanned` keeps where a value was written, for messages.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestModel {
    name: String,
    #[serde(default)]
    flow: Option<Spanned<String>>,
    #[serde(default)]
    registry: Option<Spanned<String>>,
    #[serde(default)]
    inputs: Vec<Spanned<InputModel>>,
    #[serde(default)]
    outputs: Vec<Spanned<OutputModel>>,
    #[serde(default)]
    no_output_at: Vec<Spanned<String>>,
    #[serde(default)]
    exhaustive: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputModel {
    #[serde(default)]
    source: Option<Spanned<String>>,
    #[serde(default)]
    path: Option<Spanned<String>>,
    #[serde(default)]
    gateway: Option<Spanned<String>>,
    #[serde(default)]
    rssi: Option<Spanned<i32>>,
    #[serde(default)]
    hex: Option<Spanned<String>>,
    #[serde(default)]
    json: Option<Spanned<toml::Value>>,
    #[serde(default)]
    text: Option<Spanned<String>>,
    #[serde(default)]
    received_at: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputModel {
    at: Spanned<String>,
    #[serde(default)]
    kind: Option<Kind>,
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    document: Option<Spanned<toml::Value>>,
    #[serde(default)]
    exact: bool,
    #[serde(default)]
    count: Option<Spanned<usize>>,
}

// ---------------------------------------------------------------------------------------------------
// Loading

/// Collects the problems of one test file, each with its line and column.
struct Problems<'a> {
    text: &'a str,
    report: Report,
}

impl<'a> Problems<'a> {
    fn new(shown: &str, text: &'a str) -> Self {
        let mut report = Report::default();
        report.file = shown.to_string();
        Problems { text, report }
    }

    fn error(&mut self, span: Range<usize>, message: impl Into<String>, hint: Option<String>) {
        let (line, column) = position(self.text, span.start);
        self.report.diagnostics.push(Diagnostic {
            severity: Severity::Error,
            line,
            column,
            message: message.into(),
            hint,
        });
    }

    fn any(&self) -> bool {
        self.report.errors() > 0
    }

    fn into_text(mut self) -> String {
        self.report.diagnostics.sort_by_key(|d| (d.line, d.column));
        self.report.to_string()
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    (line, before[line_start..].chars().count() + 1)
}

/// A path written in a test file is relative to the test file.
fn beside(file: &Path, written: &str) -> PathBuf {
    let written = Path::new(written);
    if written.is_absolute() {
        return written.to_path_buf();
    }
    file.parent()
        .map(|dir| dir.join(written))
        .unwrap_or_else(|| written.to_path_buf())
}

/// Reads a test file and checks it. `Err` is the report to show (the file cannot be run).
pub fn load(path: &Path) -> Result<TestFile, String> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!("{shown}:1:1: error: cannot read {shown}: {e}\n   = hint: check the path; with no FILE, `sensorgate test` runs every test file in {DEFAULT_DIR}/\n")
    })?;
    load_str(path, &text)
}

/// Checks a test file given as text; `path` is where it lives (relative paths in it start there).
pub fn load_str(path: &Path, text: &str) -> Result<TestFile, String> {
    let shown = path.display().to_string();
    let (root, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        // The pipeline loader reports TOML syntax errors (line, column, the line, a hint) before
        // anything else, so it serves test files as well.
        let env = |_: &str| None;
        return Err(match config::load_str(&shown, text, &env) {
            Err(report) => report.to_string(),
            Ok(_) => format!("{shown}: error: TOML syntax error\n"),
        });
    }
    let root_span = root.span();
    let mut root = root.into_inner();
    root.make_owned();
    let mut problems = Problems::new(&shown, text);

    let known: Vec<&str> = TEST_KEYS.iter().chain(PIPELINE_KEYS).copied().collect();
    let mut inline_pipeline = false;
    for (key, _) in root.iter() {
        let name = key.get_ref().as_ref();
        if PIPELINE_KEYS.contains(&name) {
            inline_pipeline = true;
        } else if !TEST_KEYS.contains(&name) {
            problems.error(
                key.span(),
                format!("unknown key `{name}` in a test file"),
                Some(config::suggest(name, &known, "keys")),
            );
        }
    }

    // A pipeline that does not load is reported after the test file's own problems.
    let mut pipeline_report = None;
    let pipeline_key = root
        .get("pipeline")
        .map(|v| (v.span(), v.get_ref().as_str()));
    let config = match (pipeline_key, inline_pipeline) {
        (Some((span, _)), true) => {
            problems.error(
                span,
                "this file both names a pipeline and holds [sources], [sinks] or [[flows]] tables",
                Some("keep one: `pipeline = \"...\"` to test a pipeline file, or the tables to test the pipeline written here".into()),
            );
            None
        }
        (Some((span, None)), false) => {
            problems.error(
                span,
                "`pipeline` must be a file name",
                Some(
                    "write pipeline = \"../../pipeline.toml\" (relative to this test file)".into(),
                ),
            );
            None
        }
        (Some((_, Some(file))), false) => {
            let pipeline_path = beside(path, file);
            match config::load_file_with(&pipeline_path, config::Checks::Test) {
                Ok((config, _)) => Some(config),
                Err(report) => {
                    pipeline_report = Some(format!(
                        "{report}{shown}: error: the pipeline it tests, {}, has {} error{}\n   = hint: check it with `sensorgate validate {}`; paths inside a pipeline (registry files) are relative to the directory sensorgate runs in, as for `sensorgate run`\n",
                        pipeline_path.display(),
                        report.errors(),
                        plural(report.errors()),
                        pipeline_path.display()
                    ));
                    None
                }
            }
        }
        (None, true) => {
            let env = |name: &str| std::env::var(name).ok();
            match config::load_str_with(
                &shown,
                &pipeline_text(text, &root),
                &env,
                config::Checks::Test,
            ) {
                Ok((config, _)) => Some(config),
                Err(report) => {
                    pipeline_report = Some(report.to_string());
                    None
                }
            }
        }
        (None, false) => {
            problems.error(
                root_span.start..root_span.start,
                "no pipeline to test",
                Some("add pipeline = \"../../pipeline.toml\" (relative to this file), or write the pipeline's [sources.*], [sinks.*] and [[flows]] tables in this file".into()),
            );
            None
        }
    };

    let file_registry = match root.get("registry") {
        Some(v) => registry_override(path, &mut problems, v),
        None => None,
    };

    let mut tests = Vec::new();
    let tables = match root.remove("tests") {
        Some(value) => {
            let span = value.span();
            let tables = test_tables(&mut problems, value);
            if tables.is_empty() && !problems.any() {
                problems.error(
                    span,
                    "`tests` is empty",
                    Some(
                        "add a [[tests]] table with a name, [[tests.inputs]] and [[tests.outputs]]"
                            .into(),
                    ),
                );
            }
            tables
        }
        None => {
            problems.error(
                root_span.start..root_span.start,
                "no tests in this file",
                Some(
                    "add a [[tests]] table with a name, [[tests.inputs]] and [[tests.outputs]]"
                        .into(),
                ),
            );
            Vec::new()
        }
    };
    for (index, table) in tables.into_iter().enumerate() {
        let header = table.span();
        match TestModel::deserialize(table.into_deserializer()) {
            Ok(model) => {
                if let Some(config) = &config {
                    let context = Context {
                        file: path,
                        config,
                        registry: file_registry.as_ref(),
                        header,
                    };
                    tests.extend(test_case(&context, &mut problems, model));
                }
            }
            Err(e) => {
                let message = e.message().trim();
                problems.error(
                    e.span().unwrap_or(header),
                    format!("test {}: {message}", index + 1),
                    misplaced_test_key(message),
                );
            }
        }
    }

    let mut names = BTreeSet::new();
    for test in &tests {
        if !names.insert(test.name.as_str()) {
            problems.error(
                root_span.start..root_span.start,
                format!("two tests are named `{}`", test.name),
                Some("give each test its own name, so a failure says which one it was".into()),
            );
        }
    }

    if problems.any() || config.is_none() {
        return Err(problems.into_text() + pipeline_report.as_deref().unwrap_or(""));
    }
    Ok(TestFile { shown, tests })
}

/// A hint for the usual TOML slip: a test's own key written below a `[[tests.inputs]]` or
/// `[[tests.outputs]]` header, which makes it part of that input or output.
fn misplaced_test_key(message: &str) -> Option<String> {
    const TEST_FIELDS: &[&str] = &["name", "flow", "registry", "no_output_at", "exhaustive"];
    let field = message.strip_prefix("unknown field `")?.split('`').next()?;
    TEST_FIELDS.contains(&field).then(|| {
        format!("keys below a [[tests.inputs]] or [[tests.outputs]] header belong to it; move `{field}` above the test's first [[tests.inputs]]")
    })
}

/// The tables of `tests`; anything else is reported.
fn test_tables<'a>(
    problems: &mut Problems<'_>,
    value: Spanned<DeValue<'a>>,
) -> Vec<Spanned<DeTable<'a>>> {
    crate::config::array_of_tables(
        value,
        "`tests`",
        "a test",
        "write each test as a [[tests]] table",
        |span, message, hint| problems.error(span, message, hint),
    )
}

/// The test file's text with everything but the pipeline (`tests`, `pipeline`, `registry`, and
/// unknown keys, which are reported on their own) blanked out line for line, so the pipeline loader
/// sees only the pipeline and its diagnostics keep their positions.
fn pipeline_text(text: &str, root: &DeTable<'_>) -> String {
    let mut ranges = Vec::new();
    for (key, value) in root.iter() {
        if !PIPELINE_KEYS.contains(&key.get_ref().as_ref()) {
            test_key_ranges(text, key.span(), value, &mut ranges);
        }
    }
    let mut blank = vec![false; text.split('\n').count()];
    for range in ranges {
        let (first, _) = position(text, range.start);
        let (last, _) = position(text, range.end.saturating_sub(1).max(range.start));
        for line in first..=last {
            if let Some(b) = blank.get_mut(line - 1) {
                *b = true;
            }
        }
    }
    text.split('\n')
        .zip(blank)
        .map(|(line, blank)| if blank { "" } else { line })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The byte ranges one key of a test file is written over: its table headers, and each key-value
/// pair from key to value. TOML puts each of them on lines of its own, so whole lines can go.
fn test_key_ranges(
    text: &str,
    key: Range<usize>,
    value: &Spanned<DeValue<'_>>,
    out: &mut Vec<Range<usize>>,
) {
    let span = value.span();
    let written = text.get(span.clone()).unwrap_or("");
    match value.get_ref() {
        // `[tests.x]` and `[[tests]]` headers, or a dotted key's implicit table
        DeValue::Table(table) if !written.starts_with('{') => {
            if written.starts_with('[') {
                out.push(span);
            }
            for (k, v) in table.iter() {
                test_key_ranges(text, k.span(), v, out);
            }
        }
        // an array of tables: each element has its own `[[...]]` header
        DeValue::Array(items)
            if items
                .first()
                .is_some_and(|item| is_header_table(text, item)) =>
        {
            for item in items {
                test_key_ranges(text, key.clone(), item, out);
            }
        }
        _ => out.push(key.start..span.end),
    }
}

fn is_header_table(text: &str, value: &Spanned<DeValue<'_>>) -> bool {
    matches!(value.get_ref(), DeValue::Table(_))
        && text.get(value.span()).is_some_and(|w| w.starts_with("[["))
}

/// A `registry = "..."` key: the file, relative to the test file, checked now.
fn registry_override(
    file: &Path,
    problems: &mut Problems<'_>,
    value: &Spanned<DeValue<'_>>,
) -> Option<PathBuf> {
    let Some(written) = value.get_ref().as_str() else {
        problems.error(
            value.span(),
            "`registry` must be a file name",
            Some("write registry = \"devices.toml\" (relative to this test file)".into()),
        );
        return None;
    };
    registry_file("registry", file, problems, value.span(), written)
}

/// A registry file named by the test file (`what` says where), relative to it, checked now.
fn registry_file(
    what: &str,
    file: &Path,
    problems: &mut Problems<'_>,
    span: Range<usize>,
    written: &str,
) -> Option<PathBuf> {
    let path = beside(file, written);
    match Registry::open(&path) {
        Ok(_) => Some(path),
        Err(e) => {
            problems.error(
                span,
                format!("{what}: {e}"),
                Some("the path is relative to this test file".into()),
            );
            None
        }
    }
}

/// What checking one test needs besides the test itself.
struct Context<'a> {
    file: &'a Path,
    config: &'a PipelineConfig,
    /// The file's `registry`, if it has one.
    registry: Option<&'a PathBuf>,
    /// Where the test's `[[tests]]` header is.
    header: Range<usize>,
}

/// Checks one test against the pipeline and builds its input records. `None` if it has problems
/// (they are reported).
fn test_case(
    context: &Context<'_>,
    problems: &mut Problems<'_>,
    model: TestModel,
) -> Option<TestCase> {
    let before = problems.report.errors();
    let what = format!("test `{}`", model.name);
    let config = context.config;
    let flow_names: Vec<&str> = config.flows.iter().map(|f| f.name.as_str()).collect();

    let flow = match &model.flow {
        Some(name) => {
            let found = config.flows.iter().find(|f| f.name == *name.get_ref());
            if found.is_none() {
                problems.error(
                    name.span(),
                    format!("{what}: the pipeline has no flow `{}`", name.get_ref()),
                    Some(config::suggest(name.get_ref(), &flow_names, "flows")),
                );
            }
            found
        }
        None if config.flows.len() == 1 => config.flows.first(),
        None => {
            problems.error(
                context.header.clone(),
                format!(
                    "{what} does not say which flow it tests, and the pipeline has {} ({})",
                    config.flows.len(),
                    flow_names.join(", ")
                ),
                Some(format!(
                    "add flow = \"{}\"",
                    flow_names.first().unwrap_or(&"...")
                )),
            );
            None
        }
    };
    let mut flow = flow?.clone();

    let registry = match &model.registry {
        Some(written) => registry_file(
            &format!("{what}: registry"),
            context.file,
            problems,
            written.span(),
            written.get_ref(),
        ),
        None => context.registry.cloned(),
    };
    // Stages that read the HTTP API's store (registry = "api") read, here, the test's registry
    // file, or else the [api] section's seed: tests run without the API.
    let reads_api = |r: &Option<PathBuf>| r.as_deref().is_some_and(crate::registry::is_api);
    let api_stages = flow
        .stages
        .iter()
        .filter(|stage| match stage {
            StageConfig::Decode(d) => reads_api(&d.registry),
            StageConfig::Enrich(e) => reads_api(&e.registry),
            _ => false,
        })
        .count();
    let api_registry = registry
        .clone()
        .or_else(|| config.api.as_ref().and_then(|api| api.seed.clone()));
    match &api_registry {
        Some(file) => {
            for stage in &mut flow.stages {
                match stage {
                    StageConfig::Decode(d) if reads_api(&d.registry) => {
                        d.registry = Some(file.clone())
                    }
                    StageConfig::Enrich(e) if reads_api(&e.registry) => {
                        e.registry = Some(file.clone())
                    }
                    _ => {}
                }
            }
        }
        None if api_stages > 0 => {
            problems.error(
                context.header.clone(),
                format!(
                    "{what}: flow `{}` reads registry = \"api\" (the HTTP API's device store), which `sensorgate test` does not start, and the [api] section has no seed",
                    flow.name
                ),
                Some("give the test a registry file: registry = \"devices.toml\" (relative to this test file), or give [api] a seed".into()),
            );
        }
        None => {}
    }
    if let Some(registry) = registry {
        let mut replaced = api_stages > 0;
        for stage in &mut flow.stages {
            if let StageConfig::Decode(decode) = stage
                && decode.codec == Codec::Esp3
            {
                decode.registry = Some(registry.clone());
                replaced = true;
            }
        }
        // The file's registry serves the flows that decode esp3; naming one for a test is a claim.
        if let (false, Some(written)) = (replaced, &model.registry) {
            problems.error(
                written.span(),
                format!(
                    "{what}: a registry is given, but flow `{}` has no esp3 decode stage and no stage with registry = \"api\" to use it",
                    flow.name
                ),
                Some("remove `registry`, or test a flow with { type = \"decode\", codec = \"esp3\" }".into()),
            );
        }
    }

    let dead_letter = flow
        .dead_letter
        .clone()
        .unwrap_or_else(|| DEAD_LETTER.to_string());
    if flow.to.iter().any(|s| s == DEAD_LETTER) && dead_letter != DEAD_LETTER {
        problems.error(
            context.header.clone(),
            format!(
                "{what}: flow `{}` writes good records to a sink named `{DEAD_LETTER}`, which `at` uses for its rejects",
                flow.name
            ),
            Some("rename that sink in the pipeline".into()),
        );
    }

    if model.inputs.is_empty() {
        problems.error(
            context.header.clone(),
            format!("{what} has no inputs"),
            Some("add a [[tests.inputs]] table with the payload as hex, json or text".into()),
        );
    }
    let mut inputs = Vec::new();
    for (index, input) in model.inputs.into_iter().enumerate() {
        let what = format!("{what}, input {}", index + 1);
        inputs.extend(input_records(&what, context, problems, &flow, input));
    }

    let sinks = Sinks {
        what: &what,
        flow: &flow,
        dead_letter: &dead_letter,
    };
    let expected = expected_outputs(&sinks, problems, &model.outputs);
    let mut no_output_at = Vec::new();
    for at in &model.no_output_at {
        let Some(sink) = sinks.resolve(problems, at) else {
            continue;
        };
        if expected.iter().any(|e| e.at == sink) {
            problems.error(
                at.span(),
                format!(
                    "{what}: `{}` is in no_output_at, but outputs are expected there too",
                    at.get_ref()
                ),
                Some("keep one of them".into()),
            );
        }
        no_output_at.push(sink);
    }

    if model.outputs.is_empty() && model.no_output_at.is_empty() && !model.exhaustive {
        problems.error(
            context.header.clone(),
            format!("{what} checks nothing"),
            Some("add [[tests.outputs]] with `at` and the expected document, no_output_at = [\"dead_letter\"], or exhaustive = true for \"nothing arrives anywhere\"".into()),
        );
    }

    if problems.report.errors() > before {
        return None;
    }
    Some(TestCase {
        name: model.name,
        flow,
        dead_letter,
        inputs,
        expected,
        no_output_at,
        exhaustive: model.exhaustive,
        plugins: config.plugins.clone(),
    })
}

/// What `at` can name in one test: the flow's sinks and its dead letter.
struct Sinks<'a> {
    /// The test, for messages.
    what: &'a str,
    flow: &'a FlowConfig,
    /// The name rejects arrive under.
    dead_letter: &'a str,
}

impl Sinks<'_> {
    /// The sink `at` names (`dead_letter` becomes the flow's dead-letter sink); `None` if it names
    /// none (reported).
    fn resolve(&self, problems: &mut Problems<'_>, at: &Spanned<String>) -> Option<String> {
        let name = at.get_ref();
        let flow = self.flow;
        if name == DEAD_LETTER || flow.dead_letter.as_ref() == Some(name) {
            return Some(self.dead_letter.to_string());
        }
        if flow.to.contains(name) {
            return Some(name.clone());
        }
        let mut known: Vec<&str> = flow.to.iter().map(String::as_str).collect();
        known.extend(flow.dead_letter.as_deref());
        known.push(DEAD_LETTER);
        problems.error(
            at.span(),
            format!(
                "{}: `{name}` is not a sink of flow `{}`",
                self.what, flow.name
            ),
            Some(suggest_from(name, &known, "sinks")),
        );
        None
    }
}

/// The `[[tests.outputs]]` of a test, checked.
fn expected_outputs(
    sinks: &Sinks<'_>,
    problems: &mut Problems<'_>,
    outputs: &[Spanned<OutputModel>],
) -> Vec<Expected> {
    let what = sinks.what;
    let mut expected = Vec::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for output in outputs {
        let output_span = output.span();
        let output = output.get_ref();
        let Some(at) = sinks.resolve(problems, &output.at) else {
            continue;
        };
        let count = output.count.as_ref().map(|c| *c.get_ref());
        if let Some(count_value) = &output.count {
            match counts.get(&at) {
                Some(&other) if other != *count_value.get_ref() => problems.error(
                    count_value.span(),
                    format!(
                        "{what}: `{}` is given count = {} here and count = {other} before",
                        output.at.get_ref(),
                        count_value.get_ref()
                    ),
                    Some("give the count once per sink".into()),
                ),
                _ => {
                    counts.insert(at.clone(), *count_value.get_ref());
                }
            }
        }
        let document = match &output.document {
            None => None,
            Some(document) => match expected_document(document.get_ref()) {
                Ok(doc) => Some(doc),
                Err(problem) => {
                    problems.error(document.span(), format!("{what}: {problem}"), None);
                    None
                }
            },
        };
        if output.exact && output.document.is_none() {
            problems.error(
                output_span,
                format!("{what}: `exact = true` needs a `document` to compare"),
                None,
            );
        }
        expected.push(Expected {
            at,
            kind: output.kind,
            device: output.device.clone(),
            document,
            exact: output.exact,
            count,
        });
    }
    expected
}

/// "did you mean `x`?" when a name is close to one of `known`, and always the names to choose from.
fn suggest_from(name: &str, known: &[&str], what: &str) -> String {
    let list = format!("known {what}: {}", known.join(", "));
    let suggestion = config::suggest(name, known, what);
    if suggestion == list {
        list
    } else {
        format!("{suggestion} ({list})")
    }
}

/// An input's records, made the way its source makes them. `None` if it has problems (reported).
fn input_records(
    what: &str,
    context: &Context<'_>,
    problems: &mut Problems<'_>,
    flow: &FlowConfig,
    input: Spanned<InputModel>,
) -> Option<Vec<Record>> {
    let header = input.span();
    let input = input.into_inner();
    let before = problems.report.errors();

    let source = match &input.source {
        Some(name) => {
            if flow.from.contains(name.get_ref()) {
                Some(name.get_ref().clone())
            } else {
                let known: Vec<&str> = flow.from.iter().map(String::as_str).collect();
                problems.error(
                    name.span(),
                    format!(
                        "{what}: flow `{}` does not read source `{}`",
                        flow.name,
                        name.get_ref()
                    ),
                    Some(suggest_from(name.get_ref(), &known, "sources")),
                );
                None
            }
        }
        None if flow.from.len() == 1 => flow.from.first().cloned(),
        None => {
            problems.error(
                header.clone(),
                format!(
                    "{what} does not say which source it comes from, and flow `{}` reads {}",
                    flow.name,
                    flow.from.join(", ")
                ),
                Some(format!(
                    "add source = \"{}\"",
                    flow.from.first().map(String::as_str).unwrap_or("...")
                )),
            );
            None
        }
    };

    let payload = payload(what, problems, &header, &input);
    let received_at = input
        .received_at
        .as_ref()
        .and_then(|t| match received_at(t.get_ref()) {
            Ok(at) => Some(at),
            Err(problem) => {
                problems.error(t.span(), format!("{what}: {problem}"), None);
                None
            }
        });

    let source_config = match &source {
        Some(name) => match context.config.sources.get(name) {
            Some(config) => Some((name, config)),
            None => {
                problems.error(
                    header.clone(),
                    format!("{what}: source `{name}` is not defined in the pipeline"),
                    Some(format!("add a [sources.{name}] table to the pipeline")),
                );
                None
            }
        },
        None => None,
    };
    let (source, source_config) = source_config?;
    let misplaced = |problems: &mut Problems<'_>, key: &str, span: Range<usize>, fix: &str| {
        problems.error(
            span,
            format!(
                "{what}: `{key}` does not apply to source `{source}` (type {})",
                source_config.kind.type_name()
            ),
            Some(fix.to_string()),
        );
    };
    // Sources whose inputs have a `path` only (CoAP, MQTT): `gateway` and `rssi` do not apply.
    let path_only = |problems: &mut Problems<'_>, fix: &str| {
        for (key, span) in [
            ("gateway", input.gateway.as_ref().map(|g| g.span())),
            ("rssi", input.rssi.as_ref().map(|r| r.span())),
        ] {
            if let Some(span) = span {
                misplaced(problems, key, span, fix);
            }
        }
    };
    let mut records = match &source_config.kind {
        SourceKind::Coap(coap_config) => {
            path_only(problems, "a CoAP request has a `path`; remove it");
            let Some(path) = &input.path else {
                let mut paths: Vec<&str> = coap_config.paths.keys().map(String::as_str).collect();
                paths.sort_unstable();
                problems.error(
                    header,
                    format!("{what}: a CoAP input needs the request's `path`"),
                    Some(format!(
                        "add path = \"m\" (source `{source}` has paths: {})",
                        paths.join(", ")
                    )),
                );
                return None;
            };
            match coap::request_record(source, coap_config, path.get_ref(), payload?) {
                Ok(record) => vec![record],
                Err(problem) => {
                    problems.error(path.span(), format!("{what}: {problem}"), None);
                    return None;
                }
            }
        }
        SourceKind::Esp3Websocket(ws_config) => {
            if let Some(path) = &input.path {
                misplaced(
                    problems,
                    "path",
                    path.span(),
                    "a gateway input has a `gateway` (and optionally `rssi`); remove it",
                );
            }
            let Some(gateway) = &input.gateway else {
                problems.error(
                    header,
                    format!("{what}: a gateway input needs the `gateway` that relayed it"),
                    Some(
                        "add gateway = \"gw-1\" (the name a raw gateway gives in ?gateway=)".into(),
                    ),
                );
                return None;
            };
            let mut records =
                esp3_websocket::gateway_records(source, ws_config, gateway.get_ref(), &payload?);
            if let Some(rssi) = &input.rssi {
                for record in &mut records {
                    record.origin.rssi = Some(*rssi.get_ref());
                }
            }
            records
        }
        SourceKind::Mqtt(mqtt_config) => {
            path_only(
                problems,
                "an MQTT message has a topic, given as `path`; remove it",
            );
            let Some(topic) = &input.path else {
                problems.error(
                    header,
                    format!("{what}: an MQTT input needs its topic as `path`"),
                    Some("add path = \"flespi/message/gw/devices/123\"".into()),
                );
                return None;
            };
            vec![mqtt::topic_record(
                source,
                mqtt_config,
                topic.get_ref(),
                payload?,
            )]
        }
        SourceKind::Kafka(kafka_config) => {
            path_only(
                problems,
                "a Kafka message has a topic, given as `path`; remove it",
            );
            let Some(topic) = &input.path else {
                problems.error(
                    header,
                    format!("{what}: a Kafka input needs its topic as `path`"),
                    Some("add path = \"sensorgate.raw\"".into()),
                );
                return None;
            };
            vec![kafka::topic_record(
                source,
                kafka_config,
                topic.get_ref(),
                payload?,
            )]
        }
    };
    if problems.report.errors() > before {
        return None;
    }
    if let Some(at) = received_at {
        for record in &mut records {
            record.received_at = at;
        }
    }
    Some(records)
}

/// The payload of an input: exactly one of `hex`, `json` and `text`.
fn payload(
    what: &str,
    problems: &mut Problems<'_>,
    header: &Range<usize>,
    input: &InputModel,
) -> Option<Bytes> {
    let given = [
        input.hex.as_ref().map(|v| v.span()),
        input.json.as_ref().map(|v| v.span()),
        input.text.as_ref().map(|v| v.span()),
    ];
    if given.iter().flatten().count() != 1 {
        let span = given
            .iter()
            .flatten()
            .nth(1)
            .cloned()
            .unwrap_or(header.clone());
        problems.error(
            span,
            format!("{what} needs exactly one payload: `hex`, `json` or `text`"),
            Some(
                "e.g. hex = \"0a06282c...\" (spaces allowed), json = { a = 1 } or text = \"...\""
                    .into(),
            ),
        );
        return None;
    }
    if let Some(hex_text) = &input.hex {
        let digits: String = hex_text
            .get_ref()
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        return match hex::decode(&digits) {
            Ok(bytes) => Some(Bytes::from(bytes)),
            Err(e) => {
                problems.error(
                    hex_text.span(),
                    format!("{what}: `hex` is not hex: {e}"),
                    Some("write the bytes as pairs of hex digits, e.g. \"0a06 282c\" (spaces and line breaks are ignored)".into()),
                );
                None
            }
        };
    }
    if let Some(json) = &input.json {
        return match json_of(json.get_ref().clone()) {
            Ok(value) => Some(Bytes::from(value.to_string())),
            Err(problem) => {
                problems.error(json.span(), format!("{what}: `json`: {problem}"), None);
                None
            }
        };
    }
    input
        .text
        .as_ref()
        .map(|t| Bytes::from(t.get_ref().clone().into_bytes()))
}

/// `received_at` as a string or a TOML date-time, with its UTC offset.
fn received_at(value: &toml::Value) -> Result<SystemTime, String> {
    let text = match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Datetime(d) => d.to_string(),
        other => {
            return Err(format!(
                "`received_at` must be a time, found {}",
                other.type_str()
            ));
        }
    };
    chrono::DateTime::parse_from_rfc3339(&text)
        .map(SystemTime::from)
        .map_err(|e| {
            format!("`received_at` \"{text}\" is not an RFC 3339 time with an offset ({e}); write e.g. \"2026-11-22T10:00:00Z\"")
        })
}

/// An expected document: a table, or a string holding a JSON object (TOML has no `null`).
fn expected_document(value: &toml::Value) -> Result<Value, String> {
    let document = match value {
        toml::Value::String(text) => serde_json::from_str(text)
            .map_err(|e| format!("`document` is a string, so it must be JSON: {e}"))?,
        other => json_of(other.clone()).map_err(|e| format!("`document`: {e}"))?,
    };
    if !document.is_object() {
        return Err("`document` must be a table, or a string holding a JSON object".into());
    }
    Ok(document)
}

/// A TOML value as JSON: date-times become their text.
fn json_of(value: toml::Value) -> Result<Value, String> {
    Ok(match value {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| format!("{f} has no JSON form"))?,
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(json_of)
                .collect::<Result<_, String>>()?,
        ),
        toml::Value::Table(table) => Value::Object(
            table
                .into_iter()
                .map(|(k, v)| Ok((k, json_of(v)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

// ---------------------------------------------------------------------------------------------------
// Running

/// A document that reached a sink.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub kind: Kind,
    pub device: Option<String>,
    /// What the sink writes ([`Document`]).
    pub document: Value,
}

/// Runs records through `stages` from `first` on, the way a flow does: a dead-letter record skips
/// the stages after the one that rejected it. Returns what comes out of the last stage.
pub async fn run_stages(
    stages: &mut [Box<dyn Stage>],
    first: usize,
    mut current: Vec<Record>,
) -> Vec<Record> {
    let mut next = Vec::new();
    for stage in stages.iter_mut().skip(first) {
        if let Some(prepare) = stage.prepare(&current) {
            prepare.await;
        }
        for record in current.drain(..) {
            if record.kind == Kind::DeadLetter {
                next.push(record);
            } else {
                stage.process(record, &mut next);
            }
        }
        std::mem::swap(&mut current, &mut next);
    }
    current
}

/// Fires the stage timers that are due (all of them with `flush`, which releases what the stages
/// hold) and runs what they release through the stages after them.
async fn fire_timers(stages: &mut [Box<dyn Stage>], now: Instant, flush: bool) -> Vec<Record> {
    let mut out = Vec::new();
    for index in 0..stages.len() {
        let due = flush || stages[index].next_deadline().is_some_and(|d| d <= now);
        if !due {
            continue;
        }
        let mut released = Vec::new();
        stages[index].on_timer(now, flush, &mut released);
        if !released.is_empty() {
            out.extend(run_stages(stages, index + 1, released).await);
        }
    }
    out
}

/// Where a flow's records go: rejects to the dead-letter sink, the others to every `to` sink.
fn route(test: &TestCase, records: Vec<Record>, arrivals: &mut BTreeMap<String, Vec<Arrival>>) {
    for record in records {
        let mut document = serde_json::to_value(Document(&record)).unwrap_or_else(
            |e| serde_json::json!({ "error": format!("document could not be serialized: {e}") }),
        );
        // A test runs in no time: a dead letter is rejected when it was received, so a test that
        // fixes `received_at` gets the same document on every run.
        if record.kind == Kind::DeadLetter
            && let Some(doc) = document.as_object_mut()
            && doc.contains_key("rejected_at")
        {
            let received = doc.get("received_at").cloned().unwrap_or_default();
            doc.insert("rejected_at".into(), received);
        }
        let arrival = Arrival {
            kind: record.kind,
            device: record.device.clone(),
            document,
        };
        if record.kind == Kind::DeadLetter {
            arrivals
                .entry(test.dead_letter.clone())
                .or_default()
                .push(arrival);
        } else {
            for sink in &test.flow.to {
                arrivals
                    .entry(sink.clone())
                    .or_default()
                    .push(arrival.clone());
            }
        }
    }
}

impl TestCase {
    /// Builds the flow's stages afresh, runs every input through them (firing due timers after each
    /// input, and flushing at the end), and returns what reached each sink, in order.
    pub async fn run(&self) -> anyhow::Result<BTreeMap<String, Vec<Arrival>>> {
        let plugins = match &self.plugins {
            Some(c) => Some(crate::codecs::wasm::Host::open(c)?),
            None => None,
        };
        let mut stages = stages::build(&self.flow.name, &self.flow.stages, plugins.as_ref())?;
        let mut arrivals = BTreeMap::new();
        for input in &self.inputs {
            for record in input {
                let out = run_stages(&mut stages, 0, vec![record.clone()]).await;
                route(self, out, &mut arrivals);
            }
            let out = fire_timers(&mut stages, Instant::now(), false).await;
            route(self, out, &mut arrivals);
        }
        let out = fire_timers(&mut stages, Instant::now(), true).await;
        route(self, out, &mut arrivals);
        Ok(arrivals)
    }

    /// Runs the test; each failure is a block of lines that explains it (none: the test passed).
    pub async fn check(&self) -> Vec<String> {
        match self.run().await {
            Ok(arrivals) => self.compare(&arrivals),
            Err(e) => vec![format!("the flow's stages could not be built: {e:#}")],
        }
    }

    fn sink_label(&self, sink: &str) -> String {
        if sink == self.dead_letter && sink != DEAD_LETTER {
            format!("dead letter `{sink}`")
        } else {
            format!("`{sink}`")
        }
    }

    fn compare(&self, arrivals: &BTreeMap<String, Vec<Arrival>>) -> Vec<String> {
        let mut failures = Vec::new();
        let none = Vec::new();
        let mut expected_per_sink: BTreeMap<&str, usize> = BTreeMap::new();
        let mut missing = false;
        for expected in &self.expected {
            let arrived = arrivals.get(&expected.at).unwrap_or(&none);
            let index = *expected_per_sink
                .entry(&expected.at)
                .and_modify(|n| *n += 1)
                .or_insert(1);
            let label = self.sink_label(&expected.at);
            let Some(actual) = arrived.get(index - 1) else {
                missing = true;
                failures.push(format!(
                    "output {index} at {label}: nothing arrived ({} document{} reached it)",
                    arrived.len(),
                    plural(arrived.len())
                ));
                continue;
            };
            let mut lines = Vec::new();
            if let Some(kind) = expected.kind
                && kind != actual.kind
            {
                lines.push(format!("kind: expected {kind}, got {}", actual.kind));
            }
            if let Some(device) = &expected.device
                && actual.device.as_ref() != Some(device)
            {
                lines.push(format!(
                    "device: expected {device:?}, got {}",
                    actual
                        .device
                        .as_ref()
                        .map(|d| format!("{d:?}"))
                        .unwrap_or_else(|| "none".into())
                ));
            }
            if let Some(document) = &expected.document {
                lines.extend(
                    diff(document, &actual.document, expected.exact)
                        .iter()
                        .map(ToString::to_string),
                );
            }
            if !lines.is_empty() {
                let mode = if expected.exact { " (exact)" } else { "" };
                let mut block = format!(
                    "output {index} at {label}{mode}:\n{}",
                    indent(&lines.join("\n"), 2)
                );
                block.push_str("\n  actual document:\n");
                block.push_str(&indent(&shown_document(&actual.document), 4));
                failures.push(block);
            }
        }

        let mut counted = BTreeSet::new();
        for expected in &self.expected {
            let Some(count) = expected.count else {
                continue;
            };
            if !counted.insert(&expected.at) {
                continue;
            }
            let arrived = arrivals.get(&expected.at).map_or(0, Vec::len);
            if arrived != count {
                failures.push(format!(
                    "{}: expected {count} document{} (count), {arrived} arrived",
                    self.sink_label(&expected.at),
                    plural(count)
                ));
            }
        }

        for sink in &self.no_output_at {
            let arrived = arrivals.get(sink).unwrap_or(&none);
            if !arrived.is_empty() {
                failures.push(unexpected_block(
                    &format!(
                        "{}: expected nothing, {} document{} arrived",
                        self.sink_label(sink),
                        arrived.len(),
                        plural(arrived.len())
                    ),
                    arrived,
                ));
            }
        }

        if self.exhaustive {
            for (sink, arrived) in arrivals {
                let expected = expected_per_sink.get(sink.as_str()).copied().unwrap_or(0);
                if arrived.len() > expected && !self.no_output_at.contains(sink) {
                    let extra = &arrived[expected..];
                    failures.push(unexpected_block(
                        &format!(
                            "{}: {} document{} more than the {expected} expected (exhaustive = true)",
                            self.sink_label(sink),
                            extra.len(),
                            plural(extra.len())
                        ),
                        extra,
                    ));
                }
            }
        }

        if missing {
            failures.push(self.arrivals_summary(arrivals));
        }
        failures
    }

    /// What reached each sink, with the error of each dead letter: where the missing output went.
    fn arrivals_summary(&self, arrivals: &BTreeMap<String, Vec<Arrival>>) -> String {
        let mut sinks: Vec<&str> = self.flow.to.iter().map(String::as_str).collect();
        if !sinks.contains(&self.dead_letter.as_str()) {
            sinks.push(&self.dead_letter);
        }
        let counts: Vec<String> = sinks
            .iter()
            .map(|s| {
                format!(
                    "{} {}",
                    self.sink_label(s),
                    arrivals.get(*s).map_or(0, Vec::len)
                )
            })
            .collect();
        let mut text = format!("arrived: {}", counts.join(", "));
        for arrival in arrivals.get(&self.dead_letter).into_iter().flatten() {
            if arrival.kind != Kind::DeadLetter {
                continue;
            }
            let field = |name: &str| {
                arrival
                    .document
                    .get(name)
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_string()
            };
            text.push_str(&format!(
                "\n  rejected by {}: {}",
                field("stage"),
                shorten(&field("error"), SHOWN_VALUE_CHARS * 2)
            ));
        }
        text
    }
}

fn unexpected_block(title: &str, arrived: &[Arrival]) -> String {
    let mut block = title.to_string();
    for arrival in arrived {
        block.push('\n');
        block.push_str(&indent(&shown_document(&arrival.document), 2));
    }
    block
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines()
        .map(|line| format!("{pad}{line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A document pretty-printed, cut after [`SHOWN_DOCUMENT_LINES`] lines.
fn shown_document(document: &Value) -> String {
    let text = serde_json::to_string_pretty(document).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= SHOWN_DOCUMENT_LINES {
        return text;
    }
    format!(
        "{}\n... ({} more lines)",
        lines[..SHOWN_DOCUMENT_LINES].join("\n"),
        lines.len() - SHOWN_DOCUMENT_LINES
    )
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let cut: String = text.chars().take(max).collect();
    format!("{cut}...")
}

// ---------------------------------------------------------------------------------------------------
// Matching

/// One difference between an expected and an actual document.
#[derive(Debug, Clone, PartialEq)]
pub struct Mismatch {
    /// JSON pointer (RFC 6901) of the value, `""` for the whole document.
    pub path: String,
    pub problem: Problem,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Problem {
    /// Both have a value there, and they differ.
    Differs { expected: Value, actual: Value },
    /// The expected field is not in the actual document.
    Missing { expected: Value },
    /// Exact mode: the actual document has a field the expected one does not.
    NotExpected { actual: Value },
    /// Arrays of different lengths.
    Length { expected: usize, actual: usize },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        match &self.problem {
            Problem::Differs { expected, actual } => {
                write!(
                    f,
                    "{path}: expected {}, got {}",
                    shown(expected),
                    shown(actual)
                )
            }
            Problem::Missing { expected } => {
                write!(f, "{path}: missing (expected {})", shown(expected))
            }
            Problem::NotExpected { actual } => {
                write!(f, "{path}: not expected (got {})", shown(actual))
            }
            Problem::Length { expected, actual } => write!(
                f,
                "{path}: expected {expected} item{}, got {actual}",
                plural(*expected)
            ),
        }
    }
}

/// A value in a mismatch line: compact JSON, shortened.
fn shown(value: &Value) -> String {
    shorten(&value.to_string(), SHOWN_VALUE_CHARS)
}

/// Every difference between `expected` and `actual`. As a subset (`exact` false), every field given
/// must be there and match, objects recurse, and arrays must have the same length and match element
/// by element as subsets. `exact` also reports every field the expected document does not have.
/// Numbers compare by value (`21` matches `21.0`).
pub fn diff(expected: &Value, actual: &Value, exact: bool) -> Vec<Mismatch> {
    let mut out = Vec::new();
    compare(expected, actual, exact, &mut String::new(), &mut out);
    out
}

/// Whether `actual` has everything `expected` has (see [`diff`]).
pub fn matches_subset(expected: &Value, actual: &Value) -> bool {
    diff(expected, actual, false).is_empty()
}

fn compare(
    expected: &Value,
    actual: &Value,
    exact: bool,
    path: &mut String,
    out: &mut Vec<Mismatch>,
) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (key, expected_value) in e {
                let len = path.len();
                push_token(path, key);
                match a.get(key) {
                    Some(actual_value) => compare(expected_value, actual_value, exact, path, out),
                    None => out.push(Mismatch {
                        path: path.clone(),
                        problem: Problem::Missing {
                            expected: expected_value.clone(),
                        },
                    }),
                }
                path.truncate(len);
            }
            if exact {
                for (key, actual_value) in a {
                    if !e.contains_key(key) {
                        let len = path.len();
                        push_token(path, key);
                        out.push(Mismatch {
                            path: path.clone(),
                            problem: Problem::NotExpected {
                                actual: actual_value.clone(),
                            },
                        });
                        path.truncate(len);
                    }
                }
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                out.push(Mismatch {
                    path: path.clone(),
                    problem: Problem::Length {
                        expected: e.len(),
                        actual: a.len(),
                    },
                });
                return;
            }
            for (index, (expected_item, actual_item)) in e.iter().zip(a).enumerate() {
                let len = path.len();
                path.push('/');
                path.push_str(&index.to_string());
                compare(expected_item, actual_item, exact, path, out);
                path.truncate(len);
            }
        }
        (Value::Number(e), Value::Number(a)) if same_number(e, a) => {}
        (e, a) if e == a => {}
        (e, a) => out.push(Mismatch {
            path: path.clone(),
            problem: Problem::Differs {
                expected: e.clone(),
                actual: a.clone(),
            },
        }),
    }
}

fn same_number(e: &serde_json::Number, a: &serde_json::Number) -> bool {
    if let (Some(x), Some(y)) = (e.as_i64(), a.as_i64()) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (e.as_u64(), a.as_u64()) {
        return x == y;
    }
    match (e.as_f64(), a.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// Appends one JSON pointer token (`~` is written `~0`, `/` is written `~1`).
fn push_token(path: &mut String, key: &str) {
    path.push('/');
    path.push_str(&key.replace('~', "~0").replace('/', "~1"));
}

// ---------------------------------------------------------------------------------------------------
// The command

/// What a run of `sensorgate test` found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
    /// Files that could not be loaded (their tests did not run).
    pub not_loaded: usize,
}

impl Summary {
    /// 0 when every test passed, 1 when one failed, 2 when a file could not be loaded.
    pub fn exit_code(&self) -> u8 {
        if self.not_loaded > 0 {
            2
        } else if self.failed > 0 {
            1
        } else {
            0
        }
    }
}

/// The test files to run: each file named, and each `*.toml` of a directory named that holds
/// `[[tests]]` (a registry next to the tests is not one); with nothing named, [`DEFAULT_DIR`].
pub fn test_files(named: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let defaulted = named.is_empty();
    let named = if defaulted {
        vec![PathBuf::from(DEFAULT_DIR)]
    } else {
        named.to_vec()
    };
    let mut files = Vec::new();
    for path in named {
        if !path.is_dir() {
            if defaulted {
                return Err(format!(
                    "error: no FILE given and {DEFAULT_DIR}/ does not exist here\n   = hint: name the test files (or a directory of them): sensorgate test my-tests/*.toml\n"
                ));
            }
            files.push(path);
            continue;
        }
        let entries = std::fs::read_dir(&path)
            .map_err(|e| format!("error: cannot list {}: {e}\n", path.display()))?;
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
            .collect();
        found.sort();
        let before = files.len();
        files.extend(found.into_iter().filter(|f| holds_tests(f)));
        if files.len() == before {
            return Err(format!(
                "error: no test files in {}\n   = hint: a test file is a *.toml with [[tests]] tables\n",
                path.display()
            ));
        }
    }
    Ok(files)
}

/// Whether a file found in a directory is a test file: it has `tests` (or a key so close to it that
/// it is a typo, which loading then reports), or it cannot be read as TOML (loading says why).
fn holds_tests(file: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(file) else {
        return true;
    };
    match DeTable::parse(&text) {
        Ok(root) => root.get_ref().iter().any(|(key, _)| {
            let key = key.get_ref().as_ref();
            key == "tests" || config::suggest(key, &["tests"], "keys").starts_with("did you mean")
        }),
        Err(_) => true,
    }
}

/// `sensorgate test`: loads and runs every file, writing `ok`/`FAIL` lines with their diffs and
/// a summary to `out`, and load errors to `err`.
pub async fn run_files(files: &[PathBuf], out: &mut dyn Write, err: &mut dyn Write) -> Summary {
    let mut summary = Summary::default();
    for file in files {
        let loaded = match load(file) {
            Ok(loaded) => loaded,
            Err(report) => {
                summary.not_loaded += 1;
                let _ = write!(err, "{report}");
                let _ = writeln!(out, "ERROR {}: could not be loaded", file.display());
                continue;
            }
        };
        for test in &loaded.tests {
            let failures = test.check().await;
            if failures.is_empty() {
                summary.passed += 1;
                let _ = writeln!(out, "ok   {}: {}", loaded.shown, test.name);
            } else {
                summary.failed += 1;
                let _ = writeln!(out, "FAIL {}: {}", loaded.shown, test.name);
                for failure in &failures {
                    let _ = writeln!(out, "{}", indent(failure, 5));
                }
            }
        }
    }
    let mut line = format!("{} passed, {} failed", summary.passed, summary.failed);
    if summary.not_loaded > 0 {
        line.push_str(&format!(
            "; {} file{} could not be loaded",
            summary.not_loaded,
            plural(summary.not_loaded)
        ));
    }
    let _ = writeln!(out, "{line}");
    summary
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_subset_matches_when_every_given_field_matches() {
        let actual = json!({"serial": "A", "battery_ok": true, "extra": {"x": 1, "y": 2},
            "measurements": [{"type": "t", "value": 21.5, "unit": "degC"}, {"type": "h", "value": 40}]});
        let expected = json!({"extra": {"y": 2}, "measurements": [{"value": 21.5}, {"type": "h"}]});
        assert!(matches_subset(&expected, &actual));
        assert!(diff(&expected, &actual, false).is_empty());
    }

    #[test]
    fn numbers_compare_by_value_not_by_representation() {
        assert!(matches_subset(&json!({"v": 21}), &json!({"v": 21.0})));
        assert!(matches_subset(&json!({"v": 3.0}), &json!({"v": 3})));
        assert!(!matches_subset(&json!({"v": 21}), &json!({"v": 21.4})));
        assert!(!matches_subset(&json!({"v": 1}), &json!({"v": "1"})));
    }

    #[test]
    fn mismatches_name_the_json_pointer_and_both_values() {
        let actual = json!({"measurements": [{"value": 21.4}], "sensor": {}});
        let expected =
            json!({"measurements": [{"value": 21.5}], "sensor": {"location": "Room 221"}});
        let lines: Vec<String> = diff(&expected, &actual, false)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            lines,
            [
                "/measurements/0/value: expected 21.5, got 21.4",
                "/sensor/location: missing (expected \"Room 221\")",
            ]
        );
    }

    #[test]
    fn arrays_must_have_the_same_length() {
        let found = diff(&json!({"a": [1]}), &json!({"a": [1, 2]}), false);
        assert_eq!(
            found,
            [Mismatch {
                path: "/a".into(),
                problem: Problem::Length {
                    expected: 1,
                    actual: 2
                }
            }]
        );
        assert_eq!(found[0].to_string(), "/a: expected 1 item, got 2");
    }

    #[test]
    fn exact_mode_reports_fields_not_expected_at_every_depth() {
        let actual = json!({"a": 1, "extra": true, "nested": {"b": 2, "c": 3}});
        let expected = json!({"a": 1, "nested": {"b": 2}});
        assert!(matches_subset(&expected, &actual));
        let lines: Vec<String> = diff(&expected, &actual, true)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            lines,
            [
                "/nested/c: not expected (got 3)",
                "/extra: not expected (got true)"
            ]
        );
        assert!(diff(&actual, &actual, true).is_empty());
    }

    #[test]
    fn pointer_tokens_escape_slash_and_tilde() {
        let found = diff(
            &json!({"a/b": {"~c": 1}}),
            &json!({"a/b": {"~c": 2}}),
            false,
        );
        assert_eq!(found[0].path, "/a~1b/~0c");
    }

    #[test]
    fn long_values_are_shortened_in_mismatch_lines() {
        let long = "x".repeat(500);
        let line = diff(&json!({"a": long}), &json!({"a": 1}), false)[0].to_string();
        assert!(line.len() < 200, "{line}");
        assert!(line.contains("..."), "{line}");
    }

    #[test]
    fn huge_documents_are_cut_when_shown() {
        let rows: Vec<Value> = (0..200).map(|i| json!({"ts": i})).collect();
        let shown = shown_document(&json!({ "measurements": rows }));
        assert_eq!(shown.lines().count(), SHOWN_DOCUMENT_LINES + 1);
        assert!(shown.ends_with("more lines)"), "{shown}");
    }

    const INLINE: &str = r#"
[[tests]]
name = "garbage is rejected"
[[tests.inputs]]
path = "m"
text = "garbage"
[[tests.outputs]]
at = "dead_letter"
document = { stage = "decode" }

[sources.efento]
type = "coap"
listen = "127.0.0.1:0"

[sinks.lake]
type = "json_lines"
path = "-"

[[flows]]
name = "efento"
from = ["efento"]
stages = [{ type = "decode", codec = "efento" }]
to = ["lake"]
"#;

    #[test]
    fn the_pipeline_text_keeps_its_lines_without_the_test_keys() {
        let (root, errors) = DeTable::parse_recoverable(INLINE);
        assert!(errors.is_empty());
        let text = pipeline_text(INLINE, root.get_ref());
        assert_eq!(text.lines().count(), INLINE.lines().count());
        assert!(!text.contains("tests"), "{text}");
        assert!(!text.contains("garbage"), "{text}");
        for (kept, original) in text.lines().zip(INLINE.lines()) {
            assert!(kept.is_empty() || kept == original);
        }
        assert!(text.contains("[sources.efento]"));
        config::load_str("t.toml", &text, &|_| None).expect("the rest is a pipeline");
    }

    #[test]
    fn every_way_of_writing_a_test_is_blanked_whole() {
        let text = r#"pipeline_like = 1
[sinks.lake]
type = "json_lines"
path = "-"

[[tests]]
name = "multi-line values"
no_output_at = [
  "dead_letter",
]
[[tests.inputs]]
hex = """
0a06
282c
"""
json = [[1, 2],
  [3],
]
[[tests.outputs]]
at = "lake"
[tests.outputs.document]
telemetry.data = [
  { key = "t" },
]
deep.er.key = "x"

[[flows]]
name = "f"
from = ["s"]
to = ["lake"]
[sources.s]
type = "coap"
listen = "127.0.0.1:0"
"#;
        let (root, errors) = DeTable::parse_recoverable(text);
        assert!(errors.is_empty(), "{errors:?}");
        let kept = pipeline_text(text, root.get_ref());
        assert_eq!(kept.lines().count(), text.lines().count());
        let expected_kept: Vec<usize> = vec![2, 3, 4, 5, 26, 27, 28, 29, 30, 31, 32, 33];
        for (index, (line, original)) in kept.lines().zip(text.lines()).enumerate() {
            if expected_kept.contains(&(index + 1)) {
                assert_eq!(line, original, "line {}", index + 1);
            } else {
                assert!(line.is_empty(), "line {} kept: {line}", index + 1);
            }
        }
        config::load_str("t.toml", &kept, &|_| None).expect("the rest is a pipeline");
    }

    #[test]
    fn pipeline_errors_in_an_inline_file_point_at_their_lines() {
        let text = INLINE.replace("listen =", "lisen =");
        let report = load_str(Path::new("t.toml"), &text).err().unwrap();
        assert!(report.contains("t.toml:13:1: error"), "{report}");
        assert!(report.contains("did you mean `listen`?"), "{report}");
    }

    #[tokio::test]
    async fn an_inline_file_runs_and_routes_rejects_to_the_dead_letter() {
        let file = load_str(Path::new("t.toml"), INLINE).unwrap();
        assert_eq!(file.tests.len(), 1);
        let test = &file.tests[0];
        let arrivals = test.run().await.unwrap();
        let rejected = &arrivals[DEAD_LETTER];
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].kind, Kind::DeadLetter);
        assert_eq!(rejected[0].document["raw_hex"], hex::encode("garbage"));
        assert!(!arrivals.contains_key("lake"));
        assert!(test.check().await.is_empty());
    }

    fn two_rejects(expectations: &str) -> String {
        let input = "[[tests.inputs]]\npath = \"m\"\ntext = \"garbage\"\n";
        INLINE.replacen(
            "[[tests.outputs]]\nat = \"dead_letter\"\ndocument = { stage = \"decode\" }\n",
            &format!("{input}{expectations}"),
            1,
        )
    }

    async fn failures_of(text: &str) -> Vec<String> {
        let file = load_str(Path::new("t.toml"), text).unwrap();
        file.tests[0].check().await
    }

    #[tokio::test]
    async fn more_documents_than_expected_fail_only_with_count_or_exhaustive() {
        let one = "[[tests.outputs]]\nat = \"dead_letter\"\n";
        assert!(failures_of(&two_rejects(one)).await.is_empty());

        let counted = format!("{one}count = 1\n");
        let failures = failures_of(&two_rejects(&counted)).await;
        assert_eq!(
            failures,
            ["`dead_letter`: expected 1 document (count), 2 arrived"]
        );

        let exhaustive = two_rejects(one).replace(
            "name = \"garbage is rejected\"",
            "name = \"x\"\nexhaustive = true",
        );
        let failures = failures_of(&exhaustive).await;
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(
            failures[0].starts_with(
                "`dead_letter`: 1 document more than the 1 expected (exhaustive = true)"
            ),
            "{failures:?}"
        );
        assert!(failures[0].contains("\"raw_hex\""), "{failures:?}");

        let none = "no_output_at = [\"dead_letter\"]\n";
        let text = two_rejects("").replace(
            "name = \"garbage is rejected\"\n",
            &format!("name = \"x\"\n{none}"),
        );
        let failures = failures_of(&text).await;
        assert!(
            failures[0].starts_with("`dead_letter`: expected nothing, 2 documents arrived"),
            "{failures:?}"
        );
    }

    #[tokio::test]
    async fn a_missing_output_says_where_the_records_went() {
        let text = INLINE.replace("at = \"dead_letter\"", "at = \"lake\"");
        let failures = failures_of(&text).await;
        assert_eq!(failures.len(), 2, "{failures:?}");
        assert_eq!(
            failures[0],
            "output 1 at `lake`: nothing arrived (0 documents reached it)"
        );
        assert!(
            failures[1].starts_with("arrived: `lake` 0, `dead_letter` 1\n  rejected by decode: "),
            "{failures:?}"
        );
    }

    #[test]
    fn names_that_do_not_exist_are_errors_with_the_fix() {
        let text = INLINE
            .replace("at = \"dead_letter\"", "at = \"lakee\"")
            .replace("path = \"m\"", "path = \"m\"\nsource = \"efentoo\"");
        let report = load_str(Path::new("t.toml"), &text).err().unwrap();
        assert!(
            report.contains("`lakee` is not a sink of flow `efento`"),
            "{report}"
        );
        assert!(report.contains("did you mean `lake`?"), "{report}");
        assert!(
            report.contains("does not read source `efentoo`"),
            "{report}"
        );
        assert!(report.contains("did you mean `efento`?"), "{report}");
    }

    #[test]
    fn bad_hex_and_a_missing_payload_name_the_input() {
        let text = INLINE.replace("text = \"garbage\"", "hex = \"0a0\"");
        let report = load_str(Path::new("t.toml"), &text).err().unwrap();
        assert!(
            report.contains(
                "t.toml:6:7: error: test `garbage is rejected`, input 1: `hex` is not hex"
            ),
            "{report}"
        );
        let text = INLINE.replace("text = \"garbage\"", "");
        let report = load_str(Path::new("t.toml"), &text).err().unwrap();
        assert!(report.contains("needs exactly one payload"), "{report}");
    }

    #[test]
    fn unknown_keys_in_a_test_are_reported_with_their_position() {
        let text = INLINE.replace("document =", "documnet =");
        let report = load_str(Path::new("t.toml"), &text).err().unwrap();
        assert!(report.contains("t.toml:9:1: error"), "{report}");
        assert!(report.contains("unknown field `documnet`"), "{report}");
    }
}
